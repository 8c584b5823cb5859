"""`rayeq data synth3d --ray`: the objects rendered by a pool of Ray Data actors, one per GPU of the cluster with
`--device cuda` (else one per CPU but one), so a cluster makes its data set where it trains. The driver writes
the shards in object order, as the local path does: the same bytes for the same renderer and device."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np


class RenderActor:
    """Holds one renderer; each batch of objects (label, class, the object's seed: child `obj` of SeedSequence(seed),
    as synth3d.generate spawns them) becomes their rows (PNG views, latents, image sums)."""

    def __init__(self, seed: int, views: int, renderer: str, size: int, device: str):
        from rayeq.data.make.objects import make_renderer

        self.seed, self.views = seed, views
        gpu = device.startswith("cuda")  # one actor per GPU, else one per CPU
        self.renderer = make_renderer(renderer, size, "cuda" if gpu else device, one_thread=not gpu)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        tasks = [
            (int(label), str(name), np.random.SeedSequence(self.seed, spawn_key=(int(obj),)), self.views)
            for label, name, obj in zip(batch["label"], batch["class_name"], batch["obj"], strict=True)
        ]
        from rayeq.data.make.objects import render_chunk

        rows = render_chunk(self.renderer, tasks)
        return {
            "index": batch["index"],
            "images": [r["images"] for r in rows],
            "latents": [r["latents"] for r in rows],
            "stats": [np.concatenate([[r["_stats"][0]], r["_stats"][1], r["_stats"][2]]) for r in rows],
        }


def actors_for(device: str) -> tuple[int, dict[str, float]]:
    """How many render actors the cluster holds, and what each asks for; a ConfigError when none fits."""
    import ray

    from rayeq.config import ConfigError

    res = ray.cluster_resources()
    if device.startswith("cuda"):
        gpus = int(res.get("GPU", 0))
        if gpus < 1:
            raise ConfigError(
                f"rayeq data synth3d --ray --device {device}: the Ray cluster has no GPU ({res.get('CPU', 0):.0f} "
                "CPUs); use --device cpu, or a cluster with GPU nodes"
            )
        return gpus, {"num_gpus": 1, "num_cpus": 1}
    return max(1, int(res.get("CPU", 1)) - 1), {"num_cpus": 1}


def render_rows(tasks: list, renderer: str, size: int, device: str, chunk: int, actors: tuple[int, dict],
                log=print) -> Iterator[dict]:  # fmt: skip
    """Rows of `tasks` (synth3d.generate's, in order) rendered by Ray Data actors (needs ray.init() first)."""
    import ray

    n, per_actor = actors
    log(f"synth3d: rendering on Ray: {n} actor(s), each {per_actor}")
    ctx = ray.data.DataContext.get_current()
    previous = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True  # rows come back in object order (for this dataset only: restored)
    try:
        yield from _rows(ray, tasks, renderer, size, device, chunk, n, per_actor)
    finally:
        ctx.execution_options.preserve_order = previous


def _rows(ray, tasks, renderer, size, device, chunk, n, per_actor) -> Iterator[dict]:
    seed = int(tasks[0][2].entropy) if tasks else 0
    views = tasks[0][3] if tasks else 2
    items = [
        {"index": i, "label": t[0], "class_name": t[1], "obj": int(t[2].spawn_key[-1])} for i, t in enumerate(tasks)
    ]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(tasks) // chunk))
    with warnings.catch_warnings():  # max_restarts has no named parameter in Ray 2.60 (rayeq pins < 2.61)
        warnings.filterwarnings("ignore", message=".*ray_remote_args. is deprecated")
        ds = ds.map_batches(
            RenderActor,
            fn_constructor_kwargs={"seed": seed, "views": views, "renderer": renderer, "size": size, "device": device},
            batch_size=chunk,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=n),
            # no actor restarts: a failed render fails the command, which then says so (and Ray's core worker does not
            # print its notice about restarting actors whose arguments are in the object store)
            max_restarts=0,
            **per_actor,
        )
    for row in ds.iter_rows():
        s = np.asarray(row["stats"], np.float64)
        yield {
            "label": tasks[row["index"]][0],
            "class_name": tasks[row["index"]][1],
            "images": list(row["images"]),
            "latents": [list(map(float, lat)) for lat in row["latents"]],
            "_stats": (int(s[0]), s[1:4], s[4:7]),
        }
