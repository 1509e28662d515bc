"""Conference mixing: N-1 mixes with spy (listen-only) and whisper, per conference or batched across many.

Sans-IO: the media worker hands in one 20 ms int16 frame per participant per tick and gets back, per
participant, the int16 frame that participant hears. Each participant hears everyone else: the mix is
computed as (total of all contributions) minus (own contribution), so it is O(N) rather than O(N^2), with
int32 accumulation and saturation to int16 at the end.

Roles (``ROLES``; the control protocol's ``speak``/``listen``/``whisper-to`` are accepted as aliases):

- ``speaker``: heard by everyone else, hears everyone else;
- ``listener`` (alias ``spy``/``listen``): hears every speaker, heard by nobody (supervisor monitoring);
- ``whisper``: heard only by its ``target`` participant (supervisor coaching an agent), hears every speaker.

Who hears what, exactly: out[j] = sum of g_i * x_i over unmuted speakers i != j, plus g_w * x_w over unmuted
whisperers w whose target is j; then saturated to int16. ``muted`` participants contribute nothing (and
still hear). ``gain`` scales what a participant contributes (talker level), in Q12 fixed point
(``gain * 4096`` rounded, 0..8 i.e. up to +18 dB), so unity gain is bit-exact.

Two paths with one set of rules, bit-identical results (the tests hold both to ``reference_mix``, the
pure-Python oracle):

- ``Conference``: one conference, total minus own in int32 (O(N): a handful of numpy calls per tick);
- ``ConferenceBatch``: every conference of a worker in one call. Contributions are computed for all rows at
  once in int32, then conferences of equal size are mixed by one batched float32 matmul with a 0/1 routing
  matrix per conference (who hears whom: roles, whisper targets). That is O(N^2) per conference but is one
  numpy matmul call per conference size; measured (benchmarks/media/mixer.py) it beats the O(N) path even at 16 participants, because the
  O(N) path's reductions over short axes are slow in numpy. It stays exact: integer contributions below
  2**18 summed MATMUL_MAX = 32 at a time stay below float32's 2**24. Larger conferences take the O(N) path.

Saturation uses np.minimum/np.maximum in place: np.clip costs ~20 µs of Python-level overhead per call in
numpy 2, more than the whole rest of a 3-way mix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

ROLES = ("speaker", "listener", "whisper")
_ROLE_ALIASES = {"speak": "speaker", "listen": "listener", "spy": "listener", "whisper-to": "whisper",
                 "whisper_to": "whisper"}
GAIN_SHIFT = 12  # gains are Q12 integers: 4096 = unity
UNITY = 1 << GAIN_SHIFT
MAX_GAIN = 8.0  # keeps 32767 * gain inside int32 with room for thousands of contributions

FrameLike = Union[np.ndarray, bytes, bytearray, memoryview, None]


class MixerError(ValueError):
    """A bad participant, role, gain or frame."""


def normalize_role(role: str) -> str:
    """The canonical role name; MixerError when unknown."""
    name = _ROLE_ALIASES.get(role, role)
    if name not in ROLES:
        raise MixerError(f"unknown conference role {role!r}: use one of {', '.join(ROLES)}")
    return name


def gain_q12(gain: float) -> int:
    """A linear gain as the Q12 integer the mixer multiplies by; MixerError outside 0..MAX_GAIN."""
    if not 0.0 <= gain <= MAX_GAIN:
        raise MixerError(f"gain must be within 0..{MAX_GAIN}, got {gain}")
    return int(round(gain * UNITY))


@dataclass
class Participant:
    """One conference member: its role, whisper target, mute state and talker gain."""

    id: Hashable
    role: str = "speaker"
    gain: float = 1.0
    muted: bool = False
    target: Optional[Hashable] = None  # for role "whisper": the one participant who hears it

    @property
    def weight(self) -> int:
        """Q12 weight of this participant in everyone's mix (0 unless an unmuted speaker)."""
        return gain_q12(self.gain) if self.role == "speaker" and not self.muted else 0

    @property
    def whisper_weight(self) -> int:
        """Q12 weight of this participant in its target's mix (0 unless an unmuted whisperer)."""
        return gain_q12(self.gain) if self.role == "whisper" and not self.muted else 0


def _as_frame(frame: FrameLike, samples: int) -> Optional[np.ndarray]:
    """A participant's frame as int16 of exactly `samples` (bytes are 16-bit LE); None stays None."""
    if frame is None:
        return None
    if isinstance(frame, np.ndarray):
        if frame.dtype != np.int16:
            raise MixerError(f"frames must be int16, got {frame.dtype}")
        arr = frame
    else:
        if len(frame) % 2:
            raise MixerError(f"16-bit PCM frame needs an even byte count, got {len(frame)}")
        arr = np.frombuffer(frame, dtype="<i2")
    if arr.size != samples:
        raise MixerError(f"frame of {arr.size} samples, the conference mixes {samples}")
    return arr


def _clamp_to_int16(heard: np.ndarray, out: Optional[np.ndarray]) -> np.ndarray:
    """Saturate a mix (int32 or integer-valued float32) to int16 (min/max in place: np.clip costs ~20 µs more)."""
    np.minimum(heard, 32767, out=heard)
    np.maximum(heard, -32768, out=heard)
    if out is None:
        return heard.astype(np.int16)
    np.copyto(out, heard, casting="unsafe")
    return out


class MixPlan:
    """One conference's tick arrays, built when membership changes: talk weights and whisper routes."""

    __slots__ = ("ids", "weights", "needs_gain", "silent_rows", "whispers", "_routing")

    def __init__(self, members: Sequence[Participant]) -> None:
        self.ids = [p.id for p in members]
        index = {p.id: k for k, p in enumerate(members)}
        talk = [p.weight or p.whisper_weight for p in members]  # Q12, 0 = contributes nothing
        self.weights = np.array(talk, dtype=np.int32).reshape(-1, 1)
        self.needs_gain = any(w not in (0, UNITY) for w in talk)
        self.silent_rows = np.array([k for k, w in enumerate(talk) if w == 0], dtype=np.intp)
        # (whisperer row, target row or -1 when the target is absent) for unmuted whisperers
        self.whispers = [(k, index.get(p.target, -1)) for k, p in enumerate(members) if p.whisper_weight]
        self._routing: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.ids)

    def routing(self) -> np.ndarray:
        """float32 (n, n) 0/1 matrix: [j, i] = 1 when j hears i (i != j; speaker, or whisperer aiming at j)."""
        if self._routing is None:
            n = len(self.ids)
            r = np.zeros((n, n), dtype=np.float32)
            speakers = [k for k in range(n) if self.weights[k, 0] and k not in {w for w, _ in self.whispers}]
            r[:, speakers] = 1.0
            for w, target in self.whispers:
                if target >= 0:
                    r[target, w] = 1.0
            np.fill_diagonal(r, 0.0)
            self._routing = r
        return self._routing


def _contributions(pcm: np.ndarray, weights: np.ndarray, needs_gain: bool, silent_rows: np.ndarray) -> np.ndarray:
    """int32 contribution of every row: (x * Q12 weight) >> 12, or just x / 0 when every weight is 1 or 0."""
    contrib = pcm.astype(np.int32)
    if needs_gain:
        contrib *= weights
        contrib >>= GAIN_SHIFT
    elif silent_rows.size:
        contrib[silent_rows] = 0
    return contrib


def _n_minus_one(contrib: np.ndarray, plan: MixPlan) -> np.ndarray:
    """What each row hears (int32, unsaturated): total of speakers minus own, plus whispers aimed at it."""
    total = contrib.sum(axis=0, dtype=np.int32)
    for w, _ in plan.whispers:  # whisperers are not part of the room's total
        total -= contrib[w]
    heard = total - contrib
    for w, target in plan.whispers:
        heard[w] += contrib[w]  # a whisperer's own row was never in the total
        if target >= 0:
            heard[target] += contrib[w]
    return heard


def mix_planned(pcm: np.ndarray, plan: MixPlan, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Mix an int16 (rows, samples) array of one conference: each row gets what its participant hears (int16)."""
    if pcm.dtype != np.int16 or pcm.ndim != 2 or pcm.shape[0] != len(plan):
        raise MixerError(f"need int16 ({len(plan)}, samples) frames, got {pcm.dtype} {pcm.shape}")
    contrib = _contributions(pcm, plan.weights, plan.needs_gain, plan.silent_rows)
    return _clamp_to_int16(_n_minus_one(contrib, plan), out)


MATMUL_MAX = 32  # conferences up to this size are batched as float32 matmuls (exact: 32 * 2**18 < 2**24)


class BatchPlan:
    """Many conferences' tick arrays: rows grouped by conference size, one routing matmul per size."""

    def __init__(self, conferences: Sequence[tuple[Hashable, Sequence[Participant]]]) -> None:
        plans = [(cid, MixPlan(members)) for cid, members in conferences if members]
        plans.sort(key=lambda item: len(item[1]))
        self.rows: list[tuple[Hashable, Hashable]] = [(cid, pid) for cid, plan in plans for pid in plan.ids]
        self.weights = np.concatenate([plan.weights for _, plan in plans]) if plans else np.zeros((0, 1), np.int32)
        self.needs_gain = any(plan.needs_gain for _, plan in plans)
        self.silent_rows = np.flatnonzero(self.weights[:, 0] == 0)
        self.groups: list[tuple[int, int, int, np.ndarray]] = []  # (first row, conferences, size, routing)
        self.large: list[tuple[int, MixPlan]] = []  # (first row, plan) of conferences above MATMUL_MAX
        self._scratch: Optional[tuple[np.ndarray, np.ndarray]] = None
        row = 0
        by_size: dict[int, list[MixPlan]] = {}
        for _, plan in plans:
            by_size.setdefault(len(plan), []).append(plan)
        for size in sorted(by_size):
            group = by_size[size]
            if size <= MATMUL_MAX:
                routing = np.stack([plan.routing() for plan in group])
                self.groups.append((row, len(group), size, routing))
                row += size * len(group)
            else:
                for plan in group:
                    self.large.append((row, plan))
                    row += size

    def scratch(self, samples: int) -> tuple[np.ndarray, np.ndarray]:
        """Two float32 (rows, samples) work arrays, allocated once per plan and frame size."""
        if self._scratch is None or self._scratch[0].shape[1] != samples:
            self._scratch = (np.zeros((len(self.rows), samples), np.float32),
                             np.zeros((len(self.rows), samples), np.float32))
        return self._scratch

    def __len__(self) -> int:
        return len(self.rows)


def mix_batch(pcm: np.ndarray, plan: BatchPlan, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Mix every conference of a BatchPlan from one int16 (rows, samples) array in plan.rows order."""
    if pcm.dtype != np.int16 or pcm.ndim != 2 or pcm.shape[0] != len(plan):
        raise MixerError(f"need int16 ({len(plan)}, samples) frames, got {pcm.dtype} {pcm.shape}")
    samples = pcm.shape[1]
    if plan.needs_gain or plan.large:
        contrib = _contributions(pcm, plan.weights, plan.needs_gain, plan.silent_rows)
    else:  # unity gains: the routing matrices already leave out muted/listening rows
        contrib = pcm
    # scratch reused tick after tick: fresh 200+ KiB arrays come from mmap and page-fault every time
    x, heard = plan.scratch(samples)
    np.copyto(x, contrib, casting="unsafe")
    for first, count, size, routing in plan.groups:
        stop = first + count * size
        np.matmul(routing, x[first:stop].reshape(count, size, samples),
                  out=heard[first:stop].reshape(count, size, samples))
    if plan.large:
        for first, big in plan.large:
            part = _n_minus_one(contrib[first:first + len(big)], big)
            np.minimum(part, 32767, out=part)
            np.maximum(part, -32768, out=part)
            heard[first:first + len(big)] = part
    return _clamp_to_int16(heard, out)


class Conference:
    """One conference: participants with roles, mixed N-1 per 20 ms tick."""

    def __init__(self, frame_samples: int = 160, conference_id: Hashable = None) -> None:
        if frame_samples <= 0:
            raise MixerError("frame_samples must be > 0")
        self.id = conference_id
        self.frame_samples = frame_samples
        self._members: dict[Hashable, Participant] = {}
        self._plan: Optional[MixPlan] = None
        self._in: Optional[np.ndarray] = None
        self._watchers: list[Callable[[], None]] = []

    # -- membership ---------------------------------------------------------------------------------

    def _changed(self) -> None:
        """Invalidate the plan (and tell a ConferenceBatch holding this conference)."""
        self._plan = None
        for notify in self._watchers:
            notify()

    def _get(self, pid: Hashable) -> Participant:
        """A participant by id; MixerError if absent."""
        try:
            return self._members[pid]
        except KeyError:
            raise MixerError(f"no participant {pid!r} in conference {self.id!r}") from None

    def _check_whisper(self, pid: Hashable, role: str, target: Optional[Hashable]) -> None:
        """A whisperer needs another participant as target (it may join later, but not be itself)."""
        if role == "whisper":
            if target is None:
                raise MixerError(f"whisper participant {pid!r} needs a target")
            if target == pid:
                raise MixerError(f"participant {pid!r} cannot whisper to itself")

    def add(self, pid: Hashable, role: str = "speaker", gain: float = 1.0, muted: bool = False,
            target: Optional[Hashable] = None) -> Participant:
        """Add a participant (role speaker/listener/whisper; whisper needs target); MixerError if present."""
        if pid in self._members:
            raise MixerError(f"participant {pid!r} is already in conference {self.id!r}")
        role = normalize_role(role)
        gain_q12(gain)
        self._check_whisper(pid, role, target)
        p = Participant(pid, role, gain, muted, target if role == "whisper" else None)
        self._members[pid] = p
        self._changed()
        return p

    def remove(self, pid: Hashable) -> Participant:
        """Remove a participant (whispers aimed at it fall silent until it rejoins)."""
        p = self._get(pid)
        del self._members[pid]
        self._changed()
        return p

    def set_role(self, pid: Hashable, role: str, target: Optional[Hashable] = None) -> None:
        """Change a participant's role (e.g. a supervisor going from spy to whisper to barge-in)."""
        p = self._get(pid)
        role = normalize_role(role)
        self._check_whisper(pid, role, target)
        p.role, p.target = role, (target if role == "whisper" else None)
        self._changed()

    def mute(self, pid: Hashable, muted: bool = True) -> None:
        """Mute (or unmute) what a participant contributes; it still hears the others."""
        self._get(pid).muted = bool(muted)
        self._changed()

    def set_gain(self, pid: Hashable, gain: float) -> None:
        """Set a participant's talker gain (0..8, linear)."""
        gain_q12(gain)
        self._get(pid).gain = float(gain)
        self._changed()

    def participant(self, pid: Hashable) -> Participant:
        """The Participant record for an id."""
        return self._get(pid)

    @property
    def participants(self) -> tuple[Hashable, ...]:
        """Participant ids in row order (the order mix_rows expects and returns)."""
        return tuple(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, pid: object) -> bool:
        return pid in self._members

    def members(self) -> list[Participant]:
        """Participant records in row order."""
        return list(self._members.values())

    # -- mixing -------------------------------------------------------------------------------------

    def plan(self) -> MixPlan:
        """The current mix plan (rebuilt after any membership/role/gain/mute change)."""
        if self._plan is None:
            self._plan = MixPlan(list(self._members.values()))
            self._in = np.zeros((len(self._members), self.frame_samples), dtype=np.int16)
        return self._plan

    def mix_rows(self, pcm: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Mix an int16 (participants, frame_samples) array in `participants` order; row j = what j hears."""
        return mix_planned(pcm, self.plan(), out)

    def mix(self, frames: Mapping[Hashable, FrameLike]) -> dict[Hashable, np.ndarray]:
        """Mix one tick: frames by participant id (absent or None = silence); returns what each one hears."""
        plan = self.plan()
        if not plan.ids:
            return {}
        pcm = self._in
        assert pcm is not None
        for k, pid in enumerate(self._members):
            f = _as_frame(frames.get(pid), self.frame_samples)
            if f is None:
                pcm[k] = 0
            else:
                pcm[k] = f
        heard = mix_planned(pcm, plan)
        return dict(zip(self._members, heard))


class ConferenceBatch:
    """Every conference of a worker mixed together: a few numpy calls per tick, whatever the count.

    Rows are ordered by conference size (one float32 routing matmul per size, exact for integer
    contributions); conferences above MATMUL_MAX participants use the O(N) total-minus-own path.
    """

    def __init__(self, conferences: Iterable[Conference] = (), frame_samples: int = 160) -> None:
        self.frame_samples = frame_samples
        self._conferences: dict[Hashable, Conference] = {}
        self._plan: Optional[BatchPlan] = None
        self._in: Optional[np.ndarray] = None
        for conf in conferences:
            self.add(conf)

    def _dirty(self) -> None:
        """A member conference changed: rebuild the plan before the next tick."""
        self._plan = None

    def add(self, conference: Conference) -> Conference:
        """Mix this conference in the batch (ids must be unique and frame sizes equal)."""
        if conference.id in self._conferences:
            raise MixerError(f"conference {conference.id!r} is already in the batch")
        if conference.frame_samples != self.frame_samples:
            raise MixerError(f"conference {conference.id!r} mixes {conference.frame_samples}-sample frames, "
                             f"the batch {self.frame_samples}")
        self._conferences[conference.id] = conference
        conference._watchers.append(self._dirty)
        self._dirty()
        return conference

    def remove(self, conference_id: Hashable) -> Conference:
        """Stop mixing a conference."""
        try:
            conf = self._conferences.pop(conference_id)
        except KeyError:
            raise MixerError(f"no conference {conference_id!r} in the batch") from None
        conf._watchers.remove(self._dirty)
        self._dirty()
        return conf

    def __len__(self) -> int:
        return len(self._conferences)

    def __getitem__(self, conference_id: Hashable) -> Conference:
        return self._conferences[conference_id]

    def plan(self) -> BatchPlan:
        """The batch plan, rebuilt after any change in any member conference."""
        if self._plan is None:
            self._plan = BatchPlan([(c.id, c.members()) for c in self._conferences.values()])
            self._in = np.zeros((len(self._plan), self.frame_samples), dtype=np.int16)
        return self._plan

    @property
    def rows(self) -> list[tuple[Hashable, Hashable]]:
        """(conference id, participant id) per row: the order mix_rows expects and returns."""
        return self.plan().rows

    def mix_rows(self, pcm: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Mix an int16 (rows, frame_samples) array in `rows` order; each row = what that participant hears."""
        return mix_batch(pcm, self.plan(), out)

    def mix(self, frames: Mapping[Hashable, Mapping[Hashable, FrameLike]]) -> dict[Hashable, dict[Hashable, np.ndarray]]:
        """Mix one tick: frames[conference id][participant id] (absent/None = silence) -> what each one hears."""
        plan = self.plan()
        pcm = self._in
        assert pcm is not None
        result: dict[Hashable, dict[Hashable, np.ndarray]] = {cid: {} for cid in self._conferences}
        empty: Mapping[Hashable, FrameLike] = {}
        for k, (cid, pid) in enumerate(plan.rows):
            f = _as_frame(frames.get(cid, empty).get(pid), self.frame_samples)
            if f is None:
                pcm[k] = 0
            else:
                pcm[k] = f
        heard = mix_batch(pcm, plan)
        for k, (cid, pid) in enumerate(plan.rows):
            result[cid][pid] = heard[k]
        return result


def mix_two(a: Optional[np.ndarray], b: Optional[np.ndarray]) -> np.ndarray:
    """a + b saturated to int16 (None = silence; the shorter frame is zero-padded): a two-party mono mix."""
    if a is None and b is None:
        raise MixerError("mix_two needs at least one frame")
    if a is None or b is None:
        only = a if a is not None else b
        if only.dtype != np.int16:
            raise MixerError(f"frames must be int16, got {only.dtype}")
        return only.copy()
    if a.dtype != np.int16 or b.dtype != np.int16:
        raise MixerError(f"frames must be int16, got {a.dtype} and {b.dtype}")
    if a.size < b.size:
        a, b = b, a
    acc = a.astype(np.int32)
    acc[:b.size] += b
    return _clamp_to_int16(acc, None)


def reference_mix(members: Sequence[Participant], frames: Sequence[Sequence[int]]) -> list[list[int]]:
    """Pure-Python oracle: what each member hears, sample by sample, by the rules in the module docstring."""
    index = {p.id: k for k, p in enumerate(members)}
    n = len(frames[0]) if frames else 0
    out = []
    for j, listener in enumerate(members):
        heard = [0] * n
        for i, talker in enumerate(members):
            if i == j or talker.muted:
                continue
            if talker.role == "speaker" or (talker.role == "whisper" and index.get(talker.target) == j):
                q = gain_q12(talker.gain)
                for s in range(n):
                    heard[s] += (int(frames[i][s]) * q) >> GAIN_SHIFT
        out.append([max(-32768, min(32767, v)) for v in heard])
    return out


__all__ = ["BatchPlan", "Conference", "ConferenceBatch", "GAIN_SHIFT", "MATMUL_MAX", "MAX_GAIN", "MixPlan",
           "MixerError", "Participant", "ROLES", "UNITY", "gain_q12", "mix_batch", "mix_planned", "mix_two",
           "normalize_role", "reference_mix"]
