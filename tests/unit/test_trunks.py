"""SIP trunks, sans-IO: outbound registration (digest, refresh, back-off), OPTIONS qualify, inbound matching,
outbound candidates with failover and channel limits, and the [[trunks]] settings. No sockets, no sleeping:
every core takes ``now``."""
from __future__ import annotations

import pytest

from sipcore.auth import DigestAuthenticator, parse_credentials, response_matches
from sipcore.message import Request, Response
from sipcore.outbound_registration import (
    OutboundRegistration, Registered, RegistrationConfig, RegistrationFailed, RegistrationState, Unregistered,
    backoff_delay, refresh_delay,
)
from sipcore.qualify import Qualify, QualifyState
from sipcore.transaction import Flow
from sipcore.trunk import TrunkConfig, TrunkGroup, is_failover_status, parse_caller_id
from web.settings import SettingsError, load_settings

REALM = "carrier.test"
CONTACT = "sip:acme@192.0.2.1:5060;line=abc123"


def reg_config(**kw) -> RegistrationConfig:
    values = dict(registrar=f"sip:{REALM}", aor=f"sip:acme@{REALM}", contact=CONTACT, expires=120,
                  username="acme", password="s3cret")
    values.update(kw)
    return RegistrationConfig(**values)


def answer(req: Request, status: int, headers: list[tuple[str, str]] = (), reason: str | None = None) -> Response:
    resp = Response(status, reason)
    for name in ("From", "To", "Call-ID", "CSeq"):
        resp.add(name, req.get(name))
    for name, value in headers:
        resp.add(name, value)
    return resp


AUTH = DigestAuthenticator(b"k" * 32, REALM, ["MD5"], 300)


def challenge(req: Request, now: float = 0.0, stale: bool = False) -> Response:
    return answer(req, 401, [("WWW-Authenticate", v) for v in AUTH.challenges(now, stale)])


def only(reg: OutboundRegistration) -> Request:
    out = reg.requests_to_send()
    assert len(out) == 1, out
    return out[0]


def events(core) -> list:
    out = []
    while (e := core.next_event()) is not None:
        out.append(e)
    return out


# -- outbound registration ------------------------------------------------------------------------------


def test_register_with_digest_then_refresh_before_expiry():
    reg = OutboundRegistration(reg_config())
    reg.start(0.0)
    first = only(reg)
    assert first.method == "REGISTER" and str(first.uri) == f"sip:{REALM}"
    assert first.get("Expires") == "120" and first.get("Contact") == f"<{CONTACT}>"
    assert not first.has("Authorization") and reg.state is RegistrationState.REGISTERING
    reg.receive_response(challenge(first), 0.1)
    second = only(reg)
    assert second.call_id == first.call_id and second.cseq.seq == first.cseq.seq + 1
    creds = parse_credentials(second.get("Authorization"))
    assert creds.username == "acme" and creds.realm == REALM and creds.uri == f"sip:{REALM}"
    assert response_matches(creds, "REGISTER", "s3cret")
    reg.receive_response(answer(second, 200, [("Contact", f"<{CONTACT}>;expires=100")]), 0.2)
    assert reg.state is RegistrationState.REGISTERED and reg.granted == 100 and reg.last_error == ""
    assert events(reg) == [Registered(100, refresh_delay(100))]
    assert reg.get_timer() == pytest.approx(0.2 + 70.0)     # 100 s granted: refresh 30 s before it lapses
    reg.handle_timer(50.0)
    assert reg.requests_to_send() == []
    reg.handle_timer(70.2)
    refresh = only(reg)
    assert refresh.call_id == first.call_id and refresh.cseq.seq == second.cseq.seq + 1
    assert reg.state is RegistrationState.REGISTERING


def test_refresh_delay_and_backoff():
    assert refresh_delay(3600) == 3060 and refresh_delay(120) == 90 and refresh_delay(10) == 5
    assert [backoff_delay(n, 10, 600) for n in range(1, 9)] == [10, 20, 40, 80, 160, 320, 600, 600]


def test_wrong_password_fails_with_reason_and_backs_off():
    reg = OutboundRegistration(reg_config(password="wrong"))
    reg.start(0.0)
    reg.receive_response(challenge(only(reg)), 0.0)
    reg.receive_response(challenge(only(reg)), 0.0)             # the registrar refused our credentials
    assert reg.state is RegistrationState.FAILED
    assert "credentials rejected" in reg.last_error and reg.last_error.startswith("401")
    assert reg.requests_to_send() == []
    assert reg.get_timer() == pytest.approx(10.0)
    assert [type(e) for e in events(reg)] == [RegistrationFailed]
    delays = []
    now = 0.0
    for _ in range(8):
        now = reg.get_timer()
        reg.handle_timer(now)
        reg.receive_response(challenge(only(reg)), now)
        reg.receive_response(challenge(only(reg)), now)
        delays.append(reg.get_timer() - now)
    assert delays == [20, 40, 80, 160, 320, 600, 600, 600]
    assert reg.failures == 9


def test_stale_challenge_is_answered_again_not_a_failure():
    reg = OutboundRegistration(reg_config())
    reg.start(0.0)
    reg.receive_response(challenge(only(reg)), 0.0)
    reg.receive_response(challenge(only(reg), stale=True), 0.0)
    third = only(reg)
    assert third.has("Authorization") and reg.state is RegistrationState.REGISTERING


def test_retry_after_is_honoured_and_success_resets_the_backoff():
    reg = OutboundRegistration(reg_config())
    reg.start(0.0)
    reg.receive_response(answer(only(reg), 503, [("Retry-After", "300")]), 1.0)
    assert reg.state is RegistrationState.FAILED and reg.last_error == "503 Service Unavailable"
    assert reg.get_timer() == pytest.approx(301.0)
    reg.handle_timer(301.0)
    req = only(reg)
    reg.receive_response(answer(req, 200, [("Expires", "120")]), 302.0)   # no Contact echoed: Expires
    assert reg.state is RegistrationState.REGISTERED and reg.failures == 0 and reg.granted == 120


def test_timeout_and_forbidden_fail():
    reg = OutboundRegistration(reg_config())
    reg.start(0.0)
    only(reg)
    reg.transaction_failed("no answer from the registrar (timeout)", 32.0)
    assert reg.state is RegistrationState.FAILED and "timeout" in reg.last_error
    reg.handle_timer(reg.get_timer())
    reg.receive_response(answer(only(reg), 403, reason="Forbidden"), 50.0)
    assert reg.last_error == "403 Forbidden" and reg.get_timer() == pytest.approx(70.0)


def test_no_password_configured_is_a_clear_failure():
    reg = OutboundRegistration(reg_config(password=None))
    reg.start(0.0)
    reg.receive_response(challenge(only(reg)), 0.0)
    assert reg.state is RegistrationState.FAILED and "no password is configured" in reg.last_error


def test_foreign_realm_is_not_answered():
    reg = OutboundRegistration(reg_config(realm="other.test"))
    reg.start(0.0)
    reg.receive_response(challenge(only(reg)), 0.0)
    assert reg.state is RegistrationState.FAILED and "other.test" in reg.last_error


def test_interval_too_brief_asks_min_expires():
    reg = OutboundRegistration(reg_config(expires=60))
    reg.start(0.0)
    reg.receive_response(answer(only(reg), 423, [("Min-Expires", "300")]), 0.0)
    again = only(reg)
    assert again.get("Expires") == "300" and reg.state is RegistrationState.REGISTERING


def test_stale_cseq_and_provisional_are_ignored():
    reg = OutboundRegistration(reg_config())
    reg.start(0.0)
    first = only(reg)
    reg.receive_response(answer(first, 100), 0.0)
    reg.receive_response(challenge(first), 0.0)
    second = only(reg)
    reg.receive_response(answer(first, 200), 0.1)              # a late answer to the first REGISTER
    assert reg.state is RegistrationState.REGISTERING and reg.waiting
    reg.receive_response(answer(second, 200), 0.2)
    assert reg.state is RegistrationState.REGISTERED


def test_stop_sends_expires_zero_and_answers_its_challenge():
    reg = OutboundRegistration(reg_config())
    reg.start(0.0)
    reg.receive_response(answer(only(reg), 200), 0.0)
    events(reg)
    assert reg.stop(10.0)
    removal = only(reg)
    assert removal.get("Expires") == "0" and reg.state is RegistrationState.UNREGISTERED
    assert reg.get_timer() is None
    reg.receive_response(challenge(removal), 10.1)
    removal2 = only(reg)
    assert removal2.get("Expires") == "0" and removal2.has("Authorization")
    reg.receive_response(answer(removal2, 200), 10.2)
    assert events(reg) == [Unregistered(False), Unregistered(True)] and not reg.waiting


def test_stop_without_binding_sends_nothing():
    reg = OutboundRegistration(reg_config())
    assert not reg.stop(0.0) and reg.requests_to_send() == []


# -- qualify --------------------------------------------------------------------------------------------


def test_qualify_up_down_up_with_rtt():
    q = Qualify(10.0, timeout=2.0, down_after=2)
    q.start(0.0)
    q.handle_timer(0.0)
    (p1,) = q.probes_to_send()
    q.receive_answer(p1, 0.035)
    assert q.state is QualifyState.UP and q.rtt == pytest.approx(0.035)
    q.handle_timer(10.0)
    (p2,) = q.probes_to_send()
    assert q.get_timer() == pytest.approx(12.0)
    q.handle_timer(12.0)                                        # miss 1: still up
    assert q.state is QualifyState.UP and q.misses == 1
    q.handle_timer(20.0)
    (p3,) = q.probes_to_send()
    q.probe_failed(p3, 20.5)                                    # miss 2 (transport failure): down
    assert q.state is QualifyState.DOWN
    q.receive_answer(p2, 21.0)                                  # a late answer to a missed probe: ignored
    assert q.state is QualifyState.DOWN
    q.handle_timer(30.0)
    (p4,) = q.probes_to_send()
    q.receive_answer(p4, 30.01)
    assert q.state is QualifyState.UP and q.misses == 0
    assert [e.state for e in events(q)] == ["up", "down", "up"]
    assert q.status()["rtt_ms"] == pytest.approx(10.0)


# -- trunk model ----------------------------------------------------------------------------------------


def trunk(name: str, host: str = "192.0.2.10", **kw) -> TrunkConfig:
    return TrunkConfig(name=name, host=host, **kw)


def invite(ruri: str, to: str | None = None) -> Request:
    req = Request("INVITE", ruri)
    req.add("From", "<sip:+15550001@carrier.test>;tag=1")
    req.add("To", f"<{to or ruri}>")
    req.add("Call-ID", "c1")
    req.add("CSeq", "1 INVITE")
    return req


def test_match_inbound_by_source_cidr_and_default_host():
    group = TrunkGroup.from_configs([
        trunk("a", "192.0.2.10:5080"),
        trunk("b", "198.51.100.7", inbound_hosts=("203.0.113.0/24", "2001:db8::/32"), did_source="to"),
    ])
    m = group.match_inbound(invite("sip:+3212345@10.0.0.1"), ("192.0.2.10", 5080))
    assert m is not None and m.trunk.name == "a" and m.did == "+3212345"
    trunk_b, did = group.match_inbound(invite("sip:acme@10.0.0.1", to="sip:5551234@x"), ("203.0.113.99", 5060))
    assert trunk_b.name == "b" and did == "5551234"
    assert group.match_inbound(invite("sip:1@x"), Flow("udp", ("2001:db8::5", 5060))).trunk.name == "b"
    assert group.match_inbound(invite("sip:1@x"), ("198.51.100.7", 5060)) is None   # b's host is not inbound
    assert group.match_inbound(invite("sip:1@x"), "192.0.2.11") is None
    assert group.is_trunk_source("192.0.2.10") and group.is_trunk_source("203.0.113.1")
    assert not group.is_trunk_source("198.51.100.7") and not group.is_trunk_source("not-an-ip")


def test_match_inbound_by_registration_line_token():
    group = TrunkGroup.from_configs(
        [trunk("reg", "sip.carrier.test", username="acme", password="pw", register=True, did_source="to")],
        line_token=lambda c: "tok" + c.name)
    req = invite("sip:acme@192.0.2.1:5060;line=tokreg", to="sip:+3225550100@sip.carrier.test")
    m = group.match_inbound(req, ("198.18.0.1", 5060))        # a carrier proxy we never heard of
    assert m is not None and m.trunk.name == "reg" and m.did == "+3225550100"
    assert group.match_inbound(invite("sip:acme@192.0.2.1;line=guess"), ("198.18.0.1", 5060)) is None
    assert group.trunks[0].addresses == ()                     # a name: resolved by the link at start


def test_did_strips_user_parameters():
    group = TrunkGroup.from_configs([trunk("a")])
    assert group.match_inbound(invite("sip:+15551234;npdi=yes@10.0.0.1"), "192.0.2.10").did == "+15551234"


def test_candidates_order_preferred_down_and_full():
    group = TrunkGroup.from_configs([
        trunk("backup", "192.0.2.20", priority=10),
        trunk("main", "192.0.2.10", priority=1, max_channels=2, transport="tcp", username="acme", password="pw",
              caller_id="ACME Sales <+3225550000>", codecs=("PCMA", "opus"), dtmf="info"),
        trunk("third", "192.0.2.30:5070", priority=10),
    ])
    assert [r.name for r in group.candidates("0032475")] == ["main", "backup", "third"]
    assert [r.name for r in group.candidates("0032475", preferred="third")] == ["third", "main", "backup"]
    route = group.candidates("0032475")[0]
    assert route.request_uri == "sip:0032475@192.0.2.10;transport=tcp"
    assert route.from_uri == '"ACME Sales" <sip:+3225550000@192.0.2.10>'
    assert route.credentials == ("acme", "pw") and route.codecs == ("PCMA", "opus") and route.dtmf == "info"
    assert route.flow == Flow("tcp", ("192.0.2.10", 5060))
    assert group.candidates("1")[2].request_uri == "sip:1@192.0.2.30:5070"
    contact = route.contact()                                  # what sipcore.callcontrol rings
    assert str(contact.uri) == route.request_uri and contact.aor == "sip:0032475@192.0.2.10"
    assert contact.flow == route.flow and contact.credentials == ("acme", "pw") and contact.transport == "rtp"
    assert contact.from_uri == '"ACME Sales" <sip:+3225550000@192.0.2.10>'
    target = route.target(20.0)
    assert target.kind == "contacts" and target.timeout == 20.0 and target.label == "trunk:main"
    assert group.candidates("1")[1].credentials is None
    # channels: main takes two calls, then it is skipped until one ends
    assert route.acquire() and route.acquire()
    assert not route.acquire() and route.trunk.calls_refused_full == 1
    assert [r.name for r in group.candidates("1")] == ["backup", "third"]
    route.release()
    assert [r.name for r in group.candidates("1")] == ["main", "backup", "third"]
    route.release()
    route.release()
    assert route.trunk.channels == 0
    # a trunk whose qualify says down, or whose registration failed, is skipped
    main = group.get("main")
    main.qualify = Qualify(30.0)
    main.qualify.state = QualifyState.DOWN
    assert [r.name for r in group.candidates("1")] == ["backup", "third"]
    main.qualify.state = QualifyState.UP
    assert group.candidates("1")[0].name == "main"


def test_failed_registration_takes_a_registering_trunk_out_of_the_candidates():
    group = TrunkGroup.from_configs([trunk("a", username="u", password="p", register=True), trunk("b", "192.0.2.2")])
    a = group.get("a")
    a.registration = OutboundRegistration(reg_config())
    a.registration.start(0.0)
    a.registration.receive_response(answer(only(a.registration), 403), 0.0)
    assert [r.name for r in group.candidates("1")] == ["b"]
    assert group.status(0.0)[0]["registration"]["state"] == "failed"
    assert group.status(0.0)[0]["registration"]["last_error"] == "403 Forbidden"


@pytest.mark.parametrize("status,failover", [
    (408, True), (500, True), (502, True), (503, True), (504, True),
    (404, False), (486, False), (403, False), (480, False), (484, False), (600, False), (603, False), (200, False),
])
def test_failover_status_table(status, failover):
    assert is_failover_status(status) is failover
    assert TrunkGroup.is_failover_status(status) is failover


def test_caller_id_forms():
    assert parse_caller_id("ACME <+3225550000>") == ("ACME", "+3225550000")
    assert parse_caller_id('"ACME Sales" <100>') == ("ACME Sales", "100")
    assert parse_caller_id("+3225550000") == ("", "+3225550000")
    assert parse_caller_id("ACME") == ("ACME", "")
    with pytest.raises(ValueError):
        parse_caller_id("ACME <>")


# -- settings -------------------------------------------------------------------------------------------


def load(tmp_path, text: str):
    path = tmp_path / "callpath.toml"
    path.write_text(text)
    return load_settings(path, env={})


def test_trunk_settings_parse_with_defaults(tmp_path):
    s = load(tmp_path, """
[sip]
udp_port = 5070

[[trunks]]
name = "carrier"
host = "sip.carrier.test:5080"
username = "acme"
password = "pw"
register = true
inbound_hosts = ["192.0.2.0/24"]
codecs = ["pcmu", "OPUS"]
dtmf = "RFC2833"

[[trunks]]
name = "backup"
host = "192.0.2.50"
priority = 5
""")
    assert [t.name for t in s.trunks] == ["carrier", "backup"]
    config = s.trunks[0].to_config()
    assert config.codecs == ("PCMU", "opus") and config.dtmf == "rfc4733" and config.inbound_hosts == ("192.0.2.0/24",)
    assert config.transport == "udp" and config.did_source == "ruri" and config.max_channels == 0
    assert "pw" not in repr(s.trunks[0]) and "pw" not in repr(config)
    assert s.sip.udp_port == 5070


@pytest.mark.parametrize("body,message", [
    ('name = "x"\nhost = "h"\ntransport = "sctp"', "trunks[0] (x): transport must be one of udp, tcp, tls"),
    ('name = "x"\nhost = "h"\ncodecs = ["G729"]', "unknown codec 'G729'"),
    ('name = "x"\nhost = "h"\nregister = true', "register = true needs a username"),
    ('name = "x"\nhost = "h"\ninbound_hosts = ["10.0.0.300"]', "inbound_hosts: not an address or network"),
    ('name = "x"\nhost = "h"\ndid_source = "from"', "did_source must be one of ruri, to"),
    ('name = "x"\nhost = "h:99999"', "is not host or host:port"),
    ('name = "x"\nhost = "h"\nmax_channels = -1', "max_channels must be 0"),
    ('name = "x"\nhost = "h"\nmax_chanels = 1', "unknown setting trunks[0].max_chanels (did you mean 'max_channels'?)"),
    ('name = "x"\nhost = "h"\nqualify_interval = "60"', "trunks[0].qualify_interval must be an integer"),
    ('host = "h"', "trunks[0] is missing 'name'"),
    ('name = "x"\nhost = "h"\nregister_expires = 5\nusername = "u"\nregister = true', "register_expires must be"),
    ('name = "x"\nhost = "h"\ncaller_id = "Bad <>"', "caller_id:"),
])
def test_trunk_settings_errors_name_the_key(tmp_path, body, message):
    with pytest.raises(SettingsError) as err:
        load(tmp_path, f"[[trunks]]\n{body}\n")
    assert message in str(err.value)


def test_duplicate_trunk_names(tmp_path):
    with pytest.raises(SettingsError, match="used by another trunk"):
        load(tmp_path, '[[trunks]]\nname = "x"\nhost = "a"\n[[trunks]]\nname = "x"\nhost = "b"\n')
    with pytest.raises(SettingsError, match="array of tables"):
        load(tmp_path, '[trunks]\nname = "x"\n')


def test_unresolved_host_is_not_usable():
    group = TrunkGroup.from_configs([trunk("named", "sip.carrier.test"), trunk("ip", "192.0.2.2")])
    named = group.get("named")
    assert named.next_hop is None and named.route("1").flow is None
    named.resolve_error = "cannot resolve sip.carrier.test: [Errno -2] Name or service not known"
    assert [r.name for r in group.candidates("1")] == ["ip"]
    assert group.status(0.0)[0]["resolve_error"].startswith("cannot resolve")
    named.resolve_error = ""
    named.set_addresses(["198.51.100.20", "198.51.100.20"])
    assert named.next_hop == Flow("udp", ("198.51.100.20", 5060)) and named.addresses == ("198.51.100.20",)
    assert group.is_trunk_source("198.51.100.20")          # the resolved address is the default inbound host
    assert [r.name for r in group.candidates("1")] == ["named", "ip"]
