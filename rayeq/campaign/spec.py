"""What sweeps and studies share in their files: the strict spec model (unknown keys refused), the `base` experiment
with its overrides, `resources`, reading a spec file with every problem named by its dotted key, and the base config
a spec resolves to. Plain Python: nothing here starts Ray."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rayeq.config import ConfigError, ExperimentConfig, load_config

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # a sweep's or study's name: its directory's


class SpecModel(BaseModel):
    """A spec file's model: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


class Resources(SpecModel):
    workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(0.5, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)


class Base(SpecModel):
    config: str | None = Field(None, description="experiment YAML (relative to the working directory)")
    overrides: list[str] = []


def read_spec(path: str | Path, model: type[BaseModel], kind: str, storage_path: str | None = None):
    """A sweep or study YAML validated into `model`; every problem named by its dotted key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{kind} file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{kind} file {str(path)!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{kind} file {str(path)!r} must hold a mapping, not {type(data).__name__}")
    if storage_path is not None:
        data["storage_path"] = storage_path
    try:
        return model.model_validate(data)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = "unknown key"
            lines.append(f"{loc}: {msg}")
        raise ConfigError(f"{kind} file {str(path)!r}:\n  " + "\n  ".join(lines)) from None


def base_config(spec, extra: list[str] = ()) -> tuple[ExperimentConfig, list[str]]:
    """The base experiment of a sweep or study spec and the overrides that made it: `resources`, then
    base.overrides, then the CLI's (so that `--set train.use_gpu=false ...` can shrink a GPU-sized file to a CPU
    first look)."""
    overrides = []
    if spec.resources is not None:
        r = spec.resources
        overrides += [
            f"train.num_workers={r.workers}",
            f"train.cpus_per_worker={r.cpus_per_worker}",
            f"train.gpus_per_worker={r.gpus_per_worker}",
            f"train.use_gpu={str(r.gpus_per_worker > 0).lower()}",
        ]
    overrides += [*spec.base.overrides, *extra]
    try:
        return load_config(spec.base.config, overrides), overrides
    except ConfigError as exc:
        raise ConfigError(f"{spec.kind} {spec.name!r}, base config: {exc}") from None
