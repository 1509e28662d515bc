"""Registration and connection events: what happened to a binding, for whoever must know at once (the ACD).

The location service (sipcore/location.py) publishes one event per binding change, after the change is
stored, to every subscriber of its `RegistrationEvents` hub:

| event | when |
|---|---|
| `Registered` | a contact is bound to an AOR that did not have it (a first REGISTER, a new device) |
| `Refreshed` | a REGISTER renews (or re-routes: new flow, q, path) a contact the AOR already had |
| `Unregistered` | a REGISTER removes a contact (`expires=0`, `Contact: *`) or replaces the set without it |
| `Expired` | a binding's time ran out: found by the purge (every second in the server), not only on lookup |
| `FlowLost` | the TCP/TLS/WebSocket connection a binding was registered over closed (see below) |

`FlowLost.removed` says whether the binding went with its connection (flow-only contacts: WebSocket,
`.invalid` hosts, RFC 5626 outbound) or stays reachable at its Contact URI (`binding` is then the updated one,
without the flow; `transport`/`source`/`node` still describe the lost connection).

A binding ends with exactly one of `Unregistered`, `Expired` or `FlowLost(removed=True)`; an ACD that
tracks agent availability marks an AOR unavailable when such an event says `remaining == 0`.

Subscribers are plain callables taking the event. One that raises is logged and the others still run; the
registration that caused the event is never affected. A subscriber that returns an awaitable (an `async def`)
gets it scheduled as a task on the running loop, its failure logged likewise. Events are delivered on the node
where the change happened (the node that answered the REGISTER, ran the purge or held the connection).
"""
from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .location import Binding

__all__ = [
    "BindingEvent",
    "Registered",
    "Refreshed",
    "Unregistered",
    "Expired",
    "FlowLost",
    "RegistrationEvent",
    "RegistrationEvents",
]

log = logging.getLogger("callpath.sip.regevents")


@dataclass(frozen=True, slots=True)
class BindingEvent:
    """What every registration event carries.

    `binding` is the binding concerned (for removals: as it was last stored); `transport` and `source` are
    the flow it was registered over (`source` is None for a binding saved without one); `node` is the id of
    the callpath node holding that flow ("" on a single node); `at` is the location service's clock when the
    change was stored; `remaining` is how many live bindings the AOR has after the change.
    """

    aor: str
    binding: Binding
    transport: str
    source: tuple[str, int] | None
    node: str
    at: float
    remaining: int

    @property
    def contact(self) -> str:
        """The bound Contact URI."""
        return self.binding.contact


@dataclass(frozen=True, slots=True)
class Registered(BindingEvent):
    """A new contact for the AOR."""


@dataclass(frozen=True, slots=True)
class Refreshed(BindingEvent):
    """A contact the AOR had was registered again (its new expiry is `binding.expires_at`)."""


@dataclass(frozen=True, slots=True)
class Unregistered(BindingEvent):
    """A REGISTER removed the contact."""


@dataclass(frozen=True, slots=True)
class Expired(BindingEvent):
    """The contact's registration ran out without a refresh."""


@dataclass(frozen=True, slots=True)
class FlowLost(BindingEvent):
    """The connection the contact registered over closed. `removed`: the binding is gone (it could only be
    reached over that connection); otherwise it stays, without the flow, reachable at its Contact URI."""

    removed: bool = True


RegistrationEvent = Registered | Refreshed | Unregistered | Expired | FlowLost
Subscriber = Callable[[BindingEvent], Any]


class RegistrationEvents:
    """A synchronous fan-out of registration events to subscribers (`subscribe(callback) -> unsubscribe`)."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback(event)` for every event from now on; returns the function that unsubscribes."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            try:
                self._subscribers.remove(callback)
            except ValueError:
                pass  # already unsubscribed

        return unsubscribe

    def __len__(self) -> int:
        return len(self._subscribers)

    def publish(self, event: BindingEvent) -> None:
        """Hand `event` to every subscriber in subscription order; a failing subscriber is logged and skipped."""
        for callback in list(self._subscribers):
            try:
                result = callback(event)
            except Exception:  # noqa: BLE001 - a subscriber's bug must never break registration
                log.exception("registration event subscriber %r failed on %s for %s", callback,
                              type(event).__name__, event.aor)
                continue
            if inspect.isawaitable(result):
                self._schedule(result, callback, event)

    def _schedule(self, awaitable: Any, callback: Subscriber, event: BindingEvent) -> None:
        try:
            task = asyncio.ensure_future(awaitable)
        except RuntimeError:  # no running loop
            log.error("registration event subscriber %r returned an awaitable outside an event loop", callback)
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            return
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("registration event subscriber %r failed on %s for %s", callback,
                          type(event).__name__, event.aor, exc_info=t.exception())

        task.add_done_callback(done)
