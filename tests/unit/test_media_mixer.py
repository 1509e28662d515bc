"""Conference mixing (media.mixer): N-1 mixes match the pure-Python oracle, saturate, and honour spy, whisper,
mute and gain, on the per-conference and the batched path alike.
"""
from __future__ import annotations

import numpy as np
import pytest

from media import audio
from media.mixer import (Conference, ConferenceBatch, MixerError, Participant, gain_q12, mix_two,
                         normalize_role, reference_mix)

S = 160
rng = np.random.default_rng(1234)


def noise(n: int = S, scale: int = 8000) -> np.ndarray:
    """Random int16 frame."""
    return rng.integers(-scale, scale, n, dtype=np.int16)


def check_against_reference(conf: Conference, frames: dict) -> dict:
    """Mix one tick and compare every output with reference_mix."""
    out = conf.mix(frames)
    members = conf.members()
    rows = [frames.get(p.id) if frames.get(p.id) is not None else np.zeros(S, np.int16) for p in members]
    expected = reference_mix(members, [r.tolist() for r in rows])
    for p, exp in zip(members, expected):
        assert out[p.id].dtype == np.int16
        assert out[p.id].tolist() == exp, p
    return out


def test_n_minus_one_is_exactly_the_sum_of_the_others() -> None:
    conf = Conference()
    ids = ["a", "b", "c", "d", "e"]
    for pid in ids:
        conf.add(pid)
    frames = {pid: noise(scale=5000) for pid in ids}
    out = conf.mix(frames)
    for pid in ids:
        others = sum(frames[o].astype(np.int32) for o in ids if o != pid)
        assert np.array_equal(out[pid], others.astype(np.int16))
    check_against_reference(conf, frames)


def test_three_way_tones() -> None:
    conf = Conference(conference_id="call-1")
    for pid in ("agent", "customer", "third"):
        conf.add(pid)
    tones = {"agent": 300.0, "customer": 1100.0, "third": 2500.0}
    frames = {pid: audio.tone(f, 8000, 0.02, amplitude=0.2) for pid, f in tones.items()}
    out = conf.mix(frames)
    for pid in tones:
        spectrum = np.abs(np.fft.rfft(out[pid].astype(float), 8000))  # 1 Hz bins
        heard = {f for f in tones.values() if spectrum[int(f)] > 0.2 * spectrum.max()}
        assert heard == {f for p, f in tones.items() if p != pid}


def test_saturation() -> None:
    conf = Conference()
    for pid in "abc":
        conf.add(pid)
    loud = np.full(S, 30000, np.int16)
    out = conf.mix({"a": loud, "b": loud, "c": -loud})
    assert (out["c"] == 32767).all()  # 60000 clipped, not wrapped
    assert (out["a"] == 0).all() and (out["b"] == 0).all()
    out = conf.mix({"a": -loud, "b": -loud, "c": np.full(S, -32768, np.int16)})
    assert (out["a"] == -32768).all() and (out["c"] == -32768).all()
    check_against_reference(conf, {"a": -loud, "b": -loud, "c": np.full(S, -32768, np.int16)})


def test_spy_hears_all_and_is_heard_by_nobody() -> None:
    conf = Conference()
    conf.add("agent")
    conf.add("customer")
    conf.add("supervisor", role="spy")
    frames = {"agent": noise(), "customer": noise(), "supervisor": noise()}
    out = check_against_reference(conf, frames)
    assert np.array_equal(out["agent"], frames["customer"])
    assert np.array_equal(out["customer"], frames["agent"])
    both = frames["agent"].astype(np.int32) + frames["customer"]
    assert np.array_equal(out["supervisor"], both.astype(np.int16))
    assert conf.participant("supervisor").role == "listener"


def test_whisper_heard_only_by_its_target() -> None:
    conf = Conference()
    conf.add("agent")
    conf.add("customer")
    conf.add("supervisor", role="whisper-to", target="agent")
    conf.add("coach2", role="listener")
    frames = {pid: noise() for pid in ("agent", "customer", "supervisor", "coach2")}
    out = check_against_reference(conf, frames)
    assert np.array_equal(out["agent"], (frames["customer"].astype(np.int32) + frames["supervisor"]).astype(np.int16))
    assert np.array_equal(out["customer"], frames["agent"])  # the customer never hears the whisper
    both = (frames["agent"].astype(np.int32) + frames["customer"]).astype(np.int16)
    assert np.array_equal(out["supervisor"], both)
    assert np.array_equal(out["coach2"], both)  # a spy hears the speakers, not the whisper
    # barge-in: the supervisor becomes a speaker and everyone hears them
    conf.set_role("supervisor", "speak")
    out = check_against_reference(conf, frames)
    assert np.array_equal(out["customer"], (frames["agent"].astype(np.int32) + frames["supervisor"]).astype(np.int16))
    # target leaves: the whisper falls silent, the whisperer still hears
    conf.set_role("supervisor", "whisper", target="agent")
    conf.remove("agent")
    out = check_against_reference(conf, frames)
    assert np.array_equal(out["customer"], np.zeros(S, np.int16))
    assert np.array_equal(out["supervisor"], frames["customer"])


def test_mute_and_gain() -> None:
    conf = Conference()
    for pid in "abc":
        conf.add(pid)
    frames = {pid: noise() for pid in "abc"}
    conf.mute("a")
    out = check_against_reference(conf, frames)
    assert np.array_equal(out["b"], frames["c"])  # a is not heard ...
    assert np.array_equal(out["a"], (frames["b"].astype(np.int32) + frames["c"]).astype(np.int16))  # ... but hears
    conf.mute("a", False)
    conf.set_gain("b", 0.5)
    conf.set_gain("c", 2.0)
    out = check_against_reference(conf, frames)
    half = (frames["b"].astype(np.int32) * 2048) >> 12
    assert np.array_equal(out["a"], np.clip(half + frames["c"].astype(np.int32) * 2, -32768, 32767).astype(np.int16))
    with pytest.raises(MixerError):
        conf.set_gain("a", 9.0)
    with pytest.raises(MixerError):
        conf.set_gain("a", -1.0)
    assert gain_q12(1.0) == 4096


def test_missing_frames_bytes_and_errors() -> None:
    conf = Conference()
    conf.add("a")
    conf.add("b")
    x = noise()
    out = conf.mix({"a": audio.to_bytes(x)})  # b sent nothing this tick; a sent bytes
    assert np.array_equal(out["b"], x) and not out["a"].any()
    with pytest.raises(MixerError, match="samples"):
        conf.mix({"a": np.zeros(80, np.int16)})
    with pytest.raises(MixerError, match="int16"):
        conf.mix({"a": np.zeros(S, np.float32)})
    with pytest.raises(MixerError, match="already"):
        conf.add("a")
    with pytest.raises(MixerError, match="target"):
        conf.add("w", role="whisper")
    with pytest.raises(MixerError, match="itself"):
        conf.add("w", role="whisper", target="w")
    with pytest.raises(MixerError, match="role"):
        conf.add("w", role="shout")
    with pytest.raises(MixerError, match="no participant"):
        conf.remove("zz")
    assert normalize_role("listen") == "listener"
    assert Conference().mix({}) == {}
    solo = Conference()
    solo.add("alone")
    assert not solo.mix({"alone": x})["alone"].any()  # nobody else: silence


def test_mix_rows_matches_mix() -> None:
    conf = Conference()
    for pid in "abcd":
        conf.add(pid)
    conf.set_role("d", "whisper", target="b")
    pcm = np.stack([noise() for _ in "abcd"])
    rows = conf.mix_rows(pcm)
    by_id = conf.mix(dict(zip(conf.participants, pcm)))
    for k, pid in enumerate(conf.participants):
        assert np.array_equal(rows[k], by_id[pid])
    out = np.empty_like(pcm)
    assert conf.mix_rows(pcm, out=out) is out and np.array_equal(out, rows)
    with pytest.raises(MixerError):
        conf.mix_rows(pcm[:3])


def test_batch_equals_per_conference() -> None:
    confs = []
    for c in range(7):
        conf = Conference(conference_id=f"c{c}")
        for k in range(2 + c % 4):
            conf.add(f"p{k}", gain=[1.0, 0.7, 1.5][k % 3])
        if c % 2:
            conf.add("spy", role="spy")
        if c % 3 == 0:
            conf.add("coach", role="whisper", target="p0")
        if c == 5:
            conf.mute("p1")
        confs.append(conf)
    empty = Conference(conference_id="empty")
    batch = ConferenceBatch(confs + [empty])
    frames = {c.id: {pid: noise(scale=12000) for pid in c.participants} for c in confs}
    got = batch.mix(frames)
    assert got["empty"] == {}
    for conf in confs:
        single = check_against_reference(conf, frames[conf.id])
        for pid in conf.participants:
            assert np.array_equal(got[conf.id][pid], single[pid]), (conf.id, pid)
    # rows path
    pcm = np.stack([frames[cid][pid] for cid, pid in batch.rows])
    rows = batch.mix_rows(pcm)
    for k, (cid, pid) in enumerate(batch.rows):
        assert np.array_equal(rows[k], got[cid][pid])
    # a change in one conference is picked up by the batch
    confs[0].set_role("p1", "listener")
    got2 = batch.mix(frames)
    assert np.array_equal(got2["c0"]["p0"], confs[0].mix(frames["c0"])["p0"])
    assert not np.array_equal(got2["c0"]["p0"], got["c0"]["p0"])
    batch.remove("c0")
    assert "c0" not in batch.mix(frames) and len(batch) == 7
    with pytest.raises(MixerError):
        batch.add(confs[1])
    with pytest.raises(MixerError):
        batch.add(Conference(frame_samples=320, conference_id="wide"))


def test_batch_large_and_mixed_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Conferences above MATMUL_MAX take the O(N) path inside the batch; results still match the oracle."""
    import media.mixer as mixer
    monkeypatch.setattr(mixer, "MATMUL_MAX", 5)  # sizes 4, 8, 5, 11, 4, 7 with the whisperer and the spy
    confs = []
    for c, size in enumerate([2, 6, 3, 9, 2, 5]):
        conf = Conference(conference_id=c)
        for k in range(size):
            conf.add(k, gain=1.0 if k % 3 else 1.25)
        conf.add("sup", role="whisper", target=size - 1)
        conf.add("spy", role="listener")
        confs.append(conf)
    batch = ConferenceBatch(confs)
    assert len(batch.plan().large) == 3 and len(batch.plan().groups) == 2
    loud = {c.id: {pid: noise(scale=30000) for pid in c.participants} for c in confs}
    got = batch.mix(loud)  # loud: saturation on both paths
    for conf in confs:
        single = check_against_reference(conf, loud[conf.id])
        for pid in conf.participants:
            assert np.array_equal(got[conf.id][pid], single[pid]), (conf.id, pid)


def test_batch_float_path_is_exact_at_max_gain() -> None:
    """32 participants at gain 8 of full-scale frames: sums reach 2**23, still exact in float32."""
    conf = Conference(conference_id="big")
    for k in range(32):
        conf.add(k, gain=8.0)
    frames = {k: np.full(S, -32768 if k % 2 else 32767, np.int16) for k in range(32)}
    frames[0] = noise(scale=32000)
    got = ConferenceBatch([conf]).mix({"big": frames})["big"]
    single = check_against_reference(conf, frames)
    for pid in conf.participants:
        assert np.array_equal(got[pid], single[pid])


def test_wideband_conference() -> None:
    conf = Conference(frame_samples=320)
    conf.add("a")
    conf.add("b")
    x = noise(320)
    assert np.array_equal(conf.mix({"a": x})["b"], x)


def test_mix_two() -> None:
    a, b = noise(), noise()
    assert np.array_equal(mix_two(a, b), (a.astype(np.int32) + b).astype(np.int16))
    loud = np.full(S, 20000, np.int16)
    assert (mix_two(loud, loud) == 32767).all() and (mix_two(-loud, -loud) == -32768).all()
    assert np.array_equal(mix_two(a, None), a) and mix_two(None, b) is not b
    short = mix_two(a, b[:80])
    assert short.size == S and np.array_equal(short[80:], a[80:])
    with pytest.raises(MixerError):
        mix_two(None, None)
    with pytest.raises(MixerError):
        mix_two(a, b.astype(np.int32))


def test_reference_roles() -> None:
    members = [Participant("a"), Participant("b", role="listener"), Participant("c", role="whisper", target="a")]
    out = reference_mix(members, [[100], [200], [300]])
    assert out == [[300], [100], [100]]
