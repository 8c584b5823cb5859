"""The quickstart's wiring, without its few minutes of training (that is checked by hand and in
the closing note): built-in data built once and reused, and the config it trains with."""

import pytest

import rayeq.quickstart as qs
from rayeq.data.pipeline import check_data
from rayeq.train.driver import check_resources


def test_builtin_data_is_built_once_then_reused(tiny_builtin):
    logs = []
    path = qs.ensure_data(log=logs.append)
    assert path == tiny_builtin / "cache" / qs.DATA_NAME and (path / "meta.json").is_file()
    assert any("building" in m for m in logs)
    before = sorted(p.stat().st_mtime_ns for p in path.iterdir())
    logs.clear()
    assert qs.ensure_data(log=logs.append) == path
    assert any("reusing" in m for m in logs)
    assert sorted(p.stat().st_mtime_ns for p in path.iterdir()) == before
    assert not list(path.parent.glob("*.tmp-*"))  # rendered aside, then renamed into place


def test_synth3d_without_a_path_uses_the_builtin_set(tiny_builtin):
    from rayeq.config import load_config

    meta, shards = check_data(load_config(None, ["data.source=synth3d"]))
    assert meta["source"] == "synth3d" and shards[0].parent == tiny_builtin / "cache" / qs.DATA_NAME


def test_quickstart_trains_xrecon_with_two_cpu_workers(tiny_builtin, monkeypatch):
    seen = {}

    def fake_run_training(cfg, log=print, **kw):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr("rayeq.train.driver.run_training", fake_run_training)
    with pytest.raises(SystemExit):
        qs.run_quickstart(storage_path=str(tiny_builtin / "runs"), aim_repo=str(tiny_builtin / "aim"), log=lambda *a: 0)
    cfg = seen["cfg"]
    assert cfg.method.name == "xrecon" and cfg.train.num_workers == 2 and not cfg.train.use_gpu
    assert cfg.train.name.startswith("quickstart-")  # a new run each time: nothing earlier is overwritten
    assert cfg.track.backend == "aim" and cfg.track.repo.endswith("aim")

    class TwoCores:
        def cluster_resources(self):
            return {"CPU": 2.0}

    check_resources(cfg, TwoCores())  # fits a 2-core machine with room for the data actor
