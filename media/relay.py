"""The asyncio side of the C data plane (``media._relay``): a worker's UDP sockets read in batches, and the
packets of passthrough calls forwarded in C while the Python objects stay the authority.

``MediaRelay`` stands in for ``loop.create_datagram_endpoint``: the sockets it opens are read by one C
``Relay`` (an epoll set the loop watches through a single descriptor, ``recvmmsg``/``sendmmsg``). Datagrams
that match a forwarding rule never reach Python; every other one is handed to its protocol's
``datagram_received`` as usual (STUN, DTLS, RTCP, telephone-events, a new source, a transcoded call's audio).

A ``Forward`` is one direction of a passthrough call in the data plane: the C ``Rule`` plus the Python
objects it stands in for (the bridge path's counters, the outgoing ``RtpSender``, the input leg's
``RtpSession`` and ``ReceptionStats``). ``Forward.load`` writes their state into the rule; ``Forward.pull``
reads what C counted and changed back into them. The worker pulls a call before any Python code touches it
(a datagram for Python, a timer, a control command) and loads it again afterwards (``MediaWorker._commit``,
always before the relay next reads its sockets or ticks), so the Python reference path and the C path give
the same packets and the same statistics (tests/unit/test_relay.py compares them).

A transcoded direction's ``Forward`` puts what its rule accepts straight into the bridge path's C jitter
buffer (``load_delivery``), and while the path is in its steady state (no DTMF event, prompt or digit
sounding on it; a recording or a listening supervisor gets the decoded frames) its ``TranscodeTick`` runs
the whole 20 ms step in C as well: decode or conceal, encode, packetize, SRTP and a batched send
(``Relay.tick``). A path watched for in-band DTMF is judged frame by frame in C too; a frame that holds a
key hands the path back to Python (``Relay.take_handbacks``), whose detector decides about the digit.
tests/unit/test_transcode_tick.py compares all this with ``media.bridge.tick_bridges`` packet for packet
and digit for digit.

Without the extension (no compiler, not Linux) ``available()`` is False and the worker uses asyncio
endpoints and the Python path for everything.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Callable

import numpy as np

from .bridge import BridgeStats, DtmfReceived
from .dtmf import DtmfDigitEnded
from .opus import function_addresses
from .rtcp import ReceptionStats
from .rtp import RtpSender
from .session import RtpSession

try:
    from . import _relay as _c
except ImportError:  # pragma: no cover - built by setup.py where a compiler is present
    _c = None

__all__ = ["Forward", "MediaRelay", "RelayTransport", "TranscodeTick", "available", "fileno"]

log = logging.getLogger(__name__)

Addr = tuple[str, int]


def available() -> bool:
    """Whether the C data plane is built (``media._relay``)."""
    return _c is not None


class RelayTransport(asyncio.DatagramTransport):
    """A datagram transport over a non-blocking socket that the relay reads (sends go straight out)."""

    def __init__(self, relay: MediaRelay, sock: socket.socket, protocol: asyncio.DatagramProtocol) -> None:
        super().__init__({"socket": sock, "sockname": sock.getsockname()})
        self._relay = relay
        self._sock = sock
        self._protocol = protocol
        self._closing = False
        self.fd = sock.fileno()
        self.hook: Callable[[], None] | None = None   # run before a datagram is handed to the protocol
        self.dropped = 0                               # sends refused because the socket buffer was full

    def sendto_protected(self, packet: bytes, addr: Any, tx: tuple[Any, int, int]) -> bool:
        """Queue RTP that C protects with ``tx`` (``SrtpContext.c_handles()[1]``) when the batch goes out (what
        pylibsrtp's wrapper costs per packet is saved); False when not corked: the caller protects it."""
        pending = self._relay.pending
        if pending is None:
            return False
        if not self._closing:
            pending.append((self.fd, packet, addr, tx[1], tx[2], tx[0]))
        return True

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing:
            return
        pending = self._relay.pending
        if pending is not None:                        # corked: sent with the batch (sendmmsg)
            pending.append((self.fd, data, addr))
            return
        try:
            self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self.dropped += 1                          # UDP: a full send buffer loses the datagram
        except OSError as exc:
            self._protocol.error_received(exc)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._relay._forget(self)
        self._sock.close()
        self._protocol.connection_lost(None)

    def abort(self) -> None:
        self.close()


class MediaRelay:
    """One C ``Relay`` on the running loop: the endpoints it reads, their protocols, the drain callback.

    ``before_drain``/``after_drain`` (set by the worker) run around each batch: the worker loads the rules
    of calls that Python touched, before C reads more packets.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if _c is None:
            raise RuntimeError("media._relay is not built (no C compiler when callpath was installed)")
        self.c = _c.Relay()
        self._loop = loop or asyncio.get_running_loop()
        self._endpoints: dict[int, RelayTransport] = {}
        self.before_drain: Callable[[], None] | None = None
        self.after_drain: Callable[[], None] | None = None
        self.drains = 0
        self.pending: list[tuple[Any, ...]] | None = None   # (fd, data, addr[, srtp_t, protect, owner]) held back while corked
        self._loop.add_reader(self.c.fileno(), self._on_readable)

    async def create_datagram_endpoint(
        self, protocol_factory: Callable[[], asyncio.DatagramProtocol], local_addr: Addr
    ) -> tuple[RelayTransport, asyncio.DatagramProtocol]:
        """What ``loop.create_datagram_endpoint(factory, local_addr=...)`` does, on a socket the relay reads."""
        host, port = local_addr
        infos = await self._loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP)
        if not infos:
            raise OSError(f"cannot resolve {host!r}")
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        protocol = protocol_factory()
        transport = RelayTransport(self, sock, protocol)
        self.c.add_socket(transport.fd)
        self._endpoints[transport.fd] = transport
        protocol.connection_made(transport)
        return transport, protocol

    def _forget(self, transport: RelayTransport) -> None:
        if self._endpoints.get(transport.fd) is transport:
            del self._endpoints[transport.fd]
            self.c.remove_socket(transport.fd)         # and every rule reading or sending on it

    def cork(self) -> None:
        """Hold sends back until ``uncork`` (then one ``sendmmsg`` per socket for all of them)."""
        if self.pending is None:
            self.pending = []

    def uncork(self) -> None:
        """Send what was held back, in order per socket."""
        pending, self.pending = self.pending, None
        if pending:
            if len(pending) > 1:
                pending.sort(key=_by_fd)              # stable: each socket's datagrams keep their order
            try:
                self.c.send(pending)
            except (TypeError, ValueError) as exc:    # a bad address from a protocol: send one by one
                log.warning("batched send failed (%s); sending singly", exc)
                for fd, data, addr, *srtp in pending:
                    transport = self._endpoints.get(fd)
                    if transport is None:
                        continue
                    if srtp:                          # not protected by C yet, or refused again: drop it
                        try:
                            data = srtp[2].protect(data)
                        except Exception:  # noqa: BLE001
                            continue
                    transport.sendto(data, addr)

    def _on_readable(self) -> None:
        if self.before_drain is not None:
            self.before_drain()
        self.drains += 1
        endpoints = self._endpoints
        now = self._loop.time()
        self.cork()
        try:
            for fd, data, addr in self.c.drain(now):
                try:
                    transport = endpoints.get(fd)
                    if transport is None:
                        continue
                    if transport.hook is not None:
                        transport.hook()
                    transport._protocol.datagram_received(data, addr)  # type: ignore[attr-defined]
                except Exception:  # noqa: BLE001 - as asyncio does: one bad datagram must not stop the others
                    log.exception("media datagram handler failed")
            if self.after_drain is not None:
                self.after_drain()
        finally:
            self.uncork()

    def set_rule(self, key: tuple[int, str, int], rule: Any) -> None:
        self.c.set_rule(key[0], key[1], key[2], rule)

    def del_rule(self, key: tuple[int, str, int]) -> None:
        self.c.del_rule(key[0], key[1], key[2])

    def stats(self) -> dict[str, int]:
        """Packets forwarded in C, handed to Python, dropped (SRTP), ... and the rules in place."""
        return dict(self.c.stats(), drains=self.drains)

    def close(self) -> None:
        """Stop reading (the endpoints' own close() closes their sockets)."""
        try:
            self._loop.remove_reader(self.c.fileno())
        except (ValueError, RuntimeError):  # the loop is already closed
            pass
        self.c.close()


def _by_fd(item: tuple[int, Any, Addr]) -> int:
    return item[0]


def fileno(transport: asyncio.BaseTransport | None) -> int | None:
    """The socket descriptor under a relay transport (None for any other transport)."""
    return transport.fd if isinstance(transport, RelayTransport) and not transport.is_closing() else None


class Forward:
    """One direction of a passthrough call in the C data plane, and the Python objects it stands in for.

    ``key`` is (socket fd, source host, port) the packets come in on; ``out`` is (socket fd, host, port) they
    leave by; ``srtp_in``/``srtp_out`` are ``SrtpContext.c_handles()`` halves (None: plain RTP). A delivery
    (``load_delivery``) is the receive side of a transcoded direction instead: accepted packets, decrypted,
    go into the path's jitter buffer without the datagram/leg/event chain (what ``Bridge.receive_rtp`` does
    with them), and ``tick`` is the path's ``TranscodeTick`` once the worker made one.
    """

    __slots__ = ("relay", "key", "rule", "stats", "sender", "session", "reception", "captured", "tick")

    def __init__(self, relay: MediaRelay, key: tuple[int, str, int], stats: BridgeStats | None,
                 sender: RtpSender | None, session: RtpSession | None, reception: ReceptionStats | None) -> None:
        assert _c is not None
        self.relay = relay
        self.key = key
        self.rule = _c.Rule()
        self.stats = stats
        self.sender = sender
        self.session = session
        self.reception = reception
        self.captured: list[Any] | None = None    # where captured payloads go (the bridge's list), when on
        self.tick: TranscodeTick | None = None
        relay.set_rule(key, self.rule)

    def load(self, *, in_pt: int, source: int, out_pt: int, seq_off: int, ts_off: int, highest: int | None,
             hold_until: float, out: tuple[int, str, int], srtp_in: tuple[Any, int, int] | None,
             srtp_out: tuple[Any, int, int] | None, captured: list[Any] | None = None) -> None:
        """Write the Python state into the rule (after Python handled something of this call); with
        ``captured`` (the bridge's list for this side) the payloads are kept for the recorder/supervisor."""
        rule = self.rule
        sender = self.sender
        assert sender is not None
        rule.in_pt = in_pt
        rule.src_ssrc = source
        rule.out_pt = out_pt
        rule.out_ssrc = sender.ssrc
        rule.seq_off = seq_off
        rule.ts_off = ts_off
        rule.hold_until = hold_until
        rule.highest_out_seq = -1 if highest is None else highest
        rule.last_out_ts = sender.last_timestamp or 0
        rule.last_sent_at = sender.last_sent_at or 0.0
        rule.set_output(*out)
        rule.set_srtp_in(*(srtp_in or (None,)))
        rule.set_srtp_out(*(srtp_out or (None,)))
        self.take_captured()
        self.captured = captured
        rule.capture = captured is not None
        if self.reception is not None:
            rule.set_reception(*self.reception.seq_state())
        else:
            rule.track_reception = 0

    def take_captured(self) -> None:
        """Move the payloads C kept since the last call onto the bridge's list (in arrival order)."""
        payloads = self.rule.take_captured()
        if payloads and self.captured is not None:
            self.captured.extend(payloads)

    def load_delivery(self, *, in_pt: int, source: int, srtp_in: tuple[Any, int, int] | None,
                      jitter: Any) -> None:
        """Make the rule put what it accepts (payload type ``in_pt`` from SSRC ``source``) into ``jitter``
        (a ``FastJitterBuffer``), counted in ``stats.packets_in``."""
        rule = self.rule
        rule.in_pt = in_pt
        rule.src_ssrc = source
        rule.set_jitter(jitter)
        rule.set_srtp_in(*(srtp_in or (None,)))
        if self.reception is not None:
            rule.set_reception(*self.reception.seq_state())
        else:
            rule.track_reception = 0

    def pull(self) -> None:
        """Read what C counted and changed since the last pull back into the Python objects."""
        if self.tick is not None:
            self.tick.pull()
        rule = self.rule
        if self.captured is not None:
            self.take_captured()
        packets_in, packets_out, octets, _held, last_arrival, advanced = rule.take()
        if packets_in:
            if self.stats is not None:
                self.stats.packets_in += packets_in
            if self.session is not None:
                self.session.forwarded(packets_in, last_arrival)
            if self.reception is not None:
                self.reception.set_seq_state(rule.reception())
        if (packets_out or advanced) and self.stats is not None and self.sender is not None:
            self.stats.packets_out += packets_out
            self.sender.relayed(packets_out, octets, rule.highest_out_seq if advanced else None,
                                rule.last_out_ts, rule.last_sent_at)

    def remove(self) -> None:
        """Take the rule (and the tick) out of the relay (after a last ``pull``)."""
        self.relay.del_rule(self.key)
        if self.tick is not None:
            self.tick.remove()
            self.tick = None


_LAWS = {None: 0, "ulaw": 1, "alaw": 2}


class TranscodeTick:
    """A transcoded direction's 20 ms step in C (``media._relay.Transcoder``), standing in for
    ``tick_bridges`` on one bridge path: ``load`` writes the path's state (its sender's stream, the G.711
    concealment frame, the FEC loss estimate) into C and lets ``Relay.tick`` run it; ``pull`` stops that and
    writes what C changed back, so Python's tick can carry on from exactly there."""

    __slots__ = ("relay", "c", "bridge", "path", "sender")

    def __init__(self, relay: MediaRelay, bridge: Any, side: str, owner: Any = None) -> None:
        assert _c is not None
        _set_opus()
        self.relay = relay
        self.bridge = bridge
        self.path = path = bridge.paths[side]
        self.sender: RtpSender = path.sender
        self.c = _c.Transcoder()
        self.c.set_codecs(path.jitter, bridge.paths[path.dst_side].jitter,
                          path.decoder.state if path.decoder is not None else 0, _LAWS[path.src_law],
                          path.encoder.state if path.encoder is not None else 0, _LAWS[path.dst_law])
        self.c.owner = owner
        relay.c.add_transcoder(self.c)
        path.c_tick = self

    def load(self, out: tuple[int, str, int], srtp_out: tuple[Any, int, int] | None) -> None:
        """Take over the path's ticks from Python, sending to ``out`` (fd, host, port), SRTP-protected with
        ``srtp_out`` (``SrtpContext.c_handles()[1]``) when given."""
        c, path, sender = self.c, self.path, self.sender
        inband = path.inband
        if inband is not None and not inband.idle:
            raise ValueError("a digit is sounding on this path: Python's tick must run it")
        c.set_output(*out)
        c.set_srtp(*(srtp_out or (None,)))
        if path.ticked_at > c.ticked_at:
            c.phase = 0                           # Python's tick ran it last, in slot 0: go on from there
        c.payload_type = sender.payload_type
        c.ssrc = sender.ssrc
        c.sequence = sender.sequence
        c.timestamp = sender.timestamp
        c.marker_next = int(sender.marker_next)
        c.frame_samples = sender.frame_samples
        c.packets_sent = sender.packets_sent
        c.octets_sent = sender.octets_sent
        pcm = path.last_pcm
        c.set_plc(None if pcm is None else pcm.astype("<i2", copy=False).tobytes(), path.plc_gain)
        c.loss_ticks = path.loss_ticks
        c.mark_received, c.mark_lost = path.loss_mark
        c.reported_loss = path.reported_loss
        if path.encoder is not None:
            c.loss_perc = path.encoder.packet_loss_perc
        c.set_inband(None if inband is None else inband.thresholds(160))
        bridge = self.bridge
        c.set_capture(bridge.captured[path.src_side] if bridge.capture else None)
        c.engaged = 1
        path.c_engaged = True

    def pull(self) -> None:
        """Hand the path back to Python's tick with what C changed (counters, stream, concealment, FEC)."""
        c, path, sender = self.c, self.path, self.sender
        if not path.c_engaged:
            return
        c.engaged = 0
        path.c_engaged = False
        c.set_capture(None)
        packets_out, concealed, fec, decode_errors, encode_errors, srtp_errors, send_errors, sent = c.take()
        stats = path.stats
        stats.packets_out += packets_out
        stats.concealed += concealed
        stats.fec += fec
        stats.decode_errors += decode_errors + encode_errors
        sender.sequence = c.sequence
        sender.timestamp = c.timestamp
        sender.marker_next = bool(c.marker_next)
        sender.packets_sent = c.packets_sent
        sender.octets_sent = c.octets_sent
        if sent:
            sender.last_timestamp = c.last_timestamp
            sender.last_sent_at = c.last_sent_at
            sender.forget_relayed_source()
        pcm, path.plc_gain = c.plc()
        if pcm is not None:
            path.last_pcm = np.frombuffer(pcm, "<i2")
        path.loss_ticks = c.loss_ticks
        path.loss_mark = (c.mark_received, c.mark_lost)
        inband = path.inband
        if inband is not None:
            silent, code = c.take_inband()
            inband.advance_silent(silent)
            if code >= 0:                             # the frame that handed back held a key: a digit maybe
                for event in inband.step(code, 160):
                    if isinstance(event, DtmfDigitEnded):
                        self.bridge._events.append(DtmfReceived(path.src_side, event.digit, event.duration_ms,
                                                                "inband"))
        if srtp_errors or send_errors:
            log.debug("transcoder: %d SRTP and %d send errors", srtp_errors, send_errors)

    def detach(self) -> None:
        """Stop for good (the path's codecs are about to be freed)."""
        self.c.detach()
        self.path.c_engaged = False

    def remove(self) -> None:
        """Out of the relay's tick."""
        self.c.detach()
        self.path.c_engaged = False
        if self.path.c_tick is self:
            self.path.c_tick = None
        self.relay.c.remove_transcoder(self.c)


_opus_set = False


def _set_opus() -> None:
    """Give the C tick libopus's function addresses (once)."""
    global _opus_set
    if not _opus_set:
        assert _c is not None
        _c.set_opus(*function_addresses())
        _opus_set = True
