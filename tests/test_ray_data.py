"""The Ray Data pipeline (shared local Ray instance for the session)."""

import numpy as np
import pytest

from rayeq.config import load_config
from rayeq.data.feed.pipeline import build_ray_dataset
from rayeq.data.schema import DataError


@pytest.fixture
def cfg(tiny_synth3d):
    return load_config(None, [f"data.path={tiny_synth3d}", "data.image_size=32", "data.num_actors=1",
                              "data.rows_per_batch=4"])  # fmt: skip


def _epoch(ds):
    batches = list(ds.iter_torch_batches(batch_size=4, drop_last=True))
    return batches


def test_ray_pairs_shapes_dtypes_and_fresh_pairs_per_epoch(ray_session, cfg):
    import torch

    ds = build_ray_dataset(cfg, "train")
    first, second = _epoch(ds), _epoch(ds)
    assert sum(len(b["label"]) for b in first) == 16
    b = first[0]
    assert b["view1"].shape == (4, 3, 32, 32) and b["view1"].dtype == torch.uint8
    assert b["rel_rotation"].shape == (4, 4) and b["rel_rotation"].dtype == torch.float32
    assert b["label"].dtype == torch.int64
    key = lambda batches: sorted(  # noqa: E731
        (int(l), int(i), int(j)) for x in batches for l, (i, j) in zip(x["label"], x["view_index"], strict=True)
    )
    assert key(first) != key(second)  # new pairs in a new epoch
    val = _epoch(build_ray_dataset(cfg, "val"))
    assert sum(len(b["label"]) for b in val) == 4  # the pushdown filter keeps only the split's objects


def test_all_epochs_stream_through_one_execution_with_fresh_pairs_per_pass(ray_session, cfg, tiny_synth3d):
    """Training's dataset holds train.epochs passes: each train object once per pass, views drawn anew."""
    from collections import Counter

    import pyarrow.parquet as pq

    owner = {}
    for row in pq.read_table(sorted(tiny_synth3d.glob("shard-*.parquet"))).to_pylist():
        for lat in row["latents"]:
            owner[np.asarray(lat, np.float32).tobytes()] = row["object_id"]
    pairs = []
    for b in build_ray_dataset(cfg, "train", passes=3).iter_batches(batch_size=None, batch_format="numpy"):
        pairs += [(owner[a.tobytes()], tuple(v)) for a, v in zip(b["latent1"], b["view_index"], strict=True)]
    counts = Counter(obj for obj, _ in pairs)
    assert len(counts) == 16 and set(counts.values()) == {3}  # every train object, once per pass
    assert len(set(pairs)) > 16  # views drawn anew per pass, not the same pair three times


@pytest.mark.full  # the train tests' runs take the same path in the default tier
def test_ray_pairs_reach_train_workers(ray_session, cfg, tmp_path):
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def loop(config):
        seen, dtypes = 0, set()
        for b in ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=4, drop_last=True):
            seen += b["view1"].shape[0]
            dtypes.add(str(b["view1"].dtype))
        with open(config["out"], "w") as f:
            f.write(f"{seen} {sorted(dtypes)}")

    out = tmp_path / "seen.txt"
    TorchTrainer(
        loop,
        train_loop_config={"out": str(out)},
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
        datasets={"train": build_ray_dataset(cfg, "train")},
        run_config=RunConfig(name="pipe", storage_path=str(tmp_path / "runs")),
    ).fit()
    assert out.read_text() == "16 ['torch.uint8']"


def test_corrupt_image_fails_the_ray_pipeline_with_its_shard(ray_session, tiny_synth3d, tmp_path):
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "bad"
    shutil.copytree(tiny_synth3d, bad)
    for shard in bad.glob("shard-*.parquet"):
        rows = pq.read_table(shard).to_pylist()
        for r in rows:
            r["images"] = [b"garbage"] * len(r["images"])
        pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(shard)), shard)
    cfg = load_config(None, [f"data.path={bad}", "data.image_size=32", "data.num_actors=1", "data.decoded=false"])
    with pytest.raises(Exception) as exc:
        _epoch(build_ray_dataset(cfg, "train"))
    assert "corrupt image in shard" in str(exc.value) and "shard-00000.parquet" in str(exc.value)


def test_bad_data_fails_before_ray_work(ray_session, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_ray_dataset(load_config(None, [f"data.path={tmp_path / 'none'}"]))


def test_same_pair_code_without_ray(ray_session, cfg, tiny_synth3d):
    """The plain loop and the Ray Data path make pairs with the same code: one epoch of either holds every train
    object once, with its label, two distinct stored views, and targets computed from those views' latents."""
    import pyarrow.parquet as pq

    from rayeq.data.feed.pipeline import iter_pairs
    from rayeq.data.feed.targets import relative_color, relative_rotation_quaternion

    owner = {}  # a view's latents -> (object, view index, label)
    for row in pq.read_table(sorted(tiny_synth3d.glob("shard-*.parquet"))).to_pylist():
        for v, lat in enumerate(row["latents"]):
            owner[np.asarray(lat, np.float32).tobytes()] = (row["object_id"], v, row["label"])

    def summary(batches):
        seen = {}
        for b in batches:
            for k in range(len(b["label"])):
                obj, i, label = owner[np.asarray(b["latent1"][k]).tobytes()]
                obj2, j, _ = owner[np.asarray(b["latent2"][k]).tobytes()]
                assert obj2 == obj and i != j and (i, j) == tuple(int(x) for x in b["view_index"][k])
                assert int(b["label"][k]) == label
                l1, l2 = np.asarray(b["latent1"][k : k + 1]), np.asarray(b["latent2"][k : k + 1])
                np.testing.assert_allclose(
                    np.asarray(b["rel_rotation"][k]), relative_rotation_quaternion(l1[:, :3], l2[:, :3])[0], atol=1e-6
                )
                np.testing.assert_allclose(np.asarray(b["rel_color"][k]), relative_color(l1, l2)[0], atol=1e-6)
                assert obj not in seen
                seen[obj] = label
        return seen

    plain = summary(iter_pairs(cfg, batch_size=4))
    ray_path = summary(build_ray_dataset(cfg, "train").iter_batches(batch_size=4, batch_format="numpy"))
    assert len(plain) == 16 and plain == ray_path  # the same objects with the same labels


def test_validation_pipeline_can_start_beside_a_training_stream_that_holds_its_actors(ray_session, tiny_synth3d):
    """The training stream keeps its actors between epochs (all epochs in one execution) and a fixed pool of
    data.num_actors starts whole; validation runs beside it, so its pool must start from one actor reserving
    a token CPU (on the H200 a validation pool of 14 one-CPU actors could not start next to the training's 14)."""
    from rayeq.data.feed.pipeline import VAL_CPUS

    cfg = load_config(None, [f"data.path={tiny_synth3d}", "data.num_actors=3", "data.cpus_per_actor=0.5"])

    def pool(ds):  # the map_batches operator's actor pool and CPU reservation (Ray 2.60's logical plan)
        op = ds._logical_plan.dag
        return op.compute.min_size, op.compute.max_size, op.ray_remote_args["num_cpus"]

    assert pool(build_ray_dataset(cfg, "train", passes=2)) == (3, 3, 0.5)
    assert pool(build_ray_dataset(cfg, "val", beside_training=True)) == (1, 3, VAL_CPUS)


def test_synth3d_rendered_by_ray_actors_is_the_set_rendered_here(ray_session, tmp_path):
    """`rayeq data synth3d --ray`: objects rendered by Ray Data actors, written in object order by the driver: the
    same bytes as the local render. A GPU render asked of a cluster without GPUs is refused before anything is
    written."""
    from rayeq.config import ConfigError
    from rayeq.data.make.synth3d import generate

    kw = dict(classes=3, objects_per_class=4, views=2, size=16, seed=5, objects_per_shard=5, log=lambda *a: None)
    generate(tmp_path / "here", workers=1, **kw)
    from ray.data import DataContext

    order = DataContext.get_current().execution_options
    before = order.preserve_order
    generate(tmp_path / "ray", use_ray=True, **kw)
    assert order.preserve_order == before  # ordered for its own dataset only: the session's setting is restored
    here = {p.name: p.read_bytes() for p in sorted((tmp_path / "here").iterdir())}
    there = {p.name: p.read_bytes() for p in sorted((tmp_path / "ray").iterdir())}
    assert len(here) == 4 and here == there  # meta.json + 3 shards
    if not ray_session.cluster_resources().get("GPU"):
        with pytest.raises(ConfigError, match="the Ray cluster has no GPU"):
            generate(tmp_path / "gpu", use_ray=True, device="cuda", **kw)
        assert not (tmp_path / "gpu").exists()


def test_a_pipeline_that_fills_its_budget_idles_instead_of_spinning(ray_session):
    """A dataset larger than its object-store budget, read by a slow consumer: Ray Data's scheduling loop (here in
    this process) runs IdleWait after each turn, which pauses where the loop would spin; every row arrives."""
    import time

    import ray
    from ray.data import ExecutionResources

    from rayeq.data.feed.idle import IdleWait, with_idle_wait

    def heavy(batch):  # 256 KiB a row
        return {"id": batch["id"], "x": np.zeros((len(batch["id"]), 1 << 18), np.uint8)}

    ds = with_idle_wait(ray.data.range(96, override_num_blocks=96).map_batches(heavy, batch_size=None))
    assert IdleWait in ds.context.custom_execution_callback_classes
    ds.context.execution_options.resource_limits = ExecutionResources(object_store_memory=4 << 20)  # 16 rows
    before, seen = IdleWait.pauses, []
    for b in ds.iter_batches(batch_size=4, batch_format="numpy", prefetch_batches=0):
        seen += b["id"].tolist()
        time.sleep(0.05)
    assert sorted(seen) == list(range(96))
    assert IdleWait.pauses > before


def test_the_training_and_validation_pipelines_carry_idle_wait(ray_session, cfg):
    from rayeq.data.feed.idle import IdleWait

    for ds in (build_ray_dataset(cfg, "train", passes=2), build_ray_dataset(cfg, "val", beside_training=True)):
        assert ds.context.custom_execution_callback_classes.count(IdleWait) == 1
    import ray

    assert IdleWait not in ray.data.DataContext.get_current().custom_execution_callback_classes  # not global
