"""The control protocol against a real worker process: spawn, connect, offer/answer/delete, errors."""
from __future__ import annotations

import asyncio
import json
import struct

import pytest

from media.certificate import DtlsCertificate
from media.client import MediaClient, MediaControlError
from media.wire import LineFramer
from media.webrtc import WebRtcLeg
from media.ice import IceLiteAgent
from media.worker import MediaSettings
from media.sdp import SessionDescription, create_answer, create_offer


pytestmark = pytest.mark.integration


def browser_offer() -> str:
    """A browser-like WebRTC offer: opus/PCMU/telephone-event, ICE credentials, fingerprint, actpass."""
    offer = create_offer("127.0.0.1", 9, [("opus", 48000, 2), ("PCMU", 8000), ("telephone-event", 48000)],
                         proto="UDP/TLS/RTP/SAVPF")
    offer.media[0].add_attribute("mid", "0")
    leg = WebRtcLeg(DtlsCertificate.generate(), IceLiteAgent().create_leg())
    leg.add_transport_attributes(offer, "127.0.0.1", 9)
    offer.media[0].set_attribute("setup", "actpass")
    offer.attributes[:] = [a for a in offer.attributes if a.name != "ice-lite"]  # a browser is full ICE
    return offer.to_bytes().decode()


async def test_offer_answer_delete_round_trip(worker_process):
    client = await MediaClient.open(worker_process.address)
    try:
        pong = await client.ping()
        assert pong["result"] == "pong" and pong["calls"] == 0

        # browser -> trunk: the trunk gets plain RTP/AVP from the worker's range
        to_trunk = SessionDescription.parse(await client.offer("call-A", "tag-browser", browser_offer()))
        section = to_trunk.media[0]
        settings = worker_process.settings
        assert section.proto == "RTP/AVP"
        assert settings.rtp_port_min <= section.port <= settings.rtp_port_max and section.port % 2 == 0
        assert to_trunk.effective_connection(0).address == "127.0.0.1"
        assert [section.rtpmap[pt].encoding for pt in section.payload_types] == ["PCMU", "PCMA", "telephone-event"]
        assert not to_trunk.has_attribute("ice-lite") and section.attribute("fingerprint") is None

        answer = create_answer(to_trunk, [("PCMU", 8000), ("telephone-event", 8000)], "127.0.0.1", 40002)
        to_browser = SessionDescription.parse(
            await client.answer("call-A", "tag-browser", "tag-trunk", answer.to_bytes()))
        bsec = to_browser.media[0]
        assert bsec.proto == "UDP/TLS/RTP/SAVPF" and to_browser.has_attribute("ice-lite")
        assert bsec.attribute("setup") == "passive" and bsec.has_attribute("rtcp-mux")
        assert bsec.attribute("ice-ufrag") and bsec.attribute("fingerprint").startswith("sha-256 ")
        assert bsec.attribute("mid") == "0" and to_browser.attribute("group") == "BUNDLE 0"
        assert [bsec.rtpmap[pt].encoding.lower() for pt in bsec.payload_types] == ["pcmu", "telephone-event"]

        stats = await client.query("call-A")
        assert stats["passthrough"] is True
        assert set(stats["legs"]) == {"tag-browser", "tag-trunk"}
        final = await client.delete("call-A")
        assert final["legs"]["tag-trunk"]["transport"] == "RTP/AVP"
        assert (await client.ping())["calls"] == 0

        # trunk -> browser: the browser gets WebRTC (actpass, since we offer) with Opus and both event clocks
        trunk_offer = create_offer("127.0.0.1", 40010, [("PCMU", 8000), ("telephone-event", 8000)])
        to_agent = SessionDescription.parse(await client.offer("call-B", "tag-trunk", trunk_offer.to_bytes()))
        asec = to_agent.media[0]
        assert asec.proto == "UDP/TLS/RTP/SAVPF" and asec.attribute("setup") == "actpass"
        rtpmap = asec.rtpmap
        assert [str(rtpmap[pt]) for pt in asec.payload_types] == [
            "PCMU/8000", "opus/48000/2", "telephone-event/48000", "telephone-event/8000"]
        await client.delete("call-B")
    finally:
        await client.close()


async def test_errors_are_replies_with_a_reason(worker_process):
    client = await MediaClient.open(worker_process.address)
    try:
        with pytest.raises(MediaControlError, match="unknown call 'nope'"):
            await client.delete("nope")
        with pytest.raises(MediaControlError, match="unknown call"):
            await client.answer("nope", "a", "b", "v=0\r\n")
        with pytest.raises(MediaControlError, match="unknown command"):
            await client.request("frobnicate")
        with pytest.raises(MediaControlError, match="bad SDP"):
            await client.offer("call-C", "tag", "this is not SDP")
        with pytest.raises(MediaControlError, match="missing or non-string 'sdp'"):
            await client.request("offer", call_id="x", from_tag="y")
        assert (await client.ping())["result"] == "pong"        # the connection survives
    finally:
        await client.close()

    # bad JSON on a raw connection: an error reply (id null), and the connection keeps working
    reader, writer = await asyncio.open_unix_connection(worker_process.address)
    try:
        writer.write(b"{not json\n" + LineFramer.encode({"id": 7, "command": "ping"}))
        first = json.loads(await asyncio.wait_for(reader.readline(), 5))
        second = json.loads(await asyncio.wait_for(reader.readline(), 5))
        assert first["result"] == "error" and first["id"] is None and "bad JSON" in first["error-reason"]
        assert second["id"] == 7 and second["result"] == "pong"
    finally:
        writer.close()


def test_line_framer_splits_and_reports():
    framer = LineFramer(max_line=64)
    assert framer.feed(b'{"a": 1}\n{"b"') == [{"a": 1}]
    assert framer.feed(b': 2}\n\n[1]\n') [0] == {"b": 2}
    errors = framer.feed(b"x" * 100)
    assert len(errors) == 1 and "longer than 64" in str(errors[0])


class Sink(asyncio.DatagramProtocol):
    """A trunk's RTP socket that keeps what it receives."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def datagram_received(self, data: bytes, addr) -> None:
        if not 192 <= data[1] <= 223:
            self.received.append(data)


async def test_trunk_to_trunk_relay_and_dtmf_event_pushed(worker_process):
    from media.dtmf import packets_for_press

    loop = asyncio.get_running_loop()
    a_transport, a = await loop.create_datagram_endpoint(Sink, local_addr=("127.0.0.1", 0))
    b_transport, b = await loop.create_datagram_endpoint(Sink, local_addr=("127.0.0.1", 0))
    events: list[dict] = []
    got_dtmf = asyncio.Event()

    def on_event(event: dict) -> None:
        events.append(event)
        if event.get("event") == "dtmf":
            got_dtmf.set()

    client = await MediaClient.open(worker_process.address, on_event=on_event)
    try:
        a_port = a_transport.get_extra_info("sockname")[1]
        b_port = b_transport.get_extra_info("sockname")[1]
        offer = create_offer("127.0.0.1", a_port, [("PCMU", 8000), ("telephone-event", 8000)])
        to_b = SessionDescription.parse(await client.offer("call-T", "a-tag", offer.to_bytes(), transport="RTP/AVP"))
        assert to_b.media[0].proto == "RTP/AVP"
        answer = create_answer(to_b, [("PCMU", 8000), ("telephone-event", 8000)], "127.0.0.1", b_port)
        to_a = SessionDescription.parse(await client.answer("call-T", "a-tag", "b-tag", answer.to_bytes()))
        worker_a = ("127.0.0.1", to_a.media[0].port)
        assert to_a.media[0].port != to_b.media[0].port
        seq, ts = 1, 1000
        for i in range(10):
            a_transport.sendto(struct.pack("!BBHII", 0x80, 0, seq, ts, 0xA) + b"\x7f" * 160, worker_a)
            seq, ts = seq + 1, ts + 160
            await asyncio.sleep(0.02)
        for tick in packets_for_press("#", 100, ts, 8000):
            for pkt in tick:
                a_transport.sendto(struct.pack("!BBHII", 0x80, (0x80 if pkt.marker else 0) | 101, seq, pkt.timestamp,
                                               0xA) + pkt.payload, worker_a)
                seq += 1
            await asyncio.sleep(0.02)
        await asyncio.wait_for(got_dtmf.wait(), 3.0)

        # B re-INVITEs: hold (sendonly) from a new port; A answers recvonly
        b2_transport, b2 = await loop.create_datagram_endpoint(Sink, local_addr=("127.0.0.1", 0))
        hold = create_offer("127.0.0.1", b2_transport.get_extra_info("sockname")[1], [("PCMU", 8000)],
                            direction="sendonly", previous=answer)
        to_a2 = SessionDescription.parse(await client.offer("call-T", "b-tag", hold.to_bytes()))
        assert to_a2.media[0].direction == "sendonly" and to_a2.origin.sess_version == to_a.origin.sess_version + 1
        assert to_a2.media[0].port == to_a.media[0].port
        assert [to_a2.media[0].rtpmap[pt].encoding for pt in to_a2.media[0].payload_types] == ["PCMU", "telephone-event"]
        a_answer = create_answer(to_a2, [("PCMU", 8000), ("telephone-event", 8000)], "127.0.0.1", a_port)
        assert a_answer.media[0].direction == "recvonly"
        to_b2 = SessionDescription.parse(await client.answer("call-T", "b-tag", "a-tag", a_answer.to_bytes()))
        assert to_b2.media[0].direction == "recvonly" and to_b2.media[0].port == to_b.media[0].port
        assert to_b2.origin.sess_version == to_b.origin.sess_version + 1
        for i in range(3):
            a_transport.sendto(struct.pack("!BBHII", 0x80, 0, seq, ts + 2000, 0xA) + b"\x11" * 160, worker_a)
            seq, ts = seq + 1, ts + 160
        await asyncio.sleep(0.2)
        assert [p[12:] for p in b2.received] == [b"\x11" * 160] * 3          # media follows the new address
        b2_transport.close()
        stats = await client.delete("call-T")
    finally:
        await client.close()
        a_transport.close()
        b_transport.close()
    dtmf = [e for e in events if e.get("event") == "dtmf"]
    assert dtmf == [{"event": "dtmf", "leg": "call-T/a-tag", "call_id": "call-T", "tag": "a-tag", "digit": "#", "duration": 100,
                     "source": "rfc4733"}]
    audio = [p for p in b.received if p[1] & 0x7F == 0]
    assert len(audio) == 10 and all(p[12:] == b"\x7f" * 160 for p in audio)       # relayed unchanged
    seqs = [struct.unpack_from("!H", p, 2)[0] for p in b.received]
    assert all((y - x) & 0xFFFF == 1 for x, y in zip(seqs, seqs[1:]))            # audio + events: one stream
    assert sum(1 for p in b.received if p[1] & 0x7F == 101) >= 5
    assert stats["passthrough"] is True and stats["legs"]["a-tag"]["packets_in"] == 13
