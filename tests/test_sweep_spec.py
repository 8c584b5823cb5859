"""Sweep files are checked before any trial starts: unknown keys, empty ranges, values the config
refuses, metrics training never reports, resources no node holds; and the result helpers."""

import csv

import pytest
import yaml

from rayeq.campaign.run import check_cluster, trial_footprint
from rayeq.campaign.spec import base_config
from rayeq.config import ConfigError, load_config
from rayeq.sweep.run import pareto_front, write_results
from rayeq.sweep.spec import check_metrics, check_space, load_sweep
from rayeq.train.probes import reported_metric_names

REPORTED = reported_metric_names(three_d=True, has_val=True)


def _sweep(tmp_path, **changes):
    spec = {
        "name": "t",
        "base": {"config": None, "overrides": ["train.epochs=3"]},
        "space": {"loss.recon_weight": {"type": "loguniform", "low": 0.1, "high": 10}},
        "objectives": [{"metric": "val/top1", "mode": "max"}],
        "scheduler": {"metric": "val/top1", "grace_period": 1},
        "num_samples": 2,
    }
    spec.update(changes)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _check(path):
    spec = load_sweep(path)
    base, _ = base_config(spec)
    check_space(spec, base)
    check_metrics(spec, base, REPORTED)
    return spec, base


def test_shipped_sweeps_pass_every_check_that_needs_no_cluster():
    from pathlib import Path

    files = sorted(Path("sweeps").glob("*.yaml"))
    assert {f.stem for f in files} >= {"smoke", "loss_weights", "augment_strength", "xattn_ablation"}
    for f in files:
        spec, base = _check(f)
        assert spec.num_samples >= 2 and base.train.epochs >= 2, f


def test_a_valid_sweep_loads(tmp_path):
    spec, base = _check(_sweep(tmp_path))
    assert spec.space["loss.recon_weight"].probes() == [0.1, 10, 5.05]
    assert base.train.epochs == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"space": {"loss.recon_wieght": {"type": "uniform", "low": 0, "high": 1}}}, "recon_wieght"),
        ({"space": {"loss.recon_weight": {"type": "uniform", "low": 2, "high": 1}}}, "empty range"),
        ({"space": {"loss.recon_weight": {"type": "uniform", "low": 1, "high": 1}}}, "empty range"),
        ({"space": {"loss.recon_weight": {"type": "loguniform", "low": 0, "high": 1}}}, "low > 0"),
        ({"space": {"model.inv_dim": {"type": "choice", "values": []}}}, "non-empty"),
        ({"space": {"loss.recon_weight": {"type": "uniform", "low": -1, "high": 1}}}, "loss.recon_weight"),
        ({"space": {"model.inv_dim": {"type": "int", "low": 64, "high": 9999}}}, "model.inv_dim"),
        ({"space": {"train.name": {"type": "choice", "values": ["a", "b"]}}}, "set by the sweep"),
        ({"space": {"loss.recon_weight": {"type": "gaussian", "low": 0, "high": 1}}}, "space.loss.recon_weight"),
        ({"objectives": [{"metric": "val/rotation_r2", "mode": "max"}]}, "never reports"),
        ({"objectives": [{"metric": "train/total", "mode": "min"}]}, "not the SSL loss"),
        ({"objectives": []}, "objectives"),
        ({"scheduler": {"metric": "val/acc"}}, "scheduler.metric"),
        ({"scheduler": {"metric": "val/top1", "grace_period": 3}}, "grace_period"),
        ({"num_samples": 0}, "num_samples"),
        ({"space_": {}}, "space_: unknown key"),
        ({"base": {"config": "configs/nope.yaml"}}, "nope.yaml"),
        ({"base": {"overrides": ["optim.lr=-1"]}}, "optim.lr"),
    ],
)
def test_bad_sweeps_are_refused_naming_the_culprit(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        _check(_sweep(tmp_path, **change))


class _FakeRay:
    def __init__(self, nodes):
        self._nodes = nodes

    def nodes(self):
        return [{"Alive": True, "Resources": n} for n in self._nodes]

    def cluster_resources(self):
        out = {}
        for n in self._nodes:
            for k, v in n.items():
                out[k] = out.get(k, 0) + v
        return out


def test_concurrency_follows_the_cluster_and_impossible_resources_are_refused(tmp_path):
    spec, base = _check(_sweep(tmp_path, resources={"workers": 1, "cpus_per_worker": 0.4}, num_samples=8))
    # the worker, the pair-maker actor, the validation actor, the trainable (the pipelines have no read tasks)
    assert trial_footprint(base)["CPU"] == pytest.approx(0.4 + base.data.cpus_per_actor + 0.1 + 0.05)
    assert check_cluster(spec, base, _FakeRay([{"CPU": 2}])) == int(2 / trial_footprint(base)["CPU"])
    assert check_cluster(spec, base, _FakeRay([{"CPU": 16}, {"CPU": 16}])) == 8  # capped by num_samples
    gpu, gbase = _check(_sweep(tmp_path, resources={"workers": 2, "cpus_per_worker": 1, "gpus_per_worker": 1}))
    with pytest.raises(ConfigError, match="no node"):
        check_cluster(gpu, gbase, _FakeRay([{"CPU": 8}]))
    assert check_cluster(gpu, gbase, _FakeRay([{"CPU": 8, "GPU": 2}])) == 1
    assert check_cluster(gpu, gbase, _FakeRay([{"CPU": 8}]), autoscaling=True) == 2  # GPU nodes come on demand
    big, bbase = _check(_sweep(tmp_path, resources={"workers": 4, "cpus_per_worker": 1}))
    with pytest.raises(ConfigError, match="more than the cluster"):
        check_cluster(big, bbase, _FakeRay([{"CPU": 2}, {"CPU": 2}]))


def test_pareto_front_keeps_exactly_the_non_dominated_points():
    pts = [[0.1, 0.9], [0.5, 0.5], [0.4, 0.4], [0.9, 0.1], [0.9, 0.05], [0.5, 0.5]]
    assert pareto_front(pts, ["max", "max"]) == [0, 1, 3, 5]
    assert pareto_front(pts, ["min", "min"]) == [0, 2, 4]
    assert pareto_front([[1.0, 2.0]], ["max", "min"]) == [0]


def test_results_table_best_config_and_pareto_files(tmp_path):
    spec = load_sweep(_sweep(tmp_path, objectives=[{"metric": "val/top1"}, {"metric": "val/color_r2"}], num_samples=4))
    base = load_config(None, ["train.epochs=3"])
    rows = [
        {"trial": "t-a", "status": "complete", "epochs": 3, "val/top1": 0.3, "val/color_r2": 0.2,
         "loss.recon_weight": 1.0, "run_dir": "x"},
        {"trial": "t-b", "status": "complete", "epochs": 3, "val/top1": 0.2, "val/color_r2": 0.6,
         "loss.recon_weight": 5.0, "run_dir": "x"},
        {"trial": "t-c", "status": "complete", "epochs": 3, "val/top1": 0.1, "val/color_r2": 0.1,
         "loss.recon_weight": 0.2, "run_dir": "x"},
        {"trial": "t-d", "status": "stopped early", "epochs": 1, "val/top1": 0.9, "val/color_r2": 0.9,
         "loss.recon_weight": 0.3, "run_dir": "x"},
    ]  # fmt: skip
    out = write_results(rows, spec, base, tmp_path, log=lambda *a: None)
    assert [r["trial"] for r in out["pareto"]] == ["t-a", "t-b"]  # t-d stopped early: not a full-budget result
    assert out["best"]["trial"] == "t-a" and not out["interrupted"]
    best = load_config(tmp_path / "best_config.yaml")
    assert best.loss.recon_weight == 1.0 and best.train.name == "t-best" and best.train.epochs == 3
    with open(tmp_path / "sweep_results.csv") as f:
        assert [r["trial"] for r in csv.DictReader(f)] == ["t-a", "t-b", "t-c", "t-d"]
    md = (tmp_path / "sweep_results.md").read_text()
    assert md.index("t-d") < md.index("t-a") < md.index("t-b") < md.index("t-c")  # sorted by val/top1
    assert (tmp_path / "pareto.png").stat().st_size > 5000
    assert load_config(tmp_path / "pareto" / "t-b.yaml").loss.recon_weight == 5.0
    (tmp_path / "part").mkdir()
    assert write_results(rows[:2], spec, base, tmp_path / "part", log=lambda *a: None)["interrupted"]
