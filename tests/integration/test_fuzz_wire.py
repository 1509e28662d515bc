"""Seeded mutation fuzzing of a real callpath (default settings, digest auth on) over UDP, TCP and WebSocket.

A few thousand messages made from well-formed seeds (REGISTER, OPTIONS, INVITE with SDP, MESSAGE, SUBSCRIBE,
CANCEL, BYE, a response, and the RFC 4475 requests) by byte flips, truncations, header duplication and
deletion, non-UTF-8 bytes in every header and in the body, and huge values. The server must answer no
message 500, log no exception, and still answer a normal OPTIONS afterwards; stack counters show the drops.
Settings are the defaults but for the flood limiter, which trusts the loopback (see the fixture).

Nothing the server sends may leave the machine: seeds address the server or example.* domains that it
challenges (407) before doing anything, none is in-dialog (an in-dialog request is forwarded without
authentication) and none is an ACK (forwarded statelessly to IP literals); responses go to the source.
"""
from __future__ import annotations

import json
import os
import random
import re
import socket
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from sipp_harness import start_callpath

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("CALLPATH_FUZZ_SEED", "4475"))  # another seed: another run, reproducible
UDP_MESSAGES = 3000
TCP_MESSAGES = 1200
WS_MESSAGES = 600
DATA = Path(__file__).resolve().parent.parent / "data" / "rfc4475"
SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8\r\n"
       b"a=rtpmap:0 PCMU/8000\r\n")
NON_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80", b"\xc0\xaf"]


def seeds(domain: str) -> list[bytes]:
    def req(method: str, uri: str, extra: str = "", body: bytes = b"", to: str = "sip:1001@" + domain) -> bytes:
        head = (f"{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:PORT;branch=z9hG4bK{uuid.uuid4().hex};rport\r\n"
                f"Max-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@{domain}>;tag={uuid.uuid4().hex[:8]}\r\n"
                f"To: <{to}>\r\nCall-ID: {uuid.uuid4().hex}@127.0.0.1\r\nCSeq: 1 {method}\r\n"
                f"Contact: <sip:alice@127.0.0.1:PORT>\r\nUser-Agent: fuzz\r\n{extra}Content-Length: {len(body)}\r\n\r\n")
        return head.encode() + body

    out = [
        req("REGISTER", f"sip:{domain}", "Expires: 600\r\n", to=f"sip:alice@{domain}"),
        req("REGISTER", f"sip:{domain}", 'Authorization: Digest username="alice", realm="' + domain +
            '", nonce="abc", uri="sip:' + domain + '", response="00", qop=auth, nc=00000001, cnonce="x"\r\n',
            to=f"sip:alice@{domain}"),
        req("OPTIONS", f"sip:{domain}", "Accept: application/sdp\r\n", to=f"sip:{domain}"),
        req("INVITE", f"sip:1001@{domain}", "Content-Type: application/sdp\r\nSupported: 100rel\r\n", SDP),
        req("INVITE", "sip:bob@example.com", "Content-Type: application/sdp\r\nRoute: <sip:example.net;lr>\r\n", SDP,
            to="sip:bob@example.com"),
        req("MESSAGE", f"sip:1001@{domain}", "Content-Type: text/plain\r\n", "héllo wörld".encode()),
        req("SUBSCRIBE", f"sip:1001@{domain}", "Event: presence\r\nExpires: 60\r\n"),
        req("CANCEL", f"sip:1001@{domain}"),
        (f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:PORT;branch=z9hG4bK{uuid.uuid4().hex}\r\n"
         f"From: <sip:a@{domain}>;tag=1\r\nTo: <sip:b@{domain}>;tag=2\r\nCall-ID: {uuid.uuid4().hex}\r\n"
         f"CSeq: 1 INVITE\r\nContact: <sip:b@127.0.0.1:PORT>\r\nContent-Length: 0\r\n\r\n").encode(),
    ]
    for path in sorted(DATA.glob("*.dat")):
        raw = path.read_bytes()
        head = raw.split(b"\r\n\r\n", 1)[0]
        if raw.startswith(b"SIP/") or re.search(rb"\r\n(?:to|t)[ \t]*:[^\r\n]*;[ \t]*tag", head, re.I):
            continue  # responses are covered above; in-dialog requests are never fuzzed (see the docstring)
        out.append(raw)
    return out


def mutate(rng: random.Random, msg: bytes) -> bytes:
    """One random mutation of a message (several kinds, chosen by the seeded generator)."""
    kind = rng.randrange(8)
    head, sep, body = msg.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if kind == 0:  # byte flips
        data = bytearray(msg)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == 1:  # truncation
        return msg[: rng.randrange(1, len(msg))]
    if kind == 2 and len(lines) > 1:  # duplicate a header line
        i = rng.randrange(1, len(lines))
        lines.insert(i, lines[i])
    elif kind == 3 and len(lines) > 2:  # delete a header line
        del lines[rng.randrange(1, len(lines))]
    elif kind == 4 and len(lines) > 1:  # non-UTF-8 bytes in a header (name or value)
        i = rng.randrange(1, len(lines))
        pos = rng.randrange(len(lines[i]) + 1)
        lines[i] = lines[i][:pos] + rng.choice(NON_UTF8) + lines[i][pos:]
    elif kind == 5:  # non-UTF-8 bytes in the start line or the body (Content-Length kept right)
        if body and rng.random() < 0.5:
            pos = rng.randrange(len(body) + 1)
            body = body[:pos] + rng.choice(NON_UTF8) + body[pos:]
            lines = [re.sub(rb"^(Content-Length|l)\s*:\s*\d+", b"Content-Length: %d" % len(body), ln, flags=re.I)
                     for ln in lines]
        else:
            pos = rng.randrange(len(lines[0]) + 1)
            lines[0] = lines[0][:pos] + rng.choice(NON_UTF8) + lines[0][pos:]
    elif kind == 6 and len(lines) > 1:  # a huge value
        i = rng.randrange(1, len(lines))
        name, _, value = lines[i].partition(b":")
        filler = rng.choice([b"9", b"a", b";p", b",", b"<", b"\"", b"%41"]) * rng.randint(500, 20000)
        lines[i] = name + b": " + (value.strip() + filler if rng.random() < 0.5 else filler)
    else:  # a value swapped between two headers
        if len(lines) > 2:
            i, j = rng.randrange(1, len(lines)), rng.randrange(1, len(lines))
            ni, _, vi = lines[i].partition(b":")
            nj, _, vj = lines[j].partition(b":")
            lines[i], lines[j] = ni + b":" + vj, nj + b":" + vi
    return b"\r\n".join(lines) + sep + body


def statuses(data: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"(?:^|\r\n\r\n|\n)SIP/2\.0 (\d{3}) ", data)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # The fuzzer is one source sending thousands of messages in seconds: exactly what the per-source flood
    # limiter blocks. It is told to trust the loopback, so every message reaches the parser (the subject here).
    srv = start_callpath(tmp_path_factory.mktemp("fuzz"), users=[("alice", "secret", "1001"),
                                                                   ("bob", "secret", "1002")],
                         limits={"trusted": ["127.0.0.0/8"]})
    yield srv
    srv.stop()


def fuzz_udp(server, rng: random.Random, corpus: list[bytes]) -> list[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    port = str(sock.getsockname()[1]).encode()
    sock.setblocking(False)
    codes: list[int] = []

    def drain() -> None:
        while True:
            try:
                codes.extend(statuses(sock.recv(65535)))
            except BlockingIOError:
                return

    for n in range(UDP_MESSAGES):
        msg = mutate(rng, rng.choice(corpus).replace(b"PORT", port))
        try:
            sock.sendto(msg[:65000], ("127.0.0.1", server.sip_port))
        except OSError:
            pass
        if n % 20 == 19:
            time.sleep(0.002)  # keep under the per-source flood limit's rate and the socket buffers
            drain()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        drain()
        time.sleep(0.05)
    sock.close()
    return codes


def fuzz_tcp(server, rng: random.Random, corpus: list[bytes]) -> list[int]:
    codes: list[int] = []
    sent = 0
    while sent < TCP_MESSAGES:
        sock = socket.create_connection(("127.0.0.1", server.sip_port), timeout=2)
        port = str(sock.getsockname()[1]).encode()
        try:
            for _ in range(50):  # a connection per 50 messages (a framing error closes it sooner)
                msg = mutate(rng, rng.choice(corpus).replace(b"PORT", port))
                sent += 1
                sock.sendall(msg)
                sock.settimeout(0.01)
                try:
                    data = sock.recv(65535)
                    if not data:
                        break
                    codes.extend(statuses(data))
                except socket.timeout:
                    pass
        except OSError:
            pass
        finally:
            sock.settimeout(0.3)
            try:
                codes.extend(statuses(sock.recv(65535)))
            except OSError:
                pass
            sock.close()
    return codes


def fuzz_ws(server, rng: random.Random, corpus: list[bytes]) -> list[int]:
    from websockets.sync.client import connect

    url = server.web_url.replace("http://", "ws://") + "/ws"
    codes: list[int] = []
    sent = 0
    while sent < WS_MESSAGES:
        try:
            with connect(url, subprotocols=["sip"], open_timeout=5, max_size=None) as ws:
                for _ in range(100):
                    msg = mutate(rng, rng.choice(corpus).replace(b"PORT", b"5060"))
                    sent += 1
                    ws.send(msg if rng.random() < 0.5 else msg.decode("utf-8", "replace"))
                    try:
                        while True:
                            got = ws.recv(timeout=0.005)
                            codes.extend(statuses(got.encode() if isinstance(got, str) else got))
                    except TimeoutError:
                        pass
        except Exception:  # noqa: BLE001 - the server may close a connection on bad input; open another
            sent += 1
    return codes


def test_mutation_fuzz_over_udp_tcp_and_websocket(server):
    rng = random.Random(SEED)
    corpus = seeds(server.domain)
    started = time.monotonic()
    answers = {"udp": fuzz_udp(server, rng, corpus), "tcp": fuzz_tcp(server, rng, corpus),
               "ws": fuzz_ws(server, rng, corpus)}
    elapsed = time.monotonic() - started
    status = json.load(urllib.request.urlopen(server.web_url + "/api/v1/status", timeout=5))
    summary = {t: {"answers": len(c), "500": c.count(500)} for t, c in answers.items()}
    print(f"fuzz: {UDP_MESSAGES} UDP, {TCP_MESSAGES} TCP, {WS_MESSAGES} WS messages in {elapsed:.1f} s: {summary}; "
          f"sip counters {status['sip']}")
    for transport, codes in answers.items():
        assert 500 not in codes, f"{transport}: {codes.count(500)} answers were 500"
        assert codes, f"{transport}: no answer at all"
    for key in ("parse_errors", "bad_requests", "dropped_invalid", "send_errors"):
        assert key in status["sip"]
    assert status["sip"]["bad_requests"] > 100
    # the server still works
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    port = sock.getsockname()[1]
    options = (f"OPTIONS sip:{server.domain}:{server.sip_port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{uuid.uuid4().hex};rport\r\n"
               f"From: <sip:probe@{server.domain}>;tag=1\r\nTo: <sip:{server.domain}>\r\nCall-ID: {uuid.uuid4().hex}\r\n"
               f"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
    sock.sendto(options, ("127.0.0.1", server.sip_port))
    assert sock.recv(65535).startswith(b"SIP/2.0 200 ")
    sock.close()
    out = server.output()
    bad = [line for line in out.splitlines() if "Traceback" in line or re.search(r" (error|critical) ", line)]
    assert not bad, "\n".join(bad[:30]) + "\n--- log tail ---\n" + out[-6000:]
    assert server.running
