"""Per-operation cost of the RTP/RTCP/jitter-buffer cores (no sockets): µs per call, best of several runs.

    python benchmarks/media/rtp.py [-n 200000] [--repeat 5] [--json PATH]

Rows: RtpPacket.parse/serialize (reference path), peek_header/rewrite_header (relay fast path),
RtpSender.relay, is_rtcp, ReceptionStats.update (A.1 + A.8), JitterBuffer put+get per 20 ms frame
(in order, and with 2 % loss / reordering), RtpSession.receive_datagram per packet (latched, stats,
event), parse_compound of an SR+SDES compound. aiortc's RtpPacket.parse/serialize and its fixed
(non-adaptive) audio JitterBuffer are listed beside ours when aiortc is installed (a test dependency).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from typing import Callable

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from media.jitter import FastJitterBuffer, JitterBuffer, fast_available  # noqa: E402
from media.rtcp import (  # noqa: E402
    ReceptionStats, ReportBlock, SenderReport, SourceDescription, build_compound, parse_compound,
)
from media.rtp import RtpPacket, RtpSender, is_rtcp, peek_header, rewrite_header  # noqa: E402
from media.session import RtpSession  # noqa: E402

PCMU = RtpPacket(0, 1234, 160_000, 0x11223344, b"\xff" * 160).serialize()
OPUS_EXT = RtpPacket(111, 1234, 960_000, 0x11223344, b"\x00" * 60, extension=(0xBEDE, b"\x10\xff\x00\x00"),
                     csrcs=[1]).serialize()


def bench(fn: Callable[[int], None], n: int, repeat: int) -> float:
    """Best µs per operation over `repeat` runs of fn(n) (fn runs the n operations itself)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(n)
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def rows(n: int, repeat: int) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []

    def add(name: str, fn: Callable[[int], None], count: int = n) -> None:
        out.append((name, bench(fn, count, repeat)))

    parse = RtpPacket.parse

    def parse_loop(k: int) -> None:
        for _ in range(k):
            parse(PCMU)
    add("RtpPacket.parse (PCMU, 172 B)", parse_loop)

    def parse_ext_loop(k: int) -> None:
        for _ in range(k):
            parse(OPUS_EXT)
    add("RtpPacket.parse (CSRC + extension)", parse_ext_loop)

    pkt = parse(PCMU)

    def serialize_loop(k: int) -> None:
        s = pkt.serialize
        for _ in range(k):
            s()
    add("RtpPacket.serialize", serialize_loop)

    def peek_loop(k: int) -> None:
        for _ in range(k):
            peek_header(PCMU)
    add("peek_header", peek_loop)

    def rewrite_loop(k: int) -> None:
        for i in range(k):
            rewrite_header(PCMU, i, i * 160, 0xCAFE)
    add("rewrite_header", rewrite_loop)

    def is_rtcp_loop(k: int) -> None:
        for _ in range(k):
            is_rtcp(PCMU)
    add("is_rtcp", is_rtcp_loop)

    pkts = [RtpPacket(0, i, 160 * i, 0xA, b"\xff" * 160).serialize() for i in range(65536)]   # one seq cycle

    def relay_loop(k: int) -> None:
        sender = RtpSender(0, 8000, rng=random.Random(1))
        relay = sender.relay
        for i in range(k):
            relay(pkts[i & 0xFFFF], i * 0.02)
    add("RtpSender.relay (peek + rewrite + counters)", relay_loop)

    def packetize_loop(k: int) -> None:
        sender = RtpSender(0, 8000, rng=random.Random(1))
        payload = b"\xff" * 160
        p = sender.packetize
        for i in range(k):
            p(payload, i * 0.02)
    add("RtpSender.packetize", packetize_loop)

    def stats_loop(k: int) -> None:
        st = ReceptionStats(0xA, 8000)
        upd = st.update
        for i in range(k):
            upd(i & 0xFFFF, (160 * i) & 0xFFFFFFFF, i * 0.02 + (i % 3) * 0.001)
    add("ReceptionStats.update (A.1 + A.8)", stats_loop)

    def jb_loop(k: int, cls=JitterBuffer) -> None:
        jb = cls(8000)
        put, get = jb.put, jb.get
        payload = b"\xff" * 160
        for i in range(k):
            put(i & 0xFFFF, (160 * i) & 0xFFFFFFFF, payload, i * 0.02 + 0.005)
            get(i * 0.02)
    add("JitterBuffer put+get per frame (in order)", jb_loop)

    rng = random.Random(3)
    order = list(range(n + 2))
    for i in range(0, n, 7):                  # swap every 7th pair
        order[i], order[i + 1] = order[i + 1], order[i]
    drop = {i for i in range(n) if rng.random() < 0.02}

    def jb_lossy_loop(k: int, cls=JitterBuffer) -> None:
        jb = cls(8000)
        put, get = jb.put, jb.get
        payload = b"\xff" * 160
        for i in range(k):
            j = order[i]
            if j not in drop:
                put(j & 0xFFFF, (160 * j) & 0xFFFFFFFF, payload, i * 0.02 + 0.005 + (i % 5) * 0.004)
            get(i * 0.02)
    add("JitterBuffer put+get per frame (2 % loss, reorder, jitter)", jb_lossy_loop)
    if fast_available():
        # the C buffer called from Python (in the worker, the data plane puts and the C tick gets: no call)
        add("FastJitterBuffer (C) put+get per frame (in order)", lambda k: jb_loop(k, FastJitterBuffer))
        add("FastJitterBuffer (C) put+get per frame (2 % loss, reorder, jitter)",
            lambda k: jb_lossy_loop(k, FastJitterBuffer))

    def session_loop(k: int) -> None:
        s = RtpSession(clock_rate=8000, now=0.0, payload_type=0, remote=("10.0.0.1", 4000),
                       rng=random.Random(1), ntp_offset=0.0, media_timeout=None)
        addr = ("10.0.0.1", 4000)
        recv, nxt = s.receive_datagram, s.next_event
        for i in range(k):
            recv(pkts[i & 0xFFFF], addr, i * 0.02)
            nxt()
    add("RtpSession.receive_datagram + next_event", session_loop)

    compound = build_compound([
        SenderReport(1, 0x1234567800000000, 5, 6, 7, [ReportBlock(2, 3, 4, 5, 6, 7, 8)]),
        SourceDescription.cname(1, "0123456789abcdef@callpath"),
    ])

    def rtcp_loop(k: int) -> None:
        for _ in range(k):
            parse_compound(compound)
    add("parse_compound (SR + 1 block + SDES)", rtcp_loop, max(1, n // 4))

    try:
        from aiortc import rtp as aiortc_rtp
    except ImportError:
        return out
    a_parse = aiortc_rtp.RtpPacket.parse

    def aiortc_parse_loop(k: int) -> None:
        for _ in range(k):
            a_parse(PCMU)
    add("aiortc RtpPacket.parse (reference)", aiortc_parse_loop)
    a_pkt = a_parse(PCMU)

    def aiortc_serialize_loop(k: int) -> None:
        s = a_pkt.serialize
        for _ in range(k):
            s()
    add("aiortc RtpPacket.serialize (reference)", aiortc_serialize_loop)

    from aiortc.jitterbuffer import JitterBuffer as AiortcJitterBuffer
    a_pkts = [a_parse(p) for p in pkts]
    for p in a_pkts:
        p._data = p.payload                                   # what aiortc's depayloader sets

    def aiortc_jb_loop(k: int) -> None:
        jb = AiortcJitterBuffer(capacity=16, prefetch=4)      # aiortc's audio receiver settings
        add_ = jb.add
        for i in range(k):
            add_(a_pkts[i & 0xFFFF])
    add("aiortc JitterBuffer.add per frame (fixed, pre-parsed; reference)", aiortc_jb_loop)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200_000, help="operations per run")
    ap.add_argument("--repeat", type=int, default=5, help="runs; the best is reported")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    table = rows(args.n, args.repeat)
    width = max(len(name) for name, _ in table)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"Python {sys.version.split()[0]}, n={args.n}, best of {args.repeat}, {os.cpu_count()} CPUs, load {load}")
    print(f"{'operation':<{width}}  µs/op")
    print(f"{'-' * width}  ------")
    for name, us in table:
        print(f"{name:<{width}}  {us:6.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({name: us for name, us in table}, fh, indent=2)


if __name__ == "__main__":
    main()
