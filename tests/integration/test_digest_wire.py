"""Digest authentication on the wire: raw UDP REGISTERs against a real callpath process.

Answers computed independently with hashlib (MD5, RFC 7616) over a chosen ``uri``:

- valid credentials over a uri that is not the Request-URI (``sip:other.example``): 400 "Bad Request (digest
  uri does not match Request-URI)", counted in the proxy's auth failures, nothing registered;
- an RFC 2069-style answer (no qop/nc/cnonce) to the qop=auth challenge: 400 "Bad Request (digest qop
  required)", and so is its replay;
- the Request-URI verbatim, and SIPp's ``sip:IP:PORT`` form: 200; the same answer again: 401 stale=true.
"""
from __future__ import annotations

import hashlib
import json
import re
import socket
import urllib.request
import uuid

import pytest

from sipp_harness import start_callpath

pytestmark = pytest.mark.integration

ALICE = ("alice", "secret", "1001")


@pytest.fixture
def server(tmp_path):
    srv = start_callpath(tmp_path, users=[ALICE])
    yield srv
    srv.stop()


class Client:
    """One UDP socket playing alice's phone: sends a REGISTER and returns the final response."""

    def __init__(self, server) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(3.0)
        self.port = self.sock.getsockname()[1]
        self.call_id = uuid.uuid4().hex
        self.cseq = 0

    def register(self, authorization: str = "") -> str:
        self.cseq += 1
        domain = self.server.domain
        text = (f"REGISTER sip:{domain} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{uuid.uuid4().hex};rport\r\n"
                f"From: <sip:alice@{domain}>;tag=w1\r\nTo: <sip:alice@{domain}>\r\n"
                f"Call-ID: {self.call_id}\r\nCSeq: {self.cseq} REGISTER\r\nMax-Forwards: 70\r\n"
                f"Contact: <sip:alice@127.0.0.1:{self.port}>\r\nExpires: 600\r\n"
                f"{authorization}Content-Length: 0\r\n\r\n")
        self.sock.sendto(text.encode(), ("127.0.0.1", self.server.sip_port))
        while True:
            resp = self.sock.recv(65535).decode()
            if not resp.startswith("SIP/2.0 1"):
                return resp

    def close(self) -> None:
        self.sock.close()


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def answer(challenge: str, uri: str, qop: bool = True, nc: int = 1) -> str:
    """An Authorization header line answering the MD5 challenge in ``challenge`` over ``uri``."""
    md5_line = next(line for line in challenge.split("\r\n")
                    if line.startswith("WWW-Authenticate:") and "algorithm=MD5" in line)
    realm = re.search(r'realm="([^"]*)"', md5_line).group(1)
    nonce = re.search(r'nonce="([^"]*)"', md5_line).group(1)
    ha1, ha2 = md5(f"alice:{realm}:secret"), md5(f"REGISTER:{uri}")
    if qop:
        response = md5(f"{ha1}:{nonce}:{nc:08x}:0a4f113b:auth:{ha2}")
        tail = f", qop=auth, nc={nc:08x}, cnonce=\"0a4f113b\""
    else:
        response, tail = md5(f"{ha1}:{nonce}:{ha2}"), ""
    return (f'Authorization: Digest username="alice", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm=MD5{tail}\r\n')


def status_line(resp: str) -> str:
    return resp.split("\r\n", 1)[0]


def proxy_stats(server) -> dict:
    return json.load(urllib.request.urlopen(server.web_url + "/api/v1/status", timeout=5))


def test_register_with_a_wrong_digest_uri_or_no_qop_is_refused(server):
    phone = Client(server)
    try:
        challenge = phone.register()
        assert status_line(challenge).startswith("SIP/2.0 401"), challenge
        before = proxy_stats(server)["proxy"]["auth_failures"]

        wrong_uri = phone.register(answer(challenge, "sip:other.example"))
        assert status_line(wrong_uri) == "SIP/2.0 400 Bad Request (digest uri does not match Request-URI)"

        legacy = answer(challenge, f"sip:{server.domain}", qop=False)
        for _ in range(2):  # the answer, then its replay
            refused = phone.register(legacy)
            assert status_line(refused) == "SIP/2.0 400 Bad Request (digest qop required)"

        status = proxy_stats(server)
        assert status["proxy"]["auth_failures"] == before + 3
        assert status["bindings"] == 0
    finally:
        phone.close()


def test_register_with_the_request_uri_or_sipp_uri_succeeds_once(server):
    phone = Client(server)
    try:
        for signed in (f"sip:{server.domain}", f"sip:{server.sip_host}:{server.sip_port}"):
            challenge = phone.register()
            ok = answer(challenge, signed)
            assert status_line(phone.register(ok)).startswith("SIP/2.0 200"), signed
            replay = phone.register(ok)  # same nonce, same nc
            assert status_line(replay).startswith("SIP/2.0 401") and "stale=true" in replay
        assert proxy_stats(server)["bindings"] == 1
    finally:
        phone.close()
