"""Call recording: each leg on its own channel of a WAV file, written incrementally so a crash loses little.

Sans-IO in spirit (no clock, no loop): the media worker calls ``CallRecorder.write(a, b)`` once per tick with
the two legs' int16 frames (``None`` when a leg sent nothing: silence). Left channel = leg A, right = leg B;
``channels=1`` mixes both legs into one channel (saturating), and more channels take more legs.

Durability, the exact guarantee:

- Frames are kept in a preallocated buffer and written with one ``os.write`` every ``flush_seconds`` of
  audio (default 1 s); right after each such write the RIFF and data chunk sizes in the header are rewritten
  in place (``os.pwrite``) to cover exactly the audio written so far. Data always reaches the file before the
  header claims it, so the header never points past the data.
- If the process dies without ``close()``, the file is a valid WAV whose header covers every sample up to the
  last periodic flush: ``wave``, PyAV/FFmpeg and other readers that honour the header play exactly that
  (FFmpeg stops at the declared size too). Audio of the last partial interval (< ``flush_seconds``) that was
  still in the buffer is lost; ``repair_wav()`` extends a crashed file's header to every whole sample frame
  actually on disk (what the OS received, which after a process crash is everything flushed).
- ``fsync=True`` also fsyncs at every flush (power loss, not just process death); off by default.
- On a write error (disk full, EFBIG, EIO) ``write``/``flush``/``close`` raise ``RecorderError``; whatever
  whole frames reached the disk stay covered by the header (rewritten in place, which needs no new space) and
  the recorder stops accepting audio. Already-written audio is never truncated or rewritten.
- ``close()`` flushes the rest and writes the final sizes (plus the pad byte RIFF needs after an odd-sized
  chunk). A WAV file cannot exceed 4 GiB: recording stops with ``RecorderError`` before that (about 37 h of
  8 kHz stereo PCM).

``encoding`` is ``"pcm"`` (16-bit, the default, readable by everything), ``"ulaw"`` or ``"alaw"`` (G.711 in
WAV: half the size; FFmpeg/PyAV and sox read it, Python's ``wave`` does not). ``format="raw"`` writes the
same interleaved samples with no header at all. ``transcode()`` makes the archived mp3/opus copy with PyAV.
"""
from __future__ import annotations

import errno
import os
import struct
from typing import Optional, Sequence, Union

import numpy as np

from . import g711

FrameLike = Union[np.ndarray, bytes, bytearray, memoryview, None]

_WAVE_FORMAT = {"pcm": 1, "alaw": 6, "ulaw": 7}
_BYTES_PER_SAMPLE = {"pcm": 2, "alaw": 1, "ulaw": 1}
_MAX_RIFF = 0xFFFFFFFF


class RecorderError(Exception):
    """A recording could not be opened or written (bad path, disk full, closed, bad frame)."""


def wav_header(channels: int, sample_rate: int, encoding: str = "pcm", data_bytes: int = 0) -> bytes:
    """A canonical WAV header: 44 bytes for PCM; fmt with cbSize plus a fact chunk (58 bytes) for G.711."""
    width = _BYTES_PER_SAMPLE[encoding]
    block = channels * width
    fmt = struct.pack("<HHIIHH", _WAVE_FORMAT[encoding], channels, sample_rate, sample_rate * block, block,
                      8 * width)
    chunks = b""
    if encoding == "pcm":
        chunks += b"fmt " + struct.pack("<I", len(fmt)) + fmt
    else:  # non-PCM: WAVEFORMATEX (cbSize = 0) and the fact chunk with the sample frame count
        fmt += struct.pack("<H", 0)
        chunks += b"fmt " + struct.pack("<I", len(fmt)) + fmt
        chunks += b"fact" + struct.pack("<II", 4, data_bytes // block)
    riff = 4 + len(chunks) + 8 + data_bytes + (data_bytes & 1)
    return b"RIFF" + struct.pack("<I", riff) + b"WAVE" + chunks + b"data" + struct.pack("<I", data_bytes)


def _size_fields(header: bytes) -> tuple[int, int, Optional[int]]:
    """Offsets of the RIFF size, data size and (G.711) fact sample-count fields in a header from wav_header."""
    fact = header.find(b"fact")
    return 4, len(header) - 4, (fact + 8 if fact >= 0 else None)


class CallRecorder:
    """A recording of one call: one channel per leg, fed every tick, flushed to disk every flush_seconds."""

    def __init__(self, path: Union[str, os.PathLike[str]], channels: int = 2, sample_rate: int = 8000,
                 format: str = "wav", encoding: str = "pcm", flush_seconds: float = 1.0,
                 fsync: bool = False, overwrite: bool = True) -> None:
        if format not in ("wav", "raw"):
            raise RecorderError(f"recording format must be 'wav' or 'raw', got {format!r}")
        if encoding not in _WAVE_FORMAT:
            raise RecorderError(f"recording encoding must be one of {sorted(_WAVE_FORMAT)}, got {encoding!r}")
        if not 1 <= channels <= 16:
            raise RecorderError(f"channels must be 1..16, got {channels}")
        if sample_rate not in (8000, 16000, 32000, 48000):
            raise RecorderError(f"sample_rate must be 8000, 16000, 32000 or 48000, got {sample_rate}")
        if not 0 < flush_seconds <= 60:
            raise RecorderError(f"flush_seconds must be within (0, 60], got {flush_seconds}")
        self.path = os.fspath(path)
        self.channels = channels
        self.sample_rate = sample_rate
        self.format = format
        self.encoding = encoding
        self.fsync = fsync
        self.frame_samples = sample_rate // 50  # a 20 ms tick
        self._width = _BYTES_PER_SAMPLE[encoding]
        self._block = channels * self._width
        self._header = wav_header(channels, sample_rate, encoding) if format == "wav" else b""
        self._fields = _size_fields(self._header) if format == "wav" else (0, 0, None)
        # the tick buffer: flush_seconds of int16 samples, one contiguous row per channel (cheap per-tick
        # copies), interleaved once per flush and written in one call
        self._capacity = max(self.frame_samples, int(round(flush_seconds * sample_rate)))
        self._buf = np.zeros((channels, self._capacity), dtype=np.int16)
        self._fill = 0  # sample frames buffered, not yet written
        self._written = 0  # data bytes on disk (whole sample frames unless a write failed midway)
        self._declared = 0  # data bytes the header currently covers
        self._error: Optional[RecorderError] = None
        self._fd: Optional[int] = None
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL) | getattr(os, "O_CLOEXEC", 0)
        try:
            self._fd = os.open(self.path, flags, 0o640)
        except OSError as exc:
            raise RecorderError(f"cannot create recording {self.path}: {exc.strerror or exc}") from exc
        if self._header:
            try:
                self._write_all(self._header, is_data=False)
            except OSError as exc:
                self._close_fd()
                raise RecorderError(f"cannot write recording header to {self.path}: {exc.strerror or exc}") from exc

    # -- feeding ------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True after close() (or a failed open)."""
        return self._fd is None

    @property
    def samples_written(self) -> int:
        """Sample frames (per channel) accepted so far, flushed or buffered."""
        return self._written // self._block + self._fill

    @property
    def duration(self) -> float:
        """Seconds of audio accepted so far."""
        return self.samples_written / self.sample_rate

    @property
    def durable_samples(self) -> int:
        """Sample frames the header covers: what a reader gets if the process dies now."""
        return self._declared // self._block

    def _as_samples(self, frame: FrameLike) -> Optional[np.ndarray]:
        """A leg's frame as a 1-D int16 array (bytes are 16-bit LE PCM); None stays None (silence)."""
        if frame is None:
            return None
        if isinstance(frame, np.ndarray):
            if frame.dtype != np.int16:
                raise RecorderError(f"frames must be int16, got {frame.dtype}")
            return frame.reshape(-1)
        if len(frame) % 2:
            raise RecorderError(f"16-bit PCM frame needs an even byte count, got {len(frame)}")
        return np.frombuffer(frame, dtype="<i2")

    def write(self, *legs: FrameLike) -> None:
        """Record one tick: a frame per leg (None = the leg sent nothing: silence); shorter legs are padded."""
        n, fill = self.frame_samples, self._fill
        if len(legs) == self.channels and fill + n <= self._capacity and self._error is None and self._fd is not None:
            for f in legs:  # fast path: one whole 20 ms int16 frame (or None) per channel, no conversion
                if f is not None and (type(f) is not np.ndarray or f.dtype != np.int16 or f.shape != (n,)):
                    break
            else:
                buf = self._buf
                for ch, f in enumerate(legs):
                    buf[ch, fill:fill + n] = 0 if f is None else f
                self._fill = fill + n
                if self._fill >= self._capacity:
                    self.flush()
                return
        elif (self.channels == 1 and len(legs) == 2 and fill + n <= self._capacity and self._error is None
              and self._fd is not None and all(type(f) is np.ndarray and f.dtype == np.int16 and f.shape == (n,)
                                               for f in legs)):
            acc = legs[0].astype(np.int32)  # fast path: mono mix of two whole frames, saturated
            acc += legs[1]
            np.minimum(acc, 32767, out=acc)
            np.maximum(acc, -32768, out=acc)
            self._buf[0, fill:fill + n] = acc
            self._fill = fill + n
            if self._fill >= self._capacity:
                self.flush()
            return
        self.write_frames(legs)

    def write_frames(self, legs: Sequence[FrameLike]) -> None:
        """Record one tick from a sequence of per-leg frames (see write)."""
        if self._error is not None:
            raise self._error
        if self._fd is None:
            raise RecorderError(f"recording {self.path} is closed")
        arrays = [self._as_samples(f) for f in legs]
        mono_mix = self.channels == 1 and len(arrays) > 1
        if len(arrays) > self.channels and not mono_mix:
            raise RecorderError(f"{len(arrays)} legs for a {self.channels}-channel recording")
        present = [a for a in arrays if a is not None]
        n = max((a.size for a in present), default=self.frame_samples)
        if n == 0:
            return
        if self._fill + n > self._capacity:
            self.flush()
        if n > self._capacity:  # an unusually long frame: grow the buffer once
            self._buf = np.zeros((self.channels, n), dtype=np.int16)
            self._capacity = n
        block = self._buf[:, self._fill:self._fill + n].T  # (samples, channels) view
        if mono_mix:
            acc = np.zeros(n, dtype=np.int32)
            for a in present:
                acc[:a.size] += a
            np.minimum(acc, 32767, out=acc)  # saturate (np.clip has ~20 µs of call overhead in numpy 2)
            np.maximum(acc, -32768, out=acc)
            block[:, 0] = acc
        else:
            for ch in range(self.channels):
                a = arrays[ch] if ch < len(arrays) else None
                if a is None:
                    block[:, ch] = 0
                else:
                    block[:a.size, ch] = a
                    block[a.size:, ch] = 0
        self._fill += n
        if self._fill >= self._capacity:
            self.flush()

    # -- disk ---------------------------------------------------------------------------------------

    def _write_all(self, data: Union[bytes, memoryview], is_data: bool = True) -> None:
        """os.write until everything is written, counting data bytes as they land; OSError on failure."""
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)  # type: ignore[arg-type]
            if n <= 0:
                raise OSError(errno.ENOSPC, "short write")
            view = view[n:]
            if is_data:
                self._written += n

    def flush(self) -> None:
        """Write the buffered audio, then the header sizes covering it (and fsync if asked); RecorderError on failure."""
        if self._error is not None:
            raise self._error
        if self._fd is None:
            return
        if self._fill:
            data = np.ascontiguousarray(self._buf[:, :self._fill].T)  # interleave: (samples, channels)
            if self.encoding == "ulaw":
                payload = memoryview(g711.ulaw_encode_array(data))
            elif self.encoding == "alaw":
                payload = memoryview(g711.alaw_encode_array(data))
            else:
                payload = memoryview(data.astype("<i2", copy=False)).cast("B")
            if self._header and len(self._header) + self._written + len(payload) + 1 > _MAX_RIFF:
                self._fail(RecorderError(f"recording {self.path} reached the 4 GiB WAV limit"), None)
            try:
                self._write_all(payload)
            except OSError as exc:
                self._fail(RecorderError(f"cannot write recording {self.path}: {exc.strerror or exc}"), exc)
            self._fill = 0
        try:
            self._update_header()
        except OSError as exc:
            self._fail(RecorderError(f"cannot update the header of {self.path}: {exc.strerror or exc}"), exc)
        if self.fsync:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self._fail(RecorderError(f"cannot fsync recording {self.path}: {exc.strerror or exc}"), exc)

    def _update_header(self) -> None:
        """Rewrite the size fields in place to cover the whole sample frames on disk (data first, then this)."""
        if not self._header or self._fd is None:
            self._declared = self._written - self._written % self._block
            return
        data = self._written - self._written % self._block
        if data == self._declared:
            return
        riff_at, data_at, fact_at = self._fields
        riff = len(self._header) - 8 + data + (data & 1)
        os.pwrite(self._fd, struct.pack("<I", riff), riff_at)
        if fact_at is not None:
            os.pwrite(self._fd, struct.pack("<I", data // self._block), fact_at)
        os.pwrite(self._fd, struct.pack("<I", data), data_at)
        self._declared = data

    def _fail(self, error: RecorderError, cause: Optional[BaseException]) -> None:
        """Keep what reached the disk valid (sizes rewritten in place), stop recording, raise error."""
        if cause is not None:
            error.__cause__ = cause
        self._error = error
        self._fill = 0
        try:
            self._update_header()
        except OSError:
            pass  # the header then still covers the previous flush: valid, just shorter
        raise error

    def close(self) -> None:
        """Flush the rest, write the final sizes (and the RIFF pad byte) and close; safe to call twice.

        After a write error (already raised) close() only closes: the file stays as the error left it."""
        if self._fd is None:
            return
        try:
            if self._error is None:
                self.flush()
                if self._header and self._written & 1:  # RIFF chunks are word-aligned
                    os.write(self._fd, b"\x00")
                if self.fsync:
                    os.fsync(self._fd)
        except OSError as exc:
            self._close_fd()
            raise RecorderError(f"cannot finish recording {self.path}: {exc.strerror or exc}") from exc
        except RecorderError:
            self._close_fd()
            raise
        self._close_fd()

    def _close_fd(self) -> None:
        """Close the descriptor, ignoring errors (the data is already written)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> "CallRecorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:  # dropped without close(): finish the file if possible
            try:
                self.close()
            except Exception:
                self._close_fd()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("failed" if self._error else "recording")
        return f"CallRecorder({self.path!r}, {self.channels} ch, {self.sample_rate} Hz, {self.duration:.2f} s, {state})"


def repair_wav(path: Union[str, os.PathLike[str]]) -> int:
    """Make a crashed recording's header cover every whole sample frame on disk; returns the sample frames."""
    name = os.fspath(path)
    try:
        with open(name, "r+b") as f:
            head = f.read(4096)
            if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                raise RecorderError(f"{name} is not a WAV file")
            pos, block, data_at, fact_at = 12, 0, -1, None
            while pos + 8 <= len(head):
                cid, size = head[pos:pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
                if cid == b"fmt ":
                    block = struct.unpack_from("<H", head, pos + 20)[0]
                elif cid == b"fact":
                    fact_at = pos + 8
                elif cid == b"data":
                    data_at = pos + 4
                    break
                pos += 8 + size + (size & 1)
            if data_at < 0 or not block:
                raise RecorderError(f"{name}: no fmt/data chunk in the header")
            total = os.fstat(f.fileno()).st_size
            data = min(total - (data_at + 4), _MAX_RIFF - data_at)
            data -= data % block
            f.seek(4)
            f.write(struct.pack("<I", data_at + 4 - 8 + data))
            if fact_at is not None:
                f.seek(fact_at)
                f.write(struct.pack("<I", data // block))
            f.seek(data_at)
            f.write(struct.pack("<I", data))
    except OSError as exc:
        raise RecorderError(f"cannot repair {name}: {exc.strerror or exc}") from exc
    return data // block


def transcode(path: Union[str, os.PathLike[str]], out_path: Union[str, os.PathLike[str]], codec: str = "mp3",
              bitrate: Optional[int] = None) -> str:
    """Transcode a recording with PyAV for the archive: "mp3" (libmp3lame) or "opus" (libopus in Ogg), channels kept."""
    import av

    encoders = {"mp3": ("libmp3lame", "mp3", 32000), "opus": ("libopus", "ogg", 24000)}
    if codec not in encoders:
        raise RecorderError(f"transcode codec must be one of {sorted(encoders)}, got {codec!r}")
    encoder, container_format, default_rate = encoders[codec]
    src, dst = os.fspath(path), os.fspath(out_path)
    try:
        with av.open(src) as inp:
            in_stream = inp.streams.audio[0]
            layout = "stereo" if in_stream.codec_context.channels == 2 else (
                "mono" if in_stream.codec_context.channels == 1 else in_stream.layout.name)
            rate = in_stream.codec_context.sample_rate
            if codec == "opus" and rate not in (8000, 12000, 16000, 24000, 48000):
                rate = 48000
            with av.open(dst, "w", format=container_format) as out:
                stream = out.add_stream(encoder, rate=rate, layout=layout)
                stream.codec_context.bit_rate = (bitrate or default_rate) * (2 if layout == "stereo" else 1)
                ctx = stream.codec_context
                resampler = av.AudioResampler(format=ctx.format.name, layout=layout, rate=ctx.sample_rate,
                                              frame_size=ctx.frame_size or None)
                for frame in inp.decode(in_stream):
                    frame.pts = None
                    for f in resampler.resample(frame):
                        for packet in stream.encode(f):
                            out.mux(packet)
                for f in resampler.resample(None):
                    for packet in stream.encode(f):
                        out.mux(packet)
                for packet in stream.encode(None):
                    out.mux(packet)
    except (av.FFmpegError, OSError, IndexError, ValueError) as exc:
        raise RecorderError(f"cannot transcode {src} to {codec}: {exc}") from exc
    return dst


__all__ = ["CallRecorder", "RecorderError", "repair_wav", "transcode", "wav_header"]
