import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayeq.config import load_config
from rayeq.data.pairs import ImagePairs, ObjectPairs
from rayeq.data.pipeline import check_data, iter_pairs, norm_stats, to_model_batch
from rayeq.data.schema import DataError
from rayeq.data.targets import relative_rotation_quaternion


def _cfg(path, *extra):
    return load_config(None, [f"data.path={path}", "data.image_size=32", *extra])


def test_plain_pairs_shapes_dtypes_and_targets(tiny_synth3d):
    batches = list(iter_pairs(_cfg(tiny_synth3d), "train", batch_size=8))
    assert len(batches) == 2  # 16 train objects, drop_last
    b = batches[0]
    assert b["view1"].shape == b["view2"].shape == (8, 3, 32, 32) and b["view1"].dtype == np.uint8
    assert b["rel_rotation"].shape == (8, 4) and b["rel_color"].shape == (8, 2)
    assert b["label"].dtype == np.int64 and b["view_index"].shape == (8, 2)
    assert (b["view_index"][:, 0] != b["view_index"][:, 1]).all()  # two distinct views
    np.testing.assert_allclose(
        b["rel_rotation"], relative_rotation_quaternion(b["latent1"][:, :3], b["latent2"][:, :3])
    )
    np.testing.assert_allclose(b["rel_color"][:, 0], b["latent2"][:, 3] - b["latent1"][:, 3], atol=1e-6)


def test_pairs_reproducible_by_seed_and_fresh_each_epoch(tiny_synth3d):
    cfg = _cfg(tiny_synth3d)
    a = [b["view_index"] for b in iter_pairs(cfg, batch_size=8, seed=3)]
    b = [b["view_index"] for b in iter_pairs(cfg, batch_size=8, seed=3)]
    np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))
    two_epochs = [(x["label"], x["view_index"]) for x in iter_pairs(cfg, batch_size=16, seed=3, epochs=2)]
    assert not np.array_equal(two_epochs[0][1], two_epochs[1][1])


def test_target_options(tiny_synth3d):
    b = next(
        iter_pairs(_cfg(tiny_synth3d, "data.rotation_target=canonical", "data.color_target=cos_sin"), batch_size=16)
    )
    assert (b["rel_rotation"][:, 3] >= 0).all() and b["rel_color"].shape == (16, 4)


def test_photometric_augmentation_of_3d_pairs_is_optional(tiny_synth3d):
    table = pq.read_table(sorted(tiny_synth3d.glob("shard-*.parquet")))[:4]
    plain = ObjectPairs(_cfg(tiny_synth3d), split=None, seed=0)(table)
    jittered = ObjectPairs(_cfg(tiny_synth3d, "augment.photometric_3d=true"), split=None, seed=0)(table)
    np.testing.assert_array_equal(plain["view_index"], jittered["view_index"])
    assert not np.array_equal(plain["view1"], jittered["view1"])


def test_normalised_model_batch(tiny_synth3d):
    meta, _ = check_data(_cfg(tiny_synth3d))
    b = next(iter_pairs(_cfg(tiny_synth3d), batch_size=16))
    mb = to_model_batch(b, *norm_stats(meta), channels_last=True)
    assert mb["view1"].dtype.is_floating_point and mb["view1"].shape == (16, 3, 32, 32)
    assert abs(mb["view1"].mean().item()) < 0.5 and 0.5 < mb["view1"].std().item() < 1.5
    assert mb["view1"].is_contiguous(memory_format=__import__("torch").channels_last)


def test_image_pairs_record_parameters(tmp_path):
    import io

    from PIL import Image

    from rayeq.data.augment import apply_params

    imgs = []
    for i in range(3):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, "PNG")
        imgs.append(buf.getvalue())
    batch = pa.table({"image": imgs, "label": [0, 1, 2], "class_name": ["a", "b", "c"], "path": ["x"] * 3,
                      "split": ["train"] * 3})  # fmt: skip
    cfg = load_config(None, ["data.source=folder", "data.image_size=32", "augment.rotation.enabled=true"])
    out = ImagePairs(cfg, seed=0)(batch)
    assert out["view1"].shape == (3, 3, 32, 32) and out["aug1"].shape == (3, 14)
    import torch

    src = torch.from_numpy(np.array(Image.open(io.BytesIO(imgs[1])))).permute(2, 0, 1)
    np.testing.assert_array_equal(apply_params(src, out["aug2"][1], 32).numpy(), out["view2"][1])


# ----------------------------------------------------------------------------------------- bad input
def _corrupt_copy(src, dst, obj_row=2, view=1):
    shutil.copytree(src, dst)
    shard = sorted(dst.glob("shard-*.parquet"))[0]
    rows = pq.read_table(shard).to_pylist()
    rows[obj_row]["images"][view] = b"\x89PNG-but-not-really"
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(shard)), shard)
    return shard, rows[obj_row]["object_id"]


def test_corrupt_image_names_shard_and_row(tiny_synth3d, tmp_path):
    shard, obj = _corrupt_copy(tiny_synth3d, tmp_path / "bad")
    table = pq.read_table(shard)
    table = table.append_column("path", pa.array([str(shard)] * table.num_rows))
    maker = ObjectPairs(_cfg(tmp_path / "bad"), split=None, seed=0)
    with pytest.raises(DataError) as exc:
        for _ in range(20):  # the corrupt view is drawn sooner or later
            maker(table)
    msg = str(exc.value)
    assert str(shard) in msg and obj in msg and "view 1" in msg and "data.skip_corrupt" in msg


def test_skip_corrupt_counts_and_goes_on(tiny_synth3d, tmp_path):
    shard, _ = _corrupt_copy(tiny_synth3d, tmp_path / "bad")
    maker = ObjectPairs(_cfg(tmp_path / "bad", "data.skip_corrupt=true"), split=None, seed=0)
    table = pq.read_table(shard)
    for _ in range(20):
        out = maker(table)
        assert len(out["label"]) == table.num_rows
    assert maker.skipped > 0


def test_missing_empty_and_mismatched_data(tiny_synth3d, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        check_data(_cfg(tmp_path / "nothing"))
    (tmp_path / "nometa").mkdir()
    with pytest.raises(DataError, match="no meta.json"):
        check_data(_cfg(tmp_path / "nometa"))
    with pytest.raises(DataError, match="data.path is not set"):
        check_data(load_config(None, ["data.source=3diebench"]))
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(tiny_synth3d / "meta.json", empty)
    with pytest.raises(DataError, match="no shard"):
        check_data(_cfg(empty))
    pq.write_table(pq.read_table(sorted(tiny_synth3d.glob("shard-*.parquet"))[0]).slice(0, 0),
                   empty / "shard-00000.parquet")  # fmt: skip
    with pytest.raises(DataError, match="is empty"):
        check_data(_cfg(empty))
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    shutil.copy(tiny_synth3d / "meta.json", wrong)
    pq.write_table(pa.table({"object_id": ["a"], "label": [1.5]}), wrong / "shard-00000.parquet")
    with pytest.raises(DataError, match="does not match.*missing column 'images'.*label: double"):
        check_data(_cfg(wrong))
    with pytest.raises(DataError, match="data.source='folder' expects rayeq-images/1"):
        check_data(_cfg(tiny_synth3d, "data.source=folder"))
    meta = json.loads((tiny_synth3d / "meta.json").read_text())
    assert meta["splits"]["val"] > 0
    with pytest.raises(DataError, match="no rows in split 'test'"):
        check_data(_cfg(tiny_synth3d), split="test")
