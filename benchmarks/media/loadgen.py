"""Load generator of capacity.py: N calls through a media worker (or rtpengine), both ends emulated, loopback only.

Runs in its own process (its CPU is not the worker's). Per call two directions, 20 ms packets:
- plain RTP ends share one UDP socket per side (the worker tells calls apart by its own port, we by the
  source port of what comes back); PCMU payloads carry the packet index in their first 4 bytes;
- browser ends (``--path opus|srtp``) are a minimal WebRTC peer built from callpath's own pieces: one UDP
  socket per call, a STUN Binding request with USE-CANDIDATE (``media.stun.binding_request``), a
  ``DtlsEndpoint`` in the client role, then ``SrtpContext`` protect/unprotect; Opus frames are encoded
  once (one second, looped), so the peer's CPU stays low.
Measures per direction: packets sent/received, sequence gaps, and the one-way added latency of each
received packet (arrival - send time of the input packet it carries: the index in the payload for
passthrough, the RTP timestamp offset from the first output packet when transcoding).
"""
from __future__ import annotations

import asyncio
import os
import select
import socket
import struct
import sys
import time
from typing import Any

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

_HDR = struct.Struct("!BBHII")
_U32 = struct.Struct("!I")
FRAME = 0.020
SLOTS = 10                     # send phases per 20 ms (calls are not synchronised, as in life)


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all threads), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pcmu_second() -> list[bytes]:
    from media import g711
    t = np.arange(8000) / 8000.0
    rng = np.random.default_rng(1)
    pcm = (6000 * np.sin(2 * np.pi * 440 * t) + 3000 * np.sin(2 * np.pi * 1230 * t)
           + rng.normal(0, 800, 8000)).astype("<i2")
    codes = g711.ulaw_encode(pcm.tobytes())
    return [codes[i * 160:(i + 1) * 160] for i in range(50)]


def _opus_second(max_playback_rate: int | None = None) -> list[bytes]:
    """One second of browser-like Opus (48 kHz RTP clock, 32 kb/s, speech-like tones and noise), coded no
    wider than the answer's ``maxplaybackrate`` allows, as browsers do (RFC 7587 §6.1)."""
    from media.opus import OpusEncoder
    enc = OpusEncoder(48000, 1, bitrate=32000, complexity=5)
    if max_playback_rate:
        enc.max_bandwidth = OpusEncoder.bandwidth_for_playback_rate(max_playback_rate)
    t = np.arange(48000) / 48000.0
    rng = np.random.default_rng(2)
    pcm = (6000 * np.sin(2 * np.pi * 300 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
           + 2500 * np.sin(2 * np.pi * 1700 * t) + rng.normal(0, 600, 48000)).astype("<i2")
    out = [enc.encode(pcm[i * 960:(i + 1) * 960].tobytes()) for i in range(50)]
    enc.close()
    return out


class Direction:
    """One media direction of a call: what our sending end emits, what our receiving end got."""

    __slots__ = ("sock", "addr", "pt", "ssrc", "ts_step", "payloads", "stamp", "srtp", "send_times",
                 "frame_out", "passthrough", "received", "ts0", "first_seq", "ext_seq", "lat", "rx_on")

    def __init__(self, pt: int, ts_step: int, payloads: list[bytes], stamp: bool, frame_out: int,
                 passthrough: bool, ssrc: int) -> None:
        self.sock: socket.socket | None = None
        self.addr: tuple[str, int] | None = None
        self.pt = pt
        self.ssrc = ssrc
        self.ts_step = ts_step
        self.payloads = payloads
        self.stamp = stamp                 # put the packet index in the payload's first 4 bytes
        self.srtp = None                   # SrtpContext when the sending end is a browser
        self.send_times: list[float] = []
        self.frame_out = frame_out         # RTP timestamp units per 20 ms on the receiving side
        self.passthrough = passthrough
        self.received = 0
        self.ts0: int | None = None
        self.first_seq: int | None = None
        self.ext_seq = 0
        self.lat: list[float] = []
        self.rx_on = False

    def packet(self, k: int) -> bytes:
        """Packet k of this direction (protected when the sending end is a browser); its send time noted."""
        payload = self.payloads[k % 50]
        if self.stamp:
            payload = _U32.pack(k) + payload[4:]
        packet = _HDR.pack(0x80, self.pt, k & 0xFFFF, (k * self.ts_step) & 0xFFFFFFFF, self.ssrc) + payload
        if self.srtp is not None:
            packet = self.srtp.protect(packet)
        self.send_times.append(time.perf_counter())
        return packet

    def batch_item(self, k: int) -> tuple:
        """Packet k for ``Relay.send``: a browser's is protected in C on its own libsrtp session (what the
        worker does too), which keeps the generator's Python SRTP cost off the measurement's critical path."""
        handles = self.srtp.c_handles() if self.srtp is not None else None
        if handles is None:
            return (self.sock.fileno(), self.packet(k), self.addr)  # type: ignore[union-attr]
        srtp, self.srtp = self.srtp, None
        try:
            clear = self.packet(k)
        finally:
            self.srtp = srtp
        tx = handles[1]
        return (self.sock.fileno(), clear, self.addr, tx[1], tx[2], tx[0])  # type: ignore[union-attr]

    def send(self, k: int) -> None:
        packet = self.packet(k)
        try:
            self.sock.sendto(packet, self.addr)  # type: ignore[union-attr]
        except BlockingIOError:
            pass                                    # our own socket buffer full: counted as loss

    def receive(self, packet: bytes, now: float) -> None:
        self.received += 1
        seq = (packet[2] << 8) | packet[3]
        if self.first_seq is None:
            self.first_seq = seq
            self.ext_seq = seq
        else:
            delta = (seq - self.ext_seq) & 0xFFFF
            if delta < 0x8000:
                self.ext_seq += delta
        if not self.rx_on:
            if self.ts0 is None:
                self.ts0 = _U32.unpack_from(packet, 4)[0]
            return
        if self.passthrough:
            k = _U32.unpack_from(packet, 12)[0]
        else:
            ts = _U32.unpack_from(packet, 4)[0]
            if self.ts0 is None:
                self.ts0 = ts
            k = ((ts - self.ts0) & 0xFFFFFFFF) // self.frame_out
        times = self.send_times
        if k < len(times):
            self.lat.append(now - times[k])


class WebRtcPeer:
    """The browser end of one call: its socket, ICE credentials, DTLS client, SRTP context."""

    def __init__(self, certificate: Any) -> None:
        from media.ice import IceLiteAgent
        from media.webrtc import WebRtcLeg
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.certificate = certificate
        self.leg = WebRtcLeg(certificate, IceLiteAgent().create_leg())   # only for the SDP attributes
        self.remote_ufrag = self.remote_pwd = ""
        self.worker: tuple[str, int] | None = None
        self.srtp = None
        self.stun_at = 0.0

    def offer(self, codecs: list) -> str:
        from media.sdp import create_offer
        offer = create_offer("127.0.0.1", self.port, codecs, proto="UDP/TLS/RTP/SAVPF")
        offer.media[0].add_attribute("mid", "0")
        self.leg.add_transport_attributes(offer, "127.0.0.1", self.port)
        offer.media[0].set_attribute("setup", "actpass")
        offer.attributes[:] = [a for a in offer.attributes if a.name != "ice-lite"]   # a browser is full ICE
        return offer.to_bytes().decode()

    def binding(self) -> bytes:
        from media.stun import binding_request
        return binding_request(f"{self.remote_ufrag}:{self.leg.ice.local_ufrag}", self.remote_pwd,
                               use_candidate=True, tie_breaker=12345)

    def connect(self, answer_sdp: str, timeout: float = 10.0) -> None:
        """ICE check with USE-CANDIDATE, then the DTLS handshake as client: SRTP keys."""
        from media.certificate import parse_sdp_fingerprint
        from media.dtls import DtlsEndpoint, DtlsFailed, HandshakeComplete
        from media.sdp import SessionDescription
        sd = SessionDescription.parse(answer_sdp)
        sec = sd.media[0]
        self.remote_ufrag = (sec.attribute("ice-ufrag") or sd.attribute("ice-ufrag")).strip()
        self.remote_pwd = (sec.attribute("ice-pwd") or sd.attribute("ice-pwd")).strip()
        fp = parse_sdp_fingerprint(sec.attribute("fingerprint") or sd.attribute("fingerprint"))
        conn = sd.effective_connection(0)
        self.worker = (conn.address, sec.port)
        sock = self.sock
        sock.settimeout(0.2)
        deadline = time.monotonic() + timeout
        while True:                                   # ICE: until the success response
            sock.sendto(self.binding(), self.worker)
            try:
                data = sock.recv(2048)
                if data and data[0] < 4:
                    break
            except socket.timeout:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("no STUN response")
        self.stun_at = time.monotonic()
        dtls = DtlsEndpoint(self.certificate, "client", [fp])
        dtls.start(time.monotonic())
        while self.srtp is None:
            for d in dtls.datagrams_to_send():
                sock.sendto(d, self.worker)
            try:
                data = sock.recv(4096)
                if 19 < data[0] < 64:
                    dtls.receive_datagram(data, time.monotonic())
            except socket.timeout:
                dtls.handle_timer(time.monotonic())
            while (ev := dtls.next_event()) is not None:
                if isinstance(ev, HandshakeComplete):
                    self.srtp = ev.srtp_context()
                elif isinstance(ev, DtlsFailed):
                    raise RuntimeError(f"DTLS failed: {ev.reason}")
            if time.monotonic() > deadline:
                raise TimeoutError("DTLS handshake timeout")
        for d in dtls.datagrams_to_send():
            sock.sendto(d, self.worker)
        self.dtls = dtls
        sock.setblocking(False)


def _read_all(sock: socket.socket, fd: int) -> list[tuple[int, bytes, tuple[str, int]]]:
    """What a socket holds, without the C data plane."""
    out = []
    while True:
        try:
            data, addr = sock.recvfrom(2048)
        except BlockingIOError:
            return out
        out.append((fd, data, addr))


def _pt_of(sdp: str, encoding: str) -> int:
    from media.sdp import SessionDescription
    sec = SessionDescription.parse(sdp).media[0]
    for pt, m in sec.rtpmap.items():
        if m.encoding.lower() == encoding:
            return int(pt)
    raise ValueError(f"{encoding} not in answer")


def _max_playback_rate(sdp: str, pt: int) -> int | None:
    from media.sdp import SessionDescription
    fmtp = SessionDescription.parse(sdp).media[0].fmtp.get(pt, "")
    for param in fmtp.split(";"):
        name, _, value = param.strip().partition("=")
        if name == "maxplaybackrate" and value.isdigit():
            return int(value)
    return None


def _port_of(sdp: str) -> int:
    from media.sdp import SessionDescription
    return SessionDescription.parse(sdp).media[0].port


def _plain_sdp(port: int) -> str:
    from media.sdp import create_offer
    return create_offer("127.0.0.1", port, [("PCMU", 8000), ("telephone-event", 8000)], ptime=20).to_bytes().decode()


def _plain_answer(offer: str, port: int) -> str:
    from media.sdp import SessionDescription, create_answer
    return create_answer(SessionDescription.parse(offer), [("PCMU", 8000), ("telephone-event", 8000)],
                         "127.0.0.1", port).to_bytes().decode()


def _udp(rcvbuf: int = 4 << 20) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):   # SO_RCVBUFFORCE/SNDBUFFORCE as root
        try:
            s.setsockopt(socket.SOL_SOCKET, force, rcvbuf)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, plain, rcvbuf)   # capped by net.core.rmem_max/wmem_max
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


async def _setup(cfg: dict[str, Any], trunk: socket.socket, caller: socket.socket) -> tuple[list, Any]:
    """Signal N calls; returns [(call_id, a_to_b Direction, b_to_a Direction, peer|None)] and the client."""
    path, n = cfg["path"], cfg["calls"]
    pcmu, opus = _pcmu_second(), None
    trunk_port = trunk.getsockname()[1]
    caller_port = caller.getsockname()[1]
    calls = []
    if path == "rtpengine":
        from rtpengine_ng import NgClient
        client: Any = NgClient(tuple(cfg["ng"]))
    else:
        from media.client import MediaClient
        client = await MediaClient.open(cfg["control"], timeout=30.0)
    certificate = None
    if path in ("opus", "srtp"):
        from media.certificate import DtlsCertificate
        certificate = DtlsCertificate.generate()
    part, first = cfg.get("part", 0), cfg.get("first", 0)     # one of several generator processes
    for i in range(n):
        cid = f"cap-{path}-{n}-{part}-{i}"
        ssrc = 0x10000 + 2 * (first + i)
        if path in ("opus", "srtp"):
            peer = WebRtcPeer(certificate)
            codecs = [("opus", 48000, 2), ("telephone-event", 48000)] if path == "opus" \
                else [("PCMU", 8000), ("telephone-event", 8000)]
            to_trunk = await client.offer(cid, "ft", peer.offer(codecs))
            to_browser = await client.answer(cid, "ft", "tt", _plain_answer(to_trunk, trunk_port))
            peer.connect(to_browser)
            if path == "opus":
                pt = _pt_of(to_browser, "opus")
                if opus is None:
                    opus = _opus_second(_max_playback_rate(to_browser, pt))
                a2b = Direction(pt, 960, opus, False, 160, False, ssrc)           # Opus in, PCMU out
                b2a = Direction(0, 160, pcmu, True, 960, False, ssrc + 1)         # PCMU in, Opus out
            else:
                pt = _pt_of(to_browser, "pcmu")
                a2b = Direction(pt, 160, pcmu, True, 160, True, ssrc)
                b2a = Direction(0, 160, pcmu, True, 160, True, ssrc + 1)
            a2b.sock, a2b.addr, a2b.srtp = peer.sock, peer.worker, peer.srtp
            b2a.sock, b2a.addr = trunk, ("127.0.0.1", _port_of(to_trunk))
            calls.append((cid, a2b, b2a, peer, _port_of(to_trunk), None))
        else:
            offer = _plain_sdp(caller_port)
            if path == "rtpengine":
                to_b = client.offer(cid, "ft", offer)
                to_a = client.answer(cid, "ft", "tt", _plain_answer(to_b, trunk_port))
            else:
                to_b = await client.offer(cid, "ft", offer, transport="RTP/AVP")
                to_a = await client.answer(cid, "ft", "tt", _plain_answer(to_b, trunk_port))
            a2b = Direction(0, 160, pcmu, True, 160, True, ssrc)
            b2a = Direction(0, 160, pcmu, True, 160, True, ssrc + 1)
            a2b.sock, a2b.addr = caller, ("127.0.0.1", _port_of(to_a))
            b2a.sock, b2a.addr = trunk, ("127.0.0.1", _port_of(to_b))
            calls.append((cid, a2b, b2a, None, _port_of(to_b), _port_of(to_a)))
    if cfg.get("record") and path != "rtpengine":     # every call recorded, as a contact center does
        for cid, *_ in calls:
            await client.call_record(cid, os.path.join(cfg["record"], f"{cid}.wav"))
    return calls, client


async def _teardown(cfg: dict[str, Any], calls: list, client: Any) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    for cid, *_ in calls:
        try:
            if cfg["path"] == "rtpengine":
                client.delete(cid)
            else:
                stats[cid] = await client.delete(cid)
        except Exception as exc:  # noqa: BLE001
            stats[cid] = {"error": str(exc)}
    if cfg["path"] == "rtpengine":
        client.close()
    else:
        await client.close()
    return stats


def run(cfg: dict[str, Any], conn: Any) -> None:
    """Process entry: set up, stream warmup+window(+drain), tear down, send the figures on ``conn``."""
    try:
        conn.send(_run(cfg))
    except BaseException as exc:  # noqa: BLE001
        import traceback
        conn.send({"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()})


def _run(cfg: dict[str, Any]) -> dict[str, Any]:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    trunk, caller = _udp(), _udp()
    loop = asyncio.new_event_loop()
    t_setup = time.perf_counter()
    calls, client = loop.run_until_complete(_setup(cfg, trunk, caller))
    t_setup = time.perf_counter() - t_setup
    if cfg.get("barrier") is not None:
        cfg["barrier"].wait(300)                      # every generator process streams from the same moment
    pid = cfg["pid"]
    # receive demultiplexing: fd -> (socket, {source port: Direction} or Direction of a browser socket)
    by_fd: dict[int, tuple[socket.socket, Any, Any, Any]] = {}
    trunk_map = {c[4]: c[1] for c in calls}          # worker's trunk-leg port -> a2b direction
    by_fd[trunk.fileno()] = (trunk, trunk_map, None, None)
    if cfg["path"] in ("rtp", "rtpengine"):
        by_fd[caller.fileno()] = (caller, {c[5]: c[2] for c in calls}, None, None)
    peers = []
    for c in calls:
        if c[3] is not None:
            by_fd[c[3].sock.fileno()] = (c[3].sock, None, c[2], c[3].srtp)
            peers.append(c[3])
    # batched I/O through callpath's C data plane when it is built (a Relay with no rules: recvmmsg of every
    # ready socket in one call, sendmmsg per socket), so that one generator core drives 600+ calls
    try:
        from media._relay import Relay
        batch: Any = Relay()
    except ImportError:
        batch = None
    ep = select.epoll()
    for fd in by_fd:
        if batch is not None:
            batch.add_socket(fd)
        else:
            ep.register(fd, select.EPOLLIN)
    if batch is not None:
        ep.register(batch.fileno(), select.EPOLLIN)
    directions = [d for c in calls for d in (c[1], c[2])]
    warmup, window = cfg["warmup"], cfg["window"]
    total_ticks = int(round((warmup + window) / FRAME))
    warm_ticks = int(round(warmup / FRAME))
    perf = time.perf_counter
    slots = SLOTS
    groups = [directions[j::slots] for j in range(slots)]     # call phases spread over the 20 ms frame
    step = FRAME / slots
    start = perf()
    next_tick = start
    k = 0                                                     # packet index
    s = 0                                                     # slot counter (k = s // slots)
    total_slots = total_ticks * slots
    late_sends = 0
    marks: dict[str, float] = {}
    stun_next = time.monotonic() + 5.0
    while True:
        now = perf()
        if now >= next_tick and s < total_slots:
            k, j = divmod(s, slots)
            if s == warm_ticks * slots:
                marks["cpu0"], marks["t0"], marks["gen0"] = proc_cpu(pid), now, time.process_time()
                for d in directions:
                    d.rx_on = True
            if now - next_tick > FRAME:
                late_sends += 1
            if batch is not None:
                batch.send([d.batch_item(k) for d in groups[j]])
            else:
                for d in groups[j]:
                    d.send(k)
            s += 1
            next_tick += step
            if s == total_slots:
                now = perf()
                marks["cpu1"], marks["t1"], marks["gen1"] = proc_cpu(pid), now, time.process_time()
                drain_until = now + 0.5
            if peers and j == 0 and time.monotonic() >= stun_next:   # ICE consent freshness, every ~5 s
                for p in peers:
                    try:
                        p.sock.sendto(p.binding(), p.worker)
                    except BlockingIOError:
                        pass
                stun_next = time.monotonic() + 5.0
            continue
        if s >= total_slots:
            if now >= drain_until:
                break
            timeout = drain_until - now
        else:
            timeout = max(0.0, next_tick - now)
        for fd, _ in ep.poll(timeout):
            if batch is not None:
                datagrams = batch.drain(0.0)
                t = perf()
            else:
                datagrams = _read_all(by_fd[fd][0], fd)
            for fd, data, addr in datagrams:
                sock, by_port, direction, srtp = by_fd[fd]
                if batch is None:
                    t = perf()
                first = data[0]
                if not 127 < first < 192:
                    continue                                   # STUN responses, DTLS
                if direction is not None:                      # a browser socket: SRTP from the worker
                    if 192 <= data[1] <= 223:
                        continue
                    try:
                        data = srtp.unprotect(data)
                    except Exception:  # noqa: BLE001
                        continue
                    direction.receive(data, t)
                else:
                    if 192 <= data[1] <= 223:
                        continue                               # RTCP
                    d = by_port.get(addr[1])
                    if d is not None:
                        d.receive(data, t)
    ep.close()
    if batch is not None:
        batch.close()
    status = None
    if cfg["path"] != "rtpengine":
        status = loop.run_until_complete(client.ping())
    stats = loop.run_until_complete(_teardown(cfg, calls, client))
    loop.close()
    sent_total = sum(len(d.send_times) for d in directions)
    sent_window = len(directions) * (total_ticks - warm_ticks)
    lost_gaps = expected = 0
    received = 0
    for d in directions:
        received += d.received
        if d.first_seq is not None:
            exp = d.ext_seq - d.first_seq + 1
            expected += exp
            lost_gaps += max(0, exp - d.received)
    worker_in = late = 0
    jb_delay: list[float] = []
    for st in stats.values():
        for leg in (st.get("legs") or {}).values():
            worker_in += leg.get("packets_in", 0)
            late += leg.get("late", 0)
            if leg.get("delay_ms") is not None:
                jb_delay.append(leg["delay_ms"])
    lat = np.array([x for d in directions for x in d.lat]) * 1000.0 if directions else np.zeros(0)
    return {
        "path": cfg["path"], "calls": cfg["calls"], "setup_s": round(t_setup, 2),
        "window_s": marks["t1"] - marks["t0"], "worker_cpu_s": marks["cpu1"] - marks["cpu0"],
        "gen_cpu_s": marks["gen1"] - marks["gen0"],
        "sent": sent_total, "sent_window": sent_window, "received": received,
        "never_received": sum(1 for d in directions if d.received == 0),
        "seq_gaps": lost_gaps, "expected_by_seq": expected,
        "worker_packets_in": worker_in if stats else None, "jitter_late": late,
        "late_sends": late_sends, "worker_status": status,
        "jitter_delay_ms_mean": float(np.mean(jb_delay)) if jb_delay else None,
        "lat_p50": float(np.percentile(lat, 50)) if lat.size else None,
        "lat_p99": float(np.percentile(lat, 99)) if lat.size else None,
        "lat_max": float(lat.max()) if lat.size else None,
        **({"lat_samples": lat.astype(np.float32)} if cfg.get("parts", 1) > 1 else {}),
    }
