"""SIP digest authentication (RFC 3261 §22, RFC 7616, RFC 8760), sans-IO.

Everything here is plain computation over header values and a caller-supplied clock (``now``, seconds since
the epoch): parsing and building ``WWW-Authenticate`` / ``Authorization`` values, the digest hash chain,
stateless HMAC-signed nonces, a bounded nonce-count replay window, Kamailio ``auth_ephemeral``-style
time-limited credentials, and the client (UAC) side.

Server use, when the user record has to be fetched asynchronously first::

    auth = DigestAuthenticator(secret, realm="example.com")
    value = request.get("Authorization")            # the whole value: never split it on commas
    if value is None:
        reply 401 with one WWW-Authenticate per auth.challenges(now)
    creds = parse_credentials(value)                # AuthError -> 400
    user = await users.get(creds.username)
    result = auth.verify_credentials(creds, request.method, user.password if user else None, now,
                                     request_uri=request.raw_uri, is_local=proxy.is_local_domain)
    if not result.ok: reply per result.reason (400 for BAD_URI / MISSING_QOP / UNSUPPORTED_QOP,
                      403 for a wrong password, else 401 with auth.challenges(now, stale=result.stale))

or, with a synchronous lookup, ``auth.verify(value, method, lookup, now)`` does all of it.

What an answer must satisfy to be accepted (RFC 7616 §3.4; the order is the order of the checks):

- realm ours, algorithm one we offered;
- ``qop=auth`` with ``nc`` and ``cnonce``: every challenge offers ``qop="auth"``, and RFC 7616 makes qop and
  cnonce mandatory, so an RFC 2069-style answer (no qop) is refused (MISSING_QOP: the caller answers 400,
  "required parameters are missing") unless the authenticator was built with ``allow_no_qop=True``;
- the digest ``uri`` designates the Request-URI (RFC 7616 §3.4.6; ``digest_uri_matches`` says what that means:
  RFC 3261 §19.1.4 comparison made lenient where real clients differ), else BAD_URI (400);
- a nonce this server signed for this realm, a right response, an unexpired nonce, and a nonce-count never
  accepted before for that nonce (REPLAYED_NC): every accepted answer passes the nonce-count tracker, a
  no-qop answer (when allowed) as a one-time use of its nonce, so no accepted answer can be replayed.

Limits: the nonce-count window lives in this process (nodes sharing a secret do not share it), and the
``auth-int`` qop and RFC 7616 ``userhash`` / ``username*`` are not offered by the server side.
"""
from __future__ import annotations

import base64
import binascii
import enum
import functools
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from .errors import SipParseError
from .uri import SipUri

__all__ = [
    "AuthError",
    "AuthReason",
    "AuthResult",
    "DigestAuthenticator",
    "DigestChallenge",
    "DigestCredentials",
    "HA1",
    "NonceCountTracker",
    "SUPPORTED_ALGORITHMS",
    "build_authorization",
    "compute_ha1",
    "digest_response",
    "digest_uri_matches",
    "ephemeral_credentials",
    "ephemeral_lookup",
    "ephemeral_password",
    "format_challenge",
    "nonce_expiry",
    "issue_nonce",
    "parse_challenge",
    "parse_credentials",
    "response_matches",
    "select_challenge",
]


class AuthError(ValueError):
    """A malformed or unusable challenge / credentials header value."""


# --------------------------------------------------------------------------------------------------------------
# Hash algorithms
# --------------------------------------------------------------------------------------------------------------


_Hasher = Callable[[bytes], "hashlib._Hash"]

try:
    hashlib.md5(b"")
    _md5: _Hasher = hashlib.md5
except ValueError:  # pragma: no cover - FIPS builds refuse MD5 unless it is flagged not-for-security
    _md5 = functools.partial(hashlib.md5, usedforsecurity=False)

# Hash constructors (called as h(data).hexdigest(), no wrapper frame: this runs three times per REGISTER).
_HASHES: dict[str, _Hasher] = {
    "MD5": _md5,
    "MD5-sess": _md5,
    "SHA-256": hashlib.sha256,
    "SHA-256-sess": hashlib.sha256,
}
try:
    hashlib.new("sha512_256", b"")
except ValueError:  # pragma: no cover - depends on the OpenSSL build
    pass
else:
    _HASHES["SHA-512-256"] = _HASHES["SHA-512-256-sess"] = functools.partial(hashlib.new, "sha512_256")

_SESS_ALGORITHMS = frozenset(name for name in _HASHES if name.endswith("-sess"))
_CANONICAL_ALGORITHM = {name.lower(): name for name in _HASHES}
#: Algorithm names this module can compute, in canonical spelling.
SUPPORTED_ALGORITHMS: tuple[str, ...] = tuple(_HASHES)


def _canonical_algorithm(name: str) -> str:
    """Canonical spelling of an algorithm name (case-insensitive); unknown names come back unchanged."""
    return _CANONICAL_ALGORITHM.get(name.lower(), name)


def _base_algorithm(algorithm: str) -> str:
    """The algorithm whose HA1 a stored credential holds (``MD5-sess`` -> ``MD5``)."""
    return algorithm[:-5] if algorithm in _SESS_ALGORITHMS else algorithm


def _hash_for(algorithm: str) -> _Hasher:
    """Hash constructor for an algorithm name (any case); AuthError if unsupported."""
    h = _HASHES.get(algorithm) or _HASHES.get(_canonical_algorithm(algorithm))
    if h is None:
        raise AuthError(f"unsupported digest algorithm {algorithm!r}")
    return h


@dataclass(frozen=True, slots=True)
class HA1:
    """A stored, pre-computed H(username:realm:password) in hex, used instead of a clear-text password."""

    hexdigest: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "hexdigest", self.hexdigest.lower())


def compute_ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """H(username:realm:password) in hex: the value to store per user, realm and base algorithm."""
    return _hash_for(algorithm)(f"{username}:{realm}:{password}".encode()).hexdigest()


def digest_response(
    algorithm: str,
    ha1: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The request-digest (``response=``) for a base HA1; handles ``-sess``, qop auth/auth-int and RFC 2069."""
    h = _HASHES.get(algorithm)
    if h is None:
        algorithm = _canonical_algorithm(algorithm)
        h = _hash_for(algorithm)
    if algorithm in _SESS_ALGORITHMS:
        ha1 = h(f"{ha1}:{nonce}:{cnonce}".encode()).hexdigest()
    if qop is None:
        ha2 = h(f"{method}:{uri}".encode()).hexdigest()
        return h(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
    if qop == "auth" or qop.lower() == "auth":
        ha2 = h(f"{method}:{uri}".encode()).hexdigest()
    elif qop.lower() == "auth-int":
        ha2 = h(f"{method}:{uri}:{h(body).hexdigest()}".encode()).hexdigest()
    else:
        raise AuthError(f"unsupported qop {qop!r}")
    return h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode()).hexdigest()


# --------------------------------------------------------------------------------------------------------------
# Header grammar: Digest <auth-param> *("," <auth-param>), auth-param = token BWS "=" BWS (token / quoted-string)
# --------------------------------------------------------------------------------------------------------------

_TCHAR = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
_LWS = r"[ \t\r\n]*"
_SCHEME_RE = re.compile(rf"{_LWS}([{_TCHAR}]+)(?:[ \t\r\n]+|\Z)")
# One auth-param per match, consuming its trailing comma; group 4 catches anything that is not a parameter.
# findall() only ever skips whitespace and commas (empty list elements), so every other byte is accounted for.
_PARAM_RE = re.compile(
    rf'[ \t\r\n]*+(?:([{_TCHAR}]++)[ \t\r\n]*+=[ \t\r\n]*+(?:"([^"\\]*+(?:\\.[^"\\]*+)*+)"|([^\s",]++))'
    rf"[ \t\r\n]*+(?:,|\Z)|([^\s,]))",
    re.S,
)
_PARAM_FINDALL = _PARAM_RE.findall
_UNESCAPE_SUB = re.compile(r"\\(.)", re.S).sub
_TOKEN_FULLMATCH = re.compile(rf"[{_TCHAR}]+").fullmatch
_HEX_FULLMATCH = re.compile(r"[0-9a-fA-F]+").fullmatch
_NC_FULLMATCH = re.compile(r"[0-9a-fA-F]{1,8}").fullmatch


def _malformed(what: str, rest: str) -> AuthError:
    """Build an AuthError pointing at the first byte of ``rest`` that is not part of a parameter."""
    for m in _PARAM_RE.finditer(rest):
        if m.group(4):
            pos = m.start(4)
            near = rest[pos : pos + 24]
            if near.startswith('"') or rest.count('"') % 2:
                hint = "unterminated quoted string or stray quote"
            else:
                hint = "expected name=value separated by commas"
            return AuthError(f"malformed Digest {what} near {near!r} (offset {pos}): {hint}")
    return AuthError(f"malformed Digest {what}")  # pragma: no cover - only called after a failed parse


_WS = " \t\r\n"


def _parse_params(rest: str, what: str) -> dict[str, str]:
    """Parse an auth-param list (lower-case names, unescaped values); AuthError when malformed."""
    found = _PARAM_FINDALL(rest)
    if "\\" in rest:
        params = {
            name.lower(): token or (_UNESCAPE_SUB(r"\1", quoted) if "\\" in quoted else quoted)
            for name, quoted, token, _ in found
        }
    else:
        params = {name.lower(): token or quoted for name, quoted, token, _ in found}
    if "" in params:  # only a junk match has no name
        raise _malformed(what, rest)
    if len(params) != len(found):
        seen: set[str] = set()
        for name, *_ in found:
            if name.lower() in seen:
                raise AuthError(f"duplicate parameter {name!r} in Digest {what}")
            seen.add(name.lower())
    return params


def _parse_digest(value: str, what: str) -> dict[str, str]:
    """Split a ``Digest k=v, ...`` value into a dict (lower-case names, unescaped values); AuthError if bad."""
    if not isinstance(value, str):
        raise AuthError(f"Digest {what} must be a str, got {type(value).__name__}")
    if value[:7].lower() == "digest " and value[7:8] not in _WS:  # the usual spelling: skip the regex
        rest = value[7:]
    else:
        m = _SCHEME_RE.match(value)
        if m is None:
            raise AuthError(f"malformed {what}: expected 'Digest name=value, ...', got {value[:40]!r}")
        scheme = m.group(1)
        if scheme.lower() != "digest":
            raise AuthError(f"unsupported authentication scheme {scheme!r} (only Digest)")
        rest = value[m.end() :]
    return _parse_params(rest, what)


def _quote(value: str) -> str:
    """quoted-string form of a value, escaping backslash and double quote."""
    if "\\" in value or '"' in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{value}"'


def _param(name: str, value: str) -> str:
    """``name=value`` for a preserved unknown parameter: bare when a token, quoted otherwise."""
    return f"{name}={value}" if _TOKEN_FULLMATCH(value) else f"{name}={_quote(value)}"


_CHALLENGE_KNOWN = frozenset(("realm", "nonce", "algorithm", "qop", "opaque", "stale", "domain"))
_CREDENTIALS_KNOWN = frozenset(
    ("username", "realm", "nonce", "uri", "response", "algorithm", "qop", "nc", "cnonce", "opaque")
)
_CREDENTIALS_REQUIRED = ("username", "realm", "nonce", "uri", "response")


@dataclass(slots=True)
class DigestChallenge:
    """A parsed ``WWW-Authenticate`` / ``Proxy-Authenticate`` Digest value."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    domain: str | None = None
    params: dict[str, str] = field(default_factory=dict)  # every parameter as received (lower-case names)

    def to_header(self) -> str:
        """Serialise back to a header value (unknown parameters preserved)."""
        parts = [f"Digest realm={_quote(self.realm)}", f"nonce={_quote(self.nonce)}"]
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.domain is not None:
            parts.append(f"domain={_quote(self.domain)}")
        parts.append(_param("algorithm", self.algorithm))
        if self.qop:
            parts.append(f"qop={_quote(','.join(self.qop))}")
        if self.stale:
            parts.append("stale=true")
        parts.extend(_param(k, v) for k, v in self.params.items() if k not in _CHALLENGE_KNOWN)
        return ", ".join(parts)


def parse_challenge(value: str) -> DigestChallenge:
    """Parse a ``WWW-Authenticate`` / ``Proxy-Authenticate`` value; AuthError when malformed."""
    p = _parse_digest(value, "challenge")
    realm = p.get("realm")
    nonce = p.get("nonce")
    if realm is None or nonce is None:
        missing = [k for k in ("realm", "nonce") if k not in p]
        raise AuthError(f"Digest challenge missing {', '.join(missing)}")
    alg = p.get("algorithm")
    qop = p.get("qop")
    return DigestChallenge(
        realm=realm,
        nonce=nonce,
        algorithm=_canonical_algorithm(alg) if alg else "MD5",
        qop=tuple(q for q in (s.strip() for s in qop.split(",")) if q) if qop else (),
        opaque=p.get("opaque"),
        stale=p.get("stale", "").lower() == "true",
        domain=p.get("domain"),
        params=p,
    )


def format_challenge(
    realm: str,
    nonce: str,
    algorithm: str = "MD5",
    qop: str | None = "auth",
    stale: bool = False,
    opaque: str | None = None,
) -> str:
    """Build one ``WWW-Authenticate`` / ``Proxy-Authenticate`` Digest value."""
    parts = [f"Digest realm={_quote(realm)}", f"nonce={_quote(nonce)}"]
    if opaque is not None:
        parts.append(f"opaque={_quote(opaque)}")
    if qop:
        parts.append(f"qop={_quote(qop)}")
    parts.append(f"algorithm={algorithm}")
    if stale:
        parts.append("stale=true")
    return ", ".join(parts)


def select_challenge(values: Iterable[str]) -> DigestChallenge | None:
    """The first parseable Digest challenge whose algorithm we support (RFC 7616 §3.7: topmost wins)."""
    for value in values:
        try:
            challenge = parse_challenge(value)
        except AuthError:
            continue
        if challenge.algorithm in _HASHES:
            return challenge
    return None


@dataclass(slots=True)
class DigestCredentials:
    """A parsed ``Authorization`` / ``Proxy-Authorization`` Digest value."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str  # lower-case hex
    algorithm: str = "MD5"  # canonical spelling when known, else as received
    qop: str | None = None
    nc: str | None = None  # verbatim (it is hashed as sent)
    cnonce: str | None = None
    opaque: str | None = None
    nc_value: int = 0  # nc as an integer; 0 when there is no qop
    params: dict[str, str] = field(default_factory=dict)  # every parameter as received (lower-case names)

    def to_header(self) -> str:
        """Serialise to an ``Authorization`` value (unknown parameters preserved)."""
        parts = [
            f"Digest username={_quote(self.username)}",
            f"realm={_quote(self.realm)}",
            f"nonce={_quote(self.nonce)}",
            f"uri={_quote(self.uri)}",
            f'response="{self.response}"',
            _param("algorithm", self.algorithm),
        ]
        if self.cnonce is not None:
            parts.append(f"cnonce={_quote(self.cnonce)}")
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.qop is not None:
            parts.append(_param("qop", self.qop))
            parts.append(_param("nc", self.nc or ""))
        parts.extend(_param(k, v) for k, v in self.params.items() if k not in _CREDENTIALS_KNOWN)
        return ", ".join(parts)


def parse_credentials(value: str) -> DigestCredentials:
    """Parse an ``Authorization`` / ``Proxy-Authorization`` value; AuthError when malformed."""
    p = _parse_digest(value, "credentials")
    get = p.get
    username = get("username")
    realm = get("realm")
    nonce = get("nonce")
    uri = get("uri")
    response = get("response")
    if username is None or realm is None or nonce is None or uri is None or response is None:
        missing = [k for k in _CREDENTIALS_REQUIRED if k not in p]
        raise AuthError(f"Digest credentials missing {', '.join(missing)}")
    if not _HEX_FULLMATCH(response):
        raise AuthError(f"Digest response is not a hex digest: {response[:70]!r}")
    alg = get("algorithm")
    algorithm = _canonical_algorithm(alg) if alg else "MD5"
    qop = get("qop")
    nc = get("nc")
    cnonce = get("cnonce")
    nc_value = 0
    if qop is not None:
        if nc is None or cnonce is None:
            raise AuthError(f"Digest credentials with qop={qop} need both nc and cnonce")
        if not _NC_FULLMATCH(nc):
            raise AuthError(f"Digest nc must be 1 to 8 hex digits, got {nc[:20]!r}")
        nc_value = int(nc, 16)
    elif algorithm in _SESS_ALGORITHMS and cnonce is None:
        raise AuthError(f"Digest algorithm {algorithm} needs a cnonce")
    return DigestCredentials(
        username, realm, nonce, uri, response.lower(), algorithm, qop, nc, cnonce, get("opaque"), nc_value, p
    )


def response_matches(credentials: DigestCredentials, method: str, secret: str | HA1, body: bytes = b"") -> bool:
    """Whether the credentials' response is right for this method and password/HA1 (no nonce checks)."""
    algorithm = credentials.algorithm
    h = _HASHES.get(algorithm)
    if h is None:
        return False
    try:
        if isinstance(secret, HA1):
            ha1 = secret.hexdigest
        else:
            ha1 = h(f"{credentials.username}:{credentials.realm}:{secret}".encode()).hexdigest()
        expected = digest_response(
            algorithm, ha1, credentials.nonce, method, credentials.uri,
            credentials.qop, credentials.nc, credentials.cnonce, body,
        )
    except ValueError:  # AuthError (qop), or text that cannot be UTF-8 encoded (lone surrogates)
        return False
    return hmac.compare_digest(expected, credentials.response)


# --------------------------------------------------------------------------------------------------------------
# Stateless nonces: base64url(expiry[8] || random[11] || HMAC-SHA256(secret, expiry || random || realm)[32])
# --------------------------------------------------------------------------------------------------------------

_NONCE_RANDOM_LEN = 11  # 8 + 11 + 32 = 51 bytes: a multiple of 3, so the base64url text has no padding
_NONCE_BODY_LEN = 8 + _NONCE_RANDOM_LEN
_NONCE_RAW_LEN = _NONCE_BODY_LEN + 32
_NONCE_TEXT_LEN = _NONCE_RAW_LEN // 3 * 4
_B64URL_TO_STD = bytes.maketrans(b"-_+/", b"+/!!")  # '+' and '/' are not base64url: make them invalid too
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_a2b_base64 = binascii.a2b_base64
_hmac_digest = hmac.digest
_compare_digest = hmac.compare_digest


class _NonceCodec:
    """Signs and checks nonces for one secret and realm; HMAC-SHA256 with the key pads hashed once (2x faster)."""

    __slots__ = ("_inner", "_outer", "_realm")

    def __init__(self, secret: bytes, realm: str | bytes) -> None:
        key = secret if len(secret) <= 64 else hashlib.sha256(secret).digest()
        key = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))
        self._realm = realm if isinstance(realm, bytes) else realm.encode()

    def mac(self, body: bytes) -> bytes:
        """HMAC-SHA256(secret, body || realm)."""
        inner = self._inner.copy()
        inner.update(body)
        inner.update(self._realm)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def issue(self, expiry: int, random: bytes) -> str:
        """The nonce text for an expiry (seconds since the epoch) and _NONCE_RANDOM_LEN random bytes."""
        if len(random) != _NONCE_RANDOM_LEN:
            raise ValueError(f"nonce randomness must be {_NONCE_RANDOM_LEN} bytes")
        body = int(expiry).to_bytes(8, "big") + random
        return base64.urlsafe_b64encode(body + self.mac(body)).decode("ascii")

    def expiry(self, nonce: str) -> int | None:
        """The signed expiry carried by a nonce, or None when it is not one of ours (malformed or tampered)."""
        if len(nonce) != _NONCE_TEXT_LEN:
            return None
        try:
            raw = _a2b_base64(nonce.encode().translate(_B64URL_TO_STD), strict_mode=True)
        except ValueError:  # binascii.Error, or a lone surrogate that cannot be encoded
            return None
        if len(raw) != _NONCE_RAW_LEN:
            return None
        if not _compare_digest(raw[_NONCE_BODY_LEN:], self.mac(raw[:_NONCE_BODY_LEN])):
            return None
        return int.from_bytes(raw[:8], "big")


def issue_nonce(secret: bytes, realm: str, expiry: int, random: bytes | None = None) -> str:
    """A self-validating nonce carrying its expiry, signed over the realm, so the server keeps no per-nonce state."""
    return _NonceCodec(secret, realm).issue(expiry, os.urandom(_NONCE_RANDOM_LEN) if random is None else random)


def nonce_expiry(secret: bytes, realm: str | bytes, nonce: str) -> int | None:
    """The signed expiry of a nonce issued for this realm, or None if it is not one of ours (or tampered)."""
    return _NonceCodec(secret, realm).expiry(nonce)


class NonceCountTracker:
    """Highest nc seen per nonce, in a size-capped LRU, so a replayed (nonce, nc) is refused in bounded memory.

    When a still-valid nonce has to be evicted for room, its expiry raises a watermark: any unknown nonce that
    expires no later than the watermark may have been seen before and is refused (the client then gets a fresh
    challenge with stale=true), so eviction can never reopen a replay window.
    """

    __slots__ = ("_entries", "_max_entries", "_evicted_until")

    def __init__(self, max_entries: int = 65536) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        # nonce -> (last nc, expiry): tuples of ints, which the cyclic GC stops tracking, so a full window of
        # nonces (200 registrations/s keep ~60,000) adds nothing to what a collection has to walk
        self._entries: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._max_entries = max_entries
        self._evicted_until = -1

    def __len__(self) -> int:
        return len(self._entries)

    def accept(self, nonce: str, nc: int, expiry: int, now: float) -> bool:
        """Record nc for nonce and return True if it is strictly greater than any nc seen before for it."""
        entries = self._entries
        entry = entries.get(nonce)
        if entry is not None:
            if nc <= entry[0]:
                return False
            entries[nonce] = (nc, entry[1])
            entries.move_to_end(nonce)
            return True
        if expiry <= self._evicted_until:
            return False
        # Drop expired entries from the least-recently-used end, then make room if still full.
        while entries:
            oldest = next(iter(entries))
            if entries[oldest][1] >= now:
                break
            del entries[oldest]
        if len(entries) >= self._max_entries:
            _, (_, evicted_expiry) = entries.popitem(last=False)
            if evicted_expiry > self._evicted_until:
                self._evicted_until = evicted_expiry
        entries[nonce] = (nc, expiry)
        return True


# --------------------------------------------------------------------------------------------------------------
# The digest uri against the Request-URI (RFC 7616 §3.4.6, RFC 3261 §19.1.4)
# --------------------------------------------------------------------------------------------------------------

#: Escapes that stay escapes when URIs are compared: the reserved set of RFC 3261 §19.1.4, and '%' itself.
_KEEP_ESCAPED = frozenset(";/?:@&=+$,%")
_ESCAPE_SUB = re.compile(r"%([0-9A-Fa-f]{2})").sub
#: uri-parameters that must be on both sides or neither (§19.1.4 names user, ttl, method and maddr; transport
#: too, as in its examples: "can resolve to different transports").
_ONE_SIDED_NEVER_MATCHES = ("user", "ttl", "method", "maddr", "transport")


def _escape_to_char(m: re.Match[str]) -> str:
    c = chr(int(m.group(1), 16))
    if c in _KEEP_ESCAPED or not " " < c < "\x7f":
        return "%" + m.group(1).upper()
    return c


def _canonical_escapes(text: str) -> str:
    """``text`` with every %HH escape of an unreserved printable character decoded and the others upper-cased:
    two spellings of a component are equivalent (§19.1.4) exactly when their canonical forms are equal."""
    return _ESCAPE_SUB(_escape_to_char, text) if "%" in text else text


def _canonical_host(host: str) -> str:
    """Host for comparison: case-folded; an IPv6 reference in its compressed form ([0:0::1] is [::1])."""
    host = host.lower()
    if host.startswith("["):
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            return host
    return host


def _effective_port(uri: SipUri) -> int:
    """The port a URI designates: explicit, else 5061 for sips: or ;transport=tls, else 5060."""
    if uri.port is not None:
        return uri.port
    if uri.scheme == "sips" or (uri.params.get("transport") or "").lower() == "tls":
        return 5061
    return 5060


def _canonical_value(value: str | None) -> str:
    return _canonical_escapes(value).lower() if value else ""


def _same_sip_uri(a: SipUri, b: SipUri) -> bool:
    """RFC 3261 §19.1.4 equivalence of two sip:/sips: URIs, except that an explicit default port (5060, or 5061
    for sips: / TLS) equals an absent one: "sip:example.com" and "sip:example.com:5060" reach the same server,
    and clients disagree on spelling it (the RFC itself calls them different because an SRV lookup could pick
    another port for the portless one; our own domain is what is compared here, so that cannot apply).

    Scheme, user, password, host, port, the parameters present on both sides, the parameters that must not be
    one-sided, and the headers are compared; user and password case-sensitively, everything else not; %HH
    escapes of unreserved characters equal the characters.
    """
    if a.scheme != b.scheme:
        return False
    if a.user != b.user and (a.user is None or b.user is None
                             or _canonical_escapes(a.user) != _canonical_escapes(b.user)):
        return False
    if a.password != b.password and (a.password is None or b.password is None
                                     or _canonical_escapes(a.password) != _canonical_escapes(b.password)):
        return False
    if _canonical_host(a.host) != _canonical_host(b.host) or _effective_port(a) != _effective_port(b):
        return False
    pa, pb = a.params, b.params
    for name in _ONE_SIDED_NEVER_MATCHES:
        if (name in pa) != (name in pb):
            return False
    for name in pa.keys() & pb.keys():
        if _canonical_value(pa[name]) != _canonical_value(pb[name]):
            return False
    if a.headers or b.headers:
        ha = {k.lower(): _canonical_escapes(v) for k, v in a.headers.items()}
        hb = {k.lower(): _canonical_escapes(v) for k, v in b.headers.items()}
        if ha != hb:
            return False
    return True


def digest_uri_matches(
    digest_uri: str,
    request_uri: str | SipUri,
    is_local: Callable[[SipUri], bool] | None = None,
) -> bool:
    """Whether a digest ``uri`` parameter designates the same resource as the Request-URI (RFC 7616 §3.4.6).

    Most clients (baresip, JsSIP, Linphone, Yealink and other desk phones) copy the Request-URI verbatim, which
    is the first, string-equality test. Otherwise the two match when:

    1. they are equivalent by RFC 3261 §19.1.4 (see ``_same_sip_uri``): differences of case in scheme/host,
       escaping, parameters present on one side only (other than user/ttl/method/maddr/transport), and an
       explicit default port against none, are all the same resource; or, when ``is_local`` (does this URI
       designate this server? the proxy's ``is_local_domain``) is given and both URIs designate this server
       with the same scheme:
    2. the digest uri has no user part: the server itself, which is what SIPp's ``[authentication]`` signs
       (``sip:REMOTE_IP:REMOTE_PORT``, whatever the Request-URI: a REGISTER to ``sip:example.com`` or an INVITE
       to ``sip:bob@host:port``); or
    3. both name the same user: the Request-URI was moved from one of this server's names to another (an
       upstream proxy rewriting the host, as Kamailio's dispatcher ``ds_select_domain`` does, or a client that
       signs our domain while sending to our address). The proxy routes both alike, so they are one resource.

    A different user, a foreign host, or another scheme never match. Unparseable or non-SIP URIs (tel:) match
    only when equal ignoring case and equivalent escapes.

    Kamailio's auth module, the reference for rewritten Request-URIs, never compares the two at all (its README,
    auth_checks_*: checking the uri "would not work if an upstream proxy rewrites the uri and it will also not
    work with a lot of UA implementations"; it can bind the nonce to the Request-URI instead). callpath checks,
    as RFC 7616 requires, and accepts of a rewrite only what keeps the resource (3.): a rewrite to another user
    or another domain is refused, since a Via header that would show an upstream proxy can be forged by anyone.
    """
    if isinstance(request_uri, str):
        if digest_uri == request_uri:
            return True
        try:
            target = SipUri.parse(request_uri, strict=False)
        except SipParseError:
            return False
    else:
        target = request_uri
        if digest_uri == str(target):
            return True
    try:
        signed = SipUri.parse(digest_uri, strict=False)
    except SipParseError:
        return False
    if signed.scheme not in ("sip", "sips") or target.scheme not in ("sip", "sips"):
        return signed.scheme == target.scheme and (
            _canonical_escapes(str(signed)).lower() == _canonical_escapes(str(target)).lower())
    if _same_sip_uri(signed, target):
        return True
    if is_local is None or signed.scheme != target.scheme or not (is_local(signed) and is_local(target)):
        return False
    if signed.user is None:
        return True
    return target.user is not None and _canonical_escapes(signed.user) == _canonical_escapes(target.user)


# --------------------------------------------------------------------------------------------------------------
# Server side
# --------------------------------------------------------------------------------------------------------------


class AuthReason(enum.StrEnum):
    """Why a verification succeeded or failed (the caller maps these to 401/403/400)."""

    OK = "ok"
    NO_CREDENTIALS = "no credentials"
    MALFORMED = "malformed credentials"
    WRONG_REALM = "wrong realm"
    UNSUPPORTED_ALGORITHM = "unsupported algorithm"
    UNSUPPORTED_QOP = "unsupported qop"
    MISSING_QOP = "no qop in the answer to a qop challenge"
    BAD_URI = "digest uri does not match the request-uri"
    BAD_NONCE = "nonce not issued by this server"
    UNKNOWN_USER = "unknown user"
    BAD_RESPONSE = "bad response"
    STALE_NONCE = "stale nonce"
    REPLAYED_NC = "replayed nonce count"


@dataclass(slots=True)
class AuthResult:
    """Outcome of verifying credentials: ok, the reason, and the (claimed or authenticated) username."""

    ok: bool
    reason: AuthReason
    username: str | None = None
    credentials: DigestCredentials | None = None
    detail: str = ""

    @property
    def stale(self) -> bool:
        """True when the password was right but the nonce is spent: re-challenge with stale=true."""
        return self.reason is AuthReason.STALE_NONCE or self.reason is AuthReason.REPLAYED_NC


Secret = str | HA1
Lookup = Callable[[str, str, str], "str | HA1 | None"]
#: The nonce-count recorded for an accepted answer without qop: above any nc (8 hex digits), so it closes the nonce.
_NONCE_SPENT = 1 << 32


class DigestAuthenticator:
    """Issues Digest challenges and verifies credentials for one realm, with stateless signed nonces.

    ``algorithms`` is the challenge order: many clients answer only the first challenge and only MD5, so MD5 goes
    first by default. ``-sess`` variants are accepted only when listed.

    Every challenge offers ``qop="auth"``, so an answer without qop (RFC 2069 style) is refused with MISSING_QOP:
    RFC 7616 makes qop, nc and cnonce mandatory, and such an answer carries no nonce-count to protect it from
    replay. ``allow_no_qop=True`` accepts it for a legacy client, once per nonce (a second use is
    REPLAYED_NC), which makes it as replay-safe as a counted answer at the price of a challenge per request.
    """

    __slots__ = (
        "realm", "algorithms", "nonce_ttl", "allow_no_qop", "tracker",
        "_nonces", "_allowed", "_parts", "_random",
    )

    def __init__(
        self,
        secret: bytes,
        realm: str,
        algorithms: Sequence[str] = ("MD5",),
        nonce_ttl: int = 300,
        *,
        allow_no_qop: bool = False,
        max_tracked_nonces: int = 65536,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not isinstance(secret, bytes) or not secret:
            raise ValueError("secret must be non-empty bytes")
        if nonce_ttl <= 0:
            raise ValueError("nonce_ttl must be positive")
        canonical = []
        for name in algorithms:
            alg = _canonical_algorithm(name)
            if alg not in _HASHES:
                raise ValueError(f"unsupported digest algorithm {name!r}; supported: {', '.join(_HASHES)}")
            if alg not in canonical:
                canonical.append(alg)
        if not canonical:
            raise ValueError("at least one algorithm is required")
        self.realm = realm
        self.algorithms: tuple[str, ...] = tuple(canonical)
        self.nonce_ttl = int(nonce_ttl)
        self.allow_no_qop = allow_no_qop
        self.tracker = NonceCountTracker(max_tracked_nonces)
        self._nonces = _NonceCodec(secret, realm)
        self._allowed = frozenset(canonical)
        self._random = random_bytes
        self._parts = tuple(
            (f'Digest realm={_quote(realm)}, nonce="', f'", qop="auth", algorithm={alg}') for alg in canonical
        )

    def new_nonce(self, now: float) -> str:
        """A fresh signed nonce valid until now + nonce_ttl."""
        return self._nonces.issue(int(now) + self.nonce_ttl, self._random(_NONCE_RANDOM_LEN))

    def challenges(self, now: float, stale: bool = False) -> list[str]:
        """One ``WWW-Authenticate`` / ``Proxy-Authenticate`` value per algorithm, in configured order."""
        nonce = self.new_nonce(now)
        if stale:
            return [f"{head}{nonce}{tail}, stale=true" for head, tail in self._parts]
        return [f"{head}{nonce}{tail}" for head, tail in self._parts]

    def verify(
        self,
        credentials_value: str | None,
        method: str,
        lookup: Lookup,
        now: float,
        *,
        request_uri: str | SipUri | None = None,
        is_local: Callable[[SipUri], bool] | None = None,
    ) -> AuthResult:
        """Parse and verify an ``Authorization`` value; ``lookup(username, realm, base_algorithm)`` gives the
        password (str), an HA1, or None for an unknown user. Never raises for bad input: see ``AuthResult.reason``.

        ``request_uri`` (the Request-URI as the client sent it) is what the digest ``uri`` must designate, with
        ``is_local`` telling which URIs name this server (see ``digest_uri_matches``); None skips that check."""
        if not credentials_value:
            return AuthResult(False, AuthReason.NO_CREDENTIALS)
        try:
            creds = parse_credentials(credentials_value)
        except AuthError as exc:
            return AuthResult(False, AuthReason.MALFORMED, detail=str(exc))
        early = self.precheck(creds, request_uri, is_local)
        if early is not None:
            return early
        expiry = self._nonces.expiry(creds.nonce)
        if expiry is None:  # checked before the lookup: a forged nonce costs no user-record fetch
            return AuthResult(False, AuthReason.BAD_NONCE, creds.username, creds)
        secret = lookup(creds.username, creds.realm, _base_algorithm(creds.algorithm))
        return self._check(creds, method, secret, expiry, now)

    def verify_credentials(
        self,
        credentials: DigestCredentials,
        method: str,
        secret: Secret | None,
        now: float,
        *,
        request_uri: str | SipUri | None = None,
        is_local: Callable[[SipUri], bool] | None = None,
    ) -> AuthResult:
        """Verify already-parsed credentials against the stored password / HA1 (None: unknown user);
        ``request_uri`` and ``is_local`` as for ``verify``."""
        early = self.precheck(credentials, request_uri, is_local)
        if early is not None:
            return early
        expiry = self._nonces.expiry(credentials.nonce)
        if expiry is None:
            return AuthResult(False, AuthReason.BAD_NONCE, credentials.username, credentials)
        return self._check(credentials, method, secret, expiry, now)

    def precheck(
        self, creds: DigestCredentials, request_uri: str | SipUri | None, is_local: Callable[[SipUri], bool] | None
    ) -> AuthResult | None:
        """The checks that need no user record (realm, algorithm, qop, digest uri): None when they pass, else the
        failure. ``verify``/``verify_credentials`` run them first; a caller whose user lookup is costly (async)
        can run them before it, so a request refused anyway costs no lookup."""
        if creds.realm != self.realm:
            return AuthResult(False, AuthReason.WRONG_REALM, creds.username, creds, f"realm {creds.realm!r}")
        if creds.algorithm not in self._allowed:
            return AuthResult(False, AuthReason.UNSUPPORTED_ALGORITHM, creds.username, creds, creds.algorithm)
        qop = creds.qop
        if qop is None:
            if not self.allow_no_qop:
                return AuthResult(False, AuthReason.MISSING_QOP, creds.username, creds, "qop=auth was offered")
        elif qop != "auth" and qop.lower() != "auth":
            return AuthResult(False, AuthReason.UNSUPPORTED_QOP, creds.username, creds, f"qop={qop}")
        if request_uri is not None:
            uri = creds.uri
            if uri != (request_uri if request_uri.__class__ is str else str(request_uri)) and (
                    not digest_uri_matches(uri, request_uri, is_local)):
                return AuthResult(False, AuthReason.BAD_URI, creds.username, creds,
                                  f"uri {uri!r} for Request-URI {str(request_uri)!r}")
        return None

    def _check(
        self, creds: DigestCredentials, method: str, secret: Secret | None, expiry: int, now: float
    ) -> AuthResult:
        """Response, then nonce expiry and nc: stale is only ever reported alongside a correct response.

        Every answer that gets this far passes the nonce-count tracker, so none can be accepted twice; one
        without qop (only when ``allow_no_qop``) counts as _NONCE_SPENT, above any 8-hex-digit nc: it is the
        nonce's last use."""
        if secret is None:
            return AuthResult(False, AuthReason.UNKNOWN_USER, creds.username, creds)
        if not response_matches(creds, method, secret):
            return AuthResult(False, AuthReason.BAD_RESPONSE, creds.username, creds)
        if now > expiry:
            return AuthResult(False, AuthReason.STALE_NONCE, creds.username, creds)
        nc = creds.nc_value if creds.qop is not None else _NONCE_SPENT
        if not self.tracker.accept(creds.nonce, nc, expiry, now):
            return AuthResult(False, AuthReason.REPLAYED_NC, creds.username, creds, f"nc={creds.nc}")
        return AuthResult(True, AuthReason.OK, creds.username, creds)


# --------------------------------------------------------------------------------------------------------------
# Time-limited credentials (Kamailio auth_ephemeral, username_format=1): "<expiry>:<user>", base64(HMAC-SHA1)
# --------------------------------------------------------------------------------------------------------------


def _ephemeral_key(secret: bytes | str) -> bytes:
    """The shared secret as bytes."""
    return secret.encode() if isinstance(secret, str) else secret


def ephemeral_credentials(secret: bytes | str, user: str, ttl: int, now: float) -> tuple[str, str]:
    """(username, password) for a browser agent, valid until now + ttl; any holder of the secret can check them."""
    username = f"{int(now) + int(ttl)}:{user}"
    return username, base64.b64encode(_hmac_digest(_ephemeral_key(secret), username.encode(), "sha1")).decode()


def ephemeral_password(secret: bytes | str, username: str, now: float) -> str | None:
    """The password an ``<expiry>:<user>`` username must have been issued with, or None if expired/malformed."""
    expiry_text, sep, user = username.partition(":")
    if not sep or not user or not expiry_text.isascii() or not expiry_text.isdigit():
        return None
    if now > int(expiry_text):
        return None
    return base64.b64encode(_hmac_digest(_ephemeral_key(secret), username.encode(), "sha1")).decode()


def ephemeral_lookup(secret: bytes | str, now: float) -> Callable[[str, str, str], str | None]:
    """A ``DigestAuthenticator.verify`` lookup that accepts ephemeral usernames (and nothing else)."""
    key = _ephemeral_key(secret)

    def lookup(username: str, realm: str, algorithm: str) -> str | None:
        return ephemeral_password(key, username, now)

    return lookup


# --------------------------------------------------------------------------------------------------------------
# Client side (callpath as a UAC toward trunks)
# --------------------------------------------------------------------------------------------------------------


def build_authorization(
    challenge_value: str | DigestChallenge,
    method: str,
    uri: str,
    username: str,
    password: str | HA1,
    cnonce: str | None = None,
    nc: int | str = 1,
    *,
    body: bytes = b"",
) -> str:
    """``Authorization`` / ``Proxy-Authorization`` value answering a challenge (qop auth, auth-int or none).

    ``cnonce`` None draws a random one; pass it (and nc) explicitly for reproducible output.
    """
    ch = challenge_value if isinstance(challenge_value, DigestChallenge) else parse_challenge(challenge_value)
    algorithm = _canonical_algorithm(ch.algorithm)
    h = _hash_for(algorithm)
    qop: str | None = None
    if ch.qop:
        offered = [q.lower() for q in ch.qop]
        if "auth" in offered:
            qop = "auth"
        elif "auth-int" in offered:
            qop = "auth-int"
        else:
            raise AuthError(f"no supported qop in challenge (offered {', '.join(ch.qop)})")
    uses_cnonce = qop is not None or algorithm in _SESS_ALGORITHMS
    if uses_cnonce and cnonce is None:
        cnonce = secrets.token_hex(8)
    nc_text = (nc if isinstance(nc, str) else f"{nc:08x}") if qop is not None else None
    if isinstance(password, HA1):
        ha1 = password.hexdigest
    else:
        ha1 = h(f"{username}:{ch.realm}:{password}".encode()).hexdigest()
    response = digest_response(
        algorithm, ha1, ch.nonce, method, uri, qop, nc_text, cnonce if uses_cnonce else None, body
    )
    return DigestCredentials(
        username=username,
        realm=ch.realm,
        nonce=ch.nonce,
        uri=uri,
        response=response,
        algorithm=algorithm,
        qop=qop,
        nc=nc_text,
        cnonce=cnonce if uses_cnonce else None,
        opaque=ch.opaque,
    ).to_header()
