"""Codec costs per 20 ms frame: G.711 (pure Python, numpy per frame, numpy batched, C) and Opus (libopus).

Usage: ``.venv/bin/python benchmarks/media/codecs.py [--quick] [--json]``

Every figure is the median (and, beside it, the best) over several runs of the mean time per call
(time.perf_counter), in µs per 20 ms frame (per leg for the batched numpy rows: one call converts 200 legs, the time is divided by 200).
Opus encodes a synthetic voiced signal (harmonics of a gliding 120-220 Hz pitch, syllable-rate envelope,
a little noise), 24 kb/s VBR, in-band FEC with 10 % expected loss, unless the row says otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

import numpy as np  # noqa: E402

from media import g711  # noqa: E402
from media.opus import OpusDecoder, OpusEncoder, libopus_version  # noqa: E402
from timing import Timing, measure  # noqa: E402  (benchmarks/media/timing.py)

LEGS = 200  # legs converted per batched call (one media worker's calls)


def _bound(fn: Callable[[object], object], arg: object) -> Callable[[], object]:
    """A no-argument call of fn(arg), with fn looked up before timing."""
    return lambda: fn(arg)


def voiced_signal(rate: int, seconds: float = 1.0, seed: int = 20) -> np.ndarray:
    """A speech-like int16 test signal: a few harmonics of a gliding pitch under a syllable envelope."""
    n = int(rate * seconds)
    t = np.arange(n) / rate
    pitch = 170 + 50 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12) if k * 220 < rate / 2)
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t)
    noise = np.random.default_rng(seed).normal(0, 0.02, n)
    x = 0.3 * voice * envelope / 2 + noise
    return np.clip(x * 32767, -32768, 32767).astype(np.int16)


class Rows:
    """The result table: (group, path, operation, µs per frame)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, Timing]] = []

    def add(self, group: str, path: str, op: str, us: Timing) -> None:
        self.rows.append((group, path, op, us))
        print(f"  {group:<6} {path:<34} {op:<34} {us:9.2f} {us.best:9.2f}", flush=True)


def bench_g711(rows: Rows, calls: int, runs: int) -> None:
    """G.711 encode/decode of one 160-sample frame on every path."""
    rng = np.random.default_rng(711)
    frame = voiced_signal(8000, 0.02)
    pcm = frame.astype("<i2").tobytes()
    codes_u = g711.reference.ulaw_encode(pcm)
    codes_a = g711.reference.alaw_encode(pcm)
    codes_arr = np.frombuffer(codes_u, dtype=np.uint8)
    g711.tables()  # build the numpy tables outside the timing

    ref_calls = max(20, calls // 20)
    for law, codes in (("ulaw", codes_u), ("alaw", codes_a)):
        rows.add("G.711", "pure Python (reference)", f"{law} encode bytes",
                 measure(_bound(getattr(g711.reference, f"{law}_encode"), pcm), ref_calls, runs))
        rows.add("G.711", "pure Python (reference)", f"{law} decode bytes",
                 measure(_bound(getattr(g711.reference, f"{law}_decode"), codes), ref_calls, runs))
    nb = g711.numpy_backend
    assert nb is not None
    for law, codes in (("ulaw", codes_u), ("alaw", codes_a)):
        rows.add("G.711", "numpy per frame (bytes)", f"{law} encode bytes",
                 measure(_bound(getattr(nb, f"{law}_encode"), pcm), calls, runs))
        rows.add("G.711", "numpy per frame (bytes)", f"{law} decode bytes",
                 measure(_bound(getattr(nb, f"{law}_decode"), codes), calls, runs))
    rows.add("G.711", "numpy per frame (int16 array)", "ulaw encode array",
             measure(lambda: g711.ulaw_encode_array(frame), calls, runs))
    rows.add("G.711", "numpy per frame (int16 array)", "ulaw decode array",
             measure(lambda: g711.ulaw_decode_array(codes_arr), calls, runs))
    out_codes = np.empty(160, dtype=np.uint8)
    rows.add("G.711", "numpy per frame (array, out=)", "ulaw encode array",
             measure(lambda: g711.ulaw_encode_array(frame, out=out_codes), calls, runs))

    legs = rng.integers(-12000, 12000, (LEGS, 160), dtype=np.int16)
    leg_codes = g711.encode_batch(legs, "ulaw")
    mixed = np.arange(LEGS, dtype=np.uint8) % 2  # half µ-law, half A-law
    out_b = np.empty((LEGS, 160), dtype=np.uint8)
    out_p = np.empty((LEGS, 160), dtype=np.int16)
    batch_calls = max(10, calls // 20)
    path = f"numpy batched, per leg ({LEGS} legs)"
    rows.add("G.711", path, "ulaw encode", measure(lambda: g711.encode_batch(legs, "ulaw", out=out_b),
                                                  batch_calls, runs) / LEGS)
    rows.add("G.711", path, "ulaw decode", measure(lambda: g711.decode_batch(leg_codes, "ulaw", out=out_p),
                                                  batch_calls, runs) / LEGS)
    rows.add("G.711", path, "mixed-law encode (per-row law)",
             measure(lambda: g711.encode_batch(legs, mixed, out=out_b), batch_calls, runs) / LEGS)
    rows.add("G.711", path, "mixed-law decode (per-row law)",
             measure(lambda: g711.decode_batch(leg_codes, mixed, out=out_p), batch_calls, runs) / LEGS)

    cb = g711.c_backend
    if cb is None:
        print("  (media._g711 not built: no C rows)")
    else:
        for law, codes in (("ulaw", codes_u), ("alaw", codes_a)):
            rows.add("G.711", "C (media._g711)", f"{law} encode bytes",
                     measure(_bound(getattr(cb, f"{law}_encode"), pcm), calls, runs))
            rows.add("G.711", "C (media._g711)", f"{law} decode bytes",
                     measure(_bound(getattr(cb, f"{law}_decode"), codes), calls, runs))
        rows.add("G.711", "C (media._g711)", "ulaw->alaw transcode",
                 measure(lambda: cb.ulaw_to_alaw(codes_u), calls, runs))
    rows.add("G.711", "bytes.translate (numpy backend)", "ulaw->alaw transcode",
             measure(_bound(codes_u.translate, g711.ULAW_TO_ALAW_TABLE), calls, runs))
    for name in sorted(g711.BACKENDS):
        g711.use_backend(name)
        rows.add("G.711", f"module API, backend={name}", "ulaw encode bytes",
                 measure(lambda: g711.ulaw_encode(pcm), ref_calls if name == "python" else calls, runs))
    g711.use_backend(g711._default_backend())


def bench_opus(rows: Rows, calls: int, runs: int) -> None:
    """libopus encode (by complexity), decode and PLC at 8 and 16 kHz, one 20 ms frame per call."""
    for rate in (8000, 16000):
        n = rate // 50
        signal = voiced_signal(rate, 1.0)
        frames = [signal[i:i + n].astype("<i2").tobytes() for i in range(0, len(signal), n)]
        for cx in (0, 1, 5, 10):
            enc = OpusEncoder(rate, complexity=cx)
            it = iter(range(1 << 62))
            rows.add("Opus", f"encode from {rate // 1000} kHz", f"complexity {cx}",
                     measure(lambda: enc.encode(frames[next(it) % 50]), calls, runs))
        enc = OpusEncoder(rate, complexity=5, fec=False, packet_loss_perc=0)
        it = iter(range(1 << 62))
        rows.add("Opus", f"encode from {rate // 1000} kHz", "complexity 5, no FEC",
                 measure(lambda: enc.encode(frames[next(it) % 50]), calls, runs))
        packets = [OpusEncoder(rate, complexity=5).encode(f) for f in frames]
        sizes = [len(p) for p in packets]
        dec = OpusDecoder(rate)
        it = iter(range(1 << 62))
        rows.add("Opus", f"decode to {rate // 1000} kHz", f"{statistics.mean(sizes):.0f} B packets",
                 measure(lambda: dec.decode(packets[next(it) % 50]), calls, runs))
        plc = OpusDecoder(rate)
        for p in packets:
            plc.decode(p)
        rows.add("Opus", f"PLC at {rate // 1000} kHz", "decode_plc(20 ms)",
                 measure(lambda: plc.decode_plc(n), calls, runs))
        fec_dec = OpusDecoder(rate)
        it = iter(range(1 << 62))
        rows.add("Opus", f"FEC at {rate // 1000} kHz", "decode_fec(next, 20 ms)",
                 measure(lambda: fec_dec.decode_fec(packets[next(it) % 50], n), calls, runs))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print the table (and JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and runs (a smoke run, ~5 s)")
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = parser.parse_args(argv)
    calls, runs = (200, 3) if args.quick else (2000, 7)

    print(f"python {platform.python_version()}, numpy {np.__version__}, {libopus_version()}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"G.711 default backend: {g711.BACKEND}; {calls} calls x {runs} runs (median)")
    print(f"  {'codec':<6} {'path':<34} {'operation':<34} {'median':>9} {'best run':>9}   (µs per 20 ms frame)")
    rows = Rows()
    bench_g711(rows, calls, runs)
    bench_opus(rows, calls, runs)
    if args.json:
        print(json.dumps([{"codec": c, "path": p, "operation": o, "us_per_frame_median": round(us, 3),
                           "us_per_frame_best": round(us.best, 3)}
                          for c, p, o, us in rows.rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
