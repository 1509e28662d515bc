"""Event-loop lag, sampled: the overload guard's input and the operator's view of stalls.

The stack's probe timer is due every 50 ms; how late it fires is the loop's lag. `LagStats` is sans-IO:
it is fed (lag, now) pairs and keeps the last `window` seconds of them (a minute: 1,200 samples, about
130 KB, reached after that minute), so a reader can ask for the p50/p99/max of any recent span
(`/api/v1/status` shows the last 30 s) without resetting anything.
"""
from __future__ import annotations

from collections import deque


class LagStats:
    """Recent lag samples (seconds, at times `now`) with percentiles over a trailing span."""

    __slots__ = ("window", "_samples", "max_ever", "count")

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self._samples: deque[tuple[float, float]] = deque()
        self.max_ever = 0.0     # the largest lag seen since start
        self.count = 0          # samples since start

    def add(self, lag: float, now: float) -> None:
        """One sample: the probe ran `lag` seconds late at time `now`."""
        lag = max(0.0, lag)
        samples = self._samples
        samples.append((now, lag))
        self.count += 1
        if lag > self.max_ever:
            self.max_ever = lag
        horizon = now - self.window
        while samples and samples[0][0] < horizon:
            samples.popleft()

    def summary(self, seconds: float, now: float) -> dict[str, float | int]:
        """{samples, p50_ms, p99_ms, max_ms} over the last `seconds` (nearest-rank percentiles)."""
        since = now - seconds
        lags = sorted(lag for t, lag in self._samples if t >= since)
        if not lags:
            return {"samples": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
        n = len(lags)

        def rank(p: float) -> float:
            return round(lags[min(n - 1, max(0, -(-n * p // 100) - 1))] * 1000.0, 2)

        return {"samples": n, "p50_ms": rank(50), "p99_ms": rank(99), "max_ms": round(lags[-1] * 1000.0, 2)}
