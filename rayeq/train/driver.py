"""`rayeq train`: everything that can be checked is checked before Ray starts; then a TorchTrainer runs
`train_loop_per_worker` over the Ray Data pipeline. What the run's directory holds is `rundir.py`'s; what a run
says when it ends (its summary beside the floors, or why it failed) is `train/summary.py`'s."""

from __future__ import annotations

import time
from typing import Any

from rayeq.checkpoint import score_attribute
from rayeq.cluster import (
    LocalResources,
    check_resources,
    connect_ray,
    flush_console,
    starts_local_ray,
    worker_resources,
)
from rayeq.config import ConfigError, ExperimentConfig
from rayeq.data.feed.pipeline import build_ray_dataset, check_data, stream_options
from rayeq.rundir import RunDir
from rayeq.runinfo import RunInfo
from rayeq.track import backend_of, check_backend, resolve_track_repo
from rayeq.train.engine import Hooks
from rayeq.train.summary import TrainResult


def finished_run(cfg: ExperimentConfig) -> dict[str, Any] | None:
    """The latest kept checkpoint's result when the run already reached train.epochs (a rerun of a finished run
    answers at once, without starting Ray); None otherwise."""
    kept = RunDir.of(cfg).kept_result()
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
    run_dir = RunDir.of(cfg)
    run_dir.check(cfg, force)  # a changed config is refused before a finished run is reported
    done = finished_run(cfg)
    if done is not None:
        log(
            f"run {cfg.train.name!r} is already complete ({done['metrics']['epoch']}/{cfg.train.epochs} epochs) in "
            f"{run_dir.path}; raise train.epochs to train further, or use another train.name for a new run"
        )
        ckpt = str(run_dir.path / done["checkpoint_dir_name"])
        return TrainResult(run_dir.path, done["metrics"], ckpt, time.perf_counter() - t0, resolve_track_repo(cfg))
    trainer, run_dir, track_repo = build_trainer(cfg, address, force, log, hooks=hooks, autoscaling=autoscaling)
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
    run_dir = RunDir.of(cfg)
    saved = run_dir.check(cfg, force)
    track_repo = resolve_track_repo(cfg)
    info = RunInfo.from_meta(cfg, meta, run_dir=str(run_dir.path), track_repo=track_repo, track_backend=backend_of(cfg),
                             force=force, extra_params=extra_params or {})  # fmt: skip

    ray = connect_ray(address, log)
    if not autoscaling:
        check_resources(cfg, ray)
    run_dir.prepare(cfg, saved)  # every check has passed: the first write
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

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
            storage_path=str(run_dir.path.parent),
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
        f"{t.num_workers} worker(s) x {resources}; run dir {run_dir.path}"
    )
    return trainer, run_dir.path, track_repo
