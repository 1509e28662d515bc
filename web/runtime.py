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
                "thresholds": list(gc.get_threshold()), "frozen": gc.get_freeze_count(),
                "tracked": sum(gc.get_count())}


def tune_gc() -> None:
    """Keep the cyclic GC off the SIP hot path.

    Live transactions (kept 32 s for retransmissions on UDP) hold hundreds of thousands of objects under
    load; with CPython's default thresholds the collector kept re-walking them and took a large share of
    the CPU per REGISTER (py-spy --native: gc_collect_main). Start-up objects are frozen out of the
    collector, and the young generation is collected every 50k allocations instead of 700.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 50)
