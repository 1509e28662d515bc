"""In-process cost of the SIP core per REGISTER (no sockets): parse -> transaction -> registrar -> response.

Feeds REGISTER datagrams into SipStack.receive with a fake UDP transport and reports µs of CPU per
REGISTER, so parser/registrar changes can be measured without SIPp's noise. Usage:
    python benchmarks/sip/inprocess.py [--auth] [-n 20000] [--profile]
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


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--auth", action="store_true")
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(a.n, a.auth, a.profile))
