"""Test-only training hooks, passed to `run_training(hooks=...)` and run inside the Ray Train workers
(pickled by value: the workers cannot import the tests folder)."""

import os
import sys
import time
from pathlib import Path

import torch

from rayeq.train.engine import Hooks


class FaultInjection(Hooks):
    """The last worker process dies once in epoch `epoch + 1`, at its first log step from step 2 (after the
    previous epoch's checkpoint has reached the controller). A marker file in the run directory makes it happen
    once."""

    def __init__(self, run_dir: Path, epoch: int):
        self.run_dir, self.epoch = Path(run_dir), epoch

    def on_step(self, engine, n, out, terms):
        import ray.train

        ctx = ray.train.get_context()
        rank = ctx.get_world_rank()
        if engine.epoch != self.epoch or n < 2 or rank != ctx.get_world_size() - 1:  # n: a log step
            return
        marker = self.run_dir / ".fault_injected"
        if marker.exists():
            return
        marker.write_text(f"rank {rank} epoch {engine.epoch + 1}\n")
        sys.stdout.write(f"[fault injection] worker {rank} dies in epoch {engine.epoch + 1}\n")
        time.sleep(3)
        os._exit(1)


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
