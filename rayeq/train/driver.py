"""`rayeq train`: everything that can be checked is checked before Ray starts; then a TorchTrainer
runs `train_loop_per_worker` over the Ray Data pipeline; `summary` prints the result beside its floors."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rayeq.checkpoint import score_attribute
from rayeq.cluster import LocalResources, check_resources, connect_ray, starts_local_ray, worker_resources
from rayeq.config import ConfigError, ExperimentConfig, from_dict, upgrade_stored_config
from rayeq.data.feed.augment import FAMILIES, target_key
from rayeq.data.feed.pipeline import check_data
from rayeq.report import FLOOR_MARK, mark, number
from rayeq.runinfo import RunInfo
from rayeq.track import backend_of, check_backend, resolve_track_repo
from rayeq.train.engine import Hooks
from rayeq.train.probes import r2_name

CONFIG_FILE = "config.yaml"


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]
    checkpoint_path: str | None
    seconds: float
    track_repo: str


def run_dir_of(cfg: ExperimentConfig) -> Path:
    return Path(cfg.train.storage_path).expanduser().resolve() / cfg.train.name


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return keys


def check_run_dir(cfg: ExperimentConfig, force: bool) -> Path:
    """A run directory with another config is refused (unless force); the same config resumes. Writes nothing
    (`prepare_run_dir` does, once every check has passed)."""
    run_dir = run_dir_of(cfg)
    saved = run_dir / CONFIG_FILE
    if saved.is_file():
        try:
            old = from_dict(upgrade_stored_config(yaml.safe_load(saved.read_text())))
        except (yaml.YAMLError, ConfigError) as exc:
            raise ConfigError(
                f"{saved} (the run's saved config) cannot be read ({str(exc).splitlines()[0]}); it is kept as it is: "
                "use another train.name for a new run, or move that run directory aside"
            ) from None
        if old.fingerprint() != cfg.fingerprint() and not force:
            from rayeq.config import OPERATIONAL_KEYS

            diff = [d for d in _diff(old.to_dict(), cfg.to_dict()) if not d.startswith(OPERATIONAL_KEYS)]
            raise ConfigError(
                f"run directory {str(run_dir)!r} holds a run made under a different config; resuming it "
                "with this one is refused. Differences:\n  " + "\n  ".join(diff) + "\nUse another "
                "train.name for a new run, or --force to resume that run's checkpoint with this config."
            )
    check_storage(run_dir)
    return run_dir


def prepare_run_dir(cfg: ExperimentConfig, run_dir: Path) -> None:
    """The run directory and its `config.yaml`; under --force a different saved config is kept as config.<n>.yaml."""
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / CONFIG_FILE
    if saved.is_file():
        old = from_dict(upgrade_stored_config(yaml.safe_load(saved.read_text())))
        if old.fingerprint() != cfg.fingerprint():
            n = 1
            while (run_dir / f"config.{n}.yaml").exists():
                n += 1
            shutil.copy(saved, run_dir / f"config.{n}.yaml")
    cfg.dump(saved)


MIN_FREE_BYTES = 1 << 30  # a ResNet-18 run keeps ~3 checkpoints of ~200 MB (weights, AdamW moments, probes)


def check_storage(run_dir: Path) -> None:
    """The run directory can be made and written, with room for checkpoints, before anything starts (a read-only
    or full train.storage_path would otherwise fail at the first checkpoint, after an epoch of work). Probed in
    the nearest directory that exists, with a temporary file that is removed: nothing is left behind."""
    import tempfile

    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "not a directory", str(existing))
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".rayeq-write-probe-") as f:
            f.write(b"0" * 4096)
            f.flush()
    except OSError as exc:
        raise ConfigError(
            f"train.storage_path: cannot write the run directory {str(run_dir)!r} ({exc.strerror or exc} in "
            f"{str(existing)!r}); use a writable path (on a cluster: shared storage every node mounts)"
        ) from None
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise ConfigError(
            f"train.storage_path: {str(run_dir)!r} has {free / 2**20:.0f} MiB free; a run needs at least "
            f"{MIN_FREE_BYTES / 2**20:.0f} MiB for its checkpoints (train.keep_checkpoints best + the latest)"
        )


def finished_run(cfg: ExperimentConfig) -> dict[str, Any] | None:
    """The latest kept checkpoint's result when the run already reached train.epochs (a rerun of a finished run
    answers at once, without starting Ray); None otherwise."""
    kept = kept_result(run_dir_of(cfg))
    return kept if kept and int(kept["metrics"].get("epoch", 0)) >= cfg.train.epochs else None


def run_training(
    cfg: ExperimentConfig,
    address: str | None = None,
    force: bool = False,
    log=print,
    hooks: list[Hooks] | tuple = (),
    autoscaling: bool = False,
) -> TrainResult:
    """Train `cfg` to its last epoch (resuming the run directory's latest checkpoint). `hooks` run
    on every worker beside rayeq's own (e.g. a test's fault injection); `autoscaling`: the cluster adds the
    nodes the workers need, so its present resources are not checked."""
    t0 = time.perf_counter()
    check_run_dir(cfg, force)  # a changed config is refused before a finished run is reported
    done, run_dir = finished_run(cfg), run_dir_of(cfg)
    if done is not None:
        log(
            f"run {cfg.train.name!r} is already complete ({done['metrics']['epoch']}/{cfg.train.epochs} epochs) in "
            f"{run_dir}; raise train.epochs to train further, or use another train.name for a new run"
        )
        ckpt = str(run_dir / done["checkpoint_dir_name"])
        return TrainResult(run_dir, done["metrics"], ckpt, time.perf_counter() - t0, resolve_track_repo(cfg))
    trainer, run_dir, track_repo = build_trainer(cfg, address, force, log, hooks=hooks, autoscaling=autoscaling)
    from rayeq.cluster import flush_console

    try:
        result = trainer.fit()
    finally:
        flush_console()  # the workers' last lines before the summary (or the failure message)
    metrics = dict(result.metrics or {})
    ckpt = result.checkpoint.path if result.checkpoint else None
    return TrainResult(run_dir, metrics, ckpt, time.perf_counter() - t0, track_repo)


def build_trainer(
    cfg: ExperimentConfig,
    address: str | None = None,
    force: bool = False,
    log=print,
    callbacks: list | tuple = (),
    extra_params: dict[str, Any] | None = None,
    hooks: list[Hooks] | tuple = (),
    autoscaling: bool = False,
):
    """Check everything, connect to Ray and build the TorchTrainer of a run (not started). `callbacks`
    go on Train's RunConfig (a sweep's TuneReportCallback); `extra_params` are logged to the run's
    Aim hparams next to the config (a sweep's name, trial and sampled values)."""
    check_backend(cfg)
    if not autoscaling and starts_local_ray(address):
        check_resources(cfg, LocalResources())  # refused before Ray starts, and before the data is made
    meta, _ = check_data(cfg, "train")
    n_train = meta["splits"]["train"]
    if n_train < cfg.train.batch_size:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} is larger than the {n_train} training rows of {cfg.data.path!r}"
        )
    run_dir = check_run_dir(cfg, force)
    track_repo = resolve_track_repo(cfg)
    info = RunInfo.from_meta(cfg, meta, run_dir=str(run_dir), track_repo=track_repo, track_backend=backend_of(cfg),
                             force=force, extra_params=extra_params or {})  # fmt: skip

    ray = connect_ray(address, log)
    if not autoscaling:
        check_resources(cfg, ray)
    prepare_run_dir(cfg, run_dir)  # every check has passed: the first write
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from rayeq.data.feed.pipeline import build_ray_dataset, stream_options
    from rayeq.train.loop import train_loop_per_worker

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # rayeq prints steps, throughput and ETA itself
    ctx.print_on_execution_start = False
    datasets = {"train": build_ray_dataset(cfg, "train", passes=cfg.train.epochs)}  # all epochs in one stream
    if info.has_val:
        datasets["val"] = build_ray_dataset(cfg, "val", beside_training=True)
    t = cfg.train
    resources = worker_resources(cfg)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "info": info, "hooks": list(hooks)},
        scaling_config=ScalingConfig(
            num_workers=t.num_workers,
            use_gpu=t.use_gpu,
            resources_per_worker=resources,
            placement_strategy=t.placement_strategy,
        ),
        run_config=RunConfig(
            name=t.name,
            storage_path=str(run_dir.parent),
            checkpoint_config=CheckpointConfig(
                num_to_keep=t.keep_checkpoints,
                # held-out top-1 where the held-out classes are training's (the photo set reports none)
                checkpoint_score_attribute=score_attribute(info.has_val and info.classes_shared),
                checkpoint_score_order="max",
            ),
            failure_config=FailureConfig(max_failures=t.max_failures),
            logging_config=LoggingConfig(log_level="WARNING"),  # rayeq prints its own progress
            callbacks=list(callbacks),
        ),
        datasets=datasets,
        # how far the training stream runs ahead of training: its object-store budget
        dataset_config=DataConfig(execution_options={"train": stream_options(cfg, ray)}),
    )
    log(
        f"training {cfg.method.name} on {meta['source']} ({n_train} train objects/images) with "
        f"{t.num_workers} worker(s) x {resources}; run dir {run_dir}"
    )
    return trainer, run_dir, track_repo


def kept_result(run_dir: Path) -> dict[str, Any] | None:
    """The result Ray Train resumes from (its checkpoint manager's snapshot): `checkpoint_dir_name` and the
    `metrics` reported with it; None before the first kept checkpoint."""
    import json

    try:
        latest = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())["latest_checkpoint_result"]
        return {"checkpoint_dir_name": str(latest["checkpoint_dir_name"]), "metrics": dict(latest["metrics"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def kept_epoch(run_dir: Path) -> int | None:
    """The epoch of the checkpoint Ray Train resumes from, if any."""
    kept = kept_result(run_dir)
    try:
        return int(kept["metrics"]["epoch"]) if kept else None
    except (KeyError, TypeError, ValueError):
        return None


def failure_message(cfg: ExperimentConfig, exc: BaseException) -> str:
    """What a user needs after Ray Train gave up: which run, what failed, what is kept, how to go on."""
    import json

    run_dir = run_dir_of(cfg)
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    logged = json.loads(lines[-1])["epoch"] if lines else 0
    kept = kept_epoch(run_dir)
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
        f"{run_dir} keeps the checkpoint of epoch {kept}; rerun the same command to resume from it"
        if kept
        else "no checkpoint was kept yet; rerunning the same command starts again from epoch 1"
    )
    return (
        f"training run {cfg.train.name!r} failed (last epoch logged: {logged} of {cfg.train.epochs}; "
        f"train.max_failures={allowed}: {retries}). Ray Train said: {cause[:600]}\n"
        f"Nothing finished is lost: {resume}, or set train.max_failures=N (-1: no limit) so that Ray restarts "
        "lost workers by itself."
    )


SUMMARY_KEYS = ("top1", "top1_inv", "rot_r2", "rot_r2_per_dim", "color_r2", "color_r2_per_dim",
                *(f"{r2_name(target_key(f))}_per_dim" for f in FAMILIES))  # fmt: skip


def summary(res: TrainResult, cfg: ExperimentConfig) -> str:
    """The run's final online probes on held-out objects beside their floors: the same probes trained
    on the untrained encoder (`val/floor/*`) and, for R², what predicting the mean scores."""
    from rayeq.methods import method_label
    from rayeq.track import look_at_line

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
            mean = 0.0 if k.endswith("_per_dim") else m.get(f"{split}/{k}_mean_predictor")
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
