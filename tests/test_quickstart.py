"""The quickstart's wiring, without its few minutes of training (that is checked by hand and in
the closing note): built-in data built once and reused, and the config it trains with."""

import pytest

import rayeq.data.builtin as builtin
import rayeq.quickstart as qs
from rayeq.cluster import check_resources
from rayeq.data.feed.pipeline import check_data


def test_builtin_data_is_built_once_then_reused(tiny_builtin):
    logs = []
    path = builtin.ensure_data(log=logs.append)
    assert path == tiny_builtin / "cache" / builtin.DATA_NAME and (path / "meta.json").is_file()
    assert any("building" in m for m in logs)
    before = sorted(p.stat().st_mtime_ns for p in path.iterdir())
    logs.clear()
    assert builtin.ensure_data(log=logs.append) == path
    assert logs == []  # this process built it: nothing more to say
    builtin._announced.clear()  # a new process
    for _ in range(3):  # a run looks the set up several times (checks, training, validation): said once
        assert builtin.ensure_data(log=logs.append) == path
    assert len(logs) == 1 and "reusing" in logs[0], logs
    assert sorted(p.stat().st_mtime_ns for p in path.iterdir()) == before
    assert not list(path.parent.glob("*.tmp-*"))  # rendered aside, then renamed into place


def test_synth3d_without_a_path_uses_the_builtin_set(tiny_builtin):
    from rayeq.config import load_config

    meta, shards = check_data(load_config(None, ["data.source=synth3d"]))
    assert meta["source"] == "synth3d" and shards[0].parent == tiny_builtin / "cache" / builtin.DATA_NAME


def test_quickstart_trains_xrecon_with_two_cpu_workers(tiny_builtin, monkeypatch):
    seen = {}

    def fake_run_training(cfg, log=print, **kw):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr("rayeq.train.driver.run_training", fake_run_training)
    with pytest.raises(SystemExit):
        qs.run_quickstart(
            storage_path=str(tiny_builtin / "runs"), track_repo=str(tiny_builtin / "tr"), log=lambda *a: 0
        )
    cfg = seen["cfg"]
    assert cfg.method.name == "xrecon" and cfg.train.num_workers == 2 and not cfg.train.use_gpu
    assert cfg.train.name.startswith("quickstart-")  # a new run each time: nothing earlier is overwritten
    assert cfg.track.backend == "auto" and cfg.track.repo.endswith("tr")  # Aim where installed, else TensorBoard

    class TwoCores:
        def cluster_resources(self):
            return {"CPU": 2.0}

    check_resources(cfg, TwoCores())  # fits a 2-core machine with room for the data actor


def test_summary_shows_the_probes_beside_their_floors(tmp_path):
    """The closing summary: each held-out probe metric beside the untrained encoder's and the mean
    predictor's, marked when it does not beat them."""
    from rayeq.config import load_config
    from rayeq.train.driver import TrainResult, summary

    m = {"epoch": 4, "val/epoch": 4, "train/total": 1.5, "val/top1": 0.30, "val/floor/top1": 0.10,
         "val/rot_r2": 0.20, "val/floor/rot_r2": 0.22, "val/rot_r2_mean_predictor": 0.24,
         "val/rot_r2_per_dim": 0.05, "val/floor/rot_r2_per_dim": -0.2,
         "val/color_r2": 0.93, "val/floor/color_r2": 0.95, "val/color_r2_mean_predictor": 0.0}  # fmt: skip
    cfg = load_config(None, ["track.backend=none", "train.name=x"])
    text = summary(TrainResult(tmp_path, m, None, 10.0, "aim"), cfg)
    rows = {line.split()[0]: line for line in text.splitlines() if line.strip().startswith("val/")}
    assert rows["val/top1"].split()[1:3] == ["0.3000", "0.1000"] and "▼" not in rows["val/top1"]
    assert rows["val/rot_r2"].split()[1:4] == ["0.2000", "0.2200", "0.2400"] and rows["val/rot_r2"].endswith("▼")
    assert rows["val/rot_r2_per_dim"].split()[1:4] == ["0.0500", "-0.2000", "0.0000"]
    assert "▼" not in rows["val/rot_r2_per_dim"]
    assert rows["val/color_r2"].endswith("▼")  # below the untrained encoder: colour was thrown away
    assert "untrained" in text


def test_a_cached_set_made_with_other_settings_is_kept_aside_and_rebuilt(tiny_builtin, monkeypatch):
    path = builtin.ensure_data(log=lambda *a: 0)
    monkeypatch.setattr(builtin, "DATA", {**builtin.DATA, "views": 4})  # e.g. a newer rayeq's built-in set
    logs = []
    assert builtin.ensure_data(log=logs.append) == path
    # the console says why it renders again, and where the old copy went
    assert any("building" in m and "other settings: views 3 (wanted 4)" in m for m in logs), logs
    assert any("kept aside as" in m for m in logs), logs
    import json

    assert json.loads((path / "meta.json").read_text())["views_per_object"] == 4
    aside = list(path.parent.glob(f"{path.name}.broken-*"))
    assert len(aside) == 1 and json.loads((aside[0] / "meta.json").read_text())["views_per_object"] == 3
