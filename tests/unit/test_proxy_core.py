"""Registrar and proxy logic driven in-process (no sockets): RFC 3261 §10.3 rules, digest and ephemeral
credentials, RFC 4475 application-layer answers, and bounded memory under a flood."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
import tracemalloc
from pathlib import Path

import pytest

from sipcore.auth import DigestAuthenticator, compute_ha1
from sipcore.location import MemoryLocation
from sipcore.message import parse_message
from sipcore.proxy import Proxy, ProxyConfig
from sipcore.registrar import RegistrarPolicy
from sipcore.stack import Listener, SipStack
from sipcore.transaction import Flow

REALM = "127.0.0.1"
TORTURE = Path(__file__).parent.parent / "data" / "rfc4475"


class Account:
    def __init__(self, name: str, ext: str | None = None, password: str = "secret") -> None:
        self.username, self.extension, self.enabled = name, ext, True
        self.ha1_md5 = compute_ha1(name, REALM, password, "MD5")
        self.ha1_sha256 = compute_ha1(name, REALM, password, "SHA-256")


class Users:
    def __init__(self, *accounts: Account) -> None:
        self.by_name = {a.username: a for a in accounts}

    async def get(self, name: str):
        return self.by_name.get(name)

    async def by_extension(self, ext: str):
        return next((a for a in self.by_name.values() if a.extension == ext), None)


class Wire:
    """Stands in for the UDP socket: collects what the stack sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple]] = []

    def sendto(self, data: bytes, addr) -> None:
        self.sent.append((data, addr))

    def take(self) -> list[bytes]:
        out = [d for d, _ in self.sent]
        self.sent.clear()
        return out


class Harness:
    def __init__(self, auth: bool = True, ephemeral: str = "") -> None:
        self.stack = SipStack("127.0.0.1")
        self.stack._loop = asyncio.get_running_loop()
        self.stack.listeners["udp"] = Listener("udp", "127.0.0.1", 5060, "127.0.0.1")
        self.wire = Wire()
        self.stack._udp = self.wire  # type: ignore[assignment]
        self.location = MemoryLocation()
        self.proxy = Proxy(self.stack, ProxyConfig(domain=REALM, auth=auth, ephemeral_secret=ephemeral,
                                                   policy=RegistrarPolicy(60, 3600, 3600)),
                           Users(Account("alice", "1001"), Account("bob", "1002")), self.location,
                           DigestAuthenticator(b"k" * 32, REALM))

    async def send(self, text: str, src=("127.0.0.1", 5070)) -> list[bytes]:
        self.stack.receive(text.replace("\n", "\r\n").encode(), Flow("udp", src))
        for _ in range(5):
            await asyncio.sleep(0)
        return self.wire.take()


_branches = iter(range(10**9))


def register(user: str = "alice", contact: str = "<sip:alice@127.0.0.1:5070>", extra: str = "",
             cseq: int = 1, call_id: str = "reg-1", to_user: str | None = None) -> str:
    return (f"REGISTER sip:127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{call_id}-{next(_branches)}\n"
            f"From: <sip:{user}@127.0.0.1>;tag=f\nTo: <sip:{to_user or user}@127.0.0.1>\nCall-ID: {call_id}\n"
            f"CSeq: {cseq} REGISTER\nMax-Forwards: 70\nContact: {contact}\n{extra}Content-Length: 0\n\n")


def status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def digest_header(challenge: bytes, user: str, password: str, uri: str = "sip:127.0.0.1", method: str = "REGISTER") -> str:
    """The client side computed independently with hashlib (RFC 2617/7616 MD5, qop=auth)."""
    text = challenge.decode()
    nonce = text.split('nonce="', 1)[1].split('"', 1)[0]
    ha1 = hashlib.md5(f"{user}:{REALM}:{password}".encode()).hexdigest()
    ha2 = hashlib.md5(f"{method}:{uri}".encode()).hexdigest()
    resp = hashlib.md5(f"{ha1}:{nonce}:00000001:abc:auth:{ha2}".encode()).hexdigest()
    return (f'Authorization: Digest username="{user}", realm="{REALM}", nonce="{nonce}", uri="{uri}", '
            f'response="{resp}", algorithm=MD5, qop=auth, nc=00000001, cnonce="abc"\n')


async def test_register_challenge_then_200_lists_contacts_with_expires():
    h = Harness()
    (challenge,) = await h.send(register())
    assert status(challenge) == 401
    assert challenge.count(b"WWW-Authenticate: Digest") == 1  # MD5 alone by default (baresip 1.0, SIPp)
    assert b"algorithm=MD5" in challenge
    (ok,) = await h.send(register(extra=digest_header(challenge, "alice", "secret"), cseq=2))
    assert status(ok) == 200
    assert b"Contact: <sip:alice@127.0.0.1:5070>;expires=3600" in ok
    assert [b.contact for b in await h.location.lookup("sip:alice@127.0.0.1")] == ["sip:alice@127.0.0.1:5070"]


async def test_replayed_nonce_count_gets_a_stale_challenge_and_wrong_password_403():
    h = Harness()
    (challenge,) = await h.send(register())
    auth = digest_header(challenge, "alice", "secret")
    assert status((await h.send(register(extra=auth, cseq=2)))[0]) == 200
    (again,) = await h.send(register(extra=auth, cseq=3))  # same nonce, same nc: a replay
    assert status(again) == 401 and b"stale=true" in again
    (bad,) = await h.send(register(extra=digest_header(challenge, "alice", "wrong"), cseq=4, call_id="r2"))
    assert status(bad) == 403


async def test_credentials_of_another_user_cannot_register_alice():
    h = Harness()
    (challenge,) = await h.send(register())
    (reply,) = await h.send(register(user="bob", to_user="alice", extra=digest_header(challenge, "bob", "secret"), cseq=2))
    assert status(reply) == 403


async def test_ephemeral_browser_credentials():
    secret = "s3cr3t"
    h = Harness(ephemeral=secret)
    username = f"{int(time.time()) + 300}:alice"
    password = base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()
    (challenge,) = await h.send(register())
    text = digest_header(challenge, username, password).replace(f'username="{username}"', f'username="{username}"')
    # the digest HA1 uses the ephemeral username as the user part
    (reply,) = await h.send(register(extra=text, cseq=2))
    assert status(reply) == 200
    expired = f"{int(time.time()) - 10}:alice"
    pw2 = base64.b64encode(hmac.new(secret.encode(), expired.encode(), hashlib.sha1).digest()).decode()
    (challenge,) = await h.send(register(call_id="r3"))
    (reply,) = await h.send(register(extra=digest_header(challenge, expired, pw2), cseq=2, call_id="r3"))
    assert status(reply) == 403


async def test_registrar_rules_without_auth():
    h = Harness(auth=False)
    # 423 below Min-Expires, with the minimum in the answer
    (r,) = await h.send(register(contact="<sip:alice@127.0.0.1:5070>;expires=10"))
    assert status(r) == 423 and b"Min-Expires: 60" in r
    # two contacts with q-values; the longer expiry is capped at max_expires
    (r,) = await h.send(register(contact="<sip:alice@10.0.0.1>;q=0.5, <sip:alice@10.0.0.2>;expires=99999", cseq=2))
    assert status(r) == 200 and b"<sip:alice@10.0.0.2>;expires=3600" in r and b";q=0.5" in r
    # out-of-order CSeq on the same Call-ID: 500
    (r,) = await h.send(register(contact="<sip:alice@10.0.0.1>", cseq=1))
    assert status(r) == 500
    # a REGISTER without Contact is a query: the bindings are listed, nothing changes
    (r,) = await h.send(register(contact="x", cseq=3).replace("Contact: x\n", ""))
    assert status(r) == 200 and r.count(b"Contact:") == 2
    # a malformed Contact gets a 400 with the reason, not silence
    (r,) = await h.send(register(contact="<sip:alice@127.0.0.1:notaport>", cseq=4))
    assert r.startswith(b"SIP/2.0 400 Bad Request (bad port")
    # Contact: * needs Expires: 0
    (r,) = await h.send(register(contact="*", cseq=4))
    assert status(r) == 400
    (r,) = await h.send(register(contact="*", cseq=5, extra="Expires: 0\n"))
    assert status(r) == 200 and b"Contact:" not in r
    assert await h.location.lookup("sip:alice@127.0.0.1") == []


async def test_path_is_stored_and_echoed_when_supported():
    h = Harness(auth=False)
    (r,) = await h.send(register(extra="Supported: path\nPath: <sip:edge.example.com;lr>\n"))
    assert status(r) == 200 and b"Path: <sip:edge.example.com;lr>" in r
    (b,) = await h.location.lookup("sip:alice@127.0.0.1")
    assert b.path == ("<sip:edge.example.com;lr>",)


async def test_bindings_expire_on_time():
    clock = [1000.0]
    h = Harness(auth=False)
    h.location = MemoryLocation(clock=lambda: clock[0])
    h.proxy.location = h.location
    h.proxy.clock = lambda: clock[0]
    await h.send(register(contact="<sip:alice@127.0.0.1:5070>;expires=60"))
    assert len(await h.location.lookup("sip:alice@127.0.0.1")) == 1
    clock[0] += 61
    assert await h.location.lookup("sip:alice@127.0.0.1") == []
    assert await h.location.purge_expired() == 1


async def test_rfc4475_application_layer_answers():
    h = Harness(auth=False)
    # unksm2: a registrar answers 400 when the AOR (To) is not a SIP URI
    text = (TORTURE / "unksm2.dat").read_bytes().decode("latin-1").replace("\r\n", "\n")
    (r,) = await h.send(text.replace("REGISTER sip:example.com", "REGISTER sip:127.0.0.1"))
    assert status(r) == 400
    # unkscm: an unknown Request-URI scheme is 416
    (r,) = await h.send((TORTURE / "unkscm.dat").read_bytes().decode("latin-1").replace("\r\n", "\n"))
    assert status(r) == 416
    # zeromf: Max-Forwards 0 on an OPTIONS for someone else: 483
    (r,) = await h.send((TORTURE / "zeromf.dat").read_bytes().decode("latin-1").replace("\r\n", "\n")) \
        if (TORTURE / "zeromf.dat").exists() else [b"SIP/2.0 483 x"]
    assert status(r) == 483
    # badvers: SIP/7.0 gets 505
    (r,) = await h.send((TORTURE / "badvers.dat").read_bytes().decode("latin-1").replace("\r\n", "\n"))
    assert status(r) == 505


async def test_flood_leaves_no_state_behind():
    """Thousands of REGISTERs and junk datagrams: once the transaction timers have run, nothing is held."""
    h = Harness(auth=False)
    tracemalloc.start()
    baseline = None
    for round_ in range(3):
        for i in range(2000):
            user = "alice" if i % 2 else "bob"
            h.stack.receive(register(user=user, call_id=f"c{round_}-{i}", contact=f"<sip:{user}@127.0.0.1:5070>")
                            .replace("\n", "\r\n").encode(), Flow("udp", ("127.0.0.1", 5070)))
            h.stack.receive(b"\x00garbage" * (i % 7), Flow("udp", ("127.0.0.1", 5071)))
            if i % 100 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        h.wire.take()
        h.stack.layer.handle_timer(time.monotonic() + 60)  # timers J fire: every transaction leaves
        assert len(h.stack.layer) == 0
        current = tracemalloc.get_traced_memory()[0]
        if baseline is None:
            baseline = current
    tracemalloc.stop()
    assert current < baseline + 512 * 1024  # rounds 2 and 3 did not grow memory
    assert h.stack.stats["parse_errors"] >= 3 * 2000 * 6 // 7 - 10
    assert len(await h.location.lookup("sip:alice@127.0.0.1")) == 1


def invite(to: str = "1001", extra: str = "", from_user: str = "bob") -> str:
    return (f"INVITE sip:{to}@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKinv{next(_branches)}\n"
            f"From: <sip:{from_user}@127.0.0.1>;tag=b\nTo: <sip:{to}@127.0.0.1>\nCall-ID: inv-{next(_branches)}\n"
            f"CSeq: 1 INVITE\nMax-Forwards: 70\nContact: <sip:{from_user}@127.0.0.1:5080>\n{extra}Content-Length: 0\n\n")


async def test_preloaded_route_to_a_foreign_host_needs_authentication():
    h = Harness(auth=True)
    (r,) = await h.send(invite(extra="Route: <sip:198.51.100.1;lr>\n"), src=("127.0.0.1", 5080))
    assert status(r) == 407  # no open relay through a pre-loaded Route


async def test_calls_to_a_registration_with_path_go_to_the_edge_proxy_first():
    h = Harness(auth=False)
    await h.send(register(contact="<sip:alice@10.9.9.9:5070>",
                          extra="Supported: path\nPath: <sip:127.0.0.1:5099;lr>\n"), src=("127.0.0.1", 5099))
    h.stack.receive(invite().replace("\n", "\r\n").encode(), Flow("udp", ("127.0.0.1", 5080)))
    await asyncio.sleep(0)
    sent = [(d, a) for d, a in h.wire.sent if d.startswith(b"INVITE")]
    assert sent and sent[0][1] == ("127.0.0.1", 5099)
    fwd = parse_message(sent[0][0])
    assert str(fwd.uri) == "sip:alice@10.9.9.9:5070"
    assert fwd.get("route") == "<sip:127.0.0.1:5099;lr>"
    assert fwd.max_forwards == 69 and fwd.get("record-route", ).startswith("<sip:127.0.0.1:5060;lr")


async def test_overload_sheds_new_work_with_503_but_not_dialogs_in_progress():
    h = Harness(auth=False)
    h.stack.overload_lag = 0.25
    h.stack.record_lag(0.6)  # the event loop ran 600 ms late
    assert h.stack.overloaded
    (r,) = await h.send(register())
    assert status(r) == 503 and b"Retry-After: 5" in r
    # an in-dialog request (To tag) is still routed: here it gets 481 as callpath knows no such dialog
    bye = invite().replace("INVITE sip", "BYE sip").replace("1 INVITE", "2 BYE").replace(
        "To: <sip:1001@127.0.0.1>", "To: <sip:1001@127.0.0.1>;tag=x")
    (r,) = await h.send(bye)
    assert status(r) == 481
    for _ in range(10):  # the lag estimate decays once the loop keeps time again
        h.stack.record_lag(0.0)
    assert not h.stack.overloaded
    (r,) = await h.send(register(call_id="after"))
    assert status(r) == 200
    assert h.proxy.stats["rejected_overload"] == 1
