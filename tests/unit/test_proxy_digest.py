"""The proxy's digest checks in-process (no sockets): the digest uri against the Request-URI the client sent
(RFC 7616 §3.4.6), answers without qop (RFC 2069 style) refused, replays refused, and what each failure is
answered and counted as (Proxy._authenticate's failure table)."""
from __future__ import annotations

import asyncio
import hashlib
import itertools

from sipcore.auth import DigestAuthenticator
from sipcore.location import Binding, MemoryLocation
from sipcore.proxy import Proxy, ProxyConfig
from sipcore.stack import Listener, SipStack
from sipcore.transaction import Flow

from test_proxy_core import Account  # the same realm (127.0.0.1) and passwords

REALM = "127.0.0.1"
_branch = itertools.count()


class Users:
    """The user directory, counting lookups (a refused request should cost none when it can be refused early)."""

    def __init__(self, *accounts: Account) -> None:
        self.by_name = {a.username: a for a in accounts}
        self.lookups = 0

    async def get(self, name: str):
        self.lookups += 1
        return self.by_name.get(name)

    async def by_extension(self, ext: str):
        return next((a for a in self.by_name.values() if a.extension == ext), None)


class Wire:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr) -> None:
        self.sent.append(data)


class Harness:
    def __init__(self) -> None:
        self.stack = SipStack("127.0.0.1")
        self.stack._loop = asyncio.get_running_loop()
        self.stack.listeners["udp"] = Listener("udp", "127.0.0.1", 5060, "127.0.0.1")
        self.wire = Wire()
        self.stack._udp = self.wire  # type: ignore[assignment]
        self.location = MemoryLocation()
        self.users = Users(Account("alice", "1001"), Account("bob", "1002"))
        self.proxy = Proxy(self.stack, ProxyConfig(domain=REALM), self.users, self.location,
                           DigestAuthenticator(b"k" * 32, REALM))

    async def send(self, text: str) -> bytes:
        self.stack.receive(text.replace("\n", "\r\n").encode(), Flow("udp", ("127.0.0.1", 5070)))
        for _ in range(5):
            await asyncio.sleep(0)
        (reply,) = self.wire.sent
        self.wire.sent.clear()
        return reply


def register(extra: str = "", ruri: str = "sip:127.0.0.1", cseq: int = 1) -> str:
    return (f"REGISTER {ruri} SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKr{next(_branch)}\n"
            f"From: <sip:alice@127.0.0.1>;tag=f\nTo: <sip:alice@127.0.0.1>\nCall-ID: reg-1\nCSeq: {cseq} REGISTER\n"
            f"Max-Forwards: 70\nContact: <sip:alice@127.0.0.1:5070>\n{extra}Content-Length: 0\n\n")


def invite(ruri: str, extra: str = "", cseq: int = 1) -> str:
    return (f"INVITE {ruri} SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKi{next(_branch)}\n"
            f"From: <sip:alice@127.0.0.1>;tag=a\nTo: <sip:bob@127.0.0.1>\nCall-ID: inv-1\nCSeq: {cseq} INVITE\n"
            f"Max-Forwards: 70\nContact: <sip:alice@127.0.0.1:5070>\n{extra}Content-Length: 0\n\n")


def status_line(reply: bytes) -> str:
    return reply.split(b"\r\n", 1)[0].decode()


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def answer(challenge: bytes, uri: str, method: str = "REGISTER", password: str = "secret", nc: int = 1,
           qop: bool = True, header: str = "Authorization") -> str:
    """An answer computed independently with hashlib over ``uri`` (what a client signs), qop=auth or RFC 2069."""
    nonce = challenge.decode().split('nonce="', 1)[1].split('"', 1)[0]
    ha1, ha2 = md5(f"alice:{REALM}:{password}"), md5(f"{method}:{uri}")
    if qop:
        response = md5(f"{ha1}:{nonce}:{nc:08x}:c0ffee:auth:{ha2}")
        tail = f", qop=auth, nc={nc:08x}, cnonce=\"c0ffee\""
    else:
        response, tail = md5(f"{ha1}:{nonce}:{ha2}"), ""
    return (f'{header}: Digest username="alice", realm="{REALM}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm=MD5{tail}\n')


async def test_register_with_a_wrong_digest_uri_gets_400_and_counts_as_an_auth_failure() -> None:
    h = Harness()
    challenge = await h.send(register())
    assert status_line(challenge).startswith("SIP/2.0 401")
    lookups = h.users.lookups
    reply = await h.send(register(answer(challenge, "sip:other.example"), cseq=2))
    assert status_line(reply) == "SIP/2.0 400 Bad Request (digest uri does not match Request-URI)"
    assert h.proxy.stats["auth_failures"] == 1
    assert h.users.lookups == lookups  # refused before the user lookup
    assert await h.location.lookup("sip:alice@127.0.0.1") == []
    # the nonce-count was not spent: the same nonce, nc=1, over the right uri, registers
    reply = await h.send(register(answer(challenge, "sip:127.0.0.1"), cseq=3))
    assert status_line(reply).startswith("SIP/2.0 200")


async def test_register_uri_spelling_variants_are_accepted() -> None:
    """An explicit default port, SIPp's sip:REMOTE_IP:REMOTE_PORT, case: the same registrar."""
    h = Harness()
    for cseq, signed in enumerate(["sip:127.0.0.1:5060", "SIP:127.0.0.1", "sip:127.0.0.1;transport=udp"], 2):
        challenge = await h.send(register(cseq=cseq * 2))
        reply = await h.send(register(answer(challenge, signed), cseq=cseq * 2 + 1))
        assert status_line(reply).startswith("SIP/2.0 200"), signed
    assert h.proxy.stats["auth_failures"] == 0


async def test_answer_without_qop_is_refused_and_so_is_its_replay() -> None:
    h = Harness()
    challenge = await h.send(register())
    legacy = answer(challenge, "sip:127.0.0.1", qop=False)
    for cseq in (2, 3):
        reply = await h.send(register(legacy, cseq=cseq))
        assert status_line(reply) == "SIP/2.0 400 Bad Request (digest qop required)"
    assert h.proxy.stats["auth_failures"] == 2
    assert await h.location.lookup("sip:alice@127.0.0.1") == []


async def test_replayed_answer_is_rechallenged_stale() -> None:
    h = Harness()
    challenge = await h.send(register())
    ok = answer(challenge, "sip:127.0.0.1")
    assert status_line(await h.send(register(ok, cseq=2))).startswith("SIP/2.0 200")
    replay = await h.send(register(ok, cseq=3))
    assert status_line(replay).startswith("SIP/2.0 401") and b"stale=true" in replay


async def test_unoffered_qop_and_malformed_credentials_get_400_and_are_counted() -> None:
    h = Harness()
    challenge = await h.send(register())
    auth_int = answer(challenge, "sip:127.0.0.1").replace("qop=auth,", "qop=auth-int,")
    assert status_line(await h.send(register(auth_int, cseq=2))) == "SIP/2.0 400 Bad Request (unsupported digest qop)"
    malformed = 'Authorization: Digest username="alice", realm="127.0.0.1"\n'
    assert status_line(await h.send(register(malformed, cseq=3))) == "SIP/2.0 400 Bad Request (malformed credentials)"
    assert h.proxy.stats["auth_failures"] == 2


async def test_invite_checks_the_request_uri_the_caller_signed() -> None:
    """A 407-challenged INVITE: the Proxy-Authorization uri must designate the Request-URI as sent."""
    h = Harness()
    await h.location.save("sip:bob@127.0.0.1", [Binding("sip:bob@127.0.0.1", "sip:bob@127.0.0.1:5090", 1e12)])
    ruri = "sip:bob@127.0.0.1"
    challenge = await h.send(invite(ruri))
    assert status_line(challenge).startswith("SIP/2.0 407")

    def signed(uri: str, nc: int) -> str:
        return answer(challenge, uri, "INVITE", nc=nc, header="Proxy-Authorization")

    reply = await h.send(invite(ruri, signed("sip:carol@127.0.0.1", 1), cseq=2))  # another user
    assert status_line(reply) == "SIP/2.0 400 Bad Request (digest uri does not match Request-URI)"
    reply = await h.send(invite(ruri, signed("sip:bob@other.example", 2), cseq=3))  # a foreign host
    assert status_line(reply) == "SIP/2.0 400 Bad Request (digest uri does not match Request-URI)"
    assert h.proxy.stats["auth_failures"] == 2
    # the Request-URI as signed, SIPp's server uri, and our other name for the same user are all accepted
    # (the INVITE is forwarded to bob: the proxy answers 100 Trying and sends the INVITE on)
    for nc, uri in enumerate([ruri, "sip:127.0.0.1:5060", "sip:bob@127.0.0.1:5060;transport=udp"], start=3):
        h.stack.receive(invite(ruri, signed(uri, nc), cseq=nc + 1).replace("\n", "\r\n").encode(),
                        Flow("udp", ("127.0.0.1", 5070)))
        for _ in range(5):
            await asyncio.sleep(0)
        sent = h.wire.sent[:]
        h.wire.sent.clear()
        assert any(d.startswith(b"INVITE sip:bob@127.0.0.1:5090") for d in sent), (uri, sent)
    assert h.proxy.stats["auth_failures"] == 2
