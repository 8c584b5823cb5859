"""The decoded copy of a 3D set: made once per source and size, never over the source, refused when corrupt,
and used for training when `data.decoded` (or its size rule) says so."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayeq.config import ConfigError, load_config
from rayeq.data.feed.pipeline import feed_data, uses_decoded
from rayeq.data.make.decode import decoded_dir, ensure_decoded
from rayeq.data.schema import RAW_ENCODING, DataError, raw_views


def _quiet(*a):
    pass


def test_made_once_per_source_and_size_and_reused(tiny_synth3d, tmp_path):
    # a copy of the session's set, so that no other test has made its decoded copy already
    tiny_synth3d = Path(shutil.copytree(tiny_synth3d, tmp_path / "set"))
    logs = []
    a = ensure_decoded(tiny_synth3d, 16, log=logs.append)
    assert a == decoded_dir(tiny_synth3d, 16) and a.parent != tiny_synth3d.parent and any("decoding" in m for m in logs)
    stamp = (a / "meta.json").stat().st_mtime_ns
    logs.clear()
    assert ensure_decoded(tiny_synth3d, 16, log=logs.append) == a and not logs  # reused, not made again
    assert (a / "meta.json").stat().st_mtime_ns == stamp
    b = ensure_decoded(tiny_synth3d, 24, log=_quiet)
    assert b != a and json.loads((b / "meta.json").read_text())["image_size"] == 24
    assert ensure_decoded(a, 16, log=_quiet) == a  # a raw set at the asked size is its own copy
    src = json.loads((tiny_synth3d / "meta.json").read_text())
    made = json.loads((a / "meta.json").read_text())
    assert made["splits"] == src["splits"] and made["mean"] == src["mean"] and made["image_encoding"] == RAW_ENCODING
    assert made["decoded_from"]["encoding"] == "png" and src["image_encoding"] == "png"  # source untouched


def test_a_changed_source_gets_a_new_copy(tiny_synth3d, tmp_path):
    src = tmp_path / "set"
    shutil.copytree(tiny_synth3d, src)
    first = decoded_dir(src, 16)
    meta = json.loads((src / "meta.json").read_text())
    (src / "meta.json").write_text(json.dumps({**meta, "note": "re-made"}))
    assert decoded_dir(src, 16) != first


def test_a_corrupt_view_is_named_before_training(tiny_synth3d, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_synth3d, bad)
    shard = sorted(bad.glob("shard-*.parquet"))[-1]
    rows = pq.read_table(shard).to_pylist()
    rows[0]["images"][2] = b"not an image"
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(shard)), shard)
    with pytest.raises(DataError) as exc:
        feed_data(load_config(None, [f"data.path={bad}", "data.image_size=16", "data.decoded=true"]), log=_quiet)
    msg = str(exc.value)
    assert shard.name in msg and rows[0]["object_id"] in msg and "view 2" in msg and "data.decoded=false" in msg
    # the size rule leaves a set alone when the user asked to skip unreadable views
    assert (
        feed_data(load_config(None, [f"data.path={bad}", "data.skip_corrupt=true"]), log=_quiet)[0]["image_encoding"]
        == "png"
    )


def test_raw_views_refuse_a_view_of_another_length():
    good = pa.array([bytes(3 * 4 * 4)] * 3, pa.binary())
    assert raw_views(good, 4).shape == (3, 3, 4, 4)
    sliced = pa.array([bytes([k]) * 48 for k in range(5)], pa.binary()).slice(2, 2)
    np.testing.assert_array_equal(raw_views(sliced, 4)[:, 0, 0, 0], [2, 3])  # an array's offset is honoured
    with pytest.raises(DataError, match="view 1 of this batch holds 47 bytes"):
        raw_views(pa.array([bytes(48), bytes(47)], pa.binary()), 4)


def test_when_training_uses_the_decoded_copy(tiny_synth3d):
    meta = json.loads((tiny_synth3d / "meta.json").read_text())
    cfg = load_config(None, [f"data.path={tiny_synth3d}", "data.image_size=32"])
    assert uses_decoded(cfg, meta)  # small 3D set: on
    assert feed_data(cfg, log=_quiet)[0]["image_encoding"] == RAW_ENCODING
    assert not uses_decoded(load_config(None, [f"data.path={tiny_synth3d}", "data.decoded=false"]), meta)
    huge = {**meta, "n_objects": 52_000, "views_per_object": 50}  # 3DIEBench's size: 2.6 M views
    assert not uses_decoded(load_config(None, ["data.image_size=128"]), huge)
    assert uses_decoded(load_config(None, ["data.image_size=128", "data.decoded=true"]), huge)
    images = {**meta, "format": "rayeq-images/1"}
    assert not uses_decoded(load_config(None, ["data.source=folder"]), images)
    with pytest.raises(ConfigError, match="data.decoded=true applies to 3D object sets"):
        load_config(None, ["data.source=folder", "data.decoded=true"])
