"""G.711 µ-law and A-law (ITU-T G.711): a pure-Python reference, numpy lookup tables and a C fast path.

One API, three implementations (DESIGN.md, "hot paths have a fast path and a reference path"):

- ``reference``: pure Python, written straight from the algorithm (segment search, bias 0x84 for µ-law,
  even-bit inversion 0x55 for A-law); the oracle the tests compare every other path with.
- numpy: 65536-entry encode tables and 256-entry decode tables built once from the reference; the
  ``*_array`` functions take/return arrays of any shape, and ``encode_batch``/``decode_batch`` convert all
  legs of a media worker (one row per leg, each with its own law) in one call.
- C: ``media._g711`` (built by setup.py when a compiler is present), bytes in, bytes out.

The module-level ``ulaw_encode``/``ulaw_decode``/``alaw_encode``/``alaw_decode`` take 16-bit signed
little-endian PCM bytes / 8-bit code bytes (or numpy arrays, which go through the numpy tables) and use the
active backend: C when built, numpy otherwise; ``CALLPATH_PURE_PYTHON=1`` disables the C extension.
``BACKEND`` names the active one and ``use_backend()`` switches it (tests, benchmarks).

Encoding follows the classic Sun Microsystems ``g711.c`` (16-bit input, segment end points 0xFF..0x7FFF,
values past the last segment clip to the largest code), with one deliberate exception: Sun's
``linear2alaw`` computes ``-pcm - 8`` for negative input, which goes negative for -7..-1 and then encodes
those seven values as 0x5A (-248) through an arithmetic shift of a negative number. Here that magnitude is
clamped at 0, so -7..-1 encode as 0x55 (-8) like -8 does, keeping the encoder monotonic (the fix WebRTC's
copy of the same code carries). µ-law <-> A-law transcoding uses the G.711 conversion tables (Tables 3
and 4, the ones Sun's ``_u2a``/``_a2u`` copy), not decode-then-encode: they differ for 62/34 codes.
"""
from __future__ import annotations

import os
import sys
from array import array
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union, overload

try:
    import numpy as np
except ImportError:  # numpy is a dependency; without it only the reference (and C) paths exist
    np = None  # type: ignore[assignment]

BytesLike = Union[bytes, bytearray, memoryview]

# -- the reference: ITU-T G.711 as the Sun g711.c algorithm, one sample at a time -------------------

_SEG_END = (0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF, 0x3FFF, 0x7FFF)  # top of each of the 8 segments
_ULAW_BIAS = 0x84  # µ-law adds 33 (x4 for 16-bit input) so every segment starts at a power of two
_SIGN_BIT = 0x80
_QUANT_MASK = 0x0F
_SEG_MASK = 0x70
_SEG_SHIFT = 4


def _segment(magnitude: int) -> int:
    """Index of the first segment whose end point is >= magnitude (8 when past the last one)."""
    for seg, end in enumerate(_SEG_END):
        if magnitude <= end:
            return seg
    return 8


def linear_to_ulaw(sample: int) -> int:
    """Encode one 16-bit linear sample as a µ-law code (bias 0x84, all bits inverted on the wire)."""
    if sample < 0:
        magnitude, mask = _ULAW_BIAS - sample, 0x7F
    else:
        magnitude, mask = sample + _ULAW_BIAS, 0xFF
    seg = _segment(magnitude)
    if seg >= 8:  # out of range: the largest code of that sign
        return 0x7F ^ mask
    return ((seg << 4) | ((magnitude >> (seg + 3)) & _QUANT_MASK)) ^ mask


def ulaw_to_linear(code: int) -> int:
    """Decode one µ-law code to its 16-bit linear value (0xFF and 0x7F are +0 and -0)."""
    code = ~code & 0xFF
    t = ((code & _QUANT_MASK) << 3) + _ULAW_BIAS
    t <<= (code & _SEG_MASK) >> _SEG_SHIFT
    return _ULAW_BIAS - t if code & _SIGN_BIT else t - _ULAW_BIAS


def linear_to_alaw(sample: int) -> int:
    """Encode one 16-bit linear sample as an A-law code (even bits inverted with 0x55)."""
    if sample >= 0:
        magnitude, mask = sample, 0xD5  # sign bit set for non-negative values
    else:
        magnitude, mask = max(-sample - 8, 0), 0x55  # clamp: see the module docstring
    seg = _segment(magnitude)
    if seg >= 8:
        return 0x7F ^ mask
    shift = 4 if seg < 2 else seg + 3
    return ((seg << _SEG_SHIFT) | ((magnitude >> shift) & _QUANT_MASK)) ^ mask


def alaw_to_linear(code: int) -> int:
    """Decode one A-law code to its 16-bit linear value (0xD5 -> 8, 0x55 -> -8)."""
    code ^= 0x55
    t = (code & _QUANT_MASK) << 4
    seg = (code & _SEG_MASK) >> _SEG_SHIFT
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if code & _SIGN_BIT else -t


def _u2a_magnitude(u: int) -> int:
    """G.711 Table 3 as a rule: µ-law magnitude code 0..127 -> A-law magnitude code 1..128 (1-based)."""
    if u < 16:
        return u // 2 + 1
    if u < 32:
        return u - 7
    if u < 36:
        return 25 + 2 * (u - 32)
    if u < 48:
        return u - 3
    if u < 50:
        return 46 + 2 * (u - 48)
    if u < 64:
        return u - 1
    if u < 80:
        return u
    return u + 1


def _a2u_magnitude(a: int) -> int:
    """G.711 Table 4 as a rule: A-law magnitude code 0..127 -> µ-law magnitude code 1..127."""
    if a < 8:
        return 2 * a + 1
    if a < 24:
        return a + 8
    if a < 32:
        return 32 + (a - 24) // 2
    if a < 44:
        return a + 4
    if a < 48:
        return 48 + (a - 44) // 2
    if a < 62:
        return a + 2
    if a < 64:
        return 64
    if a < 79:
        return a + 1
    return a


def ulaw_code_to_alaw(code: int) -> int:
    """Transcode one µ-law code to A-law per the G.711 conversion table (no trip through linear)."""
    if code & _SIGN_BIT:
        return 0xD5 ^ (_u2a_magnitude(0xFF ^ code) - 1)
    return 0x55 ^ (_u2a_magnitude(0x7F ^ code) - 1)


def alaw_code_to_ulaw(code: int) -> int:
    """Transcode one A-law code to µ-law per the G.711 conversion table (no trip through linear)."""
    if code & _SIGN_BIT:
        return 0xFF ^ _a2u_magnitude(code ^ 0xD5)
    return 0x7F ^ _a2u_magnitude(code ^ 0x55)


def _as_bytes(data: BytesLike, what: str = "G.711 data") -> bytes:
    """Any bytes-like object as bytes; TypeError for str, int and other non-buffers."""
    if type(data) is bytes:
        return data
    if isinstance(data, str):
        raise TypeError(f"{what} must be bytes-like, not str")
    try:
        return memoryview(data).tobytes()
    except TypeError:
        raise TypeError(f"{what} must be bytes-like, not {type(data).__name__}") from None


def _as_pcm(pcm: BytesLike) -> bytes:
    """16-bit LE PCM as bytes; ValueError on an odd byte count."""
    data = _as_bytes(pcm, "PCM")
    if len(data) % 2:
        raise ValueError(f"16-bit PCM needs an even number of bytes, got {len(data)}")
    return data


def _pcm_samples(pcm: BytesLike) -> array:
    """16-bit LE PCM bytes as an array('h') of host-order samples; ValueError on an odd byte count."""
    samples = array("h", _as_pcm(pcm))
    if sys.byteorder == "big":
        samples.byteswap()
    return samples


def _pcm_bytes(samples: array) -> bytes:
    """array('h') of host-order samples as 16-bit LE PCM bytes."""
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes()


def _ref_ulaw_encode(pcm: BytesLike) -> bytes:
    """µ-law encode 16-bit LE PCM bytes, sample by sample (reference)."""
    return bytes(linear_to_ulaw(s) for s in _pcm_samples(pcm))


def _ref_ulaw_decode(data: BytesLike) -> bytes:
    """µ-law decode code bytes to 16-bit LE PCM bytes, code by code (reference)."""
    return _pcm_bytes(array("h", [ulaw_to_linear(c) for c in _as_bytes(data)]))


def _ref_alaw_encode(pcm: BytesLike) -> bytes:
    """A-law encode 16-bit LE PCM bytes, sample by sample (reference)."""
    return bytes(linear_to_alaw(s) for s in _pcm_samples(pcm))


def _ref_alaw_decode(data: BytesLike) -> bytes:
    """A-law decode code bytes to 16-bit LE PCM bytes, code by code (reference)."""
    return _pcm_bytes(array("h", [alaw_to_linear(c) for c in _as_bytes(data)]))


def _ref_ulaw_to_alaw(data: BytesLike) -> bytes:
    """µ-law -> A-law, code by code (reference)."""
    return bytes(ulaw_code_to_alaw(c) for c in _as_bytes(data))


def _ref_alaw_to_ulaw(data: BytesLike) -> bytes:
    """A-law -> µ-law, code by code (reference)."""
    return bytes(alaw_code_to_ulaw(c) for c in _as_bytes(data))


@dataclass(frozen=True)
class G711Backend:
    """One implementation of the bytes API (PCM is 16-bit signed LE, codes are one byte each)."""

    name: str
    ulaw_encode: Callable[[BytesLike], bytes]
    ulaw_decode: Callable[[BytesLike], bytes]
    alaw_encode: Callable[[BytesLike], bytes]
    alaw_decode: Callable[[BytesLike], bytes]
    ulaw_to_alaw: Callable[[BytesLike], bytes]
    alaw_to_ulaw: Callable[[BytesLike], bytes]


reference = G711Backend("python", _ref_ulaw_encode, _ref_ulaw_decode, _ref_alaw_encode, _ref_alaw_decode,
                        _ref_ulaw_to_alaw, _ref_alaw_to_ulaw)

# µ-law <-> A-law as 256-byte bytes.translate tables (C speed with the standard library alone).
ULAW_TO_ALAW_TABLE = bytes(ulaw_code_to_alaw(c) for c in range(256))
ALAW_TO_ULAW_TABLE = bytes(alaw_code_to_ulaw(c) for c in range(256))


def _translate_ulaw_to_alaw(data: BytesLike) -> bytes:
    """µ-law -> A-law through bytes.translate."""
    return _as_bytes(data).translate(ULAW_TO_ALAW_TABLE)


def _translate_alaw_to_ulaw(data: BytesLike) -> bytes:
    """A-law -> µ-law through bytes.translate."""
    return _as_bytes(data).translate(ALAW_TO_ULAW_TABLE)


# -- numpy: lookup tables built once (lazily: ~0.1 s of reference calls) from the reference ------------

_tables: Optional[dict[str, "np.ndarray"]] = None
LAWS = ("ulaw", "alaw")  # row law codes for encode_batch/decode_batch: 0 = µ-law, 1 = A-law


def tables() -> dict[str, "np.ndarray"]:
    """The numpy tables, built from the reference on first use: {ulaw,alaw}_{encode,decode}, *_to_*."""
    global _tables
    if _tables is None:
        if np is None:
            raise RuntimeError("numpy is not installed")
        every = range(-32768, 32768)
        if _c_g711 is not None:   # bit-exact with the reference (tests/unit/test_g711.py): <1 ms instead of ~120
            pcm = np.arange(-32768, 32768, dtype="<i2").tobytes()
            ulaw = np.frombuffer(_c_g711.ulaw_encode(pcm), dtype=np.uint8)
            alaw = np.frombuffer(_c_g711.alaw_encode(pcm), dtype=np.uint8)
        else:
            ulaw = np.array([linear_to_ulaw(s) for s in every], dtype=np.uint8)
            alaw = np.array([linear_to_alaw(s) for s in every], dtype=np.uint8)
        t = {
            # encode tables are indexed by the sample's bit pattern as uint16 (0..65535)
            "ulaw_encode": ulaw,
            "alaw_encode": alaw,
            "ulaw_decode": np.array([ulaw_to_linear(c) for c in range(256)], dtype=np.int16),
            "alaw_decode": np.array([alaw_to_linear(c) for c in range(256)], dtype=np.int16),
            "ulaw_to_alaw": np.frombuffer(ULAW_TO_ALAW_TABLE, dtype=np.uint8).copy(),
            "alaw_to_ulaw": np.frombuffer(ALAW_TO_ULAW_TABLE, dtype=np.uint8).copy(),
        }
        for name in ("ulaw_encode", "alaw_encode"):  # indexed by uint16, so rotate -32768.. to 0..
            t[name] = np.roll(t[name], -32768)
        t["encode_stacked"] = np.concatenate([t["ulaw_encode"], t["alaw_encode"]])  # row law * 65536
        t["decode_stacked"] = np.concatenate([t["ulaw_decode"], t["alaw_decode"]])  # row law * 256
        for arr in t.values():
            arr.flags.writeable = False
        _tables = t
    return _tables


def _require_dtype(arr: "np.ndarray", dtype: "np.dtype", what: str) -> None:
    """Raise a clear TypeError unless arr is a numpy array of exactly dtype (native byte order)."""
    if not isinstance(arr, np.ndarray) or arr.dtype != dtype:
        got = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
        raise TypeError(f"{what} must be a numpy {np.dtype(dtype)} array, got {got}")


def _encode_array(pcm: "np.ndarray", table: str, out: Optional["np.ndarray"]) -> "np.ndarray":
    """Look int16 samples (any shape) up in an encode table."""
    _require_dtype(pcm, np.dtype(np.int16), "PCM")
    if out is None:  # plain indexing beats np.take on 20 ms frames
        return tables()[table][pcm.view(np.uint16)]
    return np.take(tables()[table], pcm.view(np.uint16), out=out)


def _decode_array(codes: "np.ndarray", table: str, out: Optional["np.ndarray"]) -> "np.ndarray":
    """Look uint8 codes (any shape) up in a decode table."""
    _require_dtype(codes, np.dtype(np.uint8), "G.711 codes")
    if out is None:
        return tables()[table][codes]
    return np.take(tables()[table], codes, out=out)


def ulaw_encode_array(pcm: "np.ndarray", out: Optional["np.ndarray"] = None) -> "np.ndarray":
    """µ-law encode an int16 array of any shape to uint8 codes (out: optional preallocated result)."""
    return _encode_array(pcm, "ulaw_encode", out)


def alaw_encode_array(pcm: "np.ndarray", out: Optional["np.ndarray"] = None) -> "np.ndarray":
    """A-law encode an int16 array of any shape to uint8 codes (out: optional preallocated result)."""
    return _encode_array(pcm, "alaw_encode", out)


def ulaw_decode_array(codes: "np.ndarray", out: Optional["np.ndarray"] = None) -> "np.ndarray":
    """µ-law decode a uint8 array of any shape to int16 samples (out: optional preallocated result)."""
    return _decode_array(codes, "ulaw_decode", out)


def alaw_decode_array(codes: "np.ndarray", out: Optional["np.ndarray"] = None) -> "np.ndarray":
    """A-law decode a uint8 array of any shape to int16 samples (out: optional preallocated result)."""
    return _decode_array(codes, "alaw_decode", out)


def ulaw_to_alaw_array(codes: "np.ndarray", out: Optional["np.ndarray"] = None) -> "np.ndarray":
    """Transcode a uint8 array of µ-law codes to A-law (G.711 Table 3)."""
    return _decode_array(codes, "ulaw_to_alaw", out)


def alaw_to_ulaw_array(codes: "np.ndarray", out: Optional["np.ndarray"] = None) -> "np.ndarray":
    """Transcode a uint8 array of A-law codes to µ-law (G.711 Table 4)."""
    return _decode_array(codes, "alaw_to_ulaw", out)


LawSpec = Union[str, Sequence[str], "np.ndarray"]


def _row_laws(laws: LawSpec, rows: int) -> Optional["np.ndarray"]:
    """None when every row uses one law (returned via _single_law), else a per-row 0/1 intp array."""
    if isinstance(laws, str):
        return None
    if isinstance(laws, np.ndarray) and laws.dtype.kind in "iub":
        idx = laws.astype(np.intp, copy=False)
        if idx.size and (idx.min() < 0 or idx.max() > 1):
            raise ValueError("per-row law codes must be 0 (µ-law) or 1 (A-law)")
    else:
        try:
            idx = np.array([LAWS.index(law) for law in laws], dtype=np.intp)
        except ValueError:
            raise ValueError(f"laws must be 'ulaw'/'alaw' (or 0/1), got {list(laws)!r}") from None
    if idx.shape != (rows,):
        raise ValueError(f"need one law per row: {rows} rows, {idx.shape[0] if idx.ndim else 0} laws")
    return idx


def _single_law(laws: str) -> str:
    """Validate a single law name."""
    if laws not in LAWS:
        raise ValueError(f"law must be 'ulaw' or 'alaw', got {laws!r}")
    return laws


def encode_batch(pcm: "np.ndarray", laws: LawSpec = "ulaw",
                 out: Optional["np.ndarray"] = None) -> "np.ndarray":
    """Encode all legs of a tick at once: pcm is int16 (legs, samples), laws one law or one per row."""
    _require_dtype(pcm, np.dtype(np.int16), "PCM")
    if pcm.ndim != 2:
        raise ValueError(f"encode_batch takes a 2-D (legs, samples) array, got shape {pcm.shape}")
    idx = _row_laws(laws, pcm.shape[0])
    if idx is None:
        return _encode_array(pcm, _single_law(laws) + "_encode", out)  # type: ignore[arg-type]
    flat = pcm.view(np.uint16).astype(np.intp)
    flat += (idx << 16)[:, None]
    return np.take(tables()["encode_stacked"], flat, out=out)


def decode_batch(codes: "np.ndarray", laws: LawSpec = "ulaw",
                 out: Optional["np.ndarray"] = None) -> "np.ndarray":
    """Decode all legs of a tick at once: codes is uint8 (legs, samples), laws one law or one per row."""
    _require_dtype(codes, np.dtype(np.uint8), "G.711 codes")
    if codes.ndim != 2:
        raise ValueError(f"decode_batch takes a 2-D (legs, samples) array, got shape {codes.shape}")
    idx = _row_laws(laws, codes.shape[0])
    if idx is None:
        return _decode_array(codes, _single_law(laws) + "_decode", out)  # type: ignore[arg-type]
    flat = codes.astype(np.intp)
    flat += (idx << 8)[:, None]
    return np.take(tables()["decode_stacked"], flat, out=out)


def _np_pcm(pcm: BytesLike) -> "np.ndarray":
    """16-bit LE PCM bytes as a read-only int16 view; ValueError on an odd byte count."""
    return np.frombuffer(_as_pcm(pcm), dtype="<i2")


def _np_ulaw_encode(pcm: BytesLike) -> bytes:
    """µ-law encode PCM bytes through the numpy table."""
    return tables()["ulaw_encode"][_np_pcm(pcm).view(np.uint16)].tobytes()


def _np_alaw_encode(pcm: BytesLike) -> bytes:
    """A-law encode PCM bytes through the numpy table."""
    return tables()["alaw_encode"][_np_pcm(pcm).view(np.uint16)].tobytes()


def _np_ulaw_decode(data: BytesLike) -> bytes:
    """µ-law decode code bytes through the numpy table."""
    return tables()["ulaw_decode"][np.frombuffer(_as_bytes(data), dtype=np.uint8)].astype("<i2", copy=False).tobytes()


def _np_alaw_decode(data: BytesLike) -> bytes:
    """A-law decode code bytes through the numpy table."""
    return tables()["alaw_decode"][np.frombuffer(_as_bytes(data), dtype=np.uint8)].astype("<i2", copy=False).tobytes()


numpy_backend: Optional[G711Backend] = None
if np is not None:
    numpy_backend = G711Backend("numpy", _np_ulaw_encode, _np_ulaw_decode, _np_alaw_encode, _np_alaw_decode,
                                _translate_ulaw_to_alaw, _translate_alaw_to_ulaw)

# -- C: media._g711 (optional) -----------------------------------------------------------------------

try:
    from . import _g711 as _c_g711
except ImportError:  # not built (no compiler at install time)
    _c_g711 = None

c_backend: Optional[G711Backend] = None
if _c_g711 is not None:
    c_backend = G711Backend("c", _c_g711.ulaw_encode, _c_g711.ulaw_decode, _c_g711.alaw_encode,
                            _c_g711.alaw_decode, _c_g711.ulaw_to_alaw, _c_g711.alaw_to_ulaw)

BACKENDS: dict[str, G711Backend] = {
    b.name: b for b in (c_backend, numpy_backend, reference) if b is not None
}

# -- the active backend and the polymorphic module API ------------------------------------------------

BACKEND = "python"  # which backend the module-level functions use: "c", "numpy" or "python"
_active: G711Backend = reference


def use_backend(name: str) -> None:
    """Select the backend behind the module-level bytes functions: "c", "numpy" or "python"."""
    global BACKEND, _active
    if name not in ("c", "numpy", "python"):
        raise ValueError(f"unknown G.711 backend {name!r}")
    if name not in BACKENDS:
        raise ValueError(f"G.711 backend {name!r} is not available (C extension not built / no numpy)")
    _active, BACKEND = BACKENDS[name], name


def active_backend() -> str:
    """Name of the backend the module-level bytes functions use: "c", "numpy" or "python"."""
    return BACKEND


def _default_backend() -> str:
    """C when built and not disabled by CALLPATH_PURE_PYTHON, then numpy, then the reference."""
    if c_backend is not None and os.environ.get("CALLPATH_PURE_PYTHON", "") in ("", "0"):
        return "c"
    return "numpy" if numpy_backend is not None else "python"


use_backend(_default_backend())


@overload
def ulaw_encode(pcm: BytesLike) -> bytes: ...
@overload
def ulaw_encode(pcm: "np.ndarray") -> "np.ndarray": ...
def ulaw_encode(pcm):  # type: ignore[no-untyped-def]
    """µ-law encode 16-bit LE PCM bytes to code bytes (an int16 array gives a uint8 array)."""
    if np is not None and isinstance(pcm, np.ndarray):
        return ulaw_encode_array(pcm)
    return _active.ulaw_encode(pcm)


@overload
def ulaw_decode(data: BytesLike) -> bytes: ...
@overload
def ulaw_decode(data: "np.ndarray") -> "np.ndarray": ...
def ulaw_decode(data):  # type: ignore[no-untyped-def]
    """µ-law decode code bytes to 16-bit LE PCM bytes (a uint8 array gives an int16 array)."""
    if np is not None and isinstance(data, np.ndarray):
        return ulaw_decode_array(data)
    return _active.ulaw_decode(data)


@overload
def alaw_encode(pcm: BytesLike) -> bytes: ...
@overload
def alaw_encode(pcm: "np.ndarray") -> "np.ndarray": ...
def alaw_encode(pcm):  # type: ignore[no-untyped-def]
    """A-law encode 16-bit LE PCM bytes to code bytes (an int16 array gives a uint8 array)."""
    if np is not None and isinstance(pcm, np.ndarray):
        return alaw_encode_array(pcm)
    return _active.alaw_encode(pcm)


@overload
def alaw_decode(data: BytesLike) -> bytes: ...
@overload
def alaw_decode(data: "np.ndarray") -> "np.ndarray": ...
def alaw_decode(data):  # type: ignore[no-untyped-def]
    """A-law decode code bytes to 16-bit LE PCM bytes (a uint8 array gives an int16 array)."""
    if np is not None and isinstance(data, np.ndarray):
        return alaw_decode_array(data)
    return _active.alaw_decode(data)


@overload
def ulaw_to_alaw(data: BytesLike) -> bytes: ...
@overload
def ulaw_to_alaw(data: "np.ndarray") -> "np.ndarray": ...
def ulaw_to_alaw(data):  # type: ignore[no-untyped-def]
    """Transcode µ-law codes to A-law codes directly (G.711 Table 3), without decoding to linear."""
    if np is not None and isinstance(data, np.ndarray):
        return ulaw_to_alaw_array(data)
    return _active.ulaw_to_alaw(data)


@overload
def alaw_to_ulaw(data: BytesLike) -> bytes: ...
@overload
def alaw_to_ulaw(data: "np.ndarray") -> "np.ndarray": ...
def alaw_to_ulaw(data):  # type: ignore[no-untyped-def]
    """Transcode A-law codes to µ-law codes directly (G.711 Table 4), without decoding to linear."""
    if np is not None and isinstance(data, np.ndarray):
        return alaw_to_ulaw_array(data)
    return _active.alaw_to_ulaw(data)


__all__ = [
    "BACKEND", "BACKENDS", "active_backend", "G711Backend", "LAWS", "ALAW_TO_ULAW_TABLE", "ULAW_TO_ALAW_TABLE",
    "alaw_code_to_ulaw", "alaw_decode", "alaw_decode_array", "alaw_encode", "alaw_encode_array",
    "alaw_to_linear", "alaw_to_ulaw", "alaw_to_ulaw_array", "c_backend", "decode_batch", "encode_batch",
    "linear_to_alaw", "linear_to_ulaw", "numpy_backend", "reference", "tables", "ulaw_code_to_alaw",
    "ulaw_decode", "ulaw_decode_array", "ulaw_encode", "ulaw_encode_array", "ulaw_to_alaw",
    "ulaw_to_alaw_array", "ulaw_to_linear", "use_backend",
]
