"""Offload to the C data plane (docs/media.md "The C data plane"): which directions of a connection the C
``Relay`` forwards (passthrough) or delivers and ticks (transcoding), and keeping Python the one authority.

``RelayOffload`` is the part of ``MediaWorker`` that, before Python touches a connection (a datagram for
Python, an RTCP/timeout timer, a control command), pulls what C counted back into the Python objects
(``_touch``), and after it loads the rules again from them (``_commit``, before the relay reads its
sockets again). A direction is forwarded only while Python would do nothing but relay it.
"""
from __future__ import annotations

import asyncio
from typing import Any

from .bridge import Bridge, Side
from .jitter import FastJitterBuffer
from .legs import Connection, MediaLeg
from .relay import Forward, MediaRelay, TranscodeTick, fileno
from .webrtc import WebRtcLeg, WebRtcPort


class RelayOffload:
    """The C relay plans of a worker's connections (mixed into ``MediaWorker``)."""

    relay: MediaRelay | None
    port: WebRtcPort
    connections: dict[str, Connection]
    _touched: dict[str, Connection]
    _ticking: dict[str, Connection]
    _loop: asyncio.AbstractEventLoop

    def _touch(self, call: Connection) -> None:
        """Python is about to look at or change this call's media state: take back what C counted first."""
        if self.relay is None or call.call_id in self._touched:
            return
        self._touched[call.call_id] = call
        for forward in call.forwards.values():
            forward.pull()

    def _commit(self) -> None:
        """Load the forwards of the calls Python touched (runs before the relay reads its sockets again)."""
        if not self._touched:
            return
        touched, self._touched = self._touched, {}
        for call in touched.values():
            if self.connections.get(call.call_id) is call:
                for side in ("a", "b"):
                    self._load_forward(call, side)  # type: ignore[arg-type]
                bridge = call.bridge
                if bridge is not None and not bridge.idle:
                    self._ticking[call.call_id] = call   # what C does not tick, Python's clock does

    def _load_forward(self, call: Connection, side: Side) -> None:
        """Install, update or remove the C forward of the direction from ``side``: only while the Python path
        would do nothing with its packets but relay them (and keep their payloads when recorded/supervised):
        same codec, no prompt, DTMF tone or whisper towards the other side, both ends known and keyed."""
        relay = self.relay
        assert relay is not None
        forward = call.forwards.get(side)
        if call.bridge is not None and not call.bridge.passthrough:
            self._load_delivery(call, side, forward)
            return
        plan = self._forward_plan(call, side)
        if plan is None:
            if forward is not None:
                forward.remove()
                del call.forwards[side]
            return
        key, out, srtp_in, srtp_out, session, reception = plan
        bridge = call.bridge
        assert bridge is not None
        path = bridge.paths[side]
        if forward is not None and (forward.key != key or forward.reception is not reception):
            forward.remove()
            forward = None
        if forward is None:
            forward = call.forwards[side] = Forward(relay, key, path.stats, path.sender, session, reception)
        mapping = path.sender.relay_mapping()
        assert mapping is not None
        source, seq_off, ts_off, highest = mapping
        forward.load(in_pt=path.src.payload_type, source=source, out_pt=path.dst.payload_type, seq_off=seq_off,
                     ts_off=ts_off, highest=highest, hold_until=path.event_until, out=out, srtp_in=srtp_in,
                     srtp_out=srtp_out, captured=bridge.captured[side] if bridge.capture else None)

    def _load_delivery(self, call: Connection, side: Side, forward: Forward | None) -> None:
        """The receive side of a transcoded direction in C: packets of the leg's latched source (plain RTP) or of
        the browser's stream (decrypted) straight into the bridge path's jitter buffer, no datagram/event
        chain; and while the path is in its steady state, its whole tick in C too (``TranscodeTick``)."""
        relay = self.relay
        bridge = call.bridge
        assert relay is not None and bridge is not None
        path = bridge.paths[side]
        src = call.leg(side)
        plan: tuple[tuple[int, str, int], int, Any, Any, Any] | None = None
        if not bridge.closed and isinstance(path.jitter, FastJitterBuffer):
            if src.rtp is not None:
                session = src.rtp.session
                latched = session.latched_source
                fd = fileno(src.rtp.rtp.transport) if src.rtp.rtp is not None else None
                reception = session.sources.get(latched[1]) if latched is not None else None
                srtp = src.rtp.srtp
                handles = srtp.c_handles() if srtp is not None else None
                if latched is not None and fd is not None and reception is not None \
                        and (srtp is None or handles is not None):
                    plan = ((fd, latched[0][0], latched[0][1]), latched[1], handles[0] if handles else None,
                            session, reception)
            elif src.webrtc is not None:
                browser = self._browser_path(src.webrtc)
                session = src.rtcp
                latched = session.latched_source if session is not None else None
                source = latched[1] if latched is not None else path.jitter.ssrc
                reception = session.sources.get(source) if session is not None and source is not None else None
                if browser is not None and source is not None and (session is None or reception is not None):
                    plan = (browser[0], source, browser[1][0], session, reception)
        if plan is None:
            if forward is not None:
                forward.remove()
                del call.forwards[side]
            return
        key, source, srtp_in, session, reception = plan
        if forward is not None and (forward.key != key or forward.reception is not reception):
            forward.remove()
            forward = None
        if forward is None:
            forward = call.forwards[side] = Forward(relay, key, path.stats, None, session, reception)
        forward.load_delivery(in_pt=path.src.payload_type, source=source, srtp_in=srtp_in, jitter=path.jitter)
        output = self._output_plan(call.leg(path.dst_side)) if self._steady(bridge, path) else None
        if output is None:
            return                                 # Python's tick runs it (a DTMF event, a prompt, ...)
        if forward.tick is None:
            forward.tick = TranscodeTick(relay, bridge, side, owner=call.call_id)
        forward.tick.load(*output)

    def _engageable(self, call: Connection, side: Side) -> bool:
        """Whether a transcoded path that Python ticks could go to the C tick now: its delivery is in place,
        it is in its steady state and its output is known (checked each tick instead of pulling and loading
        the call again, which a call on hold or under a long prompt would otherwise pay 50 times a second)."""
        bridge = call.bridge
        assert bridge is not None
        path = bridge.paths[side]
        return (not path.c_engaged and path.transcode and side in call.forwards and self._steady(bridge, path)
                and self._output_plan(call.leg(path.dst_side)) is not None)

    def _steady(self, bridge: Bridge, path: Any) -> bool:
        """Whether a transcoded path's tick has nothing but audio to do (the C tick does exactly that, and
        watches for in-band keys): no DTMF event in progress or relayed, no in-band tone to play or digit
        sounding, nothing else sent towards its side (prompt, injected DTMF, a supervisor's whisper). A
        recorded or supervised path stays in C: the C tick appends its decoded frames to ``captured``."""
        rx = path.dtmf_rx
        return (path.tone is None and (path.inband is None or path.inband.idle)
                and path.dst_side not in bridge.muted and self._loop.time() >= path.event_until
                and (rx is None or rx.get_timer() is None)
                and (path.decoder is not None or path.src_law is not None)
                and (path.encoder is not None or path.dst_law is not None))

    def _output_plan(self, dst: MediaLeg) -> tuple[tuple[int, str, int], tuple[Any, int, int] | None] | None:
        """Where the data plane sends a leg's packets: ((fd, host, port), SRTP handles or None), or None when
        it cannot (no address yet, keys not ready, not a relay socket)."""
        if dst.rtp is not None:
            remote = dst.rtp.session.remote
            fd = fileno(dst.rtp.rtp.transport) if dst.rtp.rtp is not None else None
            if remote is None or fd is None:
                return None
            srtp_out = None
            if dst.rtp.srtp is not None:
                handles = dst.rtp.srtp.c_handles()
                if handles is None:
                    return None
                srtp_out = handles[1]
            return (fd, remote[0], remote[1]), srtp_out
        if dst.webrtc is not None:
            browser = self._browser_path(dst.webrtc)
            return (browser[0], browser[1][1]) if browser is not None else None
        return None

    def _browser_path(self, leg: WebRtcLeg) -> tuple[tuple[int, str, int], tuple[Any, Any]] | None:
        """A browser leg as the data plane sees it: ((ICE port fd, host, port), its SRTP ``c_handles()``), or
        None while it has no nominated address or keys (or the port is not a relay socket)."""
        fd = fileno(self.port.transport)
        address = leg.remote_address
        handles = leg.srtp.c_handles() if leg.srtp is not None else None
        if fd is None or address is None or handles is None:
            return None
        return (fd, address[0], address[1]), handles

    def _forward_plan(self, call: Connection, side: Side) -> tuple[Any, ...] | None:
        """(key, out, srtp_in, srtp_out, input session, its ReceptionStats) when the direction can be
        forwarded in C, else None."""
        bridge = call.bridge
        if bridge is None or not bridge.passthrough or bridge.closed:
            return None
        path = bridge.paths[side]
        if path.dst_side in bridge.muted or path.tone is not None:
            return None
        mapping = path.sender.relay_mapping()
        if mapping is None:
            return None                          # no source relayed yet: the first packet goes through Python
        source = mapping[0]
        src, dst = call.leg(side), call.leg(path.dst_side)
        session = reception = srtp_in = None
        if src.rtp is not None:
            session = src.rtp.session
            latched = session.latched_source
            fd = fileno(src.rtp.rtp.transport) if src.rtp.rtp is not None else None
            if latched is None or latched[1] != source or fd is None:
                return None
            reception = session.sources.get(source)
            if reception is None:
                return None
            key = (fd, latched[0][0], latched[0][1])
            if src.rtp.srtp is not None:
                handles = src.rtp.srtp.c_handles()
                if handles is None:
                    return None
                srtp_in = handles[0]
        elif src.webrtc is not None:
            browser = self._browser_path(src.webrtc)
            if browser is None:
                return None
            key, handles = browser
            session = src.rtcp
            if session is not None:
                latched = session.latched_source
                reception = session.sources.get(source) if latched is not None and latched[1] == source else None
                if reception is None:
                    return None
            srtp_in = handles[0]
        else:
            return None
        output = self._output_plan(dst)
        if output is None:
            return None
        out, srtp_out = output
        return key, out, srtp_in, srtp_out, session, reception

