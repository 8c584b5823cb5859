"""`rayeq bench`: the figures a user checks before trusting rayeq with their compute.

throughput: steady-state training images/s of (a) a plain single-process PyTorch loop fed by the
same pair/augment code and (b) rayeq's real path (Ray Train TorchTrainer + Ray Data, 1 worker), with
the same model, data, batch, image size and torch thread count; their ratio; for xrecon the step
time against its base SSL method alone (the reconstruction overhead); on a GPU the same under bf16
autocast and channels_last, with the memory peak.

data: synth3d render images/s, and the pair pipeline's pairs/s on its own (Ray Data, and the plain
single-process maker), against the pairs/s that training consumes.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from rayeq.config import ConfigError, ExperimentConfig, apply_overrides, from_dict, load_config
from rayeq.quickstart import OVERRIDES as QUICKSTART_OVERRIDES
from rayeq.runinfo import RunInfo
from rayeq.train.engine import Engine

# the quickstart's CPU-sized model (compact stem, 32 px views of the built-in set), on 1 worker
# (train.epochs: the plain loop's cosine schedule spans 100 x 10,000 steps, i.e. a constant lr)
BENCH_OVERRIDES = [
    *QUICKSTART_OVERRIDES,
    "optim.warmup_epochs=0",
    "train.num_workers=1",
    "train.epochs=100",
    "train.log_every_steps=1000",
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


def _engine(cfg: ExperimentConfig, device: str, amp: bool) -> Engine:
    """The training `Engine` of `cfg` in this process (bf16 autocast and channels_last with `amp`);
    its schedule spans 10,000 steps per epoch x train.epochs, i.e. a constant lr here."""
    from rayeq.data.feed.pipeline import check_data

    flags = ["train.precision=bf16", "train.channels_last=true"] if amp else ["train.channels_last=false"]
    cfg = from_dict(apply_overrides(cfg.to_dict(), flags))
    meta, _ = check_data(cfg, "train")
    torch.manual_seed(0)
    engine = Engine(cfg, RunInfo.from_meta(cfg, meta), device, steps_per_epoch=10_000)
    engine.module.train()
    return engine


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def plain_loop(cfg: ExperimentConfig, steps: int, repeats: int, device: str = "cpu", amp: bool = False) -> dict:
    """(a) Single process: the same pair maker (`iter_pairs`), the same `Engine` step, no Ray.
    Each repeat is timed like the Ray loop's epochs: from the first batch to the last."""
    from rayeq.data.feed.pipeline import iter_pairs

    engine = _engine(cfg, device, amp)
    pairs = iter_pairs(cfg, "train", batch_size=cfg.train.batch_size, epochs=10_000)
    rates = []
    for r in range(repeats + 1):  # the first repeat warms up (allocator, caches, first batches)
        t_first = None
        for n in range(steps):
            batch = engine.to_batch(next(pairs))
            if n == 0:
                _sync(device)
                t_first = time.perf_counter()
            engine.step(batch)
        _sync(device)
        if r:
            rates.append(2 * cfg.train.batch_size * (steps - 1) / (time.perf_counter() - t_first))
    return _stats(rates)


def ray_path(cfg: ExperimentConfig, repeats: int, log=print) -> dict:
    """(b) rayeq's real training path, 1 worker: its per-epoch steady images/s, first epoch excluded."""
    from rayeq.train.driver import run_training

    with tempfile.TemporaryDirectory() as tmp:
        run = from_dict(
            apply_overrides(
                cfg.to_dict(),
                [
                    f"train.epochs={repeats + 1}",
                    "train.val_every_epochs=1000",
                    f"train.storage_path={tmp}",
                    "train.name=bench",
                    "train.keep_checkpoints=1",
                ],
            )
        )
        run_training(run, log=log)
        rows = [json.loads(line) for line in (Path(tmp) / "bench" / "metrics.jsonl").read_text().splitlines()]
    return _stats([r["images_per_sec"] for r in rows[1:]])


def step_time(cfg: ExperimentConfig, steps: int, repeats: int, device: str = "cpu", amp: bool = False) -> dict:
    """Median seconds per training step on one fixed real batch (no data loading in the timing)."""
    from rayeq.data.feed.pipeline import iter_pairs

    engine = _engine(cfg, device, amp)
    batch = engine.to_batch(next(iter_pairs(cfg, "train", batch_size=cfg.train.batch_size)))
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
) -> dict[str, Any]:
    from rayeq.data.feed.pipeline import check_data, resolve_data_dir

    threads = threads or max(1, (os.cpu_count() or 2) - 1)
    cfg = bench_config(method, size, batch, threads)
    resolve_data_dir(cfg)
    meta, _ = check_data(cfg, "train")
    per_epoch = meta["splits"]["train"] // batch
    steps = steps or max(2, min(per_epoch, cfg.train.steps_per_epoch or per_epoch))  # one Ray epoch's worth
    torch.set_num_threads(threads)
    res: dict[str, Any] = {
        "method": method,
        "image_size": size,
        "batch": batch,
        "steps_per_repeat": steps,
        "repeats": repeats,
        "torch_threads": threads,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    log(
        f"bench throughput: {method}, {size} px, batch {batch}, {threads} torch thread(s), {steps} steps x "
        f"{repeats} repeats (+1 warm-up) on {res['device']}"
    )
    res["plain"] = plain_loop(cfg, steps, repeats)
    log(f"  (a) plain PyTorch loop:   {_rate(res['plain'], 'img/s')}")
    if not skip_ray:
        res["ray"] = ray_path(cfg, repeats, log=lambda m: None)
        res["ray_over_plain_ratio"] = res["ray"]["median"] / res["plain"]["median"]
        log(f"  (b) Ray Train + Ray Data: {_rate(res['ray'], 'img/s')}")
        log(f"  ratio (b)/(a):            {res['ray_over_plain_ratio']:.3f}  (target >= 0.90)")
    if method == "xrecon":
        base = bench_config(cfg.method.base, size, batch, threads)
        tx = step_time(cfg, min(steps, 10), repeats)
        tb = step_time(base, min(steps, 10), repeats)
        res["step_time_s"] = {"xrecon": tx, cfg.method.base: tb}
        res["recon_overhead_pct"] = 100 * (tx["median"] / tb["median"] - 1)
        log(
            f"  step time xrecon {1000 * tx['median']:.1f} ms vs {cfg.method.base} alone {1000 * tb['median']:.1f} ms: "
            f"reconstruction overhead {res['recon_overhead_pct']:.1f} %  (target <= 15 %)"
        )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        gpu = {"plain_bf16_channels_last": plain_loop(cfg, steps, repeats, "cuda", amp=True)}
        gpu["memory_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if method == "xrecon":
            tx = step_time(cfg, 20, repeats, "cuda", amp=True)
            tb = step_time(bench_config(cfg.method.base, size, batch, threads), 20, repeats, "cuda", amp=True)
            gpu["recon_overhead_pct"] = 100 * (tx["median"] / tb["median"] - 1)
        if not skip_ray:
            gcfg = bench_config(
                method, size, batch, threads, ["train.use_gpu=true", "train.precision=bf16", "train.channels_last=true"]
            )
            gpu["ray_bf16"] = ray_path(gcfg, repeats, log=lambda m: None)
            gpu["ray_over_plain_ratio"] = gpu["ray_bf16"]["median"] / gpu["plain_bf16_channels_last"]["median"]
        res["gpu"] = gpu
        log(
            f"  GPU bf16 + channels_last: plain {gpu['plain_bf16_channels_last']['median']:.0f} img/s, "
            f"memory peak {gpu['memory_peak_gib']:.2f} GiB"
            + (f", Ray {gpu['ray_bf16']['median']:.0f} img/s" if "ray_bf16" in gpu else "")
        )
    _write(res, out, log)
    return res


def bench_data(
    size: int = 32, batch: int = 32, seconds: float = 20.0, out: str | None = None, log=print
) -> dict[str, Any]:
    from rayeq.cluster import connect_ray
    from rayeq.data.feed.pipeline import build_ray_dataset, check_data, iter_pairs, resolve_data_dir
    from rayeq.data.make.synth3d import generate

    res: dict[str, Any] = {"image_size": size, "batch": batch, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        n = 5 * 10 * 12  # enough that the render processes' start-up (pybullet) is a small part
        t0 = time.perf_counter()
        generate(Path(tmp) / "set", classes=5, objects_per_class=10, views=12, size=64, seed=0, log=lambda *a: None)
        res["render_images_per_sec"] = n / (time.perf_counter() - t0)
    log(f"bench data: synth3d renders {res['render_images_per_sec']:.0f} images/s (64 px, {os.cpu_count()} processes)")
    cfg = bench_config("xrecon", size, batch, max(1, (os.cpu_count() or 2) - 1))
    resolve_data_dir(cfg)
    meta, _ = check_data(cfg, "train")
    # the plain, single-process pair maker (what `rayeq bench throughput`'s loop (a) is fed by)
    it, t0, pairs = iter_pairs(cfg, "train", batch_size=batch, epochs=1000), time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds / 4:
        pairs += len(next(it)["view1"])
    res["plain_pairs_per_sec"] = pairs / (time.perf_counter() - t0)
    log(f"  plain pair maker (1 process):   {res['plain_pairs_per_sec']:.0f} pairs/s")
    ray = connect_ray(None, log=lambda m: None)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = build_ray_dataset(cfg, "train")
    epoch_rates = []
    for _ in range(3):  # the first pass includes the actor pool's start
        t_first, pairs = None, 0
        for b in ds.iter_batches(batch_size=batch, batch_format="numpy", drop_last=True):
            t_first = t_first or time.perf_counter()
            pairs += len(b["view1"])
        epoch_rates.append((pairs - batch) / (time.perf_counter() - t_first))
    res["ray_data_pairs_per_sec"] = _stats(epoch_rates[1:])
    log(
        f"  Ray Data pair pipeline:         {_rate(res['ray_data_pairs_per_sec'], 'pairs/s')}, "
        f"{cfg.data.num_actors} actor(s) x {cfg.data.cpus_per_actor} CPU (first pass, with start-up: "
        f"{epoch_rates[0]:.0f})"
    )
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    t = step_time(cfg, 5, 2)
    res["training_pairs_per_sec"] = batch / t["median"]
    res["data_over_training_ratio"] = res["ray_data_pairs_per_sec"]["median"] / res["training_pairs_per_sec"]
    log(f"  training consumes:              {res['training_pairs_per_sec']:.0f} pairs/s (xrecon step on a fixed batch)")
    log(f"  data / training:                {res['data_over_training_ratio']:.1f}x  (target >= 2)")
    _write(res, out, log)
    return res


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
