"""Prompts and music on hold: audio files decoded by PyAV once, cached pre-encoded per codec, played per leg.

Sans-IO: nothing here touches a socket or a clock. The media worker asks a ``Player`` for the next 20 ms
payload on every tick and wraps it in RTP itself (SSRC, sequence number, timestamp per leg).

- ``PromptCache`` decodes a file of any format PyAV reads (wav, mp3, ogg/opus, flac, ...) once to mono int16
  at the media rate (8 kHz, or 16 kHz for wideband) and keeps one ``Prompt`` per (path, mtime, size): a file
  that changes on disk is decoded again, an unchanged one never is.
- A ``Prompt`` encodes its 20 ms frames lazily, once per codec, into an immutable tuple (PCMU/PCMA code
  bytes, Opus packets, 16-bit LE PCM bytes, or int16 array views): the cache is effectively keyed by
  (path, mtime, codec), and every player of a prompt shares that tuple.
- A ``Player`` is only a position into such a tuple (fan-out: thousands of legs hearing the same MOH cost
  one encoding plus an index each), with loop, stop and restart.

Codec names (``CODECS``): ``"pcmu"``, ``"pcma"``, ``"opus"`` (libopus through media.opus at the prompt's
rate, one encoder per prompt so packets follow each other as one stream), ``"pcm"`` (16-bit signed LE
bytes) and ``"int16"`` (read-only int16 numpy views, for the mixer/recorder without a bytes round trip).
The last frame of a prompt is padded with silence to a whole 20 ms.

Looping an Opus prompt restarts a stream whose first packet was encoded from a fresh encoder state, so a
decoder may produce a few ms of transition at the loop point; G.711/PCM loops are sample-exact.
Decoding and encoding are blocking (measured in benchmarks/media/mixer.py: ~70 µs of PyAV decode and ~200 µs
of Opus encode per 20 ms of prompt, so a 10 min MOH file costs seconds): a worker calls ``preload`` from an
executor before the first play and only ever touches cached prompts on the tick. No locks: a race between two
loaders costs at most a duplicate decode, never a wrong prompt.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Iterator, Optional, Union

import numpy as np

from . import g711

CODECS = ("pcmu", "pcma", "opus", "pcm", "int16")
_ALIASES = {"ulaw": "pcmu", "mulaw": "pcmu", "g711u": "pcmu", "alaw": "pcma", "g711a": "pcma",
            "s16le": "pcm", "l16le": "pcm"}
SAMPLE_RATES = (8000, 16000)  # the media-plane rates (G.711 / wideband Opus)
FRAME_MS = 20

Frame = Union[bytes, np.ndarray]


class PlayerError(Exception):
    """A prompt could not be loaded (missing, unreadable, no audio) or a codec/rate is not supported."""


def normalize_codec(codec: str) -> str:
    """The canonical codec name (case-insensitive, G.711 aliases accepted); PlayerError when unknown."""
    name = codec.lower() if isinstance(codec, str) else codec
    name = _ALIASES.get(name, name)
    if name not in CODECS:
        raise PlayerError(f"unsupported prompt codec {codec!r}: use one of {', '.join(CODECS)}")
    return name


def _check_rate(sample_rate: int) -> int:
    """Validate a media rate (8000 or 16000)."""
    if sample_rate not in SAMPLE_RATES:
        raise PlayerError(f"prompt sample rate must be one of {SAMPLE_RATES}, got {sample_rate}")
    return sample_rate


@dataclass(eq=False)
class Prompt:
    """Mono int16 audio at the media rate, padded to whole 20 ms frames, with its per-codec encodings cached."""

    name: str
    samples: np.ndarray  # int16, read-only, length a multiple of frame_samples
    sample_rate: int = 8000
    _encoded: dict[str, tuple[Frame, ...]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_samples(cls, samples: np.ndarray, sample_rate: int = 8000, name: str = "<samples>") -> "Prompt":
        """A prompt from int16 samples (copied, padded with silence to whole 20 ms frames)."""
        _check_rate(sample_rate)
        arr = np.asarray(samples)
        if arr.dtype != np.int16 or arr.ndim != 1:
            raise PlayerError(f"prompt samples must be a 1-D int16 array, got {arr.dtype} {arr.shape}")
        if arr.size == 0:
            raise PlayerError(f"prompt {name!r} has no audio")
        step = sample_rate * FRAME_MS // 1000
        padded = np.zeros(-(-arr.size // step) * step, dtype=np.int16)
        padded[:arr.size] = arr
        padded.flags.writeable = False
        return cls(name=name, samples=padded, sample_rate=sample_rate)

    @property
    def frame_samples(self) -> int:
        """Samples in one 20 ms frame (160 at 8 kHz, 320 at 16 kHz)."""
        return self.sample_rate * FRAME_MS // 1000

    @property
    def frame_count(self) -> int:
        """Number of 20 ms frames."""
        return self.samples.size // self.frame_samples

    @property
    def duration(self) -> float:
        """Length in seconds (whole frames)."""
        return self.samples.size / self.sample_rate

    @property
    def codecs_encoded(self) -> tuple[str, ...]:
        """The codecs encoded so far (each exactly once)."""
        return tuple(self._encoded)

    def frames(self, codec: str) -> tuple[Frame, ...]:
        """The prompt's 20 ms payloads in codec, encoded on first request and shared afterwards."""
        name = normalize_codec(codec)
        cached = self._encoded.get(name)
        if cached is None:
            cached = self._encoded[name] = self._encode(name)
        return cached

    def _encode(self, codec: str) -> tuple[Frame, ...]:
        """Encode every frame once (G.711 through the numpy tables in one call for the whole prompt)."""
        rows = self.samples.reshape(self.frame_count, self.frame_samples)
        if codec == "int16":
            return tuple(rows)  # views of the read-only samples: no copy per frame
        if codec == "pcm":
            data = rows.astype("<i2", copy=False).tobytes()
        elif codec in ("pcmu", "pcma"):
            data = g711.encode_batch(np.ascontiguousarray(rows), "ulaw" if codec == "pcmu" else "alaw").tobytes()
        else:
            return self._encode_opus(rows)
        size = len(data) // self.frame_count
        return tuple(data[i:i + size] for i in range(0, len(data), size))

    def _encode_opus(self, rows: np.ndarray) -> tuple[bytes, ...]:
        """Opus packets from one encoder run over the whole prompt (offline, so the highest complexity)."""
        from .opus import OpusEncoder, OpusError  # libopus is loaded only when an Opus prompt is wanted
        try:
            with OpusEncoder(self.sample_rate, complexity=10, fec=False, packet_loss_perc=0) as enc:
                return tuple(enc.encode(row) for row in rows)
        except OpusError as exc:
            raise PlayerError(f"cannot encode prompt {self.name!r} as Opus: {exc}") from exc

    def player(self, codec: str, loop: bool = False) -> "Player":
        """A new Player of this prompt."""
        return Player(self, codec, loop=loop)


def decode_file(path: Union[str, os.PathLike[str]], sample_rate: int = 8000) -> np.ndarray:
    """Decode the first audio stream of any file PyAV reads to mono int16 at sample_rate; PlayerError if not."""
    import av  # PyAV only for files: the media loop never imports it

    _check_rate(sample_rate)
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise PlayerError(f"prompt file not found: {name}")
    chunks: list[np.ndarray] = []
    try:
        with av.open(name, mode="r") as container:
            streams = container.streams.audio
            if not streams:
                raise PlayerError(f"prompt file has no audio stream: {name}")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
            for frame in container.decode(streams[0]):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):  # flush the resampler's delay line
                chunks.append(out.to_ndarray().reshape(-1))
    except PlayerError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise PlayerError(f"cannot decode prompt file {name}: {exc}") from exc
    samples = np.concatenate(chunks).astype(np.int16, copy=False) if chunks else np.zeros(0, np.int16)
    if samples.size == 0:
        raise PlayerError(f"prompt file has no audio samples: {name}")
    return samples


class PromptCache:
    """Decoded prompts by file: each (path, mtime, size) is decoded once; encodings are cached per codec."""

    def __init__(self, sample_rate: int = 8000) -> None:
        self.sample_rate = _check_rate(sample_rate)
        self.decodes = 0  # files decoded so far (a cache hit does not count)
        self._prompts: dict[str, tuple[tuple[int, int], Prompt]] = {}

    def get(self, path: Union[str, os.PathLike[str]]) -> Prompt:
        """The Prompt of a file, decoding it only when it is new or changed on disk; PlayerError if unusable."""
        key = os.path.realpath(os.fspath(path))
        try:
            st = os.stat(key)
        except FileNotFoundError:
            raise PlayerError(f"prompt file not found: {os.fspath(path)}") from None
        except OSError as exc:
            raise PlayerError(f"cannot stat prompt file {os.fspath(path)}: {exc}") from exc
        version = (st.st_mtime_ns, st.st_size)
        hit = self._prompts.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        samples = decode_file(key, self.sample_rate)
        self.decodes += 1
        prompt = Prompt.from_samples(samples, self.sample_rate, name=key)
        self._prompts[key] = (version, prompt)  # replaces (frees) the encodings of an older version
        return prompt

    def preload(self, path: Union[str, os.PathLike[str]], codecs: tuple[str, ...] = ("pcmu", "pcma")) -> Prompt:
        """Decode a file and encode it in codecs now: blocking work to run off the media tick (an executor)."""
        prompt = self.get(path)
        for codec in codecs:
            prompt.frames(codec)
        return prompt

    def frames(self, path: Union[str, os.PathLike[str]], codec: str) -> tuple[Frame, ...]:
        """The cached 20 ms payloads of a file in codec."""
        return self.get(path).frames(codec)

    def player(self, path: Union[str, os.PathLike[str]], codec: str, loop: bool = False) -> "Player":
        """A new Player of a file's prompt (decoded and encoded at most once)."""
        return Player(self.get(path), codec, loop=loop)

    def evict(self, path: Union[str, os.PathLike[str]]) -> bool:
        """Drop one file's prompt (players already holding it keep playing); True if it was cached."""
        return self._prompts.pop(os.path.realpath(os.fspath(path)), None) is not None

    def clear(self) -> None:
        """Drop every cached prompt."""
        self._prompts.clear()

    def __len__(self) -> int:
        return len(self._prompts)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, (str, os.PathLike)) and os.path.realpath(os.fspath(path)) in self._prompts


@functools.lru_cache(maxsize=32)
def beep(freq: float = 1000.0, ms: int = 200, sample_rate: int = 8000, amplitude: float = 0.3) -> Prompt:
    """A generated tone prompt (recording notices, barge-in beeps); the same arguments share one Prompt."""
    if ms <= 0 or not 0 < freq < sample_rate / 2:
        raise PlayerError(f"beep needs ms > 0 and 0 < freq < {sample_rate / 2} Hz, got {freq} Hz, {ms} ms")
    n = sample_rate * ms // 1000
    t = np.arange(n, dtype=np.float64) / sample_rate
    ramp = min(n // 2, sample_rate // 200)  # 5 ms raised-cosine edges: no clicks
    env = np.ones(n)
    if ramp:
        edge = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
        env[:ramp], env[n - ramp:] = edge, edge[::-1]
    samples = np.round(amplitude * 32767.0 * env * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    return Prompt.from_samples(samples, sample_rate, name=f"beep:{freq:g}Hz:{ms}ms")


class Player:
    """One leg's playback position in a shared Prompt: the next 20 ms payload per tick, optional looping."""

    __slots__ = ("prompt", "codec", "loop", "_frames", "_pos", "_stopped", "loops")

    def __init__(self, prompt: Prompt, codec: str, loop: bool = False) -> None:
        if not isinstance(prompt, Prompt):
            raise PlayerError(f"Player needs a Prompt (PromptCache.get / beep), got {type(prompt).__name__}")
        self.prompt = prompt
        self.codec = normalize_codec(codec)
        self.loop = loop
        self._frames = prompt.frames(self.codec)
        self._pos = 0
        self._stopped = False
        self.loops = 0  # times playback wrapped around to the start

    @property
    def position(self) -> int:
        """Index of the frame the next call returns."""
        return self._pos

    @property
    def frame_count(self) -> int:
        """Frames in one pass of the prompt."""
        return len(self._frames)

    @property
    def frame_samples(self) -> int:
        """Samples per frame at the prompt's rate (the RTP timestamp step for G.711/PCM)."""
        return self.prompt.frame_samples

    @property
    def done(self) -> bool:
        """True once stopped, or past the last frame without looping."""
        return self._stopped or (not self.loop and self._pos >= len(self._frames))

    def next_frame(self) -> Optional[Frame]:
        """The next 20 ms payload, or None when playback has finished (or was stopped)."""
        if self._stopped:
            return None
        frames = self._frames
        pos = self._pos
        if pos >= len(frames):
            if not self.loop:
                return None
            pos = 0
            self.loops += 1
        self._pos = pos + 1
        return frames[pos]

    def stop(self) -> None:
        """Stop playback: next_frame returns None until restart."""
        self._stopped = True

    def restart(self) -> None:
        """Play again from the first frame."""
        self._pos = 0
        self._stopped = False
        self.loops = 0

    def seek(self, frame: int) -> None:
        """Jump to a frame index (clamped to the prompt)."""
        self._pos = max(0, min(int(frame), len(self._frames)))

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        frame = self.next_frame()
        if frame is None:
            raise StopIteration
        return frame

    def __repr__(self) -> str:
        return (f"Player({self.prompt.name!r}, {self.codec!r}, loop={self.loop}, "
                f"position={self._pos}/{len(self._frames)})")


__all__ = ["CODECS", "Frame", "Player", "PlayerError", "Prompt", "PromptCache", "SAMPLE_RATES", "beep",
           "decode_file", "normalize_codec"]
