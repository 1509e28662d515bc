"""SDP (RFC 8866 / RFC 4566) parsing and building, plus RFC 3264 offer/answer helpers.

Sans-IO and stdlib-only. The model keeps every line it does not interpret (unknown attributes, unknown
line types, ``i=``/``u=``/``e=``/``p=``/``k=``/``z=``/``r=`` fields) so that a proxy or a B2BUA can parse,
edit and re-emit an SDP body without losing what it does not understand. Attribute order is preserved
exactly; line types are emitted in the order RFC 8866 §5 prescribes (a body that already follows the
grammar, which is every real-world body we know of, round-trips byte for byte once its line endings are
``\\r\\n``).

Typical use::

    offer = SessionDescription.parse(request.body)
    answer = create_answer(offer, [("PCMU", 8000), ("PCMA", 8000), ("telephone-event", 8000)],
                           address="192.0.2.10", ports=40000)
    response.body = answer.to_bytes()
"""
from __future__ import annotations

import copy
import ipaddress
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

__all__ = [
    "DIRECTIONS",
    "STATIC_PAYLOAD_TYPES",
    "Attribute",
    "AttributeList",
    "Bandwidth",
    "CodecSpec",
    "Connection",
    "MediaDescription",
    "Origin",
    "RtpMap",
    "SdpError",
    "SessionDescription",
    "Timing",
    "bump_version",
    "create_answer",
    "create_offer",
    "hold",
    "is_hold",
    "parse_fmtp_params",
    "resume",
]

DIRECTIONS: tuple[str, ...] = ("sendrecv", "sendonly", "recvonly", "inactive")
"""The RFC 3264 direction attributes; ``sendrecv`` is the default when none is given."""

_LINE_SPLIT = re.compile(r"\r\n|\n|\r")
_SESSION_ONLY_TYPES = frozenset("vosuepzrt")
_AUXILIARY_ENCODINGS = frozenset({"telephone-event", "cn", "red", "rtx", "ulpfec", "flexfec-03"})
_LEGACY_HOLD_ADDRESSES = frozenset({"0.0.0.0", "::"})


def is_digits(text: str) -> bool:
    """ASCII digits only (str.isdigit() also accepts '²' and other scripts' digits)."""
    return text.isascii() and text.isdigit()


class SdpError(ValueError):
    """Malformed SDP: raised by the parser with a message naming the offending line."""


# --------------------------------------------------------------------------------------------------
# Value objects for the individual lines
# --------------------------------------------------------------------------------------------------


@dataclass
class Origin:
    """The ``o=`` line: identifies a session and, through ``sess_version``, each revision of it."""

    username: str = "-"
    sess_id: str = "0"
    sess_version: int = 0
    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = "0.0.0.0"

    @classmethod
    def parse(cls, value: str) -> Origin:
        """Parse the value of an ``o=`` line (without the ``o=``)."""
        parts = value.split()
        if len(parts) != 6:
            raise SdpError(f"o= line needs 6 fields, got {len(parts)}: {value!r}")
        username, sess_id, sess_version, nettype, addrtype, address = parts
        if not is_digits(sess_version):
            raise SdpError(f"o= sess-version is not numeric: {sess_version!r}")
        return cls(username, sess_id, int(sess_version), nettype, addrtype, address)

    def __str__(self) -> str:
        return (
            f"{self.username} {self.sess_id} {self.sess_version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass
class Connection:
    """The ``c=`` line: network address media goes to (``ttl``/``num_addresses`` only for multicast)."""

    address: str
    nettype: str = "IN"
    addrtype: str = "IP4"
    ttl: int | None = None
    num_addresses: int | None = None

    @classmethod
    def parse(cls, value: str) -> Connection:
        """Parse the value of a ``c=`` line (without the ``c=``)."""
        parts = value.split()
        if len(parts) != 3:
            raise SdpError(f"c= line needs 3 fields, got {len(parts)}: {value!r}")
        nettype, addrtype, address = parts
        ttl: int | None = None
        count: int | None = None
        if "/" in address and addrtype.upper() in ("IP4", "IP6"):
            base, *suffix = address.split("/")
            if not all(is_digits(s) for s in suffix) or not base:
                raise SdpError(f"c= multicast suffix is not numeric: {address!r}")
            if addrtype.upper() == "IP4":
                if len(suffix) > 2:
                    raise SdpError(f"c= IP4 address has too many '/' parts: {address!r}")
                ttl = int(suffix[0])
                count = int(suffix[1]) if len(suffix) == 2 else None
            else:
                if len(suffix) > 1:
                    raise SdpError(f"c= IP6 address has too many '/' parts: {address!r}")
                count = int(suffix[0])
            address = base
        return cls(address, nettype, addrtype, ttl, count)

    @classmethod
    def for_address(cls, address: str) -> Connection:
        """Build an ``IN IP4``/``IN IP6`` connection for a unicast address or host name."""
        return cls(address, "IN", _addrtype(address))

    def __str__(self) -> str:
        address = self.address
        if self.ttl is not None:
            address += f"/{self.ttl}"
        if self.num_addresses is not None:
            address += f"/{self.num_addresses}"
        return f"{self.nettype} {self.addrtype} {address}"


@dataclass
class Bandwidth:
    """A ``b=`` line: a bandwidth modifier (``AS``, ``CT``, ``TIAS``...) and its value."""

    bwtype: str
    bandwidth: int

    @classmethod
    def parse(cls, value: str) -> Bandwidth:
        """Parse the value of a ``b=`` line (without the ``b=``)."""
        bwtype, sep, amount = value.partition(":")
        if not sep or not bwtype:
            raise SdpError(f"b= line is not <bwtype>:<bandwidth>: {value!r}")
        if not is_digits(amount):
            raise SdpError(f"b= bandwidth is not numeric: {value!r}")
        return cls(bwtype, int(amount))

    def __str__(self) -> str:
        return f"{self.bwtype}:{self.bandwidth}"


@dataclass
class Timing:
    """A ``t=`` line with the ``r=`` repeat lines that follow it (kept verbatim)."""

    start: int = 0
    stop: int = 0
    repeats: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, value: str) -> Timing:
        """Parse the value of a ``t=`` line (without the ``t=``)."""
        parts = value.split()
        if len(parts) != 2 or not all(is_digits(p) for p in parts):
            raise SdpError(f"t= line is not two numbers: {value!r}")
        return cls(int(parts[0]), int(parts[1]))

    def __str__(self) -> str:
        return f"{self.start} {self.stop}"


@dataclass
class Attribute:
    """An ``a=`` line: ``name`` with an optional ``value`` (``None`` for a property flag like rtcp-mux)."""

    name: str
    value: str | None = None

    @classmethod
    def parse(cls, text: str) -> Attribute:
        """Parse the value of an ``a=`` line (without the ``a=``); the value is kept byte for byte."""
        name, sep, value = text.partition(":")
        if not name:
            raise SdpError(f"a= line has an empty attribute name: {text!r}")
        return cls(name, value if sep else None)

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value}"


@dataclass(frozen=True)
class RtpMap:
    """An RTP payload format: encoding name, clock rate and channel count (``a=rtpmap`` or static)."""

    encoding: str
    clock_rate: int
    channels: int = 1

    @classmethod
    def parse(cls, text: str) -> RtpMap:
        """Parse ``<encoding>/<clock rate>[/<channels>]``."""
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not parts[0] or not is_digits(parts[1]):
            raise SdpError(f"rtpmap encoding is not <name>/<rate>[/<channels>]: {text!r}")
        channels = 1
        if len(parts) == 3:
            if not is_digits(parts[2]):
                raise SdpError(f"rtpmap channel count is not numeric: {text!r}")
            channels = int(parts[2])
        return cls(parts[0], int(parts[1]), channels)

    def matches(self, encoding: str, clock_rate: int) -> bool:
        """True if this is ``encoding`` (case-insensitively) at ``clock_rate``."""
        return self.encoding.lower() == encoding.lower() and self.clock_rate == clock_rate

    def __str__(self) -> str:
        text = f"{self.encoding}/{self.clock_rate}"
        if self.channels != 1:
            text += f"/{self.channels}"
        return text


STATIC_PAYLOAD_TYPES: dict[int, RtpMap] = {
    0: RtpMap("PCMU", 8000),
    3: RtpMap("GSM", 8000),
    4: RtpMap("G723", 8000),
    5: RtpMap("DVI4", 8000),
    6: RtpMap("DVI4", 16000),
    7: RtpMap("LPC", 8000),
    8: RtpMap("PCMA", 8000),
    9: RtpMap("G722", 8000),
    10: RtpMap("L16", 44100, 2),
    11: RtpMap("L16", 44100),
    12: RtpMap("QCELP", 8000),
    13: RtpMap("CN", 8000),
    14: RtpMap("MPA", 90000),
    15: RtpMap("G728", 8000),
    16: RtpMap("DVI4", 11025),
    17: RtpMap("DVI4", 22050),
    18: RtpMap("G729", 8000),
    25: RtpMap("CelB", 90000),
    26: RtpMap("JPEG", 90000),
    28: RtpMap("nv", 90000),
    31: RtpMap("H261", 90000),
    32: RtpMap("MPV", 90000),
    33: RtpMap("MP2T", 90000),
    34: RtpMap("H263", 90000),
}
"""RFC 3551 static payload types, used when an m-line lists one without an ``a=rtpmap``."""

CodecSpec = tuple[str, int] | tuple[str, int, int] | RtpMap
"""A local codec: ``(encoding, clock_rate)``, ``(encoding, clock_rate, channels)`` or an RtpMap."""


def parse_fmtp_params(value: str) -> dict[str, str | None]:
    """Split fmtp parameters ``"a=1;b=2;flag"`` into a dict (``None`` for a bare parameter like ``0-16``)."""
    params: dict[str, str | None] = {}
    for item in value.split(";"):
        item = item.strip()
        if not item:
            continue
        key, sep, val = item.partition("=")
        params[key.strip()] = val.strip() if sep else None
    return params


# --------------------------------------------------------------------------------------------------
# Shared attribute handling
# --------------------------------------------------------------------------------------------------


class _AttributeList:
    """Attribute helpers shared by the session and media levels (both have an ``attributes`` list)."""

    attributes: list[Attribute]

    def attribute(self, name: str) -> str | None:
        """Value of the first ``a=name`` (``""`` for a flag), or ``None`` when absent."""
        for attr in self.attributes:
            if attr.name == name:
                return attr.value if attr.value is not None else ""
        return None

    def attributes_named(self, name: str) -> list[str]:
        """Values of every ``a=name`` in order (``""`` for flags)."""
        return [a.value if a.value is not None else "" for a in self.attributes if a.name == name]

    def has_attribute(self, name: str) -> bool:
        """True if at least one ``a=name`` is present."""
        return any(a.name == name for a in self.attributes)

    def add_attribute(self, name: str, value: str | None = None) -> None:
        """Append ``a=name[:value]`` after the existing attributes."""
        self.attributes.append(Attribute(name, value))

    def set_attribute(self, name: str, value: str | None = None) -> None:
        """Make ``a=name[:value]`` the only ``a=name``, in the place of the first one (or appended)."""
        index = next((i for i, a in enumerate(self.attributes) if a.name == name), None)
        self.remove_attribute(name)
        if index is None:
            self.attributes.append(Attribute(name, value))
        else:
            self.attributes.insert(index, Attribute(name, value))

    def remove_attribute(self, name: str, value: str | None = None) -> int:
        """Remove every ``a=name`` (only those with this value if given); return how many went."""
        before = len(self.attributes)
        self.attributes[:] = [
            a
            for a in self.attributes
            if not (a.name == name and (value is None or a.value == value))
        ]
        return before - len(self.attributes)

    @property
    def direction(self) -> str | None:
        """The explicit direction attribute at this level, or ``None`` if there is none."""
        for attr in self.attributes:
            if attr.name in DIRECTIONS:
                return attr.name
        return None

    @direction.setter
    def direction(self, value: str | None) -> None:
        if value is not None and value not in DIRECTIONS:
            raise ValueError(f"not an SDP direction: {value!r}")
        index = next((i for i, a in enumerate(self.attributes) if a.name in DIRECTIONS), None)
        self.attributes[:] = [a for a in self.attributes if a.name not in DIRECTIONS]
        if value is None:
            return
        if index is None:
            self.attributes.append(Attribute(value))
        else:
            self.attributes.insert(index, Attribute(value))


# ``attributes`` is both the list of a= lines (a dataclass field) and the lookup ``attributes(name)``:
# the list is this callable subclass, so ``sd.attributes("candidate")`` returns the candidate values.
class AttributeList(list[Attribute]):
    """The ``a=`` lines of a section; calling it, ``attrs("name")``, returns the values of ``a=name``."""

    def __call__(self, name: str) -> list[str]:
        return [a.value if a.value is not None else "" for a in self if a.name == name]


# --------------------------------------------------------------------------------------------------
# Media and session descriptions
# --------------------------------------------------------------------------------------------------


@dataclass
class MediaDescription(_AttributeList):
    """One ``m=`` section: media type, transport, formats and their media-level lines."""

    media: str = "audio"
    port: int = 0
    proto: str = "RTP/AVP"
    formats: list[str] = field(default_factory=list)
    port_count: int | None = None
    information: str | None = None
    connections: list[Connection] = field(default_factory=list)
    bandwidths: list[Bandwidth] = field(default_factory=list)
    encryption_key: str | None = None
    extra_lines: list[tuple[str, str]] = field(default_factory=list)
    attributes: AttributeList = field(default_factory=AttributeList)

    def __post_init__(self) -> None:
        if not isinstance(self.attributes, AttributeList):
            self.attributes = AttributeList(self.attributes)

    @classmethod
    def parse_m_line(cls, value: str) -> MediaDescription:
        """Parse the value of an ``m=`` line (without the ``m=``) into an empty media section."""
        parts = value.split()
        if len(parts) < 3:
            raise SdpError(f"m= line needs <media> <port> <proto> <fmt>...: {value!r}")
        media, port_text, proto, *formats = parts
        port_text, sep, count_text = port_text.partition("/")
        if not is_digits(port_text) or int(port_text) > 65535:
            raise SdpError(f"m= port is not a number in 0..65535: {port_text!r} in {value!r}")
        count: int | None = None
        if sep:
            if not is_digits(count_text) or int(count_text) < 1:
                raise SdpError(f"m= port count is not a positive number: {value!r}")
            count = int(count_text)
        return cls(media=media, port=int(port_text), proto=proto, formats=formats, port_count=count)

    @classmethod
    def for_codecs(
        cls,
        codecs: Sequence[CodecSpec],
        port: int,
        *,
        media: str = "audio",
        proto: str = "RTP/AVP",
        direction: str | None = "sendrecv",
        ptime: int | None = None,
        fmtp: Mapping[str, str] | None = None,
    ) -> MediaDescription:
        """Build an m-section offering ``codecs``: static payload types where they exist, else 96+.

        ``telephone-event`` takes 101 when it is free (what many desk phones expect); ``fmtp`` maps an
        encoding name (case-insensitive) to its ``a=fmtp`` parameters, by default ``0-16`` for
        telephone-event (RFC 4733).
        """
        fmtp_by_name = {"telephone-event": "0-16"}
        if fmtp is not None:
            fmtp_by_name = {k.lower(): v for k, v in fmtp.items()}
        maps = [_codec_rtpmap(c, for_offer=True) for c in codecs]
        used: set[int] = set()
        assigned: list[int | None] = []
        for rtpmap in maps:
            pt = next(
                (p for p, s in STATIC_PAYLOAD_TYPES.items()
                 if s.matches(rtpmap.encoding, rtpmap.clock_rate) and s.channels == rtpmap.channels),
                None,
            )
            if pt in used:
                pt = None
            if pt is not None:
                used.add(pt)
            assigned.append(pt)
        for i, rtpmap in enumerate(maps):
            if assigned[i] is not None:
                continue
            if rtpmap.encoding.lower() == "telephone-event" and 101 not in used:
                pt = 101
            else:
                pt = next((p for p in range(96, 128) if p not in used and p != 101), None)
                if pt is None:
                    pt = next((p for p in range(96, 128) if p not in used), None)
            if pt is None:
                raise ValueError("more codecs than dynamic payload types (96-127)")
            used.add(pt)
            assigned[i] = pt
        section = cls(media=media, port=port, proto=proto, formats=[str(pt) for pt in assigned])
        for pt, rtpmap in zip(assigned, maps, strict=True):
            section.add_attribute("rtpmap", f"{pt} {rtpmap}")
            params = fmtp_by_name.get(rtpmap.encoding.lower())
            if params:
                section.add_attribute("fmtp", f"{pt} {params}")
        if ptime is not None:
            section.add_attribute("ptime", str(ptime))
        if direction is not None:
            section.direction = direction
        return section

    @property
    def connection(self) -> Connection | None:
        """The first media-level ``c=`` line, or ``None`` (see SessionDescription.effective_connection)."""
        return self.connections[0] if self.connections else None

    @connection.setter
    def connection(self, value: Connection | None) -> None:
        self.connections = [] if value is None else [value]

    @property
    def is_rejected(self) -> bool:
        """True for a rejected or disabled stream (port 0, RFC 3264 §6)."""
        return self.port == 0

    @property
    def payload_types(self) -> list[int]:
        """The formats that are RTP payload type numbers, in m-line order."""
        return [int(f) for f in self.formats if is_digits(f) and int(f) <= 127]

    @property
    def rtpmap(self) -> dict[int, RtpMap]:
        """Payload type -> RtpMap for each listed format, from ``a=rtpmap`` or the RFC 3551 static table."""
        explicit: dict[int, RtpMap] = {}
        for value in self.attributes_named("rtpmap"):
            pt_text, _, encoding = value.strip().partition(" ")
            if not is_digits(pt_text):
                continue
            try:
                explicit.setdefault(int(pt_text), RtpMap.parse(encoding))
            except SdpError:
                continue  # tolerated: the line is kept verbatim, it just describes nothing usable
        result: dict[int, RtpMap] = {}
        for pt in self.payload_types:
            if pt in explicit:
                result[pt] = explicit[pt]
            elif pt in STATIC_PAYLOAD_TYPES:
                result[pt] = STATIC_PAYLOAD_TYPES[pt]
        return result

    @property
    def fmtp(self) -> dict[int, str]:
        """Payload type -> ``a=fmtp`` parameter string (first line per payload type wins)."""
        result: dict[int, str] = {}
        for value in self.attributes_named("fmtp"):
            pt_text, _, params = value.strip().partition(" ")
            if is_digits(pt_text):
                result.setdefault(int(pt_text), params.strip())
        return result

    def lines(self) -> list[str]:
        """The section's lines (``m=`` first) in RFC 8866 order, without line terminators."""
        port = str(self.port) if self.port_count is None else f"{self.port}/{self.port_count}"
        out = [f"m={' '.join([self.media, port, self.proto, *self.formats])}"]
        if self.information is not None:
            out.append(f"i={self.information}")
        out.extend(f"c={c}" for c in self.connections)
        out.extend(f"b={b}" for b in self.bandwidths)
        if self.encryption_key is not None:
            out.append(f"k={self.encryption_key}")
        out.extend(f"{t}={v}" for t, v in self.extra_lines)
        out.extend(f"a={a}" for a in self.attributes)
        return out

    def __str__(self) -> str:
        return "".join(line + "\r\n" for line in self.lines())


@dataclass
class SessionDescription(_AttributeList):
    """A whole SDP body: session-level fields plus the list of media descriptions."""

    version: int = 0
    origin: Origin = field(default_factory=Origin)
    name: str = "-"
    information: str | None = None
    uri: str | None = None
    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    connection: Connection | None = None
    bandwidths: list[Bandwidth] = field(default_factory=list)
    timings: list[Timing] = field(default_factory=lambda: [Timing()])
    time_zones: str | None = None
    encryption_key: str | None = None
    extra_lines: list[tuple[str, str]] = field(default_factory=list)
    attributes: AttributeList = field(default_factory=AttributeList)
    media: list[MediaDescription] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.attributes, AttributeList):
            self.attributes = AttributeList(self.attributes)

    # ---- parsing -----------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str | bytes) -> SessionDescription:
        """Parse an SDP body; tolerates ``\\n`` endings, blank lines and trailing whitespace."""
        if isinstance(text, (bytes, bytearray, memoryview)):
            text = bytes(text).decode("utf-8", errors="surrogateescape")
        lines = [line.rstrip() for line in _LINE_SPLIT.split(text)]
        lines = [line for line in lines if line]
        if not lines:
            raise SdpError("empty SDP body")
        for number, line in enumerate(lines, 1):
            if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
                raise SdpError(f"line {number} is not <type>=<value>: {line!r}")
        if not lines[0].startswith("v="):
            raise SdpError(f"SDP must start with a v= line, got {lines[0]!r}")
        version_text = lines[0][2:].strip()
        if version_text != "0":
            raise SdpError(f"unsupported SDP version v={version_text!r} (only 0 is defined)")

        sd = cls(timings=[])
        seen: set[str] = {"v"}
        timing: Timing | None = None
        section: MediaDescription | None = None
        for number, line in enumerate(lines[1:], 2):
            kind, value = line[0], line[2:]
            try:
                if kind == "m":
                    section = MediaDescription.parse_m_line(value)
                    sd.media.append(section)
                elif section is not None:
                    _parse_media_line(section, kind, value)
                else:
                    timing = sd._parse_session_line(kind, value, seen, timing)
            except SdpError as exc:
                raise SdpError(f"line {number}: {exc}") from None
        if "o" not in seen:
            raise SdpError("SDP has no o= line")
        return sd

    def _parse_session_line(
        self, kind: str, value: str, seen: set[str], timing: Timing | None
    ) -> Timing | None:
        if kind in "vosiuzkc" and kind in seen:
            raise SdpError(f"duplicate {kind}= line at session level")
        seen.add(kind)
        if kind == "o":
            self.origin = Origin.parse(value)
        elif kind == "s":
            self.name = value
        elif kind == "i":
            self.information = value
        elif kind == "u":
            self.uri = value
        elif kind == "e":
            self.emails.append(value)
        elif kind == "p":
            self.phones.append(value)
        elif kind == "c":
            self.connection = Connection.parse(value)
        elif kind == "b":
            self.bandwidths.append(Bandwidth.parse(value))
        elif kind == "t":
            timing = Timing.parse(value)
            self.timings.append(timing)
        elif kind == "r":
            if timing is None:
                raise SdpError("r= line without a preceding t= line")
            timing.repeats.append(value)
        elif kind == "z":
            self.time_zones = value
        elif kind == "k":
            self.encryption_key = value
        elif kind == "a":
            self.attributes.append(Attribute.parse(value))
        else:
            self.extra_lines.append((kind, value))
        return timing

    # ---- building ----------------------------------------------------------------------------

    def lines(self) -> list[str]:
        """Every line of the body in RFC 8866 order, without line terminators."""
        out = [f"v={self.version}", f"o={self.origin}", f"s={self.name or ' '}"]
        if self.information is not None:
            out.append(f"i={self.information}")
        if self.uri is not None:
            out.append(f"u={self.uri}")
        out.extend(f"e={e}" for e in self.emails)
        out.extend(f"p={p}" for p in self.phones)
        if self.connection is not None:
            out.append(f"c={self.connection}")
        out.extend(f"b={b}" for b in self.bandwidths)
        for timing in self.timings or [Timing()]:
            out.append(f"t={timing}")
            out.extend(f"r={r}" for r in timing.repeats)
        if self.time_zones is not None:
            out.append(f"z={self.time_zones}")
        if self.encryption_key is not None:
            out.append(f"k={self.encryption_key}")
        out.extend(f"{t}={v}" for t, v in self.extra_lines)
        out.extend(f"a={a}" for a in self.attributes)
        for section in self.media:
            out.extend(section.lines())
        return out

    def __str__(self) -> str:
        return "".join(line + "\r\n" for line in self.lines())

    def to_bytes(self) -> bytes:
        """The body as bytes with ``\\r\\n`` line endings (UTF-8; undecodable input bytes survive)."""
        return str(self).encode("utf-8", errors="surrogateescape")

    def copy(self) -> SessionDescription:
        """A deep copy, safe to edit without touching this description."""
        return copy.deepcopy(self)

    # ---- effective values --------------------------------------------------------------------

    def _section(self, media: MediaDescription | int) -> MediaDescription:
        return self.media[media] if isinstance(media, int) else media

    def effective_connection(self, media: MediaDescription | int) -> Connection | None:
        """The connection a media section uses: its own ``c=`` if any, else the session-level one."""
        section = self._section(media)
        return section.connection or self.connection

    def effective_direction(self, media: MediaDescription | int) -> str:
        """The direction of a media section: media-level attribute, else session-level, else sendrecv."""
        section = self._section(media)
        return section.direction or self.direction or "sendrecv"

    def uses_ice(self, media: MediaDescription | int) -> bool:
        """True if ICE is in use for the section (ice-ufrag or candidates at media or session level)."""
        section = self._section(media)
        return any(
            level.has_attribute("ice-ufrag") or level.has_attribute("candidate")
            for level in (section, self)
        )

    def is_legacy_hold(self, media: MediaDescription | int) -> bool:
        """True if the section is on hold the RFC 2543 way: ``c=`` 0.0.0.0 without ICE (RFC 3264 §8.4)."""
        conn = self.effective_connection(media)
        if conn is None or conn.address not in _LEGACY_HOLD_ADDRESSES:
            return False
        # WebRTC offers carry c=IN IP4 0.0.0.0 (port 9) as a placeholder when ICE chooses the address.
        return not self.uses_ice(media)


def _parse_media_line(section: MediaDescription, kind: str, value: str) -> None:
    if kind in _SESSION_ONLY_TYPES:
        raise SdpError(f"{kind}= line is not allowed inside a media description")
    if kind == "i":
        if section.information is not None:
            raise SdpError("duplicate i= line in a media description")
        section.information = value
    elif kind == "c":
        section.connections.append(Connection.parse(value))
    elif kind == "b":
        section.bandwidths.append(Bandwidth.parse(value))
    elif kind == "k":
        if section.encryption_key is not None:
            raise SdpError("duplicate k= line in a media description")
        section.encryption_key = value
    elif kind == "a":
        section.attributes.append(Attribute.parse(value))
    else:
        section.extra_lines.append((kind, value))


# --------------------------------------------------------------------------------------------------
# RFC 3264 offer/answer
# --------------------------------------------------------------------------------------------------


def _addrtype(address: str) -> str:
    try:
        return "IP6" if ipaddress.ip_address(address).version == 6 else "IP4"
    except ValueError:
        return "IP6" if ":" in address else "IP4"  # a host name: IP4 unless it looks like IPv6


def _codec_rtpmap(codec: CodecSpec, *, for_offer: bool = False) -> RtpMap:
    if isinstance(codec, RtpMap):
        return codec
    if len(codec) == 3:
        return RtpMap(codec[0], int(codec[1]), int(codec[2]))
    name, rate = codec[0], int(codec[1])
    channels = 2 if for_offer and name.lower() == "opus" else 1  # RFC 7587: always opus/48000/2
    return RtpMap(name, rate, channels)


def _new_origin(address: str, username: str, session_id: str | None) -> Origin:
    sess_id = session_id if session_id is not None else str(secrets.randbelow(2**62) + 1)
    return Origin(username, sess_id, 1, "IN", _addrtype(address), address)


def _reverse_direction(direction: str) -> str:
    return {"sendonly": "recvonly", "recvonly": "sendonly"}.get(direction, direction)


def _combine_direction(allowed: str, local: str) -> str:
    send = allowed in ("sendrecv", "sendonly") and local in ("sendrecv", "sendonly")
    recv = allowed in ("sendrecv", "recvonly") and local in ("sendrecv", "recvonly")
    return {
        (True, True): "sendrecv",
        (True, False): "sendonly",
        (False, True): "recvonly",
        (False, False): "inactive",
    }[(send, recv)]


def _referenced_pts(rtpmap: RtpMap, params: str | None) -> set[int] | None:
    """Payload types an auxiliary format depends on (rtx's apt=, red's pt/pt), or None."""
    if params is None:
        return None
    name = rtpmap.encoding.lower()
    if name == "rtx":
        apt = parse_fmtp_params(params).get("apt")
        return {int(apt)} if apt and is_digits(apt) else None
    if name == "red":
        parts = [p for p in params.split("/") if p.strip()]
        if parts and all(is_digits(p.strip()) for p in parts):
            return {int(p) for p in parts}
    return None


def _answer_port(
    ports: int | Sequence[int] | Mapping[str, int], index: int, media: str
) -> int:
    if isinstance(ports, int):
        return ports
    if isinstance(ports, Mapping):
        return int(ports.get(media, 0))
    return int(ports[index])


def _rejected(offered: MediaDescription) -> MediaDescription:
    section = MediaDescription(
        media=offered.media, port=0, proto=offered.proto, formats=list(offered.formats) or ["0"]
    )
    mid = offered.attribute("mid")
    if mid is not None:
        section.add_attribute("mid", mid)
    return section


def _select_formats(
    offered: MediaDescription,
    local: list[RtpMap],
    *,
    single_codec: bool,
    local_preference: bool,
) -> list[int]:
    rtpmap = offered.rtpmap
    fmtp = offered.fmtp

    def local_rank(pt: int) -> int:
        m = rtpmap[pt]
        return next(i for i, c in enumerate(local) if c.matches(m.encoding, m.clock_rate))

    supported = [
        pt for pt in offered.payload_types
        if pt in rtpmap and any(c.matches(rtpmap[pt].encoding, rtpmap[pt].clock_rate) for c in local)
    ]
    supported = list(dict.fromkeys(supported))  # a payload type listed twice is answered once
    primaries = [pt for pt in supported if rtpmap[pt].encoding.lower() not in _AUXILIARY_ENCODINGS]
    if local_preference:
        primaries.sort(key=local_rank)
    if not primaries:
        return []
    if single_codec:
        primaries = primaries[:1]
    kept = set(primaries)
    rates = {rtpmap[pt].clock_rate for pt in primaries}
    auxiliaries: list[int] = []
    for pt in supported:
        name = rtpmap[pt].encoding.lower()
        if name not in _AUXILIARY_ENCODINGS:
            continue
        deps = _referenced_pts(rtpmap[pt], fmtp.get(pt))
        if name in ("rtx", "red"):
            if deps is None or not deps <= kept:
                continue
        elif single_codec and name == "cn" and rtpmap[pt].clock_rate not in rates:
            continue
        auxiliaries.append(pt)
    if single_codec:
        events = [pt for pt in auxiliaries if rtpmap[pt].encoding.lower() == "telephone-event"]
        if events:
            best = next((pt for pt in events if rtpmap[pt].clock_rate in rates), events[0])
            auxiliaries = [pt for pt in auxiliaries if pt not in events or pt == best]
    order = primaries + auxiliaries
    if not local_preference:
        order.sort(key=offered.payload_types.index)
    return order


def create_answer(
    offer: SessionDescription,
    codecs: Sequence[CodecSpec],
    address: str,
    ports: int | Sequence[int] | Mapping[str, int],
    *,
    direction: str = "sendrecv",
    single_codec: bool = False,
    local_preference: bool = False,
    ptime: int | None = None,
    previous: SessionDescription | None = None,
    session_id: str | None = None,
    username: str = "-",
    session_name: str = "-",
) -> SessionDescription:
    """Answer an offer per RFC 3264 §6: one m-line per offered one, same order, unsupported ones rejected.

    ``codecs`` are the local codecs in preference order, matched by encoding name (case-insensitive) and
    clock rate; the answer keeps the offerer's payload type numbers, its order (unless
    ``local_preference``), and its fmtp for what it keeps. Auxiliary formats (telephone-event, CN, RED,
    RTX, FEC) are kept only when offered at a rate listed in ``codecs`` and never alone: a section with
    no common primary codec is rejected (port 0). ``single_codec`` keeps one primary codec plus one
    telephone-event (preferring its clock rate). ``ports`` is a port for every section, one per offered
    m-line, or a mapping media type -> port (absent types are rejected); port 0 rejects. ``direction``
    is what we are willing to do, combined with the reverse of the offered direction (an RFC 2543 hold,
    ``c=0.0.0.0`` without ICE, counts as the offerer not receiving). Pass ``previous`` (the last SDP we
    sent in this dialog) to keep its o= line and bump the version only if the body changed (§8).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"not an SDP direction: {direction!r}")
    if not isinstance(ports, (int, Mapping)) and len(ports) != len(offer.media):
        raise ValueError(f"{len(ports)} ports given for {len(offer.media)} offered m-lines")
    local = [_codec_rtpmap(c) for c in codecs]
    answer = SessionDescription(
        origin=_new_origin(address, username, session_id),
        name=session_name,
        connection=Connection.for_address(address),
        timings=copy.deepcopy(offer.timings) or [Timing()],  # RFC 3264 §6: t= equals the offer's
    )
    for index, offered in enumerate(offer.media):
        port = _answer_port(ports, index, offered.media)
        chosen: list[int] = []
        if not offered.is_rejected and port > 0 and "RTP" in offered.proto.upper():
            chosen = _select_formats(
                offered, local, single_codec=single_codec, local_preference=local_preference
            )
        if not chosen:
            answer.media.append(_rejected(offered))
            continue
        section = MediaDescription(
            media=offered.media, port=port, proto=offered.proto, formats=[str(pt) for pt in chosen]
        )
        mid = offered.attribute("mid")
        if mid is not None:
            section.add_attribute("mid", mid)
        rtpmap, fmtp = offered.rtpmap, offered.fmtp
        for pt in chosen:
            section.add_attribute("rtpmap", f"{pt} {rtpmap[pt]}")
            if pt in fmtp:
                section.add_attribute("fmtp", f"{pt} {fmtp[pt]}")
        if ptime is not None:
            section.add_attribute("ptime", str(ptime))
        offered_direction = offer.effective_direction(offered)
        if offer.is_legacy_hold(offered):
            offered_direction = _combine_direction(offered_direction, "sendonly")
        section.direction = _combine_direction(_reverse_direction(offered_direction), direction)
        answer.media.append(section)
    if previous is not None:
        answer = bump_version(answer, previous)
    return answer


def create_offer(
    address: str,
    port: int,
    codecs: Sequence[CodecSpec],
    *,
    media: str = "audio",
    proto: str = "RTP/AVP",
    direction: str = "sendrecv",
    ptime: int | None = None,
    fmtp: Mapping[str, str] | None = None,
    previous: SessionDescription | None = None,
    session_id: str | None = None,
    username: str = "-",
    session_name: str = "-",
) -> SessionDescription:
    """Build a fresh local offer with one m-line for ``codecs`` (see MediaDescription.for_codecs).

    More m-lines can be appended with ``MediaDescription.for_codecs``. Pass ``previous`` (the last SDP
    we sent in this dialog) for a re-offer: its o= line is kept and the version bumped if changed.
    """
    offer = SessionDescription(
        origin=_new_origin(address, username, session_id),
        name=session_name,
        connection=Connection.for_address(address),
    )
    offer.media.append(
        MediaDescription.for_codecs(
            codecs, port, media=media, proto=proto, direction=direction, ptime=ptime, fmtp=fmtp
        )
    )
    if previous is not None:
        offer = bump_version(offer, previous)
    return offer


def bump_version(sdp: SessionDescription, previous: SessionDescription) -> SessionDescription:
    """Copy of ``sdp`` with ``previous``'s o= line, sess-version +1 only if the body changed (RFC 3264 §8)."""
    result = sdp.copy()
    result.origin = replace(previous.origin)
    if result != previous:
        result.origin.sess_version = previous.origin.sess_version + 1
    return result


# --------------------------------------------------------------------------------------------------
# Hold
# --------------------------------------------------------------------------------------------------


def _active_sections(sd: SessionDescription) -> Iterator[MediaDescription]:
    return (m for m in sd.media if not m.is_rejected)


def is_hold(sd: SessionDescription, media: MediaDescription | int | None = None) -> bool:
    """True if the SDP puts media on hold: sendonly/inactive, or ``c=0.0.0.0`` (RFC 3264 §8.4).

    With no ``media``, true when there is at least one active (port != 0) section and all of them are
    held. ICE offers' ``c=IN IP4 0.0.0.0`` placeholder is not a hold.
    """
    if media is not None:
        return sd.effective_direction(media) in ("sendonly", "inactive") or sd.is_legacy_hold(media)
    active = list(_active_sections(sd))
    return bool(active) and all(is_hold(sd, m) for m in active)


def hold(
    sd: SessionDescription, *, inactive: bool = False, legacy: bool = False
) -> SessionDescription:
    """Re-offer that holds every active section: sendrecv->sendonly, recvonly->inactive (RFC 3264 §8.4).

    ``sd`` is the SDP we last sent in the dialog; the result keeps its o= line with the version bumped.
    ``inactive`` holds without music (inactive everywhere); ``legacy`` also sets ``c=0.0.0.0`` for
    peers that only understand RFC 2543 hold.
    """
    held = sd.copy()
    for section in _active_sections(held):
        current = held.effective_direction(section)
        if inactive or current in ("recvonly", "inactive"):
            section.direction = "inactive"
        else:
            section.direction = "sendonly"
        conn = held.effective_connection(section)
        if legacy and conn is not None and conn.addrtype.upper() == "IP4":
            conn.address = "0.0.0.0"  # the section's own c= if it has one, else the session's
    if held.direction is not None:
        held.direction = None  # session-level direction would be overridden anyway; drop it
    return bump_version(held, sd)


def resume(
    sd: SessionDescription, *, address: str | None = None, direction: str = "sendrecv"
) -> SessionDescription:
    """Re-offer that takes every active section off hold (``direction``, default sendrecv).

    ``sd`` is the SDP we last sent; ``address`` replaces a ``c=0.0.0.0`` legacy hold address (required
    when there is one). The result keeps ``sd``'s o= line with the version bumped.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"not an SDP direction: {direction!r}")
    resumed = sd.copy()
    for section in _active_sections(resumed):
        section.direction = direction
        for conn in [*section.connections, resumed.connection]:
            if conn is not None and conn.address in _LEGACY_HOLD_ADDRESSES and not resumed.uses_ice(section):
                if address is None:
                    raise ValueError("resume() needs address= to replace a c=0.0.0.0 hold")
                conn.address = address
                conn.addrtype = _addrtype(address)
    if resumed.direction is not None:
        resumed.direction = None
    return bump_version(resumed, sd)
