"""The C transcoding tick (media._relay.Transcoder via media.relay.TranscodeTick) against media.bridge.tick_bridges.

Two bridges get the same packets on the same clock: the reference runs every tick in Python; the other hands
its paths to the C tick and back at random moments (as the worker does around DTMF events, prompts and RTCP).
Every packet either sends must be the same, byte for byte, and so must the counters and the streams' state at
the end. Streams are hostile: loss, reordering, duplicates, jitter, corrupt Opus payloads, DTX.
"""
from __future__ import annotations

import math
import random
import socket
import struct
import types

import numpy as np
import pytest

from media.bridge import Bridge, DtmfReceived, LegCodec, tick_bridges
from media.dtmf import dtmf_tone
from media.jitter import FastJitterBuffer, JitterBuffer
from media.opus import OpusConfig, OpusEncoder
from media.rtp import RtpSender
from media import g711

_relay = pytest.importorskip("media._relay", reason="the C data plane is not built (no compiler)")
from media.relay import TranscodeTick  # noqa: E402  (needs the extension)

OPUS = LegCodec(111, "opus", 48000, 126, 48000, channels=2)
PCMU = LegCodec(0, "PCMU", 8000, 101, 8000)
PCMA = LegCodec(8, "PCMA", 8000, 101, 8000)
PCMU_NO_EVENTS = LegCodec(0, "PCMU", 8000, None)        # a trunk without RFC 4733: keys come in the audio
TICK = 0.02
KEYS = {100 + 10 * i: digit for i, digit in enumerate("159#0*D")} | {400 + 7 * i: d for i, d in enumerate("2486")}


def tone(freq: float, i: int, rate: int = 8000, n: int = 160) -> np.ndarray:
    t = (np.arange(n) + i * n) / rate
    return (8000 * np.sin(2 * math.pi * freq * t)).astype(np.int16)


def source_packets(codec: LegCodec, ticks: int, seed: int, freq: float, dtx: bool = False):
    """(arrival, packet) of one leg's stream: 20 ms frames of a tone (with silent stretches), on a lossy
    network: loss, duplicates, reordering and jitter, and now and then a corrupt or empty Opus payload.
    A leg without telephone-event sends DTMF keys in its audio (``KEYS``: frame -> key, 100 or 60 ms each)."""
    rng = random.Random(seed)
    encoder = OpusEncoder(8000, 1, bitrate=24000, complexity=5, dtx=dtx) if codec.name == "opus" else None
    seq, ts, ssrc = rng.randrange(65536), rng.randrange(1 << 32), rng.randrange(1 << 32)
    step = codec.clock_rate // 50
    out = []
    keys = {}
    if codec.event_payload_type is None:
        for start, digit in KEYS.items():
            length = 5 if start < 400 else 3
            samples = dtmf_tone(digit, 20 * length)
            for j in range(length):
                keys[start + j] = samples[160 * j:160 * (j + 1)]
    for i in range(ticks):
        pcm = tone(freq, i) if (i // 60) % 3 != 2 else np.zeros(160, np.int16)   # a tone, then silence
        if i in keys:
            pcm = keys[i]
        if encoder is not None:
            payload = encoder.encode(pcm)
            if rng.random() < 0.01:
                payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))   # corrupt
        else:
            payload = g711.ulaw_encode(pcm.tobytes()) if codec.name == "pcmu" else g711.alaw_encode(pcm.tobytes())
        packet = struct.pack("!BBHII", 0x80, codec.payload_type, seq, ts, ssrc) + payload
        seq = (seq + 1) & 0xFFFF
        ts = (ts + step) & 0xFFFFFFFF
        if rng.random() < 0.04:
            continue                                               # lost
        arrival = 0.011 + i * TICK + (rng.expovariate(60) if rng.random() < 0.2 else rng.random() * 0.004)
        out.append((arrival, packet))
        if rng.random() < 0.02:
            out.append((arrival + rng.random() * 0.05, packet))    # duplicated
    if encoder is not None:
        encoder.close()
    return sorted(out, key=lambda p: p[0])


def make_bridge(a: LegCodec, b: LegCodec, jitter: type, opus: OpusConfig) -> Bridge:
    senders = {"a": RtpSender(a.payload_type, a.clock_rate, ssrc=0xA1A1A1A1, sequence=1000, timestamp=7777),
               "b": RtpSender(b.payload_type, b.clock_rate, ssrc=0xB2B2B2B2, sequence=2000, timestamp=9999)}
    return Bridge(a, b, senders=senders, opus=opus, jitter=jitter)


@pytest.fixture
def out_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("pair", [(OPUS, PCMU), (PCMA, OPUS), (PCMU, PCMA), (OPUS, PCMU_NO_EVENTS)],
                         ids=["opus-pcmu", "pcma-opus", "pcmu-pcma", "opus-inband"])
@pytest.mark.parametrize("mode", ["", "dtx", "captured"])
def test_c_tick_sends_what_the_python_tick_sends(pair, seed: int, mode: str, out_socket) -> None:
    a, b = pair
    opus = OpusConfig(dtx=mode == "dtx")
    ref = make_bridge(a, b, JitterBuffer, opus)
    fast = make_bridge(a, b, FastJitterBuffer, opus)
    ref.capture = fast.capture = mode == "captured"             # a recording: every decoded frame is kept
    for bridge in (ref, fast):
        for path in bridge.paths.values():
            if path.inband is not None:
                path.inband.backend = "python"   # the Goertzel recursion the C watch mirrors (numpy sums differ)
    relay = types.SimpleNamespace(c=_relay.Relay())
    ticks_c = {side: TranscodeTick(relay, fast, side) for side in ("a", "b")}
    out = (out_socket.fileno(), "127.0.0.1", 9)
    ticks = 600
    dtx = mode == "dtx"
    stream = sorted([("a", t, p) for t, p in source_packets(a, ticks, seed, 440.0, dtx)]
                    + [("b", t, p) for t, p in source_packets(b, ticks, seed + 100, 1000.0, dtx)],
                    key=lambda x: x[1])
    rng = random.Random(seed)
    k = 0
    c_packets = handbacks = captured = 0
    ref_events: list[DtmfReceived] = []
    fast_events: list[DtmfReceived] = []
    for n in range(ticks + 20):
        now = n * TICK
        while k < len(stream) and stream[k][1] <= now:
            side, arrival, packet = stream[k]
            ref.receive_rtp(side, packet, arrival)
            fast.receive_rtp(side, packet, arrival)
            k += 1
        for side, tick in ticks_c.items():                         # hand over now and then, both ways
            if rng.random() < 0.05:
                inband = fast.paths[side].inband
                if fast.paths[side].c_engaged:
                    tick.pull()
                elif inband is None or inband.idle:                # the worker's _steady
                    tick.load(out, None)
        if n == 300:                                               # an RTCP report: Python handles it
            for tick in ticks_c.values():
                tick.pull()
            ref.report_loss("a", 0.12)
            fast.report_loss("a", 0.12)
        tick_bridges([ref], now)
        expected = ref.packets_to_send()
        got = []
        for side in ("b", "a"):                                    # path "a" sends on side "b"
            if fast.paths[side].c_engaged:
                packet = ticks_c[side].c.tick(now)
                if packet is not None:
                    got.append(("b" if side == "a" else "a", packet))
                    c_packets += 1
        tick_bridges([fast], now)
        got += fast.packets_to_send()
        assert sorted(got) == sorted(expected), n
        for side, tick in ticks_c.items():                         # a key in the audio: Python takes over
            if tick.c.handback:
                tick.pull()
                handbacks += 1
        for side in ("a", "b"):
            pcm = lambda frames: [f if isinstance(f, bytes) else f.astype("<i2").tobytes() for f in frames]
            assert pcm(fast.captured[side]) == pcm(ref.captured[side]), (n, side)
            captured += len(ref.captured[side])
            ref.captured[side].clear()
            fast.captured[side].clear()
        while (event := ref.next_event()) is not None:
            ref_events.append(event)
        while (event := fast.next_event()) is not None:
            fast_events.append(event)
    for tick in ticks_c.values():
        tick.pull()
    assert c_packets > 100
    assert fast_events == ref_events
    assert (captured > 500) is (mode == "captured")
    if b.event_payload_type is None:
        assert handbacks > 0
        assert len(ref_events) >= 8 and {e.source for e in ref_events} == {"inband"}
    assert fast.stats() == ref.stats()
    for side in ("a", "b"):
        r, f = ref.senders[side], fast.senders[side]
        assert (f.sequence, f.timestamp, f.packets_sent, f.octets_sent, f.last_timestamp, f.marker_next) == \
            (r.sequence, r.timestamp, r.packets_sent, r.octets_sent, r.last_timestamp, r.marker_next)
        rp, fp = ref.paths[side], fast.paths[side]
        assert (fp.loss_ticks, fp.loss_mark, fp.plc_gain) == (rp.loss_ticks, rp.loss_mark, rp.plc_gain)
        assert (fp.last_pcm is None) == (rp.last_pcm is None)
        if rp.last_pcm is not None:
            assert np.array_equal(fp.last_pcm, rp.last_pcm)
        if rp.encoder is not None:
            assert fp.encoder.packet_loss_perc == rp.encoder.packet_loss_perc
    ref.close()
    fast.close()


def test_closing_the_bridge_detaches_the_c_tick(out_socket) -> None:
    """The libopus states belong to the bridge: once it is closed, the C tick may not touch them."""
    fast = make_bridge(OPUS, PCMU, FastJitterBuffer, OpusConfig())
    relay = types.SimpleNamespace(c=_relay.Relay())
    tick = TranscodeTick(relay, fast, "a")
    tick.load((out_socket.fileno(), "127.0.0.1", 9), None)
    assert relay.c.stats()["transcoders"] == 1
    fast.close()
    assert relay.c.stats()["transcoders"] == 0 and not fast.paths["a"].c_engaged
    with pytest.raises(ValueError, match="no codecs"):
        tick.c.tick(1.0)
    assert relay.c.tick(1.0) == 0


def test_bad_codec_setup_is_refused() -> None:
    t = _relay.Transcoder()
    jb = FastJitterBuffer(8000)
    with pytest.raises(ValueError, match="Opus .* or G.711"):
        t.set_codecs(jb, None, 0, 0, 0, 1)                         # src neither Opus nor G.711
    with pytest.raises(TypeError):
        t.set_codecs(None, None, 0, 1, 0, 1)
    with pytest.raises(ValueError, match="PCM"):
        t.set_plc(b"\0" * 10, 1.0)
    with pytest.raises(ValueError, match="not an IP"):
        t.set_output(0, "nowhere", 5)


def test_each_path_runs_in_the_slot_where_its_stream_starts(out_socket) -> None:
    """With 4 slots per frame, a path runs in the 5 ms slot where its buffer starts playing: a frame waits at
    most a slot, not a frame; after a silence the stream re-anchors and the slot follows the new arrivals.
    A pull and load without Python ticking keeps the slot; after Python's tick (slot 0) it is slot 0 again."""
    fast = make_bridge(PCMU, PCMA, FastJitterBuffer, OpusConfig())
    relay = types.SimpleNamespace(c=_relay.Relay())
    tick = TranscodeTick(relay, fast, "a")
    tick.load((out_socket.fileno(), "127.0.0.1", 9), None)
    pcm = tone(1000.0, 0)
    payload = g711.ulaw_encode(pcm.tobytes())

    def run(first_frame: int, frames: int, offset: float, ssrc: int = 7) -> list[float]:
        """Packets of frames [first_frame, +frames) arriving `offset` s into each 20 ms frame; slots every
        5 ms until 100 ms after the last; the times at which the path sent."""
        arrivals = {round((first_frame + i) * TICK + offset, 6): first_frame + i for i in range(frames)}
        sent = []
        for k in range(first_frame * 4, (first_frame + frames + 5) * 4):
            now = round(k * 0.005, 6)
            for arrival in sorted(a for a in arrivals if now - 0.005 < a <= now):
                i = arrivals[arrival]
                fast.receive_rtp("a", struct.pack("!BBHII", 0x80, 0, i, 160 * i, ssrc) + payload, arrival)
            if relay.c.tick(now, k % 4):
                sent.append(now)
        return sent

    sent = run(0, 50, 0.007)
    # playable 20 ms (the buffer minimum) after the first packet at 7 ms: sent at 30 ms (slot 2), then every
    # frame in slot 2 (and 3 concealed frames, 60 ms, after the last); in a 20 ms grid it would wait for 40 ms
    assert sent[0] == 0.03 and all(round(t * 1000) % 20 == 10 for t in sent) and len(sent) == 50 + 3
    assert tick.c.phase == 2
    # a silence, then a new stream (another SSRC: the buffer re-anchors) arriving 13 ms into the frames: its
    # frames are playable at 33 ms, slot 3
    sent = run(80, 30, 0.013, ssrc=8)
    talk = [t for t in sent if t >= 80 * TICK]
    assert talk[0] == round(80 * TICK + 0.035, 6) and all(round(t * 1000) % 20 == 15 for t in talk)
    assert tick.c.phase == 3
    tick.pull()                                   # an RTCP report: pulled and loaded, Python did not tick
    tick.load((out_socket.fileno(), "127.0.0.1", 9), None)
    assert tick.c.phase == 3
    tick.pull()                                   # a DTMF event: Python ticks it for a while (slot 0)
    tick_bridges([fast], 3.0)
    tick.load((out_socket.fileno(), "127.0.0.1", 9), None)
    assert tick.c.phase == 0
    fast.close()
