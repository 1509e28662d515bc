"""OPTIONS qualify: is a peer (a trunk's carrier) reachable, and how far away? Sans-IO.

Every ``interval`` seconds a probe goes out (the adapter sends an OPTIONS for each id that
`probes_to_send()` returns). Any response, whatever its status, proves the peer alive: the probe's
round-trip time is recorded and the peer is UP. A probe unanswered after ``timeout`` seconds (or whose
transaction failed) is a miss; ``down_after`` consecutive misses make the peer DOWN. The first answer
after that makes it UP again. One probe is outstanding at a time; a late answer to a probe already
counted as missed is ignored.
"""
from __future__ import annotations

import enum
import itertools
from collections import deque
from dataclasses import dataclass

__all__ = ["QualifyState", "Qualify", "QualifyChanged"]


class QualifyState(enum.StrEnum):
    """Reachability as the probes see it (UNKNOWN until the first answer or the first DOWN)."""

    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class QualifyChanged:
    """The peer's state changed; ``rtt`` is the last round-trip time (seconds) when UP."""

    state: QualifyState
    rtt: float | None
    misses: int


class Qualify:
    """The probe schedule and up/down decision of one peer."""

    def __init__(self, interval: float, *, timeout: float | None = None, down_after: int = 2) -> None:
        if interval <= 0:
            raise ValueError("qualify interval must be positive")
        self.interval = interval
        self.timeout = timeout if timeout is not None else max(1.0, min(interval, 5.0))
        self.down_after = max(1, down_after)
        self.state = QualifyState.UNKNOWN
        self.rtt: float | None = None           # seconds, of the last answered probe
        self.misses = 0                         # consecutive unanswered probes
        self.last_answer_at: float | None = None
        self._ids = itertools.count(1)
        self._next_at: float | None = None
        self._pending: tuple[int, float] | None = None   # (probe id, sent at)
        self._out: list[int] = []
        self._events: deque[QualifyChanged] = deque()

    def start(self, now: float) -> None:
        """Probe now, then every ``interval``."""
        self._next_at = now

    def stop(self) -> None:
        """No more probes (the state is kept as last seen)."""
        self._next_at = None
        self._pending = None

    def get_timer(self) -> float | None:
        times = [t for t in (self._next_at, self._deadline) if t is not None]
        return min(times) if times else None

    @property
    def _deadline(self) -> float | None:
        return self._pending[1] + self.timeout if self._pending is not None else None

    def handle_timer(self, now: float) -> None:
        deadline = self._deadline
        if deadline is not None and now >= deadline:
            self._miss()
        if self._next_at is not None and now >= self._next_at:
            if self._pending is None:
                probe = next(self._ids)
                self._pending = (probe, now)
                self._out.append(probe)
            self._next_at = now + self.interval

    def probes_to_send(self) -> list[int]:
        """Ids of the probes to send now (one OPTIONS each)."""
        out, self._out = self._out, []
        return out

    def receive_answer(self, probe: int, now: float) -> None:
        """Any SIP response to probe ``probe`` arrived."""
        if self._pending is None or self._pending[0] != probe:
            return
        self.rtt = max(0.0, now - self._pending[1])
        self._pending = None
        self.misses = 0
        self.last_answer_at = now
        if self.state is not QualifyState.UP:
            self.state = QualifyState.UP
            self._events.append(QualifyChanged(self.state, self.rtt, 0))

    def probe_failed(self, probe: int, now: float) -> None:
        """Probe ``probe`` could not be sent, or its transaction timed out before our own deadline."""
        if self._pending is not None and self._pending[0] == probe:
            self._miss()

    def _miss(self) -> None:
        self._pending = None
        self.misses += 1
        if self.misses >= self.down_after and self.state is not QualifyState.DOWN:
            self.state = QualifyState.DOWN
            self._events.append(QualifyChanged(self.state, self.rtt, self.misses))

    def next_event(self) -> QualifyChanged | None:
        return self._events.popleft() if self._events else None

    def status(self) -> dict[str, object]:
        """A JSON-able snapshot for /api/v1/status (rtt in milliseconds)."""
        return {"state": str(self.state), "rtt_ms": round(self.rtt * 1000, 1) if self.rtt is not None else None,
                "misses": self.misses, "interval": self.interval}
