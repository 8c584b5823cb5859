"""What a training run says when it ends: its final online probes beside their floors (`summary`, the closing lines of
`rayeq train` and the quickstart), or, when Ray Train gave up, what failed and what is kept (`failure_message`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayeq.config import ExperimentConfig
from rayeq.data.feed.augment import FAMILIES, target_key
from rayeq.methods import method_label
from rayeq.report import FLOOR_MARK, mark, number
from rayeq.rundir import RunDir
from rayeq.track import backend_of, look_at_line
from rayeq.train.probes import PER_DIM, R2_NAMES, probe_names, r2_name


@dataclass
class TrainResult:
    """What `run_training` returns: the run directory, the last epoch's metrics, the latest checkpoint, the wall time
    and the tracker repo."""

    run_dir: Path
    metrics: dict[str, Any]
    checkpoint_path: str | None
    seconds: float
    track_repo: str


def failure_message(cfg: ExperimentConfig, exc: BaseException) -> str:
    """What a user needs after Ray Train gave up: which run, what failed, what is kept, how to go on."""
    run_dir = RunDir.of(cfg)
    logged = run_dir.last_metrics().get("epoch", 0)
    kept = run_dir.kept_epoch()
    texts = [str(exc)]  # Ray's summary, then each worker's exception and what caused it (Ray Data wraps a UDF's)
    for failure in (getattr(exc, "worker_failures", None) or {}).values():
        for _ in range(8):
            if failure is None:
                break
            texts.append(f"{type(failure).__name__}: {failure}")
            failure = failure.__cause__ or getattr(failure, "cause", None)
    errors = [line.strip() for text in texts for line in text.splitlines() if line.strip()]
    # Ray's first line is a heading ("Training failed due to worker errors:"); the cause is further down: one of
    # rayeq's own errors (which name the culprit), else a lost actor or node, else the first error line
    cause = next(
        (x for pick in ("DataError:", "ConfigError:", "node has died", "died", "Error:") for x in errors if pick in x),
        errors[0] if errors else type(exc).__name__,
    )
    allowed = cfg.train.max_failures
    retries = "no lost worker or node is retried" if allowed == 0 else f"its {allowed} restart(s) were used up"
    resume = (
        f"{run_dir.path} keeps the checkpoint of epoch {kept}; rerun the same command to resume from it"
        if kept
        else "no checkpoint was kept yet; rerunning the same command starts again from epoch 1"
    )
    return (
        f"training run {cfg.train.name!r} failed (last epoch logged: {logged} of {cfg.train.epochs}; "
        f"train.max_failures={allowed}: {retries}). Ray Train said: {cause[:600]}\n"
        f"Nothing finished is lost: {resume}, or set train.max_failures=N (-1: no limit) so that Ray restarts "
        "lost workers by itself."
    )


SUMMARY_KEYS = (*probe_names(R2_NAMES), *(f"{r2_name(target_key(f))}{PER_DIM}" for f in FAMILIES))


def summary(res: TrainResult, cfg: ExperimentConfig) -> str:
    """The run's final online probes on held-out objects beside their floors: the same probes trained
    on the untrained encoder (`val/floor/*`) and, for R², what predicting the mean scores."""
    m = res.metrics
    lines = [f"run {cfg.train.name} ({method_label(cfg.method.name)}): {res.seconds:.0f}s, run dir {res.run_dir}"]
    for k in ("epoch", "train/total", "images_per_sec"):
        if k in m:
            lines.append(f"  {k:22s} {m[k]:.4f}" if isinstance(m[k], float) else f"  {k:22s} {m[k]}")
    split = "val" if "val/top1" in m else "train"
    rows = [k for k in SUMMARY_KEYS if f"{split}/{k}" in m]
    if rows:
        lines.append(
            f"  online probes on {'held-out' if split == 'val' else 'train'} objects "
            f"(epoch {m.get(f'{split}/epoch', m.get('epoch'))}):"
        )
        w = max(22, *(len(f"{split}/{k}") for k in rows))  # the image probes' names are longer
        lines.append(f"  {'metric':{w}s} {'encoder':>10s} {'untrained':>10s} {'mean pred.':>10s}")
        for k in rows:
            value, floor = m[f"{split}/{k}"], m.get(f"{split}/floor/{k}")
            # per dimension, predicting the mean scores R² 0 by definition; top-1 has no mean predictor here
            mean = 0.0 if k.endswith(PER_DIM) else m.get(f"{split}/{k}_mean_predictor")
            lines.append(
                f"  {split + '/' + k:{w}s} {value:10.4f} {number(floor, width=10)} {number(mean, width=10)}"
                f"{mark(value, floor, mean)}"
            )
        lines.append(f"  {FLOOR_MARK}: not above a floor (the untrained encoder's probes, or the mean predictor)")
        if not any(f"{split}/floor/{k}" in m for k in rows):
            lines.append("  (train.floor_probes is off: `rayeq eval RUN --fast` gives every metric with its floors)")
    if res.checkpoint_path:
        lines.append(f"  latest checkpoint      {res.checkpoint_path}")
    look = look_at_line(backend_of(cfg), res.track_repo)
    if look:
        lines.append(look)
    return "\n".join(lines)
