"""Small helpers for 16-bit PCM as numpy arrays: tones, framing, level and spectrum checks.

Used by codec tests and benchmarks (and anything that needs a test tone); PCM on the wire is 16-bit
signed little-endian bytes, in memory an int16 array.
"""
from __future__ import annotations

from typing import Iterator, Union

import numpy as np

PcmLike = Union[bytes, bytearray, memoryview, np.ndarray]


def tone(frequency: float, sample_rate: int, seconds: float = 1.0, amplitude: float = 0.5,
         phase: float = 0.0) -> np.ndarray:
    """A sine tone as int16 samples (amplitude is a fraction of full scale)."""
    n = int(round(sample_rate * seconds))
    t = np.arange(n, dtype=np.float64) / sample_rate
    return np.round(amplitude * 32767.0 * np.sin(2 * np.pi * frequency * t + phase)).astype(np.int16)


def silence(sample_rate: int, seconds: float = 1.0) -> np.ndarray:
    """Digital silence as int16 samples."""
    return np.zeros(int(round(sample_rate * seconds)), dtype=np.int16)


def as_samples(pcm: PcmLike) -> np.ndarray:
    """16-bit LE PCM bytes (or an int16 array) as an int16 array; ValueError on an odd byte count."""
    if isinstance(pcm, np.ndarray):
        if pcm.dtype != np.int16:
            raise TypeError(f"PCM array must be int16, got {pcm.dtype}")
        return pcm
    if len(pcm) % 2:
        raise ValueError(f"16-bit PCM needs an even number of bytes, got {len(pcm)}")
    return np.frombuffer(pcm, dtype="<i2").astype(np.int16, copy=False)


def to_bytes(samples: np.ndarray) -> bytes:
    """int16 samples as 16-bit LE PCM bytes."""
    return samples.astype("<i2", copy=False).tobytes()


def _as_float(samples: PcmLike) -> np.ndarray:
    """PCM bytes or any real-valued array as float64 samples (for analysis)."""
    if isinstance(samples, np.ndarray):
        if samples.dtype.kind not in "iuf":
            raise TypeError(f"samples must be a real-valued array, got {samples.dtype}")
        return samples.astype(np.float64, copy=False)
    return as_samples(samples).astype(np.float64)


def frames(samples: np.ndarray, frame_samples: int) -> Iterator[np.ndarray]:
    """Consecutive whole frames of frame_samples (a trailing partial frame is dropped)."""
    for start in range(0, len(samples) - frame_samples + 1, frame_samples):
        yield samples[start:start + frame_samples]


def rms(samples: PcmLike) -> float:
    """Root-mean-square level in sample units (0 for empty input)."""
    x = _as_float(samples)
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


def dbfs(samples: PcmLike) -> float:
    """RMS level relative to a full-scale sine, in dB (-inf for silence)."""
    level = rms(samples)
    return float("-inf") if level == 0 else 20.0 * float(np.log10(level / (32767.0 / np.sqrt(2.0))))


def dominant_frequency(samples: PcmLike, sample_rate: int) -> float:
    """Frequency (Hz) of the strongest FFT bin, refined by parabolic interpolation; Hann-windowed."""
    x = _as_float(samples)
    if x.size < 4:
        raise ValueError("need at least 4 samples")
    spectrum = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(x.size)))
    k = int(np.argmax(spectrum[1:])) + 1
    if 1 <= k < spectrum.size - 1:
        a, b, c = np.log(spectrum[k - 1:k + 2] + 1e-12)
        denom = a - 2 * b + c
        k = k + (0.5 * (a - c) / denom if denom else 0.0)
    return float(k * sample_rate / x.size)


def tone_to_noise_db(samples: PcmLike, sample_rate: int, frequency: float, width_hz: float = 50.0) -> float:
    """Energy within ±width_hz of frequency over the energy elsewhere, in dB (a codec-agnostic SNR)."""
    x = _as_float(samples)
    power = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(x.size))) ** 2
    freqs = np.fft.rfftfreq(x.size, 1.0 / sample_rate)
    band = np.abs(freqs - frequency) <= width_hz
    signal, noise = power[band].sum(), power[~band].sum()
    return float(10.0 * np.log10(signal / noise)) if noise > 0 else float("inf")


__all__ = ["as_samples", "dbfs", "dominant_frequency", "frames", "rms", "silence", "to_bytes", "tone",
           "tone_to_noise_db"]
