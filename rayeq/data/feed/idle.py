"""Ray Data's scheduling loop, waiting instead of spinning (a Ray Data execution callback).

Ray 2.60's streaming executor (`StreamingExecutor.run`; for Ray Train it runs in a `SplitCoordinator` actor per
dataset) has one blocking call in a turn of its loop: `ray.wait(active tasks, timeout=0.1)` in
`process_completed_tasks`. When backpressure holds an operator's output back (its object-store budget is spent,
or its output queue is more than twice what the next operator can take), its tasks that have output ready still
count as ready for `ray.wait`, which then returns at once; with no task in flight it is not called at all. Nothing
the turn does can change anything until the consumer takes a batch or a downstream task finishes, yet the loop
turns again at once, 400-1,000 times a second, recomputing every operator's resource usage each time: 0.4-0.9 of
a core (docs/PERFORMANCE.md, "Ray Data's busy coordinator"). It happens whenever the data ahead of a slower
consumer reaches the budget: all epochs of training in one stream, one pass of a set larger than the budget, a
validation pass while the model's forward passes are the slower side.

`IdleWait` is called by the executor after every turn (`on_execution_step`). A turn that took under `SPIN_TURN_S`
(it did not wait in `ray.wait`) and changed nothing (no task submitted, finished or read, no queue grown or shrunk)
is a spin: it sleeps, from 10 ms doubling up to 200 ms while the consumer has data waiting (a pause only grows while
nothing changes, so it stays within about the time the consumer has already spent on its data; 200 against 100 ms:
the coordinator at 4.4 against 5.3 % of a core, the same throughput), from 1 ms up to 10 ms while the consumer waits
for data (so that the output it waits for is taken within 10 ms), and back to no pause after any change. A loop that
waits in `ray.wait` or makes progress never meets a pause.

It reads a few of the executor's private fields (`_topology`, `_consumer_idling`). Where another Ray version
lacks them, it logs once and does nothing: the loop then runs as Ray wrote it. The class follows Ray's
`ExecutionCallback` interface without importing Ray (this package runs without Ray); tests/test_pipeline.py
checks that it has every method Ray's interface has.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)

SPIN_TURN_S = 0.02  # a turn shorter than this did not block in ray.wait (its timeout is 0.1 s)
FIRST_PAUSE_S, LONGEST_PAUSE_S = 0.01, 0.2  # while the consumer has data waiting
FIRST_PAUSE_STARVING_S, LONGEST_PAUSE_STARVING_S = 0.001, 0.01  # while the consumer waits for data


def progress_mark(executor: Any) -> tuple:
    """What a turn of the loop can change: each operator's task, input and output counts and its queue length."""
    return tuple(
        (
            m.num_tasks_submitted,
            m.num_tasks_finished,
            m.num_task_outputs_generated,
            m.num_inputs_received,
            m.num_outputs_taken,
            len(state.output_queue),
        )
        for op, state in executor._topology.items()
        for m in (op.metrics,)
    )


class IdleWait:
    """Sleeps after a turn of the scheduling loop that spun (see the module's text). `pauses` counts the pauses
    of every instance in this process (tests read it)."""

    pauses = 0
    sleep = staticmethod(time.sleep)
    clock = staticmethod(time.perf_counter)

    def __init__(self):
        self.before_execution_starts(None)
        self._broken = False

    def before_execution_starts(self, executor: Any) -> None:
        self._last: tuple | None = None
        self._pause = 0.0
        self._turn_started = self.clock()

    def on_execution_step(self, executor: Any) -> None:
        if self._broken:
            return
        turn = self.clock() - self._turn_started
        try:
            mark, starving = progress_mark(executor), executor._consumer_idling()
        except Exception as exc:  # another Ray version's executor: leave its loop as it is
            self._broken = True
            log.warning("rayeq's IdleWait is off for this execution (Ray's executor changed): %r", exc)
            return
        if mark == self._last and turn < SPIN_TURN_S:
            first, longest = (
                (FIRST_PAUSE_STARVING_S, LONGEST_PAUSE_STARVING_S) if starving else (FIRST_PAUSE_S, LONGEST_PAUSE_S)
            )
            self._pause = min(longest, max(first, 2 * self._pause))
            type(self).pauses += 1
            self.sleep(self._pause)
        else:
            self._pause = 0.0
        self._last = mark
        self._turn_started = self.clock()

    # the rest of Ray's ExecutionCallback interface: nothing to do
    def after_execution_succeeds(self, executor: Any) -> None:
        pass

    def after_execution_fails(self, executor: Any, error: Exception) -> None:
        pass


def with_idle_wait(ds):
    """`ds` with `IdleWait` among the execution callbacks of its context (the context travels with the dataset: to
    the SplitCoordinator that runs it for Ray Train, or to `iter_batches` in this process). The dataset's context
    is its own copy: Ray's global DataContext is left as it is."""
    ctx = ds.context
    if IdleWait not in ctx.custom_execution_callback_classes:
        ctx.custom_execution_callback_classes = [*ctx.custom_execution_callback_classes, IdleWait]
    return ds
