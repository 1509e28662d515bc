"""Cost of the sans-IO bridge (no sockets, no SRTP): µs per call per 20 ms tick when transcoding, µs per packet relayed.

    python benchmarks/media/bridge.py [--calls 1 50 200] [--ticks 250] [--complexity 5] [--json PATH]

Transcoding rows: N Opus(48 kHz RTP, browser-like packets)<->PCMU bridges; per tick every bridge gets one Opus
packet from the browser side and one PCMU packet from the trunk side (``receive_rtp`` -> jitter buffer), then
``tick_bridges`` (jitter get, Opus decode at 8 kHz, G.711 decode, Opus encode at 8 kHz, G.711 encode,
packetize) and the output is drained. Reported per call per tick, G.711 batched across calls (numpy
``decode_batch``/``encode_batch``) and per frame (the active bytes backend, C when built).
C tick rows: the same bridges with their paths handed to the C data plane's tick (``media.relay.TranscodeTick``,
``Relay.tick``: jitter get, libopus decode/encode, G.711, packetize, and a ``sendmmsg`` of the tick's packets to
a loopback socket nobody reads); only ``Relay.tick`` is timed (in the worker the data plane also does the
receive side in C, which here goes through ``receive_rtp`` and is not counted).
Passthrough row: PCMU<->PCMU, ``receive_rtp`` (relay with header rewrite) + drain, per packet.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import numpy as np  # noqa: E402

from media import g711  # noqa: E402
from media.audio import tone  # noqa: E402
from media.bridge import Bridge, LegCodec, tick_bridges  # noqa: E402
from media.opus import OpusConfig, OpusEncoder  # noqa: E402

OPUS = LegCodec(111, "opus", 48000, 126, 48000)
PCMU = LegCodec(0, "PCMU", 8000, 101, 8000)


def rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes) -> bytes:
    return bytes((0x80, pt)) + (seq & 0xFFFF).to_bytes(2, "big") + (ts & 0xFFFFFFFF).to_bytes(4, "big") \
        + ssrc.to_bytes(4, "big") + payload


def material(frames: int = 50) -> tuple[list[bytes], list[bytes]]:
    """One second of browser Opus packets (440 Hz, 48 kHz, 32 kb/s) and of trunk PCMU (1 kHz)."""
    enc = OpusEncoder(48000, 1, bitrate=32000)
    pcm48 = tone(440, 48000, frames * 0.02, 0.4)
    opus = [enc.encode(pcm48[i * 960:(i + 1) * 960]) for i in range(frames)]
    pcm8 = tone(1000, 8000, frames * 0.02, 0.4)
    pcmu = [g711.ulaw_encode(pcm8[i * 160:(i + 1) * 160].tobytes()) for i in range(frames)]
    return opus, pcmu


def feed(bridges: list[Bridge], t: int, opus: list[bytes], pcmu: list[bytes], now: float) -> None:
    """Frame ``t`` of both legs into every bridge: one Opus packet from the browser, one PCMU from the trunk."""
    k = t % len(opus)
    a_pkt = rtp(111, t, t * 960, 1, opus[k])
    b_pkt = rtp(0, t, t * 160, 2, pcmu[k])
    for br in bridges:
        br.receive_rtp("a", a_pkt, now)
        br.receive_rtp("b", b_pkt, now)


def transcoding(calls: int, ticks: int, batch: bool, complexity: int) -> float:
    """µs per call per tick for `calls` Opus<->PCMU bridges."""
    opus, pcmu = material()
    bridges = [Bridge(OPUS, PCMU, opus=OpusConfig(complexity=complexity)) for _ in range(calls)]
    # warm up: fill the jitter buffers so every tick decodes and encodes
    elapsed = 0.0
    for t in range(ticks + 10):
        now = t * 0.02
        t0 = time.perf_counter()
        feed(bridges, t, opus, pcmu, now)
        tick_bridges(bridges, now + 0.01, batch=batch)
        sent = 0
        for br in bridges:
            sent += len(br.packets_to_send())
        if t >= 10:
            elapsed += time.perf_counter() - t0
            assert sent == 2 * calls, sent
    for br in bridges:
        br.close()
    return elapsed / ticks / calls * 1e6


def transcoding_c(calls: int, ticks: int, complexity: int) -> float | None:
    """µs per call per tick of ``Relay.tick`` for `calls` Opus<->PCMU bridges ticked in C (None: not built)."""
    import socket
    import types

    from media.jitter import FastJitterBuffer, fast_available
    if not fast_available():
        return None
    from media import _relay
    from media.relay import TranscodeTick

    opus, pcmu = material()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    relay = types.SimpleNamespace(c=_relay.Relay())
    bridges = [Bridge(OPUS, PCMU, opus=OpusConfig(complexity=complexity), jitter=FastJitterBuffer)
               for _ in range(calls)]
    target = (out.fileno(), "127.0.0.1", sink.getsockname()[1])
    for br in bridges:
        for side in br.paths:
            TranscodeTick(relay, br, side).load(target, None)
    elapsed = 0.0
    for t in range(ticks + 10):
        now = t * 0.02
        feed(bridges, t, opus, pcmu, now)
        t0 = time.perf_counter()
        sent = relay.c.tick(now + 0.01)
        if t >= 10:
            elapsed += time.perf_counter() - t0
            assert sent == 2 * calls, sent
    for br in bridges:
        br.close()
    sink.close()
    out.close()
    return elapsed / ticks / calls * 1e6


def passthrough(packets: int) -> float:
    """µs per packet relayed PCMU -> PCMU (receive_rtp + drain)."""
    bridge = Bridge(PCMU, PCMU)
    pkts = [rtp(0, i, i * 160, 7, b"\xff" * 160) for i in range(1000)]
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for i in range(packets):
            bridge.receive_rtp("b", pkts[i % 1000], i * 0.02)
            bridge.packets_to_send()
        best = min(best, (time.perf_counter() - t0) / packets * 1e6)
    return best


def codec_baseline(complexity: int, n: int = 2000) -> dict[str, float]:
    """libopus alone: µs per 20 ms encode at 8 kHz and per decode of a browser-like packet to 8 kHz."""
    from media.opus import OpusDecoder

    opus, _ = material()
    enc = OpusEncoder(8000, 1, complexity=complexity)
    dec = OpusDecoder(8000, 1)
    pcm = tone(1000, 8000, 0.02, 0.4)
    t0 = time.perf_counter()
    for _ in range(n):
        enc.encode(pcm)
    encode = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    for i in range(n):
        dec.decode(opus[i % len(opus)])
    decode = (time.perf_counter() - t0) / n * 1e6
    return {"encode_us": encode, "decode_us": decode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 50, 200])
    parser.add_argument("--ticks", type=int, default=250)
    parser.add_argument("--complexity", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    g711.tables()                                   # built once per process: not part of a tick
    codec = codec_baseline(args.complexity)
    rows.append({"case": "libopus baseline", **codec})
    print(f"G.711 bytes backend: {g711.active_backend()}; numpy {np.__version__}; Opus complexity {args.complexity}")
    print(f"libopus alone on this machine: encode 8 kHz {codec['encode_us']:.1f} µs, decode (48 kHz-coded packet "
          f"to 8 kHz) {codec['decode_us']:.1f} µs per 20 ms frame")
    for calls in args.calls:
        for batch in (True, False):
            us = transcoding(calls, args.ticks, batch, args.complexity)
            rows.append({"case": "transcode opus<->pcmu", "calls": calls, "g711_batch": batch, "us_per_call_tick": us})
            print(f"transcode Opus<->PCMU  calls={calls:4d} g711 {'batched  ' if batch else 'per-frame'}: "
                  f"{us:7.1f} µs per call per 20 ms tick (both directions) -> ~{20000 / us:5.0f} calls/core")
        us_c = transcoding_c(calls, args.ticks, args.complexity)
        if us_c is not None:
            rows.append({"case": "transcode opus<->pcmu, C tick", "calls": calls, "us_per_call_tick": us_c})
            print(f"transcode Opus<->PCMU  calls={calls:4d} C tick          : "
                  f"{us_c:7.1f} µs per call per 20 ms tick (both directions, sendmmsg included)")
    us = passthrough(100_000)
    rows.append({"case": "passthrough pcmu", "us_per_packet": us})
    print(f"passthrough PCMU<->PCMU: {us:5.2f} µs per packet relayed (bridge only, no socket/SRTP)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
