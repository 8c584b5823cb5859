"""What the training host runs around the engine on the main rank: console progress (steps,
throughput, ETA), the tracker (Aim: loss curves, epoch metrics, view/reconstruction pictures) and
`metrics.jsonl` in the run directory. Plain Python: the Ray worker passes them to the `Engine`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from rayeq.config import ExperimentConfig
from rayeq.data.feed.augment import target_key
from rayeq.data.feed.normalize import denormalize
from rayeq.report import mark
from rayeq.rundir import RunDir
from rayeq.runinfo import RunInfo
from rayeq.train.engine import Engine, EpochResult, Hooks
from rayeq.train.probes import PER_DIM, TOP1, r2_name


def write(*parts, flush: bool = True) -> None:
    """Progress straight to stdout (Ray Train patches print() in workers: every line would show twice)."""
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
    if flush:
        sys.stdout.flush()


def fmt_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class ConsoleProgress(Hooks):
    """A line every `train.log_every_steps` steps (loss terms, steady images/s, ETA) and one per epoch."""

    def __init__(self, cfg: ExperimentConfig, say=write):
        self.cfg, self.say = cfg, say
        self.t_run, self.start_epoch = time.perf_counter(), None
        self.first: tuple[float, int] | None = None  # (time, steps done) at the first line: the start-up excluded

    def _eta(self, done: int, left: int) -> float:
        """Seconds left at the pace since the first line (the first steps include Ray Data's start-up)."""
        now = time.perf_counter()
        if self.first is None or done <= self.first[1]:
            return (now - self.t_run) / max(done, 1) * left
        return (now - self.first[0]) / (done - self.first[1]) * left

    def on_step(self, engine: Engine, n: int, out, terms: dict[str, float]) -> None:
        if self.start_epoch is None:
            self.start_epoch = engine.epoch
        spe, epochs = engine.steps_per_epoch, self.cfg.train.epochs
        if not engine.is_log_step(n):
            return
        elapsed = time.perf_counter() - engine.epoch_started
        ips = 2 * self.cfg.train.batch_size * n / max(elapsed, 1e-9)  # n steps since the first batch arrived
        done = (engine.epoch - self.start_epoch) * spe + n
        # no ETA on a session's first line: its pace is mostly Ray Data's start-up
        eta = f" ETA {fmt_seconds(self._eta(done, (epochs - self.start_epoch) * spe - done))}" if self.first else ""
        if self.first is None:
            self.first = (time.perf_counter(), done)
        shown = " ".join(f"{k}={v:.3f}" for k, v in terms.items() if k != "total")
        self.say(
            f"epoch {engine.epoch + 1}/{epochs} step {n}/{spe} loss {terms['total']:.4f} ({shown}) {ips:.0f} img/s{eta}"
        )

    def on_epoch_end(self, engine: Engine, result: EpochResult) -> None:
        m, epochs = result.metrics, self.cfg.train.epochs
        spe = engine.steps_per_epoch
        done = (engine.epoch - (self.start_epoch or 0)) * spe
        eta = self._eta(done, (epochs - engine.epoch) * spe)
        self.say(
            f"epoch {engine.epoch}/{epochs} done in {fmt_seconds(m['epoch_seconds'])}: loss {m['train/total']:.4f}, "
            f"{m['images_per_sec']:.0f} img/s" + (f", ETA {fmt_seconds(eta)}" if engine.epoch < epochs else "")
        )
        # the probes only when they were measured now: held-out objects when validation ran this epoch (other
        # epochs carry the last validation forward), else, on a set without a held-out split, train objects
        split = "val" if m.get("val/epoch") == engine.epoch else None if "val/epoch" in m else "train"
        chance = 1 / engine.info.num_classes if getattr(engine, "info", None) and engine.info.num_classes else None
        line = probe_line(m, split, chance) if split else ""
        if line:
            where = "held-out" if split == "val" else "train"
            self.say(f"  probes on {where} objects: {line}")


# image sets: the pair's relative augmentation parameters, R² per dimension (a mean predictor: 0)
AUG_LABELS = {"rotation": "rotation", "color": "colour", "blur": "blur", "translation": "shift"}
PROBE_LABELS = {TOP1: "top-1", r2_name("rel_rotation"): "rotation R²", r2_name("rel_color"): "colour R²",
                **{f"{r2_name(target_key(f))}{PER_DIM}": f"{name} R²" for f, name in AUG_LABELS.items()}}  # fmt: skip


def probe_line(m: dict[str, float], split: str, chance: float | None = None) -> str:
    """`top-1 0.096 (untrained 0.085, chance 0.043) · rotation R² 0.218 ▼ (untrained 0.214, mean 0.230) · ...`: each
    probe of `split` beside its floors (the untrained encoder's probe, the mean predictor, chance), ▼ when not above
    one."""
    parts = []
    for key, label in PROBE_LABELS.items():
        value = m.get(f"{split}/{key}")
        if value is None:
            continue
        # per dimension a mean predictor scores 0 by definition
        mean = chance if key == TOP1 else 0.0 if key.endswith(PER_DIM) else m.get(f"{split}/{key}_mean_predictor")
        floors = {"untrained": m.get(f"{split}/floor/{key}"), "chance" if key == TOP1 else "mean": mean}
        floors = {k: v for k, v in floors.items() if v is not None}
        shown = ", ".join(f"{k} {v:.3f}" for k, v in floors.items())
        parts.append(f"{label} {value:.3f}{mark(value, *floors.values())}" + (f" ({shown})" if shown else ""))
    return " · ".join(parts)


class TrackerHook(Hooks):
    """Loss terms at the console's steps; train, val and throughput metrics per epoch; every
    `track.image_every_epochs` epochs a picture of the last batch's views (and reconstructions)."""

    def __init__(self, cfg: ExperimentConfig, info: RunInfo, tracker):
        self.cfg, self.info, self.tracker = cfg, info, tracker

    def on_step(self, engine: Engine, n: int, out, terms: dict[str, float]) -> None:
        if engine.is_log_step(n):
            self.tracker.log_metrics({f"loss/{k}": v for k, v in terms.items()}, engine.step_count, engine.epoch)

    def on_epoch_end(self, engine: Engine, result: EpochResult) -> None:
        m, step, epoch, log = result.metrics, engine.step_count, engine.epoch, self.tracker.log_metrics
        log({k: v for k, v in m.items() if "/" in k and k.startswith("train")}, step, epoch, subset="train")
        log({k: v for k, v in m.items() if k.startswith("val/")}, step, epoch, "val")
        log({"images_per_sec": m["images_per_sec"], "lr": m["lr"]}, step, epoch)
        if epoch % self.cfg.track.image_every_epochs == 0 and result.last is not None:
            grid = image_grid(*result.last, self.info.mean, self.info.std)
            caption = "rows: view 1, view 2[, reconstruction target, reconstruction]"
            self.tracker.log_image("views_and_reconstructions", grid, step, epoch, caption=caption)


class MetricsFile(Hooks):
    """One line of metrics per epoch in the run directory's metrics.jsonl (`RunDir.record_epoch`: a resumed run adds
    to it, an epoch that ran again replaces its earlier line)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = RunDir(Path(run_dir))

    def on_epoch_end(self, engine: Engine, result: EpochResult) -> None:
        self.run_dir.record_epoch(result.metrics)


def image_grid(batch, out, mean, std, n: int = 8) -> np.ndarray:
    """Rows: view 1, view 2 and, for xrecon, the reconstruction target and the reconstruction."""
    rows = [denormalize(batch["view1"][:n], mean, std), denormalize(batch["view2"][:n], mean, std)]
    if out.reconstruction is not None:
        size = batch["view1"].shape[-1]
        for x in (out.recon_target, out.reconstruction):
            up = torch.nn.functional.interpolate(x[:n].float(), size=(size, size), mode="nearest")
            rows.append(denormalize(up, mean, std))
    grid = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)  # (3, rows*S, n*S)
    return grid.permute(1, 2, 0).numpy()
