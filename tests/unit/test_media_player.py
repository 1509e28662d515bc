"""Prompts (media.player): files of several formats decode once to the right tone, every codec plays it, players
share one cached encoding with their own positions, loop/stop/restart, clear errors.

Test prompts are synthesized with PyAV into tmp_path (no binary fixtures).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from media import audio, g711  # noqa: E402
from media.player import (CODECS, Player, PlayerError, Prompt, PromptCache, beep, decode_file,  # noqa: E402
                          normalize_codec)

# (suffix, PyAV encoder, the rate written at): formats a prompt library really holds
FORMATS = [("wav", "pcm_s16le", 44100), ("mp3", "libmp3lame", 44100), ("ogg", "libopus", 48000),
           ("flac", "flac", 16000)]


def write_tone(path: Path, encoder: str, rate: int, freq: float = 440.0, seconds: float = 1.0) -> Path:
    """Write a mono sine tone with PyAV (resampled to whatever the encoder takes)."""
    x = audio.tone(freq, rate, seconds)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(x.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        ctx = stream.codec_context
        resampler = av.AudioResampler(format=ctx.format.name, layout="mono", rate=ctx.sample_rate,
                                      frame_size=ctx.frame_size or None)
        for out in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(out):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def decode_frames(frames: tuple, codec: str, rate: int = 8000) -> np.ndarray:
    """Turn a prompt's payloads back into int16 samples."""
    if codec == "int16":
        return np.concatenate(frames)
    if codec == "pcm":
        return audio.as_samples(b"".join(frames))
    if codec == "pcmu":
        return audio.as_samples(g711.ulaw_decode(b"".join(frames)))
    if codec == "pcma":
        return audio.as_samples(g711.alaw_decode(b"".join(frames)))
    from media.opus import OpusDecoder
    with OpusDecoder(rate) as dec:
        return np.concatenate([audio.as_samples(dec.decode(p)) for p in frames])


def opus_available() -> bool:
    try:
        from media.opus import load_libopus
        load_libopus()
        return True
    except Exception:
        return False


@pytest.mark.parametrize("suffix,encoder,rate", FORMATS)
def test_decode_formats_to_8k_mono(tmp_path: Path, suffix: str, encoder: str, rate: int) -> None:
    path = write_tone(tmp_path / f"tone.{suffix}", encoder, rate)
    samples = decode_file(path)
    assert samples.dtype == np.int16
    assert abs(samples.size - 8000) <= 8000 * 0.1  # 1 s (codec padding aside)
    body = samples[800:-800]
    assert audio.dominant_frequency(body, 8000) == pytest.approx(440, abs=2)
    assert audio.dbfs(body) > -12  # the level survived the resampler


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("suffix,encoder,rate", [FORMATS[0], FORMATS[1], FORMATS[2]])
def test_every_codec_plays_the_tone(tmp_path: Path, suffix: str, encoder: str, rate: int, codec: str) -> None:
    if codec == "opus" and not opus_available():
        pytest.skip("libopus not installed")
    path = write_tone(tmp_path / f"tone.{suffix}", encoder, rate, freq=700)
    prompt = PromptCache().get(path)
    frames = tuple(Player(prompt, codec))
    assert len(frames) == prompt.frame_count
    if codec in ("pcmu", "pcma"):
        assert all(len(f) == 160 for f in frames)
    elif codec in ("pcm",):
        assert all(len(f) == 320 for f in frames)
    elif codec == "int16":
        assert all(f.shape == (160,) and f.dtype == np.int16 for f in frames)
    decoded = decode_frames(frames, codec)
    assert audio.dominant_frequency(decoded[1600:-1600], 8000) == pytest.approx(700, abs=3)


def test_wideband_prompt(tmp_path: Path) -> None:
    path = write_tone(tmp_path / "tone.wav", "pcm_s16le", 48000, freq=5000)
    prompt = PromptCache(sample_rate=16000).get(path)
    assert prompt.frame_samples == 320 and prompt.sample_rate == 16000
    assert audio.dominant_frequency(prompt.samples[1600:-1600], 16000) == pytest.approx(5000, abs=5)
    if opus_available():
        decoded = decode_frames(prompt.frames("opus"), "opus", 16000)
        assert audio.dominant_frequency(decoded[3200:-3200], 16000) == pytest.approx(5000, abs=10)


def test_cache_decodes_once_and_encodes_once_per_codec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_tone(tmp_path / "moh.wav", "pcm_s16le", 8000)
    cache = PromptCache()
    import media.player as player_module
    decoded: list[str] = []
    real_decode = player_module.decode_file
    monkeypatch.setattr(player_module, "decode_file",
                        lambda p, rate=8000: decoded.append(str(p)) or real_decode(p, rate))
    encodes: list[str] = []
    original = Prompt._encode
    monkeypatch.setattr(Prompt, "_encode", lambda self, codec: encodes.append(codec) or original(self, codec))
    players = [cache.player(path, "pcmu", loop=True) for _ in range(50)]
    players += [cache.player(str(path), "PCMA") for _ in range(5)]
    assert cache.decodes == 1 and len(decoded) == 1  # PyAV ran once for 55 players
    assert encodes == ["pcmu", "pcma"]
    assert len(cache) == 1 and path in cache
    # fan-out: the same payload objects, each player at its own position
    assert players[0]._frames is players[49]._frames
    players[0].next_frame()
    assert players[0].position == 1 and players[1].position == 0
    assert players[1].next_frame() is players[0]._frames[0]


def test_changed_file_is_decoded_again(tmp_path: Path) -> None:
    path = write_tone(tmp_path / "p.wav", "pcm_s16le", 8000, freq=440)
    cache = PromptCache()
    first = cache.get(path)
    write_tone(path, "pcm_s16le", 8000, freq=1000, seconds=0.5)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 1_000_000_000))
    second = cache.get(path)
    assert cache.decodes == 2 and second is not first
    assert audio.dominant_frequency(second.samples[400:-400], 8000) == pytest.approx(1000, abs=3)
    assert cache.get(path) is second and cache.decodes == 2
    assert cache.evict(path) and not cache.evict(path)
    warm = cache.preload(path, ("pcmu", "pcm"))
    assert warm.codecs_encoded == ("pcmu", "pcm") and cache.decodes == 3


def test_loop_stop_restart(tmp_path: Path) -> None:
    prompt = Prompt.from_samples(np.arange(500, dtype=np.int16))  # 3.125 frames -> 4, padded with silence
    assert prompt.frame_count == 4
    assert np.array_equal(prompt.samples[500:], np.zeros(140, np.int16))
    once = Player(prompt, "int16")
    out = [once.next_frame() for _ in range(6)]
    assert [f is None for f in out] == [False] * 4 + [True] * 2
    assert once.done
    looped = Player(prompt, "pcm", loop=True)
    got = [looped.next_frame() for _ in range(10)]
    assert got[4] == got[0] and got[9] == got[1] and looped.loops == 2 and not looped.done
    looped.stop()
    assert looped.next_frame() is None and looped.done
    looped.restart()
    assert looped.next_frame() == got[0] and looped.position == 1
    looped.seek(3)
    assert looped.next_frame() == got[3]
    assert list(Player(prompt, "pcm")) == got[:4]


def test_beep() -> None:
    b = beep()
    assert b is beep()  # generated once, shared
    assert b.duration == pytest.approx(0.2) and b.frame_count == 10
    decoded = decode_frames(Player(b, "pcmu").prompt.frames("pcmu"), "pcmu")
    assert audio.dominant_frequency(decoded, 8000) == pytest.approx(1000, abs=3)
    assert abs(int(b.samples[0])) < 200 and abs(int(b.samples[-1])) < 200  # ramped edges, no click
    wide = beep(425, 100, sample_rate=16000)
    assert wide.frame_samples == 320 and wide.frame_count == 5
    with pytest.raises(PlayerError):
        beep(5000)


def test_errors(tmp_path: Path) -> None:
    cache = PromptCache()
    with pytest.raises(PlayerError, match="not found"):
        cache.get(tmp_path / "missing.wav")
    with pytest.raises(PlayerError, match="not found"):
        decode_file(tmp_path / "missing.mp3")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 10)
    with pytest.raises(PlayerError, match="cannot decode|no audio"):
        cache.get(junk)
    text = tmp_path / "notes.mp3"
    text.write_text("this is not audio\n" * 100)
    with pytest.raises(PlayerError):
        cache.get(text)
    assert cache.decodes == 0 and len(cache) == 0
    with pytest.raises(PlayerError, match="codec"):
        normalize_codec("g729")
    with pytest.raises(PlayerError):
        Player(beep(), "gsm")
    with pytest.raises(PlayerError):
        Player("hello.wav", "pcmu")  # type: ignore[arg-type]
    with pytest.raises(PlayerError):
        PromptCache(sample_rate=44100)
    with pytest.raises(PlayerError):
        Prompt.from_samples(np.zeros(0, np.int16))
