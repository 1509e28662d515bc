"""media.certificate + media.dtls (+ the sans-IO media.webrtc leg): handshakes in memory."""
from __future__ import annotations

import os
import re
import stat
import struct
import time

import pytest

from media import stun
from media.certificate import DtlsCertificate, fingerprint_matches, parse_sdp_fingerprint
from media.dtls import DtlsClosed, DtlsEndpoint, DtlsFailed, DtlsState, HandshakeComplete, dtls_srtp_keys
from media.ice import IceLiteAgent
from media.srtp import AEAD_AES_128_GCM, AEAD_AES_256_GCM, AES128_CM_SHA1_80, SrtpContext, SrtpError
from media.webrtc import (
    LegConnected,
    LegFailed,
    LegNominated,
    RemoteTransport,
    RtcpReceived,
    RtpReceived,
    WebRtcLeg,
    dtls_role_for_remote_setup,
)
from media.sdp import SessionDescription, create_answer


@pytest.fixture(scope="module")
def certs():
    return DtlsCertificate.generate(), DtlsCertificate.generate()


def rtp(seq: int, payload: bytes = b"\x55" * 80) -> bytes:
    return struct.pack("!BBHII", 0x80, 111, seq, seq * 960, 0xCAFE) + payload


def pump(a: DtlsEndpoint, b: DtlsEndpoint, now: float = 0.0, rounds: int = 10) -> None:
    for _ in range(rounds):
        moved = False
        for src, dst in ((a, b), (b, a)):
            for datagram in src.datagrams_to_send():
                moved = True
                dst.receive_datagram(datagram, now)
        if not moved:
            return


# ---- certificate ---------------------------------------------------------------------------------


def test_certificate_generated_once_then_loaded(tmp_path):
    first = DtlsCertificate.load_or_create(tmp_path / "dtls")
    second = DtlsCertificate.load_or_create(tmp_path / "dtls")
    assert first.sdp_fingerprint == second.sdp_fingerprint
    assert re.fullmatch(r"sha-256 ([0-9A-F]{2}:){31}[0-9A-F]{2}", first.sdp_fingerprint)
    key_file = tmp_path / "dtls" / "dtls-key.pem"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert (tmp_path / "dtls" / "dtls-certificate.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE")
    assert first.key.curve.name == "secp256r1"
    assert DtlsCertificate.generate().fingerprint() != first.fingerprint()


def test_expired_certificate_replaced(tmp_path):
    DtlsCertificate.generate(days=1).save(tmp_path)  # within the renewal margin
    old = DtlsCertificate.load_or_create(tmp_path)
    assert (old.expires - DtlsCertificate.generate(days=1).expires).days > 300


def test_fingerprint_parsing_and_matching(certs):
    cert = certs[0]
    algorithm, value = parse_sdp_fingerprint(cert.sdp_fingerprint.lower())
    assert algorithm == "sha-256" and value == cert.fingerprint()
    assert fingerprint_matches(cert.certificate, [(algorithm, value)])
    assert fingerprint_matches(cert.certificate, [("sha-256", value), ("md7", "00")])  # unknown ignored
    assert not fingerprint_matches(cert.certificate, [("md7", "00")])
    assert not fingerprint_matches(cert.certificate, [("sha-256", certs[1].fingerprint())])
    assert fingerprint_matches(cert.certificate, [("sha-1", cert.fingerprint("sha-1"))])
    with pytest.raises(ValueError):
        parse_sdp_fingerprint("sha-256")
    with pytest.raises(ValueError):
        parse_sdp_fingerprint("sha-256 XY:01")


# ---- keying material layout ----------------------------------------------------------------------


def test_rfc5764_key_split():
    material = bytes(range(60))  # AES128_CM: 2 * (16 + 14)
    client_local, client_remote = dtls_srtp_keys(material, AES128_CM_SHA1_80, "client")
    server_local, server_remote = dtls_srtp_keys(material, AES128_CM_SHA1_80, "server")
    assert client_local == material[0:16] + material[32:46]  # client write key + client write salt
    assert server_local == material[16:32] + material[46:60]
    assert (client_local, client_remote) == (server_remote, server_local)


# ---- handshake -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profiles", "expected"),
    [
        (None, AEAD_AES_256_GCM),
        ([AES128_CM_SHA1_80], AES128_CM_SHA1_80),
        ([AEAD_AES_128_GCM, AES128_CM_SHA1_80], AEAD_AES_128_GCM),
    ],
)
def test_handshake_in_memory_and_srtp_with_derived_keys(certs, profiles, expected):
    server_cert, client_cert = certs
    kwargs = {} if profiles is None else {"srtp_profiles": profiles}
    server = DtlsEndpoint(server_cert, "server", [client_cert.sdp_fingerprint], **kwargs)
    client = DtlsEndpoint(client_cert, "client", [("sha-256", server_cert.fingerprint())])
    server.start(0.0)
    client.start(0.0)
    assert client.get_timer() is not None  # ClientHello retransmission armed
    pump(client, server)
    s_event, c_event = server.next_event(), client.next_event()
    assert isinstance(s_event, HandshakeComplete) and isinstance(c_event, HandshakeComplete)
    assert server.state is client.state is DtlsState.CONNECTED
    assert s_event.profile is c_event.profile is expected
    assert len(s_event.local_key_salt) == expected.key_salt_length
    assert s_event.local_key_salt == c_event.remote_key_salt
    assert s_event.remote_key_salt == c_event.local_key_salt
    assert s_event.local_key_salt != s_event.remote_key_salt
    assert s_event.peer_certificate.fingerprint is not None
    assert server.peer_certificate == client_cert.certificate
    # SRTP round trip, both directions, with the exported keys
    s_srtp, c_srtp = s_event.srtp_context(), SrtpContext(c_event.profile, c_event.local_key_salt, c_event.remote_key_salt)
    assert c_srtp.unprotect(s_srtp.protect(rtp(1))) == rtp(1)
    assert s_srtp.unprotect(c_srtp.protect(rtp(2))) == rtp(2)
    assert server.next_event() is None and client.next_event() is None


def test_datagrams_respect_mtu(certs):
    server = DtlsEndpoint(certs[0], "server", [certs[1].sdp_fingerprint], mtu=300)
    client = DtlsEndpoint(certs[1], "client", [certs[0].sdp_fingerprint], mtu=300)
    client.start(0.0)
    sizes = []
    for _ in range(10):
        for src, dst in ((client, server), (server, client)):
            for datagram in src.datagrams_to_send():
                sizes.append(len(datagram))
                assert datagram[0] in range(20, 64)
                dst.receive_datagram(datagram, 0.0)
    assert isinstance(server.next_event(), HandshakeComplete)
    assert len(sizes) > 4 and max(sizes) <= 1500  # one record may exceed a tiny mtu, never a datagram of many


@pytest.mark.parametrize("liar", ["server", "client"])
def test_fingerprint_mismatch_fails(certs, liar):
    server_cert, client_cert = certs
    impostor = DtlsCertificate.generate()
    server = DtlsEndpoint(
        impostor if liar == "server" else server_cert, "server", [client_cert.sdp_fingerprint]
    )
    client = DtlsEndpoint(
        impostor if liar == "client" else client_cert, "client", [server_cert.sdp_fingerprint]
    )
    client.start(0.0)
    pump(client, server)
    victim = client if liar == "server" else server
    event = victim.next_event()
    assert event == DtlsFailed("fingerprint mismatch")
    assert victim.state is DtlsState.FAILED
    # the other side never completes either (it got an alert)
    other = server if victim is client else client
    assert not isinstance(other.next_event(), HandshakeComplete)
    assert victim.get_timer() is None


def test_no_common_srtp_profile_fails(certs):
    server = DtlsEndpoint(certs[0], "server", [certs[1].sdp_fingerprint], srtp_profiles=[AEAD_AES_256_GCM])
    client = DtlsEndpoint(certs[1], "client", [certs[0].sdp_fingerprint], srtp_profiles=[AES128_CM_SHA1_80])
    client.start(0.0)
    pump(client, server)
    assert isinstance(client.next_event(), DtlsFailed)


def test_handshake_timeout_with_injected_clock(certs):
    server = DtlsEndpoint(certs[0], "server", [certs[1].sdp_fingerprint], handshake_timeout=30.0)
    server.start(100.0)
    assert server.get_timer() == 130.0
    server.handle_timer(129.0)
    assert server.next_event() is None
    server.handle_timer(130.0)
    assert server.next_event() == DtlsFailed("handshake timeout")
    assert server.get_timer() is None


def test_lost_client_hello_is_retransmitted(certs):
    client = DtlsEndpoint(certs[1], "client", [certs[0].sdp_fingerprint])
    t0 = time.monotonic()
    client.start(t0)
    first = client.datagrams_to_send()
    assert first  # ... and lost
    timer = client.get_timer()
    assert timer is not None and 0.5 <= timer - t0 <= 1.5  # OpenSSL's initial 1 s
    client.handle_timer(t0)  # too early: nothing
    assert client.datagrams_to_send() == []
    time.sleep(max(0.0, timer - time.monotonic()) + 0.02)  # OpenSSL's timer runs on the real clock
    client.handle_timer(time.monotonic())
    again = client.datagrams_to_send()
    assert again and again[0][0] == 22
    server = DtlsEndpoint(certs[0], "server", [certs[1].sdp_fingerprint])
    for datagram in again:
        server.receive_datagram(datagram, time.monotonic())
    pump(client, server)
    assert isinstance(server.next_event(), HandshakeComplete)


def test_close_notify(certs):
    server = DtlsEndpoint(certs[0], "server", [certs[1].sdp_fingerprint])
    client = DtlsEndpoint(certs[1], "client", [certs[0].sdp_fingerprint])
    client.start(0.0)
    pump(client, server)
    server.next_event(), client.next_event()
    client.close()
    pump(client, server)
    assert server.next_event() == DtlsClosed()
    assert server.state is DtlsState.CLOSED


def test_bad_role_rejected(certs):
    with pytest.raises(ValueError):
        DtlsEndpoint(certs[0], "auto", [certs[1].sdp_fingerprint])


# ---- the sans-IO WebRtcLeg with an ICE-lite agent, a fake browser of our own parts ----------------

BROWSER = ("192.0.2.50", 61000)

BROWSER_OFFER = """v=0
o=- 4611731400430051336 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0
a=msid-semantic: WMS
m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8 126
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=candidate:1 1 udp 2122260223 192.0.2.50 61000 typ host generation 0
a=ice-ufrag:brws
a=ice-pwd:browserpasswordbrowser
a=ice-options:trickle
a=fingerprint:{fingerprint}
a=setup:actpass
a=mid:0
a=sendrecv
a=rtcp-mux
a=rtpmap:111 opus/48000/2
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:126 telephone-event/8000
"""


def test_dtls_role_from_setup():
    assert dtls_role_for_remote_setup("actpass") == "server"
    assert dtls_role_for_remote_setup("active") == "server"
    assert dtls_role_for_remote_setup("passive") == "client"
    with pytest.raises(ValueError):
        dtls_role_for_remote_setup("holdconn")


def test_webrtc_leg_answer_sdp_and_media_in_memory(certs):
    ours, browser_cert = certs
    offer = SessionDescription.parse(BROWSER_OFFER.format(fingerprint=browser_cert.sdp_fingerprint))
    remote = RemoteTransport.from_sdp(offer, 0)
    assert (remote.ice_ufrag, remote.ice_pwd, remote.setup) == ("brws", "browserpasswordbrowser", "actpass")
    assert remote.fingerprints == [("sha-256", browser_cert.fingerprint())] and remote.rtcp_mux

    agent = IceLiteAgent()
    ice = agent.create_leg(remote.ice_ufrag, remote.ice_pwd, now=0.0)
    leg = WebRtcLeg(ours, ice, remote)
    assert leg.dtls_role == "server" and leg.local_setup == "passive"

    answer = create_answer(offer, [("opus", 48000, 2), ("telephone-event", 8000)], "203.0.113.7", 40000)
    leg.add_transport_attributes(answer, "203.0.113.7", 40000)
    text = answer.to_bytes().decode()
    parsed = SessionDescription.parse(text)
    assert parsed.has_attribute("ice-lite") and parsed.attribute("group") == "BUNDLE 0"
    media = parsed.media[0]
    assert media.proto == "UDP/TLS/RTP/SAVPF" and media.port == 40000
    assert media.attribute("ice-ufrag") == ice.local_ufrag and media.attribute("ice-pwd") == ice.local_pwd
    assert media.attribute("fingerprint") == ours.sdp_fingerprint
    assert media.attribute("setup") == "passive" and media.has_attribute("rtcp-mux")
    assert media.attributes("candidate") == ["1 1 udp 2130706431 203.0.113.7 40000 typ host"]
    assert str(parsed.effective_connection(media).address) == "203.0.113.7"
    # from our answer, the browser's view of us
    ours_seen = RemoteTransport.from_sdp(parsed, 0)
    assert ours_seen.ice_lite and ours_seen.setup == "passive"

    # the browser: STUN checks with USE-CANDIDATE, then a DTLS client
    def deliver(data, addr, now):
        hit = agent.receive_datagram(data, addr, now)
        if hit is not None:
            assert hit[0] is ice
            leg.receive_datagram(data, addr, now)
        while (ev := agent.next_event()) is not None:
            leg.handle_ice_event(ev, now)

    deliver(stun.binding_request(f"{ice.local_ufrag}:brws", ice.local_pwd, use_candidate=True), BROWSER, 0.0)
    (response, to), = agent.datagrams_to_send()
    assert to == BROWSER and stun.parse(response).message_class == stun.Class.RESPONSE
    assert leg.next_event() == LegNominated(leg, BROWSER)

    browser = DtlsEndpoint(browser_cert, "client", [ours_seen.fingerprints[0]])
    browser.start(0.0)
    for _ in range(6):
        for datagram in browser.datagrams_to_send():
            deliver(datagram, BROWSER, 0.1)
        for datagram, to in leg.datagrams_to_send():
            assert to == BROWSER
            browser.receive_datagram(datagram, 0.1)
    connected = leg.next_event()
    assert isinstance(connected, LegConnected) and connected.profile is AEAD_AES_256_GCM
    done = browser.next_event()
    assert isinstance(done, HandshakeComplete)
    browser_srtp = done.srtp_context()

    # browser -> us: RTP and RTCP decrypted; a replay and garbage dropped
    wire = browser_srtp.protect(rtp(10))
    deliver(wire, BROWSER, 0.2)
    deliver(wire, BROWSER, 0.2)
    deliver(b"\x80\x6f" + os.urandom(40), BROWSER, 0.2)
    rr = struct.pack("!BBHI", 0x80, 201, 1, 0xABC)
    deliver(browser_srtp.protect_rtcp(rr), BROWSER, 0.2)
    assert leg.next_event() == RtpReceived(leg, rtp(10))
    assert leg.next_event() == RtcpReceived(leg, rr)
    assert leg.next_event() is None
    # us -> browser
    assert browser_srtp.unprotect(leg.protect_rtp(rtp(20))) == rtp(20)
    leg.send_rtp(rtp(21))
    (datagram, to), = leg.datagrams_to_send()
    assert to == BROWSER and browser_srtp.unprotect(datagram) == rtp(21)
    # consent lost
    for now in range(1, 40):
        agent.handle_timer(float(now))
        while (ev := agent.next_event()) is not None:
            leg.handle_ice_event(ev, float(now))
    assert leg.next_event() == LegFailed(leg, "consent expired")
    with pytest.raises(SrtpError):
        leg.protect_rtp(rtp(22))


def test_webrtc_leg_we_offer_then_browser_answers_active(certs):
    ours, browser_cert = certs
    agent = IceLiteAgent()
    ice = agent.create_leg(now=0.0)
    leg = WebRtcLeg(ours, ice)
    assert leg.local_setup == "actpass" and leg.dtls is None
    # the browser's ClientHello may race its SDP answer: it is kept until the answer arrives
    browser = DtlsEndpoint(browser_cert, "client", [ours.sdp_fingerprint])
    browser.start(0.0)
    agent.receive_datagram(stun.binding_request(f"{ice.local_ufrag}:brws", ice.local_pwd, use_candidate=True), BROWSER, 0.0)
    for datagram in browser.datagrams_to_send():
        assert agent.receive_datagram(datagram, BROWSER, 0.0) == (ice, stun.PacketKind.DTLS)
        leg.receive_datagram(datagram, BROWSER, 0.0)
    assert leg.datagrams_to_send() == []
    leg.set_remote(RemoteTransport("brws", "b" * 22, [parse_sdp_fingerprint(browser_cert.sdp_fingerprint)], "active"))
    assert leg.dtls_role == "server" and leg.local_setup == "passive"
    for _ in range(6):
        for datagram, _to in leg.datagrams_to_send():
            browser.receive_datagram(datagram, 0.1)
        for datagram in browser.datagrams_to_send():
            leg.receive_datagram(datagram, BROWSER, 0.1)
    assert isinstance(leg.next_event(), LegConnected)


def test_webrtc_leg_as_dtls_client_starts_on_nomination(certs):
    ours, browser_cert = certs
    agent = IceLiteAgent()
    ice = agent.create_leg(now=0.0)
    leg = WebRtcLeg(ours, ice, RemoteTransport("brws", "b" * 22, [parse_sdp_fingerprint(browser_cert.sdp_fingerprint)], "passive"))
    assert leg.dtls_role == "client" and leg.local_setup == "active"
    browser = DtlsEndpoint(browser_cert, "server", [ours.sdp_fingerprint])
    agent.receive_datagram(stun.binding_request(f"{ice.local_ufrag}:brws", ice.local_pwd, use_candidate=True), BROWSER, 0.0)
    leg.handle_ice_event(agent.next_event(), 0.0)
    assert isinstance(leg.next_event(), LegNominated)
    for _ in range(6):
        for datagram, to in leg.datagrams_to_send():
            assert to == BROWSER
            browser.receive_datagram(datagram, 0.1)
        for datagram in browser.datagrams_to_send():
            leg.receive_datagram(datagram, BROWSER, 0.1)
    assert isinstance(leg.next_event(), LegConnected)
    assert isinstance(browser.next_event(), HandshakeComplete)


def test_webrtc_leg_fingerprint_mismatch(certs):
    ours, browser_cert = certs
    agent = IceLiteAgent()
    ice = agent.create_leg(now=0.0)
    leg = WebRtcLeg(ours, ice, RemoteTransport("brws", "b" * 22, [("sha-256", ours.fingerprint())], "actpass"))
    browser = DtlsEndpoint(browser_cert, "client", [ours.sdp_fingerprint])
    browser.start(0.0)
    for _ in range(6):
        for datagram in browser.datagrams_to_send():
            leg.receive_datagram(datagram, BROWSER, 0.1)
        for datagram, _to in leg.datagrams_to_send():
            browser.receive_datagram(datagram, 0.1)
    assert leg.next_event() == LegFailed(leg, "fingerprint mismatch")
    assert not leg.connected


def test_webrtc_leg_server_times_out_without_dtls_after_nomination(certs):
    ours, browser_cert = certs
    agent = IceLiteAgent()
    ice = agent.create_leg(now=0.0)
    leg = WebRtcLeg(ours, ice, RemoteTransport("brws", "b" * 22, [("sha-256", browser_cert.fingerprint())], "actpass"))
    agent.receive_datagram(stun.binding_request(f"{ice.local_ufrag}:brws", ice.local_pwd, use_candidate=True), BROWSER, 0.0)
    leg.handle_ice_event(agent.next_event(), 0.0)
    assert isinstance(leg.next_event(), LegNominated)
    assert leg.get_timer() == 30.0  # the handshake deadline, on the injected clock
    leg.handle_timer(29.0)
    assert leg.next_event() is None
    leg.handle_timer(30.0)
    assert leg.next_event() == LegFailed(leg, "handshake timeout")
