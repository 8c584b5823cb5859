"""`rayeq data synth3d`: render a 3DIEBench-like data set, on the CPU or on a GPU.

Each object gets its own seed (SeedSequence(seed).spawn), and an object's pixels do not depend on the other
objects it is rendered with, so the output is byte-identical whatever the number of worker processes or the batch
size, for a given renderer and device: workers render chunks of objects, the parent writes them in object order.

Renderers: `torch` (rayeq.data.make.raster, the default; CPU processes or one CUDA device) and `pybullet` (the
reference, rayeq.data.make.render; an optional extra, CPU only).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np

from rayeq.data.make.objects import make_renderer, render_chunk
from rayeq.data.make.progress import Progress
from rayeq.data.make.shapes import CLASSES
from rayeq.data.schema import (
    OBJECTS_FORMAT,
    OBJECTS_SCHEMA,
    DataError,
    ImageStats,
    ShardWriter,
    prepare_output_dir,
    write_meta,
)

GENERATOR_VERSION = "synth3d-3"  # synth3d-3: the PyTorch renderer (synth3d-2 was pybullet's, same latents)
VAL_FRACTION = 0.2
RENDERERS = ("torch", "pybullet")
CHUNK = 16  # objects per render call (per worker process on a CPU)

_renderer = None


def _init_worker(renderer: str, size: int, device: str = "cpu", one_thread: bool = False) -> None:
    global _renderer
    _renderer = make_renderer(renderer, size, device, one_thread)


def render_objects(tasks: list) -> list[dict]:
    """Render every view of a chunk of objects with this process's renderer."""
    return render_chunk(_renderer, tasks)


def check_args(out, classes, objects_per_class, views, size, workers, overwrite, renderer, device, use_ray=False):
    """Every argument of `generate` that can be checked without rendering (the output directory by a dry run):
    a DataError naming the culprit before anything is written, or before Ray starts (the CLI calls it first with
    --ray). Returns the worker count and the device to render on."""
    available = len(CLASSES)
    if not 1 <= classes <= available:
        raise DataError(f"--classes must be in [1, {available}] (the procedural classes), got {classes}")
    if objects_per_class < 1:
        raise DataError(f"--objects-per-class must be >= 1, got {objects_per_class}")
    if views < 2:
        raise DataError(f"--views must be >= 2 (pairs need two distinct views), got {views}")
    if not 16 <= size <= 512:
        raise DataError(f"--size must be in [16, 512], got {size}")
    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise DataError(f"--workers must be >= 1, got {workers}")
    # On a GPU too, `workers` processes (default: one per CPU) each render their chunks there and PNG-encode them on
    # their own core: the encoding, not the GPU, is the slower part (about 3,000 PNGs/s per core at 64 px)
    device = check_renderer(renderer, device, local=not use_ray)
    prepare_output_dir(out, overwrite, dry_run=True)
    return workers, device


def check_renderer(renderer: str, device: str, local: bool = True) -> str:
    """The device to render on, or a DataError naming what cannot be used, before anything is written. `local`:
    rendered in this process (else on a Ray cluster, whose GPUs ray_render counts)."""
    if renderer not in RENDERERS:
        raise DataError(f"--renderer must be one of {', '.join(RENDERERS)}, got {renderer!r}")
    if renderer == "pybullet":
        if device != "cpu":
            raise DataError(f"the pybullet renderer runs on the CPU only (got --device {device}); use --renderer torch")
        if not local:
            raise DataError("--ray renders with the torch renderer only (pybullet is the local reference)")
        try:
            import pybullet  # noqa: F401
        except ImportError:
            raise DataError(
                "--renderer pybullet needs pybullet, an optional extra: pip install 'rayeq[pybullet]' "
                "(pybullet has no wheels for Python 3.13 and later)"
            ) from None
        return device
    import torch

    if device == "cpu":
        return device
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise DataError(f"--device {device!r} is not a device torch knows ({exc})") from None
    if dev.type != "cuda":
        raise DataError(f"--device must be cpu or cuda[:N], got {device!r}")
    if not local:
        return "cuda"
    if not torch.cuda.is_available():
        raise DataError(f"--device {device}: torch sees no CUDA device here; use --device cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DataError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    return str(dev)


def object_splits(n_classes: int, per_class: int, seed: int) -> list[str]:
    """80/20 split by object, the same fraction in every class, fixed by the seed."""
    g = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    n_val = int(round(VAL_FRACTION * per_class)) if per_class >= 2 else 0
    splits = []
    for _ in range(n_classes):
        val = set(g.permutation(per_class)[:n_val].tolist())
        splits += ["val" if i in val else "train" for i in range(per_class)]
    return splits


def generate(
    out: str | Path,
    classes: int = 20,
    objects_per_class: int = 50,
    views: int = 20,
    size: int = 64,
    seed: int = 0,
    workers: int | None = None,
    overwrite: bool = False,
    objects_per_shard: int = 64,
    log=print,
    renderer: str = "torch",
    device: str = "cpu",
    use_ray: bool = False,
) -> dict:
    """Render the set into `out`; returns meta (also written as meta.json) plus timing. `use_ray`: rendered by Ray
    Data actors on the cluster Ray is connected to (ray.init() first), on its GPUs with device cuda."""
    workers, device = check_args(out, classes, objects_per_class, views, size, workers, overwrite, renderer, device,
                                 use_ray)  # fmt: skip
    if use_ray:
        from rayeq.data.make.ray_render import actors_for, render_rows

        actors = actors_for(device)  # the cluster has what the actors need, or nothing is written
    out = prepare_output_dir(out, overwrite)

    class_names = sorted(CLASSES)[:classes]
    n_objects = classes * objects_per_class
    seqs = np.random.SeedSequence(seed).spawn(n_objects)
    splits = object_splits(classes, objects_per_class, seed)
    # Objects are written in a seeded random order, so every shard (and every streamed batch)
    # mixes classes; each object keeps its own seed, so the bytes do not depend on the order.
    order = np.random.default_rng(np.random.SeedSequence([seed, 2])).permutation(n_objects)
    tasks = [(i // objects_per_class, class_names[i // objects_per_class], seqs[i], views) for i in order]
    chunk = CHUNK if device == "cpu" else max(CHUNK, min(256, n_objects // (4 * workers)))  # GPU: larger calls
    chunks = [tasks[i : i + chunk] for i in range(0, len(tasks), chunk)]

    writer = ShardWriter(out, OBJECTS_SCHEMA, objects_per_shard)
    stats = ImageStats()
    total = n_objects * views
    progress = Progress(total, "images", log=log)
    where = "Ray" if use_ray else f"{workers} process(es)" + ("" if device == "cpu" else f" sharing {device}")
    log(
        f"synth3d: {classes} classes x {objects_per_class} objects x {views} views at {size}px = {total} images, "
        f"{renderer} renderer on {where} -> {out}"
    )
    t0 = time.perf_counter()
    if use_ray:
        results = render_rows(tasks, renderer, size, device, chunk, actors, log)
        pool = None
    elif workers == 1:
        _init_worker(renderer, size, device)
        results = (row for rows in map(render_objects, chunks) for row in rows)
        pool = None
    else:
        pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(renderer, size, device, True))
        results = (row for rows in pool.imap(render_objects, chunks) for row in rows)
    try:
        for i, row in zip(order, results, strict=True):
            stats.add_sums(*row.pop("_stats"))
            row["object_id"] = f"{row['class_name']}_{i % objects_per_class:05d}"
            row["split"] = splits[i]
            writer.add(row)
            progress.update(views)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    writer.flush()
    seconds = time.perf_counter() - t0
    mean, std = stats.result()
    from rayeq import __version__
    from rayeq.data.make.scene import LATENT_NAMES, SCENE

    meta = {
        "format": OBJECTS_FORMAT,
        "source": "synth3d",
        "generator_version": GENERATOR_VERSION,
        "renderer": renderer,
        "render_device": device,
        "rayeq_version": __version__,
        "seed": seed,
        "classes": class_names,
        "objects_per_class": objects_per_class,
        "views_per_object": views,
        "image_size": size,
        "image_encoding": "png",
        "n_objects": n_objects,
        "splits": {s: splits.count(s) for s in ("train", "val")},
        "latent_names": LATENT_NAMES,
        "scene": SCENE,
        "mean": mean,
        "std": std,
        "shards": writer.shards,
    }
    write_meta(out, meta)
    ips = total / seconds
    log(
        f"synth3d: wrote {total} images ({n_objects} objects, {len(writer.shards)} shards) in {seconds:.1f}s "
        f"= {ips:.0f} images/s; mean {mean} std {std}"
    )
    return {**meta, "seconds": seconds, "images_per_second": ips}
