"""A small tracker interface with three backends: TensorBoard (the default without the Aim extra), Aim (the
`aim` extra, the default where it is installed) and `none`. Each logs the same things: the config, the metrics
with their step and epoch, the reconstructions.

Aim's last release is May 2025 (its storage layer aimrocks too), with no wheels for Python 3.13, and its UI/server
has open CVEs, so rayeq keeps it at arm's length: an optional extra, imported lazily by this module only, and
`aim up` / `aim server` shown bound to 127.0.0.1. TensorBoard (Google, released monthly, a pure-Python wheel) is
the maintained default: it needs no server to write, its event files sit under `track.repo`, and Ray Tune writes
the same format. `track.repo` is a local directory (one writer per run) or, for Aim, `aim://host:port`: a remote
`aim server` that every node writes to (TensorBoard's runs on other nodes need `track.repo` on shared storage).
"""

from __future__ import annotations

import importlib.util
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_REPO = {"aim": "aim", "tensorboard": "tensorboard", "none": "aim"}


def aim_installed() -> bool:
    return importlib.util.find_spec("aim") is not None


def backend_of(cfg) -> str:
    """`track.backend` with `auto` resolved: aim where the Aim extra is installed, else tensorboard."""
    backend = cfg.track.backend
    if backend == "auto":
        return "aim" if aim_installed() else "tensorboard"
    return backend


def check_backend(cfg) -> None:
    """A ConfigError, before any work, when the tracker asked for is not installed."""
    from rayeq.config import ConfigError

    if cfg.track.backend == "aim" and not aim_installed():
        raise ConfigError(
            "track.backend=aim needs Aim, an optional extra: pip install 'rayeq[aim]' (Python < 3.13), or leave "
            "track.backend at auto (TensorBoard where Aim is not installed)"
        )
    if cfg.track.repo and cfg.track.repo.startswith("aim://") and backend_of(cfg) != "aim":
        raise ConfigError(f"track.repo={cfg.track.repo} is an Aim server, but the tracker is {backend_of(cfg)}")


def resolve_track_repo(cfg) -> str:
    """`track.repo` (by default `aim` or `tensorboard`, after the backend) as an absolute path (runs and trials
    resolve it where they run), or an aim:// URL."""
    repo = cfg.track.repo or DEFAULT_REPO[backend_of(cfg)]
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


class MissingRunError(LookupError):
    """The run a tracker was asked to reopen is not where it was."""


class TensorBoardTracker(Tracker):
    """One run = one directory `<repo>/<experiment>/<name>` of TensorBoard event files (the experiment level is left
    out when it is the run's own name). A resumed run reopens its directory; TensorBoard reads the new event file
    beside the old ones as one run."""

    def __init__(self, repo: str, experiment: str, run_id: str | None = None, must_exist: bool = False,
                 name: str | None = None):  # fmt: skip
        from torch.utils.tensorboard import SummaryWriter

        root = Path(repo)
        if run_id is not None and not (root / run_id).is_dir():
            if must_exist:
                raise MissingRunError(f"TensorBoard run {run_id} is not in {repo}")
            warnings.warn(f"TensorBoard run {run_id} is not in {repo}; logging to a new run", stacklevel=2)
            run_id = None
        if run_id is None:
            name = _safe(name or experiment)
            base = name if name == _safe(experiment) else f"{_safe(experiment)}/{name}"
            run_id, k = base, 1
            while (root / run_id).exists():  # a new run never writes into another run's directory
                k += 1
                run_id = f"{base}-{k}"
        self.run_id = run_id
        self.writer = SummaryWriter(log_dir=str(root / run_id), flush_secs=10)

    def log_params(self, params: dict[str, Any]) -> None:
        import yaml

        self.writer.add_text("config", "```\n" + yaml.safe_dump(params, sort_keys=False) + "```", 0)

    def log_metrics(self, metrics, step, epoch=None, subset="train"):
        for name, value in metrics.items():
            tag = name if "/" in name else f"{subset}/{name}"
            self.writer.add_scalar(tag, float(value), step)
        self.writer.flush()

    def log_image(self, name, image, step, epoch=None, caption=""):
        self.writer.add_image(name, np.asarray(image), step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_") or "run"


def open_tracker(
    backend: str,
    repo: str,
    experiment: str,
    run_id: str | None = None,
    must_exist: bool = False,
    name: str | None = None,
) -> Tracker:
    """`backend` resolved (backend_of); `name` the run's name (TensorBoard's run directory)."""
    if backend == "none":
        return Tracker()
    if backend == "aim":
        return AimTracker(repo, experiment, run_id, must_exist)
    if backend == "tensorboard":
        return TensorBoardTracker(repo, experiment, run_id, must_exist, name)
    raise ValueError(f"unknown tracker backend {backend!r}; choose auto, aim, tensorboard or none")


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


def tensorboard_command(logdir: str) -> str:
    """The `tensorboard` line to print, with the `tensorboard` of rayeq's own environment."""
    import shlex

    return f"{shlex.quote(command_path('tensorboard'))} --logdir {shlex.quote(logdir)} --host 127.0.0.1 --port 6006"


def look_at_line(backend: str, repo: str) -> str | None:
    """The line that tells the user how to look at the run, or None (no tracker)."""
    if backend == "aim":
        return f"look at it: {aim_up_command(repo)}   (then open http://127.0.0.1:43800)"
    if backend == "tensorboard":
        return f"look at it: {tensorboard_command(repo)}   (then open http://127.0.0.1:6006)"
    return None
