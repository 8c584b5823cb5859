"""Copy a study's results next to `$OUT` and add its throughput and GPU memory (dev/gpu/run's last step).

python dev/gpu/collect.py STUDY_DIR OUT
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path


def collect(study: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    for name in ("summary.md", "summary.json", "summary.png", "results.csv"):
        if (study / name).is_file():
            shutil.copy(study / name, out / name)
    if (study / "evals").is_dir():
        shutil.copytree(study / "evals", out / "evals", dirs_exist_ok=True)
    runs = {}
    for metrics in sorted(study.glob("runs/*/metrics.jsonl")):
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        (out / "metrics").mkdir(exist_ok=True)
        shutil.copy(metrics, out / "metrics" / f"{metrics.parent.name}.jsonl")
        rates = [r["images_per_sec"] for r in rows if "images_per_sec" in r]
        runs[metrics.parent.name] = {
            "epochs": len(rows),
            "images_per_sec_per_epoch": rates,
            "images_per_sec_after_epoch_1": sum(rates[1:]) / len(rates[1:]) if len(rates) > 1 else None,
            "train_seconds": sum(r.get("epoch_seconds", 0.0) for r in rows),
        }
    memory = None
    samples = out / "gpu_samples.csv"
    if samples.is_file():
        used = [float(r[0]) for r in csv.reader(samples.read_text().splitlines()) if r and r[0].strip()]
        memory = {"peak_mib": max(used, default=None), "samples": len(used)}
    res = {"runs": runs, "gpu_memory": memory}
    (out / "throughput.json").write_text(json.dumps(res, indent=2) + "\n")
    done = sum(1 for _ in (out / "evals").glob("*.json")) if (out / "evals").is_dir() else 0
    print(f"collected {done} evaluated run(s), {len(runs)} trained, into {out}")
    if (out / "summary.md").is_file():
        print((out / "summary.md").read_text())
    return res


if __name__ == "__main__":
    collect(Path(sys.argv[1]), Path(sys.argv[2]))
