"""Flood defences without sockets (issue 10): the per-source limiter on a fake clock, the kernel filter
program, stateless challenges, the 100 Trying armed after the TU's turn, and every cap's 503."""
from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest

from sipcore import sockfilter
from sipcore.limiter import SourceLimiter, parse_networks
from sipcore.message import parse_message
from sipcore.transaction import STATELESS_TAG, Flow, RequestReceived, TransactionLayer

from test_proxy_core import Harness, invite, register, status


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# -- limiter ---------------------------------------------------------------------------------------
def test_a_source_over_the_limit_is_blocked_for_the_block_time_and_then_released():
    clock = Clock()
    lim = SourceLimiter(limit=100, window=2.0, block_time=30.0, clock=clock)
    assert all(lim.allow("192.0.2.1") for _ in range(100))
    assert not lim.allow("192.0.2.1")           # the 101st in the window
    assert lim.changed() and not lim.changed()  # one rebuild of the kernel filter
    assert lim.allow("192.0.2.2")               # another source is not affected
    clock.t += 10
    assert not lim.allow("192.0.2.1")
    assert lim.blocked["192.0.2.1"].dropped == 2
    clock.t += 21
    lim.expire()
    assert not lim.blocked and lim.changed()
    assert lim.allow("192.0.2.1")               # served again, counted from zero
    snap = lim.snapshot()
    assert snap["blocks"] == 1 and snap["dropped"] == 2 and snap["blocked_now"] == 0


def test_a_steady_rate_just_under_the_limit_is_never_blocked_across_windows():
    clock = Clock()
    lim = SourceLimiter(limit=1000, window=2.0, clock=clock)
    for _ in range(20 * 450):   # 450 messages/s for 20 s = 900 per 2 s window
        assert lim.allow("198.51.100.7")
        clock.t += 1 / 450
    assert lim.stats["blocks"] == 0


def test_the_sliding_window_counts_the_previous_window_too():
    clock = Clock()
    lim = SourceLimiter(limit=1000, window=2.0, clock=clock)
    for _ in range(990):       # at the end of one window
        lim.allow("203.0.113.9")
    clock.t += 2.05            # just into the next: the previous 990 still weigh ~97 %
    allowed = sum(lim.allow("203.0.113.9") for _ in range(600))
    assert allowed < 600 and "203.0.113.9" in lim.blocked
    assert allowed <= 500      # blocked once the window's own count passes half the limit


def test_trusted_networks_are_never_counted():
    lim = SourceLimiter(limit=10, trusted=["192.0.2.0/24", "2001:db8::1"], clock=Clock())
    assert all(lim.allow("192.0.2.77") for _ in range(1000))
    assert all(lim.allow("2001:db8::1") for _ in range(1000))
    assert lim.stats["trusted"] == 2000 and not lim.blocked
    with pytest.raises(ValueError, match="not an address"):
        parse_networks(["10.0.0.300"])


def test_memory_is_bounded_under_a_many_source_flood():
    clock = Clock()
    lim = SourceLimiter(limit=10, max_sources=1000, max_blocked=50, clock=clock)
    for i in range(20000):
        ip = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        for _ in range(12):
            lim.allow(ip)
    assert len(lim._cur) <= 1001 and len(lim.blocked) <= 50


def test_zero_disables():
    lim = SourceLimiter(limit=0, clock=Clock())
    assert not lim.enabled and all(lim.allow("192.0.2.1") for _ in range(10_000))


# -- kernel filter ---------------------------------------------------------------------------------
def test_filter_program_layout():
    prog, count = sockfilter.build_program(["192.0.2.1", "::ffff:192.0.2.2", "2001:db8::5", "bogus"])
    assert count == 3
    assert len(prog) == 5 + 2 * 2 + 1 + 9 + 1
    assert prog[-1] == (sockfilter._RET_K, 0, 0, sockfilter.ACCEPT)
    v4 = [k for code, jt, jf, k in prog if code == sockfilter._JEQ_K and k > 6]
    assert v4[:2] == [0xC0000201, 0xC0000202]
    many = [f"10.0.{i >> 8}.{i & 255}" for i in range(5000)]
    prog, count = sockfilter.build_program(many)
    assert count == sockfilter.MAX_V4 and len(prog) <= sockfilter.MAX_INSNS


@pytest.mark.skipif(not sockfilter.supported(), reason="socket filters are Linux-only")
def test_the_kernel_drops_a_blocked_source_and_keeps_the_others():
    recv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    recv.bind(("127.0.0.1", 0))
    recv.settimeout(0.3)
    senders = []
    for ip in ("127.0.0.2", "127.0.0.3"):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((ip, 0))
        senders.append(s)
    try:
        before = sockfilter.kernel_drops(recv)
        sockfilter.attach(recv, ["127.0.0.2"])
        for s in senders:
            s.sendto(b"hello", recv.getsockname())
        data, addr = recv.recvfrom(100)
        assert addr[0] == "127.0.0.3"
        with pytest.raises(socket.timeout):
            recv.recvfrom(100)
        assert sockfilter.kernel_drops(recv) == before + 1
        sockfilter.attach(recv, [])  # nothing blocked: the filter goes
        senders[0].sendto(b"again", recv.getsockname())
        assert recv.recvfrom(100)[1][0] == "127.0.0.2"
    finally:
        recv.close()
        for s in senders:
            s.close()


# -- transaction layer ----------------------------------------------------------------------------
def _layer(**kw) -> TransactionLayer:
    return TransactionLayer(lambda flow: "SIP/2.0/UDP 127.0.0.1:5060", **kw)


INV = ("{m} sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{b}\r\n"
       "From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:bob@127.0.0.1>{totag}\r\nCall-ID: {b}\r\nCSeq: 1 {m}\r\n"
       "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n")


def _msg(b: str, m: str = "INVITE", totag: str = ""):
    return parse_message(INV.format(b=b, m=m, totag=totag).encode())


def test_a_stateless_reply_leaves_no_transaction_no_timer_and_its_ack_is_absorbed():
    layer = _layer()
    flow = Flow("udp", ("127.0.0.1", 5070))
    layer.receive(_msg("x1"), flow, 0.0)
    ev = layer.next_event()
    assert isinstance(ev, RequestReceived)
    resp = ev.tx.reply(407, stateless=True)
    assert resp.to.tag.startswith(STATELESS_TAG)
    assert len(layer) == 0 and layer.get_timer() is None and not layer._timers
    assert len(layer.datagrams_to_send()) == 1
    ack = _msg("x1", "ACK", f";tag={resp.to.tag}")
    layer.receive(ack, flow, 0.1)
    assert layer.next_event() is None and layer.stats["stateless_acks_absorbed"] == 1
    layer.handle_timer(60.0)
    assert layer.datagrams_to_send() == []  # no 407 retransmissions


def test_100_trying_is_armed_when_the_tu_has_not_answered():
    layer = _layer()
    flow = Flow("udp", ("127.0.0.1", 5070))
    layer.receive(_msg("y1"), flow, 10.0)
    layer.next_event()
    assert layer.get_timer() == pytest.approx(10.2)
    layer.handle_timer(10.2)
    (data, _), = layer.datagrams_to_send()
    assert data.startswith(b"SIP/2.0 100 ")


def test_at_the_transaction_cap_new_requests_get_a_stateless_503_but_cancel_and_in_dialog_pass():
    layer = _layer(max_transactions=2, retry_after=7)
    flow = Flow("udp", ("127.0.0.1", 5070))
    for b in ("a", "b"):
        layer.receive(_msg(b), flow, 0.0)
        layer.next_event()
    layer.datagrams_to_send()
    layer.receive(_msg("c"), flow, 0.0)
    (data, _), = layer.datagrams_to_send()
    assert data.startswith(b"SIP/2.0 503 ") and b"Retry-After: 7" in data
    assert layer.next_event() is None and len(layer) == 2 and layer.stats["refused_at_cap"] == 1
    layer.receive(_msg("a", "CANCEL"), flow, 0.0)
    assert isinstance(layer.next_event(), RequestReceived)
    layer.receive(_msg("d", "BYE", ";tag=z"), flow, 0.0)
    assert isinstance(layer.next_event(), RequestReceived)


# -- proxy -----------------------------------------------------------------------------------------
async def test_challenges_are_stateless_and_need_no_task():
    h = Harness(auth=True)
    (r,) = await h.send(register(call_id="s1"))
    assert status(r) == 401 and b"tag=" + STATELESS_TAG.encode() in r
    (r,) = await h.send(invite(to="1001"), src=("127.0.0.1", 5080))
    assert status(r) == 407
    (r,) = await h.send(invite(to="nobody"), src=("127.0.0.1", 5080))
    assert status(r) == 407  # challenged before the lookup: the flooder learns nothing about users
    assert len(h.stack.layer) == 0 and not h.proxy._tasks
    assert h.proxy.stats["challenged_stateless"] == 3
    (r,) = await h.send("OPTIONS sip:127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKo1\n"
                        "From: <sip:a@127.0.0.1>;tag=1\nTo: <sip:127.0.0.1>\nCall-ID: o1\nCSeq: 1 OPTIONS\n"
                        "Max-Forwards: 70\nContent-Length: 0\n\n")
    assert status(r) == 200  # the server's own OPTIONS (keep-alive pings) needs no credentials


async def test_at_the_task_cap_requests_get_503_with_retry_after():
    h = Harness(auth=False)
    h.proxy.max_tasks = 1
    h.proxy.retry_after = 9
    h.proxy._tasks.add(asyncio.get_running_loop().create_future())  # one handler still waiting
    (r,) = await h.send(register(call_id="t1"))
    assert status(r) == 503 and b"Retry-After: 9" in r
    assert h.proxy.stats["rejected_at_cap"] == 1 and len(h.stack.layer) == 0


# -- stream connections ----------------------------------------------------------------------------
class FakeTransport:
    def __init__(self, peer=("192.0.2.50", 40000)) -> None:
        self.peer, self.closed, self.aborted, self.out, self.backlog = peer, False, False, [], 0

    def get_extra_info(self, name, default=None):
        return self.peer if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def get_write_buffer_size(self) -> int:
        return self.backlog

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


async def test_a_connection_holding_an_incomplete_message_is_closed_and_one_that_does_not_read_is_dropped():
    from sipcore.stack import MAX_WRITE_BUFFER, PARTIAL_MESSAGE_TIMEOUT, SipStack, StreamConnection

    clock = Clock()
    stack = SipStack("127.0.0.1", clock=clock)
    stack._loop = asyncio.get_running_loop()
    slow, done = StreamConnection(stack, "tcp"), StreamConnection(stack, "tcp")
    slow.connection_made(FakeTransport())
    done.connection_made(FakeTransport(("192.0.2.51", 40001)))
    slow.data_received(b"REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.50")  # never finished
    done.data_received(b"\r\n\r\n")
    clock.t += PARTIAL_MESSAGE_TIMEOUT + 1
    stack._housekeeping()
    stack._limiter_timer.cancel()
    assert slow.transport.closed and not done.transport.closed
    assert stack.stats["stalled_connections_closed"] == 1
    done.transport.backlog = MAX_WRITE_BUFFER + 1
    done.send(b"OPTIONS ...")
    assert done.transport.aborted and stack.stats["slow_connections_closed"] == 1


async def test_connections_beyond_the_cap_or_from_a_blocked_source_are_refused():
    from sipcore.stack import SipStack, StreamConnection

    stack = SipStack("127.0.0.1", clock=Clock())
    stack._loop = asyncio.get_running_loop()
    stack.max_connections = 1
    first, second = StreamConnection(stack, "tcp"), StreamConnection(stack, "tcp")
    first.connection_made(FakeTransport())
    second.connection_made(FakeTransport(("192.0.2.60", 1)))
    assert not first.transport.aborted and second.transport.aborted and second.closed
    assert stack.stats["connections_refused"] == 1
    stack.max_connections = 0
    stack.set_limiter(SourceLimiter(limit=2, clock=Clock()))
    stack._limiter_timer.cancel()
    conns = [StreamConnection(stack, "tcp") for _ in range(3)]
    for c in conns:
        c.connection_made(FakeTransport(("192.0.2.70", 5)))
    assert [c.transport.aborted for c in conns] == [False, False, True]


async def test_in_dialog_requests_are_relayed_only_along_a_route_set_we_record_routed():
    h = Harness(auth=True)
    bye = ("BYE sip:victim@198.51.100.9:5060 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKrelay1\n"
           "From: <sip:a@127.0.0.1>;tag=1\nTo: <sip:victim@198.51.100.9>;tag=2\nCall-ID: relay1\nCSeq: 2 BYE\n"
           "Max-Forwards: 70\n{route}Content-Length: 0\n\n")
    (r,) = await h.send(bye.format(route=""))
    assert status(r) == 404 and b"Not Here" in r
    (r,) = await h.send(bye.format(route="Route: <sip:198.51.100.7;lr>\n").replace("relay1", "relay2"))
    assert status(r) == 404  # a pre-loaded foreign route is no route set of ours either
    h.wire.sent.clear()
    h.stack.receive(bye.format(route="Route: <sip:127.0.0.1:5060;lr>\n").replace("relay1", "relay3")
                    .replace("\n", "\r\n").encode(), Flow("udp", ("127.0.0.1", 5070)))
    await asyncio.sleep(0)
    assert [a for d, a in h.wire.sent if d.startswith(b"BYE")] == [("198.51.100.9", 5060)]
    assert h.proxy.stats["not_relayed"] == 2
    # an ACK that was never routed through us is dropped, not relayed
    h.wire.sent.clear()
    ack = bye.format(route="").replace("BYE", "ACK").replace("2 ACK", "1 ACK")
    h.stack.receive(ack.replace("\n", "\r\n").encode(), Flow("udp", ("127.0.0.1", 5070)))
    await asyncio.sleep(0)
    assert h.wire.sent == []
