"""Training building blocks without Ray: metrics, schedule, optimiser, probes, run-dir checks."""

import threading

import numpy as np
import pytest
import torch

from rayeq.cluster import check_resources
from rayeq.config import ConfigError, load_config
from rayeq.metrics import R2Accumulator, r2_global, r2_per_dim
from rayeq.rundir import RunDir
from rayeq.train.loop import Prefetch, after_first
from rayeq.train.optim import LARS, build_optimizer, build_scheduler, scaled_lr
from rayeq.train.probes import OnlineProbes, ProbeMetrics


def test_r2_definitions_match_reference_formulas():
    g = np.random.default_rng(0)
    y = g.normal(size=(50, 3)) * np.array([1.0, 5.0, 0.1]) + np.array([0.0, 3.0, -2.0])
    p = y + g.normal(size=y.shape) * 0.5
    # SIE: one mean over all entries
    sie = 1 - ((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    # sklearn's default: per-dimension R², uniform average
    per = np.mean([1 - ((y[:, d] - p[:, d]) ** 2).sum() / ((y[:, d] - y[:, d].mean()) ** 2).sum() for d in range(3)])
    yt, pt = torch.tensor(y), torch.tensor(p)
    assert r2_global(pt, yt) == pytest.approx(sie, abs=1e-9)
    assert r2_per_dim(pt, yt) == pytest.approx(per, abs=1e-9)
    assert r2_global(yt, yt) == pytest.approx(1.0)
    const = torch.zeros_like(yt) + yt.mean(0)
    assert r2_per_dim(const, yt) == pytest.approx(0.0, abs=1e-9)
    # accumulating batches gives the same numbers as one pass
    acc = R2Accumulator(3)
    for i in range(0, 50, 7):
        acc.update(pt[i : i + 7], yt[i : i + 7])
    assert acc.compute()["global"] == pytest.approx(sie, abs=1e-9)
    assert acc.compute()["per_dim"] == pytest.approx(per, abs=1e-9)


def test_schedule_warmup_then_cosine_and_lr_scaling():
    cfg = load_config(None, ["optim.lr=0.1", "optim.warmup_epochs=2", "train.epochs=10", "train.batch_size=512",
                             "optim.base_batch_size=256"])  # fmt: skip
    assert scaled_lr(cfg) == pytest.approx(0.2)
    assert scaled_lr(load_config(None, ["optim.lr=0.1", "optim.scale_lr=false", "train.batch_size=512"])) == 0.1
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(list(model.parameters()), cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=5)
    lrs = []
    for _ in range(50):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.2 / 10) and lrs[9] == pytest.approx(0.2)  # linear warmup over 10 steps
    assert max(lrs) == pytest.approx(0.2) and lrs[-1] < 0.01  # cosine to ~0
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))


def test_lars_adapts_per_layer_and_skips_biases():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.ones(4, 4) * 10)
    b = torch.nn.Parameter(torch.ones(4))
    opt = LARS([w, b], lr=1.0, weight_decay=0.0, momentum=0.0, trust=0.001)
    w.grad, b.grad = torch.ones(4, 4) * 100, torch.ones(4)
    opt.step()
    # weight step = trust * ||w|| / ||g|| * g = 0.001 * 40 / 400 * 100 = 0.01; bias step = lr * g = 1
    torch.testing.assert_close(w.data, torch.full((4, 4), 10 - 0.01))
    torch.testing.assert_close(b.data, torch.zeros(4))


def test_probes_see_detached_features_and_report_metrics():
    probes = OnlineProbes(feature_dim=8, inv_dim=4, num_classes=3, regress={"rel_rotation": 4}, hidden=16)
    r1 = torch.randn(6, 8, requires_grad=True)
    r2 = torch.randn(6, 8, requires_grad=True)
    batch = {"label": torch.tensor([0, 1, 2, 0, 1, 2]), "rel_rotation": torch.randn(6, 4)}
    loss, out = probes(r1, r2, batch)
    loss.backward()
    assert r1.grad is None and r2.grad is None  # no gradient into the encoder
    assert out["logits"].shape == (12, 3) and out["logits_inv"].shape == (12, 3)
    m = ProbeMetrics({"rel_rotation": 4}, "cpu")
    m.update(out)
    res = m.compute("val")
    assert set(res) == {"val/top1", "val/top1_inv", "val/rot_r2", "val/rot_r2_per_dim", "val/rot_r2_mean_predictor"}
    assert 0 <= res["val/top1"] <= 1
    # the mean predictor's floor: SIE's global R² of predicting each dimension's own mean
    y = batch["rel_rotation"]
    assert res["val/rot_r2_mean_predictor"] == pytest.approx(r2_global(y.mean(0).expand_as(y), y), abs=1e-6)


@pytest.mark.parametrize("class_in", ["inv", "equi"])
def test_online_inv_probe_reads_the_invariant_channels(class_in):
    """Class information in one part only (the other part noise): the full probe learns it either way; the
    `top1_inv` probe learns it only when it sits in the first inv_dim channels, and a change to the equivariant
    channels never reaches its logits."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(96) % 4
    code = torch.nn.functional.one_hot(labels, 4).float().repeat(1, 2) * 3  # (96, 8)

    def features():
        noise = torch.randn(96, 8, generator=g)
        return torch.cat([code + 0.3 * noise, noise], 1) if class_in == "inv" else torch.cat([noise, code], 1)

    torch.manual_seed(0)
    probes = OnlineProbes(feature_dim=16, inv_dim=8, num_classes=4, regress={}, hidden=8)
    opt = torch.optim.Adam(probes.parameters(), lr=0.05)
    for _ in range(60):
        loss, _ = probes(features(), features(), {"label": labels})
        opt.zero_grad()
        loss.backward()
        opt.step()
    probes.eval()
    m = ProbeMetrics({}, "cpu")
    r1, r2 = features(), features()
    _, out = probes(r1, r2, {"label": labels})
    m.update(out)
    res = m.compute("val")
    assert res["val/top1"] > 0.95, res
    if class_in == "inv":
        assert res["val/top1_inv"] > 0.95, res
    else:
        assert res["val/top1_inv"] < 0.5, res  # chance is 0.25
    shifted = r1.clone()
    shifted[:, 8:] += 5.0
    _, out2 = probes(shifted, r2, {"label": labels})
    torch.testing.assert_close(out2["logits_inv"], out["logits_inv"])
    assert not torch.allclose(out2["logits"], out["logits"])


def test_changed_config_is_refused_before_any_work_and_force_keeps_the_old_config(tmp_path):
    base = [f"train.storage_path={tmp_path}", "train.name=run1"]
    cfg = load_config(None, base)
    rd = RunDir.of(cfg)
    old = rd.check(cfg, force=False)
    run_dir = rd.path
    assert not run_dir.exists()  # checks write nothing
    rd.prepare(cfg, old)
    saved = (run_dir / "config.yaml").read_text()
    # operational changes (more epochs, logging, workers) resume
    rd.check(load_config(None, [*base, "train.epochs=500", "train.log_every_steps=3", "train.num_workers=2"]), False)
    changed = load_config(None, [*base, "loss.recon_weight=2"])
    with pytest.raises(ConfigError, match=r"different config(.|\n)*loss.recon_weight: 1.0 -> 2.0(.|\n)*--force"):
        rd.check(changed, force=False)
    old = rd.check(changed, force=True)
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]  # still nothing written
    rd.prepare(changed, old)  # once every check passed: the old config kept, the new one saved
    assert (run_dir / "config.1.yaml").read_text() == saved
    assert load_config(run_dir / "config.yaml").loss.recon_weight == 2


class _FakeRay:
    def __init__(self, cpu, gpu=0):
        self.res = {"CPU": cpu, "GPU": gpu}

    def cluster_resources(self):
        return self.res


def test_resources_no_node_can_hold_are_refused():
    ok = load_config(None, ["train.num_workers=2", "train.cpus_per_worker=0.5"])
    check_resources(ok, _FakeRay(2))
    with pytest.raises(ConfigError, match="train.num_workers=2 x train.cpus_per_worker=1.0.*hang"):
        check_resources(load_config(None, ["train.num_workers=2", "train.cpus_per_worker=1"]), _FakeRay(2))
    with pytest.raises(ConfigError, match="GPU"):
        check_resources(load_config(None, ["train.use_gpu=true", "train.num_workers=2"]), _FakeRay(8, 1))
    # what a run holds: its workers, one pair-maker actor (it reads its own shards) and the validation actor (0.1)
    full = ["train.num_workers=2", "train.cpus_per_worker=0.7"]
    check_resources(load_config(None, [*full, "data.cpus_per_actor=0.5"]), _FakeRay(2))  # 1.4 + 0.5 + 0.1 = 2
    with pytest.raises(ConfigError, match=r"cpus_per_actor=0.6 for at least one Ray Data actor \(\+0.1 for valid"):
        check_resources(load_config(None, [*full, "data.cpus_per_actor=0.6"]), _FakeRay(2))


def test_custom_worker_resources_the_cluster_lacks_are_refused_and_placement_reaches_ray():
    from rayeq.cluster import worker_resources

    cfg = load_config(None, ["train.num_workers=2", "train.worker_resources={trainer: 1}"])
    assert worker_resources(cfg) == {"CPU": 0.5, "trainer": 1.0}
    fake = _FakeRay(4)
    with pytest.raises(ConfigError, match="'trainer'.*offers 0"):
        check_resources(cfg, fake)
    fake.cluster_resources = lambda: {"CPU": 4, "trainer": 2}
    check_resources(cfg, fake)
    with pytest.raises(ConfigError, match="worker_resources"):
        load_config(None, ["train.worker_resources={CPU: 1}"])


def test_a_storage_path_that_cannot_be_written_or_is_full_is_refused_before_training(tmp_path, monkeypatch):
    import shutil

    import rayeq.rundir as rundir

    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="train.storage_path: cannot write the run directory"):
        cfg = load_config(None, [f"train.storage_path={blocker}", "train.name=r"])
        RunDir.of(cfg).check(cfg, force=False)
    real = shutil.disk_usage
    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda p: real(p)._replace(free=100 << 20))
    with pytest.raises(ConfigError, match="has 100 MiB free"):
        cfg = load_config(None, [f"train.storage_path={tmp_path / 'runs'}", "train.name=r"])
        RunDir.of(cfg).check(cfg, force=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # probed where it exists; nothing left


def test_metrics_file_keeps_one_line_per_epoch_when_an_epoch_runs_again(tmp_path):
    import json
    from types import SimpleNamespace

    from rayeq.train.hooks import MetricsFile

    hook = MetricsFile(tmp_path)
    for epoch, loss in [(1, 5.0), (2, 4.0), (3, 3.0), (2, 3.5), (3, 3.2), (4, 3.0)]:  # lost after 3, resumed from 1
        hook.on_epoch_end(None, SimpleNamespace(metrics={"epoch": epoch, "loss": loss}))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["loss"]) for r in rows] == [(1, 5.0), (2, 3.5), (3, 3.2), (4, 3.0)]


def test_a_failed_run_says_what_is_kept_and_how_to_go_on(tmp_path):
    import json

    from rayeq.train.summary import failure_message

    cfg = load_config(None, [f"train.storage_path={tmp_path}", "train.name=r", "train.epochs=6"])
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    exc = RuntimeError("Training failed due to worker errors:\nWorkerGroupError: the actor's node died\nmore")
    msg = failure_message(cfg, exc)
    assert "'r' failed (last epoch logged: 2 of 6; train.max_failures=0" in msg
    assert "the actor's node died" in msg and "no checkpoint was kept yet" in msg
    # the epoch Ray Train resumes from is the one in its checkpoint manager's snapshot, not the last line
    snap = {"latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_x", "metrics": {"epoch": 1}}}
    (tmp_path / "r" / "checkpoint_manager_snapshot.json").write_text(json.dumps(snap))
    msg = failure_message(cfg, exc)
    assert "keeps the checkpoint of epoch 1; rerun the same command to resume from it" in msg


def test_an_address_where_no_cluster_answers_is_a_config_error(monkeypatch):
    import ray

    from rayeq.cluster import connect_ray

    def refuse(**kwargs):
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(ConfigError, match=r"--address auto: no Ray cluster answers there \(Could not find"):
        connect_ray("auto", log=lambda *a: None)


def test_only_the_known_raylet_notice_is_kept_off_the_console():
    from types import SimpleNamespace

    from rayeq.cluster import _drop_known_notices

    printed = []
    worker = SimpleNamespace(print_to_stdstream=lambda data, ignore_prefix: printed.append(data["lines"]))
    fake_ray = SimpleNamespace(_private=SimpleNamespace(worker=worker))
    _drop_known_notices(fake_ray)
    _drop_known_notices(fake_ray)  # a second Ray session in the process: wrapped once, not twice
    notice = "WARNING: 8 PYTHON worker processes have been started ... 4x the maximum expected startup concurrency (2)"
    worker.print_to_stdstream({"lines": [notice], "pid": "raylet"}, False)
    worker.print_to_stdstream({"lines": [notice, "Task was killed due to the node running low on memory"]}, False)
    assert printed == [["Task was killed due to the node running low on memory"]]
    _drop_known_notices(SimpleNamespace())  # a Ray without that private printer: nothing to wrap, no error


def test_the_training_stream_runs_ahead_by_its_budget():
    """data.stream_mb bounds how far pairs run ahead of training (Ray Data's object-store budget of the stream);
    by default 256 MB per pair-maker actor."""
    from rayeq.data.feed.pipeline import STREAM_MB_PER_ACTOR, stream_budget_bytes

    assert stream_budget_bytes(load_config(None, ["data.num_actors=3"]), _FakeRay(8)) == 3 * STREAM_MB_PER_ACTOR << 20
    assert stream_budget_bytes(load_config(None, []), _FakeRay(8)) == 4 * STREAM_MB_PER_ACTOR << 20  # half the CPUs
    assert stream_budget_bytes(load_config(None, ["data.stream_mb=64"]), _FakeRay(8)) == 64 << 20
    with pytest.raises(ConfigError, match="stream_mb"):
        load_config(None, ["data.stream_mb=8"])
    # an operational key: a run resumed with another budget is the same run
    assert load_config(None, ["data.stream_mb=64"]).fingerprint() == load_config(None, []).fingerprint()


def test_prefetch_fetches_the_first_batch_in_the_background_and_raises_where_consumed():
    seen = []

    def batches():
        seen.append(threading.current_thread().name)
        yield 1
        seen.append(threading.current_thread().name)
        yield 2

    early = Prefetch(batches())
    early._thread.join(10)
    assert seen == ["rayeq-prefetch"]  # fetched before anyone asked (a pipeline's start overlaps other work)
    assert list(early) == [1, 2] and seen[1] == threading.current_thread().name

    def broken():
        raise ValueError("corrupt shard s-0003")
        yield

    stream = Prefetch(broken())
    stream._thread.join(10)  # the fetch failed in its thread ...
    with pytest.raises(ValueError, match="s-0003"):  # ... and the error reaches the consumer
        next(iter(stream))
    assert list(Prefetch([])) == []


def test_after_first_starts_validation_once_the_first_step_is_done():
    calls = []
    batches = after_first(iter([1, 2, 3]), lambda: calls.append("val started"))
    assert next(batches) == 1 and calls == []
    assert next(batches) == 2 and calls == ["val started"]
    assert list(batches) == [3] and calls == ["val started"]  # once
    assert list(after_first([], lambda: calls.append("again"))) == [] and calls == ["val started"]
