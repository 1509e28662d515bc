"""Legs on their own, connected, re-connected, held, in conferences (docs/callcontrol.md), on real sockets.

Plain-RTP peers send tones (each party its own frequency) and keep what the worker sends them; an aiortc peer
plays a browser. Audio is checked by content: the frequency each party hears (FFT), DTMF digits as events.
"""
from __future__ import annotations

import asyncio
import json
import random
import struct
import wave

import numpy as np
import pytest
from media_ports import free_udp_range

from media import g711
from media.audio import dominant_frequency, tone
from media.control import serve_worker
from media.dtmf import dtmf_tone, packets_for_press
from media.relay import available as relay_available
from media.worker import MediaError, MediaSettings, MediaWorker
from media.sdp import SessionDescription, create_answer, create_offer

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
PCMU_TE = [("PCMU", 8000), ("telephone-event", 8000)]
CALLER_HZ, AGENT1_HZ, AGENT2_HZ, MOH_HZ = 440.0, 1000.0, 1300.0, 600.0


class TonePeer(asyncio.DatagramProtocol):
    """A plain-RTP party: keeps what the worker sends it (with arrival times), sends a PCMU tone when asked."""

    def __init__(self) -> None:
        self.received: list[tuple[float, bytes]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.seq, self.ts, self.ssrc = random.getrandbits(16), random.getrandbits(32), random.getrandbits(32)

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        if not 192 <= data[1] <= 223:                       # not RTCP
            self.received.append((asyncio.get_running_loop().time(), data))

    @property
    def port(self) -> int:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]

    def send(self, pt: int, payload: bytes, to, ts: int | None = None, marker: bool = False) -> None:
        assert self.transport is not None
        self.transport.sendto(struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, self.seq,
                                          self.ts if ts is None else ts, self.ssrc) + payload, to)
        self.seq = (self.seq + 1) & 0xFFFF

    async def send_tone(self, freq: float, to: tuple[str, int], stop: asyncio.Event) -> None:
        """20 ms PCMU frames of a continuous tone until ``stop``."""
        samples = tone(freq, 8000, 60.0, amplitude=0.25)
        loop = asyncio.get_running_loop()
        start, i = loop.time(), 0
        while not stop.is_set():
            self.send(0, g711.ulaw_encode(samples[i * 160:(i + 1) * 160].astype("<i2").tobytes()), to)
            self.ts = (self.ts + 160) & 0xFFFFFFFF
            i += 1
            await asyncio.sleep(max(0.0, start + i * 0.02 - loop.time()))

    def heard(self, since: float, until: float | None = None) -> np.ndarray:
        """The PCMU audio received in [since, until), decoded."""
        packets = [p for t, p in self.received if t >= since and (until is None or t < until) and p[1] & 0x7F == 0]
        return np.frombuffer(b"".join(g711.ulaw_decode(p[12:]) for p in packets), "<i2")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def level(pcm: np.ndarray, freq: float, rate: int = 8000) -> float:
    """The share of the signal's energy within 30 Hz of ``freq`` (0..1)."""
    if pcm.size < 400:
        return 0.0
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(pcm.size))) ** 2
    bins = np.fft.rfftfreq(pcm.size, 1.0 / rate)
    total = spectrum.sum()
    return float(spectrum[np.abs(bins - freq) < 30].sum() / total) if total > 0 else 0.0


def write_wav(path, freq: float, seconds: float) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(tone(freq, 8000, seconds, amplitude=0.4).astype("<i2").tobytes())


async def open_peer() -> TonePeer:
    _, peer = await asyncio.get_running_loop().create_datagram_endpoint(TonePeer, local_addr=(HOST, 0))
    return peer


async def answered_leg(worker: MediaWorker, name: str, peer: TonePeer, codecs=PCMU_TE, **kw) -> tuple[str, int]:
    """The peer offers, the worker answers (a caller's leg): where the peer sends."""
    info = await worker.leg_remote_offer(name, create_offer(HOST, peer.port, codecs).to_bytes(), **kw)
    assert info["transport"] == "rtp" and info["hold"] is False
    answer = worker.leg_create_answer(name)
    assert answer["direction"] == "sendrecv"
    return HOST, SessionDescription.parse(answer["sdp"]).media[0].port


async def offered_leg(worker: MediaWorker, name: str, peer: TonePeer, codecs=PCMU_TE) -> tuple[str, int]:
    """The worker offers, the peer answers (an agent's leg rung by callpath): where the peer sends."""
    offer = SessionDescription.parse(await worker.leg_offer(name, transport="rtp"))
    result = worker.leg_answer(name, create_answer(offer, codecs, HOST, peer.port).to_bytes())
    assert result["codec"] == "PCMU" and result["direction"] == "sendrecv"
    return HOST, offer.media[0].port


@pytest.fixture(params=[True, False], ids=["c-data-plane", "python-path"])
async def worker(request):
    if request.param and not relay_available():
        pytest.skip("the C data plane is not built")
    base = free_udp_range(40)
    events: list[dict] = []
    w = await MediaWorker.start(MediaSettings(bind_host=HOST, rtp_port_min=base, rtp_port_max=base + 39,
                                              c_relay=request.param), on_event=events.append)
    w.test_events = events  # type: ignore[attr-defined]
    yield w
    await w.close()


async def test_parked_with_music_then_connected_then_moved_recorded_throughout(worker: MediaWorker, tmp_path):
    """(a) a caller parked alone hears looping music, then connected to an agent: tones cross both ways;
    (b) moved to a second agent: tones cross, the first agent hears nothing more from it; (g) the caller's
    recording has its own voice left and, right, the music, then each agent in turn."""
    loop = asyncio.get_running_loop()
    moh = tmp_path / "moh.wav"
    write_wav(moh, MOH_HZ, 0.5)                    # shorter than the wait: heard only because it loops
    caller, agent1, agent2 = await open_peer(), await open_peer(), await open_peer()
    stop = asyncio.Event()
    senders: list[asyncio.Future] = []
    try:
        to_caller = await answered_leg(worker, "c1/caller", caller)
        played = await worker.play("c1/caller", [str(moh)], loop=True)
        assert played["frames"] == 25
        recording = tmp_path / "caller.wav"
        assert worker.record("c1/caller", str(recording))["channels"] == {"left": "sent", "right": "heard"}
        senders.append(asyncio.ensure_future(caller.send_tone(CALLER_HZ, to_caller, stop)))
        t0 = loop.time()
        await asyncio.sleep(1.5)
        assert abs(dominant_frequency(caller.heard(t0 + 0.3), 8000) - MOH_HZ) < 10      # music on hold
        assert worker.leg_query("c1/caller")["connected_to"] is None

        to_agent1 = await offered_leg(worker, "c1/agent1", agent1)
        senders.append(asyncio.ensure_future(agent1.send_tone(AGENT1_HZ, to_agent1, stop)))
        assert worker.connect("c1/caller", "c1/agent1") == {"a": "c1/caller", "b": "c1/agent1", "transcoded": False}
        assert [e["reason"] for e in worker.test_events if e["event"] == "play-done"] == ["connected"]
        t1 = loop.time()
        await asyncio.sleep(1.2)
        assert abs(dominant_frequency(caller.heard(t1 + 0.3), 8000) - AGENT1_HZ) < 10
        assert abs(dominant_frequency(agent1.heard(t1 + 0.3), 8000) - CALLER_HZ) < 10
        query = worker.leg_query("c1/caller")
        assert query["connected_to"] == "c1/agent1" and query["recording"] == str(recording)

        to_agent2 = await offered_leg(worker, "c1/agent2", agent2)
        senders.append(asyncio.ensure_future(agent2.send_tone(AGENT2_HZ, to_agent2, stop)))
        await asyncio.sleep(0.3)
        assert worker.connect("c1/caller", "c1/agent2")["transcoded"] is False     # moved: agent1 left alone
        t2 = loop.time()
        await asyncio.sleep(1.2)
        t3 = loop.time()
        assert abs(dominant_frequency(caller.heard(t2 + 0.3), 8000) - AGENT2_HZ) < 10
        assert abs(dominant_frequency(agent2.heard(t2 + 0.3), 8000) - CALLER_HZ) < 10
        assert agent1.heard(t2 + 0.1).size == 0                                       # nothing more to agent1
        assert worker.leg_query("c1/agent1")["connected_to"] is None
        assert worker.leg_query("c1/agent2")["connected_to"] == "c1/caller"
        done = worker.stop_record("c1/caller")
        assert done["path"] == str(recording) and done["seconds"] > 3.0
        stats = worker.leg_close("c1/caller")["stats"]
        assert stats["packets_in"] > 0
        assert worker.leg_query("c1/agent2")["connected_to"] is None                 # its partner closed
    finally:
        stop.set()
        await asyncio.gather(*senders, return_exceptions=True)
        for peer in (caller, agent1, agent2):
            peer.close()
    with wave.open(str(recording)) as w:
        assert w.getnchannels() == 2 and w.getframerate() == 8000
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    left, right = pcm[:, 0], pcm[:, 1]
    t = lambda s: int(s * 8000)  # noqa: E731 - seconds from the start of the recording
    assert abs(dominant_frequency(left[t(0.3):], 8000) - CALLER_HZ) < 10              # what the caller said
    music_end, agent1_end = t1 - t0, t2 - t0
    assert abs(dominant_frequency(right[t(0.2):t(music_end - 0.1)], 8000) - MOH_HZ) < 10
    assert abs(dominant_frequency(right[t(music_end + 0.3):t(agent1_end - 0.2)], 8000) - AGENT1_HZ) < 10
    assert abs(dominant_frequency(right[t(agent1_end + 0.3):t(t3 - t0 - 0.2)], 8000) - AGENT2_HZ) < 10


async def test_hold_reoffer_is_answered_recvonly_and_nothing_is_sent_until_resume(worker: MediaWorker):
    """(c) a connected leg's re-offer with sendonly (and the legacy c=0.0.0.0) is a hold: our answer says
    recvonly, the leg is sent nothing while its partner keeps talking; a sendrecv re-offer resumes it."""
    loop = asyncio.get_running_loop()
    a, b = await open_peer(), await open_peer()
    stop = asyncio.Event()
    sender = None
    try:
        await answered_leg(worker, "h/a", a)
        to_b = await offered_leg(worker, "h/b", b)
        worker.connect("h/a", "h/b")
        sender = asyncio.ensure_future(b.send_tone(AGENT1_HZ, to_b, stop))
        await asyncio.sleep(0.6)
        assert abs(dominant_frequency(a.heard(loop.time() - 0.4), 8000) - AGENT1_HZ) < 10

        hold = create_offer(HOST, a.port, PCMU_TE, direction="sendonly")
        info = await worker.leg_remote_offer("h/a", hold.to_bytes())
        assert info["hold"] is True and info["direction"] == "sendonly" and info["codecs"] == ["pcmu"]
        answer = worker.leg_create_answer("h/a")
        assert answer["hold"] is True and answer["direction"] == "recvonly"
        assert SessionDescription.parse(answer["sdp"]).media[0].direction == "recvonly"
        assert worker.leg_query("h/a")["hold"] is True
        held_at = loop.time()
        await asyncio.sleep(0.8)
        assert a.heard(held_at + 0.1).size == 0                                  # held: nothing sent to it

        legacy = create_offer("0.0.0.0", a.port, PCMU_TE)                        # RFC 2543 hold
        assert (await worker.leg_remote_offer("h/a", legacy.to_bytes()))["hold"] is True
        assert worker.leg_create_answer("h/a")["direction"] == "recvonly"

        resume = create_offer(HOST, a.port, PCMU_TE)
        assert (await worker.leg_remote_offer("h/a", resume.to_bytes()))["hold"] is False
        answer = worker.leg_create_answer("h/a")
        assert answer["hold"] is False and answer["direction"] == "sendrecv"
        resumed_at = loop.time()
        await asyncio.sleep(0.8)
        assert abs(dominant_frequency(a.heard(resumed_at + 0.3), 8000) - AGENT1_HZ) < 10

        # a re-offer that moves the peer: media follows its new address
        moved = await open_peer()
        try:
            await worker.leg_remote_offer("h/a", create_offer(HOST, moved.port, PCMU_TE).to_bytes())
            worker.leg_create_answer("h/a")
            moved_at = loop.time()
            await asyncio.sleep(0.6)
            assert abs(dominant_frequency(moved.heard(moved_at + 0.2), 8000) - AGENT1_HZ) < 10
        finally:
            moved.close()
    finally:
        stop.set()
        if sender is not None:
            await sender
        a.close()
        b.close()


async def test_conference_of_legs_from_different_calls_with_a_listener(worker: MediaWorker):
    """(e) three legs of three calls talk: each hears the other two and not itself; a fourth joins as listen:
    it hears all three and nobody hears it; the conference lives while it has a member."""
    loop = asyncio.get_running_loop()
    freqs = {"call-1/a": 400.0, "call-2/a": 1100.0, "call-3/a": 1700.0, "call-4/sup": 2500.0}
    peers = {name: await open_peer() for name in freqs}
    stop = asyncio.Event()
    senders = []
    try:
        for name, peer in peers.items():
            to = await answered_leg(worker, name, peer)
            senders.append(asyncio.ensure_future(peer.send_tone(freqs[name], to, stop)))
        for name in list(freqs)[:3]:
            worker.conference_join("room-1", name, "talk")
        joined = worker.conference_join("room-1", "call-4/sup", "listen")
        assert joined["members"] == {"call-1/a": "talk", "call-2/a": "talk", "call-3/a": "talk", "call-4/sup": "listen"}
        start = loop.time()
        await asyncio.sleep(1.5)
        for name, peer in peers.items():
            heard = peer.heard(start + 0.4)
            assert heard.size > 4000, name
            others = [f for n, f in freqs.items() if n != name and n != "call-4/sup"]
            for f in others:
                assert level(heard, f) > 0.15, (name, f, [round(level(heard, g), 3) for g in freqs.values()])
            assert level(heard, freqs[name]) < 0.02, name                        # not itself
            if name != "call-4/sup":
                assert level(heard, freqs["call-4/sup"]) < 0.02, name            # the listener is not heard
        assert worker.leg_query("call-2/a")["conference"] == "room-1"
        worker.conference_join("room-1", "call-4/sup", "whisper", to="call-1/a")       # coaching call-1's leg
        start = loop.time()
        await asyncio.sleep(1.0)
        assert level(peers["call-1/a"].heard(start + 0.3), freqs["call-4/sup"]) > 0.15
        for name in ("call-2/a", "call-3/a"):
            assert level(peers[name].heard(start + 0.3), freqs["call-4/sup"]) < 0.02, name
        for name in freqs:
            worker.conference_leave(name)
        assert worker.rooms == {}
    finally:
        stop.set()
        await asyncio.gather(*senders, return_exceptions=True)
        for peer in peers.values():
            peer.close()


async def test_dtmf_on_a_leg_alone_is_reported_with_the_leg_name(worker: MediaWorker):
    """(f) a parked leg (not connected) reports RFC 4733 digits, and in-band digits when it negotiated no
    telephone-event, each event naming the leg; ``dtmf`` sends digits to a leg alone in its mode."""
    a, b = await open_peer(), await open_peer()
    try:
        to_a = await answered_leg(worker, "ivr/caller", a)
        to_b = await answered_leg(worker, "ivr/inband", b, codecs=[("PCMU", 8000)])
        for i in range(5):
            a.send(0, b"\xff" * 160, to_a)
            a.ts += 160
            await asyncio.sleep(0.02)
        for tick in packets_for_press("5", 120, a.ts, 8000):
            for packet in tick:
                a.send(101, packet.payload, to_a, ts=packet.timestamp, marker=packet.marker)
            await asyncio.sleep(0.02)
        keyed = np.concatenate([np.zeros(800, np.int16), dtmf_tone("7", 120), np.zeros(1600, np.int16)])
        for i in range(keyed.size // 160):
            b.send(0, g711.ulaw_encode(keyed[i * 160:(i + 1) * 160].astype("<i2").tobytes()), to_b)
            b.ts += 160
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.4)
        digits = [e for e in worker.test_events if e["event"] == "dtmf"]
        assert digits == [
            {"event": "dtmf", "leg": "ivr/caller", "digit": "5", "duration": 120, "source": "rfc4733"},
            {"event": "dtmf", "leg": "ivr/inband", "digit": "7", "duration": digits[1]["duration"], "source": "inband"}]
        assert worker.dtmf("ivr/caller", "12")["mode"] == "rfc4733"
        assert worker.dtmf("ivr/inband", "3")["mode"] == "inband"
        await asyncio.sleep(0.6)
        assert any(p[1] & 0x7F == 101 for _, p in a.received)                 # telephone-events to the caller
        keys = b.heard(0.0)                                                   # '3' in-band: 697 + 1477 Hz
        assert keys.size >= 800 and level(keys, 697) > 0.2 and level(keys, 1477) > 0.2
        assert sorted(e["leg"] for e in worker.test_events if e["event"] == "dtmf-sent") == ["ivr/caller", "ivr/inband"]
    finally:
        a.close()
        b.close()


async def test_play_mixed_over_a_connected_call_is_heard_with_the_partner(worker: MediaWorker, tmp_path):
    """``play`` with ``mix`` on both legs of a connection: each hears the beep and its partner at once."""
    loop = asyncio.get_running_loop()
    a, b = await open_peer(), await open_peer()
    stop = asyncio.Event()
    senders = []
    try:
        to_a = await answered_leg(worker, "m/a", a)
        to_b = await offered_leg(worker, "m/b", b)
        worker.connect("m/a", "m/b")
        senders = [asyncio.ensure_future(a.send_tone(CALLER_HZ, to_a, stop)),
                   asyncio.ensure_future(b.send_tone(AGENT1_HZ, to_b, stop))]
        await asyncio.sleep(0.4)
        for name in ("m/a", "m/b"):
            await worker.play(name, beep_spec={"freq": 2000, "ms": 1200}, mix=True)
        start = loop.time()
        await asyncio.sleep(0.9)
        for peer, partner in ((a, AGENT1_HZ), (b, CALLER_HZ)):
            heard = peer.heard(start + 0.2, start + 0.9)
            assert level(heard, 2000) > 0.15 and level(heard, partner) > 0.15
        await asyncio.sleep(0.8)
        assert [e["reason"] for e in worker.test_events if e["event"] == "play-done"] == ["done", "done"]
        after = loop.time()
        await asyncio.sleep(0.5)
        heard = a.heard(after + 0.1)
        assert level(heard, 2000) < 0.02 and abs(dominant_frequency(heard, 8000) - AGENT1_HZ) < 10
    finally:
        stop.set()
        await asyncio.gather(*senders, return_exceptions=True)
        a.close()
        b.close()


async def test_leg_errors_are_clear(worker: MediaWorker):
    a = await open_peer()
    try:
        with pytest.raises(MediaError, match="unknown leg 'nope'"):
            worker.connect("nope", "x")
        with pytest.raises(MediaError, match="unknown transport"):
            await worker.leg_offer("x", transport="carrier-pigeon")
        with pytest.raises(MediaError, match="no remote offer to answer"):
            await worker.leg_offer("y", transport="rtp")
            worker.leg_create_answer("y")
        with pytest.raises(MediaError, match="no negotiated media yet"):
            await worker.play("y", beep_spec=True)
        await answered_leg(worker, "z", a)
        with pytest.raises(MediaError, match="a re-offer cannot change its transport"):
            await worker.leg_offer("z", transport="webrtc")
        with pytest.raises(MediaError, match="cannot be connected to itself"):
            worker.connect("z", "z")
        with pytest.raises(MediaError, match="whisper needs 'to'"):
            worker.conference_join("r", "z", "whisper")
        with pytest.raises(MediaError, match="mode must be talk, listen or whisper"):
            worker.conference_join("r", "z", "shout")
        with pytest.raises(MediaError, match="is in no conference"):
            worker.conference_leave("z")
        worker.leg_close("y")
        worker.leg_close("z")
        assert worker.legs == {} and worker.allocator.in_use == 0
    finally:
        a.close()


async def test_leg_commands_over_the_control_socket_as_json_lines(tmp_path):
    """The leg verbs on the wire: raw JSON lines in, replies and an event (with the leg's name) out."""
    base = free_udp_range(10)
    worker, server, address = await serve_worker(MediaSettings(bind_host=HOST, rtp_port_min=base,
                                                               rtp_port_max=base + 9))
    peer = await open_peer()
    reader, writer = await asyncio.open_connection(*address)
    cookie = 0

    async def call(command: str, **args) -> dict:
        nonlocal cookie
        cookie += 1
        writer.write(json.dumps({"id": cookie, "command": command, **args}).encode() + b"\n")
        await writer.drain()
        while True:
            message = json.loads(await asyncio.wait_for(reader.readline(), 5.0))
            if message.get("id") == cookie:
                return message
            events.append(message)

    events: list[dict] = []
    try:
        offer = create_offer(HOST, peer.port, PCMU_TE).to_bytes().decode()
        reply = await call("leg_remote_offer", leg="w/a", sdp=offer)
        assert reply["result"] == "ok" and reply["codecs"] == ["pcmu"] and reply["hold"] is False
        reply = await call("leg_create_answer", leg="w/a", prefer="PCMU")
        assert reply["result"] == "ok" and reply["codec"] == "PCMU" and reply["direction"] == "sendrecv"
        to_a = (HOST, SessionDescription.parse(reply["sdp"]).media[0].port)
        reply = await call("leg_offer", leg="w/b", transport="webrtc", codecs=["opus", "PCMU"])
        assert reply["result"] == "ok" and "UDP/TLS/RTP/SAVPF" in reply["sdp"]
        assert (await call("play", leg="w/a", beep={"freq": 800, "ms": 100}))["result"] == "ok"
        query = await call("leg_query", leg="w/a")
        assert query["result"] == "ok" and query["codec"] == "PCMU" and query["transport"] == "rtp"
        assert (await call("connect", a="w/a", b="w/b"))["error-reason"] == "leg 'w/b' has no negotiated media yet"
        for tick in packets_for_press("9", 100, 1000, 8000):
            for packet in tick:
                peer.send(101, packet.payload, to_a, ts=packet.timestamp, marker=packet.marker)
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
        assert (await call("leg_close", leg="w/b"))["result"] == "ok"
        closed = await call("leg_close", leg="w/a")
        assert closed["result"] == "ok" and closed["stats"]["packets_out"] >= 4
        assert (await call("conference_leave", leg="w/a"))["error-reason"] == "unknown leg 'w/a'"
    finally:
        writer.close()
        await server.close()
        await worker.close()
        peer.close()
    assert {"event": "play-done", "leg": "w/a", "reason": "done"} in events
    assert {"event": "dtmf", "leg": "w/a", "digit": "9", "duration": 100, "source": "rfc4733"} in events


@pytest.mark.parametrize("offerer", ["browser", "worker"])
async def test_browser_opus_leg_connected_to_a_pcmu_leg_is_transcoded_both_ways(worker: MediaWorker, offerer: str):
    """(d) an aiortc browser's Opus leg (its own offer, or an agent's browser rung by the worker's offer) and a
    plain PCMU leg rung by the worker's offer; connected, the worker transcodes: each hears the other's tone."""
    aiortc = pytest.importorskip("aiortc")
    from aiortc_peers import Listener, SineTrack

    loop = asyncio.get_running_loop()
    pc = aiortc.RTCPeerConnection(aiortc.RTCConfiguration(iceServers=[]))
    listener = Listener(pc)
    trunk = await open_peer()
    stop = asyncio.Event()
    sender = None
    try:
        if offerer == "browser":
            transceiver = pc.addTransceiver(SineTrack(CALLER_HZ), direction="sendrecv")
            caps = aiortc.RTCRtpSender.getCapabilities("audio")
            transceiver.setCodecPreferences([c for c in caps.codecs if c.mimeType.lower() == "audio/opus"])
            await pc.setLocalDescription(await pc.createOffer())
            info = await worker.leg_remote_offer("web/agent", pc.localDescription.sdp)
            assert info["transport"] == "webrtc" and info["codecs"] == ["opus"]
            answer = worker.leg_create_answer("web/agent")
            assert answer["codec"] == "opus"
            await pc.setRemoteDescription(aiortc.RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        else:
            offer = await worker.leg_offer("web/agent", transport="webrtc", codecs=["opus"])
            await pc.setRemoteDescription(aiortc.RTCSessionDescription(sdp=offer, type="offer"))
            for transceiver in pc.getTransceivers():
                transceiver.sender.replaceTrack(SineTrack(CALLER_HZ))
                transceiver.direction = "sendrecv"
            await pc.setLocalDescription(await pc.createAnswer())
            assert worker.leg_answer("web/agent", pc.localDescription.sdp)["codec"] == "opus"
        to_trunk = await offered_leg(worker, "web/trunk", trunk)
        assert worker.connect("web/agent", "web/trunk")["transcoded"] is True
        sender = asyncio.ensure_future(trunk.send_tone(AGENT1_HZ, to_trunk, stop))
        start = loop.time()
        for _ in range(100):                                   # DTLS first, then media both ways
            await asyncio.sleep(0.1)
            if len(listener.frames) >= 80 and trunk.heard(start).size >= 8000 * 1.2:
                break
        heard = trunk.heard(start)
        assert abs(dominant_frequency(heard[-8000:], 8000) - CALLER_HZ) < 15        # the browser, via Opus
        samples, rate = listener.samples(len(listener.frames) - 50, len(listener.frames))
        assert abs(dominant_frequency(samples, rate) - AGENT1_HZ) < 15               # the trunk, via Opus
        query = worker.leg_query("web/agent")
        assert query["transport"] == "webrtc" and query["transcoded"] is True and query["stats"]["connected"]
        await pc.close()                                       # the browser goes: DTLS close_notify
        for _ in range(30):
            await asyncio.sleep(0.1)
            if any(e["event"] == "leg-down" for e in worker.test_events):
                break
        assert [e["leg"] for e in worker.test_events if e["event"] == "leg-down"] == ["web/agent"]
    finally:
        stop.set()
        if sender is not None:
            await sender
        await pc.close()
        listener.close()
        trunk.close()


async def test_a_leg_that_gets_no_media_times_out_by_name(worker: MediaWorker):
    """A leg opened with ``timeout`` raises a timeout event naming it when no RTP comes."""
    a = await open_peer()
    try:
        await answered_leg(worker, "quiet/a", a, timeout=0.3)
        for _ in range(40):
            await asyncio.sleep(0.1)
            if any(e["event"] == "timeout" for e in worker.test_events):
                break
        assert [(e["event"], e["leg"]) for e in worker.test_events if e["event"] == "timeout"] == [("timeout", "quiet/a")]
    finally:
        a.close()


async def test_sdes_legs_both_ways_are_keyed_and_connected(worker: MediaWorker):
    """SDES-SRTP legs through the leg verbs: a phone's RTP/SAVP offer is answered with our key; our RTP/SAVP
    offer to a trunk offers a key per suite and the answered one keys the leg; connected, SRTP both ways."""
    from media.srtp import AES128_CM_SHA1_80, CryptoAttribute, sdes_context

    phone, trunk = await open_peer(), await open_peer()
    try:
        phone_key = CryptoAttribute.generate(AES128_CM_SHA1_80, 1)
        offer = (f"v=0\r\no=- 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
                 f"m=audio {phone.port} RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\na=crypto:{phone_key}\r\n")
        assert (await worker.leg_remote_offer("s/phone", offer))["transport"] == "sdes"
        answer = SessionDescription.parse(worker.leg_create_answer("s/phone")["sdp"])
        assert answer.media[0].proto == "RTP/SAVP"
        ours = CryptoAttribute.parse(answer.media[0].attributes("crypto")[0])
        to_trunk = SessionDescription.parse(await worker.leg_offer("s/trunk", transport="sdes", dtmf="inband"))
        assert to_trunk.media[0].proto == "RTP/SAVP" and len(to_trunk.media[0].attributes("crypto")) >= 2
        offered = CryptoAttribute.parse(to_trunk.media[0].attributes("crypto")[0])
        trunk_key = CryptoAttribute.generate(offered.profile, offered.tag)
        reply = create_answer(to_trunk, [("PCMU", 8000)], HOST, trunk.port)
        reply.media[0].proto = "RTP/SAVP"
        reply.media[0].add_attribute("crypto", str(trunk_key))
        worker.leg_answer("s/trunk", reply.to_bytes())
        assert worker.connect("s/phone", "s/trunk")["transcoded"] is False
        phone_ctx, trunk_ctx = sdes_context(phone_key, ours), sdes_context(trunk_key, offered)
        for i in range(20):
            phone.transport.sendto(phone_ctx.protect(struct.pack("!BBHII", 0x80, 0, i, 160 * i, 0xAB) + b"\x11" * 160),
                                   (HOST, answer.media[0].port))
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        relayed = [trunk_ctx.unprotect(p) for _, p in trunk.received]
        assert len(relayed) == 20 and all(p[12:] == b"\x11" * 160 for p in relayed)
        assert worker.leg_query("s/trunk")["stats"]["srtp"] == offered.suite
    finally:
        phone.close()
        trunk.close()


async def test_a_reoffer_without_the_legs_codec_changes_it_and_the_connection_transcodes(worker: MediaWorker):
    """A connected leg re-offers PCMA only: answered with PCMA (one version up), the partner keeps PCMU and the
    connection becomes transcoded on the same streams; a re-offer with the same SDP changes nothing."""
    a, b = await open_peer(), await open_peer()
    try:
        await answered_leg(worker, "r/a", a)
        await offered_leg(worker, "r/b", b)
        assert worker.connect("r/a", "r/b")["transcoded"] is False
        first = worker.legs["r/a"].local_sdp
        pcma = create_offer(HOST, a.port, [("PCMA", 8000), ("telephone-event", 8000)])
        assert (await worker.leg_remote_offer("r/a", pcma.to_bytes()))["codecs"] == ["pcma"]
        answer = worker.leg_create_answer("r/a")
        sd = SessionDescription.parse(answer["sdp"])
        assert answer["codec"] == "PCMA" and sd.origin.sess_version == first.origin.sess_version + 1
        query = worker.leg_query("r/a")
        assert query["codec"] == "PCMA" and query["transcoded"] is True and query["connected_to"] == "r/b"
        assert worker.leg_query("r/b")["codec"] == "PCMU"
        await worker.leg_remote_offer("r/a", pcma.to_bytes())
        again = SessionDescription.parse(worker.leg_create_answer("r/a")["sdp"])
        assert again.origin.sess_version == sd.origin.sess_version
    finally:
        a.close()
        b.close()


async def test_a_playlist_to_a_leg_alone_plays_in_order_then_reports_done(worker: MediaWorker, tmp_path):
    """Two prompts as one playlist to a parked leg: heard in order, one ``play-done`` at the end; a looping
    one stopped reports ``stopped``."""
    loop = asyncio.get_running_loop()
    first, second = tmp_path / "first.wav", tmp_path / "second.wav"
    write_wav(first, 600.0, 0.6)
    write_wav(second, 900.0, 0.6)
    a = await open_peer()
    try:
        await answered_leg(worker, "p/a", a)
        start = loop.time()
        played = await worker.play("p/a", [str(first), str(second)])
        assert played["frames"] == 60 and played["duration"] == 1.2
        for _ in range(40):
            await asyncio.sleep(0.1)
            if any(e["event"] == "play-done" for e in worker.test_events):
                break
        assert [e for e in worker.test_events if e["event"] == "play-done"] == [
            {"event": "play-done", "leg": "p/a", "reason": "done"}]
        times = [t for t, p in a.received if p[1] & 0x7F == 0]
        heard = a.heard(start)
        assert len(times) == 60
        assert abs(dominant_frequency(heard[:4000], 8000) - 600) < 10
        assert abs(dominant_frequency(heard[-4000:], 8000) - 900) < 10
        cached = list(worker._playlists.values())
        await worker.play("p/a", [str(first), str(second)])              # the same playlist: encoded once
        assert list(worker._playlists.values()) == cached and len(cached) == 1
        await worker.play("p/a", [str(first)], loop=True)                # replaces it
        assert worker.leg_query("p/a")["playing"] is True
        assert worker.test_events[-1] == {"event": "play-done", "leg": "p/a", "reason": "replaced"}
        await asyncio.sleep(0.3)
        assert worker.stop_play("p/a") == {"leg": "p/a", "stopped": True}
        assert worker.test_events[-1] == {"event": "play-done", "leg": "p/a", "reason": "stopped"}
        assert worker.stop_play("p/a") == {"leg": "p/a", "stopped": False}
    finally:
        a.close()


async def test_bad_leg_requests_on_the_wire_are_error_replies_not_crashes():
    """Malformed arguments of every leg verb come back as ``result: error`` with a reason, never an internal
    error, and the worker serves the next request."""
    base = free_udp_range(10)
    worker, server, address = await serve_worker(MediaSettings(bind_host=HOST, rtp_port_min=base,
                                                               rtp_port_max=base + 9))
    reader, writer = await asyncio.open_connection(*address)
    bad = [
        {"command": "leg_offer", "leg": "x", "codecs": "pcmu"},
        {"command": "leg_offer", "leg": "x", "codecs": ["g729"]},
        {"command": "leg_offer", "leg": "x", "transport": 5},
        {"command": "leg_offer", "leg": "x", "direction": "sideways"},
        {"command": "leg_offer", "leg": "x", "timeout": "soon"},
        {"command": "leg_offer", "leg": "x", "dtmf": "smoke"},
        {"command": "leg_offer", "leg": ""},
        {"command": "leg_answer", "leg": "nope", "sdp": "v=0"},
        {"command": "leg_remote_offer", "leg": "y", "sdp": "not sdp"},
        {"command": "leg_remote_offer", "leg": "y", "sdp": 42},
        {"command": "leg_create_answer", "leg": "nope"},
        {"command": "leg_create_answer", "leg": "nope", "prefer": ["opus"]},
        {"command": "connect", "a": "nope"},
        {"command": "disconnect"},
        {"command": "conference_join", "conference": "r", "leg": "nope", "mode": "talk"},
        {"command": "conference_join", "conference": 3, "leg": "nope"},
        {"command": "play", "leg": "nope", "files": "moh.wav"},
        {"command": "play", "leg": "nope", "files": [1, 2]},
        {"command": "stop_play", "leg": "nope"},
        {"command": "record", "leg": "nope", "path": "/tmp/x.wav"},
        {"command": "stop_record", "leg": "nope"},
        {"command": "dtmf", "leg": "nope", "digits": "12"},
        {"command": "leg_query", "leg": None},
        {"command": "leg_close", "leg": "nope"},
        {"command": "play", "leg": "ok", "files": "moh.wav"},
        {"command": "play", "leg": "ok", "files": [1, 2]},
        {"command": "play", "leg": "ok", "files": ["/no/such/file.wav"]},
        {"command": "play", "leg": "ok", "beep": {"freq": "high"}},
        {"command": "dtmf", "leg": "ok", "digits": "12x"},
        {"command": "dtmf", "leg": "ok", "digits": "1", "duration_ms": True},
        {"command": "record", "leg": "ok", "path": "/no/such/dir/x.wav"},
        {"command": "stop_record", "leg": "ok"},
        {"command": "conference_join", "conference": "r", "leg": "ok", "mode": "whisper", "to": "ok"},
        {"command": "conference_leave", "leg": "ok"},
        {"command": "connect", "a": "ok", "b": "ok"},
        {"command": "leg_answer", "leg": "ok", "sdp": "v=0"},
        {"command": "leg_create_answer", "leg": "ok"},
        {"command": "leg_remote_offer", "leg": "ok", "sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
                                                           "m=audio 4000 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 127.0.0.1\r\n"},
    ]
    try:
        offer = create_offer(HOST, 4000, PCMU_TE).to_bytes().decode()
        for request in ({"command": "leg_remote_offer", "leg": "ok", "sdp": offer},
                        {"command": "leg_create_answer", "leg": "ok"}):
            writer.write(json.dumps({"id": "setup", **request}).encode() + b"\n")
            await writer.drain()
            assert json.loads(await reader.readline())["result"] == "ok"
        for n, request in enumerate(bad):
            writer.write(json.dumps({"id": n, **request}).encode() + b"\n")
            await writer.drain()
            reply = json.loads(await asyncio.wait_for(reader.readline(), 5.0))
            assert reply["id"] == n and reply["result"] == "error", request
            assert not reply["error-reason"].startswith("internal error"), (request, reply)
        writer.write(b'{"id": 99, "command": "ping"}\n')
        await writer.drain()
        assert json.loads(await reader.readline())["result"] == "pong"
        assert list(worker.legs) == ["ok"] and worker.allocator.in_use == 1
    finally:
        writer.close()
        await server.close()
        await worker.close()
