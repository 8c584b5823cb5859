"""Per-module mutation scores from mutmut's results (run `mutmut run` first), as a markdown table.

    .venv/bin/python dev/mutation_report.py            # the table
    .venv/bin/python dev/mutation_report.py --survivors  # and every survivor's diff, grouped by module

Score = killed / (killed + survived + no tests); mutants mutmut timed out on count as killed (the mutant made a
test hang), and mutants not checked yet are listed apart.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTMUT = str(Path(sys.executable).with_name("mutmut"))


def results() -> list[tuple[str, str]]:
    out = subprocess.run([MUTMUT, "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*(\S+): (.+)$", line)
        if m:
            rows.append((m.group(1), m.group(2).strip()))
    return rows


def module_of(name: str) -> str:
    return re.split(r"\.x[_ǁ]", name, maxsplit=1)[0]


def main(show_survivors: bool) -> None:
    counts: dict[str, Counter] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    for name, status in results():
        counts[module_of(name)][status] += 1
        if status in ("survived", "no tests"):
            survivors[module_of(name)].append(name)
    total = Counter()
    print("| module | mutants | killed | survived | no test reaches it | not checked | score |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mod in sorted(counts):
        c = counts[mod]
        total.update(c)
        print(_row(mod, c))
    print(_row("**all**", total))
    if show_survivors:
        for mod in sorted(survivors):
            print(f"\n## {mod}\n")
            for name in survivors[mod]:
                diff = subprocess.run([MUTMUT, "show", name], cwd=ROOT, capture_output=True, text=True).stdout
                lines = [ln for ln in diff.splitlines() if ln[:2] in ("- ", "+ ")]
                print(f"{name}\n" + "\n".join(lines) + "\n")


def _row(mod: str, c: Counter) -> str:
    killed = c["killed"] + c["timeout"]
    judged = killed + c["survived"] + c["no tests"]
    score = f"{100 * killed / judged:.1f} %" if judged else "-"
    return (f"| {mod} | {sum(c.values())} | {killed} | {c['survived']} | {c['no tests']} | {c['not checked']} "
            f"| {score} |")  # fmt: skip


if __name__ == "__main__":
    main("--survivors" in sys.argv)
