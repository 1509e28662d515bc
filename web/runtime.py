"""What the callpath process itself costs: resident memory, garbage-collector pauses, and the GC tuning.

An operator keeping a PBX up for months needs to see memory and stalls, not guess them: `/api/v1/status`
shows the RSS, and every cyclic-GC collection of the last minutes with its pause (`GcWatch`), beside the
event loop's lag (sipcore.loadmonitor).
"""
from __future__ import annotations

import gc
import os
import time
from collections import deque
from typing import Any, Callable

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Resident set size of this process (/proc/self/statm), 0 where /proc is missing."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


class GcWatch:
    """Times every collection of the cyclic garbage collector (gc.callbacks) and keeps the last `window`
    seconds of them: generation, pause, objects collected."""

    def __init__(self, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self.events: deque[tuple[float, int, float, int]] = deque()  # (end time, generation, pause s, collected)
        self.max_pause = 0.0
        self.max_pause_generation = 0
        self._started = 0.0
        self._installed = False

    def install(self) -> "GcWatch":
        if not self._installed:
            gc.callbacks.append(self._callback)
            self._installed = True
        return self

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._callback)
            self._installed = False

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._started = now
            return
        pause = now - self._started
        end = self.clock()
        self.events.append((end, info.get("generation", 0), pause, info.get("collected", 0)))
        if pause > self.max_pause:
            self.max_pause = pause
            self.max_pause_generation = info.get("generation", 0)
        horizon = end - self.window
        while self.events and self.events[0][0] < horizon:
            self.events.popleft()

    def summary(self, seconds: float = 30.0) -> dict[str, Any]:
        """Collections per generation, their longest pause and what they freed over the last `seconds`."""
        since = self.clock() - seconds
        per_gen = [{"collections": 0, "max_pause_ms": 0.0, "collected": 0} for _ in range(3)]
        for end, gen, pause, collected in self.events:
            if end < since:
                continue
            row = per_gen[min(gen, 2)]
            row["collections"] += 1
            row["collected"] += collected
            row["max_pause_ms"] = max(row["max_pause_ms"], round(pause * 1000.0, 2))
        return {"generations": per_gen, "max_pause_since_start_ms": round(self.max_pause * 1000.0, 2),
                "max_pause_generation": self.max_pause_generation,
                "thresholds": list(gc.get_threshold()), "frozen": gc.get_freeze_count(),
                "tracked": sum(gc.get_count())}


def tune_gc() -> None:
    """Keep the cyclic GC's pauses short and rare: freeze start-up objects, collect the young often enough.

    A finished call leaves no cyclic garbage (tests/unit/test_memory.py), so under steady load allocations
    and frees balance and the collector hardly runs; it runs while the live state grows (the 32 s window of
    transactions filling, bindings and digest nonces accumulating), and then a collection walks the objects
    that survived since the last one of its generation. Measured on 40,000 live REGISTER transactions
    (in-process, uvloop): CPython's (700, 10, 10) re-walked them so often that the GC took a large share of
    the CPU per REGISTER (py-spy --native: gc_collect_main); (50000, 20, 50) fixed that, but one generation-1
    collection then walked a million survivors in 284 ms (a 242 ms loop stall in the 20-minute registration
    soak); (25000, 2, 100) keeps every young collection under ~25 ms at the same total CPU, while a full
    collection still needs 200 young ones (5 million net allocations) and CPython's own rule that a quarter
    of the long-lived objects be new.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(25_000, 2, 100)
