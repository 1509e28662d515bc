"""media.srtp: SrtpContext over pylibsrtp, profiles, SDES a=crypto."""
from __future__ import annotations

import base64
import os
import struct

import pytest

from media.srtp import (
    AEAD_AES_128_GCM,
    AEAD_AES_256_GCM,
    AES128_CM_SHA1_80,
    DTLS_SRTP_PROFILES,
    PROFILES,
    CryptoAttribute,
    SrtpContext,
    SrtpError,
    is_rtcp,
    profile_by_name,
    sdes_context,
)


def rtp(seq: int, ts: int = 0, ssrc: int = 0x11223344, payload: bytes = b"\xab" * 160, pt: int = 111) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, ts, ssrc) + payload


def rtcp_rr(ssrc: int = 0x11223344) -> bytes:
    # an empty receiver report (PT 201, length 1 word after the header)
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


def pair(profile):
    a = os.urandom(profile.key_salt_length)
    b = os.urandom(profile.key_salt_length)
    return SrtpContext(profile, a, b), SrtpContext(profile, b, a)


def test_key_salt_lengths_per_profile():
    assert (AES128_CM_SHA1_80.key_length, AES128_CM_SHA1_80.salt_length) == (16, 14)
    assert (AEAD_AES_128_GCM.key_length, AEAD_AES_128_GCM.salt_length) == (16, 12)
    assert (AEAD_AES_256_GCM.key_length, AEAD_AES_256_GCM.salt_length) == (32, 12)
    assert DTLS_SRTP_PROFILES[0] is AEAD_AES_256_GCM  # browsers' preference too


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_rtp_round_trip(profile):
    alice, bob = pair(profile)
    for seq in range(1000, 1010):
        packet = rtp(seq, ts=seq * 960)
        wire = alice.protect(packet)
        assert wire != packet and wire[:12] == packet[:12]
        assert len(wire) == len(packet) + profile.rtp_overhead
        assert bob.unprotect(wire) == packet
    # and the other direction
    assert alice.unprotect(bob.protect(rtp(7))) == rtp(7)


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_rtcp_round_trip(profile):
    alice, bob = pair(profile)
    packet = rtcp_rr()
    wire = alice.protect_rtcp(packet)
    assert is_rtcp(wire) and wire != packet
    assert bob.unprotect_rtcp(wire) == packet


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_replay_and_tampering_rejected(profile):
    alice, bob = pair(profile)
    wire = alice.protect(rtp(42))
    assert bob.unprotect(wire) == rtp(42)
    with pytest.raises(SrtpError, match="replay"):
        bob.unprotect(wire)
    tampered = bytearray(alice.protect(rtp(43)))
    tampered[20] ^= 1
    with pytest.raises(SrtpError):
        bob.unprotect(bytes(tampered))
    # a wrong key fails authentication
    stranger = SrtpContext(profile, os.urandom(profile.key_salt_length), os.urandom(profile.key_salt_length))
    with pytest.raises(SrtpError):
        stranger.unprotect(alice.protect(rtp(44)))


def test_retransmission_of_same_seq_can_be_protected_again():
    alice, _ = pair(AES128_CM_SHA1_80)
    assert alice.protect(rtp(5)) == alice.protect(rtp(5))  # allow_repeat_tx


def test_known_answer_aes128_cm_sha1_80():
    # libsrtp test/srtp_driver.c reference vector (srtp_plaintext_ref / srtp_ciphertext / test_key)
    key = bytes.fromhex("e1f97a0d3e018be0d64fa32c06de41390ec675ad498afeebb6960b3aabe6")
    plain = bytes.fromhex("800f1234decafbadcafebabe") + b"\xab" * 16
    cipher = bytes.fromhex("800f1234decafbadcafebabe4e55dc4ce79978d88ca4d215949d2402b78d6acc99ea179b8dbb")
    ctx = SrtpContext(AES128_CM_SHA1_80, key, key)
    assert ctx.protect(plain) == cipher
    assert ctx.unprotect(cipher) == plain


def test_wrong_key_length_is_srtp_error():
    with pytest.raises(SrtpError, match=r"16\+14 bytes"):
        SrtpContext(AES128_CM_SHA1_80, b"\x00" * 16, b"\x00" * 30)


def test_is_rtcp():
    assert is_rtcp(rtcp_rr())
    assert is_rtcp(struct.pack("!BBH", 0x80, 200, 6))  # SR
    assert not is_rtcp(rtp(1))
    assert not is_rtcp(rtp(1, pt=0x80 | 111))  # marker bit set: 239 is not RTCP
    assert not is_rtcp(b"\x80")


def test_profile_by_name():
    assert profile_by_name("AES_CM_128_HMAC_SHA1_80") is AES128_CM_SHA1_80
    assert profile_by_name(b"SRTP_AEAD_AES_256_GCM") is AEAD_AES_256_GCM
    assert profile_by_name("aead_aes_128_gcm") is AEAD_AES_128_GCM
    with pytest.raises(SrtpError):
        profile_by_name("F8_128_HMAC_SHA1_80")


# ---- SDES ------------------------------------------------------------------------------------------


def test_crypto_parse_rfc4568_example():
    value = "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32"
    crypto = CryptoAttribute.parse(value)
    assert crypto.tag == 1
    assert crypto.profile is AES128_CM_SHA1_80
    assert crypto.key_salt == base64.b64decode("PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR")
    assert len(crypto.key_salt) == 30
    assert crypto.lifetime == "2^20" and crypto.mki == "1:32"
    assert str(crypto) == value


def test_crypto_parse_session_params_and_gcm():
    key = os.urandom(44)
    value = f"2 AEAD_AES_256_GCM inline:{base64.b64encode(key).decode()} UNENCRYPTED_SRTCP"
    crypto = CryptoAttribute.parse(value)
    assert crypto.profile is AEAD_AES_256_GCM and crypto.key_salt == key
    assert crypto.session_params == ["UNENCRYPTED_SRTCP"]
    assert str(crypto) == value


@pytest.mark.parametrize(
    "value",
    [
        "1 AES_CM_128_HMAC_SHA1_80",  # no key
        "x AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",  # tag
        "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVe",  # too short a key
        "1 AES_CM_128_HMAC_SHA1_80 uri:http://x",  # not inline
        "1 NULL_CIPHER inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",  # suite
        "1 AES_CM_128_HMAC_SHA1_80 inline:PS1u*CVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",  # base64
    ],
)
def test_crypto_parse_rejects(value):
    with pytest.raises(SrtpError):
        CryptoAttribute.parse(value)


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_sdes_round_trip(profile):
    ours = CryptoAttribute.generate(profile, tag=1)
    theirs = CryptoAttribute.parse(str(CryptoAttribute.generate(profile, tag=1)))
    assert CryptoAttribute.parse(str(ours)) == ours
    local = sdes_context(ours, theirs)
    remote = sdes_context(theirs, ours)
    assert remote.unprotect(local.protect(rtp(1))) == rtp(1)
    assert local.unprotect_rtcp(remote.protect_rtcp(rtcp_rr())) == rtcp_rr()


def test_sdes_context_rejects_mismatch_and_mki():
    with pytest.raises(SrtpError):
        sdes_context(CryptoAttribute.generate(AES128_CM_SHA1_80), CryptoAttribute.generate(AEAD_AES_128_GCM))
    mki = CryptoAttribute.generate(AES128_CM_SHA1_80)
    mki.mki = "1:4"
    with pytest.raises(SrtpError):
        sdes_context(CryptoAttribute.generate(AES128_CM_SHA1_80), mki)
