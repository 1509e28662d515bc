"""media.stun + media.ice: RFC 5769 vectors, the ICE-lite responder, demultiplexing, consent."""
from __future__ import annotations

import re
import struct

import pytest
from aioice.stun import Class, Message, Method, message_fingerprint

from media import stun
from media.ice import CandidateNominated, ConsentExpired, IceLegState, IceLiteAgent, host_candidate
from media.stun import PacketKind

# ---- RFC 5769 test vectors ----------------------------------------------------------------------

RFC5769_PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"

RFC5769_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e20746573742063"
    "6c69656e74"
    "002400046e0001ff"
    "80290008932ff9b151263b36"
    "000600096576746a3a68367659202020"
    "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004e57a3bcf"
)

RFC5769_RESPONSE_V4 = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96"
)

RFC5769_RESPONSE_V6 = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9"
    "00080014a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004c8fb0b4c"
)


def test_rfc5769_request_vector():
    message = stun.parse(RFC5769_REQUEST)  # FINGERPRINT verified by the parser
    assert message.message_method == Method.BINDING and message.message_class == Class.REQUEST
    assert message.transaction_id == bytes.fromhex("b7e7a701bc34d686fa87dfae")
    assert message.attributes["USERNAME"] == "evtj:h6vY"
    assert message.attributes["SOFTWARE"] == "STUN test client"
    assert message.attributes["PRIORITY"] == 0x6E0001FF
    assert message.attributes["ICE-CONTROLLED"] == 0x932FF9B151263B36
    assert message.attributes["FINGERPRINT"] == 0xE57A3BCF
    assert message.check_message_integrity(RFC5769_PASSWORD.encode())
    assert not message.check_message_integrity(b"VOkJxbRl1RmTxUk/WvJxBu")


@pytest.mark.parametrize(
    ("vector", "address"),
    [(RFC5769_RESPONSE_V4, ("192.0.2.1", 32853)), (RFC5769_RESPONSE_V6, ("2001:db8:1234:5678:11:2233:4455:6677", 32853))],
    ids=["ipv4", "ipv6"],
)
def test_rfc5769_response_vectors(vector, address):
    message = stun.parse(vector)
    assert message.message_class == Class.RESPONSE
    assert message.attributes["XOR-MAPPED-ADDRESS"] == address
    assert message.attributes["SOFTWARE"] == "test vector"
    assert message.check_message_integrity(RFC5769_PASSWORD.encode())


@pytest.mark.parametrize(
    ("vector", "address"),
    [(RFC5769_RESPONSE_V4, ("192.0.2.1", 32853)), (RFC5769_RESPONSE_V6, ("2001:db8:1234:5678:11:2233:4455:6677", 32853))],
    ids=["ipv4", "ipv6"],
)
def test_binding_success_reproduces_rfc5769_responses(vector, address):
    # byte for byte: XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY and FINGERPRINT (text padded with spaces)
    request = stun.parse(RFC5769_REQUEST)
    assert stun.binding_success(request, address, RFC5769_PASSWORD, software="test vector") == vector


def test_binding_error_encoding():
    request = stun.parse(RFC5769_REQUEST)
    signed = stun.parse(stun.binding_error(request, 487, "Role Conflict", RFC5769_PASSWORD))
    assert signed.message_class == Class.ERROR and signed.attributes["ERROR-CODE"] == (487, "Role Conflict")
    assert signed.check_message_integrity(RFC5769_PASSWORD.encode())
    unsigned_bytes = stun.binding_error(request, 401, "Unauthorized")
    unsigned = stun.parse(unsigned_bytes)
    assert unsigned.error_code == 401 and "MESSAGE-INTEGRITY" not in unsigned.attributes
    assert unsigned.attributes["FINGERPRINT"] == message_fingerprint(unsigned_bytes[:-8])


def test_corrupt_fingerprint_rejected():
    corrupt = bytearray(RFC5769_REQUEST)
    corrupt[-1] ^= 0xFF
    with pytest.raises(stun.StunError):
        stun.parse(bytes(corrupt))


def test_rfc7983_classification():
    assert stun.classify(b"\x00\x01") is PacketKind.STUN
    assert stun.classify(b"\x03") is PacketKind.STUN
    assert stun.classify(b"\x16\xfe\xfd") is PacketKind.DTLS  # handshake record, 22
    assert stun.classify(b"\x14") is PacketKind.DTLS and stun.classify(b"\x3f") is PacketKind.DTLS
    assert stun.classify(b"\x80\x6f") is PacketKind.RTP and stun.classify(b"\xbf") is PacketKind.RTP
    assert stun.classify(b"\x10") is PacketKind.ZRTP
    assert stun.classify(b"\x40") is PacketKind.TURN_CHANNEL
    assert stun.classify(b"\x04") is PacketKind.UNKNOWN and stun.classify(b"\xc0") is PacketKind.UNKNOWN
    assert stun.classify(b"") is PacketKind.UNKNOWN
    assert stun.is_stun(RFC5769_REQUEST) and not stun.is_stun(b"\x00" * 20)


# ---- the ICE-lite agent -------------------------------------------------------------------------

BROWSER_A = ("198.51.100.1", 50000)
BROWSER_B = ("198.51.100.2", 50002)


def check(leg, *, use_candidate=False, password=None, controlling=True, remote_ufrag=None, tid=None) -> bytes:
    username = f"{leg.local_ufrag}:{remote_ufrag or leg.remote_ufrag}"
    return stun.binding_request(
        username,
        password or leg.local_pwd,
        controlling=controlling,
        tie_breaker=0x1234,
        use_candidate=use_candidate,
        transaction_id=tid,
    )


def only_response(agent, to):
    out = agent.datagrams_to_send()
    assert len(out) == 1, out
    data, addr = out[0]
    assert addr == to
    return stun.parse(data)


def test_credentials_and_candidates():
    agent = IceLiteAgent()
    leg = agent.create_leg("rem1", "r" * 22)
    assert len(leg.local_ufrag) >= 4 and len(leg.local_pwd) >= 22
    assert re.fullmatch(r"[A-Za-z0-9+/]+", leg.local_ufrag + leg.local_pwd)
    other = agent.create_leg("rem2", "r" * 22)
    assert other.local_ufrag != leg.local_ufrag and other.local_pwd != leg.local_pwd
    assert leg.local_candidates("203.0.113.7", 40000) == ["1 1 udp 2130706431 203.0.113.7 40000 typ host"]
    assert host_candidate("2001:db8::1", 40000, foundation="2") == "2 1 udp 2130706431 2001:db8::1 40000 typ host"
    attrs = dict(leg.sdp_attributes(["203.0.113.7"], 40000))
    assert attrs["ice-ufrag"] == leg.local_ufrag and attrs["ice-pwd"] == leg.local_pwd
    assert "candidate" in attrs and "end-of-candidates" in attrs
    with pytest.raises(ValueError):
        agent.create_leg(local_ufrag="abc")
    with pytest.raises(ValueError):
        agent.create_leg(local_ufrag=leg.local_ufrag)


def test_binding_success_and_nomination():
    agent = IceLiteAgent(software="callpath")
    leg = agent.create_leg("brws", "b" * 24, now=0.0)
    request = check(leg, tid=b"t" * 12)
    assert agent.receive_datagram(request, BROWSER_A, 1.0) is None
    response = only_response(agent, BROWSER_A)
    assert response.message_class == Class.RESPONSE and response.transaction_id == b"t" * 12
    assert response.attributes["XOR-MAPPED-ADDRESS"] == BROWSER_A
    assert response.check_message_integrity(leg.local_pwd.encode())
    assert "FINGERPRINT" in response.attributes
    assert leg.selected_address is None and leg.state is IceLegState.NEW
    assert agent.next_event() is None
    # media from a checked (valid) address is demultiplexed even before nomination
    assert agent.receive_datagram(b"\x16\xfe\xfd" + b"\x00" * 20, BROWSER_A, 1.1) == (leg, PacketKind.DTLS)

    agent.receive_datagram(check(leg, use_candidate=True), BROWSER_A, 1.2)
    only_response(agent, BROWSER_A)
    assert leg.selected_address == BROWSER_A and leg.state is IceLegState.CONNECTED
    assert agent.next_event() == CandidateNominated(leg, BROWSER_A)
    # a repeated nomination of the same address is not a new event
    agent.receive_datagram(check(leg, use_candidate=True), BROWSER_A, 1.3)
    only_response(agent, BROWSER_A)
    assert agent.next_event() is None


def test_two_legs_on_one_port_demultiplexed_by_username_then_address():
    agent = IceLiteAgent()
    leg_a = agent.create_leg("aaaa", "a" * 22, leg_id="call-a")
    leg_b = agent.create_leg("bbbb", "b" * 22, leg_id="call-b")
    agent.receive_datagram(check(leg_a, use_candidate=True), BROWSER_A, 0.0)
    agent.receive_datagram(check(leg_b, use_candidate=True), BROWSER_B, 0.0)
    out = agent.datagrams_to_send()
    assert [addr for _, addr in out] == [BROWSER_A, BROWSER_B]
    assert stun.parse(out[0][0]).check_message_integrity(leg_a.local_pwd.encode())
    assert stun.parse(out[1][0]).check_message_integrity(leg_b.local_pwd.encode())
    events = [agent.next_event(), agent.next_event()]
    assert events == [CandidateNominated(leg_a, BROWSER_A), CandidateNominated(leg_b, BROWSER_B)]
    rtp = struct.pack("!BBHII", 0x80, 111, 1, 0, 1) + b"x"
    assert agent.receive_datagram(rtp, BROWSER_A, 0.1) == (leg_a, PacketKind.RTP)
    assert agent.receive_datagram(rtp, BROWSER_B, 0.1) == (leg_b, PacketKind.RTP)
    assert agent.receive_datagram(b"\x17\xfe\xfd" + b"\x00" * 10, BROWSER_B, 0.1) == (leg_b, PacketKind.DTLS)
    # unknown source address, or unknown first byte: dropped
    assert agent.receive_datagram(rtp, ("198.51.100.9", 1), 0.1) is None
    assert agent.receive_datagram(b"\x05abc", BROWSER_A, 0.1) is None
    # removing a leg stops its demux and its checks get 401
    agent.remove_leg(leg_a)
    assert agent.receive_datagram(rtp, BROWSER_A, 0.2) is None
    agent.receive_datagram(check(leg_a), BROWSER_A, 0.2)
    assert only_response(agent, BROWSER_A).error_code == 401


def test_wrong_password_rejected_with_401():
    agent = IceLiteAgent()
    leg = agent.create_leg("brws", "b" * 24)
    agent.receive_datagram(check(leg, use_candidate=True, password="x" * 22), BROWSER_A, 0.0)
    response = only_response(agent, BROWSER_A)
    assert response.message_class == Class.ERROR and response.error_code == 401
    assert "MESSAGE-INTEGRITY" not in response.attributes and "FINGERPRINT" in response.attributes
    assert leg.selected_address is None and not leg.addresses
    assert agent.next_event() is None
    assert agent.receive_datagram(b"\x80\x6f" + b"\x00" * 20, BROWSER_A, 0.1) is None


def test_wrong_password_silently_dropped_when_configured():
    agent = IceLiteAgent(reply_unauthenticated=False)
    leg = agent.create_leg("brws", "b" * 24)
    agent.receive_datagram(check(leg, password="x" * 22), BROWSER_A, 0.0)
    assert agent.datagrams_to_send() == []


def test_unknown_ufrag_and_wrong_remote_ufrag_rejected():
    agent = IceLiteAgent()
    leg = agent.create_leg("brws", "b" * 24)
    agent.receive_datagram(stun.binding_request("nosuch:brws", leg.local_pwd), BROWSER_A, 0.0)
    assert only_response(agent, BROWSER_A).error_code == 401
    agent.receive_datagram(check(leg, remote_ufrag="othr"), BROWSER_A, 0.0)
    assert only_response(agent, BROWSER_A).error_code == 401


def test_missing_fingerprint_or_integrity_is_400():
    agent = IceLiteAgent()
    leg = agent.create_leg("brws", "b" * 24)
    no_fingerprint = Message(Method.BINDING, Class.REQUEST)
    no_fingerprint.attributes["USERNAME"] = f"{leg.local_ufrag}:brws"
    no_fingerprint.attributes["ICE-CONTROLLING"] = 1
    no_fingerprint.add_message_integrity(leg.local_pwd.encode())
    no_fingerprint.attributes.pop("FINGERPRINT")
    agent.receive_datagram(bytes(no_fingerprint), BROWSER_A, 0.0)
    assert only_response(agent, BROWSER_A).error_code == 400
    no_integrity = Message(Method.BINDING, Class.REQUEST)
    no_integrity.attributes["USERNAME"] = f"{leg.local_ufrag}:brws"
    no_integrity.add_fingerprint()
    agent.receive_datagram(bytes(no_integrity), BROWSER_A, 0.0)
    assert only_response(agent, BROWSER_A).error_code == 400


def test_role_conflict_487_with_rfc5769_request():
    # The RFC 5769 request says ICE-CONTROLLED: both sides controlled; a lite agent cannot switch.
    agent = IceLiteAgent()
    leg = agent.create_leg("h6vY", None, local_ufrag="evtj", local_pwd=RFC5769_PASSWORD)
    agent.receive_datagram(RFC5769_REQUEST, BROWSER_A, 0.0)
    response = only_response(agent, BROWSER_A)
    assert response.message_class == Class.ERROR and response.error_code == 487
    assert response.transaction_id == bytes.fromhex("b7e7a701bc34d686fa87dfae")
    assert response.check_message_integrity(RFC5769_PASSWORD.encode())
    assert not leg.addresses and agent.next_event() is None


def test_role_conflict_from_a_confused_browser():
    agent = IceLiteAgent()
    leg = agent.create_leg("brws", "b" * 24)
    agent.receive_datagram(check(leg, controlling=False, use_candidate=True), BROWSER_A, 0.0)
    assert only_response(agent, BROWSER_A).error_code == 487
    assert leg.selected_address is None
    # the browser switches to controlling and retries
    agent.receive_datagram(check(leg, controlling=True, use_candidate=True), BROWSER_A, 0.1)
    assert only_response(agent, BROWSER_A).message_class == Class.RESPONSE
    assert leg.selected_address == BROWSER_A and leg.remote_tie_breaker == 0x1234


def test_indications_and_responses_are_ignored():
    agent = IceLiteAgent()
    agent.create_leg("brws", "b" * 24)
    indication = Message(Method.BINDING, Class.INDICATION)
    indication.add_fingerprint()
    agent.receive_datagram(bytes(indication), BROWSER_A, 0.0)
    agent.receive_datagram(RFC5769_RESPONSE_V4, BROWSER_A, 0.0)
    agent.receive_datagram(b"\x00\x01\x00\x00garbage", BROWSER_A, 0.0)
    assert agent.datagrams_to_send() == []


def test_consent_freshness():
    agent = IceLiteAgent(consent_timeout=30.0)
    fresh = agent.create_leg("frsh", "f" * 22, now=0.0)
    stale = agent.create_leg("stal", "s" * 22, now=0.0)
    agent.receive_datagram(check(fresh, use_candidate=True), BROWSER_A, 0.0)
    agent.receive_datagram(check(stale, use_candidate=True), BROWSER_B, 0.0)
    agent.datagrams_to_send()
    assert isinstance(agent.next_event(), CandidateNominated) and isinstance(agent.next_event(), CandidateNominated)
    now = 0.0
    while now < 40.0:  # the browser refreshes consent for one leg every 5 s
        timer = agent.get_timer()
        assert timer is not None and timer <= now + 1.0
        now = timer
        if int(now) % 5 == 0:
            agent.receive_datagram(check(fresh), BROWSER_A, now)
        agent.handle_timer(now)
        event = agent.next_event()
        if event is not None:
            break
    assert event == ConsentExpired(stale)
    assert 30.0 <= now <= 31.0
    assert stale.state is IceLegState.EXPIRED and fresh.state is IceLegState.CONNECTED
    assert agent.receive_datagram(b"\x80\x6f" + b"\x00" * 20, BROWSER_B, now) is None
    assert agent.receive_datagram(b"\x80\x6f" + b"\x00" * 20, BROWSER_A, now) == (fresh, PacketKind.RTP)
    # an expired leg no longer gets consent back
    agent.datagrams_to_send()
    agent.receive_datagram(check(stale), BROWSER_B, now)
    assert only_response(agent, BROWSER_B).error_code == 401


def test_leg_never_checked_expires_and_timer_stops_without_legs():
    agent = IceLiteAgent(consent_timeout=30.0)
    assert agent.get_timer() is None
    leg = agent.create_leg("nevr", "n" * 22, now=100.0)
    for now in range(101, 132):
        agent.handle_timer(float(now))
    assert agent.next_event() == ConsentExpired(leg)
    agent.remove_leg(leg)
    assert agent.get_timer() is None and leg.state is IceLegState.CLOSED


def test_address_change_renominates():
    agent = IceLiteAgent()
    leg = agent.create_leg("brws", "b" * 24)
    agent.receive_datagram(check(leg, use_candidate=True), BROWSER_A, 0.0)
    agent.receive_datagram(check(leg, use_candidate=True), BROWSER_B, 1.0)  # e.g. network change
    assert [agent.next_event(), agent.next_event()] == [
        CandidateNominated(leg, BROWSER_A),
        CandidateNominated(leg, BROWSER_B),
    ]
    assert leg.selected_address == BROWSER_B and leg.addresses == {BROWSER_A, BROWSER_B}


def test_ipv6_source_with_flowinfo_and_scope():
    agent = IceLiteAgent()
    leg = agent.create_leg("brws", "b" * 24)
    agent.receive_datagram(check(leg, use_candidate=True), ("2001:db8::5", 50000, 0, 0), 0.0)
    (response, to), = agent.datagrams_to_send()
    assert to == ("2001:db8::5", 50000)
    assert stun.parse(response).attributes["XOR-MAPPED-ADDRESS"] == ("2001:db8::5", 50000)
    assert leg.selected_address == ("2001:db8::5", 50000)
    assert agent.receive_datagram(b"\x80\x00" + b"\x00" * 10, ("2001:db8::5", 50000, 0, 0), 0.1) == (leg, PacketKind.RTP)


def test_ice_restart_takes_new_credentials_and_keeps_media_until_renominated():
    """RFC 8445 §9: after a restart the old credentials get 401, media still flows to the selected address,
    and a check with the new ones from a new address nominates it; an expired leg comes back."""
    agent = IceLiteAgent(consent_timeout=30.0)
    leg = agent.create_leg("old1", "o" * 24, now=0.0)
    agent.receive_datagram(check(leg, use_candidate=True), BROWSER_A, 0.0)
    agent.datagrams_to_send()
    agent.next_event()
    old_ufrag, old_pwd = leg.local_ufrag, leg.local_pwd
    agent.restart(leg, "new1", "n" * 24, now=1.0)
    assert (leg.local_ufrag, leg.local_pwd) != (old_ufrag, old_pwd) and agent.legs == {leg.local_ufrag: leg}
    assert agent.receive_datagram(b"\x80\x6f" + b"\x00" * 20, BROWSER_A, 1.1) == (leg, PacketKind.RTP)
    agent.receive_datagram(stun.binding_request(f"{old_ufrag}:new1", old_pwd, tie_breaker=1), BROWSER_A, 1.2)
    assert only_response(agent, BROWSER_A).error_code == 401
    agent.receive_datagram(check(leg, use_candidate=True), BROWSER_B, 1.3)
    assert only_response(agent, BROWSER_B).error_code is None
    assert agent.next_event() == CandidateNominated(leg, BROWSER_B) and leg.selected_address == BROWSER_B
    # the answerer's side of a restart keeps our credentials; a leg whose consent expired is revived
    for now in range(2, 40):
        agent.handle_timer(float(now))
    assert agent.next_event() == ConsentExpired(leg) and leg.state is IceLegState.EXPIRED
    ufrag = leg.local_ufrag
    agent.restart(leg, "new2", "m" * 24, new_local=False, now=40.0)
    assert leg.local_ufrag == ufrag and leg.state is IceLegState.CONNECTED
    agent.receive_datagram(check(leg), BROWSER_B, 40.5)
    assert only_response(agent, BROWSER_B).error_code is None
