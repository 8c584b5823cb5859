"""`rayeq data preview`: a contact sheet of a data set, so a user can see what was made."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from rayeq.data.schema import OBJECTS_FORMAT, decode_image, open_dataset


def contact_sheet(data_dir: str | Path, out: str | Path, rows: int = 10, cols: int = 8, scale: int = 2) -> Path:
    """3D data: one row per object (one object of each of the first `rows` classes), one column per
    view, with the class name and each view's floor/light hue and rotation under it. Image data:
    a grid of images with class names."""
    meta, shards = open_dataset(data_dir)
    picked, seen, images = [], set(), []
    for shard in shards:  # one object (or up to `cols` images) per class, until `rows` classes
        for r in pq.read_table(shard).to_pylist():
            if meta["format"] != OBJECTS_FORMAT:
                images.append(r)
            elif r["class_name"] not in seen:
                seen.add(r["class_name"])
                picked.append(r)
        if len(picked) >= rows or len(images) >= rows * cols:
            break
    picked = picked[:rows]
    tiles = []
    if meta["format"] == OBJECTS_FORMAT:
        for r in picked:
            views = list(zip(r["images"], r["latents"], strict=True))[:cols]
            tiles.append([(decode_image(img), _caption(lat)) for img, lat in views])
        labels = [r["class_name"] for r in picked]
    else:
        flat = [(decode_image(r["image"]), r["class_name"]) for r in images[: rows * cols]]
        tiles = [flat[i : i + cols] for i in range(0, len(flat), cols)]
        labels = ["" for _ in tiles]
    return _draw(tiles, labels, out, scale, meta)


def _caption(lat) -> str:
    deg = np.degrees(lat[:3])
    return f"f{lat[3]:.2f} l{lat[6]:.2f}\n{deg[0]:+.0f} {deg[1]:+.0f} {deg[2]:+.0f}"


def _draw(tiles, labels, out, scale, meta) -> Path:
    size = tiles[0][0][0].shape[0] * scale
    left, cap, pad = 90, 24, 4
    ncols = max(len(t) for t in tiles)
    w = left + ncols * (size + pad)
    h = 20 + len(tiles) * (size + cap + pad)
    sheet = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    caption = "floor hue, light hue; rotation x y z (deg)" if meta["format"] == OBJECTS_FORMAT else "class (or photo)"
    title = f"{meta.get('source')}: {len(meta.get('classes', []))} classes; caption: {caption}"
    if meta.get("split_from"):
        title += f"; split by {meta['split_from']}"
    draw.text((4, 4), title, fill=(0, 0, 0))
    for i, row in enumerate(tiles):
        y = 20 + i * (size + cap + pad)
        draw.text((4, y + size // 2), labels[i][:14], fill=(0, 0, 0))
        for j, (img, text) in enumerate(row):
            x = left + j * (size + pad)
            sheet.paste(Image.fromarray(img).resize((size, size), Image.NEAREST), (x, y))
            draw.text((x, y + size), text, fill=(60, 60, 60))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
