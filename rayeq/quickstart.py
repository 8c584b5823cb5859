"""`rayeq quickstart`: the whole path on a laptop in a few minutes. Builds (or reuses) a small
synth3d set in a cache directory, trains xrecon with 2 CPU workers on a local Ray instance, reports
the online probes, logs to a local Aim repo and prints how to look at it."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from rayeq.config import load_config

# The built-in data set: used by the quickstart and whenever data.source=synth3d has no data.path.
# 34,500 objects (27,600 train / 6,900 held-out) x 4 views at 64 px: relative rotation transfers to
# held-out objects only with this many objects (docs/DATA.md has the measurements).
DATA = dict(classes=23, objects_per_class=1500, views=4, size=64, seed=1)
DATA_NAME = "synth3d-builtin-v2"
# data.builtin=tiny: 1,600 images at 32 px, rendered in seconds; for smoke sweeps and checks
TINY_DATA = dict(classes=10, objects_per_class=20, views=8, size=32, seed=0)
TINY_NAME = "synth3d-tiny-v2"
OVERRIDES = [
    # 32 px views of the 64 px built-in set (the pipeline resizes): fast enough for 2 CPU cores
    "data.source=synth3d", "data.image_size=32", "data.cpus_per_actor=0.4", "data.num_actors=1",
    "model.stem=compact", "model.projector=[512,512]",
    "method.name=xrecon", "method.decoder.width=64", "method.decoder.recon_size=32",
    "loss.sim_weight=10", "loss.std_weight=10", "loss.cov_weight=1",
    "optim.lr=0.002", "optim.scale_lr=false", "optim.warmup_epochs=1",
    # 4 short epochs of 36 steps (a full pass over the 27,600 train objects would be 431 steps)
    "train.num_workers=2", "train.cpus_per_worker=0.5", "train.batch_size=64", "train.epochs=4",
    "train.steps_per_epoch=36", "train.val_every_epochs=4", "train.log_every_steps=6", "train.keep_checkpoints=2",
    "track.image_every_epochs=2",
]  # fmt: skip


def cache_dir() -> Path:
    return Path(os.environ.get("RAYEQ_CACHE", Path.home() / ".cache" / "rayeq")).expanduser()


def builtin_data_dir(name: str = "standard") -> Path:
    return cache_dir() / (TINY_NAME if name == "tiny" else DATA_NAME)


def _usable(path: Path, spec: dict | None = None) -> bool:
    """A readable data set, made (when `spec` is given) with exactly these generator settings."""
    from rayeq.data.schema import DataError, open_dataset
    from rayeq.data.synth3d import GENERATOR_VERSION

    try:
        meta, _ = open_dataset(path)
    except DataError:
        return False
    if spec is None:
        return True
    made = (len(meta.get("classes", [])), meta.get("objects_per_class"), meta.get("views_per_object"),
            meta.get("image_size"), meta.get("seed"), meta.get("generator_version"))  # fmt: skip
    want = (spec["classes"], spec["objects_per_class"], spec["views"], spec["size"], spec["seed"], GENERATOR_VERSION)
    return made == want


def ensure_data(log=print, name: str = "standard") -> Path:
    """The built-in set `name` (standard or tiny), rendered once into the cache directory."""
    from rayeq.data.synth3d import generate

    path = builtin_data_dir(name)
    spec = TINY_DATA if name == "tiny" else DATA
    if _usable(path, spec):
        log(f"reusing the built-in data set at {path}")
        return path
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"building the built-in data set (once) at {path}")
    generate(tmp, **spec, log=log)
    if _usable(path, spec):  # another process finished it meanwhile
        shutil.rmtree(tmp)
        return path
    if path.exists():  # an unusable earlier attempt: keep it aside rather than delete it
        aside = path.with_name(path.name + f".broken-{int(time.time())}")
        log(f"the cached set at {path} is unreadable or was made with other settings; kept aside as {aside}")
        path.rename(aside)
    tmp.rename(path)
    return path


def run_quickstart(epochs: int | None = None, storage_path: str = "runs", aim_repo: str = "aim", log=print):
    from rayeq.train.driver import run_training, summary

    t0 = time.perf_counter()
    data = ensure_data(log)
    name = time.strftime("quickstart-%Y%m%d-%H%M%S")
    extra = [f"train.epochs={epochs}"] if epochs else []
    cfg = load_config(None, [*OVERRIDES, f"data.path={data}", f"train.name={name}",
                             f"train.storage_path={storage_path}", f"track.repo={aim_repo}", *extra])  # fmt: skip
    res = run_training(cfg, log=log)
    log(summary(res, cfg))
    log(f"quickstart finished in {time.perf_counter() - t0:.0f}s; the resolved config is {res.run_dir / 'config.yaml'}")
    return res
