"""The Linphone test harness reads linphonec's console lines as call events (tests/peers/linphone.py)."""
from __future__ import annotations

from peers.linphone import parse_events


def test_call_state_lines_become_events_with_linphonecs_call_ids():
    assert [(e.type, e.call_id, e.peer) for e in parse_events(
        "Receiving new incoming call from sip:alice@127.0.0.1, assigned id 1")] == [
        ("incoming", 1, "sip:alice@127.0.0.1")]
    [event] = parse_events("Media streams established with sip:1002@127.0.0.1 for call 2 (audio).")
    assert (event.type, event.call_id, event.param) == ("streams_running", 2, "audio")
    [event] = parse_events("Call 1 with sip:alice@127.0.0.1 ended (No error).")
    assert (event.type, event.call_id, event.param) == ("ended", 1, "No error")
    assert parse_events("transfer 1 --to-call 2") == []          # the echoed command is no event


def test_a_line_may_carry_two_messages_in_order():
    line = ("Performing attended transfer of call 1 to call 2The distant endpoint sip:alice@127.0.0.1 of call 1 "
            "has been transfered, you can safely close the call.")
    assert [(e.type, e.call_id) for e in parse_events(line)] == [("transferred", 1)]
    line = "Call 2 to sip:1002@127.0.0.1 ringing.Call 2 with sip:1002@127.0.0.1 connected."
    assert [e.type for e in parse_events(line)] == ["ringing", "connected"]
