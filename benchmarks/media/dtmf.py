"""DTMF micro-benchmarks: in-band detection per 20 ms frame (pure Python, numpy, numpy batched) and RFC 4733 per packet.

    python benchmarks/media/dtmf.py [--legs 200] [--repeat 5] [--json PATH]

Figures are microseconds of one CPU, best of --repeat runs (each run a fixed loop), so they are the cost without
scheduler noise. Detection rows are per leg per 20 ms frame: "bins" is the Goertzel stage alone (8 fundamentals +
8 second harmonics), "detector" adds the validity checks and the per-leg digit state machine. The frames are a
realistic mix: DTMF digits with pauses, white noise and silence, so both the early-exit and the full paths run.
Event rows are per packet: the sender's tick + payload encoding, the receiver's decode + state machine + event
drain, and the 48 kHz -> 8 kHz translator.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

# One media worker per core: BLAS must not spawn threads of its own. On a busy 2-core box a threaded
# OpenBLAS made the (200 x 160) @ (160 x 32) product 3-10x slower than single-threaded. Override from the shell.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from media.dtmf import (  # noqa: E402
    DETECTOR_FREQS,
    DtmfDetector,
    DtmfDetectorBank,
    DtmfEventReceiver,
    DtmfEventSender,
    TelephoneEventTranslator,
    dtmf_frames,
    goertzel_powers_batch,
    goertzel_powers_np,
    goertzel_powers_py,
    packets_for_press,
)

FREQS8 = DETECTOR_FREQS[:8]


def best_us(fn: Callable[[], int], repeat: int) -> float:
    """Best-of-repeat microseconds per unit; fn runs a loop and returns how many units it did."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        units = fn()
        dt = (time.perf_counter_ns() - t0) / 1000.0 / units
        best = min(best, dt)
    return best


def test_frames(count: int, seed: int = 0) -> np.ndarray:
    """(count, 160) int16 frames: digits with pauses, then noise and silence, cycled."""
    rng = np.random.default_rng(seed)
    tones = np.stack(list(dtmf_frames("0123456789*#ABCD", tone_ms=80, pause_ms=60)))
    noise = rng.normal(0, 3000, (len(tones) // 2, 160)).astype(np.int16)
    quiet = np.zeros((len(tones) // 4, 160), np.int16)
    pool = np.concatenate([tones, noise, quiet])
    return pool[np.arange(count) % len(pool)]


def bench_detection(legs: int, repeat: int) -> list[tuple[str, float, str]]:
    """Per-frame costs of the three Goertzel paths and the detectors built on them."""
    rows: list[tuple[str, float, str]] = []
    frames = test_frames(400)
    pyframes = [[float(v) for v in f] for f in frames[:60]]

    def py_bins8() -> int:
        """Goertzel recursion, the 8 DTMF bins only (the research note's figure)."""
        for f in pyframes:
            goertzel_powers_py(f, FREQS8)
        return len(pyframes)

    def py_detector() -> int:
        """Per-leg detector on the pure-Python path."""
        det = DtmfDetector(backend="python")
        for f in frames[:100]:
            det.process_frame(f)
        return 100

    def np_bins() -> int:
        """One frame's 16 bins with numpy."""
        for f in frames:
            goertzel_powers_np(f)
        return len(frames)

    def np_detector() -> int:
        """Per-leg detector on the numpy path."""
        det = DtmfDetector(backend="numpy")
        for f in frames:
            det.process_frame(f)
        return len(frames)

    ticks = 50
    mat = test_frames(legs * ticks, seed=1).reshape(ticks, legs, 160)  # legs out of phase with each other
    mat = np.ascontiguousarray(mat)

    def batch_bins(dtype: str) -> Callable[[], int]:
        """All legs' bins per tick, one matmul."""

        def run() -> int:
            """One timed loop."""
            for k in range(ticks):
                goertzel_powers_batch(mat[k], dtype=dtype)
            return ticks * legs

        return run

    def batch_detector(dtype: str) -> Callable[[], int]:
        """DtmfDetectorBank over all legs per tick."""

        def run() -> int:
            """One timed loop."""
            bank = DtmfDetectorBank(legs, dtype=dtype)
            for k in range(ticks):
                bank.process(mat[k])
            return ticks * legs

        return run

    rows.append(("pure Python Goertzel, 8 bins", best_us(py_bins8, repeat), "per frame"))
    rows.append(("pure Python DtmfDetector", best_us(py_detector, repeat), "per frame"))
    rows.append(("numpy Goertzel, 16 bins", best_us(np_bins, repeat), "per frame"))
    rows.append(("numpy DtmfDetector", best_us(np_detector, repeat), "per frame"))
    for dtype in ("float64", "float32"):
        rows.append((f"batched Goertzel, 16 bins, {legs} legs, {dtype}", best_us(batch_bins(dtype), repeat), "per leg-frame"))
        rows.append((f"batched DtmfDetectorBank, {legs} legs, {dtype}", best_us(batch_detector(dtype), repeat), "per leg-frame"))
    return rows


def bench_events(repeat: int) -> list[tuple[str, float, str]]:
    """Per-packet costs of the RFC 4733 sender, receiver and 48k->8k translator."""
    rows: list[tuple[str, float, str]] = []
    presses = 200

    def sender() -> int:
        """Send 100 ms presses packet by packet."""
        s = DtmfEventSender(8000, 20)
        n = 0
        ts = 0
        for i in range(presses):
            s.start("0123456789*#ABCD"[i % 16], ts, 100)
            while not s.idle:
                for p in s.tick():
                    p.payload
                    n += 1
            ts += 1600
        return n

    stream = []
    for i in range(presses):
        for p in (p for t in packets_for_press("0123456789*#ABCD"[i % 16], 100, i * 1600, 8000) for p in t):
            stream.append((p.payload, p.timestamp, p.marker))
    stream48 = []
    for i in range(presses):
        for p in (p for t in packets_for_press("0123456789*#ABCD"[i % 16], 100, i * 9600, 48000) for p in t):
            stream48.append((p.payload, p.timestamp, p.marker))

    def receiver() -> int:
        """Receive a /8000 packet stream and drain its digit events."""
        rx = DtmfEventReceiver(8000)
        now = 0.0
        for seq, (payload, ts, marker) in enumerate(stream):
            rx.receive_packet(payload, ts, seq, marker, now)
            while rx.next_event() is not None:
                pass
            now += 0.02
        return len(stream)

    def translator() -> int:
        """Relay a /48000 packet stream to /8000."""
        tx = TelephoneEventTranslator(48000, 8000)
        for payload, ts, marker in stream48:
            tx.translate(payload, ts, marker)
        return len(stream48)

    rows.append(("DtmfEventSender tick + encode", best_us(sender, repeat), "per packet"))
    rows.append(("DtmfEventReceiver receive + events", best_us(receiver, repeat), "per packet"))
    rows.append(("TelephoneEventTranslator 48k->8k", best_us(translator, repeat), "per packet"))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--legs", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    rows = bench_detection(args.legs, args.repeat) + bench_events(args.repeat)
    width = max(len(r[0]) for r in rows)
    print(
        f"DTMF benchmarks  (Python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}, best of {args.repeat})"
    )
    print(f"{'stage'.ljust(width)}  {'µs':>9}  unit")
    print(f"{'-' * width}  {'-' * 9}  ----")
    for name, us, unit in rows:
        print(f"{name.ljust(width)}  {us:9.2f}  {unit}")
    budget = 20000.0
    det = {name: us for name, us, _ in rows}
    print()
    for name in ("pure Python DtmfDetector", "numpy DtmfDetector", f"batched DtmfDetectorBank, {args.legs} legs, float32"):
        print(f"legs per core at 10 % of a 20 ms tick, {name}: {budget * 0.1 / det[name]:,.0f}")
    if args.json:
        args.json.write_text(json.dumps([{"stage": n, "us": u, "unit": un} for n, u, un in rows], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
