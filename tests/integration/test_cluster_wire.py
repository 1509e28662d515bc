"""Registration events and two nodes, with real peers and real callpath processes.

- A JsSIP agent (Node.js, tests/js/jssip_agent.js) registers over /ws; its process is killed (a browser tab
  closed: no un-REGISTER, the WebSocket just drops). callpath removes the binding and logs FlowLost at once,
  not at expiry (600 s), and a SIPp INVITE to that user gets 480 straight away instead of ringing a dead flow.
- Two callpath processes share one Redis (a free database, distinct node ids). A SIPp UAS registers over TCP
  on node A and takes calls on that connection (an out-of-call scenario); a SIPp UAC calls the user through
  node B. B cannot use A's connection, so it sends the INVITE to A with a signed Route naming the connection,
  and A relays it on that connection: the call completes, and the UAS's INVITE shows both nodes' Vias.
"""
from __future__ import annotations

import json
import random
import re
import signal
import urllib.request
from collections.abc import Iterator

import pytest
import redis

from sipp_harness import SIPP_DIR, free_udp_port, require_sipp, run_sipp, start_callpath, start_sipp
from test_jssip import ALICE, BOB, MD5_ONLY, callpath, node, run_agent, sipp_received  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


def _status(server) -> dict:
    with urllib.request.urlopen(server.web_url + "/api/v1/status", timeout=5) as resp:
        return json.loads(resp.read())


def test_a_closed_browser_tab_unregisters_at_once(callpath, run_agent, tmp_path):  # noqa: F811
    require_sipp()
    server = callpath(sip=MD5_ONLY, media={"enabled": False})
    agent = run_agent(server, "--on-invite", "answer", "--register-expires", "600")
    assert agent.wait_for(("registered", "registrationFailed"))["event"] == "registered", agent.output()
    server.wait_for_line(lambda line: "registration Registered sip:alice@" in line and " over ws " in line,
                         timeout=5)
    assert _status(server)["bindings"] == 1
    mark = len(server.output().splitlines())

    agent.proc.send_signal(signal.SIGKILL)  # the tab is gone: no un-REGISTER, the TCP connection just closes
    agent.proc.wait(timeout=5)
    lost = server.wait_for_line(lambda line: "registration FlowLost sip:alice@" in line, timeout=10, start=mark)
    assert "over ws 127.0.0.1:" in lost and "(removed: True); 0 left" in lost, lost
    assert _status(server)["bindings"] == 0

    # a call to the agent now: 480 at once, nothing forwarded to the dead flow
    result = run_sipp("uac.xml", server.target, local_port=free_udp_port(), users_csv=[BOB[:2]],
                      service=ALICE[2], keys=server.sipp_keys(), timeout=10, workdir=tmp_path / "sipp-uac")
    assert result.failed == 1 and sipp_received(result.log, 480), result.log
    assert not sipp_received(result.log, 180) and not sipp_received(result.log, 408), result.log
    assert not re.search(r">>> [^\n]* ws [^\n]*\nINVITE ", server.output()), "an INVITE went to the dead flow"


def test_a_graceful_unregister_is_published_as_unregistered(callpath, run_agent):  # noqa: F811
    server = callpath(sip=MD5_ONLY, media={"enabled": False})
    agent = run_agent(server)
    assert agent.wait_for(("registered", "registrationFailed"))["event"] == "registered", agent.output()
    agent.stop()  # SIGTERM: JsSIP un-REGISTERs, then closes the WebSocket
    line = server.wait_for_line(lambda line: "registration Unregistered sip:alice@" in line
                                or "registration FlowLost sip:alice@" in line, timeout=10)
    assert "Unregistered" in line, line


# ------------------------------------------------------------------------------------ two nodes


@pytest.fixture
def free_redis_db(redis_url: str) -> Iterator[str]:
    """The URL of a Redis database (1-14) holding no keys, emptied of callpath's keys afterwards."""
    base = redis_url.rsplit("/", 1)[0]
    candidates = list(range(1, 15))
    random.shuffle(candidates)
    for db in candidates:
        client = redis.Redis.from_url(f"{base}/{db}")
        try:
            if client.dbsize() == 0:
                break
        finally:
            client.close()
    else:
        pytest.skip("no empty Redis database among 1-14")
    url = f"{base}/{db}"
    yield url
    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter(match="callpath:loc:*", count=500):
            client.delete(key)
    finally:
        client.close()


def test_a_call_through_node_b_reaches_a_tcp_uas_registered_on_node_a(tmp_path, free_redis_db):
    require_sipp()
    users = [ALICE, BOB]
    node_a = start_callpath(tmp_path / "node-a", users=users, sip_trace=True,
                            sip={"location": free_redis_db, "node_id": "node-a"}, media={"enabled": False})
    try:
        node_b = start_callpath(tmp_path / "node-b", users=users, sip_trace=True,
                                sip={"location": free_redis_db, "node_id": "node-b"}, media={"enabled": False})
    except BaseException:
        node_a.stop()
        raise
    uas_port = free_udp_port(also_tcp=True)
    uas = None
    try:
        assert node_a.domain == node_b.domain  # one SIP domain: the same AORs on both nodes
        uas = start_sipp("register_then_wait.xml", node_a.target, local_port=uas_port, transport="t1",
                         users_csv=[BOB[:2]], keys=node_a.sipp_keys(contact_port=uas_port), calls=1,
                         duration_ms=30000, timeout=60, ready_timeout=10,
                         extra_args=["-oocsf", str(SIPP_DIR / "uas.xml")])
        line = node_a.wait_for_line(lambda ln: "registration Registered sip:bob@" in ln, timeout=15)
        assert " over tcp " in line and "node node-a" in line, line

        result = run_sipp("uac.xml", node_b.target, local_port=free_udp_port(), users_csv=[ALICE[:2]],
                          service=BOB[2], duration_ms=300, keys=node_b.sipp_keys(), timeout=20,
                          workdir=tmp_path / "sipp-uac")
        result.check(calls=1)
        uas_result = uas.stop(timeout=5)
        uas = None
        # node B forwarded to node A (a Route naming A's connection, signed) ...
        b_out = node_b.output()
        assert re.search(rf">>> [^\n]* tcp [^\n]*127\.0\.0\.1:{node_a.sip_port} [^\n]*\nINVITE sip:bob@", b_out), \
            b_out[-5000:]
        assert re.search(r"Route: <sip:127\.0\.0\.1:\d+;transport=tcp;lr;cpflow=tcp~127\.0\.0\.1~\d+~\d+;"
                         r"cpnode=node-b~", b_out), b_out[-5000:]
        # ... and node A delivered on the UAS's own registration connection, with both nodes in the path
        invites = re.findall(r"INVITE sip:bob@[^\n]*\n(?:[^\n]+\n)+", uas_result.log)
        assert invites, uas_result.log
        vias = re.findall(r"^Via: SIP/2\.0/(\w+) 127\.0\.0\.1:(\d+)", invites[0], flags=re.M)
        ports = [int(p) for _, p in vias]
        assert node_a.sip_port in ports and node_b.sip_port in ports, invites[0]
    finally:
        if uas is not None:
            uas.stop(timeout=5)
        node_b.stop()
        node_a.stop()
