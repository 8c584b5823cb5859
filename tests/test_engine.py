"""The training Engine without Ray: a checkpoint restores the exact training state (and training
goes on identically from it), the non-finite-loss guard stops a run naming the step and the terms,
an epoch is capped at steps_per_epoch, and TrainState round-trips through disk."""

import math

import numpy as np
import pytest
import torch

from rayeq.checkpoint import CheckpointMismatch, TrainState, checkpoint_score, score_attribute
from rayeq.config import load_config
from rayeq.runinfo import RunInfo
from rayeq.train.engine import Engine, Hooks, NonFiniteLossError

from conftest import assert_same_state

SIZE, BATCH = 16, 8


def _cfg(*extra):
    return load_config(None, [
        "data.image_size=16", "model.stem=compact", "model.projector=[32,32]", "method.name=xrecon",
        "method.decoder.width=16", "method.decoder.recon_size=16", "optim.lr=0.01", "optim.scale_lr=false",
        "optim.warmup_epochs=1", "train.epochs=3", f"train.batch_size={BATCH}", "train.log_every_steps=1", *extra,
    ])  # fmt: skip


INFO = RunInfo(n_train=4 * BATCH, n_val=0, num_classes=3, three_d=True, mean=[0.5] * 3, std=[0.25] * 3,
               regress={"rel_rotation": 4, "rel_color": 2})  # fmt: skip


def _batches(n, seed=0):
    """Stored pairs as the pipeline yields them: uint8 views and per-pair targets."""
    g = np.random.default_rng(seed)
    for _ in range(n):
        q = g.normal(size=(BATCH, 4)).astype(np.float32)
        yield {
            "view1": torch.from_numpy(g.integers(0, 256, (BATCH, 3, SIZE, SIZE), dtype=np.uint8)),
            "view2": torch.from_numpy(g.integers(0, 256, (BATCH, 3, SIZE, SIZE), dtype=np.uint8)),
            "label": torch.from_numpy(g.integers(0, 3, BATCH)),
            "rel_rotation": torch.from_numpy(q / np.linalg.norm(q, axis=1, keepdims=True)),
            "rel_color": torch.from_numpy(g.normal(size=(BATCH, 2)).astype(np.float32)),
        }


def _engine(cfg=None, seed=0):
    torch.manual_seed(seed)
    return Engine(cfg or _cfg(), INFO, "cpu")


def test_a_restored_engine_holds_the_saved_state_and_trains_on_identically(tmp_path):
    a = _engine()
    assert a.steps_per_epoch == 4  # 32 rows / batch 8
    first = a.run_epoch(_batches(10))
    assert first.steps == 4 and first.metrics["epoch"] == 1 and first.metrics["step"] == 4
    TrainState(**a.state_dict(), config_hash="h", config=a.cfg.to_dict(), metrics=first.metrics).save(tmp_path)

    b = _engine(seed=123)  # other initial weights: everything must come from the checkpoint
    state = TrainState.load(tmp_path)
    b.load_state_dict(state.training_state())
    assert_same_state(b.state_dict(), a.state_dict(), "restored")
    assert b.scheduler.get_last_lr() == a.scheduler.get_last_lr()
    # the next epoch on the same batches: the same losses and the same weights afterwards
    ra, rb = a.run_epoch(_batches(4, seed=1)), b.run_epoch(_batches(4, seed=1))
    assert ra.metrics["train/total"] == rb.metrics["train/total"] and ra.metrics["epoch"] == 2
    assert_same_state(b.state_dict()["model"], a.state_dict()["model"], "after an epoch")
    now = a.module.state_dict()
    assert any(v.is_floating_point() and not torch.equal(v, now[k]) for k, v in state.model.items())  # it trained on


def test_training_on_fixed_batches_lowers_the_invariance_and_reconstruction_terms():
    """Learning, checked where it is deterministic: the same 4 batches for 4 epochs (the Ray test's
    epoch means over 6 steps of 4 random pairs are too noisy to compare the reconstruction term)."""
    eng = _engine(_cfg("train.epochs=5", "optim.warmup_epochs=0"))
    batches = list(_batches(4))
    rows = [eng.run_epoch(iter(batches)).metrics for _ in range(5)]
    for term in ("train/sim", "train/recon"):
        assert rows[-1][term] < 0.9 * rows[0][term], [(r[term]) for r in rows]


def test_a_checkpoint_from_another_config_is_refused_unless_forced(tmp_path):
    a = _engine()
    TrainState(**a.state_dict(), config_hash="abc", config={}).save(tmp_path)
    state = TrainState.load(tmp_path)
    with pytest.raises(CheckpointMismatch, match="abc.*def.*--force"):
        state.check_config("def", force=False)
    state.check_config("def", force=True)
    state.check_config("abc", force=False)


def test_non_finite_loss_stops_the_run_naming_the_step_and_the_terms():
    batches = list(_batches(5))
    batches[1]["rel_rotation"][:] = float("nan")  # a corrupt target in the second batch: SIE's equi term is NaN
    for every, stopped in ((1, 2), (3, 3)):  # the terms are read back (and checked) at each log step
        eng = _engine(_cfg("method.name=sie", f"train.log_every_steps={every}"))
        with pytest.raises(NonFiniteLossError) as exc:
            eng.run_epoch(iter(batches))
        msg = str(exc.value)
        assert "at step 2 " in msg and "equi=nan" in msg and "total=nan" in msg and "sim=" in msg, msg
        assert eng.step_count == stopped  # at the first log step after the bad one, not at the end of the epoch


def test_an_epoch_stops_at_steps_per_epoch_and_hooks_see_every_log_step():
    seen = []

    class Record(Hooks):
        def on_step(self, engine, n, out, terms):
            seen.append((engine.epoch, n, engine.step_count, math.isfinite(terms["total"])))

    eng = _engine(_cfg("train.steps_per_epoch=3", "train.log_every_steps=2"))
    assert eng.steps_per_epoch == 3
    res = eng.run_epoch(_batches(10), [Record()])
    assert res.steps == 3 and seen == [(0, 2, 2, True), (0, 3, 3, True)]  # and the epoch's last
    # the epoch's mean terms still hold every step, not only the log steps
    eng = _engine(_cfg("train.steps_per_epoch=3", "train.log_every_steps=1"))
    one_by_one = eng.run_epoch(_batches(10), [Record()]).metrics
    assert res.metrics["train/total"] == pytest.approx(one_by_one["train/total"], rel=1e-5)
    assert res.metrics["images_per_sec"] > 0 and "train/rot_r2" in res.metrics and "train/floor/top1" in res.metrics
    with pytest.raises(RuntimeError, match="no full batch"):
        eng.run_epoch(iter([]))


def test_steady_images_per_sec_counts_every_step_since_the_first_batch_arrived(monkeypatch):
    """A 3-step epoch whose first batch arrives 5 s after it starts and whose steps take 2 s each: steady 3 x 16
    images in 6 s (the wait left out), whole epoch 48 images in 11 s."""
    import time

    import rayeq.train.engine as engine_module

    eng = _engine(_cfg("train.steps_per_epoch=3", "train.log_every_steps=3", "train.batch_size=8"))
    stamps = iter([0.0, 5.0, 11.0])  # the epoch's start, its first batch's arrival, its end

    class Clock:  # the engine's clock only: run_epoch reads it at these three points
        def perf_counter(self):
            return next(stamps)

        def __getattr__(self, name):
            return getattr(time, name)

    monkeypatch.setattr(engine_module, "time", Clock())
    m = eng.run_epoch(_batches(10)).metrics
    assert m["images_per_sec"] == pytest.approx(3 * 16 / 6.0) and m["epoch_images_per_sec"] == pytest.approx(48 / 11)
    assert m["epoch_seconds"] == pytest.approx(11.0)


def test_validation_reports_held_out_probes_and_leaves_training_mode():
    eng = _engine()
    eng.run_epoch(_batches(4))
    val = eng.validate(_batches(2, seed=5))
    assert {"val/top1", "val/rot_r2", "val/color_r2", "val/floor/top1"} <= set(val)
    assert eng.module.training and not eng.module.floor.backbone.training
    # xrecon's cross-view check: the reconstruction with the pair's other view and with another pair's
    assert val["val/recon_other_view_ratio"] == pytest.approx(val["val/recon_other_view"] / val["val/recon"])
    assert 0 < val["val/recon"] != val["val/recon_other_view"] > 0
    assert not any("recon" in k for k in _engine(_cfg("method.name=vicreg")).validate(_batches(1)))


def test_on_image_data_the_probes_regress_each_augmentation_family_the_pairs_vary(tmp_path):
    """Image sets: beside top-1, an online probe per augmentation family that is on (the pairs' aug_<family>
    targets), R² per dimension held out and on the untrained encoder, in the summary with a mean predictor of 0."""
    from rayeq.runinfo import RunInfo
    from rayeq.train.driver import TrainResult
    from rayeq.train.summary import summary

    cfg = _cfg("data.source=folder", "augment.rotation.enabled=true", "augment.blur.enabled=false")
    meta = {"format": "rayeq-images/1", "splits": {"train": 4 * BATCH, "val": BATCH}, "classes": ["a", "b", "c"],
            "mean": [0.5] * 3, "std": [0.25] * 3}  # fmt: skip
    info = RunInfo.from_meta(cfg, meta)
    assert info.regress == {"aug_rotation": 1, "aug_color": 4}  # blur and translation are off: no probe
    g = np.random.default_rng(0)

    def batches(n):
        for _ in range(n):
            yield {
                "view1": torch.from_numpy(g.integers(0, 256, (BATCH, 3, SIZE, SIZE), dtype=np.uint8)),
                "view2": torch.from_numpy(g.integers(0, 256, (BATCH, 3, SIZE, SIZE), dtype=np.uint8)),
                "label": torch.from_numpy(g.integers(0, 3, BATCH)),
                "aug_rotation": torch.from_numpy(g.normal(size=(BATCH, 1)).astype(np.float32)),
                "aug_color": torch.from_numpy(g.normal(size=(BATCH, 4)).astype(np.float32)),
            }

    torch.manual_seed(0)
    eng = Engine(cfg, info, "cpu")
    m = {**eng.run_epoch(batches(4)).metrics, **eng.validate(batches(1))}
    for split in ("train", "val", "val/floor"):
        assert {f"{split}/aug_rotation_r2_per_dim", f"{split}/aug_color_r2_per_dim", f"{split}/top1"} <= set(m)
    assert not any("blur" in k or "rot_r2" in k for k in m)
    from rayeq.train.probes import reported_metric_names

    names = reported_metric_names(three_d=False, has_val=True, floor=True, regress=info.regress)
    assert "val/aug_color_r2_per_dim" in names and set(names) <= set(m)  # what a sweep on image data may tune on
    text = summary(TrainResult(metrics=m, run_dir=tmp_path, checkpoint_path=None, seconds=1.0, track_repo=""), cfg)
    row = next(line for line in text.splitlines() if "val/aug_rotation_r2_per_dim" in line)
    key = "aug_rotation_r2_per_dim"
    assert row.split()[1:4] == [f"{m[f'val/{key}']:.4f}", f"{m[f'val/floor/{key}']:.4f}", "0.0000"]


def test_the_best_checkpoint_rule():
    assert score_attribute(True) == "val/top1" and score_attribute(False) == "train/top1"
    assert checkpoint_score({"val/top1": 0.3, "train/top1": 0.9}) == 0.3
    assert checkpoint_score({"train/top1": 0.9}) == 0.9 and checkpoint_score({}) == -1.0
