import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rayeq.data.make.convert import convert_3diebench, convert_folder
from rayeq.data.schema import IMAGES_SCHEMA, OBJECTS_SCHEMA, DataError


def _jpeg(color, size=16):
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def tiny_3diebench(tmp_path):
    """The official layout: SYNSET/OBJ_ID/image_{i}.jpg + latent_{i}.npy, and SIE's object lists."""
    root = tmp_path / "3DIEBench"
    objects = []
    for s, synset in enumerate(["02691156", "03001627"]):
        for o in range(3):
            obj = root / synset / f"obj{o}"
            obj.mkdir(parents=True)
            for i in range(3):
                (obj / f"image_{i}.jpg").write_bytes(_jpeg((40 * s, 30 * o, 20 * i)))
                np.save(obj / f"latent_{i}.npy", np.arange(7, dtype=np.float64) + 10 * i + 100 * o)
            objects.append(f"/{synset}/obj{o}")
    np.save(tmp_path / "train_images.npy", np.array(objects[:4]))
    np.save(tmp_path / "val_images.npy", np.array(objects[4:]))
    return root


def test_3diebench_layout_converts_with_official_lists(tiny_3diebench, tmp_path):
    meta = convert_3diebench(tiny_3diebench, tmp_path / "out", tmp_path / "train_images.npy",
                             tmp_path / "val_images.npy", log=lambda *a: None)  # fmt: skip
    table = pq.read_table(sorted((tmp_path / "out").glob("shard-*.parquet")))
    assert table.schema.equals(OBJECTS_SCHEMA)
    rows = {r["object_id"]: r for r in table.to_pylist()}  # written in a seeded random order
    ids = [f"{s}/obj{o}" for s in ("02691156", "03001627") for o in range(3)]
    assert sorted(rows) == ids
    assert [rows[i]["split"] for i in ids] == ["train"] * 4 + ["val"] * 2  # from SIE's object lists
    assert [rows[i]["label"] for i in ids] == [0, 0, 0, 1, 1, 1]
    assert meta["classes"] == ["02691156", "03001627"] and meta["splits"] == {"train": 4, "val": 2}
    r = rows["03001627/obj1"]
    assert r["images"][2] == (tiny_3diebench / "03001627/obj1/image_2.jpg").read_bytes()  # bytes kept as they are
    np.testing.assert_allclose(r["latents"][2], np.arange(7) + 20 + 100)
    assert meta["image_encoding"] == "jpeg" and len(meta["mean"]) == 3


def test_3diebench_without_lists_splits_by_object_and_checks_layout(tiny_3diebench, tmp_path):
    meta = convert_3diebench(tiny_3diebench, tmp_path / "out", log=lambda *a: None)
    assert sum(meta["splits"].values()) == 6
    (tiny_3diebench / "02691156/obj0/latent_1.npy").unlink()
    with pytest.raises(DataError, match="image_1.jpg.*latent_1.npy"):
        convert_3diebench(tiny_3diebench, tmp_path / "out2", log=lambda *a: None)
    with pytest.raises(DataError, match="does not exist"):
        convert_3diebench(tmp_path / "nope", tmp_path / "out3")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="SYNSET/OBJ_ID"):
        convert_3diebench(tmp_path / "flat", tmp_path / "out4")


def test_folder_with_train_val_trees(tmp_path):
    root = tmp_path / "imgs"
    for split, n in (("train", 3), ("val", 1)):
        for c, color in (("cat", (200, 0, 0)), ("dog", (0, 200, 0))):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{i}.jpg").write_bytes(_jpeg(color))
    meta = convert_folder(root, tmp_path / "out", log=lambda *a: None)
    table = pq.read_table(sorted((tmp_path / "out").glob("shard-*.parquet")))
    assert table.schema.equals(IMAGES_SCHEMA)
    assert meta["classes"] == ["cat", "dog"] and meta["splits"] == {"train": 6, "val": 2}
    rows = table.to_pylist()
    assert {r["path"] for r in rows if r["split"] == "val"} == {"val/cat/0.jpg", "val/dog/0.jpg"}
    assert all(r["label"] == (r["class_name"] == "dog") for r in rows)
    assert meta["mean"][0] > meta["mean"][2]  # more red than blue in total (JPEG, roughly)


def test_folder_without_splits_and_bad_trees(tmp_path):
    root = tmp_path / "flat"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(10):
            (root / c / f"{i}.png").write_bytes(_jpeg((i * 20, 0, 0)))
    meta = convert_folder(root, tmp_path / "out", log=lambda *a: None)
    assert meta["splits"]["train"] + meta["splits"]["val"] == 20 and meta["splits"]["val"] > 0
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        convert_folder(empty, tmp_path / "o2")
    (root / "a" / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="corrupt image.*bad.jpg"):
        convert_folder(root, tmp_path / "o3")
