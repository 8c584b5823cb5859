"""The Ray session and resource arithmetic: connecting (or starting local Ray bound to localhost),
what one training run holds at least, and checks that a cluster can hold it before anything starts."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from rayeq.config import ConfigError, ExperimentConfig
from rayeq.data.feed.pipeline import VAL_CPUS

RELAY_NAME = "rayeq-console"
_console: Console | None = None


def verbose_ray() -> bool:
    """`--verbose` (or RAYEQ_VERBOSE=1): Ray's own start-up lines and every worker's output on the console."""
    return os.environ.get("RAYEQ_VERBOSE", "").lower() in ("1", "true", "yes")


def connect_ray(address: str | None, log=print):
    """Join `address` (or $RAY_ADDRESS) or start a local instance bound to 127.0.0.1. The console stays rayeq's:
    Ray's start-up lines and its workers' output go to Ray's log files (`RAYEQ_VERBOSE=1` / `--verbose`
    shows them), and rayeq's own lines from workers come through a relay actor (`Console`)."""
    import logging

    import ray

    if ray.is_initialized():
        return ray
    verbose = verbose_ray()
    address = address or os.environ.get("RAY_ADDRESS")
    quiet = dict(log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.WARNING)
    if address:
        # Ray >= 2.59 clusters use token auth; a client connecting by address must say so
        token = Path.home() / ".ray" / "auth_token"
        if "RAY_AUTH_MODE" not in os.environ and token.is_file():
            os.environ["RAY_AUTH_MODE"] = "token"
        log(f"connecting to Ray at {address}")
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, TimeoutError) as exc:
            raise ConfigError(
                f"--address {address}: no Ray cluster answers there ({str(exc).splitlines()[0]}). Start one "
                "(`ray start --head`, a cluster launcher, KubeRay), or leave --address and RAY_ADDRESS unset to start "
                "a local instance"
            ) from None
    else:
        log("starting a local Ray instance (dashboard on 127.0.0.1)")
        # token auth is Ray's default for a local instance; with RAY_AUTH_MODE unset (the CLI sets it before Ray is
        # imported: later Ray does not read it) Ray warns that it chose it: not news for the console
        auth_logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
        if not verbose and "RAY_AUTH_MODE" not in os.environ:
            auth_logger.setLevel(logging.ERROR)
        ray.init(dashboard_host="127.0.0.1", **quiet)
    if not verbose:
        import ray.data  # noqa: F401  (configures its loggers on import: that must come first)

        for name in ("ray", "ray.train", "ray.tune"):
            logging.getLogger(name).setLevel(logging.WARNING)
        quiet_console_handlers("ray.data")  # its file handler (ray-data.log) keeps everything
        _drop_known_notices(ray)
        global _console
        _console = Console(ray, log)
        log(f"Ray's own logs: {ray_logs_dir(ray)} (--verbose shows them here)")
    return ray


# Raylet notices Ray pushes to every driver whatever log_to_driver says, which need no action from a rayeq user (they
# stay in the raylet's log): fractional-CPU actors (Ray Data's, Train's) start more workers than the node has CPUs
KNOWN_NOTICES = ("maximum expected startup concurrency",)


def _drop_known_notices(ray) -> None:
    """Wraps Ray's private printer of driver notices (Ray 2.60); where it is not there, nothing is filtered."""
    worker = getattr(getattr(ray, "_private", None), "worker", None)
    if not callable(getattr(worker, "print_to_stdstream", None)):
        return
    show = getattr(worker.print_to_stdstream, "__wrapped__", worker.print_to_stdstream)

    def filtered(data, ignore_prefix: bool):
        lines = [x for x in data.get("lines", []) if not any(k in x for k in KNOWN_NOTICES)]
        if lines:
            show({**data, "lines": lines}, ignore_prefix)

    filtered.__wrapped__ = show
    worker.print_to_stdstream = filtered


def quiet_console_handlers(logger: str) -> None:
    """The console handlers of a Ray logger to warnings; its file handlers keep everything."""
    import logging

    for h in logging.getLogger(logger).handlers:
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.setLevel(logging.WARNING)


def ray_logs_dir(ray) -> str:
    try:
        return ray._private.worker.global_worker.node.get_logs_dir_path()
    except AttributeError:  # a client connection: the logs are on the cluster's nodes
        return "/tmp/ray/session_latest/logs on each node"


class _Relay:
    """The lines rayeq's Ray workers print, held until the driver's console takes them."""

    def __init__(self):
        self.lines: list[str] = []

    def say(self, line: str) -> None:
        self.lines.append(line)

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


class Console:
    """The driver's side of the relay: a thread prints what workers said, a fraction of a second later."""

    def __init__(self, ray, say=print, interval: float = 0.3):
        import threading

        self.ray, self.say, self.interval = ray, say, interval
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        # on the driver's node: a lost worker node never takes the console with it
        self.actor = (
            ray.remote(num_cpus=0)(_Relay)
            .options(name=RELAY_NAME, get_if_exists=True, scheduling_strategy=here)
            .remote()
        )
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.thread = threading.Thread(target=self._run, name="rayeq-console", daemon=True)
        self.thread.start()
        import atexit

        atexit.register(self.close)  # runs before Ray's own exit handler (registered earlier) shuts Ray down

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.flush()
            except Exception:
                if not self.ray.is_initialized():  # Ray shut down under the thread: nothing more to relay
                    return
                # else a relay call that failed once (seen on a busy 2-core machine, rendering then starting a run:
                # a thread that returned here left every line of the run to close(), at the end); the lines wait in
                # the actor and the next turn takes them

    def close(self) -> None:
        """The last lines, then no more polling (a call after Ray shut down would start a new instance)."""
        self.stop.set()
        self.thread.join(timeout=5)
        with contextlib.suppress(Exception):
            self.flush()

    def flush(self) -> None:
        """Print every line said so far (before the driver prints a summary after them)."""
        if not self.ray.is_initialized():
            return
        with self.lock:
            for line in self.ray.get(self.actor.take.remote(), timeout=30):
                self.say(line)


def flush_console() -> None:
    if _console is not None:
        with contextlib.suppress(Exception):
            _console.flush()


def worker_console(prefix: str = ""):
    """What a Ray worker prints its lines with: through the driver's relay when there is one (quiet mode), else
    straight to stdout, which Ray forwards to the driver with the worker's pid (--verbose)."""
    import sys

    import ray

    try:
        actor = ray.get_actor(RELAY_NAME)
    except ValueError:
        actor = None

    def say(line: str) -> None:
        if actor is not None:
            actor.say.remote(prefix + line)
        else:
            sys.stdout.write(prefix + line + "\n")
            sys.stdout.flush()

    return say


def run_cpus(cfg: ExperimentConfig) -> float:
    """The CPUs one training run holds at least: its workers, one Ray Data pair-maker actor (which reads its own
    shards: the stream has no read tasks), and the validation pipeline's actor (it runs while the training stream
    holds its actors)."""
    t = cfg.train
    return max(t.num_workers, 1) * t.cpus_per_worker + cfg.data.cpus_per_actor + VAL_CPUS


def worker_resources(cfg: ExperimentConfig) -> dict[str, float]:
    t = cfg.train
    return {"CPU": t.cpus_per_worker, **({"GPU": t.gpus_per_worker} if t.use_gpu else {}), **t.worker_resources}


def check_resources(cfg: ExperimentConfig, ray) -> None:
    """The cluster's nodes as they are now can hold the run (skipped on an autoscaling cluster, whose nodes may
    not exist yet)."""
    t, d = cfg.train, cfg.data
    total = ray.cluster_resources()
    where = getattr(ray, "where", "the cluster")
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    for name, amount in t.worker_resources.items():
        if max(t.num_workers, 1) * amount > total.get(name, 0) + 1e-9:
            raise ConfigError(
                f"train.worker_resources asks {amount:g} {name!r} for each of train.num_workers={t.num_workers} "
                f"worker(s), but {where} offers {total.get(name, 0):g} (start nodes with "
                f"`ray start --resources '{{\"{name}\": N}}'`, or pass --autoscaling if the autoscaler adds them)"
            )
    need_cpu = max(t.num_workers, 1) * t.cpus_per_worker
    if run_cpus(cfg) > cpus + 1e-9:
        raise ConfigError(
            f"train.num_workers={t.num_workers} x train.cpus_per_worker={t.cpus_per_worker} = {need_cpu} CPUs plus "
            f"data.cpus_per_actor={d.cpus_per_actor} for at least one Ray Data actor (+{VAL_CPUS} for validation) "
            f"exceed the {cpus:g} CPUs of {where} "
            "(the run would hang waiting for data): lower them or add nodes"
        )
    if t.use_gpu and max(t.num_workers, 1) * t.gpus_per_worker > gpus:
        raise ConfigError(
            f"train.use_gpu with train.num_workers={t.num_workers} x train.gpus_per_worker={t.gpus_per_worker} "
            f"needs more GPUs than the {gpus:g} of {where}"
        )


class LocalResources:
    """What a local Ray instance started here will have (Ray counts the CPUs this process may use and the GPUs
    torch sees): `check_resources` refuses an impossible run before Ray starts."""

    where = "this machine (the local Ray instance rayeq would start)"

    def cluster_resources(self) -> dict[str, float]:
        try:
            from ray._private.utils import get_num_cpus

            cpus = get_num_cpus()
        except (ImportError, AttributeError):
            cpus = len(os.sched_getaffinity(0))
        import torch

        return {"CPU": float(cpus), "GPU": float(torch.cuda.device_count())}

    def nodes(self) -> list[dict[str, Any]]:
        return [{"Alive": True, "Resources": self.cluster_resources()}]


def starts_local_ray(address: str | None) -> bool:
    """`connect_ray(address)` would start a local instance (no address, no $RAY_ADDRESS, Ray not connected)."""
    import ray

    return not (address or os.environ.get("RAY_ADDRESS") or ray.is_initialized())


def extract_plan(ray, actors: int | None) -> dict[str, Any]:
    """Actors and resources for feature extraction on the connected cluster: one actor per GPU, else
    CPU actors of up to 4 threads each, leaving room for the Parquet reads."""
    total = ray.cluster_resources()
    gpus, cpus = int(total.get("GPU", 0)), total.get("CPU", 1)
    if gpus:
        return {"actors": actors or gpus, "num_gpus": 1, "num_cpus": 1, "threads": 4, "use_gpu": True}
    per = int(min(4, max(1, cpus - 1)))
    n = actors or max(1, int((cpus - 0.5) // per))
    return {"actors": n, "num_gpus": 0, "num_cpus": per, "threads": per, "use_gpu": False}
