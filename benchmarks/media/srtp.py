"""µs per operation of the WebRTC media-plane cores: SRTP per profile, STUN binding handling, demux.

Each figure is the median (and the best) of ``--runs`` runs of ``-n`` operations timed with time.perf_counter (per
operation: total / n). Packets are distinct (increasing sequence numbers), so unprotect never hits the
replay check. Rows:

- SRTP protect / unprotect, SRTCP protect / unprotect: ``media.srtp.SrtpContext`` (pylibsrtp) for
  AES128_CM_SHA1_80, AEAD_AES_128_GCM and AEAD_AES_256_GCM, with a 160-byte payload (G.711 20 ms)
  and an 80-byte one (Opus ~32 kb/s 20 ms);
- STUN binding: ``IceLiteAgent.receive_datagram`` of an authenticated Binding Request (parse,
  FINGERPRINT, MESSAGE-INTEGRITY, build the signed success response) + ``datagrams_to_send``;
- demux: ``IceLiteAgent.receive_datagram`` of an SRTP datagram to its leg among ``--legs`` legs;
- leg receive: demux + ``WebRtcLeg.receive_datagram`` (SRTP unprotect, event) + ``next_event``;
- DTLS handshake: two ``DtlsEndpoint``s in memory (ms, not µs).

Usage: python benchmarks/media/srtp.py [-n 20000] [--runs 5] [--legs 1000]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pylibsrtp  # noqa: E402

from media import stun  # noqa: E402
from media.certificate import DtlsCertificate  # noqa: E402
from media.dtls import DtlsEndpoint, HandshakeComplete  # noqa: E402
from media.ice import IceLiteAgent  # noqa: E402
from media.srtp import PROFILES, SrtpContext  # noqa: E402
from media.webrtc import RemoteTransport, WebRtcLeg  # noqa: E402


def rtp(seq: int, payload_len: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160, 0x1234) + b"\xd5" * payload_len


def rtcp_sr(index: int) -> bytes:
    return struct.pack("!BBHIIIIII", 0x80, 200, 6, 0x1234, index, 0, index * 160, index, index * 160)


def median_us(make_batch: Callable[[], Callable[[], None]], n: int, runs: int) -> tuple[float, float]:
    """make_batch() prepares the inputs and returns a callable doing n operations: (median, best) µs/op."""
    results = []
    for _ in range(runs):
        batch = make_batch()
        start = time.perf_counter()
        batch()
        results.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(results), min(results)


def bench_srtp(n: int, runs: int) -> list[tuple[str, str, tuple[float, float]]]:
    rows = []
    for profile in PROFILES:
        for payload_len in (160, 80):
            key_a, key_b = os.urandom(profile.key_salt_length), os.urandom(profile.key_salt_length)

            def make_protect(payload_len=payload_len, profile=profile, key_a=key_a, key_b=key_b):
                ctx = SrtpContext(profile, key_a, key_b)
                packets = [rtp(i, payload_len) for i in range(n)]
                protect = ctx.protect
                return lambda: [protect(p) for p in packets]

            def make_unprotect(payload_len=payload_len, profile=profile, key_a=key_a, key_b=key_b):
                tx, rx = SrtpContext(profile, key_a, key_b), SrtpContext(profile, key_b, key_a)
                packets = [tx.protect(rtp(i, payload_len)) for i in range(n)]
                unprotect = rx.unprotect
                return lambda: [unprotect(p) for p in packets]

            rows.append((f"SRTP protect {payload_len} B", profile.name, median_us(make_protect, n, runs)))
            rows.append((f"SRTP unprotect {payload_len} B", profile.name, median_us(make_unprotect, n, runs)))

        def make_rtcp_protect(profile=profile, key_a=key_a, key_b=key_b):
            ctx = SrtpContext(profile, key_a, key_b)
            packets = [rtcp_sr(i) for i in range(n)]
            protect = ctx.protect_rtcp
            return lambda: [protect(p) for p in packets]

        def make_rtcp_unprotect(profile=profile, key_a=key_a, key_b=key_b):
            tx, rx = SrtpContext(profile, key_a, key_b), SrtpContext(profile, key_b, key_a)
            packets = [tx.protect_rtcp(rtcp_sr(i)) for i in range(n)]
            unprotect = rx.unprotect_rtcp
            return lambda: [unprotect(p) for p in packets]

        rows.append(("SRTCP protect SR", profile.name, median_us(make_rtcp_protect, n, runs)))
        rows.append(("SRTCP unprotect SR", profile.name, median_us(make_rtcp_unprotect, n, runs)))
    return rows


def bench_ice(n: int, runs: int, legs: int, certificate: DtlsCertificate) -> list[tuple[str, str, tuple[float, float]]]:
    rows = []
    agent = IceLiteAgent()
    ice_legs = [agent.create_leg(f"r{i:05d}", "p" * 22, now=0.0) for i in range(legs)]
    addresses = [("198.51.100.%d" % (i % 250 + 1), 10000 + i) for i in range(legs)]
    target = ice_legs[legs // 2]
    address = addresses[legs // 2]
    requests = [
        stun.binding_request(f"{target.local_ufrag}:{target.remote_ufrag}", target.local_pwd, use_candidate=True)
        for _ in range(min(n, 2000))
    ]

    def make_stun():
        receive, drain = agent.receive_datagram, agent.datagrams_to_send

        def run():
            for i in range(n):
                receive(requests[i % len(requests)], address, 1.0)
                drain()

        return run

    rows.append(("STUN binding request -> success", f"{legs} legs", median_us(make_stun, n, runs)))
    while agent.next_event() is not None:
        pass
    for leg, addr in zip(ice_legs, addresses):
        agent.receive_datagram(stun.binding_request(f"{leg.local_ufrag}:{leg.remote_ufrag}", leg.local_pwd), addr, 1.0)
    agent.datagrams_to_send()

    packet = rtp(1, 160)

    def make_demux():
        receive = agent.receive_datagram
        return lambda: [receive(packet, address, 2.0) for _ in range(n)]

    rows.append(("demux SRTP datagram to leg", f"{legs} legs", median_us(make_demux, n, runs)))

    # demux + WebRtcLeg.receive_datagram (unprotect + event) + next_event, keys from a real handshake
    peer_cert = DtlsCertificate.generate()
    remote = RemoteTransport(target.remote_ufrag, target.remote_pwd, [("sha-256", peer_cert.fingerprint())], "active")
    leg = WebRtcLeg(certificate, target, remote)
    browser = DtlsEndpoint(peer_cert, "client", [certificate.sdp_fingerprint])
    browser.start(0.0)
    for _ in range(6):
        for d in browser.datagrams_to_send():
            leg.receive_datagram(d, address, 0.0)
        for d, _ in leg.datagrams_to_send():
            browser.receive_datagram(d, 0.0)
    while leg.next_event() is not None:
        pass
    done = browser.next_event()
    assert isinstance(done, HandshakeComplete)
    browser_srtp = done.srtp_context()
    counter = [0]

    def make_leg_receive():
        base = counter[0]
        counter[0] += n
        packets = [browser_srtp.protect(rtp(base + i, 80)) for i in range(n)]
        receive, leg_receive, next_event = agent.receive_datagram, leg.receive_datagram, leg.next_event

        def run():
            for p in packets:
                if receive(p, address, 3.0) is not None:
                    leg_receive(p, address, 3.0)
                    next_event()

        return run

    rows.append(
        (f"demux + leg unprotect 80 B ({done.profile.name})", f"{legs} legs", median_us(make_leg_receive, n, runs))
    )

    def make_protect_send():
        base = counter[0]
        counter[0] += n
        packets = [rtp(base + i, 80) for i in range(n)]
        protect = leg.protect_rtp
        return lambda: [protect(p) for p in packets]

    rows.append((f"leg protect_rtp 80 B ({done.profile.name})", "", median_us(make_protect_send, n, runs)))
    return rows


def bench_dtls(certificate: DtlsCertificate, runs: int) -> tuple[float, float]:
    peer = DtlsCertificate.generate()
    times = []
    for _ in range(max(runs, 10)):
        start = time.perf_counter()
        server = DtlsEndpoint(certificate, "server", [peer.sdp_fingerprint])
        client = DtlsEndpoint(peer, "client", [certificate.sdp_fingerprint])
        client.start(0.0)
        for _ in range(6):
            for d in client.datagrams_to_send():
                server.receive_datagram(d, 0.0)
            for d in server.datagrams_to_send():
                client.receive_datagram(d, 0.0)
        assert isinstance(server.next_event(), HandshakeComplete)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--legs", type=int, default=1000)
    args = parser.parse_args()
    certificate = DtlsCertificate.generate()
    print(
        f"# {platform.python_implementation()} {platform.python_version()} on {platform.machine()}, "
        f"pylibsrtp {pylibsrtp.__version__}, n={args.n}, median of {args.runs} runs"
    )
    rows = bench_srtp(args.n, args.runs) + bench_ice(args.n, args.runs, args.legs, certificate)
    width = max(len(r[0]) for r in rows)
    print(f"{'operation':<{width}}  {'profile / setup':<18}  {'median µs':>9}  {'best µs':>8}")
    print(f"{'-' * width}  {'-' * 18}  {'-' * 9}  {'-' * 8}")
    for name, variant, (median, best) in rows:
        print(f"{name:<{width}}  {variant:<18}  {median:9.2f}  {best:8.2f}")
    median_ms, best_ms = bench_dtls(certificate, args.runs)
    print(f"{'DTLS handshake, both ends in memory (ms)':<{width}}  {'ECDSA P-256':<18}  {median_ms:9.2f}  {best_ms:8.2f}")


if __name__ == "__main__":
    main()
