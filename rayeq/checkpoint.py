"""One training checkpoint: what it holds (`TrainState`), how it is written and read, which of a
run's checkpoints is best, and a checkpoint loaded as a frozen encoder (`LoadedCheckpoint`).

Training writes it (train/loop.py, each epoch); resuming, `rayeq eval` and sweeps read it. On disk a
checkpoint is a directory with `state.pt`, a plain dict of the `TrainState` fields; where a run keeps its
checkpoints, and which one is its latest or best, is `rundir.py`'s."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from rayeq.config import ExperimentConfig
from rayeq.methods import build_method

STATE_FILE = "state.pt"
# the best checkpoint: highest held-out top-1 of the online linear probe (train top-1 without a val split)
SCORE_KEYS = ("val/top1", "train/top1")
TRAINING_PARTS = ("model", "optimizer", "probe_optimizer", "scheduler", "scaler")


def score_attribute(has_val: bool) -> str:
    """The metric Ray Train keeps the best checkpoints by."""
    return SCORE_KEYS[0] if has_val else SCORE_KEYS[1]


def checkpoint_score(metrics: dict[str, Any]) -> float:
    return metrics.get(SCORE_KEYS[0], metrics.get(SCORE_KEYS[1], -1.0))


class CheckpointMismatch(RuntimeError):
    pass


@dataclass
class TrainState:
    """model ... scaler: the state dicts of `Engine.state_dict()` (an encoder-only checkpoint, such as the untrained
    baseline's, has none of the training parts); epoch: epochs done; step: optimiser steps done; data: the
    normalisation and class count the encoder was trained with."""

    model: dict[str, Any]
    epoch: int
    step: int
    config: dict[str, Any]
    optimizer: dict[str, Any] = field(default_factory=dict)
    probe_optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] = field(default_factory=dict)
    config_hash: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    tracker_run_id: str | None = None
    track_repo: str | None = None
    track_backend: str | None = None  # None: a checkpoint from before TensorBoard, tracked by Aim

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / STATE_FILE
        torch.save(asdict(self), path)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> TrainState:
        state = read_state(Path(directory))
        return cls(**{k: state[k] for k in cls.__dataclass_fields__ if k in state})

    def training_state(self) -> dict[str, Any]:
        """What `Engine.load_state_dict` restores."""
        return {**{k: getattr(self, k) for k in TRAINING_PARTS}, "epoch": self.epoch, "step": self.step}

    def check_config(self, config_hash: str, force: bool) -> None:
        if self.config_hash != config_hash and not force:
            raise CheckpointMismatch(
                f"checkpoint was made under config {self.config_hash}, this run is {config_hash}; "
                "rerun with --force to load it anyway"
            )


def read_state(checkpoint_dir: Path) -> dict[str, Any]:
    return torch.load(Path(checkpoint_dir) / STATE_FILE, map_location="cpu", weights_only=False)


@dataclass
class LoadedCheckpoint:
    """A checkpoint as a frozen encoder: where it is, its run directory, its config (as evaluated) and its state.
    `rundir.load_checkpoint` reads one; `untrained` makes the untrained baseline of the same architecture."""

    path: Path  # the checkpoint directory
    run_dir: Path
    cfg: ExperimentConfig
    state: TrainState

    @classmethod
    def untrained(cls, cfg: ExperimentConfig, data: dict[str, Any], where: Path) -> LoadedCheckpoint:
        """An untrained encoder of `cfg`'s architecture (its weights drawn from `train.seed`), evaluated with `data`'s
        normalisation and class count; `where` stands for its checkpoint and run directory (the floor's cache)."""
        torch.manual_seed(cfg.train.seed)
        method = build_method(cfg, data.get("num_classes"))
        model = {f"method.{k}": v for k, v in method.state_dict().items()}
        return cls(where, where, cfg, TrainState(model=model, epoch=0, step=0, config=cfg.to_dict(), data=data))

    def norm_stats(self, data_dir: Path) -> tuple[list[float], list[float]]:
        """The normalisation the encoder is evaluated with: the one it was trained with, else the data set's own;
        SIE's fixed constants under `eval.normalization=sie` (or `eval.preset=sie`)."""
        if self.cfg.eval.protocol()["normalization"] == "sie":
            from rayeq.data.feed.normalize import SIE_MEAN, SIE_STD

            return list(SIE_MEAN), list(SIE_STD)
        data = self.state.data
        if data.get("mean") is not None:
            return data["mean"], data["std"]
        from rayeq.data.feed.normalize import norm_stats
        from rayeq.data.schema import read_meta

        return norm_stats(read_meta(data_dir))

    def method_weights(self) -> dict[str, torch.Tensor]:
        """The method's state dict (the checkpoint also holds the online probes)."""
        return {k[len("method.") :]: v for k, v in self.state.model.items() if k.startswith("method.")}

    @property
    def num_classes(self) -> int | None:
        return self.state.data.get("num_classes")

    def encoder(self) -> torch.nn.Module:
        method = build_method(self.cfg, self.num_classes)
        method.load_state_dict(self.method_weights())
        return method.eval()
