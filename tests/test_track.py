"""The tracker interface: TensorBoard (the default without the Aim extra) logs what Aim logs, a resumed run goes on
in its own directory, a new run never writes into another's; `auto` picks Aim only where it is installed."""

import dataclasses
import importlib.util

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rayeq.config import ConfigError, load_config
from rayeq.track import MissingRunError, backend_of, check_backend, look_at_line, open_tracker, resolve_track_repo


def _events(path):
    return EventAccumulator(str(path), size_guidance={"images": 0, "scalars": 0, "tensors": 0}).Reload()


def test_tensorboard_logs_the_config_the_metrics_and_the_images(tmp_path):
    t = open_tracker("tensorboard", str(tmp_path), "study", name="vicreg-s0")
    assert t.run_id == "study/vicreg-s0"
    t.log_params({"train": {"name": "vicreg-s0"}, "loss": {"recon_weight": 0.5}})
    t.log_metrics({"train/total": 2.5, "val/top1": 0.1}, step=10, epoch=1)
    t.log_metrics({"train/total": 2.0, "val/top1": 0.2}, step=20, epoch=2)
    t.log_metrics({"images_per_sec": 99.0}, step=20, epoch=2)  # no prefix: the subset's
    t.log_image("views", np.full((8, 12, 3), 200, np.uint8), step=20, epoch=2)
    t.close()
    ev = _events(tmp_path / "study" / "vicreg-s0")
    assert [(e.step, e.value) for e in ev.Scalars("train/total")] == [(10, 2.5), (20, 2.0)]
    assert [e.value for e in ev.Scalars("val/top1")] == pytest.approx([0.1, 0.2])
    assert [e.value for e in ev.Scalars("train/images_per_sec")] == [99.0]
    (img,) = ev.Images("views")
    assert (img.step, img.width, img.height) == (20, 12, 8)
    assert "recon_weight: 0.5" in ev.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()


def test_a_resumed_run_goes_on_in_its_directory_and_a_new_one_never_shares_it(tmp_path):
    first = open_tracker("tensorboard", str(tmp_path), "run", name="run")
    assert first.run_id == "run"  # the experiment level is left out when it is the run's own name
    first.log_metrics({"train/total": 3.0}, step=1)
    first.close()
    resumed = open_tracker("tensorboard", str(tmp_path), "run", run_id="run")
    resumed.log_metrics({"train/total": 2.0}, step=2)
    resumed.close()
    assert [e.value for e in _events(tmp_path / "run").Scalars("train/total")] == [3.0, 2.0]
    other = open_tracker("tensorboard", str(tmp_path), "run", name="run")  # a new run of the same name (--force)
    assert other.run_id == "run-2"
    other.close()
    with pytest.raises(MissingRunError, match="gone is not in"):
        open_tracker("tensorboard", str(tmp_path), "run", run_id="gone", must_exist=True)
    with pytest.warns(UserWarning, match="logging to a new run"):
        fresh = open_tracker("tensorboard", str(tmp_path), "x", run_id="gone")
    assert fresh.run_id == "x"
    fresh.close()


def test_auto_is_aim_only_where_aim_is_installed(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, [])
    assert cfg.track.backend == "auto" and cfg.track.repo is None
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "aim" else real(name, *a))
    assert backend_of(cfg) == "tensorboard" and resolve_track_repo(cfg) == str(tmp_path / "tensorboard")
    assert "tensorboard --logdir" in look_at_line("tensorboard", "tb") and "--host 127.0.0.1" in look_at_line(
        "tensorboard", "tb"
    )
    with pytest.raises(ConfigError, match=r"pip install 'rayeq\[aim\]'"):
        check_backend(load_config(None, ["track.backend=aim"]))
    with pytest.raises(ConfigError, match="is an Aim server, but the tracker is tensorboard"):
        check_backend(load_config(None, ["track.repo=aim://10.0.0.1:53800"]))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "aim" else real(name, *a))
    assert backend_of(cfg) == "aim" and resolve_track_repo(cfg) == str(tmp_path / "aim")
    check_backend(load_config(None, ["track.backend=aim"]))


def test_rayeq_eval_logs_to_the_tensorboard_run_it_evaluates(tmp_path):
    """`rayeq eval` adds eval/* and eval_floor/* to the run's own tracker run, named in the console; a run tracked
    elsewhere (a moved repo) is named as such and the results stay in the JSON."""
    from rayeq.checkpoint import LoadedCheckpoint, TrainState
    from rayeq.eval.output import log_to_tracker as _log_to_tracker

    first = open_tracker("tensorboard", str(tmp_path / "tb"), "r", name="r")
    first.log_metrics({"train/total": 1.0}, step=30)
    first.close()
    cfg = load_config(None, ["train.name=r"])
    state = TrainState(model={}, config=cfg.to_dict(), tracker_run_id="r", track_backend="tensorboard",
                       track_repo=str(tmp_path / "tb"), step=30, epoch=3)  # fmt: skip
    said = []
    loaded = LoadedCheckpoint(tmp_path, tmp_path, cfg, state)
    _log_to_tracker(loaded, {"color/full/r2": 0.9}, {"random_init": {"color/full/r2": 0.7}}, said.append)
    assert said == ["  logged to TensorBoard run r"], said
    ev = _events(tmp_path / "tb" / "r")
    assert [(e.step, round(e.value, 4)) for e in ev.Scalars("eval/color/full/r2")] == [(30, 0.9)]
    assert [round(e.value, 4) for e in ev.Scalars("eval_floor/random_init/color/full/r2")] == [0.7]
    said.clear()
    moved = LoadedCheckpoint(tmp_path, tmp_path, cfg, dataclasses.replace(state, track_repo=str(tmp_path / "gone")))
    _log_to_tracker(moved, {"color/full/r2": 0.9}, {}, said.append)
    assert said and said[0].startswith("  (could not log to TensorBoard: TensorBoard run r is not in"), said
