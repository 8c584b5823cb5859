"""`rayeq eval RUN --protocol-items`: one encoder under rayeq's evaluation protocol, under each of SIE's protocol
items switched alone, and under SIE's whole preset (`eval.preset`), so that a reader sees which choice moves a
figure by how much. Each variant has its own untrained-encoder floor (measured under the same variant)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rayeq.config import EVAL_PRESETS
from rayeq.data.schema import DataError
from rayeq.eval.run import evaluate
from rayeq.report import FLOOR_MARK, number, table

# variant name -> its eval overrides: rayeq's protocol, each item of SIE's alone, SIE's preset
VARIANTS: dict[str, list[str]] = {
    "rayeq": [],
    **{f"{k}={v}": [f"eval.{k}={v}"] for k, v in EVAL_PRESETS["sie"].items()},
    "sie": ["eval.preset=sie"],
}


def compare_protocols(path, overrides: list[str] = (), log=print, **kwargs) -> dict[str, Any]:
    """Evaluate one checkpoint under every variant (`VARIANTS`, after `overrides`); `kwargs` go to `evaluate`."""
    results = {}
    for name, extra in VARIANTS.items():
        log(f"\n== protocol variant {name} ==")
        results[name] = evaluate(path, overrides=[*overrides, *extra], log=log, **kwargs)
    first = results["rayeq"]
    return {"checkpoint": first["checkpoint"], "run": first["run"], "method": first["method"], "variants": results}


def markdown(out: dict[str, Any]) -> str:
    """Metric rows; a column per variant: its value, the change from rayeq's protocol, ▼ at or below its floor."""
    variants = out["variants"]
    base = variants["rayeq"]
    keys = sorted({k for r in variants.values() for k in r["metrics"]})
    head = ["metric", *(f"`{n}`" for n in variants), "untrained (rayeq)", "untrained (sie)"]
    rows = []
    for k in keys:
        cells = []
        for name, r in variants.items():
            v = r["metrics"].get(k)
            if v is None:
                cells.append("–")
                continue
            mark = f" {FLOOR_MARK}" if k in r["at_or_below_floor"] else ""
            b = base["metrics"].get(k)
            delta = f" ({v - b:+.3f})" if name != "rayeq" and b is not None else ""
            cells.append(f"{v:.3f}{delta}{mark}")
        floors = [variants[n]["floors"]["random_init"].get(k) for n in ("rayeq", "sie")]
        cells += [number(f, 3, empty="–") for f in floors]
        rows.append([k, *cells])
    lines = [
        table(head, rows),
        "",
        f"{out['run']} ({out['method']}): each column evaluates the same checkpoint; `rayeq` is rayeq's protocol, each "
        "`item=value` column switches that one item to SIE's choice, `sie` is `eval.preset=sie` (all four). In "
        f"brackets: the change from rayeq's protocol; {FLOOR_MARK}: at or below that variant's own floor (an "
        "untrained encoder under the same variant, or the mean predictor / majority class).",
    ]
    return "\n".join(lines)


def write(out: dict[str, Any], path: str | Path | None, overwrite: bool) -> Path:
    """JSON + Markdown; default `<checkpoint>/eval/protocol-items.json`; an explicit path is kept unless --overwrite."""
    target = Path(path) if path else Path(out["checkpoint"]) / "eval" / "protocol-items.json"
    if path and target.exists() and not overwrite:
        raise DataError(f"{str(target)!r} exists; pass --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(out, indent=2) + "\n")
    target.with_suffix(".md").write_text(markdown(out) + "\n")
    return target
