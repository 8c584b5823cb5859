"""The per-worker function that Ray Train's TorchTrainer runs on every worker: a thin Ray host
around the plain-PyTorch `Engine` (context -> device -> Engine -> resume from Ray's checkpoint ->
DDP -> per epoch: the shard's batches through `run_epoch`, validation, `ray.train.report`)."""

from __future__ import annotations

import itertools
import tempfile
from typing import Any

import torch

from rayeq.checkpoint import TrainState
from rayeq.config import ExperimentConfig
from rayeq.runinfo import RunInfo
from rayeq.train.engine import Engine
from rayeq.train.hooks import ConsoleProgress, MetricsFile, TrackerHook


def shuffle_rows(cfg: ExperimentConfig, batch_size: int) -> int | None:
    """The worker's local shuffle buffer in pairs (data.shuffle_rows; None for off)."""
    rows = cfg.data.shuffle_rows
    rows = max(4 * batch_size, 256) if rows is None else rows
    return rows or None


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """config: {"cfg": the config as a dict, "info": RunInfo, "hooks": extra `Hooks` run on every rank}."""
    import ray.train
    import ray.train.torch

    cfg = ExperimentConfig.model_validate(config["cfg"])
    info: RunInfo = config["info"]
    ctx = ray.train.get_context()
    is_main = ctx.get_world_rank() == 0
    torch.manual_seed(cfg.train.seed)
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    _quiet_train_console()
    from rayeq.cluster import worker_console

    # a sweep's trials and a study's runs say which one is speaking
    part_of = info.extra_params.get("sweep") or info.extra_params.get("study")
    say = worker_console(f"[{cfg.train.name}] " if part_of else "")
    engine = Engine(cfg, info, ray.train.torch.get_device(), ctx.get_world_size())
    hooks = list(config.get("hooks", ()))

    run_id, checkpoint = None, ray.train.get_checkpoint()
    last_val: dict[str, float] = {}
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = TrainState.load(d)
        state.check_config(info.config_hash, info.force)
        engine.load_state_dict(state.training_state())
        run_id = state.tracker_run_id
        # the checkpoint's validation is carried forward (a resumed session need not validate at once)
        last_val = {k: v for k, v in state.metrics.items() if k.startswith("val/")}
        for h in hooks:
            h.on_restored(engine)
        if is_main:
            say(f"resumed from checkpoint at epoch {engine.epoch} (step {engine.step_count})")
    engine.wrap(lambda m: ray.train.torch.prepare_model(m, parallel_strategy_kwargs={"find_unused_parameters": False}))
    record_placement(info.run_dir, engine.epoch, is_main, say)

    tracker = None
    if is_main:
        from rayeq.track import open_tracker

        experiment = cfg.track.experiment or cfg.train.name
        tracker = open_tracker(info.track_backend, info.track_repo, experiment, run_id, name=cfg.train.name)
        if checkpoint is None:
            tracker.log_params({**cfg.to_dict(), **info.extra_params})
        files = [MetricsFile(info.run_dir)] if info.run_dir else []
        hooks = [ConsoleProgress(cfg, say), TrackerHook(cfg, info, tracker), *files, *hooks]
    epochs = cfg.train.epochs
    if engine.epoch >= epochs and is_main:
        say(f"run already complete ({engine.epoch}/{epochs} epochs); raise train.epochs to continue")
    # one iterator over all epochs' passes (build_ray_dataset), epochs counted in steps; lazy: the
    # dataset runs from the first batch taken
    stream = iter(
        ray.train.get_dataset_shard("train").iter_torch_batches(
            batch_size=engine.batch_size,
            drop_last=True,
            prefetch_batches=2,
            local_shuffle_buffer_size=shuffle_rows(cfg, engine.batch_size),  # mix rows of different blocks
        )
    )
    while engine.epoch < epochs:
        result = engine.run_epoch(itertools.islice(stream, engine.steps_per_epoch), hooks)
        # validate every N epochs, at the end, and in a new run's first epoch (so that the val metrics, the
        # checkpoint score among them, are in every report); carried forward in between and across a resume
        if info.has_val and (engine.epoch % cfg.train.val_every_epochs == 0 or engine.epoch == epochs or not last_val):
            val = ray.train.get_dataset_shard("val").iter_torch_batches(batch_size=engine.val_batch_size)
            val = itertools.islice(val, cfg.train.val_steps)  # None: all of them
            last_val = {**engine.validate(val), "val/epoch": engine.epoch}
        result.metrics.update(last_val)
        for h in hooks:
            h.on_epoch_end(engine, result)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if is_main:
                TrainState(
                    **engine.state_dict(),
                    config_hash=info.config_hash,
                    config=cfg.to_dict(),
                    metrics=result.metrics,
                    data=info.data_facts(),
                    tracker_run_id=tracker.run_id,
                    track_repo=info.track_repo,
                    track_backend=info.track_backend,
                ).save(tmp)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(result.metrics, checkpoint=ckpt)
    if tracker is not None:
        tracker.close()


def record_placement(run_dir: str | None, epoch: int, is_main: bool, say=print) -> None:
    """Where this session's workers run: rank 0 prints it and appends one line to `<run dir>/workers.jsonl`
    (a restart after a lost worker or node adds another line, with the epoch it resumed from)."""
    import json
    import os
    import socket
    import time

    import ray
    import torch.distributed as dist

    me = {"rank": dist.get_rank() if dist.is_initialized() else 0, "node_id": ray.get_runtime_context().get_node_id(),
          "host": socket.gethostname(), "pid": os.getpid()}  # fmt: skip
    everyone = [me]
    if dist.is_initialized() and dist.get_world_size() > 1:
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, me)
    if not is_main:
        return
    say("workers: " + ", ".join(f"rank {w['rank']} on node {w['node_id'][:8]} ({w['host']})" for w in everyone))
    if run_dir:
        with open(os.path.join(run_dir, "workers.jsonl"), "a") as f:
            f.write(json.dumps({"time": time.time(), "from_epoch": epoch, "workers": everyone}) + "\n")


def _quiet_train_console() -> None:
    """Ray Train's worker logger writes every report (with all metrics) to the console at INFO; keep
    its console handler to warnings. Its log files are untouched."""
    from rayeq.cluster import quiet_console_handlers

    quiet_console_handlers("ray.train")
