"""A real multi-node Ray cluster on this machine (a head and two worker nodes, each its own raylet, token auth on;
tests/_local_cluster.py): `rayeq train` spreads its two Train workers over the worker nodes, survives its driver
being interrupted (the rerun resumes), survives a worker node removed mid-run (resumed from the last checkpoint on
a replacement node, every epoch logged once), fails with a clear error when no failure is allowed, and a sweep
submitted with `ray job submit` spreads its trials over the nodes.

Everything that touches the cluster runs in subprocesses with the cluster's environment (private RAY_TMPDIR, the
token): the test process keeps its own Ray session for the other tests and never joins this one."""

import csv
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import rendered_set

pytestmark = [pytest.mark.ray, pytest.mark.slow]

HERE = Path(__file__).parent
PY = sys.executable
RAY_CLI = str(Path(sys.executable).with_name("ray"))


class LocalCluster:
    def __init__(self, env: dict[str, str], log: Path):
        self.env, self.log = env, log
        with open(log, "w") as err:  # the child keeps its own copy of the file
            self.proc = subprocess.Popen([PY, str(HERE / "_local_cluster.py")], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err, text=True, env=env)  # fmt: skip
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        up = self._answer(timeout=120)
        self.address, self.dashboard, self.nodes = up["address"], up["dashboard"], up["nodes"]
        self.added = 0

    def workers(self) -> dict[str, str]:
        """The worker nodes up now, name -> node id."""
        return {k: v for k, v in self.nodes.items() if k != "head"}

    def remove_worker(self) -> str:
        """The last worker node lost; returns its node id."""
        name = sorted(self.workers())[-1]
        assert self.command(f"remove {name}") == {"removed": name}
        return self.nodes.pop(name)

    def add_worker(self) -> str:
        """A new worker node like the others; returns its node id."""
        self.added += 1
        name = f"new{self.added}"
        answer = self.command(f"add {name}")
        assert answer.get("added") == name, answer
        self.nodes[name] = answer["node_id"]
        return answer["node_id"]

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)

    def _answer(self, timeout: float) -> dict:
        try:
            return json.loads(self.lines.get(timeout=timeout))
        except queue.Empty:
            raise AssertionError(f"local cluster did not answer: {self.log.read_text()[-3000:]}") from None

    def command(self, line: str, timeout: float = 120) -> dict:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._answer(timeout)

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=90)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # a short private temp dir (Ray's socket paths must stay under ~100 characters), never /tmp/ray
    tmp = tempfile.mkdtemp(prefix="rqmn-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(RAY_TMPDIR=tmp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), PYTHONUNBUFFERED="1")
    c = LocalCluster(env, tmp_path_factory.mktemp("cluster") / "cluster.log")
    yield c
    c.close()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def mn_data(tmp_path_factory):
    return rendered_set(tmp_path_factory, "mn", classes=4, objects_per_class=15, views=4, size=32, seed=2)


def _overrides(data: Path, runs: Path, name: str, *extra: str) -> list[str]:
    return [
        f"data.path={data}", "data.image_size=32", "data.num_actors=1", "data.cpus_per_actor=0.3",
        "model.stem=compact", "model.projector=[64,64]", "method.decoder.width=16",
        "optim.scale_lr=false", "optim.warmup_epochs=0", "train.floor_probes=false",
        "train.num_workers=2", "train.cpus_per_worker=0.5", "train.worker_resources={trainer: 1}",
        "train.batch_size=8", "train.log_every_steps=100", "train.val_every_epochs=100", "track.backend=none",
        f"train.storage_path={runs}", f"train.name={name}", *extra,
    ]  # fmt: skip


def _train(cluster, data, runs, name, *extra, log: Path) -> subprocess.Popen:
    cmd = [PY, "-m", "rayeq.cli", "train", *_overrides(data, runs, name, *extra), "--address", cluster.address]
    with open(log, "a") as out:  # the child keeps its own copy of the file
        return subprocess.Popen(cmd, env=cluster.env, stdout=out, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 420) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"run did not finish in {timeout}s:\n{log.read_text()[-4000:]}") from None
    return log.read_text()


def _epochs(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()] if path.is_file() else []


def _sessions(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "workers.jsonl").read_text().splitlines()]


def _wait_for_epoch(run_dir: Path, epoch: int, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if epoch in _epochs(run_dir):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before epoch {epoch}:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    raise AssertionError(f"no epoch {epoch} in {timeout}s:\n{log.read_text()[-4000:]}")


def test_workers_on_two_nodes_and_an_interrupted_driver_resumes(cluster, mn_data, tmp_path):
    """Two Train workers, each asking for the `trainer` resource that only the worker nodes offer, run on the two
    worker nodes and write to one storage path; the driver interrupted (Ctrl-C) in epoch 3 and the same command
    rerun resumes from the last checkpoint and ends with epochs 1..4 logged once each."""
    runs, log = tmp_path / "runs", tmp_path / "train.log"
    run_dir = runs / "spread"
    proc = _train(cluster, mn_data, runs, "spread", "train.epochs=4", log=log)
    _wait_for_epoch(run_dir, 2, proc, log)  # epoch 1's checkpoint is kept by now (its line comes before it)
    proc.send_signal(signal.SIGINT)
    _finish(proc, log, timeout=120)
    assert proc.returncode != 0 and _epochs(run_dir)[-1] < 4  # it was interrupted before the end
    proc = _train(cluster, mn_data, runs, "spread", "train.epochs=4", log=log)
    out = _finish(proc, log)
    assert proc.returncode == 0, out[-4000:]
    assert "resumed from checkpoint at epoch" in out
    assert _epochs(run_dir) == [1, 2, 3, 4]
    first, last = _sessions(run_dir)[0], _sessions(run_dir)[-1]
    workers = set(cluster.workers().values())
    for session in (first, last):
        assert sorted(w["rank"] for w in session["workers"]) == [0, 1]
        assert {w["node_id"] for w in session["workers"]} == workers  # one worker on each worker node
    assert first["from_epoch"] == 0 and last["from_epoch"] >= 1
    print(f"\nplacement: {json.dumps(first['workers'])}\nepochs: {_epochs(run_dir)}")


def test_a_worker_node_removed_mid_run_is_survived_from_the_last_checkpoint(cluster, mn_data, tmp_path):
    """A worker node's raylet and every process on it killed in epoch 3: Ray Train restarts the worker group
    (train.max_failures=2), which waits for the `trainer` resource until the test adds a replacement node; the run
    resumes from its last checkpoint there and logs every epoch exactly once."""
    runs, log = tmp_path / "runs", tmp_path / "train.log"
    run_dir = runs / "nodeloss"
    before = set(cluster.workers().values())
    proc = _train(cluster, mn_data, runs, "nodeloss", "train.epochs=5", "train.max_failures=2", log=log)
    _wait_for_epoch(run_dir, 2, proc, log)  # epoch 1's checkpoint is kept by now
    lost = cluster.remove_worker()
    lost_at = max(_epochs(run_dir))
    added = cluster.add_worker()
    out = _finish(proc, log)
    assert proc.returncode == 0, out[-4000:]
    assert lost_at < 5, "the node was removed after the run's last epoch"
    assert _epochs(run_dir) == [1, 2, 3, 4, 5]
    sessions = _sessions(run_dir)
    assert {w["node_id"] for w in sessions[0]["workers"]} == before
    assert {w["node_id"] for w in sessions[-1]["workers"]} == before - {lost} | {added}
    assert 1 <= sessions[-1]["from_epoch"] <= lost_at < 5
    print(f"\nnode {lost[:8]} removed after epoch {lost_at}; sessions: {json.dumps(sessions)}")
    print(f"epochs: {_epochs(run_dir)}")


def test_a_node_lost_without_failures_allowed_fails_with_a_clear_error(cluster, mn_data, tmp_path):
    runs, log = tmp_path / "runs", tmp_path / "train.log"
    run_dir = runs / "nofail"
    proc = _train(cluster, mn_data, runs, "nofail", "train.epochs=4", "train.max_failures=0", log=log)
    _wait_for_epoch(run_dir, 1, proc, log)
    cluster.remove_worker()
    cluster.add_worker()  # two worker nodes again, for the tests after this one
    out = _finish(proc, log)
    assert proc.returncode == 1, out[-4000:]
    assert "training run 'nofail' failed after epoch" in out and "train.max_failures=0" in out, out[-4000:]
    assert "rerun the same command to resume" in out
    assert _epochs(run_dir)[-1] < 4


def test_a_sweep_submitted_as_a_job_spreads_its_trials_over_the_nodes(cluster, mn_data, tmp_path):
    work = tmp_path / "project"
    work.mkdir()
    base = [o for o in _overrides(mn_data, tmp_path / "unused", "x") if not o.startswith(("train.", "track."))]
    spec = {
        "name": "mn",
        "base": {"config": None, "overrides": [*base, "train.batch_size=8", "train.epochs=2",
                                               "train.floor_probes=false", "train.worker_resources={trainer: 1}",
                                               "track.backend=none"]},
        "space": {"loss.recon_weight": {"type": "loguniform", "low": 0.1, "high": 10}},
        "objectives": [{"metric": "val/top1", "mode": "max"}],
        "num_samples": 2,
        "resources": {"workers": 1, "cpus_per_worker": 0.5},
        "storage_path": str(tmp_path / "sweeps"),
    }  # fmt: skip
    (work / "mn.yaml").write_text(yaml.safe_dump(spec))
    # the sweep file by its path on the shared file system, not `--working-dir`: here every node shares one session
    # directory, and a node's runtime-env agent deletes the unpacked working dir once its own trial is done,
    # under the feet of the job's driver on the head (on a real cluster each node has its own copy)
    cmd = [RAY_CLI, "job", "submit", "--address", f"http://{cluster.dashboard}", "--",
           PY, "-m", "rayeq.cli", "sweep", str(work / "mn.yaml")]  # fmt: skip
    proc = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "succeeded" in proc.stdout, (proc.stdout + proc.stderr)[-4000:]
    with open(tmp_path / "sweeps" / "mn" / "sweep_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(r["status"] == "complete" for r in rows), rows
    runs = sorted((tmp_path / "sweeps" / "mn").rglob("workers.jsonl"))
    nodes = {w["node_id"] for p in runs for s in _sessions(p.parent) for w in s["workers"]}
    assert len(runs) == 2 and len(nodes) == 2 and nodes <= set(cluster.nodes.values()) - {cluster.nodes["head"]}

    # a client without the cluster's token is refused
    env = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_TOKEN"}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    proc = subprocess.run([RAY_CLI, "job", "list", "--address", f"http://{cluster.dashboard}"], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode != 0, proc.stdout[-2000:]
