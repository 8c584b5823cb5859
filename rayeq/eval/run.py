"""`rayeq eval`: frozen-encoder protocols on a run or checkpoint -> JSON, Markdown and Aim."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from rayeq.data.schema import DataError, read_meta
from rayeq.eval.features import Features, LoadedCheckpoint, cached_features, load_checkpoint
from rayeq.eval.protocols import ProtocolSettings, knn_top1, linear_probe, part, regression

PROTOCOLS_3D = ("linear", "knn", "rotation", "color")
PROTOCOLS_IMAGES = ("linear", "knn", "transforms")
PARTS = ("full", "inv", "equi")


def settings_for(loaded: LoadedCheckpoint, fast: bool) -> ProtocolSettings:
    e = loaded.cfg.eval
    s = ProtocolSettings(e.epochs, e.lr, e.batch_size, e.hidden_dim, e.knn_k, e.knn_temperature, e.seed)
    if fast:  # fits a CPU: fewer epochs (SIE's protocol uses 300), but at least 1,500 steps per probe
        s.epochs, s.hidden_dim, s.min_steps = min(s.epochs, 30), min(s.hidden_dim, 512), 1500
    return s


def evaluate(
    path: str | Path,
    data: str | Path | None = None,
    protocols: list[str] | None = None,
    fast: bool = False,
    which: str = "latest",
    pairs_per_object: int = 2,
    log=print,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    loaded = load_checkpoint(path, which)
    cfg = loaded.cfg
    if data is not None:
        data_dir = Path(data).expanduser()
    else:
        from rayeq.data.pipeline import resolve_data_dir

        data_dir = resolve_data_dir(cfg)
    meta = read_meta(data_dir)
    three_d = meta["format"] == "rayeq-objects/1"
    allowed = PROTOCOLS_3D if three_d else PROTOCOLS_IMAGES
    wanted = list(protocols or [p for p in cfg.eval.protocols if p in allowed] or allowed)
    bad = [p for p in wanted if p not in allowed]
    if bad:
        raise DataError(
            f"protocol(s) {bad} need {'image' if three_d else '3D'} data; {str(data_dir)!r} allows {list(allowed)}"
        )
    s = settings_for(loaded, fast)
    log(f"eval {loaded.path} ({cfg.method.name}, epoch {loaded.state['epoch']}) on {data_dir}: {wanted}"
        f"{' (fast)' if fast else ''}")  # fmt: skip
    metrics: dict[str, float] = {}
    inv_dim = cfg.model.inv_dim
    num_classes = len(meta["classes"])
    if any(p in wanted for p in ("linear", "knn", "rotation", "color")):
        tr = cached_features(loaded, data_dir, "train", pairs_per_object, s.seed, log)
        va = cached_features(loaded, data_dir, "val", pairs_per_object, s.seed, log)
        for name in PARTS:
            xtr, ytr = _single_views(tr, name, inv_dim)
            xva, yva = _single_views(va, name, inv_dim)
            if "linear" in wanted:
                res = linear_probe(xtr, ytr, xva, yva, num_classes, s)
                metrics[f"linear/{name}/top1"] = res["top1"]
                log(f"  linear/{name}: top-1 {res['top1']:.4f} (train {res['train_top1']:.4f})")
            if "knn" in wanted:
                metrics[f"knn/{name}/top1"] = knn_top1(xtr, ytr, xva, yva, num_classes, s.knn_k, s.knn_temperature)
                log(f"  knn/{name}: top-1 {metrics[f'knn/{name}/top1']:.4f}")
            for proto, targets in (("rotation", ("rel_rotation", "rel_rotation_canonical")),
                                   ("color", ("rel_color", "rel_color_cos_sin"))):  # fmt: skip
                if proto not in wanted:
                    continue
                ptr, pva = _pairs(tr, name, inv_dim), _pairs(va, name, inv_dim)
                for t in targets:
                    res = regression(ptr, tr.targets[t], pva, va.targets[t], s)
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

        metrics.update(transform_regression(loaded, data_dir, s, log))
    result = {
        "checkpoint": str(loaded.path),
        "run_dir": str(loaded.run_dir),
        "run": loaded.run_dir.name,
        "method": cfg.method.name,
        "epoch": loaded.state["epoch"],
        "data": str(data_dir),
        "protocols": wanted,
        "settings": {**s.__dict__, "fast": fast, "pairs_per_object": pairs_per_object},
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

        tracker = open_tracker("aim", resolve_track_repo(cfg), cfg.track.experiment or cfg.train.name, run_id)
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
        name = "results-fast.json" if result["settings"]["fast"] else "results.json"
        path = Path(result["checkpoint"]) / "eval" / name
    else:
        path = Path(out)
        if path.exists() and not overwrite:
            raise DataError(f"{str(path)!r} exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown_table([result]) + "\n")
    return path
