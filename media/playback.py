"""What is played to a leg and recorded of it, whatever it is connected to (docs/callcontrol.md "Per leg").

``LegPlayback`` is the part of ``MediaWorker`` behind ``play`` (one file, a playlist played as one, a beep;
``loop`` for music on hold; ``mix`` mixes it over what the leg hears instead of replacing it), ``stop_play``,
``dtmf`` (RFC 4733 events on the leg's stream when it negotiated telephone-event, else tones in-band) and
``record`` (a two-channel 8 kHz WAV: left what the leg sends, right what it hears, across connect,
disconnect, re-connect and conferences). Prompt files are decoded and encoded in an executor
(``PromptCache.preload``), so the 20 ms clock never decodes. The clock calls the sources each tick
(``MediaWorker._tick_sources``, ``_leg_output``, ``_tick_composed``).
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from .bridge import PCM_RATE
from .dtmf import digit_to_event
from .legs import DtmfSource, MediaLeg, Overlay, PromptSource, dtmf_prompt
from .player import Player, PlayerError, Prompt, PromptCache, beep
from .recorder import CallRecorder, RecorderError
from .sdp_rules import MediaError

if TYPE_CHECKING:
    from .legs import Connection

log = logging.getLogger("media.worker")

_PLAYLISTS = 16                   # playlists kept encoded (music on hold for every parked caller: encoded once)


class LegPlayback:
    """Prompts, overlays, injected DTMF and recordings of legs (mixed into ``MediaWorker``)."""

    prompts: PromptCache
    _playlists: dict[tuple[Prompt, ...], Prompt]
    _ticking: dict[str, Connection]
    _loop: asyncio.AbstractEventLoop

    # -- prompts, overlays, injected DTMF ---------------------------------------------------------------
    def _start_source(self, leg: MediaLeg, source: PromptSource | DtmfSource) -> None:
        """Replace what ``leg`` hears with ``source`` (a running prompt or DTMF on that leg is cut off)."""
        old = leg.source
        if old is not None:
            old.stop()
            self._end_source(leg, old, "replaced")
        leg.source = source
        sender = leg.sender
        assert sender is not None
        sender.start_talkspurt()
        if leg.connection is not None:
            self._sync_muted(leg.connection)
        else:
            self._wake(leg)

    def _end_source(self, leg: MediaLeg, source: PromptSource | DtmfSource, reason: str = "done") -> None:
        """Give the leg what it heard before back and tell the controller."""
        if leg.source is not source:
            return
        leg.source = None
        if leg.connection is not None:
            self._sync_muted(leg.connection)
        sender = leg.sender
        if sender is not None:
            sender.start_talkspurt()
            # telephone-events were numbered by hand: relayed audio coming back needs a fresh seq/ts mapping
            sender.forget_relayed_source()
        self._emit({"event": source.done_event, **leg.ids(), "reason": reason})

    def _end_overlay(self, leg: MediaLeg, overlay: Overlay, reason: str = "done") -> None:
        if leg.overlay is not overlay:
            return
        leg.overlay = None
        if leg.connection is not None:
            self._sync_muted(leg.connection)
        self._emit({"event": overlay.done_event, **leg.ids(), "reason": reason, "mix": True})

    def _end_replacing(self, leg: MediaLeg, reason: str) -> None:
        """Stop a prompt or injected DTMF that replaces what the leg hears."""
        source = leg.source
        if source is not None:
            source.stop()
            self._end_source(leg, source, reason)

    async def _load_prompt(self, files: list[str] | None, beep_spec: Any, codec: str | None) -> Prompt:
        """The prompt of a ``play``: one file, a playlist played as one, or a beep; decoded (and encoded in
        ``codec``) in an executor, so the 20 ms clock never decodes."""
        codecs = (codec,) if codec else ()
        if files and beep_spec not in (None, False):
            raise MediaError("play: give either files or 'beep', not both")
        if files:
            if not isinstance(files, list) or not all(isinstance(f, str) and f for f in files):
                raise MediaError("play: 'files' must be a list of paths on the worker's host")
            single = len(files) == 1
            try:
                prompts = tuple([await self._loop.run_in_executor(None, self.prompts.preload, f,
                                                                  codecs if single else ())
                                 for f in files])
            except PlayerError as exc:
                raise MediaError(f"play: {exc}") from None
            if single:
                return prompts[0]
            playlists = self._playlists
            cached = playlists.pop(prompts, None)   # the files' prompts (a changed file is a new one) as the key
            if cached is None:
                cached = Prompt.from_samples(np.concatenate([p.samples for p in prompts]), PCM_RATE,
                                             name=" + ".join(files))
                while len(playlists) >= _PLAYLISTS:
                    del playlists[next(iter(playlists))]
            playlists[prompts] = cached              # most recently used last
            prompt = cached
        elif beep_spec not in (None, False):
            spec = beep_spec if isinstance(beep_spec, dict) else {}
            try:
                prompt = beep(float(spec.get("freq", 1000.0)), int(spec.get("ms", 200)))
            except (PlayerError, TypeError, ValueError) as exc:
                raise MediaError(f"play: bad beep {beep_spec!r}: {exc}") from None
        else:
            raise MediaError("play: needs 'file' or 'files' (paths on the worker's host) or 'beep'")
        if codec:
            try:
                await self._loop.run_in_executor(None, prompt.frames, codec)
            except PlayerError as exc:
                raise MediaError(f"play: {exc}") from None
        return prompt

    async def play(self, name: str, files: list[str] | None = None, loop: bool = False, mix: bool = False,
                   beep_spec: Any = None) -> dict[str, Any]:
        """Play ``files`` (a playlist, any format PyAV reads; ``loop`` for music on hold) or a beep to leg
        ``name``: instead of what it hears, or with ``mix`` over it. ``play-done`` follows when a prompt that
        does not loop ends, or is stopped/replaced."""
        leg = self._ready_leg(name)
        codec = leg.codec.name  # type: ignore[union-attr]
        prompt = await self._load_prompt(files, beep_spec, None if mix else codec)
        leg = self._ready_leg(name)               # the leg may have gone while the prompt loaded
        if mix:
            old = leg.overlay
            if old is not None:
                old.stop()
                self._end_overlay(leg, old, "replaced")
            overlay = leg.overlay = Overlay(prompt, bool(loop))
            if leg.connection is not None:
                self._sync_muted(leg.connection)
            else:
                self._wake(leg)
            frames = overlay.player.frame_count
        else:
            player = Player(prompt, leg.codec.name, loop=bool(loop))  # type: ignore[union-attr]
            self._start_source(leg, PromptSource(player))
            frames = player.frame_count
        return {"leg": name, "duration": round(prompt.duration, 3), "frames": frames}

    def stop_play(self, name: str) -> dict[str, Any]:
        """Stop what is played to leg ``name`` (a prompt, injected DTMF, an overlay)."""
        leg = self._leg(name)
        stopped = False
        if leg.source is not None:
            self._end_replacing(leg, "stopped")
            stopped = True
        overlay = leg.overlay
        if overlay is not None:
            overlay.stop()
            self._end_overlay(leg, overlay, "stopped")
            stopped = True
        return {"leg": name, "stopped": stopped}

    def dtmf(self, name: str, digits: str, duration_ms: int = 100) -> dict[str, Any]:
        """Send ``digits`` to leg ``name``: RFC 4733 events if it negotiated telephone-event, else tones."""
        leg = self._ready_leg(name)
        codec = leg.codec
        assert codec is not None
        if not isinstance(digits, str) or not digits:
            raise MediaError("dtmf: 'digits' must be a non-empty string of 0-9 * # A-D")
        try:
            for digit in digits:
                digit_to_event(digit)
        except (KeyError, ValueError):
            raise MediaError(f"dtmf: {digits!r} is not a string of DTMF digits (0-9 * # A-D)") from None
        if isinstance(duration_ms, bool) or not isinstance(duration_ms, int) or not 40 <= duration_ms <= 5000:
            raise MediaError(f"dtmf: duration_ms must be an integer within 40..5000, not {duration_ms!r}")
        if leg.dtmf_mode == "info":
            raise MediaError(f"dtmf: leg {name!r} takes DTMF as SIP INFO: send it in the signalling")
        if codec.event_payload_type is not None:
            source: PromptSource | DtmfSource = DtmfSource(digits.upper(), duration_ms, codec.event_clock_rate)
            mode = "rfc4733"
        else:
            source = PromptSource(Player(dtmf_prompt(digits.upper(), duration_ms), codec.name), "dtmf-sent")
            mode = "inband"
        self._start_source(leg, source)
        return {"leg": name, "digits": digits, "mode": mode}

    # -- recording ------------------------------------------------------------------------------------
    def record(self, name: str, path: str) -> dict[str, Any]:
        """Record leg ``name`` to a two-channel 8 kHz WAV: left what it sends, right what it hears, whatever it
        is connected to over time (crash-safe: ``CallRecorder``)."""
        leg = self._ready_leg(name)
        if leg.recorder is not None:
            raise MediaError(f"leg {name!r} is already being recorded to {leg.recorder.path}")
        if not isinstance(path, str) or not path:
            raise MediaError("record: missing 'path'")
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise MediaError(f"record: directory {directory} does not exist")
        if leg.connection is not None:
            self._touch(leg.connection)
        try:
            leg.recorder = CallRecorder(path, channels=2, sample_rate=PCM_RATE)
        except RecorderError as exc:
            raise MediaError(f"record: {exc}") from None
        if leg.connection is not None:
            self._update_capture(leg.connection)
            self._ticking[leg.connection.call_id] = leg.connection
        else:
            self._wake(leg)
        return {"leg": name, "path": path, "channels": {"left": "sent", "right": "heard"}}

    def stop_record(self, name: str) -> dict[str, Any]:
        """Finish leg ``name``'s recording (header completed): its path and length."""
        leg = self._leg(name)
        if leg.recorder is None:
            raise MediaError(f"leg {name!r} is not being recorded")
        return self._stop_recording(leg)

    def _stop_recording(self, leg: MediaLeg) -> dict[str, Any]:
        recorder = leg.recorder
        assert recorder is not None
        leg.recorder = None
        if leg.connection is not None:
            self._touch(leg.connection)
            self._update_capture(leg.connection)
        try:
            recorder.close()
        except RecorderError as exc:
            log.warning("closing recording %s: %s", recorder.path, exc)
        seconds = round(recorder.duration, 2)
        return {"leg": leg.name, "path": recorder.path, "seconds": seconds, "duration": seconds}
