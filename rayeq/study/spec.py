"""Study files: a base experiment, named arms (dotted overrides), seeds, an optional grid of settings
crossed with the arms, the eval protocols, per-run resources and what the summary shows.

Everything a study can get wrong is checked here before Ray starts a run: unknown keys, arms or grid
values the config refuses, keys the study sets itself, eval protocols the data cannot score, summary
metrics that eval never reports, a baseline or ceiling that is not an arm.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from rayeq.campaign.spec import NAME, Base, Resources, SpecModel, read_spec
from rayeq.config import ConfigError, ExperimentConfig, apply_overrides, from_dict

# keys a study sets itself for every run
STUDY_OWNED = ("train.name", "train.storage_path", "train.seed", "track.experiment", "track.repo")
DEFAULT_METRICS = ["rotation/full/r2", "color/full/r2", "linear/full/top1"]


class EvalSpec(SpecModel):
    protocols: list[Literal["linear", "knn", "rotation", "color", "transforms"]] = Field(
        ["linear", "rotation", "color"], min_length=1
    )
    fast: bool = Field(True, description="the eval.fast caps (CPU-sized probes)")
    checkpoint: Literal["latest", "best"] = "latest"
    overrides: list[str] = Field([], description="eval.* settings for every run, e.g. eval.views_per_object=2")

    @model_validator(mode="after")
    def _check(self) -> EvalSpec:
        bad = [o for o in self.overrides if not o.split("=", 1)[0].startswith("eval.") or "=" not in o]
        if bad:
            raise ValueError(f"eval.overrides take eval.KEY=VALUE items only, got {bad}")
        return self


class SummarySpec(SpecModel):
    metrics: list[str] = Field(
        DEFAULT_METRICS, min_length=1, description="eval metrics in the table; the first three are the figure's panels"
    )
    baseline: str | None = Field(None, description="the arm the others are compared with (default: the first)")
    ceiling: str | None = Field(None, description="the arm drawn as the ceiling (e.g. the supervised encoder)")
    train_metrics: list[str] = Field(
        ["val/recon", "val/recon_other_view", "val/recon_other_view_ratio"],
        description="last-epoch training metrics shown beside the eval ones where a run reports them",
    )


class StudySpec(SpecModel):
    kind: ClassVar[str] = "study"
    name: str = Field(pattern=NAME)
    description: str = ""
    base: Base = Base()
    arms: dict[str, dict[str, Any]] = Field(min_length=1, description="arm name -> dotted overrides")
    seeds: list[int] = Field(min_length=1)
    grid: dict[str, list[Any]] = Field({}, description="dotted key -> values, crossed with every arm")
    eval: EvalSpec = EvalSpec()
    summary: SummarySpec = SummarySpec()
    resources: Resources | None = Field(None, description="None: the base config's train.* resources")
    max_concurrent: int | None = Field(None, ge=1, description="None: as many runs at once as the cluster holds")
    storage_path: str = Field("studies_out", description="the study's directory is <storage_path>/<name>")

    @model_validator(mode="after")
    def _check(self) -> StudySpec:
        bad = [a for a in self.arms if not re.match(NAME, a)]
        if bad:
            raise ValueError(f"arm names must match {NAME} (they name run directories): {bad}")
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be distinct and >= 0, got {self.seeds}")
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{key} has no values")
        for role in ("baseline", "ceiling"):
            arm = getattr(self.summary, role)
            if arm is not None and arm not in self.arms:
                raise ValueError(f"summary.{role}={arm!r} is not an arm; arms: {list(self.arms)}")
        return self

    @property
    def baseline(self) -> str:
        return self.summary.baseline or next(iter(self.arms))

    @property
    def num_samples(self) -> int:  # what the cluster check calls the number of runs
        return len(self.arms) * len(self.seeds) * len(settings(self))

    def fingerprint(self) -> str:
        """What defines the study's runs and evaluations (not where they go, nor how they are shown)."""
        d = self.model_dump(exclude={"storage_path", "max_concurrent", "description", "summary"})
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Run:
    name: str
    arm: str
    setting: str  # "" without a grid, else e.g. "recon_weight=0.3"
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def group(self) -> str:
        """What the summary averages over seeds."""
        return f"{self.arm} [{self.setting}]" if self.setting else self.arm


def _label(key: str, value: Any) -> str:
    return f"{key.rsplit('.', 1)[-1]}={value}"


def settings(spec: StudySpec) -> list[dict[str, Any]]:
    keys = list(spec.grid)
    return [dict(zip(keys, values, strict=True)) for values in product(*spec.grid.values())] or [{}]


def expand(spec: StudySpec) -> list[Run]:
    """Every arm x setting x seed, in that order: runs side by side then mostly differ in seed, whose
    untrained-encoder floor each computes once (runs of one seed share it from the cache)."""
    runs = []
    for (arm, arm_overrides), setting, seed in product(spec.arms.items(), settings(spec), spec.seeds):
        label = ",".join(_label(k, v) for k, v in setting.items())
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(_label(k, v) for k, v in setting.items()))
        name = "-".join(p for p in (arm, slug, f"s{seed}") if p)
        runs.append(Run(name, arm, label, seed, {**arm_overrides, **setting}))
    return runs


def run_config(base: ExperimentConfig, run: Run, study_dir: Path, experiment: str) -> ExperimentConfig:
    items = [f"{k}={json.dumps(v)}" for k, v in run.overrides.items()]
    owned = [
        f"train.seed={run.seed}",
        f"train.name={run.name}",
        f"train.storage_path={study_dir / 'runs'}",
        f"track.experiment={experiment}",
    ]
    return from_dict(apply_overrides(base.to_dict(), [*items, *owned]))


def check_runs(spec: StudySpec, base: ExperimentConfig, study_dir: Path) -> dict[str, ExperimentConfig]:
    """Each run's config, or one error naming every arm / grid value the config refuses."""
    problems = []
    for where, keys in [*((f"arms.{a}", o) for a, o in spec.arms.items()), ("grid", spec.grid)]:
        for key in keys:
            if key.startswith(STUDY_OWNED):
                problems.append(f"{where}.{key}: set by the study itself for each run; it cannot be varied")
    if problems:
        raise ConfigError(f"study {spec.name!r}:\n  " + "\n  ".join(problems))
    configs = {}
    for run in expand(spec):
        try:
            configs[run.name] = run_config(base, run, study_dir, spec.name)
        except ConfigError as exc:
            where = f"arm {run.arm!r}" + (f" with {run.setting}" if run.setting else "")
            problems.append(f"{where}: {str(exc).strip()}")
    if problems:
        raise ConfigError(
            f"study {spec.name!r} has runs the config refuses:\n  " + "\n  ".join(dict.fromkeys(problems))
        )
    return configs


def eval_metric_names(protocols: list[str], three_d: bool, parts=("full", "inv", "equi")) -> list[str]:
    """The metric names `rayeq eval` reports for these protocols and representation parts."""
    from rayeq.eval.measure import REGRESSIONS
    from rayeq.eval.transforms import FAMILIES, HEADLINE

    names = []
    if "transforms" in protocols and not three_d:
        names += [f"transforms/{fam}/{k}" for fam in [*FAMILIES, "mean"] for k in HEADLINE]
    for p in protocols:
        for part in parts:
            if p in ("linear", "knn"):
                names.append(f"{p}/{part}/top1")
            elif p in REGRESSIONS and three_d:
                for _, tag in REGRESSIONS[p]:
                    names += [f"{p}{tag}/{part}/{m}" for m in ("r2", "r2_per_dim", "r2_train")]
    return names


def check_eval(spec: StudySpec, three_d: bool, data: str, parts=("full", "inv", "equi"), source: str = "") -> None:
    from rayeq.data.make.photos import PROTOCOLS as PHOTO_PROTOCOLS
    from rayeq.eval.measure import PROTOCOLS_3D, PROTOCOLS_IMAGES

    allowed = PHOTO_PROTOCOLS if source == "photos" else PROTOCOLS_3D if three_d else PROTOCOLS_IMAGES
    bad = [p for p in spec.eval.protocols if p not in allowed]
    if bad:
        raise ConfigError(f"study {spec.name!r}: eval.protocols {bad} cannot score {data!r}; it allows {list(allowed)}")
    known = eval_metric_names(spec.eval.protocols, three_d, parts)
    unknown = [m for m in spec.summary.metrics if m not in known]
    if unknown:
        raise ConfigError(
            f"study {spec.name!r}: summary.metrics {unknown} are not reported by eval.protocols "
            f"{spec.eval.protocols}; they report e.g. {known[:6]}"
        )


def check_study(spec: StudySpec, base: ExperimentConfig, study_dir: Path, three_d: bool) -> dict[str, ExperimentConfig]:
    """Every check of a study that needs no cluster: its runs' configs, its eval overrides on each (refused
    here, not after the first training), its protocols and summary metrics. -> each run's config."""
    from rayeq.eval.run import with_eval_overrides

    configs = check_runs(spec, base, study_dir)
    parts: set[str] = set()
    for cfg in configs.values():
        parts |= set(with_eval_overrides(cfg, spec.eval.overrides).eval.parts)
    check_eval(spec, three_d, base.data.path or "the built-in set", sorted(parts), base.data.source)
    return configs


def eval_path(study_dir: Path, name: str) -> Path:
    return study_dir / "evals" / f"{name}.json"


def load_study(path: str | Path, storage_path: str | None = None) -> StudySpec:
    return read_spec(path, StudySpec, "study", storage_path)
