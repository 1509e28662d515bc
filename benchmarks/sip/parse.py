"""µs per sipcore.message.parse_message with the C header scanner (sipcore/_scan.c) and the pure-Python one.

Both scanners run in the same process (message.use_scanner switches between them); each figure is the
median of 5 runs of `-n` parses timed with time.perf_counter. The "scan step" rows time only what the C
module replaces (split head/body + decode + line split + header scan) against the Python functions it
replaces, to show how much of parse_message that step is. Usage:
    python benchmarks/sip/parse.py [-n 20000] [--runs 5]
The whole-core effect: run benchmarks/sip/inprocess.py with and without CALLPATH_PURE_PYTHON=1.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from typing import Callable

from sipcore import message

SDP = (
    b"v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
)

MESSAGES: dict[str, bytes] = {
    "REGISTER": (
        b"REGISTER sip:pbx.example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n"
        b"Max-Forwards: 70\r\nFrom: <sip:1001@pbx.example.com>;tag=456248\r\nTo: <sip:1001@pbx.example.com>\r\n"
        b"Call-ID: 843817637684230@998sdasdh09\r\nCSeq: 1826 REGISTER\r\n"
        b"Contact: <sip:1001@192.0.2.10:5060;transport=udp>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\"\r\n"
        b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, NOTIFY, REFER, MESSAGE\r\n"
        b"Supported: path, gruu, outbound\r\nUser-Agent: Yealink SIP-T46S 66.86.0.15\r\n"
        b"Expires: 3600\r\nContent-Length: 0\r\n\r\n"
    ),
    "INVITE+SDP": (
        b"INVITE sip:1002@pbx.example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK74bf9;rport\r\n"
        b"Max-Forwards: 70\r\nFrom: \"Alice\" <sip:1001@pbx.example.com>;tag=9fxced76sl\r\n"
        b"To: <sip:1002@pbx.example.com>\r\nCall-ID: 3848276298220188511@192.0.2.10\r\nCSeq: 2 INVITE\r\n"
        b"Contact: <sip:1001@192.0.2.10:5060;transport=udp>\r\n"
        b"Proxy-Authorization: Digest username=\"1001\", realm=\"pbx.example.com\", "
        b"nonce=\"ea9c8e88df84f1cec4341ae6cbe5a359\", uri=\"sip:1002@pbx.example.com\", "
        b"response=\"dfe56131d1958046689d83306477ecc\", algorithm=MD5, cnonce=\"0a4f113b\", qop=auth, nc=00000001\r\n"
        b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, NOTIFY, REFER, UPDATE, PRACK\r\n"
        b"Supported: replaces, timer, 100rel\r\nSession-Expires: 1800\r\nUser-Agent: Yealink SIP-T46S 66.86.0.15\r\n"
        b"Content-Type: application/sdp\r\nContent-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
    ),
    "200 OK+Record-Route": (
        b"SIP/2.0 200 OK\r\n"
        b"Via: SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK2d4790.1;received=203.0.113.5;rport=5060\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK74bf9;received=192.0.2.10;rport=5060\r\n"
        b"Record-Route: <sip:203.0.113.5;lr;ftag=9fxced76sl;did=7a1.8b2>\r\n"
        b"Record-Route: <sip:198.51.100.7;lr;r2=on>\r\nRecord-Route: <sip:10.0.0.7;lr;r2=on>\r\n"
        b"From: \"Alice\" <sip:1001@pbx.example.com>;tag=9fxced76sl\r\nTo: <sip:1002@pbx.example.com>;tag=8321234356\r\n"
        b"Call-ID: 3848276298220188511@192.0.2.10\r\nCSeq: 2 INVITE\r\n"
        b"Contact: <sip:1002@198.51.100.20:5062;transport=udp>\r\n"
        b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, NOTIFY, REFER, UPDATE, PRACK\r\n"
        b"Supported: replaces, timer\r\nSession-Expires: 1800;refresher=uac\r\nRequire: timer\r\n"
        b"Content-Type: application/sdp\r\nContent-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
    ),
}


def time_us(fn: Callable[[bytes], object], data: bytes, n: int) -> float:
    """Mean µs per fn(data) over n calls."""
    t0 = time.perf_counter()
    for _ in range(n):
        fn(data)
    return (time.perf_counter() - t0) / n * 1e6


def time_c_scan_us(data: bytes, n: int) -> float:
    """Mean µs per _scan.scan(data, ...) over n calls (called directly, no wrapper frame)."""
    scan, kc, hk = message._c_scan.scan, message._KEY_CACHE, message.header_key
    t0 = time.perf_counter()
    for _ in range(n):
        scan(data, kc, hk)
    return (time.perf_counter() - t0) / n * 1e6


def py_scan_step(data: bytes) -> object:
    """What _scan replaces, in Python: exactly the statements of parse_message."""
    head_b, body = message._split_head(data)
    head = head_b.decode("utf-8", "surrogateescape")
    if "\r\n" in head:
        lines = head.split("\r\n")
        if "\n" in head.replace("\r\n", ""):
            lines = head.replace("\r\n", "\n").split("\n")
    else:
        lines = head.split("\n")
    return lines[0], message._scan_headers(lines), body


def parse_us(kind: str, data: bytes, n: int) -> float:
    message.use_scanner(kind)
    return time_us(message.parse_message, data, n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20000, help="parses per run")
    ap.add_argument("--runs", type=int, default=5, help="runs per figure (the median is reported)")
    a = ap.parse_args()
    if message._c_scan is None:
        sys.exit("sipcore._scan is not built: run `pip install -e .` or `python setup.py build_ext --inplace`")
    start = message.SCANNER
    cases: dict[str, Callable[[bytes, int], float]] = {
        "c": lambda d, n: parse_us("c", d, n),
        "py": lambda d, n: parse_us("python", d, n),
        "scan_c": time_c_scan_us,
        "scan_py": lambda d, n: time_us(py_scan_step, d, n),
    }
    print(f"Python {platform.python_version()} ({sys.executable}); µs per call, median of {a.runs} runs x {a.n}"
          " (the cases take turns within each run, so background load hits them alike)")
    print(f"{'message':<20}{'bytes':>6}{'C':>8}{'Python':>8}{'Py/C':>7}  {'best C / Py':>13}"
          f"   {'scan step only: C / Py':>24}")
    try:
        for label, data in MESSAGES.items():
            for fn in cases.values():  # warm-up (key cache, free lists)
                fn(data, min(a.n, 2000))
            samples: dict[str, list[float]] = {k: [] for k in cases}
            for _ in range(a.runs):
                for k, fn in cases.items():
                    samples[k].append(fn(data, a.n))
            med = {k: statistics.median(v) for k, v in samples.items()}
            best = {k: min(v) for k, v in samples.items()}
            print(f"{label:<20}{len(data):>6}{med['c']:>8.2f}{med['py']:>8.2f}{med['py'] / med['c']:>6.2f}x"
                  f"  {best['c']:>6.2f} / {best['py']:<6.2f}"
                  f"   {med['scan_c']:>6.2f} / {med['scan_py']:<6.2f} ({med['scan_py'] / med['scan_c']:.1f}x)")
    finally:
        message.use_scanner(start)


if __name__ == "__main__":
    main()
