"""The per-worker function that Ray Train's TorchTrainer runs on every worker: a thin Ray host
around the plain-PyTorch `Engine` (context -> device -> Engine -> resume from Ray's checkpoint ->
DDP -> per epoch: the shard's batches through `run_epoch`, validation, `ray.train.report`)."""

from __future__ import annotations

import itertools
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from rayeq.checkpoint import TrainState
from rayeq.config import ExperimentConfig
from rayeq.rundir import RunDir
from rayeq.runinfo import RunInfo
from rayeq.train.engine import Engine, rank_batch_size
from rayeq.train.hooks import ConsoleProgress, MetricsFile, TrackerHook


def shuffle_rows(cfg: ExperimentConfig, batch_size: int) -> int | None:
    """The worker's local shuffle buffer in pairs (data.shuffle_rows; None for off)."""
    rows = cfg.data.shuffle_rows
    rows = max(4 * batch_size, 256) if rows is None else rows
    return rows or None


class Prefetch:
    """`items`, their first fetched in a background thread from construction on, the rest in the consumer's thread:
    a pipeline's start (a Ray Data execution's actors, their imports, its first shard) then overlaps other work (the
    model's build, a training epoch) instead of stalling the consumer. An error in the fetch is raised where the
    items are consumed."""

    def __init__(self, items: Iterable):
        self._it = iter(items)
        self._first: list = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._fetch, name="rayeq-prefetch", daemon=True)
        self._thread.start()

    def _fetch(self) -> None:
        try:
            self._first.append(next(self._it))
        except StopIteration:
            pass
        except BaseException as exc:  # raised in the consumer's thread
            self._error = exc

    def __iter__(self) -> Iterator:
        self._thread.join()
        if self._error is not None:
            raise self._error
        yield from self._first
        yield from self._it


def after_first(items: Iterable, fn: Callable[[], None]) -> Iterator:
    """`items`, calling `fn()` once the consumer is done with the first (when it asks for the next)."""
    for i, item in enumerate(items):
        yield item
        if i == 0:
            fn()


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
    # one iterator over all epochs' passes (build_ray_dataset), epochs counted in steps; its first batch is fetched
    # while the model is built (the stream's start: its actors, their imports, the first shard)
    per_rank = rank_batch_size(cfg, ctx.get_world_size())  # Engine.batch_size
    stream = iter(
        Prefetch(
            ray.train.get_dataset_shard("train").iter_torch_batches(
                batch_size=per_rank,
                drop_last=True,
                prefetch_batches=2,
                local_shuffle_buffer_size=shuffle_rows(cfg, per_rank),  # mix rows of different blocks
            )
        )
    )
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

    def val_batches() -> Prefetch:
        val = ray.train.get_dataset_shard("val").iter_torch_batches(batch_size=engine.val_batch_size)
        return Prefetch(itertools.islice(val, cfg.train.val_steps))  # val_steps None: all of them

    while engine.epoch < epochs:
        # validate every N epochs, at the end, and in a new run's first epoch (so that the val metrics, the
        # checkpoint score among them, are in every report); carried forward in between and across a resume
        epoch = engine.epoch + 1
        validates = info.has_val and (epoch % cfg.train.val_every_epochs == 0 or epoch == epochs or not last_val)
        batches: Iterable = itertools.islice(stream, engine.steps_per_epoch)
        val: list[Prefetch] = []
        if validates:  # the validation pipeline starts beside the epoch, once its first step is done
            batches = after_first(batches, lambda v=val: v.append(val_batches()))
        result = engine.run_epoch(batches, hooks)
        if validates:
            last_val = {**engine.validate(val[0] if val else val_batches()), "val/epoch": engine.epoch}
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
        RunDir(Path(run_dir)).record_workers({"time": time.time(), "from_epoch": epoch, "workers": everyone})


def _quiet_train_console() -> None:
    """Ray Train's worker logger writes every report (with all metrics) to the console at INFO; keep
    its console handler to warnings. Its log files are untouched."""
    from rayeq.cluster import quiet_console_handlers

    quiet_console_handlers("ray.train")
