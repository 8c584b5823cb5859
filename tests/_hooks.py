"""Test-only training hooks, passed to `run_training(hooks=...)` and run inside the Ray Train workers
(pickled by value: the workers cannot import the tests folder)."""

import sys
from pathlib import Path

import torch

from rayeq.train.engine import Hooks


class RecordResume(Hooks):
    """Each worker saves the training state it holds right after restoring a checkpoint."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def on_restored(self, engine):
        import ray.train

        rank = ray.train.get_context().get_world_rank()
        torch.save(engine.state_dict(), self.run_dir / f".resumed_state.rank{rank}.pt")


def by_value() -> None:
    """Pickle this module's classes by value, so that Ray workers need not import `tests`."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
