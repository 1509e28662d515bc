"""The C data plane (media._relay) against the Python reference path, over real loopback sockets.

Each test sends datagrams to a socket the Relay reads, drains it, and compares what comes out (or back to
Python) with what media.rtp.RtpSender.relay / media.rtcp.ReceptionStats / pylibsrtp produce for the same
input: byte for byte, and the statistics value for value.
"""
from __future__ import annotations

import random
import select
import socket
import struct

import pytest

from media.rtcp import ReceptionStats
from media.rtp import RtpSender
from media.srtp import AES128_CM_SHA1_80, AEAD_AES_128_GCM, SrtpContext, SrtpError

_relay = pytest.importorskip("media._relay", reason="the C data plane is not built (no compiler)")

HOST = "127.0.0.1"


def udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    return sock


def rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes = b"\xff" * 160, marker: bool = False,
        b0: int = 0x80) -> bytes:
    return struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def recv_all(sock: socket.socket, timeout: float = 0.5) -> list[bytes]:
    out: list[bytes] = []
    while select.select([sock], [], [], timeout)[0]:
        out.append(sock.recv(65536))
        timeout = 0.02
    return out


class Fixture:
    """Relay reading socket `a` (in) and sending from `b` to `peer_b`; `peer_a` sends into `a`."""

    def __init__(self) -> None:
        self.relay = _relay.Relay()
        self.a, self.b, self.peer_a, self.peer_b = udp(), udp(), udp(), udp()
        self.relay.add_socket(self.a.fileno())
        self.relay.add_socket(self.b.fileno())

    def rule(self, **fields) -> "_relay.Rule":
        rule = _relay.Rule()
        for name, value in fields.items():
            setattr(rule, name, value)
        rule.set_output(self.b.fileno(), HOST, self.peer_b.getsockname()[1])
        self.relay.set_rule(self.a.fileno(), HOST, self.peer_a.getsockname()[1], rule)
        return rule

    def send(self, packets: list[bytes]) -> list:
        slow = []
        for packet in packets:
            self.peer_a.sendto(packet, self.a.getsockname())
            select.select([self.a], [], [], 0.5)
            slow += self.relay.drain(1.0)
        return slow

    def close(self) -> None:
        self.relay.close()
        for sock in (self.a, self.b, self.peer_a, self.peer_b):
            sock.close()


@pytest.fixture
def fx():
    f = Fixture()
    yield f
    f.close()


def python_relay(packets: list[bytes], out_pt: int) -> tuple[RtpSender, list[bytes]]:
    """The reference: the first packet sets the mapping, the rest go through RtpSender.relay."""
    sender = RtpSender(out_pt, 8000, ssrc=0x11223344, sequence=4000, timestamp=90000, rng=random.Random(1))
    out = [sender.relay(p, 1.0, out_pt) for p in packets]
    return sender, out


def test_forwarded_packets_are_rewritten_exactly_like_rtpsender_relay(fx: Fixture):
    ssrc = 0xCAFE0001
    packets = [rtp(0, 65530 + i, 4294960000 + 160 * i, ssrc, bytes([i]) * 160, marker=(i == 3)) for i in range(12)]
    packets.insert(5, packets[2])                                     # a duplicate, and a reordered pair:
    packets[8], packets[9] = packets[9], packets[8]
    sender, expected = python_relay(packets, 8)
    # the data plane takes over after the first packet, with the mapping the Python path set up
    ref = RtpSender(8, 8000, ssrc=0x11223344, sequence=4000, timestamp=90000)
    first = ref.relay(packets[0], 1.0, 8)
    source, seq_off, ts_off, highest = ref.relay_mapping()
    rule = fx.rule(in_pt=0, src_ssrc=source, out_pt=8, out_ssrc=ref.ssrc, seq_off=seq_off, ts_off=ts_off,
                   highest_out_seq=highest)
    assert fx.send(packets[1:]) == []
    got = [first] + recv_all(fx.peer_b)
    assert got[1:] == expected[1:] and got[0] == expected[0]
    # the counters and the stream state come back as RtpSender.relay left them
    packets_in, packets_out, octets, held, last_arrival, advanced = rule.take()
    assert (packets_in, packets_out, held, last_arrival, advanced) == (len(packets) - 1, len(packets) - 1, 0, 1.0, 1)
    ref.relayed(packets_out, octets, rule.highest_out_seq, rule.last_out_ts, rule.last_sent_at)
    for name in ("sequence", "timestamp", "packets_sent", "octets_sent", "last_timestamp", "last_sent_at"):
        assert getattr(ref, name) == getattr(sender, name), name
    assert ref.relay_mapping() == sender.relay_mapping()
    assert rule.take()[:4] == (0, 0, 0, 0)                            # take() zeroes


def test_header_extensions_csrcs_and_padding_pass_unchanged(fx: Fixture):
    ssrc = 0xCAFE0002
    ext = struct.pack("!HH", 0xBEDE, 1) + b"\x10\xaa\x00\x00"
    packets = [rtp(0, 10, 1600, ssrc, ext + b"\x01" * 160, b0=0x90),
               rtp(0, 11, 1760, ssrc, struct.pack("!I", 7) + b"\x02" * 160, b0=0x81),
               rtp(0, 12, 1920, ssrc, b"\x03" * 160 + b"\x00\x00\x03", b0=0xA0)]
    _, expected = python_relay([rtp(0, 9, 1440, ssrc)] + packets, 0)
    fx.rule(in_pt=0, src_ssrc=ssrc, out_pt=0, out_ssrc=0x11223344,
            seq_off=(4000 - 9) & 0xFFFF, ts_off=(90000 - 1440) & 0xFFFFFFFF, highest_out_seq=4000)
    assert fx.send(packets) == []
    assert recv_all(fx.peer_b) == expected[1:]


def test_what_the_rule_does_not_match_goes_back_to_python_untouched(fx: Fixture):
    ssrc = 0xCAFE0003
    fx.rule(in_pt=0, src_ssrc=ssrc, out_pt=0, out_ssrc=1, seq_off=0, ts_off=0)
    port = fx.peer_a.getsockname()[1]
    others = [
        rtp(101, 5, 800, ssrc, b"\x01\x0a\x00\xa0"),                  # a telephone-event
        rtp(0, 5, 800, ssrc + 1),                                    # another source
        bytes([0x80, 200]) + b"\x00\x06" + b"\x00" * 24,             # RTCP (rtcp-mux range)
        b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"\x00" * 12,          # STUN
        b"\x16\xfe\xfd" + b"\x00" * 20,                              # DTLS
        b"\x80\x00",                                                 # too short
        rtp(0, 5, 800, ssrc, b0=0x40),                               # RTP version 1
    ]
    slow = fx.send(others)
    assert [(fd, data, addr) for fd, data, addr in slow] == [(fx.a.fileno(), p, (HOST, port)) for p in others]
    # from an address without a rule: Python too
    stranger = udp()
    stranger.sendto(rtp(0, 6, 960, ssrc), fx.a.getsockname())
    select.select([fx.a], [], [], 0.5)
    assert fx.relay.drain(1.0) == [(fx.a.fileno(), rtp(0, 6, 960, ssrc), (HOST, stranger.getsockname()[1]))]
    stranger.close()
    assert recv_all(fx.peer_b, 0.05) == []
    assert fx.relay.stats()["slow"] == len(others) + 1


def test_hold_counts_packets_in_but_sends_nothing(fx: Fixture):
    ssrc = 0xCAFE0004
    rule = fx.rule(in_pt=0, src_ssrc=ssrc, out_pt=0, out_ssrc=1, seq_off=0, ts_off=0, hold_until=1.5)
    fx.send([rtp(0, i, 160 * i, ssrc) for i in range(3)])
    assert recv_all(fx.peer_b, 0.05) == []
    packets_in, packets_out, _, held, _, advanced = rule.take()
    assert (packets_in, packets_out, held, advanced) == (3, 0, 3, 0)
    rule.hold_until = 0.5
    fx.send([rtp(0, 3, 480, ssrc)])
    assert len(recv_all(fx.peer_b)) == 1


def _sequence(rng: random.Random, n: int) -> list[tuple[int, int, float]]:
    """(seq, ts, arrival) with loss, duplicates, reordering, jitter, a wrap and a restart."""
    seq, ts, t = 65000, 4294000000, 100.0
    out: list[tuple[int, int, float]] = []
    for i in range(n):
        if i == n // 2:
            seq = rng.randrange(65536)                              # the source restarts its numbering
        seq, ts, t = (seq + 1) & 0xFFFF, (ts + 160) & 0xFFFFFFFF, t + 0.02 + rng.uniform(-0.004, 0.012)
        roll = rng.random()
        if roll < 0.05:
            continue                                                 # lost
        out.append((seq, ts, t))
        if roll > 0.97:
            out.append((seq, ts, t + 0.001))                          # duplicated
    for i in range(0, len(out) - 1, 17):                              # reordered pairs
        out[i], out[i + 1] = out[i + 1], out[i]
    return out


def test_reception_statistics_match_receptionstats_exactly():
    """RFC 3550 A.1/A.8 in C against ReceptionStats.update, packet by packet, floats bit for bit."""
    rng = random.Random(7)
    relay, a, b, peer, sink = _relay.Relay(), udp(), udp(), udp(), udp()
    try:
        relay.add_socket(a.fileno())
        ssrc = 0xCAFE0005
        events = _sequence(rng, 600)
        python = ReceptionStats(ssrc, 8000)
        mirror = ReceptionStats(ssrc, 8000)
        first_seq, first_ts, first_t = events[0]
        python.update(first_seq, first_ts, first_t)
        mirror.update(first_seq, first_ts, first_t)
        rule = _relay.Rule()
        rule.in_pt, rule.src_ssrc, rule.out_pt = 0, ssrc, 0
        rule.set_output(b.fileno(), HOST, sink.getsockname()[1])
        rule.set_reception(*mirror.seq_state())
        relay.set_rule(a.fileno(), HOST, peer.getsockname()[1], rule)
        for seq, ts, t in events[1:]:
            python.update(seq, ts, t)
            peer.sendto(rtp(0, seq, ts, ssrc), a.getsockname())
            select.select([a], [], [], 0.5)
            assert relay.drain(t) == []
            mirror.set_seq_state(rule.reception())
            assert mirror.seq_state() == python.seq_state()
        assert python.expected > python.received > 0 and python.jitter > 0
    finally:
        relay.close()
        for sock in (a, b, peer, sink):
            sock.close()


@pytest.mark.parametrize("profile", [AES128_CM_SHA1_80, AEAD_AES_128_GCM], ids=lambda p: p.name)
def test_srtp_in_and_out_share_the_python_sessions(fx: Fixture, profile):
    """SRTP from a browser, unprotected in C, rewritten, protected to another browser, on the same libsrtp
    sessions the Python path uses: the receiver's pylibsrtp reads it, a replay is dropped, and the Python
    path carries on with the same contexts afterwards."""
    k = [bytes([n]) * profile.key_salt_length for n in range(1, 5)]
    browser_a = SrtpContext(profile, k[0], k[1])     # A's view: sends with k0
    leg_a = SrtpContext(profile, k[1], k[0])         # our leg towards A: receives k0
    leg_b = SrtpContext(profile, k[2], k[3])         # our leg towards B: sends with k2
    browser_b = SrtpContext(profile, k[3], k[2])     # B's view: receives k2
    ssrc = 0xCAFE0006
    clear = [rtp(111, 100 + i, 960 * i, ssrc, bytes([i]) * 40) for i in range(6)]
    ref = RtpSender(0, 8000, ssrc=0x55667788, sequence=7, timestamp=1000)
    expected = [ref.relay(p, 1.0, 0) for p in clear]
    ref2 = RtpSender(0, 8000, ssrc=0x55667788, sequence=7, timestamp=1000)
    ref2.relay(clear[0], 1.0, 0)
    source, seq_off, ts_off, highest = ref2.relay_mapping()
    handles_a, handles_b = leg_a.c_handles(), leg_b.c_handles()
    assert handles_a is not None and handles_b is not None, "pylibsrtp's cffi internals changed"
    # the first packet through Python, as the worker does before it installs the rule
    assert leg_a.unprotect(browser_a.protect(clear[0])) == clear[0]
    first = browser_b.unprotect(leg_b.protect(expected[0]))
    rule = fx.rule(in_pt=111, src_ssrc=source, out_pt=0, out_ssrc=ref2.ssrc, seq_off=seq_off, ts_off=ts_off,
                   highest_out_seq=highest)
    rule.set_srtp_in(*handles_a[0])
    rule.set_srtp_out(*handles_b[1])
    wire = [browser_a.protect(p) for p in clear[1:5]]
    assert fx.send(wire + [wire[1]]) == []                   # the last one is a replay
    got = [first] + [browser_b.unprotect(p) for p in recv_all(fx.peer_b)]
    assert got == expected[:5]
    assert rule.srtp_errors == 1 and fx.relay.stats()["dropped"] == 1
    # and the Python path goes on with the same sessions (replay window, rollover counter shared)
    assert leg_a.unprotect(browser_a.protect(clear[5])) == clear[5]
    with pytest.raises(SrtpError):
        leg_a.unprotect(wire[2])
    assert browser_b.unprotect(leg_b.protect(expected[5])) == expected[5]


def test_batched_send_protects_on_the_legs_session(fx: Fixture):
    """Relay.send protects RTP handed to it with the leg's outbound session (what WebRtcPort.send_rtp does
    while the worker is corked): the browser's context reads it, in order, and Python's protect carries on."""
    profile = AES128_CM_SHA1_80
    k1, k2 = b"\x01" * profile.key_salt_length, b"\x02" * profile.key_salt_length
    leg, browser = SrtpContext(profile, k1, k2), SrtpContext(profile, k2, k1)
    handles = leg.c_handles()
    assert handles is not None and handles is leg.c_handles()      # looked up once
    session, srtp_t, protect = handles[1]
    clear = [rtp(111, 500 + i, 960 * i, 0xABCD, bytes([i]) * 60) for i in range(4)]
    to = (HOST, fx.peer_b.getsockname()[1])
    items = [(fx.b.fileno(), p, to, srtp_t, protect, session) for p in clear[:3]]
    assert fx.relay.send(items + [(fx.b.fileno(), b"plain", to)]) == 0
    got = recv_all(fx.peer_b)
    assert [browser.unprotect(p) for p in got[:3]] == clear[:3] and got[3] == b"plain"
    assert browser.unprotect(leg.protect(clear[3])) == clear[3]
    assert fx.relay.stats()["protect_errors"] == 0
    with pytest.raises(ValueError, match="cannot send"):            # no room left for the SRTP trailer
        fx.relay.send([(fx.b.fileno(), b"\x80" * 4000, to, srtp_t, protect, session)])


def test_removing_a_socket_removes_its_rules(fx: Fixture):
    fx.rule(in_pt=0, src_ssrc=1, out_pt=0, out_ssrc=1, seq_off=0, ts_off=0)
    assert fx.relay.stats()["rules"] == 1
    fx.relay.remove_socket(fx.b.fileno())                    # the rule's output socket
    assert fx.relay.stats()["rules"] == 0


def test_bad_arguments_are_clear_errors():
    rule = _relay.Rule()
    with pytest.raises(ValueError, match="not an IP address"):
        rule.set_output(3, "not-an-ip", 5)
    with pytest.raises(ValueError, match="srtp_t"):
        rule.set_srtp_in(object())
    relay = _relay.Relay()
    with pytest.raises(ValueError, match="not an IP address"):
        relay.set_rule(3, "999.1.1.1", 5, rule)
    with pytest.raises(TypeError):
        relay.set_rule(3, HOST, 5, object())
    relay.del_rule(3, HOST, 5)                                # nothing there: no error
    relay.close()
    with pytest.raises(ValueError, match="closed"):
        relay.drain(0.0)
