"""What each instrument can play: a pitch range and the most notes it sounds at once.

A model that has never heard an instrument (or a random one) writes anything: a bass at C9, 78 notes
at once. The grammar holds written notes to these limits (``Grammar.hold_notes``), so generation only
writes what the instrument can play.

Where the limits come from, per instrument:

* **Measured** from a training split (``measure_ranges``; ``midigen train`` records it in the
  checkpoint's ``config.json`` under ``info.note_ranges``): the pitch range is the 0.5th-99.5th
  percentile of the instrument's notes widened by ``WIDEN`` (2) semitones each way (training also
  transposes by a few semitones, and a rare low or high note should stay possible); the polyphony is the
  99.9th percentile, over the instrument's note onsets, of how many of its notes sound at that onset
  (the new one included). An instrument with fewer than ``MIN_NOTES`` notes is not measured.
* **Else the table below**: a sensible range and polyphony for common instruments (``PROGRAM_LIMITS``),
  else for the instrument's General MIDI family (``FAMILY_LIMITS``, 16 families of 8 programs); drums
  get the GM percussion key range 35-81.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from midigen.music.codec import DRUMS, N_INSTRUMENTS, N_PITCHES, Codec, Kind

LOW_PERCENTILE, HIGH_PERCENTILE = 0.5, 99.5
POLYPHONY_PERCENTILE = 99.9
WIDEN = 2  # semitones added below and above the measured range
MIN_NOTES = 50  # fewer notes than this: the table's limits instead of a measurement
MEASURE_TOKENS = 1 << 26  # the first 64M tokens of a split are measured (enough for any instrument)

# (lowest pitch, highest pitch, most notes at once) per GM family (programs 8f..8f+7)
FAMILY_LIMITS = (
    (21, 108, 10),  # piano
    (36, 108, 4),  # chromatic percussion (celesta, glockenspiel, marimba, vibraphone, ...)
    (24, 96, 10),  # organ (with pedals), accordion, harmonica
    (40, 88, 6),  # guitar: E2..E6, six strings
    (24, 67, 2),  # bass: synth basses go below E1
    (28, 103, 4),  # strings (contrabass to violin), harp, timpani
    (28, 103, 8),  # ensemble (string sections, choirs)
    (28, 86, 4),  # brass
    (34, 96, 2),  # reed (saxophones, oboe, bassoon, clarinet)
    (55, 108, 2),  # pipe (piccolo, flute, recorder, ...)
    (36, 96, 4),  # synth lead
    (36, 96, 8),  # synth pad
    (36, 96, 8),  # synth effects
    (36, 96, 4),  # ethnic (sitar, banjo, koto, ...)
    (36, 96, 4),  # percussive (steel drums, taiko, ...)
    (0, 127, 4),  # sound effects
)
DRUM_LIMITS = (35, 81, 8)  # GM percussion keys: Acoustic Bass Drum .. Open Triangle

# Common instruments whose range is much narrower than their family's (orchestral ranges, rounded out)
PROGRAM_LIMITS = {
    32: (28, 67, 2), 33: (28, 67, 2), 34: (28, 67, 2), 35: (28, 67, 2),  # acoustic, finger, pick, fretless bass
    40: (55, 103, 2), 41: (48, 91, 2), 42: (36, 76, 2), 43: (28, 67, 2),  # violin, viola, cello, contrabass
    46: (23, 103, 8), 47: (40, 57, 2),  # harp, timpani
    56: (54, 86, 1), 57: (40, 72, 1), 58: (28, 58, 1), 60: (34, 77, 1),  # trumpet, trombone, tuba, horn
    64: (56, 88, 1), 65: (49, 81, 1), 66: (44, 76, 1), 67: (36, 69, 1),  # soprano .. baritone sax
    68: (58, 91, 1), 69: (52, 81, 1), 70: (34, 75, 1), 71: (50, 94, 1),  # oboe, English horn, bassoon, clarinet
    72: (74, 108, 1), 73: (60, 96, 1), 74: (60, 96, 1),  # piccolo, flute, recorder
}


def table_limits(instrument: int) -> tuple[int, int, int]:
    """(low, high, most at once) from the documented table, for an instrument nothing was measured for."""
    i = int(instrument)
    if i == DRUMS:
        return DRUM_LIMITS
    return PROGRAM_LIMITS.get(i, FAMILY_LIMITS[i // 8])


@dataclass(frozen=True)
class NoteLimits:
    """Per instrument (0..128): lowest and highest pitch, most notes sounding at once, and where each
    came from ("data" or "table"). Plain arrays, so any task hands them to its grammar as data."""

    low: np.ndarray
    high: np.ndarray
    polyphony: np.ndarray
    source: tuple

    def of(self, instrument: int) -> dict:
        i = int(instrument)
        return {"low": int(self.low[i]), "high": int(self.high[i]), "polyphony": int(self.polyphony[i]),
                "source": self.source[i]}


def note_limits(measured: dict | None) -> NoteLimits:
    """Limits for every instrument: the measured ones (``measure_ranges``'s "instruments", keys are
    instrument numbers as strings), the table for the rest (every instrument, for an older checkpoint)."""
    rows = [table_limits(i) for i in range(N_INSTRUMENTS)]
    source = ["table"] * N_INSTRUMENTS
    for key, r in ((measured or {}).get("instruments") or {}).items():
        i = int(key)
        if 0 <= i < N_INSTRUMENTS:
            rows[i] = (int(r["low"]), int(r["high"]), max(1, int(r["polyphony"])))
            source[i] = "data"
    a = np.array(rows, dtype=np.int64)
    return NoteLimits(a[:, 0], a[:, 1], a[:, 2], tuple(source))


def _notes_of(codec: Codec, tokens: np.ndarray):
    """(instrument, pitch, onset, end) of every NOTE+DV pair in a token stream; songs (from each BOS)
    are set apart in time so no note overlaps the next song."""
    t = np.asarray(tokens, dtype=np.int64)
    k = codec.kinds(t)
    gap = codec.params.duration_max + codec.params.max_gap + 1
    time = np.cumsum(codec.shift_steps()[t] + np.where(t == codec.BOS, gap, 0))
    i = np.flatnonzero(k[:-1] == Kind.NOTE)
    i = i[k[i + 1] == Kind.DV]
    note = t[i] - codec.note_start
    dur = codec.durations[(t[i + 1] - codec.dv_start) // codec.params.velocity_levels]
    return note // N_PITCHES, note % N_PITCHES, time[i], time[i] + dur


def _polyphony(onset: np.ndarray, end: np.ndarray) -> np.ndarray:
    """How many of these notes sound at each note's onset (the note itself included)."""
    starts, ends = np.sort(onset), np.sort(end)
    return np.searchsorted(starts, onset, side="right") - np.searchsorted(ends, onset, side="right")


def _tempo_changes(codec: Codec, tokens: np.ndarray) -> int:
    """Songs with at least one tempo change among their events (a TEMPO right after a SHIFT)."""
    t = np.asarray(tokens, dtype=np.int64)
    k = codec.kinds(t)
    song = np.cumsum(t == codec.BOS)
    change = np.flatnonzero((k[1:] == Kind.TEMPO) & (k[:-1] == Kind.SHIFT)) + 1
    return int(len(np.unique(song[change])))


def measure_ranges(codec: Codec, tokens) -> dict:
    """Per-instrument pitch range and polyphony of a token stream (a split's train.bin), and how many of
    its songs change tempo, as the plain dict a checkpoint's config.json records."""
    t = np.asarray(tokens[:MEASURE_TOKENS], dtype=np.int64)
    inst, pitch, onset, end = _notes_of(codec, t)
    out = {}
    for i in np.unique(inst).tolist():
        sel = inst == i
        if int(sel.sum()) < MIN_NOTES:
            continue
        p = pitch[sel]
        lo = int(np.percentile(p, LOW_PERCENTILE, method="lower")) - WIDEN
        hi = int(np.percentile(p, HIGH_PERCENTILE, method="higher")) + WIDEN
        poly = int(np.percentile(_polyphony(onset[sel], end[sel]), POLYPHONY_PERCENTILE, method="higher"))
        out[str(i)] = {"low": max(0, lo), "high": min(N_PITCHES - 1, hi), "polyphony": max(1, poly),
                       "notes": int(sel.sum())}
    return {"instruments": out, "songs": int(np.sum(t == codec.BOS)), "tempo_change_songs": _tempo_changes(codec, t),
            "rule": f"pitch {LOW_PERCENTILE}-{HIGH_PERCENTILE} percentile +-{WIDEN} semitones; polyphony "
                    f"{POLYPHONY_PERCENTILE} percentile; at least {MIN_NOTES} notes"}


def learned_tempo_changes(measured: dict | None) -> bool | None:
    """Did the training data change tempo within songs? None when the checkpoint did not record it."""
    if not measured or "tempo_change_songs" not in measured:
        return None
    return int(measured["tempo_change_songs"]) > 0


def how_played(score, limits: NoteLimits, instruments) -> dict:
    """Per instrument of ``instruments`` in a symusic score (all its tracks together): notes, how many lie
    inside its range, and the most notes it sounds at once (counted as ``measure_ranges`` counts)."""
    out = {}
    for i in instruments:
        arrays = [t.notes.numpy() for t in score.tracks
                  if (DRUMS if t.is_drum else int(t.program)) == int(i) and t.note_num()]
        if not arrays:
            out[int(i)] = {"notes": 0, "inside": 0, "max_polyphony": 0}
            continue
        onset = np.concatenate([a["time"] for a in arrays]).astype(np.int64)
        end = onset + np.concatenate([a["duration"] for a in arrays]).astype(np.int64)
        pitch = np.concatenate([a["pitch"] for a in arrays]).astype(np.int64)
        inside = (pitch >= limits.low[int(i)]) & (pitch <= limits.high[int(i)])
        out[int(i)] = {"notes": len(pitch), "inside": int(inside.sum()),
                       "max_polyphony": int(_polyphony(onset, end).max())}
    return out
