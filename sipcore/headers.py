"""Typed SIP header values a proxy needs: Via and CSeq (From/To/Contact/Route use uri.NameAddr)."""
from __future__ import annotations

import re

from .errors import SipParseError
from .uri import is_digits, remember, format_host, format_params, parse_params, split_hostport

MAGIC_COOKIE = "z9hG4bK"
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_VIA_CACHE: dict[str, tuple] = {}
# Common tokens, accepted without the regular expression (anything else goes through _TOKEN).
_TRANSPORTS = frozenset({"UDP", "TCP", "TLS", "SCTP", "WS", "WSS", "udp", "tcp", "tls", "sctp", "ws", "wss"})
_METHODS = frozenset({"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "PRACK", "UPDATE", "INFO", "MESSAGE",
                      "REFER", "NOTIFY", "SUBSCRIBE", "PUBLISH"})


class Via:
    """One Via value: `SIP/2.0/UDP host:port;branch=z9hG4bK...;rport;received=...`."""

    __slots__ = ("transport", "host", "port", "params")

    def __init__(self, transport: str, host: str, port: int | None = None, params: dict[str, str | None] | None = None) -> None:
        self.transport = transport.upper()
        self.host = host
        self.port = port
        self.params = params if params is not None else {}

    @classmethod
    def parse_cached(cls, text: str) -> "Via":
        """Via.parse through a cache by text, for Vias that repeat: the responses of a transaction carry the
        same top Via (ours); a request's top Via has a new branch each time and is not worth caching. Each
        call returns a new Via with its own params dict (the stack may change received/rport)."""
        hit = _VIA_CACHE.get(text)
        if hit is None:
            via = cls.parse(text)
            remember(_VIA_CACHE, text, (via.transport, via.host, via.port, dict(via.params)))
            return via
        via = cls.__new__(cls)
        via.transport, via.host, via.port, params = hit
        via.params = dict(params)
        return via

    @classmethod
    def parse(cls, text: str) -> "Via":
        """Parse one Via value (already split from a comma list)."""
        text = text.strip()
        if text.startswith("SIP/2.0/"):  # the usual spelling: what the general checks below would accept
            slash2 = 7
        else:
            slash1 = text.find("/")
            slash2 = text.find("/", slash1 + 1)
            if slash1 < 0 or slash2 < 0:
                raise SipParseError(f"bad Via: {text!r}")
            proto = text[:slash1].strip()
            version = text[slash1 + 1 : slash2].strip()
            if proto.upper() != "SIP" or version != "2.0":
                raise SipParseError(f"bad Via protocol: {text!r}")
        rest = text[slash2 + 1 :].lstrip()
        i = rest.find(" ")  # the transport ends at the first space or tab
        if i < 0:
            i = len(rest)
        tab = rest.find("\t", 0, i)
        if tab >= 0:
            i = tab
        transport = rest[:i]
        if transport not in _TRANSPORTS and (not transport or _TOKEN.match(transport) is None):
            raise SipParseError(f"bad Via transport: {text[:80]!r}")
        sent_by = rest[i:].strip()
        semi = sent_by.find(";")
        if semi >= 0:
            params = parse_params(sent_by[semi + 1 :], strict=True)
            sent_by = sent_by[:semi].strip()
            if params:
                _check_via_params(params, text)
        else:
            params = {}
        if not sent_by:
            raise SipParseError(f"Via without sent-by: {text[:80]!r}")
        if " " in sent_by or "\t" in sent_by:
            sent_by = sent_by.replace(" ", "").replace("\t", "")
        host, port = split_hostport(sent_by)
        return cls(transport, host, port, params)

    @property
    def branch(self) -> str | None:
        """The transaction branch (RFC 3261 §8.1.1.7)."""
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        """The received= parameter added by the next hop."""
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        """The rport value when filled in (RFC 3581), else None."""
        v = self.params.get("rport")
        return int(v) if v and is_digits(v) and len(v) <= 5 else None

    @property
    def sent_by(self) -> tuple[str, int | None]:
        """(host, port) as written by the sender."""
        return self.host, self.port

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {format_host(self.host)}{port}{format_params(self.params)}"

    def __repr__(self) -> str:
        return f"Via({str(self)!r})"


def _check_via_params(params: dict[str, str | None], text: str) -> None:
    """The Via parameters callpath acts on must be well-formed (RFC 3261 §20.42, RFC 3581): a token
    branch, a numeric (or empty) rport and ttl, a host in received/maddr. Unknown ones pass unchecked."""
    if "branch" in params:
        branch = params["branch"]
        if not branch or _TOKEN.match(branch) is None:
            raise SipParseError(f"bad Via branch: {text[:80]!r}")
    rport = params.get("rport")
    if rport and (not is_digits(rport) or len(rport) > 5 or int(rport) > 65535):
        raise SipParseError(f"bad Via rport: {text[:80]!r}")
    ttl = params.get("ttl")
    if "ttl" in params and (not ttl or not is_digits(ttl) or len(ttl) > 3):
        raise SipParseError(f"bad Via ttl: {text[:80]!r}")
    for name in ("received", "maddr"):
        if name in params:
            value = params[name]
            if not value:
                raise SipParseError(f"empty Via {name}: {text[:80]!r}")
            split_hostport(value)  # SipParseError for anything that is not a host


class CSeq:
    """CSeq: sequence number and method."""

    __slots__ = ("seq", "method")

    def __init__(self, seq: int, method: str) -> None:
        self.seq = seq
        self.method = method

    @classmethod
    def parse(cls, text: str) -> "CSeq":
        """Parse `314159 INVITE`; the number must fit in 32 bits (RFC 3261 §8.1.1.5)."""
        parts = text.split()
        if len(parts) != 2 or not is_digits(parts[0]) or (parts[1] not in _METHODS
                                                            and _TOKEN.match(parts[1]) is None):
            raise SipParseError(f"bad CSeq: {text[:80]!r}")
        number = parts[0]
        if len(number) > 10 or int(number) >= 2**32:  # the length first: int() of 5,000 digits raises ValueError
            raise SipParseError(f"CSeq number out of range: {text[:80]!r}")
        return cls(int(number), parts[1])

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"

    def __repr__(self) -> str:
        return f"CSeq({self.seq}, {self.method!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CSeq) and self.seq == other.seq and self.method == other.method
