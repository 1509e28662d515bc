"""The SDP rules of a media leg: what the worker offers and answers per transport, and what an SDP says.

Module functions read SDP (``negotiated_codec``, ``offered_direction``, ``rtp_address``, ``is_webrtc``,
``is_sdes``) or edit ours (``restrict``, ``set_fmtp``, ``set_ice_credentials``); the ``Negotiation`` part of
the worker (``media/negotiation.py``) applies them to legs.
"""
from __future__ import annotations

from .sdp import Attribute, RtpMap, SessionDescription

from .bridge import LegCodec
from .srtp import AES128_CM_SHA1_80, DTLS_SRTP_PROFILES, CryptoAttribute, SrtpError

WEBRTC = "UDP/TLS/RTP/SAVPF"
RTP = "RTP/AVP"
SDES = "RTP/SAVP"                 # plain RTP with SRTP keyed by a=crypto (RFC 4568): trunks and desk phones
TRANSPORTS = {"rtp": RTP, "sdes": SDES, "webrtc": WEBRTC}       # the leg API's names -> SDP protos
TRANSPORT_NAMES = {proto: name for name, proto in TRANSPORTS.items()}
BROWSER_CODECS: list[tuple[str, int] | tuple[str, int, int]] = [
    ("opus", 48000, 2), ("PCMU", 8000), ("telephone-event", 48000), ("telephone-event", 8000)]
TRUNK_CODECS: list[tuple[str, int] | tuple[str, int, int]] = [
    ("PCMU", 8000), ("PCMA", 8000), ("telephone-event", 8000)]
CODEC_RTPMAP: dict[str, tuple[str, int] | tuple[str, int, int]] = {
    "opus": ("opus", 48000, 2), "pcmu": ("PCMU", 8000), "pcma": ("PCMA", 8000)}
FMTP = {"opus": "minptime=10;useinbandfec=1", "telephone-event": "0-16"}
# towards a browser whose Opus the worker transcodes to/from G.711: the bridge runs at 8 kHz, so ask for
# narrowband (RFC 7587 maxplaybackrate; browsers then code SILK narrowband, which costs a quarter to decode
# of what fullband does: benchmarks/media/RESULTS.md) and say we send nothing wider
OPUS_TRANSCODED_FMTP = "minptime=10;useinbandfec=1;maxplaybackrate=8000;sprop-maxcapturerate=8000"
AUDIO = ("opus", "pcmu", "pcma")
DTMF_MODES = ("rfc4733", "inband", "info")
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
MIRROR = {"sendonly": "recvonly", "recvonly": "sendonly", "sendrecv": "sendrecv", "inactive": "inactive"}


class MediaError(Exception):
    """A request the worker cannot serve (unknown leg or call, unusable SDP...); the message says why."""


# SDES suites we take and offer, most preferred first (the 80-bit tag is what every SRTP phone has)
SDES_PROFILES = (AES128_CM_SHA1_80, *(p for p in DTLS_SRTP_PROFILES if p is not AES128_CM_SHA1_80))


def is_sdes(sd: SessionDescription) -> bool:
    """Whether an SDP's first section is SRTP keyed in the SDP (RTP/SAVP or RTP/SAVPF without DTLS)."""
    return bool(sd.media) and sd.media[0].proto.upper() in ("RTP/SAVP", "RTP/SAVPF")


def usable_crypto(sd: SessionDescription) -> list[CryptoAttribute]:
    """The a=crypto lines of the first section we can key a leg with, in the SDP's order (no MKI, no
    session parameters such as UNENCRYPTED_SRTP)."""
    usable = []
    for value in sd.media[0].attributes("crypto") if sd.media else []:
        try:
            crypto = CryptoAttribute.parse(value)
        except SrtpError:
            continue
        if crypto.profile in SDES_PROFILES and crypto.mki is None and not crypto.session_params:
            usable.append(crypto)
    return usable


def is_webrtc(sd: SessionDescription) -> bool:
    """Whether an SDP's first audio section is a WebRTC (DTLS-SRTP + ICE) one."""
    section = sd.media[0]
    return "TLS" in section.proto.upper() and "SAVP" in section.proto.upper()


def negotiated_codec(sd: SessionDescription) -> LegCodec:
    """The codec an answer settled on: the first audio format we handle, plus the telephone-event for it."""
    if not sd.media or sd.media[0].is_rejected:
        raise MediaError("the SDP has no active audio section")
    section = sd.media[0]
    rtpmap = section.rtpmap
    audio: tuple[int, RtpMap] | None = None
    for pt in section.payload_types:
        m = rtpmap.get(pt)
        if m is not None and m.encoding.lower() in AUDIO:
            audio = (pt, m)
            break
    if audio is None:
        raise MediaError(f"no supported codec (opus, PCMU, PCMA) in m={section.media} {' '.join(section.formats)}")
    events = [(pt, m) for pt, m in rtpmap.items() if m.encoding.lower() == "telephone-event"]
    event = next((e for e in events if e[1].clock_rate == audio[1].clock_rate), events[0] if events else None)
    return LegCodec(audio[0], audio[1].encoding, audio[1].clock_rate,
                    event[0] if event else None, event[1].clock_rate if event else 8000)


def offers(sd: SessionDescription, encoding: str) -> bool:
    """Whether the first section of an offer lists ``encoding``."""
    return any(m.encoding.lower() == encoding for m in sd.media[0].rtpmap.values())


def restrict(sd: SessionDescription, codec: LegCodec) -> SessionDescription:
    """A copy of our SDP listing only the negotiated codec and telephone-event (re-offers keep the codec)."""
    result = sd.copy()
    section = result.media[0]
    keep = {str(codec.payload_type)}
    if codec.event_payload_type is not None:
        keep.add(str(codec.event_payload_type))
    section.formats = [f for f in section.formats if f in keep]
    section.attributes[:] = [a for a in section.attributes
                             if a.name not in ("rtpmap", "fmtp") or (a.value or "").split(" ", 1)[0] in keep]
    return result


def set_ice_credentials(sd: SessionDescription, ufrag: str, pwd: str) -> None:
    """Put new ice-ufrag/ice-pwd (an ICE restart) wherever ``sd`` carries them, media or session level."""
    for attributes in (sd.attributes, *(m.attributes for m in sd.media)):
        for i, attribute in enumerate(attributes):
            if attribute.name == "ice-ufrag":
                attributes[i] = Attribute("ice-ufrag", ufrag)
            elif attribute.name == "ice-pwd":
                attributes[i] = Attribute("ice-pwd", pwd)


def set_fmtp(sd: SessionDescription, payload_type: int, value: str) -> None:
    """Replace the fmtp of ``payload_type`` in the first section of ``sd``."""
    section = sd.media[0]
    pt = str(payload_type)
    attrs = section.attributes
    line = Attribute("fmtp", f"{pt} {value}")
    for i, a in enumerate(attrs):
        if a.name == "fmtp" and (a.value or "").split(" ", 1)[0] == pt:
            attrs[i] = line
            return
    at = next((i + 1 for i, a in enumerate(attrs) if a.name == "rtpmap" and (a.value or "").split(" ", 1)[0] == pt),
              len(attrs))
    attrs.insert(at, line)


def offered_direction(sd: SessionDescription) -> str:
    """The direction of an SDP's audio, from its sender's side; the RFC 2543 hold (c=0.0.0.0) is sendonly."""
    direction = sd.effective_direction(0)
    if sd.is_legacy_hold(0):
        direction = "sendonly" if direction == "sendrecv" else "inactive"
    return direction


def rtp_address(sd: SessionDescription) -> tuple[str, int] | None:
    """Where a plain-RTP party wants media (c= and m= port), None when on hold/unknown."""
    conn = sd.effective_connection(0)
    port = sd.media[0].port
    if conn is None or port == 0 or conn.address in ("0.0.0.0", "::"):
        return None
    return (conn.address, port)




def offered_codecs(sd: SessionDescription) -> list[str]:
    """The audio codecs of an SDP's first section we handle, in its order (``opus``, ``pcmu``, ``pcma``)."""
    names: list[str] = []
    rtpmap = sd.media[0].rtpmap
    for pt in sd.media[0].payload_types:
        m = rtpmap.get(pt)
        if m is not None and m.encoding.lower() in AUDIO and m.encoding.lower() not in names:
            names.append(m.encoding.lower())
    return names


def keeps_codec(sd: SessionDescription, codec: LegCodec) -> bool:
    """Whether a re-offer still lists ``codec`` on the same payload type."""
    return any(m.encoding.lower() == codec.name and m.clock_rate == codec.clock_rate and pt == codec.payload_type
               for pt, m in sd.media[0].rtpmap.items())


def transport_of(sd: SessionDescription) -> str:
    """WEBRTC, SDES or RTP: the kind of leg an offer asks for."""
    return WEBRTC if is_webrtc(sd) else SDES if is_sdes(sd) else RTP
