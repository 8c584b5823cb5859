"""Frozen encoders and their features, cached per checkpoint so that several protocols encode once.

A 3D split gives, per object, `pairs_per_object` fixed pairs of distinct views (seeded), so that
classification, rotation and colour protocols all read one feature file: per pair the two
representations, the label and the targets. An image split gives one (clean, centre) view per image.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from rayeq.config import ExperimentConfig
from rayeq.data.schema import DataError, decode_image, open_dataset
from rayeq.data.targets import relative_color, relative_rotation_quaternion
from rayeq.methods import build_method
from rayeq.train.loop import STATE_FILE


@dataclass
class LoadedCheckpoint:
    path: Path  # the checkpoint directory
    run_dir: Path
    cfg: ExperimentConfig
    state: dict[str, Any]

    def norm_stats(self, data_dir: Path) -> tuple[list[float], list[float]]:
        """The normalisation the encoder was trained with, else the data set's own."""
        data = self.state.get("data", {})
        if data.get("mean") is not None:
            return data["mean"], data["std"]
        from rayeq.data.pipeline import norm_stats
        from rayeq.data.schema import read_meta

        return norm_stats(read_meta(data_dir))

    def encoder(self) -> torch.nn.Module:
        method = build_method(self.cfg)
        weights = {k[len("method.") :]: v for k, v in self.state["model"].items() if k.startswith("method.")}
        method.load_state_dict(weights)
        return method.eval()


def find_checkpoint(path: str | Path, which: str = "latest") -> Path:
    """A checkpoint directory, or a run directory (its latest, or best by the saved score)."""
    path = Path(path).expanduser()
    if (path / STATE_FILE).is_file():
        return path
    if not path.is_dir():
        raise DataError(f"{str(path)!r} is neither a run directory nor a checkpoint")
    ckpts = sorted(p for p in path.glob("checkpoint_*") if p.is_dir() and (p / STATE_FILE).is_file())
    if not ckpts:
        raise DataError(f"run directory {str(path)!r} has no checkpoint_*/{STATE_FILE} (has training run yet?)")
    if which == "latest":
        return ckpts[-1]
    scored = []
    for c in ckpts:
        m = torch.load(c / STATE_FILE, map_location="cpu", weights_only=False).get("metrics", {})
        scored.append((m.get("val/top1", m.get("train/top1", -1.0)), c))
    return max(scored)[1]


def load_checkpoint(path: str | Path, which: str = "latest") -> LoadedCheckpoint:
    ckpt = find_checkpoint(path, which)
    state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=False)
    cfg = ExperimentConfig.model_validate(state["config"])
    return LoadedCheckpoint(ckpt, ckpt.parent, cfg, state)


@dataclass
class Features:
    """r1, r2: (N, C) representations of the two views (images: r2 is None); label (N,);
    targets: name -> (N, d) (3D: rel_rotation, rel_rotation_canonical, rel_color, rel_color_cos_sin)."""

    r1: torch.Tensor
    r2: torch.Tensor | None
    label: torch.Tensor
    targets: dict[str, torch.Tensor]

    def save(self, path: Path) -> None:
        torch.save({"r1": self.r1, "r2": self.r2, "label": self.label, "targets": self.targets}, path)

    @classmethod
    def load(cls, path: Path) -> Features:
        d = torch.load(path, map_location="cpu", weights_only=False)
        return cls(d["r1"], d["r2"], d["label"], d["targets"])


def _pairs_for_split(shards: list[Path], split: str, pairs_per_object: int, seed: int):
    """Deterministic (object row, view i, view j) triples of a 3D split."""
    g = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    for shard in shards:
        table = pq.read_table(shard)
        table = table.filter(pa.compute.equal(table["split"], split))
        for row in table.to_pylist():
            n = len(row["images"])
            for _ in range(pairs_per_object):
                i, j = g.choice(n, 2, replace=False)
                yield row, int(i), int(j)


@torch.no_grad()
def extract_features(
    encoder,
    data_dir: str | Path,
    split: str,
    image_size: int,
    mean: list[float],
    std: list[float],
    pairs_per_object: int = 2,
    seed: int = 0,
    batch_size: int = 256,
    device: str = "cpu",
) -> Features:
    """Encode a split with a frozen encoder (a module with `encode(images) -> (B, C)`, or a callable
    `encoder(images, batch) -> (B, C)` for tests). Images are resized to `image_size` and normalised."""
    from rayeq.data.augment import resize

    data_dir = Path(data_dir)
    meta, shards = open_dataset(data_dir, split)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    encode = encoder.encode if hasattr(encoder, "encode") else encoder

    def run(images: list[np.ndarray], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = torch.stack([resize(torch.from_numpy(im).permute(2, 0, 1), image_size) for im in images])
        x = ((x.float() / 255.0 - m) / s).to(device)
        return encode(x, batch).cpu() if not hasattr(encoder, "encode") else encode(x).float().cpu()

    r1s, r2s, labels, lat1, lat2 = [], [], [], [], []
    if meta["format"] == "rayeq-objects/1":
        buf: list = []

        def flush():
            if not buf:
                return
            l1 = torch.tensor(np.array([b[3] for b in buf]), dtype=torch.float32)
            l2 = torch.tensor(np.array([b[4] for b in buf]), dtype=torch.float32)
            batch = {"latent1": l1, "latent2": l2}
            r1s.append(run([b[0] for b in buf], {"latent": l1, **batch}))
            r2s.append(run([b[1] for b in buf], {"latent": l2, **batch}))
            labels.extend(b[2] for b in buf)
            lat1.append(l1)
            lat2.append(l2)
            buf.clear()

        for row, i, j in _pairs_for_split(shards, split, pairs_per_object, seed):
            buf.append((decode_image(row["images"][i]), decode_image(row["images"][j]), row["label"],
                        row["latents"][i], row["latents"][j]))  # fmt: skip
            if len(buf) == batch_size:
                flush()
        flush()
        l1, l2 = torch.cat(lat1).numpy(), torch.cat(lat2).numpy()
        targets = {
            "rel_rotation": torch.from_numpy(relative_rotation_quaternion(l1[:, :3], l2[:, :3])),
            "rel_rotation_canonical": torch.from_numpy(relative_rotation_quaternion(l1[:, :3], l2[:, :3], True)),
            "rel_color": torch.from_numpy(relative_color(l1, l2, "sie")),
            "rel_color_cos_sin": torch.from_numpy(relative_color(l1, l2, "cos_sin")),
        }
        return Features(torch.cat(r1s), torch.cat(r2s), torch.tensor(labels), targets)

    images, labs = [], []
    for shard in shards:
        table = pq.read_table(shard, columns=["image", "label", "split"])
        for row in table.filter(pa.compute.equal(table["split"], split)).to_pylist():
            images.append(decode_image(row["image"]))
            labs.append(row["label"])
            if len(images) == batch_size:
                r1s.append(run(images, {}))
                images.clear()
    if images:
        r1s.append(run(images, {}))
    return Features(torch.cat(r1s), None, torch.tensor(labs), {})


def cache_key(ckpt: Path | None, data_dir: Path, split: str, image_size: int, pairs: int, seed: int) -> str:
    meta = (data_dir / "meta.json").read_text()
    blob = json.dumps([str(ckpt), str(data_dir.resolve()), meta, split, image_size, pairs, seed])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_features(loaded: LoadedCheckpoint, data_dir: Path, split: str, pairs: int, seed: int, log=print):
    """Features of one split for a checkpoint, from `<checkpoint>/eval_cache/` when already made."""
    cfg = loaded.cfg
    mean, std = loaded.norm_stats(data_dir)
    key = cache_key(loaded.path, data_dir, split, cfg.data.image_size, pairs, seed)
    cache = loaded.path / "eval_cache" / f"{split}-{key}.pt"
    if cache.is_file():
        log(f"  features ({split}): cached {cache}")
        return Features.load(cache)
    log(f"  features ({split}): encoding with the frozen encoder ...")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    feats = extract_features(loaded.encoder().to(device), data_dir, split, cfg.data.image_size, mean, std,
                             pairs, seed, device=device)  # fmt: skip
    cache.parent.mkdir(exist_ok=True)
    feats.save(cache)
    return feats
