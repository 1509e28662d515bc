"""RFC 3261 §12 dialogs and the UA's pure decision helpers (no sockets, fake clock)."""
from __future__ import annotations

import random

import pytest

from sipcore.dialog import (
    Dialog, DialogError, DialogId, DialogState, Retransmitter, glare_retry_delay, offer_conflict, parse_rack,
    reliable_rseq, request_dialog_id, response_dialog_id, supports_100rel, unsupported_requirements,
)
from sipcore.message import make_response, parse_message


def invite(extra: str = "", body: str = "") -> bytes:
    return (
        "INVITE sip:bob@192.0.2.2:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa1\r\n"
        "Record-Route: <sip:p2.example.com;lr>\r\n"
        "Record-Route: <sip:p1.example.com;lr>\r\n"
        "From: \"Alice\" <sip:alice@example.com>;tag=atag\r\n"
        "To: <sip:bob@example.com>\r\n"
        "Call-ID: call-1@example.com\r\n"
        "CSeq: 10 INVITE\r\n"
        "Contact: <sip:alice@192.0.2.1:5060>\r\n"
        "Max-Forwards: 70\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


def uac_pair(status: int = 200, contact: str = "<sip:bob@192.0.2.2:5062>"):
    req = parse_message(invite())
    resp = make_response(req, status, to_tag="btag", headers=[("Contact", contact)] if contact else [])
    return req, parse_message(resp.to_bytes())


def test_uac_dialog_reverses_record_route_and_takes_contact():
    req, resp = uac_pair()
    d = Dialog.uac(req, resp)
    assert d.id == DialogId("call-1@example.com", "atag", "btag")
    assert d.state is DialogState.CONFIRMED and d.is_uac
    assert [str(r.uri) for r in d.route_set] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    assert str(d.remote_target) == "sip:bob@192.0.2.2:5062"
    assert d.local_seq == 10 and d.remote_seq is None
    assert str(d.local_uri.uri) == "sip:alice@example.com" and d.local_uri.tag is None
    assert d.local_contact == "<sip:alice@192.0.2.1:5060>"


def test_uas_dialog_keeps_record_route_order_and_remote_cseq():
    req = parse_message(invite())
    d = Dialog.uas(req, "btag", local_contact="<sip:bob@192.0.2.2>")
    assert d.id == DialogId("call-1@example.com", "btag", "atag") and not d.is_uac
    assert [str(r.uri) for r in d.route_set] == ["sip:p2.example.com;lr", "sip:p1.example.com;lr"]
    assert str(d.remote_target) == "sip:alice@192.0.2.1:5060"
    assert d.remote_seq == 10 and d.local_seq is None
    assert d.state is DialogState.EARLY
    assert request_dialog_id(parse_message(invite().replace(b"To: <sip:bob@example.com>",
                                                             b"To: <sip:bob@example.com>;tag=btag"))) == d.id


def test_dialog_creation_errors():
    req, resp = uac_pair()
    resp.set("To", "<sip:bob@example.com>")
    with pytest.raises(DialogError):
        Dialog.uac(req, resp)
    no_contact = parse_message(invite().replace(b"Contact: <sip:alice@192.0.2.1:5060>\r\n", b""))
    with pytest.raises(DialogError):
        Dialog.uas(no_contact, "t")


def test_early_dialog_confirm_recomputes_route_set_and_target():
    req, early = uac_pair(180, contact="<sip:bob@10.0.0.1>")
    d = Dialog.uac(req, early)
    assert d.state is DialogState.EARLY
    final = make_response(req, 200, to_tag="btag", headers=[("Contact", "<sip:bob@192.0.2.2:5070>")])
    final.remove("Record-Route")
    final.add("Record-Route", "<sip:only.example.com;lr>")
    d.confirm(parse_message(final.to_bytes()))
    assert d.state is DialogState.CONFIRMED
    assert [str(r.uri) for r in d.route_set] == ["sip:only.example.com;lr"]
    assert str(d.remote_target) == "sip:bob@192.0.2.2:5070"
    assert response_dialog_id(final) == d.id


def test_create_request_loose_routing_and_cseq():
    req, resp = uac_pair()
    d = Dialog.uac(req, resp)
    bye = d.create_request("BYE")
    assert str(bye.uri) == "sip:bob@192.0.2.2:5062"
    assert bye.get_all("Route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    assert bye.cseq.seq == 11 and bye.cseq.method == "BYE"
    assert bye.from_.tag == "atag" and bye.to.tag == "btag" and bye.call_id == "call-1@example.com"
    assert bye.from_.display == "Alice"
    assert bye.get("Contact") is None  # BYE is not a target refresh
    reinv = d.create_request("INVITE", b"v=0\r\n", "application/sdp")
    assert reinv.cseq.seq == 12 and reinv.get("Contact") == "<sip:alice@192.0.2.1:5060>"
    assert reinv.get("Content-Type") == "application/sdp" and reinv.body == b"v=0\r\n"
    ack = d.create_ack(12)
    assert ack.cseq.seq == 12 and ack.cseq.method == "ACK" and d.local_seq == 12
    assert d.next_hop == d.route_set[0].uri


def test_create_request_strict_router_fallback():
    req = parse_message(invite().replace(b"<sip:p1.example.com;lr>", b"<sip:p1.example.com;method=INVITE>"))
    resp = parse_message(make_response(req, 200, to_tag="btag", headers=[("Contact", "<sip:bob@192.0.2.2>")]).to_bytes())
    d = Dialog.uac(req, resp)  # route set: p1 (strict), p2
    assert d.strict_route
    bye = d.create_request("BYE")
    assert str(bye.uri) == "sip:p1.example.com"  # method= is not allowed in a Request-URI
    assert bye.get_all("Route") == ["<sip:p2.example.com;lr>", "<sip:bob@192.0.2.2>"]
    assert str(d.next_hop) == "sip:p1.example.com;method=INVITE"


def test_no_route_set_next_hop_is_remote_target():
    req = parse_message(invite().replace(b"Record-Route: <sip:p2.example.com;lr>\r\n", b"")
                        .replace(b"Record-Route: <sip:p1.example.com;lr>\r\n", b""))
    d = Dialog.uas(req, "btag")
    assert d.route_set == [] and str(d.next_hop) == "sip:alice@192.0.2.1:5060"
    r = d.create_request("INFO", b"Signal=1\r\n", "application/dtmf-relay")
    assert not r.has("Route") and r.from_.tag == "btag" and r.to.tag == "atag"
    assert 1 <= r.cseq.seq <= 2**16  # local CSeq starts fresh on the UAS side


def in_dialog(method: str, cseq: int, contact: str | None = None) -> bytes:
    c = f"Contact: {contact}\r\n" if contact else ""
    return (
        f"{method} sip:bob@192.0.2.2 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK{cseq}\r\n"
        "From: <sip:alice@example.com>;tag=atag\r\nTo: <sip:bob@example.com>;tag=btag\r\n"
        f"Call-ID: call-1@example.com\r\nCSeq: {cseq} {method}\r\n{c}Content-Length: 0\r\n\r\n"
    ).encode()


def test_receive_request_cseq_check_and_target_refresh():
    d = Dialog.uas(parse_message(invite()), "btag")
    assert d.receive_request(parse_message(in_dialog("INFO", 11))) is None and d.remote_seq == 11
    assert d.receive_request(parse_message(in_dialog("INFO", 5))) == 500
    assert d.remote_seq == 11
    assert d.receive_request(parse_message(in_dialog("ACK", 10))) is None  # ACK reuses the INVITE's CSeq
    assert d.receive_request(parse_message(in_dialog("INVITE", 12, "<sip:alice@198.51.100.7:5080>"))) is None
    assert str(d.remote_target) == "sip:alice@198.51.100.7:5080"
    assert d.receive_request(parse_message(in_dialog("BYE", 13, "<sip:evil@203.0.113.1>"))) is None
    assert str(d.remote_target) == "sip:alice@198.51.100.7:5080"  # BYE is not a target refresh


def test_uac_target_refresh_on_2xx_to_reinvite():
    req, resp = uac_pair()
    d = Dialog.uac(req, resp)
    reinv = d.create_request("INVITE")
    ok = make_response(reinv, 200, headers=[("Contact", "<sip:bob@192.0.2.99>")])
    d.receive_response("INVITE", ok)
    assert str(d.remote_target) == "sip:bob@192.0.2.99"
    d.receive_response("INFO", make_response(reinv, 200, headers=[("Contact", "<sip:x@192.0.2.5>")]))
    assert str(d.remote_target) == "sip:bob@192.0.2.99"


def test_100rel_helpers_and_prack():
    req, _ = uac_pair()
    prov = make_response(req, 183, to_tag="btag",
                         headers=[("Require", "100rel"), ("RSeq", "7"), ("Contact", "<sip:bob@192.0.2.2>")])
    assert reliable_rseq(prov) == 7
    assert reliable_rseq(make_response(req, 180, to_tag="btag", headers=[("RSeq", "7")])) is None
    d = Dialog.uac(req, parse_message(prov.to_bytes()))
    assert d.accept_rseq(7) and not d.accept_rseq(7) and not d.accept_rseq(9) and d.accept_rseq(8)
    prack = d.create_prack(prov)
    assert prack.method == "PRACK" and prack.get("RAck") == "7 10 INVITE" and prack.cseq.seq == 11
    assert parse_rack("7 10 INVITE") == (7, 10, "INVITE") and parse_rack("x 1 INVITE") is None
    assert not supports_100rel(req)
    assert supports_100rel(parse_message(invite("Supported: timer, 100rel\r\n")))
    uas = Dialog.uas(req, "t")
    first = uas.next_rseq()
    assert uas.next_rseq() == first + 1


def test_unsupported_requirements():
    req = parse_message(invite("Require: 100rel, precondition\r\n"))
    assert unsupported_requirements(req, ["100rel"]) == ["precondition"]
    assert unsupported_requirements(parse_message(invite()), []) == []


def test_offer_conflicts_and_glare_delay():
    rng = random.Random(1)
    assert offer_conflict(False, False) is None
    assert offer_conflict(True, False) == (491, [])
    status, headers = offer_conflict(False, True, rng)
    assert status == 500 and headers[0][0] == "Retry-After" and 0 <= int(headers[0][1]) <= 10
    for _ in range(50):
        assert 2.1 <= glare_retry_delay(True, rng) <= 4.0
        assert 0.0 <= glare_retry_delay(False, rng) <= 2.0


def test_retransmitter_2xx_schedule_doubles_to_t2_and_gives_up_at_64_t1():
    r = Retransmitter(100.0, t1=0.5, cap=4.0)
    times = []
    while True:
        now = r.next_at
        if not r.fire(now):
            break
        times.append(round(now - 100.0, 3))
    assert times[:6] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]  # intervals 0.5, 1, 2, 4, 4, ...
    assert now == pytest.approx(132.0)  # gives up at 64*T1
    assert r.count == len(times)


def test_retransmitter_reliable_provisional_has_no_cap():
    r = Retransmitter(0.0, t1=0.5, cap=None)
    times = []
    while r.fire(r.next_at):
        times.append(r.next_at)
    assert times[:4] == [1.5, 3.5, 7.5, 15.5]
    assert times[-1] == pytest.approx(32.0)
