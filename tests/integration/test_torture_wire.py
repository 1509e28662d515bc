"""Every RFC 4475 torture message sent to a real callpath (default settings: digest auth on) over UDP and TCP.

tests/unit/test_torture.py checks the parser alone; this checks what goes back on the wire: the status code
each message's section asks for (``wire`` in tests/data/rfc4475/expectations.json; null: no answer at all,
for responses, and for what cannot be answered or must be kept reading), and that the server logged no
exception while answering all of them.

The messages are sent as the RFC's archive has them except for addresses, so that answers come back to
this test and nothing leaves the machine (see ``localise``): the top Via's sent-by becomes the test's
socket, a REGISTER's Request-URI names the server's domain, and an in-dialog request (To with a tag) has
its Request-URI and Route hosts pointed at the server. The malformation under test is never touched.
"""
from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import pytest

from sipp_harness import start_callpath

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parent.parent / "data" / "rfc4475"
EXPECT = json.loads((DATA / "expectations.json").read_text("utf-8"))["messages"]
NAMES = sorted(n for n, e in EXPECT.items() if "wire" in e)
# Answers that differ from the RFC's today, each with who owns the fix (strict: the test says when it is fixed).
KNOWN_GAPS: dict[str, str] = {}
NO_ANSWER_WAIT = 1.0  # seconds to wait before concluding that no answer comes

# The top Via's sent-by: after the first "Via:"/"v:" (any case, LWS and line folding allowed around the
# protocol's slashes, as in wsinv), the token following "SIP/x.y/TRANSPORT".
_TOP_VIA = re.compile(rb"(\r\n(?:via|v)[ \t]*:[ \t\r\n]*SIP[ \t\r\n]*/[ \t\r\n]*[0-9.]+[ \t\r\n]*/[ \t\r\n]*"
                      rb"[A-Za-z]+[ \t\r\n]+)([^;,\s]+)", re.IGNORECASE)
_TO_TAG = re.compile(rb"\r\n(?:to|t)[ \t]*:[^\r\n]*(?:\r\n[ \t][^\r\n]*)*;[ \t]*tag", re.IGNORECASE)


def localise(raw: bytes, server_host: str, server_port: int, client_port: int) -> bytes:
    """The message with its addresses pointed at this test and the server (see the module docstring)."""
    out = _TOP_VIA.sub(lambda m: m.group(1) + f"127.0.0.1:{client_port}".encode(), raw, count=1)
    if out.startswith(b"REGISTER sip:example.com "):
        out = out.replace(b"REGISTER sip:example.com ", f"REGISTER sip:{server_host} ".encode(), 1)
    if _TO_TAG.search(out.split(b"\r\n\r\n", 1)[0]):  # in-dialog: Request-URI and Route hosts -> the server
        ours = f"{server_host}:{server_port}".encode()
        start, rest = out.split(b"\r\n", 1)
        start = re.sub(rb"@[A-Za-z0-9.\-]+", b"@" + ours, start, count=1)
        rest = re.sub(rb"(\r\nRoute:[ \t\r\n]*<sip:)[A-Za-z0-9.\-]+", rb"\g<1>" + ours, b"\r\n" + rest,
                      flags=re.IGNORECASE)[2:]
        out = start + b"\r\n" + rest
    return out


def final_status(data: bytes) -> int | None:
    """Status code of a response, None for a provisional one (or anything else)."""
    m = re.match(rb"SIP/2\.0 (\d{3}) ", data)
    if m is None:
        return None
    code = int(m.group(1))
    return code if code >= 200 else None


def answer_udp(server, raw: bytes) -> tuple[int | None, bytes]:
    """Send one datagram from a fresh socket; the first final response (code, bytes), or (None, b"")."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        data = localise(raw, server.domain, server.sip_port, sock.getsockname()[1])
        sock.sendto(data, ("127.0.0.1", server.sip_port))
        deadline = time.monotonic() + NO_ANSWER_WAIT
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                resp = sock.recv(65535)
            except socket.timeout:
                break
            code = final_status(resp)
            if code is not None:
                return code, resp
        return None, b""
    finally:
        sock.close()


def answer_tcp(server, raw: bytes) -> tuple[int | None, bytes]:
    """Send the message on a new TCP connection; the first final response, or (None, b"") when none comes
    (the server may also close the connection after answering a framing error)."""
    sock = socket.create_connection(("127.0.0.1", server.sip_port), timeout=NO_ANSWER_WAIT)
    try:
        data = localise(raw, server.domain, server.sip_port, sock.getsockname()[1])
        if not data.endswith(b"\r\n\r\n") and b"\r\n\r\n" not in data:
            data += b"\r\n"  # baddn: the archive's file lacks the empty line; over a stream it would never end
        sock.sendall(data)
        buf = b""
        deadline = time.monotonic() + NO_ANSWER_WAIT
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                chunk = sock.recv(65535)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            buf += chunk
            for msg in re.split(rb"(?=SIP/2\.0 \d{3} )", buf):
                code = final_status(msg)
                if code is not None and b"\r\n\r\n" in msg:
                    return code, msg
        return None, b""
    finally:
        sock.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_callpath(tmp_path_factory.mktemp("torture"), users=[("alice", "secret", "1001")])
    yield srv
    srv.stop()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("name", NAMES)
def test_torture_message_gets_its_answer(server, name, transport, request):
    if name in KNOWN_GAPS:
        request.applymarker(pytest.mark.xfail(reason=KNOWN_GAPS[name], strict=True))
    raw = (DATA / f"{name}.dat").read_bytes()
    want = EXPECT[name]["wire"][transport]
    code, resp = (answer_udp if transport == "udp" else answer_tcp)(server, raw)
    assert code == want, f"{name} over {transport}: expected {want}, got {code}: {resp[:300]!r}"
    if code is not None and code >= 400 and code not in (401, 407):
        reason = resp.split(b"\r\n", 1)[0].decode("utf-8", "replace")
        if EXPECT[name]["wire"].get("reason"):
            assert EXPECT[name]["wire"]["reason"] in reason, reason


def test_server_logged_no_exception(server):
    """Runs after the messages (same module, same server): nothing in the log is an error or a traceback."""
    for name in NAMES:  # in case this test runs alone: send everything once more
        raw = (DATA / f"{name}.dat").read_bytes()
        answer_udp(server, raw) if EXPECT[name]["wire"]["udp"] is not None else None
    out = server.output()
    bad = [line for line in out.splitlines() if "Traceback" in line or re.search(r" (error|critical) ", line)]
    assert not bad, "\n".join(bad[:20]) + "\n--- log tail ---\n" + out[-4000:]
    assert server.running
