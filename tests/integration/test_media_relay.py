"""The worker with the C data plane against the worker without it (the Python reference path).

The same RTP <-> RTP passthrough call runs twice, with ``c_relay`` on and off: audio both ways, an RFC 4733
key press, a new SSRC, a re-latch to a new port, a hold for a prompt. What each peer receives must be the
same stream (payloads, payload types, markers, sequence and timestamp steps) and the call's statistics the
same numbers; with the relay on, most packets must have been forwarded in C.
"""
from __future__ import annotations

import asyncio
import struct

import pytest

from media import relay as media_relay
from media.dtmf import packets_for_press
from media.rtcp import SenderReport, parse_compound
from media.worker import MediaSettings, MediaWorker
from media.sdp import SessionDescription

from media_ports import free_udp_range
from rtp_peers import RtpPeer as Peer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not media_relay.available(), reason="the C data plane is not built (no compiler)"),
]

HOST = "127.0.0.1"


def sdp(port: int) -> bytes:
    return (f"v=0\r\no=- 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"
            "a=ptime:20\r\na=sendrecv\r\n").encode()


def packet(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def normalise(stream: list[bytes]) -> list[tuple]:
    """(pt, marker, seq step from the first, ts step, payload): what must not depend on the data plane.
    Timestamps are compared as steps within talkspurts (a new source or the end of a prompt starts one with
    the marker bit, stamped by the time elapsed, which differs between runs)."""
    first_seq = struct.unpack_from("!H", stream[0], 2)[0]
    out = []
    prev_ts = None
    prev_seq = None
    for p in stream:
        seq, ts = struct.unpack_from("!HI", p, 2)
        step = (None if prev_seq is None or (seq - prev_seq) & 0xFFFF != 1 or p[1] & 0x80
                else (ts - prev_ts) & 0xFFFFFFFF)
        out.append((p[1] & 0x7F, p[1] >> 7, (seq - first_seq) & 0xFFFF, step, p[12:]))
        prev_seq, prev_ts = seq, ts
    return out


async def run_call(c_relay: bool) -> dict:
    loop = asyncio.get_running_loop()
    base = free_udp_range(40)
    worker = await MediaWorker.start(MediaSettings(bind_host=HOST, rtp_port_min=base, rtp_port_max=base + 39,
                                                   c_relay=c_relay, media_timeout=30.0))
    events: list[dict] = []
    worker.on_event = events.append
    a, b, a2 = Peer(), Peer(), Peer()
    for peer in (a, b, a2):
        await loop.create_datagram_endpoint(lambda p=peer: p, local_addr=(HOST, 0))
    try:
        to_b = SessionDescription.parse(await worker.offer("c1", "ta", sdp(a.port), transport="RTP/AVP"))
        to_a = SessionDescription.parse(await worker.answer("c1", "ta", "tb", sdp(b.port)))
        worker_a, worker_b = (HOST, to_a.media[0].port), (HOST, to_b.media[0].port)
        seq = {"a": 1000, "b": 50000}
        ts = {"a": 123456, "b": 4294960000}
        ssrc = {"a": 0xA1A1A1A1, "b": 0xB2B2B2B2}

        async def audio(side: str, n: int, peer: Peer, to) -> None:
            for i in range(n):
                peer.transport.sendto(packet(0, seq[side], ts[side], ssrc[side], bytes([i % 256]) * 160), to)
                seq[side] += 1
                ts[side] += 160
                await asyncio.sleep(0.004)

        async def both(n: int) -> None:
            await asyncio.gather(audio("a", n, a, worker_a), audio("b", n, b, worker_b))

        await both(30)
        # a key press from A (RFC 4733, same event clock on both sides: relayed on B's stream)
        for tick in packets_for_press("7", 100, ts["a"], 8000):
            for ev in tick:
                a.transport.sendto(packet(101, seq["a"], ev.timestamp, ssrc["a"], ev.payload, ev.marker), worker_a)
                seq["a"] += 1
            ts["a"] += 160
            await asyncio.sleep(0.004)
        await both(20)
        # a prompt to B holds A's audio towards B; after it, relaying goes on
        await worker.call_play("c1", "tb", beep_spec={"freq": 1000, "ms": 100})
        await both(10)
        await asyncio.sleep(0.15)
        await both(10)
        # A's phone changes SSRC (a new source), then moves to another port with yet another SSRC
        ssrc["a"] = 0xA3A3A3A3
        seq["a"] += 500
        await both(15)
        ssrc["a"] = 0xA4A4A4A4
        await asyncio.gather(audio("a", 15, a2, worker_a), audio("b", 15, b, worker_b))
        await asyncio.sleep(0.2)
        stats = worker.query("c1")
        status = worker.status()
        final = await worker.delete("c1")
    finally:
        await worker.close()
        for peer in (a, b, a2):
            peer.transport.close()
    return {"a": a.received + a2.received, "b": b.received, "stats": stats, "final": final, "status": status,
            "events": events}


async def test_c_data_plane_gives_the_python_paths_stream_and_statistics():
    python = await run_call(False)
    c = await run_call(True)
    assert python["status"]["relay"] is None
    relay = c["status"]["relay"]
    # most packets never reached Python: audio both ways, after each change's first packet
    assert relay["forwarded"] > 150, relay
    for side in ("a", "b"):
        assert normalise(c[side]) == normalise(python[side]), side
    # B heard the beep while A's audio was held back, then A again
    for run in (python, c):
        assert {p[1] & 0x7F for p in run["b"]} == {0, 101}
    for key in ("stats", "final"):
        for tag in ("ta", "tb"):
            leg_c, leg_py = dict(c[key]["legs"][tag]), dict(python[key]["legs"][tag])
            for volatile in ("local_port", "remote", "rtt_ms", "rx_jitter_ms"):
                leg_c.pop(volatile, None)
                leg_py.pop(volatile, None)
            assert leg_c == leg_py, (key, tag)
    digits = [(e["event"], e.get("digit"), e.get("tag")) for e in c["events"] if e["event"] == "dtmf"]
    assert digits == [("dtmf", "7", "ta")] == [(e["event"], e.get("digit"), e.get("tag"))
                                                for e in python["events"] if e["event"] == "dtmf"]


async def test_rtcp_and_media_timeout_see_what_the_c_path_counted():
    """RTCP reports count the forwarded packets; no media timeout while C forwards, one once it stops."""
    loop = asyncio.get_running_loop()
    base = free_udp_range(20)
    worker = await MediaWorker.start(MediaSettings(bind_host=HOST, rtp_port_min=base, rtp_port_max=base + 19,
                                                   media_timeout=0.6))
    events: list[dict] = []
    worker.on_event = events.append
    a, b = Peer(), Peer()
    rtcp_at_b: list[bytes] = []

    class Rtcp(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr) -> None:
            rtcp_at_b.append(data)

    for peer in (a, b):
        await loop.create_datagram_endpoint(lambda p=peer: p, local_addr=(HOST, 0))
    rtcp_transport, _ = await loop.create_datagram_endpoint(Rtcp, local_addr=(HOST, b.port + 1))
    try:
        to_b = SessionDescription.parse(await worker.offer("c2", "ta", sdp(a.port), transport="RTP/AVP"))
        to_a = SessionDescription.parse(await worker.answer("c2", "ta", "tb", sdp(b.port)))
        call = worker.calls["c2"]
        call.callee.rtp.session._rtcp_at = loop.time() + 1.2            # an RR/SR soon, not in ~5 s
        for i in range(75):                                              # 1.5 s of audio, both ways
            a.transport.sendto(packet(0, i, 160 * i, 0xA1, b"\x11" * 160), (HOST, to_a.media[0].port))
            b.transport.sendto(packet(0, i, 160 * i, 0xB1, b"\x22" * 160), (HOST, to_b.media[0].port))
            await asyncio.sleep(0.02)
        assert [e for e in events if e["event"] == "timeout"] == []
        assert set(call.forwards) == {"a", "b"}
        await asyncio.sleep(1.0)                                         # silence: both legs time out
        timeouts = sorted(e["tag"] for e in events if e["event"] == "timeout")
        stats = worker.query("c2")
    finally:
        await worker.close()
        for peer in (a, b):
            peer.transport.close()
        rtcp_transport.close()
    assert timeouts == ["ta", "tb"]
    assert stats["legs"]["ta"]["packets_in"] == 75 and stats["legs"]["tb"]["packets_out"] == 75
    # the SR the worker sent B at ~1.2 s counts the ~60 packets it had relayed to B (all but the first in
    # C), and its report block the ~60 it had received from B
    reports = [p for data in rtcp_at_b for p in parse_compound(data) if isinstance(p, SenderReport)]
    assert reports and reports[0].packet_count >= 50 and reports[0].octet_count == 160 * reports[0].packet_count
    block = reports[0].reports[0]
    assert block.ssrc == 0xB1 and block.highest_seq >= 50 and block.cumulative_lost == 0


@pytest.mark.parametrize("c_relay", [True, False], ids=["c-data-plane", "python-path"])
async def test_a_recorded_passthrough_call_records_every_packet_in_order(tmp_path, c_relay: bool):
    """Recording keeps a passthrough call in the C data plane (the rule keeps the payloads for the tick):
    each channel of the WAV holds every frame its side sent, in order, as the Python path records it."""
    loop = asyncio.get_running_loop()
    base = free_udp_range(20)
    worker = await MediaWorker.start(MediaSettings(bind_host=HOST, rtp_port_min=base, rtp_port_max=base + 19,
                                                   c_relay=c_relay))
    a, b = Peer(), Peer()
    for peer in (a, b):
        await loop.create_datagram_endpoint(lambda p=peer: p, local_addr=(HOST, 0))
    path = tmp_path / "call.wav"
    codes = [c for c in range(256) if c not in (0x7F, 0xFF)][:60]      # 0x7F/0xFF decode to silence
    try:
        to_b = SessionDescription.parse(await worker.offer("c3", "ta", sdp(a.port), transport="RTP/AVP"))
        to_a = SessionDescription.parse(await worker.answer("c3", "ta", "tb", sdp(b.port)))
        for i in range(3):                                               # latch and map before recording
            a.transport.sendto(packet(0, i, 160 * i, 0xA1, b"\xff" * 160), (HOST, to_a.media[0].port))
            b.transport.sendto(packet(0, i, 160 * i, 0xB1, b"\xff" * 160), (HOST, to_b.media[0].port))
            await asyncio.sleep(0.02)
        worker.call_record("c3", str(path))
        before = worker.status()["relay"]
        start = loop.time()
        for i, code in enumerate(codes, start=3):                       # real time: one packet per tick
            a.transport.sendto(packet(0, i, 160 * i, 0xA1, bytes([code]) * 160), (HOST, to_a.media[0].port))
            b.transport.sendto(packet(0, i, 160 * i, 0xB1, bytes([code ^ 0x80]) * 160), (HOST, to_b.media[0].port))
            await asyncio.sleep(max(0.0, start + (i - 2) * 0.02 - loop.time()))
        await asyncio.sleep(0.1)
        after = worker.status()["relay"]
        worker.call_stop_record("c3")
    finally:
        await worker.close()
        for peer in (a, b):
            peer.transport.close()
    if c_relay:
        assert after["forwarded"] - before["forwarded"] >= 2 * len(codes) - 2, (before, after)
    import wave
    import numpy as np
    from media import g711
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getframerate()) == (2, 8000)
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").reshape(-1, 2)
    for channel, sent in ((0, codes), (1, [c ^ 0x80 for c in codes])):
        frames = pcm[: len(pcm) // 160 * 160, channel].reshape(-1, 160)
        heard = [int(f[0]) for f in frames if f.any()]
        expected = [int(np.frombuffer(g711.ulaw_decode(bytes([c]) * 2), "<i2")[0]) for c in sent]
        assert heard == expected, channel                               # every frame, once, in order


async def test_a_failing_slot_is_logged_and_the_clock_goes_on(caplog):
    """A bug that raises in one 20 ms step must not stop the media clock of every call."""
    base = free_udp_range(10)
    worker = await MediaWorker.start(MediaSettings(bind_host="127.0.0.1", rtp_port_min=base, rtp_port_max=base + 9))
    original = worker._tick
    calls = []

    def flaky(now: float) -> None:
        calls.append(now)
        if len(calls) == 2:
            raise RuntimeError("boom")
        original(now)

    worker._tick = flaky  # type: ignore[method-assign]
    try:
        await asyncio.sleep(0.2)
        assert worker.tick_errors == 1 and len(calls) >= 5 and worker.ticks == len(calls) - 1
        assert worker.status()["tick_errors"] == 1
        assert any("media clock slot failed" in r.getMessage() for r in caplog.records)
    finally:
        await worker.close()
