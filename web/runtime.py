"""What the callpath process itself costs: resident memory, garbage-collector pauses, and the GC schedule.

An operator keeping a PBX up for months needs to see memory and stalls, not guess them: `/api/v1/status`
shows the RSS, and every cyclic-GC collection of the last minutes with its pause (`GcWatch`), beside the
event loop's lag (sipcore.loadmonitor).
"""
from __future__ import annotations

import asyncio
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
                "counts": list(gc.get_count())}     # allocations minus frees per generation since its last run


def tune_gc() -> None:
    """Freeze the start-up objects and leave the collections to `GcSchedule` (automatic ones only as a backstop).

    CPython starts a collection when allocations minus frees pass a threshold. A finished call leaves no
    cyclic garbage (tests/unit/test_memory.py), so under steady load allocations and frees balance, and the
    young generation's list silently grows to every object born since the last collection that is still
    alive: the whole 32 s window of live transactions. The next collection, whenever some growth triggers it,
    walks all of that: 242-311 ms loop stalls in the 20-minute registration soak with (50000, 20, 50) and with
    (25000, 2, 100) alike, enough for the overload guard to refuse new requests. `GcSchedule` instead collects
    the young generations every second (a second's worth of survivors: a few ms), so what lives longer sits in
    the old generation, which only the scheduled full collection walks. The automatic thresholds stay as a
    backstop for bursts: 100,000 net allocations for the young, and practically never for the full collection.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 1_000, 1_000_000)


class GcSchedule:
    """Runs the cyclic GC on the loop's clock: generations 0-1 every `young_every` seconds, a full collection
    every `full_every` seconds (0: never). See `tune_gc` for why, and `GcWatch` for what each one cost."""

    def __init__(self, young_every: float = 1.0, full_every: float = 3600.0) -> None:
        self.young_every = young_every
        self.full_every = full_every
        self.young = 0
        self.full = 0
        self._next_full: float | None = None

    def tick(self, now: float) -> int:
        """One tick at time `now`: the full collection when it is due, else the young one; returns the
        generation collected. The first tick starts the full collection's period."""
        if self.full_every > 0:
            if self._next_full is None:
                self._next_full = now + self.full_every
            elif now >= self._next_full:
                gc.collect(2)
                self.full += 1
                self._next_full = now + self.full_every
                return 2
        gc.collect(1)
        self.young += 1
        return 1

    async def run(self) -> None:
        """Tick every `young_every` seconds until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.young_every)
            self.tick(loop.time())
