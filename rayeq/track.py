"""A small tracker interface; Aim is one backend behind it, `none` the other.

Aim's last release is May 2025 and its UI/server has open CVEs, so rayeq keeps it at arm's length:
only this module imports it, lazily, and `aim up` / `aim server` are shown bound to 127.0.0.1.
`track.repo` is a local directory (one writer per repo; fine for one node) or `aim://host:port`
for a remote `aim server` that every node writes to.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np


def resolve_track_repo(cfg) -> str:
    """`track.repo` as an absolute path (runs and trials resolve it where they run), or an aim:// URL."""
    repo = cfg.track.repo
    return repo if repo.startswith("aim://") else str(Path(repo).expanduser().resolve())


class Tracker:
    """No-op base: the `none` backend."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: int | None = None, subset: str = "train"): ...

    def log_image(self, name: str, image: np.ndarray, step: int, epoch: int | None = None, caption: str = ""): ...

    def close(self) -> None: ...


class AimTracker(Tracker):
    def __init__(self, repo: str, experiment: str, run_id: str | None = None, must_exist: bool = False):
        with warnings.catch_warnings():  # aim imports SQLAlchemy APIs that warn under -W error
            warnings.simplefilter("ignore")
            import aim
            from aim.sdk.errors import MissingRunError
        self._aim = aim
        ensure_aim_repo(repo)
        kwargs = dict(repo=repo, experiment=experiment, system_tracking_interval=None, capture_terminal_logs=False)
        try:
            self.run = aim.Run(run_hash=run_id, **kwargs)
        except MissingRunError:  # the repo moved or was cleared: go on in a new run (training)
            if must_exist:
                raise
            warnings.warn(f"Aim run {run_id} is not in {repo}; logging to a new run", stacklevel=2)
            self.run = aim.Run(**kwargs)
        self.run_id = self.run.hash

    def log_params(self, params: dict[str, Any]) -> None:
        self.run["hparams"] = params
        name = params.get("train", {}).get("name")
        if name:  # the run's (or sweep trial's) name, as shown in the Aim UI
            self.run.name = name

    def log_metrics(self, metrics, step, epoch=None, subset="train"):
        for name, value in metrics.items():
            self.run.track(float(value), name=name, step=step, epoch=epoch, context={"subset": subset})

    def log_image(self, name, image, step, epoch=None, caption=""):
        from PIL import Image

        self.run.track(self._aim.Image(Image.fromarray(image), caption=caption), name=name, step=step, epoch=epoch)

    def close(self) -> None:
        self.run.close()


def ensure_aim_repo(repo: str) -> None:
    """Create a local Aim repo (Aim's convention: `repo` is the directory holding `.aim`). A sweep
    does this once before its trials start, which would otherwise race to create it."""
    if repo.startswith("aim://"):
        return
    Path(repo).mkdir(parents=True, exist_ok=True)
    if not (Path(repo) / ".aim").exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import aim

        aim.Repo.from_path(repo, init=True)


def open_tracker(
    backend: str, repo: str, experiment: str, run_id: str | None = None, must_exist: bool = False
) -> Tracker:
    if backend == "none":
        return Tracker()
    if backend == "aim":
        return AimTracker(repo, experiment, run_id, must_exist)
    raise ValueError(f"unknown tracker backend {backend!r}; choose aim or none")


def command_path(name: str) -> str:
    """How to call the executable `name` installed beside this Python (a venv's, which a user who never activated it
    has not on their PATH): relative to the working directory when it lies below it; else the bare name."""
    import os
    import sys

    exe = Path(sys.executable).parent / name
    if not exe.is_file():
        return name
    here = Path.cwd()
    return os.path.relpath(exe, here) if exe.is_relative_to(here) else str(exe)


def aim_up_command(repo: str) -> str:
    """The `aim up` line to print, with the `aim` of rayeq's own environment."""
    import shlex

    return f"{shlex.quote(command_path('aim'))} up --repo {shlex.quote(repo)} --host 127.0.0.1 --port 43800"
