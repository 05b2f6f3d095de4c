"""The codec's encoder compiled with numba: prepare's hot path, byte-identical to ``Codec.encode_scores``
(v4's chord tokens are added after it, by ``chords_jit``: ``Codec.add_chords`` compiled, token for token).

Why it exists: on a typical song the numpy encoder spends more time pulling note arrays out of
symusic (about 10 us per track) and running ~40 vector passes than symusic spends parsing the file.
Here one compiled call walks the score's serialized form (``Score.__getstate__()``, about 10 us for
a whole 48-bar song) and writes the tokens: about 20 us a song against the numpy encoder's 170.

The serialized layout is symusic's own (pinned version), not the MIDI format: little-endian

    score  = tpq:i32  tracks:vec<track>  time_signatures:vec<i32 u8 u8 _2>  key_signatures:vec<8 bytes>
             tempos:vec<i32 mspq:i32>  markers:vec<text>
    track  = name:str  program:u8  is_drum:u8  notes:vec<time:i32 duration:i32 pitch:i8 velocity:i8 _2>
             controls:vec<8 bytes>  pitch_bends:vec<8 bytes>  pedals:vec<8 bytes>  lyrics:vec<text>
    vec<T> = n:u32 then n x T;  str = n:u32 then n bytes;  text = time:i32 str

Every read is bounds-checked and a score must end exactly where its bytes do; anything else gives
``LAYOUT`` and the caller falls back to the numpy encoder for that file. ``available()`` checks the
layout once per process against the numpy encoder on a reference score, so a different symusic
build turns this path off instead of producing wrong tokens.
"""
from __future__ import annotations

import math

import numpy as np

from midigen.music import chords, chords_jit
from midigen.music.codec import DRUMS, N_INSTRUMENTS, N_PITCHES, CodecError
from midigen.music.timing import meter_beat_grid

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; this keeps the codec importable
    numba = None

OK, NO_NOTES, ABSURD, LAYOUT = 0, 1, 2, 3
_MAX_ONSET = 1 << 32


def _jit(fn):
    return numba.njit(cache=True, nogil=True, boundscheck=False)(fn) if numba is not None else fn


def _inline(fn):
    return numba.njit(inline="always", boundscheck=False)(fn) if numba is not None else fn


# Hot loops index arrays through these: numba wraps negative signed indices (a compare and select on
# every access, which also blocks merging byte loads); unsigned ones skip that. Twice as fast here.
@_inline
def _get(a, i):
    return a[np.uint64(i)]


@_inline
def _put(a, i, v):
    a[np.uint64(i)] = v


@_inline
def _u32(buf, p):
    q = np.uint64(p)
    b0, b1, b2, b3 = buf[q], buf[q + np.uint64(1)], buf[q + np.uint64(2)], buf[q + np.uint64(3)]
    return np.int64(b0) | (np.int64(b1) << 8) | (np.int64(b2) << 16) | (np.int64(b3) << 24)


@_inline
def _i32(buf, p):
    v = _u32(buf, p)
    return v - (1 << 32) if v >= (1 << 31) else v


@_inline
def _i8(buf, p):
    v = np.int64(_get(buf, p))
    return v - 256 if v >= 128 else v


@_jit
def _skip_texts(buf, p, end):
    """Skip a vec<text>; returns the new position or -1 when it runs past ``end``."""
    if p + 4 > end:
        return -1
    n = _u32(buf, p)
    p += 4
    for _ in range(n):
        if p + 8 > end:
            return -1
        p += 8 + _u32(buf, p + 4)
    return p if p <= end else -1


@_jit
def _skip_fixed(buf, p, end, size):
    if p + 4 > end:
        return -1
    p += 4 + size * _u32(buf, p)
    return p if p <= end else -1


@_jit
def _sort_notes(vals, lo, hi):
    """Stable sort of ``vals`` by ``vals >> 16`` (onset, then note id; the low 16 bits carry DV).

    LSD radix sort on the onset relative to ``lo`` (one pass per byte of ``hi - lo``: two for a
    typical song), then insertion sort inside each onset, where only a chord's few notes move. An
    onset holding a huge disordered crowd (a hostile file) is sorted outright instead, so the cost
    stays O(n log n) at worst.
    """
    n = len(vals)
    src = vals
    dst = np.empty(n, dtype=np.int64)
    count = np.empty(256, dtype=np.int64)
    span = hi - lo
    shift = 0
    while (span >> shift) > 0:
        count[:] = 0
        for i in range(n):
            k = (((_get(src, i) >> 31) - lo) >> shift) & 255
            _put(count, k, _get(count, k) + 1)
        total = 0
        for k in range(256):
            c = count[k]
            count[k] = total
            total += c
        for i in range(n):
            v = _get(src, i)
            k = (((v >> 31) - lo) >> shift) & 255
            at = _get(count, k)
            _put(dst, at, v)
            _put(count, k, at + 1)
        src, dst = dst, src
        shift += 8
    budget = 32 * n + 64
    moves = 0
    for i in range(1, n):
        v = _get(src, i)
        k = v >> 16
        j = i
        while j > 0 and (_get(src, j - 1) >> 16) > k:
            _put(src, j, _get(src, j - 1))
            j -= 1
        _put(src, j, v)
        moves += i - j
        if moves > budget:
            return src[np.argsort(src >> 16, kind="mergesort")]
    return src


# Layout of the ``consts`` argument of ``encode_state`` (see ``CompiledEncoder.__init__``).
_CONSTS = ("spq2", "max_shift", "max_gap", "duration_max", "bos", "eos", "shift_start", "tempo_start",
           "inst_start", "note_start", "default_bin")
_TS_SIDE = 17  # ts_lut[numerator * 17 + denominator] for both in 0..16: the TS token, or -1


@_jit
def _read_notes(buf, p, end, n_tracks, tpq, spq2, duration_max, dv_lut, vals, present):
    """Walk the tracks from ``p``: kept notes into ``vals``, instruments seen into ``present``.

    Notes are filtered as the numpy encoder does (velocity > 0, pitch and time >= 0) and packed as
    (onset << 31) | (note id << 16) | DV token. Returns (position after the tracks or -1 when the
    layout is broken, notes kept, lowest onset, highest onset, whether an onset is past 2^32 steps).
    """
    n = 0
    # Onset and duration round half up: floor((ticks * spq2 + tpq) / (2 tpq)). Float division is
    # exact here (numerator < 2^38, correctly rounded quotient) and much cheaper than int64 idiv.
    q2f = np.float64(2 * tpq)
    far = False
    lo, hi = _MAX_ONSET, -1  # onset range, for the radix sort
    for _ in range(n_tracks):
        if p + 4 > end:
            return -1, n, lo, hi, far
        p += 4 + _u32(buf, p)  # name
        if p + 6 > end:
            return -1, n, lo, hi, far
        program = np.int64(buf[p])
        inst = DRUMS if buf[p + 1] != 0 else (program & 127)
        nn = _u32(buf, p + 2)
        p += 6
        if p + 12 * nn > end:
            return -1, n, lo, hi, far
        for i in range(nn):
            b = p + 12 * i
            t = _i32(buf, b)
            pitch = _i8(buf, b + 8)
            v = _i8(buf, b + 9)
            if v <= 0 or pitch < 0 or t < 0:
                continue
            o = math.floor((t * spq2 + tpq) / q2f)
            if o >= _MAX_ONSET:
                far = True
                continue
            lo = o if o < lo else lo
            hi = o if o > hi else hi
            d = math.floor((_i32(buf, b + 4) * spq2 + tpq) / q2f)
            d = 1 if d < 1 else duration_max if d > duration_max else d
            _put(vals, n, (o << 31) | ((inst * N_PITCHES + pitch) << 16) | np.int64(_get(dv_lut, d * 128 + v)))
            n += 1
            _put(present, inst, True)
        p += 12 * nn
        for _ in range(3):  # controls, pitch bends, pedals: 8 bytes each
            p = _skip_fixed(buf, p, end, 8)
            if p < 0:
                return -1, n, lo, hi, far
        p = _skip_texts(buf, p, end)  # lyrics
        if p < 0:
            return -1, n, lo, hi, far
    return p, n, lo, hi, far


@_jit
def _first_time_signature(buf, p, end, ts_lut):
    """The time signatures at ``p``: -> (position after them or -1, TS token of the earliest or -1).

    The earliest one (first of equals) names the TS token, if the codec has one for it.
    """
    if p + 4 > end:
        return -1, -1
    n_ts = _u32(buf, p)
    p += 4
    if p + 8 * n_ts > end:
        return -1, -1
    ts_tok = -1
    best = 0
    for i in range(n_ts):
        b = p + 8 * i
        t = _i32(buf, b)
        if i == 0 or t < best:
            best = t
            num, den = np.int64(buf[b + 4]), np.int64(buf[b + 5])
            ts_tok = ts_lut[num * _TS_SIDE + den] if num < _TS_SIDE and den < _TS_SIDE else -1
    return p + 8 * n_ts, ts_tok


@_jit
def _tempo_map(buf, tempo_at, n_tempo, tpq, spq2, tempo_edges, default_bin, last_onset):
    """The tempos at ``tempo_at`` -> (header tempo bin, change steps, their bins, number of changes).

    The last change at each step wins; the header takes the one at step 0; a change that repeats
    the bin in force, or comes at or after the last onset, is dropped.
    """
    q2f = np.float64(2 * tpq)
    t_time = np.empty(n_tempo, dtype=np.int64)
    t_bin = np.empty(n_tempo, dtype=np.int64)
    for i in range(n_tempo):
        b = tempo_at + 8 * i
        tt = math.floor((_i32(buf, b) * spq2 + tpq) / q2f)
        tt = 0 if tt < 0 else tt
        t_time[i] = tt if tt < _MAX_ONSET - 1 else _MAX_ONSET - 1
        mspq = np.float64(_i32(buf, b + 4))
        t_bin[i] = np.searchsorted(tempo_edges, 60_000_000.0 / (mspq if mspq > 1.0 else 1.0))
    t_order = np.argsort(t_time, kind="mergesort")
    head_bin = default_bin
    ch_time = np.empty(n_tempo, dtype=np.int64)
    ch_bin = np.empty(n_tempo, dtype=np.int64)
    n_ch = 0
    prev = -1
    for i in range(n_tempo):
        o = t_order[i]
        if i + 1 < n_tempo and t_time[t_order[i + 1]] == t_time[o]:
            continue  # a later change at the same step overrides this one
        tt = t_time[o]
        if tt == 0:
            head_bin = t_bin[o]
        elif tt < last_onset:
            if prev < 0:
                prev = head_bin
            if t_bin[o] != prev:
                ch_time[n_ch] = tt
                ch_bin[n_ch] = t_bin[o]
                n_ch += 1
            prev = t_bin[o]
    return head_bin, ch_time, ch_bin, n_ch


@_jit
def _write_header(out, w, present, head_bin, ts_tok, bos, inst_start, tempo_start):
    """BOS, INST of each instrument present (ascending), TEMPO, [TS] at ``out[w:]``; -> new ``w``."""
    out[w] = bos
    w += 1
    for i in range(N_INSTRUMENTS):
        if present[i]:
            out[w] = inst_start + i
            w += 1
    out[w] = tempo_start + head_bin
    w += 1
    if ts_tok >= 0:
        out[w] = ts_tok
        w += 1
    return w


@_jit
def _write_events(out, w, vals, n, ch_time, ch_bin, n_ch, head_bin, sec_per_step, consts, dv_steps, facts,
                  notes):
    """Per distinct time: its shifts, an optional tempo change, then NOTE/DV pairs (exact duplicates,
    same onset, instrument and pitch, keep the first). -> (new ``w``, notes written, seconds).

    Each pitched note written adds its duration in steps (``dv_steps`` of its DV token) to its pitch
    class in ``facts[:12]``: the histogram the key estimate needs, without a second pass over tokens.
    It is also recorded in ``notes`` (start, end, pitch; time in the stream's steps, gaps capped as
    written), ``facts[13]`` of them, with ``facts[14]`` the last event's step: the notes the chord
    pass labels, so it need not read them back from the tokens."""
    max_shift, max_gap, shift_start, tempo_start, note_start = consts[1], consts[2], consts[6], consts[7], consts[9]
    rate = sec_per_step[head_bin]
    secs = 0.0
    now = 0
    here = 0  # the stream's step (gaps capped)
    pitched = 0
    i = 0
    j = 0
    m = 0
    last_key = -1
    while i < n or j < n_ch:
        t = (_get(vals, i) >> 31) if i < n else _MAX_ONSET
        if j < n_ch and ch_time[j] < t:
            t = ch_time[j]
        gap = t - now
        if gap > max_gap:
            gap = max_gap
        here += gap
        secs += gap * rate
        while gap >= max_shift:
            _put(out, w, shift_start + max_shift - 1)
            w += 1
            gap -= max_shift
        if gap > 0:
            _put(out, w, shift_start + gap - 1)
            w += 1
        if j < n_ch and ch_time[j] == t:
            out[w] = tempo_start + ch_bin[j]
            w += 1
            rate = sec_per_step[ch_bin[j]]
            j += 1
        while i < n and (_get(vals, i) >> 31) == t:
            v = _get(vals, i)
            i += 1
            if (v >> 16) == last_key:
                continue
            last_key = v >> 16
            note = (v >> 16) & 0x7FFF
            if note // N_PITCHES != DRUMS:
                facts[(note % N_PITCHES) % 12] += dv_steps[v & 0xFFFF]
                notes[0, pitched] = here
                notes[1, pitched] = here + dv_steps[v & 0xFFFF]
                notes[2, pitched] = note % N_PITCHES
                pitched += 1
            _put(out, w, note_start + note)
            _put(out, w + 1, v & 0xFFFF)
            w += 2
            m += 1
        now = t
    facts[13], facts[14] = pitched, here
    return w, m, secs


@_jit
def encode_state(buf, out, w0, consts, tempo_edges, sec_per_step, dv_lut, ts_lut, dv_steps, facts, notes):
    """One serialized score (``buf``) -> its tokens in ``out[w0:]``; -> (status, tokens, notes, seconds).

    On OK, ``facts`` (15 float64) holds what ``prepare`` records about the song besides its tokens:
    ``[:12]`` the duration-weighted pitch-class histogram of the pitched notes (``keys.pitch_class_histogram``
    of the tokens) and ``[12]`` the header's TS token, or -1; and what the chord pass needs: ``notes``
    (3 x at least ``len(buf) // 12 + 1``) gets the pitched notes as the tokens have them (start, end,
    pitch), ``[13]`` their count and ``[14]`` the last event's step (``_write_events``).

    ``out`` must have room for ``len(buf) + 140`` tokens past ``w0``: a note is 12 serialized bytes
    and costs at most 6 tokens (4 shifts, NOTE, DV), a tempo 8 bytes and at most 5, the header and
    EOS at most 133. The score's parts are read in their serialized order (see the module docstring).
    """
    spq2, duration_max, bos, eos, inst_start, tempo_start = consts[0], consts[3], consts[4], consts[5], consts[8], consts[7]
    end = len(buf)
    if end < 8:
        return LAYOUT, 0, 0, 0.0
    tpq = _i32(buf, 0)
    if tpq <= 0:
        return LAYOUT, 0, 0, 0.0
    vals = np.empty(end // 12 + 1, dtype=np.int64)
    present = np.zeros(N_INSTRUMENTS, dtype=np.bool_)
    p, n, lo, hi, far = _read_notes(buf, 8, end, _u32(buf, 4), tpq, spq2, duration_max, dv_lut, vals, present)
    if p < 0:
        return LAYOUT, 0, 0, 0.0
    p, ts_tok = _first_time_signature(buf, p, end, ts_lut)
    if p >= 0:
        p = _skip_fixed(buf, p, end, 8)  # key signatures
    if p < 0 or p + 4 > end:
        return LAYOUT, 0, 0, 0.0
    n_tempo = _u32(buf, p)
    tempo_at = p + 4
    if tempo_at + 8 * n_tempo > end or _skip_texts(buf, tempo_at + 8 * n_tempo, end) != end:  # markers last
        return LAYOUT, 0, 0, 0.0
    if far:
        return ABSURD, 0, 0, 0.0
    if n == 0:
        return NO_NOTES, 0, 0, 0.0
    vals = _sort_notes(vals[:n], lo, hi)  # (onset, instrument, pitch) order
    head_bin, ch_time, ch_bin, n_ch = _tempo_map(buf, tempo_at, n_tempo, tpq, spq2, tempo_edges, consts[10], hi)
    w = _write_header(out, w0, present, head_bin, ts_tok, bos, inst_start, tempo_start)
    facts[:] = 0.0
    facts[12] = ts_tok
    w, m, secs = _write_events(out, w, vals, n, ch_time, ch_bin, n_ch, head_bin, sec_per_step, consts,
                               dv_steps, facts, notes)
    out[w] = eos
    return OK, w + 1 - w0, m, secs


class CompiledEncoder:
    """``Codec.encode_scores`` through ``encode_state``; files it cannot read fall back to numpy."""

    def __init__(self, codec):
        p = codec.params
        spq = p.steps_per_quarter
        self.codec = codec
        values = {
            "spq2": 2 * spq, "max_shift": p.max_shift, "max_gap": p.max_gap, "duration_max": p.duration_max,
            "bos": codec.BOS, "eos": codec.EOS, "shift_start": codec.shift_start,
            "tempo_start": codec.tempo_start, "inst_start": codec.inst_start,
            "note_start": codec.note_start, "default_bin": int(np.searchsorted(codec._tempo_edges, 120.0)),
        }
        self._consts = np.array([values[k] for k in _CONSTS], dtype=np.int64)
        if codec._dv_lut.shape[1] != 128:
            raise ValueError("the DV table must have one column per MIDI velocity")
        ts_lut = np.full(_TS_SIDE * _TS_SIDE, -1, dtype=np.int64)
        for num in range(_TS_SIDE):
            for den in range(_TS_SIDE):
                tok = codec.ts_token(num, den)
                ts_lut[num * _TS_SIDE + den] = -1 if tok is None else tok
        self._tables = (np.ascontiguousarray(codec._tempo_edges), 60.0 / (codec.tempo_bpm * spq),
                        np.ascontiguousarray(codec._dv_lut).reshape(-1),  # [duration * 128 + velocity]
                        ts_lut, self._dv_steps(codec))
        self._facts = np.zeros(15)  # encode_state's song facts, rewritten by each call
        self._notes = np.empty((3, 1 << 14))  # and the pitched notes it wrote (for the chord pass)
        self._chords = chords_jit.CompiledChords(codec) if codec.has_chords else None
        self._out = np.empty(1 << 18, dtype=np.uint16)

    @staticmethod
    def _dv_steps(codec) -> np.ndarray:
        """Duration in steps of each DV token, indexed by token id (0 for every other token)."""
        steps = np.zeros(codec.vocab_size)
        dv = np.arange(codec.dv_start, codec.dv_end)
        steps[dv] = codec.durations[(dv - codec.dv_start) // codec.params.velocity_levels]
        return steps

    def encode_one(self, score, at: int = 0) -> tuple:
        """One score -> (tokens or CodecError, notes, seconds, facts); all but tokens are None after a
        fallback. ``facts`` is (duration-weighted pitch-class histogram, header TS token or -1).

        Tokens are written at position ``at`` of one buffer reused from call to call (fresh memory
        for every file costs page faults), so a caller keeping files back to back passes the running
        total and reads them all at the end with ``written(total)``. A view returned earlier stays
        valid until a later call writes over its range.
        """
        state = np.frombuffer(score.__getstate__(), dtype=np.uint8)
        self._reserve(at, len(state) + 140)
        if self._notes.shape[1] <= len(state) // 12 + 1:
            self._notes = np.empty((3, len(state) // 12 + 2))
        try:
            st, n, notes, secs = encode_state(state, self._out, at, self._consts, *self._tables, self._facts,
                                              self._notes)
        except Exception:  # never expected; the numpy encoder then decides
            st, n, notes, secs = LAYOUT, 0, 0, 0.0
        if st == OK:
            facts = (self._facts[:12].copy(), int(self._facts[12]))
            if self._chords is not None:  # v4: the labeller's chords go in after (``Codec.add_chords``'s)
                chorded = self._chords.add_for_notes(self._out[at : at + n], self._notes, int(self._facts[13]),
                                                     int(self._facts[14]))
                return self._keep(at, chorded), notes, secs, facts
            return self._out[at : at + n], notes, secs, facts
        if st == NO_NOTES:
            return CodecError("no notes"), None, None, None
        if st == ABSURD:
            return CodecError("absurd length (notes after 2^32 steps)"), None, None, None
        try:
            tokens = self.codec.encode_scores([score])[0]
        except Exception as e:
            return e, None, None, None
        if isinstance(tokens, np.ndarray):
            tokens = self._keep(at, tokens)
        return tokens, None, None, None

    def _keep(self, at: int, tokens: np.ndarray) -> np.ndarray:
        """``tokens`` copied into the buffer at ``at``; the view of them there."""
        self._reserve(at, len(tokens))
        self._out[at : at + len(tokens)] = tokens
        return self._out[at : at + len(tokens)]

    def written(self, total: int) -> np.ndarray:
        """The first ``total`` tokens of the buffer (see ``encode_one``)."""
        return self._out[:total]

    def _reserve(self, at: int, n: int) -> None:
        if at + n > len(self._out):
            grown = np.empty(max(at + n, 2 * len(self._out)), dtype=np.uint16)
            grown[:at] = self._out[:at]
            self._out = grown


def compiled_smooth(scores: np.ndarray, switch_penalty: float) -> np.ndarray:
    """``chords.smooth`` through the compiled Viterbi (``chords_jit``)."""
    if not len(scores):
        return np.zeros(0, dtype=np.int64)
    return chords_jit.viterbi(np.ascontiguousarray(scores, dtype=np.float64), float(switch_penalty))


def compiled_piece_sums(first, last, pitch, length, beat_first) -> np.ndarray:
    """``chords.piece_sums`` compiled (``chords_jit``)."""
    return chords_jit.piece_sums(np.asarray(first, np.int64), np.asarray(last, np.int64),
                                 np.asarray(pitch, np.int64), np.asarray(length, np.float64),
                                 np.asarray(beat_first, np.int64))


def _smooth_check() -> bool:
    """The compiled Viterbi gives ``chords.smooth``'s labels on scores with many ties (rounded)."""
    rng = np.random.default_rng(11)
    for n in (1, 2, 40, 300):
        scores = np.round(rng.normal(size=(n, chords.VOCAB_SIZE)), 1)
        if not np.array_equal(compiled_smooth(scores, 0.3), chords.smooth(scores, 0.3, compiled=False)):
            return False
    return _profiles_check(rng)


def _profiles_check(rng) -> bool:
    """The compiled ``piece_sums`` gives the numpy sums exactly, on random notes (chords, overlaps,
    unisons, notes past the grid) over an odd meter's grid."""
    for n in (1, 60, 400):
        start = rng.integers(0, 2000, n).astype(np.float64)
        end = start + rng.integers(1, 300, n)
        grid = meter_beat_grid(24, [(0, 5, 8)], int(end.max()) - 50)
        args = chords.pieces(start, end, rng.integers(20, 100, n), grid)
        if not np.array_equal(compiled_piece_sums(*args), chords.piece_sums(*args)):
            return False
    return True


_CHECKED: dict = {}


def available(codec) -> bool:
    """True when numba compiles here and this symusic's layout gives the numpy encoder's tokens exactly.

    NUMBA_DISABLE_JIT=1 counts as unavailable: the kernel would then run as Python, far slower than
    the numpy encoder.
    """
    if numba is None or numba.config.DISABLE_JIT:
        return False
    k = id(codec)
    if k not in _CHECKED:
        _CHECKED[k] = _self_check(codec)
        if _CHECKED[k] and codec.has_chords and _smooth_check():  # v4 labels every song: compile that too
            chords.use_compiled(compiled_smooth, compiled_piece_sums)
    return _CHECKED[k]


def _self_check(codec) -> bool:
    import symusic

    s = symusic.Score(96)
    tempos = [(0, 500_000), (0, 400_000), (700, 600_000), (300, 600_000), (5000, 450_000)]
    for t, mspq in tempos:
        s.tempos.append(symusic.Tempo(t, 60_000_000 / mspq))
    s.time_signatures.append(symusic.TimeSignature(96, 6, 8))
    s.time_signatures.append(symusic.TimeSignature(0, 3, 4))
    s.markers.append(symusic.TextMeta(10, "marker"))
    s.key_signatures.append(symusic.KeySignature(0, 2, 1))
    rng = np.random.default_rng(7)
    for program, drum in ((33, False), (0, True), (73, False)):
        tr = symusic.Track(f"t{program}", program, drum)
        t = 0
        for _ in range(60):
            t += int(rng.integers(0, 200))
            tr.notes.append(symusic.Note(t, int(rng.integers(1, 3000)), int(rng.integers(20, 100)),
                                         int(rng.integers(1, 127))))
        tr.notes.append(symusic.Note(t, 10, 60, 0))  # dropped (velocity 0)
        tr.controls.append(symusic.ControlChange(5, 7, 100))
        tr.pitch_bends.append(symusic.PitchBend(9, -300))
        tr.pedals.append(symusic.Pedal(4, 50))
        tr.lyrics.append(symusic.TextMeta(3, "la"))
        s.tracks.append(tr)
    s.tracks.append(symusic.Track("empty", 5, False))
    try:
        got = CompiledEncoder(codec).encode_one(s)
    except Exception:
        return False
    want = codec.encode_scores([s])[0]  # with chords in v4, as encode_one adds them
    return got[1] is not None and np.array_equal(got[0], want)
