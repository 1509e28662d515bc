"""callpath as registrar and proxy between real SIPp peers over real sockets.

Each test starts a callpath process (auth on unless said otherwise) and drives it with the scenarios of
tests/sipp: digest registration, refresh and removal; authenticated calls to a registered UAS through
the proxy (Record-Route, ACK/BYE through callpath); CANCEL; parallel forking to two contacts.
"""
from __future__ import annotations

import json
import socket
import urllib.request
import uuid

import pytest

from sipp_harness import free_udp_port, run_sipp, start_callpath, start_sipp

pytestmark = pytest.mark.integration

ALICE = ("alice", "secret", "1001")
BOB = ("bob", "secret", "1002")


@pytest.fixture
def server(tmp_path):
    srv = start_callpath(tmp_path, users=[ALICE, BOB])
    yield srv
    srv.stop()


def register(server, user, contact_port: int, scenario: str = "register_loop.xml") -> None:
    """Register `user`'s contact at 127.0.0.1:contact_port (one REGISTER with digest auth)."""
    port = free_udp_port()
    run_sipp(scenario, server.target, local_port=port, users_csv=[user[:2]],
             keys=server.sipp_keys(contact_port=contact_port)).check(calls=1)


def sip_request(server, text: str, timeout: float = 3.0) -> str:
    """Send one raw request over UDP and return the first final response's start line + headers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.settimeout(timeout)
    data = text.replace("\n", "\r\n").replace("PORT", str(port)).encode()
    try:
        sock.sendto(data, ("127.0.0.1", server.sip_port))
        while True:
            resp = sock.recv(65535).decode()
            if not resp.startswith("SIP/2.0 1"):
                return resp
    finally:
        sock.close()


def test_register_refresh_unregister_with_digest(server):
    port = free_udp_port()
    result = run_sipp("register_auth.xml", server.target, local_port=port, users_csv=[ALICE[:2]],
                      keys=server.sipp_keys(contact_port=port))
    result.check(calls=1)
    # the scenario ends with Expires: 0: alice has no binding left
    status = json.load(urllib.request.urlopen(server.web_url + "/api/v1/status", timeout=5))
    assert status["bindings"] == 0 and status["proxy"]["registers"] >= 3
    # an unauthenticated caller is challenged before anything else
    resp = sip_request(server, options_or_invite("INVITE", "1001", server))
    assert resp.startswith("SIP/2.0 407")


def options_or_invite(method: str, user: str, server) -> str:
    branch = "z9hG4bK" + uuid.uuid4().hex
    return (f"{method} sip:{user}@{server.domain} SIP/2.0\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:PORT;branch={branch};rport\n"
            f"From: <sip:nobody@{server.domain}>;tag=x1\nTo: <sip:{user}@{server.domain}>\n"
            f"Call-ID: {uuid.uuid4().hex}\nCSeq: 1 {method}\nMax-Forwards: 70\n"
            f"Contact: <sip:nobody@127.0.0.1:PORT>\nContent-Length: 0\n\n")


def test_options_to_the_server_is_answered_locally(server):
    branch = "z9hG4bK" + uuid.uuid4().hex
    resp = sip_request(server, f"OPTIONS sip:{server.domain}:{server.sip_port} SIP/2.0\n"
                               f"Via: SIP/2.0/UDP 127.0.0.1:PORT;branch={branch}\n"
                               f"From: <sip:probe@x>;tag=1\nTo: <sip:{server.domain}>\n"
                               f"Call-ID: {uuid.uuid4().hex}\nCSeq: 7 OPTIONS\nMax-Forwards: 0\nContent-Length: 0\n\n")
    assert resp.startswith("SIP/2.0 200")
    assert "Allow: INVITE" in resp


def test_max_forwards_zero_is_483(server):
    resp = sip_request(server, options_or_invite("INVITE", "1002", server).replace("Max-Forwards: 70",
                                                                                    "Max-Forwards: 0"))
    assert resp.startswith("SIP/2.0 483")


def test_invalid_request_gets_400_with_reason(server):
    text = options_or_invite("OPTIONS", "1002", server).replace("CSeq: 1 OPTIONS", "CSeq: one OPTIONS")
    resp = sip_request(server, text)
    assert resp.startswith("SIP/2.0 400 Bad Request (bad CSeq")


def test_authenticated_call_through_the_proxy(server):
    uas_port = free_udp_port()
    with start_sipp("uas.xml", local_port=uas_port, calls=1, timeout=20) as uas:
        register(server, BOB, uas_port)
        result = run_sipp("uac.xml", server.target, local_port=free_udp_port(), users_csv=[ALICE[:2]],
                          service="1002", duration_ms=200, keys=server.sipp_keys())
        result.check(calls=1)
        uas_result = uas.wait(timeout=15)
    uas_result.check(calls=1)
    log = uas_result.log
    # the INVITE was record-routed by callpath, and the BYE came back through callpath (its Via on top)
    assert f"Record-Route: <sip:127.0.0.1:{server.sip_port};lr>" in log, log[-3000:]
    bye = log[log.index("BYE sip:"):]
    assert bye.split("Via: ", 1)[1].startswith(f"SIP/2.0/UDP 127.0.0.1:{server.sip_port};branch="), bye[:600]


def test_call_to_unregistered_user_is_480_and_unknown_user_404(server):
    # Authenticate as alice by running uac.xml against users who cannot answer: SIPp records the failure code.
    r480 = run_sipp("uac.xml", server.target, local_port=free_udp_port(), users_csv=[ALICE[:2]],
                    service="1002", keys=server.sipp_keys(), timeout=10)
    assert r480.failed == 1 and "480" in r480.log
    r404 = run_sipp("uac.xml", server.target, local_port=free_udp_port(), users_csv=[ALICE[:2]],
                    service="7777", keys=server.sipp_keys(), timeout=10)
    assert r404.failed == 1 and "404" in r404.log


def test_wrong_password_is_refused(server):
    port = free_udp_port()
    result = run_sipp("register_loop.xml", server.target, local_port=port, users_csv=[("alice", "wrong")],
                      keys=server.sipp_keys(contact_port=port), timeout=10)
    assert result.failed == 1 and "403" in result.log


def test_cancel_before_answer(server):
    uas_port = free_udp_port()
    with start_sipp("uas_cancel.xml", local_port=uas_port, calls=1, timeout=20) as uas:
        register(server, BOB, uas_port)
        result = run_sipp("uac_cancel.xml", server.target, local_port=free_udp_port(), users_csv=[ALICE[:2]],
                          service="1002", duration_ms=300, keys=server.sipp_keys())
        result.check(calls=1)
        uas.wait(timeout=15).check(calls=1)


def test_parallel_forking_to_two_contacts(server):
    """bob has two contacts: both ring; one answers, callpath CANCELs the other (RFC 3261 §16.7 step 10)."""
    answer_port, ring_port = free_udp_port(), free_udp_port()
    with start_sipp("uas.xml", local_port=answer_port, calls=1, timeout=25, sets={"ring_ms": 800}) as answering, \
            start_sipp("uas_cancel.xml", local_port=ring_port, calls=1, timeout=25) as ringing:
        register(server, BOB, answer_port)
        register(server, BOB, ring_port)
        result = run_sipp("uac.xml", server.target, local_port=free_udp_port(), users_csv=[ALICE[:2]],
                          service="bob", duration_ms=200, keys=server.sipp_keys())
        result.check(calls=1)
        answering.wait(timeout=15).check(calls=1)
        ringing.wait(timeout=15).check(calls=1)  # it got the INVITE, rang, and was CANCELled
