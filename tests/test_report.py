"""The floor rule, the numbers' format and the table writer (rayeq/report.py), and that no other module writes
its own: every table and line that marks a figure against its floor goes through them."""

import ast
from pathlib import Path

import rayeq
from rayeq.report import (
    FLOOR_MARK,
    at_or_below_floor,
    below_floor,
    floor_of,
    highest_floor,
    mark,
    number,
    seed_spread,
    table,
)

ROOT = Path(rayeq.__file__).parent


def test_the_floor_rule_marks_a_figure_at_or_below_its_highest_floor():
    assert below_floor(0.30, 0.10, 0.30)  # equal to the higher floor: not above it
    assert not below_floor(0.31, 0.10, 0.30)
    assert below_floor(0.20, 0.10, 0.30)  # above one floor but not the other
    assert not below_floor(-5.0)  # no floor: nothing to be below
    assert not below_floor(0.2, None, None)
    assert below_floor(-0.2, None, -0.1)
    assert highest_floor(None, 0.2, -1.0) == 0.2 and highest_floor(None) is None
    assert mark(0.1, 0.2) == f" {FLOOR_MARK}" and mark(0.3, 0.2) == "" and mark(0.3) == ""


def test_floors_by_name_and_the_metrics_they_mark():
    floors = {"random_init": {"a": 0.2, "b": 0.1}, "mean_predictor": {"b": 0.6, "c": -0.1}}
    assert floor_of("b", floors) == 0.6 and floor_of("a", floors) == 0.2 and floor_of("z", floors) is None
    marked = at_or_below_floor({"a": 0.2, "b": 0.5, "c": 0.0, "z": -3.0}, floors)
    assert marked == ["a", "b"]  # c beats its only floor; z has none


def test_numbers_and_tables():
    assert number(0.123456) == "0.1235" and number(0.5, 3) == "0.500"
    assert number(None) == "" and number(None, empty="–") == "–" and number(None, width=6) == " " * 6
    assert number(0.5, width=9) == "   0.5000" and number(-0.25, width=8) == " -0.2500"
    assert number(3e-5, sci=True) == "3e-05" and number(0.25, sci=True) == "0.2500"
    assert number(64, sci=True) == "64" and number(64) == "64.0000" and number("adamw") == "adamw"
    st = {"mean": 0.5, "std": 0.01, "min": 0.49, "max": 0.51}
    assert seed_spread(st) == "0.500 ± 0.010 (0.490–0.510)" and seed_spread(st, with_range=False) == "0.500 ± 0.010"
    assert table(["a", "b"], [["1", ""], ["x", "y"]]).splitlines() == [
        "| a | b |",
        "| --- | --- |",
        "| 1 | |",
        "| x | y |",
    ]


def _code_strings(path: Path) -> list[str]:
    """The string constants of a module that are not docstrings."""
    tree = ast.parse(path.read_text())
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docs]  # fmt: skip


def test_only_the_report_module_writes_the_floor_mark_or_a_table_rule():
    """The mark and a Markdown table's rule line (`| --- |`) are written in rayeq/report.py alone."""
    writers = {}
    for path in sorted(ROOT.rglob("*.py")):
        found = [s for s in _code_strings(path) if FLOOR_MARK in s or "---" in s and "|" in s]
        if found:
            writers[str(path.relative_to(ROOT))] = found
    assert list(writers) == ["report.py"], writers
