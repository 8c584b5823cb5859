"""`rayeq study`: every arm x setting x seed is one `rayeq train` run (Ray Train TorchTrainer + Ray
Data), scheduled by Ray Tune as a grid of trials (as many at once as the cluster holds), then scored
with `rayeq eval`'s protocols inside the same trial. The study directory holds everything:

    <storage_path>/<name>/
      study.yaml            the study as run (resolved base config included); --resume checks it
      runs/<run>/           each run's Train directory: config.yaml, metrics.jsonl, checkpoints
      evals/<run>.json      each run's eval result (written last: its presence means "done")
      tune-<time>/          each session's Tune experiment
      results.csv           one row per run
      summary.md|json|png   per arm (and setting): mean ± std and min-max over seeds, floors, ceiling

`--resume` never redoes a finished evaluation (evals/<run>.json) nor a finished training (a
checkpoint at the last epoch); an unfinished training continues from its latest checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from rayeq.campaign.run import (
    TRAINABLE_CPUS,
    check_saved,
    open_campaign,
    progress_callback,
    record_of,
    start_campaign,
    tune_verbosity,
)
from rayeq.config import ConfigError, ExperimentConfig, from_dict
from rayeq.rundir import RunDir
from rayeq.study.spec import (
    Run,
    StudySpec,
    check_runs,
    check_study,
    eval_path,
    expand,
    load_study,
)

STUDY_FILE = "study.yaml"


def train_and_evaluate(cfg: ExperimentConfig, run: Run, study: dict[str, Any], log=print) -> dict[str, Any]:
    """One run of the study: train (or continue) it to its last epoch, evaluate it, write its eval JSON.
    Returns the stored result; a finished one is read back, not redone."""
    from rayeq.train.driver import build_trainer

    out = Path(study["dir"]) / "evals" / f"{run.name}.json"
    if out.is_file():
        log("already evaluated; kept")
        return json.loads(out.read_text())
    run_dir = RunDir.of(cfg)
    t0 = time.perf_counter()
    done = run_dir.epochs_done()
    if done >= cfg.train.epochs:
        log(f"already trained ({done} epochs); evaluating")
    else:
        if done:
            log(f"continuing from its checkpoint at epoch {done}")
        extra = {"study": {"name": study["name"], "arm": run.arm, "setting": run.setting, "seed": run.seed}}
        trainer, _, _ = build_trainer(cfg, extra_params=extra, log=log)  # in a Tune trial: Ray is connected
        trainer.fit()
    t1 = time.perf_counter()
    from rayeq.eval.run import evaluate

    e = study["eval"]
    result = evaluate(
        run_dir.path,
        protocols=e["protocols"],
        fast=e["fast"],
        which=e["checkpoint"],
        overrides=e["overrides"],
        log=log,
    )
    train = run_dir.last_metrics()
    result.update(
        study=study["name"],
        arm=run.arm,
        setting=run.setting,
        seed=run.seed,
        train_metrics={k: v for k, v in train.items() if isinstance(v, (int, float))},
        train_seconds=round(t1 - t0, 1),
        eval_seconds=round(time.perf_counter() - t1, 1),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)  # whole or absent: an interrupted write is never read as a finished run
    return result


def _trial(params: dict[str, Any], configs: dict[str, dict], runs: dict[str, Run], study: dict) -> None:
    """The Tune function trainable: one run of the study, trained then evaluated."""
    from ray import tune

    from rayeq.cluster import worker_console

    name = params["run"]
    result = train_and_evaluate(from_dict(configs[name]), runs[name], study, log=worker_console(f"[{name}] "))
    shown = {k: v for k, v in result["metrics"].items() if k in study["metrics"]}
    tune.report({**shown, "epoch": result["epoch"]})


def run_study(
    path: str | Path,
    resume: bool = False,
    address: str | None = None,
    storage_path: str | None = None,
    overrides: list[str] = (),
    autoscaling: bool = False,
    summary_only: bool = False,
    log=print,
) -> dict[str, Any]:
    """Train and evaluate the study's runs not evaluated yet, then write its summary. `summary_only`: write the
    summary of the runs evaluated so far (the others marked) and train nothing, e.g. after a deadline stopped it."""
    t0 = time.perf_counter()
    spec = load_study(path, storage_path)
    from rayeq.data.schema import is_objects

    study_dir = Path(spec.storage_path).expanduser().resolve() / spec.name
    # arms and grid refused before any data is touched
    base, used_overrides, meta = open_campaign(
        spec, overrides, address, autoscaling, lambda b: check_runs(spec, b, study_dir)
    )
    configs = check_study(spec, base, study_dir, is_objects(meta))
    runs = expand(spec)
    record = record_of(spec, used_overrides, base)
    saved = study_dir / STUDY_FILE
    if summary_only and not saved.is_file():
        raise ConfigError(f"--summary-only: {str(study_dir)!r} holds no study {spec.name!r} yet (no {STUDY_FILE})")
    check_saved(saved, record, spec, resume or summary_only)

    unevaluated = [r for r in runs if not eval_path(study_dir, r.name).is_file()]
    todo = [] if summary_only else unevaluated
    log(
        f"study {spec.name}: {len(runs)} runs ({len(spec.arms)} arms x {len(runs) // len(spec.arms) // len(spec.seeds)}"
        f" setting(s) x {len(spec.seeds)} seeds), {len(runs) - len(unevaluated)} already evaluated; dir {study_dir}"
    )
    if todo:
        _, concurrency = start_campaign(spec, base, saved, record, address, autoscaling, log)
        concurrency = min(concurrency, len(todo))
        _fit(spec, base, configs, todo, study_dir, concurrency, log)
    from rayeq.study.summary import collect_rows, write_summary

    rows = collect_rows(runs, study_dir, spec)
    out = write_summary(rows, spec, study_dir, log)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def _fit(spec: StudySpec, base, configs, todo: list[Run], study_dir: Path, concurrency: int, log) -> None:
    from ray import tune

    study = {
        "name": spec.name,
        "dir": str(study_dir),
        "eval": spec.eval.model_dump(),
        "metrics": spec.summary.metrics,
    }
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial,
            configs={r.name: configs[r.name].to_dict() for r in todo},
            runs={r.name: r for r in todo},
            study=study,
        ),
        {"cpu": TRAINABLE_CPUS},
    )
    log(
        f"study {spec.name}: {len(todo)} run(s) to do, {concurrency} at a time "
        f"(train {base.train.epochs} epochs, then eval {spec.eval.protocols}{' --fast' if spec.eval.fast else ''})"
    )
    session = time.strftime("%Y%m%d-%H%M%S")
    tuner = tune.Tuner(
        trainable,
        param_space={"run": tune.grid_search([r.name for r in todo])},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=concurrency,
            trial_name_creator=lambda t: t.config["run"],
            trial_dirname_creator=lambda t: t.config["run"],
        ),
        run_config=tune.RunConfig(
            name=f"tune-{session}",
            storage_path=str(study_dir),
            callbacks=[progress_callback(len(todo), spec.summary.metrics, "study", "run", str(study_dir))],
            verbose=tune_verbosity(),
        ),
    )
    tuner.fit()
