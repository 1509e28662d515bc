"""The media worker end to end: aiortc plays the browser (WebRTC), a small UDP endpoint plays the trunk (plain RTP).

The browser sends a 440 Hz tone, the trunk a 1 kHz tone as 20 ms PCMU packets; each must come out at the
other end at its frequency, through Opus<->PCMU transcoding and through PCMU passthrough. The trunk also
presses a key as RFC 4733 events: the worker reports the digit and sends it on to the browser as
telephone-event (aiortc drops payload types it does not know, so that is checked at the worker's send).
"""
from __future__ import annotations

import asyncio
import random
import struct
import time

import numpy as np
import pytest

av = pytest.importorskip("av")
aiortc = pytest.importorskip("aiortc")

from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription  # noqa: E402

from media import g711  # noqa: E402
from media.audio import dominant_frequency, tone  # noqa: E402
from media.dtmf import decode_telephone_event, dtmf_tone, packets_for_press  # noqa: E402
from media.rtcp import Bye, SenderReport, parse_compound  # noqa: E402
from media.webrtc import WebRtcPort  # noqa: E402
from media.worker import MediaSettings, MediaWorker  # noqa: E402
from media.sdp import SessionDescription, create_answer  # noqa: E402

from aiortc_peers import Listener, SineTrack  # noqa: E402

from media_ports import free_udp_range  # noqa: E402

pytestmark = pytest.mark.integration

BROWSER_HZ = 440.0
TRUNK_HZ = 1000.0


class TrunkPeer(asyncio.DatagramProtocol):
    """The SIP trunk's RTP endpoint: sends a 1 kHz PCMU tone (and a DTMF press), keeps what it receives."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.received: list[bytes] = []
        self.seq = random.getrandbits(16)
        self.ts = random.getrandbits(32)
        self.ssrc = random.getrandbits(32)

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        if not 192 <= data[1] <= 223:   # RTP, not RTCP
            self.received.append(data)

    def send(self, pt: int, payload: bytes, to, ts: int | None = None, marker: bool = False) -> None:
        header = struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, self.seq, self.ts if ts is None else ts,
                             self.ssrc)
        self.seq = (self.seq + 1) & 0xFFFF
        self.transport.sendto(header + payload, to)

    async def play(self, to, seconds: float, dtmf_at: float | None = None,
                   keys_in_audio: dict[float, str] | None = None) -> None:
        """Send the tone paced at 20 ms; at dtmf_at, one 100 ms press of '5' as RFC 4733 (PT 101) instead;
        at each time of ``keys_in_audio``, that key as 100 ms of DTMF tones in the audio instead of the tone."""
        pcm = tone(TRUNK_HZ, 8000, seconds, amplitude=0.4)
        for at, key in (keys_in_audio or {}).items():
            start = int(at * 8000)
            pcm[start:start + 800] = dtmf_tone(key, 100)
        start = time.monotonic()
        press = None
        for i in range(len(pcm) // 160):
            wait = start + i * 0.02 - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if dtmf_at is not None and press is None and i * 0.02 >= dtmf_at:
                press = iter(packets_for_press("5", 100, self.ts, 8000))
            if press is not None:
                tick = next(press, None)
                if tick is not None:
                    for pkt in tick:
                        self.send(101, pkt.payload, to, ts=pkt.timestamp, marker=pkt.marker)
                    self.ts = (self.ts + 160) & 0xFFFFFFFF
                    continue
            self.send(0, g711.ulaw_encode(pcm[i * 160:(i + 1) * 160].tobytes()), to)
            self.ts = (self.ts + 160) & 0xFFFFFFFF


def spy_on(port: WebRtcPort, method: str) -> list[bytes]:
    """Record every packet the worker hands to ``port.<method>(leg, packet)`` (then send it as usual)."""
    sent: list[bytes] = []
    original = getattr(port, method)

    def spy(leg, packet: bytes) -> bool:
        sent.append(packet)
        return original(leg, packet)

    setattr(port, method, spy)
    return sent


def assert_tones_both_ways(trunk: TrunkPeer, listener: Listener) -> None:
    """The trunk got the browser's tone as PCMU, and the browser (aiortc) decoded the trunk's."""
    audio = [p for p in trunk.received if p[1] & 0x7F == 0]
    assert len(audio) >= 40, len(trunk.received)
    pcm = np.frombuffer(g711.ulaw_decode(b"".join(p[12:] for p in audio[10:])), "<i2")
    assert abs(dominant_frequency(pcm, 8000) - BROWSER_HZ) < 15
    assert len(listener.frames) >= 40, len(listener.frames)
    samples, rate = listener.samples(10, 70)
    assert abs(dominant_frequency(samples, rate) - TRUNK_HZ) < 15


async def browser_takes_trunk_call(worker: MediaWorker, pc: RTCPeerConnection, call_id: str,
                                   trunk_offer: str | bytes) -> SessionDescription:
    """The inbound case: the trunk's offer through the worker to the browser (aiortc answers with a 440 Hz
    tone), whose answer comes back through the worker: the SDP for the trunk."""
    to_browser = await worker.offer(call_id, "trunk-tag", trunk_offer)
    sd = SessionDescription.parse(to_browser)
    assert sd.media[0].proto == "UDP/TLS/RTP/SAVPF" and sd.media[0].attribute("setup") == "actpass"
    await pc.setRemoteDescription(RTCSessionDescription(sdp=to_browser, type="offer"))
    for transceiver in pc.getTransceivers():
        transceiver.sender.replaceTrack(SineTrack(BROWSER_HZ))
        transceiver.direction = "sendrecv"
    await pc.setLocalDescription(await pc.createAnswer())
    return SessionDescription.parse(await worker.answer(call_id, "trunk-tag", "agent-tag", pc.localDescription.sdp))


def add_telephone_event(sdp: str, pt: int, rate: int) -> str:
    """aiortc offers no telephone-event: add one to its offer as a browser would."""
    sd = SessionDescription.parse(sdp)
    section = sd.media[0]
    section.formats.append(str(pt))
    section.add_attribute("rtpmap", f"{pt} telephone-event/{rate}")
    section.add_attribute("fmtp", f"{pt} 0-16")
    return sd.to_bytes().decode()


@pytest.fixture
async def worker():
    base = free_udp_range(100)
    events: list[dict] = []
    w = await MediaWorker.start(MediaSettings(bind_host="127.0.0.1", rtp_port_min=base, rtp_port_max=base + 99),
                                on_event=events.append)
    w.test_events = events
    yield w
    await w.close()


@pytest.mark.parametrize("pcmu_only", [False, True], ids=["opus-pcmu", "pcmu-passthrough"])
async def test_browser_to_trunk_call(worker: MediaWorker, pcmu_only: bool):
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = pc.addTransceiver(SineTrack(BROWSER_HZ), direction="sendrecv")
    wanted = "audio/pcmu" if pcmu_only else "audio/opus"
    caps = RTCRtpSender.getCapabilities("audio")
    transceiver.setCodecPreferences([c for c in caps.codecs if c.mimeType.lower() == wanted])
    listener = Listener(pc)
    sent_to_browser = spy_on(worker.port, "send_rtp")
    rtcp_to_browser = spy_on(worker.port, "send_rtcp")
    loop = asyncio.get_running_loop()
    trunk_transport, trunk = await loop.create_datagram_endpoint(TrunkPeer, local_addr=("127.0.0.1", 0))
    try:
        await pc.setLocalDescription(await pc.createOffer())
        te_pt, te_rate = (101, 8000) if pcmu_only else (126, 48000)
        browser_offer = add_telephone_event(pc.localDescription.sdp, te_pt, te_rate)

        to_trunk = SessionDescription.parse(await worker.offer("call-1", "from-1", browser_offer))
        section = to_trunk.media[0]
        assert section.proto == "RTP/AVP" and to_trunk.effective_connection(0).address == "127.0.0.1"
        assert [section.rtpmap[pt].encoding for pt in section.payload_types] == ["PCMU", "PCMA", "telephone-event"]
        trunk_answer = create_answer(to_trunk, [("PCMU", 8000), ("telephone-event", 8000)], "127.0.0.1",
                                     trunk_transport.get_extra_info("sockname")[1])
        to_browser = SessionDescription.parse(
            await worker.answer("call-1", "from-1", "to-1", trunk_answer.to_bytes()))
        bsec = to_browser.media[0]
        assert bsec.proto == "UDP/TLS/RTP/SAVPF" and to_browser.has_attribute("ice-lite")
        assert bsec.attribute("setup") == "passive" and bsec.has_attribute("rtcp-mux")
        assert bsec.attribute("fingerprint") and bsec.attributes("candidate")
        encodings = [bsec.rtpmap[pt].encoding.lower() for pt in bsec.payload_types]
        assert encodings == (["pcmu", "telephone-event"] if pcmu_only else ["opus", "telephone-event"])
        assert worker.calls["call-1"].bridge.passthrough is pcmu_only

        await pc.setRemoteDescription(RTCSessionDescription(sdp=to_browser.to_bytes().decode(), type="answer"))
        before = worker.relay.stats() if worker.relay is not None else {}
        await trunk.play(("127.0.0.1", section.port), 2.4, dtmf_at=1.6)
        await asyncio.sleep(0.3)
        after = worker.relay.stats() if worker.relay is not None else {}
        stats = worker.query("call-1")
    finally:
        await pc.close()
        listener.close()
        trunk_transport.close()
    final = await worker.delete("call-1")
    assert final["legs"]["from-1"]["packets_in"] > 40 and stats["passthrough"] is pcmu_only
    if worker.relay is not None and not pcmu_only:
        # both legs negotiated telephone-event: the C tick transcodes both ways, and hands the direction that
        # carries the DTMF event to Python's tick while the event lasts (the digit below is relayed)
        assert after["transcoded"] - before["transcoded"] > 180, after
    # the browser leg has its RTCP session: aiortc's reports arrived, its stream was counted without loss
    browser = stats["legs"]["from-1"]
    assert browser["rtcp_received"] >= 1 and browser["rx_lost"] == 0, browser
    # ... and our RTCP goes to the browser through its SRTCP keys: at least the BYE when the call ends
    sent = [packet for datagram in rtcp_to_browser for packet in parse_compound(datagram)]
    ours = {p.ssrc for p in sent if isinstance(p, SenderReport) and p.packet_count > 40}
    assert any(isinstance(p, Bye) and set(p.ssrcs) & ours for p in sent), sent

    # browser -> trunk: PCMU carrying 440 Hz
    audio = [p for p in trunk.received if p[1] & 0x7F == 0]
    assert len(audio) >= 40, (len(trunk.received), stats)
    pcm = np.frombuffer(g711.ulaw_decode(b"".join(p[12:] for p in audio[10:])), "<i2")
    assert abs(dominant_frequency(pcm, 8000) - BROWSER_HZ) < 15

    # trunk -> browser: aiortc decoded 1 kHz (mono 8 kHz for PCMU, 48 kHz stereo for Opus)
    assert len(listener.frames) >= 40, len(listener.frames)
    samples, rate = listener.samples(10, 70)
    assert abs(dominant_frequency(samples, rate) - TRUNK_HZ) < 15

    # DTMF: reported as a digit, and sent on to the browser as its telephone-event (PT, clock)
    dtmf = [e for e in worker.test_events if e["event"] == "dtmf"]
    assert [(e["digit"], e["tag"], e["call_id"]) for e in dtmf] == [("5", "to-1", "call-1")]
    events = [p for p in sent_to_browser if p[1] & 0x7F == te_pt]
    assert events and all(decode_telephone_event(p[12:]).event == 5 for p in events)
    final_event = decode_telephone_event(events[-1][12:])
    assert final_event.end and final_event.duration == 100 * te_rate // 1000


@pytest.mark.parametrize("prefer_passthrough", [True, False], ids=["pcmu-passthrough", "opus-pcmu"])
async def test_trunk_to_browser_call(worker: MediaWorker, prefer_passthrough: bool):
    """The inbound case: the trunk offers PCMU, the worker offers WebRTC to the browser (aiortc answers)."""
    worker.settings.prefer_passthrough = prefer_passthrough
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    listener = Listener(pc)
    loop = asyncio.get_running_loop()
    trunk_transport, trunk = await loop.create_datagram_endpoint(TrunkPeer, local_addr=("127.0.0.1", 0))
    trunk_port = trunk_transport.get_extra_info("sockname")[1]
    try:
        trunk_offer = SessionDescription.parse(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {trunk_port} RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"
            "a=ptime:20\r\na=sendrecv\r\n")
        to_trunk = await browser_takes_trunk_call(worker, pc, "call-2", trunk_offer.to_bytes())
        section = to_trunk.media[0]
        assert section.proto == "RTP/AVP" and section.rtpmap[section.payload_types[0]].encoding == "PCMU"
        bridge = worker.calls["call-2"].bridge
        assert bridge.passthrough is prefer_passthrough
        before = worker.relay.stats() if worker.relay is not None else {}
        await trunk.play(("127.0.0.1", section.port), 2.0)
        await asyncio.sleep(0.3)
        if worker.relay is not None:
            # SRTP<->RTP passthrough is forwarded by the C data plane (both directions); when transcoding, it
            # puts the packets of both legs (SRTP decrypted) straight into the bridge's jitter buffers, and its
            # tick transcodes, packetizes and sends both ways (aiortc answers without telephone-event: the
            # C tick also watches that direction for in-band keys)
            after = worker.relay.stats()
            forwarded = after["forwarded"] - before["forwarded"]
            delivered = after["delivered"] - before["delivered"]
            transcoded = after["transcoded"] - before["transcoded"]
            if prefer_passthrough:
                assert forwarded > 150 and delivered == 0 and transcoded == 0, after
            else:
                assert forwarded == 0 and delivered > 150 and transcoded > 150, after
                assert after["transcoders"] == 2, after
    finally:
        await pc.close()
        listener.close()
        trunk_transport.close()
    await worker.delete("call-2")

    assert_tones_both_ways(trunk, listener)


async def test_keys_in_a_trunks_audio_are_reported_while_the_c_tick_transcodes(worker: MediaWorker):
    """A trunk without telephone-event sends keys as tones: the transcoded call runs in the C tick, which
    watches the trunk's decoded audio and hands each key to Python's detector; the digits are reported once
    each (source "inband") and both directions go back to C afterwards."""
    if worker.relay is None:
        pytest.skip("the C data plane is not built")
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    listener = Listener(pc)
    loop = asyncio.get_running_loop()
    trunk_transport, trunk = await loop.create_datagram_endpoint(TrunkPeer, local_addr=("127.0.0.1", 0))
    trunk_port = trunk_transport.get_extra_info("sockname")[1]
    worker.settings.prefer_passthrough = False
    try:
        trunk_offer = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                       f"m=audio {trunk_port} RTP/AVP 0 8\r\na=ptime:20\r\na=sendrecv\r\n")
        to_trunk = await browser_takes_trunk_call(worker, pc, "call-keys", trunk_offer)
        assert not worker.calls["call-keys"].bridge.passthrough
        before = worker.relay.stats()
        await trunk.play(("127.0.0.1", to_trunk.media[0].port), 2.4, keys_in_audio={0.8: "7", 1.2: "3", 1.6: "#"})
        await asyncio.sleep(0.3)
        after = worker.relay.stats()
    finally:
        await pc.close()
        listener.close()
        trunk_transport.close()
    await worker.delete("call-keys")
    dtmf = [(e["digit"], e["tag"], e["source"]) for e in worker.test_events if e["event"] == "dtmf"]
    assert dtmf == [("7", "trunk-tag", "inband"), ("3", "trunk-tag", "inband"), ("#", "trunk-tag", "inband")]
    assert after["transcoders"] == 2 and after["transcoded"] - before["transcoded"] > 150, after
    assert_tones_both_ways(trunk, listener)


@pytest.mark.parametrize("codec", ["opus", "pcmu"])
async def test_browser_supervisor_whispers_to_a_trunk_call(worker: MediaWorker, codec: str):
    """A supervisor in a browser (aiortc) joins a trunk-to-trunk call with ``mix``: it hears the call, and its
    whisper reaches the agent's leg only."""
    loop = asyncio.get_running_loop()
    a_transport, a = await loop.create_datagram_endpoint(TrunkPeer, local_addr=("127.0.0.1", 0))
    b_transport, b = await loop.create_datagram_endpoint(TrunkPeer, local_addr=("127.0.0.1", 0))
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    listener = Listener(pc)
    try:
        a_offer = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                   f"m=audio {a_transport.get_extra_info('sockname')[1]} RTP/AVP 0\r\na=sendrecv\r\n")
        to_b = SessionDescription.parse(await worker.offer("call-w", "a-tag", a_offer, transport="RTP/AVP"))
        b_answer = create_answer(to_b, [("PCMU", 8000)], "127.0.0.1", b_transport.get_extra_info("sockname")[1])
        to_a = SessionDescription.parse(await worker.answer("call-w", "a-tag", "b-tag", b_answer.to_bytes()))
        transceiver = pc.addTransceiver(SineTrack(BROWSER_HZ), direction="sendrecv")
        caps = RTCRtpSender.getCapabilities("audio")
        transceiver.setCodecPreferences([c for c in caps.codecs if c.mimeType.lower() == f"audio/{codec}"])
        await pc.setLocalDescription(await pc.createOffer())
        answer = await worker.mix("call-w", "sup-tag", pc.localDescription.sdp, "whisper", whisper_to="b-tag")
        section = SessionDescription.parse(answer).media[0]
        assert section.proto == "UDP/TLS/RTP/SAVPF" and section.rtpmap[section.payload_types[0]].encoding.lower() == codec
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await a.play(("127.0.0.1", to_a.media[0].port), 2.4)
        stats = worker.query("call-w")
    finally:
        await pc.close()
        listener.close()
        await worker.delete("call-w")
        a_transport.close()
        b_transport.close()
    member = stats["members"]["sup-tag"]
    assert member["connected"] and member["mode"] == "whisper" and member["whisper_to"] == "b-tag"
    assert member["packets_in"] > 40 and member["packets_out"] > 40, member
    # the browser heard A (B is silent)
    assert len(listener.frames) >= 60, len(listener.frames)
    samples, rate = listener.samples(30, 90)
    assert abs(dominant_frequency(samples, rate) - TRUNK_HZ) < 15
    # B (the agent) heard A and the whisper; A heard nothing of it
    b_pcm = np.frombuffer(g711.ulaw_decode(b"".join(p[12:] for p in b.received[-60:])), "<i2")
    spectrum = np.abs(np.fft.rfft(b_pcm * np.hanning(b_pcm.size)))
    bins = np.fft.rfftfreq(b_pcm.size, 1 / 8000)
    for freq in (TRUNK_HZ, BROWSER_HZ):
        assert spectrum[np.abs(bins - freq) <= 15].max() > 0.3 * spectrum.max(), freq
    assert a.received == []          # A hears only B, who is silent: the whisper never reaches it


async def test_browser_behind_turn_relay_only(worker: MediaWorker, turn_server: tuple[str, str, str]):
    """An agent whose browser may only use TURN (iceTransportPolicy "relay", a real coturn): the ICE-lite
    worker answers its checks from the relayed address, and audio flows both ways through the relay."""
    from aiortc import RTCIceServer
    from aiortc.rtcconfiguration import RTCIceTransportPolicy

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[RTCIceServer(*turn_server)],
                                            iceTransportPolicy=RTCIceTransportPolicy.RELAY))
    transceiver = pc.addTransceiver(SineTrack(BROWSER_HZ), direction="sendrecv")
    caps = RTCRtpSender.getCapabilities("audio")
    transceiver.setCodecPreferences([c for c in caps.codecs if c.mimeType.lower() == "audio/opus"])
    listener = Listener(pc)
    loop = asyncio.get_running_loop()
    trunk_transport, trunk = await loop.create_datagram_endpoint(TrunkPeer, local_addr=("127.0.0.1", 0))
    try:
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
        assert "typ relay" in offer and "typ host" not in offer      # only the TURN allocation is offered
        to_trunk = SessionDescription.parse(await worker.offer("call-turn", "agent", offer))
        section = to_trunk.media[0]
        answer = create_answer(to_trunk, [("PCMU", 8000)], "127.0.0.1", trunk_transport.get_extra_info("sockname")[1])
        to_browser = await worker.answer("call-turn", "agent", "trunk", answer.to_bytes())
        await pc.setRemoteDescription(RTCSessionDescription(sdp=to_browser, type="answer"))
        await trunk.play(("127.0.0.1", section.port), 2.4)
        await asyncio.sleep(0.3)
        stats = worker.query("call-turn")
    finally:
        await pc.close()
        listener.close()
        trunk_transport.close()
    await worker.delete("call-turn")
    agent = stats["legs"]["agent"]
    relayed = [line.split()[4:6] for line in offer.splitlines() if "typ relay" in line]
    assert agent["connected"] and agent["remote"] in [[host, int(port)] for host, port in relayed], (agent, relayed)
    assert_tones_both_ways(trunk, listener)


class StunProbe(asyncio.DatagramProtocol):
    """A browser's new network path after an ICE restart: sends checks, keeps what comes back."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.received: list[bytes] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.received.append(data)


async def test_ice_restart_moves_the_browser_leg_to_a_new_path(worker: MediaWorker):
    """The browser re-offers with new ICE credentials (its network changed): our answer has new ones and the
    same fingerprint, checks with the old credentials are refused, a check from the new path nominates it,
    and the media goes there from then on (same DTLS keys)."""
    from media.stun import binding_request, parse as parse_stun

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = pc.addTransceiver(SineTrack(BROWSER_HZ), direction="sendrecv")
    caps = RTCRtpSender.getCapabilities("audio")
    transceiver.setCodecPreferences([c for c in caps.codecs if c.mimeType.lower() == "audio/opus"])
    loop = asyncio.get_running_loop()
    trunk_transport, trunk = await loop.create_datagram_endpoint(TrunkPeer, local_addr=("127.0.0.1", 0))
    probe_transport, probe = await loop.create_datagram_endpoint(StunProbe, local_addr=("127.0.0.1", 0))
    try:
        await pc.setLocalDescription(await pc.createOffer())
        offer = SessionDescription.parse(pc.localDescription.sdp)
        to_trunk = SessionDescription.parse(await worker.offer("call-r", "agent", offer.to_bytes()))
        trunk_sdp = create_answer(to_trunk, [("PCMU", 8000)], "127.0.0.1", trunk_transport.get_extra_info("sockname")[1])
        first = SessionDescription.parse(await worker.answer("call-r", "agent", "trunk", trunk_sdp.to_bytes()))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=first.to_bytes().decode(), type="answer"))
        await trunk.play(("127.0.0.1", to_trunk.media[0].port), 1.0)
        assert worker.query("call-r")["legs"]["agent"]["connected"]
        old_local = (first.media[0].attribute("ice-ufrag"), first.media[0].attribute("ice-pwd"))

        # the re-INVITE of an ICE restart: new ufrag/pwd, same fingerprint and setup
        restart = offer.copy()
        restart.origin.sess_version += 1
        section = restart.media[0]
        for i, attribute in enumerate(section.attributes):
            if attribute.name == "ice-ufrag":
                section.attributes[i] = type(attribute)("ice-ufrag", "newufrag")
            elif attribute.name == "ice-pwd":
                section.attributes[i] = type(attribute)("ice-pwd", "n" * 24)
        await worker.offer("call-r", "agent", restart.to_bytes())
        answer = SessionDescription.parse(await worker.answer("call-r", "agent", "trunk", trunk_sdp.to_bytes()))
        ufrag, pwd = answer.media[0].attribute("ice-ufrag"), answer.media[0].attribute("ice-pwd")
        assert (ufrag, pwd) != old_local and ufrag and pwd
        assert answer.media[0].attribute("fingerprint") == first.media[0].attribute("fingerprint")
        assert answer.origin.sess_version == first.origin.sess_version + 1

        worker_ice = ("127.0.0.1", worker.port.port)
        probe.transport.sendto(binding_request(f"{old_local[0]}:newufrag", old_local[1], use_candidate=True), worker_ice)
        probe.transport.sendto(binding_request(f"{ufrag}:newufrag", pwd, use_candidate=True, tie_breaker=7),
                               worker_ice)
        await asyncio.sleep(0.2)
        replies = [parse_stun(p) for p in probe.received if p[0] < 4]
        assert [r.attributes.get("ERROR-CODE", (None,))[0] for r in replies] == [401, None], replies
        probe.received.clear()
        await trunk.play(("127.0.0.1", to_trunk.media[0].port), 1.0)
        stats = worker.query("call-r")
    finally:
        await pc.close()
        trunk_transport.close()
        probe_transport.close()
    await worker.delete("call-r")
    assert stats["legs"]["agent"]["remote"] == list(probe_transport.get_extra_info("sockname"))
    # the trunk's audio goes there: one SRTP stream (its header is in the clear) of Opus, our SSRC, no gaps
    srtp = [p for p in probe.received if 128 <= p[0] < 192 and not 192 <= p[1] <= 223]
    assert len(srtp) >= 40, len(probe.received)
    assert {p[1] & 0x7F for p in srtp} == {first.media[0].payload_types[0]}
    assert len({struct.unpack_from("!I", p, 8)[0] for p in srtp}) == 1
    seqs = [struct.unpack_from("!H", p, 2)[0] for p in srtp]
    assert all((y - x) & 0xFFFF == 1 for x, y in zip(seqs, seqs[1:]))
