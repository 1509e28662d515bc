"""The rtpengine-style verbs of one two-party call, by Call-ID and tag (docs/media.md "Control protocol").

``CallVerbs`` is the part of ``MediaWorker`` that keeps the ng-protocol shape the B2BUA speaks: a call is the
connection of two legs named ``<call_id>/<from_tag>`` and ``<call_id>/<to_tag>`` (made by ``offer`` and
``answer``, ``media/negotiation.py``); ``play``, ``stop_play``, ``dtmf`` by tag and ``record`` (the caller's
leg: left the caller, right what it hears) are the leg verbs on those legs; ``delete`` closes both.
"""
from __future__ import annotations

from typing import Any

from .legs import Connection
from .sdp_rules import MediaError


class CallVerbs:
    """Calls by Call-ID (mixed into ``MediaWorker``)."""

    calls: dict[str, Connection]
    connections: dict[str, Connection]
    _ticking: dict[str, Connection]

    # -- the rtpengine-style verbs by Call-ID and tag ---------------------------------------------------
    def query(self, call_id: str) -> dict[str, Any]:
        """Per-leg statistics of a call (packets, loss, jitter, RTT) and its mode."""
        call = self.calls.get(call_id)
        if call is None:
            raise MediaError(f"unknown call {call_id!r}")
        self._touch(call)
        bridge_stats = call.bridge.stats() if call.bridge is not None else {}
        legs = {str(leg.tag): self._leg_entry(leg, bridge_stats) for leg in call.legs()}
        mode = bridge_stats.get("mode", {}).get("passthrough") if bridge_stats else None
        result: dict[str, Any] = {"call_id": call_id, "passthrough": mode, "legs": legs}
        if call.members:
            members: dict[str, Any] = {}
            for tag, member in call.members.items():
                jitter = member.jitter.stats
                entry = {"transport": member.leg.kind, "codec": member.codec.encoding, "mode": member.mode,
                         "whisper_to": call.leg(member.target).tag if member.target else None,  # type: ignore[arg-type]
                         "packets_in": jitter.received, "lost": jitter.lost, "late": jitter.late,
                         "packets_out": member.sender.packets_sent}
                if member.leg.webrtc is not None:
                    entry["connected"] = member.leg.webrtc.connected
                members[tag] = entry
            result["members"] = members
        return result

    def transcoded(self, call_id: str) -> bool | None:
        """Whether the call's bridge transcodes (None: unknown call or not answered yet)."""
        call = self.calls.get(call_id)
        if call is None or call.bridge is None:
            return None
        return not call.bridge.passthrough

    def _bridged(self, call_id: str) -> Connection:
        call = self.calls.get(call_id)
        if call is None:
            raise MediaError(f"unknown call {call_id!r}")
        if call.bridge is None:
            raise MediaError(f"call {call_id!r} is not answered yet (no media bridge)")
        self._touch(call)
        self._ticking[call_id] = call             # a command may give the clock work (prompt, recording...)
        return call

    async def call_play(self, call_id: str, tag: str, file: str | None = None, beep_spec: Any = None,
                        loop: bool = False) -> dict[str, Any]:
        """``play`` by Call-ID and tag: a file or a beep to that leg instead of the other party's audio."""
        leg = self._bridged(call_id).by_tag(tag)
        result = await self.play(leg.name, [file] if file is not None else None, loop=loop, beep_spec=beep_spec)
        self._bridged(call_id)
        return {"tag": tag, "duration": result["duration"], "frames": result["frames"]}

    def call_stop_play(self, call_id: str, tag: str) -> dict[str, Any]:
        leg = self._bridged(call_id).by_tag(tag)
        return {"tag": tag, "stopped": self.stop_play(leg.name)["stopped"]}

    def call_dtmf(self, call_id: str, tag: str, digits: str, duration_ms: int = 100) -> dict[str, Any]:
        leg = self._bridged(call_id).by_tag(tag)
        result = self.dtmf(leg.name, digits, duration_ms)
        return {"tag": tag, "digits": digits, "mode": result["mode"]}

    def call_record(self, call_id: str, path: str) -> dict[str, Any]:
        """``record`` by Call-ID: the caller's leg (left the caller, right what it hears: the callee)."""
        call = self._bridged(call_id)
        if call.caller.recorder is not None:
            raise MediaError(f"call {call_id!r} is already being recorded to {call.caller.recorder.path}")
        result = self.record(call.caller.name, path)
        return {"path": result["path"], "channels": {"left": call.caller.tag, "right": call.callee.tag}}

    def call_stop_record(self, call_id: str) -> dict[str, Any]:
        call = self._bridged(call_id)
        if call.caller.recorder is None:
            raise MediaError(f"call {call_id!r} is not being recorded")
        result = self._stop_recording(call.caller)
        return {"path": result["path"], "duration": result["duration"]}

    async def delete(self, call_id: str) -> dict[str, Any]:
        """Tear a call down (DTLS close_notify, RTCP BYE, ports back to the range); returns its final stats."""
        call = self.calls.get(call_id)
        if call is None:
            raise MediaError(f"unknown call {call_id!r}")
        stats = self.query(call_id)
        self._drop(call)
        return stats

    def _drop(self, call: Connection) -> None:
        self.calls.pop(call.call_id, None)
        self._unjoin(call)
        self.connections.pop(call.call_id, None)
        for leg in call.legs():
            self._forget_leg(leg)
