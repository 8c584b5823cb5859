"""The built-in data sets, made once into the cache directory: a synth3d set, used by the quickstart and whenever
`data.source=synth3d` has no `data.path` (`data.builtin` picks standard or tiny), and the natural-photo set of
`data.source=photos` or `renders` without a path."""

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
# data.builtin=small, the quickstart's: 6,900 objects (5,520 train / 1,380 held-out) x 4 views at 64 px, 27,600 images
# rendered in about half a minute on 2 cores; enough for top-1 and colour, too few objects for relative rotation
SMALL_DATA = dict(classes=23, objects_per_class=300, views=4, size=64, seed=1)
SMALL_NAME = "synth3d-small-v3"
PHOTOS_NAME = "photos-builtin-v1"  # data.source=photos: rayeq.data.make.photos
# 600 crops of each of the 6 training photos, 300 of each of the 3 held-out ones, at 96 px (64 px runs and below)
PHOTOS_DATA = dict(size=96, train_crops=600, val_crops=300, seed=0)
RENDERS_NAME = "renders-builtin-v1"  # data.source=renders: rayeq.data.make.renders
# 2,300 objects of the 23 classes x 2 poses at 64 px: 3,680 train / 920 held-out images, rendered in seconds
RENDERS_DATA = dict(classes=23, objects_per_class=100, views=2, size=64, seed=2)


def synth3d_sets() -> dict[str, tuple[str, dict]]:
    """The synth3d sets of data.builtin: name -> (cache folder name, generator settings)."""
    return {"standard": (DATA_NAME, DATA), "small": (SMALL_NAME, SMALL_DATA), "tiny": (TINY_NAME, TINY_DATA)}


def cache_dir() -> Path:
    return Path(os.environ.get("RAYEQ_CACHE", Path.home() / ".cache" / "rayeq")).expanduser()


def builtin_data_dir(name: str = "standard") -> Path:
    """The cache folder of a built-in set: standard, small, tiny (synth3d), photos or renders."""
    names = {k: v[0] for k, v in synth3d_sets().items()} | {"photos": PHOTOS_NAME, "renders": RENDERS_NAME}
    if name not in names:
        raise ValueError(f"no built-in set {name!r}; known: {sorted(names)}")
    return cache_dir() / names[name]


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
    """The built-in synth3d set `name` (standard, small or tiny), rendered once into the cache directory. A cached
    copy that cannot be used is kept aside (`.broken-<time>`), and the console says why."""
    from rayeq.data.make.synth3d import generate

    spec = synth3d_sets()[name][1]
    path = builtin_data_dir(name)
    return _ensure(path, lambda: _unusable(path, spec), lambda tmp: generate(tmp, **spec, log=log), log)


def ensure_photos(log=print) -> Path:
    """The built-in natural-photo set (`data.source=photos`), built once into the cache directory from the photos
    inside the installed scikit-image and scikit-learn (nothing is downloaded)."""
    from rayeq.data.make.photos import PHOTOS_VERSION, build_photos

    path = builtin_data_dir("photos")
    want = {"photos_version": PHOTOS_VERSION, **PHOTOS_DATA}
    return _ensure(
        path, lambda: _made_otherwise(path, want), lambda tmp: build_photos(tmp, **PHOTOS_DATA, log=log), log
    )


def ensure_renders(log=print) -> Path:
    """The built-in renders as an image set (`data.source=renders`): rendered once into the cache directory."""
    from rayeq.data.make.renders import RENDERS_VERSION, build_renders
    from rayeq.data.make.synth3d import GENERATOR_VERSION

    path = builtin_data_dir("renders")
    want = {"renders_version": RENDERS_VERSION, "generator_version": GENERATOR_VERSION, **RENDERS_DATA}
    build = lambda tmp: build_renders(tmp, **RENDERS_DATA, log=log)  # noqa: E731
    return _ensure(path, lambda: _made_otherwise(path, want), build, log)


# meta.json's name of a setting, where it is not the setting's own
_META_KEYS = {"size": "image_size", "views": "views_per_object"}


def _made_otherwise(path: Path, want: dict) -> str | None:
    """Why the built-in image set at `path` cannot be used: missing, unreadable, or its meta.json records other
    settings than `want` (each setting under its own name, or `_META_KEYS`'s)."""
    base = _unusable(path)
    if base is not None:
        return base
    from rayeq.data.schema import read_meta

    meta = read_meta(path)
    made = {k: meta.get(_META_KEYS.get(k, k)) for k in want}
    if "classes" in want:  # meta lists the class names
        made["classes"] = len(meta.get("classes", []))
    differ = [f"{k} {made[k]!r} (wanted {want[k]!r})" for k in want if made[k] != want[k]]
    return f"it was made with other settings: {', '.join(differ)}" if differ else None


def _ensure(path: Path, why, build, log) -> Path:
    """`path` if `why()` finds nothing wrong with it; else `build(tmp)` beside it and moved into place, an unusable
    earlier copy kept aside (`.broken-<time>`), never deleted."""
    reason = why()
    if reason is None:
        if path not in _announced:
            _announced.add(path)
            log(f"reusing the built-in data set at {path}")
        return path
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"building the built-in data set (once) at {path}: {reason}")
    build(tmp)
    if why() is None:  # another process finished it meanwhile
        shutil.rmtree(tmp)
        return path
    if path.exists():  # an unusable earlier attempt: keep it aside rather than delete it
        aside = path.with_name(path.name + f".broken-{int(time.time())}")
        log(f"the cached set that could not be used is kept aside as {aside}")
        path.rename(aside)
    tmp.rename(path)
    _announced.add(path)
    return path
