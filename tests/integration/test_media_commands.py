"""play/stop_play, record/stop_record and dtmf against a real worker process, plain-RTP peers on both legs."""
from __future__ import annotations

import asyncio
import random
import struct
import wave

import numpy as np
import pytest

from media import g711
from media.audio import dominant_frequency, tone
from media.client import MediaClient, MediaControlError
from media.dtmf import decode_telephone_event
from media.worker import MediaSettings
from media.sdp import SessionDescription, create_answer, create_offer


pytestmark = pytest.mark.integration

ULAW = 0


class Peer(asyncio.DatagramProtocol):
    """One party's RTP socket: keeps what the worker sends it, sends a tone when asked."""

    def __init__(self) -> None:
        self.received: list[tuple[float, bytes]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        if not 192 <= data[1] <= 223:                       # not RTCP
            self.received.append((asyncio.get_running_loop().time(), data))

    @property
    def port(self) -> int:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]

    def audio(self, pt: int, since: float = 0.0) -> list[bytes]:
        return [p for t, p in self.received if t >= since and p[1] & 0x7F == pt]

    async def send_tone(self, freq: float, to: tuple[str, int], law: str, pt: int, stop: asyncio.Event) -> None:
        """20 ms G.711 frames of a continuous tone until ``stop``."""
        samples = tone(freq, 8000, 30.0, amplitude=0.3)
        encode = g711.ulaw_encode if law == "ulaw" else g711.alaw_encode
        seq, ts, i = random.randrange(65536), random.randrange(1 << 32), 0
        loop = asyncio.get_running_loop()
        start = loop.time()
        while not stop.is_set():
            frame = samples[i * 160:(i + 1) * 160].astype("<i2").tobytes()
            assert self.transport is not None
            self.transport.sendto(struct.pack("!BBHII", 0x80, pt, seq, ts, 0xC0FFEE ^ int(freq)) + encode(frame), to)
            seq, ts, i = (seq + 1) & 0xFFFF, (ts + 160) & 0xFFFFFFFF, i + 1
            await asyncio.sleep(max(0.0, start + i * 0.02 - loop.time()))


def decoded(packets: list[bytes], law: str = "ulaw") -> np.ndarray:
    decode = g711.ulaw_decode if law == "ulaw" else g711.alaw_decode
    return np.frombuffer(b"".join(decode(p[12:]) for p in packets), "<i2")


class Call:
    """A call through the worker between two plain-RTP peers (A offers ``a_codecs``, B answers ``b_codecs``)."""

    def __init__(self, client: MediaClient, call_id: str) -> None:
        self.client = client
        self.call_id = call_id
        self.a = Peer()
        self.b = Peer()
        self.to_a: tuple[str, int] = ("", 0)
        self.to_b: tuple[str, int] = ("", 0)

    async def setup(self, a_codecs, b_codecs) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self.a, local_addr=("127.0.0.1", 0))
        await loop.create_datagram_endpoint(lambda: self.b, local_addr=("127.0.0.1", 0))
        offer = create_offer("127.0.0.1", self.a.port, a_codecs)
        to_b = SessionDescription.parse(await self.client.offer(self.call_id, "a-tag", offer.to_bytes(),
                                                                transport="RTP/AVP"))
        answer = create_answer(to_b, b_codecs, "127.0.0.1", self.b.port)
        to_a = SessionDescription.parse(await self.client.answer(self.call_id, "a-tag", "b-tag", answer.to_bytes()))
        self.to_a = ("127.0.0.1", to_a.media[0].port)      # where A sends (the worker's A-side port)
        self.to_b = ("127.0.0.1", to_b.media[0].port)

    async def setup_mode(self, mode: str) -> tuple[str, int]:
        """``passthrough``: PCMU both sides; ``transcoding``: A PCMA, B PCMU. Returns A's (law, payload type)."""
        if mode == "passthrough":
            await self.setup(PCMU_TE, PCMU_TE)
            return "ulaw", ULAW
        await self.setup([("PCMA", 8000), ("telephone-event", 8000)], PCMU_TE)
        return "alaw", 8

    async def close(self) -> None:
        try:
            await self.client.delete(self.call_id)
        except MediaControlError:
            pass
        for peer in (self.a, self.b):
            if peer.transport is not None:
                peer.transport.close()


PCMU_TE = [("PCMU", 8000), ("telephone-event", 8000)]


async def tear_down(stop: asyncio.Event, call: Call, client: MediaClient, *peers: Peer) -> None:
    """Stop the tone senders, end the call, close the control connection and the members' sockets."""
    stop.set()
    await call.close()
    await client.close()
    for peer in peers:
        if peer.transport is not None:
            peer.transport.close()


def write_wav(path, freq: float, seconds: float) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(tone(freq, 8000, seconds, amplitude=0.4).astype("<i2").tobytes())


async def test_play_file_replaces_what_the_leg_hears(worker_process, tmp_path):
    wav = tmp_path / "prompt600.wav"
    write_wav(wav, 600.0, 0.6)
    events: list[dict] = []
    done = asyncio.Event()

    def on_event(event: dict) -> None:
        events.append(event)
        if event.get("event") == "play-done":
            done.set()

    client = await MediaClient.open(worker_process.address, on_event=on_event)
    call = Call(client, "call-play")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        await call.setup(PCMU_TE, PCMU_TE)
        sender = asyncio.ensure_future(call.a.send_tone(440.0, call.to_a, "ulaw", ULAW, stop))
        await asyncio.sleep(0.3)
        before = decoded(call.b.audio(ULAW)[-10:])
        assert abs(dominant_frequency(before, 8000) - 440) < 10        # B hears A

        reply = await client.call_play("call-play", "b-tag", str(wav))
        assert reply["frames"] == 30 and reply["tag"] == "b-tag"
        started = loop.time()
        await asyncio.wait_for(done.wait(), 3.0)
        ended = loop.time()
        during = [p for t, p in call.b.received if started + 0.1 <= t <= ended - 0.1 and p[1] & 0x7F == ULAW]
        assert len(during) >= 10
        assert abs(dominant_frequency(decoded(during), 8000) - 600) < 10   # the prompt instead of A
        assert events[-1] == {"event": "play-done", "leg": "call-play/b-tag", "call_id": "call-play", "tag": "b-tag",
                              "reason": "done"}
        # A never heard the prompt: only its own leg changed
        await asyncio.sleep(0.3)
        after = decoded(call.b.audio(ULAW, since=ended + 0.1))
        assert abs(dominant_frequency(after, 8000) - 440) < 10          # back to A
        seqs = [struct.unpack_from("!H", p, 2)[0] for _, p in call.b.received]
        assert all((y - x) & 0xFFFF == 1 for x, y in zip(seqs, seqs[1:]))   # one continuous stream

        # a looping beep, stopped by stop_play
        await client.call_play("call-play", "b-tag", beep={"freq": 800, "ms": 100}, loop=True)
        await asyncio.sleep(0.4)
        assert (await client.call_stop_play("call-play", "b-tag"))["stopped"] is True
        assert (await client.call_stop_play("call-play", "b-tag"))["stopped"] is False
        stop.set()
        await sender
    finally:
        stop.set()
        await call.close()
        await client.close()


@pytest.mark.parametrize("mode", ["passthrough", "transcoding"])
async def test_record_puts_a_left_and_b_right(worker_process, tmp_path, mode):
    client = await MediaClient.open(worker_process.address)
    call = Call(client, f"call-rec-{mode}")
    stop = asyncio.Event()
    path = tmp_path / "call.wav"
    try:
        a_law, a_pt = await call.setup_mode(mode)
        assert (await client.query(call.call_id))["passthrough"] is (mode == "passthrough")
        senders = [asyncio.ensure_future(call.a.send_tone(440.0, call.to_a, a_law, a_pt, stop)),
                   asyncio.ensure_future(call.b.send_tone(1000.0, call.to_b, "ulaw", ULAW, stop))]
        await asyncio.sleep(0.2)
        reply = await client.call_record(call.call_id, str(path))
        assert reply["channels"] == {"left": "a-tag", "right": "b-tag"}
        with pytest.raises(MediaControlError, match="already being recorded"):
            await client.call_record(call.call_id, str(path))
        await asyncio.sleep(1.0)
        result = await client.call_stop_record(call.call_id)
        stop.set()
        await asyncio.gather(*senders)
        assert result["path"] == str(path) and 0.8 <= result["duration"] <= 1.3
        with pytest.raises(MediaControlError, match="not being recorded"):
            await client.call_stop_record(call.call_id)
    finally:
        stop.set()
        await call.close()
        await client.close()
    with wave.open(str(path), "rb") as w:
        assert w.getnchannels() == 2 and w.getframerate() == 8000 and w.getsampwidth() == 2
        data = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    assert data.shape[0] >= 6000
    middle = data[1000:-1000]
    assert abs(dominant_frequency(middle[:, 0], 8000) - 440) < 10
    assert abs(dominant_frequency(middle[:, 1], 8000) - 1000) < 10


async def test_dtmf_to_a_leg_with_telephone_event(worker_process):
    events: list[dict] = []
    sent = asyncio.Event()

    def on_event(event: dict) -> None:
        events.append(event)
        if event.get("event") == "dtmf-sent":
            sent.set()

    client = await MediaClient.open(worker_process.address, on_event=on_event)
    call = Call(client, "call-dtmf")
    stop = asyncio.Event()
    try:
        await call.setup(PCMU_TE, PCMU_TE)
        sender = asyncio.ensure_future(call.a.send_tone(440.0, call.to_a, "ulaw", ULAW, stop))
        await asyncio.sleep(0.2)
        reply = await client.call_dtmf("call-dtmf", "b-tag", "12", duration_ms=100)
        assert reply["mode"] == "rfc4733"
        await asyncio.wait_for(sent.wait(), 3.0)
        await asyncio.sleep(0.2)
        stop.set()
        await sender
    finally:
        stop.set()
        await call.close()
        await client.close()
    te = [p for _, p in call.b.received if p[1] & 0x7F == 101]
    digits: list[str] = []
    for p in te:
        ev = decode_telephone_event(p[12:])
        if ev.end and (not digits or digits[-1][1] != struct.unpack_from("!I", p, 4)[0]):
            digits.append((ev.digit, struct.unpack_from("!I", p, 4)[0], ev.duration))
    assert [d[0] for d in digits] == ["1", "2"]
    assert all(d[2] == 800 for d in digits)                    # 100 ms at 8 kHz
    assert sum(1 for p in te if p[1] & 0x80) == 2              # one marker per digit
    seqs = [struct.unpack_from("!H", p, 2)[0] for _, p in call.b.received]
    assert all((y - x) & 0xFFFF == 1 for x, y in zip(seqs, seqs[1:]))   # events inside B's one stream
    assert events[-1]["event"] == "dtmf-sent" and events[-1]["tag"] == "b-tag"
    # A's side heard no events
    assert not [p for _, p in call.a.received if p[1] & 0x7F == 101]


async def test_dtmf_in_band_when_the_leg_has_no_telephone_event(worker_process):
    client = await MediaClient.open(worker_process.address)
    call = Call(client, "call-dtmf-inband")
    try:
        await call.setup(PCMU_TE, [("PCMU", 8000)])             # B negotiated no telephone-event
        reply = await client.call_dtmf("call-dtmf-inband", "b-tag", "5", duration_ms=200)
        assert reply["mode"] == "inband"
        await asyncio.sleep(0.5)
    finally:
        await call.close()
        await client.close()
    from media.dtmf import DtmfDetector, DtmfDigitEnded
    detector = DtmfDetector()
    found = []
    for p in call.b.audio(ULAW):
        found += [e.digit for e in detector.process_frame(decoded([p])) if isinstance(e, DtmfDigitEnded)]
    for _ in range(5):
        found += [e.digit for e in detector.process_frame(np.zeros(160, np.int16)) if isinstance(e, DtmfDigitEnded)]
    assert found == ["5"]


async def test_errors_are_clear(worker_process, tmp_path):
    client = await MediaClient.open(worker_process.address)
    call = Call(client, "call-err")
    try:
        with pytest.raises(MediaControlError, match="unknown call 'nope'"):
            await client.call_play("nope", "b-tag", beep=True)
        with pytest.raises(MediaControlError, match="unknown call 'nope'"):
            await client.call_record("nope", str(tmp_path / "x.wav"))
        with pytest.raises(MediaControlError, match="unknown call 'nope'"):
            await client.call_dtmf("nope", "b-tag", "1")
        await call.setup(PCMU_TE, PCMU_TE)
        with pytest.raises(MediaControlError, match="no leg with tag 'zzz'"):
            await client.call_play("call-err", "zzz", beep=True)
        with pytest.raises(MediaControlError, match="no leg with tag 'zzz'"):
            await client.call_dtmf("call-err", "zzz", "1")
        with pytest.raises(MediaControlError, match="prompt file not found: .*missing.wav"):
            await client.call_play("call-err", "b-tag", str(tmp_path / "missing.wav"))
        with pytest.raises(MediaControlError, match="needs 'file'"):
            await client.call_play("call-err", "b-tag")
        with pytest.raises(MediaControlError, match="not a string of DTMF digits"):
            await client.call_dtmf("call-err", "b-tag", "1x")
        with pytest.raises(MediaControlError, match="duration_ms"):
            await client.call_dtmf("call-err", "b-tag", "1", duration_ms=5)
        with pytest.raises(MediaControlError, match="does not exist"):
            await client.call_record("call-err", str(tmp_path / "no" / "such" / "dir.wav"))
        with pytest.raises(MediaControlError, match="missing or non-string 'digits'"):
            await client.request("dtmf", call_id="call-err", tag="b-tag")
        # a call that is offered but not answered has no media to play into
        offer = create_offer("127.0.0.1", 9, PCMU_TE)
        await client.offer("call-half", "h-tag", offer.to_bytes(), transport="RTP/AVP")
        with pytest.raises(MediaControlError, match="not answered yet"):
            await client.call_play("call-half", "h-tag", beep=True)
        await client.delete("call-half")
        assert (await client.ping())["result"] == "pong"
    finally:
        await call.close()
        await client.close()


def band_level(samples: np.ndarray, freq: float) -> float:
    """Spectral magnitude around ``freq`` (Hann window, +-15 Hz), relative to the strongest bin."""
    x = samples.astype(np.float64)
    spectrum = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(x.size)))
    bins = np.fft.rfftfreq(x.size, 1 / 8000)
    return float(spectrum[np.abs(bins - freq) <= 15].max() / spectrum.max())


@pytest.mark.parametrize("mode", ["passthrough", "transcoding"])
async def test_mix_spy_then_whisper(worker_process, mode):
    client = await MediaClient.open(worker_process.address)
    call = Call(client, "call-mix")
    sup = Peer()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        a_law, a_pt = await call.setup_mode(mode)
        await loop.create_datagram_endpoint(lambda: sup, local_addr=("127.0.0.1", 0))
        senders = [asyncio.ensure_future(call.a.send_tone(440.0, call.to_a, a_law, a_pt, stop)),
                   asyncio.ensure_future(call.b.send_tone(1000.0, call.to_b, "ulaw", ULAW, stop))]
        await asyncio.sleep(0.2)
        offer = create_offer("127.0.0.1", sup.port, [("PCMU", 8000)])
        answer = SessionDescription.parse(await client.mix("call-mix", "sup-tag", offer.to_bytes(), "listen"))
        to_sup = ("127.0.0.1", answer.media[0].port)
        t0 = loop.time()
        await asyncio.sleep(0.8)
        heard = decoded(sup.audio(ULAW, since=t0 + 0.2))
        assert heard.size >= 160 * 20
        assert band_level(heard, 440) > 0.5 and band_level(heard, 1000) > 0.5     # the supervisor hears both

        # whisper to B: the supervisor sends 600 Hz; B hears A (440) + 600, A never hears 600
        whisper = asyncio.ensure_future(sup.send_tone(600.0, to_sup, "ulaw", ULAW, stop))
        await client.mix("call-mix", "sup-tag", offer.to_bytes(), "whisper", whisper_to="b-tag")
        t1 = loop.time()
        await asyncio.sleep(0.8)
        b_heard = decoded(call.b.audio(ULAW, since=t1 + 0.2))
        a_heard = decoded(call.a.audio(a_pt, since=t1 + 0.2), a_law)
        assert band_level(b_heard, 440) > 0.5 and band_level(b_heard, 600) > 0.5
        assert band_level(a_heard, 1000) > 0.9 and band_level(a_heard, 600) < 0.05
        seqs = [struct.unpack_from("!H", p, 2)[0] for _, p in call.b.received]
        assert all((y - x) & 0xFFFF == 1 for x, y in zip(seqs, seqs[1:]))

        assert (await client.stop_mix("call-mix"))["tag"] == "sup-tag"
        t2 = loop.time()
        await asyncio.sleep(0.5)
        b_after = decoded(call.b.audio(ULAW, since=t2 + 0.1))
        assert band_level(b_after, 440) > 0.9 and band_level(b_after, 600) < 0.05
        with pytest.raises(MediaControlError, match="no supervisor"):
            await client.stop_mix("call-mix")
        with pytest.raises(MediaControlError, match="whisper needs 'whisper_to'"):
            await client.mix("call-mix", "sup-tag", offer.to_bytes(), "whisper")
        stop.set()
        await asyncio.gather(*senders, whisper)
    finally:
        await tear_down(stop, call, client, sup)


@pytest.mark.parametrize("mode", ["passthrough", "transcoding"])
async def test_mix_speak_makes_a_conference(worker_process, tmp_path, mode):
    """A third party that speaks is heard by both parties and hears them; a listener beside it hears all three;
    the recording keeps A left and everyone A talks with right; dropping the speaker gives the call back."""
    client = await MediaClient.open(worker_process.address)
    call = Call(client, f"call-conf-{mode}")
    third, spy = Peer(), Peer()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    path = tmp_path / "conference.wav"
    try:
        a_law, a_pt = await call.setup_mode(mode)
        for peer in (third, spy):
            await loop.create_datagram_endpoint(lambda peer=peer: peer, local_addr=("127.0.0.1", 0))
        senders = [asyncio.ensure_future(call.a.send_tone(440.0, call.to_a, a_law, a_pt, stop)),
                   asyncio.ensure_future(call.b.send_tone(1000.0, call.to_b, "ulaw", ULAW, stop))]
        await asyncio.sleep(0.2)
        await client.call_record(call.call_id, str(path))
        offer = create_offer("127.0.0.1", third.port, [("PCMA", 8000)])
        answer = SessionDescription.parse(await client.mix(call.call_id, "third-tag", offer.to_bytes(), "speak"))
        assert answer.media[0].rtpmap[answer.media[0].payload_types[0]].encoding == "PCMA"
        senders.append(asyncio.ensure_future(
            third.send_tone(600.0, ("127.0.0.1", answer.media[0].port), "alaw", 8, stop)))
        spy_answer = SessionDescription.parse(await client.mix(
            call.call_id, "spy-tag", create_offer("127.0.0.1", spy.port, [("PCMU", 8000)]).to_bytes(), "listen"))
        assert spy_answer.media[0].port != answer.media[0].port
        t0 = loop.time()
        await asyncio.sleep(1.0)
        a_heard = decoded(call.a.audio(a_pt, since=t0 + 0.3), a_law)
        b_heard = decoded(call.b.audio(ULAW, since=t0 + 0.3))
        third_heard = decoded([p for t, p in third.received if t >= t0 + 0.3], "alaw")
        spy_heard = decoded(spy.audio(ULAW, since=t0 + 0.3))
        for heard in (a_heard, b_heard, third_heard, spy_heard):
            assert heard.size >= 160 * 20
        assert band_level(a_heard, 1000) > 0.5 and band_level(a_heard, 600) > 0.5 and band_level(a_heard, 440) < 0.05
        assert band_level(b_heard, 440) > 0.5 and band_level(b_heard, 600) > 0.5 and band_level(b_heard, 1000) < 0.05
        assert band_level(third_heard, 440) > 0.5 and band_level(third_heard, 1000) > 0.5
        assert band_level(third_heard, 600) < 0.05
        for freq in (440, 1000, 600):
            assert band_level(spy_heard, freq) > 0.4, freq
        stats = await client.query(call.call_id)
        assert stats["members"]["third-tag"]["mode"] == "speak" and stats["members"]["third-tag"]["packets_in"] > 30
        assert stats["members"]["spy-tag"]["mode"] == "listen" and stats["members"]["spy-tag"]["packets_out"] > 30
        # every party's stream stays one continuous RTP stream through it all
        seqs = [struct.unpack_from("!H", p, 2)[0] for _, p in call.a.received]
        assert all((y - x) & 0xFFFF == 1 for x, y in zip(seqs, seqs[1:]))

        reply = await client.stop_mix(call.call_id, "third-tag")
        assert reply["tags"] == ["third-tag"]
        t1 = loop.time()
        await asyncio.sleep(0.6)
        a_after = decoded(call.a.audio(a_pt, since=t1 + 0.2), a_law)
        spy_after = decoded(spy.audio(ULAW, since=t1 + 0.2))
        assert band_level(a_after, 1000) > 0.9 and band_level(a_after, 600) < 0.05
        assert band_level(spy_after, 440) > 0.5 and band_level(spy_after, 1000) > 0.5
        assert band_level(spy_after, 600) < 0.05
        assert (await client.call_stop_record(call.call_id))["path"] == str(path)
        with pytest.raises(MediaControlError, match="no member 'nobody'"):
            await client.stop_mix(call.call_id, "nobody")
        with pytest.raises(MediaControlError, match="mode must be"):
            await client.mix(call.call_id, "x-tag", offer.to_bytes(), "barge")
        with pytest.raises(MediaControlError, match="is a party of the call"):
            await client.mix(call.call_id, "a-tag", offer.to_bytes(), "speak")
        assert (await client.stop_mix(call.call_id))["tags"] == ["spy-tag"]
        assert "members" not in await client.query(call.call_id)
        stop.set()
        await asyncio.gather(*senders)
    finally:
        await tear_down(stop, call, client, third, spy)
    with wave.open(str(path), "rb") as w:
        data = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    rate = 8000
    # about 1 s with the third party speaking (from ~0.05 s into the recording), then ~0.6 s without
    during, after = data[int(0.4 * rate):int(1.0 * rate)], data[-int(0.4 * rate):]
    assert abs(dominant_frequency(during[:, 0], rate) - 440) < 10 and band_level(during[:, 0], 600) < 0.05
    assert band_level(during[:, 1], 1000) > 0.5 and band_level(during[:, 1], 600) > 0.5
    assert band_level(after[:, 1], 1000) > 0.9 and band_level(after[:, 1], 600) < 0.05


async def test_reinvite_changes_a_partys_codec(worker_process):
    """A re-offers with PCMA only (its PCMU is gone): our answer moves A to PCMA, the call goes from passthrough
    to transcoding, both tones still arrive, and B's stream stays one continuous RTP stream."""
    client = await MediaClient.open(worker_process.address)
    call = Call(client, "call-codec")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        await call.setup(PCMU_TE, PCMU_TE)
        assert (await client.query(call.call_id))["passthrough"] is True
        b_tone = asyncio.ensure_future(call.b.send_tone(1000.0, call.to_b, "ulaw", ULAW, stop))
        a_stop = asyncio.Event()
        a_tone = asyncio.ensure_future(call.a.send_tone(440.0, call.to_a, "ulaw", ULAW, a_stop))
        await asyncio.sleep(0.4)
        reoffer = create_offer("127.0.0.1", call.a.port, [("PCMA", 8000), ("telephone-event", 8000)])
        reoffer.origin.sess_version += 1
        to_b = SessionDescription.parse(await client.offer(call.call_id, "a-tag", reoffer.to_bytes()))
        assert [to_b.media[0].rtpmap[pt].encoding for pt in to_b.media[0].payload_types][0] == "PCMU"
        b_answer = create_answer(to_b, PCMU_TE, "127.0.0.1", call.b.port)
        to_a = SessionDescription.parse(await client.answer(call.call_id, "a-tag", "b-tag", b_answer.to_bytes()))
        assert to_a.media[0].rtpmap[to_a.media[0].payload_types[0]].encoding == "PCMA"
        assert to_a.media[0].port == call.to_a[1]
        a_stop.set()
        await a_tone
        t0 = loop.time()
        a_tone = asyncio.ensure_future(call.a.send_tone(440.0, call.to_a, "alaw", 8, stop))
        await asyncio.sleep(0.8)
        stats = await client.query(call.call_id)
        assert stats["passthrough"] is False and stats["legs"]["a-tag"]["codec"] == "PCMA"
        at_b = decoded(call.b.audio(ULAW, since=t0 + 0.3))
        at_a = decoded(call.a.audio(8, since=t0 + 0.3), "alaw")
        assert at_b.size >= 160 * 10 and abs(dominant_frequency(at_b, 8000) - 440) < 10
        assert at_a.size >= 160 * 10 and abs(dominant_frequency(at_a, 8000) - 1000) < 10
        ssrcs = {struct.unpack_from("!I", p, 8)[0] for _, p in call.b.received}
        seqs = [struct.unpack_from("!H", p, 2)[0] for _, p in call.b.received]
        assert len(ssrcs) == 1 and all((y - x) & 0xFFFF == 1 for x, y in zip(seqs, seqs[1:]))
        # a re-offer with nothing we take is refused and changes nothing (codec, address)
        g722 = create_offer("198.51.100.9", 4000, [("G722", 8000)])
        with pytest.raises(MediaControlError, match="no codec in common"):
            await client.offer(call.call_id, "a-tag", g722.to_bytes())
        after = (await client.query(call.call_id))["legs"]["a-tag"]
        assert after["codec"] == "PCMA" and after["remote"] == ["127.0.0.1", call.a.port]
        stop.set()
        await asyncio.gather(b_tone, a_tone)
    finally:
        stop.set()
        await call.close()
        await client.close()


async def test_a_members_reinvite_holds_resumes_and_moves_it(worker_process):
    """A supervisor's phone re-INVITEs: on hold (sendonly) the worker stops sending to it and answers recvonly;
    resumed from a new port, the mix goes there; a re-offer that drops its codec is refused and changes nothing."""
    client = await MediaClient.open(worker_process.address)
    call = Call(client, "call-member-reinvite")
    sup, moved = Peer(), Peer()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        await call.setup_mode("passthrough")
        for peer in (sup, moved):
            await loop.create_datagram_endpoint(lambda peer=peer: peer, local_addr=("127.0.0.1", 0))
        senders = [asyncio.ensure_future(call.a.send_tone(440.0, call.to_a, "ulaw", ULAW, stop)),
                   asyncio.ensure_future(call.b.send_tone(1000.0, call.to_b, "ulaw", ULAW, stop))]
        offer = create_offer("127.0.0.1", sup.port, [("PCMU", 8000)])
        answer = SessionDescription.parse(await client.mix(call.call_id, "sup-tag", offer.to_bytes(), "listen"))
        await asyncio.sleep(0.4)
        assert len(sup.audio(ULAW)) > 10

        hold = create_offer("127.0.0.1", sup.port, [("PCMU", 8000)], direction="sendonly")
        held = SessionDescription.parse(await client.mix(call.call_id, "sup-tag", hold.to_bytes(), "listen"))
        assert held.effective_direction(0) == "recvonly" and held.origin.sess_version > answer.origin.sess_version
        await asyncio.sleep(0.1)
        t_hold = loop.time()
        await asyncio.sleep(0.4)
        assert sup.audio(ULAW, since=t_hold) == []

        resume = create_offer("127.0.0.1", moved.port, [("PCMU", 8000)])
        resumed = SessionDescription.parse(await client.mix(call.call_id, "sup-tag", resume.to_bytes(), "listen"))
        assert resumed.effective_direction(0) == "sendrecv" and resumed.media[0].port == answer.media[0].port
        t_resume = loop.time()
        await asyncio.sleep(0.5)
        heard = decoded(moved.audio(ULAW, since=t_resume + 0.1))
        assert heard.size >= 160 * 10 and band_level(heard, 440) > 0.5 and band_level(heard, 1000) > 0.5

        other_codec = create_offer("127.0.0.1", moved.port, [("PCMA", 8000)])
        with pytest.raises(MediaControlError, match="must keep PCMU/8000"):
            await client.mix(call.call_id, "sup-tag", other_codec.to_bytes(), "listen")
        t_after = loop.time()
        await asyncio.sleep(0.3)
        still = decoded(moved.audio(ULAW, since=t_after))            # still mixed to it, in PCMU
        assert still.size >= 160 * 5 and band_level(still, 440) > 0.5 and band_level(still, 1000) > 0.5
        stop.set()
        await asyncio.gather(*senders)
    finally:
        await tear_down(stop, call, client, sup, moved)
