"""SIP URIs (RFC 3261 §19.1) and the name-addr form used by From/To/Contact/Route (§20).

Parsing keeps the raw user part and parameter values as received so that a proxy forwards
exactly what it got; comparison helpers apply the RFC's equivalence rules where they matter.
"""
from __future__ import annotations

import functools
import ipaddress

from typing import Iterator

from .errors import SipParseError

import re

_SCHEMES = ("sip", "sips", "tel")
_DISPLAY_TOKENS = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~ \t]+$")  # an unquoted display-name is tokens and LWS
_PARAM_NAME = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")  # a parameter name is a token (RFC 3261 §25.1)
# RFC 3261 hostname (alphanumerics, '-', '.'; '_' tolerated as many resolvers do) or IPv4; nothing a
# resolver or a socket call could choke on (NUL, spaces, non-ASCII) gets through.
# Common parameter names, accepted without the regular expression.
_PARAM_NAMES = frozenset({"branch", "rport", "received", "maddr", "ttl", "tag", "lr", "transport", "expires", "q",
                          "user", "method", "ob", "reg-id", "+sip.instance", "alias", "keep", "cpflow"})
_HOSTNAME = re.compile(r"[A-Za-z0-9_\-.]+\Z")
_IPV6_REF = re.compile(r"\[[0-9A-Fa-f:.]+\]\Z")

# Parse caches for values that repeat (a server talks to few peers: the same host:port, Route, To, Request-URI
# and its own Via in every response of a transaction). Only successful parses of short texts are kept, each
# cache is cleared when it reaches _CACHE_MAX entries (bounded under a flood of unique values), and what
# a cache hands out is immutable (tuples, SipUri by contract) or a fresh copy (NameAddr, Via: see there).
_CACHE_MAX = 512
_CACHE_TEXT_MAX = 200


def remember(cache: dict, text: str, value: object) -> None:
    """Keep `value` for `text` in one of the bounded parse caches (emptied when full; long texts not kept)."""
    if len(text) <= _CACHE_TEXT_MAX:
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[text] = value
_HOSTPORT_CACHE: dict[str, tuple[str, int | None]] = {}
_URI_CACHE: dict[str, "SipUri"] = {}
_NAME_ADDR_CACHE: dict[str, tuple] = {}


def split_quoted(text: str, sep: str) -> Iterator[str]:
    """Split on `sep` outside double quotes and <...>; quoted-pair escapes honoured."""
    if sep not in text:
        yield text
        return
    start = 0
    in_q = False
    in_a = False
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if in_q:
            if c == "\\":
                i += 1
            elif c == '"':
                in_q = False
        elif c == '"':
            in_q = True
        elif c == "<":
            in_a = True
        elif c == ">":
            in_a = False
        elif c == sep and not in_a:
            yield text[start:i]
            start = i + 1
        i += 1
    if in_q:
        raise SipParseError("unbalanced quotes")
    yield text[start:]


def parse_params(text: str, strict: bool = False) -> dict[str, str | None]:
    """Parse `;a=b;c` into {'a': 'b', 'c': None}; names lower-cased, values kept as received.

    strict=True is for header parameters (Via, From/To/Contact/Route after the address): an empty
    parameter (`;;`, a trailing `;`) or a name that is not a token is a syntax error (RFC 3261 §25.1
    `*( SEMI generic-param )`, RFC 4475 §3.1.2.1). URI parameters stay lenient (liberal in what is accepted
    where nothing is lost by it)."""
    params: dict[str, str | None] = {}
    if not text:
        if strict:
            raise SipParseError("empty parameter")
        return params
    for part in (split_quoted(text, ";") if '"' in text else text.split(";")):
        part = part.strip()
        if not part:
            if strict:
                raise SipParseError(f"empty parameter in {text[:80]!r}")
            continue
        eq = part.find("=")
        if eq < 0:
            name = part
            value: str | None = None
        else:
            name = part[:eq].strip()
            if not name:
                raise SipParseError(f"parameter without a name: {part[:80]!r}")
            value = part[eq + 1 :].strip()
        if strict and name not in _PARAM_NAMES and _PARAM_NAME.match(name) is None:
            raise SipParseError(f"bad parameter name: {name[:80]!r}")
        params[name.lower()] = value
    return params


def format_params(params: dict[str, str | None]) -> str:
    """Inverse of parse_params: ';a=b;c'."""
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def split_hostport(text: str) -> tuple[str, int | None]:
    """Split 'host', 'host:port', '[v6]' or '[v6]:port'; the IPv6 brackets are kept on the host (cached)."""
    hp = _HOSTPORT_CACHE.get(text)
    if hp is None:
        hp = _split_hostport(text)
        remember(_HOSTPORT_CACHE, text, hp)
    return hp


def _split_hostport(text: str) -> tuple[str, int | None]:
    """split_hostport without the cache (the reference)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipParseError(f"bad IPv6 reference: {text!r}")
        host = text[: end + 1]
        if _IPV6_REF.match(host) is None:
            raise SipParseError(f"bad IPv6 reference: {text[:80]!r}")
        rest = text[end + 1 :]
        if not rest:
            return host, None
        if rest[0] != ":":
            raise SipParseError(f"bad host:port: {text!r}")
        port_s = rest[1:]
    else:
        colon = text.rfind(":")
        if colon < 0:
            host = text
            port_s = ""
        else:
            host, port_s = text[:colon], text[colon + 1 :]
        if _HOSTNAME.match(host) is None:
            raise SipParseError(f"bad host: {text[:80]!r}")
        if not port_s:
            if colon >= 0:
                raise SipParseError(f"empty port: {text!r}")
            return host, None
    if not is_digits(port_s) or len(port_s) > 5 or int(port_s) > 65535:
        raise SipParseError(f"bad port in {text!r}")
    return host, int(port_s)


def _unescape(text: str) -> str:
    """%HH-decode for URI comparison (RFC 3261 §19.1.4)."""
    if "%" not in text:
        return text
    from urllib.parse import unquote as _pct

    return _pct(text, errors="surrogateescape")


def format_host(host: str) -> str:
    """Bracket a bare IPv6 address for use in a URI or Via."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


@functools.lru_cache(maxsize=4096)
def is_ip_literal(host: str) -> bool:
    """Whether `host` is an IPv4/IPv6 address, brackets allowed (cached: a server talks to few peers, and
    ipaddress.ip_address costs ~2 us)."""
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def is_digits(text: str) -> bool:
    """ASCII digits only (str.isdigit() also accepts '²' and other scripts' digits)."""
    return text.isascii() and text.isdigit()


class SipUri:
    """A sip:, sips: or tel: URI (or, leniently, any absolute URI in From/To/Contact).

    Parsed URIs keep their text for serialisation: treat them as immutable and `copy()` before
    changing a component (the copy is serialised from its components).
    """

    __slots__ = ("scheme", "user", "password", "host", "port", "params", "headers", "opaque", "_str")

    def __init__(
        self,
        scheme: str = "sip",
        user: str | None = None,
        host: str = "",
        port: int | None = None,
        params: dict[str, str | None] | None = None,
        headers: dict[str, str] | None = None,
        password: str | None = None,
    ) -> None:
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params = params if params is not None else {}
        self.headers = headers if headers is not None else {}
        self.opaque: str | None = None
        self._str: str | None = None

    @classmethod
    def parse(cls, text: str, strict: bool = True) -> "SipUri":
        """Parse a URI; SipParseError (416) for schemes other than sip/sips/tel unless strict=False.

        sip/sips/tel URIs are cached by their text and shared: treat them as immutable (`copy()` first)."""
        uri = _URI_CACHE.get(text)
        if uri is None:
            uri = cls._parse(text, strict)
            if uri.opaque is None:  # the result does not depend on strict
                remember(_URI_CACHE, text, uri)
        return uri

    @classmethod
    def _parse(cls, text: str, strict: bool = True) -> "SipUri":
        """SipUri.parse without the cache (the reference)."""
        text = text.strip()
        colon = text.find(":")
        if colon <= 0:
            raise SipParseError(f"not a URI: {text!r}")
        scheme = text[:colon].lower()
        rest = text[colon + 1 :]
        if " " in rest or "\t" in rest:
            raise SipParseError(f"whitespace in URI {text!r}")
        uri = cls.__new__(cls)
        uri.scheme = scheme
        uri._str = text if text[:colon] == scheme else None
        uri.headers = {}
        uri.opaque = None
        uri.password = None
        uri.port = None
        if scheme not in _SCHEMES:
            if not scheme[0].isalpha() or not scheme.replace("+", "").replace("-", "").replace(".", "").isalnum():
                raise SipParseError(f"bad URI scheme in {text!r}")
            if strict:
                raise SipParseError(f"unsupported URI scheme {scheme!r}", status=416)
            uri.user = None
            uri.host = ""
            uri.params = {}
            uri.opaque = rest
            uri._str = text
            return uri
        if scheme == "tel":
            semi = rest.find(";")
            uri.user = rest if semi < 0 else rest[:semi]
            uri.host = ""
            uri.params = parse_params(rest[semi + 1 :]) if semi >= 0 else {}
            return uri
        # userinfo may hold '?' and ';' (RFC 3261 user-unreserved) but never '@': split on the last '@' first
        at = rest.rfind("@")
        if at >= 0:
            userinfo = rest[:at]
            rest = rest[at + 1 :]
            pc = userinfo.find(":")
            if pc >= 0:
                uri.user, uri.password = userinfo[:pc], userinfo[pc + 1 :]
            else:
                uri.user = userinfo
            if not uri.user:
                raise SipParseError(f"empty user part in {text!r}")
        else:
            uri.user = None
        q = rest.find("?")
        if q >= 0:
            for item in rest[q + 1 :].split("&"):
                if item:
                    k, _, v = item.partition("=")
                    uri.headers[k] = v
            rest = rest[:q]
        semi = rest.find(";")
        if semi >= 0:
            uri.params = parse_params(rest[semi + 1 :])
            rest = rest[:semi]
        else:
            uri.params = {}
        uri.host, uri.port = split_hostport(rest)
        return uri

    def copy(self) -> "SipUri":
        """A copy that can be modified without touching this URI."""
        c = SipUri(self.scheme, self.user, self.host, self.port, dict(self.params), dict(self.headers), self.password)
        c.opaque = self.opaque
        if self.opaque is not None:
            c._str = self._str
        return c

    def __str__(self) -> str:
        s = self._str
        if s is None:
            if self.scheme == "tel":
                s = f"tel:{self.user}{format_params(self.params)}"
            else:
                parts = [self.scheme, ":"]
                if self.user is not None:
                    parts.append(self.user)
                    if self.password is not None:
                        parts.append(":" + self.password)
                    parts.append("@")
                parts.append(format_host(self.host))
                if self.port is not None:
                    parts.append(f":{self.port}")
                if self.params:
                    parts.append(format_params(self.params))
                if self.headers:
                    parts.append("?" + "&".join(f"{k}={v}" for k, v in self.headers.items()))
                s = "".join(parts)
        return s

    def __repr__(self) -> str:
        return f"SipUri({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        """RFC 3261 §19.1.4 comparison (the parts a proxy relies on)."""
        if not isinstance(other, SipUri):
            return NotImplemented
        if self.opaque is not None or other.opaque is not None:
            return str(self) == str(other)
        if self.scheme != other.scheme or self.password != other.password:
            return False
        if self.user != other.user and (self.user is None or other.user is None
                                         or _unescape(self.user) != _unescape(other.user)):
            return False
        if self.host.lower() != other.host.lower() or self.port != other.port:
            return False
        for key in ("user", "ttl", "method", "maddr", "transport"):
            a, b = self.params.get(key), other.params.get(key)
            if (a is None) != (b is None) or (a is not None and b is not None and a.lower() != b.lower()):
                return False
        for key in self.params.keys() & other.params.keys():
            a, b = self.params[key], other.params[key]
            if (a or "").lower() != (b or "").lower():
                return False
        return self.headers == other.headers

    def __hash__(self) -> int:
        return hash((self.scheme, _unescape(self.user) if self.user else None, self.host.lower(), self.port))

    @property
    def transport(self) -> str:
        """Transport named by ;transport=, default udp (sips: implies tls)."""
        t = self.params.get("transport")
        if t:
            return t.lower()
        return "tls" if self.scheme == "sips" else "udp"

    @property
    def aor(self) -> str:
        """The address-of-record form: scheme:user@host, no port or params, lower-case host."""
        if self.user is None:
            return f"{self.scheme}:{self.host.lower()}"
        return f"{self.scheme}:{self.user}@{self.host.lower()}"


class NameAddr:
    """`"Display" <uri>;params` or `uri;params` (From, To, Contact, Route, Record-Route, Path)."""

    __slots__ = ("display", "uri", "params", "_raw")

    def __init__(self, uri: SipUri, display: str | None = None, params: dict[str, str | None] | None = None) -> None:
        self.uri = uri
        self.display = display
        self.params = params if params is not None else {}
        self._raw: str | None = None

    @classmethod
    def parse(cls, text: str) -> "NameAddr":
        """Parse name-addr or addr-spec with header params; raises SipParseError.

        Cached by text: each call returns a new NameAddr (its own params dict) sharing the immutable SipUri."""
        hit = _NAME_ADDR_CACHE.get(text)
        if hit is None:
            na = cls._parse(text)
            remember(_NAME_ADDR_CACHE, text, (na.uri, na.display, dict(na.params)))
            return na
        na = cls.__new__(cls)
        na.uri, na.display, params = hit
        na.params = dict(params)
        na._raw = None
        return na

    @classmethod
    def parse_uncached(cls, text: str) -> "NameAddr":
        """NameAddr.parse without the cache (the reference), for values that will not repeat."""
        return cls._parse(text)

    @classmethod
    def _parse(cls, text: str) -> "NameAddr":
        """NameAddr.parse without the cache (the reference)."""
        text = text.strip()
        if not text:
            raise SipParseError("empty address")
        display: str | None = None
        lt = text.find("<")
        if text.startswith('"'):
            end = _closing_quote(text, 0)
            display = _unquote(text[: end + 1])
            rest = text[end + 1 :].lstrip()
            if not rest.startswith("<"):
                raise SipParseError(f"quoted display name without <uri>: {text!r}")
            lt = 0
            text_after = rest
        elif lt >= 0:
            display = text[:lt].strip() or None
            if display is not None and not _DISPLAY_TOKENS.match(display):
                raise SipParseError(f"display name with special characters must be quoted: {text!r}")
            text_after = text[lt:]
            lt = 0
        else:
            text_after = text
            lt = -1
        if lt == 0:
            gt = text_after.find(">")
            if gt < 0:
                raise SipParseError(f"missing '>' in {text!r}")
            uri = SipUri.parse(text_after[1:gt], strict=False)
            tail = text_after[gt + 1 :].strip()
            if tail and not tail.startswith(";"):
                raise SipParseError(f"junk after <uri>: {text!r}")
            params = parse_params(tail[1:], strict=True) if tail else {}
        else:
            # addr-spec: params after the URI belong to the header, the URI has none (§20.10)
            semi = text_after.find(";")
            if semi >= 0:
                uri = SipUri.parse(text_after[:semi], strict=False)
                params = parse_params(text_after[semi + 1 :], strict=True)
            else:
                uri = SipUri.parse(text_after, strict=False)
                params = {}
            if uri.headers:
                raise SipParseError(f"URI with headers must be in <>: {text!r}")
        na = cls(uri, display, params)
        na._raw = None
        return na

    @property
    def tag(self) -> str | None:
        """The dialog tag parameter (From/To)."""
        return self.params.get("tag")

    def with_tag(self, tag: str) -> "NameAddr":
        """A copy with ;tag= set."""
        params = dict(self.params)
        params["tag"] = tag
        return NameAddr(self.uri, self.display, params)

    def __str__(self) -> str:
        disp = ""
        if self.display:
            disp = '"' + self.display.replace("\\", "\\\\").replace('"', '\\"') + '" '
        return f"{disp}<{self.uri}>{format_params(self.params)}"

    def __repr__(self) -> str:
        return f"NameAddr({str(self)!r})"


def _closing_quote(text: str, start: int) -> int:
    i = start + 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i
        i += 1
    raise SipParseError(f"unterminated quoted string: {text!r}")


def _unquote(q: str) -> str:
    """Strip quotes and resolve quoted-pair escapes."""
    inner = q[1:-1]
    if "\\" not in inner:
        return inner
    out = []
    i = 0
    while i < len(inner):
        c = inner[i]
        if c == "\\" and i + 1 < len(inner):
            i += 1
            c = inner[i]
        out.append(c)
        i += 1
    return "".join(out)


def unquote(value: str) -> str:
    """Public quoted-string unquoting (value returned as is when not quoted)."""
    value = value.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return _unquote(value)
    return value
