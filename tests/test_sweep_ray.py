"""Sweeps on the shared local Ray instance: Tune + Optuna trials that each run a TorchTrainer, the
results files, one Aim run per trial, --resume without re-running finished trials, and the same
sweep submitted with `ray job submit`."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rayeq.config import ConfigError, load_config
from rayeq.sweep.run import run_sweep

from conftest import indexed_aim_repo


@pytest.fixture(scope="module")
def sweep_data(tmp_path_factory):
    from rayeq.data.make.synth3d import generate

    out = tmp_path_factory.mktemp("sweepdata") / "set"
    generate(out, classes=3, objects_per_class=10, views=4, size=32, seed=3, workers=1, log=lambda *a: None)
    return out


def _sweep_file(tmp: Path, data: Path, name: str = "t", samples: int = 2) -> Path:
    spec = {
        "name": name,
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
                "train.epochs=2",
                "train.val_every_epochs=1",
                "train.log_every_steps=100",
                "track.image_every_epochs=5",
                f"track.repo={tmp / 'aim'}",
            ],
        },  # fmt: skip
        "space": {"loss.recon_weight": {"type": "loguniform", "low": 0.1, "high": 10}},
        "objectives": [{"metric": "val/top1", "mode": "max"}, {"metric": "val/color_r2", "mode": "max"}],
        "scheduler": {"metric": "val/color_r2", "grace_period": 1},
        "num_samples": samples,
        "resources": {"workers": 1, "cpus_per_worker": 0.4},
        "storage_path": str(tmp / "sweeps"),
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _epochs(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished_sweep(ray_session, sweep_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    path = _sweep_file(tmp, sweep_data)
    logs = []
    out = run_sweep(path, log=logs.append)
    return tmp, path, out, logs


def test_sweep_writes_results_best_config_and_pareto(finished_sweep):
    tmp, _, out, logs = finished_sweep
    d = tmp / "sweeps" / "t"
    with open(d / "sweep_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and not out["interrupted"]
    for r in rows:
        assert r["trial"].startswith("t-") and r["status"] in ("complete", "stopped early")
        assert 0.1 <= float(r["loss.recon_weight"]) <= 10
        assert 0 <= float(r["val/top1"]) <= 1
        assert _epochs(Path(r["run_dir"])) == list(range(1, int(r["epochs"]) + 1))  # each epoch once
    assert any(r["status"] == "complete" for r in rows)  # ASHA keeps the best at each rung
    best = load_config(d / "best_config.yaml")
    assert best.loss.recon_weight == pytest.approx(float(out["best"]["loss.recon_weight"]))
    assert best.train.epochs == 2 and best.data.image_size == 32
    assert (d / "pareto.png").stat().st_size > 5000 and (d / "pareto.csv").is_file()
    assert (d / "optuna.db").stat().st_size > 0 and (d / "sweep.yaml").is_file()
    assert any("sweep t: 2 trials" in line for line in logs)


@pytest.mark.extras
def test_each_trial_is_an_aim_run_of_the_sweeps_experiment(finished_sweep):
    tmp, _, out, _ = finished_sweep
    repo = indexed_aim_repo(tmp / "aim")
    runs = [r for r in repo.iter_runs() if r.experiment == "t"]
    assert sorted(r.name for r in runs) == sorted(row["trial"] for row in out["rows"])
    for run in runs:
        params = run["hparams"]["sweep"]["params"]
        assert set(params) == {"loss.recon_weight"}
        assert run["hparams"]["loss"]["recon_weight"] == pytest.approx(params["loss.recon_weight"])
        assert "val/top1" in {m.name for m in run.metrics()}


def test_rerun_is_refused_and_resume_keeps_finished_trials(finished_sweep, sweep_data):
    tmp, path, out, _ = finished_sweep
    before = {r["trial"]: _epochs(Path(r["run_dir"])) for r in out["rows"]}
    with pytest.raises(ConfigError, match="--resume"):
        run_sweep(path, log=lambda *a: None)
    again = run_sweep(path, resume=True, log=lambda *a: None)
    assert {r["trial"] for r in again["rows"]} == set(before)  # no new trials, none re-run
    assert {r["trial"]: _epochs(Path(r["run_dir"])) for r in again["rows"]} == before
    changed = yaml.safe_load(path.read_text())
    changed["space"]["loss.recon_weight"]["high"] = 5
    path.write_text(yaml.safe_dump(changed))
    with pytest.raises(ConfigError, match="different sweep"):
        run_sweep(path, resume=True, log=lambda *a: None)
    with pytest.raises(ConfigError, match="no sweep"):
        run_sweep(_sweep_file(tmp, sweep_data, name="fresh"), resume=True, log=lambda *a: None)


@pytest.mark.full  # job submission: the second tier
def test_ray_job_submit_runs_the_sweep(ray_session, sweep_data, tmp_path):
    """`ray job submit --working-dir . -- rayeq sweep ...` against the session's own head node (stopped and resumed
    on a multi-node cluster: tests/test_multinode.py)."""
    import ray

    dashboard = ray._private.worker.get_dashboard_url()
    assert dashboard, "the session's Ray instance has no dashboard (needed for jobs)"
    work = tmp_path / "project"
    work.mkdir()
    spec = _sweep_file(work, sweep_data, name="job", samples=1)
    spec.rename(work / "job.yaml")
    env = {**os.environ, "RAY_AUTH_MODE": "token"}  # Ray >= 2.59 heads use token auth
    ray_cli = Path(sys.executable).with_name("ray")
    cmd = [str(ray_cli), "job", "submit", "--address", f"http://{dashboard}", "--working-dir", str(work), "--",
           sys.executable, "-m", "rayeq.cli", "sweep", "job.yaml", "--storage-path", str(tmp_path / "out")]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    # the verdict is on stdout; stderr carries Ray's warnings, which grow on a loaded machine (the last 3,000
    # characters of both together once lost the verdict behind them: the flaky failure this test had)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "succeeded" in proc.stdout, proc.stdout[-4000:]
    with open(tmp_path / "out" / "job" / "sweep_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["status"] == "complete"
