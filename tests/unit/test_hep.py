"""HEP v3 encoding (checked byte-for-byte against the chunk layout) and the best-effort UDP exporter."""
from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from sipcore import hep
from sipcore.hep import HepExporter, decode_hep3, encode_hep3, parse_hep_target

SIP = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK776asdhds\r\n"
    b"Call-ID: a84b4c76e66710@pc33\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
)
TS = 1_700_000_000.123456


def walk_chunks(packet: bytes) -> list[tuple[int, int, bytes]]:
    """Independent chunk walker: (vendor, type, value) in wire order."""
    assert packet[:4] == b"HEP3"
    (total,) = struct.unpack("!H", packet[4:6])
    assert total == len(packet)
    out, pos = [], 6
    while pos < total:
        vendor, type_id, length = struct.unpack("!HHH", packet[pos : pos + 6])
        out.append((vendor, type_id, packet[pos + 6 : pos + length]))
        pos += length
    assert pos == total
    return out


def test_round_trip_ipv4() -> None:
    pkt = encode_hep3(SIP, ("10.0.0.5", 5062), ("192.0.2.1", 5060), "udp", TS, capture_id=2001)
    d = decode_hep3(pkt)
    assert d["ip_family"] == 2 and d["ip_proto"] == 17
    assert (d["src_ip"], d["src_port"]) == ("10.0.0.5", 5062)
    assert (d["dst_ip"], d["dst_port"]) == ("192.0.2.1", 5060)
    assert (d["ts_sec"], d["ts_usec"]) == (1_700_000_000, 123456)
    assert d["timestamp"] == pytest.approx(TS, abs=1e-6)
    assert d["proto_type"] == 1 and d["capture_id"] == 2001
    assert d["payload"] == SIP
    assert d["auth_key"] is None and d["correlation_id"] is None and d["unknown"] == {}


def test_round_trip_ipv6_with_auth_and_correlation() -> None:
    pkt = encode_hep3(SIP, ("2001:db8::5", 5061), ("[2001:db8::1]", 443), "wss", TS,
                      capture_id=0xDEADBEEF, password="s3cret", correlation_id="a84b4c76e66710@pc33")
    d = decode_hep3(pkt)
    assert d["ip_family"] == 10 and d["ip_proto"] == 6
    assert (d["src_ip"], d["dst_ip"]) == ("2001:db8::5", "2001:db8::1")
    assert (d["src_port"], d["dst_port"]) == (5061, 443)
    assert d["capture_id"] == 0xDEADBEEF
    assert d["auth_key"] == "s3cret"
    assert d["correlation_id"] == "a84b4c76e66710@pc33"
    assert d["payload"] == SIP


def test_chunk_layout_and_lengths_ipv4() -> None:
    pkt = encode_hep3(SIP, ("10.0.0.5", 5062), ("192.0.2.1", 5060), "tcp", TS,
                      password="pw", correlation_id="cid")
    chunks = walk_chunks(pkt)
    # sngrep reads these positionally: generic chunks, addresses, auth key, payload; correlation id last.
    assert [t for _, t, _ in chunks] == [0x01, 0x02, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x03, 0x04, 0x0E, 0x0F, 0x11]
    assert all(vendor == 0 for vendor, _, _ in chunks)
    sizes = {t: len(v) for _, t, v in chunks}
    assert sizes == {0x01: 1, 0x02: 1, 0x07: 2, 0x08: 2, 0x09: 4, 0x0A: 4, 0x0B: 1, 0x0C: 4,
                     0x03: 4, 0x04: 4, 0x0E: 2, 0x0F: len(SIP), 0x11: 3}
    values = {t: v for _, t, v in chunks}
    assert values[0x03] == socket.inet_aton("10.0.0.5")
    assert values[0x07] == struct.pack("!H", 5062)
    assert values[0x0B] == b"\x01"
    assert values[0x0C] == struct.pack("!I", 2001)
    assert values[0x0F] == SIP
    assert len(pkt) == 6 + sum(6 + len(v) for _, _, v in chunks)
    assert decode_hep3(pkt)["chunks"] == [(0, t, 6 + len(v)) for _, t, v in chunks]


def test_chunk_layout_ipv6() -> None:
    pkt = encode_hep3(b"x", ("::1", 1), ("::2", 2), "tls", 0.0)
    chunks = walk_chunks(pkt)
    assert [t for _, t, _ in chunks] == [0x01, 0x02, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x05, 0x06, 0x0F]
    values = {t: v for _, t, v in chunks}
    assert len(values[0x05]) == len(values[0x06]) == 16
    assert values[0x05] == socket.inet_pton(socket.AF_INET6, "::1")
    assert values[0x01] == b"\x0a" and values[0x02] == b"\x06"


def test_timestamp_usec_never_overflows() -> None:
    d = decode_hep3(encode_hep3(b"x", ("1.1.1.1", 1), ("2.2.2.2", 2), "udp", 99.9999999))
    assert (d["ts_sec"], d["ts_usec"]) == (100, 0)


def test_ipv4_mapped_pair_is_unmapped() -> None:
    d = decode_hep3(encode_hep3(b"x", ("::ffff:10.0.0.5", 1), ("192.0.2.1", 2), "udp", 1.0))
    assert (d["ip_family"], d["src_ip"]) == (2, "10.0.0.5")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(proto="sctp"),
        dict(src=("alice.example.com", 5060)),
        dict(src=("2001:db8::1", 5060)),  # mixed families
        dict(dst=("1.2.3.4", 70000)),
        dict(payload=b"x" * 70000),
        dict(capture_id=-1),
    ],
)
def test_encode_rejects(kwargs: dict) -> None:
    args = dict(payload=b"x", src=("1.1.1.1", 1), dst=("2.2.2.2", 2), proto="udp", timestamp=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError):
        encode_hep3(**args)


def test_decode_rejects_malformed() -> None:
    good = encode_hep3(SIP, ("10.0.0.5", 5062), ("192.0.2.1", 5060), "udp", TS)
    with pytest.raises(ValueError):
        decode_hep3(b"HEP2" + good[4:])
    with pytest.raises(ValueError):
        decode_hep3(good[:-1])  # shorter than its declared length
    with pytest.raises(ValueError):
        decode_hep3(good[:6] + struct.pack("!HHH", 0, 0x0F, 3) + good[12:])  # chunk length < header
    with pytest.raises(ValueError):
        decode_hep3(b"HEP")


def test_decode_keeps_unknown_chunks() -> None:
    good = encode_hep3(b"x", ("1.1.1.1", 1), ("2.2.2.2", 2), "udp", 1.0)
    extra = struct.pack("!HHH", 0x0009, 0x0001, 8) + b"ab"  # vendor-specific chunk
    pkt = b"HEP3" + struct.pack("!H", len(good) + len(extra)) + good[6:] + extra
    assert decode_hep3(pkt)["unknown"] == {(9, 1): b"ab"}


def test_parse_hep_target() -> None:
    assert parse_hep_target("127.0.0.1:9060") == ("127.0.0.1", 9060)
    assert parse_hep_target("udp:homer.example.com:9060") == ("homer.example.com", 9060)
    assert parse_hep_target("[::1]:9060") == ("::1", 9060)
    for bad in ("", "127.0.0.1", "host:port", "host:0", "[::1]"):
        with pytest.raises(ValueError):
            parse_hep_target(bad)


async def test_exporter_sends_real_udp() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    port = sock.getsockname()[1]
    loop = asyncio.get_running_loop()
    try:
        async with HepExporter("127.0.0.1", port, capture_id=7, password="pw") as exporter:
            assert exporter.send(SIP, ("10.0.0.5", 5062), ("192.0.2.1", 5060), "udp",
                                 timestamp=TS, correlation_id="cid-1")
            data = await asyncio.wait_for(loop.sock_recv(sock, 65535), 2.0)
        d = decode_hep3(data)
        assert d["payload"] == SIP and d["capture_id"] == 7 and d["auth_key"] == "pw"
        assert d["correlation_id"] == "cid-1" and d["timestamp"] == pytest.approx(TS, abs=1e-6)
        assert (exporter.sent, exporter.dropped) == (1, 0)
    finally:
        sock.close()


async def test_exporter_never_raises() -> None:
    exporter = HepExporter.from_target("127.0.0.1:9")
    # not started yet: dropped, counted
    assert exporter.send(SIP, ("10.0.0.5", 1), ("10.0.0.6", 2), "udp") is False
    await exporter.start()
    # unencodable input: dropped, counted, no exception into the caller
    assert exporter.send(SIP, ("not-an-ip", 1), ("10.0.0.6", 2), "udp") is False
    assert exporter.send(b"x" * 70000, ("10.0.0.5", 1), ("10.0.0.6", 2), "udp") is False
    # nobody listens on port 9 (discard): the ICMP error comes back asynchronously and is only counted
    for _ in range(3):
        exporter.send(SIP, ("10.0.0.5", 1), ("10.0.0.6", 2), "udp")
        await asyncio.sleep(0.02)
    exporter.close()
    await asyncio.sleep(0)
    assert exporter.send(SIP, ("10.0.0.5", 1), ("10.0.0.6", 2), "udp") is False
    assert exporter.dropped == 4
    assert exporter.sent + exporter.errors >= 3


def test_chunk_ids_match_spec() -> None:
    assert (hep.CHUNK_IP_FAMILY, hep.CHUNK_IP_PROTO, hep.CHUNK_IPV4_SRC, hep.CHUNK_IPV4_DST) == (1, 2, 3, 4)
    assert (hep.CHUNK_IPV6_SRC, hep.CHUNK_IPV6_DST, hep.CHUNK_SRC_PORT, hep.CHUNK_DST_PORT) == (5, 6, 7, 8)
    assert (hep.CHUNK_TS_SEC, hep.CHUNK_TS_USEC, hep.CHUNK_PROTO_TYPE, hep.CHUNK_CAPTURE_ID) == (9, 10, 11, 12)
    assert (hep.CHUNK_AUTH_KEY, hep.CHUNK_PAYLOAD, hep.CHUNK_CORRELATION_ID) == (14, 15, 17)
