"""Converters from on-disk layouts to rayeq's Parquet format, streaming shard by shard.

`rayeq data 3diebench`: the official layout SYNSET/OBJ_ID/image_{i}.jpg + latent_{i}.npy, with
SIE's object lists (train_images.npy / val_images.npy of "/SYNSET/OBJ_ID") when given, else an
80/20 split by object. Images are stored as their original JPEG bytes (no re-encoding).
`rayeq data folder`: class sub-folders of images (the ImageNet layout); with ROOT/train and
ROOT/val sub-trees those are the splits, else an 80/20 split per class.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from rayeq.data.make.progress import Progress
from rayeq.data.schema import (
    IMAGES_FORMAT,
    IMAGES_SCHEMA,
    N_LATENTS,
    OBJECTS_FORMAT,
    OBJECTS_SCHEMA,
    DataError,
    ImageStats,
    ShardWriter,
    decode_image,
    prepare_output_dir,
    write_meta,
)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
_VIEW = re.compile(r"image_(\d+)\.(jpg|jpeg|png)$", re.I)


def _hash_split(key: str, val_fraction: float = 0.2) -> str:
    h = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if h < val_fraction else "train"


def _sample_stats(stats: ImageStats, wanted: bool, data: bytes, path: Path) -> int:
    """Normalisation statistics come from the first images, in a fixed order; returns 1 if used."""
    if not wanted:
        return 0
    try:
        stats.add_sums(*ImageStats.sums(decode_image(data)))
    except Exception as exc:
        raise DataError(f"corrupt image {str(path)!r}: {exc}") from exc
    return 1


def _load_object_list(path: str | Path | None) -> set[str] | None:
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise DataError(f"object list {str(path)!r} does not exist")
    items = np.load(path, allow_pickle=False)
    return {str(s).strip("/") for s in items.tolist()}


def convert_3diebench(
    src: str | Path,
    out: str | Path,
    train_list: str | Path | None = None,
    val_list: str | Path | None = None,
    overwrite: bool = False,
    objects_per_shard: int = 64,
    stats_images: int = 2000,
    log=print,
) -> dict:
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"3DIEBench root {str(src)!r} does not exist or is not a directory")
    synsets = sorted(p for p in src.iterdir() if p.is_dir())
    objects = [(s.name, o) for s in synsets for o in sorted(p for p in s.iterdir() if p.is_dir())]
    if not objects:
        raise DataError(f"{str(src)!r} has no SYNSET/OBJ_ID folders: not the 3DIEBench layout")
    order = np.random.default_rng(0).permutation(len(objects))  # shards mix classes
    objects = [objects[i] for i in order]
    train_ids, val_ids = _load_object_list(train_list), _load_object_list(val_list)
    out = prepare_output_dir(out, overwrite)
    classes = [s.name for s in synsets]
    writer = ShardWriter(out, OBJECTS_SCHEMA, objects_per_shard)
    stats, n_stats = ImageStats(), 0
    splits = {"train": 0, "val": 0}
    progress = Progress(len(objects), "objects", log=log)
    n_views_total = 0
    for synset, obj in objects:
        key = f"{synset}/{obj.name}"
        if train_ids is not None or val_ids is not None:
            split = "train" if train_ids and key in train_ids else "val" if val_ids and key in val_ids else None
            if split is None:
                progress.update()
                continue  # not in the official lists
        else:
            split = _hash_split(key)
        views = sorted((int(m.group(1)), p) for p in obj.iterdir() if (m := _VIEW.match(p.name)))
        if len(views) < 2:
            raise DataError(f"object {key!r} has {len(views)} image_*.jpg view(s); at least 2 are needed")
        images, latents = [], []
        for i, img_path in views:
            lat_path = obj / f"latent_{i}.npy"
            if not lat_path.is_file():
                raise DataError(f"{str(img_path)!r} has no matching {lat_path.name}")
            lat = np.load(lat_path).astype(np.float32).ravel()
            if lat.shape != (N_LATENTS,):
                raise DataError(f"{str(lat_path)!r} holds {lat.size} values; 3DIEBench latents have {N_LATENTS}")
            data = img_path.read_bytes()
            n_stats += _sample_stats(stats, n_stats < stats_images, data, img_path)
            images.append(data)
            latents.append(lat.tolist())
        writer.add(
            {
                "object_id": key,
                "label": classes.index(synset),
                "class_name": synset,
                "split": split,
                "images": images,
                "latents": latents,
            }
        )
        splits[split] += 1
        n_views_total += len(images)
        progress.update()
    writer.flush()
    if writer.n_rows == 0:
        raise DataError(f"no objects of {str(src)!r} were in the given train/val lists")
    mean, std = stats.result()
    meta = {
        "format": OBJECTS_FORMAT,
        "source": "3diebench",
        "src": str(src.resolve()),
        "classes": classes,
        "n_objects": writer.n_rows,
        "n_images": n_views_total,
        "splits": splits,
        "image_encoding": "jpeg",
        "split_from": "object lists" if train_ids or val_ids else "hash of object id (80/20)",
        "latent_names": ["rot_x", "rot_y", "rot_z", "floor_hue", "light_theta", "light_phi", "light_hue"],
        "mean": mean,
        "std": std,
        "shards": writer.shards,
    }
    write_meta(out, meta)
    log(f"3diebench: {writer.n_rows} objects ({splits}), {n_views_total} images -> {out} ({len(writer.shards)} shards)")
    return meta


def convert_folder(
    src: str | Path,
    out: str | Path,
    overwrite: bool = False,
    images_per_shard: int = 2048,
    val_fraction: float = 0.2,
    stats_images: int = 2000,
    log=print,
) -> dict:
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"image folder root {str(src)!r} does not exist or is not a directory")
    if (src / "train").is_dir() and (src / "val").is_dir():
        trees = [("train", src / "train"), ("val", src / "val")]
    else:
        trees = [(None, src)]
    classes = sorted({p.name for _, t in trees for p in t.iterdir() if p.is_dir()})
    if not classes:
        raise DataError(f"{str(src)!r} has no class sub-folders (expected ROOT/CLASS/IMAGE or ROOT/train/CLASS/IMAGE)")
    files = [
        (split, c, f)
        for split, tree in trees
        for c in classes
        if (tree / c).is_dir()
        for f in sorted((tree / c).rglob("*"))
        if f.suffix.lower() in IMAGE_EXTENSIONS
    ]
    if not files:
        raise DataError(f"{str(src)!r} has class folders but no images ({sorted(IMAGE_EXTENSIONS)})")
    files = [files[i] for i in np.random.default_rng(0).permutation(len(files))]  # shards mix classes
    out = prepare_output_dir(out, overwrite)
    writer = ShardWriter(out, IMAGES_SCHEMA, images_per_shard)
    stats, n_stats = ImageStats(), 0
    splits = {"train": 0, "val": 0}
    progress = Progress(len(files), "images", log=log)
    for split, c, f in files:
        rel = str(f.relative_to(src))
        split = split or _hash_split(rel, val_fraction)
        data = f.read_bytes()
        n_stats += _sample_stats(stats, n_stats < stats_images, data, f)
        writer.add({"image": data, "label": classes.index(c), "class_name": c, "path": rel, "split": split})
        splits[split] += 1
        progress.update()
    writer.flush()
    mean, std = stats.result()
    hashed = f"hash of path ({1 - val_fraction:.0%}/{val_fraction:.0%})"
    split_from = "train/ and val/ sub-trees" if trees[0][0] else hashed
    meta = {
        "format": IMAGES_FORMAT,
        "source": "folder",
        "src": str(src.resolve()),
        "classes": classes,
        "n_images": writer.n_rows,
        "splits": splits,
        "mean": mean,
        "std": std,
        "shards": writer.shards,
        "split_from": split_from,
    }
    write_meta(out, meta)
    log(f"folder: {writer.n_rows} images in {len(classes)} classes ({splits}) -> {out} ({len(writer.shards)} shards)")
    return meta
