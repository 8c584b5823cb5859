"""The built-in renders as an image set (`data.source=renders`): synth3d objects rendered at one or more poses, each
view a row of rayeq's image format labelled with its object's class, split by object as synth3d splits them (80/20
per class). Trained with the 2D augmentations of image data and scored by the transforms protocol, as the photos
are; unlike the photos, the held-out objects are of the training classes, so linear and kNN top-1 (23 classes)
measure what the invariant features keep."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rayeq.data.make.progress import Progress
from rayeq.data.schema import (
    IMAGES_FORMAT,
    IMAGES_SCHEMA,
    DataError,
    ShardWriter,
    open_dataset,
    prepare_output_dir,
    read_split_table,
    write_meta,
)

RENDERS_VERSION = 1


def build_renders(
    out: str | Path, classes: int, objects_per_class: int, views: int, size: int, seed: int = 0,
    overwrite: bool = False, log=print,
) -> dict:  # fmt: skip
    """Render `classes` x `objects_per_class` synth3d objects with `views` poses each at `size` px, then write every
    view as an image row (PNG bytes as rendered; path `<object_id>/<view>`) with its object's split."""
    from rayeq.data.make.synth3d import generate

    if views < 1:
        raise DataError(f"--views must be at least 1 (poses per object), got {views}")
    out = prepare_output_dir(out, overwrite)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rayeq-renders-") as tmp:
        # synth3d renders at least 2 views (its pairs need two); an image set may keep one
        made = generate(Path(tmp) / "objects", classes=classes, objects_per_class=objects_per_class,
                        views=max(views, 2), size=size, seed=seed, log=log)  # fmt: skip
        _, shards = open_dataset(Path(tmp) / "objects")
        writer = ShardWriter(out, IMAGES_SCHEMA, 1024)
        progress = Progress(classes * objects_per_class * views, "images", every=5.0, log=log)
        for shard in shards:
            for split in ("train", "val"):
                for row in read_split_table(shard, split, ["object_id", "label", "class_name", "images"]).to_pylist():
                    for k, image in enumerate(row["images"][:views]):
                        writer.add({"image": image, "label": row["label"], "class_name": row["class_name"],
                                    "path": f"{row['object_id']}/{k}", "split": split})  # fmt: skip
                    progress.update(views)
        writer.flush()
    splits = {s: made["splits"][s] * views for s in ("train", "val")}
    meta = {
        "format": IMAGES_FORMAT,
        "source": "renders",
        "renders_version": RENDERS_VERSION,
        "generator_version": made["generator_version"],
        "classes": made["classes"],
        "classes_shared": True,  # held-out objects of the training classes: top-1 is meaningful
        "objects_per_class": objects_per_class,
        "views_per_object": views,
        "n_images": writer.n_rows,
        "splits": splits,
        "split_from": "object (synth3d's 80/20 split per class): no object has views in both splits",
        "image_size": size,
        "seed": seed,
        "mean": made["mean"],  # synth3d's per-channel statistics of the same renders
        "std": made["std"],
        "shards": writer.shards,
    }
    write_meta(out, meta)
    log(
        f"renders: {writer.n_rows} images of {classes * objects_per_class} objects ({splits['train']} train, "
        f"{splits['val']} held-out, split by object) at {size} px -> {out} in {time.perf_counter() - t0:.1f} s"
    )
    return meta
