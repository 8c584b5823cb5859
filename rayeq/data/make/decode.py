"""A 3D set's views decoded once at the training size: the decode-cheap copy training is fed from.

A pair from PNG/JPEG views costs two image decodes (and a resize when the stored size differs);
from a decoded copy it is a slice of a (N, 3, S, S) uint8 buffer (`schema.raw_views`). The copy has
the source's schema and rows, `image_encoding` = `schema.RAW_ENCODING`, `image_size` = S, its
shards lz4-compressed (about 2 KB per 64 px synth3d view against 1.4 KB as PNG; zstd is smaller but
decompresses at PNG-decode speed). It lives in the cache directory under a name that holds the
source's path, its meta.json and S, so a changed source or size gets a new copy and nothing is
overwritten. `data.decoded` (config) says when training uses it.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayeq.data.make.progress import Progress
from rayeq.data.schema import (
    RAW_ENCODING,
    DataError,
    decode_image,
    encode_raw,
    is_objects,
    is_raw,
    open_dataset,
    read_meta,
)

COMPRESSION = "lz4"
ROWS_PER_SHARD = 1024


def decoded_dir(src: Path, size: int) -> Path:
    """Where the decoded copy of the set at `src` at `size` px lives (in the cache directory)."""
    from rayeq.data.builtin import cache_dir

    src = Path(src).expanduser().resolve()
    blob = str(src) + "\n" + (src / "meta.json").read_text()
    digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
    return cache_dir() / "decoded" / f"{src.name}-{digest}-{size}px"


def _decode_shard(args: tuple[str, int]) -> pa.Table:
    """One shard's rows with every view decoded, resized to `size` and stored raw."""
    import numpy as np
    import torch

    from rayeq.data.feed.augment import resize

    torch.set_num_threads(1)
    src, size = args
    table = pq.read_table(src)
    images = []
    for obj, views in zip(table.column("object_id").to_pylist(), table.column("images").to_pylist(), strict=True):
        row = []
        for v, data in enumerate(views):
            try:
                img = decode_image(data)
            except Exception as exc:
                raise DataError(
                    f"corrupt image in shard {src!r}, row {obj!r}, view {v}: {exc}; a decoded copy needs every view "
                    "readable (set data.decoded=false to train from the encoded set with data.skip_corrupt=true)"
                ) from exc
            chw = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
            row.append(encode_raw(resize(chw, size).numpy()))
        images.append(row)
    i = table.schema.get_field_index("images")
    return table.set_column(i, table.schema.field(i), pa.array(images, table.schema.field(i).type))


class _SplitShards:
    """Decoded rows, written per split in shards of ROWS_PER_SHARD (few, large files: a shard's open costs
    about 1 ms, as much as making 40 pairs; one split per shard: training never reads held-out rows)."""

    def __init__(self, out: Path):
        self.out, self.pending, self.names = out, {}, []

    def add(self, table: pa.Table) -> None:
        for split in table.column("split").unique().to_pylist():
            part = table.filter(pc.equal(table.column("split"), split))
            self.pending.setdefault(split, []).append(part)
            if sum(t.num_rows for t in self.pending[split]) >= ROWS_PER_SHARD:
                self.flush(split)

    def flush(self, split: str) -> None:
        tables = self.pending.pop(split, [])
        if tables:
            name = f"shard-{len(self.names):05d}.parquet"
            pq.write_table(pa.concat_tables(tables), self.out / name, compression=COMPRESSION)
            self.names.append(name)

    def close(self) -> list[str]:
        for split in list(self.pending):
            self.flush(split)
        return self.names


def decode_set(src: Path, out: Path, size: int, processes: int | None = None, log=print) -> Path:
    """Write the decoded copy of the 3D set at `src` to `out` (made in a temporary sibling directory
    and renamed when complete, so a half-made copy is never used). Rows keep their order within a split."""
    meta, shards = open_dataset(src)
    if not is_objects(meta):
        raise DataError(f"{str(src)!r} is an image set; only 3D object sets have fixed views to decode")
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    processes = max(1, min(processes or os.cpu_count() or 1, len(shards)))
    log(f"decoding the views of {src} ({meta['splits']} objects) at {size} px into {out} (once, {processes} processes)")
    progress = Progress(len(shards), "shards", log=log)
    jobs = [(str(s), size) for s in shards]
    writer = _SplitShards(tmp)
    if processes == 1:
        for job in jobs:
            writer.add(_decode_shard(job))
            progress.update()
    else:
        with mp.get_context("spawn").Pool(processes) as pool:
            for table in pool.imap(_decode_shard, jobs):
                writer.add(table)
                progress.update()
    made = {**_decoded_meta(meta, src, size), "shards": writer.close()}
    (tmp / "meta.json").write_text(json.dumps(made, indent=2, sort_keys=True) + "\n")
    if out.exists():  # another process finished the same copy meanwhile: keep theirs
        shutil.rmtree(tmp)
    else:
        tmp.rename(out)
    return out


def _decoded_meta(meta: dict[str, Any], src: Path, size: int) -> dict[str, Any]:
    return {
        **meta,
        "image_encoding": RAW_ENCODING,
        "image_size": size,
        "decoded_from": {"path": str(src), "encoding": meta.get("image_encoding"), "size": meta.get("image_size")},
    }


def ensure_decoded(src: Path, size: int, log=print) -> Path:
    """The decoded copy of `src` at `size` px, made once (a set that is already raw at that size is
    its own copy)."""
    src = Path(src).expanduser()
    meta = read_meta(src)  # its shards are checked where it is opened (check_data, decode_set)
    if is_raw(meta) and meta["image_size"] == size:
        return src
    out = decoded_dir(src, size)
    try:
        made, _ = open_dataset(out)
        if is_raw(made) and made["image_size"] == size:
            return out
    except DataError:
        pass
    if out.exists():  # an unreadable copy (e.g. a disk that filled up): ours to replace, it is derived data
        log(f"the decoded copy at {out} is unreadable; making it again")
        shutil.rmtree(out)
    return decode_set(src, out, size, log=log)
