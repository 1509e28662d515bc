"""SIP over TCP and TLS (framing, keep-alive, connection reuse) and bad input on UDP, against a real callpath."""
from __future__ import annotations

import json
import socket
import ssl
import time
import urllib.request
import uuid

import pytest

from sipp_harness import free_tcp_port, free_udp_port, run_sipp, start_callpath, start_sipp

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path, request):
    srv = start_callpath(tmp_path, users=[("alice", "secret", "1001"), ("bob", "secret", "1002")],
                         sip={"auth": False, "tls_port": free_tcp_port()}, sip_trace=True)
    yield srv
    srv.stop()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        print(srv.output()[-20000:])


def register_text(user: str, contact: str, transport: str, expires: int = 600) -> bytes:
    return (f"REGISTER sip:127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} 127.0.0.1:1;branch=z9hG4bK{uuid.uuid4().hex};rport\r\n"
            f"From: <sip:{user}@127.0.0.1>;tag={uuid.uuid4().hex[:8]}\r\nTo: <sip:{user}@127.0.0.1>\r\n"
            f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n"
            f"Contact: <{contact}>\r\nExpires: {expires}\r\nContent-Length: 0\r\n\r\n").encode()


def read_messages(sock: socket.socket, count: int, timeout: float = 5.0) -> list[bytes]:
    """Read `count` SIP messages from a stream socket (Content-Length framing)."""
    sock.settimeout(timeout)
    buf = b""
    out: list[bytes] = []
    while len(out) < count:
        head, sep, rest = buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith((b"content-length:", b"l:")):
                length = int(line.split(b":", 1)[1])
        if sep and len(rest) >= length:
            out.append(head + sep + rest[:length])
            buf = rest[length:]
            continue
        chunk = sock.recv(65535)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return out


def test_tcp_framing_keepalive_and_connection_reuse(server):
    sock = socket.create_connection(("127.0.0.1", server.sip_port))
    try:
        # two requests in one segment, then one split in the middle of its headers
        first = register_text("alice", "sip:alice@127.0.0.1:1;transport=tcp", "TCP")
        second = register_text("alice", "sip:alice@127.0.0.1:2;transport=tcp", "TCP")
        sock.sendall(first + second)
        third = register_text("alice", "sip:alice@127.0.0.1:3;transport=tcp", "TCP")
        sock.sendall(third[:40])
        time.sleep(0.1)
        sock.sendall(third[40:])
        replies = read_messages(sock, 3)
        assert all(r.startswith(b"SIP/2.0 200") for r in replies)
        assert replies[2].count(b"Contact:") == 3  # all of alice's bindings are listed
        # RFC 5626 keep-alive: CRLFCRLF ping gets a CRLF pong
        sock.sendall(b"\r\n\r\n")
        sock.settimeout(3)
        assert sock.recv(16) == b"\r\n"
        # a call from UDP to alice goes back over this very connection (the contact is not reachable)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        invite = (f"INVITE sip:1001@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
                  f"From: <sip:bob@127.0.0.1>;tag=b1\r\nTo: <sip:1001@127.0.0.1>\r\nCall-ID: {uuid.uuid4().hex}\r\n"
                  f"CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContact: <sip:bob@127.0.0.1:{port}>\r\nContent-Length: 0\r\n\r\n")
        udp.sendto(invite.encode(), ("127.0.0.1", server.sip_port))
        got = read_messages(sock, 3)  # forked to the three contacts, all over the one connection
        assert all(g.startswith(b"INVITE sip:alice@127.0.0.1:") for g in got)
        assert b"Record-Route: <sip:127.0.0.1:" in got[0] and b"transport=tcp" in got[0]
        udp.close()
    finally:
        sock.close()


def test_tcp_message_without_content_length_closes_the_connection(server):
    sock = socket.create_connection(("127.0.0.1", server.sip_port))
    bad = register_text("alice", "sip:alice@127.0.0.1:1", "TCP").replace(b"Content-Length: 0\r\n", b"")
    sock.sendall(bad)
    sock.settimeout(5)
    data = b""
    while chunk := sock.recv(65535):  # answered 400 (its head could be read), then closed: a stream cannot
        data += chunk                 # be re-synchronised (RFC 4475 §3.1.2.3)
    assert data.startswith(b"SIP/2.0 400 Bad Request (missing or bad Content-Length"), data[:200]
    sock.close()


def test_tls_register(server):
    tls_port = server.settings["sip"]["tls_port"]
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # callpath generated a self-signed certificate
    with socket.create_connection(("127.0.0.1", tls_port)) as raw, ctx.wrap_socket(raw) as sock:
        sock.sendall(register_text("bob", "sip:bob@127.0.0.1:5;transport=tls", "TLS"))
        (reply,) = read_messages(sock, 1)
        assert reply.startswith(b"SIP/2.0 200")
        assert b"<sip:bob@127.0.0.1:5;transport=tls>;expires=600" in reply


def test_garbage_is_dropped_and_counted_and_the_server_keeps_answering(server):
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.settimeout(0.5)
    for junk in (b"\x00\xff" * 50, b"NOT SIP AT ALL\r\n\r\n", b"INVITE sip:a@b SIP/2.0\r\nVia\r\n\r\n", b"x" * 70000 if False else b"y" * 1400):
        udp.sendto(junk, ("127.0.0.1", server.sip_port))
    # the INVITE's start line is readable: answered 400 at the source (its Via is unusable); the rest is dropped
    assert udp.recv(65535).startswith(b"SIP/2.0 400 Bad Request (bad header line")
    with pytest.raises(socket.timeout):
        udp.recv(65535)
    status = json.load(urllib.request.urlopen(server.web_url + "/api/v1/status", timeout=5))
    assert status["sip"]["parse_errors"] >= 3
    udp.sendto(register_text("alice", "sip:alice@127.0.0.1:9", "UDP"), ("127.0.0.1", server.sip_port))
    udp.settimeout(5)
    assert udp.recv(65535).startswith(b"SIP/2.0 200")
    udp.close()


def test_sipp_call_over_tcp(server):
    uas_port = free_udp_port(also_tcp=True)
    with start_sipp("uas.xml", local_port=uas_port, calls=1, timeout=20, transport="t1") as uas:
        run_sipp("register_loop_noauth.xml", server.target, local_port=free_udp_port(also_tcp=True),
                 users_csv=[("bob", "secret")], transport="t1",
                 keys=server.sipp_keys(contact_port=uas_port)).check(calls=1)
        result = run_sipp("uac_noauth.xml", server.target, local_port=free_udp_port(also_tcp=True),
                          service="1002", duration_ms=200, transport="t1", keys=server.sipp_keys())
        result.check(calls=1)
        uas.wait(timeout=15).check(calls=1)


def test_sip_traffic_is_exported_as_hep3(tmp_path):
    from sipcore.hep import decode_hep3

    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.settimeout(5)
    srv = start_callpath(tmp_path, sip={"auth": False, "hep": f"127.0.0.1:{collector.getsockname()[1]}"})
    try:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        udp.sendto(register_text("alice", "sip:alice@127.0.0.1:9", "UDP"), ("127.0.0.1", srv.sip_port))
        packets = [decode_hep3(collector.recv(65535)) for _ in range(2)]
        received, sent = packets
        assert received["payload"].startswith(b"REGISTER sip:127.0.0.1")
        assert received["dst_port"] == srv.sip_port and received["src_port"] == udp.getsockname()[1]
        assert sent["payload"].startswith(b"SIP/2.0 ") and sent["src_port"] == srv.sip_port
        udp.close()
    finally:
        srv.stop()
        collector.close()


def test_a_port_in_use_is_a_one_line_error(tmp_path):
    """Start-up problems are said in one line with a non-zero exit, not a traceback."""
    import subprocess
    import sys

    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    port = busy.getsockname()[1]
    config = tmp_path / "c.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path}/data"\n[sip]\nudp_port = {port}\ntcp_port = 0\n[web]\nport = 0\n'
                      '[media]\nenabled = false\n')
    try:
        done = subprocess.run([sys.executable, "-m", "web.cli", "run", "--config", str(config)],
                              capture_output=True, text=True, timeout=60)
    finally:
        busy.close()
    assert done.returncode == 1
    assert f"callpath: error: cannot listen on udp 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "Traceback" not in done.stderr
