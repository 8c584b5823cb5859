"""`rayeq bench`: the figures a user checks before trusting rayeq with their compute.

throughput: steady-state training images/s of (a) a plain single-process PyTorch loop fed by the
same pair/augment code and (b) rayeq's real path (Ray Train TorchTrainer + Ray Data, 1 worker), with
the same model, data, batch, image size and torch thread count; their ratio; for xrecon the step
time against its base SSL method alone (the reconstruction overhead); on a GPU the same under bf16
autocast and channels_last, with the memory peak.

data: render images/s per core of the PyTorch renderer and of the pybullet reference side by side, their parity
on a fixed sample (silhouette IoU, mean absolute pixel difference) and a contact sheet of both; on a GPU the
PyTorch renderer's images/s there; `rayeq data synth3d`'s images/s with its processes; the pair pipeline's pairs/s
on its own (Ray Data, and the plain single-process maker), against the pairs/s that training consumes.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from rayeq.config import ConfigError, ExperimentConfig, apply_overrides, from_dict, load_config
from rayeq.data.make.parity import (
    IEBENCH_IMAGES,
    compare,
    contact_sheet,
    device_rate,
    parity_sample,
    timed_render,
)
from rayeq.rundir import RunDir
from rayeq.runinfo import RunInfo
from rayeq.train.engine import Engine

# the CPU-sized model of the figures in docs/PERFORMANCE.md (the quickstart's until issue 28: compact stem, 32 px
# views of the built-in set), on 1 worker (train.epochs: the plain loop's cosine schedule spans 100 x 10,000 steps,
# i.e. a constant lr)
BENCH_OVERRIDES = [
    "data.source=synth3d",
    "data.image_size=32",
    "data.cpus_per_actor=0.4",
    "data.num_actors=1",
    "model.stem=compact",
    "model.projector=[512,512]",
    "method.name=xrecon",
    "method.decoder.width=64",
    "method.decoder.recon_size=32",
    "loss.sim_weight=10",
    "loss.std_weight=10",
    "loss.cov_weight=1",
    "optim.lr=0.002",
    "optim.scale_lr=false",
    "optim.warmup_epochs=0",
    "train.num_workers=1",
    "train.cpus_per_worker=0.5",
    "train.batch_size=64",
    "train.steps_per_epoch=36",
    "train.val_every_epochs=4",
    "train.keep_checkpoints=2",
    "train.epochs=100",
    "train.log_every_steps=1000",
    "track.image_every_epochs=2",
    "track.backend=none",
]


def _stats(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "spread_pct": 100 * (max(values) - min(values)) / statistics.median(values) if values else 0.0,
        "repeats": values,
    }


def bench_config(method: str, size: int, batch: int, threads: int, overrides: list[str] = ()) -> ExperimentConfig:
    return load_config(
        None,
        [
            *BENCH_OVERRIDES,
            f"method.name={method}",
            f"data.image_size={size}",
            f"train.batch_size={batch}",
            f"train.cpus_per_worker={threads}",
            f"train.torch_threads={threads}",
            *overrides,
        ],
    )


def _engine(cfg: ExperimentConfig, device: str) -> Engine:
    """The training `Engine` of `cfg` in this process, compiled when train.compile; its schedule spans
    10,000 steps per epoch x train.epochs, i.e. a constant lr here."""
    from rayeq.data.feed.pipeline import check_data

    meta, _ = check_data(cfg, "train")
    torch.manual_seed(0)
    engine = Engine(cfg, RunInfo.from_meta(cfg, meta), device, steps_per_epoch=10_000)
    engine.wrap()
    engine.module.train()
    return engine


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def validates(epoch: int, epochs: int) -> bool:
    """The epochs a bench run validates in, on both sides: the first (a new run's) and the last
    (train.val_every_epochs = the run's epochs)."""
    return epoch in (1, epochs)


def whole_run(cfg: ExperimentConfig, steps: int, epochs: int, seconds: float, epoch_seconds: float) -> dict:
    """A whole run's images/s (two views per pair); `outside_epochs_s`: its seconds outside its epochs' (start,
    validation, checkpoints, end)."""
    images = 2 * cfg.train.batch_size * steps * epochs
    return {
        "images_per_sec": images / seconds,
        "seconds": seconds,
        "images": images,
        "outside_epochs_s": seconds - epoch_seconds,
    }


def plain_run(
    cfg: ExperimentConfig, steps: int, epochs: int, val_steps: int, device: str, data_cpus: int, log=print
) -> dict:
    """(a) Plain PyTorch over a whole run, what a user would write without Ray: a `DataLoader` with `data_cpus`
    worker processes (`pair_loader`, the same pair maker) feeding the same `Engine` in one process, `epochs` epochs
    of `steps` steps, validation on `val_steps` batches of a second loader where the Ray path validates, and a
    checkpoint after every epoch. Per epoch the steady images/s (first batch to last, as `run_epoch` reports it; the
    first epoch warms up and is left out); over the whole run, images/s from building the model to the last
    checkpoint (the loaders' start, epoch boundaries and validation included)."""
    from rayeq.data.feed.pipeline import pair_loader

    pin = device == "cuda"
    t0 = time.perf_counter()
    engine = _engine(cfg, device)
    train = iter(pair_loader(cfg, "train", cfg.train.batch_size, data_cpus, epochs=10_000, pin=pin))
    val = iter(pair_loader(cfg, "val", engine.val_batch_size, data_cpus, epochs=10_000, pin=pin))
    rates, in_epochs = [], 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for epoch in range(1, epochs + 1):
            m = engine.run_epoch(itertools.islice(train, steps)).metrics
            rates.append(m["images_per_sec"])
            in_epochs += m["epoch_seconds"]
            log(f"    (a) epoch {epoch}/{epochs}: {rates[-1]:.1f} img/s, {time.perf_counter() - t0:.0f} s into the run")
            if validates(epoch, epochs):
                engine.validate(itertools.islice(val, val_steps))
            torch.save(engine.state_dict(), Path(tmp) / "state.pt")
        _sync(device)
        seconds = time.perf_counter() - t0
    del train, val
    return {**_stats(rates[1:]), "whole_run": whole_run(cfg, steps, epochs, seconds, in_epochs)}


def ray_path(cfg: ExperimentConfig, steps: int, epochs: int, val_steps: int, log=print, progress=None) -> dict:
    """(b) rayeq's real training path (`run_training`: Ray Train, Ray Data, checkpoints, validation) over the same
    run as `plain_run`: per epoch the steady images/s it reports (first epoch left out), under "epoch" the same over
    whole epochs (waits for data included), over the whole run images/s from the call to its return (the trainer's
    and the data stream's start, epoch boundaries, validation and checkpoints included; Ray itself is started
    before, as a cluster is up before a run starts), and the CPU share of Ray Data's coordinators. `progress`: a
    line per epoch as the run logs it."""
    from rayeq.cluster import connect_ray
    from rayeq.train.driver import run_training

    connect_ray(None, log=lambda *a: None)
    with tempfile.TemporaryDirectory() as tmp:
        run = from_dict(
            apply_overrides(
                cfg.to_dict(),
                [
                    f"train.epochs={epochs}",
                    f"train.steps_per_epoch={steps}",
                    f"train.val_every_epochs={epochs}",  # the first and the last epoch, as plain_run
                    f"train.val_steps={val_steps}",
                    f"train.storage_path={tmp}",
                    "train.name=bench",
                    "train.keep_checkpoints=1",
                ],
            )
        )
        run_dir = RunDir(Path(tmp) / "bench")
        with CoordinatorCPU(run_dir, epochs, progress=progress) as cpu:
            t0 = time.perf_counter()
            run_training(run, log=log)
            seconds = time.perf_counter() - t0
        rows = run_dir.metrics()
    return {
        **_stats([r["images_per_sec"] for r in rows[1:]]),
        "epoch": _stats([r["epoch_images_per_sec"] for r in rows[1:]]),
        "whole_run": whole_run(cfg, steps, epochs, seconds, sum(r["epoch_seconds"] for r in rows)),
        "coordinator_cpu": cpu.result(),
    }


def _empty_worker(config: dict) -> None:
    import torch  # noqa: F401  (every training worker imports it: part of any run's start)


def ray_train_floor(cfg: ExperimentConfig, repeats: int = 2) -> dict[str, Any]:
    """Seconds Ray Train itself costs a run, whatever the run does: `TorchTrainer.fit` of a loop that only imports
    torch, on the run's workers and resources (the controller's start, the worker group's, the process group's, the
    teardown), no data; best of `repeats`. A whole run's Ray/plain ratio cannot pass `plain / (plain + floor)`."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from rayeq.cluster import connect_ray, worker_resources

    connect_ray(None, log=lambda *a: None)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            t0 = time.perf_counter()
            TorchTrainer(
                _empty_worker,
                scaling_config=ScalingConfig(
                    num_workers=cfg.train.num_workers,
                    use_gpu=cfg.train.use_gpu,
                    resources_per_worker=worker_resources(cfg),
                ),
                run_config=RunConfig(name=f"floor{i}", storage_path=tmp),
            ).fit()
            times.append(time.perf_counter() - t0)
    return {"seconds": min(times), "repeats": times}


def break_even(extra_s: float, target: float = 0.95) -> float:
    """The run length (s, at equal steady speed on both sides) at which a fixed `extra_s` per run leaves the
    whole-run ratio at `target`: run / (run + extra) = target."""
    return extra_s * target / (1 - target)


class CoordinatorCPU:
    """The CPU that Ray Data's coordinators (the `SplitCoordinator` actors that run a dataset's scheduling loop for
    Ray Train, one per dataset) take on this node, from psutil on their processes, sampled every `every` seconds:
    over the whole run, and steady, from the end of the first epoch to the end of the last (read from the run's
    metrics.jsonl, one line per epoch): the last epoch's validation is in it, the first epoch's start is not."""

    def __init__(self, run_dir: RunDir, epochs: int, every: float = 0.5, progress=None):
        import threading

        self.run_dir, self.epochs, self.every, self.progress = run_dir, epochs, every, progress
        self.samples: list[tuple[float, float, int]] = []  # (time, coordinator CPU seconds so far, epochs logged)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="rayeq-bench-cpu", daemon=True)

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        import psutil

        seen: dict[int, float] = {}  # pid -> CPU seconds at its last sample (a process that ended keeps its last)
        while True:
            for proc in psutil.process_iter(["pid", "cmdline"]):
                try:
                    if any("SplitCoordinator" in part for part in proc.info["cmdline"] or ()):
                        seen[proc.info["pid"]] = sum(proc.cpu_times()[:2])
                except psutil.Error:
                    continue
            before = self.samples[-1][2] if self.samples else 0
            try:
                rows = self.run_dir.metrics()
            except ValueError:  # a line being written
                rows = None
            logged = before if rows is None else len(rows)
            if self.progress and logged > before:
                rate = f"{rows[-1]['images_per_sec']:.1f} img/s" if "images_per_sec" in rows[-1] else "logged"
                into = time.perf_counter() - self.t0
                self.progress(f"    (b) epoch {logged}/{self.epochs}: {rate}, {into:.0f} s into the run")
            self.samples.append((time.perf_counter(), sum(seen.values()), logged))
            if self.stop.wait(self.every):
                return

    def result(self) -> dict[str, Any]:
        def share(rows):
            return (rows[-1][1] - rows[0][1]) / (rows[-1][0] - rows[0][0]) if len(rows) > 1 else None

        s = self.samples
        steady = [r for r in s if r[2] >= 1]
        steady = [r for r in steady if r[2] < self.epochs] + [r for r in steady if r[2] >= self.epochs][:1]
        return {"steady_cores": share(steady), "whole_run_cores": share(s), "samples": len(s)}


def _fixed_batch(cfg: ExperimentConfig, engine: Engine) -> dict[str, torch.Tensor]:
    from rayeq.data.feed.pipeline import iter_pairs

    return engine.to_batch(next(iter_pairs(cfg, "train", batch_size=cfg.train.batch_size)))


def step_time(cfg: ExperimentConfig, steps: int, repeats: int, device: str = "cpu") -> dict:
    """Median seconds per training step on one fixed real batch (no data loading in the timing)."""
    engine = _engine(cfg, device)
    batch = _fixed_batch(cfg, engine)
    times = []
    for r in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            engine.step(batch)
        _sync(device)
        if r:
            times.append((time.perf_counter() - t0) / steps)
    return _stats(times)


def step_flops(cfg: ExperimentConfig, device: str) -> float:
    """FLOPs of one training step (forward + backward of the method and its probes), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    engine = _engine(from_dict(apply_overrides(cfg.to_dict(), ["train.compile=false"])), device)
    batch = _fixed_batch(cfg, engine)
    with FlopCounterMode(display=False) as counter:
        engine.step(batch)
    return float(counter.get_total_flops())


# dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, matched on the device name
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}


def bf16_peak(device_name: str) -> float | None:
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in device_name), None)


def data_resources(cpus: int, threads: int, data_cpus: int | None) -> tuple[int, float]:
    """Data CPUs on both sides (default: what the training thread(s) leave) and the CPU reservation of
    each Ray Data actor so that the worker, the actors and the validation pipeline's actor fit on this machine."""
    from rayeq.data.feed.pipeline import VAL_CPUS

    data_cpus = data_cpus or max(1, cpus - threads)
    per_actor = min(1.0, round((cpus - threads - VAL_CPUS) / data_cpus, 2))
    if per_actor <= 0:
        raise ConfigError(f"--threads {threads} leaves no CPU for data on this {cpus}-CPU machine")
    return data_cpus, per_actor


def bench_throughput(
    method: str = "xrecon",
    size: int = 32,
    batch: int = 32,
    steps: int | None = None,
    repeats: int = 3,
    threads: int | None = None,
    skip_ray: bool = False,
    out: str | None = None,
    log=print,
    data_cpus: int | None = None,
    device: str = "auto",
    compile: bool = False,
    overrides: list[str] = (),
    epochs: int = 5,
    val_steps: int = 4,
) -> dict[str, Any]:
    """Both sides over a whole run of `epochs` epochs of `steps` steps (steady and whole-run images/s, their
    ratios, Ray Data's coordinator CPU); then the step on a fixed batch, `repeats` times (+1 warm-up)."""
    from rayeq.data.feed.pipeline import feed_data

    if epochs < 2:
        raise ConfigError(f"--epochs {epochs}: at least 2 (the first epoch warms up; the steady figure is the rest)")

    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch sees no GPU here")
    cpus = os.cpu_count() or 2
    threads = threads or (1 if device == "cuda" else max(1, cpus - 1))
    data_cpus, per_actor = data_resources(cpus, threads, data_cpus)
    gpu = device == "cuda"
    flags = [
        f"train.use_gpu={str(gpu).lower()}",
        f"train.precision={'bf16' if gpu else 'fp32'}",
        f"train.channels_last={str(gpu).lower()}",
        f"train.compile={str(compile).lower()}",
        f"data.num_actors={data_cpus}",
        f"data.cpus_per_actor={per_actor}",
        *overrides,
    ]
    cfg = bench_config(method, size, batch, threads, flags)
    meta, _ = feed_data(cfg, "train", log=log)  # checks the data; the decoded copy is made once, before any timing
    per_epoch = meta["splits"]["train"] // batch
    steps = steps or max(2, min(per_epoch, cfg.train.steps_per_epoch or per_epoch))  # one Ray epoch's worth
    torch.set_num_threads(threads)
    res: dict[str, Any] = {
        "method": method,
        "image_size": size,
        "batch": batch,
        "steps_per_epoch": steps,
        "epochs": epochs,
        "val_steps": val_steps,
        "fixed_batch_repeats": repeats,
        "torch_threads": threads,
        "data_cpus": data_cpus,
        "cpus": cpus,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if gpu else "cpu",
        "precision": cfg.train.precision,
        "channels_last": cfg.train.channels_last,
        "compile": compile,
        "stem": cfg.model.stem,
        "decoded": cfg.data.decoded,
        "overrides": list(overrides),
    }
    log(
        f"bench throughput: {method}, {size} px, batch {batch}, stem {cfg.model.stem}, {cfg.train.precision}"
        f"{' + channels_last' if gpu else ''}{' + compile' if compile else ''} on {res['device']}; "
        f"{threads} torch thread(s), {data_cpus} data CPU(s) on both sides; "
        f"whole runs of {epochs} epochs x {steps} steps (validation on {val_steps} batches in the first and the last)"
    )
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    res["plain"] = plain_run(cfg, steps, epochs, val_steps, device, data_cpus, log=log)
    if gpu:
        res["memory_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    log(f"  (a) plain PyTorch (DataLoader, {data_cpus} workers): {_run_line(res['plain'])}")
    if not skip_ray:
        res["ray"] = ray_path(cfg, steps, epochs, val_steps, log=lambda m: None, progress=log)
        res["ray_over_plain_ratio"] = res["ray"]["median"] / res["plain"]["median"]
        res["whole_run_ray_over_plain_ratio"] = (
            res["ray"]["whole_run"]["images_per_sec"] / res["plain"]["whole_run"]["images_per_sec"]
        )
        log(f"  (b) Ray Train + Ray Data ({data_cpus} actors):     {_run_line(res['ray'])}")
        log(
            f"  ratio (b)/(a): steady {res['ray_over_plain_ratio']:.3f}, whole run "
            f"{res['whole_run_ray_over_plain_ratio']:.3f}  (target >= 0.95 for both)"
        )
        res["ray_train_floor"] = ray_train_floor(cfg)
        floor = res["ray_train_floor"]["seconds"]
        plain, ray = res["plain"]["whole_run"], res["ray"]["whole_run"]
        # the Ray path's fixed cost per run: its seconds outside the epochs beyond the plain loop's
        res["ray_extra_outside_epochs_s"] = extra = ray["outside_epochs_s"] - plain["outside_epochs_s"]
        res["break_even_run_s"] = break_even(max(extra, 0.0))
        log(
            f"  Ray Train's own start and end (an empty TorchTrainer.fit that imports torch): {floor:.1f} s, a "
            f"whole-run ratio of at most {plain['seconds'] / (plain['seconds'] + floor):.3f} on this run at equal "
            f"speed; outside the epochs the Ray path spent {extra:.0f} s more than the plain loop: at equal steady "
            f"speed, runs of >= {res['break_even_run_s']:.0f} s keep the whole-run ratio >= 0.95"
        )
        cpu = res["ray"]["coordinator_cpu"]
        if cpu["steady_cores"] is not None:
            log(
                f"  Ray Data's coordinators (SplitCoordinator processes): {100 * cpu['steady_cores']:.1f} % of a core "
                f"from the end of epoch 1 to the end of the run (target < 5 %), {100 * cpu['whole_run_cores']:.1f} "
                "% over the whole run"
            )
    n_steps = 20 if gpu else min(steps, 10)
    t = step_time(cfg, n_steps, repeats, device)
    res["step_time_s"] = {method: t}
    res["fixed_batch_images_per_sec"] = 2 * batch / t["median"]
    log(
        f"  step on a fixed batch (no data): {1000 * t['median']:.1f} ms = "
        f"{res['fixed_batch_images_per_sec']:.0f} img/s"
        + (f"; memory peak {res['memory_peak_gib']:.2f} GiB" if gpu else "")
    )
    if method == "xrecon":
        tb = step_time(bench_config(cfg.method.base, size, batch, threads, flags), n_steps, repeats, device)
        res["step_time_s"][cfg.method.base] = tb
        res["recon_overhead_pct"] = 100 * (t["median"] / tb["median"] - 1)
        log(
            f"  step time xrecon {1000 * t['median']:.1f} ms vs {cfg.method.base} alone {1000 * tb['median']:.1f} ms: "
            f"reconstruction overhead {res['recon_overhead_pct']:.1f} %  (target <= 15 %)"
        )
    if gpu:
        flops = step_flops(cfg, device)
        res["step_tflop"] = flops / 1e12
        res["achieved_tflops"] = flops / t["median"] / 1e12
        peak = bf16_peak(res["device"])
        res["bf16_peak_tflops"] = peak
        res["fraction_of_peak"] = res["achieved_tflops"] / peak if peak else None
        log(
            f"  {res['step_tflop']:.2f} TFLOP per step -> {res['achieved_tflops']:.0f} TFLOP/s"
            + (f" = {100 * res['fraction_of_peak']:.0f} % of the {peak:.0f} TFLOP/s dense bf16 peak" if peak else "")
        )
    _write(res, out, log)
    return res


def make_jpeg_set(out: Path, objects: int = 256, size: int = 256, quality: int = 90) -> Path:
    """A 3DIEBench-like JPEG source (views of `size` px) from the first train objects of the built-in set:
    its PNG views upscaled and re-encoded, for the pair pipeline's per-core figure on JPEG sources."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from rayeq.data.builtin import ensure_data
    from rayeq.data.schema import OBJECTS_SCHEMA, decode_image, open_dataset, split_filter

    src = ensure_data(log=lambda *a: None)
    meta, shards = open_dataset(src)
    rows: list[dict] = []
    for shard in shards:
        rows += pq.read_table(shard, filters=split_filter("train")).to_pylist()
        if len(rows) >= objects:
            break

    def jpeg(data: bytes) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.asarray(decode_image(data))).resize((size, size), Image.BILINEAR).save(
            buf, "JPEG", quality=quality
        )
        return buf.getvalue()

    rows = [{**r, "images": [jpeg(b) for b in r["images"]]} for r in rows[:objects]]
    out.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=OBJECTS_SCHEMA), out / "shard-00000.parquet")
    made = {
        **meta,
        "source": "3diebench",
        "image_encoding": "jpeg",
        "n_objects": len(rows),
        "splits": {"train": len(rows)},
    }
    made.pop("image_size", None)
    (out / "meta.json").write_text(json.dumps({**made, "shards": ["shard-00000.parquet"]}))
    return out


def pairs_per_core(cfg: ExperimentConfig, seconds: float, log=print) -> float:
    """Pairs/s of the whole pair path on one core (one torch thread, single-threaded Parquet reads):
    read the split's shards in turn, make pairs in batches of data.rows_per_batch rows. A decoded copy
    the config asks for is made first, outside the timing (its progress goes to `log`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rayeq.data.feed.pairs import pair_maker_class
    from rayeq.data.feed.pipeline import feed_data, maker_kwargs
    from rayeq.data.schema import split_filter

    meta, shards = feed_data(cfg, "train", log=log)
    maker = pair_maker_class(cfg.data.source)(**maker_kwargs(cfg, meta, "train"))
    threads, arrow = torch.get_num_threads(), pa.cpu_count()
    torch.set_num_threads(1)
    pa.set_cpu_count(1)
    try:
        rows, pairs, k, t0 = cfg.data.rows_per_batch, 0, 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            table = pq.read_table(shards[k % len(shards)], filters=split_filter("train"), use_threads=False)
            k += 1
            for start in range(0, table.num_rows, rows):
                pairs += len(maker(table.slice(start, rows))["label"])
        return pairs / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
        pa.set_cpu_count(arrow)


def ray_data_rate(cfg: ExperimentConfig, batch: int, passes: int = 3) -> tuple[dict, float]:
    """The Ray Data pair pipeline on its own (`build_ray_dataset`, no training): pairs/s over full passes
    of the training split after a first pass, which includes the actor pool's start (returned apart)."""
    from rayeq.cluster import connect_ray
    from rayeq.data.feed.pipeline import build_ray_dataset

    ray = connect_ray(None, log=lambda m: None)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ds = build_ray_dataset(cfg, "train")
    rates = []
    for _ in range(passes):
        t_first, pairs = None, 0
        for b in ds.iter_batches(batch_size=batch, batch_format="numpy", drop_last=True):
            t_first = t_first or time.perf_counter()
            pairs += len(b["view1"])
        rates.append((pairs - batch) / (time.perf_counter() - t_first))
    return _stats(rates[1:]), rates[0]


def _pybullet_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("pybullet") is not None


def bench_render(
    sizes: tuple[int, ...] = (64, 128),
    per_class: int = 2,
    views: int = 4,
    sheet: str | Path | None = None,
    device: str | None = None,
    log=print,
) -> dict[str, Any]:
    """Render images/s per core (1 thread, in this process, rendering only: the same objects and latents for
    both) of the PyTorch renderer and the pybullet reference, parity figures per size, a contact sheet at the
    first size; on `device` (a CUDA device; by default the first, when torch sees one) the PyTorch renderer's
    images/s there and the time a 3DIEBench-sized set would take."""
    from rayeq.data.make.raster import TorchRenderer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    objects, latents = parity_sample(per_class, views)
    n = latents.shape[0] * latents.shape[1]
    res: dict[str, Any] = {"sample": {"objects": len(objects), "views": views, "images": n, "seed": 0}, "sizes": {}}
    have_pybullet = _pybullet_available()
    log(f"bench data: renderers on {len(objects)} objects x {views} views ({n} images), 1 thread each:")
    if not have_pybullet:
        log("  pybullet is not installed (an optional extra: pip install 'rayeq[pybullet]'): the PyTorch renderer only")
    try:
        for size in sizes:
            row: dict[str, Any] = {}
            torch_r = TorchRenderer(size)
            timed_render(torch_r, objects[:2], latents[:2])  # warm-up
            img, sil, sec = timed_render(torch_r, objects, latents)
            row["torch_cpu_images_per_s_per_core"] = n / sec
            line = f"  {size:3d} px: torch {n / sec:6.0f} images/s per core"
            if have_pybullet:
                from rayeq.data.make.render import PybulletRenderer

                pb = PybulletRenderer(size)
                try:
                    ref, ref_sil, ref_sec = timed_render(pb, objects, latents)
                finally:
                    pb.close()
                row["pybullet_images_per_s_per_core"] = n / ref_sec
                row["speedup_per_core"] = ref_sec / sec
                row["parity"] = compare(ref, ref_sil, img, sil)
                p = row["parity"]
                line += (
                    f", pybullet {n / ref_sec:6.0f} ({ref_sec / sec:.2f}x); silhouette IoU min {p['iou_min']:.4f} "
                    f"mean {p['iou_mean']:.4f} ({p['views_below_0_98']} of {p['views']} views < 0.98); mean |diff| "
                    f"{p['mean_abs_diff']:.2f} / 255 (object {p['mean_abs_diff_object']:.2f}, floor "
                    f"{p['mean_abs_diff_floor']:.2f})"
                )
                if sheet and size == sizes[0]:
                    res["contact_sheet"] = str(contact_sheet(ref, img, sheet))
            log(line)
            res["sizes"][str(size)] = row
    finally:
        torch.set_num_threads(threads)
    if res.get("contact_sheet"):
        log(f"  contact sheet (pybullet, torch, |diff| x4): {res['contact_sheet']}")
    device = device or ("cuda" if torch.cuda.is_available() else None)
    if device:
        res["gpu"] = {"device": torch.cuda.get_device_name(torch.device(device)), "sizes": {}}
        big_objects, big_latents = parity_sample(per_class * 8, views, seed=1)  # 368 objects: a GPU-sized batch
        for size in sizes:
            ips, _, _ = device_rate(big_objects, big_latents, size, device)
            res["gpu"]["sizes"][str(size)] = {"images_per_s": ips, "iebench_minutes": IEBENCH_IMAGES / ips / 60}
            log(f"  {size:3d} px on {res['gpu']['device']}: torch {ips:.0f} images/s; a 3DIEBench-sized set "
                f"({IEBENCH_IMAGES:,} images) in {IEBENCH_IMAGES / ips / 60:.1f} min (rendering only)")  # fmt: skip
    return res


def bench_data(
    size: int = 64,
    batch: int = 256,
    seconds: float = 20.0,
    out: str | None = None,
    log=print,
    feed: float | None = None,
    sizes: tuple[int, ...] = (32, 64),
    render_sizes: tuple[int, ...] = (64, 128),
    sheet: str | None = None,
    render_only: bool = False,
    synth3d_objects: int = 40,
) -> dict[str, Any]:
    import math

    from rayeq.data.make.decode import decoded_dir
    from rayeq.data.make.synth3d import generate

    cpus = os.cpu_count() or 2
    res: dict[str, Any] = {"image_size": size, "batch": batch, "cpus": cpus, "pairs_per_s_per_core": {}}
    res["render"] = bench_render(render_sizes, sheet=sheet, log=log)
    with tempfile.TemporaryDirectory() as tmp:
        n = 23 * synth3d_objects * 8  # 7,360 images by default: the processes' start-up (~2 s) stays a small part
        t0 = time.perf_counter()
        generate(Path(tmp) / "set", classes=23, objects_per_class=synth3d_objects, views=8, size=64, seed=0,
                 log=lambda *a: None)  # fmt: skip
        res["synth3d_images_per_sec"] = n / (time.perf_counter() - t0)
        log(
            f"  rayeq data synth3d (torch renderer, PNG encoding, Parquet, {cpus} processes, start-up included): "
            f"{res['synth3d_images_per_sec']:.0f} images/s at 64 px; a 3DIEBench-sized set in "
            f"{IEBENCH_IMAGES / res['synth3d_images_per_sec'] / 3600:.1f} h here"
        )
        if render_only:
            _write(res, out, log)
            return res
        jpeg = make_jpeg_set(Path(tmp) / "jpeg")
        # the whole pair path on one core: Parquet read + pairs + targets (no photometric augmentation)
        cases = [("builtin-decoded", s, ["data.decoded=true"]) for s in sizes]
        cases += [("builtin-png", s, ["data.decoded=false"]) for s in sizes]
        cases += [
            ("jpeg-256", size, ["data.source=3diebench", f"data.path={jpeg}", "data.decoded=false"]),
            ("jpeg-256-decoded", size, ["data.source=3diebench", f"data.path={jpeg}", "data.decoded=true"]),
        ]
        log("  pairs/s per core (1 thread; Parquet read + pairs + targets, no photometric augmentation):")
        for source, s, extra in cases:
            cfg = bench_config("xrecon", s, batch, 1, [*extra, "data.image_size=" + str(s)])
            rate = pairs_per_core(cfg, seconds / len(cases), log=log)
            res["pairs_per_s_per_core"].setdefault(source, {})[str(s)] = rate
            log(f"    {source:17s} {s:3d} px: {rate:8.0f}")
        shutil.rmtree(decoded_dir(jpeg, size), ignore_errors=True)  # the temporary JPEG set's copy
    # the Ray Data pipeline on its own, all but one CPU as actors, from the decoded copy at `size`
    actors, per_actor = data_resources(cpus, 1, None)
    cfg = bench_config("xrecon", size, batch, 1, [f"data.num_actors={actors}", f"data.cpus_per_actor={per_actor}"])
    res["ray_data_pairs_per_sec"], first = ray_data_rate(cfg, batch)
    res["ray_data_actors"] = actors
    res["ray_data_pairs_per_sec_per_actor"] = res["ray_data_pairs_per_sec"]["median"] / actors
    log(
        f"  Ray Data pair pipeline, decoded {size} px: {_rate(res['ray_data_pairs_per_sec'], 'pairs/s')} with {actors} "
        f"actor(s) = {res['ray_data_pairs_per_sec_per_actor']:.0f} per actor "
        f"(first pass, with start-up: {first:.0f})"
    )
    torch.set_num_threads(max(1, cpus - 1))
    b = min(32, batch)  # the quickstart's batch (or less, on a set smaller than that)
    t = step_time(bench_config("xrecon", 32, b, max(1, cpus - 1)), 5, 2)
    res["training_pairs_per_sec"] = b / t["median"]
    res["data_over_training_ratio"] = res["ray_data_pairs_per_sec"]["median"] / res["training_pairs_per_sec"]
    log(
        f"  CPU training consumes {res['training_pairs_per_sec']:.0f} pairs/s (xrecon, 32 px, batch {b}); "
        f"data / training {res['data_over_training_ratio']:.0f}x"
    )
    if feed:
        per_core = res["pairs_per_s_per_core"]
        res["feed"] = {
            "pairs_per_s": feed,
            "cores_needed": {src: {s: math.ceil(feed / r) for s, r in by.items()} for src, by in per_core.items()},
        }
        log(f"  cores to feed {feed:.0f} pairs/s (from the per-core figures; Ray's own overhead not included):")
        for src, by in res["feed"]["cores_needed"].items():
            log("    " + f"{src:17s} " + ", ".join(f"{s} px: {c}" for s, c in by.items()))
    _write(res, out, log)
    return res


def _run_line(st: dict) -> str:
    w = st["whole_run"]
    return (
        f"steady {_rate(st, 'img/s')}; whole run {w['images_per_sec']:.1f} img/s ({w['images']} images in "
        f"{w['seconds']:.0f} s, {w['outside_epochs_s']:.0f} s of them outside the epochs)"
    )


def _rate(st: dict, unit: str) -> str:
    return f"{st['median']:.1f} {unit} (median of {len(st['repeats'])}, spread {st['spread_pct']:.0f} %)"


def check_out(out: str | None, overwrite: bool) -> None:
    """Refuse to replace an existing --out before any measuring starts."""
    if out and Path(out).exists() and not overwrite:
        raise ConfigError(f"{out!r} exists; pass --overwrite to replace it")


def _write(res: dict, out: str | None, log) -> None:
    if out:
        Path(out).write_text(json.dumps(res, indent=2) + "\n")
        log(f"wrote {out}")
