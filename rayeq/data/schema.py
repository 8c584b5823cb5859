"""The on-disk format shared by every source: Parquet shards of encoded images plus meta.json.

3D sources (synth3d, 3DIEBench): one row per object with all its views.
Image sources (image folders): one row per image.
`DataSet.open` (and `open_dataset`) checks a directory before any expensive work: it exists, has meta.json and
shards, is not empty, and every shard has the expected schema; once per process while its files are unchanged.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

OBJECTS_FORMAT = "rayeq-objects/1"
IMAGES_FORMAT = "rayeq-images/1"
N_LATENTS = 7

OBJECTS_SCHEMA = pa.schema(
    [
        ("object_id", pa.string()),
        ("label", pa.int32()),
        ("class_name", pa.string()),
        ("split", pa.string()),
        ("images", pa.list_(pa.binary())),
        ("latents", pa.list_(pa.list_(pa.float32(), N_LATENTS))),
    ]
)
IMAGES_SCHEMA = pa.schema(
    [
        ("image", pa.binary()),
        ("label", pa.int32()),
        ("class_name", pa.string()),
        ("path", pa.string()),
        ("split", pa.string()),
    ]
)
SCHEMAS = {OBJECTS_FORMAT: OBJECTS_SCHEMA, IMAGES_FORMAT: IMAGES_SCHEMA}


class DataError(ValueError):
    """A data directory or record that cannot be used; the message names the culprit."""


def encode_png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes -> (H, W, 3) uint8; raises on corrupt data."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.array(im.convert("RGB"))


# image_encoding of a set whose views are stored decoded: (3, S, S) uint8 bytes, S = meta["image_size"]
RAW_ENCODING = "raw-chw-uint8"


def is_raw(meta: dict[str, Any]) -> bool:
    return meta.get("image_encoding") == RAW_ENCODING


def encode_raw(chw: np.ndarray) -> bytes:
    """A (3, S, S) uint8 view as stored in a decoded set."""
    if chw.dtype != np.uint8 or chw.ndim != 3 or chw.shape[0] != 3 or chw.shape[1] != chw.shape[2]:
        raise ValueError(f"a raw view is (3, S, S) uint8, got {chw.shape} {chw.dtype}")
    return np.ascontiguousarray(chw).tobytes()


def raw_views(flat: pa.Array, size: int) -> np.ndarray:
    """A binary array of raw views (a decoded set's flattened `images`) -> (N, 3, size, size) uint8,
    without copying; raises DataError at the first value of another length."""
    flat = flat.combine_chunks() if isinstance(flat, pa.ChunkedArray) else flat
    nbytes = 3 * size * size
    if flat.null_count:
        raise DataError(f"a decoded set holds a missing view (null) among {len(flat)} views")
    offsets = np.frombuffer(flat.buffers()[1], np.int32)[flat.offset : flat.offset + len(flat) + 1]
    lengths = np.diff(offsets)
    bad = np.flatnonzero(lengths != nbytes)
    if len(bad):
        raise DataError(
            f"view {int(bad[0])} of this batch holds {int(lengths[bad[0]])} bytes; a decoded {size} px view holds "
            f"{nbytes} (3 x {size} x {size}): the decoded set is corrupt, delete it to have it made again"
        )
    data = np.frombuffer(flat.buffers()[2], np.uint8)
    return data[offsets[0] : offsets[0] + len(flat) * nbytes].reshape(len(flat), 3, size, size)


def prepare_output_dir(out: str | Path, overwrite: bool, dry_run: bool = False) -> Path:
    """Refuse a non-empty directory unless `overwrite`; then remove only a previous data set's own
    files (meta.json, shard-*.parquet) and never anything else the user put there. `dry_run`: the checks only."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"output {str(out)!r} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DataError(
                f"output directory {str(out)!r} is not empty; pass --overwrite to replace the data set in it"
            )
        ours = [out / "meta.json", *out.glob("shard-*.parquet")]
        others = [p for p in out.iterdir() if p not in ours]
        if others:
            names = ", ".join(sorted(p.name for p in others)[:5])
            raise DataError(
                f"output directory {str(out)!r} holds files that are not a rayeq data set ({names}); "
                "refusing to overwrite: choose an empty or new directory"
            )
        if dry_run:
            return out
        for p in ours:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    if not dry_run:
        out.mkdir(parents=True, exist_ok=True)
    return out


class ShardWriter:
    """Writes rows to shard-00000.parquet, shard-00001.parquet, ... every `rows_per_shard` rows."""

    def __init__(self, out: Path, schema: pa.Schema, rows_per_shard: int):
        self.out, self.schema, self.rows_per_shard = out, schema, rows_per_shard
        self.rows: list[dict[str, Any]] = []
        self.shards: list[str] = []
        self.n_rows = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        name = f"shard-{len(self.shards):05d}.parquet"
        table = pa.Table.from_pylist(self.rows, schema=self.schema)
        pq.write_table(table, self.out / name, compression="zstd")
        self.shards.append(name)
        self.n_rows += len(self.rows)
        self.rows = []


def write_meta(out: Path, meta: dict[str, Any]) -> None:
    (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


class ImageStats:
    """Per-channel mean/std of uint8 images, accumulated in float64 in a fixed order."""

    def __init__(self):
        self.n = 0
        self.s = np.zeros(3)
        self.ss = np.zeros(3)

    def add_sums(self, n: int, s: np.ndarray, ss: np.ndarray) -> None:
        self.n += n
        self.s += s
        self.ss += ss

    @staticmethod
    def sums(img: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        x = img.reshape(-1, 3).astype(np.float64) / 255.0
        return len(x), x.sum(0), (x * x).sum(0)

    def result(self) -> tuple[list[float], list[float]]:
        mean = self.s / max(self.n, 1)
        std = np.sqrt(np.maximum(self.ss / max(self.n, 1) - mean**2, 0))
        return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"data directory {str(path)!r} does not exist")
    if not path.is_dir():
        raise DataError(f"data path {str(path)!r} is not a directory")
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise DataError(
            f"{str(path)!r} has no meta.json: not a rayeq data set (make one with `rayeq data synth3d --out DIR`, "
            "`rayeq data 3diebench --src SRC --out DIR` or `rayeq data folder --src SRC --out DIR`)"
        )
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{str(meta_file)!r} is not valid JSON: {exc}") from exc
    if meta.get("format") not in SCHEMAS:
        raise DataError(f"{str(meta_file)!r}: unknown format {meta.get('format')!r}; expected one of {list(SCHEMAS)}")
    return meta


@dataclass(frozen=True)
class DataSet:
    """A data directory opened and checked: its meta.json and its shards (every one's schema read).
    `DataSet.open` checks a directory once per process: opened again while its files are unchanged (meta.json's
    and every shard's size and time), the same handle comes back without reading the shards again."""

    path: Path
    meta: dict[str, Any]
    shards: tuple[Path, ...]

    @classmethod
    def open(cls, path: str | Path) -> DataSet:
        path = Path(path)
        meta = read_meta(path)  # the directory and its meta.json, named when missing
        shards = tuple(sorted(path.glob("shard-*.parquet")))
        state = _files_state(path, shards)
        known = _OPENED.get(path.resolve())
        if state is not None and known is not None and known[0] == state:
            return known[1]
        _check_shards(path, meta, shards)
        opened = cls(path, meta, shards)
        if state is not None:
            _OPENED[path.resolve()] = (state, opened)
        OPEN_COUNT[0] += 1
        return opened

    def require_split(self, split: str | None) -> DataSet:
        """Itself, when `split` (None: any) has rows; else the DataError that names the splits it has."""
        if split is not None and self.meta.get("splits", {}).get(split, 0) == 0:
            raise DataError(
                f"data directory {str(self.path)!r} has no rows in split {split!r} (splits: {self.meta.get('splits')})"
            )
        return self


_OPENED: dict[Path, tuple[tuple, DataSet]] = {}
OPEN_COUNT = [0]  # how many times a data directory's shards were read and checked in this process (tests count it)


def _files_state(path: Path, shards: tuple[Path, ...]) -> tuple | None:
    """meta.json's and every shard's name, size and time (None when one went away meanwhile: checked anew)."""
    try:
        stats = [(p.name, p.stat()) for p in (path / "meta.json", *shards)]
    except OSError:
        return None
    return tuple((name, st.st_size, st.st_mtime_ns) for name, st in stats)


def _check_shards(path: Path, meta: dict[str, Any], shards: tuple[Path, ...]) -> None:
    """Every shard readable and of the format's schema; the set not empty."""
    if not shards:
        raise DataError(f"data directory {str(path)!r} has meta.json but no shard-*.parquet files")
    expected = SCHEMAS[meta["format"]]
    n_rows = 0
    for shard in shards:
        try:
            schema = pq.read_schema(shard)
            n_rows += pq.ParquetFile(shard).metadata.num_rows
        except Exception as exc:
            raise DataError(f"shard {str(shard)!r} is not a readable Parquet file: {exc}") from exc
        missing = [f.name for f in expected if f.name not in schema.names]
        wrong = [
            f"{f.name}: {schema.field(f.name).type} (expected {f.type})"
            for f in expected
            if f.name in schema.names and not schema.field(f.name).type.equals(f.type)
        ]
        if missing or wrong:
            raise DataError(
                f"shard {str(shard)!r} does not match the {meta['format']} schema: "
                + "; ".join([*(f"missing column {m!r}" for m in missing), *wrong])
            )
    if n_rows == 0:
        raise DataError(f"data directory {str(path)!r} is empty (0 rows in {len(shards)} shards)")


def open_dataset(path: str | Path, split: str | None = None) -> tuple[dict[str, Any], list[Path]]:
    """Validate a data directory and return (a copy of its meta, its shard paths): `DataSet.open` (cheap: reads only
    Parquet footers, and only once per process while the files are unchanged), with `split` required to have rows."""
    ds = DataSet.open(path).require_split(split)
    return copy.deepcopy(ds.meta), list(ds.shards)


def is_objects(meta: dict[str, Any]) -> bool:
    """A 3D object set (views with latents), as opposed to an image set."""
    return meta["format"] == OBJECTS_FORMAT


def split_filter(split: str):
    """The row filter of one split, for `Table.filter`, `pq.read_table(filters=)` and Ray's `read_parquet`."""
    return pc.field("split") == split


def read_split_table(shard: Path, split: str, columns: list[str] | None = None) -> pa.Table:
    """One shard's rows of one split (all columns, or `columns` plus `split`)."""
    if columns is not None and "split" not in columns:
        columns = [*columns, "split"]
    return pq.read_table(shard, columns=columns, filters=split_filter(split))
