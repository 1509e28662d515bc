"""STUN (RFC 5389) for ICE connectivity checks, on top of ``aioice.stun``'s message codec.

What callpath needs from STUN as an ICE-lite agent is small: parse a Binding Request, check its
FINGERPRINT and MESSAGE-INTEGRITY (short-term credentials: the key is the local ICE password), and
answer with a Binding Success (XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY, FINGERPRINT) or an error.
``aioice.stun.Message``/``parse_message`` do the encoding; this module adds the RFC 7983 demultiplexing
of the first byte and the response builders.
"""
from __future__ import annotations

import enum
import socket
import struct

from aioice.stun import (
    COOKIE,
    HEADER_LENGTH,
    Class,
    Message,
    Method,
    message_fingerprint,
    message_integrity,
    parse_message,
)

__all__ = [
    "Class",
    "Message",
    "Method",
    "PacketKind",
    "StunError",
    "binding_error",
    "binding_request",
    "binding_success",
    "classify",
    "is_stun",
    "parse",
]

_COOKIE_BYTES = struct.pack("!I", COOKIE)


class StunError(ValueError):
    """Not a well-formed STUN message (or its FINGERPRINT does not match)."""


class PacketKind(enum.IntEnum):
    """What a datagram on a multiplexed WebRTC port is, by its first byte (RFC 7983 §7)."""

    STUN = 0  # 0..3
    ZRTP = 1  # 16..19
    DTLS = 2  # 20..63
    TURN_CHANNEL = 3  # 64..79
    RTP = 4  # 128..191 (RTP and RTCP)
    UNKNOWN = 5


def _build_table() -> bytes:
    table = bytearray([PacketKind.UNKNOWN] * 256)
    for b in range(0, 4):
        table[b] = PacketKind.STUN
    for b in range(16, 20):
        table[b] = PacketKind.ZRTP
    for b in range(20, 64):
        table[b] = PacketKind.DTLS
    for b in range(64, 80):
        table[b] = PacketKind.TURN_CHANNEL
    for b in range(128, 192):
        table[b] = PacketKind.RTP
    return bytes(table)


_KIND_TABLE = _build_table()


def classify(data: bytes) -> PacketKind:
    """RFC 7983 demultiplexing by the first byte (UNKNOWN for an empty datagram)."""
    return PacketKind(_KIND_TABLE[data[0]]) if data else PacketKind.UNKNOWN


def is_stun(data: bytes) -> bool:
    """A STUN message: first byte 0..3, at least a header long, with the RFC 5389 magic cookie."""
    return len(data) >= HEADER_LENGTH and data[0] < 4 and data[4:8] == _COOKIE_BYTES


def parse(data: bytes) -> Message:
    """Parse a STUN message; FINGERPRINT, when present, is verified (mismatch -> StunError).

    MESSAGE-INTEGRITY is checked separately with ``message.check_message_integrity(key)``.
    """
    if not is_stun(data):
        raise StunError("not a STUN message")
    try:
        return parse_message(data)
    except ValueError as exc:
        raise StunError(str(exc)) from exc


def binding_request(
    username: str,
    password: str,
    *,
    controlling: bool = True,
    tie_breaker: int = 0,
    priority: int = 1853817087,
    use_candidate: bool = False,
    transaction_id: bytes | None = None,
) -> bytes:
    """An ICE connectivity check (what a browser sends us); used by tests and benchmarks."""
    request = Message(Method.BINDING, Class.REQUEST, transaction_id=transaction_id)
    request.attributes["USERNAME"] = username
    request.attributes["PRIORITY"] = priority
    request.attributes["ICE-CONTROLLING" if controlling else "ICE-CONTROLLED"] = tie_breaker
    if use_candidate:
        request.attributes["USE-CANDIDATE"] = None
    request.add_message_integrity(password.encode("utf8"))
    return bytes(request)


def _attribute(attr_type: int, value: bytes, pad: bytes = b"\x00") -> bytes:
    return struct.pack("!HH", attr_type, len(value)) + value + pad * (-len(value) % 4)


def _xor_mapped_address(address: tuple[str, int], transaction_id: bytes) -> bytes:
    host, port = address[0], address[1]
    if ":" in host:
        packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
        family = 2
        mask = _COOKIE_BYTES + transaction_id
    else:
        packed = socket.inet_aton(host)
        family = 1
        mask = _COOKIE_BYTES
    xored = (int.from_bytes(packed, "big") ^ int.from_bytes(mask, "big")).to_bytes(len(packed), "big")
    return _attribute(0x0020, struct.pack("!BBH", 0, family, port ^ (COOKIE >> 16)) + xored)


def _signed(message_type: int, transaction_id: bytes, body: bytes, password: str | None) -> bytes:
    """Header + body, then MESSAGE-INTEGRITY (if password) and FINGERPRINT, with aioice's helpers."""
    data = struct.pack("!HHI12s", message_type, len(body), COOKIE, transaction_id) + body
    if password is not None:
        data += _attribute(0x0008, message_integrity(data, password.encode("utf8")))
    fingerprint = message_fingerprint(data)
    data += _attribute(0x8028, struct.pack("!I", fingerprint))
    return data[:2] + struct.pack("!H", len(data) - HEADER_LENGTH) + data[4:]


def _software(software: str | None) -> bytes:
    # text attributes are padded with spaces, as in the RFC 5769 vectors (any padding is valid)
    return _attribute(0x8022, software.encode("utf8"), b" ") if software else b""


def binding_success(
    request: Message, mapped_address: tuple[str, int], password: str, *, software: str | None = None
) -> bytes:
    """Binding Success for ``request``: [SOFTWARE], XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY (password),
    FINGERPRINT (built directly: this is the per-check hot path)."""
    tid = request.transaction_id
    body = _software(software) + _xor_mapped_address(mapped_address, tid)
    return _signed(Method.BINDING | Class.RESPONSE, tid, body, password)


def binding_error(
    request: Message, code: int, reason: str, password: str | None = None, *, software: str | None = None
) -> bytes:
    """Binding Error Response; signed with ``password`` when the request was authenticated (487),
    unsigned otherwise (400/401, RFC 5389 §10.1.2), always with FINGERPRINT."""
    error = struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode("utf8")
    body = _software(software) + _attribute(0x0009, error, b" ")
    return _signed(Method.BINDING | Class.ERROR, request.transaction_id, body, password)
