"""RFC 4475 "SIP Torture Test Messages" against sipcore's message API.

The corpus in tests/data/rfc4475/ holds the 50 files of the RFC's Appendix A bit-exact archive
(see its README.md); expectations.json records, for each, what a robust proxy/registrar must do.
This module checks what parse_message and the typed accessors do with them:

* every message: parse_message and every accessor raise nothing but SipParseError;
* "parse" cases: the message parses, every accessor works and the fields are those the RFC states;
* "reject" cases: parse_message, or the accessor of the broken header, raises SipParseError with
  the right status (or, where the RFC allows it, the liberal reading holds);
* "respond:<code>" cases: the message parses (the application answers <code>; tested end to end
  elsewhere) and the accessors that must fail do, with the status to answer;
* round trip parse -> to_bytes -> parse keeps method, URI, headers and body;
* fuzz: every 64-byte truncation, seeded random byte flips and a few targeted mutations raise only
  SipParseError or parse.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import random
import re
import zlib
from typing import Any, Callable

import pytest

message_mod = pytest.importorskip("sipcore.message")

parse_message = message_mod.parse_message
SipParseError = message_mod.SipParseError
Request = message_mod.Request

DATA = pathlib.Path(__file__).resolve().parent.parent / "data" / "rfc4475"
EXPECT: dict[str, dict[str, Any]] = json.loads((DATA / "expectations.json").read_text("utf-8"))["messages"]
NAMES = sorted(EXPECT)


def _load(name: str) -> bytes:
    return (DATA / f"{name}.dat").read_bytes()


def _names(pred: Callable[[dict[str, Any]], bool]) -> list[str]:
    return [n for n in NAMES if pred(EXPECT[n])]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

_MISSING = object()
_STEP_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)")


def resolve(msg: Any, path: str) -> Any:
    """Evaluate a check path on a parsed message.

    `a.b[0].c` walks attributes and indexes; a final `.len` is len(); `header:Name` is msg.get(Name)
    with whitespace runs collapsed; `headers:Name` is msg.get_all(Name) (`.len` allowed);
    `str:path` is str() of the value. Exceptions propagate.
    """
    if path.startswith("str:"):
        return str(resolve(msg, path[4:]))
    if path.startswith("header:"):
        v = msg.get(path[7:])
        return None if v is None else " ".join(v.split())
    if path.startswith("headers:"):
        rest = path[8:]
        if rest.endswith(".len"):
            return len(msg.get_all(rest[:-4]))
        return [" ".join(v.split()) for v in msg.get_all(rest)]
    want_len = path.endswith(".len")
    if want_len:
        path = path[:-4]
    obj = msg
    for step in path.split("."):
        m = _STEP_RE.fullmatch(step)
        if m is None:
            raise ValueError(f"bad check path {path!r}")
        obj = getattr(obj, m.group(1))
        for idx in re.findall(r"\[(\d+)\]", m.group(2)):
            obj = obj[int(idx)]
    if want_len:
        return len(obj)
    return obj


def run_checks(msg: Any, checks: dict[str, Any]) -> list[str]:
    """Return one line per failed check (wrong value or exception)."""
    problems = []
    for path, want in checks.items():
        try:
            got = resolve(msg, path)
        except SipParseError as e:
            problems.append(f"{path}: raised SipParseError(status={e.status}): {e}")
            continue
        except Exception as e:  # noqa: BLE001 - reported as a failure, not swallowed
            problems.append(f"{path}: raised {type(e).__name__}: {e}")
            continue
        if isinstance(got, dict):
            got = dict(got)
        if got != want:
            problems.append(f"{path}: expected {want!r}, got {got!r}")
    return problems


def accessor_steps(msg: Any) -> dict[str, Callable[[], Any]]:
    """Every typed accessor of the API, as callables that also touch the parsed sub-objects."""
    def vias() -> Any:
        vs = msg.vias
        for v in vs:
            (v.transport, v.host, v.port, v.params, v.branch, v.received, v.rport, str(v))
        return vs

    def name_addr(attr: str) -> Callable[[], Any]:
        def f() -> Any:
            na = getattr(msg, attr)
            (na.display, na.uri, na.params, na.tag, str(na), str(na.uri), na.uri.user, na.uri.host, na.uri.port)
            return na
        return f

    def name_addrs(attr: str) -> Callable[[], Any]:
        def f() -> Any:
            lst = getattr(msg, attr)
            for na in lst:
                (na.display, na.params, str(na), str(na.uri), na.uri.params, na.uri.headers)
            return lst
        return f

    steps: dict[str, Callable[[], Any]] = {}
    if isinstance(msg, Request):
        steps["uri"] = lambda: (msg.uri, str(msg.uri), msg.uri.user, msg.uri.host, msg.uri.port, msg.uri.params)
    steps.update({
        "vias": vias,
        "call_id": lambda: msg.call_id,
        "cseq": lambda: (msg.cseq, msg.cseq.seq, msg.cseq.method),
        "from_": name_addr("from_"),
        "to": name_addr("to"),
        "contacts": name_addrs("contacts"),
        "contact_star": lambda: msg.contact_star,
        "routes": name_addrs("routes"),
        "record_routes": name_addrs("record_routes"),
        "max_forwards": lambda: msg.max_forwards,
        "expires": lambda: msg.expires,
    })
    return steps


def raised(fn: Callable[[], Any]) -> SipParseError | None:
    """Run fn; return the SipParseError it raised, or None. Any other exception propagates."""
    try:
        fn()
    except SipParseError as e:
        return e
    return None


def exercise(msg: Any) -> None:
    """Touch every accessor, every header and the serialiser: only SipParseError may escape each."""
    if isinstance(msg, Request):
        (msg.method, msg.version)
    else:
        (msg.status, msg.reason, msg.version)
    for step in accessor_steps(msg).values():
        raised(step)
    for h in list(getattr(msg, "headers", [])):
        raised(lambda: msg.get(h[1]))
        raised(lambda: msg.get_all(h[1]))
    out = msg.to_bytes()
    assert isinstance(out, bytes)
    raised(lambda: exercise_no_recursion(parse_message(out)))


def exercise_no_recursion(msg: Any) -> None:
    for step in accessor_steps(msg).values():
        raised(step)


def parse_or_error(data: bytes) -> tuple[Any, SipParseError | None]:
    """parse_message(data) -> (msg, None) or (None, SipParseError); anything else propagates."""
    try:
        return parse_message(data), None
    except SipParseError as e:
        return None, e


# --------------------------------------------------------------------------------------------------
# corpus integrity
# --------------------------------------------------------------------------------------------------

def test_corpus_matches_expectations() -> None:
    on_disk = sorted(p.stem for p in DATA.glob("*.dat"))
    assert on_disk == NAMES, "corpus files and expectations.json disagree"
    assert len(NAMES) == 50, "RFC 4475 Appendix A holds 50 files"


def test_corpus_matches_rfc_archive() -> None:
    """Every .dat file is byte-identical to the member of RFC 4475 Appendix A's archive (gzip CRC checked)."""
    import base64
    import io
    import tarfile

    lines = (DATA / "rfc4475-appendix-a.b64").read_text("ascii").splitlines()
    b64 = "".join(ln.strip() for ln in lines if ln.strip() and "MESSAGE ARCHIVE" not in ln)
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(b64, validate=True)), mode="r:gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert sorted(members) == [f"{n}.dat" for n in NAMES]
    for n in NAMES:
        assert members[f"{n}.dat"] == _load(n), f"{n}.dat differs from the RFC archive"


@pytest.mark.parametrize("name", NAMES)
def test_corpus_is_bit_exact(name: str) -> None:
    """Guards against CRLF normalisation by editors or git (see .gitattributes)."""
    data = _load(name)
    assert len(data) == EXPECT[name]["size"]
    assert hashlib.sha256(data).hexdigest() == EXPECT[name]["sha256"]


# --------------------------------------------------------------------------------------------------
# no message makes the parser raise anything but SipParseError
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_never_raises_other_than_sip_parse_error(name: str) -> None:
    msg, _err = parse_or_error(_load(name))
    if msg is not None:
        exercise(msg)


# --------------------------------------------------------------------------------------------------
# per-message expectations
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", _names(lambda e: e["outcome"] == "parse"))
def test_valid_message_parses(name: str) -> None:
    exp = EXPECT[name]
    msg, err = parse_or_error(_load(name))
    assert err is None, f"{name} ({exp['section']}) must parse; parse_message raised status={err.status}: {err}"
    problems = []
    for step_name, step in accessor_steps(msg).items():
        e = raised(step)
        if e is not None:
            problems.append(f"accessor {step_name}: raised SipParseError(status={e.status}): {e}")
    problems += run_checks(msg, exp.get("checks", {}))
    assert not problems, f"{name} ({exp['section']} {exp['title']}):\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("name", _names(lambda e: e["outcome"] == "reject"))
def test_invalid_message_is_rejected(name: str) -> None:
    exp = EXPECT[name]
    want_status = exp.get("status")
    msg, err = parse_or_error(_load(name))
    errors: list[tuple[str, SipParseError]] = []
    if err is not None:
        if "parse" in exp["reject_by"]:
            errors.append(("parse_message", err))
    else:
        steps = accessor_steps(msg)
        for step_name in exp["reject_by"]:
            if step_name == "parse":
                continue
            e = raised(steps[step_name])
            if e is not None:
                errors.append((step_name, e))
    if errors:
        if want_status is not None:
            wrong = [(s, e.status) for s, e in errors if e.status != want_status]
            assert len(wrong) < len(errors), (
                f"{name} ({exp['section']}) rejected with the wrong status: {wrong}, expected {want_status}")
        if msg is not None:
            problems = run_checks(msg, exp.get("checks", {}))
            assert not problems, f"{name}: the rest of the message should still be readable:\n  " + "\n  ".join(problems)
        return
    lenient = exp.get("lenient")
    if lenient is not None and msg is not None:
        problems = run_checks(msg, lenient)
        assert not problems, (
            f"{name} ({exp['section']}) accepted, but not in the liberal way the RFC allows:\n  " + "\n  ".join(problems))
        return
    pytest.fail(
        f"{name} ({exp['section']} {exp['title']}): expected SipParseError from one of {exp['reject_by']}, "
        f"nothing raised. RFC: {exp['action']}")


@pytest.mark.parametrize("name", _names(lambda e: e["outcome"].startswith("respond:")))
def test_application_layer_message(name: str) -> None:
    exp = EXPECT[name]
    msg, err = parse_or_error(_load(name))
    if err is not None:
        allowed = exp.get("parse_error_status")
        assert allowed is not None and err.status == allowed, (
            f"{name} ({exp['section']}) must parse (the application answers {exp['outcome'][8:]}); "
            f"parse_message raised status={err.status}: {err}")
        return
    problems = []
    steps = accessor_steps(msg)
    for step_name, want in exp.get("raises", {}).items():
        e = raised(steps[step_name])
        if e is None:
            problems.append(f"accessor {step_name}: expected SipParseError(status={want}), nothing raised")
        elif e.status != want:
            problems.append(f"accessor {step_name}: expected SipParseError(status={want}), got status={e.status}: {e}")
    problems += run_checks(msg, exp.get("checks", {}))
    assert not problems, f"{name} ({exp['section']} {exp['title']}):\n  " + "\n  ".join(problems)


# --------------------------------------------------------------------------------------------------
# URI equivalence / distinctness the RFC calls out (RFC 3261 §19.1.4)
# --------------------------------------------------------------------------------------------------

_EQUIV = [(n, a, b) for n in NAMES for a, b in EXPECT[n].get("equivalent_uris", [])]
_DISTINCT = [(n, a, b) for n in NAMES for a, b in EXPECT[n].get("distinct_uris", [])]


@pytest.mark.parametrize("name,path,other", _EQUIV)
def test_escaped_uri_is_equivalent(name: str, path: str, other: str) -> None:
    SipUri = pytest.importorskip("sipcore.uri").SipUri
    msg = parse_message(_load(name))
    got = resolve(msg, path)
    assert got == SipUri.parse(other), f"{name}: {path} = {str(got)!r} must compare equal to {other!r} (%HH == char)"


@pytest.mark.parametrize("name,a,b", _DISTINCT)
def test_escaped_uris_stay_distinct(name: str, a: str, b: str) -> None:
    msg = parse_message(_load(name))
    ua, ub = resolve(msg, a), resolve(msg, b)
    assert ua != ub, f"{name}: {a} ({ua}) and {b} ({ub}) are distinct contacts"
    assert ua.aor != ub.aor


# --------------------------------------------------------------------------------------------------
# round trip
# --------------------------------------------------------------------------------------------------

def _parses(name: str) -> bool:
    try:
        parse_message(_load(name))
        return True
    except Exception:  # noqa: BLE001 - only selects parametrisation; other tests report errors
        return False


def _snapshot(msg: Any) -> dict[str, Any]:
    snap: dict[str, Any] = {"version": msg.version, "body": msg.body}
    if isinstance(msg, Request):
        snap["method"] = msg.method
        try:
            snap["uri"] = str(msg.uri)
        except SipParseError as e:
            snap["uri"] = ("SipParseError", e.status)
    else:
        snap["status"] = msg.status
        snap["reason"] = msg.reason
    names: list[str] = []
    for h in getattr(msg, "headers", []):
        if h[0] != "content-length" and h[0] not in names:
            names.append(h[0])
    snap["headers"] = [(n, msg.get_all(n)) for n in names]
    return snap


ROUND_TRIP = [n for n in NAMES if EXPECT[n]["outcome"] != "unreferenced" and _parses(n)] if NAMES else []


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_round_trip(name: str) -> None:
    first = parse_message(_load(name))
    wire = first.to_bytes()
    second = parse_message(wire)
    a, b = _snapshot(first), _snapshot(second)
    for key in a:
        assert a[key] == b.get(key), f"{name}: {key} changed in parse -> to_bytes -> parse"
    assert a == b
    cl = second.get("content-length")
    assert cl is not None and int(cl) == len(second.body)


# --------------------------------------------------------------------------------------------------
# fuzz-style robustness
# --------------------------------------------------------------------------------------------------

def _must_not_crash(data: bytes, label: str) -> None:
    try:
        msg = parse_message(data)
    except SipParseError:
        return
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f"{label}: parse_message raised {type(e).__name__}: {e}") from e
    try:
        exercise(msg)
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f"{label}: an accessor raised {type(e).__name__}: {e}") from e


@pytest.mark.parametrize("name", NAMES)
def test_fuzz_truncations(name: str) -> None:
    data = _load(name)
    for cut in range(0, len(data), 64):
        _must_not_crash(data[:cut], f"{name}[:{cut}]")


@pytest.mark.parametrize("name", NAMES)
def test_fuzz_byte_flips(name: str) -> None:
    data = _load(name)
    rng = random.Random(zlib.crc32(name.encode()))
    for i in range(24):
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(buf))
            buf[pos] = rng.choice((rng.randrange(256), 0x00, 0x0A, 0x0D, 0x20, 0x22, 0x3A, 0x3B, 0x3C, 0x2C, 0xFF))
        _must_not_crash(bytes(buf), f"{name} flip #{i}")


# Mutations aimed at the places a Python parser is likely to call int()/str methods on network data:
# str.isdigit() is True for non-ASCII digits such as '²' (U+00B2) and '١' (U+0661), which int()
# either rejects with ValueError or silently accepts.
_BASE = "zeromf"
_TARGETED = {
    "content-length superscript": (b"Content-Length: 0", "Content-Length: \u00b2".encode()),
    "content-length arabic digit": (b"Content-Length: 0", "Content-Length: \u0661".encode()),
    "max-forwards superscript": (b"Max-Forwards: 0", "Max-Forwards: \u00b2".encode()),
    "cseq superscript": (b"CSeq: 39234321 OPTIONS", "CSeq: \u00b2 OPTIONS".encode()),
    "via port superscript": (b"host1.example.com;branch", "host1.example.com:\u00b2;branch".encode()),
    "uri port superscript": (b"OPTIONS sip:user@example.com SIP", "OPTIONS sip:user@example.com:\u00b2 SIP".encode()),
    "status code superscript": (None, "SIP/2.0 \u00b2\u00b2\u00b2 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\n"
                                      "Content-Length: 0\r\n\r\n".encode()),
    "expires superscript": (b"Max-Forwards: 0", "Max-Forwards: 0\r\nExpires: \u00b2".encode()),
    "rport superscript": (b"branch=z9hG4bKkdjuw2349i", "branch=z9hG4bKkdjuw2349i;rport=\u00b2".encode()),
    "contact expires superscript": (b"Max-Forwards: 0", "Max-Forwards: 0\r\nContact: <sip:a@b>;expires=\u00b2".encode()),
    "lone CR in header": (b"Max-Forwards: 0", b"Max-Forwards: 0\rX"),
    "NUL in header name": (b"Max-Forwards: 0", b"Max-\x00Forwards: 0"),
    "invalid UTF-8 everywhere": (b"OPTIONS sip:user", b"OPTIONS sip:\xff\xfeuser"),
    "empty header value list": (b"Max-Forwards: 0", b"Max-Forwards: 0\r\nRoute: ,,,\r\nRecord-Route: <>"),
    "bracketless IPv6 via": (b"host1.example.com;branch", b"[::1;branch"),
}


@pytest.mark.parametrize("label", sorted(_TARGETED))
def test_targeted_mutations(label: str) -> None:
    old, new = _TARGETED[label]
    base = _load(_BASE)
    data = new if old is None else base.replace(old, new, 1)
    assert data != base
    _must_not_crash(data, label)


# --------------------------------------------------------------------------------------------------
# stream framing (TCP/TLS): the framing errors must close the connection, never mis-frame
# --------------------------------------------------------------------------------------------------

def _mcl01_first_length() -> bytes:
    """mcl01 cut right after the octets its *first* Content-Length (13) announces, so that a framer
    that just takes the first value frames a message instead of tripping over the leftovers."""
    data = _load("mcl01")
    end = data.index(b"\r\n\r\n") + 4
    return data[: end + 13]


_STREAM_FRAMING_ERRORS = {
    "ncl": lambda: _load("ncl"),                 # Content-Length: -999
    "mcl01": _mcl01_first_length,                # Content-Length: 13 ... Content-Length: 5
}


@pytest.mark.parametrize("name", sorted(_STREAM_FRAMING_ERRORS))
def test_stream_framing_error(name: str) -> None:
    """RFC 4475 3.1.2.3 / 3.3.9: over TCP these framing errors are unrecoverable: close, never frame."""
    framer = message_mod.StreamFramer(65535)
    data = _STREAM_FRAMING_ERRORS[name]()
    try:
        frames = framer.feed(data)
    except SipParseError:
        return
    pytest.fail(f"{name}: StreamFramer framed {[len(f) for f in frames]} byte(s) instead of raising SipParseError")


@pytest.mark.parametrize("name", NAMES)
def test_stream_framer_never_crashes(name: str) -> None:
    framer = message_mod.StreamFramer(65535)
    try:
        frames = framer.feed(_load(name))
    except SipParseError:
        return
    for f in frames:
        _must_not_crash(f, f"{name} stream frame")
