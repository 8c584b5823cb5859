"""A small progress line: done/total, rate and ETA, printed at most every `every` seconds (and at the end)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, unit: str, every: float = 20.0, log=None):
        self.total, self.unit, self.every = total, unit, every
        self.log = log or (lambda s: print(s, file=sys.stderr, flush=True))
        self.done = 0
        self.t0 = self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            pct = 100 * self.done / max(self.total, 1)
            left = f"ETA {eta // 60:.0f}m{eta % 60:02.0f}s" if eta >= 60 else f"ETA {eta:.0f}s"
            self.log(f"  {self.done}/{self.total} {self.unit} ({pct:.0f} %), {rate:.0f} {self.unit}/s, {left}")
