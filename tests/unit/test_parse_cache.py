"""The parse caches (uri.split_hostport, SipUri.parse, NameAddr.parse, Via.parse_cached) against the uncached
reference parsers: same results or the same errors, independent copies where the objects can be changed,
bounded size."""
from __future__ import annotations

import pathlib
import random

import pytest

from sipcore import headers as H
from sipcore import message as M
from sipcore import uri as U
from sipcore.errors import SipParseError

DATA = pathlib.Path(__file__).resolve().parent.parent / "data" / "rfc4475"


def corpus_values() -> dict[str, list[str]]:
    """Via, address and host:port texts from the RFC 4475 messages, plus mutations of them."""
    out: dict[str, list[str]] = {"via": [], "addr": [], "uri": [], "hostport": []}
    for p in sorted(DATA.glob("*.dat")):
        try:
            msg = M.parse_message(p.read_bytes())
        except SipParseError:
            continue
        for k, _, v in msg.headers:
            if k == "via":
                out["via"].extend(U.split_quoted(v, ",") if v.count('"') % 2 == 0 else [v])
            elif k in ("from", "to", "contact", "route", "record-route"):
                out["addr"].append(v)
        if isinstance(msg, M.Request):
            out["uri"].append(msg.raw_uri)
    out["via"] += ["SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1;rport=5060;received=10.0.0.1", "SIP/2.0/TCP h;maddr=x"]
    out["addr"] += ['"A" <sip:a@b;lr>;tag=1', "<sip:127.0.0.1:5060;lr>", "sip:a@b;tag=x", "<tel:+1;x=y>;q=1"]
    out["hostport"] += ["127.0.0.1", "127.0.0.1:5060", "[::1]:5", "[::1]", "h:", "h:99999", "a b", "", "[x]", "é"]
    rng = random.Random(3)
    for key in ("via", "addr", "uri", "hostport"):
        base = list(out[key])
        for _ in range(300):
            s = list(rng.choice(base) or "x")
            for _ in range(rng.randint(1, 3)):
                s.insert(rng.randrange(len(s) + 1), rng.choice(list(";,:<>\"@= \t[]é\udcff") + ["tag", "1"]))
            out[key].append("".join(s))
    return out


VALUES = corpus_values()


def outcome(fn, text):
    try:
        return ("ok", fn(text))
    except SipParseError as e:
        return ("error", e.reason, e.status)


def via_state(v: H.Via) -> tuple:
    return (v.transport, v.host, v.port, v.params, str(v))


def addr_state(na: U.NameAddr) -> tuple:
    return (na.display, str(na.uri), na.uri.host, na.uri.port, na.uri.user, na.uri.params, na.params, str(na))


def uri_state(u: U.SipUri) -> tuple:
    return (u.scheme, u.user, u.password, u.host, u.port, u.params, u.headers, u.opaque, str(u))


@pytest.fixture(autouse=True)
def _empty_caches():
    for c in (U._HOSTPORT_CACHE, U._URI_CACHE, U._NAME_ADDR_CACHE, H._VIA_CACHE):
        c.clear()
    yield


def test_cached_parsers_match_the_reference_cold_and_warm() -> None:
    cases = [
        ("hostport", U.split_hostport, U._split_hostport, lambda x: x),
        ("via", H.Via.parse_cached, H.Via.parse, via_state),
        ("addr", U.NameAddr.parse, U.NameAddr._parse, addr_state),
        ("uri", lambda t: U.SipUri.parse(t, strict=False), lambda t: U.SipUri._parse(t, strict=False), uri_state),
        ("uri", U.SipUri.parse, U.SipUri._parse, uri_state),
    ]
    for key, cached, ref, state in cases:
        for _ in range(2):  # cold, then from the cache
            for text in VALUES[key]:
                a = outcome(lambda t: state(cached(t)), text)
                b = outcome(lambda t: state(ref(t)), text)
                assert a == b, (key, text)


def test_strict_and_lenient_uri_parses_do_not_share_an_answer() -> None:
    assert U.SipUri.parse("mailto:a@b", strict=False).opaque == "a@b"
    with pytest.raises(SipParseError) as ei:
        U.SipUri.parse("mailto:a@b")
    assert ei.value.status == 416
    assert "mailto:a@b" not in U._URI_CACHE


def test_copies_are_independent() -> None:
    text = "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx;rport"
    a = H.Via.parse_cached(text)
    a.params["received"] = "10.0.0.1"
    a.params["rport"] = "5"
    b = H.Via.parse_cached(text)
    assert b.params == {"branch": "z9hG4bKx", "rport": None} and b is not a
    na = U.NameAddr.parse("<sip:a@b>;tag=1")
    na.params["tag"] = "2"
    assert U.NameAddr.parse("<sip:a@b>;tag=1").tag == "1"
    assert U.NameAddr.parse("<sip:a@b>;tag=1").uri is na.uri  # the immutable URI is shared


def test_caches_are_bounded_and_keep_only_short_successful_texts() -> None:
    for i in range(3 * U._CACHE_MAX):
        U.split_hostport(f"10.0.{i // 256}.{i % 256}:5060")
        U.NameAddr.parse(f"<sip:u{i}@h>;tag={i}")
        H.Via.parse_cached(f"SIP/2.0/UDP h;branch=z9hG4bK{i}")
    for c in (U._HOSTPORT_CACHE, U._URI_CACHE, U._NAME_ADDR_CACHE, H._VIA_CACHE):
        assert 0 < len(c) <= U._CACHE_MAX
    long = "<sip:" + "a" * U._CACHE_TEXT_MAX + "@h>"
    U.NameAddr.parse(long)
    assert long not in U._NAME_ADDR_CACHE
    for _ in range(2):
        with pytest.raises(SipParseError):
            U.split_hostport("bad host")
    assert "bad host" not in U._HOSTPORT_CACHE


def test_from_is_parsed_without_the_cache() -> None:
    """A From carries a new tag with each dialog: reading it must not push repeating values out of the cache."""
    msg = M.parse_message(b"INVITE sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\n"
                          b"To: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    M.validate(msg)
    assert addr_state(msg.from_) == addr_state(U.NameAddr._parse("<sip:a@h>;tag=1"))
    assert "<sip:a@h>;tag=1" not in U._NAME_ADDR_CACHE and "<sip:b@h>" in U._NAME_ADDR_CACHE
