"""Two nodes on one location store, in-process (no sockets): the signed hop (sipcore/cluster.py) and the
proxy's choice between delivering itself and forwarding to the node that holds a binding's connection."""
from __future__ import annotations

import asyncio
import itertools

import pytest

from sipcore.auth import DigestAuthenticator, compute_ha1
from sipcore.cluster import HOP_TTL, Node, default_node_uri, valid_node_id
from sipcore.location import Binding, MemoryLocation
from sipcore.message import parse_message
from sipcore.proxy import Proxy, ProxyConfig
from sipcore.stack import ConnectionSender, Listener, SipStack
from sipcore.transaction import Flow

DOMAIN = "example.test"
SECRET = b"s" * 32
AOR = f"sip:alice@{DOMAIN}"
WS_CONTACT = "sip:k3j2@df7jal23ls0d.invalid;transport=ws"


class Account:
    def __init__(self, name: str, ext: str) -> None:
        self.username, self.extension, self.enabled = name, ext, True
        self.ha1_md5 = compute_ha1(name, DOMAIN, "secret", "MD5")
        self.ha1_sha256 = compute_ha1(name, DOMAIN, "secret", "SHA-256")


class Users:
    accounts = {"alice": Account("alice", "1001"), "bob": Account("bob", "1002")}

    async def get(self, name: str):
        return self.accounts.get(name)

    async def by_extension(self, ext: str):
        return next((a for a in self.accounts.values() if a.extension == ext), None)


class Wire:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple]] = []

    def sendto(self, data: bytes, addr) -> None:
        self.sent.append((data, addr))

    def take(self) -> list[tuple[bytes, tuple]]:
        out, self.sent = self.sent, []
        return out


class FakeWebSocket(ConnectionSender):
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self) -> None:
        self.closed = True


class NodeHarness:
    """One node: a stack whose UDP socket is a list, a proxy with a Node, the shared location store."""

    def __init__(self, node_id: str, ip: str, location: MemoryLocation, auth: bool = True) -> None:
        self.ip = ip
        self.stack = SipStack(ip)
        self.stack._loop = asyncio.get_running_loop()
        self.stack.listeners["udp"] = Listener("udp", ip, 5060, ip)
        self.wire = Wire()
        self.stack._udp = self.wire  # type: ignore[assignment]
        self.proxy = Proxy(self.stack, ProxyConfig(domain=DOMAIN, auth=auth), Users(), location,
                           DigestAuthenticator(b"k" * 32, DOMAIN))
        self.node = self.proxy.node = Node(node_id, default_node_uri(ip, 5060, 0), SECRET)

    async def feed(self, data: bytes, src: tuple[str, int]) -> list[tuple[bytes, tuple]]:
        self.stack.receive(data, Flow("udp", src))
        for _ in range(10):
            await asyncio.sleep(0)
        return self.wire.take()


def invite(ruri: str = f"sip:1001@{DOMAIN}", call_id: str = "call-1") -> bytes:
    return (f"INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50:5070;branch=z9hG4bK-{call_id}\r\n"
            f"From: <sip:bob@{DOMAIN}>;tag=b1\r\nTo: <{ruri}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
            f"Max-Forwards: 70\r\nContact: <sip:bob@192.0.2.50:5070>\r\nContent-Length: 0\r\n\r\n").encode()


def status(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


@pytest.fixture
async def cluster():
    store = MemoryLocation()
    a = NodeHarness("node-a", "127.0.0.2", store)
    b = NodeHarness("node-b", "127.0.0.3", store, auth=False)  # the caller's node: no digest in the way
    yield a, b, store
    await store.close()


def ws_binding(node: NodeHarness, conn_id: int, contact: str = WS_CONTACT) -> Binding:
    flow = Flow("ws", ("198.51.100.7", 50123), conn_id)
    return Binding(AOR, contact, 1e12, received=flow.to_token(), node=node.node.id, node_uri=node.node.uri)


async def test_a_call_for_a_connection_on_another_node_goes_through_that_node(cluster) -> None:
    a, b, store = cluster
    browser = FakeWebSocket()
    cid = a.stack.register_connection("ws", ("198.51.100.7", 50123), browser)
    # node b has a connection with the same id: it must not be used for a's binding
    decoy = FakeWebSocket()
    b.stack._conn_ids = itertools.count(cid)  # ids start at random: force the collision a counter would make
    assert b.stack.register_connection("ws", ("203.0.113.9", 1), decoy) == cid
    await store.save(AOR, [ws_binding(a, cid)])

    out = await b.feed(invite(), ("192.0.2.50", 5070))
    forwarded = [d for d, addr in out if addr == ("127.0.0.2", 5060)]
    assert len(forwarded) == 1, out
    fwd = parse_message(forwarded[0])
    assert str(fwd.uri) == WS_CONTACT                      # a branch per contact, as for local ones
    route = fwd.routes[0].uri
    assert (route.host, route.port) == ("127.0.0.2", 5060)
    assert route.params["cpflow"] == f"ws~198.51.100.7~50123~{cid}" and "cpnode" in route.params
    assert fwd.get("record-route") and decoy.sent == []

    # node a (auth on) takes b's hop without a challenge and relays it on the named connection
    back = await a.feed(forwarded[0], ("127.0.0.3", 5060))
    assert all(status(d) == 100 for d, _ in back), back
    (delivered,) = browser.sent
    msg = parse_message(delivered)
    assert str(msg.uri) == WS_CONTACT
    assert "cpnode" not in (msg.get("route") or "")           # a's own Route entry was consumed
    assert len(msg.get_all("record-route")) >= 2              # both nodes stay in the dialog's route set


async def test_udp_bindings_are_reached_directly_from_any_node(cluster) -> None:
    a, b, store = cluster
    await store.save(AOR, [Binding(AOR, "sip:alice@192.0.2.9:5062", 1e12, received="udp~192.0.2.9~5062~",
                                   node=a.node.id, node_uri=a.node.uri)])
    out = await b.feed(invite(), ("192.0.2.50", 5070))
    assert [addr for d, addr in out if d.startswith(b"INVITE")] == [("192.0.2.9", 5062)]


async def test_every_contact_gets_its_own_branch(cluster) -> None:
    a, b, store = cluster
    mine = FakeWebSocket()
    cid_b = b.stack.register_connection("ws", ("203.0.113.9", 1), mine)
    await store.save(AOR, [ws_binding(a, 5, "sip:one@x.invalid;transport=ws"),
                           ws_binding(a, 6, "sip:two@x.invalid;transport=ws"),
                           ws_binding(b, cid_b, "sip:three@x.invalid;transport=ws")])
    out = await b.feed(invite(), ("192.0.2.50", 5070))
    to_a = sorted(parse_message(d).uri.user for d, addr in out if d.startswith(b"INVITE"))
    assert to_a == ["one", "two"] and all(addr == ("127.0.0.2", 5060) for d, addr in out
                                          if d.startswith(b"INVITE"))
    assert len(mine.sent) == 1 and b"INVITE sip:three@x.invalid" in mine.sent[0]


async def test_call_control_gets_contacts_through_their_node(cluster) -> None:
    """contacts_of (the call control's resolver): a browser on node a is a WebRTC contact reached via a."""
    from sipcore.routing import WEBRTC

    a, b, store = cluster
    await store.save(AOR, [ws_binding(a, 5)])
    (contact,) = await b.proxy.contacts_of("alice")
    assert str(contact.uri) == WS_CONTACT and contact.flow is None and contact.transport == WEBRTC
    (route,) = contact.path
    assert "cpflow=ws~198.51.100.7~50123~5" in route and "cpnode=node-b~" in route


async def test_a_hop_to_a_closed_connection_gets_480(cluster) -> None:
    a, b, store = cluster
    route = b.node.hop_route(a.node.id, a.node.uri, "ws~198.51.100.7~50123~424242", b.proxy.clock())
    data = invite(WS_CONTACT).replace(b"Max-Forwards: 70\r\n", f"Max-Forwards: 69\r\nRoute: {route}\r\n".encode())
    out = await a.feed(data, ("127.0.0.3", 5060))
    assert [status(d) for d, _ in out] == [480], out


async def test_a_forged_hop_is_challenged(cluster) -> None:
    a, b, store = cluster
    browser = FakeWebSocket()
    cid = a.stack.register_connection("ws", ("198.51.100.7", 50123), browser)
    forger = Node("node-b", "sip:127.0.0.3:5060", b"x" * 32)  # the right name, not the cluster's secret
    route = forger.hop_route(a.node.id, a.node.uri, f"ws~198.51.100.7~50123~{cid}", a.proxy.clock())
    data = invite(WS_CONTACT).replace(b"Max-Forwards: 70\r\n", f"Max-Forwards: 70\r\nRoute: {route}\r\n".encode())
    out = await a.feed(data, ("192.0.2.66", 5060))
    assert [status(d) for d, _ in out] == [407] and browser.sent == []


def test_hop_signature_rules() -> None:
    a = Node("a", "sip:127.0.0.2:5060", SECRET)
    b = Node("b", "sip:127.0.0.3:5060;transport=tcp", SECRET)
    flow = "ws~198.51.100.7~50123~81"
    route = a.hop_route("b", b.uri, flow, 1000.0)
    assert route.startswith(f"<sip:127.0.0.3:5060;transport=tcp;lr;cpflow={flow};cpnode=a~1000~")
    params = parse_message(invite().replace(b"Max-Forwards", f"Route: {route}\r\nMax-Forwards".encode())
                           ).routes[0].uri.params
    assert b.verify_hop(params, 1000.0) == "a"
    assert b.verify_hop(params, 1000.0 + HOP_TTL) == "a"
    assert b.verify_hop(params, 1000.0 + HOP_TTL + 1) is None             # stale
    assert a.verify_hop(params, 1000.0) is None                           # meant for b, and a sent it
    assert Node("c", "sip:h", SECRET).verify_hop(params, 1000.0) is None  # another receiver
    assert b.verify_hop({**params, "cpflow": "ws~198.51.100.7~50123~82"}, 1000.0) is None  # another connection
    token = params["cpnode"]
    for bad in ("", "a~1000", "a~x~y", token[:-1] + ("0" if token[-1] != "0" else "1")):
        assert b.verify_hop({**params, "cpnode": bad}, 1000.0) is None
    assert b.verify_hop({"cpnode": token}, 1000.0) is None                # no connection named


def test_node_ids_and_uris() -> None:
    assert valid_node_id("pbx-1.eu_west") and not valid_node_id("a b") and not valid_node_id("x" * 65)
    assert default_node_uri("192.0.2.1", 5060, 5061) == "sip:192.0.2.1:5061;transport=tcp"
    assert default_node_uri("2001:db8::1", 5060, 0) == "sip:[2001:db8::1]:5060"
    with pytest.raises(ValueError):
        Node("a;b", "sip:h", SECRET)


def test_node_settings(tmp_path) -> None:
    from web.settings import SettingsError, load_settings

    s = load_settings(None, {"CALLPATH_SIP_NODE_ID": "pbx-2", "CALLPATH_SIP_NODE_URI": "sip:10.0.0.2:5060"})
    assert (s.sip.node_id, s.sip.node_uri) == ("pbx-2", "sip:10.0.0.2:5060")
    assert load_settings(None, {}).sip.node_id == ""
    for env, words in (({"CALLPATH_SIP_NODE_ID": "a b"}, "sip.node_id"),
                       ({"CALLPATH_SIP_NODE_URI": "http://x"}, "sip.node_uri"),
                       ({"CALLPATH_SIP_NODE_URI": "sip:bob@10.0.0.2"}, "sip.node_uri")):
        with pytest.raises(SettingsError, match=words):
            load_settings(None, env)


def test_node_id_is_generated_once_and_kept(tmp_path) -> None:
    from web.server import _node_id

    first = _node_id(tmp_path, "")
    assert valid_node_id(first) and (tmp_path / "node-id").read_text().strip() == first
    assert _node_id(tmp_path, "") == first               # the same id after a restart
    assert _node_id(tmp_path, "configured") == "configured"
