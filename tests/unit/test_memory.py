"""What a finished call, registration or connection leaves behind: nothing, and nothing for the cyclic GC.

A SIP server makes and drops hundreds of objects per call. Any reference cycle among them (a transaction's
owner that keeps the transaction, a call's event handler that keeps the bridge that keeps the call) turns
each finished call into cyclic garbage that only a full collection frees; with the server's GC thresholds
those run minutes apart, so memory climbed about 12 KB per proxied call and 28 KB per back-to-back call,
and each full collection stalled the loop walking it (issue "Long-running load"). These tests run N
operations with the collector off, let every timer expire, and then require both: no live per-call object,
and nothing that only the cyclic GC could have freed.
"""
from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter

import pytest

from sipcore.message import make_response, parse_message
from sipcore.proxy import ProxyContext
from sipcore.transaction import ClientTransaction, Flow, ServerTransaction
from sipcore.ua import Call

from test_proxy_core import Harness, digest_header, register, status
from gc_checks import collector_off, cyclic_garbage, live


def expire_transactions(*stacks) -> None:
    """Fire every transaction timer (J, K, L, M...) as if a minute had passed."""
    for stack in stacks:
        stack.layer.handle_timer(time.monotonic() + 120)
        stack.flush()
        assert len(stack.layer) == 0


def _crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


async def _proxied_call(h: Harness, n: int, ending: str = "bye") -> None:
    """alice (127.0.0.1:5070) calls bob (registered at 127.0.0.1:5080) through the proxy, the callee answering
    what the proxy forwarded and the caller following the Record-Route. `ending`: "bye" (180, 200, ACK, BYE,
    200), "cancel" (180, then the caller's CANCEL: 200, 487, ACK) or "busy" (486, ACK)."""
    bob = Flow("udp", ("127.0.0.1", 5080))
    alice = Flow("udp", ("127.0.0.1", 5070))
    call_id = f"leak-{ending}-{n}"
    head = (f"From: <sip:alice@127.0.0.1>;tag=a{n}\nCall-ID: {call_id}\nMax-Forwards: 70\n")
    h.stack.receive(_crlf(
        f"INVITE sip:bob@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKi{n};rport\n{head}"
        f"To: <sip:bob@127.0.0.1>\nCSeq: 1 INVITE\nContact: <sip:alice@127.0.0.1:5070>\nContent-Length: 0\n\n"), alice)
    for _ in range(3):
        await asyncio.sleep(0)
    fwd = parse_message(next(d for d in h.wire.take() if d.startswith(b"INVITE")))
    if ending == "busy":
        h.stack.receive(make_response(fwd, 486, to_tag=f"b{n}").to_bytes(), bob)
        sent = h.wire.take()
        assert sum(d.startswith(b"ACK") for d in sent) == 1 and [status(d) for d in sent if d.startswith(b"SIP")] == [486]
        h.stack.receive(_crlf(
            f"ACK sip:bob@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKi{n};rport\n{head}"
            f"To: <sip:bob@127.0.0.1>;tag=b{n}\nCSeq: 1 ACK\nContent-Length: 0\n\n"), alice)
        assert h.wire.take() == []
        return
    h.stack.receive(make_response(fwd, 180, to_tag=f"b{n}").to_bytes(), bob)
    if ending == "cancel":
        h.stack.receive(_crlf(
            f"CANCEL sip:bob@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKi{n};rport\n{head}"
            f"To: <sip:bob@127.0.0.1>\nCSeq: 1 CANCEL\nContent-Length: 0\n\n"), alice)
        cancel = parse_message(next(d for d in h.wire.take() if d.startswith(b"CANCEL")))
        h.stack.receive(make_response(cancel, 200).to_bytes(), bob)
        h.stack.receive(make_response(fwd, 487, to_tag=f"b{n}").to_bytes(), bob)
        assert [status(d) for d in h.wire.take() if d.startswith(b"SIP")] == [487]
        h.stack.receive(_crlf(
            f"ACK sip:bob@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKi{n};rport\n{head}"
            f"To: <sip:bob@127.0.0.1>;tag=b{n}\nCSeq: 1 ACK\nContent-Length: 0\n\n"), alice)
        return
    ok = make_response(fwd, 200, to_tag=f"b{n}")
    ok.add("Contact", "<sip:bob@127.0.0.1:5080>")
    h.stack.receive(ok.to_bytes(), bob)
    replies = [parse_message(d) for d in h.wire.take()]
    assert [r.status for r in replies] == [180, 200]
    route = replies[-1].get("record-route")
    for seq, method in ((1, "ACK"), (2, "BYE")):
        h.stack.receive(_crlf(
            f"{method} sip:bob@127.0.0.1:5080 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{method}{n};rport\n"
            f"Route: {route}\n{head}To: <sip:bob@127.0.0.1>;tag=b{n}\nCSeq: {seq} {method}\nContent-Length: 0\n\n"),
            alice)
    sent = h.wire.take()
    bye = parse_message(next(d for d in sent if d.startswith(b"BYE")))
    h.stack.receive(make_response(bye, 200).to_bytes(), bob)
    assert [status(d) for d in h.wire.take()] == [200]


@pytest.mark.parametrize("ending", ["bye", "cancel", "busy"])
async def test_proxied_calls_leave_no_state_and_no_cyclic_garbage(ending):
    h = Harness(auth=False)
    h.stack.receive(_crlf(register(user="bob", contact="<sip:bob@127.0.0.1:5080>", call_id="reg-bob")),
                    Flow("udp", ("127.0.0.1", 5080)))
    await asyncio.sleep(0)
    h.wire.take()
    with collector_off():
        for n in range(60):
            await _proxied_call(h, n, ending)
        expire_transactions(h.stack)
        assert live(ProxyContext, ServerTransaction, ClientTransaction) == 0
        assert cyclic_garbage() == Counter()


async def test_authenticated_registrations_leave_no_cyclic_garbage():
    h = Harness(auth=True)
    with collector_off():
        for n in range(60):
            (challenge,) = [d for d in [*(await h.send(register(call_id=f"r{n}", cseq=1)))]]
            assert status(challenge) == 401
            (ok,) = await h.send(register(call_id=f"r{n}", cseq=2,
                                          extra=digest_header(challenge, "alice", "secret")))
            assert status(ok) == 200
        expire_transactions(h.stack)
        assert live(ServerTransaction) == 0
        assert cyclic_garbage() == Counter()


async def test_back_to_back_calls_are_freed_when_the_user_agents_forget_them():
    """Answered calls hung up by either side, CANCELled and busy ones, through a BackToBack."""
    from sipcore.b2bua import BackToBack, BridgedCall
    from test_b2bua import NUMBER, Trio, connect
    from test_ua import Ended, Failed, Ringing, expect, make_endpoint, until

    eps = [await make_endpoint(linger=0.01) for _ in range(3)]
    caller, middle, callee = eps
    b2b = BackToBack(middle.ua, {NUMBER: f"sip:bob@127.0.0.1:{callee.port}"})
    middle.ua.on_invite = b2b.on_invite
    t = Trio(caller, middle, callee, b2b)
    try:
        with collector_off():
            for n in range(20):
                if n % 4 == 2:                       # the caller gives up while the callee rings
                    call = t.dial()
                    inc = await t.incoming()
                    inc.ring(180)
                    await expect(call, Ringing)
                    call.cancel()
                    await expect(call, Failed)
                    await expect(inc, Ended)
                elif n % 4 == 3:                     # the callee is busy
                    call = t.dial()
                    inc = await t.incoming()
                    inc.reject(486)
                    await expect(call, Failed)
                else:                                # answered, then either side hangs up
                    call, inc = await connect(t)
                    (call if n % 2 else inc).hangup()
                    await expect(inc if n % 2 else call, Ended)
                await until(lambda: not b2b.calls)
            for ep in eps:
                ep.sent.clear()
            await asyncio.sleep(0.05)
            expire_transactions(*(ep.stack for ep in eps))
            await until(lambda: all(not ep.ua.calls for ep in eps))
            del call, inc
            assert live(Call, BridgedCall) == 0
            garbage = cyclic_garbage()
            assert garbage == Counter(), garbage.most_common(12)
    finally:
        for ep in eps:
            ep.ua.close()
            await ep.stack.close()


def test_lag_stats_percentiles_over_a_trailing_span():
    from sipcore.loadmonitor import LagStats

    stats = LagStats(window=60.0)
    for i in range(1000):                      # 50 s of 50 ms probes: 0-9 ms late, one 300 ms stall at 25 s
        stats.add(0.3 if i == 500 else (i % 10) / 1000.0, i * 0.05)
    last10 = stats.summary(10.0, 49.95)
    assert last10["samples"] == 201 and last10["max_ms"] == 9.0 and last10["p99_ms"] == 9.0
    assert last10["p50_ms"] == 5.0
    assert stats.summary(30.0, 49.95)["max_ms"] == 300.0
    stats.add(0.001, 200.0)                    # samples older than the window are dropped
    assert stats.summary(300.0, 200.0)["samples"] == 1
    assert stats.max_ever == 0.3
    assert stats.summary(5.0, 500.0) == {"samples": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}


def test_gc_watch_times_collections():
    from web.runtime import GcWatch, rss_bytes

    now = [100.0]
    watch = GcWatch(clock=lambda: now[0]).install()
    try:
        gc.collect(0)
        gc.collect()
    finally:
        watch.uninstall()
    summary = watch.summary(30.0)
    assert summary["generations"][0]["collections"] >= 1 and summary["generations"][2]["collections"] >= 1
    assert summary["max_pause_since_start_ms"] >= 0.0
    now[0] += 60.0
    assert watch.summary(30.0)["generations"][2]["collections"] == 0
    assert rss_bytes() > 10 * 2**20


async def test_gc_schedule_collects_the_young_every_tick_and_everything_now_and_then():
    from web.runtime import GcSchedule, GcWatch

    watch = GcWatch().install()
    try:
        schedule = GcSchedule(young_every=1.0, full_every=10.0)
        done = [schedule.tick(float(t)) for t in range(0, 25)]     # one tick a second for 25 s
    finally:
        watch.uninstall()
    assert done.count(2) == 2 and done[10] == 2 and done[20] == 2   # a full collection every 10 s
    assert schedule.young == 23 and schedule.full == 2
    generations = watch.summary(60.0)["generations"]
    assert generations[1]["collections"] >= 23 and generations[2]["collections"] >= 2
    never = GcSchedule(full_every=0)
    assert {never.tick(float(t)) for t in range(0, 10000, 100)} == {1}
    ticking = GcSchedule(young_every=0.001)                         # the loop drives tick()
    task = asyncio.get_running_loop().create_task(ticking.run())
    for _ in range(5000):
        if ticking.young >= 3:
            break
        await asyncio.sleep(0.001)
    task.cancel()
    assert ticking.young >= 3


def test_gc_full_interval_setting_is_checked():
    from web.settings import SettingsError, load_settings

    assert load_settings(None, env={}).server.gc_full_interval == 3600
    assert load_settings(None, env={"CALLPATH_SERVER_GC_FULL_INTERVAL": "0"}).server.gc_full_interval == 0
    with pytest.raises(SettingsError, match="gc_full_interval"):
        load_settings(None, env={"CALLPATH_SERVER_GC_FULL_INTERVAL": "-5"})
