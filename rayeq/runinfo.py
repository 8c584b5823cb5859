"""`RunInfo`: what a training run knows besides its config, built once from the data set's
`meta.json` and the config: facts of the data (sizes, classes, normalisation, which targets the
probes regress and their widths) and the run's identity (config hash, run directory, tracker)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rayeq.config import ExperimentConfig
from rayeq.data.feed.augment import FAMILIES, enabled_families, target_key
from rayeq.data.feed.normalize import norm_stats
from rayeq.data.feed.targets import target_widths
from rayeq.data.schema import is_objects


def image_target_widths(cfg: ExperimentConfig) -> dict[str, int]:
    """Image sets: the probes regress the relative parameters of every augmentation family the pairs vary."""
    return {target_key(f): len(FAMILIES[f]) for f in enabled_families(cfg.augment)}


@dataclass(frozen=True)
class RunInfo:
    n_train: int  # training rows (objects or images)
    n_val: int
    num_classes: int
    three_d: bool  # a 3D object set: pairs carry relative rotation and colour targets
    mean: list[float]  # the per-channel normalisation the encoder trains with
    std: list[float]
    regress: dict[str, int]  # the probes' regression targets and their widths (image sets: aug_<family>)
    classes_shared: bool = True  # the held-out split's classes are training's (not the photo set's: no held-out top-1)
    config_hash: str = ""
    run_dir: str | None = None  # metrics.jsonl goes here
    track_repo: str | None = None
    track_backend: str = "none"  # track.backend resolved once, by the driver (`auto` -> aim or tensorboard)
    force: bool = False  # resume a checkpoint made under another config
    extra_params: dict[str, Any] = field(default_factory=dict)  # logged beside the config (a sweep's trial)

    @classmethod
    def from_meta(cls, cfg: ExperimentConfig, meta: dict[str, Any], **identity) -> RunInfo:
        three_d = is_objects(meta)
        mean, std = norm_stats(meta)
        splits = meta["splits"]
        return cls(
            n_train=splits["train"],
            n_val=splits.get("val", 0),
            num_classes=len(meta["classes"]),
            three_d=three_d,
            classes_shared=meta.get("classes_shared", True),
            mean=mean,
            std=std,
            regress=target_widths(cfg.data.color_target, three_d) if three_d else image_target_widths(cfg),
            config_hash=identity.pop("config_hash", cfg.fingerprint()),
            **identity,
        )

    @property
    def has_val(self) -> bool:
        return self.n_val > 0

    def data_facts(self) -> dict[str, Any]:
        """What a checkpoint records of the data (an encoder is evaluated with its own normalisation)."""
        return {"mean": self.mean, "std": self.std, "num_classes": self.num_classes}
