"""SDES-SRTP legs (RFC 4568: RTP/SAVP with a=crypto) against real sockets, with the C data plane on and off.

A trunk or desk phone that offers RTP/SAVP gets our own key in the answer; towards a leg we offer RTP/SAVP
(``transport="RTP/SAVP"``) with one key per suite and key it with the one answered. The peers here protect
and unprotect with pylibsrtp from the keys in the SDP, so the payloads prove both directions were encrypted
and decrypted with the right keys; a packet with a bad tag is dropped and counted, a re-key in a re-INVITE
is followed.
"""
from __future__ import annotations

import asyncio
import struct

import numpy as np
import pytest

from media import g711
from media.audio import dominant_frequency, tone
from media.srtp import AES128_CM_SHA1_80, AEAD_AES_128_GCM, CryptoAttribute, sdes_context
from media.worker import MediaError, MediaSettings, MediaWorker
from media.sdp import SessionDescription

from media_ports import free_udp_range
from rtp_peers import RtpPeer as Peer

pytestmark = pytest.mark.integration
HOST = "127.0.0.1"


def sdp(port: int, proto: str = "RTP/AVP", crypto: list[CryptoAttribute] = (), version: int = 1,
        pt: int = 0) -> bytes:
    lines = ["v=0", f"o=- 1 {version} IN IP4 {HOST}", "s=-", f"c=IN IP4 {HOST}", "t=0 0",
             f"m=audio {port} {proto} {pt}", "a=ptime:20", "a=sendrecv"]
    lines += [f"a=crypto:{c}" for c in crypto]
    return ("\r\n".join(lines) + "\r\n").encode()


def rtp(seq: int, ssrc: int, payload: bytes, pt: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, 160 * seq, ssrc) + payload


@pytest.mark.parametrize("c_relay", [True, False], ids=["c-data-plane", "python-path"])
async def test_sdes_trunk_to_plain_trunk_and_sdes_callee(c_relay: bool):
    loop = asyncio.get_running_loop()
    base = free_udp_range(40)
    worker = await MediaWorker.start(MediaSettings(bind_host=HOST, rtp_port_min=base, rtp_port_max=base + 39,
                                                   c_relay=c_relay))
    peers = [Peer(), Peer()]
    for peer in peers:
        await loop.create_datagram_endpoint(lambda peer=peer: peer, local_addr=(HOST, 0))
    a, b = peers
    try:
        # A offers SRTP (two suites, GCM preferred), B is asked for SRTP too
        a_keys = [CryptoAttribute.generate(AEAD_AES_128_GCM, 1), CryptoAttribute.generate(AES128_CM_SHA1_80, 2)]
        to_b = SessionDescription.parse(await worker.offer(
            "call-s", "a-tag", sdp(a.port, "RTP/SAVP", a_keys), transport="RTP/SAVP"))
        section = to_b.media[0]
        assert section.proto == "RTP/SAVP"
        offered = [CryptoAttribute.parse(v) for v in section.attributes("crypto")]
        assert offered[0].suite == "AES_CM_128_HMAC_SHA1_80" and len({c.tag for c in offered}) == len(offered)
        b_key = CryptoAttribute.generate(offered[0].profile, offered[0].tag)
        to_a = SessionDescription.parse(await worker.answer("call-s", "a-tag", "b-tag",
                                                            sdp(b.port, "RTP/SAVP", [b_key])))
        assert to_a.media[0].proto == "RTP/SAVP"
        (ours_to_a,) = [CryptoAttribute.parse(v) for v in to_a.media[0].attributes("crypto")]
        assert ours_to_a.tag == 1 and ours_to_a.profile is AEAD_AES_128_GCM and ours_to_a.key_salt != a_keys[0].key_salt
        a_ctx = sdes_context(a_keys[0], ours_to_a)         # A protects with its key, reads ours
        b_ctx = sdes_context(b_key, offered[0])
        to_worker_a, to_worker_b = (HOST, to_a.media[0].port), (HOST, section.port)
        for seq in range(60):
            a.transport.sendto(a_ctx.protect(rtp(seq, 0xA, bytes([seq]) * 160)), to_worker_a)
            b.transport.sendto(b_ctx.protect(rtp(seq, 0xB, bytes([255 - seq]) * 160)), to_worker_b)
            if seq == 30:                                  # a forged packet: wrong key, dropped
                a.transport.sendto(sdes_context(CryptoAttribute.generate(AEAD_AES_128_GCM), ours_to_a)
                                   .protect(rtp(1000, 0xA, b"x" * 160)), to_worker_a)
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        at_b = [b_ctx.unprotect(p) for p in b.received]
        at_a = [a_ctx.unprotect(p) for p in a.received]
        assert [p[12:13] for p in at_b] == [bytes([s]) for s in range(60)]
        assert [p[12:13] for p in at_a] == [bytes([255 - s]) for s in range(60)]
        stats = worker.query("call-s")
        assert stats["passthrough"] is True
        assert stats["legs"]["a-tag"]["srtp"] == "AEAD_AES_128_GCM" and stats["legs"]["b-tag"]["srtp"] == "AES_CM_128_HMAC_SHA1_80"
        forged = stats["legs"]["a-tag"]["srtp_errors"] + (worker.relay.stats()["dropped"] if worker.relay else 0)
        assert forged == 1
        if worker.relay is not None:
            assert worker.relay.stats()["forwarded"] > 100

        # A re-keys in a re-INVITE: the worker follows, its own key stays
        new_key = CryptoAttribute.generate(AEAD_AES_128_GCM, 1)
        await worker.offer("call-s", "a-tag", sdp(a.port, "RTP/SAVP", [new_key], version=2))
        again = SessionDescription.parse(await worker.answer("call-s", "a-tag", "b-tag",
                                                             sdp(b.port, "RTP/SAVP", [b_key])))
        assert CryptoAttribute.parse(again.media[0].attributes("crypto")[0]).key_salt == ours_to_a.key_salt
        a_ctx2 = sdes_context(new_key, ours_to_a)
        b.received.clear()
        for seq in range(60, 70):
            a.transport.sendto(a_ctx2.protect(rtp(seq, 0xA, bytes([seq]) * 160)), to_worker_a)
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        assert [b_ctx.unprotect(p)[12] for p in b.received] == list(range(60, 70))

        # a bad SDES offer is a clear error
        with pytest.raises(MediaError, match="without an a=crypto we take"):
            await worker.offer("call-bad", "x", sdp(a.port, "RTP/SAVP", []))
        assert "call-bad" not in worker.calls
    finally:
        await worker.close()
        for peer in peers:
            peer.transport.close()


async def test_sdes_leg_on_a_transcoded_call():
    """SDES PCMU on one side, plain PCMA on the other: the C data plane decrypts into the jitter buffer and the
    tick encrypts what it sends; a 1 kHz tone from the SRTP phone arrives as 1 kHz A-law."""
    loop = asyncio.get_running_loop()
    base = free_udp_range(40)
    worker = await MediaWorker.start(MediaSettings(bind_host=HOST, rtp_port_min=base, rtp_port_max=base + 39))
    a, b = Peer(), Peer()
    for peer in (a, b):
        await loop.create_datagram_endpoint(lambda peer=peer: peer, local_addr=(HOST, 0))
    try:
        a_key = CryptoAttribute.generate(AES128_CM_SHA1_80, 7)
        to_b = SessionDescription.parse(await worker.offer("call-t", "a-tag", sdp(a.port, "RTP/SAVP", [a_key]),
                                                           transport="RTP/AVP"))
        to_a = SessionDescription.parse(await worker.answer("call-t", "a-tag", "b-tag", sdp(b.port, pt=8)))
        (ours,) = [CryptoAttribute.parse(v) for v in to_a.media[0].attributes("crypto")]
        assert ours.tag == 7 and worker.calls["call-t"].bridge.passthrough is False
        a_ctx = sdes_context(a_key, ours)
        pcm = tone(1000.0, 8000, 1.2, amplitude=0.3).astype("<i2")
        for seq in range(60):
            frame = g711.ulaw_encode(pcm[seq * 160:(seq + 1) * 160].tobytes())
            a.transport.sendto(a_ctx.protect(rtp(seq, 0xA, frame)), (HOST, to_a.media[0].port))
            b.transport.sendto(rtp(seq, 0xB, g711.alaw_encode(pcm[seq * 160:(seq + 1) * 160].tobytes()), 8),
                               (HOST, to_b.media[0].port))
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        at_b = [p for p in b.received if p[1] & 0x7F == 8]
        heard = np.frombuffer(g711.alaw_decode(b"".join(p[12:] for p in at_b[10:])), "<i2")
        assert len(at_b) >= 40 and abs(dominant_frequency(heard, 8000) - 1000) < 15
        at_a = [a_ctx.unprotect(p) for p in a.received]          # what A hears is SRTP with our key
        assert len(at_a) >= 40 and all(p[1] & 0x7F == 0 for p in at_a)
        heard_a = np.frombuffer(g711.ulaw_decode(b"".join(p[12:] for p in at_a[10:])), "<i2")
        assert abs(dominant_frequency(heard_a, 8000) - 1000) < 15      # B's A-law tone, as PCMU
        if worker.relay is not None:
            assert worker.relay.stats()["delivered"] > 40
    finally:
        await worker.close()
        for peer in (a, b):
            peer.transport.close()
