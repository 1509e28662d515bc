"""SIP messages (RFC 3261 §7): parse, inspect, modify and serialise requests and responses.

Headers are kept as received (name spelling, order, raw values) so a proxy forwards what it got;
typed accessors (`vias`, `cseq`, `from_`, `contacts`, ...) parse lazily and cache their result.
"""
from __future__ import annotations

import os
import re
from typing import Iterable, Union

from .errors import SipParseError
from .headers import MAGIC_COOKIE, CSeq, Via
from .uri import is_digits, NameAddr, SipUri, split_quoted

__all__ = [
    "SipParseError", "SipMessage", "Request", "Response", "parse_message", "make_response",
    "StreamFramer", "new_branch", "new_tag", "new_call_id", "reason_phrase", "PING", "validate",
    "KNOWN_METHODS",
]

COMPACT: dict[str, str] = {
    "v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
    "k": "supported", "c": "content-type", "s": "subject", "e": "content-encoding", "o": "event",
    "r": "refer-to", "u": "allow-events", "x": "session-expires", "y": "identity", "b": "referred-by",
    "a": "accept-contact", "j": "reject-contact", "d": "request-disposition",
}

CANONICAL: dict[str, str] = {
    "via": "Via", "from": "From", "to": "To", "call-id": "Call-ID", "cseq": "CSeq", "contact": "Contact",
    "content-length": "Content-Length", "content-type": "Content-Type", "max-forwards": "Max-Forwards",
    "route": "Route", "record-route": "Record-Route", "expires": "Expires", "min-expires": "Min-Expires",
    "authorization": "Authorization", "www-authenticate": "WWW-Authenticate",
    "proxy-authenticate": "Proxy-Authenticate", "proxy-authorization": "Proxy-Authorization",
    "supported": "Supported", "require": "Require", "proxy-require": "Proxy-Require",
    "unsupported": "Unsupported", "allow": "Allow", "user-agent": "User-Agent", "server": "Server",
    "path": "Path", "rseq": "RSeq", "rack": "RAck", "event": "Event", "subject": "Subject",
    "content-encoding": "Content-Encoding", "refer-to": "Refer-To", "allow-events": "Allow-Events",
    "session-expires": "Session-Expires", "referred-by": "Referred-By", "identity": "Identity",
    "accept": "Accept", "reason": "Reason", "timestamp": "Timestamp", "date": "Date", "warning": "Warning",
    "retry-after": "Retry-After", "min-se": "Min-SE", "p-asserted-identity": "P-Asserted-Identity",
}

# Headers whose value is a comma-separated list (RFC 3261 §7.3.1): get_all() splits them.
MULTI: frozenset[str] = frozenset({
    "via", "contact", "route", "record-route", "path", "allow", "supported", "require", "proxy-require",
    "unsupported", "accept", "accept-encoding", "accept-language", "allow-events", "service-route",
    "in-reply-to", "content-encoding", "p-asserted-identity", "reason", "call-info", "alert-info",
    "error-info", "accept-contact", "reject-contact", "request-disposition",
})

REASONS: dict[int, str] = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued", 183: "Session Progress",
    200: "OK", 202: "Accepted", 204: "No Notification",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Moved Temporarily", 305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 407: "Proxy Authentication Required",
    408: "Request Timeout", 410: "Gone", 413: "Request Entity Too Large", 414: "Request-URI Too Long",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme", 420: "Bad Extension",
    421: "Extension Required", 423: "Interval Too Brief", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 489: "Bad Event", 491: "Request Pending", 493: "Undecipherable",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Server Time-out", 505: "Version Not Supported", 513: "Message Too Large",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}

PING = b"\r\n\r\n"  # RFC 5626 keep-alive on stream transports; StreamFramer yields it as its own item

# Methods callpath knows (RFC 3261, 3262, 3265, 3311, 3428, 3515, 3903, 6086): a request with another method
# and a CSeq naming a different one is answered 501, not 400 (RFC 4475 §3.1.2.18).
KNOWN_METHODS: frozenset[str] = frozenset({
    "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "PRACK", "UPDATE", "INFO", "MESSAGE", "REFER",
    "NOTIFY", "SUBSCRIBE", "PUBLISH",
})
# Headers that must appear exactly once in a request or response callpath acts on (RFC 3261 §8.1.1, §20).
MANDATORY: tuple[str, ...] = ("via", "call-id", "from", "to", "cseq")
SINGLE: frozenset[str] = frozenset({"call-id", "from", "to", "cseq", "max-forwards"})
# validate() keeps which headers it met in an int: one bit per header it checks.
_BITS: dict[str, int] = {"call-id": 1, "from": 2, "to": 4, "cseq": 8, "max-forwards": 16, "via": 32, "contact": 64,
                         "route": 128}
_SINGLE_BITS = 1 | 2 | 4 | 8 | 16              # at most once (SINGLE)
_MANDATORY_BITS = 1 | 2 | 4 | 8 | 32           # at least once (MANDATORY)
_LIST_BITS = 32 | 64 | 128                     # list headers whose elements must not be empty (Via, Contact, Route)
_CALL_ID_RE = re.compile(r"[\x21-\x7e]+\Z")  # RFC 3261 §25.1 word ["@" word]: visible ASCII, no LWS

_KEY_CACHE: dict[str, str] = {}
_TOKEN_RE = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")


def header_key(name: str) -> str:
    """Lower-case, compact-form-expanded key for a header name (cached)."""
    key = _KEY_CACHE.get(name)
    if key is None:
        low = name.lower()
        key = COMPACT.get(low, low)
        if len(_KEY_CACHE) < 4096:  # names come from the network: bound the cache
            _KEY_CACHE[name] = key
    return key


def reason_phrase(status: int) -> str:
    """The standard reason phrase for a status code."""
    return REASONS.get(status) or REASONS.get(status // 100 * 100, "Unknown")


def new_branch() -> str:
    """A fresh RFC 3261 branch (magic cookie + 64 random bits)."""
    return MAGIC_COOKIE + os.urandom(8).hex()


def new_tag() -> str:
    """A fresh From/To tag."""
    return os.urandom(6).hex()


def new_call_id(host: str = "") -> str:
    """A fresh Call-ID, optionally @host."""
    cid = os.urandom(12).hex()
    return f"{cid}@{host}" if host else cid


class SipMessage:
    """Common part of requests and responses: an ordered header list and a body."""

    __slots__ = ("headers", "body", "_cache", "version")

    def __init__(self, headers: Iterable[tuple[str, str]] = (), body: bytes = b"", version: str = "SIP/2.0") -> None:
        # Each header: [key, name as written, value]
        self.headers: list[list[str]] = [[header_key(n), n, v] for n, v in headers]
        self.body = body
        self.version = version
        self._cache: dict[str, object] = {}

    # -- raw header access ---------------------------------------------------------------------------
    def get(self, name: str) -> str | None:
        """First value of a header (case-insensitive, compact forms accepted), or None."""
        key = _KEY_CACHE.get(name) or header_key(name)
        for h in self.headers:
            if h[0] == key:
                return h[2]
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of a header; comma-separated list headers are split into their elements."""
        key = header_key(name)
        values = [h[2] for h in self.headers if h[0] == key]
        if key in MULTI:
            out: list[str] = []
            for v in values:
                if "," in v:
                    out.extend(p.strip() for p in split_quoted(v, ",") if p.strip())
                elif v:
                    out.append(v)
            return out
        return values

    def get_all_raw(self, name: str) -> list[str]:
        """Every value of a header as received, list headers not split."""
        key = header_key(name)
        return [h[2] for h in self.headers if h[0] == key]

    def has(self, name: str) -> bool:
        """Whether the header is present."""
        key = _KEY_CACHE.get(name) or header_key(name)
        for h in self.headers:
            if h[0] == key:
                return True
        return False

    def set(self, name: str, value: str) -> None:
        """Replace every occurrence of a header by one value (appended when absent)."""
        key = header_key(name)
        self._cache.pop(key, None)
        if key == "via":
            self._cache.pop("topvia", None)
        for i, h in enumerate(self.headers):
            if h[0] == key:
                h[2] = value
                self.headers[i + 1 :] = [x for x in self.headers[i + 1 :] if x[0] != key]
                return
        self.headers.append([key, CANONICAL.get(key, name), value])

    def add(self, name: str, value: str, first: bool = False) -> None:
        """Add a header; with first=True it goes above any existing header of that name (Via, Route)."""
        key = header_key(name)
        self._cache.pop(key, None)
        if key == "via":
            self._cache.pop("topvia", None)
        entry = [key, CANONICAL.get(key, name), value]
        if first:
            for i, h in enumerate(self.headers):
                if h[0] == key:
                    self.headers.insert(i, entry)
                    return
            self.headers.insert(0 if key == "via" else len(self.headers), entry)
        else:
            self.headers.append(entry)

    def remove(self, name: str) -> None:
        """Remove every occurrence of a header."""
        key = header_key(name)
        self._cache.pop(key, None)
        if key == "via":
            self._cache.pop("topvia", None)
        self.headers = [h for h in self.headers if h[0] != key]

    def remove_first_value(self, name: str) -> str | None:
        """Remove the first element of a list header (top Via, first Route); returns it."""
        key = header_key(name)
        self._cache.pop(key, None)
        if key == "via":
            self._cache.pop("topvia", None)
        for i, h in enumerate(self.headers):
            if h[0] == key:
                v = h[2]
                if "," in v:
                    parts = list(split_quoted(v, ","))
                    rest = ",".join(parts[1:]).strip()
                    if rest:
                        h[2] = rest
                        return parts[0].strip()
                del self.headers[i]
                return v.strip()
        return None

    # -- typed accessors ---------------------------------------------------------------------------
    def _required(self, name: str) -> str:
        v = self.get(name)
        if v is None:
            raise SipParseError(f"missing {CANONICAL.get(name, name)} header")
        return v

    @property
    def vias(self) -> list[Via]:
        """All Via values, top first."""
        c = self._cache.get("via")
        if c is None:
            c = [Via.parse(v) for v in self.get_all("via")]
            if not c:
                raise SipParseError("missing Via header")
            self._cache["via"] = c
        return c  # type: ignore[return-value]

    @property
    def top_via(self) -> Via:
        """The topmost Via (parsed without parsing the others; cached)."""
        c = self._cache.get("via")
        if c is not None:
            return c[0]  # type: ignore[index]
        c = self._cache.get("topvia")
        if c is None:
            v = self._required("via")
            if "," in v:
                v = next(iter(split_quoted(v, ",")))
            c = self._cache["topvia"] = Via.parse(v) if self.__class__ is Request else Via.parse_cached(v)
        return c  # type: ignore[return-value]

    @property
    def call_id(self) -> str:
        """Call-ID value: visible ASCII without whitespace (SipParseError otherwise; cached)."""
        c = self._cache.get("call-id")
        if c is None:
            v = self._required("call-id").strip()
            if _CALL_ID_RE.match(v) is None:
                raise SipParseError(f"bad Call-ID: {v[:80]!r}")
            c = self._cache["call-id"] = v
        return c  # type: ignore[return-value]

    @property
    def cseq(self) -> CSeq:
        """CSeq number and method."""
        c = self._cache.get("cseq")
        if c is None:
            c = self._cache["cseq"] = CSeq.parse(self._required("cseq"))
        return c  # type: ignore[return-value]

    def _name_addr(self, key: str) -> NameAddr:
        c = self._cache.get(key)
        if c is None:
            c = self._cache[key] = NameAddr.parse(self._required(key))
        return c  # type: ignore[return-value]

    @property
    def from_(self) -> NameAddr:
        """From header (parsed without the text cache: its tag is new with each dialog, and it is read for
        initial requests only, so caching it would only push out the values that do repeat)."""
        c = self._cache.get("from")
        if c is None:
            c = self._cache["from"] = NameAddr.parse_uncached(self._required("from"))
        return c  # type: ignore[return-value]

    @property
    def to(self) -> NameAddr:
        """To header."""
        return self._name_addr("to")

    def _name_addrs(self, key: str) -> list[NameAddr]:
        c = self._cache.get(key)
        if c is None:
            c = self._cache[key] = [NameAddr.parse(v) for v in self.get_all(key)]
        return c  # type: ignore[return-value]

    @property
    def contact_star(self) -> bool:
        """True for `Contact: *` (remove all bindings)."""
        v = self.get("contact")
        return v is not None and v.strip() == "*"

    @property
    def contacts(self) -> list[NameAddr]:
        """Contact values (empty for `Contact: *` or none)."""
        if self.contact_star:
            return []
        return self._name_addrs("contact")

    @property
    def routes(self) -> list[NameAddr]:
        """Route set in order."""
        return self._name_addrs("route")

    @property
    def record_routes(self) -> list[NameAddr]:
        """Record-Route values in order."""
        return self._name_addrs("record-route")

    def _int(self, key: str) -> int | None:
        v = self.get(key)
        if v is None:
            return None
        v = v.strip()
        if not is_digits(v) or len(v) > 10:
            raise SipParseError(f"bad {CANONICAL.get(key, key)}: {v!r}")
        return int(v)

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards or None."""
        return self._int("max-forwards")

    @property
    def expires(self) -> int | None:
        """Expires header (delta-seconds) or None."""
        return self._int("expires")

    def option_tags(self, name: str) -> set[str]:
        """Option tags of Supported/Require/Proxy-Require (lower-case)."""
        return {v.lower() for v in self.get_all(name)}

    # -- serialisation -----------------------------------------------------------------------------
    def start_line(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Serialise with CRLF line ends and a Content-Length matching the body."""
        if _c_serialize is not None:
            data = _c_serialize(self.start_line(), self.headers, self.body)
            if data is not None:  # None: a piece the C path does not take (non-ASCII text, ...)
                return data
        return self._to_bytes_py()

    def _to_bytes_py(self) -> bytes:
        """to_bytes in Python (the reference for the C `_scan.serialize`, and its fallback)."""
        parts = [f"{h[1]}: {h[2]}" for h in self.headers if h[0] != "content-length"]
        parts.append(f"Content-Length: {len(self.body)}\r\n\r\n")
        return (self.start_line() + "\r\n" + "\r\n".join(parts)).encode("utf-8", "surrogateescape") + self.body

    def __bytes__(self) -> bytes:
        return self.to_bytes()


class Request(SipMessage):
    """A SIP request: method, Request-URI and headers."""

    __slots__ = ("method", "raw_uri", "_uri")

    def __init__(self, method: str, uri: SipUri | str, headers: Iterable[tuple[str, str]] = (), body: bytes = b"", version: str = "SIP/2.0") -> None:
        super().__init__(headers, body, version)
        self.method = method
        if isinstance(uri, SipUri):
            self._uri: SipUri | None = uri
            self.raw_uri = ""
        else:
            self._uri = None
            self.raw_uri = uri

    @property
    def uri(self) -> SipUri:
        """Request-URI (parsed lazily; SipParseError 416 for a scheme callpath cannot route)."""
        u = self._uri
        if u is None:
            u = self._uri = SipUri.parse(self.raw_uri)
        return u

    @uri.setter
    def uri(self, value: SipUri) -> None:
        self._uri = value

    def start_line(self) -> str:
        u = self._uri
        return f"{self.method} {u if u is not None else self.raw_uri} {self.version}"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.start_line().split(' ')[1]}>"


class Response(SipMessage):
    """A SIP response: status code, reason phrase and headers."""

    __slots__ = ("status", "reason")

    def __init__(self, status: int, reason: str | None = None, headers: Iterable[tuple[str, str]] = (), body: bytes = b"", version: str = "SIP/2.0") -> None:
        super().__init__(headers, body, version)
        self.status = status
        self.reason = reason if reason is not None else reason_phrase(status)

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


Message = Union[Request, Response]


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    idx = data.find(b"\r\n\r\n")
    if idx >= 0:
        return data[:idx], data[idx + 4 :]
    idx = data.find(b"\n\n")
    if idx >= 0:
        return data[:idx], data[idx + 2 :]
    # A datagram with headers only and a final CRLF is tolerated when it has no body.
    if data.endswith(b"\r\n"):
        return data[:-2], b""
    raise SipParseError("no end of headers")


def _scan_headers(lines: list[str]) -> list[list[str]]:
    """Header lines (after the start line) -> [[key, name, value], ...], unfolding continuations."""
    kc = _KEY_CACHE
    out: list[list[str]] = []
    first = True
    for line in lines:
        if first:  # skip the start line
            first = False
            continue
        name, sep, value = line.partition(":")
        key = kc.get(name)
        if key is None:
            if not line:
                continue
            c = line[0]
            if c == " " or c == "\t":
                if not out:
                    raise SipParseError("continuation line before any header")
                out[-1][2] = (out[-1][2] + " " + line.strip()).strip()
                continue
            if not sep:
                raise SipParseError(f"bad header line: {line[:60]!r}")
            if name[-1:] in (" ", "\t"):
                name = name.rstrip()
            if not _TOKEN_RE.match(name):
                raise SipParseError(f"bad header name: {name[:60]!r}")
            key = header_key(name)
        out.append([key, name, value.strip()])
    return out


def _bad_utf8(value: str) -> bool:
    """Whether a header value decoded with surrogateescape held bytes that are not UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_VIA_LIST = 256  # in _check_headers' result: more than one Via value (a comma, or several Via lines)


def _check_headers_py(headers: list[list[str]], bits: dict[str, int], single: int, lists: int) -> int:
    """validate()'s walk over the header list (the reference for the C `_scan.check_headers`).

    Per header, in order: the value is UTF-8; a header of `single` at most once; no empty element in a list
    header of `lists`. Returns the bits of the `bits` headers present, | _VIA_LIST when there is more than one
    Via value (no allocation per message)."""
    seen = 0
    via_list = False
    for h in headers:
        value = h[2]
        if not value.isascii() and _bad_utf8(value):
            raise SipParseError(f"{h[1]} header is not valid UTF-8")
        bit = bits.get(h[0])
        if bit is None:
            continue
        if bit & seen:
            if bit & single:
                raise SipParseError(f"more than one {h[1]} header")
            via_list = via_list or bit == 32
        seen |= bit
        if bit & lists:
            if "," in value:
                via_list = via_list or bit == 32
                if any(not p.strip() for p in split_quoted(value, ",")):
                    raise SipParseError(f"empty {h[1]} value")
            elif not value:
                raise SipParseError(f"empty {h[1]} value")
    return seen | _VIA_LIST if via_list else seen


# -- header scanning: C fast path (sipcore/_scan.c) or the pure-Python reference above ------------
# The C scanner is used when the extension was built and CALLPATH_PURE_PYTHON is unset (or "0");
# _split_head/_scan_headers stay the reference the tests compare it with, and the fallback.
try:
    from . import _scan as _c_scan
except ImportError:  # not built (no compiler at install time)
    _c_scan = None

_c_split = None
_c_scan_headers = None
_check_headers = None  # validate()'s header walk: _scan.check_headers or _check_headers_py
_c_serialize = None    # SipMessage.to_bytes' fast path: _scan.serialize (None: _to_bytes_py only)
SCANNER = "python"  # which scanner parse_message uses: "c" or "python"


def use_scanner(kind: str) -> None:
    """Select parse_message's header scanner (and validate()'s header walk, to_bytes' serialiser): "c" (needs
    the built extension) or "python"."""
    global _c_split, _c_scan_headers, _check_headers, _c_serialize, SCANNER
    if kind == "c":
        if _c_scan is None:
            raise ValueError("the C scanner sipcore._scan is not built")
        _c_split, _c_scan_headers, _check_headers = _c_scan.split, _c_scan.scan_headers, _c_scan.check_headers
        _c_serialize = _c_scan.serialize
    elif kind == "python":
        _c_split = _c_scan_headers = _c_serialize = None
        _check_headers = _check_headers_py
    else:
        raise ValueError(f"unknown scanner {kind!r}")
    SCANNER = kind


use_scanner("c" if _c_scan is not None and os.environ.get("CALLPATH_PURE_PYTHON", "") in ("", "0") else "python")


_LWS_RE = re.compile(r"[ \t]+")


def _request_line(start: str, salvage: bool = False) -> tuple[str, str, str]:
    """method, Request-URI text, version of a request line.

    Extra spaces around the three elements (RFC 4475 §3.1.2.9 `lwsstart`, §3.1.2.10 `trws`) are ignored,
    as Kamailio does; they are never forwarded since the start line is rebuilt with single spaces. Spaces
    inside the URI (`lwsruri`, §3.1.2.8) are an error; with `salvage` the URI is kept with its spaces so
    the request can still be answered 400."""
    parts = start.split(" ")
    if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2]:
        parts = _LWS_RE.split(start.strip(" \t"))
        if len(parts) < 3:
            raise SipParseError(f"bad request line: {start[:80]!r}")
        if len(parts) > 3:
            if not salvage:
                raise SipParseError(f"whitespace in the Request-URI: {start[:80]!r}")
            parts = [parts[0], " ".join(parts[1:-1]), parts[-1]]
    method, uri, version = parts
    if method not in KNOWN_METHODS and not _TOKEN_RE.match(method):
        raise SipParseError(f"bad method: {method[:40]!r}")
    if not version.upper().startswith("SIP/"):
        raise SipParseError(f"bad SIP version: {start[:80]!r}")
    return method, uri, version


def _salvage(data: bytes) -> "Request | None":
    """The request in `data` as far as it can be read, for answering it after parse_message failed.

    Only the start line must be a valid request line; header lines that cannot be read are skipped and the
    body is dropped. None for responses and for anything that is not a SIP request at all (nothing to answer)."""
    data = data.lstrip(b"\r\n")
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    head = (data if end < 0 else data[:end]).decode("utf-8", "surrogateescape")
    lines = head.replace("\r\n", "\n").split("\n")
    if lines[0].startswith("SIP/"):
        return None
    try:
        method, uri, version = _request_line(lines[0], salvage=True)
    except SipParseError:
        return None
    headers: list[list[str]] = []
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            if headers:
                headers[-1][2] = (headers[-1][2] + " " + line.strip()).strip()
            continue
        name, sep, value = line.partition(":")
        name = name.rstrip(" \t")
        if sep and _TOKEN_RE.match(name):
            low = name.lower()  # not header_key: names of a broken message stay out of its cache
            headers.append([COMPACT.get(low, low), name, value.strip()])
    req = Request(method, uri, version=version)
    req.headers = headers
    return req


def parse_message(data: bytes, max_size: int = 65535) -> Message:
    """Parse one complete message (a datagram, or a frame from StreamFramer).

    Raises SipParseError for anything that cannot be framed or has an unusable start line; header
    values are checked later (`validate`, the typed accessors) so a 4xx can still be built from the rest.
    When the start line is a request line the error carries the request as far as it could be read
    (`SipParseError.message`), so the stack can still answer it (RFC 4475 §3.1.2.2/.3, §3.3.9: 400).
    """
    if len(data) > max_size:
        raise SipParseError(f"message of {len(data)} bytes exceeds {max_size}", status=513)
    try:
        return _parse(data)
    except SipParseError as exc:
        if exc.message is None:
            exc.message = _salvage(data)
        raise


def _parse(data: bytes) -> Message:
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")
    lines: list[str] | None = None
    if _c_split is not None and data.__class__ is bytes:
        # C scanner (sipcore/_scan.c): the same split, decode and line rules as below; the headers
        # are scanned after the start line is checked, as in the Python path.
        start, head, body = _c_split(data)
    else:
        head_b, body = _split_head(data)
        head = head_b.decode("utf-8", "surrogateescape")
        if "\r\n" in head:
            lines = head.split("\r\n")
            if "\n" in head.replace("\r\n", ""):
                lines = head.replace("\r\n", "\n").split("\n")
        else:
            lines = head.split("\n")
        start = lines[0]
    if not start:
        raise SipParseError("empty start line")
    msg: Message
    if start.startswith("SIP/"):
        parts = start.split(" ", 2)
        if len(parts) < 2 or len(parts[1]) != 3 or not is_digits(parts[1]):
            raise SipParseError(f"bad status line: {start!r}")
        status = int(parts[1])
        if status < 100 or status > 699:
            raise SipParseError(f"status code out of range: {start!r}")
        # Response(status, reason, version=...) without the constructor calls (per message)
        msg = Response.__new__(Response)
        msg.status = status
        msg.reason = parts[2] if len(parts) > 2 else ""
        msg.version = parts[0]
    else:
        method, uri, version = _request_line(start)
        msg = Request.__new__(Request)  # Request(method, uri, version=version), likewise
        msg.method = method
        msg.raw_uri = uri
        msg._uri = None
        msg.version = version
    msg._cache = {}
    if lines is None:
        headers = msg.headers = _c_scan_headers(head, _KEY_CACHE, header_key)  # type: ignore[misc]
    else:
        headers = msg.headers = _scan_headers(lines)
    cls = [h[2] for h in headers if h[0] == "content-length"]
    if cls:
        if len(cls) > 1 and len({v.strip() for v in cls}) > 1:
            raise SipParseError("conflicting Content-Length headers", message=msg)
        cl = cls[0].strip()
        if not (cl.isascii() and cl.isdigit()) or len(cl) > 10:
            raise SipParseError(f"bad Content-Length: {cl[:40]!r}", message=msg)
        n = int(cl)
        if n > len(body):
            raise SipParseError(f"Content-Length {n} larger than the {len(body)} body bytes received",
                                message=msg)
        if n < len(body):
            body = body[:n]
    msg.body = body
    return msg


def validate(msg: Message) -> None:
    """Check what every transaction user relies on, before any of them (and before authentication) runs.

    Raises SipParseError whose `status` is the answer for a request (400, 505 for another SIP version,
    501 for an unknown method whose CSeq names another, 416 for a Request-URI scheme callpath cannot route)
    and whose `reason` says what is wrong (it goes into the reason phrase). For a response the stack drops
    the message instead. Checked, in this order:

    * version SIP/2.0 (RFC 3261 §8.2.2 / RFC 4475 §3.1.2.16: before the Via, which says SIP/7.0 too);
    * the header section is UTF-8 (RFC 3261 §7.3.1; what is stored, logged or shown must decode) and a
      request's Request-URI is ASCII (§19.1.1: other octets are escaped);
    * Via, Call-ID, From, To and CSeq present; Call-ID, From, To, CSeq and Max-Forwards at most once
      (RFC 4475 §3.3.1 `insuf`, §3.3.8 `multi01`);
    * no empty Via element, the top Via well-formed (for a request every Via, with no empty parameter:
      §3.1.2.1 `badinv01`), the CSeq number below 2**32 (§3.1.2.4), the Call-ID a word;
    * a request's CSeq method equal to its method (§3.1.2.17/18), To (and, outside a dialog, From)
      name-addr/addr-spec with well-formed parameters (§3.1.2.6, .14, .15), Max-Forwards a number, the Request-URI parsed without
      headers (§3.1.2.7, .8, .11; 416 for an unknown scheme: §3.3.2), a REGISTER's Contact values
      (§3.1.2.13), and Route when present.

    The parsed values are the message's cached accessors, which the transaction user reads anyway, so the
    check costs little beyond them (benchmarks/sip/inprocess.py). A response's From/To are not parsed here:
    a proxy forwards them as they are, and what parses them later answers its own SipParseError.
    """
    if msg.version != "SIP/2.0":
        raise SipParseError(f"SIP version {msg.version[:20]} is not supported", status=505)
    seen = _check_headers(msg.headers, _BITS, _SINGLE_BITS, _LIST_BITS)  # type: ignore[misc]
    if seen & _MANDATORY_BITS != _MANDATORY_BITS:
        missing = [CANONICAL[k] for k in MANDATORY if not seen & _BITS[k]]
        names = missing[0] if len(missing) == 1 else ", ".join(missing[:-1]) + " and " + missing[-1]
        raise SipParseError(f"missing {names} header{'s' if len(missing) > 1 else ''}")
    if msg.__class__ is not Request:
        if not msg.reason.isascii() and _bad_utf8(msg.reason):  # type: ignore[union-attr]
            raise SipParseError("reason phrase is not valid UTF-8")
        msg.top_via
        msg.cseq
        msg.call_id
        return
    req: Request = msg  # type: ignore[assignment]
    if req._uri is None and not req.raw_uri.isascii():
        raise SipParseError("Request-URI is not ASCII")
    if seen & _VIA_LIST:
        req.vias
    else:
        req.top_via  # one Via (a request from a UA): no list to build
    method = req.method
    cseq = req.cseq
    if cseq.method != method:
        if method not in KNOWN_METHODS:
            raise SipParseError(f"{method[:40]} is not implemented", status=501)
        raise SipParseError(f"CSeq method {cseq.method[:40]} does not match {method}")
    req.call_id
    if req.to.tag is None:
        # An initial request: its From is read (authentication, logs, CDRs). An in-dialog request's From
        # is only echoed and forwarded along the route set; parsing it would cost 3.7 us per ACK/BYE.
        req.from_
    req.max_forwards
    if req.uri.headers:
        raise SipParseError("Request-URI with headers")  # RFC 3261 §19.1.1 table 1; RFC 4475 §3.1.2.11
    if method == "REGISTER":
        if req.to.uri.scheme not in ("sip", "sips"):  # RFC 3261 §10.2; RFC 4475 §3.3.4 `unksm2`
            raise SipParseError("address-of-record must be a SIP URI")
        if seen & 64:
            req.contacts
    if seen & 128:
        req.routes


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """Build a response to `request` per RFC 3261 §8.2.6 (Via, From, To(+tag), Call-ID, CSeq copied)."""
    hs: list[list[str]] = []
    for h in request.headers:
        k = h[0]
        if k == "via" or k == "from" or k == "call-id" or k == "cseq":
            hs.append([k, CANONICAL[k], h[2]])
        elif k == "to":
            v = h[2]
            if to_tag and status > 100 and ";tag=" not in v.replace(" ", "").lower():
                v = f"{v};tag={to_tag}"
            hs.append([k, "To", v])
        elif k == "record-route" and 100 < status < 300:
            hs.append([k, "Record-Route", h[2]])
        elif k == "timestamp" and status == 100:
            hs.append([k, "Timestamp", h[2]])
    resp = Response(status, reason, version="SIP/2.0")
    resp.headers = hs
    for n, v in headers:
        resp.headers.append([header_key(n), n, v])
    resp.body = body
    return resp


_CL_RE = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d+)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)


class StreamFramer:
    """Split a TCP/TLS/WS byte stream into messages using Content-Length (RFC 3261 §18.3).

    `feed()` returns complete frames; a CRLFCRLF keep-alive is returned as PING. A missing, bad or
    conflicting Content-Length or an oversized message raises SipParseError: the connection should be
    closed; the error's `message` is the request as far as its head could be read, to answer first.
    When good frames precede the bad one in the same input, feed() returns them and leaves the error in
    `error` for the caller to act on after handling them (RFC 4475 `dblreq` over TCP: the REGISTER is
    answered, then the junk after the INVITE closes the connection).
    """

    __slots__ = ("max_size", "_buf", "error")

    def __init__(self, max_size: int = 65535) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self.error: SipParseError | None = None  # a framing error met after frames feed() returned

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete message held (the stack times out connections that keep one)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every complete frame now available."""
        if self.error is not None:
            raise self.error
        try:
            return self._feed(data)
        except SipParseError as exc:
            if not exc.frames:
                raise
            self.error = exc
            frames, exc.frames = exc.frames, []
            return frames

    def _feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while buf:
            if buf[0] in (13, 10):
                if buf.startswith(b"\r\n\r\n"):
                    out.append(PING)
                    del buf[:4]
                    continue
                if len(buf) < 4 and b"\r\n\r\n".startswith(bytes(buf)):
                    break
                # stray CRLF (a pong, or a ping's tail): skip
                i = 0
                while i < len(buf) and buf[i] in (13, 10):
                    i += 1
                del buf[:i]
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.max_size:
                    raise SipParseError("headers exceed the maximum message size", status=513)
                break
            found = _CL_RE.findall(buf, 0, end + 2)
            error = None
            if not found:
                error = SipParseError("missing or bad Content-Length on a stream transport")
            elif len(set(found)) > 1:
                error = SipParseError("conflicting Content-Length headers")
            else:
                length = found[0]
                total = end + 4 + (int(length) if len(length) <= 10 else 1 << 40)
                if total > self.max_size:
                    error = SipParseError(f"message of {total} bytes exceeds {self.max_size}", status=513)
            if error is not None:
                error.message = _salvage(bytes(buf[:end]))
                error.frames = out
                raise error
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        return out
