"""callpath settings: one typed object built from a TOML file, then CALLPATH_<SECTION>_<KEY> overrides.

The schema (sections, keys, defaults) is the contract in docs/interfaces.md; every other package reads
its configuration from the ``Settings`` object the composition root (``web``) builds here.

Precedence, lowest first: the dataclass defaults, the TOML file, the environment. Unknown keys, wrong
types and out-of-range values raise ``SettingsError`` with a message naming the offending key (or
environment variable), never a traceback from deep inside the server.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "CALLPATH_"
SUPPORTED_AUTH_ALGORITHMS = ("MD5", "SHA-256")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")


class SettingsError(ValueError):
    """A configuration file or environment variable that callpath cannot accept."""


def _setting(default: Any = dataclasses.MISSING, *, help: str, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field carrying the one-line help shown by ``callpath run --help``."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class ServerSettings:
    """[server]: process-wide paths and logging."""

    data_dir: str = _setting("./data", help="directory for the SQLite file and TLS/DTLS certificates")
    log_level: str = _setting("info", help="debug | info | warning | error | critical")
    log_format: str = _setting("text", help="text | json")
    gc_full_interval: int = _setting(
        3600, help="seconds between full collections of the cyclic GC (a pause of ~0.3 us per live object); 0: never")


@dataclass
class DatabaseSettings:
    """[database]: where the SQL database lives."""

    url: str = _setting(
        "", help="SQLAlchemy URL; empty -> sqlite:///<data_dir>/callpath.db; postgresql+psycopg://... for PostgreSQL"
    )


@dataclass
class B2buaEntry:
    """One [[sip.b2bua]] table: calls to ``number`` are answered and re-originated to ``target``."""

    number: str
    target: str


@dataclass
class SipSettings:
    """[sip]: transports, registrar, digest authentication and tracing."""

    listen: str = _setting("127.0.0.1", help="address the SIP transports bind")
    advertise: str = _setting("", help="address put in Via/Record-Route (NAT); empty -> listen")
    udp_port: int = _setting(5060, help="UDP port; 0 disables the transport")
    tcp_port: int = _setting(5060, help="TCP port; 0 disables the transport")
    tls_port: int = _setting(0, help="TLS port; 0 disables; needs tls_cert/tls_key or self-signs under data_dir")
    tls_cert: str = _setting("", help="PEM certificate file for TLS")
    tls_key: str = _setting("", help="PEM private key file for TLS")
    domain: str = _setting("", help="SIP domain and digest realm; empty -> advertise address")
    auth: bool = _setting(True, help="challenge REGISTER (401) and INVITE etc. (407) from unknown sources")
    auth_algorithms: list[str] = _setting(
        help="WWW-Authenticate challenges, in order (MD5, SHA-256); MD5 alone by default: baresip and many "
             "phones fail on a SHA-256 challenge", factory=lambda: ["MD5"]
    )
    nonce_ttl: int = _setting(300, help="seconds a digest nonce stays valid")
    ephemeral_secret: str = _setting("", help="shared secret for <expiry>:<user> browser credentials; empty disables")
    min_expires: int = _setting(60, help="shortest registration accepted (seconds; shorter -> 423)")
    max_expires: int = _setting(3600, help="longest registration granted (seconds)")
    default_expires: int = _setting(3600, help="registration time when the client asks none (seconds)")
    location: str = _setting("memory", help="location service: memory | redis://host:port/db")
    sip_trace: bool = _setting(False, help="print every SIP message sent/received")
    hep: str = _setting("", help="host:port of a HEP v3 collector (Homer, sngrep -L); empty disables")
    max_message_size: int = _setting(65535, help="largest SIP message accepted (bytes)")
    overload_lag_ms: int = _setting(
        250, help="event-loop lag (ms) above which new calls/registrations get 503 + Retry-After; 0 disables")
    b2bua: list[B2buaEntry] = _setting(
        help="[[sip.b2bua]] number/target tables; env: NUMBER=TARGET,NUMBER=TARGET", factory=list
    )
    # -- nodes sharing one location store (docs/sip.md "Several nodes on one Redis")
    node_id: str = _setting(
        "", help="this node's id among the nodes sharing sip.location; empty -> generated once, kept in "
                 "data_dir/node-id")
    node_uri: str = _setting(
        "", help="SIP URI other nodes forward calls for this node's connections to; "
                 "empty -> sip:<advertise>:<tcp_port>;transport=tcp (udp_port when TCP is off)")

    # -- DNS (RFC 3263 next hops: NAPTR, SRV, A/AAAA; docs/sip.md "Locating servers") --
    dns_servers: list[str] = _setting(
        help="name servers as \"ip[:port]\" for NAPTR/SRV/A lookups; empty -> those of /etc/resolv.conf",
        factory=list)

    @property
    def advertise_host(self) -> str:
        """The address put in Via/Record-Route: ``advertise`` or, when empty, ``listen``."""
        return self.advertise or self.listen

    @property
    def realm(self) -> str:
        """The SIP domain / digest realm: ``domain`` or, when empty, the advertised address."""
        return self.domain or self.advertise_host


@dataclass
class WebSettings:
    """[web]: the HTTP server (REST API, UI, SIP over WebSocket at /ws)."""

    listen: str = _setting("127.0.0.1", help="address the HTTP server binds")
    port: int = _setting(8088, help="HTTP + SIP over WebSocket at /ws (subprotocol \"sip\")")
    tls_cert: str = _setting("", help="PEM certificate: serve HTTPS and WSS (browsers need WSS off localhost)")
    tls_key: str = _setting("", help="PEM private key for tls_cert")


@dataclass
class MediaSettings:
    """[media]: the media workers that anchor RTP of back-to-back calls (docs/media.md).

    On by default (a newcomer expects browsers and phones to hear each other): it spawns worker processes and
    binds a fixed UDP port (``ice_port``) and the RTP range, so a second callpath process on one host needs its
    own ports (or ``enabled = false``).
    """

    enabled: bool = _setting(True, help="start media workers and anchor the RTP of calls through callpath")
    workers: int = _setting(1, help="media worker processes (each takes its share of the RTP range)")
    listen: str = _setting("", help="address the media (ICE and RTP) sockets bind; empty -> sip listen")
    advertise: str = _setting("", help="address put in SDP c= lines and ICE candidates; empty -> sip advertise")
    ice_port: int = _setting(40000, help="UDP port of browser (ICE) legs, +1 per further worker; 0 -> any")
    rtp_port_min: int = _setting(30000, help="lowest plain-RTP port (even RTP ports, RTCP on +1)")
    rtp_port_max: int = _setting(39999, help="highest plain-RTP port")
    prefer_passthrough: bool = _setting(True, help="same G.711 codec on both legs when both offer it")
    c_relay: bool = _setting(True, help="forward passthrough RTP/SRTP in the C data plane (media._relay) when built")
    opus_complexity: int = _setting(5, help="libopus encoder complexity 0-10 of transcoded calls (CPU vs quality)")
    opus_bitrate: int = _setting(24000, help="Opus bitrate towards browsers, bits/s (6000-510000)")
    opus_fec: bool = _setting(True, help="Opus in-band FEC towards browsers (spent only while loss is seen)")
    opus_dtx: bool = _setting(False, help="Opus DTX towards browsers: no packets in silence")
    control_timeout: float = _setting(
        2.0, help="seconds SIP waits for a media worker's reply before degrading (see docs/interfaces.md)"
    )


@dataclass
class LimitsSettings:
    """[limits]: what one source may send, and how much state the SIP server keeps (docs/sip.md "Floods").

    The per-source limiter counts every message and new connection per address over a sliding window;
    a source above the limit is dropped unparsed (UDP: in the kernel) for ``block_time``. The defaults
    let a busy office NAT of a few hundred phones through (a mass re-registration after a power cut is
    a few hundred messages a second) and stop a scanner's flood within milliseconds. At a cap, new
    requests get a stateless 503 with Retry-After instead of memory.
    """

    source_limit: int = _setting(1000, help="messages per source address per window before it is blocked; 0 disables")
    source_window: float = _setting(2.0, help="seconds of the per-source sliding window")
    block_time: int = _setting(30, help="seconds a source over the limit stays blocked")
    trusted: list[str] = _setting(
        help="addresses/networks never limited (trunks, other callpath nodes), e.g. [\"192.0.2.0/24\"]",
        factory=list)
    kernel_filter: bool = _setting(True, help="drop blocked sources' UDP in the kernel (socket filter, Linux)")
    max_transactions: int = _setting(30000, help="live SIP transactions; new requests beyond get 503; 0: no cap")
    max_tasks: int = _setting(2000, help="requests waiting on the user directory/location store; 0: no cap")
    max_calls: int = _setting(5000, help="calls callpath takes part in (back-to-back legs); 0: no cap")
    max_connections: int = _setting(4096, help="open TCP/TLS/WebSocket connections; 0: no cap")
    retry_after: int = _setting(5, help="Retry-After seconds in 503s sent at a cap or under overload")


@dataclass
class RingGroupEntry:
    """One [[calls.groups]] table: a number that rings several local users (a hunt group)."""

    number: str
    members: list[str]
    strategy: str = "parallel"
    ring_timeout: float = 20.0
    park: bool = False


@dataclass
class ConferenceEntry:
    """One [[calls.conferences]] table: a number whose callers all talk together."""

    number: str


@dataclass
class CallsSettings:
    """[calls]: how calls to local users are connected (docs/callcontrol.md, acd/router.py).

    ``anchor = "auto"`` sends a call through the media plane when the two sides could not hear each other
    directly (a browser on either side, or a caller without G.711) and proxies the rest, as a Kamailio +
    rtpengine deployment does; ``always`` anchors every call, ``never`` none.
    """

    anchor: str = _setting("auto", help="media anchoring of calls to local users: auto | always | never")
    ring_timeout: float = _setting(60.0, help="seconds a call to a local user rings before the caller gets 480")
    rtp_timeout: float = _setting(
        60.0, help="seconds without RTP (not on hold) before an anchored call is hung up; 0 disables")
    inbound_target: str = _setting(
        "", help="extension or username that trunk calls whose DID is no local user ring; empty -> 404")
    music_on_hold: list[str] = _setting(
        help="audio files (WAV, MP3...) played in a loop to a party on hold; empty -> a built-in melody",
        factory=list)
    groups: list[RingGroupEntry] = _setting(
        help="[[calls.groups]] number/members/strategy (parallel|sequential)/ring_timeout/park tables",
        factory=list)
    conferences: list[ConferenceEntry] = _setting(help="[[calls.conferences]] number tables", factory=list)


@dataclass
class Settings:
    """The whole configuration of one callpath process, one attribute per TOML section."""

    server: ServerSettings = field(default_factory=ServerSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    sip: SipSettings = field(default_factory=SipSettings)
    web: WebSettings = field(default_factory=WebSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    calls: CallsSettings = field(default_factory=CallsSettings)
    trunks: list["TrunkSettings"] = field(default_factory=list)   # [[trunks]] tables (see the trunks block)

    @property
    def data_path(self) -> Path:
        """``server.data_dir`` as an absolute path (relative paths are taken from the working directory)."""
        return Path(self.server.data_dir).expanduser().resolve()

    @property
    def database_url(self) -> str:
        """``database.url`` or, when empty, the embedded SQLite file under ``data_dir``."""
        if self.database.url:
            return self.database.url
        return f"sqlite:///{self.data_path / 'callpath.db'}"

    def validate(self) -> None:
        """Check values (ranges, choices, consistency) that types alone cannot express."""
        _validate(self)


SECTIONS: dict[str, type] = {
    "server": ServerSettings,
    "database": DatabaseSettings,
    "sip": SipSettings,
    "web": WebSettings,
    "media": MediaSettings,
    "limits": LimitsSettings,
    "calls": CallsSettings,
}


def env_var_name(section: str, key: str) -> str:
    """The environment variable overriding ``[section] key``, e.g. CALLPATH_SIP_UDP_PORT."""
    return f"{ENV_PREFIX}{section.upper()}_{key.upper()}"


# --------------------------------------------------------------------------------------------- loading


def load_settings(path: str | os.PathLike[str] | None, env: Mapping[str, str] = os.environ) -> Settings:
    """Build Settings from defaults, the TOML file at ``path`` (if any) and CALLPATH_* variables in ``env``."""
    settings = Settings()
    if path is not None:
        file_path = Path(path)
        try:
            raw = tomllib.loads(file_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SettingsError(f"configuration file {file_path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"cannot read configuration file {file_path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{file_path}: invalid TOML: {exc}") from None
        _apply_file(settings, raw, str(file_path))
    _apply_env(settings, env)
    settings.validate()
    return settings


def _suggest(name: str, known: list[str]) -> str:
    """A ' (did you mean X?)' hint for a misspelt key, or a list of the known keys."""
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known: {', '.join(known)})"


def _apply_file(settings: Settings, raw: dict[str, Any], source: str) -> None:
    """Copy a parsed TOML document onto ``settings``, rejecting unknown sections/keys and wrong types."""
    for section_name, table in raw.items():
        if section_name == TRUNKS_KEY:
            settings.trunks = _trunks_from_toml(table, source)
            continue
        if section_name not in SECTIONS:
            raise SettingsError(f"{source}: unknown section [{section_name}]{_suggest(section_name, list(SECTIONS))}")
        if not isinstance(table, dict):
            raise SettingsError(f"{source}: {section_name} must be a table ([{section_name}])")
        section = getattr(settings, section_name)
        fields = {f.name: f for f in dataclasses.fields(section)}
        for key, value in table.items():
            name = f"{section_name}.{key}"
            if key not in fields:
                raise SettingsError(f"{source}: unknown setting {name}{_suggest(key, list(fields))}")
            setattr(section, key, _check_toml_value(name, _field_type(type(section), key), value, source))


def _field_type(cls: type, key: str) -> Any:
    """The resolved annotation of ``cls.key`` (the module uses postponed annotations)."""
    return typing.get_type_hints(cls)[key]


def _type_name(tp: Any) -> str:
    """A human name for a settings type, for error messages."""
    if tp is str:
        return "a string"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "a boolean (true/false)"
    if tp == list[str]:
        return "a list of strings"
    if tp == list[B2buaEntry]:
        return "a list of [[sip.b2bua]] tables"
    if typing.get_origin(tp) is list and typing.get_args(tp)[0] in _ENTRY_TABLES:
        return f"a list of [[{_ENTRY_TABLES[typing.get_args(tp)[0]]}]] tables"
    return str(tp)


def _check_toml_value(name: str, tp: Any, value: Any, source: str) -> Any:
    """Return ``value`` if it has type ``tp`` (bools are not integers), else raise a SettingsError."""
    wrong = SettingsError(f"{source}: {name} must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if tp is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise wrong
        return value
    if tp == list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise wrong
        return list(value)
    if tp == list[B2buaEntry]:
        if not isinstance(value, list):
            raise wrong
        return [_b2bua_from_table(f"{name}[{i}]", entry, source) for i, entry in enumerate(value)]
    if typing.get_origin(tp) is list and typing.get_args(tp)[0] in _ENTRY_TABLES:
        if not isinstance(value, list):
            raise wrong
        cls = typing.get_args(tp)[0]
        return [_entry_from_table(cls, f"{name}[{i}]", entry, source) for i, entry in enumerate(value)]
    raise SettingsError(f"{source}: {name}: unsupported setting type {tp}")  # pragma: no cover - schema bug


_ENTRY_TABLES: dict[type, str] = {RingGroupEntry: "calls.groups", ConferenceEntry: "calls.conferences"}


def _entry_from_table(cls: type, name: str, entry: Any, source: str) -> Any:
    """One table of an array of tables -> its dataclass: unknown keys, missing required keys and types checked."""
    if not isinstance(entry, dict):
        raise SettingsError(f"{source}: {name} must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in entry:
        if key not in fields:
            raise SettingsError(f"{source}: unknown setting {name}.{key}{_suggest(key, list(fields))}")
    values: dict[str, Any] = {}
    for key, f in fields.items():
        if key not in entry:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SettingsError(f"{source}: {name} is missing {key!r}")
            continue
        values[key] = _check_toml_value(f"{name}.{key}", _field_type(cls, key), entry[key], source)
    return cls(**values)


def _b2bua_from_table(name: str, entry: Any, source: str) -> B2buaEntry:
    """One [[sip.b2bua]] table -> B2buaEntry, with the same unknown-key/type checks as sections."""
    if not isinstance(entry, dict):
        raise SettingsError(f"{source}: {name} must be a table with number and target")
    known = [f.name for f in dataclasses.fields(B2buaEntry)]
    for key in entry:
        if key not in known:
            raise SettingsError(f"{source}: unknown setting {name}.{key}{_suggest(key, known)}")
    values: dict[str, str] = {}
    for key in known:
        if key not in entry:
            raise SettingsError(f"{source}: {name} is missing {key!r}")
        if not isinstance(entry[key], str):
            raise SettingsError(
                f"{source}: {name}.{key} must be a string (quote it: {key} = \"{entry[key]}\"), "
                f"got {type(entry[key]).__name__}"
            )
        values[key] = entry[key]
    return B2buaEntry(**values)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_env_value(var: str, tp: Any, text: str) -> Any:
    """Convert an environment variable's text to the field type ``tp``, naming ``var`` on failure."""
    if tp is str:
        return text
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise SettingsError(f"{var}={text!r}: expected a boolean (true/false, 1/0, yes/no, on/off)")
    if tp is int:
        try:
            return int(text.strip())
        except ValueError:
            raise SettingsError(f"{var}={text!r}: expected an integer") from None
    if tp is float:
        try:
            return float(text.strip())
        except ValueError:
            raise SettingsError(f"{var}={text!r}: expected a number") from None
    if tp == list[str]:
        return [item.strip() for item in text.split(",") if item.strip()]
    if typing.get_origin(tp) is list and typing.get_args(tp)[0] in _ENTRY_TABLES:
        raise SettingsError(f"{var}: [[{_ENTRY_TABLES[typing.get_args(tp)[0]]}]] tables are set in the "
                            "configuration file, not the environment")
    if tp == list[B2buaEntry]:
        entries = []
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            number, sep, target = item.partition("=")
            if not sep or not number.strip() or not target.strip():
                raise SettingsError(f"{var}: entry {item!r} must be NUMBER=TARGET (e.g. 9000=sip:bob@127.0.0.1:5070)")
            entries.append(B2buaEntry(number=number.strip(), target=target.strip()))
        return entries
    raise SettingsError(f"{var}: unsupported setting type {tp}")  # pragma: no cover - schema bug


def _apply_env(settings: Settings, env: Mapping[str, str]) -> None:
    """Apply CALLPATH_<SECTION>_<KEY> overrides; an unknown key inside a known section is an error."""
    for var, text in env.items():
        if not var.startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX):]
        for section_name, cls in SECTIONS.items():
            prefix = section_name.upper() + "_"
            if not rest.startswith(prefix):
                continue
            key = rest[len(prefix):].lower()
            names = [f.name for f in dataclasses.fields(cls)]
            if key not in names:
                known = [env_var_name(section_name, n) for n in names]
                raise SettingsError(f"unknown environment variable {var}{_suggest(var, known)}")
            setattr(getattr(settings, section_name), key, _parse_env_value(var, _field_type(cls, key), text))
            break


# ------------------------------------------------------------------------------------------ validation


def _validate(s: Settings) -> None:
    """Raise SettingsError for the first value outside its allowed range or set."""
    if s.server.log_level.lower() not in LOG_LEVELS:
        raise SettingsError(f"server.log_level must be one of {', '.join(LOG_LEVELS)}, got {s.server.log_level!r}")
    if s.server.log_format not in LOG_FORMATS:
        raise SettingsError(f"server.log_format must be one of {', '.join(LOG_FORMATS)}, got {s.server.log_format!r}")
    if not s.server.data_dir:
        raise SettingsError("server.data_dir must not be empty")
    if s.server.gc_full_interval < 0:
        raise SettingsError(f"server.gc_full_interval must be 0 (never) or a number of seconds, got {s.server.gc_full_interval}")
    for name, port in (
        ("sip.udp_port", s.sip.udp_port),
        ("sip.tcp_port", s.sip.tcp_port),
        ("sip.tls_port", s.sip.tls_port),
        ("web.port", s.web.port),
    ):
        if not 0 <= port <= 65535:
            raise SettingsError(f"{name} must be between 0 and 65535, got {port}")
    if not s.sip.listen:
        raise SettingsError("sip.listen must not be empty")
    if bool(s.sip.tls_cert) != bool(s.sip.tls_key):
        raise SettingsError("sip.tls_cert and sip.tls_key must be given together")
    algorithms = s.sip.auth_algorithms
    if not algorithms:
        raise SettingsError(f"sip.auth_algorithms must name at least one of {', '.join(SUPPORTED_AUTH_ALGORITHMS)}")
    for algorithm in algorithms:
        if algorithm not in SUPPORTED_AUTH_ALGORITHMS:
            raise SettingsError(
                f"sip.auth_algorithms: unsupported algorithm {algorithm!r} "
                f"(supported: {', '.join(SUPPORTED_AUTH_ALGORITHMS)})"
            )
    if len(set(algorithms)) != len(algorithms):
        raise SettingsError(f"sip.auth_algorithms lists an algorithm twice: {algorithms}")
    for name in ("nonce_ttl", "min_expires", "max_expires", "default_expires", "max_message_size"):
        if getattr(s.sip, name) <= 0:
            raise SettingsError(f"sip.{name} must be positive, got {getattr(s.sip, name)}")
    if not s.sip.min_expires <= s.sip.default_expires <= s.sip.max_expires:
        raise SettingsError(
            "sip expiry settings must satisfy min_expires <= default_expires <= max_expires, got "
            f"{s.sip.min_expires} / {s.sip.default_expires} / {s.sip.max_expires}"
        )
    lim = s.limits
    for name in ("source_limit", "block_time", "max_transactions", "max_tasks", "max_calls", "max_connections",
                 "retry_after"):
        if getattr(lim, name) < 0:
            raise SettingsError(f"limits.{name} must be 0 or positive, got {getattr(lim, name)}")
    if lim.source_window <= 0:
        raise SettingsError(f"limits.source_window must be positive seconds, got {lim.source_window}")
    from sipcore.limiter import parse_networks

    try:
        parse_networks(lim.trusted)
    except ValueError as exc:
        raise SettingsError(f"limits.trusted: {exc}") from None
    if s.sip.max_message_size < 1500:
        raise SettingsError(f"sip.max_message_size must be at least 1500 bytes, got {s.sip.max_message_size}")
    if s.sip.location != "memory" and not s.sip.location.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(f"sip.location must be 'memory' or a redis:// URL, got {s.sip.location!r}")
    if s.sip.hep:
        host, sep, port = s.sip.hep.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise SettingsError(f"sip.hep must be host:port, got {s.sip.hep!r}")
    _validate_node(s.sip)
    numbers: set[str] = set()
    for i, entry in enumerate(s.sip.b2bua):
        if not entry.number:
            raise SettingsError(f"sip.b2bua[{i}].number must not be empty")
        if entry.number in numbers:
            raise SettingsError(f"sip.b2bua: number {entry.number!r} is listed twice")
        numbers.add(entry.number)
        if not entry.target.lower().startswith(("sip:", "sips:")):
            raise SettingsError(f"sip.b2bua[{i}].target must be a sip: or sips: URI, got {entry.target!r}")
    _validate_media(s.media)
    _validate_calls(s.calls)
    _validate_trunks(s.trunks)
    _validate_dns(s.sip)


def _validate_calls(c: CallsSettings) -> None:
    """[calls]: a known anchoring mode, a positive ring timeout, music files that exist."""
    if c.anchor not in ("auto", "always", "never"):
        raise SettingsError(f"calls.anchor must be auto, always or never, got {c.anchor!r}")
    if not c.ring_timeout > 0:
        raise SettingsError(f"calls.ring_timeout must be positive, got {c.ring_timeout}")
    if c.rtp_timeout < 0:
        raise SettingsError(f"calls.rtp_timeout must be 0 (off) or positive, got {c.rtp_timeout}")
    for path in c.music_on_hold:
        if not Path(path).expanduser().is_file():
            raise SettingsError(f"calls.music_on_hold: {path} is not a file")
    numbers: set[str] = set()
    for kind, entries in (("groups", c.groups), ("conferences", c.conferences)):
        for i, entry in enumerate(entries):
            if not entry.number.strip():
                raise SettingsError(f"calls.{kind}[{i}].number must not be empty")
            if entry.number in numbers:
                raise SettingsError(f"calls.{kind}[{i}]: number {entry.number!r} is used twice")
            numbers.add(entry.number)
    for i, group in enumerate(c.groups):
        if not group.members or not all(m.strip() for m in group.members):
            raise SettingsError(f"calls.groups[{i}].members must list at least one extension or username")
        if group.strategy not in ("parallel", "sequential"):
            raise SettingsError(f"calls.groups[{i}].strategy must be parallel or sequential, got {group.strategy!r}")
        if not group.ring_timeout > 0:
            raise SettingsError(f"calls.groups[{i}].ring_timeout must be positive, got {group.ring_timeout}")


def _validate_dns(sip: SipSettings) -> None:
    from sipcore.dns import parse_nameserver

    for server in sip.dns_servers:
        try:
            parse_nameserver(server)
        except ValueError as exc:
            raise SettingsError(f"sip.dns_servers: {exc}") from None


def _validate_node(sip: SipSettings) -> None:
    """[sip] node_id / node_uri: an id fit for a URI parameter, a SIP URI without a user part."""
    from sipcore.cluster import valid_node_id
    from sipcore.errors import SipParseError
    from sipcore.uri import SipUri

    if sip.node_id and not valid_node_id(sip.node_id):
        raise SettingsError(f"sip.node_id must be 1-64 letters, digits, '.', '_' or '-', got {sip.node_id!r}")
    if sip.node_uri:
        try:
            uri = SipUri.parse(sip.node_uri)
        except SipParseError as exc:
            raise SettingsError(f"sip.node_uri is not a SIP URI ({exc.reason}): {sip.node_uri!r}") from None
        if uri.scheme != "sip" or uri.user is not None:
            raise SettingsError(f"sip.node_uri must be sip:host[:port][;transport=...], got {sip.node_uri!r}")
    if not (sip.udp_port or sip.tcp_port) and not sip.node_uri and sip.location != "memory":
        raise SettingsError("sip.node_uri must be set when neither sip.udp_port nor sip.tcp_port is open")


def _validate_media(m: MediaSettings) -> None:
    """[media]: worker count, port ranges that every worker can share, a positive control timeout."""
    if m.workers < 1:
        raise SettingsError(f"media.workers must be at least 1, got {m.workers}")
    for name, port in (("media.rtp_port_min", m.rtp_port_min), ("media.rtp_port_max", m.rtp_port_max)):
        if not 1024 <= port <= 65535:
            raise SettingsError(f"{name} must be between 1024 and 65535, got {port}")
    if m.rtp_port_min >= m.rtp_port_max:
        raise SettingsError(
            f"media.rtp_port_min must be below media.rtp_port_max, got {m.rtp_port_min}-{m.rtp_port_max}"
        )
    span = (m.rtp_port_max - m.rtp_port_min + 1) // m.workers
    if span - span % 2 < 2:
        raise SettingsError(
            f"media RTP range {m.rtp_port_min}-{m.rtp_port_max} is too small for {m.workers} workers "
            "(each needs at least one RTP/RTCP pair)"
        )
    if m.ice_port:
        last = m.ice_port + m.workers - 1
        if m.ice_port < 1 or last > 65535:
            raise SettingsError(f"media.ice_port must be between 1 and {65536 - m.workers} (or 0), got {m.ice_port}")
        if m.ice_port <= m.rtp_port_max and last >= m.rtp_port_min:
            raise SettingsError(
                f"media.ice_port {m.ice_port} (one per worker) overlaps the RTP range "
                f"{m.rtp_port_min}-{m.rtp_port_max}"
            )
    if m.control_timeout <= 0:
        raise SettingsError(f"media.control_timeout must be positive, got {m.control_timeout}")
    if not 0 <= m.opus_complexity <= 10:
        raise SettingsError(f"media.opus_complexity must be between 0 and 10, got {m.opus_complexity}")
    if not 6000 <= m.opus_bitrate <= 510000:
        raise SettingsError(f"media.opus_bitrate must be between 6000 and 510000, got {m.opus_bitrate}")


# ------------------------------------------------------------------------------------------- [[trunks]]
# SIP trunks (docs/trunks.md): a top-level array of tables, one per carrier. Parsed and validated here;
# web/server.py turns each into a sipcore.trunk.TrunkConfig. No environment override (tables do not fit).

TRUNKS_KEY = "trunks"


@dataclass
class TrunkSettings:
    """One [[trunks]] table (docs/interfaces.md and docs/trunks.md describe every key)."""

    name: str = _setting("", help="unique name of the trunk (logs, status, preferred trunk)")
    host: str = _setting("", help="carrier SIP server: host or host:port (IPv6 in brackets)")
    transport: str = _setting("udp", help="udp | tcp | tls")
    username: str = _setting("", help="account at the carrier (REGISTER AoR user, default From user)")
    password: str = field(default="", repr=False,
                          metadata={"help": "digest password for 401/407 challenges; empty: none"})
    auth_username: str = _setting("", help="digest username when it differs from username")
    realm: str = _setting("", help="answer only challenges of this realm; empty: any")
    register: bool = _setting(False, help="keep a registration at the carrier (inbound calls to our Contact)")
    register_expires: int = _setting(3600, help="registration time asked (seconds, 10-86400)")
    from_user: str = _setting("", help="From user of outbound calls; empty: caller_id's number, else username")
    caller_id: str = _setting("", help="'Name <number>', 'number' or 'Name': From display name/user")
    from_domain: str = _setting("", help="From/To domain towards the carrier; empty: the host")
    inbound_hosts: list[str] = _setting(help="IPs/CIDRs calls come from; empty: the host's addresses",
                                        factory=list)
    did_source: str = _setting("ruri", help="where the dialled number is: ruri (Request-URI user) | to (To user)")
    max_channels: int = _setting(0, help="concurrent calls through the trunk; 0: unlimited")
    codecs: list[str] = _setting(help="codecs offered, in order: PCMA, PCMU, opus",
                                 factory=lambda: ["PCMA", "PCMU"])
    dtmf: str = _setting("rfc4733", help="rfc4733 | inband | info")
    qualify_interval: int = _setting(0, help="seconds between OPTIONS pings; 0: off")
    priority: int = _setting(0, help="failover order: lower first (ties: file order)")
    response_timeout: float = _setting(
        5.0, help="seconds an INVITE through the trunk may get no response at all (not even 100) before the "
                  "next trunk is tried")

    def to_config(self) -> Any:
        """The sipcore.trunk.TrunkConfig of this table."""
        from sipcore.trunk import TrunkConfig

        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["inbound_hosts"] = tuple(self.inbound_hosts)
        values["codecs"] = tuple(self.codecs)
        return TrunkConfig(**values)


_CODEC_SPELLING = {"pcma": "PCMA", "pcmu": "PCMU", "opus": "opus"}


def _trunks_from_toml(value: Any, source: str) -> list[TrunkSettings]:
    """The [[trunks]] array -> TrunkSettings, rejecting unknown keys and wrong types (naming trunks[i].key)."""
    if not isinstance(value, list):
        raise SettingsError(f"{source}: trunks must be an array of tables ([[trunks]]), got {type(value).__name__}")
    known = {f.name: f for f in dataclasses.fields(TrunkSettings)}
    out = []
    for i, entry in enumerate(value):
        name = f"trunks[{i}]"
        if not isinstance(entry, dict):
            raise SettingsError(f"{source}: {name} must be a table ([[trunks]])")
        trunk = TrunkSettings()
        for key, item in entry.items():
            if key not in known:
                raise SettingsError(f"{source}: unknown setting {name}.{key}{_suggest(key, list(known))}")
            setattr(trunk, key, _check_toml_value(f"{name}.{key}", _field_type(TrunkSettings, key), item, source))
        for key in ("name", "host"):
            if key not in entry:
                raise SettingsError(f"{source}: {name} is missing {key!r}")
        trunk.codecs = [_CODEC_SPELLING.get(c.lower(), c) for c in trunk.codecs]
        trunk.transport = trunk.transport.lower()
        trunk.dtmf = {"rfc2833": "rfc4733"}.get(trunk.dtmf.lower(), trunk.dtmf.lower())   # the RFC's old number
        trunk.did_source = trunk.did_source.lower()
        out.append(trunk)
    return out


def _validate_trunks(trunks: list[TrunkSettings]) -> None:
    """Each trunk's values (sipcore.trunk.validate_trunk_config) and unique names."""
    from sipcore.trunk import validate_trunk_config

    seen: set[str] = set()
    for i, t in enumerate(trunks):
        label = f"trunks[{i}]" + (f" ({t.name})" if t.name else "")
        if t.name in seen:
            raise SettingsError(f"{label}: the name {t.name!r} is used by another trunk")
        seen.add(t.name)
        problem = validate_trunk_config(t)
        if problem:
            raise SettingsError(f"{label}: {problem}")


def _trunks_help() -> list[str]:
    lines = ["", "  [[trunks]]  (one table per carrier; no environment variables; see docs/trunks.md)"]
    for f in dataclasses.fields(TrunkSettings):
        default = _format_default(getattr(TrunkSettings(), f.name))
        lines.append(f"    {f.name:<18} default {default}")
        lines.append(f"        {f.metadata.get('help', '')}")
    return lines


# ---------------------------------------------------------------------------------------------- help


def _format_default(value: Any) -> str:
    """A default value written the way it would appear in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_format_default(v) for v in value) + "]"
    return str(value)


def settings_help() -> str:
    """Every setting with its TOML key, environment variable, default and meaning (``run --help`` epilog)."""
    lines = [
        "settings (TOML file, each key overridable by its environment variable):",
        "  file: --config FILE, else $CALLPATH_CONFIG, else ./callpath.toml if present, else defaults",
        "  lists in environment variables are comma-separated; booleans accept true/false, 1/0, yes/no, on/off",
    ]
    defaults = Settings()
    for section_name, cls in SECTIONS.items():
        lines.append("")
        lines.append(f"  [{section_name}]")
        section_defaults = getattr(defaults, section_name)
        for f in dataclasses.fields(cls):
            default = _format_default(getattr(section_defaults, f.name))
            lines.append(f"    {f.name:<18} {env_var_name(section_name, f.name):<34} default {default}")
            lines.append(f"        {f.metadata.get('help', '')}")
    lines.extend(_trunks_help())
    return "\n".join(lines)


__all__ = [
    "B2buaEntry",
    "TrunkSettings",
    "DatabaseSettings",
    "MediaSettings",
    "ServerSettings",
    "Settings",
    "SettingsError",
    "SipSettings",
    "WebSettings",
    "env_var_name",
    "load_settings",
    "settings_help",
]
