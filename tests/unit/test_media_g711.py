"""G.711 (media.g711): every path against the pure-Python reference, bit-exact over all inputs.

The reference itself is checked against known G.711 vectors and the standard's properties (decode tables
symmetric and monotonic, encoding monotonic, every code re-encodes to itself). The numpy tables, the
batched numpy path and the C extension (media._g711, skipped when not built) must then agree with it on
all 65536 samples and all 256 codes, and reject bad input the same way.
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from media import g711

ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)
ALL_PCM = struct.pack("<65536h", *range(-32768, 32768))
ALL_CODES = bytes(range(256))
BACKENDS = sorted(g711.BACKENDS)  # "c" only when built
needs_c = pytest.mark.skipif(g711.c_backend is None, reason="media._g711 is not built (no C compiler?)")


@pytest.fixture(scope="module")
def reference_out() -> dict[str, bytes]:
    """The reference's output for every sample and every code (computed once: ~0.3 s)."""
    ref = g711.reference
    return {
        "ulaw_encode": ref.ulaw_encode(ALL_PCM), "alaw_encode": ref.alaw_encode(ALL_PCM),
        "ulaw_decode": ref.ulaw_decode(ALL_CODES), "alaw_decode": ref.alaw_decode(ALL_CODES),
        "ulaw_to_alaw": ref.ulaw_to_alaw(ALL_CODES), "alaw_to_ulaw": ref.alaw_to_ulaw(ALL_CODES),
    }


@pytest.fixture
def restore_backend():
    """Put the module's active backend back after a test switches it."""
    before = g711.BACKEND
    yield
    g711.use_backend(before)


# -- the reference: known vectors and the standard's properties ------------------------------------

ULAW_DECODE_VECTORS = {0xFF: 0, 0x7F: 0, 0x00: -32124, 0x80: 32124, 0xFE: 8, 0x7E: -8, 0xF0: 120,
                       0x70: -120, 0xEF: 132, 0x8F: 16764, 0x0F: -16764}
ALAW_DECODE_VECTORS = {0xD5: 8, 0x55: -8, 0xD4: 24, 0x54: -24, 0xAA: 32256, 0x2A: -32256, 0xC5: 264,
                       0x80: 5504, 0x00: -5504}
ULAW_ENCODE_VECTORS = {0: 0xFF, -1: 0x7F, 1: 0xFF, 8: 0xFE, -8: 0x7E, 32767: 0x80, -32768: 0x00,
                       32124: 0x80, -32124: 0x00, 100: 0xF2, -100: 0x72, 1000: 0xCE}
ALAW_ENCODE_VECTORS = {0: 0xD5, 15: 0xD5, 16: 0xD4, -8: 0x55, -23: 0x55, -24: 0x54, 32767: 0xAA,
                       -32768: 0x2A, 1000: 0xFA, -1000: 0x7A}


@pytest.mark.parametrize("code,value", sorted(ULAW_DECODE_VECTORS.items()))
def test_ulaw_decode_vectors(code: int, value: int) -> None:
    assert g711.ulaw_to_linear(code) == value


@pytest.mark.parametrize("code,value", sorted(ALAW_DECODE_VECTORS.items()))
def test_alaw_decode_vectors(code: int, value: int) -> None:
    assert g711.alaw_to_linear(code) == value


@pytest.mark.parametrize("value,code", sorted(ULAW_ENCODE_VECTORS.items()))
def test_ulaw_encode_vectors(value: int, code: int) -> None:
    assert g711.linear_to_ulaw(value) == code


@pytest.mark.parametrize("value,code", sorted(ALAW_ENCODE_VECTORS.items()))
def test_alaw_encode_vectors(value: int, code: int) -> None:
    assert g711.linear_to_alaw(value) == code


def test_alaw_small_negatives_encode_as_minus_eight() -> None:
    # Sun's g711.c gives 0x5A (-248) for -7..-1 (a negative magnitude shifted right); the reference
    # clamps that magnitude so the encoder stays monotonic: see the module docstring.
    assert [g711.linear_to_alaw(v) for v in range(-8, 0)] == [0x55] * 8
    assert g711.alaw_to_linear(0x55) == -8


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_reference_decode_table_is_symmetric_and_monotonic(law: str) -> None:
    decode = g711.ulaw_to_linear if law == "ulaw" else g711.alaw_to_linear
    positive = sorted(decode(c) for c in range(256) if c & 0x80)
    negative = sorted(-decode(c) for c in range(256) if not c & 0x80)
    assert positive == negative  # the sign bit alone flips the sign
    assert len(set(positive)) == 128  # µ-law's +0 and -0 are both 0
    # by magnitude code (sign bit, then segment, then step): strictly increasing
    if law == "ulaw":
        by_magnitude = [decode(0xFF ^ m) for m in range(128)]  # µ-law inverts every bit
    else:
        by_magnitude = [decode(0xD5 ^ m) for m in range(128)]  # A-law inverts the even bits
    assert all(a < b for a, b in zip(by_magnitude, by_magnitude[1:]))
    assert max(positive) == (32124 if law == "ulaw" else 32256)


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_reference_encoding_is_monotonic_and_codes_round_trip(law: str) -> None:
    encode, decode = ((g711.linear_to_ulaw, g711.ulaw_to_linear) if law == "ulaw"
                      else (g711.linear_to_alaw, g711.alaw_to_linear))
    decoded = [decode(encode(v)) for v in range(-32768, 32768)]
    assert all(a <= b for a, b in zip(decoded, decoded[1:]))
    for code in range(256):
        if law == "ulaw" and code == 0x7F:  # -0 re-encodes as +0
            assert encode(decode(code)) == 0xFF
        else:
            assert encode(decode(code)) == code, hex(code)


def test_reference_quantisation_error_is_bounded() -> None:
    for v in range(-32124, 32125, 7):  # inside the clipping points
        assert abs(g711.ulaw_to_linear(g711.linear_to_ulaw(v)) - v) <= max(4, abs(v) // 16 + 4)
        assert abs(g711.alaw_to_linear(g711.linear_to_alaw(v)) - v) <= max(16, abs(v) // 16 + 8)


# -- transcoding (G.711 Tables 3 and 4) -------------------------------------------------------------

TRANSCODE_VECTORS = [  # (µ-law, A-law) pairs from the G.711 conversion tables
    ("u2a", 0xFF, 0xD5), ("u2a", 0x7F, 0x55), ("u2a", 0x80, 0xAA), ("u2a", 0x00, 0x2A),
    ("u2a", 0x20, 0x0A), ("u2a", 0xA0, 0x8A),  # here the table differs from decode-then-encode (0x0B)
    ("a2u", 0xD5, 0xFE), ("a2u", 0x55, 0x7E), ("a2u", 0xAA, 0x80), ("a2u", 0x2A, 0x00),
    ("a2u", 0x00, 0x2A), ("a2u", 0x80, 0xAA),
]


@pytest.mark.parametrize("direction,src,dst", TRANSCODE_VECTORS)
def test_transcode_vectors(direction: str, src: int, dst: int) -> None:
    fn = g711.ulaw_code_to_alaw if direction == "u2a" else g711.alaw_code_to_ulaw
    assert fn(src) == dst
    assert (g711.ULAW_TO_ALAW_TABLE if direction == "u2a" else g711.ALAW_TO_ULAW_TABLE)[src] == dst


@pytest.mark.parametrize("direction", ["u2a", "a2u"])
def test_transcoding_keeps_sign_order_and_stays_within_one_step(direction: str) -> None:
    if direction == "u2a":
        src_dec, dst_dec, fn = g711.ulaw_to_linear, g711.alaw_to_linear, g711.ulaw_code_to_alaw
    else:
        src_dec, dst_dec, fn = g711.alaw_to_linear, g711.ulaw_to_linear, g711.alaw_code_to_ulaw
    targets = sorted(set(dst_dec(c) for c in range(256)))
    pairs = sorted((src_dec(c), dst_dec(fn(c))) for c in range(256))
    assert all(b1 <= b2 for (_, b1), (_, b2) in zip(pairs, pairs[1:]))  # monotonic
    for value, out in pairs:
        lower = max([t for t in targets if t <= value], default=targets[0])
        upper = min([t for t in targets if t >= value], default=targets[-1])
        i = targets.index(out)
        # the bracketing code or its neighbour (the tables round some decision levels the other way)
        assert targets[max(i - 1, 0)] <= upper and targets[min(i + 1, len(targets) - 1)] >= lower, (value, out)
        assert (value >= 0) == (out >= 0) or value == 0


# -- every path against the reference ---------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fn", ["ulaw_encode", "alaw_encode"])
def test_encode_all_samples_bit_exact(backend: str, fn: str, reference_out: dict[str, bytes]) -> None:
    assert getattr(g711.BACKENDS[backend], fn)(ALL_PCM) == reference_out[fn]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fn", ["ulaw_decode", "alaw_decode", "ulaw_to_alaw", "alaw_to_ulaw"])
def test_decode_all_codes_bit_exact(backend: str, fn: str, reference_out: dict[str, bytes]) -> None:
    assert getattr(g711.BACKENDS[backend], fn)(ALL_CODES) == reference_out[fn]


def test_reference_decode_output_is_little_endian_int16() -> None:
    assert g711.reference.ulaw_decode(b"\x80\x00") == struct.pack("<2h", 32124, -32124)
    assert g711.reference.alaw_decode(b"\xd5\x55") == struct.pack("<2h", 8, -8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_agree_on_random_frames(backend: str) -> None:
    rng = np.random.default_rng(711)
    impl, ref = g711.BACKENDS[backend], g711.reference
    for n in (0, 1, 160, 320, 961):
        pcm = rng.integers(-32768, 32768, n, dtype=np.int16).astype("<i2").tobytes()
        codes = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert impl.ulaw_encode(pcm) == ref.ulaw_encode(pcm)
        assert impl.alaw_encode(pcm) == ref.alaw_encode(pcm)
        assert impl.ulaw_decode(codes) == ref.ulaw_decode(codes)
        assert impl.alaw_decode(codes) == ref.alaw_decode(codes)
        assert impl.ulaw_to_alaw(codes) == ref.ulaw_to_alaw(codes)
        assert impl.alaw_to_ulaw(codes) == ref.alaw_to_ulaw(codes)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bytes_like_inputs(backend: str) -> None:
    impl = g711.BACKENDS[backend]
    pcm = struct.pack("<4h", 0, -1, 1000, -32768)
    expected = impl.ulaw_encode(pcm)
    assert impl.ulaw_encode(bytearray(pcm)) == expected
    assert impl.ulaw_encode(memoryview(pcm)) == expected
    assert impl.alaw_decode(bytearray(b"\xd5\x55")) == struct.pack("<2h", 8, -8)
    assert isinstance(impl.ulaw_decode(memoryview(b"\xff")), bytes)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fn", ["ulaw_encode", "alaw_encode"])
def test_odd_byte_count_is_a_clear_value_error(backend: str, fn: str) -> None:
    with pytest.raises(ValueError, match="even number of bytes"):
        getattr(g711.BACKENDS[backend], fn)(b"\x00\x01\x02")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fn", ["ulaw_encode", "ulaw_decode", "alaw_to_ulaw"])
def test_non_buffer_input_is_a_type_error(backend: str, fn: str) -> None:
    for bad in ("\x00\x01", 4, None, [0, 1]):
        with pytest.raises(TypeError):
            getattr(g711.BACKENDS[backend], fn)(bad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_memoryview_of_int16_counts_bytes(backend: str) -> None:
    from array import array
    samples = array("h", [0, -1, 1000])
    if sys.byteorder == "big":
        samples.byteswap()
    view = memoryview(samples)  # 3 items, 6 bytes
    impl = g711.BACKENDS[backend]
    assert impl.ulaw_encode(view) == g711.reference.ulaw_encode(samples.tobytes())
    assert len(impl.alaw_encode(view)) == 3


# -- the numpy array and batched paths --------------------------------------------------------------

def test_array_paths_cover_every_value(reference_out: dict[str, bytes]) -> None:
    assert g711.ulaw_encode_array(ALL_SAMPLES).tobytes() == reference_out["ulaw_encode"]
    assert g711.alaw_encode_array(ALL_SAMPLES).tobytes() == reference_out["alaw_encode"]
    codes = np.arange(256, dtype=np.uint8)
    assert g711.ulaw_decode_array(codes).astype("<i2").tobytes() == reference_out["ulaw_decode"]
    assert g711.alaw_decode_array(codes).astype("<i2").tobytes() == reference_out["alaw_decode"]
    assert g711.ulaw_to_alaw_array(codes).tobytes() == reference_out["ulaw_to_alaw"]
    assert g711.alaw_to_ulaw_array(codes).tobytes() == reference_out["alaw_to_ulaw"]


def test_array_dtypes_shapes_and_out() -> None:
    pcm = np.arange(-800, 800, 10, dtype=np.int16).reshape(4, 40)
    codes = g711.ulaw_encode_array(pcm)
    assert codes.dtype == np.uint8 and codes.shape == (4, 40)
    back = g711.ulaw_decode_array(codes)
    assert back.dtype == np.int16 and back.shape == (4, 40)
    out = np.empty((4, 40), dtype=np.uint8)
    assert g711.alaw_encode_array(pcm, out=out) is out
    assert out.tobytes() == g711.reference.alaw_encode(pcm.astype("<i2").tobytes())
    strided = pcm[:, ::2]  # non-contiguous views work too
    assert g711.ulaw_encode_array(strided).tobytes() == g711.reference.ulaw_encode(
        np.ascontiguousarray(strided).astype("<i2").tobytes())
    with pytest.raises(TypeError, match="int16"):
        g711.ulaw_encode_array(pcm.astype(np.int32))
    with pytest.raises(TypeError, match="uint8"):
        g711.ulaw_decode_array(codes.astype(np.int16))
    with pytest.raises(TypeError):
        g711.alaw_encode_array(pcm.astype(">i2"))  # wrong byte order: refuse rather than misread


def test_module_functions_accept_arrays_and_bytes() -> None:
    x = np.array([0, -1, 1000, -32768], dtype=np.int16)
    assert isinstance(g711.ulaw_encode(x), np.ndarray)
    assert g711.ulaw_encode(x).tobytes() == g711.ulaw_encode(x.astype("<i2").tobytes())
    assert g711.alaw_encode(x).tobytes() == g711.alaw_encode(x.astype("<i2").tobytes())
    c = np.array([0x00, 0xFF, 0xD5], dtype=np.uint8)
    assert g711.ulaw_decode(c).astype("<i2").tobytes() == g711.ulaw_decode(c.tobytes())
    assert g711.alaw_decode(c).astype("<i2").tobytes() == g711.alaw_decode(c.tobytes())
    assert g711.ulaw_to_alaw(c).tobytes() == g711.ulaw_to_alaw(c.tobytes())
    assert g711.alaw_to_ulaw(c).tobytes() == g711.alaw_to_ulaw(c.tobytes())


def test_batch_single_law_matches_per_leg() -> None:
    rng = np.random.default_rng(1)
    legs = rng.integers(-32768, 32768, (200, 160), dtype=np.int16)
    for law in ("ulaw", "alaw"):
        codes = g711.encode_batch(legs, law)
        assert codes.shape == (200, 160) and codes.dtype == np.uint8
        enc = g711.reference.ulaw_encode if law == "ulaw" else g711.reference.alaw_encode
        dec = g711.reference.ulaw_decode if law == "ulaw" else g711.reference.alaw_decode
        for row in (0, 57, 199):
            assert codes[row].tobytes() == enc(legs[row].astype("<i2").tobytes())
        pcm = g711.decode_batch(codes, law)
        assert pcm.shape == (200, 160) and pcm.dtype == np.int16
        for row in (0, 57, 199):
            assert pcm[row].astype("<i2").tobytes() == dec(codes[row].tobytes())


def test_batch_mixed_laws_per_row() -> None:
    rng = np.random.default_rng(2)
    legs = rng.integers(-32768, 32768, (6, 160), dtype=np.int16)
    laws = ["ulaw", "alaw", "alaw", "ulaw", "ulaw", "alaw"]
    codes = g711.encode_batch(legs, laws)
    assert np.array_equal(codes, g711.encode_batch(legs, np.array([0, 1, 1, 0, 0, 1], dtype=np.uint8)))
    for row, law in enumerate(laws):
        expected = g711.ulaw_encode_array(legs[row]) if law == "ulaw" else g711.alaw_encode_array(legs[row])
        assert np.array_equal(codes[row], expected)
    pcm = g711.decode_batch(codes, laws)
    for row, law in enumerate(laws):
        expected = g711.ulaw_decode_array(codes[row]) if law == "ulaw" else g711.alaw_decode_array(codes[row])
        assert np.array_equal(pcm[row], expected)
    out = np.empty((6, 160), dtype=np.int16)
    assert g711.decode_batch(codes, laws, out=out) is out and np.array_equal(out, pcm)


def test_batch_bad_shapes_and_laws() -> None:
    legs = np.zeros((3, 160), dtype=np.int16)
    with pytest.raises(ValueError, match="2-D"):
        g711.encode_batch(legs[0])
    with pytest.raises(ValueError, match="2-D"):
        g711.decode_batch(np.zeros(160, dtype=np.uint8))
    with pytest.raises(ValueError, match="one law per row"):
        g711.encode_batch(legs, ["ulaw", "alaw"])
    with pytest.raises(ValueError):
        g711.encode_batch(legs, "g722")
    with pytest.raises(ValueError):
        g711.encode_batch(legs, ["ulaw", "alaw", "gsm"])
    with pytest.raises(ValueError):
        g711.encode_batch(legs, np.array([0, 1, 2]))
    empty = g711.encode_batch(np.zeros((0, 160), dtype=np.int16), [])
    assert empty.shape == (0, 160)


def test_numpy_tables_are_read_only() -> None:
    t = g711.tables()
    assert t["ulaw_encode"].shape == (65536,) and t["alaw_decode"].shape == (256,)
    with pytest.raises(ValueError):
        t["ulaw_encode"][0] = 0


# -- backend selection ------------------------------------------------------------------------------

def test_use_backend_switches_module_functions(restore_backend) -> None:
    pcm = struct.pack("<3h", 5, -5, 30000)
    results = set()
    for name in BACKENDS:
        g711.use_backend(name)
        assert g711.BACKEND == name == g711.active_backend()
        results.add((g711.ulaw_encode(pcm), g711.alaw_encode(pcm), g711.ulaw_decode(b"\x00\x80"),
                     g711.alaw_decode(b"\xd5"), g711.ulaw_to_alaw(b"\x20"), g711.alaw_to_ulaw(b"\x00")))
        with pytest.raises(ValueError, match="even number"):
            g711.ulaw_encode(b"\x01")
    assert len(results) == 1
    with pytest.raises(ValueError):
        g711.use_backend("rust")


@needs_c
def test_c_is_the_default_when_built() -> None:
    if os.environ.get("CALLPATH_PURE_PYTHON", "") not in ("", "0"):
        pytest.skip("CALLPATH_PURE_PYTHON is set")
    assert g711.BACKEND == "c"


@pytest.mark.parametrize("env,expected", [({"CALLPATH_PURE_PYTHON": "1"}, "numpy"),
                                          ({"CALLPATH_PURE_PYTHON": "0"}, "c"), ({}, "c")])
def test_backend_selection_by_environment(env: dict[str, str], expected: str) -> None:
    if expected == "c" and g711.c_backend is None:
        expected = "numpy"
    environ = {k: v for k, v in os.environ.items() if k != "CALLPATH_PURE_PYTHON"} | env
    out = subprocess.run([sys.executable, "-c", "from media import g711; print(g711.BACKEND)"],
                         env=environ, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


@needs_c
def test_c_extension_direct() -> None:
    from media import _g711
    assert _g711.ulaw_encode(b"") == b""
    assert _g711.ulaw_decode(b"\x00") == struct.pack("<h", -32124)
    assert _g711.alaw_encode(np.array([8, -8], dtype="<i2")) == b"\xd5\x55"  # any C-contiguous buffer
    with pytest.raises(ValueError, match="even number of bytes, got 1"):
        _g711.alaw_encode(b"\x00")
    with pytest.raises(TypeError):
        _g711.ulaw_decode(12)
    with pytest.raises((TypeError, BufferError, ValueError)):
        _g711.ulaw_encode(np.zeros((4, 4), dtype="<i2")[:, ::2])  # not contiguous


def test_fallback_without_the_c_extension() -> None:
    # what an install without a compiler gets: media._g711 missing -> numpy, same results
    code = ("import sys; sys.modules['media._g711'] = None\n"
            "from media import g711\n"
            "assert g711.c_backend is None and 'c' not in g711.BACKENDS\n"
            "print(g711.BACKEND, g711.ulaw_encode(b'\\x00\\x80').hex(), g711.alaw_decode(b'\\xd5').hex())\n")
    environ = {k: v for k, v in os.environ.items() if k != "CALLPATH_PURE_PYTHON"}
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["numpy", g711.reference.ulaw_encode(b"\x00\x80").hex(),
                                  g711.reference.alaw_decode(b"\xd5").hex()]
    failed = subprocess.run([sys.executable, "-c", "import sys; sys.modules['media._g711'] = None\n"
                             "from media import g711; g711.use_backend('c')"],
                            env=environ, capture_output=True, text=True)
    assert failed.returncode != 0 and "ValueError: G.711 backend 'c' is not available" in failed.stderr
