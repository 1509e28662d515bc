"""Timing helper shared by the media micro-benchmarks: median and best µs per call over several runs."""
from __future__ import annotations

import statistics
import time
from typing import Callable


class Timing(float):
    """Median µs per call over the runs (the float value), with the best run kept beside it."""

    best: float

    def __new__(cls, median: float, best: float) -> "Timing":
        obj = super().__new__(cls, median)
        obj.best = best
        return obj

    def __truediv__(self, other: float) -> "Timing":  # type: ignore[override]
        return Timing(float(self) / other, self.best / other)


def measure(fn: Callable[[], object], calls: int, runs: int) -> Timing:
    """Median (and best) over runs of the mean µs per call of fn (after a short warm-up)."""
    for _ in range(max(1, calls // 10)):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return Timing(statistics.median(times), min(times))
