"""HEP v3 (HEPv3/EEP) capture export, so Homer or `sngrep -L udp:0.0.0.0:9060` can show callpath's SIP traffic.

`encode_hep3`/`decode_hep3` are sans-IO; `HepExporter` is the thin asyncio UDP adapter, best-effort by design:
it never blocks and never raises into the SIP path, it drops and counts instead.

Wire format: "HEP3", u16 total length, then chunks of (u16 vendor id, u16 type id, u16 chunk length incl. its
6-byte header, value), all big-endian. Chunks are emitted in the order sngrep's positional parser expects
(family, proto, ports, timestamps, protocol type, capture id, addresses, auth key, payload); the correlation id
goes after the payload, where sngrep ignores it and Homer (which walks chunks by id) still reads it.
"""
from __future__ import annotations

from .uri import is_digits

import asyncio
import ipaddress
import logging
import struct
import time
from typing import Any

__all__ = [
    "encode_hep3",
    "decode_hep3",
    "HepExporter",
    "parse_hep_target",
    "HEP_PROTO_SIP",
    "CHUNK_IP_FAMILY",
    "CHUNK_IP_PROTO",
    "CHUNK_IPV4_SRC",
    "CHUNK_IPV4_DST",
    "CHUNK_IPV6_SRC",
    "CHUNK_IPV6_DST",
    "CHUNK_SRC_PORT",
    "CHUNK_DST_PORT",
    "CHUNK_TS_SEC",
    "CHUNK_TS_USEC",
    "CHUNK_PROTO_TYPE",
    "CHUNK_CAPTURE_ID",
    "CHUNK_AUTH_KEY",
    "CHUNK_PAYLOAD",
    "CHUNK_CORRELATION_ID",
]

log = logging.getLogger(__name__)

HEP3_MAGIC = b"HEP3"
HEP3_HEADER = struct.Struct("!4sH")
CHUNK_HEADER = struct.Struct("!HHH")
MAX_HEP3_LEN = 0xFFFF

# Generic chunk type ids (vendor 0x0000), as in the HEP3 specification.
CHUNK_IP_FAMILY = 0x0001
CHUNK_IP_PROTO = 0x0002
CHUNK_IPV4_SRC = 0x0003
CHUNK_IPV4_DST = 0x0004
CHUNK_IPV6_SRC = 0x0005
CHUNK_IPV6_DST = 0x0006
CHUNK_SRC_PORT = 0x0007
CHUNK_DST_PORT = 0x0008
CHUNK_TS_SEC = 0x0009
CHUNK_TS_USEC = 0x000A
CHUNK_PROTO_TYPE = 0x000B
CHUNK_CAPTURE_ID = 0x000C
CHUNK_AUTH_KEY = 0x000E
CHUNK_PAYLOAD = 0x000F
CHUNK_CORRELATION_ID = 0x0011

HEP_PROTO_SIP = 1  # protocol type 0x000b value for SIP
AF_INET_HEP = 2  # HEP uses the Linux AF_* numbers on the wire, whatever the sender's OS
AF_INET6_HEP = 10
IPPROTO_TCP = 6
IPPROTO_UDP = 17

# SIP transport -> IP protocol carried in chunk 0x0002 (TLS and WebSocket run over TCP).
_IP_PROTO = {"udp": IPPROTO_UDP, "tcp": IPPROTO_TCP, "tls": IPPROTO_TCP, "ws": IPPROTO_TCP, "wss": IPPROTO_TCP}


def _chunk(type_id: int, value: bytes) -> bytes:
    """One vendor-0 chunk: header (length includes the 6 header bytes) plus value."""
    if len(value) > MAX_HEP3_LEN - HEP3_HEADER.size - CHUNK_HEADER.size:
        raise ValueError(f"HEP: chunk 0x{type_id:04x} value of {len(value)} bytes exceeds the 16-bit HEP3 length")
    return CHUNK_HEADER.pack(0, type_id, CHUNK_HEADER.size + len(value)) + value


def _ip(text: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse a literal IP address (HEP carries addresses, not names)."""
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        raise ValueError(f"HEP {what} address must be an IP literal, got {text!r}") from None


def encode_hep3(
    payload: bytes,
    src: tuple[str, int],
    dst: tuple[str, int],
    proto: str,
    timestamp: float,
    capture_id: int = 2001,
    password: str | None = None,
    correlation_id: str | None = None,
) -> bytes:
    """Encapsulate one SIP message seen on `proto` from `src` to `dst` at `timestamp` as a HEP3 packet."""
    ip_proto = _IP_PROTO.get(proto.lower())
    if ip_proto is None:
        raise ValueError(f"HEP: unknown transport {proto!r} (expected udp, tcp, tls, ws or wss)")
    src_ip, dst_ip = _ip(src[0], "source"), _ip(dst[0], "destination")
    if src_ip.version != dst_ip.version:
        # Unmap IPv4-mapped IPv6 (dual-stack sockets) before giving up on a mixed pair.
        if isinstance(src_ip, ipaddress.IPv6Address) and src_ip.ipv4_mapped:
            src_ip = src_ip.ipv4_mapped
        if isinstance(dst_ip, ipaddress.IPv6Address) and dst_ip.ipv4_mapped:
            dst_ip = dst_ip.ipv4_mapped
        if src_ip.version != dst_ip.version:
            raise ValueError(f"HEP: source {src_ip} and destination {dst_ip} are different IP versions")
    for port in (src[1], dst[1]):
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"HEP: port out of range: {port}")
    if not 0 <= capture_id <= 0xFFFFFFFF:
        raise ValueError(f"HEP: capture id out of range: {capture_id}")
    if timestamp < 0:
        raise ValueError(f"HEP: negative timestamp {timestamp}")
    sec, usec = divmod(round(timestamp * 1_000_000), 1_000_000)
    if src_ip.version == 4:
        family, src_type, dst_type = AF_INET_HEP, CHUNK_IPV4_SRC, CHUNK_IPV4_DST
    else:
        family, src_type, dst_type = AF_INET6_HEP, CHUNK_IPV6_SRC, CHUNK_IPV6_DST

    chunks = [
        _chunk(CHUNK_IP_FAMILY, struct.pack("!B", family)),
        _chunk(CHUNK_IP_PROTO, struct.pack("!B", ip_proto)),
        _chunk(CHUNK_SRC_PORT, struct.pack("!H", src[1])),
        _chunk(CHUNK_DST_PORT, struct.pack("!H", dst[1])),
        _chunk(CHUNK_TS_SEC, struct.pack("!I", sec & 0xFFFFFFFF)),
        _chunk(CHUNK_TS_USEC, struct.pack("!I", usec)),
        _chunk(CHUNK_PROTO_TYPE, struct.pack("!B", HEP_PROTO_SIP)),
        _chunk(CHUNK_CAPTURE_ID, struct.pack("!I", capture_id)),
        _chunk(src_type, src_ip.packed),
        _chunk(dst_type, dst_ip.packed),
    ]
    if password is not None:
        chunks.append(_chunk(CHUNK_AUTH_KEY, password.encode("utf-8")))
    chunks.append(_chunk(CHUNK_PAYLOAD, bytes(payload)))
    if correlation_id is not None:
        chunks.append(_chunk(CHUNK_CORRELATION_ID, correlation_id.encode("utf-8")))
    body = b"".join(chunks)
    total = HEP3_HEADER.size + len(body)
    if total > MAX_HEP3_LEN:
        raise ValueError(f"HEP: packet of {total} bytes exceeds the 16-bit HEP3 length")
    return HEP3_HEADER.pack(HEP3_MAGIC, total) + body


def decode_hep3(data: bytes) -> dict[str, Any]:
    """Parse a HEP3 packet into a dict (for tests and diagnostics); raises ValueError when malformed.

    Keys: ip_family, ip_proto, src_ip, dst_ip, src_port, dst_port, ts_sec, ts_usec, timestamp, proto_type,
    capture_id, auth_key, payload, correlation_id (absent chunks give None), plus `chunks`, the list of
    (vendor_id, type_id, chunk_length) in wire order, and `unknown`, {(vendor_id, type_id): value}.
    """
    data = bytes(data)
    if len(data) < HEP3_HEADER.size:
        raise ValueError("HEP3: packet shorter than its header")
    magic, total = HEP3_HEADER.unpack_from(data)
    if magic != HEP3_MAGIC:
        raise ValueError(f"HEP3: bad magic {magic!r}")
    if total < HEP3_HEADER.size or total > len(data):
        raise ValueError(f"HEP3: total length {total} does not fit a {len(data)}-byte packet")
    out: dict[str, Any] = {
        "ip_family": None, "ip_proto": None, "src_ip": None, "dst_ip": None,
        "src_port": None, "dst_port": None, "ts_sec": None, "ts_usec": None, "timestamp": None,
        "proto_type": None, "capture_id": None, "auth_key": None, "payload": None,
        "correlation_id": None, "chunks": [], "unknown": {},
    }
    scalars = {
        CHUNK_IP_FAMILY: ("ip_family", "!B"), CHUNK_IP_PROTO: ("ip_proto", "!B"),
        CHUNK_SRC_PORT: ("src_port", "!H"), CHUNK_DST_PORT: ("dst_port", "!H"),
        CHUNK_TS_SEC: ("ts_sec", "!I"), CHUNK_TS_USEC: ("ts_usec", "!I"),
        CHUNK_PROTO_TYPE: ("proto_type", "!B"), CHUNK_CAPTURE_ID: ("capture_id", "!I"),
    }
    addresses = {
        CHUNK_IPV4_SRC: ("src_ip", 4), CHUNK_IPV4_DST: ("dst_ip", 4),
        CHUNK_IPV6_SRC: ("src_ip", 16), CHUNK_IPV6_DST: ("dst_ip", 16),
    }
    pos = HEP3_HEADER.size
    while pos < total:
        if total - pos < CHUNK_HEADER.size:
            raise ValueError(f"HEP3: truncated chunk header at offset {pos}")
        vendor, type_id, length = CHUNK_HEADER.unpack_from(data, pos)
        if length < CHUNK_HEADER.size or pos + length > total:
            raise ValueError(f"HEP3: chunk 0x{type_id:04x} length {length} invalid at offset {pos}")
        value = data[pos + CHUNK_HEADER.size : pos + length]
        out["chunks"].append((vendor, type_id, length))
        pos += length
        if vendor != 0:
            out["unknown"][(vendor, type_id)] = value
        elif type_id in scalars:
            key, fmt = scalars[type_id]
            if len(value) != struct.calcsize(fmt):
                raise ValueError(f"HEP3: chunk 0x{type_id:04x} has {len(value)} value bytes")
            out[key] = struct.unpack(fmt, value)[0]
        elif type_id in addresses:
            key, size = addresses[type_id]
            if len(value) != size:
                raise ValueError(f"HEP3: address chunk 0x{type_id:04x} has {len(value)} value bytes")
            out[key] = str(ipaddress.ip_address(value))
        elif type_id == CHUNK_AUTH_KEY:
            out["auth_key"] = value.decode("utf-8", "replace")
        elif type_id == CHUNK_PAYLOAD:
            out["payload"] = value
        elif type_id == CHUNK_CORRELATION_ID:
            out["correlation_id"] = value.decode("utf-8", "replace")
        else:
            out["unknown"][(vendor, type_id)] = value
    if out["ts_sec"] is not None:
        out["timestamp"] = out["ts_sec"] + (out["ts_usec"] or 0) / 1_000_000
    return out


def parse_hep_target(target: str) -> tuple[str, int]:
    """Split settings `sip.hep` ("host:port", "[v6]:port" or sngrep-style "udp:host:port") into (host, port)."""
    spec = target.strip()
    if spec.lower().startswith("udp:"):
        spec = spec[4:]
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_text = spec.rpartition(":")
    if not host or not is_digits(port_text) or not 0 < int(port_text) <= 0xFFFF:
        raise ValueError(f"HEP collector must be host:port (e.g. 127.0.0.1:9060), got {target!r}")
    return host, int(port_text)


class _HepProtocol(asyncio.DatagramProtocol):
    """Datagram protocol that only records send errors (ICMP unreachable etc.) instead of raising."""

    def __init__(self, exporter: HepExporter) -> None:
        self._exporter = exporter

    def error_received(self, exc: Exception) -> None:
        self._exporter._on_error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._exporter._on_error(exc)


class HepExporter:
    """Best-effort HEP3-over-UDP sender to one collector: `send` never blocks or raises, it drops and counts."""

    # Above this many bytes queued in the transport (socket would block), new packets are dropped.
    MAX_BUFFERED = 256 * 1024

    def __init__(
        self,
        host: str,
        port: int,
        *,
        capture_id: int = 2001,
        password: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.capture_id = capture_id
        self.password = password
        self.sent = 0  # packets handed to the socket
        self.dropped = 0  # packets not sent: not started, closed, unencodable, send buffer full
        self.errors = 0  # socket errors reported afterwards (e.g. ICMP port unreachable)
        self._transport: asyncio.DatagramTransport | None = None
        self._last_error_log = 0.0

    @classmethod
    def from_target(cls, target: str, **kwargs: Any) -> HepExporter:
        """Exporter for a settings-style target string, see `parse_hep_target`."""
        host, port = parse_hep_target(target)
        return cls(host, port, **kwargs)

    @property
    def started(self) -> bool:
        """True once the UDP socket exists and is not closing."""
        return self._transport is not None and not self._transport.is_closing()

    async def start(self) -> None:
        """Open the UDP socket towards the collector (name resolution happens here, once)."""
        if self.started:
            return
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _HepProtocol(self), remote_addr=(self.host, self.port)
        )
        self._transport = transport

    def send(
        self,
        payload: bytes,
        src: tuple[str, int],
        dst: tuple[str, int],
        proto: str,
        timestamp: float | None = None,
        correlation_id: str | None = None,
    ) -> bool:
        """Export one SIP message; returns False (and counts a drop) instead of raising on any problem."""
        transport = self._transport
        if transport is None or transport.is_closing():
            self.dropped += 1
            return False
        try:
            if transport.get_write_buffer_size() > self.MAX_BUFFERED:
                self.dropped += 1
                return False
            packet = encode_hep3(
                payload, src, dst, proto,
                time.time() if timestamp is None else timestamp,
                capture_id=self.capture_id, password=self.password, correlation_id=correlation_id,
            )
            transport.sendto(packet)
        except Exception as exc:  # noqa: BLE001 - capture must never break call handling
            self.dropped += 1
            self._log_error(exc)
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        """Close the socket; later sends are dropped and counted."""
        if self._transport is not None:
            self._transport.close()

    async def __aenter__(self) -> HepExporter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def _on_error(self, exc: Exception) -> None:
        """Count an asynchronous socket error (the datagram it belongs to is lost)."""
        self.errors += 1
        self._log_error(exc)

    def _log_error(self, exc: Exception) -> None:
        """Log at most one HEP error every 10 s so a dead collector does not flood the log."""
        now = time.monotonic()
        if now - self._last_error_log >= 10.0:
            self._last_error_log = now
            log.warning("HEP export to %s:%d failing: %s", self.host, self.port, exc)

