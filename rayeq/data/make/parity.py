"""The PyTorch renderer against the pybullet reference on one fixed sample: silhouette IoU per view, mean absolute
pixel difference, render images/s per core, and a contact sheet of both renderers' views of the same objects.
Used by `rayeq bench data` and the tests."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from rayeq.data.make.scene import random_colors, sample_latent
from rayeq.data.make.shapes import CLASSES, make_object


def parity_sample(per_class: int = 2, views: int = 4, seed: int = 0):
    """Every class, `per_class` objects each, `views` views per object: (objects, latents (B, V, 7))."""
    g = np.random.default_rng(seed)
    objects, latents = [], []
    for name in sorted(CLASSES):
        for _ in range(per_class):
            objects.append((make_object(name, g), random_colors(g)))
            latents.append([sample_latent(g) for _ in range(views)])
    return objects, np.asarray(latents, np.float32)


def timed_render(renderer, objects, latents, chunk: int = 16):
    """Render in chunks as `rayeq data synth3d` does; (images, silhouettes, seconds)."""
    images, masks = [], []
    t0 = time.perf_counter()
    for i in range(0, len(objects), chunk):
        img, sil = renderer.render_objects(objects[i : i + chunk], latents[i : i + chunk], masks=True)
        images.append(img)
        masks.append(sil)
    seconds = time.perf_counter() - t0
    return np.concatenate(images), np.concatenate(masks), seconds


IEBENCH_IMAGES = 52_472 * 50  # 3DIEBench: 52,472 objects x 50 views


def device_rate(objects, latents, size: int, device: str, chunk: int = 256):
    """The PyTorch renderer on `device` (a GPU: `chunk` objects per call), after a warm-up: (images/s, images,
    silhouettes). The images come back to the host, so the time includes the device's work."""
    import torch

    from rayeq.data.make.raster import TorchRenderer

    r = TorchRenderer(size, device=device)
    timed_render(r, objects[:64], latents[:64], chunk=64)  # warm-up: kernels, allocator
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    img, sil, sec = timed_render(r, objects, latents, chunk=chunk)
    return latents.shape[0] * latents.shape[1] / sec, img, sil


def compare(ref: np.ndarray, ref_mask: np.ndarray, new: np.ndarray, new_mask: np.ndarray) -> dict[str, Any]:
    """Silhouette IoU per view and mean absolute difference (0-255 scale) of two renders of the same views."""
    inter = (ref_mask & new_mask).sum((-2, -1))
    union = (ref_mask | new_mask).sum((-2, -1))
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    diff = np.abs(ref.astype(np.int16) - new.astype(np.int16))
    both, neither = ref_mask & new_mask, ~ref_mask & ~new_mask
    return {
        "views": int(iou.size),
        "iou_min": float(iou.min()),
        "iou_mean": float(iou.mean()),
        "views_below_0_98": int((iou < 0.98).sum()),
        "mean_abs_diff": float(diff.mean()),
        "mean_abs_diff_object": float(diff[both].mean()) if both.any() else 0.0,
        "mean_abs_diff_floor": float(diff[neither].mean()) if neither.any() else 0.0,
        "pixels_differing_over_8": float((diff.max(-1) > 8).mean()),
    }


def contact_sheet(ref: np.ndarray, new: np.ndarray, path: str | Path, objects: int = 12, views: int = 2,
                  per_row: int = 4, scale: int = 2, labels: tuple[str, str] = ("pybullet", "torch")):  # fmt: skip
    """The first `objects` objects, `views` views each, `per_row` objects to a band; each band three rows: the
    reference's views, the new renderer's, their absolute difference x4. Written as a PNG."""
    from PIL import Image, ImageDraw

    n = min(objects, len(ref))
    v = min(views, ref.shape[1])
    diff = np.clip(np.abs(ref.astype(np.int16) - new.astype(np.int16)) * 4, 0, 255).astype(np.uint8)
    side = ref.shape[2]
    blank = np.full((side, side, 3), 255, np.uint8)
    bands = []
    for start in range(0, n, per_row):
        picks = [(i, j) for i in range(start, start + per_row) for j in range(v)]
        for src in (ref, new, diff):
            bands.append(np.concatenate([src[i, j] if i < n else blank for i, j in picks], 1))
        bands.append(np.full((side // 4, bands[-1].shape[1], 3), 255, np.uint8))  # a gap between bands
    sheet = np.concatenate(bands[:-1], 0)
    h, w = sheet.shape[:2]
    img = Image.fromarray(sheet).resize((w * scale, h * scale), Image.NEAREST)
    margin = 70
    canvas = Image.new("RGB", (img.width + margin, img.height), (255, 255, 255))
    canvas.paste(img, (margin, 0))
    draw = ImageDraw.Draw(canvas)
    band = (3 * side + side // 4) * scale
    for b in range((n + per_row - 1) // per_row):
        for k, text in enumerate((*labels, "|diff| x4")):
            draw.text((4, b * band + k * side * scale + side * scale // 2 - 6), text, fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
