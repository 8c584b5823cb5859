"""The built-in natural-photo set (`data.source=photos`): crops of the colour photographs that ship inside
scikit-image and scikit-learn (the `photos` extra), built once into the cache, offline.

Every photo's licence is recorded beside it in `meta.json` (source package, version, file, licence, credit).
Grey-level pictures (camera, moon, coins, ...) are left out: colour jitter's saturation and hue do not change
them, so their parameters could not be read from them. Left out for their licence: the Middlebury stereo pair
(`motorcycle_left/right.png`, no licence stated). Left out as not photographs: logo, colorwheel, chessboard.

The split is by source photo: the held-out photos are never seen in training, so their crops test transfer to
new scenes. Photo identity is each crop's label, which makes the held-out labels classes no training crop has:
the set serves the transforms protocol (`eval.protocols: [transforms]`), not classification (top-1 comes from
the 3D renders)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import time
from pathlib import Path

import numpy as np
from PIL import Image

from rayeq.data.make.progress import Progress
from rayeq.data.schema import (
    IMAGES_FORMAT,
    IMAGES_SCHEMA,
    DataError,
    ImageStats,
    ShardWriter,
    encode_png,
    prepare_output_dir,
    write_meta,
)

PHOTOS_VERSION = 1  # bump when the photos, their crops or the split change: cached sets are rebuilt
# (name, distribution, import name, file inside the package, licence, credit)
PHOTOS = [
    ("astronaut", "scikit-image", "skimage", "data/astronaut.png", "public domain",
     "NASA Great Images (astronaut Eileen Collins)"),
    ("coffee", "scikit-image", "skimage", "data/coffee.png", "CC0", "Rachel Michetti, Pikolo Espresso Bar"),
    ("hubble_deep_field", "scikit-image", "skimage", "data/hubble_deep_field.jpg", "public domain", "NASA, HubbleSite"),
    ("retina", "scikit-image", "skimage", "data/retina.jpg", "CC0 1.0", "Mikael Häggström, Wikimedia Commons"),
    ("immunohistochemistry", "scikit-image", "skimage", "data/ihc.png", "no known copyright restrictions",
     "Center for Microscopy And Molecular Imaging (CMMI)"),
    ("china", "scikit-learn", "sklearn", "datasets/images/china.jpg", "CC BY 2.0",
     "danielbuechele (Flickr), retrieved by Robert Layton"),
    ("chelsea", "scikit-image", "skimage", "data/chelsea.png", "CC0", "Stefan van der Walt"),
    ("rocket", "scikit-image", "skimage", "data/rocket.jpg", "public domain", "SpaceX (DSCOVR launch on Falcon 9)"),
    ("flower", "scikit-learn", "sklearn", "datasets/images/flower.jpg", "CC BY 2.0",
     "vultilion (Flickr), retrieved by Robert Layton"),
]  # fmt: skip
HELD_OUT = ("chelsea", "rocket", "flower")  # a cat, a launch scene, a flower: three kinds of scene none of train has
# crops: a square of side uniform in SIDE x the photo's short side, anywhere in it, resized to `size`
SIDE = (0.35, 0.9)
MIN_STD = 12.0  # a crop whose pixels vary less than this (grey levels) shows nothing (black sky, a retina's rim)


# what can be scored on the set: its held-out photos are classes no training crop has, so no top-1
PROTOCOLS = ["transforms"]


def photo_file(dist: str, module: str, rel: str) -> Path:
    """The photo's file inside its installed package; a missing package or file is named with the extra."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"data.source=photos needs the {dist!r} package (its photos ship inside it): "
            f"pip install 'rayeq[photos]' (or pip install {dist})"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.is_file():
        raise DataError(f"{dist} {importlib.metadata.version(dist)} has no {rel!r}: the photo set expects it there")
    return path


def _crops(img: np.ndarray, n: int, size: int, g: np.random.Generator) -> list[np.ndarray]:
    h, w = img.shape[:2]
    pil, out, tries = Image.fromarray(img), [], 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n:
            raise DataError(f"only {len(out)} of {n} crops of a {w}x{h} photo vary by >= {MIN_STD} grey levels")
        side = int(g.uniform(*SIDE) * min(h, w))
        x, y = int(g.integers(0, w - side + 1)), int(g.integers(0, h - side + 1))
        crop = np.asarray(pil.crop((x, y, x + side, y + side)).resize((size, size), Image.BICUBIC))
        if crop.std() >= MIN_STD:
            out.append(crop)
    return out


def build_photos(
    out: str | Path, size: int, train_crops: int, val_crops: int, seed: int = 0, overwrite: bool = False, log=print
) -> dict:
    """Crops of every photo in `PHOTOS` (`train_crops` per training photo, `val_crops` per held-out one) as PNG rows
    of rayeq's image format; `meta.json` names each photo's source, licence and split."""
    files = [
        (name, dist, photo_file(dist, module, rel), rel, lic, credit) for name, dist, module, rel, lic, credit in PHOTOS
    ]  # fmt: skip  (every package checked before writing)
    out = prepare_output_dir(out, overwrite)
    t0 = time.perf_counter()
    g = np.random.default_rng(seed)
    writer, stats = ShardWriter(out, IMAGES_SCHEMA, 1024), ImageStats()
    total = sum(val_crops if f[0] in HELD_OUT else train_crops for f in files)
    progress = Progress(total, "crops", every=5.0, log=log)
    rows, photos = [], []
    for label, (name, dist, path, rel, lic, credit) in enumerate(files):
        split = "val" if name in HELD_OUT else "train"
        img = np.asarray(Image.open(path).convert("RGB"))
        crops = _crops(img, val_crops if split == "val" else train_crops, size, g)
        for i, crop in enumerate(crops):
            if split == "train":
                stats.add_sums(*ImageStats.sums(crop))
            rows.append({"image": encode_png(crop), "label": label, "class_name": name, "path": f"{name}/{i:04d}",
                         "split": split})  # fmt: skip
        progress.update(len(crops))
        photos.append({"name": name, "package": dist, "version": importlib.metadata.version(dist), "file": rel,
                       "licence": lic, "credit": credit, "split": split, "size": [img.shape[1], img.shape[0]],
                       "crops": len(crops)})  # fmt: skip
    for i in g.permutation(len(rows)):  # shards mix photos
        writer.add(rows[i])
    writer.flush()
    mean, std = stats.result()
    splits = {s: sum(p["crops"] for p in photos if p["split"] == s) for s in ("train", "val")}
    meta = {
        "format": IMAGES_FORMAT,
        "source": "photos",
        "photos_version": PHOTOS_VERSION,
        "classes": [p["name"] for p in photos],
        "classes_shared": False,  # the held-out photos are labels no training crop has: no top-1 on this set
        "protocols": PROTOCOLS,
        "photos": photos,
        "n_images": writer.n_rows,
        "splits": splits,
        "split_from": f"source photo: held out {list(HELD_OUT)}",
        "crops": {"side_of_short_side": list(SIDE), "min_std": MIN_STD, "resized_to": size, "seed": seed},
        "image_size": size,
        "train_crops": train_crops,
        "val_crops": val_crops,
        "seed": seed,
        "mean": mean,
        "std": std,
        "shards": writer.shards,
    }
    write_meta(out, meta)
    log(
        f"photos: {writer.n_rows} crops of {len(photos)} photos ({splits['train']} train from "
        f"{len(photos) - len(HELD_OUT)} photos, {splits['val']} held-out from {len(HELD_OUT)}) at {size} px -> {out} "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    return meta
