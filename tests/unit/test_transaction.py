"""RFC 3261 §17 transactions, driven with a fake clock (no sleeping)."""
from __future__ import annotations

from sipcore.message import Request, parse_message
from sipcore.transaction import (
    AckReceived, ClientTransaction, Flow, RequestReceived, ResponseReceived, StrayResponse,
    TransactionLayer, TransactionTimeout, T1, T2,
)

UDP = Flow("udp", ("192.0.2.9", 5062))
TCP = Flow("tcp", ("192.0.2.9", 5062), conn_id=7)


def layer() -> TransactionLayer:
    return TransactionLayer(lambda f: f"SIP/2.0/{f.transport.upper()} 192.0.2.1:5060")


def invite(branch: str = "z9hG4bKabc", method: str = "INVITE", cseq_method: str | None = None) -> bytes:
    return (
        f"{method} sip:bob@192.0.2.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.9:5062;branch={branch}\r\n"
        "From: <sip:alice@192.0.2.9>;tag=a1\r\nTo: <sip:bob@192.0.2.1>\r\n"
        f"Call-ID: c1\r\nCSeq: 1 {cseq_method or method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def events(tl: TransactionLayer) -> list:
    out = []
    while (e := tl.next_event()) is not None:
        out.append(e)
    return out


def new_request(method: str = "INVITE") -> Request:
    r = Request(method, "sip:bob@192.0.2.9:5062")
    for n, v in (("From", "<sip:a@x>;tag=1"), ("To", "<sip:bob@x>"), ("Call-ID", "cid"),
                 ("CSeq", f"1 {method}"), ("Max-Forwards", "70")):
        r.add(n, v)
    return r


def response_to(tx: ClientTransaction, status: int, to_tag: str = "t9") -> bytes:
    req = tx.request
    return (
        f"SIP/2.0 {status} X\r\nVia: {req.get('via')}\r\nFrom: {req.get('from')}\r\n"
        f"To: {req.get('to')};tag={to_tag}\r\nCall-ID: {req.call_id}\r\nCSeq: {req.get('cseq')}\r\n\r\n"
    ).encode()


def test_invite_server_retransmission_absorbed_and_100_trying_after_200ms():
    tl = layer()
    tl.receive(parse_message(invite()), UDP, 0.0)
    (ev,) = events(tl)
    assert isinstance(ev, RequestReceived)
    tl.receive(parse_message(invite()), UDP, 0.1)  # retransmission before any response: absorbed silently
    assert events(tl) == [] and tl.datagrams_to_send() == []
    assert tl.get_timer() == 0.2
    tl.handle_timer(0.2)
    ((data, flow),) = tl.datagrams_to_send()
    assert data.startswith(b"SIP/2.0 100 Trying") and flow == UDP
    tl.receive(parse_message(invite()), UDP, 0.3)  # retransmission now gets the 100 again
    assert tl.datagrams_to_send()[0][0].startswith(b"SIP/2.0 100")


def test_invite_server_non2xx_timer_g_doubles_until_ack_then_timer_i():
    tl = layer()
    tl.receive(parse_message(invite()), UDP, 0.0)
    ev = events(tl)[0]
    ev.tx.reply(486, now=0.0)
    assert tl.datagrams_to_send()[0][0].startswith(b"SIP/2.0 486")
    sent_at = []
    t = 0.0
    while t < 3.0:
        nxt = tl.get_timer()
        t = nxt
        tl.handle_timer(t)
        if tl.datagrams_to_send():
            sent_at.append(round(t, 3))
    assert sent_at[:3] == [T1, 3 * T1, 7 * T1]  # intervals T1, 2T1, 4T1
    ack = invite(method="ACK")
    tl.receive(parse_message(ack), UDP, 4.0)
    assert ev.tx.state == "Confirmed"
    assert events(tl) == []  # the ACK for a non-2xx is absorbed by the transaction
    tl.handle_timer(4.0 + 5.0)
    assert ev.tx.state == "Terminated" and len(tl) == 0


def test_invite_server_timer_h_without_ack():
    tl = layer()
    tl.receive(parse_message(invite()), UDP, 0.0)
    tx = events(tl)[0].tx
    tx.reply(404, now=0.0)
    tl.handle_timer(64 * T1)
    evs = events(tl)
    assert any(isinstance(e, TransactionTimeout) for e in evs)
    assert tx.state == "Terminated"


def test_invite_server_2xx_accepted_passes_ack_to_tu():
    tl = layer()
    tl.receive(parse_message(invite()), UDP, 0.0)
    tx = events(tl)[0].tx
    tx.reply(200, now=0.0)
    assert tx.state == "Accepted"
    ack = invite(branch="z9hG4bKnewbranch", method="ACK")
    tl.receive(parse_message(ack), UDP, 0.1)
    (ev,) = events(tl)
    assert isinstance(ev, AckReceived)
    tl.handle_timer(64 * T1)
    assert tx.state == "Terminated"


def test_non_invite_server_timer_j_udp_and_immediate_on_tcp():
    for flow, alive_after in ((UDP, True), (TCP, False)):
        tl = layer()
        tl.receive(parse_message(invite(method="OPTIONS")), flow, 0.0)
        tx = events(tl)[0].tx
        tx.reply(200, now=0.0)
        assert (len(tl) == 1) is alive_after
        tl.receive(parse_message(invite(method="OPTIONS")), flow, 1.0)
        if alive_after:
            assert tl.datagrams_to_send()[-1][0].startswith(b"SIP/2.0 200")  # retransmitted response
            tl.handle_timer(64 * T1)
            assert len(tl) == 0


def test_cancel_matches_invite_transaction():
    tl = layer()
    tl.receive(parse_message(invite()), UDP, 0.0)
    inv_tx = events(tl)[0].tx
    tl.receive(parse_message(invite(method="CANCEL")), UDP, 0.1)
    (ev,) = events(tl)
    assert ev.request.method == "CANCEL" and ev.cancelled is inv_tx


def test_invite_client_timer_a_and_b():
    tl = layer()
    tx = tl.send_request(new_request(), UDP, 0.0)
    assert tx.request.top_via.branch == tx.branch
    assert len(tl.datagrams_to_send()) == 1
    sends = []
    while (t := tl.get_timer()) is not None and t < 64 * T1:
        tl.handle_timer(t)
        if tl.datagrams_to_send():
            sends.append(t)
    assert sends[:4] == [T1, 3 * T1, 7 * T1, 15 * T1]
    tl.handle_timer(64 * T1)
    assert any(isinstance(e, TransactionTimeout) for e in events(tl))


def test_invite_client_non2xx_sends_ack_and_absorbs_retransmissions():
    tl = layer()
    tx = tl.send_request(new_request(), UDP, 0.0)
    tl.datagrams_to_send()
    tl.receive(parse_message(response_to(tx, 180)), UDP, 0.1)
    tl.receive(parse_message(response_to(tx, 486)), UDP, 0.2)
    evs = events(tl)
    assert [e.response.status for e in evs if isinstance(e, ResponseReceived)] == [180, 486]
    ((ack, _),) = tl.datagrams_to_send()
    assert ack.startswith(b"ACK sip:bob@192.0.2.9:5062 SIP/2.0")
    parsed = parse_message(ack)
    assert parsed.top_via.branch == tx.branch and parsed.to.tag == "t9" and parsed.cseq.method == "ACK"
    tl.receive(parse_message(response_to(tx, 486)), UDP, 0.3)
    assert events(tl) == [] and tl.datagrams_to_send()[0][0] == ack  # ACK re-sent, TU not bothered
    tl.handle_timer(0.2 + 32)
    assert len(tl) == 0


def test_invite_client_2xx_retransmissions_reach_tu_until_timer_m():
    tl = layer()
    tx = tl.send_request(new_request(), UDP, 0.0)
    tl.receive(parse_message(response_to(tx, 200)), UDP, 0.1)
    tl.receive(parse_message(response_to(tx, 200)), UDP, 0.6)
    assert [e.response.status for e in events(tl)] == [200, 200]
    tl.handle_timer(0.1 + 64 * T1)
    tl.receive(parse_message(response_to(tx, 200)), UDP, 40.0)
    assert isinstance(events(tl)[0], StrayResponse)


def test_non_invite_client_timer_e_caps_at_t2_and_timer_f():
    tl = layer()
    tl.send_request(new_request("OPTIONS"), UDP, 0.0)
    tl.datagrams_to_send()
    sends = []
    while (t := tl.get_timer()) is not None and t < 64 * T1:
        tl.handle_timer(t)
        if tl.datagrams_to_send():
            sends.append(t)
    gaps = [round(b - a, 3) for a, b in zip([0.0] + sends, sends)]
    assert gaps[:5] == [0.5, 1.0, 2.0, 4.0, 4.0] and max(gaps) == T2
    tl.handle_timer(64 * T1)
    assert any(isinstance(e, TransactionTimeout) for e in events(tl))


def test_non_invite_client_reliable_no_retransmissions_and_timer_k():
    tl = layer()
    tx = tl.send_request(new_request("REGISTER"), TCP, 0.0)
    tl.datagrams_to_send()
    assert tl.get_timer() == 64 * T1  # only F on a reliable transport
    tl.receive(parse_message(response_to(tx, 200)), TCP, 0.1)
    assert tx.state == "Terminated"
    tx2 = tl.send_request(new_request("REGISTER"), UDP, 1.0)
    tl.receive(parse_message(response_to(tx2, 200)), UDP, 1.1)
    assert tx2.state == "Completed"
    tl.handle_timer(1.1 + 5.0)
    assert tx2.state == "Terminated"


def test_cancel_request_built_from_invite():
    tl = layer()
    tx = tl.send_request(new_request(), UDP, 0.0)
    c = tx.cancel_request()
    assert c.method == "CANCEL" and c.cseq.seq == 1 and c.cseq.method == "CANCEL"
    assert not c.has("via") and str(c.uri) == str(tx.request.uri)
    tl.send_request(c, UDP, 0.1, branch=tx.branch)
    assert c.top_via.branch == tx.branch and len(c.vias) == 1


def test_cseq_method_mismatch_is_rejected():
    import pytest
    from sipcore.errors import SipParseError

    tl = layer()
    with pytest.raises(SipParseError):
        tl.receive(parse_message(invite(cseq_method="OPTIONS")), UDP, 0.0)


def test_invite_client_timer_b_does_not_fire_once_proceeding():
    tl = layer()
    tx = tl.send_request(new_request(), UDP, 0.0)
    tl.receive(parse_message(response_to(tx, 180)), UDP, 0.1)
    tl.handle_timer(100.0)
    assert tx.state == "Proceeding" and not any(isinstance(e, TransactionTimeout) for e in events(tl))


def test_terminated_is_every_transactions_last_event_on_reliable_flows_too():
    """The stack drops a transaction's owner after TransactionTerminated, so nothing may follow it: over TCP a
    non-2xx to an INVITE (and a final to a non-INVITE) ends the transaction at once, after its response."""
    from sipcore.transaction import TransactionTerminated

    tl = layer()
    owner = object()
    inv = tl.send_request(new_request("INVITE"), TCP, 0.0, owner=owner)
    opt = tl.send_request(new_request("OPTIONS"), TCP, 0.0, owner=owner)
    tl.receive(parse_message(response_to(inv, 486)), TCP, 0.1)
    tl.receive(parse_message(response_to(opt, 200)), TCP, 0.1)
    got = [(type(e).__name__, e.tx.request.method) for e in events(tl)]
    assert got == [("ResponseReceived", "INVITE"), ("TransactionTerminated", "INVITE"),
                   ("ResponseReceived", "OPTIONS"), ("TransactionTerminated", "OPTIONS")]
    assert TransactionTerminated.__doc__ and "last event" in TransactionTerminated.__doc__
