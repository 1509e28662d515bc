"""web.settings: defaults of docs/interfaces.md, TOML loading, environment overrides and clear errors."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from web.settings import (
    B2buaEntry,
    Settings,
    SettingsError,
    env_var_name,
    load_settings,
    settings_help,
)

FULL_TOML = """
[server]
data_dir = "/var/lib/callpath"
log_level = "debug"
log_format = "json"

[database]
url = "postgresql+psycopg://callpath@db/callpath"

[sip]
listen = "0.0.0.0"
advertise = "203.0.113.7"
udp_port = 5070
tcp_port = 0
tls_port = 5061
tls_cert = "/etc/callpath/cert.pem"
tls_key = "/etc/callpath/key.pem"
domain = "pbx.example.com"
auth = false
auth_algorithms = ["SHA-256", "MD5"]
nonce_ttl = 120
ephemeral_secret = "s3cret"
min_expires = 30
max_expires = 7200
default_expires = 600
location = "redis://127.0.0.1:6379/0"
sip_trace = true
hep = "127.0.0.1:9060"
max_message_size = 8192

[[sip.b2bua]]
number = "9000"
target = "sip:bob@127.0.0.1:5070"

[[sip.b2bua]]
number = "9001"
target = "sip:carol@127.0.0.1:5072"

[web]
listen = "0.0.0.0"
port = 8443
"""


def write(tmp_path: Path, text: str) -> Path:
    """Write a TOML file into tmp_path and return its path."""
    path = tmp_path / "callpath.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_documented_ones() -> None:
    s = load_settings(None, {})
    assert (s.server.data_dir, s.server.log_level, s.server.log_format) == ("./data", "info", "text")
    assert s.database.url == ""
    sip = s.sip
    assert (sip.listen, sip.advertise, sip.udp_port, sip.tcp_port, sip.tls_port) == ("127.0.0.1", "", 5060, 5060, 0)
    assert (sip.tls_cert, sip.tls_key, sip.domain, sip.auth) == ("", "", "", True)
    assert sip.auth_algorithms == ["MD5"]      # baresip 1.0 fails a registration on any SHA-256 challenge
    assert (sip.nonce_ttl, sip.ephemeral_secret) == (300, "")
    assert (sip.min_expires, sip.max_expires, sip.default_expires) == (60, 3600, 3600)
    assert (sip.location, sip.sip_trace, sip.hep, sip.max_message_size) == ("memory", False, "", 65535)
    assert sip.b2bua == []
    assert (s.web.listen, s.web.port) == ("127.0.0.1", 8088)


def test_defaults_are_not_shared_between_instances() -> None:
    a, b = Settings(), Settings()
    a.sip.auth_algorithms.append("X")
    assert b.sip.auth_algorithms == ["MD5"]


def test_database_url_defaults_to_sqlite_under_data_dir(tmp_path: Path) -> None:
    s = load_settings(None, {"CALLPATH_SERVER_DATA_DIR": str(tmp_path / "d")})
    assert s.database_url == f"sqlite:///{tmp_path / 'd' / 'callpath.db'}"
    assert s.data_path == tmp_path / "d"


def test_relative_data_dir_is_resolved_from_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(None, {})
    assert s.database_url == f"sqlite:///{tmp_path.resolve() / 'data' / 'callpath.db'}"


def test_explicit_database_url_wins() -> None:
    s = load_settings(None, {"CALLPATH_DATABASE_URL": "postgresql+psycopg://u@h/db"})
    assert s.database_url == "postgresql+psycopg://u@h/db"


def test_realm_falls_back_to_advertise_then_listen() -> None:
    s = Settings()
    assert s.sip.realm == "127.0.0.1" and s.sip.advertise_host == "127.0.0.1"
    s.sip.advertise = "198.51.100.1"
    assert s.sip.realm == "198.51.100.1" and s.sip.advertise_host == "198.51.100.1"
    s.sip.domain = "example.com"
    assert s.sip.realm == "example.com" and s.sip.advertise_host == "198.51.100.1"


def test_full_toml_file(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, FULL_TOML), {})
    assert s.server.data_dir == "/var/lib/callpath" and s.server.log_format == "json"
    assert s.database_url == "postgresql+psycopg://callpath@db/callpath"
    assert s.sip.udp_port == 5070 and s.sip.tcp_port == 0 and s.sip.tls_port == 5061
    assert s.sip.auth is False and s.sip.auth_algorithms == ["SHA-256", "MD5"]
    assert s.sip.location == "redis://127.0.0.1:6379/0" and s.sip.hep == "127.0.0.1:9060"
    assert s.sip.b2bua == [
        B2buaEntry("9000", "sip:bob@127.0.0.1:5070"),
        B2buaEntry("9001", "sip:carol@127.0.0.1:5072"),
    ]
    assert s.sip.realm == "pbx.example.com"
    assert s.web.port == 8443


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "[sip]\nudp_port = 5080\n"), {})
    assert s.sip.udp_port == 5080 and s.sip.tcp_port == 5060 and s.web.port == 8088


def test_environment_overrides_file_and_converts_types(tmp_path: Path) -> None:
    path = write(tmp_path, "[sip]\nudp_port = 5080\nauth = true\n")
    env = {
        "CALLPATH_SIP_UDP_PORT": "5070",
        "CALLPATH_SIP_AUTH": "false",
        "CALLPATH_SIP_AUTH_ALGORITHMS": "MD5, SHA-256",
        "CALLPATH_DATABASE_URL": "sqlite:////tmp/x.db",
        "CALLPATH_SIP_SIP_TRACE": "yes",
        "CALLPATH_SIP_B2BUA": "9000=sip:bob@127.0.0.1:5070,9001=sip:carol@h;transport=tcp",
        "CALLPATH_WEB_PORT": " 9090 ",
        "CALLPATH_CONFIG": "ignored-here",
        "CALLPATH_TEST_REDIS_URL": "redis://x",
        "PATH": "/usr/bin",
    }
    s = load_settings(path, env)
    assert s.sip.udp_port == 5070
    assert s.sip.auth is False
    assert s.sip.auth_algorithms == ["MD5", "SHA-256"]
    assert s.database.url == "sqlite:////tmp/x.db"
    assert s.sip.sip_trace is True
    assert s.sip.b2bua == [B2buaEntry("9000", "sip:bob@127.0.0.1:5070"), B2buaEntry("9001", "sip:carol@h;transport=tcp")]
    assert s.web.port == 9090


@pytest.mark.parametrize(("text", "value"), [("1", True), ("ON", True), ("true", True), ("0", False), ("No", False)])
def test_environment_booleans(text: str, value: bool) -> None:
    assert load_settings(None, {"CALLPATH_SIP_AUTH": text}).sip.auth is value


def test_env_var_names_follow_section_and_key() -> None:
    assert env_var_name("sip", "udp_port") == "CALLPATH_SIP_UDP_PORT"
    assert env_var_name("server", "data_dir") == "CALLPATH_SERVER_DATA_DIR"


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ("[sip]\nudpport = 5060\n", "unknown setting sip.udpport (did you mean 'udp_port'?)"),
        ("[sipp]\nudp_port = 5060\n", "unknown section [sipp]"),
        ("[web]\nport = \"8088\"\n", "web.port must be an integer"),
        ("[sip]\nauth = \"yes\"\n", "sip.auth must be a boolean"),
        ("[sip]\nudp_port = true\n", "sip.udp_port must be an integer"),
        ("[sip]\nauth_algorithms = \"MD5\"\n", "sip.auth_algorithms must be a list of strings"),
        ("[sip]\nauth_algorithms = [5]\n", "sip.auth_algorithms must be a list of strings"),
        ("[server]\ndata_dir = 3\n", "server.data_dir must be a string"),
        ("sip = 3\n", "sip must be a table"),
        ("[[sip.b2bua]]\nnumber = \"9000\"\n", "sip.b2bua[0] is missing 'target'"),
        ("[[sip.b2bua]]\nnumber = 9000\ntarget = \"sip:a@b\"\n", "sip.b2bua[0].number must be a string"),
        ("[[sip.b2bua]]\nnumber = \"9\"\ntarget = \"sip:a@b\"\ntargte = 1\n", "unknown setting sip.b2bua[0].targte"),
    ],
)
def test_file_errors_name_the_key(tmp_path: Path, toml: str, fragment: str) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(SettingsError) as info:
        load_settings(path, {})
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"CALLPATH_SIP_UDP_PORT": "five"}, "CALLPATH_SIP_UDP_PORT='five': expected an integer"),
        ({"CALLPATH_SIP_AUTH": "maybe"}, "CALLPATH_SIP_AUTH='maybe': expected a boolean"),
        ({"CALLPATH_SIP_UDPPORT": "5060"}, "unknown environment variable CALLPATH_SIP_UDPPORT"),
        ({"CALLPATH_SIP_B2BUA": "9000"}, "CALLPATH_SIP_B2BUA: entry '9000' must be NUMBER=TARGET"),
        ({"CALLPATH_SIP_AUTH_ALGORITHMS": "MD5,SHA-1"}, "unsupported algorithm 'SHA-1'"),
    ],
)
def test_environment_errors_name_the_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(None, env)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"CALLPATH_SIP_UDP_PORT": "70000"}, "sip.udp_port must be between 0 and 65535"),
        ({"CALLPATH_WEB_PORT": "-1"}, "web.port must be between 0 and 65535"),
        ({"CALLPATH_SIP_AUTH_ALGORITHMS": ""}, "sip.auth_algorithms must name at least one"),
        ({"CALLPATH_SIP_AUTH_ALGORITHMS": "MD5,MD5"}, "lists an algorithm twice"),
        ({"CALLPATH_SIP_MIN_EXPIRES": "4000"}, "min_expires <= default_expires <= max_expires"),
        ({"CALLPATH_SERVER_LOG_FORMAT": "xml"}, "server.log_format must be one of text, json"),
        ({"CALLPATH_SERVER_LOG_LEVEL": "loud"}, "server.log_level must be one of"),
        ({"CALLPATH_SIP_LOCATION": "memcache://x"}, "sip.location must be 'memory' or a redis:// URL"),
        ({"CALLPATH_SIP_HEP": "collector"}, "sip.hep must be host:port"),
        ({"CALLPATH_SIP_TLS_CERT": "/c.pem"}, "tls_cert and sip.tls_key must be given together"),
        ({"CALLPATH_SIP_B2BUA": "9000=bob"}, "sip.b2bua[0].target must be a sip: or sips: URI"),
        ({"CALLPATH_SIP_B2BUA": "9000=sip:a@b,9000=sip:c@d"}, "number '9000' is listed twice"),
        ({"CALLPATH_SIP_NONCE_TTL": "0"}, "sip.nonce_ttl must be positive"),
    ],
)
def test_values_are_validated(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(None, env)
    assert fragment in str(info.value)


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", {})
    with pytest.raises(SettingsError, match="invalid TOML"):
        load_settings(write(tmp_path, "[sip\n"), {})


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


def test_help_lists_every_setting_with_env_var_and_default() -> None:
    text = settings_help()
    defaults = Settings()
    for section in ("server", "database", "sip", "web", "media"):
        assert f"[{section}]" in text
        for f in dataclasses.fields(getattr(defaults, section)):
            assert f.name in text
            assert env_var_name(section, f.name) in text
    assert 'default ["MD5"]' in text
    assert "default 5060" in text and "default true" in text and 'default "./data"' in text


# -- [media] -------------------------------------------------------------------------------------------


def test_media_defaults() -> None:
    m = load_settings(None, {}).media
    assert (m.enabled, m.workers, m.listen, m.advertise) == (True, 1, "", "")   # on; binds where SIP does
    assert (m.ice_port, m.rtp_port_min, m.rtp_port_max) == (40000, 30000, 39999)
    assert m.prefer_passthrough is True and m.control_timeout == 2.0
    assert (m.c_relay, m.opus_complexity, m.opus_bitrate, m.opus_fec, m.opus_dtx) == (True, 5, 24000, True, False)


def test_media_from_file_and_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[media]\nenabled = true\nworkers = 2\nadvertise = \"203.0.113.7\"\n"
                           "ice_port = 0\nrtp_port_min = 20000\nrtp_port_max = 20999\n"
                           "prefer_passthrough = false\ncontrol_timeout = 1\n")
    m = load_settings(path, {}).media
    assert (m.enabled, m.workers, m.advertise, m.ice_port) == (True, 2, "203.0.113.7", 0)
    assert (m.rtp_port_min, m.rtp_port_max, m.prefer_passthrough) == (20000, 20999, False)
    assert m.control_timeout == 1.0 and isinstance(m.control_timeout, float)
    env = {"CALLPATH_MEDIA_ENABLED": "no", "CALLPATH_MEDIA_RTP_PORT_MAX": "21999",
           "CALLPATH_MEDIA_CONTROL_TIMEOUT": "0.5", "CALLPATH_MEDIA_LISTEN": "127.0.0.1"}
    m = load_settings(path, env).media
    assert (m.enabled, m.rtp_port_max, m.control_timeout, m.listen) == (False, 21999, 0.5, "127.0.0.1")


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ("[media]\nenable = true\n", "unknown setting media.enable (did you mean 'enabled'?)"),
        ("[media]\nworkers = \"2\"\n", "media.workers must be an integer"),
        ("[media]\nenabled = 1\n", "media.enabled must be a boolean"),
        ("[media]\ncontrol_timeout = \"2\"\n", "media.control_timeout must be a number"),
    ],
)
def test_media_file_errors(tmp_path: Path, toml: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path, toml), {})
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"CALLPATH_MEDIA_WORKERS": "0"}, "media.workers must be at least 1"),
        ({"CALLPATH_MEDIA_RTP_PORT_MIN": "80"}, "media.rtp_port_min must be between 1024 and 65535"),
        ({"CALLPATH_MEDIA_RTP_PORT_MAX": "70000"}, "media.rtp_port_max must be between 1024 and 65535"),
        ({"CALLPATH_MEDIA_RTP_PORT_MIN": "39999"}, "media.rtp_port_min must be below media.rtp_port_max"),
        ({"CALLPATH_MEDIA_RTP_PORT_MIN": "30000", "CALLPATH_MEDIA_RTP_PORT_MAX": "30003",
          "CALLPATH_MEDIA_WORKERS": "3"}, "too small for 3 workers"),
        ({"CALLPATH_MEDIA_ICE_PORT": "35000"}, "overlaps the RTP range"),
        ({"CALLPATH_MEDIA_ICE_PORT": "70000"}, "media.ice_port must be between"),
        ({"CALLPATH_MEDIA_CONTROL_TIMEOUT": "0"}, "media.control_timeout must be positive"),
        ({"CALLPATH_MEDIA_CONTROL_TIMEOUT": "soon"}, "CALLPATH_MEDIA_CONTROL_TIMEOUT='soon': expected a number"),
        ({"CALLPATH_MEDIA_OPUS_COMPLEXITY": "11"}, "media.opus_complexity must be between 0 and 10"),
        ({"CALLPATH_MEDIA_OPUS_BITRATE": "100"}, "media.opus_bitrate must be between 6000 and 510000"),
        ({"CALLPATH_MEDIA_C_RELAY": "maybe"}, "CALLPATH_MEDIA_C_RELAY"),
        ({"CALLPATH_MEDIA_ADVERTIZE": "x"}, "unknown environment variable CALLPATH_MEDIA_ADVERTIZE"),
    ],
)
def test_media_values_are_validated(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(None, env)
    assert fragment in str(info.value)


def test_help_lists_the_media_section() -> None:
    text = settings_help()
    assert "[media]" in text
    for key in ("enabled", "workers", "advertise", "ice_port", "rtp_port_min", "rtp_port_max",
                "prefer_passthrough", "c_relay", "opus_complexity", "opus_bitrate", "opus_fec", "opus_dtx",
                "control_timeout"):
        assert env_var_name("media", key) in text
    assert "default 40000" in text and "default 2.0" in text


def test_dns_servers(tmp_path: Path) -> None:
    assert load_settings(None, {}).sip.dns_servers == []
    s = load_settings(write(tmp_path, '[sip]\ndns_servers = ["192.0.2.53", "127.0.0.1:5353", "[::1]:53"]\n'), {})
    assert s.sip.dns_servers == ["192.0.2.53", "127.0.0.1:5353", "[::1]:53"]
    env = load_settings(None, {"CALLPATH_SIP_DNS_SERVERS": "192.0.2.53,192.0.2.54:5300"})
    assert env.sip.dns_servers == ["192.0.2.53", "192.0.2.54:5300"]
    with pytest.raises(SettingsError, match="sip.dns_servers: name server 'ns.example' is not an IP address"):
        load_settings(write(tmp_path, '[sip]\ndns_servers = ["ns.example"]\n'), {})
    with pytest.raises(SettingsError, match="sip.dns_servers: bad port"):
        load_settings(None, {"CALLPATH_SIP_DNS_SERVERS": "127.0.0.1:x"})


def test_ring_groups_and_conferences_are_tables_with_checked_values(tmp_path: Path) -> None:
    path = write(tmp_path, '[[calls.groups]]\nnumber = "600"\nmembers = ["1001", "bob"]\nstrategy = "sequential"\n'
                           'park = true\n[[calls.conferences]]\nnumber = "700"\n')
    calls = load_settings(path, {}).calls
    assert [(g.number, g.members, g.strategy, g.ring_timeout, g.park) for g in calls.groups] == [
        ("600", ["1001", "bob"], "sequential", 20.0, True)]
    assert [c.number for c in calls.conferences] == ["700"]
    for text, message in (
        ('[[calls.groups]]\nnumber = "600"\n', r"calls\.groups\[0\] is missing 'members'"),
        ('[[calls.groups]]\nnumber = "600"\nmembers = []\n', "must list at least one"),
        ('[[calls.groups]]\nnumber = "600"\nmembers = ["1"]\nstrategy = "random"\n', "parallel or sequential"),
        ('[[calls.groups]]\nnumber = "600"\nmembers = ["1"]\nring_timeout = "20"\n', "must be a number"),
        ('[[calls.groups]]\nnumber = "600"\nmembers = ["1"]\n[[calls.conferences]]\nnumber = "600"\n',
         "used twice"),
        ('[[calls.conferences]]\nnumbr = "700"\n', "did you mean 'number'"),
    ):
        with pytest.raises(SettingsError, match=message):
            load_settings(write(tmp_path, text), {})
    with pytest.raises(SettingsError, match="configuration file, not the environment"):
        load_settings(None, {"CALLPATH_CALLS_GROUPS": "600=1001"})
