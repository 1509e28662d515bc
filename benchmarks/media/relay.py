"""Per-packet cost of relaying passthrough RTP: the Python reference path against the C data plane.

    python benchmarks/media/relay.py [--packets 200000] [--batch 32] [--srtp] [--json PATH]

Both paths get the same work on loopback: a burst of `--batch` PCMU packets is queued in the leg's socket
(not timed), then the relay step is timed with the process CPU clock: read them, account them (RFC 3550
receive statistics), rewrite them onto the outgoing stream, send them to the far end.
- Python: `socket.recvfrom` -> `RtpSession.receive_datagram` -> `Bridge.receive_rtp` (`RtpSender.relay`) ->
  `socket.sendto`, one datagram at a time (what the worker does without `media._relay`, minus the event loop);
- C: one `Relay.drain` (recvmmsg, rule lookup, statistics, rewrite, sendmmsg).
With `--srtp` the far end is a browser: each packet is SRTP-protected (AES_CM_128_HMAC_SHA1_80) on the way
out, through pylibsrtp in Python and through the same libsrtp session in C.
The far end's socket is emptied between bursts (not timed). Prints µs per packet, median and best of runs.
"""
from __future__ import annotations

import argparse
import json
import select
import socket
import statistics
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from media.bridge import Bridge, LegCodec  # noqa: E402
from media.session import RtpReceived, RtpSession  # noqa: E402
from media.srtp import AES128_CM_SHA1_80, SrtpContext  # noqa: E402

PCMU = LegCodec(0, "PCMU", 8000, 101, 8000)
HOST = "127.0.0.1"


def udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    return sock


def empty(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            sock.recv(4096)
            n += 1
        except BlockingIOError:
            return n


class Setup:
    """A leg socket fed by `phone`, an outgoing socket towards `far`; a bridged passthrough call over them."""

    def __init__(self, srtp: bool) -> None:
        self.phone, self.leg, self.out, self.far = udp(), udp(), udp(), udp()
        self.session = RtpSession(clock_rate=8000, now=0.0, remote=self.phone.getsockname(), rtcp_mux=True,
                                  media_timeout=None)
        self.bridge = Bridge(PCMU, PCMU, senders={"a": self.session.sender})
        self.srtp = SrtpContext(AES128_CM_SHA1_80, b"\x01" * 30, b"\x02" * 30) if srtp else None
        self.seq = 0
        self.payload = b"\x55" * 160

    def burst(self, n: int) -> None:
        for _ in range(n):
            self.phone.sendto(struct.pack("!BBHII", 0x80, 0, self.seq & 0xFFFF, 160 * self.seq, 0xA1) + self.payload,
                              self.leg.getsockname())
            self.seq += 1
        select.select([self.leg], [], [], 1.0)

    def python_step(self, now: float) -> int:
        """The reference path for whatever the leg socket holds."""
        leg, session, bridge, out, far = self.leg, self.session, self.bridge, self.out, self.far.getsockname()
        srtp = self.srtp
        n = 0
        while True:
            try:
                data, addr = leg.recvfrom(4096)
            except BlockingIOError:
                return n
            session.receive_datagram(data, addr, now)
            while (event := session.next_event()) is not None:
                if type(event) is RtpReceived:
                    bridge.receive_rtp("a", event.data, now)
            for _side, packet in bridge.packets_to_send():
                out.sendto(srtp.protect(packet) if srtp is not None else packet, far)
            n += 1


def run_python(setup: Setup, packets: int, batch: int) -> list[float]:
    setup.burst(1)
    setup.python_step(0.0)                          # latch, first source mapping
    empty(setup.far)
    return _timed(setup, packets, batch, lambda now: setup.python_step(now))


def run_c(setup: Setup, packets: int, batch: int) -> list[float]:
    from media import _relay
    relay = _relay.Relay()
    relay.add_socket(setup.leg.fileno())
    setup.burst(1)
    setup.python_step(0.0)                          # the first packet through Python, as in the worker
    empty(setup.far)
    source, seq_off, ts_off, highest = setup.bridge.paths["a"].sender.relay_mapping()
    rule = _relay.Rule()
    rule.in_pt, rule.src_ssrc, rule.out_pt = 0, source, 0
    rule.out_ssrc, rule.seq_off, rule.ts_off = setup.bridge.paths["a"].sender.ssrc, seq_off, ts_off
    rule.highest_out_seq = -1 if highest is None else highest
    rule.set_output(setup.out.fileno(), *setup.far.getsockname())
    stats = setup.session.sources[0xA1]
    rule.set_reception(*stats.seq_state())
    if setup.srtp is not None:
        handles = setup.srtp.c_handles()
        assert handles is not None, "pylibsrtp internals changed: no C SRTP"
        rule.set_srtp_out(*handles[1])
    relay.set_rule(setup.leg.fileno(), *setup.phone.getsockname(), rule)

    def step(now: float) -> int:
        assert relay.drain(now) == []
        return 0

    try:
        return _timed(setup, packets, batch, step)
    finally:
        relay.close()


def _timed(setup: Setup, packets: int, batch: int, step) -> list[float]:
    spent = 0.0
    done = 0
    now = 1.0
    while done < packets:
        setup.burst(batch)
        start = time.process_time()
        step(now)
        spent += time.process_time() - start
        got = empty(setup.far)
        assert got == batch, (got, batch)
        done += batch
        now += 0.02
    return [spent / done * 1e6]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=100000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--srtp", action="store_true", help="the far end is a browser: SRTP-protect what is sent")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    rows = []
    try:
        from media import _relay  # noqa: F401
        paths = ["python", "c"]
    except ImportError:
        paths = ["python"]
        print("media._relay is not built: the Python path only", file=sys.stderr)
    for srtp in ([False, True] if args.srtp else [False]):
        for path in paths:
            runs = []
            for _ in range(args.runs):
                setup = Setup(srtp)
                runs += (run_python if path == "python" else run_c)(setup, args.packets // args.runs, args.batch)
            row = {"path": path, "srtp_out": srtp, "batch": args.batch, "us_per_packet": statistics.median(runs),
                   "best": min(runs)}
            rows.append(row)
            print(f"relay {'RTP->SRTP' if srtp else 'RTP->RTP '} {path:6s}: {row['us_per_packet']:6.2f} µs per packet "
                  f"(best {row['best']:.2f}), bursts of {args.batch}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
