import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from rayeq.config import load_config
from rayeq.data.feed.normalize import norm_stats
from rayeq.data.feed.pairs import ImagePairs, ObjectPairs
from rayeq.data.feed.pipeline import check_data, iter_pairs, pair_loader, to_model_batch
from rayeq.data.feed.targets import relative_rotation_quaternion
from rayeq.data.schema import DataError


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


def test_the_plain_dataloader_gives_every_object_once_per_epoch_across_its_workers(tiny_synth3d):
    """`pair_loader` (plain PyTorch's DataLoader with worker processes, the fair baseline of `rayeq bench`)
    shares the rows between its workers: one epoch holds every train object once, as whole batches."""
    owner = {}
    for row in pq.read_table(sorted(tiny_synth3d.glob("shard-*.parquet"))).to_pylist():
        if row["split"] == "train":
            for lat in row["latents"]:
                owner[np.asarray(lat, np.float32).tobytes()] = row["object_id"]
    batches = list(pair_loader(_cfg(tiny_synth3d), "train", batch_size=4, workers=2, epochs=1))
    seen = [owner[np.asarray(b, np.float32).tobytes()] for batch in batches for b in batch["latent1"].numpy()]
    assert all(batch["view1"].shape == (4, 3, 32, 32) for batch in batches)
    assert sorted(seen) == sorted(set(owner.values())) and len(seen) == 16  # 16 train objects, each once


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

    from rayeq.data.feed.augment import apply_params

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
    # the pair's targets, as 3D pairs carry rel_rotation: view 2's parameters minus view 1's over the family's scale
    d = out["aug2"] - out["aug1"]
    np.testing.assert_allclose(out["aug_rotation"][:, 0], d[:, 5] / 45, rtol=1e-6)
    np.testing.assert_allclose(out["aug_translation"], d[:, 6:8] / (10 / 224 * 32), rtol=1e-6)
    np.testing.assert_allclose(out["aug_color"], d[:, 8:12] / [0.4, 0.4, 0.4, 0.1], rtol=1e-6)
    np.testing.assert_allclose(out["aug_blur"][:, 0], d[:, 13], rtol=1e-6)
    assert np.abs(out["aug_rotation"]).max() > 0.05  # rotation is on here


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


def _image_rows(n, bad=()):
    import io

    from PIL import Image

    rows = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, "PNG")
        rows.append({"image": b"not a png" if i in bad else buf.getvalue(), "label": i % 3, "class_name": "c",
                     "path": f"img/{i}.png", "split": "train" if i < n - 1 else "val"})  # fmt: skip
    return pa.Table.from_pylist(rows)


def test_image_pairs_views_parameters_labels_and_empty_batches():
    """Both views are their recorded parameters applied to the source (translation on, so the output size
    matters); only the split's rows; and a batch with no row of the split keeps every column's shape and dtype."""
    import io

    import torch
    from PIL import Image

    from rayeq.data.feed.augment import PARAM_NAMES, apply_params
    from rayeq.data.feed.pairs import pair_maker_class

    table = _image_rows(5)
    cfg = load_config(None, ["data.source=folder", "data.image_size=24", "augment.rotation.enabled=true",
                             "augment.translation.enabled=true"])  # fmt: skip
    out = ImagePairs(cfg, split="train", seed=0)(table)
    assert out["label"].tolist() == [0, 1, 2, 0] and out["label"].dtype == np.int64
    assert out["view1"].shape == out["view2"].shape == (4, 3, 24, 24) and out["view1"].dtype == np.uint8
    assert out["aug1"].shape == (4, len(PARAM_NAMES)) and out["aug1"].dtype == np.float32
    for k in range(4):
        src = torch.from_numpy(np.array(Image.open(io.BytesIO(table["image"][k].as_py())))).permute(2, 0, 1)
        for v in (1, 2):
            np.testing.assert_array_equal(apply_params(src, out[f"aug{v}"][k], 24).numpy(), out[f"view{v}"][k])
    assert not np.array_equal(out["aug1"], out["aug2"])
    empty = ImagePairs(cfg, split="test", seed=0)(table)
    want = {"view1": ((0, 3, 24, 24), np.uint8), "view2": ((0, 3, 24, 24), np.uint8),
            "aug1": ((0, len(PARAM_NAMES)), np.float32), "aug2": ((0, len(PARAM_NAMES)), np.float32),
            "aug_rotation": ((0, 1), np.float32), "aug_color": ((0, 4), np.float32), "aug_blur": ((0, 1), np.float32),
            "aug_translation": ((0, 2), np.float32), "label": ((0,), np.int64)}  # fmt: skip
    assert {k: (v.shape, v.dtype) for k, v in empty.items()} == want
    assert pair_maker_class("folder") is ImagePairs and pair_maker_class("imagenet") is ImagePairs
    assert pair_maker_class("synth3d") is ObjectPairs and pair_maker_class("3diebench") is ObjectPairs


def test_corrupt_image_rows_are_named_or_skipped():
    table = _image_rows(4, bad=(1,))
    cfg = load_config(None, ["data.source=folder", "data.image_size=16"])
    with pytest.raises(DataError) as exc:
        ImagePairs(cfg, split=None, seed=0)(table)
    assert "row 'img/1.png', image:" in str(exc.value) and "data.skip_corrupt" in str(exc.value)
    skipping = ImagePairs(load_config(None, ["data.source=folder", "data.image_size=16", "data.skip_corrupt=true"]),
                          split=None, seed=0)  # fmt: skip
    out = skipping(table)
    assert out["label"].tolist() == [0, 2, 0] and skipping.skipped == 1  # the rows after the bad one are kept


def _object_rows(tiny_synth3d, n=3):
    return pq.read_table(sorted(tiny_synth3d.glob("shard-*.parquet"))).to_pylist()[:n]


def _table(rows):
    return pa.Table.from_pylist(rows)


def test_object_pair_targets_and_dtypes_follow_the_config(tiny_synth3d):
    """SIE's quaternion (sign as computed) by default, w >= 0 with rotation_target=canonical; float32 latents."""
    from rayeq.data.feed.targets import relative_color

    table = _table(_object_rows(tiny_synth3d, 20))
    for target in ("sie", "canonical"):
        out = ObjectPairs(_cfg(tiny_synth3d, f"data.rotation_target={target}"), split=None, seed=1)(table)
        l1, l2 = out["latent1"], out["latent2"]
        assert l1.dtype == l2.dtype == np.float32 and out["rel_rotation"].dtype == np.float32
        assert out["label"].dtype == out["view_index"].dtype == np.int64
        want = relative_rotation_quaternion(l1[:, :3], l2[:, :3], canonical=target == "canonical")
        np.testing.assert_array_equal(out["rel_rotation"], want)
        np.testing.assert_array_equal(out["rel_color"], relative_color(l1, l2))
    sie = ObjectPairs(_cfg(tiny_synth3d), split=None, seed=1)(table)["rel_rotation"]
    assert (sie[:, 3] < 0).any()  # the two conventions really differ on this batch


def test_object_pairs_seed_config_dict_and_two_view_objects(tiny_synth3d):
    """The seed (train.seed when not given) fixes the pairs; a config dict (what Ray actors get) works as the
    config; an object with exactly two views makes a pair; an object with one view is refused."""
    cfg = _cfg(tiny_synth3d, "train.seed=7", "augment.photometric_3d=true")
    table = _table(_object_rows(tiny_synth3d, 20))
    a = ObjectPairs(cfg, split=None)(table)
    b = ObjectPairs(cfg.to_dict(), split=None, seed=7)(table)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])  # same pairs and the same photometric jitter
    c = ObjectPairs(cfg, split=None, seed=8)(table)
    assert not np.array_equal(a["view_index"], c["view_index"])
    row = _object_rows(tiny_synth3d, 1)[0]
    two = {**row, "images": row["images"][:2], "latents": row["latents"][:2]}
    out = ObjectPairs(_cfg(tiny_synth3d), split=None, seed=0)(_table([two] * 6))
    assert len(out["label"]) == 6 and {tuple(v) for v in out["view_index"].tolist()} == {(0, 1), (1, 0)}
    one = {**row, "images": row["images"][:1], "latents": row["latents"][:1]}
    with pytest.raises(DataError, match=rf"object '{row['object_id']}' has 1 view\(s\); pairs need at least 2"):
        ObjectPairs(_cfg(tiny_synth3d), split=None, seed=0)(_table([one]))


def test_photometric_jitter_of_3d_pairs_never_moves_the_object(tiny_synth3d):
    """With augment.photometric_3d, crop, flip, rotation and translation stay off for 3D views whatever their own
    switches say (they would change the pose the targets describe): with every photometric family off, the
    views are the plain ones."""
    table = _table(_object_rows(tiny_synth3d, 8))
    plain = ObjectPairs(_cfg(tiny_synth3d), split=None, seed=0)(table)
    geometric_only = _cfg(tiny_synth3d, "augment.photometric_3d=true", "augment.color.enabled=false",
                          "augment.blur.enabled=false", "augment.grayscale.enabled=false",
                          "augment.rotation.enabled=true", "augment.translation.enabled=true")  # fmt: skip
    out = ObjectPairs(geometric_only, split=None, seed=0)(table)
    np.testing.assert_array_equal(out["view1"], plain["view1"])
    np.testing.assert_array_equal(out["view2"], plain["view2"])


def test_corrupt_views_of_3d_objects_are_named_redrawn_or_skipped(tiny_synth3d):
    """A corrupt view is named whether it is drawn first or second; with skip_corrupt an object with three views,
    one corrupt, still gives a pair of its two good views; an object with no readable pair is skipped and the
    rows after it are kept; a batch with no pair keeps every column's shape and dtype."""
    rows = _object_rows(tiny_synth3d, 4)
    r = rows[0]
    two = {**r, "images": [r["images"][0], b"broken"], "latents": r["latents"][:2]}
    for seed in range(6):  # the corrupt view is drawn first in some seeds and second in others
        with pytest.raises(DataError, match=rf"row '{r['object_id']}', view 1: "):
            ObjectPairs(_cfg(tiny_synth3d), split=None, seed=seed)(_table([two]))
    skip = _cfg(tiny_synth3d, "data.skip_corrupt=true")
    three = {**r, "images": [r["images"][0], b"broken", r["images"][2]], "latents": r["latents"][:3]}
    maker = ObjectPairs(skip, split=None, seed=0)
    for _ in range(5):
        out = maker(_table([three]))
        assert len(out["label"]) == 1 and set(out["view_index"][0].tolist()) == {0, 2}
    dead = {**r, "images": [b"broken"] * 3, "latents": r["latents"][:3]}
    out = ObjectPairs(skip, split=None, seed=0)(_table([dead, *rows[1:]]))
    assert out["label"].tolist() == [row["label"] for row in rows[1:]]
    empty = ObjectPairs(skip, split=None, seed=0)(_table([dead]))
    want = {"view1": ((0, 3, 32, 32), np.uint8), "view2": ((0, 3, 32, 32), np.uint8),
            "rel_rotation": ((0, 4), np.float32), "rel_color": ((0, 2), np.float32),
            "latent1": ((0, 7), np.float32), "latent2": ((0, 7), np.float32), "label": ((0,), np.int64),
            "view_index": ((0, 2), np.int64)}  # fmt: skip
    assert {k: (v.shape, v.dtype) for k, v in empty.items()} == want
    cos_sin = ObjectPairs(_cfg(tiny_synth3d, "data.skip_corrupt=true", "data.color_target=cos_sin"), split=None)
    assert cos_sin(_table([dead]))["rel_color"].shape == (0, 4)


def test_pair_makers_read_tables_or_column_dicts_and_keep_rows_without_a_split(tiny_synth3d, caplog):
    """A batch may be a pyarrow table or a dict of columns (Ray Data's formats); rows without a `split` column
    belong to every split; each skipped corrupt image is counted and logged with where it came from."""
    import logging

    rows = _object_rows(tiny_synth3d, 4)
    table = _table(rows)
    as_table = ObjectPairs(_cfg(tiny_synth3d), split=None, seed=3)(table)
    as_dict = ObjectPairs(_cfg(tiny_synth3d), split=None, seed=3)(table.to_pydict())
    for k in as_table:
        np.testing.assert_array_equal(as_table[k], as_dict[k])
    no_split = _table([{k: v for k, v in r.items() if k != "split"} for r in rows])
    assert len(ObjectPairs(_cfg(tiny_synth3d), split="val", seed=0)(no_split)["label"]) == 4
    images = _image_rows(5, bad=(0, 2, 3)).drop_columns(["path"])
    maker = ImagePairs(load_config(None, ["data.source=folder", "data.image_size=16", "data.skip_corrupt=true"]),
                       split=None, seed=0)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="rayeq.data.feed.pairs"):
        out = maker(images)
    assert len(out["label"]) == 2 and maker.skipped == 3
    assert "skipping corrupt image (? image): " in caplog.text and "[3 skipped]" in caplog.text
    with pytest.raises(DataError, match=r"^corrupt image in row '\?', image: "):
        ImagePairs(load_config(None, ["data.source=folder", "data.image_size=16"]), split=None, seed=0)(images)


class _Metrics:
    def __init__(self):
        self.num_tasks_submitted = self.num_tasks_finished = self.num_task_outputs_generated = 0
        self.num_inputs_received = self.num_outputs_taken = 0


class _Op:
    def __init__(self):
        self.metrics = _Metrics()


class _State:
    def __init__(self):
        self.output_queue: list = []


class _Executor:
    """What IdleWait reads of Ray's StreamingExecutor: operators with their metrics and output queues."""

    def __init__(self):
        self.op, self.state = _Op(), _State()
        self._topology = {self.op: self.state}

    def _consumer_idling(self) -> bool:
        return not self.state.output_queue


@pytest.fixture
def idle(monkeypatch):
    """An IdleWait whose sleeps are recorded and whose clock the test moves: (callback, executor, slept, clock)."""
    from rayeq.data.feed.idle import IdleWait

    slept, now = [], [0.0]
    monkeypatch.setattr(IdleWait, "sleep", staticmethod(slept.append))
    monkeypatch.setattr(IdleWait, "clock", staticmethod(lambda: now[0]))
    cb, ex = IdleWait(), _Executor()
    cb.before_execution_starts(ex)

    def turn(seconds=0.001):  # one turn of the scheduling loop taking `seconds`, then the callback
        now[0] += seconds
        cb.on_execution_step(ex)

    return turn, ex, slept


def test_the_scheduling_loop_pauses_after_turns_that_spun_and_changed_nothing(idle):
    from rayeq.data.feed.idle import FIRST_PAUSE_S, FIRST_PAUSE_STARVING_S, LONGEST_PAUSE_S, LONGEST_PAUSE_STARVING_S

    turn, ex, slept = idle
    ex.state.output_queue.append("block")  # data waiting for the consumer
    turn()  # the first turn has nothing to compare with
    assert slept == []
    for _ in range(10):  # quick turns that change nothing: pauses double up to the longest
        turn()
    assert slept[:3] == [FIRST_PAUSE_S, 2 * FIRST_PAUSE_S, 4 * FIRST_PAUSE_S] and slept[-1] == LONGEST_PAUSE_S == max(
        slept
    )
    n = len(slept)
    ex.op.metrics.num_tasks_submitted += 1  # a task submitted: progress, no pause, and the next pause is short again
    turn()
    assert len(slept) == n
    turn()
    assert slept[-1] == FIRST_PAUSE_S
    ex.state.output_queue.append("another")  # a queue that grew (or shrank: the consumer took a batch) is progress
    turn()
    assert len(slept) == n + 1
    turn(0.1)  # a turn that waited in ray.wait (its 0.1 s timeout) did not spin: no pause, however still
    assert len(slept) == n + 1
    ex.state.output_queue.clear()  # the consumer waits for data: shorter pauses, so that its data is taken sooner
    for _ in range(10):
        turn()
    assert slept[n + 1] == FIRST_PAUSE_STARVING_S < FIRST_PAUSE_S
    assert max(slept[n + 1 :]) == LONGEST_PAUSE_STARVING_S < LONGEST_PAUSE_S


def test_an_executor_without_the_fields_idle_wait_reads_runs_as_ray_wrote_it(monkeypatch, caplog):
    from rayeq.data.feed.idle import IdleWait

    slept = []
    monkeypatch.setattr(IdleWait, "sleep", staticmethod(slept.append))
    cb = IdleWait()
    for _ in range(3):
        cb.on_execution_step(object())  # another Ray version's executor
    assert slept == [] and caplog.text.count("IdleWait is off") == 1


def test_idle_wait_has_every_hook_of_rays_execution_callback():
    """It follows Ray Data's ExecutionCallback without subclassing it (importing rayeq.data.feed imports no Ray):
    a hook Ray adds in a later version fails here, not in the middle of a user's run."""
    from ray.data._internal.execution.execution_callback import ExecutionCallback

    from rayeq.data.feed.idle import IdleWait

    hooks = [k for k, v in vars(ExecutionCallback).items() if callable(v) and not k.startswith("_")]
    assert "on_execution_step" in hooks and len(hooks) >= 4
    assert [h for h in hooks if not callable(getattr(IdleWait, h, None))] == []


def _owners(data_dir) -> dict[bytes, str]:
    """Each view's latents -> its object's id (pairs carry their views' latents)."""
    owner = {}
    for shard in sorted(data_dir.glob("shard-*.parquet")):
        for row in pq.read_table(shard).to_pylist():
            for lat in row["latents"]:
                owner[np.asarray(lat, np.float32).tobytes()] = (row["object_id"], row["split"])
    return owner


def test_shard_pairs_read_their_shards_and_pair_each_row_of_the_split_once_per_pass(tiny_synth3d):
    """What a Ray Data actor runs on a work item (a shard path): the shard's rows of the split, shuffled anew at each
    visit, in pair batches of data.rows_per_batch rows, each with the shard named for error messages."""
    from rayeq.data.feed.pairs import ShardPairs
    from rayeq.data.feed.pipeline import maker_kwargs

    cfg = _cfg(tiny_synth3d, "data.rows_per_batch=3")
    meta, shards = check_data(cfg, "train")
    owner = _owners(tiny_synth3d)
    maker = ShardPairs(**maker_kwargs(cfg, meta, "train"), seed=0)
    visits = []
    for _ in range(2):  # the same shards twice: two passes
        batches = list(maker({"path": [str(s) for s in shards]}))
        assert all(0 < len(b["label"]) <= 3 for b in batches)
        pairs = [zip(b["latent1"], b["view_index"], strict=True) for b in batches]
        visits.append([(owner[a.tobytes()], tuple(v)) for batch in pairs for a, v in batch])
    for pairs in visits:
        objects = [obj for obj, _ in pairs]
        assert len(objects) == len(set(objects)) == meta["splits"]["train"] == 16  # each train object once
        assert {split for _, split in objects} == {"train"}
    assert [o for o, _ in visits[0]] != [o for o, _ in visits[1]]  # rows shuffled anew
    assert sorted(visits[0]) != sorted(visits[1])  # views drawn anew


def test_split_shards_skips_shards_that_hold_none_of_the_split(tiny_synth3d, tmp_path):
    from rayeq.data.feed.pipeline import split_shards

    table = pq.read_table(sorted(tiny_synth3d.glob("shard-*.parquet"))[0])
    for split in ("train", "val"):
        pq.write_table(table.filter(pc.field("split") == split), tmp_path / f"shard-{split}.parquet")
    pq.write_table(table, tmp_path / "shard-mixed.parquet")
    pq.write_table(table, tmp_path / "shard-nostats.parquet", write_statistics=False)
    names = lambda paths: sorted(p.stem for p in paths)  # noqa: E731
    every = sorted(tmp_path.glob("*.parquet"))
    assert names(split_shards(every, "train")) == ["shard-mixed", "shard-nostats", "shard-train"]
    assert names(split_shards(every, "val")) == ["shard-mixed", "shard-nostats", "shard-val"]
    assert split_shards(every, "test") == [tmp_path / "shard-nostats.parquet"]


def test_interpolated_parameters_by_hand():
    from rayeq.data.feed.augment import IDENTITY, interpolate_params

    p1, p2 = IDENTITY.copy(), IDENTITY.copy()
    p1[[4, 5, 6, 8, 11, 12, 13]] = [1, -30, 2, 0.8, 0.1, 0, 0]  # flipped, -30 deg, shifted, darker, hue, colour
    p2[[4, 5, 6, 8, 11, 12, 13]] = [0, 30, -2, 1.2, -0.1, 1, 1.6]  # not flipped, +30 deg, grey, blurred
    p = interpolate_params(p1, p2, 0.25)
    np.testing.assert_allclose(p[[5, 6, 8, 11, 13]], [-15, 1, 0.9, 0.05, 0.4], rtol=1e-6)
    assert p[4] == 1 and p[12] == 0  # flip and grayscale from the nearer view (view 1)
    q = interpolate_params(p1, p2, 0.75)
    assert q[4] == 0 and q[12] == 1 and q[5] == pytest.approx(15)
    np.testing.assert_array_equal(interpolate_params(p1, p2, 0.0), p1)


def test_design_b_pairs_carry_the_image_between_the_views():
    """method.intermediate: each pair also carries `mid`, the source under the parameters a fraction `mid_t` of the
    way from view 1's to view 2's (t drawn from the list), and `to_model_batch` normalises it as it does the views."""
    import io

    import torch
    from PIL import Image

    from rayeq.data.feed.augment import apply_params, interpolate_params

    table = _image_rows(5)
    cfg = load_config(None, ["data.source=folder", "data.image_size=24", "augment.rotation.enabled=true",
                             "augment.translation.enabled=true", "method.intermediate=[0.25,0.75]"])  # fmt: skip
    out = ImagePairs(cfg, split="train", seed=0)(table)
    assert out["mid"].shape == (4, 3, 24, 24) and out["mid"].dtype == np.uint8 and out["mid_t"].shape == (4, 1)
    assert set(out["mid_t"][:, 0].tolist()) <= {0.25, 0.75}
    for k in range(4):
        src = torch.from_numpy(np.array(Image.open(io.BytesIO(table["image"][k].as_py())))).permute(2, 0, 1)
        p = interpolate_params(out["aug1"][k], out["aug2"][k], float(out["mid_t"][k, 0]))
        np.testing.assert_array_equal(apply_params(src, p, 24).numpy(), out["mid"][k])
        assert not np.array_equal(out["mid"][k], out["view1"][k]) and not np.array_equal(out["mid"][k], out["view2"][k])
    batch = to_model_batch(out, [0.5] * 3, [0.25] * 3)
    torch.testing.assert_close(batch["mid"], (torch.from_numpy(out["mid"]).float() / 255 - 0.5) / 0.25)
    plain = ImagePairs(load_config(None, ["data.source=folder", "data.image_size=24"]), split="train", seed=0)(table)
    assert "mid" not in plain and "mid_t" not in plain  # off: the pairs are as before
    cfg = load_config(None, ["data.source=folder", "data.image_size=24", "method.name=between"])
    between = ImagePairs(cfg, split="train", seed=0)(table)  # between's default t's: 1/3 and 2/3
    assert {round(float(t), 4) for t in between["mid_t"][:, 0]} <= {0.3333, 0.6667} and between["mid"].shape[0] == 4


def test_scenes_between_two_views_interpolate_along_the_shorter_ways():
    from scipy.spatial.transform import Rotation

    from rayeq.data.feed.between3d import between_latents

    g = np.random.default_rng(0)
    l1 = np.column_stack([g.uniform(-1.5, 1.5, (6, 3)), g.uniform(0, 1, 6), g.uniform(0, 0.7, 6),
                          g.uniform(0, 2 * np.pi, 6), g.uniform(0, 1, 6)])  # fmt: skip
    l2 = np.column_stack([g.uniform(-1.5, 1.5, (6, 3)), g.uniform(0, 1, 6), g.uniform(0, 0.7, 6),
                          g.uniform(0, 2 * np.pi, 6), g.uniform(0, 1, 6)])  # fmt: skip
    rot = lambda lat: Rotation.from_euler("xyz", lat[:, :3])  # noqa: E731
    for t, end in ((0.0, l1), (1.0, l2)):
        mid = between_latents(l1, l2, np.full(6, t))
        assert (rot(mid).inv() * rot(end)).magnitude().max() < 1e-5  # the same rotations at the ends
    t = np.array([0.25, 0.5, 0.75, 1 / 3, 2 / 3, 0.5])
    mid = between_latents(l1, l2, t)
    whole = (rot(l1).inv() * rot(l2)).magnitude()
    np.testing.assert_allclose((rot(l1).inv() * rot(mid)).magnitude(), t * whole, atol=1e-5)  # on the geodesic,
    np.testing.assert_allclose((rot(mid).inv() * rot(l2)).magnitude(), (1 - t) * whole, atol=1e-5)  # t of the way
    np.testing.assert_allclose(mid[:, 4], (1 - t) * l1[:, 4] + t * l2[:, 4], rtol=1e-6)  # the light's polar angle
    hue = between_latents(np.array([[0, 0, 0, 0.9, 0, 6.0, 0.1]]), np.array([[0, 0, 0, 0.1, 0, 0.5, 0.3]]), [0.5])
    np.testing.assert_allclose(
        hue[0, [3, 5, 6]], [0.0, (6.0 + (0.5 + 2 * np.pi - 6.0) / 2) % (2 * np.pi), 0.2], atol=1e-6
    )  # fmt: skip  hues and azimuth: across 0, the shorter way round


def test_design_b_on_the_3d_set_renders_the_object_between_the_views(tiny_synth3d):
    """On synth3d the image between two views is the object re-rendered at the scene between them: at t = 0 and 1
    the renderer gives back the stored views byte for byte; in between, an image that is neither view."""
    import json as _json

    import torch

    from rayeq.data.feed.between3d import SceneRenderer, between_latents
    from rayeq.data.schema import decode_image

    meta = _json.loads((tiny_synth3d / "meta.json").read_text())
    table = pq.read_table(sorted(tiny_synth3d.glob("*.parquet"))[0])
    scenes = SceneRenderer(meta)
    row = table.slice(0, 1).to_pylist()[0]
    lat = np.asarray(row["latents"], np.float32)
    scene = scenes.scene(row["object_id"], lat)
    for v in range(len(lat)):
        np.testing.assert_array_equal(scenes.render([scene], lat[v : v + 1])[0], decode_image(row["images"][v]))
    with pytest.raises(DataError, match="stored latents are not the ones its seed gives"):
        SceneRenderer(meta).scene(row["object_id"], lat + 0.1)
    with pytest.raises(DataError, match="only a synth3d set"):
        SceneRenderer({**meta, "source": "3diebench"})
    cfg = _cfg(tiny_synth3d, "method.name=between", "method.intermediate=[0.5]")
    from rayeq.data.feed.pipeline import maker_kwargs

    out = ObjectPairs(**{**maker_kwargs(cfg, meta, None), "seed": 0})(table)
    n = len(out["label"])
    assert out["mid"].shape == (n, 3, 32, 32) and out["mid"].dtype == np.uint8 and (out["mid_t"] == 0.5).all()
    ids = table.column("object_id").to_pylist()
    for k in range(n):
        mid = between_latents(out["latent1"][k : k + 1], out["latent2"][k : k + 1], [0.5])
        want = scenes.render([scenes.scene(ids[k])], mid)
        np.testing.assert_array_equal(out["mid"][k], torch.from_numpy(want[0]).permute(2, 0, 1).numpy())
        assert not np.array_equal(out["mid"][k], out["view1"][k]) and not np.array_equal(out["mid"][k], out["view2"][k])
    plain = ObjectPairs(_cfg(tiny_synth3d), split=None, seed=0)(table)
    assert "mid" not in plain
    with pytest.raises(DataError, match="it needs the set's meta"):
        ObjectPairs(cfg, split=None, seed=0)
    batches = list(iter_pairs(cfg, "train", batch_size=8))  # the plain loop (and so Ray Data's actors) carry it too
    assert batches[0]["mid"].shape == (8, 3, 32, 32) and batches[0]["mid_t"].shape == (8, 1)


def test_a_training_run_opens_its_data_set_once_and_a_changed_shard_is_checked_again(tiny_synth3d, tmp_path):
    """What `rayeq train` does before its workers start (build_trainer's check, then the train and val streams'
    feed_data) reads the set's shards once, and its decoded copy's once; a shard rewritten since is read again, and a
    corrupt one named."""
    import os

    from rayeq.data import schema
    from rayeq.data.feed.pipeline import feed_data

    data = tmp_path / "set"
    shutil.copytree(tiny_synth3d, data)
    cfg = _cfg(data, "data.decoded=true", "data.image_size=16")
    before = schema.OPEN_COUNT[0]
    check_data(cfg, "train")
    feed_data(cfg, "train", log=lambda *a: None)
    feed_data(cfg, "val", log=lambda *a: None)
    check_data(cfg, "val")
    assert schema.OPEN_COUNT[0] - before == 2  # the set, its decoded copy
    shard = sorted(data.glob("shard-*.parquet"))[0]
    shard.write_bytes(b"not parquet")
    os.utime(shard, ns=(1, 1))  # a rewrite: another size and time
    with pytest.raises(DataError, match="not a readable Parquet file"):
        check_data(cfg, "train")
