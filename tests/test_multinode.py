"""A real multi-node Ray cluster on this machine (a head and two worker nodes, each its own raylet, token auth on;
tests/_local_cluster.py): one `rayeq train` run spreads its two Train workers over the worker nodes and goes through
a node lost with no failure allowed (a clear error), the command rerun, a worker process killed, a node lost and
replaced, the driver interrupted and the command rerun, with every epoch logged once; a sweep submitted with
`ray job submit` spreads its trials over the nodes.

Everything that touches the cluster runs in subprocesses with the cluster's environment (private RAY_TMPDIR, the
token): the test process keeps its own Ray session for the other tests and never joins this one."""

import csv
import json
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from conftest import rendered_set

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.full]

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
    env.update(
        RAY_TMPDIR=tmp,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        PYTHONUNBUFFERED="1",
        RAY_TRAIN_ENABLE_PREEMPTION_WATCHER="0",
    )  # one process less per session (no cloud to preempt here)
    c = LocalCluster(env, tmp_path_factory.mktemp("cluster") / "cluster.log")
    yield c
    c.close()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def mn_data(tmp_path_factory):
    """A small synth3d set with every object in the train split: no validation pipeline (an actor, its process and
    a pass over the val split) in each of the many sessions these tests start; the run's probes report on train."""
    import pyarrow.parquet as pq

    out = rendered_set(tmp_path_factory, "mn", classes=4, objects_per_class=15, views=4, size=32, seed=2)
    for shard in sorted(out.glob("shard-*.parquet")):
        table = pq.read_table(shard)
        split = table.schema.get_field_index("split")
        pq.write_table(table.set_column(split, "split", pa.array(["train"] * table.num_rows)), shard)
    meta = json.loads((out / "meta.json").read_text())
    meta["splits"] = {"train": sum(meta["splits"].values()), "val": 0}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return out


def _overrides(data: Path, runs: Path, name: str, *extra: str) -> list[str]:
    return [
        f"data.path={data}", "data.image_size=32", "data.num_actors=1", "data.cpus_per_actor=0.3",
        "model.stem=compact", "model.projector=[64,64]", "method.decoder.width=16",
        "optim.scale_lr=false", "optim.warmup_epochs=0", "train.floor_probes=false",
        "train.num_workers=2", "train.cpus_per_worker=0.5", "train.worker_resources={trainer: 1}",
        "train.batch_size=8", "train.log_every_steps=100", "track.backend=none",
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


def _wait_for_session_epoch(run_dir: Path, sessions: int, proc: subprocess.Popen, log: Path, timeout=300) -> None:
    """Until the run's session number `sessions` has finished an epoch: its rank 0 printed an epoch's "done" line
    after its own "workers:" line (the `sessions`-th in the log, which every session of this run appends to: the
    console lines reach the log later than workers.jsonl reaches the disk)."""
    end = time.monotonic() + timeout
    while True:
        text = log.read_text()
        starts = [m.start() for m in re.finditer("workers: rank", text)]
        if len(starts) >= sessions and " done in " in text[starts[sessions - 1] :]:
            return
        assert proc.poll() is None, f"run ended early:\n{text[-4000:]}"
        assert time.monotonic() < end, f"no epoch of session {sessions} in {timeout}s:\n{text[-4000:]}"
        time.sleep(0.2)


def _wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, log: Path, timeout: float = 120) -> int:
    """Until Ray Train has kept the checkpoint of the last epoch logged (its line comes first), so that the fault
    that follows lands in the next epoch; returns that epoch."""
    from rayeq.rundir import RunDir

    end = time.monotonic() + timeout
    while (RunDir(run_dir).kept_epoch() or 0) < max(_epochs(run_dir)):
        assert proc.poll() is None, f"run ended early:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < end, f"no checkpoint of epoch {max(_epochs(run_dir))} in {timeout}s"
        time.sleep(0.2)
    return max(_epochs(run_dir))


def _kill_worker(run_dir: Path, rank: int) -> int:
    """SIGKILL the Train worker process of `rank` in the run's latest session (the pid from workers.jsonl)."""
    pid = next(w["pid"] for w in _sessions(run_dir)[-1]["workers"] if w["rank"] == rank)
    os.kill(pid, signal.SIGKILL)
    return pid


def _nodes(session: dict) -> set[str]:
    return {w["node_id"] for w in session["workers"]}


def test_a_sweep_job_spreads_over_the_nodes_and_a_stopped_one_resumes(cluster, mn_data, tmp_path):
    """`rayeq sweep` submitted with `ray job submit` (token auth): two trials at once, each Train worker asking for
    the `trainer` resource, so one on each worker node; the job stopped (`ray job stop`) once both trials have
    logged their first epoch, and submitted again with --resume, finishes: both trials complete from their
    checkpoints, every epoch logged once. A client without the token is refused."""
    work = tmp_path / "project"
    work.mkdir()
    base = [o for o in _overrides(mn_data, tmp_path / "unused", "x") if not o.startswith(("train.", "track."))]
    spec = {
        "name": "mn",
        "base": {"config": None, "overrides": [*base, "train.batch_size=8", "train.epochs=3",
                                               "train.floor_probes=false", "train.worker_resources={trainer: 1}",
                                               "track.backend=none"]},
        "space": {"loss.recon_weight": {"type": "loguniform", "low": 0.1, "high": 10}},
        "objectives": [{"metric": "train/top1", "mode": "max"}],
        "num_samples": 2,
        "resources": {"workers": 1, "cpus_per_worker": 0.5},
        "storage_path": str(tmp_path / "sweeps"),
    }  # fmt: skip
    (work / "mn.yaml").write_text(yaml.safe_dump(spec))
    address = f"http://{cluster.dashboard}"

    def submit(*sweep_args: str, wait: bool = True) -> subprocess.CompletedProcess:
        # the sweep file by its path on the shared file system, not `--working-dir`: here every node shares one
        # session directory, and a node's runtime-env agent deletes the unpacked working dir once its own work is
        # done, under the feet of the job's driver on the head (on a real cluster each node has its own copy)
        cmd = [RAY_CLI, "job", "submit", "--address", address, *([] if wait else ["--no-wait"]), "--",
               PY, "-m", "rayeq.cli", "sweep", str(work / "mn.yaml"), *sweep_args]  # fmt: skip
        for _ in range(12):
            proc = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=600)
            # after nodes come and go the head may briefly have no job agent to give the job to: Ray says to retry
            if "No available agent to submit job" not in proc.stderr:
                break
            time.sleep(5)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        return proc

    job_id = re.search(r"raysubmit_\w+", submit(wait=False).stdout).group(0)
    trials = tmp_path / "sweeps" / "mn" / "trials"
    end = time.monotonic() + 480
    while sum(1 for p in trials.glob("*/metrics.jsonl") if _epochs(p.parent)) < 2:
        assert time.monotonic() < end, "the sweep's trials never logged an epoch"
        time.sleep(0.2)
    stop = subprocess.run([RAY_CLI, "job", "stop", "--address", address, job_id], env=cluster.env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert stop.returncode == 0, (stop.stdout + stop.stderr)[-3000:]
    stopped_at = {p.parent.name: _epochs(p.parent) for p in trials.glob("*/metrics.jsonl")}
    assert all(e[-1] < 3 for e in stopped_at.values()), stopped_at  # both were stopped mid-run
    from rayeq.rundir import RunDir

    kept = {name: RunDir(trials / name).kept_epoch() or 0 for name in stopped_at}  # what Ray Train resumes from

    proc = submit("--resume")
    assert "succeeded" in proc.stdout and "resuming sweep mn" in proc.stdout, proc.stdout[-4000:]
    with open(tmp_path / "sweeps" / "mn" / "sweep_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(r["status"] == "complete" for r in rows), rows
    nodes = set()
    for r in rows:
        run_dir = Path(r["run_dir"])
        assert _epochs(run_dir) == [1, 2, 3], r["trial"]  # each epoch once
        assert _sessions(run_dir)[-1]["from_epoch"] == kept[run_dir.name], r["trial"]  # from its kept checkpoint
        nodes |= _nodes(_sessions(run_dir)[0])
    assert nodes == set(cluster.workers().values())  # the two trials on the two worker nodes
    print(f"\nsweep stopped at {stopped_at} (checkpoints kept: {kept}); resumed, complete: {len(rows)} trials")

    # a client without the cluster's token is refused
    env = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_TOKEN"}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    proc = subprocess.run([RAY_CLI, "job", "list", "--address", address], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode != 0, proc.stdout[-2000:]


def test_one_run_through_every_fault_a_cluster_brings(cluster, mn_data, tmp_path):
    """One `rayeq train` run of 7 epochs, its two Train workers on the two worker nodes (each asks for the
    `trainer` resource that only they offer), through five sessions:

    1. `train.max_failures=0`: a worker node removed after epoch 2 -> exit 1 with rayeq's message (which epoch is
       kept, how to go on); a replacement node joins;
    2. the command rerun with `train.max_failures=2` (an operational key) resumes from the last checkpoint;
    3. a Train worker process SIGKILLed -> Ray Train restarts the group on the same nodes from the last checkpoint;
    4. a worker node removed -> the group restarts on the remaining node and a replacement the test adds;
    5. the driver interrupted (SIGINT, as Ctrl-C) and the command rerun -> resumes and finishes.
    Every epoch is logged exactly once; `workers.jsonl` shows where each session ran."""
    runs, log = tmp_path / "runs", tmp_path / "train.log"
    run_dir = runs / "faults"
    first_nodes = set(cluster.workers().values())

    def train(*extra: str) -> subprocess.Popen:
        return _train(cluster, mn_data, runs, "faults", "train.epochs=7", *extra, log=log)

    # 1. a node lost with no failure allowed: a clear error, nothing finished lost
    proc = train("train.max_failures=0")
    _wait_for_epoch(run_dir, 2, proc, log)
    kept1 = _wait_for_checkpoint(run_dir, proc, log)
    lost1 = cluster.remove_worker()
    added1 = cluster.add_worker()
    out = _finish(proc, log)
    assert proc.returncode == 1, out[-4000:]
    assert "training run 'faults' failed (last epoch logged: " in out and "train.max_failures=0" in out, out[-4000:]
    assert f"keeps the checkpoint of epoch {kept1}; rerun the same command to resume from it" in out, out[-4000:]
    failed_at = max(_epochs(run_dir))
    assert failed_at < 7

    # 2. rerun, failures allowed; 3. a worker process killed
    proc = train("train.max_failures=2")
    _wait_for_epoch(run_dir, failed_at + 1, proc, log)
    _wait_for_checkpoint(run_dir, proc, log)
    killed = _kill_worker(run_dir, rank=1)
    # 4. a node lost once the restarted group has finished an epoch
    _wait_for_session_epoch(run_dir, 3, proc, log)
    _wait_for_checkpoint(run_dir, proc, log)
    lost2 = cluster.remove_worker()
    added2 = cluster.add_worker()
    # 5. the driver interrupted once the group on the new node has finished an epoch, and the command rerun
    _wait_for_session_epoch(run_dir, 4, proc, log)
    interrupted_at = _wait_for_checkpoint(run_dir, proc, log)
    proc.send_signal(signal.SIGINT)
    _finish(proc, log, timeout=120)
    assert proc.returncode != 0 and interrupted_at < 7, "the run ended before the interruption"
    proc = train("train.max_failures=2")
    out = _finish(proc, log)
    assert proc.returncode == 0, out[-4000:]

    assert _epochs(run_dir) == [1, 2, 3, 4, 5, 6, 7]  # every epoch once, whatever ran twice
    s = _sessions(run_dir)
    assert len(s) == 5, s
    assert all(sorted(w["rank"] for w in x["workers"]) == [0, 1] for x in s)
    assert _nodes(s[0]) == first_nodes  # one worker on each worker node, none on the head
    assert _nodes(s[1]) == first_nodes - {lost1} | {added1}
    assert _nodes(s[2]) == _nodes(s[1]) and killed not in {w["pid"] for w in s[2]["workers"]}  # new process
    assert _nodes(s[3]) == _nodes(s[2]) - {lost2} | {added2}
    # every later session resumed from the checkpoint kept before its fault: each made progress
    assert [x["from_epoch"] for x in s] == sorted({x["from_epoch"] for x in s}) and s[0]["from_epoch"] == 0, s
    assert out.count("resumed from checkpoint at epoch") >= 2  # (the log holds every session's lines)
    print("\nsessions (from_epoch: rank -> node):")
    for x in s:
        print(f"  {x['from_epoch']}: " + ", ".join(f"{w['rank']} -> {w['node_id'][:8]} (pid {w['pid']})"
                                                 for w in x["workers"]))  # fmt: skip
    print(f"lost nodes {lost1[:8]}, {lost2[:8]}; replacements {added1[:8]}, {added2[:8]}; killed pid {killed}")
    print(f"failed after epoch {failed_at}, interrupted after epoch {interrupted_at}; epochs: {_epochs(run_dir)}")
