"""Registrar binding logic (RFC 3261 §10.3), sans-IO.

`process_register` takes a REGISTER, the AOR's current bindings and the time, and decides the new
binding set and the response. The proxy (an adapter with the location service) fetches and saves.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import SipParseError
from .location import Binding
from .message import Request
from .uri import is_digits, SipUri, unquote


@dataclass(slots=True)
class RegistrarPolicy:
    """Expiry limits of the registrar."""

    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600


@dataclass(slots=True)
class RegisterOutcome:
    """What to answer and, for 200, the binding set to store (None: leave the location service alone)."""

    status: int
    reason: str | None = None
    bindings: list[Binding] | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)


def _contact_key(uri: SipUri) -> str:
    """Bindings are matched by URI equivalence (§10.3 step 7 / §19.1.4); this key approximates it cheaply."""
    return str(uri)


def process_register(req: Request, aor: str, existing: list[Binding], now: float, policy: RegistrarPolicy,
                     received: str | None = None, node: str = "", node_uri: str = "") -> RegisterOutcome:
    """Apply a REGISTER to the current bindings of `aor` (§10.3 steps 6–8).

    `received` is the flow token the REGISTER came over; `node` / `node_uri` name the callpath node that
    holds that flow and where other nodes reach it (sipcore/cluster.py), stored in each binding it writes."""
    call_id = req.call_id
    cseq = req.cseq.seq
    header_expires = req.expires
    if req.contact_star:
        # `Contact: *` must stand alone with Expires: 0 (§10.3 step 6)
        if header_expires != 0 or len(req.get_all("contact")) != 1:
            return RegisterOutcome(400, "Bad Request (Contact: * needs Expires: 0 and no other Contact)")
        for b in existing:
            if b.call_id == call_id and cseq <= b.cseq:
                return RegisterOutcome(500, "Server Internal Error (out-of-order REGISTER)")
        return RegisterOutcome(200, bindings=[], headers=[])

    contacts = req.contacts
    path = tuple(req.get_all("path")) if "path" in req.option_tags("supported") else ()
    user_agent = req.get("user-agent") or ""
    by_key = {b.contact: b for b in existing}
    changed = False
    for na in contacts:
        uri = na.uri
        exp_param = na.params.get("expires")
        if exp_param is not None:
            if not is_digits(exp_param):
                raise SipParseError(f"bad expires parameter {exp_param!r}")
            expires = int(exp_param)
        elif header_expires is not None:
            expires = header_expires
        else:
            expires = policy.default_expires
        if 0 < expires < policy.min_expires:
            return RegisterOutcome(423, headers=[("Min-Expires", str(policy.min_expires))])
        expires = min(expires, policy.max_expires)
        key = _contact_key(uri)
        old = by_key.get(key)
        if old is not None and old.call_id == call_id and cseq <= old.cseq:
            return RegisterOutcome(500, "Server Internal Error (out-of-order REGISTER)")
        q_param = na.params.get("q")
        try:
            q = float(q_param) if q_param is not None else 1.0
        except ValueError:
            raise SipParseError(f"bad q value {q_param!r}") from None
        if not 0.0 <= q <= 1.0:
            raise SipParseError(f"q value out of range: {q_param!r}")
        changed = True
        if expires == 0:
            by_key.pop(key, None)
            continue
        reg_id = na.params.get("reg-id")
        by_key[key] = Binding(
            aor=aor, contact=key, expires_at=now + expires, q=q, call_id=call_id, cseq=cseq, path=path,
            received=received, user_agent=user_agent,
            instance=unquote(na.params.get("+sip.instance") or ""),
            reg_id=int(reg_id) if reg_id and is_digits(reg_id) else None,
            node=node, node_uri=node_uri,
        )
    bindings = [b for b in by_key.values() if b.expires_at > now]
    headers = [("Path", p) for p in path]
    return RegisterOutcome(200, bindings=bindings if changed else None, headers=headers)


def contact_headers(bindings: list[Binding], now: float) -> list[tuple[str, str]]:
    """Contact values for a 200 to REGISTER: every current binding with its remaining expiry (§10.3 step 8)."""
    out = []
    for b in bindings:
        remaining = max(0, int(b.expires_at - now + 0.5))
        q = "" if b.q == 1.0 else f";q={b.q:g}"
        out.append(("Contact", f"<{b.contact}>;expires={remaining}{q}"))
    return out
