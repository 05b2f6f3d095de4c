"""Codec v4's chord pass compiled: a v3 stream from the encoder in, the same stream with its CHORD
tokens out, in one numba call.

Why it exists: ``Codec.add_chords`` (the reference, and the spec) reads the notes back from the tokens,
lays the beat grid, cuts the song into pieces, scores 109 chords a beat, runs the Viterbi and rewrites
the stream: some forty small numpy calls a song, which cost prepare more than parsing and encoding
the song did (about 1.3 ms against 0.8 ms a file). Here the same steps run as loops over the same
arrays, with every float operation in numpy's order (the sums of twelve in numpy's pairwise order),
so the labels, and so the tokens, are the same to the bit; ``CompiledChords.check`` makes sure of it
before prepare uses it, and the tests compare both paths token for token.

Only the encoder's own streams come here (``BOS INST... TEMPO [TS]`` header, SHIFT/TEMPO/NOTE+DV
events, ``EOS``); anything else is the reference's business.
"""
from __future__ import annotations

import math

import numpy as np

from midigen.music.chords import (BASS_WEIGHT, INTERVALS, LATE_HALF_WEIGHT, MAX_BEATS, MAX_SOUNDING, MISSING_PENALTY,
                                  NO_CHORD, OUTSIDE_PENALTY, PRESENT, QUALITIES, QUALITY_PRIOR, ROOT_BASS_BONUS,
                                  SILENT_NO_CHORD, SWITCH_PENALTY, VOCAB_SIZE)
from midigen.music.codec import DRUMS, N_PITCHES
from midigen.music.timing import beat_ticks

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; this keeps the codec importable
    numba = None


def _jit(fn):
    return numba.njit(cache=True, nogil=True)(fn) if numba is not None else fn


def _jit_inline(fn):
    """``_jit`` for a small helper compiled into each caller (a call would cost the Viterbi's hot loop)."""
    return numba.njit(cache=True, nogil=True, inline="always")(fn) if numba is not None else fn


# Layout of the ``consts`` argument (see ``CompiledChords.__init__``).
_CONSTS = ("shift_start", "max_shift", "tempo_start", "ts_start", "inst_start", "note_start", "dv_start",
           "dv_end", "chord_start", "velocity_levels", "bos", "eos", "steps_per_quarter")


@_jit
def _header_end(t, c):
    """Where the encoder's header (``BOS INST... TEMPO [TS]``) ends; -> (position, TS token or -1)."""
    h = 1 if len(t) and t[0] == c[10] else 0
    while h < len(t) and c[4] <= t[h] < c[5]:
        h += 1
    if h < len(t) and c[2] <= t[h] < c[3]:
        h += 1
    ts = -1
    if h < len(t) and c[3] <= t[h] < c[4]:
        ts = t[h]
        h += 1
    return h, ts


@_jit
def _read_notes(t, h, c, durations):
    """The pitched notes (start, end, pitch) of the body ``t[h:]`` up to EOS/BOS, as ``decode_events``
    reads them (a NOTE followed by its DV; time in steps); -> (start, end, pitch, n, end step, step of
    the last event (not SHIFT or CHORD), body end)."""
    n_tok = len(t)
    start = np.empty(n_tok // 2 + 1)
    end = np.empty(n_tok // 2 + 1)
    pitch = np.empty(n_tok // 2 + 1, dtype=np.int64)
    now, last, n, i = 0, 0, 0, h
    while i < n_tok and t[i] != c[11] and t[i] != c[10]:
        tok = np.int64(t[i])
        i += 1
        if c[0] <= tok < c[0] + c[1]:
            now += tok - c[0] + 1
            continue
        if not c[8] <= tok < c[8] + VOCAB_SIZE:
            last = now
        if c[5] <= tok < c[6] and i < n_tok and c[6] <= t[i] < c[7] and (tok - c[5]) // N_PITCHES != DRUMS:
            start[n] = now
            end[n] = now + durations[(np.int64(t[i]) - c[6]) // c[9]]
            pitch[n] = (tok - c[5]) % N_PITCHES
            n += 1
    return start, end, pitch, n, now, last, i


@_jit
def _pieces(start, end, n, starts, ends):
    """``chords.pieces`` on the first ``n`` notes; -> (first, last, length, beat_first, total sounding).

    The cuts (every note start and end, beat start and middle, and the end, sorted and unique) come
    from one merge instead of a sort: note times are whole steps, so they are marked on a row of the
    song's steps (the token stream's gaps are capped, so the row is at most ``max_gap`` per note) and
    read off in order beside the beats' starts and middles, which are already in order."""
    stop = np.int64(ends[-1])
    marked = np.zeros(stop + 1, dtype=np.bool_)
    for i in range(n):
        marked[np.int64(start[i])] = True
        marked[np.int64(end[i])] = True
    marked[stop] = True
    nb = len(starts)
    points = np.empty(2 * nb)  # the beats' starts and middles, in order
    for b in range(nb):
        points[2 * b] = starts[b]
        points[2 * b + 1] = (starts[b] + ends[b]) / 2
    cuts = np.empty(stop + 1 + 2 * nb)
    at = np.empty(stop + 1, dtype=np.int64)  # index in ``cuts`` of each marked step
    beat_first = np.empty(nb, dtype=np.int64)
    m, p = 0, 0
    for v in _marked_steps(marked):
        while p < 2 * nb and points[p] <= v:
            if p % 2 == 0:
                beat_first[p // 2] = m  # the index it gets, or that v gets when it is v
            if points[p] < v:  # (a point on an unmarked step is that step: the same cut)
                cuts[m] = points[p]
                m += 1
            p += 1
        cuts[m] = v
        at[v] = m
        m += 1
    return _piece_lengths(cuts[:m], points, start, end, n, at, beat_first)


@_jit
def _marked_steps(marked):
    """The marked steps in order: one tight pass over the row, so the merge above visits only them."""
    out = np.empty(len(marked), dtype=np.int64)
    m = 0
    for v in range(len(marked)):
        out[m] = v
        m += marked[v]
    return out[:m]


@_jit
def _piece_lengths(cuts, points, start, end, n, at, beat_first):
    """The rest of ``_pieces``: each piece's length (LATE_HALF_WEIGHT of it past its beat's middle)
    and the pieces each note sounds through."""
    length = np.empty(len(cuts) - 1)
    b = 0
    nb = len(beat_first)
    for i in range(len(cuts) - 1):
        while b + 1 < nb and points[2 * b + 2] <= cuts[i]:
            b += 1
        length[i] = (cuts[i + 1] - cuts[i]) * (LATE_HALF_WEIGHT if cuts[i] >= points[2 * b + 1] else 1.0)
    first = np.empty(n, dtype=np.int64)
    last = np.empty(n, dtype=np.int64)
    total = 0
    for i in range(n):
        first[i] = at[np.int64(start[i])]
        last[i] = max(at[np.int64(end[i])], first[i])
        total += last[i] - first[i]
    return first, last, length, beat_first, total


@_jit
def _sum12(v):
    """Twelve values summed in numpy's pairwise order (eight partial sums paired, then the rest)."""
    s = ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]))
    for j in range(8, 12):
        s += v[j]
    return s


@_jit
def _scores(sums, intervals, sizes, prior):
    """``chords.chord_scores`` of every beat (``sums``: beats x 24, the pitch classes then the bass), the
    same operations on the same values in the same order (``_beat_scores``, beat by beat)."""
    out = np.empty((len(sums), VOCAB_SIZE))
    x, low, bonus, missing_penalty = _score_buffers()
    for b in range(len(sums)):
        _beat_scores(sums, b, x, low, bonus, missing_penalty, intervals, sizes, prior, out[b])
    return out


@_jit
def _score_buffers():
    """``_beat_scores``' work arrays, and the missing-tones penalty per [tones missing, tones in the chord]."""
    x = np.zeros(24)  # the beat's pitch-class shares, twice over
    low = np.zeros(24, dtype=np.int64)  # 1 where a pitch class has less than PRESENT of the beat
    bonus = np.empty(12)
    missing_penalty = np.empty((5, 5))
    for m in range(5):
        for size in range(3, 5):
            missing_penalty[m, size] = MISSING_PENALTY * np.float64(m) / np.float64(size)
    return x, low, bonus, missing_penalty


@_jit
def _beat_scores(sums, b, x, low, bonus, missing_penalty, intervals, sizes, prior, out):
    """Beat ``b``'s scores into ``out`` (109). Chords are taken quality by quality, root by root
    (``intervals``, ``sizes``, ``prior`` per quality), over the shares laid out twice so that root +
    interval needs no modulo (a loop the compiler can vectorize); what takes few values (the
    missing-tones penalty, the bass bonus of each root) is computed once per value."""
    for j in range(12):
        x[j] = sums[b, j] + BASS_WEIGHT * sums[b, 12 + j]
    total = _sum12(x)
    if total <= 0:
        out[:NO_CHORD] = 0.0
        out[NO_CHORD] = SILENT_NO_CHORD
        return
    for j in range(12):
        x[j] = x[j] / total
        low[j] = 1 if x[j] < PRESENT else 0
        x[12 + j], low[12 + j] = x[j], low[j]
    bass_total = _sum12(sums[b, 12:])
    div = bass_total if bass_total > 0 else 1.0
    for j in range(12):
        bonus[j] = ROOT_BASS_BONUS * (sums[b, 12 + j] / div)
    for q in range(len(sizes)):
        _quality_scores(x, low, intervals[q], sizes[q], prior[q], missing_penalty, bonus, out, q)
    out[NO_CHORD] = -1e9


@_jit
def _quality_scores(x, low, iv, size, prior, missing_penalty, bonus, out, q):
    """The scores of one quality's twelve chords (ids ``root * 9 + q``) into ``out``. A triad's fourth
    tone, which numpy adds as a zero, is left out: adding zero to a sum of shares changes nothing."""
    n_q = VOCAB_SIZE // 12
    a, b, c = np.uint64(iv[1]), np.uint64(iv[2]), np.uint64(iv[3])
    pen = missing_penalty[:, size]
    for r in range(np.uint64(12)):
        inside = (x[r] + x[r + a]) + x[r + b]
        m = low[r] + low[r + a] + low[r + b]
        if size == 4:
            inside += x[r + c]
            m += low[r + c]
        out[r * n_q + q] = inside - OUTSIDE_PENALTY * (1.0 - inside) - pen[m] + bonus[r] + prior
    return


@_jit
def viterbi(scores, penalty):
    """``chords.smooth``: the same comparisons and sums, so ties go the same way (the leader is the first
    best, ``np.argmax``'s choice)."""
    n, k = scores.shape
    back = np.empty((n, k), dtype=np.int16)
    best = scores[0].copy()
    for t in range(1, n):
        _viterbi_step(best, scores[t], back[t], penalty)
    return _backtrack(best, back)


@_jit
def smooth_sums(sums, intervals, sizes, prior):
    """``viterbi(_scores(sums, ...), SWITCH_PENALTY)`` with each beat's scores made where the Viterbi takes
    them (one row, in cache) instead of a beats x 109 table written and read back.

    The row is laid out quality by quality (``q * 12 + root``, N.C. last) rather than in chord-id order
    (``root * 9 + q``), so each quality's twelve scores are computed and stored side by side, not nine
    apart (a few microseconds a song). Each state's update is its own, so the order of the states
    changes nothing but which state leads on a tie: the leader is taken as the reference takes it, the
    first best in chord-id order (``order``), and the path is turned back into chord ids at the end."""
    n, k = len(sums), VOCAB_SIZE
    order, chord_of = _quality_major()
    back = np.empty((n, k), dtype=np.int16)
    best, row = np.empty(k), np.empty(k)
    x, low, bonus, missing_penalty = _score_buffers()
    _row_scores(sums, 0, x, low, bonus, missing_penalty, intervals, sizes, prior, best)
    for t in range(1, n):
        _row_scores(sums, t, x, low, bonus, missing_penalty, intervals, sizes, prior, row)
        leader = _first_best_in(best, order)
        switch = best[leader] - SWITCH_PENALTY
        for j in range(k):  # ``_viterbi_step``'s update, without branches
            stay = best[j] >= switch
            back[t, j] = j if stay else leader
            best[j] = (best[j] if stay else switch) + row[j]
    path = np.empty(n, dtype=np.int64)
    path[n - 1] = _first_best_in(best, order)
    for t in range(n - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    for t in range(n):
        path[t] = chord_of[path[t]]
    return path


@_jit
def _quality_major():
    """(``order``: the row index of each chord id, ``chord_of``: the chord id of each row index) for the
    quality-major row of ``smooth_sums``."""
    n_q = VOCAB_SIZE // 12
    order = np.empty(VOCAB_SIZE, dtype=np.int64)
    chord_of = np.empty(VOCAB_SIZE, dtype=np.int64)
    for chord in range(NO_CHORD):
        i = (chord % n_q) * 12 + chord // n_q
        order[chord], chord_of[i] = i, chord
    order[NO_CHORD], chord_of[NO_CHORD] = NO_CHORD, NO_CHORD
    return order, chord_of


@_jit
def _row_scores(sums, b, x, low, bonus, missing_penalty, intervals, sizes, prior, row):
    """``_beat_scores`` into a quality-major row (``q * 12 + root``): the same operations on the same
    values for every chord."""
    for j in range(12):
        x[j] = sums[b, j] + BASS_WEIGHT * sums[b, 12 + j]
    total = _sum12(x)
    if total <= 0:
        row[:NO_CHORD] = 0.0
        row[NO_CHORD] = SILENT_NO_CHORD
        return
    for j in range(12):
        x[j] = x[j] / total
        low[j] = 1 if x[j] < PRESENT else 0
        x[12 + j], low[12 + j] = x[j], low[j]
    bass_total = _sum12(sums[b, 12:])
    div = bass_total if bass_total > 0 else 1.0
    for j in range(12):
        bonus[j] = ROOT_BASS_BONUS * (sums[b, 12 + j] / div)
    for q in range(len(sizes)):
        at = np.uint64(q * 12)
        a, c, d = np.uint64(intervals[q, 1]), np.uint64(intervals[q, 2]), np.uint64(intervals[q, 3])
        size, pr = np.uint64(sizes[q]), prior[q]
        if size == 4:
            for r in range(np.uint64(12)):
                inside = ((x[r] + x[r + a]) + x[r + c]) + x[r + d]
                m = np.uint64(low[r] + low[r + a] + low[r + c] + low[r + d])
                row[at + r] = inside - OUTSIDE_PENALTY * (1.0 - inside) - missing_penalty[m, size] + bonus[r] + pr
        else:
            for r in range(np.uint64(12)):
                inside = (x[r] + x[r + a]) + x[r + c]
                m = np.uint64(low[r] + low[r + a] + low[r + c])
                row[at + r] = inside - OUTSIDE_PENALTY * (1.0 - inside) - missing_penalty[m, size] + bonus[r] + pr
    row[NO_CHORD] = -1e9


@_jit
def _first_best_in(values, order):
    """``_first_best`` with the first taken in ``order`` (index of each place, in the order that counts)."""
    top = _largest(values)
    i = 0
    while values[order[i]] != top:
        i += 1
    return order[i]


@_jit
def _viterbi_step(best, scores, back, penalty):
    """One beat: every state keeps its value or restarts from the leader's less ``penalty``, whichever
    is more (a tie keeps), then adds its score; ``back``: where each came from."""
    leader = _first_best(best)
    switch = best[leader] - penalty
    for j in range(len(best)):  # without branches, so the compiler can vectorize it
        stay = best[j] >= switch
        back[j] = j if stay else leader
        best[j] = (best[j] if stay else switch) + scores[j]


@_jit
def _backtrack(best, back):
    n = len(back)
    path = np.empty(n, dtype=np.int64)
    path[n - 1] = _first_best(best)
    for t in range(n - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


@_jit
def _first_best(values):
    """The index of the first largest value (``np.argmax``'s choice; no NaN here)."""
    top = _largest(values)
    i = 0
    while values[i] != top:
        i += 1
    return i


@_jit_inline
def _largest(values):
    """The largest of ``values``, found in eight interleaved runs so the comparisons overlap instead of
    waiting on each other (the leader search was most of the Viterbi's time)."""
    n = len(values)
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = values[0]
    j = 0
    while j + 8 <= n:
        m0 = values[j] if values[j] > m0 else m0
        m1 = values[j + 1] if values[j + 1] > m1 else m1
        m2 = values[j + 2] if values[j + 2] > m2 else m2
        m3 = values[j + 3] if values[j + 3] > m3 else m3
        m4 = values[j + 4] if values[j + 4] > m4 else m4
        m5 = values[j + 5] if values[j + 5] > m5 else m5
        m6 = values[j + 6] if values[j + 6] > m6 else m6
        m7 = values[j + 7] if values[j + 7] > m7 else m7
        j += 8
    for i in range(j, n):
        m0 = values[i] if values[i] > m0 else m0
    return max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))


@_jit
def _round_half_even(x):
    r = math.floor(x)
    d = x - r
    return np.int64(r + 1 if d > 0.5 or (d == 0.5 and r % 2 != 0) else r)


@_jit
def piece_sums(first, last, pitch, length, beat_first):
    """``chords.piece_sums``: the same products, summed in the same order (``np.add.reduceat``'s). Counts
    are int32 (a piece holds fewer than MAX_NOTES notes), half the memory to clear and walk; indexes
    are unsigned, which spares numba's negative-index wraparound on every access."""
    n = len(length)
    out = np.zeros((len(beat_first), 24))
    cnt = np.zeros((n, 12), dtype=np.int32)
    lowest = np.full(n, 128, dtype=np.int64)
    for k in range(len(first)):
        p = pitch[k]
        pc = np.uint64(p % 12)
        for i in range(np.uint64(first[k]), np.uint64(last[k])):
            cnt[i, pc] += 1
            if p < lowest[i]:
                lowest[i] = p
    n_beats = len(beat_first)
    for b in range(n_beats):  # (adding a zero to a sum of non-negative terms changes nothing: skipped)
        lo = beat_first[b]
        hi = beat_first[b + 1] if b + 1 < n_beats else n
        if hi <= lo:  # np.add.reduceat's rule: an empty range gives its first row
            hi = lo + 1
        ub = np.uint64(b)
        for i in range(np.uint64(lo), np.uint64(hi)):
            w = length[i]
            for c in range(np.uint64(12)):
                if cnt[i, c]:
                    out[ub, c] += np.int64(cnt[i, c]) * w
            if lowest[i] < 128:
                out[ub, np.uint64(12 + lowest[i] % 12)] += w
    return out


@_jit
def _labels(start, end, pitch, n, step, templates):
    """``chords.label_notes`` on the meter's beat grid (``timing.meter_beat_grid``, one meter from 0);
    -> (beat starts, labels), both empty where the reference gives no chords (too long, too dense)."""
    stop = end[:n].max()
    count = max(0, int(math.ceil(stop / step - 1e-9)))
    if count > MAX_BEATS or count == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    starts = np.arange(count) * step
    ends = np.empty(count)
    ends[:-1] = starts[1:]
    ends[-1] = stop
    first, last, length, beat_first, total = _pieces(start, end, n, starts, ends)
    if total > MAX_SOUNDING:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    sums = piece_sums(first, last, pitch[:n], length, beat_first)
    return starts, smooth_sums(sums, *templates)


@_jit
def _put_timed(out, w, tok, time, now, mx, shift_start):
    """``tok`` at step ``time`` after step ``now``: the shifts between (``Codec.timed_stream``'s rule:
    full ``mx``-step shifts, then the rest), then the token; -> new ``w``."""
    gap = max(time - now, 0)
    for _ in range(gap // mx):
        out[w] = shift_start + mx - 1
        w += 1
    if gap % mx > 0:
        out[w] = shift_start + gap % mx - 1
        w += 1
    out[w] = tok
    return w + 1


@_jit
def _write(t, h, body_end, change_steps, change_ids, n_ch, c):
    """``Codec.add_chords``' stream: the header, then the events with each change's CHORD after its
    step's tempo and before its notes, every shift run rewritten around them, then the tail."""
    out = np.empty(len(t) + 2 * n_ch + 1, dtype=t.dtype)
    out[:h] = t[:h]
    w, now, time, j = h, 0, 0, 0
    for i in range(h, body_end):
        tok = np.int64(t[i])
        if c[0] <= tok < c[0] + c[1]:
            time += tok - c[0] + 1
            continue
        if c[8] <= tok < c[8] + VOCAB_SIZE:  # CHORD tokens already there are replaced
            continue
        is_tempo = c[2] <= tok < c[3]
        while j < n_ch and (change_steps[j] < time or (change_steps[j] == time and not is_tempo)):
            w = _put_timed(out, w, c[8] + change_ids[j], change_steps[j], now, c[1], c[0])
            now = change_steps[j]
            j += 1
        w = _put_timed(out, w, tok, time, now, c[1], c[0])
        now = time
    for j in range(j, n_ch):  # changes at the last event's step, after its tempo
        w = _put_timed(out, w, c[8] + change_ids[j], change_steps[j], now, c[1], c[0])
        now = change_steps[j]
    k = len(t) - body_end
    out[w:w + k] = t[body_end:]
    return out[:w + k]


@_jit
def add_chords(t, c, durations, ts_steps, templates):
    """One encoder stream (uint16) -> it with CHORD tokens (``Codec.add_chords``'s, token for token).
    ``ts_steps[ts token - ts start]``: steps per beat of each meter; ``templates``: the chord tables."""
    h, ts = _header_end(t, c)
    start, end, pitch, n, end_step, last_event, body_end = _read_notes(t, h, c, durations)
    return _with_chords(t, h, ts, body_end, start, end, pitch, n, min(end_step, last_event), c, ts_steps, templates)


@_jit
def add_chords_for_notes(t, notes, n, last, c, ts_steps, templates):
    """``add_chords`` of an encoder stream whose pitched notes are known: ``notes[:, :n]`` (start, end,
    pitch, in its steps, in stream order, as ``_read_notes`` reads them) and ``last``, its last
    event's step (``codec_jit.encode_state`` records both as it writes). Its body ends at its EOS."""
    h, ts = _header_end(t, c)
    return _with_chords(t, h, ts, len(t) - 1, notes[0], notes[1], notes[2, :n].astype(np.int64), n, last, c,
                        ts_steps, templates)


@_jit
def _with_chords(t, h, ts, body_end, start, end, pitch, n, until, c, ts_steps, templates):
    """The stream ``t`` with the CHORD tokens of its ``n`` pitched notes, none after step ``until``."""
    if n == 0:
        return _write(t, h, body_end, np.zeros(0, np.int64), np.zeros(0, np.int64), 0, c)
    starts, labels = _labels(start, end, pitch, n, ts_steps[ts - c[3]] if ts >= 0 else ts_steps[-1], templates)
    steps, ids, n_ch = _changes(starts, labels, until)
    return _write(t, h, body_end, steps, ids, n_ch, c)


@_jit
def _changes(starts, labels, until):
    """``Codec.chord_changes``: (steps, chord ids, count) where the label changes (from N.C.), each at
    its beat's start rounded to a step as ``np.round`` does, none after step ``until``."""
    steps = np.empty(len(labels), dtype=np.int64)
    ids = np.empty(len(labels), dtype=np.int64)
    n_ch, prev = 0, NO_CHORD
    for b in range(len(labels)):
        if labels[b] != prev:
            s = _round_half_even(starts[b])
            if s <= until:
                steps[n_ch], ids[n_ch] = s, labels[b]
                n_ch += 1
        prev = labels[b]
    return steps, ids, n_ch


class CompiledChords:
    """``Codec.add_chords`` for the encoder's streams through ``add_chords`` above: the codec's tables
    gathered once, so a song costs one compiled call."""

    def __init__(self, codec):
        p = codec.params
        values = {"shift_start": codec.shift_start, "max_shift": p.max_shift, "tempo_start": codec.tempo_start,
                  "ts_start": codec.ts_start, "inst_start": codec.inst_start, "note_start": codec.note_start,
                  "dv_start": codec.dv_start, "dv_end": codec.dv_end, "chord_start": codec.chord_start,
                  "velocity_levels": p.velocity_levels, "bos": codec.BOS, "eos": codec.EOS,
                  "steps_per_quarter": p.steps_per_quarter}
        self._consts = np.array([values[k] for k in _CONSTS], dtype=np.int64)
        meters = list(codec.time_signatures) + [(4, 4)]  # the last: a stream without a TS token
        self._ts_steps = np.array([beat_ticks(p.steps_per_quarter, num, den) for num, den in meters])
        self._durations = np.asarray(codec.durations, dtype=np.int64)
        self._templates = (np.array([INTERVALS[q] + (0,) * (4 - len(INTERVALS[q])) for q in QUALITIES]),
                           np.array([len(INTERVALS[q]) for q in QUALITIES]),
                           np.array([QUALITY_PRIOR[q] for q in QUALITIES], dtype=np.float64))

    def add(self, tokens: np.ndarray) -> np.ndarray:
        """An encoder stream (uint16, no CHORD tokens yet) with its CHORD tokens."""
        return add_chords(np.ascontiguousarray(tokens), self._consts, self._durations, self._ts_steps,
                          self._templates)

    def add_for_notes(self, tokens: np.ndarray, notes: np.ndarray, n: int, last: int) -> np.ndarray:
        """``add`` of an encoder stream whose pitched notes the encoder recorded (``add_chords_for_notes``)."""
        return add_chords_for_notes(tokens, notes, n, last, self._consts, self._ts_steps, self._templates)
