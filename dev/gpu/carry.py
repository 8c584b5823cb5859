"""What a lent GPU machine lacks, packed to travel with one `run` call (`dev/gpu/prepare` calls this).

The machine has Python 3.12 with torch, torchvision, numpy, scipy, pillow, pyarrow, pyyaml and pandas (and their own
dependencies) and no network. Everything else rayeq imports on the study path (Ray with its train/tune/data extras,
pydantic, matplotlib for summary.png, psutil) is found here as the closure of those requirements in this venv, each
pinned to the version installed here, downloaded as cp312 manylinux wheels (`pip download --no-deps`), unpacked into
one site folder, stripped of what a study never loads (Ray's Java jars, RLlib, Serve, LLM, the dashboard's web
client) and packed as `.gpu/site.tar.xz`, with `.gpu/manifest.json` (packages, versions, sizes). rayeq itself
travels as the working tree the `run` tool copies.

    .venv/bin/python dev/gpu/carry.py [--out .gpu]      # then: the printed `carry` list and command
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

# what the device has (and what these bring with them there)
DEVICE_HAS = {"torch", "torchvision", "numpy", "scipy", "pillow", "pyarrow", "pyyaml", "pandas", "python-dateutil",
              "six", "pytz", "tzdata", "filelock", "fsspec", "typing-extensions", "jinja2", "markupsafe", "sympy",
              "mpmath", "networkx", "triton", "setuptools"}  # fmt: skip
NEEDS = ["ray[train,tune,data]", "pydantic", "matplotlib", "psutil", "packaging"]
# never loaded by a study; Ray's wheel is 79 MB with them
STRIP = ["ray/jars", "ray/rllib", "ray/serve", "ray/llm", "ray/dashboard/client", "ray/tests"]
LIMIT_MB = 64  # what one `run` call carries in all (the working tree included)
PYTHON, PLATFORM = "3.12", "manylinux2014_x86_64"


def _key(name: str) -> str:
    return name.lower().replace("_", "-")


def closure(needs: list[str] = NEEDS, python: str = PYTHON) -> dict[str, str]:
    """name -> version installed here, for every distribution `needs` pulls in under Python `python`, the device's
    own packages left out."""
    seen: dict[str, set[str]] = {}
    stack = [Requirement(r) for r in needs]
    while stack:
        req = stack.pop()
        key = _key(req.name)
        if key in DEVICE_HAS:
            continue
        extras = set(req.extras)
        if key in seen and extras <= seen[key]:
            continue
        seen[key] = seen.get(key, set()) | extras
        for r in md.distribution(req.name).requires or []:
            sub = Requirement(r)
            env = [{"extra": e, "python_version": python} for e in (seen[key] or {""})]
            if sub.marker is None or any(sub.marker.evaluate(e) for e in env):
                stack.append(sub)
    return {k: md.version(k) for k in sorted(seen)}


def download(pins: dict[str, str], wheels: Path) -> list[Path]:
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version",
           PYTHON, "--platform", PLATFORM, "--platform", "manylinux_2_28_x86_64", "-d", str(wheels),
           *(f"{k}=={v}" for k, v in pins.items())]  # fmt: skip
    subprocess.run(cmd, check=True)
    return sorted(wheels.glob("*.whl"))


def pack(wheels: list[Path], out: Path) -> dict[str, float]:
    """Unzip every wheel into one site folder, strip, xz it; the sizes in MB."""
    site = out / "site"
    shutil.rmtree(site, ignore_errors=True)
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            z.extractall(site)
    for rel in STRIP:
        shutil.rmtree(site / rel, ignore_errors=True)
    unpacked = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
    tar = out / "site.tar.xz"
    with tarfile.open(tar, "w:xz", preset=6) as t:
        for p in sorted(site.iterdir()):
            t.add(p, arcname=p.name)
    shutil.rmtree(site)
    return {"unpacked_mb": unpacked / 2**20, "packed_mb": tar.stat().st_size / 2**20}


def tree_mb(root: Path) -> float:
    """The working tree the `run` tool copies: git's tracked and untracked-but-not-ignored files."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=root, capture_output=True, text=True,
                           check=True).stdout.split()  # fmt: skip
    return sum((root / f).stat().st_size for f in files if (root / f).is_file()) / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".gpu", help="the carry folder (git-ignored)")
    args = ap.parse_args(argv)
    root = Path(__file__).resolve().parents[2]
    out = (root / args.out).resolve()
    out.mkdir(exist_ok=True)
    pins = closure()
    print(f"the device lacks {len(pins)} distributions: " + ", ".join(f"{k} {v}" for k, v in pins.items()))
    wheels = download(pins, out / "wheels")
    sizes = pack(wheels, out)
    shutil.rmtree(out / "wheels")
    total = sizes["packed_mb"] + tree_mb(root)
    manifest = {"python": PYTHON, "platform": PLATFORM, "packages": pins, "stripped": STRIP, **sizes,
                "working_tree_mb": total - sizes["packed_mb"], "total_mb": total, "limit_mb": LIMIT_MB}  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{out / 'site.tar.xz'}: {sizes['packed_mb']:.1f} MB ({sizes['unpacked_mb']:.0f} MB unpacked); with the "
          f"working tree {total:.1f} MB of {LIMIT_MB}")  # fmt: skip
    if total > LIMIT_MB:
        print(f"too large to carry: {total:.1f} MB > {LIMIT_MB} MB", file=sys.stderr)
        return 1
    rel = out.relative_to(root)
    print(f'carry: ["{rel}"]\ncommand: bash dev/gpu/run      (timeout_s 600; results under $OUT)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
