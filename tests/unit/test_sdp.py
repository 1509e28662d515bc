"""Unit tests for media.sdp: parsing/building real-world bodies, errors, RFC 3264 offer/answer, hold."""
from __future__ import annotations

import textwrap

import pytest

from media.sdp import (
    STATIC_PAYLOAD_TYPES,
    Attribute,
    Bandwidth,
    Connection,
    MediaDescription,
    Origin,
    RtpMap,
    SdpError,
    SessionDescription,
    Timing,
    bump_version,
    create_answer,
    create_offer,
    hold,
    is_hold,
    parse_fmtp_params,
    resume,
)


def crlf(text: str) -> str:
    """Dedent a test body and give it the \\r\\n line endings SDP is emitted with."""
    return textwrap.dedent(text).lstrip("\n").replace("\n", "\r\n")


# --------------------------------------------------------------------------------------------------
# Real-world bodies
# --------------------------------------------------------------------------------------------------

# Chromium 120 createOffer() with audio + video, BUNDLE, one host and one srflx candidate.
CHROMIUM_OFFER = crlf("""
    v=0
    o=- 4611731400430051336 2 IN IP4 127.0.0.1
    s=-
    t=0 0
    a=group:BUNDLE 0 1
    a=extmap-allow-mixed
    a=msid-semantic: WMS 6b4bdd37-2d9b-4d63-9ff4-3ed1b09d3e8f
    m=audio 46243 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126
    c=IN IP4 192.168.0.196
    a=rtcp:9 IN IP4 0.0.0.0
    a=candidate:1467250027 1 udp 2122260223 192.168.0.196 46243 typ host generation 0 network-id 1 network-cost 10
    a=candidate:435653019 1 udp 1686052607 203.0.113.7 46243 typ srflx raddr 192.168.0.196 rport 46243 generation 0 network-id 1 network-cost 10
    a=ice-ufrag:Oyef
    a=ice-pwd:7XnBQcMZpXmMONAdIv1Jsmvf
    a=ice-options:trickle
    a=fingerprint:sha-256 49:66:12:17:0D:1C:91:AE:57:4C:C6:36:DD:D5:97:D2:7D:62:C9:9A:7F:B9:A3:F4:70:03:E7:43:91:73:23:5A
    a=setup:actpass
    a=mid:0
    a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
    a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
    a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
    a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
    a=sendrecv
    a=msid:6b4bdd37-2d9b-4d63-9ff4-3ed1b09d3e8f 8a9a1a29-94b6-4f6e-9c4e-0b1f3d3cf0c2
    a=rtcp-mux
    a=rtpmap:111 opus/48000/2
    a=rtcp-fb:111 transport-cc
    a=fmtp:111 minptime=10;useinbandfec=1
    a=rtpmap:63 red/48000/2
    a=fmtp:63 111/111
    a=rtpmap:9 G722/8000
    a=rtpmap:0 PCMU/8000
    a=rtpmap:8 PCMA/8000
    a=rtpmap:13 CN/8000
    a=rtpmap:110 telephone-event/48000
    a=rtpmap:126 telephone-event/8000
    a=ssrc:3735928559 cname:o4bxd1e5mT1Hm5yC
    a=ssrc:3735928559 msid:6b4bdd37-2d9b-4d63-9ff4-3ed1b09d3e8f 8a9a1a29-94b6-4f6e-9c4e-0b1f3d3cf0c2
    m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103
    c=IN IP4 0.0.0.0
    a=rtcp:9 IN IP4 0.0.0.0
    a=ice-ufrag:Oyef
    a=ice-pwd:7XnBQcMZpXmMONAdIv1Jsmvf
    a=ice-options:trickle
    a=fingerprint:sha-256 49:66:12:17:0D:1C:91:AE:57:4C:C6:36:DD:D5:97:D2:7D:62:C9:9A:7F:B9:A3:F4:70:03:E7:43:91:73:23:5A
    a=setup:actpass
    a=mid:1
    a=extmap:14 urn:ietf:params:rtp-hdrext:toffset
    a=extmap:13 urn:3gpp:video-orientation
    a=sendrecv
    a=msid:6b4bdd37-2d9b-4d63-9ff4-3ed1b09d3e8f 0f5d3b5e-3b0c-4c43-a3f1-1f0f1d5a2b66
    a=rtcp-mux
    a=rtcp-rsize
    a=rtpmap:96 VP8/90000
    a=rtcp-fb:96 goog-remb
    a=rtcp-fb:96 transport-cc
    a=rtcp-fb:96 ccm fir
    a=rtcp-fb:96 nack
    a=rtcp-fb:96 nack pli
    a=rtpmap:97 rtx/90000
    a=fmtp:97 apt=96
    a=rtpmap:102 H264/90000
    a=rtcp-fb:102 nack pli
    a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f
    a=rtpmap:103 rtx/90000
    a=fmtp:103 apt=102
    a=ssrc-group:FID 1876540201 3127715893
    a=ssrc:1876540201 cname:o4bxd1e5mT1Hm5yC
    a=ssrc:3127715893 cname:o4bxd1e5mT1Hm5yC
""")

# Firefox 121 createOffer(), audio only, trickle ICE (no candidates yet), IPv6-free.
FIREFOX_OFFER = crlf("""
    v=0
    o=mozilla...THIS_IS_SDPARTA-99.0 5236014136478349128 0 IN IP4 0.0.0.0
    s=-
    t=0 0
    a=fingerprint:sha-256 3B:8A:0D:62:4E:3C:7A:12:89:4F:77:2E:C1:D4:0E:91:5B:AA:17:30:F2:6C:8E:4D:93:01:B5:6A:7C:2F:E8:D0
    a=group:BUNDLE 0
    a=ice-options:trickle
    a=msid-semantic:WMS *
    m=audio 9 UDP/TLS/RTP/SAVPF 109 9 0 8 101
    c=IN IP4 0.0.0.0
    a=sendrecv
    a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
    a=extmap:2/recvonly urn:ietf:params:rtp-hdrext:csrc-audio-level
    a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid
    a=fmtp:109 maxplaybackrate=48000;stereo=1;useinbandfec=1
    a=fmtp:101 0-15
    a=ice-pwd:9ad3a8f4f2c4cf8bf2c0ab7d23a3c1a8
    a=ice-ufrag:4f2a1b9c
    a=mid:0
    a=msid:{7d5c1e0a-3b2f-4c6d-9e8f-0a1b2c3d4e5f} {1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d}
    a=rtcp-mux
    a=rtpmap:109 opus/48000/2
    a=rtpmap:9 G722/8000/1
    a=rtpmap:0 PCMU/8000
    a=rtpmap:8 PCMA/8000
    a=rtpmap:101 telephone-event/8000
    a=setup:actpass
    a=ssrc:2655508255 cname:{5e4d3c2b-1a09-4f8e-b7a6-c5d4e3f2a1b0}
""")

# SIPp 3.6 stock uac scenario body.
SIPP_OFFER = crlf("""
    v=0
    o=user1 53655765 2353687637 IN IP4 127.0.0.1
    s=-
    c=IN IP4 127.0.0.1
    t=0 0
    m=audio 6000 RTP/AVP 0
    a=rtpmap:0 PCMU/8000
""")

# baresip 1.0 with the opus, g711 and telephone-event modules.
BARESIP_OFFER = crlf("""
    v=0
    o=- 1316366633 2806826389 IN IP4 192.168.1.20
    s=-
    c=IN IP4 192.168.1.20
    t=0 0
    m=audio 10434 RTP/AVP 96 0 8 101
    b=AS:205
    a=rtpmap:96 opus/48000/2
    a=fmtp:96 stereo=1;sprop-stereo=1
    a=rtpmap:0 PCMU/8000
    a=rtpmap:8 PCMA/8000
    a=rtpmap:101 telephone-event/8000
    a=fmtp:101 0-15
    a=rtcp-rsize
    a=sendrecv
    a=label:1
    a=ssrc:2151209581 cname:e5ee4ae8-ba10-4a74-9b64-11a4d3cbe7b3
""")

# A Yealink desk phone: static payload types without rtpmap for PCMU, G.729 annexb=no, ptime.
DESK_PHONE_OFFER = crlf("""
    v=0
    o=- 20040 20040 IN IP4 192.168.1.103
    s=SDP data
    c=IN IP4 192.168.1.103
    t=0 0
    m=audio 11800 RTP/AVP 0 8 18 9 101
    a=rtpmap:8 PCMA/8000
    a=rtpmap:18 G729/8000
    a=fmtp:18 annexb=no
    a=fmtp:101 0-15
    a=rtpmap:101 telephone-event/8000
    a=ptime:20
    a=sendrecv
""")

# ICE-lite peer (an SBC such as rtpengine) answering over IPv6.
ICE_LITE_IPV6 = crlf("""
    v=0
    o=- 1700000000 1700000001 IN IP6 2001:db8::10
    s=callpath
    c=IN IP6 2001:db8::10
    b=AS:80
    t=0 0
    a=ice-lite
    m=audio 30000 UDP/TLS/RTP/SAVPF 111 126
    a=rtpmap:111 opus/48000/2
    a=rtpmap:126 telephone-event/8000
    a=ice-ufrag:Kx9P
    a=ice-pwd:aYt3BQz8Lw1e2r3t4y5u6i7o
    a=candidate:1 1 UDP 2130706431 2001:db8::10 30000 typ host
    a=fingerprint:sha-256 AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89
    a=setup:passive
    a=mid:0
    a=rtcp-mux
    a=sendrecv
""")

# Every optional RFC 8866 field, a repeat time, a multicast c= with TTL, and an unknown line type.
FULL_RFC_SESSION = crlf("""
    v=0
    o=jdoe 3724394400 3724394405 IN IP4 198.51.100.1
    s=Call to John Smith
    i=SDP Offer #1
    u=http://www.jdoe.example.com/home.html
    e=Jane Doe <jane@jdoe.example.com>
    p=+1 617 555-6011
    c=IN IP4 233.252.0.1/127
    b=CT:128
    t=3724394400 3724398000
    r=604800 3600 0 90000
    t=0 0
    z=2882844526 -1h 2898848070 0
    k=prompt
    x=an unknown line type
    a=recvonly
    m=audio 49170/2 RTP/AVP 0
    i=main audio
    c=IN IP6 FF15::101/3
    b=AS:64
    k=clear:secret
    y=another unknown
    m=video 51372 RTP/AVP 99
    a=rtpmap:99 h263-1998/90000
""")

REAL_WORLD = {
    "chromium": CHROMIUM_OFFER,
    "firefox": FIREFOX_OFFER,
    "sipp": SIPP_OFFER,
    "baresip": BARESIP_OFFER,
    "desk-phone": DESK_PHONE_OFFER,
    "ice-lite-ipv6": ICE_LITE_IPV6,
    "full-rfc": FULL_RFC_SESSION,
}


# --------------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REAL_WORLD))
def test_round_trip_is_byte_exact(name: str) -> None:
    text = REAL_WORLD[name]
    sd = SessionDescription.parse(text)
    assert str(sd) == text
    assert sd.to_bytes() == text.encode()
    assert SessionDescription.parse(sd.to_bytes()) == sd


@pytest.mark.parametrize("name", sorted(REAL_WORLD))
def test_lf_endings_and_trailing_whitespace_are_tolerated(name: str) -> None:
    text = REAL_WORLD[name]
    sloppy = "\n".join(line + " \t" for line in text.split("\r\n")) + "\n\n"
    assert str(SessionDescription.parse(sloppy)) == text


def test_chromium_offer_model() -> None:
    sd = SessionDescription.parse(CHROMIUM_OFFER)
    assert sd.version == 0
    assert sd.origin == Origin("-", "4611731400430051336", 2, "IN", "IP4", "127.0.0.1")
    assert sd.name == "-"
    assert sd.timings == [Timing(0, 0)]
    assert sd.attribute("group") == "BUNDLE 0 1"
    assert sd.attribute("extmap-allow-mixed") == ""
    assert sd.attribute("ice-lite") is None
    audio, video = sd.media
    assert (audio.media, audio.port, audio.proto) == ("audio", 46243, "UDP/TLS/RTP/SAVPF")
    assert audio.formats == ["111", "63", "9", "0", "8", "13", "110", "126"]
    assert audio.payload_types == [111, 63, 9, 0, 8, 13, 110, 126]
    assert audio.rtpmap[111] == RtpMap("opus", 48000, 2)
    assert audio.rtpmap[110] == RtpMap("telephone-event", 48000)
    assert audio.rtpmap[126] == RtpMap("telephone-event", 8000)
    assert audio.fmtp == {111: "minptime=10;useinbandfec=1", 63: "111/111"}
    assert audio.attribute("mid") == "0"
    assert audio.attribute("ice-ufrag") == "Oyef"
    assert audio.attribute("setup") == "actpass"
    assert audio.attribute("rtcp-mux") == ""
    assert len(audio.attributes("candidate")) == 2
    assert audio.attributes("candidate") == audio.attributes_named("candidate")
    assert audio.attributes("extmap")[0] == "1 urn:ietf:params:rtp-hdrext:ssrc-audio-level"
    assert audio.attributes("ssrc")[0] == "3735928559 cname:o4bxd1e5mT1Hm5yC"
    assert audio.direction == "sendrecv"
    assert video.rtpmap[97] == RtpMap("rtx", 90000)
    assert video.fmtp[102].endswith("profile-level-id=42001f")
    assert video.attributes("rtcp-fb")[:2] == ["96 goog-remb", "96 transport-cc"]
    assert sd.effective_connection(audio) == Connection("192.168.0.196")
    assert sd.effective_connection(1) == Connection("0.0.0.0")
    assert sd.uses_ice(video)


def test_firefox_offer_model() -> None:
    sd = SessionDescription.parse(FIREFOX_OFFER)
    assert sd.origin.username == "mozilla...THIS_IS_SDPARTA-99.0"
    assert sd.origin.sess_version == 0
    assert sd.attribute("fingerprint").startswith("sha-256 3B:8A")
    assert sd.attribute("msid-semantic") == "WMS *"
    (audio,) = sd.media
    assert audio.rtpmap[9] == RtpMap("G722", 8000, 1)
    assert audio.attributes("extmap")[1] == "2/recvonly urn:ietf:params:rtp-hdrext:csrc-audio-level"
    assert audio.fmtp[101] == "0-15"
    assert parse_fmtp_params(audio.fmtp[109]) == {
        "maxplaybackrate": "48000",
        "stereo": "1",
        "useinbandfec": "1",
    }
    assert parse_fmtp_params(audio.fmtp[101]) == {"0-15": None}


def test_static_payload_types_without_rtpmap() -> None:
    sd = SessionDescription.parse(DESK_PHONE_OFFER)
    rtpmap = sd.media[0].rtpmap
    assert list(rtpmap) == [0, 8, 18, 9, 101]
    assert rtpmap[0] == RtpMap("PCMU", 8000)
    assert rtpmap[9] == RtpMap("G722", 8000)
    assert rtpmap[18] == STATIC_PAYLOAD_TYPES[18] == RtpMap("G729", 8000)
    assert sd.media[0].fmtp == {18: "annexb=no", 101: "0-15"}
    assert sd.media[0].attribute("ptime") == "20"
    assert sd.name == "SDP data"


def test_unknown_dynamic_payload_type_is_not_in_rtpmap() -> None:
    sd = SessionDescription.parse("v=0\no=- 1 1 IN IP4 10.0.0.1\ns=-\nt=0 0\nm=audio 4000 RTP/AVP 0 97\n")
    assert list(sd.media[0].rtpmap) == [0]


def test_malformed_rtpmap_is_kept_but_ignored() -> None:
    text = crlf("""
        v=0
        o=- 1 1 IN IP4 10.0.0.1
        s=-
        t=0 0
        m=audio 4000 RTP/AVP 96
        a=rtpmap:96 opus
    """)
    sd = SessionDescription.parse(text)
    assert sd.media[0].rtpmap == {}
    assert str(sd) == text


def test_ipv6_and_multicast_connections() -> None:
    sd = SessionDescription.parse(ICE_LITE_IPV6)
    assert sd.connection == Connection("2001:db8::10", "IN", "IP6")
    assert sd.origin.addrtype == "IP6"
    assert sd.attribute("ice-lite") == ""
    assert sd.bandwidths == [Bandwidth("AS", 80)]
    assert sd.effective_connection(0).address == "2001:db8::10"

    full = SessionDescription.parse(FULL_RFC_SESSION)
    assert full.connection == Connection("233.252.0.1", "IN", "IP4", ttl=127)
    audio = full.media[0]
    assert audio.connection == Connection("FF15::101", "IN", "IP6", num_addresses=3)
    assert audio.port == 49170 and audio.port_count == 2
    assert full.effective_connection(1) == full.connection
    assert str(Connection.parse("IN IP4 233.252.0.1/127/3")) == "IN IP4 233.252.0.1/127/3"


def test_optional_fields_and_unknown_lines_are_kept() -> None:
    sd = SessionDescription.parse(FULL_RFC_SESSION)
    assert sd.information == "SDP Offer #1"
    assert sd.uri == "http://www.jdoe.example.com/home.html"
    assert sd.emails == ["Jane Doe <jane@jdoe.example.com>"]
    assert sd.phones == ["+1 617 555-6011"]
    assert sd.timings[0].repeats == ["604800 3600 0 90000"]
    assert sd.timings[1] == Timing(0, 0)
    assert sd.time_zones == "2882844526 -1h 2898848070 0"
    assert sd.encryption_key == "prompt"
    assert sd.extra_lines == [("x", "an unknown line type")]
    assert sd.media[0].extra_lines == [("y", "another unknown")]
    assert sd.media[0].information == "main audio"
    assert sd.media[0].encryption_key == "clear:secret"
    assert sd.media[1].rtpmap[99] == RtpMap("h263-1998", 90000)


def test_unknown_attributes_keep_their_order_through_edits() -> None:
    sd = SessionDescription.parse(BARESIP_OFFER)
    audio = sd.media[0]
    audio.set_attribute("ptime", "20")
    audio.remove_attribute("rtcp-rsize")
    text = str(sd)
    assert "a=label:1\r\na=ssrc:2151209581" in text
    assert text.endswith("a=ssrc:2151209581 cname:e5ee4ae8-ba10-4a74-9b64-11a4d3cbe7b3\r\na=ptime:20\r\n")
    assert "rtcp-rsize" not in text


def test_attribute_helpers() -> None:
    section = MediaDescription("audio", 4000, "RTP/AVP", ["0"])
    assert section.attribute("ptime") is None
    section.add_attribute("rtcp-mux")
    section.add_attribute("candidate", "1 1 udp 1 10.0.0.1 4000 typ host")
    section.add_attribute("candidate", "2 1 udp 1 10.0.0.2 4000 typ host")
    section.add_attribute("ptime", "30")
    assert section.attribute("rtcp-mux") == ""
    assert section.has_attribute("rtcp-mux")
    assert section.attributes("candidate")[1].startswith("2 ")
    section.set_attribute("candidate", "3 1 udp 1 10.0.0.3 4000 typ host")
    assert [a.name for a in section.attributes] == ["rtcp-mux", "candidate", "ptime"]
    assert section.attribute("candidate").startswith("3 ")
    assert section.remove_attribute("ptime", "20") == 0
    assert section.remove_attribute("ptime") == 1
    assert section.attributes == [
        Attribute("rtcp-mux"),
        Attribute("candidate", "3 1 udp 1 10.0.0.3 4000 typ host"),
    ]


def test_direction_defaults_and_overrides() -> None:
    sd = SessionDescription.parse(SIPP_OFFER)
    assert sd.direction is None and sd.media[0].direction is None
    assert sd.effective_direction(0) == "sendrecv"
    sd.direction = "recvonly"
    assert sd.effective_direction(0) == "recvonly"
    sd.media[0].direction = "inactive"
    assert sd.effective_direction(sd.media[0]) == "inactive"
    sd.media[0].direction = "sendonly"
    assert sd.media[0].attributes == [Attribute("rtpmap", "0 PCMU/8000"), Attribute("sendonly")]
    sd.media[0].direction = None
    assert sd.effective_direction(0) == "recvonly"
    with pytest.raises(ValueError):
        sd.direction = "sideways"
    full = SessionDescription.parse(FULL_RFC_SESSION)
    assert full.effective_direction(0) == "recvonly"


def test_bytes_input_and_non_ascii_survive() -> None:
    body = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=Llamada de José\r\nt=0 0\r\n".encode()
    assert SessionDescription.parse(body).to_bytes() == body
    latin1 = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=Jos\xe9\r\nt=0 0\r\n"
    assert SessionDescription.parse(latin1).to_bytes() == latin1


def test_empty_session_name_is_emitted_as_a_space() -> None:
    text = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns= \r\nt=0 0\r\n"
    assert str(SessionDescription.parse(text)) == text


def test_built_from_scratch() -> None:
    sd = SessionDescription(
        origin=Origin("alice", "42", 1, "IN", "IP4", "192.0.2.1"),
        connection=Connection.for_address("192.0.2.1"),
        media=[MediaDescription("audio", 5004, "RTP/AVP", ["0"], attributes=[Attribute("sendrecv")])],
    )
    assert str(sd) == crlf("""
        v=0
        o=alice 42 1 IN IP4 192.0.2.1
        s=-
        c=IN IP4 192.0.2.1
        t=0 0
        m=audio 5004 RTP/AVP 0
        a=sendrecv
    """)
    assert sd.media[0].attributes("sendrecv") == [""]


# --------------------------------------------------------------------------------------------------
# Malformed input
# --------------------------------------------------------------------------------------------------

GOOD_HEAD = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nt=0 0\r\n"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "empty"),
        (" \r\n\r\n", "empty"),
        ("o=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nt=0 0\r\n", "v="),
        ("v=1\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nt=0 0\r\n", "version"),
        ("v=0\r\ns=-\r\nt=0 0\r\n", "o="),
        ("v=0\r\nv=0\r\no=- 1 1 IN IP4 10.0.0.1\r\n", "duplicate"),
        ("v=0\r\no=- 1 1 IN IP4\r\n", "o= line needs 6 fields"),
        ("v=0\r\no=- 1 x IN IP4 10.0.0.1\r\n", "sess-version"),
        (GOOD_HEAD + "this is not sdp\r\n", "not <type>=<value>"),
        (GOOD_HEAD + "=foo\r\n", "not <type>=<value>"),
        (GOOD_HEAD + "c=IN IP4\r\n", "c= line needs 3 fields"),
        (GOOD_HEAD + "c=IN IP4 224.2.1.1/abc\r\n", "not numeric"),
        (GOOD_HEAD + "b=AS\r\n", "b= line"),
        (GOOD_HEAD + "b=AS:lots\r\n", "not numeric"),
        ("v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nt=now later\r\n", "t= line"),
        ("v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nr=1 2 3\r\n", "r= line without"),
        (GOOD_HEAD + "a=\r\n", "empty attribute name"),
        (GOOD_HEAD + "m=audio\r\n", "m= line"),
        (GOOD_HEAD + "m=audio 4000\r\n", "m= line"),
        (GOOD_HEAD + "m=audio abc RTP/AVP 0\r\n", "m= port"),
        (GOOD_HEAD + "m=audio -1 RTP/AVP 0\r\n", "m= port"),
        (GOOD_HEAD + "m=audio 70000 RTP/AVP 0\r\n", "m= port"),
        (GOOD_HEAD + "m=audio 4000/x RTP/AVP 0\r\n", "port count"),
        (GOOD_HEAD + "m=audio 4000/0 RTP/AVP 0\r\n", "port count"),
        (GOOD_HEAD + "m=audio 4000 RTP/AVP 0\r\no=- 2 2 IN IP4 10.0.0.2\r\n", "not allowed inside a media"),
        (GOOD_HEAD + "m=audio 4000 RTP/AVP 0\r\nt=0 0\r\n", "not allowed inside a media"),
        (GOOD_HEAD + "c=IN IP4 10.0.0.1\r\nc=IN IP4 10.0.0.2\r\n", "duplicate c="),
    ],
)
def test_malformed_input_raises_sdp_error(body: str, message: str) -> None:
    with pytest.raises(SdpError, match=message):
        SessionDescription.parse(body)


def test_sdp_error_is_a_value_error_naming_the_line() -> None:
    with pytest.raises(ValueError, match=r"line 5: m= port"):
        SessionDescription.parse(GOOD_HEAD + "m=audio abc RTP/AVP 0\r\n")
    assert issubclass(SdpError, ValueError)


def test_rtpmap_parse_errors() -> None:
    with pytest.raises(SdpError):
        RtpMap.parse("opus")
    with pytest.raises(SdpError):
        RtpMap.parse("opus/48000/two")
    assert str(RtpMap.parse("opus/48000/2")) == "opus/48000/2"
    assert str(RtpMap.parse("PCMU/8000/1")) == "PCMU/8000"


# --------------------------------------------------------------------------------------------------
# RFC 3264 answers
# --------------------------------------------------------------------------------------------------

G711_AND_DTMF = [("PCMU", 8000), ("PCMA", 8000), ("telephone-event", 8000)]


def test_answer_to_desk_phone_intersects_codecs_in_offer_order() -> None:
    offer = SessionDescription.parse(DESK_PHONE_OFFER)
    answer = create_answer(offer, [("PCMA", 8000), *G711_AND_DTMF], "192.0.2.10", 40000, session_id="77")
    assert str(answer) == crlf("""
        v=0
        o=- 77 1 IN IP4 192.0.2.10
        s=-
        c=IN IP4 192.0.2.10
        t=0 0
        m=audio 40000 RTP/AVP 0 8 101
        a=rtpmap:0 PCMU/8000
        a=rtpmap:8 PCMA/8000
        a=rtpmap:101 telephone-event/8000
        a=fmtp:101 0-15
        a=sendrecv
    """)


def test_answer_local_preference_and_single_codec() -> None:
    offer = SessionDescription.parse(DESK_PHONE_OFFER)
    local = [("PCMA", 8000), ("PCMU", 8000), ("telephone-event", 8000)]
    answer = create_answer(offer, local, "192.0.2.10", 40000, local_preference=True)
    assert answer.media[0].formats == ["8", "0", "101"]
    single = create_answer(offer, local, "192.0.2.10", 40000, single_codec=True, ptime=20)
    assert single.media[0].formats == ["0", "101"]
    assert single.media[0].attribute("ptime") == "20"
    single_local = create_answer(offer, local, "192.0.2.10", 40000, single_codec=True, local_preference=True)
    assert single_local.media[0].formats == ["8", "101"]


def test_answer_keeps_the_offerers_payload_type_numbers() -> None:
    offer = SessionDescription.parse(BARESIP_OFFER)
    answer = create_answer(offer, [("OPUS", 48000), ("telephone-event", 8000)], "192.0.2.10", 40000)
    audio = answer.media[0]
    assert audio.formats == ["96", "101"]
    assert audio.rtpmap == {96: RtpMap("opus", 48000, 2), 101: RtpMap("telephone-event", 8000)}
    assert audio.fmtp == {96: "stereo=1;sprop-stereo=1", 101: "0-15"}


def test_answer_rejects_unsupported_media_keeping_m_line_count_and_order() -> None:
    offer = SessionDescription.parse(CHROMIUM_OFFER)
    answer = create_answer(offer, G711_AND_DTMF, "192.0.2.10", 40000)
    assert [m.media for m in answer.media] == ["audio", "video"]
    audio, video = answer.media
    assert audio.port == 40000 and audio.proto == "UDP/TLS/RTP/SAVPF"
    # G.711 kept, telephone-event only at the offered 8000 rate (110 is te/48000), no CN (not local).
    assert audio.formats == ["0", "8", "126"]
    assert audio.attribute("mid") == "0"
    assert video.port == 0 and video.is_rejected
    assert video.formats == ["96", "97", "102", "103"]
    assert video.attribute("mid") == "1"
    assert video.direction is None
    assert str(video) == "m=video 0 UDP/TLS/RTP/SAVPF 96 97 102 103\r\na=mid:1\r\n"


def test_answer_keeps_rtx_only_with_its_codec() -> None:
    offer = SessionDescription.parse(CHROMIUM_OFFER)
    local = [("opus", 48000), ("red", 48000), ("VP8", 90000), ("rtx", 90000), ("telephone-event", 48000)]
    answer = create_answer(offer, local, "192.0.2.10", [40000, 40002])
    audio, video = answer.media
    assert audio.formats == ["111", "63", "110"]
    assert video.formats == ["96", "97"]
    assert video.fmtp == {97: "apt=96"}


def test_answer_with_only_auxiliary_formats_in_common_is_rejected() -> None:
    offer = SessionDescription.parse(DESK_PHONE_OFFER)
    answer = create_answer(offer, [("opus", 48000), ("telephone-event", 8000)], "192.0.2.10", 40000)
    assert answer.media[0].port == 0
    assert answer.media[0].formats == ["0", "8", "18", "9", "101"]
    assert answer.media[0].attributes == []


def test_answer_telephone_event_at_a_rate_we_do_not_list_is_dropped() -> None:
    offer = SessionDescription.parse(DESK_PHONE_OFFER)
    answer = create_answer(offer, [("PCMU", 8000), ("telephone-event", 48000)], "192.0.2.10", 40000)
    assert answer.media[0].formats == ["0"]


def test_answer_single_codec_prefers_dtmf_at_the_codec_rate() -> None:
    offer = SessionDescription.parse(CHROMIUM_OFFER)
    local = [("opus", 48000), ("telephone-event", 8000), ("telephone-event", 48000)]
    answer = create_answer(offer, local, "192.0.2.10", [40000, 0], single_codec=True)
    assert answer.media[0].formats == ["111", "110"]
    answer = create_answer(offer, local[:2], "192.0.2.10", [40000, 0], single_codec=True)
    assert answer.media[0].formats == ["111", "126"]


@pytest.mark.parametrize(
    ("offered", "local", "answered"),
    [
        ("sendrecv", "sendrecv", "sendrecv"),
        ("sendonly", "sendrecv", "recvonly"),
        ("recvonly", "sendrecv", "sendonly"),
        ("inactive", "sendrecv", "inactive"),
        ("sendrecv", "recvonly", "recvonly"),
        ("sendrecv", "sendonly", "sendonly"),
        ("sendonly", "sendonly", "inactive"),
        ("recvonly", "inactive", "inactive"),
    ],
)
def test_answer_direction(offered: str, local: str, answered: str) -> None:
    offer = SessionDescription.parse(SIPP_OFFER)
    offer.media[0].direction = offered
    answer = create_answer(offer, G711_AND_DTMF, "192.0.2.10", 40000, direction=local)
    assert answer.media[0].direction == answered


def test_answer_direction_from_session_level_and_legacy_hold() -> None:
    offer = SessionDescription.parse(SIPP_OFFER)
    offer.direction = "sendonly"
    assert create_answer(offer, G711_AND_DTMF, "192.0.2.10", 40000).media[0].direction == "recvonly"
    legacy = SessionDescription.parse(SIPP_OFFER.replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0"))
    assert create_answer(legacy, G711_AND_DTMF, "192.0.2.10", 40000).media[0].direction == "recvonly"
    # A WebRTC offer's c=0.0.0.0 placeholder is not a hold.
    webrtc = SessionDescription.parse(FIREFOX_OFFER)
    assert create_answer(webrtc, G711_AND_DTMF, "192.0.2.10", 40000).media[0].direction == "sendrecv"


def test_answer_ports_by_media_type_and_by_index() -> None:
    offer = SessionDescription.parse(CHROMIUM_OFFER)
    local = [("PCMU", 8000), ("VP8", 90000)]
    by_type = create_answer(offer, local, "192.0.2.10", {"audio": 40000})
    assert [m.port for m in by_type.media] == [40000, 0]
    by_index = create_answer(offer, local, "192.0.2.10", [40000, 40002])
    assert [m.port for m in by_index.media] == [40000, 40002]
    with pytest.raises(ValueError, match="2 offered m-lines"):
        create_answer(offer, local, "192.0.2.10", [40000])


def test_answer_rejects_an_already_rejected_or_non_rtp_offer() -> None:
    body = crlf("""
        v=0
        o=- 1 1 IN IP4 10.0.0.1
        s=-
        c=IN IP4 10.0.0.1
        t=0 0
        m=audio 0 RTP/AVP 0
        m=application 5000 UDP/DTLS/SCTP webrtc-datachannel
        m=audio 4002 RTP/AVP 0
    """)
    answer = create_answer(SessionDescription.parse(body), G711_AND_DTMF, "192.0.2.10", 40000)
    assert [m.port for m in answer.media] == [0, 0, 40000]
    assert answer.media[1].formats == ["webrtc-datachannel"]


def test_answer_copies_offer_timing_and_handles_ipv6() -> None:
    offer = SessionDescription.parse(FULL_RFC_SESSION)
    answer = create_answer(offer, [("PCMU", 8000)], "2001:db8::1", 40000)
    assert answer.timings == offer.timings and answer.timings is not offer.timings
    assert answer.connection == Connection("2001:db8::1", "IN", "IP6")
    assert answer.origin.addrtype == "IP6"
    assert answer.media[0].direction == "sendonly"  # session-level a=recvonly in the offer
    assert answer.media[1].port == 0


def test_re_answer_keeps_origin_and_bumps_version_only_when_changed() -> None:
    offer = SessionDescription.parse(DESK_PHONE_OFFER)
    first = create_answer(offer, G711_AND_DTMF, "192.0.2.10", 40000, session_id="900", username="callpath")
    assert first.origin == Origin("callpath", "900", 1, "IN", "IP4", "192.0.2.10")
    same = create_answer(offer, G711_AND_DTMF, "192.0.2.10", 40000, previous=first)
    assert same.origin == first.origin and same == first
    offer.media[0].direction = "sendonly"
    changed = create_answer(offer, G711_AND_DTMF, "192.0.2.10", 40000, previous=first)
    assert changed.origin == replace_version(first.origin, 2)
    assert changed.media[0].direction == "recvonly"


def replace_version(origin: Origin, version: int) -> Origin:
    return Origin(origin.username, origin.sess_id, version, origin.nettype, origin.addrtype, origin.address)


def test_random_session_id_is_numeric() -> None:
    offer = SessionDescription.parse(SIPP_OFFER)
    a = create_answer(offer, G711_AND_DTMF, "192.0.2.10", 40000)
    b = create_answer(offer, G711_AND_DTMF, "192.0.2.10", 40000)
    assert a.origin.sess_id.isdigit() and a.origin.sess_id != b.origin.sess_id


# --------------------------------------------------------------------------------------------------
# Offers and re-offers
# --------------------------------------------------------------------------------------------------


def test_create_offer_assigns_static_and_dynamic_payload_types() -> None:
    offer = create_offer(
        "192.0.2.10",
        40000,
        [("opus", 48000), ("PCMU", 8000), ("pcma", 8000), ("G722", 8000), ("telephone-event", 8000)],
        ptime=20,
        session_id="5",
    )
    assert str(offer) == crlf("""
        v=0
        o=- 5 1 IN IP4 192.0.2.10
        s=-
        c=IN IP4 192.0.2.10
        t=0 0
        m=audio 40000 RTP/AVP 96 0 8 9 101
        a=rtpmap:96 opus/48000/2
        a=rtpmap:0 PCMU/8000
        a=rtpmap:8 pcma/8000
        a=rtpmap:9 G722/8000
        a=rtpmap:101 telephone-event/8000
        a=fmtp:101 0-16
        a=ptime:20
        a=sendrecv
    """)


def test_create_offer_fmtp_and_many_dynamic_codecs() -> None:
    codecs = [("telephone-event", 48000), ("telephone-event", 8000), ("opus", 48000), ("L16", 16000)]
    offer = create_offer("192.0.2.10", 40000, codecs, fmtp={"OPUS": "useinbandfec=1"})
    audio = offer.media[0]
    assert audio.payload_types == [101, 96, 97, 98]
    assert audio.fmtp == {97: "useinbandfec=1"}
    video = MediaDescription.for_codecs([("VP8", 90000), ("H263", 90000)], 40002, media="video")
    offer.media.append(video)
    assert video.formats == ["96", "34"]
    assert SessionDescription.parse(offer.to_bytes()) == offer


def test_offer_answer_round_between_two_callpath_ends() -> None:
    offer = create_offer("192.0.2.10", 40000, [("opus", 48000), ("PCMA", 8000), ("telephone-event", 8000)])
    answer = create_answer(SessionDescription.parse(str(offer)), G711_AND_DTMF, "198.51.100.5", 50000)
    audio = answer.media[0]
    assert audio.formats == ["8", "101"]
    assert answer.effective_connection(audio).address == "198.51.100.5"
    assert audio.fmtp[101] == "0-16"


def test_bump_version() -> None:
    first = create_offer("192.0.2.10", 40000, [("PCMU", 8000)], session_id="31")
    unchanged = create_offer("192.0.2.10", 40000, [("PCMU", 8000)], previous=first)
    assert unchanged.origin == first.origin
    changed = create_offer("192.0.2.10", 40002, [("PCMU", 8000)], previous=first)
    assert changed.origin.sess_id == "31" and changed.origin.sess_version == 2
    again = bump_version(changed, changed)
    assert again.origin.sess_version == 2
    moved = first.copy()
    moved.origin.address = "192.0.2.99"  # o= identity always comes from the previous SDP
    moved.media[0].port = 40004
    bumped = bump_version(moved, first)
    assert bumped.origin == replace_version(first.origin, 2)
    assert moved.origin.sess_version == 1  # the input is not modified


# --------------------------------------------------------------------------------------------------
# Hold
# --------------------------------------------------------------------------------------------------


def test_is_hold_detection() -> None:
    sd = SessionDescription.parse(SIPP_OFFER)
    assert not is_hold(sd)
    for direction, held in [("sendonly", True), ("inactive", True), ("recvonly", False), ("sendrecv", False)]:
        sd.media[0].direction = direction
        assert is_hold(sd) is held
        assert is_hold(sd, 0) is held
    sd.media[0].direction = None
    sd.direction = "sendonly"
    assert is_hold(sd)


def test_is_hold_legacy_and_webrtc_placeholder() -> None:
    legacy = SessionDescription.parse(SIPP_OFFER.replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0"))
    assert is_hold(legacy)
    assert legacy.is_legacy_hold(0)
    assert not is_hold(SessionDescription.parse(FIREFOX_OFFER))
    assert not is_hold(SessionDescription.parse(CHROMIUM_OFFER))


def test_is_hold_needs_every_active_stream_held() -> None:
    sd = SessionDescription.parse(CHROMIUM_OFFER)
    sd.media[0].direction = "sendonly"
    assert is_hold(sd, 0) and not is_hold(sd)
    sd.media[1].port = 0
    assert is_hold(sd)
    sd.media[0].port = 0
    assert not is_hold(sd)  # nothing active: rejected, not held


def test_hold_and_resume_re_offers() -> None:
    offer = create_offer("192.0.2.10", 40000, G711_AND_DTMF, session_id="8")
    held = hold(offer)
    assert held.media[0].direction == "sendonly"
    assert held.origin == replace_version(offer.origin, 2)
    assert offer.media[0].direction == "sendrecv"  # untouched
    assert is_hold(held)
    assert hold(held).origin.sess_version == 2  # holding again changes nothing

    resumed = resume(held)
    assert resumed.media[0].direction == "sendrecv"
    assert resumed.origin.sess_version == 3
    assert not is_hold(resumed)


def test_hold_inactive_and_from_recvonly() -> None:
    offer = create_offer("192.0.2.10", 40000, G711_AND_DTMF, direction="recvonly")
    assert hold(offer).media[0].direction == "inactive"
    offer.media[0].direction = "sendrecv"
    assert hold(offer, inactive=True).media[0].direction == "inactive"


def test_legacy_hold_and_resume() -> None:
    offer = create_offer("192.0.2.10", 40000, G711_AND_DTMF)
    held = hold(offer, legacy=True)
    assert held.connection.address == "0.0.0.0"
    assert offer.connection.address == "192.0.2.10"
    assert held.is_legacy_hold(0)
    with pytest.raises(ValueError, match="address"):
        resume(held)
    resumed = resume(held, address="192.0.2.10")
    assert resumed.connection == Connection("192.0.2.10")
    assert not is_hold(resumed)


def test_hold_leaves_rejected_streams_alone() -> None:
    sd = SessionDescription.parse(CHROMIUM_OFFER)
    sd.media[1].port = 0
    held = hold(sd)
    assert held.media[0].direction == "sendonly"
    assert held.media[1].direction == "sendrecv"
    assert held.origin.sess_version == sd.origin.sess_version + 1


def test_argument_errors_and_small_cases() -> None:
    offer = SessionDescription.parse(SIPP_OFFER)
    with pytest.raises(ValueError, match="direction"):
        create_answer(offer, G711_AND_DTMF, "192.0.2.10", 40000, direction="both")
    with pytest.raises(ValueError, match="direction"):
        resume(offer, direction="both")
    with pytest.raises(ValueError, match="dynamic payload types"):
        MediaDescription.for_codecs([("X-CODEC", 8000 + i) for i in range(40)], 4000)
    assert Connection.for_address("pbx.example.com") == Connection("pbx.example.com", "IN", "IP4")
    assert Connection.for_address("::1").addrtype == "IP6"
    with pytest.raises(SdpError, match="duplicate i="):
        SessionDescription.parse(GOOD_HEAD + "m=audio 4000 RTP/AVP 0\r\ni=a\r\ni=b\r\n")
    with pytest.raises(SdpError, match="too many"):
        Connection.parse("IN IP6 FF15::101/3/4")
