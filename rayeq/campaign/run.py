"""The start of a campaign of Tune trials over the train path, shared by `rayeq sweep` and `rayeq study`: the base
resolved and checked before Ray starts (`open_campaign`), what the directory records of what made it and the rule
for continuing it (`record_of`, `check_saved`), what one trial holds and how many fit (`trial_footprint`,
`check_cluster`), Ray connected and the directory written once every check passed (`start_campaign`), and a line
per finished trial (`progress_callback`). Public Ray Tune APIs only."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import yaml

from rayeq.campaign.spec import base_config
from rayeq.config import ConfigError, ExperimentConfig, apply_overrides, from_dict

TRAINABLE_CPUS = 0.05  # the Tune function only waits on its TorchTrainer


def trial_footprint(cfg: ExperimentConfig) -> dict[str, float]:
    """What one trial holds at least: its workers, one Ray Data actor, the validation actor, the trainable."""
    from rayeq.cluster import run_cpus

    t = cfg.train
    cpus = run_cpus(cfg) + TRAINABLE_CPUS
    workers = max(t.num_workers, 1)
    custom = {k: workers * v for k, v in t.worker_resources.items()}
    return {"CPU": cpus, "GPU": t.num_workers * t.gpus_per_worker if t.use_gpu else 0.0, **custom}


def record_of(spec, used_overrides: list[str], base: ExperimentConfig) -> dict[str, Any]:
    """What a sweep or study directory records of what made it (its file, the resolved base config)."""
    return {
        "fingerprint": spec.fingerprint(),
        spec.kind: spec.model_dump(),
        "base_overrides": used_overrides,
        "base": base.to_dict(),
    }


def _as_today(base: dict[str, Any] | None) -> dict[str, Any] | None:
    """A recorded base config as this version writes it: keys added since it was recorded take their defaults
    (which keep what they add off), so a study or sweep begun before them still resumes; one that no longer
    loads is returned as recorded (and so differs)."""
    try:
        return from_dict(base).to_dict() if base is not None else None
    except ConfigError:
        return base


def check_saved(saved: Path, record: dict[str, Any], spec, resume: bool) -> None:
    """A sweep's or study's directory is continued only with --resume and only by the same file and base;
    nothing there is ever overwritten."""
    kind, where = spec.kind, saved.parent
    if saved.is_file():
        old = yaml.safe_load(saved.read_text())
        if not resume:
            raise ConfigError(
                f"{kind} directory {str(where)!r} already holds {kind} {spec.name!r}: pass --resume to continue it, "
                f"or give the {kind} another name (nothing there is overwritten)"
            )
        if old.get("fingerprint") != record["fingerprint"] or _as_today(old.get("base")) != record["base"]:
            raise ConfigError(
                f"--resume: {str(saved)!r} was made by a different {kind} file or base config; resuming it with "
                f"this one is refused. Give the {kind} another name to start a new one."
            )
    elif resume:
        raise ConfigError(f"--resume: {str(where)!r} holds no {kind} {spec.name!r} to resume")


def absolute_base(base: ExperimentConfig) -> tuple[ExperimentConfig, dict[str, Any]]:
    """The base with absolute data and Aim paths (trials run in Tune's per-trial working directories)
    and its data checked; the built-in set is rendered here once, before any trial needs it."""
    from rayeq.data.feed.pipeline import check_data, resolve_data_dir
    from rayeq.track import resolve_track_repo

    data_dir = resolve_data_dir(base)
    base = from_dict(
        apply_overrides(base.to_dict(), [f"data.path={data_dir.resolve()}", f"track.repo={resolve_track_repo(base)}"])
    )
    meta, _ = check_data(base, "train")
    return base, meta


def check_cluster(spec, cfg: ExperimentConfig, ray, autoscaling: bool = False) -> int:
    """Refuse resources no node can hold; return how many trials run at once. On an autoscaling
    cluster the nodes that would hold the trials may not exist yet: no check, and as many trials at
    once as max_concurrent (else num_samples) says; the autoscaler adds nodes for them."""
    if autoscaling:
        return spec.max_concurrent or spec.num_samples
    t = cfg.train
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    per_worker = {"CPU": t.cpus_per_worker, "GPU": t.gpus_per_worker if t.use_gpu else 0.0, **t.worker_resources}
    if not any(all(n.get(k, 0) >= v for k, v in per_worker.items()) for n in nodes):
        biggest = max(((n.get("CPU", 0), n.get("GPU", 0)) for n in nodes), default=(0, 0))
        raise ConfigError(
            f"{spec.kind} {spec.name!r}: a trial worker needs {per_worker} (resources.cpus_per_worker / "
            f"gpus_per_worker, train.worker_resources), but no node of "
            f"{getattr(ray, 'where', 'the cluster')} has that much (the biggest "
            f"has {biggest[0]:g} CPU, {biggest[1]:g} GPU)"
        )
    need = trial_footprint(cfg)
    total = ray.cluster_resources()
    fits = min(total.get(k, 0) / v for k, v in need.items() if v > 0)
    if fits < 1:
        have = {k: total.get(k, 0) for k in need}
        raise ConfigError(
            f"{spec.kind} {spec.name!r}: one trial needs {need} ({t.num_workers} worker(s) x {t.cpus_per_worker} "
            f"CPU, a Ray Data actor of {cfg.data.cpus_per_actor} CPU, reads and the trainable), more than "
            f"{getattr(ray, 'where', 'the cluster')} has: {have}"
        )
    n = int(fits + 1e-9)
    return max(1, min(n, spec.max_concurrent or n, spec.num_samples))


def tune_verbosity() -> int:
    """Tune's status tables on the console only with --verbose: rayeq prints a line per finished trial and the
    trials' epoch lines."""
    from rayeq.cluster import verbose_ray

    return 1 if verbose_ray() else 0


def open_campaign(spec, overrides: list[str], address: str | None, autoscaling: bool, check_base=None):
    """Everything a sweep or study can check before Ray starts, in order: its base config (`check_base(base)` then
    checks what the spec asks of it), the tracker, the local machine's room for one trial, and the data (rendered
    here once when it is the built-in set). Returns (base with absolute paths, the overrides that made it, meta)."""
    from rayeq.cluster import LocalResources, starts_local_ray
    from rayeq.track import check_backend

    base, used_overrides = base_config(spec, list(overrides))
    if check_base is not None:
        check_base(base)
    check_backend(base)  # as `rayeq train` does, before Ray starts rather than in every trial
    if starts_local_ray(address):
        check_cluster(spec, base, LocalResources(), autoscaling)  # before Ray starts and the data is made
    base, meta = absolute_base(base)
    return base, used_overrides, meta


def start_campaign(spec, base: ExperimentConfig, saved: Path, record: dict[str, Any], address, autoscaling, log):
    """Ray connected, the trials' fit on the cluster checked, then the first write: the directory and its record
    (`saved`), and the Aim repo the trials log to. Returns (the ray module, how many trials run at once)."""
    from rayeq.cluster import connect_ray
    from rayeq.track import backend_of, ensure_aim_repo, resolve_track_repo

    ray = connect_ray(address, log)
    concurrency = check_cluster(spec, base, ray, autoscaling)
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(yaml.safe_dump(record, sort_keys=False))
    if backend_of(base) == "aim":
        ensure_aim_repo(resolve_track_repo(base))
    ray.data.DataContext.get_current().enable_progress_bars = False  # rayeq prints each trial's progress
    return ray, concurrency


# the trials' last states Tune reported, by the key a campaign's callback was made with (a restored sweep's callback
# is Tune's restored copy, not the object made in this session: it reports here, through a module-level function,
# which pickles by reference)
TRIAL_STATES: dict[str, dict[str, str]] = {}


def _record_states(key: str, trials) -> None:
    TRIAL_STATES[key] = {str(t): t.status for t in trials}


@functools.cache
def _progress_class():
    from ray.tune import Callback

    class Progress(Callback):
        """A line per finished trial (a sweep's trial, a study's run), with the count and an ETA; the trials' states
        at each step of Tune's loop in `TRIAL_STATES[key]`."""

        def __init__(self, total: int, metrics: list[str], kind: str, noun: str, key: str):
            self.total, self.metrics, self.kind, self.noun, self.key = total, metrics, kind, noun, key
            self.t0, self.done = time.perf_counter(), 0

        def setup(self, **info):  # each session, including a --resume (the callback is restored)
            self.t0, self.done = time.perf_counter(), 0

        def on_step_end(self, iteration, trials, **info):
            _record_states(self.key, trials)

        def on_experiment_end(self, trials, **info):
            _record_states(self.key, trials)

        def _line(self, trial, what: str) -> None:
            self.done += 1
            r = trial.last_result or {}
            shown = ", ".join(f"{m} {r[m]:.4f}" for m in self.metrics if isinstance(r.get(m), float))
            el = time.perf_counter() - self.t0
            eta = el / self.done * (self.total - self.done)
            label = (trial.config or {}).get("run", trial.trial_id)
            print(
                f"{self.kind}: {self.noun} {label} {what}: {shown} "
                f"[{self.done}/{self.total} this session, {el:.0f}s, ETA {eta:.0f}s]",
                flush=True,
            )

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._line(trial, f"done after {(trial.last_result or {}).get('epoch', '?')} epoch(s)")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._line(trial, f"FAILED (see {trial.path})")

    return Progress


def progress_callback(total: int, metrics: list[str], kind: str = "sweep", noun: str = "trial", key: str = ""):
    """The Tune callback of a campaign (`key`: its directory, under which `TRIAL_STATES` keeps its trials' states)."""
    return _progress_class()(total, metrics, kind, noun, key)
