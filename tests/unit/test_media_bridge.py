"""Unit tests for media.bridge: passthrough relay, Opus<->PCMU transcoding, PLC, DTMF translation, driven by a fake clock."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from media import g711
from media.audio import dominant_frequency, tone
from media.bridge import Bridge, DtmfReceived, LegCodec, tick_bridges
from media.dtmf import (
    DtmfDetector, DtmfDigitEnded, DtmfEventReceiver, decode_telephone_event, dtmf_frames, packets_for_press,
)
from media.opus import OpusConfig, OpusDecoder, OpusEncoder
from media.rtp import peek_header

BROWSER_OPUS = LegCodec(111, "opus", 48000, 126, 48000)
TRUNK_PCMU = LegCodec(0, "PCMU", 8000, 101, 8000)
BROWSER_PCMU = LegCodec(0, "PCMU", 8000, 101, 8000)
TICK = 0.02


def rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    """A plain RTP packet."""
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def pcmu_frames(freq: float, n: int) -> list[bytes]:
    """n 20 ms PCMU payloads of a tone."""
    pcm = tone(freq, 8000, n * 0.02, amplitude=0.4)
    return [g711.ulaw_encode(pcm[i * 160:(i + 1) * 160].tobytes()) for i in range(n)]


def opus48_frames(freq: float, n: int) -> list[bytes]:
    """n 20 ms Opus packets of a tone, encoded at 48 kHz like a browser."""
    enc = OpusEncoder(48000, 1, bitrate=32000)
    pcm = tone(freq, 48000, n * 0.02, amplitude=0.4)
    return [enc.encode(pcm[i * 960:(i + 1) * 960]) for i in range(n)]


def split(out: list[tuple[str, bytes]], side: str) -> list[bytes]:
    return [p for s, p in out if s == side]


# -- passthrough -------------------------------------------------------------------------------------

def test_passthrough_keeps_payload_and_rewrites_header_continuously():
    bridge = Bridge(BROWSER_PCMU, TRUNK_PCMU)
    assert bridge.passthrough
    payloads = pcmu_frames(440, 40)
    sent = []
    for i, payload in enumerate(payloads[:20]):
        bridge.receive_rtp("a", rtp(0, 65530 + i, 1000 + 160 * i, 0x1111, payload), i * TICK)
        bridge.tick(i * TICK)
        sent.extend(bridge.packets_to_send())
    # a new source (transfer): different SSRC, seq and timestamp
    for j, payload in enumerate(payloads[20:]):
        i = 20 + j
        bridge.receive_rtp("a", rtp(0, 7 + j, 999_999 + 160 * j, 0x2222, payload), i * TICK)
        sent.extend(bridge.packets_to_send())
    assert all(side == "b" for side, _ in sent)
    out = [p for _, p in sent]
    assert [p[12:] for p in out] == payloads                       # payload bytes identical
    headers = [peek_header(p) for p in out]
    assert {h[3] for h in headers} == {bridge.senders["b"].ssrc}   # one SSRC: ours
    seqs = [h[1] for h in headers]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:]))
    tss = [h[2] for h in headers]
    assert all((b - a) & 0xFFFFFFFF == 160 for a, b in zip(tss, tss[1:]))
    assert headers[20][4]                                           # marker on the new source's first packet


def test_passthrough_relays_telephone_event_with_pt_mapping():
    bridge = Bridge(LegCodec(0, "PCMU", 8000, 101, 8000), LegCodec(0, "PCMU", 8000, 96, 8000))
    now = 0.0
    for i in range(5):
        bridge.receive_rtp("b", rtp(0, 10 + i, 160 * i, 5, b"\xff" * 160), now)
        now += TICK
    seq = 15
    for tick in packets_for_press("7", 100, 800, 8000):
        for pkt in tick:
            bridge.receive_rtp("b", rtp(96, seq, pkt.timestamp, 5, pkt.payload, pkt.marker), now)
            seq += 1
        now += TICK
    out = split(bridge.packets_to_send(), "a")
    events = [p for p in out if peek_header(p)[0] == 101]
    assert len(events) == seq - 15 and all(decode_telephone_event(p[12:]).event == 7 for p in events)
    assert bridge.next_event() == DtmfReceived("b", "7", 100.0)


# -- transcoding -------------------------------------------------------------------------------------

def run_transcoding(a_packets: list[bytes], b_packets: list[bytes], lose: set[int] = frozenset()):
    """Feed both sides one packet per tick (index in `lose` dropped); return the bridge and what it sent."""
    bridge = Bridge(BROWSER_OPUS, TRUNK_PCMU)
    assert not bridge.passthrough
    out: list[tuple[str, bytes]] = []
    n = max(len(a_packets), len(b_packets))
    for i in range(n + 6):
        now = i * TICK
        if i < len(a_packets) and i not in lose:
            bridge.receive_rtp("a", rtp(111, 100 + i, 48000 + 960 * i, 0xAAAA, a_packets[i]), now + 0.003)
        if i < len(b_packets) and i not in lose:
            bridge.receive_rtp("b", rtp(0, 200 + i, 8000 + 160 * i, 0xBBBB, b_packets[i]), now + 0.005)
        tick_bridges([bridge], now + 0.01)
        out.extend(bridge.packets_to_send())
    return bridge, out


def test_opus_to_pcmu_and_back_keeps_the_tone():
    bridge, out = run_transcoding(opus48_frames(440, 50), pcmu_frames(1000, 50))
    to_trunk = split(out, "b")
    to_browser = split(out, "a")
    assert len(to_trunk) >= 45 and len(to_browser) >= 45
    assert {peek_header(p)[0] for p in to_trunk} == {0}
    assert {peek_header(p)[0] for p in to_browser} == {111}
    pcm = np.frombuffer(g711.ulaw_decode(b"".join(p[12:] for p in to_trunk[10:])), "<i2")
    assert abs(dominant_frequency(pcm, 8000) - 440) < 15
    dec = OpusDecoder(48000, 1)
    pcm48 = np.frombuffer(b"".join(dec.decode(p[12:]) for p in to_browser[10:]), "<i2")
    assert abs(dominant_frequency(pcm48, 48000) - 1000) < 15
    # our outgoing streams: 20 ms timestamps in each side's RTP clock
    assert all((peek_header(b)[2] - peek_header(a)[2]) & 0xFFFFFFFF == 960 for a, b in zip(to_browser, to_browser[1:]))
    bridge.close()


def test_lost_packet_is_concealed_without_a_gap():
    bridge, out = run_transcoding(opus48_frames(440, 40), pcmu_frames(1000, 40), lose={20})
    for side, step in (("a", 960), ("b", 160)):
        headers = [peek_header(p) for p in split(out, side)]
        seqs = [h[1] for h in headers]
        assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:]))
        assert all((b[2] - a[2]) & 0xFFFFFFFF == step for a, b in zip(headers, headers[1:]))
    stats = bridge.stats()
    assert stats["a"]["concealed"] >= 1 and stats["b"]["concealed"] >= 1
    assert stats["a"]["lost"] == 1 and stats["b"]["lost"] == 1
    pcm = np.frombuffer(g711.ulaw_decode(b"".join(p[12:] for p in split(out, "b")[10:])), "<i2")
    assert abs(dominant_frequency(pcm, 8000) - 440) < 15


def test_batched_and_per_frame_g711_give_the_same_packets():
    def run(batch: bool) -> list[bytes]:
        bridges = [Bridge(BROWSER_OPUS, TRUNK_PCMU), Bridge(BROWSER_OPUS, LegCodec(8, "PCMA", 8000, 101, 8000))]
        for br in bridges:
            for s in br.senders.values():
                s.ssrc, s.sequence, s.timestamp = 1, 1, 1
        packets = pcmu_frames(1000, 10)
        opus = opus48_frames(440, 10)
        out = []
        for i in range(14):
            for br in bridges:
                if i < 10:
                    br.receive_rtp("a", rtp(111, i, 960 * i, 3, opus[i]), i * TICK)
                    br.receive_rtp("b", rtp(br.codecs["b"].payload_type, i, 160 * i, 4,
                                            packets[i] if br.codecs["b"].name == "pcmu" else g711.ulaw_to_alaw(packets[i])),
                                   i * TICK)
            tick_bridges(bridges, i * TICK + 0.01, batch=batch)
            for br in bridges:
                out.extend(p for s, p in br.packets_to_send() if s == "b")
        return out

    assert run(True) == run(False)


# -- DTMF --------------------------------------------------------------------------------------------

def feed_press(bridge: Bridge, side: str, digit: str, rate: int, pt: int, start: float) -> float:
    """Send one 100 ms key press as RFC 4733 packets from `side` at `rate`, ticking the bridge; returns the time."""
    now = start
    for k, tick in enumerate(packets_for_press(digit, 100, 123456, rate)):
        for pkt in tick:
            bridge.receive_rtp(side, rtp(pt, 500 + k, pkt.timestamp, 0xD, pkt.payload, pkt.marker), now)
        bridge.tick(now)
        now += TICK
    return now


@pytest.mark.parametrize("src,dst,src_rate,dst_rate,src_pt,dst_pt", [
    ("a", "b", 48000, 8000, 126, 101),
    ("b", "a", 8000, 48000, 101, 126),
])
def test_dtmf_translated_between_48k_and_8k(src, dst, src_rate, dst_rate, src_pt, dst_pt):
    bridge = Bridge(BROWSER_OPUS, TRUNK_PCMU)
    feed_press(bridge, src, "9", src_rate, src_pt, 0.0)
    events = [p for s, p in bridge.packets_to_send() if s == dst and peek_header(p)[0] == dst_pt]
    assert events
    assert peek_header(events[0])[4]                     # marker on the first
    rx = DtmfEventReceiver(dst_rate)
    for p in events:
        _, seq, ts, ssrc, marker = peek_header(p)
        assert ssrc == bridge.senders[dst].ssrc
        rx.receive_packet(p[12:], ts, seq, marker, 0.0)
    got = [e for e in iter(rx.next_event, None) if isinstance(e, DtmfDigitEnded)]
    assert len(got) == 1 and got[0].digit == "9"
    assert abs(got[0].duration_ms - 100) < 1
    assert decode_telephone_event(events[-1][12:]).duration == 100 * dst_rate // 1000
    assert bridge.next_event() == DtmfReceived(src, "9", 100.0)


def test_dtmf_played_in_band_when_the_other_side_has_no_telephone_event():
    bridge = Bridge(BROWSER_OPUS, LegCodec(0, "PCMU", 8000, None))
    now = feed_press(bridge, "a", "4", 48000, 126, 0.0)
    frames = [p for s, p in bridge.packets_to_send() if s == "b"]
    assert len(frames) >= 4
    det = DtmfDetector()
    events = []
    for p in frames:
        events += det.process_frame(np.frombuffer(g711.ulaw_decode(p[12:]), "<i2"))
    for _ in range(5):
        events += det.process_frame(np.zeros(160, np.int16))
    assert [e.digit for e in events if isinstance(e, DtmfDigitEnded)] == ["4"]
    assert bridge.next_event() == DtmfReceived("a", "4", 100.0)


def test_inband_dtmf_from_a_trunk_without_telephone_event_is_reported():
    bridge = Bridge(BROWSER_OPUS, LegCodec(0, "PCMU", 8000, None))
    frames = list(dtmf_frames("3", tone_ms=100, pause_ms=120, lead_ms=60))
    for i, frame in enumerate(frames):
        bridge.receive_rtp("b", rtp(0, i, 160 * i, 9, g711.ulaw_encode(frame.tobytes())), i * TICK)
        bridge.tick(i * TICK + 0.01)
    for j in range(5):
        bridge.tick((len(frames) + j) * TICK + 0.01)
    events = list(iter(bridge.next_event, None))
    assert [(e.leg, e.digit, e.source) for e in events] == [("b", "3", "inband")]
    assert abs(events[0].duration_ms - 100) <= 20


def test_dtmf_inside_a_transcoded_audio_stream_is_not_counted_lost():
    # a browser's audio stream with a 200 ms key press in it: the telephone-event packets replace the audio and
    # take its sequence numbers (same SSRC); the audio resumes on the sender's clock after the press
    bridge = Bridge(BROWSER_OPUS, TRUNK_PCMU)
    opus = opus48_frames(440, 80)
    press_at = 30
    press = packets_for_press("5", 200, 48000 + 960 * press_at, 48000)
    press_ticks = len(press)
    seq, events_sent = 100, 0
    audio_out: list[tuple[int, int]] = []              # (tick, RTP timestamp) of audio sent to the trunk
    event_out: list[bytes] = []
    for i in range(80):
        now = i * TICK
        if press_at <= i < press_at + press_ticks:
            for pkt in press[i - press_at]:
                bridge.receive_rtp("a", rtp(126, seq, pkt.timestamp, 0xAAAA, pkt.payload, pkt.marker), now + 0.003)
                seq += 1
                events_sent += 1
        elif i < 74:
            bridge.receive_rtp("a", rtp(111, seq, 48000 + 960 * i, 0xAAAA, opus[i]), now + 0.003)
            seq += 1
        tick_bridges([bridge], now + 0.01)
        for side, p in bridge.packets_to_send():
            if side == "b":
                pt, _, ts, _, _ = peek_header(p)
                if pt == 0:
                    audio_out.append((i, ts))
                elif pt == 101:
                    event_out.append(p)
    assert bridge.next_event() == DtmfReceived("a", "5", 200.0)
    stats = bridge.stats()["a"]
    assert stats["events_in"] == events_sent == 12      # 10 packets + 2 retransmitted ends
    assert stats["lost"] == 0 and stats["late"] == 0
    assert stats["concealed"] <= 3                      # only the end of the stream, after the last packet
    # the trunk gets the digit as telephone-events and the audio around it on one real-time timeline
    assert event_out and all(decode_telephone_event(p[12:]).event == 5 for p in event_out)
    t0 = audio_out[0][1] - 160 * audio_out[0][0]
    assert all((ts - 160 * i - t0) & 0xFFFFFFFF == 0 for i, ts in audio_out)
    ev_ts = peek_header(event_out[0])[2]
    before = [ts for _, ts in audio_out if ((ts - ev_ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000 < 0]
    after = [ts for _, ts in audio_out if ((ts - ev_ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000 >= 0]
    assert len(before) >= 25 and len(after) >= 30
    duration = decode_telephone_event(event_out[-1][12:]).duration
    assert ((after[0] - ev_ts) & 0xFFFFFFFF) >= duration   # no audio inside the event's span
    bridge.close()


def test_opus_fec_follows_the_loss_seen_and_reported():
    """In-band FEC towards the browser costs nothing while there is no loss, and protects what is lost: the
    browser's RTCP report, or the loss of its own stream to us over the last second, whichever is larger."""
    bridge = Bridge(BROWSER_OPUS, TRUNK_PCMU)
    encoder = bridge.paths["b"].encoder            # trunk -> browser: encodes Opus
    assert encoder is not None and encoder.fec and encoder.packet_loss_perc == 0
    opus, pcmu = opus48_frames(440, 120), pcmu_frames(1000, 120)
    now = 1.0
    for i in range(120):
        if i < 60 or i % 5:                        # the browser's stream loses 20 % in the second second
            bridge.receive_rtp("a", rtp(111, i, 960 * i, 7, opus[i]), now)
        bridge.receive_rtp("b", rtp(0, i, 160 * i, 9, pcmu[i]), now)
        tick_bridges([bridge], now)
        bridge.packets_to_send()
        now += TICK
        if i == 55:
            assert encoder.packet_loss_perc == 0   # a clean first second: no FEC spent
    assert 15 <= encoder.packet_loss_perc <= 25
    bridge.report_loss("a", 0.30)                  # the browser reports 30 % of our stream lost
    assert encoder.packet_loss_perc == 30
    bridge.close()


def test_opus_dtx_sends_nothing_in_silence_and_marks_the_talkspurt():
    """With DTX on, the trunk's silence becomes (almost) no packets towards the browser; speech after it starts
    a talkspurt (marker bit) at a timestamp that kept real time."""
    bridge = Bridge(BROWSER_OPUS, TRUNK_PCMU, opus=OpusConfig(dtx=True))
    silence = g711.ulaw_encode(np.zeros(160, np.int16).tobytes())
    speech = pcmu_frames(1000, 40)
    sent: list[bytes] = []
    now = 1.0
    for i in range(150):
        payload = silence if i < 110 else speech[i - 110]
        bridge.receive_rtp("b", rtp(0, i, 160 * i, 9, payload), now)
        tick_bridges([bridge], now)
        sent += [packet for side, packet in bridge.packets_to_send() if side == "a"]
        now += TICK
    stamps = [(struct.unpack_from("!I", p, 4)[0], bool(p[1] & 0x80)) for p in sent]
    quiet = [ts for ts, _ in stamps[:-30]]
    assert len(sent) < 60                          # 2 s of silence: a few keep-alive frames, not 100 packets
    talk = stamps[-30:]
    gap_start = next(i for i, (_, marker) in enumerate(stamps) if i and marker and i >= len(stamps) - 40)
    assert stamps[gap_start][1] and stamps[gap_start][0] - stamps[gap_start - 1][0] > 960    # after a gap
    assert all((b - a) % (1 << 32) == 960 for (a, _), (b, _) in zip(talk, talk[1:]))
    assert quiet and all((b - a) % 960 == 0 for a, b in zip(quiet, quiet[1:]))
    bridge.close()
