"""DTLS 1.2 for DTLS-SRTP (RFC 5763/5764), sans-IO, over pyOpenSSL memory BIOs.

One ``DtlsEndpoint`` per WebRTC leg. It never touches a socket or a loop: feed it datagrams and the
time, send what it hands back, call it when its timer fires, read its events::

    dtls = DtlsEndpoint(cert, role="server", remote_fingerprints=["sha-256 AB:CD:..."])
    dtls.start(now)                       # a client sends its ClientHello here
    dtls.receive_datagram(data, now)
    for datagram in dtls.datagrams_to_send(): sock.sendto(datagram, peer)
    dtls.get_timer() -> deadline or None; dtls.handle_timer(now)
    while (event := dtls.next_event()) is not None: ...   # HandshakeComplete, DtlsFailed, DtlsClosed

The SSL context follows aiortc's ``RTCCertificate._create_ssl_context`` (DTLS_METHOD, no tickets,
ECDHE-ECDSA ciphers, use_srtp with the profile list, peer certificate required and self-signed
accepted): the peer is authenticated by comparing its certificate with the SDP fingerprint, in the
verify callback (a mismatch aborts the handshake with an alert) and again once the handshake is done.

Retransmission uses OpenSSL's own DTLS timer (``DTLSv1_get_timeout``/``DTLSv1_handle_timeout``, present
in pyOpenSSL >= 24). OpenSSL measures that timer with the real clock, so ``handle_timer(now)`` with a
fake clock that runs ahead only retransmits once the real timeout has passed too.

No HelloVerifyRequest cookie exchange is done in the server role: in WebRTC the 5-tuple has already
been validated by an authenticated ICE connectivity check before any DTLS datagram is accepted (what
browsers' own DTLS servers rely on too).
"""
from __future__ import annotations

import enum
import struct
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from OpenSSL import SSL, crypto

from .certificate import DtlsCertificate, fingerprint_matches, parse_sdp_fingerprint
from .srtp import DTLS_SRTP_PROFILES, SrtpContext, SrtpProfile

__all__ = [
    "DtlsClosed",
    "DtlsEndpoint",
    "DtlsEvent",
    "DtlsFailed",
    "DtlsState",
    "HandshakeComplete",
    "dtls_srtp_keys",
]

_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA"
)
_RECORD_HEADER = 13
_MAX_READ = 65536


class DtlsState(enum.Enum):
    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"
    FAILED = "failed"


@dataclass(frozen=True)
class HandshakeComplete:
    """The handshake succeeded and the peer's certificate matches its fingerprint.

    ``local_key_salt`` is the master key||salt we protect with, ``remote_key_salt`` the one the peer
    protects with (RFC 5764 §4.2: the client write key is the first half, the server's the second).
    """

    profile: SrtpProfile
    local_key_salt: bytes
    remote_key_salt: bytes
    peer_certificate: x509.Certificate

    def srtp_context(self) -> SrtpContext:
        return SrtpContext(self.profile, self.local_key_salt, self.remote_key_salt)


@dataclass(frozen=True)
class DtlsFailed:
    """The handshake failed: ``reason`` is ``"fingerprint mismatch"``, ``"handshake timeout"``,
    ``"no SRTP profile negotiated"`` or the OpenSSL error."""

    reason: str


@dataclass(frozen=True)
class DtlsClosed:
    """The peer sent close_notify."""


DtlsEvent = HandshakeComplete | DtlsFailed | DtlsClosed


def dtls_srtp_keys(material: bytes, profile: SrtpProfile, role: str) -> tuple[bytes, bytes]:
    """Split RFC 5764 §4.2 keying material into (local key||salt, remote key||salt) for ``role``.

    Layout: client_write_key | server_write_key | client_write_salt | server_write_salt.
    """
    k, s = profile.key_length, profile.salt_length
    if len(material) != 2 * (k + s):
        raise ValueError(f"{profile.name} needs {2 * (k + s)} bytes of keying material")
    client = material[0:k] + material[2 * k : 2 * k + s]
    server = material[k : 2 * k] + material[2 * k + s : 2 * k + 2 * s]
    return (server, client) if role == "server" else (client, server)


def _normalise_fingerprints(fingerprints: Iterable[str | tuple[str, str]]) -> list[tuple[str, str]]:
    result = []
    for item in fingerprints:
        if isinstance(item, str):
            result.append(parse_sdp_fingerprint(item))
        else:
            algorithm, value = item
            result.append((algorithm.lower(), value.upper()))
    return result


_CONTEXTS: dict[tuple[int, tuple[bytes, ...]], SSL.Context] = {}


def _context(certificate: DtlsCertificate, profiles: Sequence[SrtpProfile]) -> SSL.Context:
    """One SSL.Context per certificate and profile list, shared by all endpoints (it is immutable here:
    the per-connection fingerprint check is set on each SSL.Connection)."""
    names = tuple(p.openssl_name for p in profiles)
    cache_key = (id(certificate), names)
    ctx = _CONTEXTS.get(cache_key)
    if ctx is None:
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_options(SSL.OP_NO_TICKET)
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify)
        ctx.use_certificate(certificate.certificate)
        ctx.use_privatekey(certificate.key)
        ctx.check_privatekey()
        ctx.set_cipher_list(_CIPHERS)
        ctx.set_tlsext_use_srtp(b":".join(names))
        if len(_CONTEXTS) > 64:  # certificates are few; do not grow without bound in tests
            _CONTEXTS.clear()
        _CONTEXTS[cache_key] = ctx
        # keep the certificate alive as long as the cache entry, so id() is not reused
        ctx.set_app_data(certificate)
    return ctx


class _PeerCheck:
    """What one connection accepts as the peer's certificate (its SDP fingerprints), and whether the peer's
    failed that check. It is the SSL.Connection's app data: the context's one verify callback reads it."""

    __slots__ = ("fingerprints", "failed")

    def __init__(self, fingerprints: list[tuple[str, str]]) -> None:
        self.fingerprints = fingerprints
        self.failed = False


def _verify(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
    """The OpenSSL verify callback of every context: accept the self-signed leaf iff it matches the SDP
    fingerprints of the connection's ``_PeerCheck`` (none: refused).

    One callback per cached context, not one per connection: pyOpenSSL's ``set_verify`` wraps its callback in
    a helper that refers to itself through a cffi callback, so a per-connection callback left a reference cycle
    behind every browser leg (cyclic garbage, freed only by a full collection)."""
    if depth != 0:
        return True  # WebRTC certificates are self-signed; only the leaf is authenticated
    check = conn.get_app_data()
    if not isinstance(check, _PeerCheck):
        return False
    if fingerprint_matches(cert.to_cryptography(), check.fingerprints):
        return True
    check.failed = True
    return False


def _split_records(data: bytes, mtu: int) -> list[bytes]:
    """Cut the bytes OpenSSL wrote into datagrams at DTLS record boundaries, packing records up to mtu."""
    datagrams: list[bytes] = []
    current = b""
    pos = 0
    end = len(data)
    while pos < end:
        if end - pos < _RECORD_HEADER:
            record = data[pos:]
        else:
            (length,) = struct.unpack_from("!H", data, pos + 11)
            record = data[pos : pos + _RECORD_HEADER + length]
        pos += len(record)
        if current and len(current) + len(record) > mtu:
            datagrams.append(current)
            current = b""
        current += record
    if current:
        datagrams.append(current)
    return datagrams


class DtlsEndpoint:
    """A sans-IO DTLS-SRTP endpoint (see the module docstring)."""

    def __init__(
        self,
        certificate: DtlsCertificate,
        role: str,
        remote_fingerprints: Iterable[str | tuple[str, str]],
        *,
        srtp_profiles: Sequence[SrtpProfile] = DTLS_SRTP_PROFILES,
        mtu: int = 1200,
        handshake_timeout: float = 30.0,
    ) -> None:
        if role not in ("server", "client"):
            raise ValueError(f"DTLS role must be 'server' or 'client', not {role!r}")
        self.role = role
        self.remote_fingerprints = _normalise_fingerprints(remote_fingerprints)
        self.state = DtlsState.NEW
        self.profile: SrtpProfile | None = None
        self._profiles = list(srtp_profiles)
        self._mtu = mtu
        self._handshake_timeout = handshake_timeout
        self._deadline: float | None = None
        self._timer: float | None = None
        self._peer_check = _PeerCheck(self.remote_fingerprints)  # the verify callback's view (never self)
        self._events: deque[DtlsEvent] = deque()
        self._out: list[bytes] = []
        self._ssl = SSL.Connection(_context(certificate, self._profiles))
        self._ssl.set_app_data(self._peer_check)
        if role == "server":
            self._ssl.set_accept_state()
        else:
            self._ssl.set_connect_state()

    # ---- public sans-IO interface ---------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin the handshake (the client writes its ClientHello); idempotent."""
        if self.state is not DtlsState.NEW:
            return
        self.state = DtlsState.CONNECTING
        self._deadline = now + self._handshake_timeout
        if self.role == "client":
            self._handshake(now)
        else:
            self._update_timer(now)

    def receive_datagram(self, data: bytes, now: float) -> None:
        """Feed one DTLS datagram (first byte 20..63) received from the peer."""
        if self.state in (DtlsState.CLOSED, DtlsState.FAILED):
            return
        if self.state is DtlsState.NEW:
            self.start(now)
        try:
            self._ssl.bio_write(data)
        except SSL.Error:  # pragma: no cover - memory BIO writes do not fail
            return
        if self.state is DtlsState.CONNECTING:
            self._handshake(now)
            return
        # connected: drain records (application data is not used by DTLS-SRTP; close_notify is)
        try:
            while True:
                self._ssl.recv(_MAX_READ)
        except SSL.ZeroReturnError:
            self.state = DtlsState.CLOSED
            self._timer = None
            self._events.append(DtlsClosed())
        except SSL.WantReadError:
            pass
        except SSL.Error:
            pass  # a corrupt or stray record after the handshake is dropped
        self._flush()
        if self.state is DtlsState.CONNECTED:
            self._update_timer(now)

    def datagrams_to_send(self) -> list[bytes]:
        """The datagrams to send to the peer now (each at most ``mtu`` bytes unless a record is bigger)."""
        self._flush()
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        """When ``handle_timer`` should next be called (same clock as ``now``), or None."""
        return self._timer

    def handle_timer(self, now: float) -> None:
        """Retransmit the last flight if OpenSSL's DTLS timer expired; fail after the handshake timeout."""
        if self._timer is None or now < self._timer:
            return
        if self.state is DtlsState.CONNECTING and self._deadline is not None and now >= self._deadline:
            self._fail("handshake timeout")
            return
        if self.state in (DtlsState.CONNECTING, DtlsState.CONNECTED):
            try:
                self._ssl.DTLSv1_handle_timeout()
            except SSL.Error as exc:
                self._fail(f"DTLS timeout handling failed: {exc}")
                return
            self._flush()
            self._update_timer(now)
        else:
            self._timer = None

    def next_event(self) -> DtlsEvent | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def close(self) -> None:
        """Send close_notify (if connected); the endpoint is then closed."""
        if self.state in (DtlsState.CONNECTING, DtlsState.CONNECTED):
            try:
                self._ssl.shutdown()
            except SSL.Error:
                pass
            self._flush()
        if self.state is not DtlsState.FAILED:
            self.state = DtlsState.CLOSED
        self._timer = None

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        cert = self._ssl.get_peer_certificate()
        return cert.to_cryptography() if cert is not None else None

    # ---- internals ------------------------------------------------------------------------------

    def _handshake(self, now: float) -> None:
        try:
            self._ssl.do_handshake()
        except SSL.WantReadError:
            self._flush()
            self._update_timer(now)
            return
        except SSL.Error as exc:
            self._flush()  # the alert
            self._fail("fingerprint mismatch" if self._peer_check.failed else f"handshake failed: {exc}")
            return
        self._flush()
        self._complete(now)

    def _complete(self, now: float) -> None:
        peer = self._ssl.get_peer_certificate()
        certificate = peer.to_cryptography() if peer is not None else None
        if certificate is None or not fingerprint_matches(certificate, self.remote_fingerprints):
            self._fail("fingerprint mismatch")
            return
        selected = self._ssl.get_selected_srtp_profile()
        profile = next((p for p in self._profiles if p.openssl_name == selected), None)
        if profile is None:
            self._fail("no SRTP profile negotiated")
            return
        material = self._ssl.export_keying_material(
            b"EXTRACTOR-dtls_srtp", 2 * (profile.key_length + profile.salt_length)
        )
        local, remote = dtls_srtp_keys(material, profile, self.role)
        self.profile = profile
        self.state = DtlsState.CONNECTED
        self._deadline = None
        self._events.append(HandshakeComplete(profile, local, remote, certificate))
        self._update_timer(now)

    def _fail(self, reason: str) -> None:
        self.state = DtlsState.FAILED
        self._timer = None
        self._deadline = None
        self._events.append(DtlsFailed(reason))

    def _flush(self) -> None:
        chunks = []
        while True:
            try:
                chunk = self._ssl.bio_read(_MAX_READ)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        if chunks:
            self._out.extend(_split_records(b"".join(chunks), self._mtu))

    def _update_timer(self, now: float) -> None:
        timeout = self._ssl.DTLSv1_get_timeout()
        timer = None if timeout is None else now + timeout
        if self.state is DtlsState.CONNECTING and self._deadline is not None:
            timer = self._deadline if timer is None else min(timer, self._deadline)
        self._timer = timer
