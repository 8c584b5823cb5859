"""The Ray session and resource arithmetic: connecting (or starting local Ray bound to localhost),
what one training run holds at least, and checks that a cluster can hold it before anything starts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rayeq.config import ConfigError, ExperimentConfig
from rayeq.data.feed.pipeline import READ_CPUS, VAL_CPUS


def connect_ray(address: str | None, log=print):
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # Ray >= 2.59 clusters use token auth; a client connecting by address must say so
        token = Path.home() / ".ray" / "auth_token"
        if "RAY_AUTH_MODE" not in os.environ and token.is_file():
            os.environ["RAY_AUTH_MODE"] = "token"
        log(f"connecting to Ray at {address}")
        ray.init(address=address, log_to_driver=True)
    else:
        log("starting a local Ray instance (dashboard on 127.0.0.1)")
        ray.init(dashboard_host="127.0.0.1", log_to_driver=True)
    return ray


def run_cpus(cfg: ExperimentConfig) -> float:
    """The CPUs one training run holds at least: its workers, one Ray Data actor and a read task, and the
    validation pipeline's actor and read task (it runs while the training stream holds its actors)."""
    t = cfg.train
    return max(t.num_workers, 1) * t.cpus_per_worker + cfg.data.cpus_per_actor + READ_CPUS + VAL_CPUS + READ_CPUS


def worker_resources(cfg: ExperimentConfig) -> dict[str, float]:
    t = cfg.train
    return {"CPU": t.cpus_per_worker, **({"GPU": t.gpus_per_worker} if t.use_gpu else {}), **t.worker_resources}


def check_resources(cfg: ExperimentConfig, ray) -> None:
    """The cluster's nodes as they are now can hold the run (skipped on an autoscaling cluster, whose nodes may
    not exist yet)."""
    t, d = cfg.train, cfg.data
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    for name, amount in t.worker_resources.items():
        if max(t.num_workers, 1) * amount > total.get(name, 0) + 1e-9:
            raise ConfigError(
                f"train.worker_resources asks {amount:g} {name!r} for each of train.num_workers={t.num_workers} "
                f"worker(s), but the cluster's nodes offer {total.get(name, 0):g} (start nodes with "
                f"`ray start --resources '{{\"{name}\": N}}'`, or pass --autoscaling if the autoscaler adds them)"
            )
    need_cpu = max(t.num_workers, 1) * t.cpus_per_worker
    if run_cpus(cfg) > cpus + 1e-9:
        raise ConfigError(
            f"train.num_workers={t.num_workers} x train.cpus_per_worker={t.cpus_per_worker} = {need_cpu} CPUs plus "
            f"data.cpus_per_actor={d.cpus_per_actor} for at least one Ray Data actor (+{READ_CPUS} to read, "
            f"+{VAL_CPUS + READ_CPUS} for validation) "
            f"exceed the cluster's {cpus:g} "
            "CPUs (the run would hang waiting for data): lower them or add nodes"
        )
    if t.use_gpu and max(t.num_workers, 1) * t.gpus_per_worker > gpus:
        raise ConfigError(
            f"train.use_gpu with train.num_workers={t.num_workers} x train.gpus_per_worker={t.gpus_per_worker} "
            f"needs more GPUs than the cluster's {gpus:g}"
        )


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
