"""media.webrtc against an independent peer: aiortc's RTCPeerConnection plays the browser.

Two aiortc peers offer audio sendrecv with a 440 Hz tone (Opus); one WebRtcPort (one UDP socket)
answers both on 127.0.0.1 as an ICE-lite, DTLS-server, SRTP endpoint. We decrypt their RTP (and check
the Opus decodes to ~440 Hz), and echo the Opus back as our own SRTP stream, which aiortc accepts: its
remote track yields decoded frames.
"""
from __future__ import annotations

import asyncio
import struct

import numpy as np
import pytest

av = pytest.importorskip("av")
aiortc = pytest.importorskip("aiortc")

from aiortc import (  # noqa: E402
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)

from media.certificate import DtlsCertificate  # noqa: E402
from media.webrtc import (  # noqa: E402
    LegConnected,
    LegFailed,
    LegNominated,
    RemoteTransport,
    RtpReceived,
    WebRtcPort,
)
from media.sdp import SessionDescription, create_answer  # noqa: E402

from aiortc_peers import SineTrack  # noqa: E402

pytestmark = pytest.mark.integration

SAMPLE_RATE = 48000
TONE_HZ = 440.0


def rtp_fields(packet: bytes) -> tuple[int, int, int, int, bytes]:
    """(payload type, seq, timestamp, ssrc, payload) of a plain RTP packet (no extension parsing
    beyond skipping the CSRCs and the header extension)."""
    b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", packet)
    offset = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        (words,) = struct.unpack_from("!H", packet, offset + 2)
        offset += 4 + 4 * words
    end = len(packet)
    if b0 & 0x20:
        end -= packet[-1]
    return b1 & 0x7F, seq, ts, ssrc, packet[offset:end]


def dominant_frequency(pcm: np.ndarray, rate: int) -> float:
    window = pcm.astype(np.float64) * np.hanning(len(pcm))
    spectrum = np.abs(np.fft.rfft(window))
    return float(np.argmax(spectrum[1:]) + 1) * rate / len(pcm)


def decode_opus(payloads: list[bytes]) -> np.ndarray:
    """Mono 48 kHz PCM: with callpath's own media.opus (libopus via ctypes) when it is usable, else PyAV."""
    try:
        from media.opus import OpusDecoder

        decoder = OpusDecoder(sample_rate=SAMPLE_RATE, channels=1)
    except Exception:  # media.opus absent, or no libopus on this machine
        return _decode_opus_av(payloads)
    return np.frombuffer(b"".join(decoder.decode(p) for p in payloads), dtype="<i2")


def _decode_opus_av(payloads: list[bytes]) -> np.ndarray:
    decoder = av.CodecContext.create("opus", "r")
    decoder.sample_rate = SAMPLE_RATE
    decoder.layout = "stereo"
    chunks = []
    for payload in payloads:
        for frame in decoder.decode(av.Packet(payload)):
            samples = frame.to_ndarray()
            # planar: (channels, n); packed: (1, n * channels) interleaved; keep the left channel
            chunks.append(samples[0] if frame.format.is_planar else samples[0, :: len(frame.layout.channels)])
    return np.concatenate(chunks)


class Browser:
    """One aiortc RTCPeerConnection playing an agent's browser, and what our side saw of it."""

    def __init__(self, port: WebRtcPort, name: str, echo_ssrc: int) -> None:
        self.port = port
        self.name = name
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.events: list = []
        self.rtp_in: list[bytes] = []
        self.frames_back: list = []
        self.connected = asyncio.Event()
        self.enough_rtp = asyncio.Event()
        self.got_frames = asyncio.Event()
        self.consumers: list[asyncio.Task] = []
        self.echo = [1000, 5000, echo_ssrc]  # our seq, timestamp, SSRC towards the browser
        self.leg = None
        self.offer: SessionDescription | None = None
        self.pc.on("track", self._on_track)

    def _on_track(self, track) -> None:
        self.consumers.append(asyncio.ensure_future(self._consume(track)))

    async def _consume(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except Exception:  # MediaStreamError once the peer connection closes
                return
            self.frames_back.append(frame)
            if len(self.frames_back) >= 20:
                self.got_frames.set()

    def on_event(self, event) -> None:
        """The leg's own event handler (WebRtcPort.create_leg(on_event=...))."""
        assert event.leg is self.leg
        if isinstance(event, RtpReceived):
            self.rtp_in.append(event.packet)
            # echo the Opus payload back as our own stream (own SSRC, seq, timestamp)
            pt, _seq, _ts, _ssrc, payload = rtp_fields(event.packet)
            self.echo[0] = (self.echo[0] + 1) & 0xFFFF
            self.echo[1] = (self.echo[1] + 960) & 0xFFFFFFFF
            header = struct.pack("!BBHII", 0x80, pt, self.echo[0], self.echo[1], self.echo[2])
            assert self.port.send_rtp(event.leg, header + payload)
            if len(self.rtp_in) >= 60:
                self.enough_rtp.set()
            return
        self.events.append(event)
        if isinstance(event, LegConnected):
            self.connected.set()
        if isinstance(event, LegFailed):
            self.connected.set()
            self.enough_rtp.set()

    async def call(self) -> None:
        """Offer (aiortc), answer (callpath), and run until media flowed both ways."""
        self.pc.addTrack(SineTrack(TONE_HZ))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.offer = offer = SessionDescription.parse(self.pc.localDescription.sdp)
        assert offer.media[0].proto == "UDP/TLS/RTP/SAVPF"

        port = self.port
        self.leg = port.create_leg(RemoteTransport.from_sdp(offer, 0), leg_id=self.name, on_event=self.on_event)
        answer = create_answer(offer, [("opus", SAMPLE_RATE, 2)], port.public_ip, port.port)
        self.leg.add_transport_attributes(answer, port.public_ip, port.port)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer.to_bytes().decode(), type="answer"))

        await asyncio.wait_for(self.connected.wait(), 5.0)
        assert not any(isinstance(e, LegFailed) for e in self.events), self.events
        await asyncio.wait_for(self.enough_rtp.wait(), 5.0)
        await asyncio.wait_for(self.got_frames.wait(), 5.0)

    async def close(self) -> None:
        await self.pc.close()
        for task in self.consumers:
            task.cancel()


async def test_two_aiortc_browsers_on_one_webrtc_port():
    certificate = DtlsCertificate.generate()
    port = await WebRtcPort.open(certificate, "127.0.0.1", 0)
    browsers = [Browser(port, "agent-1", 0x0C0FFEE1), Browser(port, "agent-2", 0x0C0FFEE2)]
    try:
        await asyncio.gather(*(b.call() for b in browsers))
        assert len(port.legs) == 2 and len(port.agent.legs) == 2
        for browser in browsers:
            assert browser.pc.iceConnectionState in ("completed", "connected")
    finally:
        for browser in browsers:
            await browser.close()
        port.close()

    assert browsers[0].leg.ice.selected_address != browsers[1].leg.ice.selected_address
    for browser in browsers:
        leg, offer = browser.leg, browser.offer
        assert leg.dtls_role == "server"
        assert any(isinstance(e, LegNominated) for e in browser.events)
        connected = next(e for e in browser.events if isinstance(e, LegConnected))
        assert connected.profile.name == "AEAD_AES_256_GCM"

        # what aiortc sent: one Opus stream, contiguous sequence numbers, 20 ms timestamps
        fields = [rtp_fields(p) for p in browser.rtp_in]
        opus_pt = int(offer.media[0].formats[0])
        assert offer.media[0].rtpmap[opus_pt].encoding.lower() == "opus"
        assert {f[0] for f in fields} == {opus_pt}
        assert len({f[3] for f in fields}) == 1
        seqs = [f[1] for f in fields]
        assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:])), seqs
        assert all((b[2] - a[2]) & 0xFFFFFFFF == 960 for a, b in zip(fields, fields[1:]))
        # ... and it is a 440 Hz tone
        pcm = decode_opus([f[4] for f in fields[5:]])  # skip the encoder's start-up
        assert abs(dominant_frequency(pcm, SAMPLE_RATE) - TONE_HZ) < 10.0

        # what we sent back was decrypted and decoded by aiortc
        assert len(browser.frames_back) >= 20
        assert browser.frames_back[0].sample_rate == SAMPLE_RATE
