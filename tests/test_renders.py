"""The built-in renders as an image set (`data.source=renders`): synth3d views as image rows, split by object, with
the class labels that give top-1; built once into the cache."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from rayeq.config import load_config
from rayeq.data.make.renders import build_renders
from rayeq.data.schema import DataError, decode_image, open_dataset


def test_renders_become_image_rows_split_by_object(tmp_path):
    lines = []
    meta = build_renders(tmp_path / "set", classes=3, objects_per_class=5, views=2, size=32, seed=0, log=lines.append)
    assert any(line.startswith("renders: 30 images of 15 objects") for line in lines)
    assert meta["source"] == "renders" and meta["classes_shared"] is True and len(meta["classes"]) == 3
    assert meta["splits"] == {"train": 24, "val": 6} and meta["n_images"] == 30  # 4 + 1 objects per class, 2 poses
    objects = {"train": set(), "val": set()}
    views: dict[str, list] = {}
    for shard in open_dataset(tmp_path / "set")[1]:
        for row in pq.read_table(shard).to_pylist():
            obj = row["path"].split("/")[0]
            objects[row["split"]].add(obj)
            views.setdefault(obj, []).append(decode_image(row["image"]))
            assert 0 <= row["label"] < 3 and row["class_name"] == meta["classes"][row["label"]]
    assert not objects["train"] & objects["val"] and len(objects["val"]) == 3  # no object in both splits
    assert all(len(v) == 2 and v[0].shape == (32, 32, 3) for v in views.values())
    assert all(not np.array_equal(*v) for v in views.values())  # two poses, two images
    with pytest.raises(DataError, match="--overwrite"):  # nothing a user made is overwritten
        build_renders(tmp_path / "set", classes=3, objects_per_class=5, views=2, size=32, log=lambda *a: None)
    with pytest.raises(DataError, match="--views must be at least 1"):
        build_renders(tmp_path / "none", classes=3, objects_per_class=5, views=0, size=32, log=lambda *a: None)
    assert not (tmp_path / "none").exists()  # refused before anything was written
    one = build_renders(tmp_path / "one", classes=2, objects_per_class=5, views=1, size=32, log=lambda *a: None)
    assert one["n_images"] == 10 and one["splits"] == {"train": 8, "val": 2}  # one image per object


def test_the_cached_renders_are_built_once_and_trainable_by_every_image_method(tmp_path, monkeypatch, capsys):
    from rayeq.data import builtin
    from rayeq.data.feed.pipeline import pair_loader, resolve_data_dir

    monkeypatch.setenv("RAYEQ_CACHE", str(tmp_path))
    monkeypatch.setattr(builtin, "RENDERS_DATA", dict(classes=2, objects_per_class=5, views=2, size=32, seed=0))
    cfg = load_config(None, ["data.source=renders", "data.image_size=32", "model.stem=compact",
                             "method.name=supervised", "augment.rotation.enabled=true"])  # fmt: skip
    path = resolve_data_dir(cfg)
    assert path == tmp_path / builtin.RENDERS_NAME and "building the built-in data set" in capsys.readouterr().out
    builtin._announced.discard(path)
    assert resolve_data_dir(cfg) == path and capsys.readouterr().out == f"reusing the built-in data set at {path}\n"
    batch = next(iter(pair_loader(cfg, "train", 4, 0, epochs=1)))
    assert batch["view1"].shape == (4, 3, 32, 32) and batch["aug1"].shape == (4, 14)  # image pairs, parameters
    monkeypatch.setattr(builtin, "RENDERS_DATA", dict(classes=2, objects_per_class=6, views=2, size=32, seed=0))
    resolve_data_dir(cfg)
    assert "objects_per_class 5 (wanted 6)" in capsys.readouterr().out  # says why it renders again
