"""Music on hold: the configured files, or a built-in melody written once under the data directory.

A fresh install has no audio files, yet a party on hold must hear that the call is alive (silence makes
callers hang up). Like Asterisk's stock MOH class, callpath ships a default: a short, soft arpeggio
(C major, 8 kHz mono WAV, 12 s) generated on first use, so nothing binary lives in the repository.
"""
from __future__ import annotations

import math
import os
import struct
import wave
from pathlib import Path

__all__ = ["DEFAULT_NAME", "default_music", "music_on_hold"]

DEFAULT_NAME = "callpath-default-moh.wav"
RATE = 8000
_NOTES = [261.63, 329.63, 392.00, 523.25, 392.00, 329.63, 293.66, 349.23, 440.00, 587.33, 440.00, 349.23]
_NOTE_SECONDS = 1.0


def _melody() -> bytes:
    """16-bit little-endian PCM of the arpeggio: each note with a soft attack and decay, at about -18 dBFS."""
    frames = bytearray()
    per_note = int(RATE * _NOTE_SECONDS)
    for freq in _NOTES:
        for n in range(per_note):
            t = n / RATE
            envelope = min(1.0, t / 0.05) * math.exp(-2.5 * t)
            value = 0.25 * envelope * (math.sin(2 * math.pi * freq * t) + 0.3 * math.sin(4 * math.pi * freq * t))
            frames += struct.pack("<h", int(max(-1.0, min(1.0, value)) * 32767))
    return bytes(frames)


def default_music(directory: Path) -> str:
    """The built-in melody's file under ``directory`` (written atomically the first time)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / DEFAULT_NAME
    if not path.is_file():
        tmp = directory / f".{DEFAULT_NAME}.{os.getpid()}"
        with wave.open(str(tmp), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(RATE)
            out.writeframes(_melody())
        os.replace(tmp, path)
    return str(path)


def music_on_hold(configured: list[str], data_dir: Path) -> list[str]:
    """The files to loop for a party on hold: the configured ones, else the built-in melody."""
    if configured:
        return [str(Path(p).expanduser().resolve()) for p in configured]
    return [default_music(data_dir / "moh")]
