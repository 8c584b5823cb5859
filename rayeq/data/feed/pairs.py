"""Paired views with their transformation targets, from a batch of stored rows.

`ObjectPairs` (3D sources): two distinct random views of each object, their relative rotation and
colour change. `ImagePairs` (image folders): two augmented views of each image with every
augmentation parameter. Both are plain callables on a pyarrow batch, so the same code runs inside
Ray Data's `map_batches` (one instance per actor) and in a plain loop without Ray.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from rayeq.config import ExperimentConfig
from rayeq.data.feed.augment import PARAM_NAMES, apply_params, resize, sample_params
from rayeq.data.feed.targets import relative_color, relative_rotation_quaternion, target_widths
from rayeq.data.schema import DataError, decode_image

log = logging.getLogger(__name__)


def _to_chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


class _Pairs:
    def __init__(self, cfg: ExperimentConfig | dict, split: str | None = "train", seed: int | None = None):
        self.cfg = cfg if isinstance(cfg, ExperimentConfig) else ExperimentConfig.model_validate(cfg)
        self.split = split
        self.size = self.cfg.data.image_size
        base = self.cfg.train.seed if seed is None else seed
        # Under Ray each actor mixes its unique id into the seed, so actors never repeat each
        # other's stream; outside Ray the stream is fixed by the seed alone.
        # Separate streams for choosing views and for augmenting them, so that switching an
        # augmentation on or off keeps the same pairs.
        pair_seq, aug_seq = np.random.SeedSequence([base, _actor_entropy()]).spawn(2)
        self.rng, self.aug_rng = np.random.default_rng(pair_seq), np.random.default_rng(aug_seq)
        self.skipped = 0

    def _rows(self, batch) -> list[dict[str, Any]]:
        table = batch if isinstance(batch, pa.Table) else pa.table(batch)
        rows = table.to_pylist()
        if self.split is not None:
            rows = [r for r in rows if r.get("split", self.split) == self.split]
        return rows

    def _decode(self, data: bytes, row: dict[str, Any], what: str) -> np.ndarray | None:
        try:
            return decode_image(data)
        except Exception as exc:
            where = f"shard {row['path']!r}, " if row.get("path") else ""
            ident = row.get("object_id") or row.get("image_path") or "?"
            if self.cfg.data.skip_corrupt:
                self.skipped += 1
                log.warning("skipping corrupt image (%s%s %s): %s [%d skipped]", where, ident, what, exc, self.skipped)
                return None
            raise DataError(
                f"corrupt image in {where}row {ident!r}, {what}: {exc} "
                "(set data.skip_corrupt=true to skip and count such images)"
            ) from exc


class ObjectPairs(_Pairs):
    """3D rows (object_id, label, images, latents) -> pairs of distinct views with targets."""

    def __call__(self, batch) -> dict[str, np.ndarray]:
        aug = self.cfg.augment
        out: dict[str, list] = {k: [] for k in ("view1", "view2", "latent1", "latent2", "label", "view_index")}
        for row in self._rows(batch):
            n = len(row["images"])
            if n < 2:
                raise DataError(f"object {row['object_id']!r} has {n} view(s); pairs need at least 2")
            views, candidates = None, list(range(n))
            while len(candidates) >= 2:  # with skip_corrupt, a bad view is dropped and another drawn
                i, j = (int(x) for x in self.rng.choice(candidates, 2, replace=False))
                a = self._decode(row["images"][i], row, f"view {i}")
                b = self._decode(row["images"][j], row, f"view {j}") if a is not None else None
                if a is not None and b is not None:
                    views = (i, j, a, b)
                    break
                candidates.remove(i if a is None else j)
            if views is None:
                continue  # fewer than two readable views (only reachable with skip_corrupt)
            i, j, a, b = views
            v1, v2 = resize(_to_chw(a), self.size), resize(_to_chw(b), self.size)
            if aug.photometric_3d:  # off by default, as in SIE
                hw = (self.size, self.size)
                p1 = sample_params(self.aug_rng, aug, hw, self.size, photometric_only=True)
                p2 = sample_params(self.aug_rng, aug, hw, self.size, photometric_only=True)
                v1, v2 = apply_params(v1, p1, self.size), apply_params(v2, p2, self.size)
            out["view1"].append(v1.numpy())
            out["view2"].append(v2.numpy())
            out["latent1"].append(np.asarray(row["latents"][i], np.float32))
            out["latent2"].append(np.asarray(row["latents"][j], np.float32))
            out["label"].append(row["label"])
            out["view_index"].append((i, j))
        return self._finish(out)

    def _finish(self, out) -> dict[str, np.ndarray]:
        s = self.size
        if not out["label"]:
            empty = {"view1": np.zeros((0, 3, s, s), np.uint8), "view2": np.zeros((0, 3, s, s), np.uint8)}
            widths = target_widths(self.cfg.data.color_target, three_d=True)
            return {
                **empty,
                "rel_rotation": np.zeros((0, widths["rel_rotation"]), np.float32),
                "rel_color": np.zeros((0, widths["rel_color"]), np.float32),
                "latent1": np.zeros((0, 7), np.float32),
                "latent2": np.zeros((0, 7), np.float32),
                "label": np.zeros((0,), np.int64),
                "view_index": np.zeros((0, 2), np.int64),
            }
        l1, l2 = np.stack(out["latent1"]), np.stack(out["latent2"])
        return {
            "view1": np.stack(out["view1"]),  # (B, 3, S, S) uint8
            "view2": np.stack(out["view2"]),
            "rel_rotation": relative_rotation_quaternion(
                l1[:, :3], l2[:, :3], canonical=self.cfg.data.rotation_target == "canonical"
            ),  # (B, 4)
            "rel_color": relative_color(l1, l2, self.cfg.data.color_target),  # (B, 2) or (B, 4)
            "latent1": l1,
            "latent2": l2,
            "label": np.asarray(out["label"], np.int64),
            "view_index": np.asarray(out["view_index"], np.int64),
        }


class ImagePairs(_Pairs):
    """Image rows (image, label, ...) -> two augmented views with their parameters."""

    def __call__(self, batch) -> dict[str, np.ndarray]:
        aug, s = self.cfg.augment, self.size
        v1s, v2s, p1s, p2s, labels = [], [], [], [], []
        for row in self._rows(batch):
            img = self._decode(row["image"], {**row, "image_path": row.get("path")}, "image")
            if img is None:
                continue
            src = _to_chw(img)
            p1 = sample_params(self.aug_rng, aug, img.shape[:2], s)
            p2 = sample_params(self.aug_rng, aug, img.shape[:2], s)
            v1s.append(apply_params(src, p1, s).numpy())
            v2s.append(apply_params(src, p2, s).numpy())
            p1s.append(p1)
            p2s.append(p2)
            labels.append(row["label"])
        k = len(PARAM_NAMES)
        return {
            "view1": np.stack(v1s) if v1s else np.zeros((0, 3, s, s), np.uint8),
            "view2": np.stack(v2s) if v2s else np.zeros((0, 3, s, s), np.uint8),
            "aug1": np.stack(p1s) if p1s else np.zeros((0, k), np.float32),  # (B, len(PARAM_NAMES))
            "aug2": np.stack(p2s) if p2s else np.zeros((0, k), np.float32),
            "label": np.asarray(labels, np.int64),
        }


def pair_maker_class(source: str) -> type[_Pairs]:
    return ObjectPairs if source in ("synth3d", "3diebench") else ImagePairs


def _actor_entropy() -> int:
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            actor = ctx.get_actor_id()
            if actor:
                return int(actor[:16], 16)
    except Exception:  # not in Ray, or no runtime context
        pass
    return 0
