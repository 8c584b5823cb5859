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
    # on the small built-in set, rendered into the cache (not the standard set, which takes minutes more)
    assert cfg.data.path == str(tiny_builtin / "cache" / builtin.SMALL_NAME)
    assert (tiny_builtin / "cache" / builtin.SMALL_NAME / "meta.json").is_file()
    assert not (tiny_builtin / "cache" / builtin.DATA_NAME).exists()
    assert cfg.eval.protocols == ["linear", "rotation", "color"]  # what the closing evaluation measures
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
    from rayeq.train.driver import TrainResult
    from rayeq.train.summary import summary

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


def test_the_closing_table_gives_each_figure_its_margin_over_the_higher_floor():
    result = {
        "metrics": {"linear/full/top1": 0.20, "color/full/r2": 0.70, "rotation/full/r2": 0.15},
        "floors": {
            "random_init": {"linear/full/top1": 0.12, "color/full/r2": 0.45, "rotation/full/r2": -0.3},
            "mean_predictor": {"linear/full/top1": 0.05, "color/full/r2": 0.0, "rotation/full/r2": 0.23},
        },
    }
    rows = {line.split("(")[0].strip(): line.split(")")[-1].split() for line in qs.closing_table(result).splitlines()
            if line.strip().startswith(("linear", "colour", "relative"))}  # fmt: skip
    assert rows["linear top-1"] == ["0.2000", "0.1200", "0.0500", "+0.0800"]  # over the untrained encoder
    assert rows["colour change R²"] == ["0.7000", "0.4500", "0.0000", "+0.2500"]
    # under the mean predictor (the higher floor here): a negative margin, marked
    assert rows["relative rotation R²"] == ["0.1500", "-0.3000", "0.2300", "-0.0800", "▼"]
    assert "measured under eval.preset=rayeq" in qs.closing_table(result)  # the protocol it was measured under
    assert "eval.preset=sie" in qs.closing_table({**result, "preset": "sie"})


def test_builtin_sets_are_named(tiny_builtin):
    with pytest.raises(ValueError, match="no built-in set 'huge'"):
        builtin.builtin_data_dir("huge")
    assert builtin.builtin_data_dir("small").name == builtin.SMALL_NAME != builtin.DATA_NAME


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


def test_the_quickstart_trains_then_evaluates_and_closes_with_the_evaluations_figures(
    tiny_builtin, ray_session, monkeypatch
):
    """The whole quickstart on a tiny small-set (3 classes x 10 objects), shortened to 3 steps of 8 pairs: it trains
    on Ray, evaluates the frozen encoder and an untrained copy on the held-out objects, writes the evaluation beside
    the checkpoint and closes with the evaluation's figures and margins (not the online probes')."""
    import json

    shorter = ["train.steps_per_epoch=3", "train.batch_size=8", "train.val_steps=1", "model.projector=[64,64]",
               "track.backend=tensorboard"]  # fmt: skip
    monkeypatch.setattr(qs, "OVERRIDES", [*qs.OVERRIDES, *shorter])
    said = []
    res = qs.run_quickstart(epochs=1, storage_path=str(tiny_builtin / "runs"), track_repo=str(tiny_builtin / "tb"),
                            log=said.append)  # fmt: skip
    text = "\n".join(map(str, said))
    evals = list(res.run_dir.glob("checkpoint_*/eval/results-fast.json"))
    assert len(evals) == 1, text
    result = json.loads(evals[0].read_text())
    assert result["protocols"] == ["linear", "rotation", "color"] and result["epoch"] == 1
    closing = text.split("closing evaluation", 1)[1]
    for key, title in qs.CLOSING_ROWS:
        row = next(line for line in closing.splitlines() if line.strip().startswith(title))
        value, untrained = result["metrics"][key], result["floors"]["random_init"][key]
        margin = value - max(untrained, result["floors"]["mean_predictor"][key])
        assert row.split(")")[-1].split()[:2] == [f"{value:.4f}", f"{untrained:.4f}"], row
        assert f"{margin:+.4f}" in row and row.endswith("▼") == (margin <= 0), row
    assert "quickstart finished in" in said[-1]
