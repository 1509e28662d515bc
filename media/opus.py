"""Opus (RFC 6716) through libopus directly, via ctypes, with buffers preallocated per encoder/decoder.

Why not a library: PyAV's libopus decoder always outputs 48 kHz (a resampler back to 8 kHz costs another
~25 µs per frame), and opuslib allocates a new output buffer on every call. Calling libopus here with one
buffer per codec instance keeps the media loop at the G.711 rate (8 kHz, or 16 kHz for wideband) with no
resampling and no per-frame allocation besides the returned bytes. PyAV stays for files (prompts, MOH,
recordings), not here.

Sans-IO: plain objects fed PCM/packets, returning packets/PCM. PCM is 16-bit signed little-endian
interleaved; encode() also takes an int16 numpy array. An encoder/decoder instance is not thread-safe
(it owns its buffers); use one per leg and direction.

``opus_encoder_ctl``/``opus_decoder_ctl`` are variadic; they are called with explicit ``c_int32``
arguments, which is correct on the x86-64 and aarch64 Linux ABIs (not on Apple arm64, where variadic
arguments go on the stack).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from dataclasses import dataclass
from typing import Optional, Union

try:
    import numpy as np
except ImportError:  # numpy is a dependency, but encode() of bytes does not need it
    np = None  # type: ignore[assignment]

# -- constants from opus_defines.h ------------------------------------------------------------------

OPUS_OK = 0
OPUS_BAD_ARG = -1
OPUS_BUFFER_TOO_SMALL = -2
OPUS_INTERNAL_ERROR = -3
OPUS_INVALID_PACKET = -4
OPUS_UNIMPLEMENTED = -5
OPUS_INVALID_STATE = -6
OPUS_ALLOC_FAIL = -7

APPLICATIONS = {"voip": 2048, "audio": 2049, "restricted_lowdelay": 2051}
BANDWIDTHS = {1101: "narrowband", 1102: "mediumband", 1103: "wideband", 1104: "superwideband",
              1105: "fullband"}
BANDWIDTH_HZ = {"narrowband": 4000, "mediumband": 6000, "wideband": 8000, "superwideband": 12000,
                "fullband": 20000}  # audio bandwidth of each Opus bandwidth, for readers of packet_info
SAMPLE_RATES = (8000, 12000, 16000, 24000, 48000)  # the rates libopus encodes from and decodes to
OPUS_AUTO = -1000
OPUS_BITRATE_MAX = -1

_SET_BITRATE, _GET_BITRATE = 4002, 4003
_SET_MAX_BANDWIDTH, _GET_MAX_BANDWIDTH = 4004, 4005
_SET_VBR, _GET_VBR = 4006, 4007
_SET_COMPLEXITY, _GET_COMPLEXITY = 4010, 4011
_SET_INBAND_FEC, _GET_INBAND_FEC = 4012, 4013
_SET_PACKET_LOSS_PERC, _GET_PACKET_LOSS_PERC = 4014, 4015
_SET_DTX, _GET_DTX = 4016, 4017
_GET_LOOKAHEAD = 4027
_RESET_STATE = 4028
_GET_LAST_PACKET_DURATION = 4039

MAX_PACKET_BYTES = 4000  # libopus's recommended output buffer size for one packet
MAX_FRAME_MS = 120  # the longest packet libopus decodes (and PLC can fill in one call)


class OpusError(Exception):
    """An error code returned by libopus (message from opus_strerror), or libopus missing."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} (libopus error {code})" if code else message)
        self.code = code


class OpusLibraryNotFound(OpusError):
    """libopus could not be loaded (install libopus0 on Debian, or set CALLPATH_LIBOPUS)."""

    def __init__(self, detail: str) -> None:
        super().__init__(0, "libopus not found: install it (Debian/Ubuntu: apt install libopus0; "
                            "macOS: brew install opus) or point CALLPATH_LIBOPUS at the shared library"
                            f" ({detail})")


# -- loading libopus --------------------------------------------------------------------------------

_lib: Optional[ctypes.CDLL] = None
_c_int_p = ctypes.POINTER(ctypes.c_int)
_c_int32_p = ctypes.POINTER(ctypes.c_int32)


def _declare(lib: ctypes.CDLL) -> None:
    """Give every libopus function used here its prototype (so ctypes converts and checks arguments)."""
    vp, i32, ci = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int
    protos = {
        "opus_get_version_string": ((), ctypes.c_char_p),
        "opus_strerror": ((ci,), ctypes.c_char_p),
        "opus_encoder_create": ((i32, ci, ci, _c_int_p), vp),
        "opus_encoder_destroy": ((vp,), None),
        "opus_encode": ((vp, vp, ci, vp, i32), i32),
        "opus_decoder_create": ((i32, ci, _c_int_p), vp),
        "opus_decoder_destroy": ((vp,), None),
        "opus_decode": ((vp, vp, i32, vp, ci, ci), ci),
        "opus_packet_get_bandwidth": ((vp,), ci),
        "opus_packet_get_samples_per_frame": ((vp, i32), ci),
        "opus_packet_get_nb_channels": ((vp,), ci),
        "opus_packet_get_nb_frames": ((vp, i32), ci),
        "opus_packet_get_nb_samples": ((vp, i32, i32), ci),
    }
    for name, (args, res) in protos.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = list(args), res
    for name in ("opus_encoder_ctl", "opus_decoder_ctl"):  # variadic: no argtypes, explicit c_int32s
        getattr(lib, name).restype = ci


def load_libopus() -> ctypes.CDLL:
    """Load libopus once (CALLPATH_LIBOPUS, else ctypes.util.find_library("opus")); OpusLibraryNotFound."""
    global _lib
    if _lib is None:
        path = os.environ.get("CALLPATH_LIBOPUS") or ctypes.util.find_library("opus")
        if not path:
            raise OpusLibraryNotFound('ctypes.util.find_library("opus") found nothing')
        try:
            lib = ctypes.CDLL(path)
            _declare(lib)
        except (OSError, AttributeError) as exc:
            raise OpusLibraryNotFound(f"{path}: {exc}") from exc
        _lib = lib
    return _lib


def libopus_version() -> str:
    """The loaded libopus's version string, e.g. "libopus 1.3.1"."""
    return load_libopus().opus_get_version_string().decode()


def function_addresses() -> tuple[int, int, int]:
    """Addresses of opus_decode, opus_encode and opus_encoder_ctl in the loaded libopus, for the C
    transcoding tick (``media._relay.set_opus``), which calls them on the states these objects own."""
    lib = load_libopus()
    return tuple(ctypes.cast(getattr(lib, name), ctypes.c_void_p).value or 0  # type: ignore[return-value]
                 for name in ("opus_decode", "opus_encode", "opus_encoder_ctl"))


def _strerror(code: int) -> str:
    """libopus's text for an error code."""
    return load_libopus().opus_strerror(code).decode()


def _check(code: int) -> int:
    """Return a non-negative libopus result, raise OpusError for a negative one."""
    if code < 0:
        raise OpusError(code, _strerror(code))
    return code


def _frame_sizes(sample_rate: int) -> frozenset[int]:
    """Samples per channel in the frame durations Opus encodes: 2.5, 5, 10, 20, 40, 60, 80, 100, 120 ms."""
    return frozenset(sample_rate * tenths // 400 for tenths in (1, 2, 4, 8, 16, 24, 32, 40, 48))


def _check_rate_channels(sample_rate: int, channels: int) -> None:
    """ValueError unless libopus supports this sample rate and channel count."""
    if sample_rate not in SAMPLE_RATES:
        raise ValueError(f"Opus sample rate must be one of {SAMPLE_RATES}, got {sample_rate}")
    if channels not in (1, 2):
        raise ValueError(f"Opus channels must be 1 or 2, got {channels}")


_BIG_ENDIAN = sys.byteorder == "big"


_BUFFER_TYPES: dict[tuple[type, int], type] = {}


def _buffer(ctype: type, length: int) -> ctypes.Array:
    """A zeroed ctypes array of ``length`` ``ctype``. Its array type is kept here for good: ctypes caches
    array types only weakly, so the type of a codec's buffer went with the last codec using it (the end of
    a call) and was made again by the next one, each time cyclic garbage (a type refers to itself) that
    only a full collection frees. The lengths are few (one per rate and channel count)."""
    kind = _BUFFER_TYPES.get((ctype, length))
    if kind is None:
        kind = _BUFFER_TYPES[(ctype, length)] = ctype * length
    return kind()


def _le_bytes(buf: ctypes.Array, nbytes: int) -> bytes:
    """The first nbytes of a native int16 buffer as little-endian PCM bytes."""
    data = ctypes.string_at(buf, nbytes)
    if _BIG_ENDIAN:  # pragma: no cover - no big-endian CI
        from array import array
        a = array("h", data)
        a.byteswap()
        data = a.tobytes()
    return data


# -- encoder ----------------------------------------------------------------------------------------

class OpusEncoder:
    """An Opus encoder for one stream: PCM frames (20 ms: 160/320/960 samples at 8/16/48 kHz) in, packets out."""

    def __init__(self, sample_rate: int = 8000, channels: int = 1, application: str = "voip",
                 bitrate: int = 24000, complexity: int = 5, fec: bool = True, packet_loss_perc: int = 10,
                 dtx: bool = False) -> None:
        _check_rate_channels(sample_rate, channels)
        if application not in APPLICATIONS:
            raise ValueError(f"application must be one of {sorted(APPLICATIONS)}, got {application!r}")
        lib = load_libopus()
        self.sample_rate = sample_rate
        self.channels = channels
        self.application = application
        self.frame_samples = sample_rate // 50  # samples per channel in a 20 ms frame
        self._frame_sizes = _frame_sizes(sample_rate)
        self._ctl = lib.opus_encoder_ctl
        self._destroy = lib.opus_encoder_destroy
        err = ctypes.c_int(0)
        self._st: Optional[int] = lib.opus_encoder_create(sample_rate, channels, APPLICATIONS[application],
                                                          ctypes.byref(err))
        if err.value != OPUS_OK or not self._st:
            self._st = None
            raise OpusError(err.value, _strerror(err.value))
        self._encode = lib.opus_encode
        # One output buffer for the life of the encoder (see the module docstring: no per-call allocation).
        self._out = _buffer(ctypes.c_char, MAX_PACKET_BYTES)
        self._get = ctypes.c_int32(0)
        self.bitrate = bitrate
        self.complexity = complexity
        self.fec = fec
        self.packet_loss_perc = packet_loss_perc
        self.dtx = dtx

    def _set(self, request: int, value: int) -> None:
        """Apply one SET CTL, OpusError if libopus rejects the value."""
        if self._st is None:
            raise OpusError(OPUS_INVALID_STATE, "encoder is closed")
        _check(self._ctl(ctypes.c_void_p(self._st), ctypes.c_int32(request), ctypes.c_int32(value)))

    def _read(self, request: int) -> int:
        """Read one GET CTL."""
        if self._st is None:
            raise OpusError(OPUS_INVALID_STATE, "encoder is closed")
        _check(self._ctl(ctypes.c_void_p(self._st), ctypes.c_int32(request), ctypes.byref(self._get)))
        return self._get.value

    @property
    def bitrate(self) -> int:
        """Target bitrate in bit/s (libopus clamps to 500..512000)."""
        return self._read(_GET_BITRATE)

    @bitrate.setter
    def bitrate(self, bps: int) -> None:
        self._set(_SET_BITRATE, int(bps))

    @property
    def complexity(self) -> int:
        """Encoder complexity 0..10: CPU per frame against quality (research: 5 is the sweet spot)."""
        return self._read(_GET_COMPLEXITY)

    @complexity.setter
    def complexity(self, value: int) -> None:
        if not 0 <= int(value) <= 10:
            raise ValueError(f"complexity must be 0..10, got {value}")
        self._set(_SET_COMPLEXITY, int(value))

    @property
    def fec(self) -> bool:
        """In-band FEC: each packet carries a low-rate copy of the previous frame (needs packet_loss_perc > 0)."""
        return bool(self._read(_GET_INBAND_FEC))

    @fec.setter
    def fec(self, on: bool) -> None:
        self._set(_SET_INBAND_FEC, 1 if on else 0)

    @property
    def packet_loss_perc(self) -> int:
        """Expected packet loss in percent (0..100): how much bitrate the encoder spends on FEC."""
        return self._read(_GET_PACKET_LOSS_PERC)

    @packet_loss_perc.setter
    def packet_loss_perc(self, percent: int) -> None:
        if not 0 <= int(percent) <= 100:
            raise ValueError(f"packet_loss_perc must be 0..100, got {percent}")
        self._set(_SET_PACKET_LOSS_PERC, int(percent))

    @property
    def dtx(self) -> bool:
        """Discontinuous transmission: on silence, packets of 1-2 bytes (no need to send them)."""
        return bool(self._read(_GET_DTX))

    @dtx.setter
    def dtx(self, on: bool) -> None:
        self._set(_SET_DTX, 1 if on else 0)

    @property
    def vbr(self) -> bool:
        """Variable bitrate (libopus default on)."""
        return bool(self._read(_GET_VBR))

    @vbr.setter
    def vbr(self, on: bool) -> None:
        self._set(_SET_VBR, 1 if on else 0)

    @property
    def max_bandwidth(self) -> str:
        """The widest audio bandwidth coded ("narrowband" ... "fullband"): what a peer's SDP
        ``maxplaybackrate`` asks for (RFC 7587 §6.1; 8000 -> narrowband), and what decoding costs."""
        return BANDWIDTHS[self._read(_GET_MAX_BANDWIDTH)]

    @max_bandwidth.setter
    def max_bandwidth(self, name: str) -> None:
        codes = {v: k for k, v in BANDWIDTHS.items()}
        if name not in codes:
            raise ValueError(f"max_bandwidth must be one of {sorted(codes, key=codes.get)}, got {name!r}")
        self._set(_SET_MAX_BANDWIDTH, codes[name])

    @staticmethod
    def bandwidth_for_playback_rate(rate: int) -> str:
        """The Opus bandwidth that a ``maxplaybackrate`` of ``rate`` Hz allows (RFC 7587 §6.1)."""
        for limit, name in ((8000, "narrowband"), (12000, "mediumband"), (16000, "wideband"),
                            (24000, "superwideband")):
            if rate <= limit:
                return name
        return "fullband"

    @property
    def lookahead(self) -> int:
        """Encoder delay in samples at sample_rate (for aligning decoded audio with the input)."""
        return self._read(_GET_LOOKAHEAD)

    def set_bitrate(self, bps: int) -> None:
        """Set the target bitrate in bit/s."""
        self.bitrate = bps

    def set_complexity(self, value: int) -> None:
        """Set the complexity 0..10."""
        self.complexity = value

    def set_fec(self, on: bool) -> None:
        """Turn in-band FEC on or off."""
        self.fec = on

    def set_dtx(self, on: bool) -> None:
        """Turn DTX on or off."""
        self.dtx = on

    def set_packet_loss_perc(self, percent: int) -> None:
        """Set the expected packet loss in percent."""
        self.packet_loss_perc = percent

    def reset(self) -> None:
        """Reset the encoder state (a new stream), keeping its settings."""
        if self._st is None:
            raise OpusError(OPUS_INVALID_STATE, "encoder is closed")
        _check(self._ctl(ctypes.c_void_p(self._st), ctypes.c_int32(_RESET_STATE)))

    @property
    def state(self) -> int:
        """The address of the libopus encoder state (0 once closed), for C code that encodes on it."""
        return self._st or 0

    def encode(self, pcm: Union[bytes, bytearray, memoryview, "np.ndarray"]) -> bytes:
        """Encode one frame of 16-bit LE PCM (bytes or an int16 array) to one Opus packet."""
        if np is not None and isinstance(pcm, np.ndarray):
            if pcm.dtype != np.int16:
                raise TypeError(f"PCM array must be int16, got {pcm.dtype}")
            pcm = pcm.astype("<i2", copy=False).tobytes()
        elif not isinstance(pcm, bytes):
            if not isinstance(pcm, (bytearray, memoryview)):
                raise TypeError(f"PCM must be bytes or an int16 array, not {type(pcm).__name__}")
            pcm = bytes(pcm)
        frame_bytes = 2 * self.channels
        samples, rem = divmod(len(pcm), frame_bytes)
        if rem or samples not in self._frame_sizes:
            raise ValueError(f"an Opus frame at {self.sample_rate} Hz is 2.5-120 ms of {self.channels}-channel "
                             f"16-bit PCM ({self.frame_samples * frame_bytes} bytes for 20 ms), got {len(pcm)} bytes")
        if self._st is None:
            raise OpusError(OPUS_INVALID_STATE, "encoder is closed")
        if _BIG_ENDIAN:  # pragma: no cover
            from array import array
            a = array("h", pcm)
            a.byteswap()
            pcm = a.tobytes()
        n = self._encode(self._st, pcm, samples, self._out, MAX_PACKET_BYTES)
        if n < 0:
            raise OpusError(n, _strerror(n))
        return ctypes.string_at(self._out, n)

    def close(self) -> None:
        """Free the libopus state (also done when the object is collected)."""
        if self._st is not None:
            self._destroy(self._st)
            self._st = None

    def __del__(self) -> None:
        st = getattr(self, "_st", None)
        if st is not None:
            self._destroy(st)
            self._st = None

    def __enter__(self) -> "OpusEncoder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class OpusConfig:
    """How the media plane encodes Opus towards browsers (``[media] opus_*``): the one place encoders are made."""

    complexity: int = 5
    bitrate: int = 24000
    fec: bool = True          # in-band FEC; its expected loss starts at 0 and follows the network (bridge)
    dtx: bool = False         # discontinuous transmission: in silence, a 1-2 byte packet the bridge does not send

    def encoder(self, sample_rate: int = 8000) -> OpusEncoder:
        """A mono encoder at ``sample_rate`` with these settings (FEC costs nothing until loss is expected)."""
        return OpusEncoder(sample_rate, 1, bitrate=self.bitrate, complexity=self.complexity, fec=self.fec,
                           packet_loss_perc=0, dtx=self.dtx)


# -- decoder ----------------------------------------------------------------------------------------

class OpusDecoder:
    """An Opus decoder for one stream, at the rate the leg needs (8 kHz for G.711: no resampling)."""

    def __init__(self, sample_rate: int = 8000, channels: int = 1) -> None:
        _check_rate_channels(sample_rate, channels)
        lib = load_libopus()
        self.sample_rate = sample_rate
        self.channels = channels
        self.frame_samples = sample_rate // 50  # 20 ms
        self._plc_step = sample_rate // 400  # PLC/FEC durations are multiples of 2.5 ms
        self._max_samples = sample_rate * MAX_FRAME_MS // 1000
        self._ctl = lib.opus_decoder_ctl
        self._destroy = lib.opus_decoder_destroy
        err = ctypes.c_int(0)
        self._st: Optional[int] = lib.opus_decoder_create(sample_rate, channels, ctypes.byref(err))
        if err.value != OPUS_OK or not self._st:
            self._st = None
            raise OpusError(err.value, _strerror(err.value))
        self._decode = lib.opus_decode
        # One PCM buffer of the longest packet (120 ms), reused for every decode: the research measured
        # opuslib (new buffer per call) at 27 µs and raw ctypes with preallocated buffers at 17 µs per
        # 20 ms decode at 8 kHz.
        self._pcm = _buffer(ctypes.c_int16, self._max_samples * channels)
        self._get = ctypes.c_int32(0)

    def _run(self, data: Optional[bytes], frame_size: int, fec: int) -> bytes:
        """One opus_decode call into the preallocated buffer; OpusError on failure."""
        if self._st is None:
            raise OpusError(OPUS_INVALID_STATE, "decoder is closed")
        n = self._decode(self._st, data, len(data) if data else 0, self._pcm, frame_size, fec)
        if n < 0:
            raise OpusError(n, _strerror(n))
        return _le_bytes(self._pcm, n * 2 * self.channels)

    @staticmethod
    def _packet(packet: Union[bytes, bytearray, memoryview]) -> bytes:
        """A non-empty packet as bytes (an empty one is invalid: use decode_plc for a lost packet)."""
        if not isinstance(packet, bytes):
            if not isinstance(packet, (bytearray, memoryview)):
                raise TypeError(f"Opus packet must be bytes-like, not {type(packet).__name__}")
            packet = bytes(packet)
        if not packet:
            raise OpusError(OPUS_INVALID_PACKET, "empty Opus packet (use decode_plc for a lost one)")
        return packet

    def _duration(self, samples: Optional[int]) -> int:
        """Validate a PLC/FEC duration in samples per channel (default 20 ms)."""
        if samples is None:
            return self.frame_samples
        if samples <= 0 or samples % self._plc_step or samples > self._max_samples:
            raise ValueError(f"PLC/FEC duration must be a multiple of 2.5 ms ({self._plc_step} samples at "
                             f"{self.sample_rate} Hz) up to {MAX_FRAME_MS} ms, got {samples}")
        return samples

    @property
    def state(self) -> int:
        """The address of the libopus decoder state (0 once closed), for C code that decodes on it."""
        return self._st or 0

    def decode(self, packet: Union[bytes, bytearray, memoryview]) -> bytes:
        """Decode one packet to 16-bit LE PCM (its whole duration; 20 ms frames give frame_samples)."""
        return self._run(self._packet(packet), self._max_samples, 0)

    def decode_plc(self, samples: Optional[int] = None) -> bytes:
        """Conceal a lost packet (opus_decode with no data): samples per channel, default 20 ms."""
        return self._run(None, self._duration(samples), 0)

    def decode_fec(self, next_packet: Union[bytes, bytearray, memoryview], samples: Optional[int] = None) -> bytes:
        """Recover the lost frame before next_packet from its in-band FEC (PLC if it carries none)."""
        return self._run(self._packet(next_packet), self._duration(samples), 1)

    @property
    def last_packet_duration(self) -> int:
        """Samples per channel of the last decoded (or concealed) packet."""
        if self._st is None:
            raise OpusError(OPUS_INVALID_STATE, "decoder is closed")
        _check(self._ctl(ctypes.c_void_p(self._st), ctypes.c_int32(_GET_LAST_PACKET_DURATION),
                         ctypes.byref(self._get)))
        return self._get.value

    def reset(self) -> None:
        """Reset the decoder state (a new stream)."""
        if self._st is None:
            raise OpusError(OPUS_INVALID_STATE, "decoder is closed")
        _check(self._ctl(ctypes.c_void_p(self._st), ctypes.c_int32(_RESET_STATE)))

    def close(self) -> None:
        """Free the libopus state (also done when the object is collected)."""
        if self._st is not None:
            self._destroy(self._st)
            self._st = None

    def __del__(self) -> None:
        st = getattr(self, "_st", None)
        if st is not None:
            self._destroy(st)
            self._st = None

    def __enter__(self) -> "OpusDecoder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- packet inspection ------------------------------------------------------------------------------

@dataclass(frozen=True)
class OpusPacketInfo:
    """What the TOC byte (and frame count) of an Opus packet says (RFC 6716 §3.1)."""

    samples_per_frame: int  # per channel, at the sample_rate asked for
    frames: int  # frames in the packet (1 for 20 ms packets)
    samples: int  # samples per channel in the whole packet
    bandwidth: str  # "narrowband" .. "fullband"
    channels: int  # 1 or 2 (the coded stream's, whatever the decoder outputs)


def packet_info(packet: Union[bytes, bytearray, memoryview], sample_rate: int = 48000) -> OpusPacketInfo:
    """Parse an Opus packet's TOC through opus_packet_get_*; OpusError for an invalid packet."""
    lib = load_libopus()
    if sample_rate not in SAMPLE_RATES:
        raise ValueError(f"sample_rate must be one of {SAMPLE_RATES}, got {sample_rate}")
    data = OpusDecoder._packet(packet)  # the get_* functions read data[0] unchecked: never pass b""
    bandwidth = _check(lib.opus_packet_get_bandwidth(data))
    frames = _check(lib.opus_packet_get_nb_frames(data, len(data)))
    return OpusPacketInfo(
        samples_per_frame=_check(lib.opus_packet_get_samples_per_frame(data, sample_rate)),
        frames=frames,
        samples=_check(lib.opus_packet_get_nb_samples(data, len(data), sample_rate)),
        bandwidth=BANDWIDTHS.get(bandwidth, str(bandwidth)),
        channels=_check(lib.opus_packet_get_nb_channels(data)),
    )


__all__ = [
    "APPLICATIONS", "BANDWIDTHS", "BANDWIDTH_HZ", "SAMPLE_RATES", "OpusDecoder", "OpusEncoder", "OpusError",
    "OpusLibraryNotFound", "OpusPacketInfo", "function_addresses", "libopus_version", "load_libopus",
    "packet_info",
]
