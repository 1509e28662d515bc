#!/usr/bin/env python3
"""The legitimate phone of benchmarks/sip/flood.py, run by it as a subprocess: a SIP phone and a small UAS.

The phone (one UDP socket, the account `user`) starts a complete digest registration (REGISTER / 401 /
REGISTER + Authorization / 200, MD5, qop=auth, a new Call-ID each time, the same Contact) `reg_rate` times a
second, and an authenticated call `call_rate` times a second to the account CALLEE (INVITE / 407 / ACK /
INVITE + Proxy-Authorization / 200 / ACK / BYE, through the Record-Route set). The UAS (another socket)
registers as CALLEE first and answers INVITE and BYE with 200. Retransmissions follow RFC 3261 (timers A
and E, T1 = 500 ms); an operation not done within `timeout` seconds is given up. Each copy of a request
carries `;cp=N` in its Via, which the server echoes: an answer says which copy the server took up.

  python3 flood_phone.py '{"host": "127.0.0.1", "port": 5060, "domain": "127.0.0.1", "user": "user1",
                           "password": "secret", "phone_ip": "127.0.0.3", "callee_ip": "127.0.0.4",
                           "timeout": 5, "expires": 3600, "reg_rate": 10, "call_rate": 2}'

stdout, one JSON object a line: {"k": "ready", ...} once both are registered (or {"k": "error"}); then
{"k": "reg" | "call", "t0": time.monotonic() of the first request, "ok", "status", "lat" (s), "first" (s to
the first answer), "retrans", "stages": [[copy answered, its wait s] | null per request]}, {"k": "late"} for
a final answer to an operation already given up, and {"k": "summary", counters} at the end. It stops
starting operations when stdin closes, lets those in progress finish, and exits. Loopback only.
Standard library only.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import selectors
import signal
import socket
import sys
import time
from typing import Any, Callable

CALLEE = "callee"          # sipbench.CALLEE: the account the phone calls
T1, T2 = 0.5, 4.0
SDP = ("v=0\r\no=- {sess} {sess} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
       "m=audio {port} RTP/AVP 0 8 18 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
       "a=rtpmap:18 G729/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n")


def loopback(ip: str) -> bool:
    return ip.split(".")[0] == "127"


COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
           "c": "content-type", "k": "supported"}


class Msg:
    """A parsed SIP message, just enough for a phone and a UAS."""

    def __init__(self, data: bytes) -> None:
        head, _, self.body = data.partition(b"\r\n\r\n")
        lines = head.decode("utf-8", "replace").split("\r\n")
        self.first = lines[0]
        self.headers: list[tuple[str, str, str]] = []    # (lower-case long name, value, raw line)
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and self.headers:
                n, v, raw = self.headers[-1]
                self.headers[-1] = (n, v + " " + line.strip(), raw + " " + line.strip())
                continue
            name, _, value = line.partition(":")
            name = name.strip().lower()
            self.headers.append((COMPACT.get(name, name), value.strip(), line))
        self.status: int | None = None
        self.method: str | None = None
        if self.first.startswith("SIP/2.0 "):
            self.status = int(self.first[8:11])
        else:
            self.method = self.first.split(" ", 1)[0]
        cseq = (self.get("cseq") or "0 X").split()
        self.cseq, self.cseq_method = int(cseq[0]), cseq[-1]

    def get(self, name: str) -> str | None:
        return next((v for n, v, _ in self.headers if n == name), None)

    def all(self, name: str) -> list[str]:
        return [v for n, v, _ in self.headers if n == name]

    def raw(self, name: str) -> list[str]:
        return [r for n, _, r in self.headers if n == name]

    @property
    def call_id(self) -> str:
        return self.get("call-id") or ""


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def challenge_params(value: str) -> dict[str, str]:
    return {m.group(1).lower(): (m.group(3) if m.group(3) is not None else m.group(2))
            for m in re.finditer(r'(\w+)\s*=\s*("([^"]*)"|[^,\s]+)', value.split(" ", 1)[-1])}


def digest(msg: Msg, header: str, method: str, uri: str, user: str, password: str) -> str | None:
    """The Authorization value answering the MD5 challenge in `header` (qop=auth when offered)."""
    for value in msg.all(header):
        p = challenge_params(value)
        if p.get("algorithm", "MD5").upper() != "MD5":
            continue
        realm, nonce = p.get("realm", ""), p.get("nonce", "")
        ha1, ha2 = md5(f"{user}:{realm}:{password}"), md5(f"{method}:{uri}")
        out = f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", algorithm=MD5'
        if "auth" in [q.strip() for q in p.get("qop", "").split(",")]:
            cnonce = f"{random.getrandbits(64):016x}"
            out += (f', response="{md5(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}")}", qop=auth, nc=00000001, '
                    f'cnonce="{cnonce}"')
        else:
            out += f', response="{md5(f"{ha1}:{nonce}:{ha2}")}"'
        if "opaque" in p:
            out += f', opaque="{p["opaque"]}"'
        return out
    return None


class ClientTx:
    """Retransmission of one request (timers A/E: T1 doubling, non-INVITE capped at T2, INVITE until a
    provisional). Each copy carries `;cp=N` in its Via: the server echoes the Via of the copy it took up,
    so an answer says whether the original was lost (cp > 1) and how long the copy it answered waited."""

    def __init__(self, phone: "Phone", sock: socket.socket, build: Callable[[int], bytes], invite: bool,
                 now: float) -> None:
        self.phone, self.sock, self.build, self.invite = phone, sock, build, invite
        self.copies: list[float] = []
        self.interval = T1
        self.active = True
        self.answered: tuple[int, float] | None = None     # (copy number, its wait) of the first answer
        self._send(now)

    def _send(self, now: float) -> None:
        self.copies.append(now)
        self.phone.send(self.sock, self.build(len(self.copies)))
        self.next_at = now + self.interval

    def tick(self, now: float) -> int:
        if self.active and now >= self.next_at:
            self.interval = self.interval * 2 if self.invite else min(self.interval * 2, T2)
            self._send(now)
            return 1
        return 0

    def on_answer(self, msg: Msg, now: float) -> None:
        if self.answered is None:
            m = re.search(r";cp=(\d+)", msg.get("via") or "")
            n = int(m.group(1)) if m else 1
            sent = self.copies[n - 1] if 0 < n <= len(self.copies) else self.copies[0]
            self.answered = (n, round(now - sent, 4))
        if msg.status is not None and (msg.status >= 200 or self.invite):
            self.active = False


class Attempt:
    """One legitimate operation: a registration or a call, timed from its first request."""

    kind = "?"

    def __init__(self, phone: "Phone", sock: socket.socket, local: tuple[str, int], now: float,
                 record: bool = True) -> None:
        self.phone, self.sock, self.local, self.t0, self.record = phone, sock, local, now, record
        self.call_id = f"{random.getrandbits(64):016x}@{local[0]}"
        self.tag = f"{random.getrandbits(32):08x}"
        self.tx: ClientTx | None = None
        self.stages: list[tuple[int, float] | None] = []
        self.retrans = 0
        self.done = False
        self.ok = False
        self.status: Any = None
        self.latency: float | None = None
        self.first: float | None = None
        self.deadline = now + phone.timeout
        self.closed = False                                # nothing more expected (cleanup done)

    def via(self, branch: str, copy: int) -> str:
        return f"SIP/2.0/UDP {self.local[0]}:{self.local[1]};branch={branch};rport;cp={copy}"

    def tick(self, now: float) -> None:
        if self.tx is not None:
            self.retrans += self.tx.tick(now)
        if not self.done and now >= self.deadline:
            self.finish(now, False, "timeout")

    def begin_tx(self, build: Callable[[int], bytes], invite: bool, now: float) -> None:
        if self.tx is not None:
            self.stages.append(self.tx.answered)
        self.tx = ClientTx(self.phone, self.sock, build, invite, now)

    def finish(self, now: float, ok: bool, status: Any) -> None:
        if self.done:
            return
        self.done, self.ok, self.status = True, ok, status
        self.latency = round(now - self.t0, 4)
        if self.tx is not None:
            self.stages.append(self.tx.answered)
            if not ok:
                self.tx.active = False
        if self.record:
            self.phone.out({"k": self.kind, "t0": round(self.t0, 4), "ok": ok, "status": status,
                            "lat": self.latency, "first": self.first, "retrans": self.retrans,
                            "stages": self.stages})

    def answered(self, msg: Msg, now: float) -> None:
        if self.first is None:
            self.first = round(now - self.t0, 4)
        if self.tx is not None:
            self.tx.on_answer(msg, now)


class Registration(Attempt):
    """REGISTER / 401 / REGISTER + Authorization / 200, a new Call-ID each time (the same Contact)."""

    kind = "reg"

    def __init__(self, phone: "Phone", sock: socket.socket, local: tuple[str, int], user: str, password: str,
                 now: float, record: bool = True) -> None:
        super().__init__(phone, sock, local, now, record)
        self.user, self.password = user, password
        self.cseq = 1
        self.begin_tx(self._builder(None), False, now)

    def _builder(self, auth: str | None) -> Callable[[int], bytes]:
        branch = f"z9hG4bK{random.getrandbits(64):016x}"
        cseq, d, user, (ip, port) = self.cseq, self.phone.domain, self.user, self.local
        head = (f"REGISTER sip:{d} SIP/2.0\r\n{{via}}\r\nMax-Forwards: 70\r\nFrom: <sip:{user}@{d}>;tag={self.tag}\r\n"
                f"To: <sip:{user}@{d}>\r\nCall-ID: {self.call_id}\r\nCSeq: {cseq} REGISTER\r\n"
                f"Contact: <sip:{user}@{ip}:{port}>\r\nExpires: {self.phone.expires}\r\n"
                + (f"Authorization: {auth}\r\n" if auth else "")
                + "User-Agent: callpath-flood-phone\r\nContent-Length: 0\r\n\r\n")
        return lambda copy: head.replace("{via}", "Via: " + self.via(branch, copy)).encode()

    def on_response(self, msg: Msg, now: float) -> None:
        if msg.cseq_method != "REGISTER" or msg.cseq != self.cseq:
            return                                        # an answer to an earlier copy of the first request
        self.answered(msg, now)
        if msg.status is None or msg.status < 200 or self.done:
            return
        if msg.status == 401 and self.cseq == 1:
            auth = digest(msg, "www-authenticate", "REGISTER", f"sip:{self.phone.domain}", self.user, self.password)
            if auth is None:
                self.finish(now, False, "no MD5 challenge")
                return
            self.cseq = 2
            self.begin_tx(self._builder(auth), False, now)
            return
        self.finish(now, 200 <= msg.status < 300, msg.status)


class Call(Attempt):
    """INVITE / 407 / ACK / INVITE + Proxy-Authorization / (100) / 200 / ACK / BYE / 200, to the callee."""

    kind = "call"

    def __init__(self, phone: "Phone", sock: socket.socket, local: tuple[str, int], user: str, password: str,
                 now: float) -> None:
        super().__init__(phone, sock, local, now)
        self.user, self.password = user, password
        self.uri = f"sip:{CALLEE}@{phone.domain}"
        self.cseq = 1
        self.branches: dict[int, str] = {}
        self.ack: bytes | None = None
        self.bye_tx: ClientTx | None = None
        self.bye_status: int | None = None
        self.begin_tx(self._invite(None), True, now)

    def _invite(self, auth: str | None) -> Callable[[int], bytes]:
        self.branches[self.cseq] = branch = f"z9hG4bK{random.getrandbits(64):016x}"
        d, (ip, port) = self.phone.domain, self.local
        body = SDP.format(sess=random.getrandbits(31), ip=ip, port=20000)
        head = (f"INVITE {self.uri} SIP/2.0\r\n{{via}}\r\nMax-Forwards: 70\r\n"
                f"From: <sip:{self.user}@{d}>;tag={self.tag}\r\nTo: <{self.uri}>\r\nCall-ID: {self.call_id}\r\n"
                f"CSeq: {self.cseq} INVITE\r\nContact: <sip:{self.user}@{ip}:{port}>\r\n"
                + (f"Proxy-Authorization: {auth}\r\n" if auth else "")
                + f"User-Agent: callpath-flood-phone\r\nContent-Type: application/sdp\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}")
        return lambda copy: head.replace("{via}", "Via: " + self.via(branch, copy)).encode()

    def _ack_failure(self, msg: Msg) -> None:
        """ACK of a non-2xx final answer (same branch, the answer's To)."""
        self.phone.send(self.sock, (
            f"ACK {self.uri} SIP/2.0\r\nVia: {self.via(self.branches.get(msg.cseq, ''), 1)}\r\nMax-Forwards: 70\r\n"
            f"From: <sip:{self.user}@{self.phone.domain}>;tag={self.tag}\r\nTo: {msg.get('to')}\r\n"
            f"Call-ID: {self.call_id}\r\nCSeq: {msg.cseq} ACK\r\nContent-Length: 0\r\n\r\n").encode())

    def _in_dialog(self, msg: Msg, method: str, cseq: int, branch: str) -> Callable[[int], bytes]:
        """ACK or BYE in the dialog the 2xx made: to its Contact, through its Record-Route (reversed)."""
        contact = re.search(r"<([^>]+)>", msg.get("contact") or "")
        target = contact.group(1) if contact else (msg.get("contact") or self.uri)
        routes = [r.strip() for v in reversed(msg.all("record-route")) for r in reversed(v.split(","))]
        head = (f"{method} {target} SIP/2.0\r\n{{via}}\r\nMax-Forwards: 70\r\n"
                + "".join(f"Route: {r}\r\n" for r in routes)
                + f"From: <sip:{self.user}@{self.phone.domain}>;tag={self.tag}\r\nTo: {msg.get('to')}\r\n"
                f"Call-ID: {self.call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n")
        return lambda copy: head.replace("{via}", "Via: " + self.via(branch, copy)).encode()

    def on_response(self, msg: Msg, now: float) -> None:
        status = msg.status or 0
        if msg.cseq_method == "BYE":
            if self.bye_tx is not None:
                self.bye_tx.on_answer(msg, now)
            if status >= 200:
                self.bye_status, self.closed = status, True
            return
        if msg.cseq_method != "INVITE":
            return
        if msg.cseq != self.cseq:
            if status >= 300:
                self._ack_failure(msg)                    # a retransmitted 407 of the first INVITE
            return
        self.answered(msg, now)
        if status < 200:
            return
        if 200 <= status < 300:
            if self.ack is None:
                self.ack = self._in_dialog(msg, "ACK", self.cseq, f"z9hG4bK{random.getrandbits(64):016x}")(1)
                self.phone.send(self.sock, self.ack)
                self.bye_tx = ClientTx(self.phone, self.sock,
                                       self._in_dialog(msg, "BYE", self.cseq + 1,
                                                       f"z9hG4bK{random.getrandbits(64):016x}"), False, now)
            else:
                self.phone.send(self.sock, self.ack)   # a retransmitted 2xx: ACK again
            self.finish(now, True, status)
            return
        self._ack_failure(msg)
        if status == 407 and self.cseq == 1 and not self.done:
            auth = digest(msg, "proxy-authenticate", "INVITE", self.uri, self.user, self.password)
            if auth is None:
                self.finish(now, False, "no MD5 challenge")
                self.closed = True
                return
            self.cseq = 2
            self.begin_tx(self._invite(auth), True, now)
            return
        self.finish(now, False, status)
        self.closed = True

    def tick(self, now: float) -> None:
        super().tick(now)
        if self.bye_tx is not None:
            self.bye_tx.tick(now)
            if now - self.bye_tx.copies[0] > 32:
                self.closed = True


class Phone:
    """The legitimate side, in its own process: the phone (user1, registrations and calls) and the UAS of
    the account it calls. Writes one JSON line per finished operation on stdout; stops when stdin closes."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.server = (cfg["host"], cfg["port"])
        if not loopback(self.server[0]):
            raise SystemExit("phone: the server must be on 127.0.0.0/8")
        self.domain, self.timeout, self.expires = cfg["domain"], cfg["timeout"], cfg["expires"]
        self.cfg = cfg
        self.sel = selectors.DefaultSelector()
        self.phone = self._socket(cfg["phone_ip"])
        self.uas = self._socket(cfg["callee_ip"])
        self.live: dict[str, Attempt] = {}
        self.ended: dict[str, tuple[Attempt, float]] = {}
        self.counters = {"sent": 0, "received": 0, "late": 0, "stray": 0, "uas_invites": 0, "uas_byes": 0,
                         "bye_ok": 0, "bye_failed": 0}

    def _socket(self, ip: str) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((ip, 0))
        s.setblocking(False)
        self.sel.register(s, selectors.EVENT_READ)
        return s

    def out(self, record: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()

    def send(self, sock: socket.socket, data: bytes) -> None:
        self.counters["sent"] += 1
        with contextlib.suppress(OSError):
            sock.sendto(data, self.server)

    def start(self, attempt: Attempt) -> Attempt:
        self.live[attempt.call_id] = attempt
        return attempt

    # -- the UAS -------------------------------------------------------------------------------
    def uas_request(self, msg: Msg, addr: tuple[str, int]) -> None:
        if msg.method == "ACK":
            return
        to = msg.get("to") or ""
        if ";tag=" not in to:
            to += f";tag={md5(msg.call_id)[:10]}"
        lines = ["SIP/2.0 200 OK", *msg.raw("via"), *(msg.raw("record-route") if msg.method == "INVITE" else []),
                 f"From: {msg.get('from')}", f"To: {to}", f"Call-ID: {msg.call_id}", f"CSeq: {msg.get('cseq')}"]
        body = ""
        if msg.method == "INVITE":
            self.counters["uas_invites"] += 1
            ip, port = self.uas.getsockname()
            body = SDP.format(sess=1, ip=ip, port=30000)
            lines += [f"Contact: <sip:{CALLEE}@{ip}:{port}>", "Content-Type: application/sdp"]
        elif msg.method == "BYE":
            self.counters["uas_byes"] += 1
        lines.append(f"Content-Length: {len(body)}")
        with contextlib.suppress(OSError):
            self.uas.sendto(("\r\n".join(lines) + "\r\n\r\n" + body).encode(), addr)

    # -- the loop ------------------------------------------------------------------------------
    def receive(self, sock: socket.socket, now: float) -> None:
        while True:
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.counters["received"] += 1
            try:
                msg = Msg(data)
            except (ValueError, IndexError):
                continue
            if msg.status is None:
                self.uas_request(msg, addr)
                continue
            att = self.live.get(msg.call_id)
            if att is not None:
                att.on_response(msg, now)
                continue
            ended = self.ended.get(msg.call_id)
            if ended is None:
                self.counters["stray"] += 1
                continue
            att = ended[0]
            if isinstance(att, Call) and msg.cseq_method == "INVITE" and 200 <= msg.status < 300:
                att.on_response(msg, now)                 # ACK (and BYE: the call is live again until then)
                if att.bye_tx is not None and not att.closed:
                    self.live[msg.call_id] = att
                    del self.ended[msg.call_id]
            if msg.status >= 200 and att.record and not att.ok:
                self.counters["late"] += 1
                self.out({"k": "late", "of": att.kind, "t0": round(att.t0, 4), "age": round(now - att.t0, 4),
                          "status": msg.status, "method": msg.cseq_method})

    def run(self) -> None:
        now = time.monotonic()
        self.sel.register(sys.stdin, selectors.EVENT_READ)
        # the callee's registration, then the phone's, before anything is measured
        for sock, user in ((self.uas, CALLEE), (self.phone, self.cfg["user"])):
            for _ in range(5):
                reg = self.start(Registration(self, sock, sock.getsockname(), user, self.cfg["password"],
                                              time.monotonic(), record=False))
                while not reg.done:
                    self.step(0.05)
                if reg.ok:
                    break
            if not reg.ok:
                self.out({"k": "error", "why": f"registering {user} failed: {reg.status}"})
                return
        self.out({"k": "ready", "phone": list(self.phone.getsockname()), "callee": list(self.uas.getsockname())})
        reg_gap, call_gap = 1.0 / self.cfg["reg_rate"], 1.0 / self.cfg["call_rate"] if self.cfg["call_rate"] else 0
        now = time.monotonic()
        next_reg, next_call = now, now + reg_gap / 2
        stopping = False
        while True:
            now = time.monotonic()
            if not stopping:
                while now >= next_reg:
                    self.start(Registration(self, self.phone, self.phone.getsockname(), self.cfg["user"],
                                            self.cfg["password"], now))
                    next_reg += reg_gap
                while call_gap and now >= next_call:
                    self.start(Call(self, self.phone, self.phone.getsockname(), self.cfg["user"],
                                    self.cfg["password"], now))
                    next_call += call_gap
            elif not any(not a.done for a in self.live.values()):
                break
            if self.step(0.01):
                stopping = True
        self.out({"k": "summary", **self.counters})

    def step(self, timeout: float) -> bool:
        """Read what arrived, run the timers; True when stdin closed."""
        closed = False
        for key, _ in self.sel.select(timeout):
            if key.fileobj is sys.stdin:
                if not os.read(sys.stdin.fileno(), 4096):
                    self.sel.unregister(sys.stdin)
                    closed = True
            else:
                self.receive(key.fileobj, time.monotonic())  # type: ignore[arg-type]
        now = time.monotonic()
        for cid, att in list(self.live.items()):
            att.tick(now)
            if att.done and (not isinstance(att, Call) or att.closed or att.ack is None):
                if isinstance(att, Call) and att.bye_status is not None:
                    self.counters["bye_ok" if att.bye_status < 300 else "bye_failed"] += 1
                del self.live[cid]
                self.ended[cid] = (att, now)
        for cid in [c for c, (_, t) in self.ended.items() if now - t > 60]:
            del self.ended[cid]
        return closed


def phone_main(cfg_json: str) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    Phone(json.loads(cfg_json)).run()
    return 0


if __name__ == "__main__":
    sys.exit(phone_main(sys.argv[1]))
