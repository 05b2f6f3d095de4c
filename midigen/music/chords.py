"""Chords: the vocabulary, and a labeller that names the chord of every beat of a song.

Vocabulary: 12 roots x ``QUALITIES`` plus N (no chord), 109 labels with stable integer ids
(``root * 9 + quality``, N = 108), so later work (chord tokens, the grammar, the studio) can store
and force them as numbers; ``chord_name`` spells one for people.

The labeller reads the sounding pitched notes (drum tracks left out) beat by beat: each pitch class
counts for the time it sounds within the beat (half as much in the beat's second half, where
passing notes fall), and the bass (the lowest note sounding at each moment) counts again, because
harmony is heard from the bottom up. Every chord template is scored
against that profile (its tones present, other tones penalised, tones it lacks penalised) with a
bonus when the bass is the root; a Viterbi pass then prefers holding a chord over switching, so a
passing note does not make a chord of its own. All of it is array work: a song takes milliseconds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from midigen.errors import MidigenError
from midigen.music.timing import BeatGrid, beat_grid, seconds_at_tick

QUALITIES = ("maj", "min", "dim", "aug", "sus4", "7", "maj7", "m7", "m7b5")
INTERVALS = {
    "maj": (0, 4, 7), "min": (0, 3, 7), "dim": (0, 3, 6), "aug": (0, 4, 8), "sus4": (0, 5, 7),
    "7": (0, 4, 7, 10), "maj7": (0, 4, 7, 11), "m7": (0, 3, 7, 10), "m7b5": (0, 3, 6, 10),
}
SUFFIXES = {"maj": "", "min": "m", "dim": "dim", "aug": "aug", "sus4": "sus4",
            "7": "7", "maj7": "maj7", "m7": "m7", "m7b5": "m7b5"}
# what a chord is as a triad, for comparing with analyses that name triads (sus4 stays itself)
TRIAD_OF = {"maj": "maj", "min": "min", "dim": "dim", "aug": "aug", "sus4": "sus4",
            "7": "maj", "maj7": "maj", "m7": "min", "m7b5": "dim"}
ROOT_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
NO_CHORD = 12 * len(QUALITIES)
VOCAB_SIZE = NO_CHORD + 1
NO_CHORD_NAME = "N.C."

# Scoring weights, tuned by hand on the music21 analyses of `midigen.data.chord_analyses` (benchmarks/chords.py reports the
# agreement; there is no held-out set of expert labels, so read that figure as fitted, not predicted).
BASS_WEIGHT = 1.0  # the lowest sounding note counts this much again
LATE_HALF_WEIGHT = 0.5  # what sounding in the second half of a beat counts (passing notes fall there)
OUTSIDE_PENALTY = 0.3  # per unit of sounding time outside the chord
MISSING_PENALTY = 0.35  # per chord tone that sounds less than PRESENT of the beat's profile
PRESENT = 0.1
ROOT_BASS_BONUS = 0.12  # the bass on the root
QUALITY_PRIOR = {"maj": 0.0, "min": 0.0, "dim": -0.05, "aug": -0.15, "sus4": -0.3,
                 "7": -0.04, "maj7": -0.15, "m7": -0.1, "m7b5": -0.08}
SWITCH_PENALTY = 0.3  # a change of chord must pay for itself in beats that fit it better
MAX_BEATS = 50_000  # 7 hours at 120 BPM: beyond, a file is hostile, not music (scoring keeps a few
# beats x 109 x 4 tables)
MAX_SOUNDING = 20_000_000  # (note, stretch of the song it sounds in) pairs the profiles may count
SILENT_NO_CHORD = 0.05  # a beat where nothing sounds leans to N.C. by this much (a short rest keeps the chord)


class ChordError(MidigenError):
    """A song the labeller will not read: too long or too dense to be music (a hostile file)."""


def chord_id(root: int, quality: str) -> int:
    return (int(root) % 12) * len(QUALITIES) + QUALITIES.index(quality)


def chord_root(cid: int) -> int | None:
    return None if cid == NO_CHORD else int(cid) // len(QUALITIES)


def chord_quality(cid: int) -> str | None:
    return None if cid == NO_CHORD else QUALITIES[int(cid) % len(QUALITIES)]


def chord_name(cid: int) -> str:
    """How a lead sheet spells a chord id: C, F#m, Bb7, Dbmaj7, Bm7b5, N.C. (``parse_chords`` reads it back)."""
    if not 0 <= int(cid) < VOCAB_SIZE:
        raise ValueError(f"not a chord id: {cid}")
    if cid == NO_CHORD:
        return NO_CHORD_NAME
    return ROOT_NAMES[chord_root(cid)] + SUFFIXES[chord_quality(cid)]


def chord_pitch_classes(cid: int) -> tuple[int, ...]:
    """The pitch classes of a chord (empty for N.C.)."""
    if cid == NO_CHORD:
        return ()
    root = chord_root(cid)
    return tuple((root + i) % 12 for i in INTERVALS[chord_quality(cid)])


def _templates() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For the 108 chords: their tones as pitch-class indexes (4 per chord, a triad's 4th is 12, a
    column of zeros), how many tones each has, its root, its quality prior."""
    tones = np.full((NO_CHORD, 4), 12)
    for cid in range(NO_CHORD):
        pcs = chord_pitch_classes(cid)
        tones[cid, : len(pcs)] = pcs
    sizes = (tones < 12).sum(axis=1)
    roots = np.arange(NO_CHORD) // len(QUALITIES)
    prior = np.array([QUALITY_PRIOR[QUALITIES[c % len(QUALITIES)]] for c in range(NO_CHORD)])
    return tones, sizes, roots, prior


TEMPLATE_TONES, TEMPLATE_SIZES, TEMPLATE_ROOTS, TEMPLATE_PRIOR = _templates()
# (chord id incl. N.C., pitch class) -> is it a tone of the chord: the one table the adherence measure
# (``midigen.eval.metrics``) and the chord weight (``midigen.generate.grammar``) both read
TONE_MASK = np.array([[pc in chord_pitch_classes(c) for pc in range(12)] for c in range(VOCAB_SIZE)])


def _over_tones(values: np.ndarray) -> np.ndarray:
    """beats x 12 -> beats x 108: the sum of each chord's tones' values. A gather rather than a matrix
    product: BLAS would start threads for these small matrices, slow on a busy machine."""
    padded = np.concatenate((values, np.zeros((len(values), 1))), axis=1)
    return padded[:, TEMPLATE_TONES].sum(axis=2)


# ----- the profile of each beat -----------------------------------------------------------------


def _pitched_notes(score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start tick, end tick, pitch) of every note of the score's non-drum tracks."""
    arrays = [t.notes.numpy() for t in score.tracks if not t.is_drum]
    arrays = [a for a in arrays if len(a["time"])]
    if not arrays:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
    start = np.concatenate([a["time"] for a in arrays]).astype(np.float64)
    end = start + np.concatenate([a["duration"] for a in arrays]).astype(np.float64)
    pitch = np.concatenate([a["pitch"] for a in arrays]).astype(np.int64)
    return start, end, pitch


def piece_sums(first: np.ndarray, last: np.ndarray, pitch: np.ndarray, length: np.ndarray,
               beat_first: np.ndarray) -> np.ndarray:
    """beats x 24: per beat, each pitch class's sounding time, then the bass's (the lowest note of each
    piece), from notes that sound through pieces ``first..last-1`` of lengths ``length``; beat b holds
    the pieces from ``beat_first[b]`` on. (``codec_jit`` has it compiled, checked to give the same sums.)"""
    count = last - first
    total = int(count.sum())
    offsets = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
    piece, pitch_at = np.repeat(first, count) + offsets, np.repeat(pitch, count)
    n = len(length)
    chroma = np.bincount(piece * 12 + pitch_at % 12, minlength=n * 12).reshape(n, 12)
    lowest = np.full(n, 128)
    np.minimum.at(lowest, piece, pitch_at)
    bass = np.zeros((n, 12))
    has = lowest < 128
    bass[np.flatnonzero(has), lowest[has] % 12] = 1.0
    weighted = np.concatenate((chroma, bass), axis=1) * length[:, None]
    return np.add.reduceat(weighted, beat_first, axis=0)


_COMPILED_PIECE_SUMS = None  # ``piece_sums`` compiled (``codec_jit``), once it has given the same sums


def beat_profiles(score, grid: BeatGrid) -> tuple[np.ndarray, np.ndarray]:
    """(pitch-class time, bass pitch-class time), each beats x 12, in ticks of sounding per beat."""
    return note_profiles(*_pitched_notes(score), grid)


def note_profiles(start: np.ndarray, end: np.ndarray, pitch: np.ndarray, grid: BeatGrid, compiled: bool = True):
    """``beat_profiles`` of pitched notes given as (start, end, pitch) arrays on ``grid``'s time unit.

    The song is cut at every note start and end and every beat start and middle into pieces where
    nothing changes; each piece's sounding notes and lowest note are counted for its length (times
    LATE_HALF_WEIGHT in a beat's second half), then the pieces are summed beat by beat (``piece_sums``,
    compiled when ``codec_jit`` has registered it and ``compiled``).
    """
    if len(grid) == 0:
        return np.zeros((0, 12)), np.zeros((0, 12))
    sums = _COMPILED_PIECE_SUMS if compiled and _COMPILED_PIECE_SUMS is not None else piece_sums
    per_beat = sums(*pieces(start, end, pitch, grid))
    return per_beat[:, :12], per_beat[:, 12:]


def pieces(start, end, pitch, grid: BeatGrid) -> tuple:
    """``piece_sums``' arguments: the stretches of a (non-empty) grid where nothing changes, which of
    them each note sounds through, and where each beat's begin. ChordError when notes would sound
    over more than MAX_SOUNDING of them (a hostile file)."""
    start, end = np.asarray(start, np.float64), np.asarray(end, np.float64)
    lo, hi = grid.starts[0], grid.ends[-1]
    start, end = np.clip(start, lo, hi), np.clip(end, lo, hi)
    middles = (grid.starts + grid.ends) / 2
    cuts = np.unique(np.concatenate((start, end, grid.starts, middles, [hi])))
    beat_of = np.searchsorted(grid.starts, cuts[:-1], side="right") - 1
    length = np.diff(cuts) * np.where(cuts[:-1] >= middles[beat_of], LATE_HALF_WEIGHT, 1.0)
    first = np.searchsorted(cuts, start)
    last = np.maximum(np.searchsorted(cuts, end), first)
    total = int((last - first).sum())
    if total > MAX_SOUNDING:
        raise ChordError(f"too dense to label: notes sound over {total} stretches (at most {MAX_SOUNDING})")
    return first, last, np.asarray(pitch, np.int64), length, np.searchsorted(cuts, grid.starts)


def chord_scores(chroma: np.ndarray, bass: np.ndarray) -> np.ndarray:
    """beats x 109 scores of every label against each beat's profile (see the module docstring)."""
    profile = chroma + BASS_WEIGHT * bass
    total = profile.sum(axis=1, keepdims=True)
    silent = total[:, 0] <= 0
    x = profile / np.where(total > 0, total, 1.0)
    inside = _over_tones(x)
    missing = _over_tones((x < PRESENT).astype(np.float64))
    bass_total = bass.sum(axis=1, keepdims=True)
    bass_share = bass / np.where(bass_total > 0, bass_total, 1.0)
    scores = (inside - OUTSIDE_PENALTY * (1.0 - inside) - MISSING_PENALTY * missing / TEMPLATE_SIZES
              + ROOT_BASS_BONUS * bass_share[:, TEMPLATE_ROOTS] + TEMPLATE_PRIOR)
    out = np.zeros((len(x), VOCAB_SIZE))
    out[:, :NO_CHORD] = np.where(silent[:, None], 0.0, scores)
    out[:, NO_CHORD] = np.where(silent, SILENT_NO_CHORD, -1e9)
    return out


_COMPILED_SMOOTH = None  # the same Viterbi compiled (``codec_jit``), once it has given this one's labels


def use_compiled(smooth_fn, piece_sums_fn) -> None:
    """Let ``smooth`` and ``note_profiles`` run compiled copies (``smooth_fn(scores, switch_penalty)``,
    ``piece_sums_fn`` as ``piece_sums``): ``codec_jit`` registers them after checking they give what these
    do (prepare labels every song: its hot path)."""
    global _COMPILED_SMOOTH, _COMPILED_PIECE_SUMS
    _COMPILED_SMOOTH, _COMPILED_PIECE_SUMS = smooth_fn, piece_sums_fn


def smooth(scores: np.ndarray, switch_penalty: float | None = None, compiled: bool = True) -> np.ndarray:
    """The label sequence with the best total score less ``switch_penalty`` per change (Viterbi).
    ``compiled``: through the registered compiled copy, when there is one (False: this numpy one)."""
    switch_penalty = SWITCH_PENALTY if switch_penalty is None else switch_penalty
    n, k = scores.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if compiled and _COMPILED_SMOOTH is not None:
        return _COMPILED_SMOOTH(scores, switch_penalty)
    back = np.zeros((n, k), dtype=np.int16)
    best = scores[0].copy()
    states = np.arange(k)
    for t in range(1, n):
        leader = int(np.argmax(best))
        switch = best[leader] - switch_penalty
        stay = best >= switch
        back[t] = np.where(stay, states, leader)
        best = np.where(stay, best, switch) + scores[t]
    path = np.zeros(n, dtype=np.int64)
    path[-1] = int(np.argmax(best))
    for t in range(n - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


# ----- a song's chords --------------------------------------------------------------------------


@dataclass(frozen=True)
class SongChords:
    """A chord id for every beat of a song's ``grid``, and the second each beat starts at."""

    grid: BeatGrid
    labels: np.ndarray
    seconds: np.ndarray

    def changes(self) -> np.ndarray:
        """Indexes of the beats where the chord changes (the first beat included)."""
        if len(self.labels) == 0:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(np.concatenate(([True], self.labels[1:] != self.labels[:-1])))


def label_notes(start: np.ndarray, end: np.ndarray, pitch: np.ndarray, grid: BeatGrid) -> np.ndarray:
    """The chord id of every beat of ``grid`` from pitched notes as arrays (start, end, pitch) in the
    grid's time unit: what ``label_chords`` does after reading a score, and what the codec does on a
    token stream's own notes (``Codec.add_chords``), so both label alike. ChordError: too dense."""
    chroma, bass = note_profiles(start, end, pitch, grid)
    return smooth(chord_scores(chroma, bass))


def label_chords(score) -> SongChords:
    """The chord of every beat of a symusic score (any time unit; read in ticks). ChordError for a file
    too long or too dense to be music."""
    if score.ticks_per_quarter <= 0:
        raise ChordError("the song has no ticks per quarter")
    score = score if str(score.ttype).lower().endswith("tick") else score.to("tick")
    try:
        grid = beat_grid(score, max_beats=MAX_BEATS)
    except ValueError as e:
        raise ChordError(f"too long to label: {e}") from None
    labels = label_notes(*_pitched_notes(score), grid)
    return SongChords(grid, labels, np.asarray(seconds_at_tick(score, grid.starts), dtype=np.float64))
