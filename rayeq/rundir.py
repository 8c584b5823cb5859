"""A run directory: the one module that knows a run's files, where they are, how they are read and written, and
how many epochs a run has done.

    <train.storage_path>/<train.name>/
      config.yaml                        the run's resolved config, written once every check before a run passed;
      config.<n>.yaml                    a config the run was made under before a --force resume with another
      metrics.jsonl                      one JSON line of metrics per epoch (each epoch exactly once)
      workers.jsonl                      one JSON line per session: which node ran each rank
      checkpoint_*/state.pt              the checkpoints Ray Train keeps (`checkpoint.TrainState`)
      checkpoint_manager_snapshot.json   Ray Train's record of the checkpoint it resumes from

Ray Train and its callbacks write the checkpoints and the snapshot; everything else here is rayeq's.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rayeq.checkpoint import STATE_FILE, LoadedCheckpoint, TrainState, checkpoint_score, read_state
from rayeq.config import OPERATIONAL_KEYS, ConfigError, ExperimentConfig, from_dict, upgrade_stored_config
from rayeq.data.schema import DataError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
WORKERS_FILE = "workers.jsonl"
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
MIN_FREE_BYTES = 1 << 30  # a ResNet-18 run keeps ~3 checkpoints of ~200 MB (weights, AdamW moments, probes)


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return keys


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def of(cls, cfg: ExperimentConfig) -> RunDir:
        """`train.storage_path/train.name`, absolute."""
        return cls(Path(cfg.train.storage_path).expanduser().resolve() / cfg.train.name)

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def workers_file(self) -> Path:
        return self.path / WORKERS_FILE

    # -- the config --------------------------------------------------------------------------------------------

    def saved_config(self) -> ExperimentConfig | None:
        """The config the run was made under (None before the run's first write)."""
        saved = self.config_file
        if not saved.is_file():
            return None
        try:
            return from_dict(upgrade_stored_config(yaml.safe_load(saved.read_text())))
        except (yaml.YAMLError, ConfigError) as exc:
            raise ConfigError(
                f"{saved} (the run's saved config) cannot be read ({str(exc).splitlines()[0]}); it is kept as it is: "
                "use another train.name for a new run, or move that run directory aside"
            ) from None

    def check(self, cfg: ExperimentConfig, force: bool) -> ExperimentConfig | None:
        """A run directory with another config is refused (unless force); the same config resumes. The storage is
        checked too. Writes nothing (`prepare` does, once every check has passed). Returns the saved config (None for
        a new run), for `prepare`."""
        old = self.saved_config()
        if old is not None and old.fingerprint() != cfg.fingerprint() and not force:
            diff = [d for d in _diff(old.to_dict(), cfg.to_dict()) if not d.startswith(OPERATIONAL_KEYS)]
            raise ConfigError(
                f"run directory {str(self.path)!r} holds a run made under a different config; resuming it "
                "with this one is refused. Differences:\n  " + "\n  ".join(diff) + "\nUse another "
                "train.name for a new run, or --force to resume that run's checkpoint with this config."
            )
        self.check_storage()
        return old

    def prepare(self, cfg: ExperimentConfig, old: ExperimentConfig | None) -> None:
        """The directory and its `config.yaml`; under --force a different saved config (`old`, what `check` returned)
        is kept as config.<n>.yaml."""
        self.path.mkdir(parents=True, exist_ok=True)
        if old is not None and old.fingerprint() != cfg.fingerprint():
            n = 1
            while (self.path / f"config.{n}.yaml").exists():
                n += 1
            shutil.copy(self.config_file, self.path / f"config.{n}.yaml")
        cfg.dump(self.config_file)

    def check_storage(self) -> None:
        """The run directory can be made and written, with room for checkpoints, before anything starts (a read-only
        or full train.storage_path would otherwise fail at the first checkpoint, after an epoch of work). Probed in
        the nearest directory that exists, with a temporary file that is removed: nothing is left behind."""
        import tempfile

        existing = self.path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            if not existing.is_dir():
                raise NotADirectoryError(20, "not a directory", str(existing))
            with tempfile.NamedTemporaryFile(dir=existing, prefix=".rayeq-write-probe-") as f:
                f.write(b"0" * 4096)
                f.flush()
        except OSError as exc:
            raise ConfigError(
                f"train.storage_path: cannot write the run directory {str(self.path)!r} ({exc.strerror or exc} in "
                f"{str(existing)!r}); use a writable path (on a cluster: shared storage every node mounts)"
            ) from None
        free = shutil.disk_usage(existing).free
        if free < MIN_FREE_BYTES:
            raise ConfigError(
                f"train.storage_path: {str(self.path)!r} has {free / 2**20:.0f} MiB free; a run needs at least "
                f"{MIN_FREE_BYTES / 2**20:.0f} MiB for its checkpoints (train.keep_checkpoints best + the latest)"
            )

    # -- per-epoch metrics and the workers' placement ------------------------------------------------------------

    def metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl's lines, oldest first ([] before the first epoch's)."""
        if not self.metrics_file.is_file():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

    def last_metrics(self) -> dict[str, Any]:
        rows = self.metrics()
        return rows[-1] if rows else {}

    def record_epoch(self, metrics: dict[str, Any]) -> None:
        """Add an epoch's line. An epoch that ran again after a restart (a worker or node lost after its line was
        written but before its checkpoint was kept) replaces its earlier line and any later one, so each epoch has
        exactly one line."""
        path, epoch = self.metrics_file, metrics["epoch"]
        lines = path.read_text().splitlines() if path.is_file() else []
        kept = [line for line in lines if json.loads(line).get("epoch", 0) < epoch]
        if len(kept) == len(lines):
            with open(path, "a") as f:
                f.write(json.dumps(metrics) + "\n")
            return
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in [*kept, json.dumps(metrics)]))
        tmp.replace(path)

    def record_workers(self, record: dict[str, Any]) -> None:
        with open(self.workers_file, "a") as f:
            f.write(json.dumps(record) + "\n")

    # -- checkpoints and epochs done ----------------------------------------------------------------------------

    def checkpoints(self) -> list[Path]:
        """The kept checkpoint directories, oldest first."""
        return sorted(p for p in self.path.glob("checkpoint_*") if p.is_dir() and (p / STATE_FILE).is_file())

    def kept_result(self) -> dict[str, Any] | None:
        """The result Ray Train resumes from (its checkpoint manager's snapshot): `checkpoint_dir_name` and the
        `metrics` reported with it; None before the first kept checkpoint."""
        try:
            latest = json.loads((self.path / SNAPSHOT_FILE).read_text())["latest_checkpoint_result"]
            return {"checkpoint_dir_name": str(latest["checkpoint_dir_name"]), "metrics": dict(latest["metrics"])}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def kept_epoch(self) -> int | None:
        """The epoch of the checkpoint Ray Train resumes from, if any."""
        kept = self.kept_result()
        try:
            return int(kept["metrics"]["epoch"]) if kept else None
        except (KeyError, TypeError, ValueError):
            return None

    def epochs_done(self) -> int:
        """How many epochs the run has done: the epoch of the checkpoint a rerun resumes from (Ray Train's record
        of it; without one, the latest checkpoint's); 0 when no checkpoint is kept."""
        kept = self.kept_epoch()
        if kept is not None:
            return kept
        ckpts = self.checkpoints()
        try:
            return int(read_state(ckpts[-1]).get("epoch", 0)) if ckpts else 0
        except (OSError, ValueError, KeyError, RuntimeError):
            return 0


def find_checkpoint(path: str | Path, which: str = "latest") -> Path:
    """A checkpoint directory, or a run directory (its latest, or best by the saved score)."""
    path = Path(path).expanduser()
    if (path / STATE_FILE).is_file():
        return path
    if not path.exists():
        raise DataError(f"{str(path)!r} does not exist (rayeq eval takes a run directory or a checkpoint directory)")
    if not path.is_dir():
        raise DataError(f"{str(path)!r} is neither a run directory nor a checkpoint")
    ckpts = RunDir(path).checkpoints()
    if not ckpts:
        raise DataError(f"run directory {str(path)!r} has no checkpoint_*/{STATE_FILE} (has training run yet?)")
    if which == "latest":
        return ckpts[-1]
    scored = [(checkpoint_score(read_state(c).get("metrics", {})), c) for c in ckpts]
    return max(scored)[1]


def load_checkpoint(path: str | Path, which: str = "latest") -> LoadedCheckpoint:
    """A run's (or a checkpoint directory's) checkpoint as a frozen encoder with its config."""
    ckpt = find_checkpoint(path, which)
    state = TrainState.load(ckpt)
    try:
        cfg = from_dict(upgrade_stored_config(state.config))
    except ConfigError as exc:
        raise DataError(f"checkpoint {str(ckpt)!r} holds a config this rayeq cannot read: {exc}") from exc
    return LoadedCheckpoint(ckpt, ckpt.parent, cfg, state)
