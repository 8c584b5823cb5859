"""`rayeq sweep`: Ray Tune + Optuna over TorchTrainer runs.

One Tune *function* trainable per trial builds a TorchTrainer (the supported Train V2 pattern) whose
RunConfig carries a TuneReportCallback, so every epoch's report reaches Tune: OptunaSearch proposes
(TPE, or multi-objective TPE / NSGA-II for several objectives) and ASHA stops weak trials on one
metric. The sweep directory holds everything:

    <storage_path>/<name>/
      sweep.yaml            the sweep as run (resolved base config included); --resume checks it
      optuna.db             Optuna's study (SQLite)
      tune/                 Tune's experiment state (what --resume restores)
      trials/<trial>/       each trial's Train run dir: config.yaml, metrics.jsonl, checkpoints
      sweep_results.csv     one row per trial; sweep_results.md sorted by the first objective
      best_config.yaml      the best trial's config, ready for `rayeq train`
      pareto.csv|md|png     several objectives: the Pareto front of the trials that ran to the end
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

import yaml

from rayeq.campaign.run import (
    TRAINABLE_CPUS,
    TRIAL_STATES,
    check_saved,
    open_campaign,
    progress_callback,
    record_of,
    start_campaign,
    tune_verbosity,
)
from rayeq.config import ExperimentConfig, from_dict
from rayeq.report import number, table
from rayeq.sweep.spec import SweepSpec, check_metrics, check_space, load_sweep, trial_config
from rayeq.track import command_path

SWEEP_FILE = "sweep.yaml"


def trial_name(spec_name: str, trial_id: str) -> str:
    """The sweep's name and Tune's trial id, which Tune keeps when it restores a sweep: an unfinished
    trial continues in its own run directory (and from its checkpoint) under --resume."""
    return f"{spec_name}-{trial_id}"


def _sampler(spec: SweepSpec):
    import optuna

    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=spec.seed, population_size=max(2, min(50, spec.num_samples // 2)))
    # TPE, multi-objective TPE when there are several objectives; a few random trials first
    return optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=max(2, min(10, spec.num_samples // 3)))


def _trial(params: dict[str, Any], base: dict, sweep: dict) -> None:
    """The Tune function trainable: one TorchTrainer run of the base config with `params`."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from rayeq.train.driver import build_trainer

    ctx = tune.get_context()
    name = trial_name(sweep["name"], ctx.get_trial_id())
    cfg = trial_config(from_dict(base), params, name, sweep["trials_dir"])
    cfg.track.experiment = cfg.track.experiment or sweep["name"]  # the sweep's trials side by side in Aim
    extra = {"sweep": {"name": sweep["name"], "trial": name, "params": params}}
    from rayeq.cluster import worker_console

    trainer, _, _ = build_trainer(
        cfg, callbacks=[TuneReportCallback()], extra_params=extra, log=worker_console(f"[{name}] ")
    )
    trainer.fit()


def run_sweep(
    path: str | Path,
    resume: bool = False,
    address: str | None = None,
    storage_path: str | None = None,
    overrides: list[str] = (),
    autoscaling: bool = False,
    log=print,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    spec = load_sweep(path, storage_path)
    base, used_overrides, meta = open_campaign(spec, overrides, address, autoscaling, lambda b: check_space(spec, b))
    from rayeq.data.schema import is_objects
    from rayeq.runinfo import image_target_widths
    from rayeq.train.probes import reported_metric_names

    has_val = meta["splits"].get("val", 0) > 0
    regress = None if is_objects(meta) else image_target_widths(base)  # image sets: aug_<family>_r2 per family on
    check_metrics(spec, base, reported_metric_names(is_objects(meta), has_val, base.train.floor_probes, regress))

    sweep_dir = Path(spec.storage_path).expanduser().resolve() / spec.name
    record = record_of(spec, used_overrides, base)
    saved = sweep_dir / SWEEP_FILE
    check_saved(saved, record, spec, resume)
    _, concurrency = start_campaign(spec, base, saved, record, address, autoscaling, log)

    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    trainable = tune.with_resources(
        tune.with_parameters(
            _trial, base=base.to_dict(), sweep={"name": spec.name, "trials_dir": str(sweep_dir / "trials")}
        ),
        {"cpu": TRAINABLE_CPUS},
    )
    tune_dir = sweep_dir / "tune"
    callbacks = [progress_callback(spec.num_samples, spec.metrics, key=str(sweep_dir))]
    if resume and tune.Tuner.can_restore(str(tune_dir)):
        log(f"resuming sweep {spec.name} from {tune_dir} (finished trials are kept, unfinished ones continue)")
        tuner = tune.Tuner.restore(str(tune_dir), trainable=trainable, resume_errored=True)
    else:
        import optuna

        from rayeq.cluster import verbose_ray

        if not verbose_ray():  # Optuna's INFO lines (a study created, each trial's values) are Tune's to report
            optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = optuna.storages.RDBStorage(f"sqlite:///{sweep_dir / 'optuna.db'}")
        multi = len(spec.objectives) > 1
        searcher = OptunaSearch(
            metric=spec.metrics if multi else spec.metrics[0],
            mode=spec.modes if multi else spec.modes[0],
            sampler=_sampler(spec),
            study_name=spec.name,
            storage=storage,
        )
        searcher = ConcurrencyLimiter(searcher, max_concurrent=concurrency)
        if spec.scheduler is not None:
            a = spec.scheduler
            scheduler = ASHAScheduler(
                time_attr="epoch",
                metric=a.metric,
                mode=a.mode,
                max_t=base.train.epochs,
                grace_period=a.grace_period,
                reduction_factor=a.reduction_factor,
            )
        else:
            scheduler = FIFOScheduler()
        tuner = tune.Tuner(
            trainable,
            param_space={k: d.to_tune() for k, d in spec.space.items()},
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=spec.num_samples,
                trial_name_creator=lambda t: trial_name(spec.name, t.trial_id),
                trial_dirname_creator=lambda t: trial_name(spec.name, t.trial_id),
            ),
            run_config=tune.RunConfig(
                name="tune", storage_path=str(sweep_dir), callbacks=callbacks, verbose=tune_verbosity()
            ),
        )
        log(
            f"sweep {spec.name}: {spec.num_samples} trials of {base.method.name}, {concurrency} at a time, "
            f"objectives {[f'{o.metric} ({o.mode})' for o in spec.objectives]}; "
            f"{'ASHA on ' + spec.scheduler.metric if spec.scheduler else 'no early stopping'}; "
            f"dir {sweep_dir}"
        )
    grid = tuner.fit()
    rows = collect_rows(grid, spec, base, TRIAL_STATES.get(str(sweep_dir), {}))
    out = write_results(rows, spec, base, sweep_dir, log)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def collect_rows(grid, spec: SweepSpec, base: ExperimentConfig, states: dict[str, str]) -> list[dict[str, Any]]:
    """A row per trial. `states`: Tune's trial states as the sweep's callback last saw them (`campaign.run`), which
    tell an ASHA stop (TERMINATED early) from an interruption (RUNNING, PENDING or PAUSED when the sweep was
    stopped); a trial it did not see (finished in an earlier session) is TERMINATED."""
    rows = []
    for result in grid:
        m = result.metrics or {}
        path = Path(result.path) if result.path else None
        name = path.name if path else "?"
        epochs = int(m.get("epoch", 0) or 0)
        state = states.get(name, "TERMINATED")
        if state == "ERROR" or (result.error is not None and not isinstance(result.error, FileNotFoundError)):
            status = "error"
        elif state in ("RUNNING", "PENDING", "PAUSED") or epochs == 0:
            status = "interrupted" if epochs else "not run"
        elif epochs >= base.train.epochs:
            status = "complete"
        else:
            status = "stopped early"
        config = result.config or {}
        params = {k: config.get(k) for k in spec.space}
        row = {"trial": name, "status": status, "epochs": epochs}
        row.update({m_: m.get(m_) for m_ in spec.metrics})
        if spec.scheduler and spec.scheduler.metric not in spec.metrics:
            row[spec.scheduler.metric] = m.get(spec.scheduler.metric)
        row.update(params)
        row["run_dir"] = str(Path(spec.storage_path).expanduser().resolve() / spec.name / "trials" / name)
        rows.append(row)
    return sorted(rows, key=lambda r: r["trial"])


def pareto_front(points: list[list[float]], modes: list[str]) -> list[int]:
    """Indices of the non-dominated points (each objective maximised or minimised as `modes` says)."""
    signed = [[v if mode == "max" else -v for v, mode in zip(p, modes, strict=True)] for p in points]
    front = []
    for i, p in enumerate(signed):
        dominated = any(
            all(q_ >= p_ for q_, p_ in zip(q, p, strict=True)) and any(q_ > p_ for q_, p_ in zip(q, p, strict=True))
            for j, q in enumerate(signed)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front


def _fmt(v) -> str:
    return number(v, sci=True)


def _markdown(rows: list[dict[str, Any]], cols: list[str]) -> str:
    return table(cols, [[_fmt(r.get(c)) for c in cols] for r in rows])


def _usable(rows, metrics):
    return [r for r in rows if all(isinstance(r.get(m), float) and math.isfinite(r[m]) for m in metrics)]


def write_results(rows, spec: SweepSpec, base: ExperimentConfig, sweep_dir: Path, log=print) -> dict[str, Any]:
    first = spec.objectives[0]
    cols = list(rows[0]) if rows else ["trial", "status", "epochs", *spec.metrics, *spec.space, "run_dir"]
    with open(sweep_dir / "sweep_results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    scored = _usable(rows, [first.metric])
    ordered = sorted(scored, key=lambda r: r[first.metric], reverse=first.mode == "max")
    ordered += [r for r in rows if r not in scored]
    shown = [c for c in cols if c != "run_dir"]
    table = _markdown(ordered, shown)
    (sweep_dir / "sweep_results.md").write_text(
        f"# sweep {spec.name}\n\nsorted by {first.metric} ({first.mode})\n\n{table}\n"
    )
    log(f"\nsweep {spec.name}: {len(rows)} trials, sorted by {first.metric} ({first.mode})\n{table}")
    out: dict[str, Any] = {"sweep_dir": str(sweep_dir), "rows": rows, "interrupted": False}
    complete = [r for r in ordered if r["status"] == "complete"]
    finished = [r for r in rows if r["status"] in ("complete", "stopped early", "error")]
    if len(finished) < spec.num_samples:
        out["interrupted"] = True
        log(
            f"\nthe sweep did not finish ({len(finished)} of {spec.num_samples} trials finished); "
            "run the same command with --resume to continue it"
        )
    # the best and the front come from trials that ran their full budget (ASHA-stopped trials report
    # early values); if none did, from every scored trial
    pool = [r for r in complete if r in scored] or scored
    if not pool:
        log("no trial reported the objective metrics; no best config written")
        return out
    best = max(pool, key=lambda r: r[first.metric] if first.mode == "max" else -r[first.metric])
    best_path = sweep_dir / "best_config.yaml"
    _write_config(best_path, base, spec, best, f"{spec.name}-best")
    out["best"] = best
    log(
        f"\nbest trial by {first.metric}: {best['trial']} ({_fmt(best[first.metric])}); its config: {best_path}\n"
        f"  train it: {command_path('rayeq')} train {best_path}"
    )
    if len(spec.objectives) > 1:
        pool = _usable(pool, spec.metrics)
        idx = pareto_front([[r[m] for m in spec.metrics] for r in pool], spec.modes)
        front = sorted((pool[i] for i in idx), key=lambda r: r[first.metric], reverse=first.mode == "max")
        out["pareto"] = front
        pcols = ["trial", *spec.metrics, *spec.space]
        with open(sweep_dir / "pareto.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=pcols, extrasaction="ignore")
            w.writeheader()
            w.writerows(front)
        ptable = _markdown(front, pcols)
        (sweep_dir / "pareto.md").write_text(f"# Pareto front of sweep {spec.name}\n\n{ptable}\n")
        for r in front:
            _write_config(sweep_dir / "pareto" / f"{r['trial']}.yaml", base, spec, r, r["trial"] + "-retrain")
        png = plot_pareto(rows, front, spec, sweep_dir / "pareto.png")
        log(
            f"\nPareto front ({len(front)} of {len(pool)} trials; {', '.join(spec.metrics)}):\n{ptable}\n"
            f"plot: {png}; configs: {sweep_dir / 'pareto'}/"
        )
    return out


def _write_config(path: Path, base: ExperimentConfig, spec: SweepSpec, row: dict, name: str) -> None:
    cfg = trial_config(base, {k: row[k] for k in spec.space}, name, "runs")
    path.parent.mkdir(parents=True, exist_ok=True)
    head = (
        f"# sweep {spec.name}, trial {row['trial']}: "
        + ", ".join(f"{m} {_fmt(row.get(m))}" for m in spec.metrics)
        + "\n"
        + "# searched: "
        + ", ".join(f"{k}={_fmt(row[k])}" for k in spec.space)
        + "\n"
    )
    path.write_text(head + yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def plot_pareto(rows, front, spec: SweepSpec, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mx, my = spec.metrics[0], spec.metrics[1]
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    styles = {"complete": ("tab:blue", "o"), "stopped early": ("tab:gray", "x"), "error": ("tab:red", "x")}
    for status, (color, marker) in styles.items():
        pts = [r for r in _usable(rows, [mx, my]) if r["status"] == status]
        if pts:
            ax.scatter([r[mx] for r in pts], [r[my] for r in pts], c=color, marker=marker, label=status)
    fr = sorted(front, key=lambda r: r[mx])
    ax.plot([r[mx] for r in fr], [r[my] for r in fr], "-o", c="tab:orange", mfc="none", ms=11, label="Pareto front")
    for r in _usable(rows, [mx, my]):
        ax.annotate(
            r["trial"].rsplit("-", 1)[-1], (r[mx], r[my]), textcoords="offset points", xytext=(4, 4), fontsize=7
        )
    ax.set_xlabel(f"{mx} ({spec.objectives[0].mode})")
    ax.set_ylabel(f"{my} ({spec.objectives[1].mode})")
    ax.set_title(
        f"sweep {spec.name}: {len(rows)} trials" + (" (first two objectives)" if len(spec.metrics) > 2 else "")
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
