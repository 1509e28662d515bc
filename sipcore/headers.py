"""Typed SIP header values a proxy needs: Via and CSeq (From/To/Contact/Route use uri.NameAddr)."""
from __future__ import annotations

from .errors import SipParseError
from .uri import is_digits, format_host, format_params, parse_params, split_hostport

MAGIC_COOKIE = "z9hG4bK"


class Via:
    """One Via value: `SIP/2.0/UDP host:port;branch=z9hG4bK...;rport;received=...`."""

    __slots__ = ("transport", "host", "port", "params")

    def __init__(self, transport: str, host: str, port: int | None = None, params: dict[str, str | None] | None = None) -> None:
        self.transport = transport.upper()
        self.host = host
        self.port = port
        self.params = params if params is not None else {}

    @classmethod
    def parse(cls, text: str) -> "Via":
        """Parse one Via value (already split from a comma list)."""
        text = text.strip()
        slash1 = text.find("/")
        slash2 = text.find("/", slash1 + 1)
        if slash1 < 0 or slash2 < 0:
            raise SipParseError(f"bad Via: {text!r}")
        proto = text[:slash1].strip()
        version = text[slash1 + 1 : slash2].strip()
        if proto.upper() != "SIP" or version != "2.0":
            raise SipParseError(f"bad Via protocol: {text!r}")
        rest = text[slash2 + 1 :].lstrip()
        i = 0
        n = len(rest)
        while i < n and rest[i] not in " \t":
            i += 1
        transport = rest[:i]
        if not transport:
            raise SipParseError(f"bad Via transport: {text!r}")
        sent_by = rest[i:].strip()
        semi = sent_by.find(";")
        if semi >= 0:
            params = parse_params(sent_by[semi + 1 :])
            sent_by = sent_by[:semi].strip()
        else:
            params = {}
        if not sent_by:
            raise SipParseError(f"Via without sent-by: {text!r}")
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
        return int(v) if v and is_digits(v) else None

    @property
    def sent_by(self) -> tuple[str, int | None]:
        """(host, port) as written by the sender."""
        return self.host, self.port

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {format_host(self.host)}{port}{format_params(self.params)}"

    def __repr__(self) -> str:
        return f"Via({str(self)!r})"


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
        if len(parts) != 2 or not is_digits(parts[0]):
            raise SipParseError(f"bad CSeq: {text!r}")
        seq = int(parts[0])
        if seq >= 2**32:
            raise SipParseError(f"CSeq number out of range: {text!r}")
        return cls(seq, parts[1])

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"

    def __repr__(self) -> str:
        return f"CSeq({self.seq}, {self.method!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CSeq) and self.seq == other.seq and self.method == other.method
