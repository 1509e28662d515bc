"""What a finished media call leaves in a worker: nothing, and nothing for the cyclic GC.

A worker serves offer/answer/delete for every call with media anchoring. Two reference cycles made each finished
call cyclic garbage (about 35 KiB of it, freed only by a full collection): a plain-RTP leg's socket protocol
kept its transport and its ``PlainRtpPort`` (which keep it) after the socket closed, holding the whole call
(SDPs, sessions, bridge) through the leg callbacks; and each browser leg's DTLS connection had its own
pyOpenSSL verify callback, which pyOpenSSL wraps in a helper referring to itself through a cffi callback.
These tests run rounds of calls with the collector off and then require: no per-call state in the worker,
every port back in the allocator, every socket closed, the same number of media/SDP objects after each round,
and nothing that only the cyclic GC could free.
"""
from __future__ import annotations

import asyncio
import gc
import os
import struct
from collections import Counter

import pytest

from media.certificate import DtlsCertificate
from media.client import MediaClient, MediaControlError
from media.control import ControlServer
from media.dtls import DtlsEndpoint, DtlsFailed, HandshakeComplete
from media.relay import available as relay_available
from media.srtp import AES128_CM_SHA1_80, CryptoAttribute, sdes_context
from media.worker import MediaSettings, MediaWorker
from media.sdp import SessionDescription, create_answer, create_offer

from media_ports import free_udp_range
from rtp_peers import RtpPeer
from gc_checks import collector_off, cyclic_garbage

HOST = "127.0.0.1"
ROUNDS = 3
CALLS = 60          # per round: a mix of plain RTP, SDES, browser caller and browser callee
CERT = DtlsCertificate.generate()    # the "browser's" certificate: only its fingerprint goes in the SDP


def media_objects() -> Counter:
    """Live objects of callpath's media and SIP/SDP classes, by type (what a call is made of)."""
    found: Counter = Counter()
    for o in gc.get_objects():
        module = type(o).__dict__.get("__module__")
        if isinstance(module, str) and module.startswith(("media.", "sipcore.")):
            found[type(o).__qualname__] += 1
    return found


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def browser_sdp(n: int, setup: str) -> str:
    """A browser's audio section (full ICE, DTLS fingerprint, rtcp-mux): an offer (actpass) or answer (active)."""
    return "\r\n".join([
        "v=0", f"o=- {1000 + n} 1 IN IP4 {HOST}", "s=-", "t=0 0", "a=group:BUNDLE 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 0 126", f"c=IN IP4 {HOST}", "a=mid:0",
        "a=rtpmap:111 opus/48000/2", "a=rtpmap:0 PCMU/8000", "a=rtpmap:126 telephone-event/48000",
        f"a=ice-ufrag:br{n:06d}", f"a=ice-pwd:browserpassword{n:010d}", f"a=fingerprint:{CERT.sdp_fingerprint}",
        f"a=setup:{setup}", "a=rtcp-mux", f"a=candidate:1 1 udp 2130706431 {HOST} 9 typ host", "a=sendrecv", ""])


def rtp(seq: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, 160 * seq, ssrc) + b"\x7f" * 160


class Calls:
    """Makes call ``n`` through ``api`` (a MediaWorker or a MediaClient): offer, answer, some media, delete.
    The kind goes round: trunk to trunk, SDES trunk to trunk, browser to trunk, trunk to browser."""

    def __init__(self, api, a: RtpPeer, b: RtpPeer) -> None:
        self.api, self.a, self.b = api, a, b

    async def call(self, n: int) -> None:
        api, a, b = self.api, self.a, self.b
        call_id, kind = f"mem-{n}", n % 4
        if kind == 0:                               # plain RTP both sides; every 8th call sends media
            offer = create_offer(HOST, a.port, [("PCMU", 8000), ("telephone-event", 8000)]).to_bytes()
            to_b = SessionDescription.parse(await api.offer(call_id, "a", offer, "RTP/AVP"))
            answer = create_answer(to_b, [("PCMU", 8000), ("telephone-event", 8000)], HOST, b.port)
            to_a = SessionDescription.parse(await api.answer(call_id, "a", "b", answer.to_bytes()))
            if n % 8 == 0:
                for seq in range(3):
                    a.transport.sendto(rtp(seq, 0xA), (HOST, to_a.media[0].port))
                    b.transport.sendto(rtp(seq, 0xB), (HOST, to_b.media[0].port))
                    await asyncio.sleep(0.02)
        elif kind == 1:                             # SDES-SRTP caller, plain callee
            key = CryptoAttribute.generate(AES128_CM_SHA1_80, 1)
            offer = (f"v=0\r\no=- {n} 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
                     f"m=audio {a.port} RTP/SAVP 0\r\na=crypto:{key}\r\n")
            to_b = SessionDescription.parse(await api.offer(call_id, "a", offer, "RTP/AVP"))
            answer = create_answer(to_b, [("PCMU", 8000)], HOST, b.port)
            to_a = SessionDescription.parse(await api.answer(call_id, "a", "b", answer.to_bytes()))
            ours = CryptoAttribute.parse(to_a.media[0].attributes("crypto")[0])
            a.transport.sendto(sdes_context(key, ours).protect(rtp(1, 0xA)), (HOST, to_a.media[0].port))
        elif kind == 2:                             # browser calls a trunk
            to_b = SessionDescription.parse(await api.offer(call_id, "a", browser_sdp(n, "actpass")))
            answer = create_answer(to_b, [("PCMU", 8000)], HOST, b.port)
            await api.answer(call_id, "a", "b", answer.to_bytes())
        else:                                       # a trunk calls a browser
            offer = create_offer(HOST, a.port, [("PCMU", 8000), ("telephone-event", 8000)]).to_bytes()
            await api.offer(call_id, "a", offer)
            await api.answer(call_id, "a", "b", browser_sdp(n, "active"))
        await api.delete(call_id)
        a.received.clear()
        b.received.clear()


async def _peers() -> tuple[RtpPeer, RtpPeer]:
    loop = asyncio.get_running_loop()
    peers = []
    for _ in range(2):
        _, peer = await loop.create_datagram_endpoint(RtpPeer, local_addr=(HOST, 0))
        peers.append(peer)
    return peers[0], peers[1]


async def _worker(c_relay: bool) -> MediaWorker:
    base = free_udp_range(40)
    worker = await MediaWorker.start(MediaSettings(bind_host=HOST, rtp_port_min=base, rtp_port_max=base + 39,
                                                   c_relay=c_relay))
    worker.allocator.quarantine = 0.0     # ports come back at once: rounds of calls on a 20-port range
    return worker


def assert_worker_empty(worker: MediaWorker) -> None:
    assert worker.calls == {} and worker._ticking == {} and worker._touched == {} and worker._by_webrtc == {}
    assert worker.port.legs == {} and worker.port._handlers == {} and worker.port._leg_timers == {}
    assert worker.allocator.in_use == 0 and worker.allocator.available == worker.allocator.capacity
    if worker.relay is not None:
        assert worker.relay.stats()["rules"] == 0 and worker.relay.stats()["transcoders"] == 0
        assert len(worker.relay._endpoints) == 1       # the browser port's socket alone


async def _rounds(calls: Calls, settle) -> list[Counter]:
    """ROUNDS rounds of CALLS calls with the collector off; the media objects alive after each round."""
    after: list[Counter] = []
    n = 1
    for _ in range(ROUNDS):
        for _ in range(CALLS):
            await calls.call(n)
            n += 1
        await settle()
        after.append(media_objects())
    return after


@pytest.mark.parametrize("c_relay", [True, False], ids=["c-data-plane", "python-path"])
async def test_finished_calls_leave_no_state_and_no_cyclic_garbage(c_relay: bool):
    if c_relay and not relay_available():
        pytest.skip("the C data plane is not built")
    worker = await _worker(c_relay)
    a, b = await _peers()
    calls = Calls(worker, a, b)

    async def settle() -> None:
        for _ in range(3):                          # closed sockets' connection_lost (the asyncio path)
            await asyncio.sleep(0)

    try:
        for n in range(-4, 0):                      # every kind once: caches, codec tables, the DTLS context
            await calls.call(n)
        await settle()
        fds = open_fds()
        with collector_off():
            rounds = await _rounds(calls, settle)
            garbage = cyclic_garbage()
        assert_worker_empty(worker)
        assert open_fds() == fds
        assert garbage == Counter(), f"finished calls left cyclic garbage: {garbage.most_common(12)}"
        per_call = ("Connection", "MediaLeg", "LegInput", "PlainRtpPort", "_Socket", "RtpSession", "Bridge", "WebRtcLeg",
                    "DtlsEndpoint", "SrtpContext", "Forward", "TranscodeTick", "SessionDescription")
        assert {name: rounds[-1][name] for name in per_call if rounds[-1][name]} == {}
        assert rounds[1] == rounds[-1], "media objects grew from one round of calls to the next"
    finally:
        a.transport.close()
        b.transport.close()
        await worker.close()



async def _leg_round(worker: MediaWorker, a: RtpPeer, b: RtpPeer, n: int) -> None:
    """The leg model once: a caller alone with a beep and a recording, two agents (plain and browser) rung
    by our offers, connect, re-connect, a conference, DTMF sent, hold, then every leg closed."""
    caller, agent, browser = f"legs-{n}/caller", f"legs-{n}/agent", f"legs-{n}/web"
    offer = create_offer(HOST, a.port, [("PCMU", 8000), ("telephone-event", 8000)]).to_bytes()
    await worker.leg_remote_offer(caller, offer)
    to_caller = SessionDescription.parse(worker.leg_create_answer(caller)["sdp"])
    await worker.play(caller, beep_spec={"freq": 500, "ms": 60}, loop=True)
    worker.record(caller, f"/tmp/callpath-mem-{os.getpid()}.wav")
    ours = SessionDescription.parse(await worker.leg_offer(agent, transport="rtp"))
    worker.leg_answer(agent, create_answer(ours, [("PCMU", 8000)], HOST, b.port).to_bytes())
    await worker.leg_offer(browser, transport="webrtc")
    for seq in range(2):
        a.transport.sendto(rtp(seq, 0xA), (HOST, to_caller.media[0].port))
        b.transport.sendto(rtp(seq, 0xB), (HOST, ours.media[0].port))
        await asyncio.sleep(0.02)
    worker.connect(caller, agent)
    await worker.play(agent, beep_spec={"freq": 900, "ms": 40}, mix=True)
    worker.dtmf(caller, "1")
    await asyncio.sleep(0.04)
    worker.disconnect(agent)
    worker.conference_join(f"room-{n}", caller, "talk")
    worker.conference_join(f"room-{n}", agent, "listen")
    await asyncio.sleep(0.04)
    await worker.leg_remote_offer(agent, create_offer(HOST, b.port, [("PCMU", 8000)], direction="sendonly").to_bytes())
    worker.leg_create_answer(agent)
    worker.connect(caller, agent)
    for name in (caller, agent, browser):
        worker.leg_close(name)
    a.received.clear()
    b.received.clear()


@pytest.mark.parametrize("c_relay", [True, False], ids=["c-data-plane", "python-path"])
async def test_closed_legs_leave_no_state_and_no_cyclic_garbage(c_relay: bool):
    """The leg model's objects (legs, connections, conferences, inputs, prompts, recordings) are freed by
    reference counting when the legs close."""
    if c_relay and not relay_available():
        pytest.skip("the C data plane is not built")
    worker = await _worker(c_relay)
    a, b = await _peers()
    try:
        for n in range(-2, 0):
            await _leg_round(worker, a, b, n)
        for _ in range(3):
            await asyncio.sleep(0)
        with collector_off():
            after = []
            for r in range(3):
                for n in range(8):
                    await _leg_round(worker, a, b, 100 * r + n)
                for _ in range(3):
                    await asyncio.sleep(0)
                after.append(media_objects())
            garbage = cyclic_garbage()
        assert_worker_empty(worker)
        assert worker.legs == {} and worker.rooms == {} and worker.connections == {} and worker._solo == {}
        assert garbage == Counter(), f"closed legs left cyclic garbage: {garbage.most_common(12)}"
        per_leg = ("Connection", "MediaLeg", "LegInput", "Room", "PromptSource", "Overlay", "CallRecorder",
                   "PlainRtpPort", "RtpSession", "Bridge", "WebRtcLeg", "Forward", "SessionDescription")
        assert {name: after[-1][name] for name in per_leg if after[-1][name]} == {}
        assert after[1] == after[-1], "media objects grew from one round of legs to the next"
    finally:
        a.transport.close()
        b.transport.close()
        await worker.close()


async def test_control_client_and_server_keep_nothing_per_call():
    """The same calls through the control protocol (client and server in this process): the client's pending
    requests and event queue are empty afterwards, errors included, and nothing is left for the cyclic GC."""
    worker = await _worker(relay_available())
    server = ControlServer(worker)
    address = await server.listen(None, HOST, 0)
    client = await MediaClient.open(address)
    a, b = await _peers()
    calls = Calls(client, a, b)

    async def settle() -> None:
        await client.ping()                         # a round trip: every earlier reply has been read
        for _ in range(3):
            await asyncio.sleep(0)

    try:
        for n in range(-4, 0):
            await calls.call(n)
        await settle()
        with collector_off():
            rounds = await _rounds(calls, settle)
            for n in range(20):                     # refused requests free their futures too
                with pytest.raises(MediaControlError):
                    await client.delete(f"unknown-{n}")
            await settle()
            garbage = cyclic_garbage()
        assert client._pending == {} and client.events.empty()
        assert_worker_empty(worker)
        assert garbage == Counter(), f"finished calls left cyclic garbage: {garbage.most_common(12)}"
        assert rounds[1] == rounds[-1], "media objects grew from one round of calls to the next"
    finally:
        a.transport.close()
        b.transport.close()
        await client.close()
        await server.close()
        await worker.close()


def _pump(a: DtlsEndpoint, b: DtlsEndpoint) -> None:
    for _ in range(10):
        moved = False
        for src, dst in ((a, b), (b, a)):
            for datagram in src.datagrams_to_send():
                dst.receive_datagram(datagram, 0.0)
                moved = True
        if not moved:
            return


def test_dtls_endpoints_are_freed_by_reference_counting():
    """A DTLS-SRTP handshake, and one refused for a wrong fingerprint: the endpoints (and their OpenSSL
    connections and verify callbacks) are freed without the cyclic GC."""
    server_cert = DtlsCertificate.generate()

    def handshake(fingerprint: str) -> tuple[object, object]:
        server = DtlsEndpoint(server_cert, "server", [fingerprint])
        client = DtlsEndpoint(CERT, "client", [server_cert.sdp_fingerprint])
        server.start(0.0)
        client.start(0.0)
        _pump(client, server)
        events = server.next_event(), client.next_event()
        server.close()
        client.close()
        return events

    handshake(CERT.sdp_fingerprint)
    with collector_off():
        for _ in range(20):
            ok = handshake(CERT.sdp_fingerprint)
            refused = handshake(server_cert.sdp_fingerprint)       # not the client's certificate
        garbage = cyclic_garbage()
    assert isinstance(ok[0], HandshakeComplete) and isinstance(ok[1], HandshakeComplete)
    assert refused[0] == DtlsFailed("fingerprint mismatch")
    assert garbage == Counter(), f"DTLS endpoints left cyclic garbage: {garbage.most_common(12)}"
    del ok, refused
    assert media_objects()["DtlsEndpoint"] == 0
