"""The built-in natural-photo set (`data.source=photos`): built offline from the photos inside the installed
scikit-image and scikit-learn, split by source photo, every photo's source and licence recorded."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from rayeq.config import ConfigError, load_config
from rayeq.data.make import photos
from rayeq.data.schema import DataError, decode_image, open_dataset


@pytest.fixture(scope="module")
def small_photos(tmp_path_factory):
    pytest.importorskip("skimage", reason="the photos extra (pip install 'rayeq[photos]')")
    pytest.importorskip("sklearn", reason="the photos extra (pip install 'rayeq[photos]')")
    out = tmp_path_factory.mktemp("photos") / "set"
    lines = []
    meta = photos.build_photos(out, size=32, train_crops=12, val_crops=6, seed=0, log=lines.append)
    return out, meta, lines


@pytest.mark.extras
def test_photo_set_builds_offline_split_by_source_photo(small_photos):
    out, meta, lines = small_photos
    assert any(line.startswith("photos: ") for line in lines) and any("crops (" in line for line in lines)  # progress
    names = [p["name"] for p in meta["photos"]]
    assert names == [p[0] for p in photos.PHOTOS] and len(names) == 9
    for p in meta["photos"]:  # every photo says where it came from and under which licence
        assert p["package"] in ("scikit-image", "scikit-learn") and p["version"] and p["licence"] and p["credit"]
        assert p["split"] == ("val" if p["name"] in photos.HELD_OUT else "train")
    assert meta["splits"] == {"train": 12 * 6, "val": 6 * 3} and meta["classes_shared"] is False
    seen = {"train": set(), "val": set()}
    for shard in open_dataset(out)[1]:
        t = pq.read_table(shard).to_pylist()
        for row in t:
            seen[row["split"]].add(row["class_name"])
            img = decode_image(row["image"])
            assert img.shape == (32, 32, 3) and img.std() >= photos.MIN_STD  # resized crops that show something
    assert seen["val"] == set(photos.HELD_OUT) and not seen["train"] & seen["val"]  # no photo in both splits
    assert len(seen["train"]) == 6
    again = photos.build_photos(out.parent / "again", size=32, train_crops=12, val_crops=6, seed=0, log=lambda *a: None)
    assert again["mean"] == meta["mean"]  # the same crops from the same seed
    with pytest.raises(DataError, match="--overwrite"):  # nothing a user made is overwritten
        photos.build_photos(out, size=32, train_crops=12, val_crops=6, log=lambda *a: None)


@pytest.mark.extras
def test_photo_pairs_carry_their_augmentation_parameters(small_photos):
    from rayeq.data.feed.pipeline import pair_loader

    out, _, _ = small_photos
    cfg = load_config(None, ["data.source=photos", f"data.path={out}", "data.image_size=32", "train.batch_size=8",
                             "model.stem=compact"])  # fmt: skip
    batch = next(iter(pair_loader(cfg, "val", 8, 0, epochs=1)))
    assert batch["view1"].shape == (8, 3, 32, 32) and batch["aug1"].shape[0] == 8
    assert not np.allclose(batch["aug1"].numpy(), batch["aug2"].numpy())  # two views, two recorded draws
    names = [p[0] for p in photos.PHOTOS]
    assert set(batch["label"].tolist()) <= {names.index(n) for n in photos.HELD_OUT}  # held-out photos only


def test_a_missing_photo_package_is_named_with_its_extra(tmp_path, monkeypatch):
    real = photos.importlib.util.find_spec
    monkeypatch.setattr(photos.importlib.util, "find_spec", lambda name: None if name == "sklearn" else real(name))
    if real("skimage") is None:  # the core install: the first package checked is the one named
        with pytest.raises(DataError, match=r"'scikit-image'.*rayeq\[photos\]"):
            photos.build_photos(tmp_path / "out", size=32, train_crops=2, val_crops=2)
    else:
        with pytest.raises(DataError, match=r"'scikit-learn'.*rayeq\[photos\]"):
            photos.build_photos(tmp_path / "out", size=32, train_crops=2, val_crops=2)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_methods_that_need_3d_labels_refuse_the_photo_set():
    with pytest.raises(ConfigError, match="only 3D sources give"):
        load_config(None, ["data.source=photos", "method.name=sie"])
    load_config(None, ["data.source=photos", "method.name=supervised"])  # regresses the augmentation parameters
    with pytest.raises(ConfigError, match="data.decoded=true applies to 3D"):
        load_config(None, ["data.source=photos", "data.decoded=true"])


def test_photo_crops_vary_and_fill_the_size():
    g = np.random.default_rng(0)
    img = np.zeros((100, 150, 3), np.uint8)
    img[:, 75:] = 200  # half dark, half bright: a crop wholly on one side shows nothing and is drawn again
    img[::2] += 10  # faint stripes: less than MIN_STD on either side alone
    crops = photos._crops(img, 5, 24, g)
    assert len(crops) == 5 and all(c.shape == (24, 24, 3) and c.std() >= photos.MIN_STD for c in crops)
    with pytest.raises(DataError, match="vary by"):
        photos._crops(np.full((50, 50, 3), 7, np.uint8), 2, 24, g)


@pytest.mark.extras
def test_eval_on_the_photo_set_keeps_to_the_transforms_protocol(small_photos, tmp_path, monkeypatch):
    from test_eval import _checkpoint

    from rayeq.eval.run import evaluate

    monkeypatch.setenv("RAYEQ_CACHE", str(tmp_path / "cache"))
    out, _, _ = small_photos
    run = _checkpoint(tmp_path, out, "data.source=photos", "data.image_size=32")
    # held-out photos are classes no training crop has: classification is refused, naming why
    with pytest.raises(DataError, match=r"allows \['transforms'\] \(source photo: held out"):
        evaluate(run, protocols=["linear"], fast=True, log=lambda *a: 0)
    res = evaluate(run, fast=True, log=lambda *a: 0)  # the config's default protocols, narrowed to the set's
    assert res["protocols"] == ["transforms"]
    assert {f"transforms/{f}/r2" for f in ("rotation", "color", "blur", "translation", "mean")} <= set(res["metrics"])
    assert not any(k.startswith(("linear", "knn")) for k in res["metrics"])


def test_held_out_photos_get_no_top1():
    """The held-out photos are labels no training crop has: validation reports no top-1 there (not a ▼ at 0.000
    in every run's summary; Ray keeps the best checkpoints by the train probe's top-1 instead)."""
    import dataclasses

    from test_engine import INFO, _batches, _engine

    eng = _engine()
    assert "val/top1" in eng.validate(_batches(1))
    eng.info = dataclasses.replace(INFO, classes_shared=False)
    val = eng.validate(_batches(1))
    assert not any("top1" in k for k in val) and "val/rot_r2" in val and "val/floor/rot_r2" in val


@pytest.mark.extras
def test_the_cached_photo_set_is_built_once_and_rebuilt_when_its_settings_change(tmp_path, monkeypatch):
    from rayeq.data import builtin

    monkeypatch.setenv("RAYEQ_CACHE", str(tmp_path))
    monkeypatch.setattr(builtin, "PHOTOS_DATA", dict(size=24, train_crops=3, val_crops=2, seed=0))
    lines = []
    path = builtin.ensure_photos(log=lines.append)
    assert any("building the built-in data set (once)" in line for line in lines)
    assert open_dataset(path)[0]["splits"] == {"train": 18, "val": 6}
    lines.clear()
    builtin._announced.discard(path)
    assert builtin.ensure_photos(log=lines.append) == path
    assert lines == [f"reusing the built-in data set at {path}"]  # not built again
    monkeypatch.setattr(builtin, "PHOTOS_DATA", dict(size=24, train_crops=4, val_crops=2, seed=0))
    lines.clear()
    builtin.ensure_photos(log=lines.append)
    assert any("train_crops 3 (wanted 4)" in line for line in lines)  # says why it builds again
    assert list(tmp_path.glob("photos-builtin-v1.broken-*"))  # the old copy kept aside, not deleted
