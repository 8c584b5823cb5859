"""From a data directory to batches of paired views, with Ray Data or without.

Ray path:  read_parquet -> map_batches(pair maker, actor pool, CPU) -> uint8 views, streamed to the
train workers by `get_dataset_shard(...).iter_torch_batches(drop_last=True)`. A dataset given to a
Trainer re-runs its map_batches every epoch, so pairs (and augmentations) are fresh each epoch.
Plain path: `iter_pairs` runs the same pair maker over the shards in one process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from rayeq.config import ExperimentConfig
from rayeq.data.feed.normalize import normalize
from rayeq.data.feed.pairs import pair_maker_class
from rayeq.data.schema import IMAGES_FORMAT, OBJECTS_FORMAT, DataError, open_dataset, split_filter

READ_CPUS = 0.1  # Parquet reads are light; a full CPU per read task starves small clusters (2 cores)
SOURCE_FORMATS = {"synth3d": OBJECTS_FORMAT, "3diebench": OBJECTS_FORMAT, "folder": IMAGES_FORMAT}


def resolve_data_dir(cfg: ExperimentConfig, build: bool = True) -> Path:
    """data.path, or for data.source=synth3d without a path the built-in set (rendered once into the
    cache directory, $RAYEQ_CACHE or ~/.cache/rayeq)."""
    if cfg.data.path is None and cfg.data.source == "synth3d":
        from rayeq.data.builtin import builtin_data_dir, ensure_data

        return ensure_data(name=cfg.data.builtin) if build else builtin_data_dir(cfg.data.builtin)
    if cfg.data.path is None:
        raise DataError(
            f"data.path is not set for data.source={cfg.data.source!r}: make a data set first "
            "(e.g. `rayeq data synth3d --out data/synth3d`) and pass data.path=data/synth3d"
        )
    return Path(cfg.data.path).expanduser()


def check_data(cfg: ExperimentConfig, split: str | None = "train") -> tuple[dict[str, Any], list[Path]]:
    """Everything that can be checked before training starts: directory, meta.json, shard schemas,
    non-empty split, and that the data's kind fits data.source."""
    path = resolve_data_dir(cfg)
    meta, shards = open_dataset(path, split)
    want = SOURCE_FORMATS[cfg.data.source]
    if meta["format"] != want:
        raise DataError(
            f"data.source={cfg.data.source!r} expects {want} data, but {str(path)!r} holds {meta['format']} "
            f"(made from {meta.get('source')!r}); set data.source accordingly"
        )
    return meta, shards


def iter_pairs(
    cfg: ExperimentConfig, split: str = "train", batch_size: int = 64, seed: int | None = None, epochs: int = 1
) -> Iterator[dict[str, np.ndarray]]:
    """Plain, single-process pairs: rows shuffled per epoch, the same pair maker as the Ray path."""
    meta, shards = check_data(cfg, split)
    maker = pair_maker_class(cfg.data.source)(cfg, split=split, seed=seed)
    order_rng = np.random.default_rng(cfg.train.seed if seed is None else seed)
    tables = [pq.read_table(s).append_column("path", _path_column(s, pq.read_metadata(s).num_rows)) for s in shards]
    table = pa.concat_tables(tables).filter(split_filter(split))
    for _ in range(epochs):
        idx = order_rng.permutation(table.num_rows)
        for start in range(0, len(idx) - batch_size + 1, batch_size):  # drop_last, as on the Ray path
            yield maker(table.take(idx[start : start + batch_size]))


def _path_column(shard: Path, n: int) -> pa.Array:
    return pa.array([str(shard)] * n, pa.string())


def read_split(shards: list[Path], split: str, shuffle: str | None = None, include_paths: bool = True):
    """A Ray Dataset of one split's stored rows (objects or images); with `include_paths`, the
    shard's path in a `path` column."""
    import ray

    # Ray 2.60's V2 Parquet reader adds a ListFiles task that always asks for a whole CPU; next to
    # the train workers and the pair actors on a small machine it can never be scheduled and the
    # run hangs without an error. The V1 reader has no such task, honours num_cpus and pushes the
    # split filter down into the Parquet scan. The flag is read when the dataset is created.
    ctx = ray.data.DataContext.get_current()
    previous = ctx.use_datasource_v2
    ctx.use_datasource_v2 = False
    try:
        return ray.data.read_parquet(
            [str(s) for s in shards],
            include_paths=include_paths,  # a corrupt image's error names its shard
            num_cpus=READ_CPUS,
            shuffle=shuffle,
            filter=split_filter(split),
        )
    finally:
        ctx.use_datasource_v2 = previous


def build_ray_dataset(cfg: ExperimentConfig, split: str = "train"):
    """The Ray Data pipeline of paired uint8 views for `split` (needs ray.init() first)."""
    import ray

    meta, shards = check_data(cfg, split)
    ds = read_split(shards, split, shuffle="files")
    d = cfg.data
    n = d.num_actors or max(1, int(ray.cluster_resources().get("CPU", 1) // 2))
    return ds.map_batches(
        pair_maker_class(cfg.data.source),
        fn_constructor_kwargs={"cfg": cfg.to_dict(), "split": split},
        batch_size=d.rows_per_batch,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=n),
        num_cpus=d.cpus_per_actor,
    )


def to_model_batch(
    batch: dict[str, Any],
    mean: list[float],
    std: list[float],
    device: torch.device | str = "cpu",
    channels_last: bool = False,
) -> dict[str, torch.Tensor]:
    """uint8 views -> normalised float views on `device`; other keys become tensors as they are."""
    out = {}
    for k, v in batch.items():
        t = v if isinstance(v, torch.Tensor) else torch.as_tensor(v)
        t = t.to(device, non_blocking=True)
        if k in ("view1", "view2"):
            t = normalize(t, mean, std)
            if channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
        out[k] = t
    return out
