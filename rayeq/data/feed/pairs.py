"""Paired views with their transformation targets, from a batch of stored rows.

`ObjectPairs` (3D sources): two distinct random views of each object, their relative rotation and
colour change. `ImagePairs` (image folders): two augmented views of each image with every
augmentation parameter. Both are plain callables on a pyarrow batch, so the same code runs inside
Ray Data's `map_batches` (one instance per actor) and in a plain loop without Ray.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from rayeq.config import ExperimentConfig
from rayeq.data.feed.augment import (
    PARAM_NAMES,
    apply_params,
    interpolate_params,
    relative_targets,
    resize,
    sample_params,
)
from rayeq.data.feed.targets import relative_color, relative_rotation_quaternion, target_widths
from rayeq.data.schema import N_LATENTS, RAW_ENCODING, DataError, decode_image, raw_views, read_split_table

log = logging.getLogger(__name__)


def _to_chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


class _Pairs:
    def __init__(
        self,
        cfg: ExperimentConfig | dict,
        split: str | None = "train",
        seed: int | None = None,
        encoding: str | None = None,
        stored_size: int | None = None,
        scene_meta: dict[str, Any] | None = None,
        entropy: int = 0,
    ):
        self.cfg = cfg if isinstance(cfg, ExperimentConfig) else ExperimentConfig.model_validate(cfg)
        self.scene_meta = scene_meta  # a 3D set's meta.json: what re-renders its objects (design B's target)
        self.split = split
        self.size = self.cfg.data.image_size
        # how the views are stored: RAW_ENCODING (a decoded set, views of stored_size px) or image bytes
        self.raw, self.stored_size = encoding == RAW_ENCODING, stored_size
        if self.raw and not stored_size:
            raise DataError(f"a {RAW_ENCODING} set must name its image_size in meta.json")
        base = self.cfg.train.seed if seed is None else seed
        # `entropy`: on a Ray Data actor its unique id (data/feed/pipeline.py: ActorShardPairs), so actors never
        # repeat each other's stream; outside Ray 0, and the stream is fixed by the seed alone.
        # Separate streams for choosing views and for augmenting them, so that switching an
        # augmentation on or off keeps the same pairs.
        pair_seq, aug_seq = np.random.SeedSequence([base, entropy]).spawn(2)
        self.rng, self.aug_rng = np.random.default_rng(pair_seq), np.random.default_rng(aug_seq)
        self.skipped = 0

    def _table(self, batch) -> pa.Table:
        table = batch if isinstance(batch, pa.Table) else pa.table(batch)
        if self.split is not None and "split" in table.column_names:
            table = table.filter(pc.equal(table.column("split"), self.split))
        return table

    def _rows(self, batch) -> list[dict[str, Any]]:
        return self._table(batch).to_pylist()

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
    """3D rows (object_id, label, images, latents) -> pairs of distinct views with targets.

    Per batch, not per row: the two views of every row are drawn at once, their latents and the
    targets computed on whole arrays; only image decoding (encoded sets) is per view. From a decoded
    set (`schema.RAW_ENCODING`) the views are a gather from the batch's raw buffer. Design B (`between`, or
    xrecon with `method.intermediate`) adds `mid`: the object rendered a fraction `mid_t` of the way from view 1's
    scene to view 2's (`between3d`; synth3d sets only).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.between = None
        if self.cfg.method.between_ts:
            from rayeq.data.feed.between3d import SceneRenderer

            if self.scene_meta is None:
                raise DataError("design B on a 3D set renders the image between two views: it needs the set's meta")
            self.between = SceneRenderer(self.scene_meta)

    def __call__(self, batch) -> dict[str, np.ndarray]:
        table = self._table(batch)
        if table.num_rows == 0:
            return self._finish(None, None, None, None, None)
        images = _list_array(table.column("images"))
        offsets = images.offsets.to_numpy()
        offsets = offsets - offsets[0]
        n = np.diff(offsets)
        if (n < 2).any():
            k = int(np.flatnonzero(n < 2)[0])
            raise DataError(
                f"object {table.column('object_id')[k].as_py()!r} has {int(n[k])} view(s); pairs need at least 2"
            )
        # two distinct views per row, uniformly: i, then j among the other n - 1
        i = (self.rng.random(len(n)) * n).astype(np.int64)
        j = (i + 1 + (self.rng.random(len(n)) * (n - 1)).astype(np.int64)) % n
        flat = pc.list_flatten(images)
        if self.raw:
            views = raw_views(flat, self.stored_size)
            v1, v2 = views[offsets[:-1] + i], views[offsets[:-1] + j]
            keep = np.arange(len(n))
        else:
            v1, v2, keep, i, j = self._decode_pairs(table, flat, offsets, i, j)
        if len(keep) == 0:
            return self._finish(None, None, None, None, None)
        v1, v2 = self._resize(v1), self._resize(v2)
        if self.cfg.augment.photometric_3d:  # off by default, as in SIE
            v1, v2 = self._photometric(v1), self._photometric(v2)
        latents = pc.list_flatten(_list_array(table.column("latents")))
        lat = np.asarray(latents.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(-1, N_LATENTS)
        rows = offsets[:-1][keep]
        labels = table.column("label").to_numpy().astype(np.int64)[keep]
        between = self._between(table, lat, offsets, keep, lat[rows + i], lat[rows + j]) if self.between else None
        return self._finish(v1, v2, lat[rows + i], lat[rows + j], labels, np.stack([i, j], 1), between)

    def _between(self, table, lat, offsets, keep, l1, l2) -> dict[str, np.ndarray]:
        """Design B's target: each kept row's object rendered at the scene a fraction t of the way from view 1's to
        view 2's, t drawn per pair from the method's fractions."""
        from rayeq.data.feed.between3d import between_latents

        ts = np.asarray(self.cfg.method.between_ts, np.float32)
        t = ts[self.aug_rng.integers(len(ts), size=len(keep))]
        ids = table.column("object_id").to_pylist()
        scenes = [self.between.scene(ids[r], lat[offsets[r] : offsets[r + 1]]) for r in keep]
        mid = self.between.render(scenes, between_latents(l1, l2, t))  # (B, s, s, 3) at the set's size
        return {"mid": self._resize(np.ascontiguousarray(mid.transpose(0, 3, 1, 2))), "mid_t": t.reshape(-1, 1)}

    def _decode_pairs(self, table: pa.Table, flat: pa.Array, offsets: np.ndarray, i: np.ndarray, j: np.ndarray):
        """Encoded views: decode only the two drawn per row; with data.skip_corrupt a row whose drawn
        view is unreadable draws again among its other views (and is dropped below two)."""
        chosen = flat.take(pa.array(np.stack([offsets[:-1] + i, offsets[:-1] + j], 1).reshape(-1))).to_pylist()
        idents = self._idents(table)
        v1, v2, keep, ii, jj = [], [], [], [], []
        for r, row in enumerate(idents):
            a = self._decode(chosen[2 * r], row, f"view {i[r]}")
            b = self._decode(chosen[2 * r + 1], row, f"view {j[r]}") if a is not None else None
            if a is not None and b is not None:
                pair = (int(i[r]), int(j[r]), a, b)
            else:
                pair = self._redraw(table, row, r, a, i, j)
            if pair is None:
                continue  # fewer than two readable views (only reachable with skip_corrupt)
            ii.append(pair[0])
            jj.append(pair[1])
            v1.append(_to_chw(pair[2]))
            v2.append(_to_chw(pair[3]))
            keep.append(r)
        if not keep:
            return None, None, [], None, None
        return v1, v2, np.asarray(keep), np.asarray(ii, np.int64), np.asarray(jj, np.int64)

    def _redraw(self, table: pa.Table, ident: dict[str, Any], r: int, a, i: np.ndarray, j: np.ndarray):
        """The old per-row draw, among the views of row r that are not known to be unreadable."""
        row = {**ident, "images": table.column("images")[r].as_py()}
        candidates = [v for v in range(len(row["images"])) if v != (i[r] if a is None else j[r])]
        while len(candidates) >= 2:
            x, y = (int(v) for v in self.rng.choice(candidates, 2, replace=False))
            va = self._decode(row["images"][x], row, f"view {x}")
            vb = self._decode(row["images"][y], row, f"view {y}") if va is not None else None
            if va is not None and vb is not None:
                return x, y, va, vb
            candidates.remove(x if va is None else y)
        return None

    @staticmethod
    def _idents(table: pa.Table) -> list[dict[str, Any]]:
        """Each row's object id (and shard path, when the batch has one), for error messages."""
        return table.select([k for k in ("object_id", "path") if k in table.column_names]).to_pylist()

    def _resize(self, views) -> np.ndarray:
        """Views (a (B, 3, h, w) array, or a list of (3, h, w) tensors of any size) -> (B, 3, S, S) uint8."""
        s = self.size
        if isinstance(views, np.ndarray):
            if views.shape[-1] == s and views.shape[-2] == s:
                return np.ascontiguousarray(views)
            return resize(torch.from_numpy(np.ascontiguousarray(views)), s).numpy()
        if all(v.shape[-2:] == views[0].shape[-2:] for v in views):  # one size: one batched resize
            return resize(torch.stack(views), s).numpy()
        return np.stack([resize(v, s).numpy() for v in views])

    def _photometric(self, views: np.ndarray) -> np.ndarray:
        hw = (self.size, self.size)
        out = np.empty_like(views)
        for k, v in enumerate(views):
            p = sample_params(self.aug_rng, self.cfg.augment, hw, self.size, photometric_only=True)
            out[k] = apply_params(torch.from_numpy(v), p, self.size).numpy()
        return out

    def _finish(self, v1, v2, l1, l2, labels, view_index=None, between=None) -> dict[str, np.ndarray]:
        if v1 is None:
            s = self.size
            widths = target_widths(self.cfg.data.color_target, three_d=True)
            empty = {"mid": np.zeros((0, 3, s, s), np.uint8), "mid_t": np.zeros((0, 1), np.float32)}
            return {
                **(empty if self.between else {}),
                "view1": np.zeros((0, 3, s, s), np.uint8),
                "view2": np.zeros((0, 3, s, s), np.uint8),
                "rel_rotation": np.zeros((0, widths["rel_rotation"]), np.float32),
                "rel_color": np.zeros((0, widths["rel_color"]), np.float32),
                "latent1": np.zeros((0, N_LATENTS), np.float32),
                "latent2": np.zeros((0, N_LATENTS), np.float32),
                "label": np.zeros((0,), np.int64),
                "view_index": np.zeros((0, 2), np.int64),
            }
        return {
            "view1": v1,  # (B, 3, S, S) uint8
            "view2": v2,
            "rel_rotation": relative_rotation_quaternion(
                l1[:, :3], l2[:, :3], canonical=self.cfg.data.rotation_target == "canonical"
            ),  # (B, 4)
            "rel_color": relative_color(l1, l2, self.cfg.data.color_target),  # (B, 2) or (B, 4)
            "latent1": l1,
            "latent2": l2,
            "label": labels,
            "view_index": view_index,
            **(between or {}),
        }


class ImagePairs(_Pairs):
    """Image rows (image, label, ...) -> two augmented views with their parameters."""

    def __call__(self, batch) -> dict[str, np.ndarray]:
        aug, s = self.cfg.augment, self.size
        ts = self.cfg.method.between_ts  # design B's targets (xrecon + method.intermediate, or between)
        v1s, v2s, p1s, p2s, labels, mids, mid_ts = [], [], [], [], [], [], []
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
            if ts:
                t = float(ts[int(self.aug_rng.integers(len(ts)))])
                mids.append(apply_params(src, interpolate_params(p1, p2, t), s).numpy())
                mid_ts.append(t)
        k = len(PARAM_NAMES)
        aug1 = np.stack(p1s) if p1s else np.zeros((0, k), np.float32)  # (B, len(PARAM_NAMES))
        aug2 = np.stack(p2s) if p2s else np.zeros((0, k), np.float32)
        return {
            "view1": np.stack(v1s) if v1s else np.zeros((0, 3, s, s), np.uint8),
            "view2": np.stack(v2s) if v2s else np.zeros((0, 3, s, s), np.uint8),
            "aug1": aug1,
            "aug2": aug2,
            **relative_targets(aug1, aug2, s),  # aug_rotation (B, 1), aug_color (B, 4), aug_blur, aug_translation
            "label": np.asarray(labels, np.int64),
            **(
                {
                    "mid": np.stack(mids) if mids else np.zeros((0, 3, s, s), np.uint8),  # design B's target image
                    "mid_t": np.asarray(mid_ts, np.float32).reshape(-1, 1),  # (B, 1): how far from view 1
                }
                if ts
                else {}
            ),
        }


def path_column(shard: str | Path, n: int) -> pa.Array:
    """A `path` column naming the shard of `n` rows, so that errors name the file."""
    return pa.array([str(shard)] * n, pa.string())


class ShardPairs:
    """The pair maker fed with shard paths, for Ray Data's actors: each shard named in a batch of work items (a
    `path` column) is read (its rows of the split), its rows shuffled, and its pairs yielded `data.rows_per_batch`
    rows at a time. The actor reads its own shards, so the stream holds no read tasks: no stored rows (every view
    of every object) in the object store, no read processes started and stopped as the budget frees; the data
    work is the actors' alone, smooth and bounded by the stream's budget."""

    def __init__(self, cfg: ExperimentConfig | dict, split: str | None = "train", seed: int | None = None,
                 encoding: str | None = None, stored_size: int | None = None,
                 scene_meta: dict[str, Any] | None = None, entropy: int = 0):  # fmt: skip
        cfg = cfg if isinstance(cfg, ExperimentConfig) else ExperimentConfig.model_validate(cfg)
        self.maker = pair_maker_class(cfg.data.source)(cfg, split, seed, encoding, stored_size, scene_meta, entropy)
        self.split, self.rows = split, cfg.data.rows_per_batch

    def __call__(self, items) -> Iterator[dict[str, np.ndarray]]:
        table = items if isinstance(items, pa.Table) else pa.table(items)
        for path in table.column("path").to_pylist():
            yield from self.shard(path)

    def shard(self, path: str) -> Iterator[dict[str, np.ndarray]]:
        table = read_split_table(Path(path), self.split) if self.split else pq.read_table(path)
        table = table.append_column("path", path_column(path, table.num_rows))
        order = self.maker.rng.permutation(table.num_rows)
        for start in range(0, table.num_rows, self.rows):
            yield self.maker(table.take(order[start : start + self.rows]))


def _list_array(col) -> pa.ListArray:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def pair_maker_class(source: str) -> type[_Pairs]:
    return ObjectPairs if source in ("synth3d", "3diebench") else ImagePairs
