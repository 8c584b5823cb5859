"""`rayeq eval`: frozen-encoder protocols on a run or checkpoint -> JSON, Markdown and Aim."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from rayeq.config import ConfigError, ExperimentConfig, apply_overrides, from_dict
from rayeq.data.schema import DataError, read_meta
from rayeq.eval.features import Features, LoadedCheckpoint, cached_features, load_checkpoint
from rayeq.eval.protocols import ProtocolSettings, knn_top1, linear_probe, part, regression

PROTOCOLS_3D = ("linear", "knn", "rotation", "color")
PROTOCOLS_IMAGES = ("linear", "knn", "transforms")
PARTS = ("full", "inv", "equi")
PROBES = ("linear", "rotation", "color", "transforms")  # the protocols that train a probe


def settings_for(cfg: ExperimentConfig, fast: bool) -> dict[str, ProtocolSettings]:
    """Each probe's settings from `eval.<protocol>`; `--fast` applies the `eval.fast` caps."""
    e = cfg.eval
    return {p: ProtocolSettings.from_config(getattr(e, p), e.fast if fast else None) for p in PROBES}


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
        from rayeq.data.pipeline import resolve_data_dir

        data_dir = resolve_data_dir(cfg)
    meta = read_meta(data_dir)
    three_d = meta["format"] == "rayeq-objects/1"
    allowed = PROTOCOLS_3D if three_d else PROTOCOLS_IMAGES
    unknown = [p for p in protocols or [] if p not in PROTOCOLS_3D + PROTOCOLS_IMAGES]
    if unknown:
        raise ConfigError(f"unknown protocol(s) {unknown}; known: {sorted(set(PROTOCOLS_3D + PROTOCOLS_IMAGES))}")
    wanted = list(protocols or [p for p in cfg.eval.protocols if p in allowed] or allowed)
    bad = [p for p in wanted if p not in allowed]
    if bad:
        raise DataError(
            f"protocol(s) {bad} need {'image' if three_d else '3D'} data; {str(data_dir)!r} allows {list(allowed)}"
        )
    settings = settings_for(cfg, fast)
    use_ray = use_ray_for(cfg.eval.extractor, address)
    if use_ray:
        from rayeq.train.driver import connect_ray

        connect_ray(address, log)
    log(f"eval {loaded.path} ({cfg.method.name}, epoch {loaded.state['epoch']}) on {data_dir}: {wanted}"
        f"{' (fast)' if fast else ''}")  # fmt: skip
    metrics: dict[str, float] = {}
    inv_dim = cfg.model.inv_dim
    num_classes = len(meta["classes"])
    knn = cfg.eval.knn
    if any(p in wanted for p in ("linear", "knn", "rotation", "color")):
        tr = cached_features(loaded, data_dir, "train", use_ray, log)
        va = cached_features(loaded, data_dir, "val", use_ray, log)
        for name in PARTS:
            xtr, ytr = _single_views(tr, name, inv_dim)
            xva, yva = _single_views(va, name, inv_dim)
            if "linear" in wanted:
                res = linear_probe(xtr, ytr, xva, yva, num_classes, settings["linear"])
                metrics[f"linear/{name}/top1"] = res["top1"]
                log(f"  linear/{name}: top-1 {res['top1']:.4f} (train {res['train_top1']:.4f})")
            if "knn" in wanted:
                metrics[f"knn/{name}/top1"] = knn_top1(xtr, ytr, xva, yva, num_classes, knn.k, knn.temperature)
                log(f"  knn/{name}: top-1 {metrics[f'knn/{name}/top1']:.4f}")
            for proto, targets in (("rotation", ("rel_rotation", "rel_rotation_canonical")),
                                   ("color", ("rel_color", "rel_color_cos_sin"))):  # fmt: skip
                if proto not in wanted:
                    continue
                ptr, pva = _pairs(tr, name, inv_dim), _pairs(va, name, inv_dim)
                for t in targets:
                    res = regression(ptr, tr.targets[t], pva, va.targets[t], settings[proto])
                    tag = {"rel_rotation": "", "rel_rotation_canonical": "_canonical", "rel_color": "",
                           "rel_color_cos_sin": "_cos_sin"}[t]  # fmt: skip
                    metrics[f"{proto}{tag}/{name}/r2"] = res["r2"]
                    metrics[f"{proto}{tag}/{name}/r2_per_dim"] = res["r2_per_dim"]
                    metrics[f"{proto}{tag}/r2_mean_baseline"] = res["r2_mean_baseline"]
                    r2, r2d, b = res["r2"], res["r2_per_dim"], res["r2_mean_baseline"]
                    log(f"  {proto}{tag}/{name}: R² {r2:.4f} (SIE, global mean; a mean predictor scores {b:.4f}), "
                        f"{r2d:.4f} (per dim)")  # fmt: skip
    if "transforms" in wanted:
        from rayeq.eval.transforms import transform_regression

        metrics.update(transform_regression(loaded, data_dir, settings["transforms"], log))
    result = {
        "checkpoint": str(loaded.path),
        "run_dir": str(loaded.run_dir),
        "run": loaded.run_dir.name,
        "method": cfg.method.name,
        "epoch": loaded.state["epoch"],
        "data": str(data_dir),
        "protocols": wanted,
        "fast": fast,
        "settings": {
            **{p: settings[p].__dict__ for p in PROBES if p in wanted},
            **({"knn": knn.model_dump()} if "knn" in wanted else {}),
            "pairs_per_object": cfg.eval.pairs_per_object,
            "feature_seed": cfg.eval.feature_seed,
            "extractor": "ray" if use_ray else "local",
        },
        "r2_definitions": {
            "r2": "SIE: 1 - SS_res / SS_tot around one mean over all target entries",
            "r2_per_dim": "per target dimension, then averaged (sklearn's uniform average)",
        },  # fmt: skip
        "metrics": metrics,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _log_to_aim(loaded, metrics, log)
    return result


def _single_views(f: Features, name: str, inv_dim: int):
    """Each view is a sample for classification."""
    if f.r2 is None:
        return part(f.r1, name, inv_dim), f.label
    return torch.cat([part(f.r1, name, inv_dim), part(f.r2, name, inv_dim)]), torch.cat([f.label, f.label])


def _pairs(f: Features, name: str, inv_dim: int) -> torch.Tensor:
    return torch.cat([part(f.r1, name, inv_dim), part(f.r2, name, inv_dim)], dim=1)  # (N, 2d)


def _log_to_aim(loaded: LoadedCheckpoint, metrics: dict[str, float], log) -> None:
    cfg = loaded.cfg
    run_id = loaded.state.get("tracker_run_id")
    if cfg.track.backend != "aim" or not run_id:
        return
    try:
        from rayeq.track import open_tracker
        from rayeq.train.driver import resolve_track_repo

        # the repo the run was trained with (a relative track.repo resolved where training ran)
        repo = loaded.state.get("track_repo") or resolve_track_repo(cfg)
        tracker = open_tracker("aim", repo, cfg.track.experiment or cfg.train.name, run_id, must_exist=True)
        tracker.log_metrics({f"eval/{k}": v for k, v in metrics.items()}, step=loaded.state["step"],
                            epoch=loaded.state["epoch"], subset="eval")  # fmt: skip
        tracker.close()
        log(f"  logged to Aim run {run_id}")
    except Exception as exc:  # the results are in the JSON either way
        log(f"  (could not log to Aim: {exc})")


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One column per run, one row per metric."""
    keys = sorted({k for r in results for k in r["metrics"]})
    head = "| metric | " + " | ".join(f"{r['run']} ({r['method']}, ep {r['epoch']})" for r in results) + " |"
    lines = [head, "|" + " --- |" * (len(results) + 1)]
    for k in keys:
        vals = [f"{r['metrics'][k]:.4f}" if k in r["metrics"] else "" for r in results]
        lines.append(f"| {k} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def write_outputs(result: dict[str, Any], out: str | Path | None, overwrite: bool) -> Path:
    """JSON (+ Markdown beside it). Default: <checkpoint>/eval/results[-fast].json, replaced on
    re-evaluation; an explicit --out that exists is only replaced with --overwrite."""
    if out is None:
        name = "results-fast.json" if result["fast"] else "results.json"
        path = Path(result["checkpoint"]) / "eval" / name
    else:
        path = Path(out)
        if path.exists() and not overwrite:
            raise DataError(f"{str(path)!r} exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown_table([result]) + "\n")
    return path
