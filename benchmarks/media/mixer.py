"""Media-plane building blocks per 20 ms tick: conference mixing (per conference and batched), prompt fan-out,
call recording.

Usage: ``.venv/bin/python benchmarks/media/mixer.py [--quick] [--json]``

Every figure is the median (and, beside it, the best) over several runs of the mean time per call
(time.perf_counter), divided down to µs per tick per participant (mixer), per player (fan-out) or per
recorded call (recorder). Frames are 160 int16 samples (8 kHz); the batched mixer rows mix CONFS
conferences in one call; the recorder rows include the amortized once-a-second disk write (page cache, no
fsync) and the header rewrite.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

import numpy as np  # noqa: E402

from media import audio  # noqa: E402
from media.mixer import Conference, ConferenceBatch, mix_two, reference_mix  # noqa: E402
from media.player import Player, Prompt, PromptCache, decode_file  # noqa: E402
from media.recorder import CallRecorder  # noqa: E402
from timing import Timing, measure  # noqa: E402  (benchmarks/media/timing.py)

S = 160
CONFS = 100  # conferences per batched call (a worker's conferences)
PLAYERS = 1000  # legs hearing the same MOH


class Rows:
    """The result table: (group, path, what, unit, µs)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, Timing]] = []

    def add(self, group: str, path: str, unit: str, us: Timing) -> None:
        """Record a row and print it at once (a long run shows progress)."""
        self.rows.append((group, path, unit, us))
        print(f"  {group:<9} {path:<54} {unit:<22} {us:9.2f} {us.best:9.2f}", flush=True)


def three_way(cid: object = None, spy: bool = False) -> Conference:
    """A 3-way conference (agent, customer, third party), optionally with a spying supervisor."""
    conf = Conference(conference_id=cid)
    for pid in ("agent", "customer", "third"):
        conf.add(pid)
    if spy:
        conf.add("supervisor", role="spy")
    return conf


def bench_mixer(rows: Rows, calls: int, runs: int) -> None:
    """N-1 mixing: pure-Python oracle, one conference per call (dict and rows API), batched across CONFS."""
    rng = np.random.default_rng(3)
    conf = three_way()
    frames = {pid: rng.integers(-8000, 8000, S, dtype=np.int16) for pid in conf.participants}
    pcm = np.stack(list(frames.values()))
    members = conf.members()
    as_lists = [f.tolist() for f in frames.values()]
    rows.add("mixer", "pure Python reference_mix, 3-way", "per participant",
             measure(lambda: reference_mix(members, as_lists), max(10, calls // 50), runs) / 3)
    per_conf = measure(lambda: conf.mix(frames), calls, runs)
    rows.add("mixer", "Conference.mix (dict in/out), 3-way", "per conference", per_conf)
    rows.add("mixer", "Conference.mix (dict in/out), 3-way", "per participant", per_conf / 3)
    per_rows = measure(lambda: conf.mix_rows(pcm), calls, runs)
    rows.add("mixer", "Conference.mix_rows (int16 array), 3-way", "per conference", per_rows)
    rows.add("mixer", "Conference.mix_rows (int16 array), 3-way", "per participant", per_rows / 3)
    whisper = three_way()
    whisper.add("supervisor", role="whisper", target="agent")
    pcm4 = np.vstack([pcm, pcm[:1]])
    rows.add("mixer", "Conference.mix_rows, 3-way + whisperer", "per participant",
             measure(lambda: whisper.mix_rows(pcm4), calls, runs) / 4)
    rows.add("mixer", "mix_two (2-party mono mix)", "per call",
             measure(lambda: mix_two(pcm[0], pcm[1]), calls, runs))

    for spy in (False, True):
        confs = [three_way(c, spy=spy) for c in range(CONFS)]
        batch = ConferenceBatch(confs)
        n = len(batch.rows)
        big = rng.integers(-8000, 8000, (n, S), dtype=np.int16)
        out = np.empty_like(big)
        label = f"{CONFS} x 3-way" + (" + spy" if spy else "")
        batch_calls = max(10, calls // 10)
        rows.add("mixer", f"ConferenceBatch.mix_rows, {label} ({n} legs)", "per participant",
                 measure(lambda: batch.mix_rows(big, out=out), batch_calls, runs) / n)
        loop = measure(lambda: [c.mix_rows(big[3 * k:3 * k + 3]) for k, c in enumerate(confs)] if not spy else
                       [c.mix_rows(big[4 * k:4 * k + 4]) for k, c in enumerate(confs)], batch_calls, runs)
        rows.add("mixer", f"Conference.mix_rows looped, {label}", "per participant", loop / n)
        nested = {c.id: dict(zip(c.participants, big[len(c) * k:len(c) * (k + 1)])) for k, c in enumerate(confs)}
        rows.add("mixer", f"ConferenceBatch.mix (dicts), {label}", "per participant",
                 measure(lambda: batch.mix(nested), batch_calls, runs) / n)


def bench_player(rows: Rows, calls: int, runs: int, tmp: Path) -> None:
    """Prompt fan-out (next_frame per leg per tick) and the one-off decode/encode costs."""
    prompt = Prompt.from_samples(audio.tone(425, 8000, 10.0, amplitude=0.2))
    for codec in ("pcmu", "opus", "int16"):
        players = [Player(prompt, codec, loop=True) for _ in range(PLAYERS)]
        fan = measure(lambda: [p.next_frame() for p in players], max(10, calls // 20), runs)
        rows.add("player", f"{PLAYERS} Players of one prompt, next_frame ({codec})", "per player", fan / PLAYERS)
    try:
        import av
    except ImportError:
        print("  (PyAV not installed: no decode rows)")
        return
    wav = tmp / "moh.wav"
    x = audio.tone(425, 44100, 10.0, amplitude=0.2)
    with av.open(str(wav), "w") as c:
        st = c.add_stream("pcm_s16le", rate=44100, layout="mono")
        fr = av.AudioFrame.from_ndarray(x.reshape(1, -1), format="s16", layout="mono")
        fr.sample_rate = 44100
        for p in st.encode(fr):
            c.mux(p)
        for p in st.encode(None):
            c.mux(p)
    once = max(2, runs)
    decode = measure(lambda: decode_file(wav), 1, once)
    rows.add("player", "decode 10 s 44.1 kHz WAV -> 8 kHz (PyAV, once)", "per 20 ms frame", decode / 500)
    for codec in ("pcmu", "pcma", "opus"):
        rows.add("player", f"encode a 10 s prompt to {codec} (once per codec)", "per 20 ms frame",
                 measure(lambda: Prompt.from_samples(prompt.samples).frames(codec), 1, once) / 500)
    cache = PromptCache()
    cache.get(wav)
    rows.add("player", "PromptCache.get hit (stat + dict)", "per call", measure(lambda: cache.get(wav), calls, runs))


def bench_recorder(rows: Rows, calls: int, runs: int, tmp: Path) -> None:
    """CallRecorder.write per tick (two legs, stereo), flushes amortized, by encoding."""
    rng = np.random.default_rng(5)
    a = rng.integers(-8000, 8000, S, dtype=np.int16)
    b = rng.integers(-8000, 8000, S, dtype=np.int16)
    ticks = max(500, calls)  # at least 10 s of audio per run, so the 1 s flushes are in the figure
    for encoding in ("pcm", "ulaw"):
        for legs, label in (((a, b), "both legs"), ((a, None), "one leg silent")):
            def run() -> None:
                """Record `ticks` ticks into a fresh file, open to close."""
                with CallRecorder(tmp / "rec.wav", encoding=encoding) as rec:
                    for _ in range(ticks):
                        rec.write(*legs)
            rows.add("recorder", f"CallRecorder.write stereo {encoding}, {label} (+flush/s)", "per call per tick",
                     measure(run, 1, runs) / ticks)
    with CallRecorder(tmp / "mono.wav", channels=1) as rec:
        rows.add("recorder", "CallRecorder.write mono mix of 2 legs (+flush/s)", "per call per tick",
                 measure(lambda: rec.write(a, b), calls, runs))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print the table (and JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and runs (a smoke run)")
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = parser.parse_args(argv)
    calls, runs = (200, 3) if args.quick else (2000, 7)
    print(f"python {platform.python_version()}, numpy {np.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {calls} calls x {runs} runs (median)")
    print(f"  {'block':<9} {'path':<54} {'unit':<22} {'median':>9} {'best run':>9}   (µs per 20 ms tick)")
    rows = Rows()
    bench_mixer(rows, calls, runs)
    with tempfile.TemporaryDirectory() as tmp:
        bench_player(rows, calls, runs, Path(tmp))
        bench_recorder(rows, calls, runs, Path(tmp))
    if args.json:
        print(json.dumps([{"block": g, "path": p, "unit": u, "us_median": round(us, 3), "us_best": round(us.best, 3)}
                          for g, p, u, us in rows.rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
