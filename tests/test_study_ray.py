"""A study on the shared local Ray instance: 2 arms x 1 seed trained through Ray Tune trials that each
run a TorchTrainer and then `rayeq eval`; the results files; and --resume redoing nothing finished
(an evaluation lost after training is redone without training again)."""

import csv
import json

import pytest
import yaml

from rayeq.config import ConfigError
from rayeq.study.run import run_study

from conftest import indexed_aim_repo

pytestmark = pytest.mark.full  # studies end to end: the second tier (conftest.py, docs/TESTING.md)


@pytest.fixture(scope="module")
def study_data(tmp_path_factory):
    from rayeq.data.make.synth3d import generate

    out = tmp_path_factory.mktemp("studydata") / "set"
    generate(out, classes=3, objects_per_class=10, views=4, size=32, seed=5, workers=1, log=lambda *a: None)
    return out


def _study_file(tmp, data, file="mini.yaml", **changes):
    spec = {
        "name": "mini",
        "base": {
            "config": None,
            "overrides": [
                f"data.path={data}",
                "data.image_size=32",
                "data.num_actors=1",
                "data.cpus_per_actor=0.3",
                "model.stem=compact",
                "model.projector=[64,64]",
                "method.decoder.width=16",
                "optim.scale_lr=false",
                "optim.warmup_epochs=0",
                "train.batch_size=8",
                "train.epochs=1",
                "train.log_every_steps=100",
                "track.image_every_epochs=5",
                f"track.repo={tmp / 'aim'}",
                "eval.fast.min_steps=20",
                "eval.pairs_per_object=2",
            ],
        },  # fmt: skip
        "arms": {"vicreg": {"method.name": "vicreg"}, "xrecon": {"method.name": "xrecon"}},
        "seeds": [3],
        "eval": {"protocols": ["linear", "rotation", "color"], "fast": True},
        "summary": {"baseline": "vicreg"},
        "resources": {"workers": 1, "cpus_per_worker": 0.4},
        "storage_path": str(tmp / "studies"),
    }
    spec.update(changes)
    path = tmp / file
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def finished_study(ray_session, study_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    path = _study_file(tmp, study_data)
    logs = []
    out = run_study(path, log=logs.append)
    return tmp, path, out, logs


def test_a_study_trains_evaluates_and_summarises_every_run(finished_study):
    tmp, _, out, logs = finished_study
    d = tmp / "studies" / "mini"
    assert out["complete"] and out["study_dir"] == str(d)
    with open(d / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["arm"], r["seed"], r["status"]) for r in rows] == [
        ("vicreg-s3", "vicreg", "3", "done"),
        ("xrecon-s3", "xrecon", "3", "done"),
    ]
    for r in rows:
        for m in ("rotation/full/r2", "color/full/r2", "linear/full/top1", "random_init/rotation/full/r2"):
            assert r[m] not in ("", None), (r["run"], m)
        res = json.loads((d / "evals" / f"{r['run']}.json").read_text())
        assert res["arm"] == r["arm"] and res["epoch"] == 1 and res["run_dir"] == str(d / "runs" / r["run"])
        assert set(res["floors"]) == {"random_init", "mean_predictor"}
        cfg = yaml.safe_load((d / "runs" / r["run"] / "config.yaml").read_text())
        assert cfg["train"]["seed"] == 3 and cfg["method"]["name"] == r["arm"] and cfg["track"]["experiment"] == "mini"
    # xrecon's cross-view check reaches the table; vicreg has none
    xr = next(r for r in rows if r["arm"] == "xrecon")
    assert float(xr["val/recon"]) > 0 and float(xr["val/recon_other_view_ratio"]) > 0
    assert next(r for r in rows if r["arm"] == "vicreg")["val/recon"] == ""
    summary = json.loads((d / "summary.json").read_text())
    assert [g["group"] for g in summary["groups"]] == ["vicreg", "xrecon"] and summary["baseline"] == "vicreg"
    assert summary["floors"]["random_init"]["rotation/full/r2"] == pytest.approx(
        float(rows[0]["random_init/rotation/full/r2"])
    )
    md = (d / "summary.md").read_text()
    assert "| vicreg (baseline) | 1 |" in md and "untrained encoder (floor)" in md
    assert (d / "summary.png").stat().st_size > 10_000
    assert any("study mini: 2 runs" in line for line in logs)


@pytest.mark.extras
def test_every_run_is_an_aim_run_of_the_studys_experiment_with_its_arm_and_eval_metrics(finished_study):
    """Aim's explorers can group the study by run.hparams.study.arm; the eval scores sit beside training's."""
    tmp, _, _, _ = finished_study
    repo = indexed_aim_repo(tmp / "aim")
    runs = {r.name: r for r in repo.iter_runs() if r.experiment == "mini"}
    assert sorted(runs) == ["vicreg-s3", "xrecon-s3"]
    for name, run in runs.items():
        assert run["hparams"]["study"] == {"name": "mini", "arm": name[:-3], "setting": "", "seed": 3}
        names = {m.name for m in run.metrics()}
        assert {"val/top1", "eval/rotation/full/r2", "eval_floor/random_init/linear/full/top1"} <= names, names


def test_rerunning_a_study_needs_resume_and_resume_redoes_nothing_finished(finished_study):
    tmp, path, _, _ = finished_study
    d = tmp / "studies" / "mini"
    with pytest.raises(ConfigError, match="--resume"):
        run_study(path, log=lambda *a: None)
    evals = {p.name: p.stat().st_mtime_ns for p in (d / "evals").glob("*.json")}
    ckpts = sorted(p.name for p in (d / "runs").glob("*/checkpoint_*"))
    logs = []
    out = run_study(path, resume=True, log=logs.append)
    assert out["complete"] and any("2 already evaluated" in line for line in logs)
    assert not any("to do" in line for line in logs)  # no Tune session at all
    assert {p.name: p.stat().st_mtime_ns for p in (d / "evals").glob("*.json")} == evals

    # an evaluation lost after its training (interrupted between the two): only that one is redone,
    # from the finished training's checkpoint
    (d / "evals" / "xrecon-s3.json").unlink()
    logs = []
    out = run_study(path, resume=True, log=logs.append)
    assert out["complete"] and any("1 run(s) to do" in line for line in logs)
    assert sorted(p.name for p in (d / "runs").glob("*/checkpoint_*")) == ckpts  # nothing trained again
    assert (d / "evals" / "vicreg-s3.json").stat().st_mtime_ns == evals["vicreg-s3.json"]
    assert json.loads((d / "evals" / "xrecon-s3.json").read_text())["train_seconds"] < 30


def test_resume_refuses_a_changed_study(finished_study, study_data):
    tmp, _, _, _ = finished_study
    changed = _study_file(tmp, study_data, file="mini-changed.yaml", seeds=[3, 4])  # mini.yaml stays the study run
    with pytest.raises(ConfigError, match="different study file"):
        run_study(changed, resume=True, log=lambda *a: None)


def test_summary_only_summarises_what_was_evaluated_and_trains_nothing(finished_study, study_data):
    """`rayeq study FILE --summary-only` (what dev/gpu/run does when its deadline stops a study): the runs evaluated so
    far are summarised, the others marked, nothing trains; a study that never started is refused."""
    tmp, path, _, _ = finished_study
    d = tmp / "studies" / "mini"
    ev = d / "evals" / "xrecon-s3.json"
    aside = ev.with_suffix(".aside")
    ev.rename(aside)
    try:
        logs = []
        out = run_study(path, summary_only=True, log=logs.append)
        assert not out["complete"] and not any("to do" in line for line in logs)
        assert any("1 already evaluated" in line for line in logs)  # the runs with an evaluation, not all of them
        with open(d / "results.csv") as f:
            status = {r["run"]: r["status"] for r in csv.DictReader(f)}
        assert status["vicreg-s3"] == "done" and status["xrecon-s3"].startswith("trained 1 epoch(s), not evaluated")
        assert not ev.exists()
    finally:
        aside.rename(ev)
    (tmp / "none").mkdir()
    with pytest.raises(ConfigError, match="--summary-only: .* holds no study 'mini' yet"):
        run_study(_study_file(tmp / "none", study_data), summary_only=True, log=lambda *a: None)
