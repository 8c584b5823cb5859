"""Sweep files: a base experiment, a search space of dotted config keys, objectives, ASHA, resources.

Everything a sweep can get wrong is checked here, before Ray starts a trial: unknown keys, empty
ranges, values the config refuses, objective metrics that training never reports.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from rayeq.campaign.spec import NAME, Base, Resources, SpecModel, read_spec
from rayeq.config import ConfigError, ExperimentConfig, apply_overrides, from_dict

# keys a sweep sets itself for every trial: sampling them would break trial naming or tracking
SWEEP_OWNED = ("train.name", "train.storage_path", "track.")


class Distribution(SpecModel):
    type: Literal["uniform", "loguniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> Distribution:
        if self.type == "choice":
            if not self.values:
                raise ValueError("a choice needs a non-empty `values` list")
            if self.low is not None or self.high is not None:
                raise ValueError("a choice takes `values`, not low/high")
            return self
        if self.values is not None:
            raise ValueError(f"{self.type} takes low/high, not `values`")
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs both low and high")
        if not self.low < self.high:
            raise ValueError(f"empty range: low={self.low} is not below high={self.high}")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0 (got {self.low})")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"int needs whole-number bounds (got {self.low}, {self.high})")
        return self

    def probes(self) -> list[Any]:
        """Values that stand for the whole range when the config checks it: ends and middle."""
        if self.type == "choice":
            return list(self.values)
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high, (self.low + self.high) / 2]

    def to_tune(self):
        from ray import tune

        if self.type == "uniform":
            return tune.uniform(self.low, self.high)
        if self.type == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.type == "int":
            return tune.randint(int(self.low), int(self.high) + 1)  # randint's upper end is exclusive
        return tune.choice(self.values)


class Objective(SpecModel):
    metric: str
    mode: Literal["max", "min"] = "max"


class Asha(SpecModel):
    """ASHA on one metric; its time unit is the training epoch and max_t is the base's train.epochs."""

    metric: str
    mode: Literal["max", "min"] = "max"
    grace_period: int = Field(1, ge=1, description="epochs every trial runs before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1.0)


class SweepSpec(SpecModel):
    kind: ClassVar[str] = "sweep"
    name: str = Field(pattern=NAME)
    description: str = ""
    base: Base = Base()
    space: dict[str, Distribution] = Field(min_length=1)
    objectives: list[Objective] = Field(min_length=1)
    scheduler: Asha | None = None
    num_samples: int = Field(ge=1)
    max_concurrent: int | None = Field(None, ge=1, description="None: as many as the cluster holds")
    resources: Resources | None = Field(None, description="None: the base config's train.* resources")
    sampler: Literal["auto", "tpe", "nsga2", "random"] = Field(
        "auto", description="auto: TPE (multi-objective TPE for several objectives)"
    )
    seed: int = Field(0, ge=0)
    storage_path: str = Field("sweeps_out", description="the sweep's directory is <storage_path>/<name>")

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def modes(self) -> list[str]:
        return [o.mode for o in self.objectives]

    def fingerprint(self) -> str:
        """What defines the sweep's trials (not where its results go)."""
        d = self.model_dump(exclude={"storage_path", "max_concurrent", "description"})
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_sweep(path: str | Path, storage_path: str | None = None) -> SweepSpec:
    return read_spec(path, SweepSpec, "sweep", storage_path)


def trial_config(base: ExperimentConfig, params: dict[str, Any], name: str, storage: str) -> ExperimentConfig:
    items = [f"{k}={json.dumps(v)}" for k, v in params.items()]
    data = apply_overrides(base.to_dict(), [*items, f"train.name={name}", f"train.storage_path={storage}"])
    return from_dict(data)


def check_space(spec: SweepSpec, base: ExperimentConfig) -> None:
    """Each key must be a config key the sweep may set, and each end of each range a value the config
    accepts together with the base (the same checks as `rayeq config check`)."""
    problems = []
    for key, dist in spec.space.items():
        if key.startswith(SWEEP_OWNED) or key in SWEEP_OWNED:
            problems.append(f"space.{key}: set by the sweep itself for each trial; it cannot be searched")
            continue
        for value in dist.probes():
            try:
                trial_config(base, {key: value}, "check", "/tmp")
            except ConfigError as exc:
                problems.append(f"space.{key} = {value!r}: {str(exc).strip()}")
                break
    if problems:
        raise ConfigError(f"sweep {spec.name!r} has a search space the config refuses:\n  " + "\n  ".join(problems))


def check_metrics(spec: SweepSpec, base: ExperimentConfig, reported: list[str]) -> None:
    wanted = [("objectives", m) for m in spec.metrics]
    if spec.scheduler is not None:
        wanted.append(("scheduler.metric", spec.scheduler.metric))
        if spec.scheduler.grace_period >= base.train.epochs:
            raise ConfigError(
                f"scheduler.grace_period={spec.scheduler.grace_period} must be below the base's "
                f"train.epochs={base.train.epochs}, or ASHA can never stop a trial early"
            )
    bad = [f"{where}: {m!r}" for where, m in wanted if m not in reported]
    if bad:
        raise ConfigError(
            f"sweep {spec.name!r} names metrics that training never reports: {', '.join(bad)}. "
            f"Training of this base reports: {', '.join(reported)} (tune against probe metrics, not the SSL loss, "
            "which is not comparable across loss weights)"
        )
    if len(set(spec.metrics)) != len(spec.metrics):
        raise ConfigError(f"sweep {spec.name!r} names an objective metric twice: {spec.metrics}")
