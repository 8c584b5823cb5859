"""From a data directory to batches of paired views, with Ray Data or without.

Ray path:  read_parquet -> map_batches(pair maker, actor pool, CPU) -> uint8 views, streamed to the
train workers by `get_dataset_shard(...).iter_torch_batches(drop_last=True)`. The training dataset
holds train.epochs passes over the split in one stream (the worker counts epochs in steps), and the
pair makers draw views anew for every row they see, so pairs (and augmentations) are fresh each epoch.
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
from rayeq.data.feed.pairs import ShardPairs, pair_maker_class, path_column
from rayeq.data.schema import IMAGES_FORMAT, OBJECTS_FORMAT, DataError, is_objects, open_dataset, split_filter

READ_CPUS = 0.1  # Parquet reads are light; a full CPU per read task starves small clusters (2 cores)
# Validation runs while the training stream (all epochs in one execution) keeps its actors: the
# validation pipeline's actors reserve a token share of a CPU so that they can always be placed
# (they work while the training stream waits for its consumer).
VAL_CPUS = 0.1
SOURCE_FORMATS = {
    "synth3d": OBJECTS_FORMAT,
    "3diebench": OBJECTS_FORMAT,
    "folder": IMAGES_FORMAT,
    "photos": IMAGES_FORMAT,
    "renders": IMAGES_FORMAT,
}


def resolve_data_dir(cfg: ExperimentConfig, build: bool = True) -> Path:
    """data.path, or without a path the built-in set of data.source synth3d (rendered once into the cache
    directory, $RAYEQ_CACHE or ~/.cache/rayeq), photos (built once there from the installed packages' photos) or renders
    (synth3d renders as an image set, rendered once there)."""
    if cfg.data.path is None and cfg.data.source == "synth3d":
        from rayeq.data.builtin import builtin_data_dir, ensure_data

        return ensure_data(name=cfg.data.builtin) if build else builtin_data_dir(cfg.data.builtin)
    if cfg.data.path is None and cfg.data.source in ("photos", "renders"):
        from rayeq.data.builtin import builtin_data_dir, ensure_photos, ensure_renders

        ensure = ensure_photos if cfg.data.source == "photos" else ensure_renders
        return ensure() if build else builtin_data_dir(cfg.data.source)
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


DECODED_AUTO_BYTES = 4 * 2**30  # data.decoded=None: decode a 3D set when its raw views fit in this


def uses_decoded(cfg: ExperimentConfig, meta: dict[str, Any]) -> bool:
    """data.decoded, with None meaning: for a 3D set whose views at data.image_size take at most
    DECODED_AUTO_BYTES raw (the built-in sets: 1.7 GB at 64 px; 3DIEBench's 2.6 M views do not fit),
    unless data.skip_corrupt asks to step over unreadable views."""
    if not is_objects(meta):
        return False
    if cfg.data.decoded is not None:
        return cfg.data.decoded
    if cfg.data.skip_corrupt:  # a decoded copy needs every view readable
        return False
    views = meta.get("n_images") or meta.get("n_objects", 0) * meta.get("views_per_object", 0)
    return 0 < views * 3 * cfg.data.image_size**2 <= DECODED_AUTO_BYTES


def feed_data(cfg: ExperimentConfig, split: str | None = "train", log=print) -> tuple[dict[str, Any], list[Path]]:
    """The set training is fed from: `check_data`'s, or its decoded copy at data.image_size
    (`data.decoded`; made once, `data/make/decode.py`)."""
    meta, shards = check_data(cfg, split)
    if not uses_decoded(cfg, meta):
        return meta, shards
    from rayeq.data.make.decode import ensure_decoded

    return open_dataset(ensure_decoded(resolve_data_dir(cfg), cfg.data.image_size, log=log), split)


def maker_kwargs(cfg: ExperimentConfig, meta: dict[str, Any], split: str | None) -> dict[str, Any]:
    """What a pair maker needs besides the batch: the config, the split, and how views are stored."""
    encoding, stored_size = meta.get("image_encoding"), meta.get("image_size")
    kwargs = {"cfg": cfg.to_dict(), "split": split, "encoding": encoding, "stored_size": stored_size}
    if cfg.method.between_ts and is_objects(meta):  # design B on 3D data re-renders the set's objects
        kwargs["scene_meta"] = {k: v for k, v in meta.items() if k != "shards"}
    return kwargs


def iter_pairs(
    cfg: ExperimentConfig, split: str = "train", batch_size: int = 64, seed: int | None = None, epochs: int = 1
) -> Iterator[dict[str, np.ndarray]]:
    """Plain, single-process pairs: rows shuffled per epoch, the same pair maker as the Ray path."""
    meta, shards = feed_data(cfg, split)
    maker = pair_maker_class(cfg.data.source)(**{**maker_kwargs(cfg, meta, split), "seed": seed})
    order_rng = np.random.default_rng(cfg.train.seed if seed is None else seed)
    tables = [pq.read_table(s).append_column("path", path_column(s, pq.read_metadata(s).num_rows)) for s in shards]
    table = pa.concat_tables(tables).filter(split_filter(split))
    for _ in range(epochs):
        idx = order_rng.permutation(table.num_rows)
        for start in range(0, len(idx) - batch_size + 1, batch_size):  # drop_last, as on the Ray path
            yield maker(table.take(idx[start : start + batch_size]))


def read_split(shards: list[Path], split: str, include_paths: bool = True):
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
            filter=split_filter(split),
        )
    finally:
        ctx.use_datasource_v2 = previous


def split_shards(shards: list[Path], split: str) -> list[Path]:
    """The shards that can hold rows of `split`, from their Parquet footers' statistics of the `split` column (a
    decoded copy's shards hold one split each; a shard without statistics is kept)."""
    kept = []
    for shard in shards:
        meta = pq.read_metadata(shard)
        col = meta.schema.to_arrow_schema().get_field_index("split")
        stats = [meta.row_group(g).column(col).statistics for g in range(meta.num_row_groups)] if col >= 0 else [None]
        if any(s is None or not s.has_min_max or s.min <= split <= s.max for s in stats):
            kept.append(shard)
    return kept


STREAM_MB_PER_ACTOR = 256  # data.stream_mb=None: the training stream's budget per pair-maker actor


def pair_actors(cfg: ExperimentConfig, ray) -> int:
    """The pair-maker actors of a pipeline: data.num_actors, or half the cluster's CPUs."""
    return cfg.data.num_actors or max(1, int(ray.cluster_resources().get("CPU", 1) // 2))


def stream_budget_bytes(cfg: ExperimentConfig, ray) -> int:
    """How far the training stream's pairs may run ahead of training: its Ray Data object-store budget (data.stream_mb,
    or STREAM_MB_PER_ACTOR per pair-maker actor). At 64 px, 256 MB hold about 10,000 pairs."""
    return (cfg.data.stream_mb or STREAM_MB_PER_ACTOR * pair_actors(cfg, ray)) * 2**20


def stream_options(cfg: ExperimentConfig, ray):
    """Ray Train's ingest options for the training stream: its defaults (`DataConfig.default_ingest_options`, from
    the current DataContext, less the deprecated `exclude_resources`, which warns on every run) with the stream's
    object-store budget (`stream_budget_bytes`)."""
    now = ray.data.DataContext.get_current().execution_options
    return ray.data.ExecutionOptions(
        resource_limits=now.resource_limits.copy(object_store_memory=stream_budget_bytes(cfg, ray)),
        preserve_order=now.preserve_order,
        verbose_progress=now.verbose_progress,
    )


def build_ray_dataset(cfg: ExperimentConfig, split: str = "train", passes: int = 1, beside_training: bool = False):
    """The Ray Data pipeline of paired uint8 views for `split` (needs ray.init() first): `passes` passes over the
    split in one stream, each in its own shard order (from train.seed), so that training runs all its epochs
    through one execution: Ray Data starts its actor pool once, not once per epoch (on a GPU node that start took
    ~15 s of each ~20 s epoch). The stream's items are shard paths; the pair-maker actors read their shards
    (`pairs.ShardPairs`) and draw pairs anew in every pass. `beside_training`: a pipeline that runs while the
    training stream keeps its actors (validation): its pool grows from one actor reserving VAL_CPUS, so it can
    always start."""
    import ray

    from rayeq.data.feed.idle import with_idle_wait

    meta, shards = feed_data(cfg, split)
    shards = split_shards(shards, split)
    order = np.random.default_rng([cfg.train.seed, len(shards)])
    items = [{"path": str(shards[i])} for _ in range(passes) for i in order.permutation(len(shards))]
    d = cfg.data
    n = pair_actors(cfg, ray)
    pairs = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        ActorShardPairs,
        fn_constructor_kwargs=maker_kwargs(cfg, meta, split),
        batch_size=1,  # one shard per call; its pairs come out data.rows_per_batch rows at a time
        batch_format="pyarrow",
        # a pool of the size asked for from the start (a GPU must not wait for the pool to grow);
        # by default, and beside training, it grows from 1 as the data needs
        compute=ray.data.ActorPoolStrategy(min_size=n if d.num_actors and not beside_training else 1, max_size=n),
        num_cpus=VAL_CPUS if beside_training else d.cpus_per_actor,
    )
    # backpressured (the stream ahead of training fills its budget), Ray 2.60's scheduling loop turns without
    # pause, taking most of a core: it waits instead (data/feed/idle.py)
    return with_idle_wait(pairs)


def actor_entropy() -> int:
    """The Ray actor this runs in, as a number (0 outside an actor)."""
    import ray

    actor = ray.get_runtime_context().get_actor_id() if ray.is_initialized() else None
    return int(actor[:16], 16) if actor else 0


class ActorShardPairs(ShardPairs):
    """`pairs.ShardPairs` on a Ray Data actor: the actor's id is mixed into its seed, so that actors never repeat
    each other's pairs (the pair maker itself knows nothing of Ray)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs, entropy=actor_entropy())


IMAGE_KEYS = ("view1", "view2", "mid")  # the uint8 images of a batch (mid: xrecon's design B target)


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
        if k in IMAGE_KEYS:
            t = normalize(t, mean, std)
            if channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
        out[k] = t
    return out


class PairStream(torch.utils.data.IterableDataset):
    """Plain PyTorch's way to feed the same pairs: an IterableDataset for a `DataLoader` with worker
    processes (what a user would write without Ray; `rayeq bench throughput`'s plain side). Each loader
    worker reads its share of the shards (all of them, if there are fewer shards than workers, and then
    its share of the rows), shuffles rows per epoch and yields whole batches from the same pair maker."""

    def __init__(self, cfg: ExperimentConfig, split: str, batch_size: int, seed: int = 0, epochs: int = 1):
        meta, self.shards = feed_data(cfg, split)
        self.kwargs = maker_kwargs(cfg, meta, split)
        self.cfg, self.split, self.batch_size, self.seed, self.epochs = cfg, split, batch_size, seed, epochs

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        if info:
            torch.set_num_threads(1)  # one core per loader worker, as one Ray Data actor per core
        mine = self.shards[wid::nw] if len(self.shards) >= nw else self.shards
        table = pa.concat_tables([pq.read_table(s, filters=split_filter(self.split)) for s in mine])
        if len(self.shards) < nw:
            table = table.take(np.arange(wid, table.num_rows, nw))
        maker = pair_maker_class(self.cfg.data.source)(**{**self.kwargs, "seed": self.seed * 1000 + wid})
        order = np.random.default_rng([self.seed, wid])
        for _ in range(self.epochs):
            idx = order.permutation(table.num_rows)
            for start in range(0, len(idx) - self.batch_size + 1, self.batch_size):
                yield maker(table.take(idx[start : start + self.batch_size]))


def pair_loader(
    cfg: ExperimentConfig, split: str, batch_size: int, workers: int, seed: int = 0, epochs: int = 1, pin: bool = False
) -> torch.utils.data.DataLoader:
    """A `DataLoader` of whole pair batches from `workers` processes (0: in this process)."""
    stream = PairStream(cfg, split, batch_size, seed, epochs)
    extra = {"prefetch_factor": 4, "persistent_workers": True} if workers else {}
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin, **extra)
