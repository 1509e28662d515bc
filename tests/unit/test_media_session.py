"""RtpSession (symmetric RTP latching, RTCP, timeouts; sans-IO with a fake clock) and the RTP port allocator."""
from __future__ import annotations

import random

import pytest

from media.ports import PortAllocator, PortsExhausted
from media.rtcp import Bye, ReceiverReport, SenderReport, SourceDescription, parse_compound
from media.rtp import RtpPacket, is_rtcp, peek_header
from media.session import LatchChanged, MediaTimeout, RtcpReceived, RtpReceived, RtpSession

HINT = ("203.0.113.5", 40000)
NAT = ("198.51.100.7", 61000)


def rtp(seq: int, ssrc: int = 0xAAAA, ts: int | None = None, pt: int = 0) -> bytes:
    return RtpPacket(pt, seq & 0xFFFF, 160 * seq if ts is None else ts, ssrc, b"\xff" * 160).serialize()


def session(**kw) -> RtpSession:
    kw.setdefault("clock_rate", 8000)
    kw.setdefault("now", 0.0)
    kw.setdefault("payload_type", 0)
    kw.setdefault("rng", random.Random(5))
    kw.setdefault("ntp_offset", 1_700_000_000.0)
    return RtpSession(**kw)


def events(s: RtpSession) -> list:
    out = []
    while (e := s.next_event()) is not None:
        out.append(e)
    return out


# -- latching ----------------------------------------------------------------------------------------
def test_sends_to_the_sdp_hint_until_rtp_arrives_then_latches() -> None:
    s = session(remote=HINT)
    s.send_rtp(b"a", 0.0)
    assert [d.addr for d in s.datagrams_to_send(0.0)] == [HINT]
    s.receive_datagram(rtp(1), NAT, 0.02)                 # the peer is behind NAT: its packets come from elsewhere
    ev = events(s)
    assert ev[0] == LatchChanged(HINT, NAT, 0xAAAA, "first")
    assert isinstance(ev[1], RtpReceived) and ev[1].sequence == 1 and ev[1].addr == NAT
    s.send_rtp(b"b", 0.04)
    assert [d.addr for d in s.datagrams_to_send(0.04)] == [NAT]
    assert s.latched and s.remote == NAT


def test_strays_are_ignored_while_the_latched_source_is_active() -> None:
    s = session(remote=HINT)
    s.receive_datagram(rtp(1), NAT, 0.0)
    events(s)
    s.receive_datagram(rtp(2), ("192.0.2.66", 5004), 0.02)      # same SSRC from a stranger
    s.receive_datagram(rtp(3), NAT, 0.04)
    ev = events(s)
    assert [type(e) for e in ev] == [RtpReceived] and ev[0].sequence == 3
    assert s.stats.strays == 1 and s.remote == NAT


def test_relatch_after_the_old_source_times_out() -> None:
    s = session(remote=HINT, relatch_timeout=1.0)
    s.receive_datagram(rtp(1), NAT, 0.0)
    new = ("198.51.100.7", 61002)                              # NAT rebinding: new port, same SSRC
    s.receive_datagram(rtp(2), new, 0.5)
    assert s.remote == NAT and s.stats.strays == 1
    s.receive_datagram(rtp(3), new, 1.2)
    ev = [e for e in events(s) if isinstance(e, LatchChanged)]
    assert ev[-1] == LatchChanged(NAT, new, 0xAAAA, "timeout")
    assert s.remote == new


def test_relatch_on_new_ssrc_from_another_address() -> None:
    s = session(remote=HINT)
    s.receive_datagram(rtp(1, ssrc=1), NAT, 0.0)
    other = ("192.0.2.10", 30000)                             # after a transfer: another box, another source
    s.receive_datagram(rtp(900, ssrc=2), other, 0.02)
    ev = [e for e in events(s) if isinstance(e, LatchChanged)]
    assert ev[-1] == LatchChanged(NAT, other, 2, "ssrc")
    s2 = session(remote=HINT, relatch_on_ssrc=False)
    s2.receive_datagram(rtp(1, ssrc=1), NAT, 0.0)
    s2.receive_datagram(rtp(900, ssrc=2), other, 0.02)
    assert s2.remote == NAT and s2.stats.strays == 1


def test_latch_ip_only_accepts_only_the_sdp_ip() -> None:
    s = session(remote=HINT, latch_ip_only=True)
    s.receive_datagram(rtp(1), NAT, 0.0)
    assert not s.latched and s.stats.strays == 1 and not events(s)
    s.receive_datagram(rtp(2), (HINT[0], 40100), 0.02)      # same IP, NATed port: fine
    assert s.latched and s.remote == (HINT[0], 40100)


def test_new_ssrc_at_the_same_address_is_followed_without_relatching() -> None:
    s = session(remote=HINT)
    s.receive_datagram(rtp(1, ssrc=1), NAT, 0.0)
    s.receive_datagram(rtp(50, ssrc=2), NAT, 0.02)
    ev = events(s)
    assert sum(isinstance(e, LatchChanged) for e in ev) == 1
    assert s.reception() is s.sources[2]


def test_set_remote_restarts_learning() -> None:
    s = session(remote=HINT)
    s.receive_datagram(rtp(1), NAT, 0.0)
    s.set_remote(("192.0.2.1", 7000))
    assert not s.latched and s.remote == ("192.0.2.1", 7000)
    s.receive_datagram(rtp(2), ("192.0.2.1", 7002), 0.1)
    assert s.remote == ("192.0.2.1", 7002)


def test_nothing_sent_without_an_address_and_malformed_counted() -> None:
    s = session()
    s.send_rtp(b"x", 0.0)
    assert s.datagrams_to_send(0.0) == [] and s.stats.unsent == 1
    s.receive_datagram(b"\x80\x00\x00", NAT, 0.0)
    s.receive_datagram(b"\x00" * 20, NAT, 0.0)
    s.receive_datagram(bytes([0x80, 201, 0, 9]), NAT, 0.0)   # RTCP that claims too much
    assert s.stats.malformed == 3 and not s.latched


def test_relay_through_the_session_keeps_our_stream() -> None:
    s = session(remote=HINT, payload_type=None, ssrc=0x5E55)
    for i in range(3):
        s.relay(rtp(10 + i, ssrc=1), 0.02 * i)
    for i in range(3):
        s.relay(rtp(7000 + i, ssrc=2, ts=99 + 160 * i), 0.06 + 0.02 * i)
    hdrs = [peek_header(d.data) for d in s.datagrams_to_send(0.2)]
    seqs = [h[1] for h in hdrs]
    assert all(h[3] == 0x5E55 for h in hdrs)
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(6)]
    assert [h[2] - hdrs[0][2] for h in hdrs] == [0, 160, 320, 480, 640, 800]


# -- RTCP --------------------------------------------------------------------------------------------
def test_rtcp_report_on_the_interval_muxed() -> None:
    s = session(remote=HINT, cname="leg1@callpath")
    first = s.get_timer()
    assert first is not None and 1.25 <= first <= 3.75             # Tmin/2 randomised x[0.5, 1.5]
    for i in range(50):
        if i != 20:                                                 # one packet lost
            s.receive_datagram(rtp(i), NAT, 0.02 * i)
        s.send_rtp(b"\x00" * 160, 0.02 * i)
    s.datagrams_to_send(1.0)
    s.handle_timer(first)
    out = s.datagrams_to_send(first)
    assert len(out) == 1 and out[0].addr == NAT and out[0].rtcp is False and is_rtcp(out[0].data)
    sr, sdes = parse_compound(out[0].data)
    assert isinstance(sr, SenderReport) and sr.ssrc == s.ssrc
    assert sr.packet_count == 50 and sr.octet_count == 50 * 160
    assert isinstance(sdes, SourceDescription) and sdes.chunks[0].cname == b"leg1@callpath"
    (block,) = sr.reports
    assert block.ssrc == 0xAAAA and block.highest_seq == 49
    assert block.cumulative_lost == 1 and block.fraction_lost == 256 // 50
    nxt = s.get_timer()
    assert nxt is not None and first + 2.5 <= nxt <= first + 7.5


def test_rr_when_not_sending_and_rtcp_on_port_plus_one_when_not_muxed() -> None:
    s = session(remote=HINT, rtcp_mux=False)
    s.receive_datagram(rtp(1), NAT, 0.0)
    s.handle_timer(10.0)
    (d,) = s.datagrams_to_send(10.0)
    assert d.addr == (NAT[0], NAT[1] + 1) and d.rtcp is True
    assert isinstance(parse_compound(d.data)[0], ReceiverReport)
    # symmetric RTCP: once the peer's RTCP arrives on our RTCP port, answer where it came from
    peer_rr = ReceiverReport(0xAAAA).serialize()
    s.receive_datagram(peer_rr, (NAT[0], 61555), 10.5, rtcp_port=True)
    s.handle_timer(20.0)
    (d,) = s.datagrams_to_send(20.0)
    assert d.addr == (NAT[0], 61555)


def test_rtcp_from_a_stranger_is_ignored() -> None:
    s = session(remote=HINT)
    s.receive_datagram(rtp(1), NAT, 0.0)
    events(s)
    s.receive_datagram(ReceiverReport(5).serialize(), ("192.0.2.99", 1), 0.1)
    assert not events(s) and s.stats.strays == 1


def test_round_trip_time_between_two_sessions() -> None:
    """A <-> B over a fake network with 40 ms one way: A's RtcpReceived reports an RTT of 80 ms."""
    a_addr, b_addr = ("10.0.0.1", 20000), ("10.0.0.2", 30000)
    a = session(remote=b_addr, rng=random.Random(1), ntp_offset=1_700_000_000.0)
    b = session(remote=a_addr, rng=random.Random(2), ntp_offset=1_700_000_123.0)   # clocks need not agree
    wire: list[tuple[float, RtpSession, bytes, tuple]] = []
    now = 0.0
    got = []
    while now < 20.0:
        for s, me in ((a, a_addr), (b, b_addr)):
            s.send_rtp(b"\x00" * 160, now)
            timer = s.get_timer()
            if timer is not None and timer <= now:
                s.handle_timer(now)
            for d in s.datagrams_to_send(now):
                wire.append((now + 0.04, b if s is a else a, d.data, me))
        for item in [w for w in wire if w[0] <= now]:
            wire.remove(item)
            item[1].receive_datagram(item[2], item[3], now)
        got += [e for e in events(a) if isinstance(e, RtcpReceived) and e.rtt is not None]
        events(b)
        now = round(now + 0.02, 6)
    assert got, "A never got a report echoing its SR"
    assert got[-1].rtt == pytest.approx(0.08, abs=0.021)       # 20 ms tick quantisation
    assert got[-1].report is not None and got[-1].report.ssrc == a.ssrc
    assert got[-1].report.fraction_lost == 0 and a.stats.last_rtt == got[-1].rtt


def test_close_sends_bye() -> None:
    s = session(remote=HINT)
    s.send_rtp(b"x", 0.0)
    s.datagrams_to_send(0.0)
    s.close(1.0, b"hangup")
    (d,) = s.datagrams_to_send(1.0)
    packets = parse_compound(d.data)
    assert isinstance(packets[0], SenderReport) and isinstance(packets[-1], Bye)
    assert packets[-1].ssrcs == [s.ssrc] and packets[-1].reason == b"hangup"
    assert s.get_timer() is None
    s.send_rtp(b"y", 1.1)
    assert s.datagrams_to_send(1.1) == []


# -- media timeout -----------------------------------------------------------------------------------
def test_media_timeout_once_then_again_after_rtp_returns() -> None:
    s = session(remote=HINT, media_timeout=10.0, rtcp_interval=100.0)
    s.receive_datagram(rtp(1), NAT, 1.0)
    events(s)
    assert s.get_timer() == pytest.approx(11.0)
    s.handle_timer(10.9)
    assert not events(s)
    s.handle_timer(11.0)
    assert events(s) == [MediaTimeout(10.0, 1.0)]
    s.handle_timer(15.0)
    assert not events(s)
    s.receive_datagram(rtp(2), NAT, 16.0)
    events(s)
    s.handle_timer(26.0)
    assert [type(e) for e in events(s)] == [MediaTimeout]


def test_media_timeout_counts_from_start_when_nothing_ever_arrives() -> None:
    s = session(remote=HINT, media_timeout=5.0, rtcp_interval=100.0, now=100.0)
    assert s.get_timer() == pytest.approx(105.0)
    s.handle_timer(105.0)
    assert events(s) == [MediaTimeout(5.0, None)]
    quiet = session(remote=HINT, media_timeout=None, rtcp_interval=100.0)
    quiet.handle_timer(1000.0)
    assert not [e for e in events(quiet) if isinstance(e, MediaTimeout)]


# -- ports -------------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_ports_even_and_exhaustion_message() -> None:
    alloc = PortAllocator(30001, 30010, clock=FakeClock())
    ports = [alloc.allocate() for _ in range(4)]
    assert ports == [30002, 30004, 30006, 30008]               # 30010 has no RTCP port inside the range
    assert alloc.capacity == 4 and alloc.in_use == 4
    with pytest.raises(PortsExhausted, match=r"30001-30010: 4 in use, 0 in quarantine"):
        alloc.allocate()


def test_ports_quarantine_before_reuse() -> None:
    clock = FakeClock()
    alloc = PortAllocator(40000, 40003, quarantine=5.0, clock=clock)
    a, b = alloc.allocate(), alloc.allocate()
    alloc.release(a)
    clock.t = 4.9
    with pytest.raises(PortsExhausted, match="1 in quarantine"):
        alloc.allocate()
    clock.t = 5.0
    assert alloc.available == 1 and alloc.allocate() == a
    with pytest.raises(ValueError):
        alloc.release(12345)
    alloc.release(b)
    with pytest.raises(ValueError):
        alloc.release(b)


def test_ports_reuse_least_recently_released_first() -> None:
    clock = FakeClock()
    alloc = PortAllocator(10000, 10099, quarantine=1.0, clock=clock)
    first = [alloc.allocate() for _ in range(50)]
    for p in first[:3]:
        alloc.release(p)
    clock.t = 2.0
    assert alloc.available == 3
    assert [alloc.allocate() for _ in range(3)] == first[:3]


def test_ports_step_one_and_bad_ranges() -> None:
    alloc = PortAllocator(5000, 5002, step=1, clock=FakeClock())
    assert [alloc.allocate() for _ in range(3)] == [5000, 5001, 5002]
    with pytest.raises(ValueError):
        PortAllocator(6000, 5000)
    with pytest.raises(ValueError):
        PortAllocator(5001, 5001)


def test_peer_bye_and_ipv6_sockaddr() -> None:
    s = session(remote=("2001:db8::5", 4000))
    s.receive_datagram(rtp(1), ("2001:db8::5", 4000, 0, 0), 0.0)
    assert s.remote == ("2001:db8::5", 4000)
    bye = Bye([0xAAAA], b"bye").serialize()
    s.receive_datagram(bye, ("2001:db8::5", 4000, 0, 0), 0.1)
    (ev,) = [e for e in events(s) if isinstance(e, RtcpReceived)]
    assert ev.packets == [Bye([0xAAAA], b"bye")] and ev.report is None and ev.rtt is None


def test_media_timeout_waits_while_the_peer_is_on_hold() -> None:
    """A peer whose SDP says recvonly/inactive sends nothing: no timeout then, and a fresh count on resume."""
    s = session(remote=HINT, media_timeout=10.0, rtcp_interval=1000.0)
    s.receive_datagram(rtp(1), NAT, 1.0)
    events(s)

    def timeouts() -> list:
        return [e for e in events(s) if isinstance(e, MediaTimeout)]

    s.expect_media(False, 5.0)                 # re-INVITE: on hold
    s.handle_timer(300.0)
    assert not timeouts()
    s.expect_media(True, 310.0)                # resumed: counts from here, not from the last packet
    s.handle_timer(319.0)
    assert not timeouts()
    s.handle_timer(320.0)
    assert timeouts() == [MediaTimeout(10.0, 1.0)]     # idle: how long media was expected and absent
