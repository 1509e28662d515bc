"""The bridge with a real browser: headless Chromium on one leg, a plain-RTP trunk peer on the other.

Chromium's fake microphone plays a WAV of a 440 Hz tone; the test page (page.html) calls the media worker
(its SDP offer goes to ``worker.offer``/``answer`` through POST /offer), measures what it receives with a
WebAudio AnalyserNode and presses "5#" with its RTCDTMFSender, then reports through POST /result. The trunk
peer sends a 1 kHz tone as 20 ms PCMU packets and presses "9" as RFC 4733 events. Checked, for Opus<->PCMU
transcoding and for PCMU passthrough: 440 Hz arrives at the trunk, 1 kHz at the browser, the browser's
digits are reported by the worker and reach the trunk as telephone-events, and the trunk's digit is reported
and sent on to the browser as its telephone-event (checked at the worker: browsers do not expose received
DTMF).
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from media.audio import dominant_frequency
from media.dtmf import decode_telephone_event, event_to_digit
from media.worker import MediaSettings, MediaWorker
from media.sdp import SessionDescription, create_answer

from browser_helpers import PAGE, PageServer, TrunkPeer, free_udp_range, pcmu_samples, write_tone_wav

pytestmark = pytest.mark.integration

BROWSER_HZ = 440.0
TRUNK_HZ = 1000.0
TOLERANCE_HZ = 15.0
CALL_ID = "chromium-call"


@pytest.fixture
async def worker():
    base = free_udp_range(64)
    events: list[dict] = []
    w = await MediaWorker.start(
        MediaSettings(bind_host="127.0.0.1", advertised_address="127.0.0.1", rtp_port_min=base,
                      rtp_port_max=base + 63),
        on_event=events.append)
    w.test_events = events  # type: ignore[attr-defined]
    yield w
    await w.close()


def _digits_sent(packets: list[bytes], pt: int) -> list[str]:
    """The digits of the RFC 4733 events among ``packets`` (payload type ``pt``), in order, once each."""
    digits: list[str] = []
    last_ts = None
    for p in packets:
        if p[1] & 0x7F != pt:
            continue
        ts = int.from_bytes(p[4:8], "big")
        if ts != last_ts:
            digits.append(event_to_digit(decode_telephone_event(p[12:]).event))
            last_ts = ts
    return digits


@pytest.mark.parametrize("codec", ["opus", "pcmu"], ids=["opus-pcmu", "pcmu-passthrough"])
async def test_chromium_call_through_the_bridge(worker: MediaWorker, chromium, tmp_path: Path, codec: str):
    loop = asyncio.get_running_loop()
    trunk_transport, trunk = await loop.create_datagram_endpoint(lambda: TrunkPeer(TRUNK_HZ),
                                                                 local_addr=("127.0.0.1", 0))
    sent_to_browser: list[tuple[bytes, bool]] = []
    original_send = worker.port.send_rtp

    def spy(leg, packet: bytes) -> bool:
        ok = original_send(leg, packet)
        sent_to_browser.append((packet, ok))
        return ok

    worker.port.send_rtp = spy  # type: ignore[method-assign]
    call: dict = {}
    result: asyncio.Future = loop.create_future()

    async def on_offer(body: dict) -> dict:
        to_trunk = SessionDescription.parse(await worker.offer(CALL_ID, "browser", body["sdp"]))
        trunk_answer = create_answer(to_trunk, [("PCMU", 8000), ("telephone-event", 8000)], "127.0.0.1", trunk.port)
        to_browser = await worker.answer(CALL_ID, "browser", "trunk", trunk_answer.to_bytes())
        call["trunk_to"] = ("127.0.0.1", to_trunk.media[0].port)
        call["browser_sdp"] = SessionDescription.parse(to_browser)
        call["player"] = asyncio.ensure_future(trunk.play(call["trunk_to"], 15.0))
        return {"sdp": to_browser}

    async def on_result(body: dict) -> dict:
        if not result.done():
            result.set_result(body)
        return {}

    server = await PageServer(PAGE.read_bytes(), {"offer": on_offer, "result": on_result}).start()
    wav = write_tone_wav(tmp_path / "tone440.wav", BROWSER_HZ)
    try:
        chromium.start(server.url(f"codec={codec}"), wav)
        report = await chromium.wait_for(result, 15, "the report of the page")
        if "error" in report or "player" not in call:
            pytest.fail(f"the page failed: {json.dumps(report, indent=1)}\nchromium log:\n{chromium.log_tail()}")
        # the trunk presses "9" while the browser is still connected
        trunk.press("9")
        for _ in range(100):
            if trunk.pressed:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.4)
        stats = worker.query(CALL_ID)
    finally:
        if "player" in call:
            call["player"].cancel()
        chromium.stop()
        await server.close()
        trunk_transport.close()
    await worker.delete(CALL_ID)
    context = f"page report: {json.dumps(report, indent=1)}\nworker stats: {stats}"

    # the negotiated codecs
    bsec = call["browser_sdp"].media[0]
    browser_codec = bsec.rtpmap[bsec.payload_types[0]].encoding.lower()
    event_pts = [pt for pt in bsec.payload_types if bsec.rtpmap[pt].encoding.lower() == "telephone-event"]
    assert browser_codec == codec and len(event_pts) == 1, call["browser_sdp"].to_bytes().decode()
    assert stats["passthrough"] is (codec == "pcmu"), context
    assert report["inbound"]["mimeType"].lower() == f"audio/{codec}", context
    assert report["outbound"]["mimeType"].lower() == f"audio/{codec}", context
    assert report["inbound"]["packetsReceived"] > 50, context

    # browser -> trunk: PCMU carrying 440 Hz
    audio = trunk.packets(0)
    assert len(audio) >= 60, (len(trunk.received), context)
    assert abs(dominant_frequency(pcmu_samples(audio[25:]), 8000) - BROWSER_HZ) < TOLERANCE_HZ, context

    # trunk -> browser: the page's analyser hears 1 kHz
    assert report["received_db"] > -60, context
    assert abs(report["received_hz"] - TRUNK_HZ) < TOLERANCE_HZ, context

    # DTMF browser -> trunk: the worker reports "5" and "#", the trunk receives them as RFC 4733 events
    assert report["can_insert_dtmf"] and report["tones"] == ["5", "#", ""], context
    dtmf = [(e["tag"], e["digit"]) for e in worker.test_events if e["event"] == "dtmf"]
    assert [d for tag, d in dtmf if tag == "browser"] == ["5", "#"], (dtmf, context)
    assert _digits_sent(trunk.received, 101) == ["5", "#"], context

    # DTMF trunk -> browser: reported, and sent (SRTP) to the browser as its telephone-event
    assert [d for tag, d in dtmf if tag == "trunk"] == ["9"], (dtmf, context)
    events = [p for p, ok in sent_to_browser if p[1] & 0x7F == event_pts[0]]
    assert events and all(ok for p, ok in sent_to_browser if p[1] & 0x7F == event_pts[0]), context
    assert _digits_sent(events, event_pts[0]) == ["9"], context
    rate = bsec.rtpmap[event_pts[0]].clock_rate
    final = decode_telephone_event(events[-1][12:])
    assert final.end and final.duration == 100 * rate // 1000, final
