"""The run directory (rayeq/rundir.py): the one answer to "how many epochs are done", metrics.jsonl read back as
written, checkpoints found by name order, and the untrained baseline as a typed checkpoint."""

import json

import pytest
import torch

from rayeq.checkpoint import LoadedCheckpoint, TrainState
from rayeq.config import load_config
from rayeq.data.schema import DataError
from rayeq.rundir import RunDir, find_checkpoint, load_checkpoint


def _ckpt(run: RunDir, name: str, epoch: int, top1: float, cfg) -> None:
    d = run.path / name
    d.mkdir(parents=True)
    TrainState(model={}, epoch=epoch, step=epoch * 10, config=cfg.to_dict(), metrics={"val/top1": top1}).save(d)


def test_epochs_done_is_what_a_rerun_resumes_from(tmp_path):
    cfg = load_config(None, [f"train.storage_path={tmp_path}", "train.name=r"])
    run = RunDir.of(cfg)
    assert run.path == tmp_path.resolve() / "r" and run.epochs_done() == 0 and run.kept_epoch() is None
    _ckpt(run, "checkpoint_2026-01-01_00-00-01.000000", 1, 0.5, cfg)
    _ckpt(run, "checkpoint_2026-01-01_00-00-02.000000", 2, 0.3, cfg)
    assert run.epochs_done() == 2  # no record of Ray Train's yet: the latest checkpoint
    # Ray Train's record names the checkpoint it resumes from: a checkpoint written after it (a run stopped between
    # the two writes) is not resumed from, so it does not count
    snapshot = {"latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_2026-01-01_00-00-01.000000",
                                             "metrics": {"epoch": 1}}}  # fmt: skip
    (run.path / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    assert run.epochs_done() == 1 and run.kept_epoch() == 1
    assert run.kept_result()["checkpoint_dir_name"].endswith("00-00-01.000000")
    assert find_checkpoint(run.path).name.endswith("00-00-02.000000")  # latest by name
    assert find_checkpoint(run.path, "best").name.endswith("00-00-01.000000")  # highest val/top1
    loaded = load_checkpoint(run.path)
    assert loaded.state.epoch == 2 and loaded.state.step == 20 and loaded.run_dir == run.path


def test_metrics_lines_read_back_and_an_epoch_run_again_replaces_its_line(tmp_path):
    run = RunDir(tmp_path)
    assert run.metrics() == [] and run.last_metrics() == {}
    for epoch in (1, 2, 3):
        run.record_epoch({"epoch": epoch, "train/total": float(epoch)})
    run.record_epoch({"epoch": 2, "train/total": 9.0})  # epoch 2 again after a restart: 2 and 3 replaced
    assert [(m["epoch"], m["train/total"]) for m in run.metrics()] == [(1, 1.0), (2, 9.0)]
    assert run.last_metrics()["train/total"] == 9.0
    run.record_workers({"from_epoch": 2, "workers": [{"rank": 0}]})
    assert json.loads(run.workers_file.read_text())["from_epoch"] == 2


def test_a_directory_without_checkpoints_is_named(tmp_path):
    with pytest.raises(DataError, match="has no checkpoint_"):
        find_checkpoint(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        find_checkpoint(tmp_path / "nope")


def test_the_untrained_baseline_is_a_typed_checkpoint_drawn_from_the_seed(fast_cfg, tmp_path):
    cfg = fast_cfg("train.seed=3")
    data = {"mean": [0.5] * 3, "std": [0.25] * 3, "num_classes": 4}
    a, b = LoadedCheckpoint.untrained(cfg, data, tmp_path), LoadedCheckpoint.untrained(cfg, data, tmp_path)
    assert isinstance(a.state, TrainState) and a.state.epoch == 0 and a.num_classes == 4
    assert a.norm_stats(tmp_path) == ([0.5] * 3, [0.25] * 3)
    assert all(torch.equal(v, b.state.model[k]) for k, v in a.state.model.items())  # the same seed, the same weights
    other = LoadedCheckpoint.untrained(fast_cfg("train.seed=4"), data, tmp_path)
    assert not all(torch.equal(v, other.state.model[k]) for k, v in a.state.model.items() if v.is_floating_point())
    assert a.encoder().encode(torch.zeros(2, 3, 32, 32)).shape[0] == 2
