"""`rayeq eval`: frozen-encoder protocols on a run or checkpoint -> JSON, Markdown and Aim.

Every result stands beside its floors, measured with the same protocols, pairs and settings:
- `random_init`: an untrained encoder of the same architecture (the run's config, `train.seed`),
  evaluated once per data set, architecture and eval settings and cached in `$RAYEQ_CACHE/floors/`;
- `mean_predictor`: predicting the train targets' mean (R²) or the most frequent train class (top-1).
A metric at or below either floor is listed in `at_or_below_floor` and marked in every table (`rayeq/report.py`).

This module runs the evaluation; what it measures is `eval/measure.py`, the floor's cache `eval/floors.py`, what it
writes (JSON, Markdown, the tracker) `eval/output.py`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rayeq.config import ConfigError, ExperimentConfig, apply_overrides, from_dict
from rayeq.data.schema import DataError, is_objects, read_meta
from rayeq.eval.floors import random_init_floor
from rayeq.eval.measure import PER_CLASS_METRIC, PROBES, PROTOCOLS_3D, PROTOCOLS_IMAGES, measure, settings_for
from rayeq.eval.output import log_to_tracker, protocol_label
from rayeq.methods import USES_LABELS, method_label
from rayeq.report import at_or_below_floor
from rayeq.rundir import load_checkpoint


def with_eval_overrides(cfg: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """Apply `eval.*` overrides to a checkpoint's config (the model's own keys cannot change)."""
    bad = [o for o in overrides if not o.split("=", 1)[0].startswith("eval.")]
    if bad:
        raise ConfigError(f"eval overrides must be eval.* keys (the encoder is fixed by its checkpoint): {bad}")
    return from_dict(apply_overrides(cfg.to_dict(), list(overrides))) if overrides else cfg


def use_ray_for(extractor: str, address: str | None) -> bool:
    import os

    if extractor == "auto":  # a cluster is there when the user names one (or `ray job submit` set it)
        return bool(address or os.environ.get("RAY_ADDRESS"))
    return extractor == "ray"


def evaluate(
    path: str | Path,
    data: str | Path | None = None,
    protocols: list[str] | None = None,
    fast: bool = False,
    which: str = "latest",
    overrides: list[str] = (),
    address: str | None = None,
    log=print,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    loaded = load_checkpoint(path, which)
    loaded.cfg = cfg = with_eval_overrides(loaded.cfg, list(overrides))
    if data is not None:
        data_dir = Path(data).expanduser()
    else:
        from rayeq.data.feed.pipeline import resolve_data_dir

        data_dir = resolve_data_dir(cfg)
    meta = read_meta(data_dir)
    three_d = is_objects(meta)
    # a set may narrow them (the photo set: its held-out photos are classes no training crop has, so no top-1)
    allowed = tuple(meta.get("protocols") or (PROTOCOLS_3D if three_d else PROTOCOLS_IMAGES))
    unknown = [p for p in protocols or [] if p not in PROTOCOLS_3D + PROTOCOLS_IMAGES]
    if unknown:
        raise ConfigError(f"unknown protocol(s) {unknown}; known: {sorted(set(PROTOCOLS_3D + PROTOCOLS_IMAGES))}")
    wanted = list(protocols or [p for p in cfg.eval.protocols if p in allowed] or allowed)
    bad = [p for p in wanted if p not in allowed]
    if bad:
        why = meta.get("split_from", "") if meta.get("protocols") else f"they need {'image' if three_d else '3D'} data"
        raise DataError(f"protocol(s) {bad}: {str(data_dir)!r} allows {list(allowed)} ({why})")
    settings = settings_for(cfg, fast)
    use_ray = use_ray_for(cfg.eval.extractor, address)
    if use_ray:
        from rayeq.cluster import connect_ray

        connect_ray(address, log)
    log(
        f"eval {loaded.path} ({method_label(cfg.method.name)}, epoch {loaded.state.epoch}) on {data_dir}: "
        f"{wanted}{' (fast)' if fast else ''}, {protocol_label(cfg.eval.preset, cfg.eval.protocol())}"
    )
    scores = measure(loaded, data_dir, meta, wanted, settings, use_ray, log)
    random_init = random_init_floor(loaded, data_dir, meta, wanted, settings, use_ray, log)
    floors = {"random_init": random_init["metrics"], "mean_predictor": scores["mean_predictor"]}
    metrics = scores["metrics"]
    per_class = scores["per_class"]
    for name, row in per_class.items():
        row["random_init"] = random_init["per_class"].get(name, {}).get("value")
    result = {
        "checkpoint": str(loaded.path),
        "run_dir": str(loaded.run_dir),
        "run": loaded.run_dir.name,
        "method": cfg.method.name,
        "uses_labels": USES_LABELS.get(cfg.method.name),
        "epoch": loaded.state.epoch,
        "data": str(data_dir),
        "protocols": wanted,
        "preset": cfg.eval.preset,
        "protocol": cfg.eval.protocol(),
        "fast": fast,
        "settings": {
            **{p: settings[p].__dict__ for p in PROBES if p in wanted},
            **({"knn": cfg.eval.knn.model_dump()} if "knn" in wanted else {}),
            "pairs_per_object": cfg.eval.pairs_per_object,
            "views_per_object": cfg.eval.views_per_object,
            "train_rows": cfg.eval.train_rows,
            "parts": list(cfg.eval.parts),
            "feature_seed": cfg.eval.feature_seed,
            "extractor": "ray" if use_ray else "local",
        },
        "r2_definitions": {
            "r2": "SIE: 1 - SS_res / SS_tot around one mean over all target entries, on held-out objects' pairs",
            "r2_per_dim": "per target dimension, then averaged (sklearn's uniform average), held-out pairs",
            "r2_train": "SIE's global R² on pairs of the train objects the probe was fitted on",
            "transforms/*/r2": "the transform protocol's headline: R² per parameter, then averaged (a mean "
            "predictor scores 0); transforms/*/r2_global: SIE's global R² of the same predictions",
        },
        "metrics": metrics,
        "floors": floors,
        "at_or_below_floor": at_or_below_floor(metrics, floors),
        "per_class": {"metric": PER_CLASS_METRIC, "classes": per_class} if per_class else {},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    log_to_tracker(loaded, metrics, floors, log)
    return result
