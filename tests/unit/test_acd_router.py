"""acd.router.PbxRouter: which calls are proxied and which are anchored; acd.moh's built-in music."""
from __future__ import annotations

import wave
from dataclasses import dataclass

import numpy as np
import pytest

from acd.moh import music_on_hold
from acd.router import PbxRouter, needs_anchoring, offer_traits
from media.sdp import create_offer
from sipcore.routing import RTP, WEBRTC, AcceptCall, Contact, ProxyCall, RejectCall, RouteRequest
from sipcore.message import Request
from sipcore.transaction import Flow
from sipcore.uri import SipUri

PHONE = create_offer("127.0.0.1", 4000, [("PCMU", 8000), ("telephone-event", 8000)]).to_bytes()
OPUS_ONLY = create_offer("127.0.0.1", 4000, [("opus", 48000, 2)]).to_bytes()
BROWSER = OPUS_ONLY.replace(b"RTP/AVP", b"UDP/TLS/RTP/SAVPF")


@dataclass
class Account:
    username: str
    extension: str | None = None


class Contacts:
    def __init__(self, transports: list[str]) -> None:
        self.transports = transports

    async def contacts_of(self, user: str) -> list[Contact]:
        return [Contact(SipUri.parse(f"sip:{user}@127.0.0.1:{5070 + i}"), f"sip:{user}@d", transport=t)
                for i, t in enumerate(self.transports)]


def route_request(body: bytes | None, transport: str = "udp", callee: Account | None = Account("bob"),
                  user: str = "bob", caller: Account | None = Account("alice"),
                  trunk: str | None = None) -> RouteRequest:
    req = Request("INVITE", SipUri.parse(f"sip:{user}@d"), body=body or b"")
    req.add("Call-ID", "c1@test")
    return RouteRequest(req, Flow(transport, ("127.0.0.1", 5060)), caller, callee, trunk)


class Trunk:
    name = "carrier"

    def did_of(self, request: Request) -> str:
        return request.uri.user or ""


class Trunks:
    def __len__(self) -> int:
        return 1

    def get(self, name: str):
        return Trunk() if name == "carrier" else None


async def accounts(name: str):
    return {"1001": Account("alice", "1001"), "alice": Account("alice", "1001")}.get(name)


async def test_trunk_calls_by_did_and_calls_out_only_for_local_callers() -> None:
    router = PbxRouter(Contacts([RTP]), accounts=accounts, trunks=Trunks())
    assert isinstance(await router.route(route_request(PHONE, callee=None, user="1001", caller=None,
                                                       trunk="carrier")), AcceptCall)
    unknown = await router.route(route_request(PHONE, callee=None, user="5555", caller=None, trunk="carrier"))
    assert isinstance(unknown, RejectCall) and unknown.status == 404
    reception = PbxRouter(Contacts([RTP]), accounts=accounts, trunks=Trunks(), inbound_target="alice")
    assert isinstance(await reception.route(route_request(PHONE, callee=None, user="5555", caller=None,
                                                          trunk="carrier")), AcceptCall)
    # a local, authenticated caller dialling a number that is no local user goes out through the trunks
    assert isinstance(await router.route(route_request(PHONE, callee=None, user="0032255500")), AcceptCall)
    # nobody else does: no caller (auth off or a trunk's), or no trunks at all
    assert isinstance(await router.route(route_request(PHONE, callee=None, user="0032255500", caller=None)),
                      RejectCall)
    assert isinstance(await PbxRouter(Contacts([RTP])).route(route_request(PHONE, callee=None, user="0032")),
                      RejectCall)
    assert (router.stats["from_trunks"], router.stats["to_trunks"], router.stats["rejected"]) == (1, 1, 2)


def test_offer_traits() -> None:
    assert offer_traits(PHONE) == (False, True)
    assert offer_traits(OPUS_ONLY) == (False, False)
    assert offer_traits(BROWSER) == (True, False)
    assert offer_traits(None) == (False, True) and offer_traits(b"garbage") == (False, True)


def test_needs_anchoring_reasons() -> None:
    assert needs_anchoring(route_request(PHONE), [RTP]) is None
    assert needs_anchoring(route_request(PHONE, "ws"), [RTP]) == "the caller is a browser"
    assert needs_anchoring(route_request(BROWSER), [RTP]) == "the caller offers WebRTC"
    assert needs_anchoring(route_request(PHONE), [RTP, WEBRTC]) == "the callee is a browser"
    assert needs_anchoring(route_request(OPUS_ONLY), [RTP]) == "the caller offers no G.711"


async def test_router_decisions() -> None:
    router = PbxRouter(Contacts([RTP]))
    assert isinstance(await router.route(route_request(PHONE)), ProxyCall)
    assert isinstance(await router.route(route_request(BROWSER)), AcceptCall)
    assert await router.route(route_request(PHONE, callee=None)) == RejectCall(404)
    assert isinstance(await PbxRouter(Contacts([WEBRTC])).route(route_request(PHONE)), AcceptCall)
    assert isinstance(await PbxRouter(Contacts([RTP]), anchor="always").route(route_request(PHONE)), AcceptCall)
    assert isinstance(await PbxRouter(Contacts([WEBRTC]), anchor="never").route(route_request(PHONE)), ProxyCall)
    assert isinstance(await PbxRouter(Contacts([WEBRTC]), media=False).route(route_request(BROWSER)), ProxyCall)
    assert (router.stats["proxied"], router.stats["anchored"], router.stats["rejected"]) == (1, 1, 1)
    with pytest.raises(ValueError):
        PbxRouter(Contacts([]), anchor="sometimes")


def test_default_music_is_written_once_and_is_audible(tmp_path) -> None:
    (path,) = music_on_hold([], tmp_path)
    assert path.endswith("callpath-default-moh.wav")
    mtime = (tmp_path / "moh" / "callpath-default-moh.wav").stat().st_mtime_ns
    assert music_on_hold([], tmp_path) == [path]
    assert (tmp_path / "moh" / "callpath-default-moh.wav").stat().st_mtime_ns == mtime
    with wave.open(path) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 8000)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(float)
    assert len(pcm) == 12 * 8000
    rms = np.sqrt(np.mean(pcm ** 2)) / 32768
    assert 0.02 < rms < 0.3                     # audible, not clipping
    configured = tmp_path / "song.wav"
    configured.write_bytes(b"")
    assert music_on_hold([str(configured)], tmp_path) == [str(configured.resolve())]


async def test_ring_groups_and_conference_rooms_are_answered_by_call_control() -> None:
    from acd.router import RingGroup

    router = PbxRouter(Contacts([RTP]), groups=[RingGroup("600", ("1001", "1002"))], conferences=["700"],
                       accounts=accounts, trunks=Trunks())
    assert isinstance(await router.route(route_request(PHONE, callee=None, user="600")), AcceptCall)
    assert isinstance(await router.route(route_request(PHONE, callee=None, user="700")), AcceptCall)
    # a DID equal to a group number rings the group
    assert isinstance(await router.route(route_request(PHONE, callee=None, user="600", caller=None,
                                                       trunk="carrier")), AcceptCall)
    off = PbxRouter(Contacts([RTP]), groups=[RingGroup("600", ("1001",))], media=False)
    assert await off.route(route_request(PHONE, callee=None, user="600")) == RejectCall(
        503, "Service Unavailable (media is off)")
    assert (router.stats["groups"], router.stats["conferences"]) == (2, 1)
