"""In-process cost of the SIP core (no sockets): per REGISTER, and per proxied call.

Feeds datagrams into SipStack.receive with a fake UDP transport and reports µs of CPU per REGISTER
(parse -> transaction -> registrar -> response) or per proxied call (INVITE/100/180/200/ACK/BYE/200
between a caller and a registered callee, both played by this script), so parser/proxy changes can be
measured without SIPp's and the kernel's noise. Usage:
    python benchmarks/sip/inprocess.py [--auth] [--calls] [-n 20000] [--profile]
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time

from sipcore.auth import DigestAuthenticator, build_authorization, compute_ha1
from sipcore.location import MemoryLocation
from sipcore.proxy import Proxy, ProxyConfig
from sipcore.stack import SipStack, Listener
from sipcore.transaction import Flow


class Account:
    def __init__(self, name: str) -> None:
        self.username = name
        self.extension = None
        self.ha1_md5 = compute_ha1(name, "127.0.0.1", "secret", "MD5")
        self.ha1_sha256 = compute_ha1(name, "127.0.0.1", "secret", "SHA-256")
        self.enabled = True


class Users:
    def __init__(self) -> None:
        self.accounts = {f"user{i}": Account(f"user{i}") for i in range(100)}

    async def get(self, name: str):
        return self.accounts.get(name)

    async def by_extension(self, ext: str):
        return None


class FakeUdp:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr) -> None:
        self.sent.append(data)


def register(i: int, auth: str = "") -> bytes:
    u = f"user{i % 100}"
    return (f"REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bK{i:08d};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{u}@127.0.0.1>;tag=t{i}\r\nTo: <sip:{u}@127.0.0.1>\r\n"
            f"Call-ID: c{i}@127.0.0.1\r\nCSeq: 1 REGISTER\r\nContact: <sip:{u}@127.0.0.1:5071;transport=UDP>\r\n"
            f"{auth}Expires: 3600\r\nUser-Agent: bench\r\nContent-Length: 0\r\n\r\n").encode()


async def main(n: int, auth: bool, profile: bool) -> None:
    stack = SipStack("127.0.0.1")
    stack._loop = asyncio.get_running_loop()
    stack.listeners["udp"] = Listener("udp", "127.0.0.1", 5060, "127.0.0.1")
    udp = FakeUdp()
    stack._udp = udp  # type: ignore[assignment]
    authn = DigestAuthenticator(b"k" * 32, "127.0.0.1")
    Proxy(stack, ProxyConfig(domain="127.0.0.1", auth=auth), Users(), MemoryLocation(), authn)
    msgs = []
    for i in range(n):
        hdr = ""
        if auth:
            ch = authn.challenges(time.time())[0]
            hdr = "Authorization: " + build_authorization(ch, "REGISTER", "sip:127.0.0.1", f"user{i % 100}",
                                                          "secret", cnonce=f"{i:x}", nc=1) + "\r\n"
        msgs.append(register(i, hdr))
    flow = Flow("udp", ("127.0.0.1", 5071))
    prof = cProfile.Profile() if profile else None
    t0 = time.process_time()
    if prof:
        prof.enable()
    for i, m in enumerate(msgs):
        stack.receive(m, flow)
        if i % 50 == 49:
            await asyncio.sleep(0)
    while len(udp.sent) < n:
        await asyncio.sleep(0)
    if prof:
        prof.disable()
    dt = time.process_time() - t0
    ok = sum(1 for d in udp.sent if d.startswith(b"SIP/2.0 200"))
    print(f"{'auth' if auth else 'noauth'}: {dt / n * 1e6:.1f} µs CPU per REGISTER ({ok}/{n} answered 200)")
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def respond(request: bytes, status: int, reason: str, to_tag: str, body: bytes = b"") -> bytes:
    """A callee's response to a forwarded request: Via, From, To(+tag), Call-ID, CSeq, Record-Route copied."""
    from sipcore.message import make_response, parse_message

    req = parse_message(request)
    resp = make_response(req, status, reason, to_tag if status > 100 else None, body=body)
    if status != 100:
        resp.add("Contact", "<sip:callee@127.0.0.1:5090>")
    return resp.to_bytes()


async def calls(n: int, profile: bool) -> None:
    """n proxied calls, each INVITE/100/180/200/ACK/BYE/200 through the proxy (auth off, callee registered)."""
    from sipcore.location import Binding

    stack = SipStack("127.0.0.1")
    stack._loop = asyncio.get_running_loop()
    stack.listeners["udp"] = Listener("udp", "127.0.0.1", 5060, "127.0.0.1")
    udp = FakeUdp()
    stack._udp = udp  # type: ignore[assignment]
    users = Users()
    users.accounts["callee"] = Account("callee")
    location = MemoryLocation()
    await location.save("sip:callee@127.0.0.1", [Binding("sip:callee@127.0.0.1", "sip:callee@127.0.0.1:5090",
                                                           time.time() + 3600)])
    Proxy(stack, ProxyConfig(domain="127.0.0.1", auth=False), users, location,
          DigestAuthenticator(b"k" * 32, "127.0.0.1"))
    caller = Flow("udp", ("127.0.0.1", 5080))
    callee = Flow("udp", ("127.0.0.1", 5090))
    sdp = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
    prof = cProfile.Profile() if profile else None
    cpu_in_script = 0.0
    t0 = time.process_time()
    if prof:
        prof.enable()
    for i in range(n):
        cid = f"call{i}@127.0.0.1"
        invite = (f"INVITE sip:callee@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKi{i};rport\r\n"
                  f"Max-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag=c{i}\r\nTo: <sip:callee@127.0.0.1>\r\n"
                  f"Call-ID: {cid}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@127.0.0.1:5080>\r\n"
                  f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n").encode() + sdp
        stack.receive(invite, caller)
        await asyncio.sleep(0)
        a = time.process_time()
        fwd = next(d for d in reversed(udp.sent) if d.startswith(b"INVITE"))
        r100, r180, r200 = (respond(fwd, 100, "Trying", "t"), respond(fwd, 180, "Ringing", f"e{i}"),
                            respond(fwd, 200, "OK", f"e{i}", sdp))
        cpu_in_script += time.process_time() - a
        for r in (r100, r180, r200):
            stack.receive(r, callee)
        a = time.process_time()
        rr = [line.split(": ", 1)[1] for line in fwd.decode().split("\r\n") if line.startswith("Record-Route")]
        route = "".join(f"Route: {v}\r\n" for v in rr)
        ack = (f"ACK sip:callee@127.0.0.1:5090 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKa{i};rport\r\n"
               f"{route}Max-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag=c{i}\r\nTo: <sip:callee@127.0.0.1>;tag=e{i}\r\n"
               f"Call-ID: {cid}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n").encode()
        bye = ack.replace(b"ACK sip", b"BYE sip").replace(b"1 ACK", b"2 BYE").replace(f"bKa{i}".encode(), f"bKb{i}".encode())
        cpu_in_script += time.process_time() - a
        stack.receive(ack, caller)
        stack.receive(bye, caller)
        a = time.process_time()
        fbye = next(d for d in reversed(udp.sent) if d.startswith(b"BYE"))
        ok = respond(fbye, 200, "OK", f"e{i}")
        cpu_in_script += time.process_time() - a
        stack.receive(ok, callee)
        if i % 50 == 49:
            udp.sent.clear()
    if prof:
        prof.disable()
    dt = time.process_time() - t0 - cpu_in_script
    print(f"proxied calls: {dt / n * 1e6:.1f} µs CPU per call in the SIP core (7 messages in, 7 out)")
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--auth", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--calls", action="store_true", help="measure proxied calls instead of REGISTERs")
    a = ap.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(calls(a.n, a.profile) if a.calls else main(a.n, a.auth, a.profile))
