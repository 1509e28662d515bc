"""Session timers (RFC 4028): negotiation, the sans-IO timer, and refresh/expiry between two UAs."""
from __future__ import annotations

import asyncio

from sipcore.message import Request, Response
from sipcore.session_timer import SessionTimer, TimerTerms, negotiate_uac, negotiate_uas, parse_session_expires
from sipcore.uri import SipUri
from sipcore.ua import Answered, Confirmed, Ended

from test_ua import OFFER, ANSWER, expect, make_endpoint


def invite(*headers: tuple[str, str]) -> Request:
    req = Request("INVITE", SipUri.parse("sip:bob@example.test"))
    for name, value in headers:
        req.add(name, value)
    return req


def test_parse_session_expires() -> None:
    assert parse_session_expires("1800;refresher=uac") == (1800, "uac")
    assert parse_session_expires(" 90 ; refresher = UAS") == (90, "uas")
    assert parse_session_expires("1800") == (1800, None)
    assert parse_session_expires("soon") is None and parse_session_expires(None) is None


def test_negotiate_as_uas() -> None:
    assert negotiate_uas(invite()) == (None, [], 0)
    terms, headers, status = negotiate_uas(invite(("Session-Expires", "1800"), ("Supported", "timer")))
    assert status == 0 and terms == TimerTerms(1800, False, "uac")        # a UAC that can refreshes
    assert headers == [("Session-Expires", "1800;refresher=uac"), ("Require", "timer")]
    terms, headers, _ = negotiate_uas(invite(("Session-Expires", "600")))  # no timer support: we refresh
    assert terms == TimerTerms(600, True, "uas") and ("Require", "timer") not in headers
    assert negotiate_uas(invite(("Session-Expires", "60"))) == (None, [("Min-SE", "90")], 422)
    terms, _, _ = negotiate_uas(invite(("Session-Expires", "900;refresher=uas"), ("Supported", "timer")))
    assert terms.we_refresh


def test_negotiate_as_uac_and_the_timer() -> None:
    resp = Response(200)
    resp.add("Session-Expires", "120;refresher=uac")
    terms = negotiate_uac(resp)
    assert terms == TimerTerms(120, True, "uac")
    st = SessionTimer(terms, now=1000.0)
    assert st.due() == ("refresh", 1060.0)
    st.refreshed(1050.0)
    assert st.due() == ("refresh", 1110.0)
    other = SessionTimer(TimerTerms(120, False, "uas"), now=1000.0)
    assert other.due() == ("expire", 1000.0 + 120 - 32)
    assert SessionTimer(TimerTerms(90, False, "uas"), 0.0).due() == ("expire", 60.0)
    assert negotiate_uac(Response(200)) is None


async def test_we_refresh_with_update_and_the_peer_expires_a_silent_call() -> None:
    caller, callee = await make_endpoint(), await make_endpoint()
    try:
        callee.ua.min_se = caller.ua.min_se = 2
        # the caller asks for a 2 s session and names the callee (us) as refresher
        out = caller.ua.invite(f"sip:bob@127.0.0.1:{callee.port}", "<sip:alice@127.0.0.1>", OFFER,
                               headers=[("Session-Expires", "2;refresher=uas")])
        inc = await asyncio.wait_for(callee.ua.incoming.get(), 2)
        inc.answer(ANSWER)
        ok = await expect(out, Answered)
        await expect(inc, Confirmed)
        del ok
        assert any(b"Session-Expires: 2;refresher=uas" in d for d in callee.sent if d.startswith(b"SIP/2.0 200"))
        await asyncio.sleep(2.5)          # two refreshes (every second), and the call lives on
        refreshes = callee.count("UPDATE ")
        assert refreshes >= 2 and not out.is_final and not inc.is_final
        out.hangup()
        await expect(inc, Ended)

        # now a caller that never refreshes although it is the refresher: the callee ends the call
        caller.ua.supported = ("100rel",)          # no "timer": it will not refresh
        out = caller.ua.invite(f"sip:bob@127.0.0.1:{callee.port}", "<sip:alice@127.0.0.1>", OFFER,
                               headers=[("Session-Expires", "2;refresher=uac")])
        inc = await asyncio.wait_for(callee.ua.incoming.get(), 2)
        inc.answer(ANSWER)
        await expect(out, Answered)
        await expect(inc, Confirmed)
        ended = await expect(inc, Ended, timeout=4)
        assert (ended.by, ended.reason) == ("timeout", "session timer expired")
        assert (await expect(out, Ended)).reason == "BYE"
    finally:
        for ep in (caller, callee):
            ep.ua.close()
            await ep.stack.close()
