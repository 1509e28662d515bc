"""aiortc pieces shared by the WebRTC tests: aiortc plays the browser."""
from __future__ import annotations

import asyncio
import fractions
import time

import av
import numpy as np
from aiortc import MediaStreamTrack

SAMPLE_RATE = 48000


class SineTrack(MediaStreamTrack):
    """A tone as 20 ms mono s16 frames at 48 kHz, paced in real time (the browser's microphone)."""

    kind = "audio"

    def __init__(self, freq: float = 440.0) -> None:
        super().__init__()
        self.freq = freq
        self._start: float | None = None
        self._pts = 0

    async def recv(self) -> av.AudioFrame:
        samples = SAMPLE_RATE // 50
        if self._start is None:
            self._start = time.time()
        else:
            self._pts += samples
            wait = self._start + self._pts / SAMPLE_RATE - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        t = (np.arange(samples) + self._pts) / SAMPLE_RATE
        pcm = (np.sin(2 * np.pi * self.freq * t) * 12000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        return frame


class Listener:
    """Keeps the audio frames a peer connection receives (one consumer task per remote track)."""

    def __init__(self, pc) -> None:
        self.frames: list[av.AudioFrame] = []
        self._tasks: list[asyncio.Task] = []
        pc.on("track", lambda track: self._tasks.append(asyncio.ensure_future(self._consume(track))))

    async def _consume(self, track) -> None:
        while True:
            try:
                self.frames.append(await track.recv())
            except Exception:  # MediaStreamError once closed
                return

    def samples(self, start: int, end: int) -> tuple[np.ndarray, int]:
        """The first channel of frames[start:end] and its sample rate (48 kHz for Opus, 8 kHz for PCMU)."""
        frames = self.frames[start:end]
        pcm = np.concatenate([f.to_ndarray().reshape(-1, len(f.layout.channels))[:, 0] for f in frames])
        return pcm, frames[0].sample_rate

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
