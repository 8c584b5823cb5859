"""A study's results: one row per run (results.csv), and per arm (and grid setting) the mean ± std and
min-max over seeds of each metric beside the untrained-encoder floor, the mean predictor and the
ceiling arm (summary.md / .json / .png). An arm whose seed range does not overlap the baseline arm's
is marked ↑ (above) or ↓ (below); a mean at or below a floor is marked ▼."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

from rayeq.report import FLOOR_MARK, at_or_below_floor, number, seed_spread, table
from rayeq.rundir import RunDir
from rayeq.study.spec import Run, StudySpec, eval_path

ABOVE, BELOW = "↑", "↓"
FLOORS = ("random_init", "mean_predictor")
FLOOR_LABELS = {"random_init": "untrained encoder (floor)", "mean_predictor": "mean predictor / majority class"}


def collect_rows(runs: list[Run], study_dir: Path, spec: StudySpec) -> list[dict[str, Any]]:
    from rayeq.eval.output import result_protocol

    rows = []
    for run in runs:
        row: dict[str, Any] = {"run": run.name, "arm": run.arm, "setting": run.setting, "seed": run.seed}
        path = eval_path(study_dir, run.name)
        run_dir = study_dir / "runs" / run.name
        if path.is_file():
            res = json.loads(path.read_text())
            row.update(status="done", epochs=res.get("epoch"), protocol=result_protocol(res))
            row.update({m: res["metrics"].get(m) for m in spec.summary.metrics})
            row.update({m: res.get("train_metrics", {}).get(m) for m in spec.summary.train_metrics})
            for floor in FLOORS:
                row.update({f"{floor}/{m}": res["floors"].get(floor, {}).get(m) for m in spec.summary.metrics})
            row.update(train_seconds=res.get("train_seconds"), eval_seconds=res.get("eval_seconds"))
        else:
            epochs = RunDir(run_dir).epochs_done()
            row.update(status=f"trained {epochs} epoch(s), not evaluated" if epochs else "not run", epochs=epochs)
        row["run_dir"] = str(run_dir)
        rows.append(row)
    return rows


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _stats(values: list[float]) -> dict[str, Any]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "values": values,
    }


def summarise(rows: list[dict[str, Any]], spec: StudySpec) -> dict[str, Any]:
    done = [r for r in rows if r["status"] == "done"]
    groups: dict[str, dict[str, Any]] = {}
    for r in rows:  # in the study's order: arms as listed, settings as the grid gives them
        g = f"{r['arm']} [{r['setting']}]" if r["setting"] else r["arm"]
        groups.setdefault(g, {"group": g, "arm": r["arm"], "setting": r["setting"], "rows": []})
        if r["status"] == "done":
            groups[g]["rows"].append(r)
    metrics, train_metrics = spec.summary.metrics, spec.summary.train_metrics
    for g in groups.values():
        g["runs"] = [r["run"] for r in g.pop("rows")]
        mine = [r for r in done if r["run"] in g["runs"]]
        g["n"] = len(mine)
        g["metrics"] = {}
        for m in [*metrics, *train_metrics]:
            vals = [v for v in (_num(r.get(m)) for r in mine) if v is not None]
            if vals:
                g["metrics"][m] = _stats(vals)
        g["floors"] = {f: {} for f in FLOORS}
        for f in FLOORS:
            for m in metrics:
                vals = [v for v in (_num(r.get(f"{f}/{m}")) for r in mine) if v is not None]
                if vals:
                    g["floors"][f][m] = statistics.fmean(vals)
    baseline = next((g for g in groups.values() if g["arm"] == spec.baseline and g["n"]), None)
    ceiling_groups = [g for g in groups.values() if g["arm"] == spec.summary.ceiling and g["n"]]
    ceiling = {}
    for m in metrics:
        vals = [v for g in ceiling_groups for v in g["metrics"].get(m, {}).get("values", [])]
        if vals:
            ceiling[m] = statistics.fmean(vals)
    floor_source = baseline or next((g for g in groups.values() if g["n"]), None)
    floors = floor_source["floors"] if floor_source else {f: {} for f in FLOORS}
    for g in groups.values():
        g["marks"] = {}
        low = set(at_or_below_floor({m: st["mean"] for m, st in g["metrics"].items() if m in metrics}, g["floors"]))
        for m, st in g["metrics"].items():
            marks = FLOOR_MARK if m in low else ""
            b = baseline["metrics"].get(m) if baseline and g is not baseline else None
            if b is not None and g["n"] > 1 and b["n"] > 1:
                marks += ABOVE if st["min"] > b["max"] else BELOW if st["max"] < b["min"] else ""
            if marks:
                g["marks"][m] = marks
    return {
        "study": spec.name,
        "description": spec.description,
        "baseline": baseline["group"] if baseline else None,
        "ceiling": spec.summary.ceiling,
        "metrics": metrics,
        "train_metrics": train_metrics,
        "floors": floors,
        "ceiling_mean": ceiling,
        "groups": list(groups.values()),
        "protocols": sorted({r["protocol"] for r in done if r.get("protocol")}),
        "runs": {"total": len(rows), "done": len(done), "missing": [r["run"] for r in rows if r["status"] != "done"]},
    }


def markdown(summary: dict[str, Any]) -> str:
    metrics = summary["metrics"]
    rows = []
    for g in summary["groups"]:
        cells = [g["group"] + (" (baseline)" if g["group"] == summary["baseline"] else ""), str(g["n"])]
        for m in metrics:
            st = g["metrics"].get(m)
            cells.append(seed_spread(st) + g["marks"].get(m, "") if st else "–")
        rows.append(cells)
    for f in FLOORS:
        rows.append([FLOOR_LABELS[f], "", *(number(summary["floors"].get(f, {}).get(m), 3) for m in metrics)])
    if summary["ceiling"]:
        rows.append(
            [f"ceiling ({summary['ceiling']}, mean)", "", *(number(summary["ceiling_mean"].get(m), 3) for m in metrics)]
        )
    text = table(["arm", "n", *metrics], rows)
    tm = [m for m in summary["train_metrics"] if any(m in g["metrics"] for g in summary["groups"])]
    if tm:
        rows = [
            [g["group"], *(seed_spread(g["metrics"][m], with_range=False) if m in g["metrics"] else "–" for m in tm)]
            for g in summary["groups"]
            if any(m in g["metrics"] for m in tm)
        ]
        text += (
            "\n\nTraining's last validation (held-out pairs): the reconstruction error with the pair's other "
            "view (`val/recon`) and with another pair's (`val/recon_other_view`); a ratio near 1 means the "
            "decoder rebuilds the target without the other view.\n\n" + table(["arm", *tm], rows)
        )
    return text


def write_summary(rows: list[dict[str, Any]], spec: StudySpec, study_dir: Path, log=print) -> dict[str, Any]:
    study_dir.mkdir(parents=True, exist_ok=True)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(study_dir / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    summary = summarise(rows, spec)
    (study_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = markdown(summary)
    legend = (
        f"mean ± std (min–max) over seeds; {ABOVE}/{BELOW}: the seed range lies above/below the baseline's "
        f"(no overlap); {FLOOR_MARK}: the mean is at or below a floor. Floors: the same protocols on an untrained "
        "encoder of the baseline's architecture, and a predictor of the train mean (R²) or majority class (top-1)."
    )
    if summary["protocols"]:
        legend += f" Measured under {' / '.join(summary['protocols'])}."
    missing = summary["runs"]["missing"]
    note = f"\n\n{len(missing)} of {len(rows)} runs have no result yet: {', '.join(missing)}" if missing else ""
    (study_dir / "summary.md").write_text(
        f"# study {spec.name}\n\n{spec.description}\n\n{legend}\n\n{table}{note}\n\n![summary](summary.png)\n"
    )
    png = plot(summary, study_dir / "summary.png")
    log(f"\nstudy {spec.name}: {summary['runs']['done']} of {len(rows)} runs evaluated\n{table}\n{legend}{note}")
    log(f"\nresults: {study_dir / 'results.csv'}; summary: {study_dir / 'summary.md'}, {png}")
    return {"study_dir": str(study_dir), "rows": rows, "summary": summary, "complete": not missing}


def plot(summary: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = summary["metrics"][:3]
    groups = [g for g in summary["groups"] if g["n"]]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4.2), dpi=120, squeeze=False)
    for ax, m in zip(axes[0], metrics, strict=True):
        xs = range(len(groups))
        for i, g in enumerate(groups):
            st = g["metrics"].get(m)
            if not st:
                continue
            color = "tab:gray" if g["group"] == summary["baseline"] else "tab:blue"
            if g["arm"] == summary["ceiling"]:
                color = "tab:green"
            ax.bar(i, st["mean"], yerr=st["std"], color=color, alpha=0.55, capsize=3)
            ax.scatter([i] * len(st["values"]), st["values"], s=14, c="k", zorder=3)
            if g["marks"].get(m):
                ax.annotate(g["marks"][m], (i, st["max"]), textcoords="offset points", xytext=(0, 4), ha="center")
        # the axis spans the seeds, the mean predictor and the ceiling; a floor far outside (an untrained
        # encoder's probe can score R² -20 on a small set) is named in the panel instead of squashing it
        shown = [v for g in groups for v in g["metrics"].get(m, {}).get("values", [])]
        shown += [
            v
            for v in (summary["floors"].get("mean_predictor", {}).get(m), summary["ceiling_mean"].get(m))
            if v is not None
        ]
        lo, hi = (min(shown), max(shown)) if shown else (0.0, 1.0)
        span = max(hi - lo, 0.1)
        styles = {"random_init": ("tab:red", "--"), "mean_predictor": ("tab:gray", ":")}
        for f, (c, ls) in styles.items():
            v = summary["floors"].get(f, {}).get(m)
            if v is None:
                continue
            if lo - span <= v <= hi + span:
                ax.axhline(v, color=c, ls=ls, lw=1.2, label=FLOOR_LABELS[f])
            else:
                ax.text(
                    0.02, 0.02, f"{FLOOR_LABELS[f]}: {v:.3g} (off scale)", transform=ax.transAxes, fontsize=7, color=c
                )
        if m in summary["ceiling_mean"]:
            ax.axhline(
                summary["ceiling_mean"][m], color="tab:green", ls="-.", lw=1.2, label=f"ceiling ({summary['ceiling']})"
            )
        names = [g["group"] + (" (baseline)" if g["group"] == summary["baseline"] else "") for g in groups]
        ax.set_xticks(list(xs), names, rotation=35, ha="right", fontsize=8)
        ax.set_ylim(min(lo - 0.1 * span, 0.0), hi + 0.15 * span)  # room for the marks above the bars
        ax.set_title(m, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(f"study {summary['study']}: mean ± std over seeds (dots: seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
