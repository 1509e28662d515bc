"""The C header scanner (sipcore/_scan.c) against the pure-Python reference in sipcore/message.py.

Differential tests: for the RFC 4475 corpus, the SIP messages of the other unit tests' fixtures and
thousands of seeded random mutations of them (truncations, byte flips, inserted CR/LF/space/tab/colon/
NUL/0xff and Unicode whitespace, invalid UTF-8, folded lines, duplicated headers, mixed line ends),

* `_scan.split` / `_scan.scan_headers` / `_scan.scan` give exactly what `_split_head`, the line
  splitting of `parse_message` and `_scan_headers` give (same start line, same [key, name, value]
  lists, same body), or both raise SipParseError with the same reason and status;
* `parse_message` with `use_scanner("c")` and with `use_scanner("python")` gives the same message
  (or the same error), and leaves `message._KEY_CACHE` in the same state (the cache decides whether a
  colon-less line is a header, so its side effects are part of the behaviour).

The module skips, saying why, when the extension is not built.
"""
from __future__ import annotations

import importlib.util
import os
from itertools import islice
import pathlib
import random
import subprocess
import sys
import tracemalloc
from typing import Any, Callable

import pytest

from sipcore import message as M
from sipcore.errors import SipParseError

try:
    from sipcore import _scan
except ImportError as exc:  # pragma: no cover - depends on the build
    pytest.skip(
        f"sipcore._scan (the C header scanner) is not built ({exc}); build it with "
        "`pip install -e .` or `python setup.py build_ext --inplace` (needs a C compiler). "
        "parse_message uses the pure-Python scanner meanwhile.",
        allow_module_level=True,
    )

UNIT = pathlib.Path(__file__).resolve().parent
DATA = UNIT.parent / "data" / "rfc4475"
KC = M._KEY_CACHE


# --------------------------------------------------------------------------------------------------
# the corpus
# --------------------------------------------------------------------------------------------------

REGISTER = (
    b"REGISTER sip:registrar.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\nTo: Bob <sip:bob@example.com>\r\nFrom: Bob <sip:bob@example.com>;tag=456248\r\n"
    b"Call-ID: 843817637684230@998sdasdh09\r\nCSeq: 1826 REGISTER\r\n"
    b"Contact: <sip:bob@192.0.2.10:5060;transport=udp>\r\nExpires: 7200\r\nContent-Length: 0\r\n\r\n"
)
SDP = (
    b"v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n"
)
INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.example.com;branch=z9hG4bK776asdhds\r\nMax-Forwards: 70\r\n"
    b"To: Bob <sip:bob@example.com>\r\nFrom: \"Alice \xc3\x89\" <sip:alice@example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.example.com\r\nCSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.example.com>\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n"
    b"Supported: replaces, timer\r\nUser-Agent: callpath-test\r\n"
    b"Content-Type: application/sdp\r\nContent-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
)
OK_RR = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK2d4790.1;received=192.0.2.3\r\n"
    b"Via: SIP/2.0/UDP pc33.example.com;branch=z9hG4bK776asdhds;received=192.0.2.1\r\n"
    b"Record-Route: <sip:proxy2.example.com;lr>\r\nRecord-Route: <sip:proxy1.example.com;lr>\r\n"
    b"To: Bob <sip:bob@example.com>;tag=a6c85cf\r\nFrom: Alice <sip:alice@example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.example.com\r\nCSeq: 314159 INVITE\r\n"
    b"Contact: <sip:bob@192.0.2.4>\r\nContent-Length: 0\r\n\r\n"
)
ODD = [  # hand-made edge cases of the line and header rules
    b"OPTIONS sip:a SIP/2.0\nVia: x\n\tfolded\n  more\nl:1\n\nX",
    b"OPTIONS sip:a SIP/2.0\r\nVia: x\nTo: y\r\n\r\n",  # mixed CRLF / bare LF
    b"OPTIONS sip:a SIP/2.0\r\r\nVia: x\r\r\n\r\n",  # CR CR LF
    b"OPTIONS sip:a SIP/2.0\r\nVia: a\rb\r\nTo:\r\n\r\n",  # lone CR inside a value
    b"OPTIONS sip:a SIP/2.0\r\nVia : x\r\nTo\t :\t y \t\r\nFrom \x0b\t: z\r\n\r\n",  # rstrip of names
    b"OPTIONS sip:a SIP/2.0\r\nVia\x0b: x\r\n\r\n",  # VT only: not stripped -> bad name
    b"OPTIONS sip:a SIP/2.0\r\nVia: \xc2\xa0x\xc2\x85 \xe3\x80\x80\r\n \xc2\xa0\r\n\r\n",  # Unicode spaces
    b"OPTIONS sip:a SIP/2.0\r\nVia: \x1c\x1d\x1e\x1fx\x0c\r\n\r\n",  # ASCII spaces by str.isspace
    b"OPTIONS sip:a SIP/2.0\r\nVia: \xff\xfe\xed\xa0\x80\xc0\x80\xe2\x82\r\n\r\n",  # invalid UTF-8
    b"OPTIONS sip:a SIP/2.0\r\nSubject: \xf0\x9f\x98\x80 \xe4\xb8\xad\r\n\r\n",  # 4-byte kind
    b"OPTIONS sip:a SIP/2.0\r\n\xe4\xb8\xad: x\r\n\r\n",  # non-ASCII name
    b"OPTIONS sip:a SIP/2.0\r\n: x\r\n\r\n",  # empty name
    b"OPTIONS sip:a SIP/2.0\r\nnocolon\r\n\r\n",
    b"OPTIONS sip:a SIP/2.0\r\n folded first\r\n\r\n",
    b"OPTIONS sip:a SIP/2.0\r\nVia:\r\n \r\n\t\r\n x\r\n\r\n",  # folding onto an empty value
    b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\nVia: y\r\n\r\n",  # first CRLFCRLF wins
    b"OPTIONS sip:a SIP/2.0\n\nVia: y\r\n\r\n",  # CRLFCRLF beats an earlier LFLF
    b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n",  # final CRLF only
    b"OPTIONS sip:a SIP/2.0\r\nVia: x",  # no end of headers
    b"", b"\r\n", b"\n\n", b"\r\n\r\n", b"x\r\n", b"\x00\r\n\r\n", b"\n", b"\r",
    b"OPTIONS sip:a SIP/2.0\r\nA: " + b"x" * 70 + b"\r\n" + b"B" * 80 + b"\r\n\r\n",  # repr of [:60]
    b"OPTIONS sip:a SIP/2.0\r\n" + b"\xe4\xb8\xad" * 70 + b"\r\n\r\n",
    b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n\x00\xff body \r\n\r\n",
]


def _load_module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"_scan_fixture_{name}", UNIT / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fixture_messages() -> list[bytes]:
    """SIP messages built by the other unit tests' helpers (skipped one by one if a helper changed)."""
    out: list[bytes] = []
    calls: list[tuple[str, Callable[[Any], Any]]] = [
        ("test_transaction", lambda m: [m.invite(), m.invite(method="BYE"), m.invite(cseq_method="ACK")]),
        ("test_dialog", lambda m: [m.invite(), m.invite(extra="Require: 100rel\r\n", body="v=0\r\n"),
                                   m.in_dialog("INFO", 11, "<sip:a@b>"), m.in_dialog("BYE", 12)]),
        ("test_hep", lambda m: [m.SIP]),
        ("test_proxy_core", lambda m: [m.register(), m.register(extra="Path: <sip:edge;lr>\n"), m.invite(),
                                       m.invite(extra="Route: <sip:198.51.100.1;lr>\n")]),
        ("test_torture", lambda m: [(new if old is None else (DATA / f"{m._BASE}.dat").read_bytes().replace(old, new, 1))
                                    for old, new in m._TARGETED.values()]),
    ]
    for name, build in calls:
        try:
            msgs = build(_load_module(name))
        except Exception:  # noqa: BLE001 - another test module changed its helpers: use the rest
            continue
        out.extend(x.encode() if isinstance(x, str) else bytes(x) for x in msgs)
    return out


RFC4475 = {p.stem: p.read_bytes() for p in sorted(DATA.glob("*.dat"))}
FIXTURES = _fixture_messages()
BASE: list[bytes] = list(RFC4475.values()) + FIXTURES + [REGISTER, INVITE, OK_RR] + ODD


# --------------------------------------------------------------------------------------------------
# references and comparison
# --------------------------------------------------------------------------------------------------

def py_split(data: bytes) -> tuple[str, list[str], bytes]:
    """The Python path of parse_message up to the start line (copied line for line)."""
    head_b, body = M._split_head(data)
    head = head_b.decode("utf-8", "surrogateescape")
    if "\r\n" in head:
        lines = head.split("\r\n")
        if "\n" in head.replace("\r\n", ""):
            lines = head.replace("\r\n", "\n").split("\n")
    else:
        lines = head.split("\n")
    return head, lines, body


def py_scan(data: bytes) -> tuple[str, list[list[str]], bytes]:
    _, lines, body = py_split(data)
    return lines[0], M._scan_headers(lines), body


def c_scan(data: bytes) -> tuple[str, list[list[str]], bytes]:
    return _scan.scan(data, M._KEY_CACHE, M.header_key)


def c_scan_2step(data: bytes) -> tuple[str, list[list[str]], bytes]:
    start, head, body = _scan.split(data)
    return start, _scan.scan_headers(head, M._KEY_CACHE, M.header_key), body


def outcome(fn: Callable[[bytes], Any], data: bytes) -> tuple:
    try:
        r = fn(data)
    except SipParseError as e:
        return ("error", type(e), e.reason, e.status, e.args)
    return ("ok", r)


def parse_outcome(data: bytes) -> tuple:
    try:
        m = M.parse_message(data)
    except SipParseError as e:
        return ("error", type(e), e.reason, e.status, e.args)
    return ("ok", type(m), m.start_line(), m.version, m.headers, m.body,
            getattr(m, "method", None), getattr(m, "raw_uri", None), getattr(m, "status", None),
            getattr(m, "reason", None))


def parse_c(data: bytes) -> tuple:
    M.use_scanner("c")
    return parse_outcome(data)


def parse_py(data: bytes) -> tuple:
    M.use_scanner("python")
    return parse_outcome(data)


def same(fn_c: Callable[[bytes], Any], fn_py: Callable[[bytes], Any], data: bytes) -> None:
    """fn_c and fn_py agree on data, starting from the same key cache and adding the same entries.

    header_key only ever inserts into the cache, so the side effects are the entries past the old
    length; they are removed after the C run so the Python run starts from the same cache."""
    n0 = len(KC)
    rc = outcome(fn_c, data)
    added_c = list(islice(KC.items(), n0, None))
    for k, _ in added_c:
        del KC[k]
    assert len(KC) == n0
    rp = outcome(fn_py, data)
    added_py = list(islice(KC.items(), n0, None))
    assert rc == rp, f"C and Python differ on {data[:200]!r}:\n  C:  {rc!r}\n  Py: {rp!r}"
    if rc[0] == "ok":  # the value types too (str, not a subclass; lists of lists)
        assert [type(x) for x in rc[1]] == [type(x) for x in rp[1]]
    assert added_c == added_py, f"key cache side effects differ on {data[:200]!r}"


@pytest.fixture(autouse=True)
def _restore_state():
    """Leave the key cache and the selected scanner as they were."""
    saved = dict(KC)
    scanner = M.SCANNER
    yield
    KC.clear()
    KC.update(saved)
    M.use_scanner(scanner)


# --------------------------------------------------------------------------------------------------
# mutations
# --------------------------------------------------------------------------------------------------

INSERTS = [b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b"\x00", b"\xff", b"\r\n ", b"\r\n\t", b"\n\n",
           b"\r\n\r\n", b" : ", b"\x0b", b"\x0c", b"\x1c", b"\x85", b"\xc2\x85", b"\xc2\xa0",
           b"\xe2\x80\x83", b"\xe3\x80\x80", b"\xe4\xb8\xad", b"\xf0\x9f\x98\x80", b"\xe2\x82", b"\xed\xa0\x80",
           b"\xc0\x80", b"\x80", b"Via", b"l", b"\r\r\n"]


def mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        n = len(buf)
        pos = rng.randrange(n + 1)
        if op == 0:  # truncation
            del buf[pos:]
        elif op == 1 and n:  # byte flip
            buf[min(pos, n - 1)] = rng.choice((rng.randrange(256), 0x00, 0x0A, 0x0D, 0x20, 0x09, 0x3A, 0xFF))
        elif op == 2:  # inserted byte(s)
            buf[pos:pos] = rng.choice(INSERTS)
        elif op == 3:  # delete a short range
            del buf[pos:pos + rng.randint(1, 8)]
        elif op in (4, 5):  # fold a line / duplicate a header line / swap line ends
            ends = [i for i in range(len(buf) - 1) if buf[i:i + 2] == b"\r\n"] or \
                   [i for i in range(len(buf)) if buf[i] == 0x0A]
            if not ends:
                continue
            i = rng.choice(ends)
            j = i + (2 if buf[i:i + 2] == b"\r\n" else 1)
            if op == 4:
                buf[j:j] = rng.choice((b" ", b"\t", b"  \t ", b"\r\n ", b"\n\t"))
            else:
                k = buf.find(b"\n", j)
                k = len(buf) if k < 0 else k + 1
                line = bytes(buf[j:k])
                choice = rng.randrange(3)
                if choice == 0:
                    buf[j:j] = line  # duplicated header line
                elif choice == 1 and buf[i:i + 2] == b"\r\n":
                    del buf[i]  # CRLF -> bare LF
                else:
                    buf[j:j] = line.replace(b":", b" \t: ", 1)  # whitespace around the colon
        elif op == 6:  # a random short splice from elsewhere
            a = rng.randrange(n + 1)
            buf[pos:pos] = buf[a:a + rng.randint(1, 30)]
        elif op == 7:  # random bytes
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
        else:  # a blank line or a leading-space line
            buf[pos:pos] = rng.choice((b"\r\n\r\n", b"\r\n \r\n", b"\n \n"))
    return bytes(buf)


def mutations(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [mutate(rng.choice(BASE), rng) for _ in range(count)]


# --------------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------------

def test_corpus_is_there() -> None:
    assert len(RFC4475) == 50
    assert len(FIXTURES) >= 10, "the other unit tests' message helpers could not be reused"


@pytest.mark.parametrize("name", sorted(RFC4475))
def test_rfc4475_identical(name: str) -> None:
    data = RFC4475[name].lstrip(b"\r\n")
    same(c_scan, py_scan, data)
    same(c_scan_2step, py_scan, data)
    same(parse_c, parse_py, RFC4475[name])


def test_fixtures_and_edge_cases_identical() -> None:
    for data in FIXTURES + [REGISTER, INVITE, OK_RR] + ODD:
        same(c_scan, py_scan, data)
        same(parse_c, parse_py, data)
        for cut in range(len(data) + 1):  # every truncation
            same(c_scan, py_scan, data[:cut])


def test_split_matches_reference() -> None:
    for data in BASE + mutations(2000, 7):
        rc = outcome(_scan.split, data)
        rp = outcome(lambda d: (lambda h, ls, b: (ls[0], h, b))(*py_split(d)), data)
        assert rc == rp, data


@pytest.mark.parametrize("seed", range(8))
def test_random_mutations_identical(seed: int) -> None:
    """2,500 mutations per seed (20,000 in all), warm key cache reset every 250 messages."""
    warm = dict(KC)
    for i, data in enumerate(mutations(2500, 1000 + seed)):
        if i % 250 == 0:
            KC.clear()
            KC.update(warm)
        same(c_scan, py_scan, data.lstrip(b"\r\n"))
        same(parse_c, parse_py, data)


def test_random_mutations_identical_with_a_full_key_cache() -> None:
    """Once the cache holds 4096 names nothing is added: every new name goes through header_key."""
    KC.clear()
    for i in range(4096):
        KC[f"X-Filler-{i}"] = f"x-filler-{i}"
    for data in mutations(1500, 99):
        same(c_scan, py_scan, data.lstrip(b"\r\n"))
        same(parse_c, parse_py, data)
    assert len(KC) == 4096


def test_unusual_cache_entries_take_the_cache_hit_path() -> None:
    """A name found in the cache is a header even without a colon, with a leading space, or empty."""
    msgs = [b"OPTIONS sip:a SIP/2.0\r\nVia\r\n\r\n", b"OPTIONS sip:a SIP/2.0\r\n folded-name: v\r\n\r\n",
            b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n\r\n", b"OPTIONS sip:a SIP/2.0\r\n\r\nVia: x\r\n\r\n",
            b"OPTIONS sip:a SIP/2.0\r\nTo \t: y\r\n\r\n"]
    KC.update({"Via": "via", " folded-name": "weird", "": "empty", "To \t": "to-raw", "To": "to"})
    for data in msgs + mutations(500, 5):
        same(c_scan, py_scan, data)
        same(parse_c, parse_py, data)
    assert c_scan(msgs[0])[1] == [["via", "Via", ""]]


def test_start_line_errors_win_and_leave_the_cache_alone() -> None:
    """parse_message checks the start line before scanning headers, with either scanner."""
    for start in (b"", b"BAD", b"SIP/2.0 99 Low", b"IN VITE sip:a SIP/2.0", b"INVITE sip:a HTTP/1.1"):
        data = start + b"\r\nX-Never-Seen-Before: 1\r\nnocolon\r\n\r\n"
        same(parse_c, parse_py, data)
        assert "X-Never-Seen-Before" not in KC


def test_header_errors_and_statuses() -> None:
    cases = {
        b"OPTIONS sip:a SIP/2.0\r\nVia: x": "no end of headers",
        b"OPTIONS sip:a SIP/2.0\r\n cont\r\n\r\n": "continuation line before any header",
        b"OPTIONS sip:a SIP/2.0\r\nnocolon\r\n\r\n": "bad header line: 'nocolon'",
        b"OPTIONS sip:a SIP/2.0\r\nBad Name: x\r\n\r\n": "bad header name: 'Bad Name'",
    }
    for data, reason in cases.items():
        for kind in ("c", "python"):
            M.use_scanner(kind)
            with pytest.raises(SipParseError) as ei:
                M.parse_message(data)
            assert (ei.value.reason, ei.value.status) == (reason, 400)


def test_parse_message_uses_c_only_for_bytes() -> None:
    M.use_scanner("c")
    for data in (bytearray(INVITE), memoryview(INVITE)):
        try:
            r = outcome(M.parse_message, data)  # type: ignore[arg-type]
        except Exception as e:  # noqa: BLE001
            r = ("raised", type(e))
        M.use_scanner("python")
        try:
            p = outcome(M.parse_message, data)  # type: ignore[arg-type]
        except Exception as e:  # noqa: BLE001
            p = ("raised", type(e))
        M.use_scanner("c")
        if r[0] == "ok":
            r, p = (r[0], r[1].headers, r[1].body), (p[0], p[1].headers, p[1].body)
        assert r == p


def test_bad_arguments_raise_type_error() -> None:
    with pytest.raises(TypeError):
        _scan.split("not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _scan.split()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _scan.scan_headers(b"x", KC, M.header_key)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _scan.scan_headers("x\ny: 1", [], M.header_key)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _scan.scan_headers("x\ny: 1", KC, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _scan.scan(b"x\r\n\r\n", KC)  # type: ignore[call-arg]


def test_header_key_errors_propagate() -> None:
    def boom(name: str) -> str:
        raise RuntimeError(name)

    with pytest.raises(RuntimeError, match="X-Unknown-Name"):
        _scan.scan_headers("OPTIONS sip:a SIP/2.0\nX-Unknown-Name: 1", {}, boom)


def test_no_leaks_on_success_and_error_paths() -> None:
    """Refcount leaks on any path show up as traced memory growing with the number of calls."""
    msgs = [INVITE, OK_RR] + ODD + mutations(300, 3)

    def run(times: int) -> None:
        for _ in range(times):
            for data in msgs:
                try:
                    _scan.scan(data, KC, M.header_key)
                except SipParseError:
                    pass
                try:
                    _scan.scan_headers("X\n cont", KC, M.header_key)
                except SipParseError:
                    pass

    run(3)  # warm the key cache and the interpreter's free lists
    tracemalloc.start()
    try:
        run(2)
        base, _ = tracemalloc.get_traced_memory()
        run(40)
        grown, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert grown - base < 64 * 1024, f"memory grew by {grown - base} bytes over 40 x {len(msgs)} scans"


@pytest.mark.parametrize("env,expected", [({"CALLPATH_PURE_PYTHON": "1"}, "python"),
                                          ({"CALLPATH_PURE_PYTHON": "0"}, "c"), ({}, "c")])
def test_scanner_selection_by_environment(env: dict[str, str], expected: str) -> None:
    environ = {k: v for k, v in os.environ.items() if k != "CALLPATH_PURE_PYTHON"} | env
    out = subprocess.run([sys.executable, "-c", "from sipcore import message; print(message.SCANNER)"],
                         env=environ, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


# --------------------------------------------------------------------------------------------------
# validate()'s header walk: _scan.check_headers against message._check_headers_py
# --------------------------------------------------------------------------------------------------

CHECK_ARGS = (M._BITS, M._SINGLE_BITS, M._LIST_BITS)
LIST_VALUES = [  # values for Via/Contact/Route: commas inside and outside quotes and <>, escapes, blanks
    "a", "", " ", "a,b", "a,", ",a", "a, ,b", "a,\t,b", '"x,y" <sip:a>', '"x,y', '"x\\",y" <sip:a>, b',
    "<sip:a,b>", "<sip:a,b", "<sip:a>, <sip:b>", "a,\xa0", '"a\\', '"a\\"', "a,\udcff", "\u3000,a",
    '<sip:a>;p="1,2", <sip:b>', "a,>,b", '"a" , "b"', "x\\,y", ",", " , ",
]


def check_outcome(fn: Callable[..., int], headers: list[list[str]]) -> tuple:
    try:
        return ("ok", fn(headers, *CHECK_ARGS))
    except SipParseError as e:
        return ("error", type(e), e.reason, e.status, e.args)


def same_check(headers: list[list[str]]) -> None:
    rc = check_outcome(_scan.check_headers, headers)
    rp = check_outcome(M._check_headers_py, headers)
    assert rc == rp, f"C and Python differ on {headers!r}:\n  C:  {rc!r}\n  Py: {rp!r}"


def test_check_headers_matches_reference_on_messages() -> None:
    """Every parsed message of the corpus, the fixtures and 6,000 mutations of them."""
    M.use_scanner("python")
    count = 0
    for data in BASE + mutations(6000, 4242):
        try:
            msg = M.parse_message(data)
        except SipParseError:
            continue
        same_check(msg.headers)
        count += 1
    assert count > 2000


def test_check_headers_matches_reference_on_list_values() -> None:
    rng = random.Random(11)
    names = ["via", "contact", "route", "call-id", "from", "to", "cseq", "max-forwards", "subject", "record-route"]
    for key in names:
        for v in LIST_VALUES:
            same_check([[key, key.title(), v]])
            same_check([[key, key.upper(), v], [key, "x", "y"]])
    for _ in range(5000):  # random header lists: duplicates, blanks, surrogates, every ordering
        headers = []
        for _ in range(rng.randint(0, 8)):
            key = rng.choice(names)
            value = rng.choice(LIST_VALUES) + rng.choice(["", ",", " ", '"', "<", ">", "\\", "\udc80", "é", "中"])
            headers.append([key, rng.choice([key, key.upper(), "N\udcff"]), value])
        same_check(headers)


def test_check_headers_bits_and_errors() -> None:
    hs = [["via", "Via", "a"], ["via", "v", "b"], ["call-id", "Call-ID", "x"], ["contact", "m", "<a>, <b>"]]
    assert _scan.check_headers(hs, *CHECK_ARGS) == 32 | 1 | 64 | M._VIA_LIST
    assert _scan.check_headers([["via", "Via", "a"]], *CHECK_ARGS) == 32
    assert _scan.check_headers([["via", "Via", "a, b"]], *CHECK_ARGS) == 32 | M._VIA_LIST
    assert _scan.check_headers([["contact", "m", "a"], ["contact", "m", "b"]], *CHECK_ARGS) == 64
    for headers, reason in [
        ([["to", "t", "a"], ["to", "To", "b"]], "more than one To header"),
        ([["subject", "Subject", "\udcff"]], "Subject header is not valid UTF-8"),
        ([["via", "Via", "a,,b"]], "empty Via value"),
        ([["route", "Route", ""]], "empty Route value"),
        ([["contact", "Contact", '"a,b']], "unbalanced quotes"),
        ([["contact", "Contact", ',"a']], "empty Contact value"),  # the empty element comes first
    ]:
        for fn in (_scan.check_headers, M._check_headers_py):
            with pytest.raises(SipParseError) as ei:
                fn(headers, *CHECK_ARGS)
            assert (ei.value.reason, ei.value.status) == (reason, 400)


def test_check_headers_bad_arguments() -> None:
    for args in [(), ([],), ("x", *CHECK_ARGS), ([], [], 1, 2), ([["via", "Via"]], *CHECK_ARGS),
                 ([["via", "Via", b"x"]], *CHECK_ARGS), ([("via", "Via", "x")], *CHECK_ARGS), ([], {}, "1", 2)]:
        with pytest.raises(TypeError):
            _scan.check_headers(*args)  # type: ignore[arg-type]


def validate_outcome(data: bytes, kind: str) -> tuple:
    M.use_scanner(kind)
    try:
        msg = M.parse_message(data)
        M.validate(msg)
    except SipParseError as e:
        return ("error", e.reason, e.status)
    return ("ok", msg.headers)


def test_validate_same_with_either_path() -> None:
    for data in BASE + mutations(3000, 77):
        assert validate_outcome(data, "c") == validate_outcome(data, "python"), data


def test_check_headers_no_leaks() -> None:
    headers = [[["via", "Via", v], ["contact", "Contact", v], ["to", "To", "a"], ["to", "To", "b"]]
               for v in LIST_VALUES]

    def run(times: int) -> None:
        for _ in range(times):
            for hs in headers:
                for n in range(1, 5):
                    try:
                        _scan.check_headers(hs[:n], *CHECK_ARGS)
                    except SipParseError:
                        pass

    run(3)
    tracemalloc.start()
    try:
        run(2)
        base, _ = tracemalloc.get_traced_memory()
        run(100)
        grown, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert grown - base < 64 * 1024


# --------------------------------------------------------------------------------------------------
# to_bytes: _scan.serialize against SipMessage._to_bytes_py
# --------------------------------------------------------------------------------------------------

class _Str(str):
    def __format__(self, spec: str) -> str:
        return "formatted"


def test_serialize_matches_reference() -> None:
    """Every parsed message of the corpus and 6,000 mutations (non-ASCII and surrogates take the Python path),
    then the same messages changed the way a proxy changes them."""
    M.use_scanner("c")
    count = 0
    for data in BASE + mutations(6000, 515):
        try:
            msg = M.parse_message(data)
        except SipParseError:
            continue
        ref = msg._to_bytes_py()
        c = _scan.serialize(msg.start_line(), msg.headers, msg.body)
        assert c is None or c == ref, data
        assert msg.to_bytes() == ref
        msg.add("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx", first=True)
        msg.remove("content-length")
        msg.body = msg.body + b"\x00\xff"
        assert msg.to_bytes() == msg._to_bytes_py()
        count += 1
    assert count > 2000


def test_serialize_falls_back_for_what_it_does_not_take() -> None:
    req = M.Request("OPTIONS", "sip:a@b", [("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"), ("Content-Length", "99"),
                                           ("l", "3"), ("To", "<sip:a@b>")], b"abc")
    expected = (b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nTo: <sip:a@b>\r\n"
                b"Content-Length: 3\r\n\r\nabc")
    assert _scan.serialize(req.start_line(), req.headers, req.body) == expected == req._to_bytes_py()
    assert _scan.serialize("X", [], b"") == b"X\r\nContent-Length: 0\r\n\r\n"
    odd = [
        ("é", [["a", "A", "b"]], b""), ("S", [["a", "A", "é"]], b""), ("S", [["a", "\udcff", "b"]], b""),
        ("S", [("a", "A", "b")], b""), ("S", [["a", "A"]], b""), ("S", [["a", "A", 5]], b""),
        ("S", [[1, "A", "b"]], b""), ("S", [["a", _Str("A"), "b"]], b""), ("S", [["a", "A", "b"]], bytearray(b"x")),
        (_Str("S"), [], b""), ("S", (["a", "A", "b"],), b""),
    ]
    for start, headers, body in odd:
        assert _scan.serialize(start, headers, body) is None
    for headers, body in [([["a", "A", "é\udcff"], ["b", "B", 5]], b"x"), ([("a", "A", "b")], bytearray(b"xy")),
                          ([["a", _Str("A"), "b"]], b"")]:
        msg = M.Request("OPTIONS", "sip:é", body=b"")
        msg.headers = headers  # type: ignore[assignment]
        msg.body = body  # type: ignore[assignment]
        M.use_scanner("c")
        c = msg.to_bytes()
        M.use_scanner("python")
        assert c == msg.to_bytes() == msg._to_bytes_py()
    with pytest.raises(TypeError):
        _scan.serialize("S", [])  # type: ignore[call-arg]


def test_serialize_no_leaks() -> None:
    msgs = []
    for data in [INVITE, OK_RR, REGISTER]:
        m = M.parse_message(data)
        msgs.append((m.start_line(), m.headers, m.body))
    msgs.append(("S", [["a", "A", "é"]], b""))

    def run(times: int) -> None:
        for _ in range(times):
            for args in msgs:
                _scan.serialize(*args)

    run(3)
    tracemalloc.start()
    try:
        run(2)
        base, _ = tracemalloc.get_traced_memory()
        run(200)
        grown, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert grown - base < 64 * 1024
