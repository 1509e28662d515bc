"""Back-to-back calls with media anchored on callpath's media worker ([media] enabled = true).

1. SIPp caller (uac.xml, authenticated) -> callpath number 9000 -> SIPp UAS: both SDPs callpath sends
   (the offer to the UAS, the answer in the caller's 200) point at the media worker, not at the peer.
2. Audio: a caller and a callee built on sipcore's UserAgent in this process, each with an asyncio UDP
   endpoint sending a PCMU tone (440 Hz one way, 1 kHz the other, 20 ms packets); each must hear the other's
   tone, relayed by the worker.
3. The B2BUA's failure handling with a fake controller (no worker): a dead media plane passes SDP through,
   a failed answer fails the call with 500, and the media call is always deleted.

The worker binds and advertises 127.0.0.2 (loopback on Linux) so its address cannot be mistaken for the
peers' 127.0.0.1.
"""
from __future__ import annotations

import asyncio
import random
import re
import struct
import time

import pytest

from media.audio import as_samples, dominant_frequency, to_bytes, tone
from media.g711 import ulaw_decode, ulaw_encode
from sipcore.b2bua import BackToBack
from media.sdp import SessionDescription, create_answer, create_offer
from sipcore.stack import SipStack
from sipcore.ua import Answered, Confirmed, Ended, Failed, UserAgent
from sipp_harness import free_udp_port, run_sipp, start_callpath, start_sipp

from media_ports import free_udp_range  # noqa: E402

pytestmark = pytest.mark.integration

ALICE = ("alice", "secret", "1001")
MEDIA_IP = "127.0.0.2"
NUMBER = "9000"
CODECS = [("PCMU", 8000), ("telephone-event", 8000)]


def media_settings() -> dict:
    """A [media] section on a random 100-port slice of 20000-29999 (several test runs may share the host)."""
    low = free_udp_range(100)
    return {"enabled": True, "workers": 1, "listen": MEDIA_IP, "advertise": MEDIA_IP, "ice_port": 0,
            "rtp_port_min": low, "rtp_port_max": low + 99}


_TRACE_SPLIT = re.compile(r"-{20,}[^\n]*\n\w+ message (sent|received)[^\n]*\n")


def traced(log: str, direction: str) -> list[str]:
    """The SIP messages SIPp ``direction`` ("sent" / "received") in its -trace_msg output, in order."""
    parts = _TRACE_SPLIT.split(log)
    return [parts[i + 1].strip("\n") for i in range(1, len(parts) - 1, 2) if parts[i] == direction]


def sdp_of(message: str) -> SessionDescription | None:
    """The SDP body of one traced message (SIPp writes LF line ends), or None."""
    head, sep, body = message.replace("\r\n", "\n").partition("\n\n")
    if not sep or "v=0" not in body:
        return None
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    return SessionDescription.parse(("\r\n".join(lines) + "\r\n").encode())


def first(messages: list[str], start_line: str, cseq_method: str = "INVITE") -> str:
    for message in messages:
        lines = message.splitlines()
        cseq = next((l for l in lines if l.lower().startswith("cseq:")), "")
        if lines and lines[0].startswith(start_line) and cseq.rstrip().endswith(cseq_method) \
                and sdp_of(message) is not None:
            return message
    raise AssertionError(f"no {start_line!r} with SDP among {len(messages)} messages")


def address(sd: SessionDescription) -> tuple[str, int]:
    conn = sd.effective_connection(0)
    assert conn is not None
    return conn.address, sd.media[0].port


# -- 1. SIPp ----------------------------------------------------------------------------------------


def test_b2bua_anchors_media_on_the_worker(tmp_path):
    uas_port = free_udp_port()
    media = media_settings()
    low, high = media["rtp_port_min"], media["rtp_port_max"]
    server = start_callpath(tmp_path, users=[ALICE], media=media,
                            sip={"b2bua": [{"number": NUMBER, "target": f"sip:callee@127.0.0.1:{uas_port}"}]})
    try:
        assert "media worker 0 on ICE port" in server.output() and f"RTP ports {low}-{high}" in server.output()
        with start_sipp("uas.xml", local_port=uas_port, calls=1, timeout=20) as uas:
            result = run_sipp("uac.xml", server.target, local_port=free_udp_port(), users_csv=[ALICE[:2]],
                              service=NUMBER, duration_ms=300, keys=server.sipp_keys())
            result.check(calls=1)
            uas_result = uas.wait(timeout=15)
        uas_result.check(calls=1)
    finally:
        server.stop()
    assert server.returncode == 0, server.output()   # workers and control connections closed cleanly

    # what the UAS got: callpath's offer, on the worker's address and a port of the range
    offer = sdp_of(first(traced(uas_result.log, "received"), "INVITE sip:callee"))
    assert offer is not None
    host, port = address(offer)
    assert host == MEDIA_IP and low <= port <= high, offer.to_bytes().decode()

    # what the caller got in its 200: callpath's answer, on the worker too (not the UAS's address)
    caller_offer = sdp_of(first(traced(result.log, "sent"), "INVITE sip:"))
    assert caller_offer is not None and address(caller_offer)[0] == "127.0.0.1"
    answer = sdp_of(first(traced(result.log, "received"), "SIP/2.0 200"))
    assert answer is not None
    a_host, a_port = address(answer)
    assert a_host == MEDIA_IP and low <= a_port <= high, answer.to_bytes().decode()
    assert a_port != port  # one port pair per leg
    uas_answer = sdp_of(first(traced(uas_result.log, "sent"), "SIP/2.0 200"))
    assert uas_answer is not None and address(uas_answer)[0] == "127.0.0.1"
    assert answer.media[0].formats[0] == "0"  # PCMU end to end (passthrough)


# -- helpers: in-process SIP endpoints and RTP tone endpoints -------------------------------------------


class Endpoint:
    """A SipStack on 127.0.0.1 with a UserAgent as its transaction user."""

    def __init__(self, stack: SipStack, ua: UserAgent, port: int) -> None:
        self.stack, self.ua, self.port = stack, ua, port

    @classmethod
    async def open(cls) -> Endpoint:
        stack = SipStack("127.0.0.1")
        port = await stack.listen_udp("127.0.0.1", 0)
        ua = UserAgent(stack)
        stack.tu = ua
        return cls(stack, ua, port)

    async def close(self) -> None:
        self.ua.close()
        await self.stack.close()


async def expect(call, kind, timeout: float = 5.0):
    """The next event of ``call`` (skipping Ringing and Confirmed), which must be a ``kind``."""
    while True:
        ev = await call.next_event(timeout)
        if isinstance(ev, kind):
            return ev
        if type(ev).__name__ in ("Ringing", "Confirmed"):
            continue
        raise AssertionError(f"expected {kind.__name__}, got {ev!r}")


class ToneEndpoint(asyncio.DatagramProtocol):
    """A plain-RTP party: sends a PCMU tone in 20 ms packets to ``remote``, keeps the PCMU it receives."""

    def __init__(self, frequency: float) -> None:
        self.frequency = frequency
        self.transport: asyncio.DatagramTransport | None = None
        self.received: list[tuple[int, bytes]] = []   # (sequence, payload) of PT 0 packets
        self.remote: tuple[str, int] | None = None

    @classmethod
    async def open(cls, frequency: float) -> ToneEndpoint:
        loop = asyncio.get_running_loop()
        for _ in range(50):  # an even port, as RTP wants (RTCP would be on +1)
            try:
                _, endpoint = await loop.create_datagram_endpoint(
                    lambda: cls(frequency), local_addr=("127.0.0.1", 2 * random.randrange(12000, 14999)))
                return endpoint
            except OSError:
                continue
        raise RuntimeError("no free even UDP port")

    @property
    def port(self) -> int:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        if len(data) >= 12 and data[0] >> 6 == 2 and data[1] & 0x7F == 0:
            self.received.append((struct.unpack("!H", data[2:4])[0], data[12:]))

    async def send_tone(self, seconds: float) -> None:
        assert self.transport is not None and self.remote is not None
        pcm = tone(self.frequency, 8000, seconds, amplitude=0.4)
        payload = bytes(ulaw_encode(to_bytes(pcm)))
        ssrc = random.getrandbits(32)
        start = time.monotonic()
        for i in range(len(payload) // 160):
            header = struct.pack("!BBHII", 0x80, 0x80 if i == 0 else 0, i & 0xFFFF, (i * 160) & 0xFFFFFFFF, ssrc)
            self.transport.sendto(header + payload[i * 160:(i + 1) * 160], self.remote)
            await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - time.monotonic()))

    def heard(self) -> float:
        """The dominant frequency of the last second received."""
        frames = [payload for _, payload in sorted(self.received)]
        pcm = as_samples(bytes(ulaw_decode(b"".join(frames))))[-8000:]
        return dominant_frequency(pcm, 8000)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


# -- 2. audio through the worker -------------------------------------------------------------------------


async def test_tones_cross_the_media_worker(tmp_path):
    callee = await Endpoint.open()
    caller = await Endpoint.open()
    media = media_settings()
    low, high = media["rtp_port_min"], media["rtp_port_max"]
    server = await asyncio.to_thread(
        start_callpath, tmp_path, users=[ALICE], media=media,
        sip={"b2bua": [{"number": NUMBER, "target": f"sip:bob@127.0.0.1:{callee.port}"}]})
    a_rtp = await ToneEndpoint.open(440.0)
    b_rtp = await ToneEndpoint.open(1000.0)
    try:
        offer = create_offer("127.0.0.1", a_rtp.port, CODECS, username="alice", session_id="1").to_bytes()
        call = caller.ua.invite(f"sip:{NUMBER}@{server.target}", f"sip:alice@{server.domain}", offer,
                                credentials=ALICE[:2])
        incoming = await asyncio.wait_for(callee.ua.incoming.get(), 10)
        offer_b = SessionDescription.parse(incoming.remote_sdp)
        assert address(offer_b)[0] == MEDIA_IP and low <= address(offer_b)[1] <= high
        answer = create_answer(offer_b, CODECS, "127.0.0.1", b_rtp.port, username="bob", session_id="2")
        incoming.answer(answer.to_bytes())
        answered = await expect(call, Answered, 10)
        await expect(incoming, Confirmed)
        answer_a = SessionDescription.parse(answered.sdp)
        assert address(answer_a)[0] == MEDIA_IP and low <= address(answer_a)[1] <= high

        a_rtp.remote, b_rtp.remote = address(answer_a), address(offer_b)
        await asyncio.gather(a_rtp.send_tone(2.0), b_rtp.send_tone(2.0))
        await asyncio.sleep(0.2)
        assert len(a_rtp.received) > 50 and len(b_rtp.received) > 50, (len(a_rtp.received), len(b_rtp.received))
        assert abs(a_rtp.heard() - 1000.0) <= 15, a_rtp.heard()   # the caller hears the callee's 1 kHz
        assert abs(b_rtp.heard() - 440.0) <= 15, b_rtp.heard()    # the callee hears the caller's 440 Hz

        call.hangup()
        await expect(incoming, Ended)
    finally:
        a_rtp.close()
        b_rtp.close()
        await asyncio.to_thread(server.stop)
        await caller.close()
        await callee.close()


# -- 3. failure handling, with a fake controller ---------------------------------------------------------


class FakeMedia:
    """A MediaController recording its calls; ``fail`` names operations that raise, ``hang`` ones that hang;
    every operation takes ``delay`` seconds."""

    def __init__(self, fail: tuple[str, ...] = (), hang: tuple[str, ...] = (), delay: float = 0.0) -> None:
        self.fail, self.hang, self.delay = fail, hang, delay
        self.log: list[tuple] = []

    async def _op(self, name: str, *args) -> None:
        self.log.append((name, *args))
        await asyncio.sleep(self.delay)
        if name in self.hang:
            await asyncio.sleep(3600)
        if name in self.fail:
            raise ConnectionError(f"{name}: media worker gone")

    @staticmethod
    def rewritten(port: int) -> str:
        return create_offer(MEDIA_IP, port, CODECS, username="media", session_id="9").to_bytes().decode()

    async def offer(self, call_id, from_tag, sdp, transport=None):
        await self._op("offer", call_id, from_tag, transport)
        return self.rewritten(20000 + 2 * sum(1 for entry in self.log if entry[0] == "offer"))

    async def answer(self, call_id, from_tag, to_tag, sdp):
        await self._op("answer", call_id, from_tag, to_tag)
        return self.rewritten(21000 + 2 * sum(1 for entry in self.log if entry[0] == "answer"))

    async def delete(self, call_id):
        await self._op("delete", call_id)
        return {}


class Trio:
    """caller -> middle (BackToBack with a fake media controller) -> callee, all in this process."""

    def __init__(self, media: FakeMedia) -> None:
        self.media = media

    async def __aenter__(self) -> Trio:
        self.caller, self.middle, self.callee = Endpoint.open(), Endpoint.open(), Endpoint.open()
        self.caller, self.middle, self.callee = await asyncio.gather(self.caller, self.middle, self.callee)
        self.b2b = BackToBack(self.middle.ua, {NUMBER: f"sip:bob@127.0.0.1:{self.callee.port}"},
                              media=self.media, media_timeout=0.3)
        self.middle.ua.on_invite = self.b2b.on_invite
        return self

    async def __aexit__(self, *exc) -> None:
        await self.b2b.close()
        for ep in (self.caller, self.middle, self.callee):
            await ep.close()

    def dial(self, port: int = 4000):
        offer = create_offer("127.0.0.1", port, CODECS, username="alice", session_id="1").to_bytes()
        return self.caller.ua.invite(f"sip:{NUMBER}@127.0.0.1:{self.middle.port}", "sip:alice@127.0.0.1", offer)

    async def incoming(self):
        return await asyncio.wait_for(self.callee.ua.incoming.get(), 5)


def answer_to(offer: bytes, port: int = 5000) -> bytes:
    return create_answer(SessionDescription.parse(offer), CODECS, "127.0.0.1", port, username="bob",
                         session_id="2").to_bytes()


async def until(predicate, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_anchoring_rewrites_offers_answers_and_reoffers():
    async with Trio(FakeMedia()) as t:
        call = t.dial()
        inc = await t.incoming()
        assert address(SessionDescription.parse(inc.remote_sdp)) == (MEDIA_IP, 20002)
        inc.answer(answer_to(inc.remote_sdp))
        answered = await expect(call, Answered)
        assert address(SessionDescription.parse(answered.sdp)) == (MEDIA_IP, 21002)
        a_id, a_tag, b_tag = inc.call_id, call.local_tag, inc.local_tag
        a_call_id = next(iter(t.b2b.calls))
        assert t.media.log[:2] == [("offer", a_call_id, a_tag, "RTP/AVP"), ("answer", a_call_id, a_tag, b_tag)]
        assert a_id != a_call_id
        await expect(inc, Confirmed)

        # a re-INVITE from the callee goes through offer/answer with the callee's tag
        inc.auto_answer_reinvite = True
        call.auto_answer_reinvite = True
        resp = await asyncio.wait_for(inc.reinvite(answer_to(inc.remote_sdp, 5002)), 5)
        assert resp.status == 200 and address(SessionDescription.parse(resp.body)) == (MEDIA_IP, 21004)
        assert t.media.log[2:4] == [("offer", a_call_id, b_tag, None), ("answer", a_call_id, b_tag, a_tag)]

        call.hangup()
        await expect(inc, Ended)
        await until(lambda: ("delete", a_call_id) in t.media.log)
        assert t.media.log.count(("delete", a_call_id)) == 1


async def test_a_dead_media_plane_passes_sdp_through():
    async with Trio(FakeMedia(hang=("offer",))) as t:
        call = t.dial(4000)
        inc = await t.incoming()
        assert address(SessionDescription.parse(inc.remote_sdp)) == ("127.0.0.1", 4000)  # the caller's own
        inc.answer(answer_to(inc.remote_sdp, 5000))
        answered = await expect(call, Answered)
        assert address(SessionDescription.parse(answered.sdp)) == ("127.0.0.1", 5000)   # the callee's own
        call.hangup()
        await expect(inc, Ended)
        await asyncio.sleep(0.1)
        assert [entry[0] for entry in t.media.log] == ["offer"]   # nothing anchored: no answer, no delete


async def test_a_failed_answer_fails_the_call_and_releases_media():
    async with Trio(FakeMedia(fail=("answer",))) as t:
        call = t.dial()
        inc = await t.incoming()
        inc.answer(answer_to(inc.remote_sdp))
        failed = await expect(call, Failed)
        assert failed.status == 500
        await expect(inc, Ended)                     # the callee, already answered, gets a BYE
        await until(lambda: [entry[0] for entry in t.media.log] == ["offer", "answer", "delete"])


async def test_caller_gone_while_the_offer_is_anchored():
    media = FakeMedia(delay=0.15)
    async with Trio(media) as t:
        call = t.dial()
        await until(lambda: media.log)
        bridge = next(iter(t.b2b.calls.values()))
        assert bridge.b is None                      # the B leg waits for the anchored offer
        bridge.a.reject(480)                         # the A leg ends meanwhile (as a CANCEL would)
        failed = await expect(call, Failed)
        assert failed.status == 480
        await until(lambda: [entry[0] for entry in media.log] == ["offer", "delete"])
        await asyncio.sleep(0.2)
        assert t.callee.ua.incoming.empty() and not t.b2b.calls   # never placed, forgotten


async def test_a_call_whose_media_was_lost_is_ended_on_both_sides():
    """The media worker died (the server replaced it): both parties get a BYE instead of silence, and
    nothing is deleted on the media side (that call is gone with the worker)."""
    async with Trio(FakeMedia()) as t:
        call = t.dial()
        inc = await t.incoming()
        inc.answer(answer_to(inc.remote_sdp))
        await expect(call, Answered)
        await expect(inc, Confirmed)
        a_call_id = next(iter(t.b2b.calls))
        assert t.b2b.media_lost(a_call_id) and not t.b2b.media_lost("no-such-call")
        await expect(call, Ended)
        await expect(inc, Ended)
        await asyncio.sleep(0.1)
        assert [entry[0] for entry in t.media.log] == ["offer", "answer"]
        await until(lambda: not t.b2b.calls)
