"""The built-in data set: a synth3d set rendered once into the cache directory, used by the
quickstart and whenever `data.source=synth3d` has no `data.path` (`data.builtin` picks standard or tiny)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

# 34,500 objects (27,600 train / 6,900 held-out) x 4 views at 64 px: relative rotation transfers to
# held-out objects only with this many objects (docs/DATA.md has the measurements).
DATA = dict(classes=23, objects_per_class=1500, views=4, size=64, seed=1)
DATA_NAME = "synth3d-builtin-v3"
# data.builtin=tiny: 1,600 images at 32 px, rendered in seconds; for smoke sweeps and checks
TINY_DATA = dict(classes=10, objects_per_class=20, views=8, size=32, seed=0)
TINY_NAME = "synth3d-tiny-v3"


def cache_dir() -> Path:
    return Path(os.environ.get("RAYEQ_CACHE", Path.home() / ".cache" / "rayeq")).expanduser()


def builtin_data_dir(name: str = "standard") -> Path:
    return cache_dir() / (TINY_NAME if name == "tiny" else DATA_NAME)


def _unusable(path: Path, spec: dict | None = None) -> str | None:
    """Why the set at `path` cannot be used (missing, unreadable, or made with other generator settings than
    `spec`), or None when it can."""
    from rayeq.data.make.synth3d import GENERATOR_VERSION
    from rayeq.data.schema import DataError, open_dataset

    if not path.exists():
        return "it is not there yet"
    try:
        meta, _ = open_dataset(path)
    except DataError as exc:
        return f"it cannot be read ({exc})"
    if spec is None:
        return None
    made = {
        "classes": len(meta.get("classes", [])),
        "objects_per_class": meta.get("objects_per_class"),
        "views": meta.get("views_per_object"),
        "size": meta.get("image_size"),
        "seed": meta.get("seed"),
        "generator_version": meta.get("generator_version"),
    }
    want = {**{k: spec[k] for k in ("classes", "objects_per_class", "views", "size", "seed")},
            "generator_version": GENERATOR_VERSION}  # fmt: skip
    differ = [f"{k} {made[k]!r} (wanted {want[k]!r})" for k in want if made[k] != want[k]]
    return f"it was made with other settings: {', '.join(differ)}" if differ else None


_announced: set[Path] = set()  # "reusing ..." is said once per process, however often the set is looked up


def ensure_data(log=print, name: str = "standard") -> Path:
    """The built-in set `name` (standard or tiny), rendered once into the cache directory. A cached copy that
    cannot be used is kept aside (`.broken-<time>`), and the console says why."""
    from rayeq.data.make.synth3d import generate

    path = builtin_data_dir(name)
    spec = TINY_DATA if name == "tiny" else DATA
    why = _unusable(path, spec)
    if why is None:
        if path not in _announced:
            _announced.add(path)
            log(f"reusing the built-in data set at {path}")
        return path
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"building the built-in data set (once) at {path}: {why}")
    generate(tmp, **spec, log=log)
    if _unusable(path, spec) is None:  # another process finished it meanwhile
        shutil.rmtree(tmp)
        return path
    if path.exists():  # an unusable earlier attempt: keep it aside rather than delete it
        aside = path.with_name(path.name + f".broken-{int(time.time())}")
        log(f"the cached set that could not be used is kept aside as {aside}")
        path.rename(aside)
    tmp.rename(path)
    _announced.add(path)
    return path
