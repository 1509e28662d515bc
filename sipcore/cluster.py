"""Several callpath nodes on one location store (Redis): which node holds a binding's connection, and the
signed hop a request takes from the node that looked the binding up to the node that holds its connection.

A TCP/TLS/WebSocket binding can only be used by the process that holds its connection: a connection id
(`Flow.conn_id`) is a per-process counter, meaningless (or worse, another client's) elsewhere. So every
binding names its node (`Binding.node`) and that node's SIP URI (`Binding.node_uri`). When node B's proxy
(or B's call control) sends a request to a contact whose connection lives on node A, it sends it to A
(stateful, Record-Routed, Request-URI the contact as for any fork branch), with A's URI as a loose Route
naming the connection (`cpflow`, the flow token stored in the binding) and signed with the secret all nodes
share (`LocationService.shared_secret`):

    Route: <sip:192.0.2.10:5060;transport=tcp;lr;cpflow=ws~198.51.100.7~50123~81;cpnode=B~1733480000~9f2c...>

A accepts such a request without challenging the caller (B did) and relays it on that connection, nothing
else: no lookup, so no loop and no contact rung twice. B keeps one branch per contact, so parallel forking,
best-response choice and the media offered per contact (WebRTC to a browser) work as for local contacts.

| `cpnode` on arrival (initial request, our Route on top) | result |
|---|---|
| absent | a normal request (authenticated, routed, possibly forwarded to other nodes) |
| valid, for this node, its connection open | no challenge; relayed on that connection |
| valid, the connection closed since | 480 |
| malformed, bad signature, older than `HOP_TTL`, for another node | ignored: challenged like any request |

The signature covers (sender, receiver, time, connection): it lets a holder reach that one connection for
`HOP_TTL` seconds, and it only travels between nodes (the receiver consumes its Route entry).
"""
from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .uri import SipUri, format_host

__all__ = ["Node", "HOP_PARAM", "FLOW_PARAM", "HOP_TTL", "valid_node_id", "default_node_uri"]

HOP_PARAM = "cpnode"
FLOW_PARAM = "cpflow"  # the proxy's own Route/Record-Route parameter naming a connection (proxy.py)
HOP_TTL = 60  # seconds a signed hop stays acceptable (clock skew between nodes + retransmissions)
_NODE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")


def valid_node_id(text: str) -> bool:
    """Node ids are 1-64 characters of letters, digits, '.', '_' and '-' (they travel in a URI parameter)."""
    return bool(_NODE_ID.match(text))


def default_node_uri(host: str, udp_port: int, tcp_port: int) -> str:
    """The URI other nodes reach a node at when `sip.node_uri` is empty: TCP when it listens on TCP."""
    if tcp_port:
        return f"sip:{format_host(host)}:{tcp_port};transport=tcp"
    return f"sip:{format_host(host)}:{udp_port}"


@dataclass(frozen=True, slots=True)
class Node:
    """This node: its id, the SIP URI other nodes reach it at, and the secret the cluster shares."""

    id: str
    uri: str
    secret: bytes

    def __post_init__(self) -> None:
        if not valid_node_id(self.id):
            raise ValueError(f"node id {self.id!r}: use 1-64 letters, digits, '.', '_' or '-'")
        SipUri.parse(self.uri)  # raises SipParseError on a bad URI

    def hop_route(self, peer_id: str, peer_uri: str, flow: str, now: float) -> str:
        """The Route value that sends a request to node `peer_id` at `peer_uri`, to be relayed there on its
        connection `flow` (a flow token), signed by this node."""
        ts = int(now)
        uri = SipUri.parse(peer_uri)
        params = dict(uri.params)
        params["lr"] = None
        params[FLOW_PARAM] = flow
        params[HOP_PARAM] = f"{self.id}~{ts}~{self._sign(self.id, peer_id, ts, flow)}"
        return f"<{SipUri(uri.scheme, None, uri.host, uri.port, params)}>"

    def verify_hop(self, params: Mapping[str, str | None], now: float) -> str | None:
        """The sending node's id when a Route's `params` carry a valid hop to this node, else None."""
        value, flow = params.get(HOP_PARAM), params.get(FLOW_PARAM)
        if not value or not flow:
            return None
        parts = value.split("~")
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        sender, ts_text, sig = parts
        ts = int(ts_text)
        if abs(now - ts) > HOP_TTL or sender == self.id:
            return None
        if not hmac.compare_digest(sig, self._sign(sender, self.id, ts, flow)):
            return None
        return sender

    def _sign(self, sender: str, receiver: str, ts: int, flow: str) -> str:
        """HMAC-SHA256 (128 bits shown) over who sends to whom, when, for which connection."""
        text = f"{sender}|{receiver}|{ts}|{flow}"
        return hmac.new(self.secret, text.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()[:32]
