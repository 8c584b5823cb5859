"""Frozen encoders and their features, cached per checkpoint so that several protocols encode once.

A 3D split gives the representation of every view of every object (or of its first
`eval.views_per_object`), with the view's latents: classification reads each view as a sample, and the
rotation and colour probes draw pairs of views from these (fresh pairs every epoch on train objects,
as SIE's protocol does; fixed seeded pairs on held-out objects). An image split gives one (clean)
view per image.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from rayeq.checkpoint import LoadedCheckpoint
from rayeq.config import ConfigError, ExperimentConfig
from rayeq.data.feed.normalize import normalize
from rayeq.data.schema import DataError, decode_image, open_dataset, read_split_table
from rayeq.methods import build_method


@dataclass
class Features:
    """One row per encoded image. r: (M, C) representations; label: (M,).
    3D data adds, with rows grouped by object and in view order: obj (M,) the object's index in the
    split (0..O-1, objects sorted by id) and latent (M, 7) the view's latents."""

    r: torch.Tensor
    label: torch.Tensor
    obj: torch.Tensor | None = None
    latent: torch.Tensor | None = None

    @property
    def n_objects(self) -> int:
        return int(self.obj.max()) + 1 if self.obj is not None and len(self.obj) else 0

    def save(self, path: Path) -> None:
        torch.save({"r": self.r, "label": self.label, "obj": self.obj, "latent": self.latent}, path)

    @classmethod
    def load(cls, path: Path) -> Features:
        d = torch.load(path, map_location="cpu", weights_only=False)
        return cls(d["r"], d["label"], d["obj"], d["latent"])


class BatchEncoder:
    """Stored rows (a pyarrow table of objects or images) -> features as numpy columns. The one code
    path of local and Ray extraction. `encoder` has `encode(images) -> (B, C)` (a method, or any
    object with that call)."""

    def __init__(
        self,
        encoder,
        image_size: int,
        mean,
        std,
        views_per_object: int | None = None,
        batch_size: int = 256,
        device: str = "cpu",
        batchnorm_train_seed: int | None = None,
    ):
        self.encoder, self.size, self.views = encoder, image_size, views_per_object
        self.batch_size, self.device = batch_size, device
        self.mean, self.std = list(mean), list(std)
        self.bn_seed = batchnorm_train_seed

    @torch.no_grad()
    def _encode(self, images: list[np.ndarray]) -> np.ndarray:
        """Batches of `batch_size` in order; with `batchnorm_train_seed`, SIE's way (`net.train()` while its probe
        fits): the images shuffled (batches mix objects, as SIE's shuffled loader's do), the encoder in train mode
        (each batch normalised by its own statistics; the running statistics updated), then back in eval mode."""
        from rayeq.data.feed.augment import resize

        order = np.arange(len(images))
        if self.bn_seed is not None:
            order = np.random.default_rng(np.random.SeedSequence([self.bn_seed, 37])).permutation(len(images))
            self.encoder.train()
        out = []
        try:
            for i in range(0, len(images), self.batch_size):
                chunk = [images[j] for j in order[i : i + self.batch_size]]
                x = torch.stack([resize(torch.from_numpy(im).permute(2, 0, 1), self.size) for im in chunk])
                x = normalize(x, self.mean, self.std).to(self.device)
                if self.bn_seed is not None:  # a batch of one has no batch statistics: eval mode for it
                    self.encoder.train(len(chunk) > 1)
                out.append(self.encoder.encode(x).float().cpu())
        finally:
            if self.bn_seed is not None:
                self.encoder.eval()
        r = torch.cat(out).numpy()
        r[order] = r.copy()  # back to the rows' order
        return r

    def __call__(self, table: pa.Table) -> dict[str, np.ndarray]:
        if "images" in table.column_names:  # 3D objects -> every view (or the first views_per_object)
            images, keys, index, labels, lats = [], [], [], [], []
            for row in table.select(["object_id", "label", "images", "latents"]).to_pylist():
                n = len(row["images"]) if self.views is None else min(self.views, len(row["images"]))
                for i in range(n):
                    images.append(decode_image(row["images"][i]))
                    keys.append(row["object_id"])
                    index.append(i)
                    labels.append(row["label"])
                    lats.append(row["latents"][i])
            latent = np.array(lats, dtype=np.float32).reshape(-1, 7)
            label = np.array(labels, dtype=np.int64)
            return {
                "key": np.array(keys, dtype=object),
                "index": np.array(index, dtype=np.int64),
                "label": label,
                "r": self._encode(images),
                "latent": latent,
            }
        rows = table.select(["image", "label", "path"]).to_pylist()  # path: the image's source, unique
        images = [decode_image(r["image"]) for r in rows]
        label = np.array([r["label"] for r in rows], dtype=np.int64)
        return {
            "key": np.array([r["path"] for r in rows], dtype=object),
            "index": np.zeros(len(rows), dtype=np.int64),
            "label": label,
            "r": self._encode(images),
        }


def assemble_features(parts: list[dict[str, np.ndarray]]) -> Features:
    """Concatenate encoded batches, in (key, index) order whatever order they arrived in."""
    parts = [p for p in parts if len(p["label"])]
    if not parts:
        raise DataError("the split has no rows to encode")
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    keys = cols["key"].astype(str)
    order = np.lexsort((cols["index"], keys))
    cols = {k: v[order] for k, v in cols.items()}
    r = torch.from_numpy(np.ascontiguousarray(cols["r"]))
    label = torch.from_numpy(cols["label"])
    if "latent" not in cols:
        return Features(r, label)
    _, obj = np.unique(keys[order], return_inverse=True)  # keys are sorted: objects are contiguous runs
    return Features(r, label, torch.from_numpy(obj.astype(np.int64)), torch.from_numpy(cols["latent"]))


def extract_features(
    encoder,
    data_dir: str | Path,
    split: str,
    image_size: int,
    mean: list[float],
    std: list[float],
    views_per_object: int | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    max_rows: int | None = None,
    batchnorm_train_seed: int | None = None,
) -> Features:
    """Encode a split in this process (its first `max_rows` rows when given). Images are resized to
    `image_size` and normalised. With `batchnorm_train_seed` the encoder's BatchNorm runs in train mode on shuffled
    batches (`BatchEncoder`), each window of BN_WINDOW images shuffled together (SIE shuffles the whole split; a
    window bounds the memory): the encoder's running statistics change."""
    _, shards = open_dataset(Path(data_dir), split)
    enc = BatchEncoder(encoder, image_size, mean, std, views_per_object, batch_size, device, batchnorm_train_seed)
    rows_per_call = max(1, batch_size // (views_per_object or 8))
    window = BN_WINDOW if batchnorm_train_seed is not None else 1  # images encoded per call
    parts, pending, left = [], [], max_rows if max_rows is not None else float("inf")
    held = 0  # images in `pending`

    def flush():
        nonlocal held
        if pending:
            parts.append(enc(pa.concat_tables([pa.Table.from_batches([b]) for b in pending])))
            pending.clear()
            held = 0

    for shard in shards:
        table = read_split_table(shard, split)
        for b in table.to_batches(max_chunksize=rows_per_call):
            if left <= 0:
                break
            b = b.slice(0, int(min(left, b.num_rows)))
            left -= b.num_rows
            pending.append(b)
            held += _images_in(b, views_per_object)
            if held >= window:
                flush()
    flush()
    return assemble_features(parts)


BN_WINDOW = 8192  # eval.batchnorm=train: images shuffled together into batches (8,192 at 256 px: 1.6 GB decoded)


def _images_in(batch: pa.RecordBatch, views: int | None) -> int:
    """How many images a batch of stored rows holds (every view of a 3D row, or its first `views`)."""
    if "images" not in batch.schema.names:
        return batch.num_rows
    counts = pc.list_value_length(batch.column("images")).to_numpy(zero_copy_only=False)
    return int(np.minimum(counts, views).sum() if views is not None else counts.sum())


class _RayBatchEncoder(BatchEncoder):
    """A Ray Data actor: rebuilds the frozen encoder from the checkpoint's config and weights."""

    def __init__(self, cfg: dict, weights: dict, num_classes: int | None, threads: int, use_gpu: bool, **kwargs):
        torch.set_num_threads(max(1, threads))
        method = build_method(ExperimentConfig.model_validate(cfg), num_classes)
        method.load_state_dict(weights)
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        super().__init__(method.eval().to(device), device=device, **kwargs)


def extract_features_ray(
    loaded: LoadedCheckpoint,
    data_dir: Path,
    split: str,
    views_per_object: int | None = None,
    batch_size: int = 256,
    actors: int | None = None,
    log=print,
    max_rows: int | None = None,
) -> Features:
    """Encode a split with Ray Data: Parquet reads -> encoder actors on the cluster's GPUs (else CPUs)."""
    import ray

    from rayeq.cluster import extract_plan
    from rayeq.data.feed.pipeline import read_split

    _, shards = open_dataset(data_dir, split)
    plan = extract_plan(ray, actors)
    mean, std = loaded.norm_stats(data_dir)
    where = "1 GPU each" if plan["use_gpu"] else f"{plan['num_cpus']} CPU(s) each"
    log(f"  features ({split}): Ray Data, up to {plan['actors']} encoder actor(s), {where}")
    ds = read_split(shards, split, include_paths=False)
    if max_rows is not None:
        ds = ds.limit(max_rows)  # the first rows, as the local extractor takes them
    ds = ds.map_batches(
        _RayBatchEncoder,
        fn_constructor_kwargs={
            "cfg": loaded.cfg.to_dict(),
            "weights": loaded.method_weights(),
            "num_classes": loaded.num_classes,
            "threads": plan["threads"],
            "use_gpu": plan["use_gpu"],
            "image_size": loaded.cfg.data.image_size,
            "mean": mean,
            "std": std,
            "views_per_object": views_per_object,
            "batch_size": batch_size,
        },
        batch_size=max(1, batch_size // (views_per_object or 8)),
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=plan["actors"]),
        num_cpus=plan["num_cpus"],
        num_gpus=plan["num_gpus"],
    )
    return assemble_features(list(ds.iter_batches(batch_size=None, batch_format="numpy")))


def cache_key(
    ckpt: Path | None,
    data_dir: Path,
    split: str,
    image_size: int,
    views: int | None,
    rows: int | None = None,
    protocol: list[str] = (),
) -> str:
    """`protocol`: the eval items that change the features (`feature_items`); empty for rayeq's, so keys made
    before they existed still hit."""
    meta = (data_dir / "meta.json").read_text()
    blob = ["every-view", str(ckpt), str(data_dir.resolve()), meta, split, image_size, views]
    if rows is not None:  # keys made before train_rows existed still hit
        blob.append(rows)
    blob = json.dumps([*blob, *protocol] if protocol else blob)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def feature_items(loaded: LoadedCheckpoint) -> list[str]:
    """The protocol items (`eval.preset` and its overrides) that change the features themselves."""
    p, e = loaded.cfg.eval.protocol(), loaded.cfg.eval
    items = [f"batchnorm-train-{e.feature_seed}-window-{BN_WINDOW}"] if p["batchnorm"] == "train" else []
    return items + (["normalization-sie"] if p["normalization"] == "sie" else [])


def _cache_path(loaded: LoadedCheckpoint, data_dir: Path, split: str) -> Path:
    cfg, e = loaded.cfg, loaded.cfg.eval
    rows = e.train_rows if split == "train" else None
    key = cache_key(loaded.path, data_dir, split, cfg.data.image_size, e.views_per_object, rows, feature_items(loaded))
    return loaded.path / "eval_cache" / f"{split}-{key}.pt"


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _encode_here(loaded: LoadedCheckpoint, encoder, data_dir: Path, split: str, log, bn_seed: int | None = None):
    """Encode a split with `encoder` (on `_device()`) in this process."""
    cfg, e = loaded.cfg, loaded.cfg.eval
    device = _device()
    how = ", BatchNorm in train mode (eval.batchnorm=train)" if bn_seed is not None else ""
    log(f"  features ({split}): encoding in this process ({device}{how}) ...")
    mean, std = loaded.norm_stats(data_dir)
    rows = e.train_rows if split == "train" else None
    return extract_features(
        encoder,
        data_dir,
        split,
        cfg.data.image_size,
        mean,
        std,
        e.views_per_object,
        e.extract_batch_size,
        device,
        rows,
        bn_seed,
    )


def _made(feats: Features, split: str, t0: float, cache: Path, log) -> Features:
    n = len(feats.label)
    dt = time.perf_counter() - t0
    log(f"  features ({split}): {n} images in {dt:.1f} s ({n / max(dt, 1e-9):.0f} images/s)")
    cache.parent.mkdir(exist_ok=True)
    feats.save(cache)
    return feats


def cached_features(loaded: LoadedCheckpoint, data_dir: Path, split: str, use_ray: bool = False, log=print):
    """Features of one split for a checkpoint, from `<checkpoint>/eval_cache/` when already made;
    else encoded in this process (its GPU if any) or, with `use_ray`, by Ray Data actors."""
    e = loaded.cfg.eval
    cache = _cache_path(loaded, data_dir, split)
    if cache.is_file():
        log(f"  features ({split}): cached {cache}")
        return Features.load(cache)
    t0 = time.perf_counter()
    if use_ray:
        rows = e.train_rows if split == "train" else None
        feats = extract_features_ray(
            loaded, data_dir, split, e.views_per_object, e.extract_batch_size, e.extract_actors, log, rows
        )
    else:
        feats = _encode_here(loaded, loaded.encoder().to(_device()), data_dir, split, log)
    return _made(feats, split, t0, cache, log)


def split_features(loaded: LoadedCheckpoint, data_dir: Path, use_ray: bool = False, log=print):
    """(train, val) features. Under `eval.batchnorm=train` (SIE's scripts: `net.train()` while the probe fits,
    `net.eval()` to score it) the train split is encoded with BatchNorm on each shuffled batch's statistics, which
    also moves the running statistics, and the val split then in eval mode with those moved statistics: one encoder
    for both, in this process. SIE encodes afresh every probe epoch; here each train view is encoded once, in one
    seeded batch (`eval.feature_seed`)."""
    if loaded.cfg.eval.protocol()["batchnorm"] == "eval":
        return tuple(cached_features(loaded, data_dir, split, use_ray, log) for split in ("train", "val"))
    if use_ray:
        raise ConfigError(
            "eval.batchnorm=train (eval.preset=sie) encodes both splits with one encoder in this process: set "
            "eval.extractor=local (or eval.batchnorm=eval)"
        )
    caches = {split: _cache_path(loaded, data_dir, split) for split in ("train", "val")}
    if all(c.is_file() for c in caches.values()):
        for split, c in caches.items():
            log(f"  features ({split}): cached {c}")
        return Features.load(caches["train"]), Features.load(caches["val"])
    encoder = loaded.encoder().to(_device())
    t0 = time.perf_counter()
    tr = _encode_here(loaded, encoder, data_dir, "train", log, bn_seed=loaded.cfg.eval.feature_seed)
    tr = _made(tr, "train", t0, caches["train"], log)
    t0 = time.perf_counter()
    va = _made(_encode_here(loaded, encoder, data_dir, "val", log), "val", t0, caches["val"], log)
    return tr, va
