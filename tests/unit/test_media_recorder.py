"""Call recording (media.recorder): legs land on their own channels, the file is readable before close and after
the process dies (up to the last flush), header sizes are exact after close, errors keep written audio valid.
"""
from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import wave
from pathlib import Path

import numpy as np
import pytest

from media import audio
from media.recorder import CallRecorder, RecorderError, repair_wav, transcode, wav_header

REPO = Path(__file__).resolve().parents[2]
RATE = 8000
TICK = 160


def read_wave(path: Path) -> tuple[int, np.ndarray]:
    """(channels, samples as (frames, channels) int16) through the standard library's wave module."""
    with wave.open(str(path), "rb") as w:
        assert w.getsampwidth() == 2 and w.getframerate() == RATE
        ch = w.getnchannels()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return ch, data.reshape(-1, ch)


def read_av(path: Path) -> np.ndarray:
    """All samples as (channels, frames) through PyAV/FFmpeg (packed or planar)."""
    av = pytest.importorskip("av")
    with av.open(str(path)) as c:
        frames = list(c.decode(audio=0))
    if not frames:
        return np.zeros((0, 0))
    channels = len(frames[0].layout.channels)
    if frames[0].format.is_planar:
        return np.concatenate([f.to_ndarray() for f in frames], axis=1)
    return np.concatenate([f.to_ndarray().reshape(-1, channels).T for f in frames], axis=1)


def record_tones(rec: CallRecorder, seconds: float, fa: float = 440.0, fb: float = 1000.0) -> tuple[np.ndarray, np.ndarray]:
    """Feed seconds of two tones tick by tick; returns what was fed."""
    a, b = audio.tone(fa, RATE, seconds), audio.tone(fb, RATE, seconds, amplitude=0.3)
    for i in range(0, a.size, TICK):
        rec.write(a[i:i + TICK], b[i:i + TICK])
    return a, b


def test_two_legs_on_two_channels(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    with CallRecorder(path) as rec:
        a, b = record_tones(rec, 2.0)
    ch, x = read_wave(path)
    assert ch == 2 and x.shape == (16000, 2)
    assert np.array_equal(x[:, 0], a) and np.array_equal(x[:, 1], b)  # PCM is bit-exact
    assert audio.dominant_frequency(x[:, 0], RATE) == pytest.approx(440, abs=1)
    assert audio.dominant_frequency(x[:, 1], RATE) == pytest.approx(1000, abs=1)
    y = read_av(path)
    assert y.shape[-1] == 16000
    assert np.array_equal(y[0], a) and np.array_equal(y[1], b)


def test_missing_leg_is_silence_and_bytes_frames(tmp_path: Path) -> None:
    path = tmp_path / "half.wav"
    tone = audio.tone(700, RATE, 0.4)
    with CallRecorder(path) as rec:
        for i in range(0, tone.size, TICK):
            rec.write(audio.to_bytes(tone[i:i + TICK]), None)  # leg B silent (on hold / no packet)
        rec.write(None, None)  # a tick where nobody sent anything is still 20 ms of the call
        rec.write(tone[:80], tone[:TICK])  # a short frame is padded to the longer one
    _, x = read_wave(path)
    assert x.shape == (3200 + 160 + 160, 2)
    assert np.array_equal(x[:3200, 0], tone) and not x[:3200, 1].any()
    assert not x[3200:3360].any()
    assert np.array_equal(x[3360:3440, 0], tone[:80]) and not x[3440:, 0].any()


def test_header_sizes_exact_after_close(tmp_path: Path) -> None:
    path = tmp_path / "sizes.wav"
    with CallRecorder(path, flush_seconds=0.3) as rec:
        record_tones(rec, 1.23)
    raw = path.read_bytes()
    assert raw[:4] == b"RIFF" and raw[8:16] == b"WAVEfmt "
    riff, = struct.unpack_from("<I", raw, 4)
    data_tag, data_size = raw[36:40], struct.unpack_from("<I", raw, 40)[0]
    assert riff == len(raw) - 8
    assert data_tag == b"data" and data_size == 9840 * 4 == len(raw) - 44
    fmt = struct.unpack_from("<HHIIHH", raw, 20)
    assert fmt == (1, 2, 8000, 32000, 4, 16)


@pytest.mark.parametrize("encoding,tag", [("ulaw", 7), ("alaw", 6)])
def test_g711_wav(tmp_path: Path, encoding: str, tag: int) -> None:
    path = tmp_path / f"{encoding}.wav"
    with CallRecorder(path, channels=1, encoding=encoding) as rec:  # mono: both legs mixed
        a = audio.tone(500, RATE, 0.5, amplitude=0.2)
        b = audio.tone(1500, RATE, 0.5, amplitude=0.2)
        for i in range(0, a.size, TICK):
            rec.write(a[i:i + TICK], b[i:i + TICK])
        rec.write(a[:TICK // 2 + 1])  # odd data size: RIFF needs a pad byte
    raw = path.read_bytes()
    assert struct.unpack_from("<H", raw, 20)[0] == tag
    fact = raw.index(b"fact")
    frames = struct.unpack_from("<I", raw, fact + 8)[0]
    data_size = struct.unpack_from("<I", raw, raw.index(b"data") + 4)[0]
    assert frames == data_size == 4000 + TICK // 2 + 1
    assert len(raw) == len(wav_header(1, RATE, encoding)) + data_size + 1
    assert struct.unpack_from("<I", raw, 4)[0] == len(raw) - 8
    y = read_av(path)[0]
    assert y.size == frames
    spectrum = np.abs(np.fft.rfft(y[:4000].astype(float)))
    freqs = np.fft.rfftfreq(4000, 1 / RATE)
    top = sorted(freqs[np.argsort(spectrum)[-2:]])
    assert top == pytest.approx([500, 1500], abs=3)


def test_readable_before_close_up_to_last_flush(tmp_path: Path) -> None:
    path, copy = tmp_path / "live.wav", tmp_path / "copy.wav"
    rec = CallRecorder(path, flush_seconds=1.0)
    a, b = record_tones(rec, 3.5)
    assert rec.samples_written == 28000 and rec.durable_samples == 24000
    shutil.copy(path, copy)  # what a reader (or a crash) sees now
    ch, x = read_wave(copy)
    assert ch == 2 and x.shape == (24000, 2)  # exactly the 3 flushed seconds
    assert np.array_equal(x[:, 0], a[:24000]) and np.array_equal(x[:, 1], b[:24000])
    assert read_av(copy).shape[-1] == 24000  # FFmpeg honours the declared size too
    rec.flush()
    shutil.copy(path, copy)
    assert read_wave(copy)[1].shape == (28000, 2)
    rec.close()
    assert read_wave(path)[1].shape == (28000, 2)


def test_process_killed_mid_call(tmp_path: Path) -> None:
    """A recorder whose process dies (SIGKILL, no close) leaves a valid WAV up to its last flush."""
    path = tmp_path / "killed.wav"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from media import audio
        from media.recorder import CallRecorder
        rec = CallRecorder({str(path)!r}, flush_seconds=0.5)
        a, b = audio.tone(440, 8000, 2.3), audio.tone(1000, 8000, 2.3)
        for i in range(0, a.size, 160):
            rec.write(a[i:i + 160], b[i:i + 160])
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    _, x = read_wave(path)
    assert x.shape == (16000, 2)  # flushed at 0.5, 1.0, 1.5, 2.0 s; the last 0.3 s was still buffered
    assert np.array_equal(x[:, 0], audio.tone(440, RATE, 2.0))
    assert repair_wav(path) == 16000  # nothing more reached the disk
    assert read_wave(path)[1].shape == (16000, 2)


def test_repair_covers_data_past_a_stale_header(tmp_path: Path) -> None:
    path = tmp_path / "stale.wav"
    rec = CallRecorder(path, flush_seconds=10.0)
    record_tones(rec, 1.0)
    rec._write_all(np.ascontiguousarray(rec._buf[:, :rec._fill].T).astype("<i2").tobytes())  # stale header
    assert read_wave(path)[1].shape == (0, 2)
    assert repair_wav(path) == 8000
    assert read_wave(path)[1].shape == (8000, 2)
    rec._close_fd()
    (tmp_path / "text.wav").write_text("hello")
    with pytest.raises(RecorderError):
        repair_wav(tmp_path / "text.wav")


def test_disk_full_keeps_written_audio(tmp_path: Path) -> None:
    """File size limit hit mid-call (EFBIG, as disk full gives ENOSPC): RecorderError, file valid up to it."""
    path = tmp_path / "full.wav"
    script = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
        from media import audio
        from media.recorder import CallRecorder, RecorderError
        rec = CallRecorder({str(path)!r}, flush_seconds=0.5)
        a = audio.tone(440, 8000, 10.0)
        try:
            for i in range(0, a.size, 160):
                rec.write(a[i:i + 160], None)
        except RecorderError as exc:
            print("ERROR", i, exc)
            try:
                rec.write(a[:160], None)
            except RecorderError:
                print("STILL FAILED")
            rec.close()
            print("CLOSED", rec.durable_samples)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "ERROR" in proc.stdout and "STILL FAILED" in proc.stdout, proc.stdout
    assert "File too large" in proc.stdout or "No space" in proc.stdout
    durable = int(proc.stdout.split("CLOSED")[1])
    assert os.path.getsize(path) == 100_000
    expected = (100_000 - 44) // 4  # the limit allowed a partial write: every whole frame is kept
    assert durable == expected
    _, x = read_wave(path)
    assert x.shape == (expected, 2)
    assert np.array_equal(x[:, 0], audio.tone(440, RATE, 10.0)[:expected])


def test_dev_full(tmp_path: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with pytest.raises(RecorderError, match="header"):
        CallRecorder("/dev/full")


def test_bad_path_and_misuse(tmp_path: Path) -> None:
    with pytest.raises(RecorderError, match="cannot create"):
        CallRecorder(tmp_path / "no" / "such" / "dir" / "x.wav")
    with pytest.raises(RecorderError, match="cannot create"):
        CallRecorder(tmp_path)  # a directory
    existing = tmp_path / "keep.wav"
    existing.write_bytes(b"precious")
    with pytest.raises(RecorderError):
        CallRecorder(existing, overwrite=False)
    assert existing.read_bytes() == b"precious"
    for kwargs in ({"format": "mp3"}, {"encoding": "gsm"}, {"channels": 0}, {"sample_rate": 11025}):
        with pytest.raises(RecorderError):
            CallRecorder(tmp_path / "bad.wav", **kwargs)
    rec = CallRecorder(tmp_path / "r.wav")
    with pytest.raises(RecorderError, match="legs"):
        rec.write(np.zeros(160, np.int16), None, None)
    with pytest.raises(RecorderError, match="int16"):
        rec.write(np.zeros(160, np.float32))
    with pytest.raises(RecorderError, match="even"):
        rec.write(b"\x00\x01\x02")
    rec.close()
    rec.close()
    with pytest.raises(RecorderError, match="closed"):
        rec.write(None, None)


def test_raw_format_and_wideband(tmp_path: Path) -> None:
    path = tmp_path / "call.raw"
    a = audio.tone(3000, 16000, 0.2)
    with CallRecorder(path, sample_rate=16000, format="raw") as rec:
        assert rec.frame_samples == 320
        for i in range(0, a.size, 320):
            rec.write(a[i:i + 320], -a[i:i + 320])
    x = np.frombuffer(path.read_bytes(), dtype="<i2").reshape(-1, 2)
    assert np.array_equal(x[:, 0], a) and np.array_equal(x[:, 1], -a)


@pytest.mark.parametrize("codec,suffix", [("mp3", "mp3"), ("opus", "ogg")])
def test_transcode_keeps_channels(tmp_path: Path, codec: str, suffix: str) -> None:
    pytest.importorskip("av")
    src = tmp_path / "call.wav"
    with CallRecorder(src) as rec:
        record_tones(rec, 1.0, 440, 1000)
    out = transcode(src, tmp_path / f"call.{suffix}", codec)
    assert os.path.getsize(out) < os.path.getsize(src) / 3  # 2 x 32 kb/s mp3, 2 x 24 kb/s Opus vs 256 kb/s PCM
    import av
    with av.open(out) as c:
        rate = c.streams.audio[0].codec_context.sample_rate
        y = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
    assert y.shape[0] == 2 and y.shape[1] == pytest.approx(rate, rel=0.1)
    body = slice(rate // 5, -rate // 5)
    assert audio.dominant_frequency(y[0, body], rate) == pytest.approx(440, abs=3)
    assert audio.dominant_frequency(y[1, body], rate) == pytest.approx(1000, abs=3)
    with pytest.raises(RecorderError):
        transcode(src, tmp_path / "x.aac", "aac")
    with pytest.raises(RecorderError):
        transcode(tmp_path / "missing.wav", tmp_path / "y.mp3")


def test_dropped_recorder_finishes_its_file(tmp_path: Path) -> None:
    path = tmp_path / "dropped.wav"
    rec = CallRecorder(path)
    record_tones(rec, 0.5)
    del rec  # garbage-collected without close(): the buffered half second is still flushed
    import gc
    gc.collect()
    assert read_wave(path)[1].shape == (4000, 2)


def test_mono_mix_saturates(tmp_path: Path) -> None:
    path = tmp_path / "mono.wav"
    loud = np.full(TICK, 30000, np.int16)
    quiet = audio.tone(440, RATE, 0.02, amplitude=0.1)
    with CallRecorder(path, channels=1) as rec:
        rec.write(loud, loud)  # fast path
        rec.write(-loud, -loud)
        rec.write(quiet, None)  # general path: a silent leg
        rec.write(audio.to_bytes(quiet), quiet)  # general path: bytes
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 1
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert (x[:TICK] == 32767).all() and (x[TICK:2 * TICK] == -32768).all()
    assert np.array_equal(x[2 * TICK:3 * TICK], quiet)
    assert np.array_equal(x[3 * TICK:], 2 * quiet)
