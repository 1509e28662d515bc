"""RTP packets (RFC 3550 §5): hand-built header vectors, round trips, malformed input, relay helpers, RtpSender."""
from __future__ import annotations

import random
import struct

import pytest

from media.rtp import (
    RtpError,
    RtpPacket,
    RtpSender,
    SequenceExtender,
    is_rtcp,
    peek_header,
    rewrite_header,
    seq_add,
    seq_diff,
    seq_lt,
    ts_diff,
)

# V=2 P=0 X=0 CC=0 | M=1 PT=0 | seq=0x1234 | ts=0xDEADBEEF | ssrc=0x01020304 | payload
SIMPLE = bytes.fromhex("80 80 1234 deadbeef 01020304") + b"\xff" * 160


def test_parse_simple_vector() -> None:
    p = RtpPacket.parse(SIMPLE)
    assert (p.version, p.payload_type, p.sequence, p.timestamp, p.ssrc) == (2, 0, 0x1234, 0xDEADBEEF, 0x01020304)
    assert p.marker is True and p.csrcs == [] and p.extension is None and p.padding == 0
    assert p.payload == b"\xff" * 160
    assert p.serialize() == SIMPLE


def test_parse_csrcs_extension_padding_vector() -> None:
    # V=2 P=1 X=1 CC=2 -> 0xB2; M=0 PT=111 -> 0x6F
    data = (
        bytes.fromhex("b2 6f 0001 00000960 cafebabe")
        + bytes.fromhex("11111111 22222222")            # CSRCs
        + bytes.fromhex("bede 0001") + bytes.fromhex("10ff0000")  # one-byte header ext, 1 word
        + b"opus"                                         # payload
        + b"\x00\x00\x03"                                 # 3 octets of padding
    )
    p = RtpPacket.parse(data)
    assert p.payload_type == 111 and not p.marker and p.sequence == 1 and p.timestamp == 2400
    assert p.ssrc == 0xCAFEBABE and p.csrcs == [0x11111111, 0x22222222]
    assert p.extension == (0xBEDE, bytes.fromhex("10ff0000"))
    assert p.payload == b"opus" and p.padding == 3
    assert p.serialize() == data


def test_round_trip_built_packets() -> None:
    rng = random.Random(7)
    for _ in range(200):
        p = RtpPacket(
            payload_type=rng.randrange(128), sequence=rng.getrandbits(16), timestamp=rng.getrandbits(32),
            ssrc=rng.getrandbits(32), payload=rng.randbytes(rng.randrange(0, 200)), marker=rng.random() < 0.5,
            csrcs=[rng.getrandbits(32) for _ in range(rng.randrange(16))],
            extension=(rng.getrandbits(16), rng.randbytes(4 * rng.randrange(4))) if rng.random() < 0.5 else None,
            padding=rng.randrange(0, 9),
        )
        assert RtpPacket.parse(p.serialize()) == p


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\x00\x00", "too short"),
        (bytes.fromhex("40 00 0001 00000000 00000001"), "version 1"),
        (bytes.fromhex("83 00 0001 00000000 00000001 11111111"), "CSRC count 3"),
        (bytes.fromhex("90 00 0001 00000000 00000001 bede"), "extension bit"),
        (bytes.fromhex("90 00 0001 00000000 00000001 bede 0002 00000000"), "extension length 2"),
        (bytes.fromhex("a0 00 0001 00000000 00000001 aabb00"), "padding count octet is 0"),
        (bytes.fromhex("a0 00 0001 00000000 00000001 aabb09"), "padding count 9"),
    ],
)
def test_malformed_raise(data: bytes, message: str) -> None:
    with pytest.raises(RtpError, match=message):
        RtpPacket.parse(data)


def test_rtp_error_is_value_error() -> None:
    assert issubclass(RtpError, ValueError)


def test_serialize_rejects_bad_fields() -> None:
    with pytest.raises(RtpError, match="multiple of 4"):
        RtpPacket(extension=(1, b"abc")).serialize()
    with pytest.raises(RtpError, match="15"):
        RtpPacket(csrcs=[0] * 16).serialize()
    with pytest.raises(RtpError, match="payload type"):
        RtpPacket(payload_type=128).serialize()


def test_padding_only_packet() -> None:
    data = bytes.fromhex("a0 00 0001 00000000 00000001 00000004")
    p = RtpPacket.parse(data)
    assert p.payload == b"" and p.padding == 4


def test_peek_and_rewrite() -> None:
    assert peek_header(SIMPLE) == (0, 0x1234, 0xDEADBEEF, 0x01020304, True)
    out = rewrite_header(SIMPLE, 0x10000 + 5, 0x1_0000_0007, 0xAABBCCDD)
    assert peek_header(out) == (0, 5, 7, 0xAABBCCDD, True)
    assert out[12:] == SIMPLE[12:]
    out = rewrite_header(SIMPLE, 1, 2, 3, pt=8)
    assert peek_header(out) == (8, 1, 2, 3, True)
    with pytest.raises(RtpError):
        peek_header(b"\x80\x00")
    with pytest.raises(RtpError):
        peek_header(b"\x00" * 12)


def test_rewrite_keeps_csrcs_and_extension() -> None:
    p = RtpPacket(payload_type=96, sequence=1, timestamp=2, ssrc=3, payload=b"x", csrcs=[9], extension=(1, b"abcd"))
    q = RtpPacket.parse(rewrite_header(p.serialize(), 10, 20, 30))
    assert (q.sequence, q.timestamp, q.ssrc, q.csrcs, q.extension, q.payload) == (10, 20, 30, [9], (1, b"abcd"), b"x")


def test_is_rtcp_demux() -> None:
    assert is_rtcp(bytes([0x80, 200]) + b"\x00" * 6)       # SR
    assert is_rtcp(bytes([0x81, 201]) + b"\x00" * 6)       # RR
    assert is_rtcp(bytes([0x81, 206]))                      # PSFB
    assert not is_rtcp(SIMPLE)                              # PT 0 with marker = 128
    assert not is_rtcp(bytes([0x80, 111]))                  # Opus
    assert not is_rtcp(bytes([0x80, 0x80 | 101]))           # telephone-event with marker
    assert not is_rtcp(b"\x80")


def test_sequence_arithmetic() -> None:
    assert seq_add(65535, 1) == 0 and seq_add(0, -1) == 65535
    assert seq_diff(0, 65535) == 1 and seq_diff(65535, 0) == -1 and seq_diff(100, 90) == 10
    assert seq_lt(65535, 0) and not seq_lt(0, 65535)
    assert ts_diff(5, 0xFFFFFFFB) == 10 and ts_diff(0xFFFFFFFB, 5) == -10


def test_sequence_extender_wraps_and_reorders() -> None:
    ext = SequenceExtender()
    seqs = [65533, 65534, 65535, 1, 0, 2, 65535, 3]
    assert [ext.extend(s) for s in seqs] == [65533, 65534, 65535, 65537, 65536, 65538, 65535, 65539]
    assert ext.highest == 65539


def test_sender_advances_and_marks_talkspurts() -> None:
    s = RtpSender(0, 8000, ssrc=0x1234, sequence=65535, timestamp=0xFFFFFF00)
    a = peek_header(s.packetize(b"\x00" * 160, 0.0))
    b = peek_header(s.packetize(b"\x00" * 160, 0.02))
    assert a == (0, 65535, 0xFFFFFF00, 0x1234, True)
    assert b == (0, 0, (0xFFFFFF00 + 160) & 0xFFFFFFFF, 0x1234, False)
    s.skip()
    s.skip()
    c = peek_header(s.packetize(b"\x00" * 160, 0.08))
    assert c[1] == 1 and c[2] == (0xFFFFFF00 + 4 * 160) & 0xFFFFFFFF and c[4] is True
    assert s.packets_sent == 3 and s.octets_sent == 480


def test_sender_random_initial_state() -> None:
    a = RtpSender(0, 8000, rng=random.Random(1))
    b = RtpSender(0, 8000, rng=random.Random(2))
    assert (a.ssrc, a.sequence, a.timestamp) != (b.ssrc, b.sequence, b.timestamp)


def test_sender_relay_keeps_stream_continuous_across_source_change() -> None:
    s = RtpSender(None, 8000, ssrc=0xB0B, sequence=1000, timestamp=50000)
    out = []
    now = 0.0
    for i in range(3):                                      # source A
        pkt = RtpPacket(0, 40000 + i, 7000 + 160 * i, 0xA, b"a" * 160).serialize()
        out.append(peek_header(s.relay(pkt, now)))
        now += 0.02
    now += 0.04                                             # transfer: 60 ms since A's last packet
    for i in range(3):                                      # source B, unrelated numbering, PT 8
        pkt = RtpPacket(8, 9 + i, 123 + 160 * i, 0xB, b"b" * 160).serialize()
        out.append(peek_header(s.relay(pkt, now)))
        now += 0.02
    assert [o[3] for o in out] == [0xB0B] * 6
    assert [o[1] for o in out] == [1000, 1001, 1002, 1003, 1004, 1005]
    assert [o[2] for o in out] == [50000, 50160, 50320, 50320 + 480, 50320 + 640, 50320 + 800]
    assert [o[4] for o in out] == [True, False, False, True, False, False]
    assert [o[0] for o in out] == [0, 0, 0, 8, 8, 8]


def test_sender_relay_maps_reordered_packets() -> None:
    s = RtpSender(0, 8000, ssrc=1, sequence=10, timestamp=0)
    hdr = lambda seq, ts: RtpPacket(0, seq, ts, 0xA, b"x").serialize()  # noqa: E731
    assert peek_header(s.relay(hdr(65535, 0)))[1:3] == (10, 0)
    assert peek_header(s.relay(hdr(1, 320)))[1:3] == (12, 320)
    assert peek_header(s.relay(hdr(0, 160)))[1:3] == (11, 160)     # late one fills its slot
    assert s.sequence == 13 and s.timestamp == 480
    # a generated frame after relaying continues the same stream
    assert peek_header(s.packetize(b"y"))[1:3] == (13, 480)


def test_fixed_header_matches_struct() -> None:
    assert struct.unpack("!BBHII", SIMPLE[:12]) == (0x80, 0x80, 0x1234, 0xDEADBEEF, 0x01020304)


def test_sender_relay_keeps_telephone_event_pt_unless_told() -> None:
    s = RtpSender(0, 8000, ssrc=1, sequence=0, timestamp=0)
    assert peek_header(s.relay(RtpPacket(101, 5, 0, 0xA, b"\x01\x0a\x00\xa0").serialize()))[0] == 101
    assert peek_header(s.relay(RtpPacket(0, 6, 160, 0xA, b"x").serialize(), pt=8))[0] == 8
    with pytest.raises(RtpError):
        s.relay(b"\x80\x00")


def test_sender_relay_maps_a_straggler_of_the_replaced_source_into_its_old_range() -> None:
    s = RtpSender(0, 8000, ssrc=1, sequence=100, timestamp=0)
    a = lambda seq: RtpPacket(0, seq, 160 * seq, 0xA, b"x").serialize()  # noqa: E731
    b = lambda seq: RtpPacket(0, seq, 160 * seq, 0xB, b"y").serialize()  # noqa: E731
    assert peek_header(s.relay(a(10)))[1] == 100
    assert peek_header(s.relay(a(12)))[1] == 102
    assert peek_header(s.relay(b(500)))[1] == 103                # B takes over
    assert peek_header(s.relay(a(11)))[1:5:3] == (101, False)    # late A packet: its old slot, no marker
    assert peek_header(s.relay(b(501)))[1] == 104                # B continues undisturbed
