"""RFC 3263 server location (sipcore.dns), sans-IO: fixed DNS answers in, ordered targets out."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from sipcore.dns import (
    Answer, AnswerStatus, DnsCache, Naptr, Query, ServerLocation, Srv, Target, locate, order_srv, parse_nameserver,
)
from sipcore.uri import SipUri

D = "example.test"


def q(name: str, rdtype: str) -> Query:
    return Query.of(name, rdtype)


def naptr(order: int, pref: int, service: str, replacement: str, flags: str = "s") -> Naptr:
    return Naptr(order, pref, flags, service, "", replacement)


def run(uri: str, answers: dict, **kw) -> ServerLocation:
    return locate(SipUri.parse(uri), answers, rng=kw.pop("rng", random.Random(1)), **kw)


def targets(loc: ServerLocation) -> list[tuple[str, str, int]]:
    return [(t.transport, t.host, t.port) for t in loc.targets]


FULL = {
    q(D, "NAPTR"): Answer.ok([naptr(20, 10, "SIP+D2U", f"_sip._udp.{D}"),
                               naptr(10, 10, "SIP+D2T", f"_sip._tcp.{D}"),
                               naptr(30, 10, "SIPS+D2T", f"_sips._tcp.{D}")]),
    q(f"_sip._udp.{D}", "SRV"): Answer.ok([Srv(10, 0, 5070, f"a.{D}")]),
    q(f"_sip._tcp.{D}", "SRV"): Answer.ok([Srv(10, 0, 5080, f"b.{D}")]),
    q(f"_sips._tcp.{D}", "SRV"): Answer.ok([Srv(10, 0, 5081, f"b.{D}")]),
    q(f"a.{D}", "A"): Answer.ok(["192.0.2.1"]),
    q(f"b.{D}", "A"): Answer.ok(["192.0.2.2", "192.0.2.3"]),
    q(f"a.{D}", "AAAA"): Answer.nodata(),
    q(f"b.{D}", "AAAA"): Answer.ok(["2001:db8::2"]),
}


def test_ip_literal_needs_no_query():
    loc = ServerLocation(SipUri.parse("sip:bob@192.0.2.7"))
    assert loc.done and loc.queries() == []
    assert targets(loc) == [("udp", "192.0.2.7", 5060)]
    assert targets(run("sips:bob@[2001:db8::1]:5071", {})) == [("tls", "2001:db8::1", 5071)]
    assert targets(run("sip:bob@192.0.2.7;transport=tcp", {})) == [("tcp", "192.0.2.7", 5060)]
    assert targets(run(f"sip:bob@{D};maddr=192.0.2.9", {})) == [("udp", "192.0.2.9", 5060)]


def test_naptr_srv_a_in_naptr_order_all_transports_kept_for_failover():
    loc = run(f"sip:bob@{D}", FULL)
    assert targets(loc) == [
        ("tcp", "192.0.2.2", 5080), ("tcp", "192.0.2.3", 5080), ("tcp", "2001:db8::2", 5080),  # order 10
        ("udp", "192.0.2.1", 5070),                                                              # order 20
        ("tls", "192.0.2.2", 5081), ("tls", "192.0.2.3", 5081), ("tls", "2001:db8::2", 5081),  # order 30
    ]
    assert loc.targets[0].name == f"b.{D}"
    assert [x.rdtype for x in loc.answers][:1] == ["NAPTR"]


def test_the_steps_ask_in_parallel_what_they_need():
    loc = ServerLocation(SipUri.parse(f"sip:bob@{D}"), rng=random.Random(1))
    assert loc.phase == "naptr" and loc.queries() == [q(D, "NAPTR")]
    loc.receive(q(D, "NAPTR"), FULL[q(D, "NAPTR")])
    assert loc.phase == "srv"
    assert loc.queries() == [q(f"_sip._tcp.{D}", "SRV"), q(f"_sip._udp.{D}", "SRV"), q(f"_sips._tcp.{D}", "SRV")]
    for x in loc.queries():
        loc.receive(x, FULL[x])
    assert loc.phase == "address"
    assert set(loc.queries()) == {q(f"b.{D}", "A"), q(f"b.{D}", "AAAA"), q(f"a.{D}", "A"), q(f"a.{D}", "AAAA")}
    loc.receive(q("unrelated.test", "A"), Answer.ok(["192.0.2.99"]))  # ignored
    for x in loc.queries():
        loc.receive(x, FULL[x])
    assert loc.done and len(loc.targets) == 7


def test_naptr_filtering_unsupported_transport_flags_and_sips():
    answers = dict(FULL)
    answers[q(D, "NAPTR")] = Answer.ok([
        naptr(5, 10, "SIP+D2S", f"_sip._sctp.{D}"),              # SCTP: not spoken
        naptr(6, 10, "SIP+D2T", f"_sip._tcp.{D}", flags="a"),    # not the "s" flag
        naptr(7, 10, "E2U+sip", "!^.*$!sip:x@y!", flags="u"),    # ENUM, not RFC 3263
        naptr(8, 20, "SIP+D2U", f"_sip._udp.{D}"),
        naptr(8, 10, "SIPS+D2T", f"_sips._tcp.{D}"),             # same order: lower preference first
    ])
    assert [t[0] for t in targets(run(f"sip:bob@{D}", answers))] == ["tls", "tls", "tls", "udp"]
    # a SIPS URI uses SIPS+D2T only
    assert {t[0] for t in targets(run(f"sips:bob@{D}", answers))} == {"tls"}
    # transports the caller cannot use are not chosen
    assert targets(run(f"sip:bob@{D}", answers, transports=("udp",))) == [("udp", "192.0.2.1", 5070)]


def test_no_naptr_falls_back_to_srv_for_supported_transports():
    answers = {k: v for k, v in FULL.items() if k.rdtype != "NAPTR"}
    answers[q(D, "NAPTR")] = Answer.nxdomain()
    loc = run(f"sip:bob@{D}", answers)
    assert targets(loc) == [("udp", "192.0.2.1", 5070), ("tcp", "192.0.2.2", 5080), ("tcp", "192.0.2.3", 5080),
                            ("tcp", "2001:db8::2", 5080)]
    assert q(f"_sips._tcp.{D}", "SRV") not in loc.answers  # RFC 3263 §4.1: "_sip" for SIP URIs
    sips = run(f"sips:bob@{D}", answers)
    assert targets(sips) == [("tls", "192.0.2.2", 5081), ("tls", "192.0.2.3", 5081), ("tls", "2001:db8::2", 5081)]
    only_tcp = run(f"sip:bob@{D}", answers, transports=("tcp",))
    assert [t[0] for t in targets(only_tcp)] == ["tcp"] * 3


def test_no_naptr_no_srv_falls_back_to_a_on_default_port():
    answers = {q(D, "NAPTR"): Answer.nodata(), q(f"_sip._udp.{D}", "SRV"): Answer.nxdomain(),
               q(f"_sip._tcp.{D}", "SRV"): Answer.failure("timeout"), q(D, "A"): Answer.ok(["192.0.2.5"]),
               q(D, "AAAA"): Answer.nodata()}
    assert targets(run(f"sip:bob@{D}", answers)) == [("udp", "192.0.2.5", 5060)]
    answers[q(f"_sips._tcp.{D}", "SRV")] = Answer.nxdomain()
    assert targets(run(f"sips:bob@{D}", answers)) == [("tls", "192.0.2.5", 5061)]


def test_naptr_whose_srv_is_empty_falls_back_to_a():
    answers = {q(D, "NAPTR"): Answer.ok([naptr(10, 10, "SIP+D2T", f"_sip._tcp.{D}")]),
               q(f"_sip._tcp.{D}", "SRV"): Answer.nxdomain(), q(D, "A"): Answer.ok(["192.0.2.5"]),
               q(D, "AAAA"): Answer.nodata()}
    assert targets(run(f"sip:bob@{D}", answers)) == [("udp", "192.0.2.5", 5060)]


def test_explicit_port_means_a_aaaa_only():
    loc = run(f"sip:bob@{D}:5099;transport=tcp", FULL | {q(D, "A"): Answer.ok(["192.0.2.8"]),
                                                          q(D, "AAAA"): Answer.nodata()})
    assert targets(loc) == [("tcp", "192.0.2.8", 5099)]
    assert {x.rdtype for x in loc.answers} == {"A", "AAAA"}


def test_explicit_transport_means_srv_for_it():
    loc = run(f"sip:bob@{D};transport=tcp", FULL)
    assert targets(loc)[0] == ("tcp", "192.0.2.2", 5080)
    assert q(D, "NAPTR") not in loc.answers
    tls = run(f"sips:bob@{D};transport=tcp", FULL)  # sips + tcp = TLS: _sips._tcp
    assert targets(tls)[0] == ("tls", "192.0.2.2", 5081)
    none = {q(f"_sip._udp.{D}", "SRV"): Answer.nxdomain(), q(D, "A"): Answer.ok(["192.0.2.5"]),
            q(D, "AAAA"): Answer.nodata()}
    assert targets(run(f"sip:bob@{D};transport=udp", none)) == [("udp", "192.0.2.5", 5060)]


def test_websocket_is_never_looked_up_by_srv():
    answers = {q(D, "A"): Answer.ok(["192.0.2.5"]), q(D, "AAAA"): Answer.nodata()}
    loc = run(f"sip:bob@{D};transport=ws", answers)
    assert targets(loc) == [("ws", "192.0.2.5", 80)]
    assert targets(run(f"sips:bob@{D};transport=ws", answers)) == [("wss", "192.0.2.5", 443)]
    assert all(x.rdtype in ("A", "AAAA") for x in loc.answers)


def test_srv_dot_target_means_not_available():
    answers = {q(D, "NAPTR"): Answer.nxdomain(), q(f"_sip._udp.{D}", "SRV"): Answer.ok([Srv(0, 0, 0, ".")]),
               q(f"_sip._tcp.{D}", "SRV"): Answer.nxdomain()}
    loc = run(f"sip:bob@{D}", answers)
    assert loc.done and loc.targets == [] and "not available" in loc.reason
    assert q(D, "A") not in loc.answers


def test_nxdomain_and_timeouts_give_no_targets_with_a_reason():
    loc = run(f"sip:bob@{D}", {q(D, "A"): Answer.nxdomain(), q(D, "AAAA"): Answer.failure("timeout after 4 s")})
    assert loc.targets == []
    assert f"A {D}: NXDOMAIN" in loc.reason and f"AAAA {D}: timeout after 4 s" in loc.reason


def test_bad_uris_give_a_reason_and_no_query():
    for uri, why in [(f"sips:bob@{D};transport=udp", "UDP"), (f"sip:bob@{D};transport=sctp", "not spoken")]:
        loc = ServerLocation(SipUri.parse(uri))
        assert loc.done and loc.targets == [] and why in loc.reason and loc.queries() == []


def test_families_and_hosts_table():
    assert [t[1] for t in targets(run(f"sip:bob@{D}", FULL, families=("AAAA", "A")))][:2] == ["2001:db8::2",
                                                                                             "192.0.2.2"]
    assert "2001:db8::2" not in [t[1] for t in targets(run(f"sip:bob@{D}", FULL, families=("A",)))]
    loc = ServerLocation(SipUri.parse("sip:bob@LocalHost:5070"), local_hosts={"localhost": ["127.0.0.1"]})
    assert loc.done and targets(loc) == [("udp", "127.0.0.1", 5070)]


def test_srv_targets_that_are_literals_and_the_host_cap():
    answers = {q(f"_sip._udp.{D}", "SRV"): Answer.ok([Srv(1, 0, 5070 + i, f"h{i}.{D}") for i in range(20)]
                                                       + [Srv(0, 0, 5060, "192.0.2.50")])}
    for i in range(20):
        answers[q(f"h{i}.{D}", "A")] = Answer.ok([f"192.0.2.{100 + i}"])
    loc = run(f"sip:bob@{D};transport=udp", answers, families=("A",), max_hosts=3)
    assert targets(loc)[0] == ("udp", "192.0.2.50", 5060)
    assert len(loc.targets) == 4


def test_srv_priority_then_weight_with_a_seeded_random():
    records = [Srv(20, 0, 1, "late"), Srv(10, 60, 2, "heavy"), Srv(10, 20, 3, "light"), Srv(10, 0, 4, "zero")]
    firsts = Counter(order_srv(records, random.Random(seed))[0].target for seed in range(4000))
    # priority 10 first; among its records, heavy (60/80) is picked first about 3 times as often as light
    assert set(firsts) <= {"heavy", "light", "zero"}
    assert 2.2 < firsts["heavy"] / firsts["light"] < 4.0
    assert firsts["zero"] < firsts["light"]  # weight 0: chosen first only when the draw is exactly 0
    for seed in range(50):
        order = order_srv(records, random.Random(seed))
        assert order[-1].target == "late" and len(order) == 4
    assert order_srv(records, random.Random(7)) == order_srv(records, random.Random(7))  # reproducible


def test_weights_decide_the_order_of_targets_in_a_lookup():
    answers = {q(f"_sip._udp.{D}", "SRV"): Answer.ok([Srv(10, 1, 5070, f"a.{D}"), Srv(10, 99, 5080, f"b.{D}")]),
               q(f"a.{D}", "A"): Answer.ok(["192.0.2.1"]), q(f"b.{D}", "A"): Answer.ok(["192.0.2.2"])}
    firsts = Counter(run(f"sip:x@{D};transport=udp", answers, rng=random.Random(s), families=("A",)).targets[0].port
                     for s in range(300))
    assert firsts[5080] > 250


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cache_ttl_negative_and_failure_expiry():
    cache = DnsCache(failure_ttl=5, max_negative_ttl=100)
    clock = Clock()
    a, n, f = q("a.test", "A"), q("n.test", "A"), q("f.test", "A")
    cache.put(a, Answer.ok(["192.0.2.1"], ttl=30), clock())
    cache.put(n, Answer.nxdomain(ttl=3600), clock())   # capped at 100
    cache.put(f, Answer.failure("timeout"), clock())
    cache.put(q("zero.test", "A"), Answer.ok(["192.0.2.2"], ttl=0), clock())
    assert len(cache) == 3
    clock.now += 4.9
    assert cache.get(f, clock()).status is AnswerStatus.FAILURE
    clock.now += 0.2
    assert cache.get(f, clock()) is None
    assert cache.get(a, clock()).records == ("192.0.2.1",)
    clock.now += 25
    assert cache.get(a, clock()) is None
    assert cache.get(n, clock()).status is AnswerStatus.NXDOMAIN
    clock.now += 70
    assert cache.get(n, clock()) is None


def test_cache_is_bounded_least_recently_used_first():
    cache = DnsCache(max_entries=3)
    for i in range(3):
        cache.put(q(f"{i}.test", "A"), Answer.ok(["192.0.2.1"]), 0)
    cache.get(q("0.test", "A"), 1)           # used: kept
    cache.put(q("3.test", "A"), Answer.ok(["192.0.2.1"]), 1)
    assert len(cache) == 3
    assert cache.get(q("1.test", "A"), 1) is None
    assert cache.get(q("0.test", "A"), 1) is not None


def test_parse_nameserver():
    assert parse_nameserver("192.0.2.53") == ("192.0.2.53", 53)
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("[::1]:5353") == ("::1", 5353)
    assert parse_nameserver("2001:db8::53") == ("2001:db8::53", 53)
    for bad in ("dns.example", "127.0.0.1:x", "127.0.0.1:0", "[::1", "[::1]x", ""):
        with pytest.raises(ValueError):
            parse_nameserver(bad)


def test_target_text():
    assert str(Target("udp", "192.0.2.1", 5060)) == "udp:192.0.2.1:5060"
    assert str(Target("tls", "2001:db8::1", 5061)) == "tls:[2001:db8::1]:5061"
