"""Opus through libopus (media.opus): tones survive a round trip, PLC/FEC/DTX and the CTLs work, bad input fails cleanly.

Skips, saying why, when libopus is not installed.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from media import audio
from media.opus import (OpusDecoder, OpusEncoder, OpusError, OpusLibraryNotFound, OpusPacketInfo,
                        libopus_version, load_libopus, packet_info)

try:
    load_libopus()
except OpusLibraryNotFound as exc:  # pragma: no cover - depends on the machine
    pytest.skip(f"{exc}", allow_module_level=True)


def encode_all(enc: OpusEncoder, samples: np.ndarray) -> list[bytes]:
    """Encode whole 20 ms frames of samples."""
    return [enc.encode(frame) for frame in audio.frames(samples, enc.frame_samples)]


def decode_all(dec: OpusDecoder, packets: list[bytes]) -> np.ndarray:
    """Decode packets into one int16 array."""
    return np.concatenate([audio.as_samples(dec.decode(p)) for p in packets])


def test_version() -> None:
    assert libopus_version().startswith("libopus ")


# -- tones survive encode/decode --------------------------------------------------------------------

@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("frequency", [440, 1000])
def test_tone_round_trip(rate: int, frequency: int) -> None:
    enc, dec = OpusEncoder(rate), OpusDecoder(rate)
    tone = audio.tone(frequency, rate, seconds=1.0)
    packets = encode_all(enc, tone)
    assert len(packets) == 50
    assert all(0 < len(p) < 200 for p in packets)  # ~24 kb/s: ~60 bytes per 20 ms
    out = decode_all(dec, packets)
    assert out.dtype == np.int16 and out.size == rate  # every packet decodes to 20 ms
    settled = out[rate // 10:]  # skip the encoder's start-up
    assert abs(audio.dominant_frequency(settled, rate) - frequency) <= 10
    assert audio.tone_to_noise_db(settled, rate, frequency) > 15
    assert 0.7 < audio.rms(settled) / audio.rms(tone) < 1.3


def test_array_and_bytes_input_encode_identically() -> None:
    tone = audio.tone(1000, 8000, seconds=0.1)
    a, b = OpusEncoder(8000), OpusEncoder(8000)
    for frame in audio.frames(tone, 160):
        assert a.encode(frame) == b.encode(audio.to_bytes(frame))


def test_decode_at_48k_and_stereo() -> None:
    enc = OpusEncoder(48000, channels=2)
    dec = OpusDecoder(48000, channels=2)
    mono = audio.tone(1000, 48000, seconds=0.1)
    stereo = np.repeat(mono, 2)  # interleaved L R
    pcm = dec.decode(enc.encode(stereo[:960 * 2]))
    assert len(pcm) == 960 * 2 * 2
    # a 48 kHz stream decodes at 8 kHz too (the decoder picks its output rate, not the packet)
    narrow = OpusDecoder(8000)
    assert len(narrow.decode(enc.encode(stereo[960 * 2:960 * 4]))) == 160 * 2


# -- packet loss: PLC and FEC ------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [8000, 16000])
def test_plc_returns_the_requested_samples(rate: int) -> None:
    enc, dec = OpusEncoder(rate), OpusDecoder(rate)
    for packet in encode_all(enc, audio.tone(440, rate, seconds=0.2)):
        dec.decode(packet)
    assert len(dec.decode_plc()) == rate // 50 * 2  # default: 20 ms
    assert len(dec.decode_plc(rate // 400)) == rate // 400 * 2  # 2.5 ms
    concealed = dec.decode_plc(rate * 60 // 1000)  # 60 ms
    assert len(concealed) == rate * 60 // 1000 * 2
    assert dec.last_packet_duration == rate * 60 // 1000
    assert audio.rms(concealed[:rate // 50 * 2]) > 100  # PLC continues the tone, it is not silence
    with pytest.raises(ValueError, match="2.5 ms"):
        dec.decode_plc(7)
    with pytest.raises(ValueError):
        dec.decode_plc(0)


def test_plc_on_a_fresh_decoder_is_silence() -> None:
    pcm = OpusDecoder(8000).decode_plc(160)
    assert len(pcm) == 320 and audio.rms(pcm) == 0


def _loss_scenario(fec: bool, loss: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lose the packet where a 440 Hz tone turns into 1200 Hz: (truth, FEC recovery, PLC) for it."""
    rate, n, lost = 8000, 160, 25
    signal = np.concatenate([audio.tone(440, rate, 0.5), audio.tone(1200, rate, 0.5, amplitude=0.3)])
    packets = encode_all(OpusEncoder(rate, fec=fec, packet_loss_perc=loss), signal)
    truth_dec, fec_dec, plc_dec = OpusDecoder(rate), OpusDecoder(rate), OpusDecoder(rate)
    for packet in packets[:lost]:
        for dec in (truth_dec, fec_dec, plc_dec):
            dec.decode(packet)
    truth = audio.as_samples(truth_dec.decode(packets[lost])).astype(np.float64)
    recovered = audio.as_samples(fec_dec.decode_fec(packets[lost + 1], n)).astype(np.float64)
    concealed = audio.as_samples(plc_dec.decode_plc(n)).astype(np.float64)
    # the FEC decoder then decodes the next packet normally
    assert len(fec_dec.decode(packets[lost + 1])) == n * 2
    return truth, recovered, concealed


def test_fec_recovers_the_lost_frame() -> None:
    truth, recovered, concealed = _loss_scenario(fec=True, loss=20)
    assert recovered.size == 160
    fec_error = np.sqrt(np.mean((recovered - truth) ** 2))
    plc_error = np.sqrt(np.mean((concealed - truth) ** 2))
    assert fec_error < 0.6 * plc_error  # FEC carries the new tone, PLC extrapolates the old one
    assert abs(audio.dominant_frequency(recovered, 8000) - 1200) < 60
    assert abs(audio.dominant_frequency(concealed, 8000) - 440) < 60


def test_fec_without_fec_data_falls_back_to_plc() -> None:
    truth, recovered, concealed = _loss_scenario(fec=False, loss=0)
    assert recovered.size == 160
    assert np.array_equal(recovered, concealed)


def test_fec_duration_is_validated() -> None:
    enc, dec = OpusEncoder(8000), OpusDecoder(8000)
    packet = enc.encode(audio.silence(8000, 0.02))
    with pytest.raises(ValueError):
        dec.decode_fec(packet, 161)
    with pytest.raises(OpusError):
        dec.decode_fec(b"", 160)


# -- DTX and the CTL setters -------------------------------------------------------------------------

def test_dtx_makes_silence_tiny() -> None:
    silence = audio.silence(8000, seconds=1.0)
    plain = encode_all(OpusEncoder(8000, dtx=False), silence)
    dtx = encode_all(OpusEncoder(8000, dtx=True), silence)
    assert min(len(p) for p in plain) > 2
    assert sum(len(p) <= 2 for p in dtx) > 30  # after a few frames DTX sends 1-2 byte packets
    assert sum(map(len, dtx)) < 0.5 * sum(map(len, plain))
    dec = OpusDecoder(8000)
    assert all(len(dec.decode(p)) == 320 for p in dtx)  # the tiny packets still decode to 20 ms


def test_defaults_and_getters() -> None:
    enc = OpusEncoder(16000)
    assert (enc.bitrate, enc.complexity, enc.fec, enc.packet_loss_perc, enc.dtx) == (24000, 5, True, 10, False)
    assert enc.frame_samples == 320 and enc.vbr is True and enc.lookahead > 0


def test_setters_take_effect() -> None:
    enc = OpusEncoder(8000)
    enc.set_bitrate(12000)
    enc.set_complexity(2)
    enc.set_fec(False)
    enc.set_dtx(True)
    enc.set_packet_loss_perc(25)
    assert (enc.bitrate, enc.complexity, enc.fec, enc.dtx, enc.packet_loss_perc) == (12000, 2, False, True, 25)
    enc.bitrate, enc.complexity = 32000, 9
    assert (enc.bitrate, enc.complexity) == (32000, 9)


def test_bitrate_changes_packet_sizes() -> None:
    tone = audio.tone(440, 8000, seconds=0.6)
    enc = OpusEncoder(8000, bitrate=8000)
    low = encode_all(enc, tone)
    enc.bitrate = 48000
    high = encode_all(enc, tone)
    assert np.mean([len(p) for p in high[5:]]) > 2 * np.mean([len(p) for p in low[5:]])


def test_complexity_changes_the_packets() -> None:
    noise = np.random.default_rng(0).normal(0, 4000, 8000).clip(-32768, 32767).astype(np.int16)
    sizes = {}
    for cx in (0, 10):
        enc = OpusEncoder(8000)
        enc.complexity = cx
        assert enc.complexity == cx
        sizes[cx] = [len(p) for p in encode_all(enc, noise)]
    assert sizes[0] != sizes[10]


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        OpusEncoder(44100)
    with pytest.raises(ValueError):
        OpusEncoder(8000, channels=3)
    with pytest.raises(ValueError):
        OpusEncoder(8000, application="music")
    with pytest.raises(ValueError):
        OpusEncoder(8000, complexity=11)
    with pytest.raises(ValueError):
        OpusDecoder(22050)
    enc = OpusEncoder(8000)
    with pytest.raises(OpusError, match="invalid argument") as info:
        enc.bitrate = 0
    assert info.value.code == -1
    with pytest.raises(ValueError):
        enc.packet_loss_perc = 101


def test_bad_pcm() -> None:
    enc = OpusEncoder(8000)
    with pytest.raises(ValueError, match="320 bytes for 20 ms"):
        enc.encode(b"\x00" * 321)
    with pytest.raises(ValueError):
        enc.encode(b"\x00" * 300)  # not an Opus frame duration
    with pytest.raises(TypeError):
        enc.encode(np.zeros(160, dtype=np.int32))
    with pytest.raises(TypeError):
        enc.encode("not pcm")  # type: ignore[arg-type]
    assert enc.encode(bytearray(320)) and enc.encode(memoryview(bytes(320)))
    assert enc.encode(b"\x00" * 80 * 2)  # 10 ms frames are fine too


# -- malformed packets -------------------------------------------------------------------------------

@pytest.mark.parametrize("packet", [
    b"",  # empty
    b"\x03",  # code 3 without its frame-count byte
    b"\x03\x00",  # code 3 with zero frames
    b"\x03\x3f" + b"\x00" * 10,  # 63 frames of 20 ms: over 120 ms
    b"\x01\x00\x00\x00",  # code 1 (two equal frames) with an odd payload length
    b"\x02\xfc",  # code 2: first frame length byte says more than the packet holds
    b"\xff\xff\xff",
])
def test_malformed_packets_raise_opus_error(packet: bytes) -> None:
    dec = OpusDecoder(8000)
    with pytest.raises(OpusError) as info:
        dec.decode(packet)
    assert info.value.code < 0 and "libopus error" in str(info.value)


def test_random_garbage_never_crashes() -> None:
    rng = np.random.default_rng(6716)
    dec = OpusDecoder(8000)
    errors = decoded = 0
    for _ in range(3000):
        packet = rng.integers(0, 256, int(rng.integers(1, 300)), dtype=np.uint8).tobytes()
        try:
            pcm = dec.decode(packet)
        except OpusError:
            errors += 1
        else:
            decoded += 1
            assert len(pcm) % 2 == 0 and len(pcm) <= 8000 * 120 // 1000 * 2
    assert errors > 0 and decoded > 0
    assert len(dec.decode(OpusEncoder(8000).encode(bytes(320)))) == 320  # still usable


def test_closed_codec_raises() -> None:
    with OpusEncoder(8000) as enc:
        packet = enc.encode(bytes(320))
    with pytest.raises(OpusError, match="closed"):
        enc.encode(bytes(320))
    dec = OpusDecoder(8000)
    dec.close()
    dec.close()  # idempotent
    with pytest.raises(OpusError, match="closed"):
        dec.decode(packet)


# -- packet_info -------------------------------------------------------------------------------------

@pytest.mark.parametrize("rate,bandwidth", [(8000, "narrowband"), (16000, "wideband"), (48000, "fullband")])
def test_packet_info(rate: int, bandwidth: str) -> None:
    enc = OpusEncoder(rate, bitrate=64000 if rate == 48000 else 24000)
    packets = encode_all(enc, audio.tone(440, rate, seconds=0.2))
    info = packet_info(packets[-1], rate)
    assert info == OpusPacketInfo(samples_per_frame=rate // 50, frames=1, samples=rate // 50,
                                  bandwidth=bandwidth, channels=1)
    assert packet_info(packets[-1]).samples == 960  # default: counted at 48 kHz


def test_packet_info_bad_packets() -> None:
    with pytest.raises(OpusError):
        packet_info(b"")
    with pytest.raises(OpusError):
        packet_info(b"\x03")
    with pytest.raises(ValueError):
        packet_info(b"\x08", 44100)


def test_missing_library_is_a_clear_error() -> None:
    code = ("from media.opus import OpusEncoder, OpusLibraryNotFound\n"
            "try:\n    OpusEncoder()\nexcept OpusLibraryNotFound as e:\n    print('missing:', e)\n")
    env = dict(os.environ, CALLPATH_LIBOPUS="/nonexistent/libopus.so.0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.startswith("missing: libopus not found") and "libopus0" in out.stdout
