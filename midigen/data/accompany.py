"""Chords and a bass line under a fiddle tune, the way a dance-band pianist and bassist would vamp.

The music21 wheel's fiddle tunes carry no chord symbols (a handful of quoted "D" or "A7" among
1,059 tunes), so the chords are found from the melody: each half bar (or bar, in short meters)
gets the diatonic triad of the tune's key that covers its notes best, weighted by duration and
beat, with a Viterbi pass that prefers holding a chord and starting and ending on the tonic. They
are played "boom-chick": the bass on the strong beats (root, then fifth), the chord on the others,
closed position just under the melody. Times are quarter notes, as in `midigen.data.scoremidi`.
"""
from __future__ import annotations

import numpy as np

from midigen.data.scoremidi import Bar

MAJOR_STEPS = (0, 2, 4, 5, 7, 9, 11)
CHORD_LOW = 55  # G3: the chord's lowest note sits at or above it, closed position
BASS_LOW = 36  # C2: roots and fifths at or above it, within an octave
BASS_VELOCITY = 78
CHORD_VELOCITY = 62
HOLD_BONUS = 0.1  # per slot, for keeping the chord of the slot before
EDGE_TONIC_BONUS = 0.6  # on the first and last slot
DEGREE_PRIOR = {0: 0.1, 7: 0.1, 5: 0.08}  # I, V, IV (semitones above the tonic)


def scale_of(sharps: int) -> list[int]:
    """Pitch classes of the major scale with ``sharps`` sharps (negative: flats)."""
    tonic = (7 * sharps) % 12
    return [(tonic + s) % 12 for s in MAJOR_STEPS]


def candidate_chords(scale: list[int], tonic: int) -> list[tuple[int, ...]]:
    """Major and minor triads on the scale's degrees (root, third, fifth), a major V and V7 of ``tonic``."""
    chords = []
    for d in range(7):
        root, third, fifth = scale[d], scale[(d + 2) % 7], scale[(d + 4) % 7]
        if (fifth - root) % 12 == 7:  # no diminished triads
            chords.append((root, third, fifth))
    dominant = ((tonic + 7) % 12, (tonic + 11) % 12, (tonic + 2) % 12)
    if dominant not in chords:
        chords.append(dominant)
    chords.append(dominant + ((tonic + 5) % 12,))  # V7: covers the melody's fourth degree too
    return chords


def tonic_of(melody: np.ndarray, scale: list[int], minor: bool) -> int:
    """The tune's tonic: its last note where that has a triad in the key, else the signature's."""
    sig_tonic = (scale[0] + 9) % 12 if minor else scale[0]
    if len(melody) == 0:
        return sig_tonic
    last = int(melody[np.argmax(melody[:, 0])][2]) % 12
    if last in scale:
        d = scale.index(last)
        if (scale[(d + 4) % 7] - last) % 12 == 7:
            return last
    return sig_tonic


def _is_upbeat(b: Bar) -> bool:
    """The written pickup measure (also where a repeat plays it again): the band waits for the downbeat."""
    return b.index == 0 and b.length < b.meter[0] * 4.0 / b.meter[1] - 1e-6


def slots(bars: list[Bar]) -> list[tuple[float, float]]:
    """(start, end) of each harmonic slot: half bars in 4-beat meters, else whole bars; no upbeat."""
    out = []
    for b in bars:
        full = b.meter[0] * 4.0 / b.meter[1]
        if _is_upbeat(b):
            continue
        if full >= 4.0 - 1e-6 and b.meter[0] % 2 == 0:
            half = full / 2
            out.append((b.start, b.start + min(half, b.length)))
            if b.length > half + 1e-6:
                out.append((b.start + half, b.start + b.length))
        else:
            out.append((b.start, b.start + b.length))
    return out


def fit(melody: np.ndarray, span: tuple[float, float], chords, beat: float = 1.0) -> np.ndarray:
    """How well each chord covers the melody in ``span``: in [-0.5, 1], weighted by time and beat."""
    s, e = span
    on, end = melody[:, 0], melody[:, 0] + melody[:, 1]
    sel = (on < e) & (end > s)
    if not sel.any():
        return np.zeros(len(chords))
    overlap = np.minimum(end[sel], e) - np.maximum(on[sel], s)
    on_beat = np.isclose(((on[sel] - s) / beat) % 1.0, 0.0) | np.isclose(((on[sel] - s) / beat) % 1.0, 1.0)
    w = overlap * np.where(on_beat, 2.0, 1.0)
    pcs = melody[sel, 2].astype(int) % 12
    inside = np.array([[pc in c for pc in pcs] for c in chords], dtype=np.float64)
    return (inside * w - 0.5 * (1 - inside) * w).sum(axis=1) / w.sum()


def choose_chords(melody: np.ndarray, spans, chords, tonic: int, beat: float = 1.0) -> list[int]:
    """Viterbi over the slots: index into ``chords`` for each span."""
    n, k = len(spans), len(chords)
    if n == 0:
        return []
    prior = np.array([DEGREE_PRIOR.get((c[0] - tonic) % 12, 0.0) for c in chords])
    is_tonic = np.array([c[0] == tonic for c in chords], dtype=np.float64)
    score = np.stack([fit(melody, sp, chords, beat) for sp in spans]) + prior
    score[0] += EDGE_TONIC_BONUS * is_tonic
    score[-1] += EDGE_TONIC_BONUS * is_tonic
    best = score[0].copy()
    back = np.zeros((n, k), dtype=np.int64)
    hold = HOLD_BONUS * np.eye(k)
    for t in range(1, n):
        cand = best[:, None] + hold  # from chord i to chord j
        back[t] = np.argmax(cand, axis=0)
        best = cand[back[t], np.arange(k)] + score[t]
    path = [int(np.argmax(best))]
    for t in range(n - 1, 0, -1):
        path.append(int(back[t][path[-1]]))
    return path[::-1]


def _lift(pc: int, low: int) -> int:
    return low + (pc - low) % 12


def _beats(b: Bar) -> tuple[int, float]:
    """Beats of the bar for the vamp: half-note beats are split in two (cut time is played in 4)."""
    full = b.meter[0] * 4.0 / b.meter[1]
    beat = b.beat / 2 if b.beat >= 2.0 else b.beat
    return max(1, int(round(full / beat))), beat


def vamp(bars: list[Bar], spans, chosen: list[tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """(bass rows, chord rows): the bass on beat 1 (root) and in 4-beat bars on 3 (fifth), the
    chord on the other beats."""
    bass, comp = [], []
    starts = np.array([s for s, _ in spans])
    for b in (b for b in bars if not _is_upbeat(b)):
        n, beat = _beats(b)
        end = b.start + b.length
        for i in range(n):
            t = b.start + i * beat
            if t >= end - 1e-6 or not len(starts):
                continue
            chord = chosen[int(np.searchsorted(starts, t + 1e-6) - 1)]
            if i == 0 or (n == 4 and i == 2):
                pc = chord[0] if i == 0 else chord[2]
                bass.append((t, min(beat * 0.9, end - t), _lift(pc, BASS_LOW), BASS_VELOCITY))
            if i > 0 or n == 1:
                for pc in chord:
                    comp.append((t, min(beat * 0.5, end - t), _lift(pc, CHORD_LOW), CHORD_VELOCITY))
    as_rows = lambda rows: np.array(rows, dtype=np.float64).reshape(-1, 4)  # noqa: E731
    return as_rows(bass), as_rows(comp)


def accompany(melody: np.ndarray, bars: list[Bar], sharps: int, minor: bool) -> tuple[np.ndarray, np.ndarray]:
    """Bass and chord rows for a melody (rows of onset, duration, pitch, velocity) on its bars."""
    scale = scale_of(sharps)
    tonic = tonic_of(melody, scale, minor)
    chords = candidate_chords(scale, tonic)
    spans = slots(bars)
    beat = bars[-1].beat if bars else 1.0
    path = choose_chords(melody, spans, chords, tonic, beat)
    return vamp(bars, spans, [chords[i] for i in path])
