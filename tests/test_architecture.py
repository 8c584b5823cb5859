"""The package's shape (docs/ARCHITECTURE.md): every module imports alone, the import graph (module
level and function level) has no cycle, imports only go down the layers, train and eval do not
import each other, only the driver imports the Ray worker loop, and the core imports no Ray."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import rayeq

ROOT = Path(rayeq.__file__).parent

# lowest first; a module may import its own layer or lower ones
LAYERS = [
    ["rayeq", "rayeq.config", "rayeq.models.facts"],
    ["rayeq.data", "rayeq.models", "rayeq.losses", "rayeq.metrics", "rayeq.report", "rayeq.track"],
    ["rayeq.methods", "rayeq.runinfo", "rayeq.checkpoint", "rayeq.rundir", "rayeq.cluster"],
    ["rayeq.train.engine", "rayeq.train.probes", "rayeq.train.optim", "rayeq.train.hooks", "rayeq.train.summary",
     "rayeq.eval.features", "rayeq.eval.protocols", "rayeq.eval.transforms", "rayeq.eval.measure",
     "rayeq.eval.floors", "rayeq.eval.output", "rayeq.campaign"],
    ["rayeq.train.loop", "rayeq.train.driver", "rayeq.eval.run", "rayeq.sweep", "rayeq.study", "rayeq.bench",
     "rayeq.demo", "rayeq.quickstart", "rayeq.train", "rayeq.eval"],
    ["rayeq.cli"],
]  # fmt: skip
# plain PyTorch: importing these never imports Ray
CORE = ["rayeq.config", "rayeq.models", "rayeq.losses", "rayeq.methods", "rayeq.metrics", "rayeq.report",
        "rayeq.runinfo", "rayeq.checkpoint", "rayeq.rundir", "rayeq.train.engine", "rayeq.train.probes",
        "rayeq.train.optim", "rayeq.train.hooks", "rayeq.train.summary", "rayeq.eval.protocols", "rayeq.data.schema",
        "rayeq.data.feed"]  # fmt: skip


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        parts = ["rayeq", *p.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every rayeq module `name` imports, at module level or inside functions."""
    found = set()
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _layer(module: str) -> int:
    best = (-1, -1)  # (prefix length, layer): the longest matching prefix decides
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if module == p or module.startswith(p + "."):
                best = max(best, (len(p), i))
    assert best[1] >= 0, f"{module} is in no layer of tests/test_architecture.py"
    return best[1]


def test_every_module_imports_alone():
    """Each module imported into an interpreter that holds no other rayeq module (import-time cycles fail here)."""
    code = (
        "import importlib, json, sys\n"
        "failed = {}\n"
        f"for m in {sorted(MODULES)!r}:\n"
        "    for k in [k for k in sys.modules if k == 'rayeq' or k.startswith('rayeq.')]:\n"
        "        del sys.modules[k]\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except Exception as e:\n"
        "        failed[m] = repr(e)\n"
        "print(json.dumps(failed))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}


def test_the_import_graph_has_no_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m, path):
        state[m] = 1
        for n in sorted(GRAPH[m]):
            assert state.get(n) != 1, "import cycle: " + " -> ".join([*path, m, n])
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [])
    assert len(state) == len(MODULES) > 50


def test_imports_only_go_down_the_layers():
    # a package's __init__ may re-export its own modules
    bad = [f"{m} (layer {_layer(m)}) imports {n} (layer {_layer(n)})" for m, ns in GRAPH.items() for n in ns
           if _layer(n) > _layer(m) and not n.startswith(m + ".")]  # fmt: skip
    assert not bad, "\n".join(bad)


def test_train_and_eval_do_not_import_each_other_and_only_the_driver_imports_the_worker_loop():
    cross = [f"{m} -> {n}" for m, ns in GRAPH.items() for n in ns
             if (m.startswith("rayeq.train") and n.startswith("rayeq.eval"))
             or (m.startswith("rayeq.eval") and n.startswith("rayeq.train"))]  # fmt: skip
    assert not cross, cross
    assert sorted(m for m, ns in GRAPH.items() if "rayeq.train.loop" in ns) == ["rayeq.train.driver"]


def test_sweep_and_study_stand_on_the_campaign_layer_not_on_each_other():
    """What both need (the spec's base and resources, the preamble before Ray, the cluster fit, progress) is
    rayeq.campaign's; neither imports the other."""
    sideways = [f"{m} -> {n}" for m, ns in GRAPH.items() for n in ns
                if (m.startswith("rayeq.study") and n.startswith("rayeq.sweep"))
                or (m.startswith("rayeq.sweep") and n.startswith("rayeq.study"))]  # fmt: skip
    assert not sideways, sideways
    for kind in ("rayeq.sweep", "rayeq.study"):
        assert any(n.startswith("rayeq.campaign") for m, ns in GRAPH.items() if m.startswith(kind) for n in ns), kind


# plain PyTorch even inside functions: no `import ray` anywhere in them (the Ray edge passes them what they need)
NO_RAY_AT_ALL = ["rayeq.data.feed.pairs", "rayeq.data.feed.augment", "rayeq.data.feed.targets", "rayeq.models",
                 "rayeq.losses", "rayeq.methods", "rayeq.train.engine", "rayeq.report", "rayeq.rundir"]  # fmt: skip


def test_the_pair_maker_models_losses_and_methods_never_import_ray():
    found = []
    for m, path in MODULES.items():
        if not any(m == c or m.startswith(c + ".") for c in NO_RAY_AT_ALL):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            found += [f"{m}: {n}" for n in names if n == "ray" or n.startswith("ray.")]
    assert not found, found


def test_the_core_imports_no_ray():
    mods = sorted(m for m in MODULES if any(m == c or m.startswith(c + ".") for c in CORE))
    code = (
        "import importlib, json, sys\n"
        f"mods = {mods!r}\n"
        "pulled = [m for m in mods if importlib.import_module(m) and 'ray' in sys.modules]\n"
        "print(json.dumps(pulled[:1]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [], "this module (or one before it) imports ray"
