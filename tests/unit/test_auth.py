"""Unit tests for sipcore.auth: digest parsing/building, RFC vectors, nonces, nc replay, ephemeral credentials."""
from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from sipcore.auth import (
    HA1,
    AuthError,
    AuthReason,
    DigestAuthenticator,
    DigestChallenge,
    NonceCountTracker,
    build_authorization,
    compute_ha1,
    digest_response,
    digest_uri_matches,
    ephemeral_credentials,
    ephemeral_lookup,
    ephemeral_password,
    format_challenge,
    issue_nonce,
    nonce_expiry,
    parse_challenge,
    parse_credentials,
    response_matches,
    select_challenge,
)
from sipcore.uri import SipUri

SECRET = b"0123456789abcdef0123456789abcdef"
REALM = "example.com"
NOW = 1_700_000_000
REGISTER_URI = "sip:example.com"

# RFC 7616 §3.9.1: the same request answered with MD5 and with SHA-256.
RFC7616_REALM = "http-auth@example.org"
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_RESPONSE = {
    "MD5": "8ca523f5e9506fed4657c9700eebdbec",
    "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
}
RFC7616_CHALLENGE = (
    'Digest\n    realm="http-auth@example.org",\n    qop="auth, auth-int",\n    algorithm={alg},\n'
    '    nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",\n'
    '    opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)
RFC7616_AUTHORIZATION = (
    'Digest username="Mufasa",\n    realm="http-auth@example.org",\n    uri="/dir/index.html",\n'
    "    algorithm={alg},\n"
    '    nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",\n    nc=00000001,\n'
    '    cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",\n    qop=auth,\n'
    '    response="{response}",\n'
    '    opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)

# RFC 2617 §3.5 (note the capital O in the password).
RFC2617_CHALLENGE = (
    'Digest\r\n realm="testrealm@host.com",\r\n qop="auth,auth-int",\r\n'
    ' nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",\r\n opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)
RFC2617_AUTHORIZATION = (
    'Digest username="Mufasa",\r\n realm="testrealm@host.com",\r\n'
    ' nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",\r\n uri="/dir/index.html",\r\n qop=auth,\r\n'
    ' nc=00000001,\r\n cnonce="0a4f113b",\r\n response="6629fae49393a05397450978507c4ef1",\r\n'
    ' opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)


def md5hex(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def params_of(header: str) -> dict[str, str]:
    return parse_credentials(header).params


def new_auth(**kw) -> DigestAuthenticator:
    """An authenticator offering both algorithms (MD5 first), unless ``algorithms`` says otherwise."""
    kw.setdefault("algorithms", ("MD5", "SHA-256"))
    return DigestAuthenticator(SECRET, REALM, **kw)


def test_default_challenge_is_md5_alone() -> None:
    """Debian's baresip 1.0 fails a registration on any SHA-256 challenge: MD5 only unless configured."""
    values = DigestAuthenticator(SECRET, REALM).challenges(NOW)
    assert [parse_challenge(v).algorithm for v in values] == ["MD5"]


def password_lookup(password: str = "secret"):
    calls: list[tuple[str, str, str]] = []

    def lookup(username: str, realm: str, algorithm: str):
        calls.append((username, realm, algorithm))
        return password if username == "alice" else None

    lookup.calls = calls  # type: ignore[attr-defined]
    return lookup


# ---------------------------------------------------------------------------------------------------------------
# RFC vectors
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["MD5", "SHA-256"])
def test_rfc7616_vector_via_hash_chain(alg: str) -> None:
    ha1 = compute_ha1("Mufasa", RFC7616_REALM, "Circle of Life", alg)
    got = digest_response(alg, ha1, RFC7616_NONCE, "GET", "/dir/index.html", "auth", "00000001", RFC7616_CNONCE)
    assert got == RFC7616_RESPONSE[alg]


@pytest.mark.parametrize("alg", ["MD5", "SHA-256"])
def test_rfc7616_vector_via_client_builder(alg: str) -> None:
    header = build_authorization(
        RFC7616_CHALLENGE.format(alg=alg), "GET", "/dir/index.html", "Mufasa", "Circle of Life",
        cnonce=RFC7616_CNONCE, nc=1,
    )
    p = params_of(header)
    assert p["response"] == RFC7616_RESPONSE[alg]
    assert p["qop"] == "auth"  # auth preferred over auth-int
    assert p["nc"] == "00000001"
    assert p["opaque"] == RFC7616_OPAQUE
    assert p["algorithm"] == alg


@pytest.mark.parametrize("alg", ["MD5", "SHA-256"])
def test_rfc7616_authorization_parses_and_checks(alg: str) -> None:
    creds = parse_credentials(RFC7616_AUTHORIZATION.format(alg=alg, response=RFC7616_RESPONSE[alg]))
    assert (creds.username, creds.realm, creds.uri) == ("Mufasa", RFC7616_REALM, "/dir/index.html")
    assert (creds.algorithm, creds.qop, creds.nc, creds.nc_value) == (alg, "auth", "00000001", 1)
    assert creds.cnonce == RFC7616_CNONCE and creds.opaque == RFC7616_OPAQUE
    assert response_matches(creds, "GET", "Circle of Life")
    assert response_matches(creds, "GET", HA1(compute_ha1("Mufasa", RFC7616_REALM, "Circle of Life", alg)))
    assert not response_matches(creds, "GET", "Circle Of Life")
    assert not response_matches(creds, "POST", "Circle of Life")


def test_rfc7616_challenge_parses() -> None:
    ch = parse_challenge(RFC7616_CHALLENGE.format(alg="SHA-256"))
    assert ch.realm == RFC7616_REALM and ch.nonce == RFC7616_NONCE and ch.opaque == RFC7616_OPAQUE
    assert ch.algorithm == "SHA-256"
    assert ch.qop == ("auth", "auth-int")
    assert ch.stale is False


def test_rfc2617_vector() -> None:
    header = build_authorization(
        RFC2617_CHALLENGE, "GET", "/dir/index.html", "Mufasa", "Circle Of Life", cnonce="0a4f113b", nc=1
    )
    assert params_of(header)["response"] == "6629fae49393a05397450978507c4ef1"
    creds = parse_credentials(RFC2617_AUTHORIZATION)
    assert creds.algorithm == "MD5"  # absent means MD5
    assert response_matches(creds, "GET", "Circle Of Life")


def test_rfc2069_no_qop_form() -> None:
    challenge = 'Digest realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093"'
    header = build_authorization(challenge, "GET", "/dir/index.html", "Mufasa", "CircleOfLife")
    p = params_of(header)
    assert "qop" not in p and "nc" not in p and "cnonce" not in p
    ha1 = md5hex("Mufasa:testrealm@host.com:CircleOfLife")
    expected = md5hex(f"{ha1}:dcd98b7102dd2f0e8b11d0f600bfb0c093:{md5hex('GET:/dir/index.html')}")
    assert p["response"] == expected


def test_sess_and_auth_int_hash_chains() -> None:
    ha1 = md5hex("u:r:p")
    sess = md5hex(f"{ha1}:n:c")
    ha2 = md5hex("REGISTER:sip:x")
    assert digest_response("MD5-sess", ha1, "n", "REGISTER", "sip:x", "auth", "00000001", "c") == md5hex(
        f"{sess}:n:00000001:c:auth:{ha2}"
    )
    ha2_int = md5hex(f"INVITE:sip:x:{md5hex('v=0')}")
    assert digest_response("md5", ha1, "n", "INVITE", "sip:x", "auth-int", "00000002", "c", b"v=0") == md5hex(
        f"{ha1}:n:00000002:c:auth-int:{ha2_int}"
    )
    with pytest.raises(AuthError):
        digest_response("SHA-1", ha1, "n", "REGISTER", "sip:x")
    with pytest.raises(AuthError):
        digest_response("MD5", ha1, "n", "REGISTER", "sip:x", "auth-conf", "00000001", "c")


# ---------------------------------------------------------------------------------------------------------------
# Parsing and building
# ---------------------------------------------------------------------------------------------------------------


def test_quoted_string_escapes_are_unescaped() -> None:
    creds = parse_credentials(
        r'Digest username="al\"ice\\x", realm="a\,b", nonce="n", uri="sip:x", response="00ff", cnonce="a,b=c"'
    )
    assert creds.username == 'al"ice\\x'
    assert creds.realm == "a,b"
    assert creds.cnonce == "a,b=c"


def test_quoting_round_trip() -> None:
    odd = 'we"ird\\name, with=comma'
    header = build_authorization(
        format_challenge(odd, "nonce-1"), "REGISTER", REGISTER_URI, odd, "pw", cnonce='c"1', nc=7
    )
    creds = parse_credentials(header)
    assert (creds.username, creds.realm, creds.cnonce, creds.nc) == (odd, odd, 'c"1', "00000007")
    assert response_matches(creds, "REGISTER", "pw")
    assert parse_credentials(creds.to_header()) == creds


def test_scheme_case_whitespace_and_unknown_params() -> None:
    value = (
        '  dIgEsT   USERNAME = "bob" ,realm="r",\t nonce=abc, , uri="sip:r", Response=ABCDEF01,'
        ' x-vendor=thing, x-quoted="a b"  ,'
    )
    creds = parse_credentials(value)
    assert creds.username == "bob" and creds.nonce == "abc" and creds.uri == "sip:r"
    assert creds.response == "abcdef01"
    assert creds.params["x-vendor"] == "thing" and creds.params["x-quoted"] == "a b"
    again = parse_credentials(creds.to_header())
    assert again.params["x-vendor"] == "thing" and again.params["x-quoted"] == "a b"


def test_challenge_round_trip_keeps_unknown_params() -> None:
    ch = parse_challenge('DIGEST realm="r", nonce="n", algorithm=sha-256, qop="auth", stale=TRUE, charset=UTF-8')
    assert ch.algorithm == "SHA-256" and ch.stale and ch.params["charset"] == "UTF-8"
    again = parse_challenge(ch.to_header())
    assert (again.realm, again.nonce, again.algorithm, again.qop, again.stale) == ("r", "n", "SHA-256", ("auth",), True)
    assert again.params["charset"] == "UTF-8"
    assert parse_challenge('Digest realm="r", nonce="n"').algorithm == "MD5"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "Digest",
        'Basic dXNlcjpwYXNz',
        'Bearer abc',
        'Digestusername="a"',
        'Digest username="a, realm="r", nonce="n", uri="u", response="00"',  # unterminated quote
        'Digest username="a" realm="r", nonce="n", uri="u", response="00"',  # missing comma
        'Digest username=, realm="r", nonce="n", uri="u", response="00"',  # empty value
        'Digest ="a", realm="r", nonce="n", uri="u", response="00"',  # no name
        'Digest username, realm="r", nonce="n", uri="u", response="00"',  # no value
        'Digest user name="a", realm="r", nonce="n", uri="u", response="00"',
        'Digest username="a", username="b", realm="r", nonce="n", uri="u", response="00"',  # duplicate
        'Digest username="a", Realm="r", REALM="r", nonce="n", uri="u", response="00"',  # case-insensitive dup
        'Digest realm="r", nonce="n", uri="u", response="00"',  # no username
        'Digest username="a", realm="r", nonce="n", uri="u"',  # no response
        'Digest username="a", realm="r", nonce="n", uri="u", response="xyz!"',  # not hex
        'Digest username="a", realm="r", nonce="n", uri="u", response="00", qop=auth, cnonce="c"',  # no nc
        'Digest username="a", realm="r", nonce="n", uri="u", response="00", qop=auth, nc=00000001',  # no cnonce
        'Digest username="a", realm="r", nonce="n", uri="u", response="00", qop=auth, nc=0x1, cnonce="c"',
        'Digest username="a", realm="r", nonce="n", uri="u", response="00", qop=auth, nc=123456789, cnonce="c"',
        'Digest username="a", realm="r", nonce="n", uri="u", response="00", algorithm=MD5-sess',  # sess: cnonce
        'Digest username="a", realm="r", nonce="n", uri="u", response="00", junk',
        'Digest username="a", realm="r", nonce="n", uri="u", response="00" "stray"',
    ],
)
def test_malformed_credentials_raise(value: str) -> None:
    with pytest.raises(AuthError):
        parse_credentials(value)


def test_malformed_message_is_clear() -> None:
    with pytest.raises(AuthError, match="unsupported authentication scheme 'Basic'"):
        parse_credentials("Basic dXNlcjpwYXNz")
    with pytest.raises(AuthError, match="missing uri, response"):
        parse_credentials('Digest username="a", realm="r", nonce="n"')
    with pytest.raises(AuthError, match="duplicate parameter"):
        parse_credentials('Digest nonce="a", nonce="b"')
    with pytest.raises(AuthError, match="offset"):
        parse_credentials('Digest username="a" realm="r"')
    with pytest.raises(AuthError):
        parse_credentials(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    ["", "Digest", 'Digest realm="r"', 'Digest nonce="n"', 'Digest realm="r", nonce="n", stale', "NTLM abc"],
)
def test_malformed_challenges_raise(value: str) -> None:
    with pytest.raises(AuthError):
        parse_challenge(value)


def test_select_challenge_takes_first_supported() -> None:
    values = [
        "Basic realm=x",
        'Digest realm="r", nonce="n1", algorithm=SHA-1',
        'Digest realm="r", nonce="n2", algorithm=SHA-256',
        'Digest realm="r", nonce="n3", algorithm=MD5',
    ]
    chosen = select_challenge(values)
    assert isinstance(chosen, DigestChallenge) and chosen.nonce == "n2"
    assert select_challenge(values[:2]) is None


def test_client_rejects_unusable_challenges() -> None:
    with pytest.raises(AuthError, match="unsupported digest algorithm"):
        build_authorization('Digest realm="r", nonce="n", algorithm=SHA-1', "REGISTER", "sip:r", "u", "p", "c")
    with pytest.raises(AuthError, match="no supported qop"):
        build_authorization('Digest realm="r", nonce="n", qop="auth-conf"', "REGISTER", "sip:r", "u", "p", "c")


def test_client_draws_a_cnonce_when_none_given() -> None:
    header = build_authorization('Digest realm="r", nonce="n", qop="auth"', "REGISTER", "sip:r", "u", "p")
    creds = parse_credentials(header)
    assert creds.cnonce and response_matches(creds, "REGISTER", "p")


# ---------------------------------------------------------------------------------------------------------------
# Server: challenges and verification
# ---------------------------------------------------------------------------------------------------------------


def test_challenges_one_per_algorithm_md5_first() -> None:
    values = new_auth().challenges(NOW)
    parsed = [parse_challenge(v) for v in values]
    assert [c.algorithm for c in parsed] == ["MD5", "SHA-256"]
    assert all(c.realm == REALM and c.qop == ("auth",) and not c.stale for c in parsed)
    assert values[0].startswith('Digest realm="example.com", nonce="')
    assert [parse_challenge(v).algorithm for v in new_auth(algorithms=["sha-256", "MD5"]).challenges(NOW)] == [
        "SHA-256",
        "MD5",
    ]
    assert all(parse_challenge(v).stale for v in new_auth().challenges(NOW, stale=True))


def test_constructor_validates() -> None:
    with pytest.raises(ValueError):
        DigestAuthenticator(SECRET, REALM, algorithms=["MD5", "SHA-1"])
    with pytest.raises(ValueError):
        DigestAuthenticator(SECRET, REALM, algorithms=[])
    with pytest.raises(ValueError):
        DigestAuthenticator(b"", REALM)
    with pytest.raises(ValueError):
        DigestAuthenticator(SECRET, REALM, nonce_ttl=0)


@pytest.mark.parametrize("index, alg", [(0, "MD5"), (1, "SHA-256")])
def test_client_built_authorization_verifies(index: int, alg: str) -> None:
    auth = new_auth()
    challenge = auth.challenges(NOW)[index]
    header = build_authorization(challenge, "REGISTER", REGISTER_URI, "alice", "secret", cnonce="c0ffee", nc=1)
    lookup = password_lookup()
    result = auth.verify(header, "REGISTER", lookup, NOW + 1, request_uri=REGISTER_URI)
    assert result.ok and result.reason is AuthReason.OK and result.username == "alice"
    assert lookup.calls == [("alice", REALM, alg)]  # type: ignore[attr-defined]


@pytest.mark.parametrize("alg", ["MD5-sess", "SHA-256-sess", "SHA-512-256"])
def test_other_algorithms_verify_when_configured(alg: str) -> None:
    auth = new_auth(algorithms=[alg])
    header = build_authorization(auth.challenges(NOW)[0], "REGISTER", REGISTER_URI, "alice", "secret", "cn", 1)
    lookup = password_lookup()
    assert auth.verify(header, "REGISTER", lookup, NOW).ok
    assert lookup.calls[0][2] == alg.removesuffix("-sess")  # type: ignore[attr-defined]


def test_precomputed_ha1_verifies() -> None:
    auth = new_auth()
    md5_ch, sha_ch = auth.challenges(NOW)
    stored = {
        "MD5": HA1(compute_ha1("alice", REALM, "secret", "MD5").upper()),
        "SHA-256": HA1(compute_ha1("alice", REALM, "secret", "SHA-256")),
    }
    lookup = lambda user, realm, alg: stored[alg]  # noqa: E731
    for nc, ch in enumerate((md5_ch, sha_ch), start=1):
        header = build_authorization(ch, "REGISTER", REGISTER_URI, "alice", "secret", "cn", nc)
        assert auth.verify(header, "REGISTER", lookup, NOW).ok
    # The client side can answer from a stored HA1 too.
    header = build_authorization(auth.challenges(NOW)[0], "REGISTER", REGISTER_URI, "alice", stored["MD5"], "cn", 1)
    assert auth.verify(header, "REGISTER", password_lookup(), NOW).ok


def test_two_step_parse_then_verify_credentials() -> None:
    auth = new_auth()
    header = build_authorization(auth.challenges(NOW)[0], "INVITE", "sip:bob@example.com", "alice", "secret", "c", 1)
    creds = parse_credentials(header)
    assert creds.username == "alice"  # learn the user, fetch the record (async), then verify synchronously
    assert auth.verify_credentials(creds, "INVITE", "secret", NOW, request_uri="sip:bob@example.com").ok
    assert auth.verify_credentials(creds, "INVITE", None, NOW).reason is AuthReason.UNKNOWN_USER


def test_failure_reasons() -> None:
    auth = new_auth(algorithms=["MD5"])
    ch = auth.challenges(NOW)[0]
    ok = build_authorization(ch, "REGISTER", REGISTER_URI, "alice", "secret", "cn", 1)
    lookup = password_lookup()

    def reason(value: str | None, method: str = "REGISTER", **kw) -> AuthReason:
        return auth.verify(value, method, lookup, NOW, **kw).reason

    assert reason(None) is AuthReason.NO_CREDENTIALS
    assert reason("") is AuthReason.NO_CREDENTIALS
    assert reason('Digest username="alice"') is AuthReason.MALFORMED
    assert auth.verify("Digest x", "REGISTER", lookup, NOW).detail
    assert reason(build_authorization(ch, "REGISTER", REGISTER_URI, "mallory", "secret", "cn", 1)) is (
        AuthReason.UNKNOWN_USER
    )
    assert reason(build_authorization(ch, "REGISTER", REGISTER_URI, "alice", "wrong", "cn", 1)) is (
        AuthReason.BAD_RESPONSE
    )
    assert reason(ok, "INVITE") is AuthReason.BAD_RESPONSE  # the method is part of the digest
    assert reason(ok, request_uri="sip:other.example.com") is AuthReason.BAD_URI
    other_realm = ch.replace('realm="example.com"', 'realm="other.org"')
    assert reason(build_authorization(other_realm, "REGISTER", REGISTER_URI, "alice", "secret", "c", 1)) is (
        AuthReason.WRONG_REALM
    )
    sha = ch.replace("algorithm=MD5", "algorithm=SHA-256")
    assert reason(build_authorization(sha, "REGISTER", REGISTER_URI, "alice", "secret", "c", 1)) is (
        AuthReason.UNSUPPORTED_ALGORITHM
    )
    auth_int = ch.replace('qop="auth"', 'qop="auth-int"')
    assert reason(build_authorization(auth_int, "REGISTER", REGISTER_URI, "alice", "secret", "c", 1)) is (
        AuthReason.UNSUPPORTED_QOP
    )
    # realm, algorithm, qop and uri are checked before the (possibly costly) user lookup
    calls = lookup.calls  # type: ignore[attr-defined]
    assert calls == [("mallory", REALM, "MD5"), ("alice", REALM, "MD5"), ("alice", REALM, "MD5")]
    assert reason(ok) is AuthReason.OK


def _no_qop_header(auth: DigestAuthenticator, uri: str = REGISTER_URI) -> str:
    """An RFC 2069-style answer (no qop, nc or cnonce) computed for the nonce of a real challenge."""
    ch = auth.challenges(NOW)[0].replace(', qop="auth"', "")
    header = build_authorization(ch, "REGISTER", uri, "alice", "secret")
    assert "nc=" not in header and "qop=" not in header and "cnonce=" not in header
    return header


def test_answer_without_qop_is_refused_by_default() -> None:
    """Every challenge offers qop=auth; RFC 7616 makes qop/nc/cnonce mandatory: an RFC 2069 answer is refused
    (the proxy answers 400), the right password notwithstanding, and so is each of its replays."""
    auth = new_auth()
    header = _no_qop_header(auth)
    lookup = password_lookup()
    for _ in range(3):
        result = auth.verify(header, "REGISTER", lookup, NOW + 1, request_uri=REGISTER_URI)
        assert not result.ok and result.reason is AuthReason.MISSING_QOP and not result.stale
    assert lookup.calls == []  # refused before the user lookup
    assert len(auth.tracker) == 0


def test_legacy_no_qop_answer_when_allowed_is_accepted_once_per_nonce() -> None:
    """allow_no_qop=True is for a legacy client: the nonce-count tracker still covers it (one use per nonce),
    so the answer cannot be replayed during the nonce's lifetime; a fresh nonce works again."""
    auth = new_auth(allow_no_qop=True)
    header = _no_qop_header(auth)
    lookup = password_lookup()
    assert auth.verify(header, "REGISTER", lookup, NOW + 1, request_uri=REGISTER_URI).ok
    replay = auth.verify(header, "REGISTER", lookup, NOW + 2, request_uri=REGISTER_URI)
    assert replay.reason is AuthReason.REPLAYED_NC and replay.stale  # re-challenged with stale=true
    assert auth.verify(_no_qop_header(auth), "REGISTER", lookup, NOW + 3, request_uri=REGISTER_URI).ok
    # a no-qop answer also closes a nonce that counted answers used before it
    ch = auth.challenges(NOW)[0]
    counted = build_authorization(ch, "REGISTER", REGISTER_URI, "alice", "secret", "cn", 1)
    assert auth.verify(counted, "REGISTER", lookup, NOW + 4).ok
    bare = build_authorization(ch.replace(', qop="auth"', ""), "REGISTER", REGISTER_URI, "alice", "secret")
    assert auth.verify(bare, "REGISTER", lookup, NOW + 5).ok
    late = build_authorization(ch, "REGISTER", REGISTER_URI, "alice", "secret", "cn", 2)
    assert auth.verify(late, "REGISTER", lookup, NOW + 6).reason is AuthReason.REPLAYED_NC


def test_every_accepted_answer_is_counted_by_the_tracker() -> None:
    """No accepted answer escapes the nonce-count tracker (the replay window is closed for all of them)."""
    auth = new_auth(allow_no_qop=True)
    lookup = password_lookup()
    accepted = 0
    for i in range(5):
        ch = auth.challenges(NOW)[0]
        if i % 2:
            ch = ch.replace(', qop="auth"', "")
        header = build_authorization(ch, "REGISTER", REGISTER_URI, "alice", "secret", "cn", 1)
        assert auth.verify(header, "REGISTER", lookup, NOW).ok
        accepted += 1
        assert len(auth.tracker) == accepted
        assert auth.verify(header, "REGISTER", lookup, NOW).reason is AuthReason.REPLAYED_NC


def test_unoffered_qop_is_refused() -> None:
    auth = new_auth()
    ch = auth.challenges(NOW)[0].replace('qop="auth"', 'qop="auth-int"')
    header = build_authorization(ch, "REGISTER", REGISTER_URI, "alice", "secret", "cn", 1)
    result = auth.verify(header, "REGISTER", password_lookup(), NOW)
    assert result.reason is AuthReason.UNSUPPORTED_QOP and not result.stale


# ---------------------------------------------------------------------------------------------------------------
# The digest uri against the Request-URI (RFC 7616 §3.4.6, RFC 3261 §19.1.4)
# ---------------------------------------------------------------------------------------------------------------

#: What a proxy at 127.0.0.1:5060 and 127.0.0.1:35123 serving example.com calls local (Proxy.is_local_domain).
LOCAL_PORTS = (5060, 35123)


def is_local(uri: SipUri) -> bool:
    return uri.host.lower() in ("127.0.0.1", "example.com") and (uri.port is None or uri.port in LOCAL_PORTS)


@pytest.mark.parametrize(
    "digest_uri, request_uri",
    [
        ("sip:127.0.0.1", "sip:127.0.0.1"),  # verbatim: baresip, JsSIP, Linphone, desk phones
        ("sip:example.com;transport=tcp", "sip:example.com;transport=tcp"),
        ("sip:127.0.0.1:5060", "sip:127.0.0.1"),  # explicit default port against none, both ways
        ("sip:127.0.0.1", "sip:127.0.0.1:5060"),
        ("sips:example.com:5061", "sips:example.com"),
        ("sip:example.com:5061;transport=tls", "sip:example.com;transport=TLS"),
        ("SIP:Example.COM", "sip:example.com"),  # scheme and host are case-insensitive
        ("sip:%61lice@AtLanTa.CoM;Transport=TCP", "sip:alice@atlanta.com;transport=tcp"),  # RFC 3261 §19.1.4
        ("sip:alice@example.com;lr", "sip:alice@example.com"),  # a parameter on one side only is ignored...
        ("sip:alice@example.com", "sip:alice@example.com;ob"),
        ("sip:alice@example.com;newparam=5", "sip:alice@example.com;NEWPARAM=5"),
        ("sip:alice@example.com;p=%41", "sip:alice@example.com;p=a"),
        ("sip:alice@[0:0::1]:5060", "sip:alice@[::1]"),
        ("sip:carol@chicago.com?Subject=next%20meeting", "sip:carol@chicago.com?subject=next%20meeting"),
        ("tel:+15551234", "TEL:+15551234"),
    ],
)
def test_digest_uri_matches_equivalent_spellings(digest_uri: str, request_uri: str) -> None:
    assert digest_uri_matches(digest_uri, request_uri)
    assert digest_uri_matches(digest_uri, SipUri.parse(request_uri, strict=False))


@pytest.mark.parametrize(
    "digest_uri, request_uri",
    [
        ("sip:other.example", "sip:127.0.0.1"),  # another host: the case measured on main
        ("sip:alice@example.org", "sip:alice@example.com"),
        ("sip:bob@example.com", "sip:alice@example.com"),  # another user
        ("sip:Alice@example.com", "sip:alice@example.com"),  # the user part is case-sensitive
        ("sip:alice@example.com", "sip:example.com"),
        ("sips:example.com", "sip:example.com"),  # another scheme
        ("sip:127.0.0.1:5070", "sip:127.0.0.1"),  # another (non-default) port
        # (below: a foreign domain, where RFC 3261 §19.1.4 alone decides; for this server's own names see
        # test_digest_uri_naming_this_server)
        ("sips:atlanta.com:5060", "sips:atlanta.com"),  # 5060 is not the default for sips
        ("sip:alice@atlanta.com;transport=tcp", "sip:alice@atlanta.com"),  # one-sided transport/user/maddr/...
        ("sip:alice@atlanta.com;user=phone", "sip:alice@atlanta.com"),
        ("sip:alice@atlanta.com;maddr=192.0.2.1", "sip:alice@atlanta.com"),
        ("sip:alice@atlanta.com;ttl=1", "sip:alice@atlanta.com"),
        ("sip:alice@atlanta.com", "sip:alice@atlanta.com;method=INVITE"),
        ("sip:alice@atlanta.com;transport=tcp", "sip:alice@atlanta.com;transport=udp"),  # on both, differing
        ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),  # headers never ignored
        ("sip:a%40b@example.com", "sip:a@b@example.com"),  # a reserved character is not its escape
        ("/dir/index.html", "sip:127.0.0.1"),
        ("sip:", "sip:127.0.0.1"),
        ("tel:+15551234", "sip:+15551234@example.com"),
    ],
)
def test_digest_uri_mismatches(digest_uri: str, request_uri: str) -> None:
    assert not digest_uri_matches(digest_uri, request_uri)
    assert not digest_uri_matches(digest_uri, request_uri, is_local)


@pytest.mark.parametrize(
    "digest_uri, request_uri, matches",
    [
        # SIPp's [authentication] signs sip:REMOTE_IP:REMOTE_PORT whatever the Request-URI (tests/sipp/*.xml):
        ("sip:127.0.0.1:35123", "sip:127.0.0.1", True),  # register_*.xml: REGISTER sip:[domain]
        ("sip:127.0.0.1:35123", "sip:bob@127.0.0.1:35123", True),  # uac*.xml: INVITE sip:[service]@ip:port
        ("sip:127.0.0.1:35123", "sip:bob@other.example", False),  # ...but only for a target of ours
        ("sip:127.0.0.1:40000", "sip:bob@127.0.0.1:35123", False),  # and only when it names us (our port)
        # both name this server and the same user: a Request-URI moved between our names (upstream rewrite)
        ("sip:bob@example.com", "sip:bob@127.0.0.1:35123", True),
        ("sip:bob@127.0.0.1", "sip:bob@example.com;transport=tcp", True),
        ("sip:alice@example.com", "sip:bob@127.0.0.1:35123", False),  # another user never
        ("sip:bob@other.example", "sip:bob@127.0.0.1", False),  # nor a foreign host
        ("sips:bob@example.com", "sip:bob@127.0.0.1", False),  # nor another scheme
        ("sip:alice@example.com", "sip:127.0.0.1", False),  # nor a user where the target has none
    ],
)
def test_digest_uri_naming_this_server(digest_uri: str, request_uri: str, matches: bool) -> None:
    assert digest_uri_matches(digest_uri, request_uri, is_local) is matches
    assert not digest_uri_matches(digest_uri, request_uri)  # without is_local, only RFC 3261 equivalence


def test_uri_mismatch_is_refused_before_the_lookup_and_spends_no_nonce_count() -> None:
    """The case measured on main: credentials computed for uri=sip:other.example presented with a REGISTER
    whose Request-URI is sip:127.0.0.1 were accepted; they are BAD_URI now (the proxy answers 400)."""
    auth = new_auth()
    ch = auth.challenges(NOW)[0]
    lookup = password_lookup()
    wrong = build_authorization(ch, "REGISTER", "sip:other.example", "alice", "secret", "cn", 1)
    result = auth.verify(wrong, "REGISTER", lookup, NOW, request_uri="sip:127.0.0.1", is_local=is_local)
    assert result.reason is AuthReason.BAD_URI and not result.ok and not result.stale
    assert "sip:other.example" in result.detail
    assert lookup.calls == [] and len(auth.tracker) == 0
    assert auth.precheck(parse_credentials(wrong), "sip:127.0.0.1", is_local) == result
    right = build_authorization(ch, "REGISTER", "sip:127.0.0.1", "alice", "secret", "cn", 1)
    assert auth.verify(right, "REGISTER", lookup, NOW, request_uri="sip:127.0.0.1", is_local=is_local).ok
    assert auth.precheck(parse_credentials(right), "sip:127.0.0.1", is_local) is None


def test_verify_accepts_spelling_variants_and_hashes_the_uri_as_sent() -> None:
    """A matching but differently spelled uri is accepted, and the response is checked over the uri the client
    signed (not the Request-URI): rewriting it to the Request-URI would break every such client."""
    auth = new_auth()
    ch = auth.challenges(NOW)[0]
    lookup = password_lookup()
    for nc, (signed, target) in enumerate([
        ("sip:127.0.0.1:5060", "sip:127.0.0.1"),
        ("sip:127.0.0.1:35123", "sip:127.0.0.1"),  # SIPp
        ("SIP:alice@Example.com;ob", "sip:alice@example.com"),
    ], start=1):
        header = build_authorization(ch, "REGISTER", signed, "alice", "secret", "cn", nc)
        assert auth.verify(header, "REGISTER", lookup, NOW, request_uri=target, is_local=is_local).ok
        assert auth.verify_credentials(parse_credentials(header), "REGISTER", "secret", NOW,
                                       request_uri=SipUri.parse(target), is_local=is_local).reason is (
            AuthReason.REPLAYED_NC)  # the same answer again: right uri, spent nc


def test_no_request_uri_skips_the_uri_check() -> None:
    auth = new_auth()
    header = build_authorization(auth.challenges(NOW)[0], "REGISTER", "sip:anything", "alice", "secret", "c", 1)
    assert auth.verify(header, "REGISTER", password_lookup(), NOW).ok


# ---------------------------------------------------------------------------------------------------------------
# Nonces
# ---------------------------------------------------------------------------------------------------------------


def test_nonce_format_and_module_helpers_agree() -> None:
    auth = new_auth(nonce_ttl=300)
    nonce = parse_challenge(auth.challenges(NOW)[0]).nonce
    assert len(nonce) == 68 and "=" not in nonce
    raw = base64.urlsafe_b64decode(nonce)
    assert int.from_bytes(raw[:8], "big") == NOW + 300
    assert raw[19:] == hmac.digest(SECRET, raw[:19] + REALM.encode(), "sha256")
    assert nonce_expiry(SECRET, REALM, nonce) == NOW + 300
    mine = issue_nonce(SECRET, REALM, NOW + 5, random=b"\x01" * 11)
    assert nonce_expiry(SECRET, REALM, mine) == NOW + 5
    assert nonce_expiry(SECRET, "other.realm", mine) is None
    assert nonce_expiry(b"another secret", REALM, mine) is None
    with pytest.raises(ValueError):
        issue_nonce(SECRET, REALM, NOW, random=b"short")


def test_expired_nonce_with_right_password_is_stale() -> None:
    auth = new_auth(nonce_ttl=300)
    ch = auth.challenges(NOW)[0]
    header = build_authorization(ch, "REGISTER", REGISTER_URI, "alice", "secret", "cn", 1)
    assert auth.verify(header, "REGISTER", password_lookup(), NOW + 300).ok  # still valid at the expiry second
    header2 = build_authorization(ch, "REGISTER", REGISTER_URI, "alice", "secret", "cn", 2)
    result = auth.verify(header2, "REGISTER", password_lookup(), NOW + 301)
    assert result.reason is AuthReason.STALE_NONCE and result.stale and not result.ok
    fresh = auth.challenges(NOW + 301, stale=result.stale)
    assert all(parse_challenge(v).stale for v in fresh)
    # A wrong password on an expired nonce is not "stale": the client must be re-prompted.
    bad = build_authorization(ch, "REGISTER", REGISTER_URI, "alice", "guess", "cn", 3)
    result = auth.verify(bad, "REGISTER", password_lookup(), NOW + 301)
    assert result.reason is AuthReason.BAD_RESPONSE and not result.stale


def _with_nonce(header: str, nonce: str) -> str:
    creds = parse_credentials(header)
    creds.nonce = nonce
    return creds.to_header()


def test_tampered_or_foreign_nonce_rejected() -> None:
    auth = new_auth()
    ch = auth.challenges(NOW)[0]
    nonce = parse_challenge(ch).nonce
    raw = bytearray(base64.urlsafe_b64decode(nonce))
    raw[7] ^= 0x01  # push the expiry, keep the old signature
    pushed = base64.urlsafe_b64encode(bytes(raw)).decode()
    flipped = nonce[:30] + ("A" if nonce[30] != "A" else "B") + nonce[31:]
    foreign = parse_challenge(DigestAuthenticator(b"x" * 32, REALM).challenges(NOW)[0]).nonce
    other_realm = parse_challenge(DigestAuthenticator(SECRET, "other.realm").challenges(NOW)[0]).nonce
    for bad in (pushed, flipped, foreign, other_realm, "", "abc", nonce[:-1], nonce + "A",
                nonce.replace(nonce[10], "+"), "é" * 68, "=" * 68):
        # the client computes a correct response over the tampered nonce: only the signature can catch it
        header = build_authorization(ch.replace(nonce, bad), "REGISTER", REGISTER_URI, "alice", "secret", "c", 1)
        result = auth.verify(header, "REGISTER", password_lookup(), NOW)
        assert result.reason is AuthReason.BAD_NONCE, bad
        assert not result.stale
    good = build_authorization(ch, "REGISTER", REGISTER_URI, "alice", "secret", "c", 1)
    for bad in ("\ud800" * 68, "\udcff" * 68):  # what a surrogateescape-decoding parser could hand over
        result = auth.verify(_with_nonce(good, bad), "REGISTER", password_lookup(), NOW)
        assert result.reason is AuthReason.BAD_NONCE, bad
        assert not result.stale


def test_bad_nonce_is_checked_before_the_user_lookup() -> None:
    auth = new_auth()
    header = build_authorization('Digest realm="example.com", nonce="forged", qop="auth"', "REGISTER",
                                 REGISTER_URI, "alice", "secret", "c", 1)
    lookup = password_lookup()
    assert auth.verify(header, "REGISTER", lookup, NOW).reason is AuthReason.BAD_NONCE
    assert lookup.calls == []  # type: ignore[attr-defined]


def test_unencodable_text_fails_cleanly() -> None:
    auth = new_auth()
    creds = parse_credentials(build_authorization(auth.challenges(NOW)[0], "REGISTER", REGISTER_URI, "alice",
                                                  "secret", "c", 1))
    creds.username = "al\udcffice"
    assert auth.verify(creds.to_header(), "REGISTER", lambda *a: "secret", NOW).reason is AuthReason.BAD_RESPONSE
    creds.username = "alice"
    assert auth.verify_credentials(creds, "REGISTER", "pass\ud800", NOW).reason is AuthReason.BAD_RESPONSE


# ---------------------------------------------------------------------------------------------------------------
# Nonce-count replay
# ---------------------------------------------------------------------------------------------------------------


def test_nc_replay_rejected_increasing_accepted() -> None:
    auth = new_auth()
    ch = auth.challenges(NOW)[0]
    lookup = password_lookup()

    def send(nc: int, password: str = "secret") -> AuthReason:
        header = build_authorization(ch, "REGISTER", REGISTER_URI, "alice", password, "cn", nc)
        return auth.verify(header, "REGISTER", lookup, NOW + 10).reason

    assert send(1) is AuthReason.OK
    assert send(1) is AuthReason.REPLAYED_NC
    assert send(2) is AuthReason.OK
    assert send(5) is AuthReason.OK  # gaps are fine
    assert send(3) is AuthReason.REPLAYED_NC
    assert send(5) is AuthReason.REPLAYED_NC
    assert send(9, password="wrong") is AuthReason.BAD_RESPONSE  # a forged request does not advance nc...
    assert send(6) is AuthReason.OK  # ...so the real client's next nc still works
    result = auth.verify(build_authorization(ch, "REGISTER", REGISTER_URI, "alice", "secret", "cn", 6),
                         "REGISTER", lookup, NOW + 10)
    assert result.stale  # right password, spent nc: re-challenge with stale=true


def test_nc_tracker_is_bounded_and_never_reopens_a_replay_window() -> None:
    tracker = NonceCountTracker(max_entries=4)
    for i in range(10):
        assert tracker.accept(f"n{i}", 1, expiry=NOW + 300 + i, now=NOW)
        assert len(tracker) <= 4
    # n0..n5 were evicted while still valid: they are refused rather than forgotten.
    assert not tracker.accept("n0", 2, expiry=NOW + 300, now=NOW)
    assert not tracker.accept("n5", 9, expiry=NOW + 305, now=NOW)
    assert tracker.accept("n9", 2, expiry=NOW + 309, now=NOW)
    assert not tracker.accept("n9", 2, expiry=NOW + 309, now=NOW)
    # A nonce issued later than anything evicted is new.
    assert tracker.accept("fresh", 1, expiry=NOW + 400, now=NOW)


def test_nc_tracker_drops_expired_entries() -> None:
    tracker = NonceCountTracker(max_entries=100)
    for i in range(50):
        tracker.accept(f"old{i}", 1, expiry=NOW + 10, now=NOW)
    assert len(tracker) == 50
    tracker.accept("new", 1, expiry=NOW + 400, now=NOW + 11)  # everything before it has expired
    assert len(tracker) == 1
    # Expired entries make room without raising the eviction watermark.
    assert tracker.accept("another", 1, expiry=NOW + 350, now=NOW + 11)
    with pytest.raises(ValueError):
        NonceCountTracker(max_entries=0)


def test_authenticator_tracker_capacity_is_configurable() -> None:
    auth = new_auth(max_tracked_nonces=3)
    for i in range(20):
        header = build_authorization(auth.challenges(NOW + i)[0], "REGISTER", REGISTER_URI, "alice", "secret", "c", 1)
        assert auth.verify(header, "REGISTER", password_lookup(), NOW + i).ok
    assert len(auth.tracker) <= 3


# ---------------------------------------------------------------------------------------------------------------
# Ephemeral (auth_ephemeral-style) credentials
# ---------------------------------------------------------------------------------------------------------------

EPH_SECRET = b"ephemeral-shared-secret"


def test_ephemeral_credentials_format() -> None:
    username, password = ephemeral_credentials(EPH_SECRET, "agent7", ttl=3600, now=NOW)
    assert username == f"{NOW + 3600}:agent7"
    assert password == base64.b64encode(hmac.new(EPH_SECRET, username.encode(), hashlib.sha1).digest()).decode()
    assert ephemeral_password(EPH_SECRET, username, NOW) == password
    assert ephemeral_password(EPH_SECRET.decode(), username, NOW + 3600) == password  # str secret, last second
    assert ephemeral_credentials(EPH_SECRET.decode(), "agent7", 3600, NOW) == (username, password)


def test_ephemeral_expired_and_malformed() -> None:
    username, _ = ephemeral_credentials(EPH_SECRET, "agent7", ttl=60, now=NOW)
    assert ephemeral_password(EPH_SECRET, username, NOW + 61) is None
    for bad in ("agent7", f"{NOW + 60}", f"{NOW + 60}:", "abc:agent7", ":agent7", f"-{NOW}:agent7",
                f"{NOW + 60}x:agent7", "١٢٣:agent7"):
        assert ephemeral_password(EPH_SECRET, bad, NOW) is None, bad
    # a user part may itself contain ':'
    assert ephemeral_password(EPH_SECRET, f"{NOW + 60}:sip:agent", NOW) is not None


def test_ephemeral_credentials_through_digest() -> None:
    auth = new_auth()
    username, password = ephemeral_credentials(EPH_SECRET, "agent7", ttl=3600, now=NOW)
    ch = auth.challenges(NOW)[0]
    header = build_authorization(ch, "REGISTER", REGISTER_URI, username, password, "cn", 1)
    result = auth.verify(header, "REGISTER", ephemeral_lookup(EPH_SECRET, NOW), NOW)
    assert result.ok and result.username == username

    # Expired: the lookup yields no password, so the user is unknown.
    late = NOW + 3601
    ch_late = auth.challenges(late)[0]
    header = build_authorization(ch_late, "REGISTER", REGISTER_URI, username, password, "cn", 1)
    assert auth.verify(header, "REGISTER", ephemeral_lookup(EPH_SECRET, late), late).reason is AuthReason.UNKNOWN_USER

    # Tampered: pushing the expiry in the username invalidates the password.
    forged_user = f"{NOW + 999_999}:agent7"
    header = build_authorization(ch, "REGISTER", REGISTER_URI, forged_user, password, "cn", 2)
    result = auth.verify(header, "REGISTER", ephemeral_lookup(EPH_SECRET, NOW), NOW)
    assert result.reason is AuthReason.BAD_RESPONSE

    # Signed with another secret.
    _, other_pw = ephemeral_credentials(b"not the secret", "agent7", ttl=3600, now=NOW)
    header = build_authorization(ch, "REGISTER", REGISTER_URI, username, other_pw, "cn", 3)
    assert auth.verify(header, "REGISTER", ephemeral_lookup(EPH_SECRET, NOW), NOW).reason is AuthReason.BAD_RESPONSE


def test_fuzzed_values_never_escape_as_other_errors() -> None:
    import random

    rng = random.Random(7616)
    auth = new_auth()
    good = build_authorization(auth.challenges(NOW)[0], "REGISTER", REGISTER_URI, "alice", "secret", "cn", 1)
    alphabet = 'Digest=," \\\t\r\nabcxyz019-_/+:é\udcff\x00'
    for _ in range(3000):
        chars = list(good)
        for _ in range(rng.randint(1, 6)):
            op, pos = rng.random(), rng.randrange(len(chars) + 1)
            if op < 0.4 and chars:
                del chars[min(pos, len(chars) - 1)]
            elif op < 0.8:
                chars.insert(pos, rng.choice(alphabet))
            else:
                chars = chars[:pos]
        value = "".join(chars)
        try:
            parse_credentials(value)
        except AuthError:
            pass
        try:
            parse_challenge(value)
        except AuthError:
            pass
        result = auth.verify(value, "REGISTER", password_lookup(), NOW)
        assert isinstance(result.reason, AuthReason)
