"""`rayeq data synth3d`: render a 3DIEBench-like data set offline on the CPU.

Each object gets its own seed (SeedSequence(seed).spawn), so the output is byte-identical whatever
the number of worker processes: workers render objects, the parent writes them in object order.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np

from rayeq.data.make.progress import Progress
from rayeq.data.make.shapes import CLASSES, make_object
from rayeq.data.schema import (
    OBJECTS_FORMAT,
    OBJECTS_SCHEMA,
    DataError,
    ImageStats,
    ShardWriter,
    encode_png,
    prepare_output_dir,
    write_meta,
)

GENERATOR_VERSION = "synth3d-2"
VAL_FRACTION = 0.2

_renderer = None


def _init_worker(size: int) -> None:
    global _renderer
    from rayeq.data.make.render import SceneRenderer

    _renderer = SceneRenderer(size)


def render_object(task: tuple[int, str, np.random.SeedSequence, int]) -> dict:
    """Render every view of one object. task = (label, class name, seed sequence, n views)."""
    from rayeq.data.make.render import random_colors, sample_latent

    label, class_name, seq, views = task
    g = np.random.default_rng(seq)
    meshes = make_object(class_name, g)
    colors = random_colors(g)
    latents = [sample_latent(g) for _ in range(views)]
    _renderer.load(meshes, colors)
    images, n, s, ss = [], 0, np.zeros(3), np.zeros(3)
    for lat in latents:
        img = _renderer.render(lat)
        images.append(encode_png(img))
        dn, ds, dss = ImageStats.sums(img)
        n, s, ss = n + dn, s + ds, ss + dss
    return {
        "label": label,
        "class_name": class_name,
        "images": images,
        "latents": [lat.tolist() for lat in latents],
        "_stats": (n, s, ss),
    }


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
) -> dict:
    """Render the set into `out`; returns meta (also written as meta.json) plus timing."""
    available = sorted(CLASSES)
    if not 1 <= classes <= len(available):
        raise DataError(f"--classes must be in [1, {len(available)}] (the procedural classes), got {classes}")
    if objects_per_class < 1:
        raise DataError(f"--objects-per-class must be >= 1, got {objects_per_class}")
    if views < 2:
        raise DataError(f"--views must be >= 2 (pairs need two distinct views), got {views}")
    if not 16 <= size <= 512:
        raise DataError(f"--size must be in [16, 512], got {size}")
    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise DataError(f"--workers must be >= 1, got {workers}")
    out = prepare_output_dir(out, overwrite)

    class_names = available[:classes]
    n_objects = classes * objects_per_class
    seqs = np.random.SeedSequence(seed).spawn(n_objects)
    splits = object_splits(classes, objects_per_class, seed)
    # Objects are written in a seeded random order, so every shard (and every streamed batch)
    # mixes classes; each object keeps its own seed, so the bytes do not depend on the order.
    order = np.random.default_rng(np.random.SeedSequence([seed, 2])).permutation(n_objects)
    tasks = [(i // objects_per_class, class_names[i // objects_per_class], seqs[i], views) for i in order]

    writer = ShardWriter(out, OBJECTS_SCHEMA, objects_per_shard)
    stats = ImageStats()
    total = n_objects * views
    progress = Progress(total, "images", log=log)
    log(
        f"synth3d: {classes} classes x {objects_per_class} objects x {views} views at {size}px = {total} images, "
        f"{workers} worker(s) -> {out}"
    )
    t0 = time.perf_counter()
    if workers == 1:
        _init_worker(size)
        results = map(render_object, tasks)
        pool = None
    else:
        pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(size,))
        results = pool.imap(render_object, tasks, chunksize=2)
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
    from rayeq.data.make.render import LATENT_NAMES, SCENE

    meta = {
        "format": OBJECTS_FORMAT,
        "source": "synth3d",
        "generator_version": GENERATOR_VERSION,
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
