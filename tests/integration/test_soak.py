"""A CI-sized soak: the same SIPp load in rounds must not keep growing callpath's memory.

benchmarks/sip/soak.py runs this for 20 minutes per scenario; here a warm-up fills the 32 s transaction
window (so the working set is reached) and then three rounds of the same load are compared. Before the
fix of issue "Long-running load", each proxied call left about 12 KB and each anchored back-to-back call
about 28 KB behind (cyclic garbage that only rare full collections freed): 40-100 MB over these rounds,
against a bound of a few KB per call here. Compares rounds, not absolute figures, so a slower machine or
another allocator does not make it flaky.
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "sip"))

import sipbench as sb  # noqa: E402
import soak  # noqa: E402

pytestmark = pytest.mark.skipif(not shutil.which("sipp"), reason="SIPp (Debian sip-tester) is not installed")

WARMUP_S = 40.0          # longer than the 32 s transaction timers (J, L, M): the window is full after it
ROUND_S = 20.0
ROUNDS = 3
BOUND_KB_PER_CALL = 2.0  # growth allowed between the first and the last measured round


def _soak_rounds(tmp_path: Path, scenario: str, rate: float) -> soak.Side:
    data = tmp_path / "data"
    sb.create_callpath_accounts(tmp_path, data, [])
    calls = int(rate * (WARMUP_S + ROUNDS * ROUND_S + 5))
    side = soak.Side(scenario, "callpath", tmp_path / scenario, data, rate, calls, [])
    try:
        side.start()
        side.begin_load()
        time.sleep(WARMUP_S)
        side.sample(WARMUP_S)
        for _ in range(ROUNDS):
            time.sleep(ROUND_S)
            side.sample(ROUND_S)
        assert side.uac is not None
        side.uac.stop(grace=10)
        return side
    finally:
        side.stop()


def _check_rounds(side: soak.Side, label: str) -> None:
    rows = side.run.intervals
    assert sum(r.failed for r in rows) == 0, f"{label}: failed calls {[r.failed for r in rows]}"
    first, last = rows[1], rows[-1]
    calls = last.total_completed - first.total_completed
    assert calls > 0.8 * side.rate * (ROUNDS - 1) * ROUND_S, f"{label}: only {calls} calls completed"
    grown = last.rss_kb - first.rss_kb
    trace = ", ".join(f"{r.rss_kb / 1024:.1f} MB after {r.total_completed}" for r in rows)
    assert grown < BOUND_KB_PER_CALL * calls, (
        f"{label}: RSS grew {grown} KB over {calls} calls of the same load ({grown / calls:.2f} KB/call): {trace}")
    if first.rss_media_kb is not None and last.rss_media_kb is not None and first.rss_media_kb:
        media = last.rss_media_kb - first.rss_media_kb
        assert media < BOUND_KB_PER_CALL * calls, f"{label}: the media workers grew {media} KB over {calls} calls"
    lags = [r.lag_max_ms for r in rows if r.lag_max_ms is not None]
    assert lags, f"{label}: /api/v1/status gave no loop lag"


def test_proxied_calls_in_rounds_do_not_grow_memory(tmp_path):
    side = _soak_rounds(tmp_path, "proxy", 60.0)
    _check_rounds(side, "proxied calls")


def test_anchored_back_to_back_calls_in_rounds_do_not_grow_memory(tmp_path):
    side = _soak_rounds(tmp_path, "b2b", 30.0)
    _check_rounds(side, "back-to-back calls with media")
