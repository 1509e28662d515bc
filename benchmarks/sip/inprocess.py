"""In-process cost of the SIP core (no sockets): per REGISTER, and per proxied call.

Feeds datagrams into SipStack.receive with a fake UDP transport and reports µs of CPU per REGISTER
(parse -> transaction -> registrar -> response) or per proxied call (INVITE/100/180/200/ACK/BYE/200
between a caller and a registered callee, both played by this script), so parser/proxy changes can be
measured without SIPp's and the kernel's noise; with --memory, the bytes of state held per proxied call,
per REGISTER transaction and per binding, and what is left once the timers have run. Usage:
    python benchmarks/sip/inprocess.py [--auth] [--calls | --memory] [-n 20000] [--profile]
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


SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
CALLER = Flow("udp", ("127.0.0.1", 5080))
CALLEE = Flow("udp", ("127.0.0.1", 5090))


async def proxy_with_callee() -> tuple[SipStack, FakeUdp]:
    """A stack + proxy (auth off) on a fake UDP socket, with `callee` registered at 127.0.0.1:5090."""
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
    return stack, udp


async def one_call(stack: SipStack, udp: FakeUdp, i: int) -> float:
    """INVITE/100/180/200/ACK/BYE/200 through the proxy; returns the CPU seconds this script spent making
    the callee's and caller's messages (to be left out of the SIP core's figure)."""
    script = 0.0
    cid = f"call{i}@127.0.0.1"
    invite = (f"INVITE sip:callee@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKi{i};rport\r\n"
              f"Max-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag=c{i}\r\nTo: <sip:callee@127.0.0.1>\r\n"
              f"Call-ID: {cid}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@127.0.0.1:5080>\r\n"
              f"Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n").encode() + SDP
    stack.receive(invite, CALLER)
    await asyncio.sleep(0)
    a = time.process_time()
    fwd = next(d for d in reversed(udp.sent) if d.startswith(b"INVITE"))
    r100, r180, r200 = (respond(fwd, 100, "Trying", "t"), respond(fwd, 180, "Ringing", f"e{i}"),
                        respond(fwd, 200, "OK", f"e{i}", SDP))
    script += time.process_time() - a
    for r in (r100, r180, r200):
        stack.receive(r, CALLEE)
    a = time.process_time()
    rr = [line.split(": ", 1)[1] for line in fwd.decode().split("\r\n") if line.startswith("Record-Route")]
    route = "".join(f"Route: {v}\r\n" for v in rr)
    ack = (f"ACK sip:callee@127.0.0.1:5090 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKa{i};rport\r\n"
           f"{route}Max-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag=c{i}\r\nTo: <sip:callee@127.0.0.1>;tag=e{i}\r\n"
           f"Call-ID: {cid}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n").encode()
    bye = ack.replace(b"ACK sip", b"BYE sip").replace(b"1 ACK", b"2 BYE").replace(f"bKa{i}".encode(), f"bKb{i}".encode())
    script += time.process_time() - a
    stack.receive(ack, CALLER)
    stack.receive(bye, CALLER)
    a = time.process_time()
    fbye = next(d for d in reversed(udp.sent) if d.startswith(b"BYE"))
    ok = respond(fbye, 200, "OK", f"e{i}")
    script += time.process_time() - a
    stack.receive(ok, CALLEE)
    if i % 50 == 49:
        udp.sent.clear()
    return script


async def calls(n: int, profile: bool) -> None:
    """n proxied calls, each INVITE/100/180/200/ACK/BYE/200 through the proxy (auth off, callee registered)."""
    stack, udp = await proxy_with_callee()
    prof = cProfile.Profile() if profile else None
    cpu_in_script = 0.0
    t0 = time.process_time()
    if prof:
        prof.enable()
    for i in range(n):
        cpu_in_script += await one_call(stack, udp, i)
    if prof:
        prof.disable()
    dt = time.process_time() - t0 - cpu_in_script
    print(f"proxied calls: {dt / n * 1e6:.1f} µs CPU per call in the SIP core (7 messages in, 7 out)")
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


async def memory(n: int) -> None:
    """Bytes of Python heap (tracemalloc) the SIP core holds per unit of state, and what is left once every
    transaction timer has run: per proxied call while its transactions wait out timers L/M/J (32 s on UDP),
    per REGISTER transaction (Completed, timer J), per registered contact (binding, in-process location)."""
    import gc
    import tracemalloc

    def held() -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    def expire(stack: SipStack) -> None:
        stack.layer.handle_timer(time.monotonic() + 120)
        stack.flush()

    stack, udp = await proxy_with_callee()
    for i in range(n):    # a first round: the tables (dicts, timer heap) reach this window's size and stay
        await one_call(stack, udp, -1 - i)
    expire(stack)
    udp.sent.clear()
    tracemalloc.start()
    base = held()
    objects = len(gc.get_objects())
    for i in range(n):
        await one_call(stack, udp, i)
    udp.sent.clear()
    window = held() - base
    txs = len(stack.layer)
    expire(stack)
    left = held() - base
    # what stays is counted in objects: the bytes also move with the size of the tables (dicts and the timer
    # heap keep their high-water size, and a dict rebuilt during the round may come out bigger or smaller)
    left_objects = len(gc.get_objects()) - objects
    print(f"proxied call, UDP, in its 32 s transaction window: {window / n:,.0f} B "
          f"({txs / n:.1f} transactions); after the timers: {left_objects / n:.3f} objects, {left / n:,.0f} B "
          "(table sizes)")

    flow = Flow("udp", ("127.0.0.1", 5071))
    base = held()
    for i in range(n):
        stack.receive(register(i), flow)
        if i % 50 == 49:
            await asyncio.sleep(0)
            udp.sent.clear()
    await asyncio.sleep(0.05)
    udp.sent.clear()
    in_j = held() - base
    expire(stack)
    print(f"REGISTER transaction (answered, waiting out timer J on UDP): {in_j / n:,.0f} B; after the timers: "
          f"{len(gc.get_objects()) - objects} objects in all (the bindings of the 100 contacts refreshed in turn)")

    base = held()
    for i in range(n):
        msg = register(i).replace(f"user{i % 100}@".encode(), f"aor{i}@".encode())
        stack.receive(msg, flow)
        if i % 50 == 49:
            await asyncio.sleep(0)
            udp.sent.clear()
    await asyncio.sleep(0.05)
    expire(stack)
    udp.sent.clear()
    print(f"registered contact (binding in the in-process location service): {(held() - base) / n:,.0f} B")
    tracemalloc.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--auth", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--calls", action="store_true", help="measure proxied calls instead of REGISTERs")
    ap.add_argument("--memory", action="store_true",
                    help="bytes held per proxied call, REGISTER transaction and binding (tracemalloc)")
    a = ap.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    if a.memory:
        asyncio.run(memory(min(a.n, 5000)))
    else:
        asyncio.run(calls(a.n, a.profile) if a.calls else main(a.n, a.auth, a.profile))
