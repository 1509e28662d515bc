"""callpath's back-to-back mode between a SIPp UAC and a SIPp UAS over real sockets.

Calls to the configured number are answered by callpath as a UAS and re-originated as a UAC to the
target: two dialogs with their own Call-IDs, the caller's SDP carried across, BYE/CANCEL propagated.
"""
from __future__ import annotations

import pytest

from sipp_harness import free_udp_port, run_sipp, start_callpath, start_sipp

pytestmark = pytest.mark.integration

ALICE = ("alice", "secret", "1001")


def test_b2bua_call_and_cancel(tmp_path):
    uas_port = free_udp_port()
    target = f"sip:callee@127.0.0.1:{uas_port}"
    server = start_callpath(tmp_path, users=[ALICE], sip={"b2bua": [{"number": "9000", "target": target}]})
    try:
        with start_sipp("uas.xml", local_port=uas_port, calls=1, timeout=20) as uas:
            result = run_sipp("uac.xml", server.target, local_port=free_udp_port(), users_csv=[ALICE[:2]],
                              service="9000", duration_ms=200, keys=server.sipp_keys())
            result.check(calls=1)
            uas_result = uas.wait(timeout=15)
        uas_result.check(calls=1)
        # the callee leg is a new dialog: callpath's own Call-ID, not the caller's
        caller_call_id = "1-"  # SIPp's [call_id] is "<n>-<pid>@<ip>"
        invite_at_uas = uas_result.log[uas_result.log.find("INVITE sip:callee"):]
        assert invite_at_uas, uas_result.log
        call_id_line = next(l for l in invite_at_uas.splitlines() if l.lower().startswith("call-id:"))
        assert not call_id_line.split(":", 1)[1].strip().startswith(caller_call_id)
        assert "m=audio" in invite_at_uas  # the caller's offer was carried across

        with start_sipp("uas_cancel.xml", local_port=uas_port, calls=1, timeout=20) as uas:
            result = run_sipp("uac_cancel.xml", server.target, local_port=free_udp_port(),
                              users_csv=[ALICE[:2]], service="9000", duration_ms=300, keys=server.sipp_keys())
            result.check(calls=1)
            uas.wait(timeout=15).check(calls=1)
    finally:
        server.stop()
