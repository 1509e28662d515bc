"""RTCP (RFC 3550 §6): SR/RR/SDES/BYE wire vectors and round trips, A.1/A.3/A.8 statistics, RTT, the interval."""
from __future__ import annotations

import struct

import pytest

from media.rtcp import (
    Bye,
    ReceiverReport,
    ReceptionStats,
    ReportBlock,
    RtcpError,
    RtcpInterval,
    SdesChunk,
    SenderReport,
    SenderStats,
    SourceDescription,
    UnknownRtcp,
    build_compound,
    ntp_from_unix,
    ntp_middle32,
    parse_compound,
    round_trip_time,
    unix_from_ntp,
)

BLOCK = ReportBlock(ssrc=0x22222222, fraction_lost=64, cumulative_lost=-3, highest_seq=0x1_0005,
                    jitter=37, lsr=0xAABBCCDD, dlsr=65536 * 2)


def test_report_block_wire_vector() -> None:
    wire = BLOCK.serialize()
    assert wire == struct.pack("!IIIIII", 0x22222222, (64 << 24) | 0xFFFFFD, 0x10005, 37, 0xAABBCCDD, 131072)
    assert ReportBlock.parse(wire, 0) == BLOCK


def test_sr_wire_vector_and_round_trip() -> None:
    sr = SenderReport(0x11111111, 0x83AA7E80_00000000, 160000, 1000, 160000, [BLOCK])
    wire = sr.serialize()
    assert wire[:4] == bytes([0x81, 200]) + struct.pack("!H", 12)        # 1 block, (4+24+24)/4 - 1 words
    assert len(wire) == 52
    assert parse_compound(wire) == [sr]


def test_rr_sdes_bye_compound_round_trip() -> None:
    packets = [
        ReceiverReport(0x11111111, [BLOCK, ReportBlock(0x33333333)]),
        SourceDescription([SdesChunk(0x11111111, [(1, b"callpath@host"), (6, b"tool")]), SdesChunk(5, [(1, b"x")])]),
        Bye([0x11111111, 0x44444444], b"transfer"),
        UnknownRtcp(205, 1, b"\x00" * 8),                                     # RTPFB generic NACK shape
    ]
    wire = build_compound(packets)
    assert len(wire) % 4 == 0
    assert parse_compound(wire) == packets


def test_sdes_cname_vector() -> None:
    sdes = SourceDescription.cname(0x01020304, "ab")
    wire = sdes.serialize()
    # header, ssrc, CNAME(1) len 2 'ab', END + padding to 32 bits
    assert wire == bytes([0x81, 0xCA, 0, 3]) + bytes.fromhex("01020304") + b"\x01\x02ab" + b"\x00" * 4
    (parsed,) = parse_compound(wire)
    assert isinstance(parsed, SourceDescription) and parsed.chunks[0].cname == b"ab"


def test_bye_without_reason() -> None:
    assert parse_compound(Bye([7]).serialize()) == [Bye([7])]
    assert Bye([7]).serialize() == bytes([0x81, 203, 0, 1, 0, 0, 0, 7])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x81\xc8", "too short"),
        (bytes([0x41, 201, 0, 1, 0, 0, 0, 1]), "version"),
        (bytes([0x81, 201, 0, 7, 0, 0, 0, 1]), "claims"),
        (bytes([0x81, 201, 0, 1, 0, 0, 0, 1]), "too short"),               # RR says 1 block, has none
        (bytes([0x81, 202, 0, 1, 0, 0, 0, 1]), "END"),
        (bytes([0x81, 202, 0, 2, 0, 0, 0, 1, 1, 9, 0, 0]), "past"),
        (bytes([0x80, 201, 0, 1, 0, 0, 0, 1, 0]), "trailing"),
    ],
)
def test_malformed_compound_raises(data: bytes, message: str) -> None:
    with pytest.raises(RtcpError, match=message):
        parse_compound(data)


def test_padding_on_last_packet() -> None:
    rr = ReceiverReport(9).serialize()
    padded = bytes([rr[0] | 0x20, rr[1], 0, 2]) + rr[4:] + b"\x00\x00\x00\x04"
    assert parse_compound(padded) == [ReceiverReport(9)]


def test_ntp_conversions() -> None:
    t = 1_700_000_000.25
    ntp = ntp_from_unix(t)
    assert ntp >> 32 == 1_700_000_000 + 2_208_988_800 and ntp & 0xFFFFFFFF == 1 << 30
    assert unix_from_ntp(ntp) == pytest.approx(t)
    assert ntp_middle32(ntp) == ((ntp >> 32) & 0xFFFF) << 16 | 0x4000


# -- A.8 jitter --------------------------------------------------------------------------------------
def test_a8_jitter_on_known_arrival_pattern() -> None:
    """Packets every 20 ms; arrivals alternately on time and 5 ms late: |D| = 40 units, J_n = 40 (1 - (15/16)^(n-1))."""
    stats = ReceptionStats(0xABC, 8000)
    n = 400
    for i in range(n):
        stats.update(i, 1000 + 160 * i, 10.0 + 0.02 * i + (0.005 if i % 2 else 0.0))
    expected = 40 * (1 - (15 / 16) ** (n - 1))
    assert stats.jitter == pytest.approx(expected, rel=1e-6)
    assert stats.report_block(20.0).jitter == 39
    assert stats.jitter_seconds == pytest.approx(0.005, rel=1e-3)


def test_a8_jitter_matches_direct_formula_with_random_delays() -> None:
    import random
    rng = random.Random(3)
    stats = ReceptionStats(1, 48000)
    j = 0.0
    prev = None
    for i in range(1000):
        ts = (0xFFFF0000 + 960 * i) & 0xFFFFFFFF            # wraps the 32-bit timestamp
        arrival = 0.02 * i + rng.uniform(0, 0.03)
        stats.update(i & 0xFFFF, ts, arrival)
        transit = arrival * 48000 - (0xFFFF0000 + 960 * i)   # unwrapped oracle
        if prev is not None:
            j += (abs(transit - prev) - j) / 16
        prev = transit
    assert stats.jitter == pytest.approx(j, rel=1e-9)


def test_constant_delay_has_zero_jitter() -> None:
    stats = ReceptionStats(1, 8000)
    for i in range(50):
        stats.update(i, 160 * i, 0.02 * i + 0.1)
    assert stats.jitter == pytest.approx(0.0, abs=1e-6)


# -- A.1 / A.3 loss ----------------------------------------------------------------------------------
def test_loss_fraction_per_interval_and_cumulative() -> None:
    stats = ReceptionStats(1, 8000)
    for i in range(100):                                      # first interval: lose 10 of 100
        if i % 10 != 3:
            stats.update(i, 160 * i, 0.02 * i)
    b1 = stats.report_block(2.0)
    # the last packet (99) was received; expected = 100, received = 90
    assert b1.cumulative_lost == 10 and b1.fraction_lost == (10 << 8) // 100 and b1.highest_seq == 99
    for i in range(100, 200):                                 # second interval: no loss
        stats.update(i, 160 * i, 0.02 * i)
    b2 = stats.report_block(4.0)
    assert b2.fraction_lost == 0 and b2.cumulative_lost == 10 and b2.highest_seq == 199


def test_sequence_wrap_extends_highest() -> None:
    stats = ReceptionStats(1, 8000)
    for k in range(10):
        seq = (65530 + k) & 0xFFFF
        stats.update(seq, 160 * k, 0.02 * k)
    assert stats.extended_max == 65536 + 3 and stats.cumulative_lost == 0 and stats.expected == 10


def test_duplicates_make_loss_negative_and_reorder_is_not_loss() -> None:
    stats = ReceptionStats(1, 8000)
    for seq in [0, 1, 3, 2, 4, 4, 4]:
        stats.update(seq, 160 * seq, 0.02 * seq)
    assert stats.extended_max == 4 and stats.cumulative_lost == -2


def test_source_restart_is_followed_after_two_sequential_packets() -> None:
    stats = ReceptionStats(1, 8000)
    for i in range(10):
        stats.update(i, 160 * i, 0.02 * i)
    assert stats.update(40000, 0, 1.0) is False               # a big jump alone is not believed
    assert stats.update(40001, 160, 1.02) is True             # the next sequential one restarts counting
    assert stats.base_seq == 40001 and stats.extended_max == 40001 and stats.received == 1


def test_probation_when_asked() -> None:
    stats = ReceptionStats(1, 8000, min_sequential=2)
    assert stats.update(10, 0, 0.0) is False
    assert stats.update(11, 160, 0.02) is True
    assert stats.received == 1 and stats.base_seq == 11


# -- LSR / DLSR / RTT -------------------------------------------------------------------------------
def test_lsr_dlsr_and_round_trip_time() -> None:
    # A sends an SR at wall time 1000.0; B gets it, holds it 0.25 s, reports; 0.1 s of network each way.
    sender = SenderStats(8000)
    sender.on_sent(5000, 160, now=0.0)
    sr = sender.sender_report(0xA, now=0.02, unix_time=1000.0)
    assert sr.rtp_timestamp == 5160 and sr.packet_count == 1 and sr.octet_count == 160
    b_stats = ReceptionStats(0xA, 8000)
    b_stats.update(0, 5000, 50.1)
    b_stats.on_sender_report(sr.ntp_timestamp, arrival=50.1)           # B's own monotonic clock
    block = b_stats.report_block(now=50.35)
    assert block.lsr == ntp_middle32(sr.ntp_timestamp) and block.dlsr == int(0.25 * 65536)
    rtt = round_trip_time(block, ntp_from_unix(1000.0 + 0.1 + 0.25 + 0.1))
    assert rtt == pytest.approx(0.2, abs=1e-4)
    assert round_trip_time(ReportBlock(1), ntp_from_unix(5.0)) is None


# -- interval ----------------------------------------------------------------------------------------
def test_interval_randomisation_and_initial_half() -> None:
    draws = iter([0.0, 1.0, 0.5])
    iv = RtcpInterval(5.0, rng=lambda: next(draws))
    assert iv.next_interval() == pytest.approx(1.25)     # first: Tmin/2 * 0.5
    assert iv.next_interval() == pytest.approx(7.5)      # 5 * 1.5
    assert iv.next_interval() == pytest.approx(5.0)
    iv2 = RtcpInterval(5.0, rng=lambda: 0.5)
    assert iv2.schedule(100.0) == pytest.approx(102.5) and iv2.schedule(102.5) == pytest.approx(107.5)


def test_interval_bandwidth_bound() -> None:
    iv = RtcpInterval(5.0, rtcp_bandwidth=10.0, rng=lambda: 0.5)
    iv.initial = False
    assert iv.next_interval(members=2) == pytest.approx(2 * 128 / 10)
