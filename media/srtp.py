"""SRTP (RFC 3711, RFC 7714) over pylibsrtp, plus SDES ``a=crypto`` (RFC 4568) for SIP trunks.

``SrtpContext`` holds the two libsrtp sessions of one leg: outbound (our key) and inbound (the
peer's key). Keys come either from DTLS-SRTP (``media.dtls``: exported keying material, RFC 5764) or
from SDES ``a=crypto`` lines::

    ctx = SrtpContext(AES128_CM_SHA1_80, local_key_salt, remote_key_salt)
    wire = ctx.protect(rtp_packet)
    rtp_packet = ctx.unprotect(wire)          # SrtpError on auth failure or replay

Every libsrtp failure is raised as ``SrtpError``.
"""
from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import pylibsrtp
from pylibsrtp import Policy, Session

__all__ = [
    "AEAD_AES_128_GCM",
    "AEAD_AES_256_GCM",
    "AES128_CM_SHA1_80",
    "DTLS_SRTP_PROFILES",
    "PROFILES",
    "CryptoAttribute",
    "SrtpContext",
    "SrtpError",
    "SrtpProfile",
    "is_rtcp",
    "profile_by_name",
    "sdes_context",
]


class SrtpError(Exception):
    """SRTP protect/unprotect failed (authentication, replay, bad key) or an SRTP parameter is invalid."""


@dataclass(frozen=True)
class SrtpProfile:
    """An SRTP protection profile with its names in DTLS-SRTP (RFC 5764/7714) and SDES (RFC 4568)."""

    name: str
    openssl_name: bytes
    sdes_name: str
    libsrtp_profile: int
    key_length: int
    salt_length: int
    rtp_overhead: int = field(compare=False)
    """Bytes protect() adds to an RTP packet (auth tag or AEAD tag)."""

    @property
    def key_salt_length(self) -> int:
        return self.key_length + self.salt_length


AES128_CM_SHA1_80 = SrtpProfile(
    "AES128_CM_SHA1_80",
    b"SRTP_AES128_CM_SHA1_80",
    "AES_CM_128_HMAC_SHA1_80",
    Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    16,
    14,
    10,
)
AEAD_AES_128_GCM = SrtpProfile(
    "AEAD_AES_128_GCM",
    b"SRTP_AEAD_AES_128_GCM",
    "AEAD_AES_128_GCM",
    Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    16,
    12,
    16,
)
AEAD_AES_256_GCM = SrtpProfile(
    "AEAD_AES_256_GCM",
    b"SRTP_AEAD_AES_256_GCM",
    "AEAD_AES_256_GCM",
    Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
    32,
    12,
    16,
)

PROFILES: tuple[SrtpProfile, ...] = (AES128_CM_SHA1_80, AEAD_AES_128_GCM, AEAD_AES_256_GCM)


def _available(profile: SrtpProfile) -> bool:
    try:
        Policy(srtp_profile=profile.libsrtp_profile)
    except pylibsrtp.Error:  # pragma: no cover - libsrtp built without GCM
        return False
    return True


DTLS_SRTP_PROFILES: tuple[SrtpProfile, ...] = tuple(
    p for p in (AEAD_AES_256_GCM, AEAD_AES_128_GCM, AES128_CM_SHA1_80) if _available(p)
)
"""Profiles offered in the DTLS use_srtp extension, most preferred first (what browsers also prefer)."""

_BY_NAME: dict[str, SrtpProfile] = {}
for _p in PROFILES:
    _BY_NAME[_p.name] = _BY_NAME[_p.sdes_name] = _BY_NAME[_p.openssl_name.decode()] = _p


def profile_by_name(name: str | bytes) -> SrtpProfile:
    """Look a profile up by any of its names (``AES128_CM_SHA1_80``, ``SRTP_AES128_CM_SHA1_80``,
    ``AES_CM_128_HMAC_SHA1_80``, ``AEAD_AES_256_GCM``...)."""
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    try:
        return _BY_NAME[name.upper()]
    except KeyError:
        raise SrtpError(f"unsupported SRTP profile {name!r}") from None


def is_rtcp(packet: bytes) -> bool:
    """True if an RTP/RTCP-multiplexed packet is RTCP (RFC 5761 §4: second byte 192..223)."""
    return len(packet) > 1 and 192 <= packet[1] <= 223


def _session(profile: SrtpProfile, key_salt: bytes, ssrc_type: int, window_size: int) -> Session:
    if len(key_salt) != profile.key_salt_length:
        raise SrtpError(
            f"{profile.name} needs {profile.key_length}+{profile.salt_length} bytes of key||salt, "
            f"got {len(key_salt)}"
        )
    policy = Policy(key=bytes(key_salt), ssrc_type=ssrc_type, srtp_profile=profile.libsrtp_profile)
    policy.allow_repeat_tx = True  # a retransmitted (same seq) packet is protected again, not refused
    policy.window_size = window_size
    try:
        return Session(policy)
    except pylibsrtp.Error as exc:  # pragma: no cover - key length is checked above
        raise SrtpError(str(exc)) from exc


def _libsrtp_functions() -> tuple[int, int] | None:
    """Addresses of srtp_protect and srtp_unprotect in the libsrtp that pylibsrtp carries (None if its cffi
    module is not the known one): the C data plane calls them on the same sessions as this module."""
    try:
        from pylibsrtp import _binding

        ffi, lib = _binding.ffi, _binding.lib
        return (int(ffi.cast("uintptr_t", ffi.addressof(lib, "srtp_protect"))),
                int(ffi.cast("uintptr_t", ffi.addressof(lib, "srtp_unprotect"))))
    except Exception:  # noqa: BLE001 - another pylibsrtp layout: the Python path only
        return None


_LIBSRTP = _libsrtp_functions()


def _srtp_t(session: Session) -> int | None:
    """The srtp_t of a pylibsrtp Session as an integer (its ``_srtp`` is an ``srtp_t *`` cdata)."""
    try:
        from pylibsrtp import _binding

        return int(_binding.ffi.cast("uintptr_t", session._srtp[0]))  # noqa: SLF001
    except Exception:  # noqa: BLE001
        return None


class SrtpContext:
    """The SRTP state of one leg: ``local_key_salt`` protects what we send, ``remote_key_salt``
    unprotects what we receive. Both are master key || master salt of ``profile``'s lengths."""

    __slots__ = ("profile", "_tx", "_rx", "_c")

    def __init__(
        self,
        profile: SrtpProfile,
        local_key_salt: bytes,
        remote_key_salt: bytes,
        *,
        replay_window: int = 1024,
    ) -> None:
        self.profile = profile
        self._tx = _session(profile, local_key_salt, Policy.SSRC_ANY_OUTBOUND, replay_window)
        self._rx = _session(profile, remote_key_salt, Policy.SSRC_ANY_INBOUND, replay_window)
        self._c: tuple[tuple[Session, int, int], tuple[Session, int, int]] | None | bool = False  # not looked up

    def c_handles(self) -> tuple[tuple[Session, int, int], tuple[Session, int, int]] | None:
        """For the C data plane (``media._relay``): ``(session, srtp_t, srtp_unprotect)`` of the inbound
        session and ``(session, srtp_t, srtp_protect)`` of the outbound one, the pointers as integers; None
        when pylibsrtp's internals are not the known ones (then only this Python path is used). Both paths
        then share one libsrtp session per direction: keys, replay window and rollover counter."""
        if self._c is False:
            rx, tx = (None, None) if _LIBSRTP is None else (_srtp_t(self._rx), _srtp_t(self._tx))
            self._c = None if rx is None or tx is None else ((self._rx, rx, _LIBSRTP[1]), (self._tx, tx, _LIBSRTP[0]))
        return self._c  # type: ignore[return-value]

    def sendto(self, transport: Any, packet: bytes, addr: tuple[str, int]) -> None:
        """Protect RTP ``packet`` and send it on ``transport``: inside the C data plane's corked batch
        (``RelayTransport.sendto_protected``) C protects it on the same libsrtp session when it goes out."""
        handles = self.c_handles()
        corked = getattr(transport, "sendto_protected", None)
        if handles is None or corked is None or not corked(packet, addr, handles[1]):
            transport.sendto(self.protect(packet), addr)

    def protect(self, packet: bytes) -> bytes:
        """RTP -> SRTP."""
        try:
            return self._tx.protect(packet)
        except pylibsrtp.Error as exc:
            raise SrtpError(f"SRTP protect failed: {exc}") from exc

    def unprotect(self, packet: bytes) -> bytes:
        """SRTP -> RTP; raises SrtpError on authentication failure or a replayed packet."""
        try:
            return self._rx.unprotect(packet)
        except pylibsrtp.Error as exc:
            raise SrtpError(f"SRTP unprotect failed: {exc}") from exc

    def protect_rtcp(self, packet: bytes) -> bytes:
        """RTCP -> SRTCP."""
        try:
            return self._tx.protect_rtcp(packet)
        except pylibsrtp.Error as exc:
            raise SrtpError(f"SRTCP protect failed: {exc}") from exc

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        """SRTCP -> RTCP; raises SrtpError on authentication failure or replay."""
        try:
            return self._rx.unprotect_rtcp(packet)
        except pylibsrtp.Error as exc:
            raise SrtpError(f"SRTCP unprotect failed: {exc}") from exc


# --------------------------------------------------------------------------------------------------
# SDES: a=crypto (RFC 4568)
# --------------------------------------------------------------------------------------------------

_KEY_PARAM = re.compile(
    r"^inline:(?P<key>[A-Za-z0-9+/=]+)(?:\|(?P<lifetime>(?:2\^)?\d+))?(?:\|(?P<mki>\d+:\d+))?$"
)


@dataclass
class CryptoAttribute:
    """One ``a=crypto:<tag> <suite> inline:<base64 key||salt>[|lifetime][|mki:len] [session params]``."""

    tag: int
    profile: SrtpProfile
    key_salt: bytes
    lifetime: str | None = None
    mki: str | None = None
    session_params: list[str] = field(default_factory=list)

    @classmethod
    def generate(cls, profile: SrtpProfile = AES128_CM_SHA1_80, tag: int = 1) -> CryptoAttribute:
        """A fresh random master key and salt for ``profile``."""
        return cls(tag, profile, secrets.token_bytes(profile.key_salt_length))

    @classmethod
    def parse(cls, value: str) -> CryptoAttribute:
        """Parse the value of an ``a=crypto`` line (without ``a=crypto:``).

        Only the first key parameter is used (several keys need MKI, which we do not support).
        """
        parts = value.split()
        if len(parts) < 3:
            raise SrtpError(f"a=crypto needs <tag> <suite> <key-params>: {value!r}")
        tag_text, suite, key_params, *session_params = parts
        if not tag_text.isdigit() or len(tag_text) > 9:
            raise SrtpError(f"a=crypto tag is not a number: {value!r}")
        profile = profile_by_name(suite)
        first_key = key_params.split(";")[0]
        match = _KEY_PARAM.match(first_key)
        if match is None:
            raise SrtpError(f"a=crypto key parameter is not inline:<base64>[|lifetime][|mki]: {value!r}")
        try:
            key_salt = base64.b64decode(match["key"], validate=True)
        except ValueError as exc:
            raise SrtpError(f"a=crypto key is not base64: {value!r}") from exc
        if len(key_salt) != profile.key_salt_length:
            raise SrtpError(
                f"a=crypto key for {profile.sdes_name} must be {profile.key_salt_length} bytes, "
                f"got {len(key_salt)}"
            )
        return cls(int(tag_text), profile, key_salt, match["lifetime"], match["mki"], session_params)

    def __str__(self) -> str:
        key = "inline:" + base64.b64encode(self.key_salt).decode("ascii")
        if self.lifetime is not None:
            key += f"|{self.lifetime}"
        if self.mki is not None:
            key += f"|{self.mki}"
        return " ".join([str(self.tag), self.profile.sdes_name, key, *self.session_params])

    @property
    def suite(self) -> str:
        return self.profile.sdes_name


def sdes_context(local: CryptoAttribute, remote: CryptoAttribute) -> SrtpContext:
    """The SrtpContext for an SDES-keyed leg: our a=crypto protects, the peer's unprotects."""
    if local.profile != remote.profile:
        raise SrtpError(f"a=crypto suites differ: {local.suite} vs {remote.suite}")
    if remote.mki is not None or local.mki is not None:
        raise SrtpError("a=crypto with MKI is not supported")
    return SrtpContext(local.profile, local.key_salt, remote.key_salt)

