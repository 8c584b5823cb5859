"""An object's rows of a synth3d set: its meshes, part colours and view latents from its own seed, rendered in
chunks, PNG-encoded, with the image sums for the set's mean and std. Shared by the local processes (synth3d) and
the Ray Data actors (ray_render)."""

from __future__ import annotations

import numpy as np

from rayeq.data.make.shapes import make_object
from rayeq.data.schema import ImageStats, encode_png


def make_renderer(renderer: str, size: int, device: str = "cpu", one_thread: bool = False):
    """A renderer with `render_objects(objects, latents) -> (B, V, size, size, 3) uint8`. `one_thread`: this process
    renders on one core (a pool's render process, a CPU render actor), so torch keeps to one thread."""
    if one_thread:
        import torch

        torch.set_num_threads(1)
    if renderer == "torch":
        from rayeq.data.make.raster import TorchRenderer

        return TorchRenderer(size, device=device)
    from rayeq.data.make.render import PybulletRenderer

    return PybulletRenderer(size)


def object_scene(task: tuple[int, str, np.random.SeedSequence, int]):
    """One object's meshes, part colours and view latents from its own seed. task = (label, class, seq, views)."""
    from rayeq.data.make.scene import random_colors, sample_latent

    _, class_name, seq, views = task
    g = np.random.default_rng(seq)
    meshes = make_object(class_name, g)
    colors = random_colors(g)
    latents = np.stack([sample_latent(g) for _ in range(views)])
    return meshes, colors, latents


def render_chunk(renderer, tasks: list[tuple[int, str, np.random.SeedSequence, int]]) -> list[dict]:
    """Render every view of a chunk of objects (one call of the renderer): their rows, with the image sums."""
    scenes = [object_scene(t) for t in tasks]
    images = renderer.render_objects([(m, c) for m, c, _ in scenes], np.stack([lat for _, _, lat in scenes]))
    return [_row(task, lat, imgs) for task, (_, _, lat), imgs in zip(tasks, scenes, images, strict=True)]


def _row(task, latents: np.ndarray, images: np.ndarray) -> dict:
    label, class_name, _, _ = task
    pngs, n, s, ss = [], 0, np.zeros(3), np.zeros(3)
    for img in images:
        pngs.append(encode_png(img))
        dn, ds, dss = ImageStats.sums(img)
        n, s, ss = n + dn, s + ds, ss + dss
    return {
        "label": label,
        "class_name": class_name,
        "images": pngs,
        "latents": [lat.tolist() for lat in latents],
        "_stats": (n, s, ss),
    }
