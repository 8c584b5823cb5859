"""What `rayeq eval` leaves behind: the result JSON and its Markdown table (`write_outputs`, `markdown_table`), the
protocol it was measured under in words (`protocol_label`, `result_protocol`), and the figures logged to the run's
tracker (`log_to_tracker`). The floor rule and the table writer are `rayeq/report.py`'s."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rayeq.checkpoint import LoadedCheckpoint
from rayeq.config import EVAL_PRESETS
from rayeq.data.schema import DataError
from rayeq.methods import method_label
from rayeq.report import FLOOR_MARK, mark, number, table


def protocol_label(preset: str, protocol: dict[str, str]) -> str:
    """The protocol a result was measured under, in words: the preset, and each item set against it."""
    own = EVAL_PRESETS[preset]
    changed = [f"eval.{k}={v}" for k, v in protocol.items() if v != own[k]]
    return f"eval.preset={preset}" + (f" with {', '.join(changed)}" if changed else "")


def result_protocol(result: dict[str, Any]) -> str:
    """`protocol_label` of a result JSON; results written before eval.preset existed were rayeq's protocol."""
    return protocol_label(result.get("preset", "rayeq"), result.get("protocol", EVAL_PRESETS["rayeq"]))


def _single_floor_set(results: list[dict[str, Any]]) -> bool:
    return all(r.get("floors") == results[0].get("floors") for r in results)


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One column per run, then the floors (one set when the runs share them, else one per run);
    a metric at or below a floor is marked. The supervised ceiling and SIE are labelled as using labels."""
    keys = sorted({k for r in results for k in r["metrics"]})
    shared = _single_floor_set(results)
    floor_cols: list[tuple[str, dict[str, float]]] = []
    for i, r in enumerate(results):
        if shared and i > 0:
            break
        suffix = "" if shared else f" ({r['run']})"
        for name, title in (("random_init", "untrained encoder"), ("mean_predictor", "mean predictor")):
            floor_cols.append((title + suffix, r.get("floors", {}).get(name, {})))
    head = [
        "metric",
        *(f"{r['run']} ({method_label(r['method'])}, ep {r['epoch']})" for r in results),
        *(t for t, _ in floor_cols),
    ]
    rows = []
    for k in keys:
        cells = [k]
        for r in results:
            v = r["metrics"].get(k)
            low = f" {FLOOR_MARK}" if k in r.get("at_or_below_floor", []) else ""
            cells.append("" if v is None else f"{number(v)}{low}")
        cells += [number(f.get(k)) for _, f in floor_cols]
        rows.append(cells)
    lines = [table(head, rows), ""]
    labels = sorted({result_protocol(r) for r in results})
    lines.append(f"Measured under {' / '.join(labels)} (docs/RESULTS.md, comparing with published numbers).")
    lines.append(
        f"{FLOOR_MARK}: at or below a floor (the untrained encoder of the same architecture, or the mean "
        "predictor / majority class). R²: `r2` SIE's global definition on held-out objects, `r2_per_dim` "
        "per dimension, `r2_train` on the train objects' pairs."
    )
    for r in results:
        pc = r.get("per_class", {})
        if pc.get("classes"):
            by_value = sorted(pc["classes"].items(), key=lambda kv: -kv[1]["value"])
            rows = [
                [
                    name,
                    number(row["value"]) + mark(row["value"], row.get("random_init"), row["mean_predictor"]),
                    number(row.get("random_init")),
                    number(row["mean_predictor"]),
                    str(row["pairs"]),
                ]
                for name, row in by_value
            ]
            lines += [
                "",
                f"{pc['metric']} per class, {r['run']} ({method_label(r['method'])}):",
                "",
                table(["class", "value", "untrained encoder", "mean predictor", "pairs"], rows),
            ]
    return "\n".join(lines)


def log_to_tracker(loaded: LoadedCheckpoint, metrics: dict[str, float], floors: dict[str, dict[str, float]], log):
    cfg = loaded.cfg
    run_id = loaded.state.tracker_run_id
    backend = loaded.state.track_backend or "aim"  # the tracker the run was trained with
    if cfg.track.backend == "none" or not run_id:
        return
    tool = {"aim": "Aim", "tensorboard": "TensorBoard"}.get(backend, backend)
    try:
        from rayeq.track import open_tracker, resolve_track_repo

        # the repo the run was trained with (a relative track.repo resolved where training ran)
        repo = loaded.state.track_repo or resolve_track_repo(cfg)
        tracker = open_tracker(backend, repo, cfg.track.experiment or cfg.train.name, run_id, must_exist=True)
        values = {f"eval/{k}": v for k, v in metrics.items()}
        for name, floor in floors.items():
            values.update({f"eval_floor/{name}/{k}": v for k, v in floor.items()})
        tracker.log_metrics(values, step=loaded.state.step, epoch=loaded.state.epoch, subset="eval")
        tracker.close()
        log(f"  logged to {tool} run {run_id}")
    except Exception as exc:  # the results are in the JSON either way
        log(f"  (could not log to {tool}: {exc})")


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
