"""Written notes into a user's score: one splice for every generation task.

Every task ends the same way. Continuation (``sample --prompt``, the studio's Continue), infill and
arrange take the user's score, keep part of it untouched, and add the notes the model wrote;
``sample`` from nothing writes every note itself. ``splice`` and ``settle`` do that last step for all
of them, so what any MIDI reader gets back from the written file is what was kept and generated.

**Where a written note goes.** To a track of its instrument: of several (a piano's two hands, two
guitars), the one whose median pitch (of its kept notes) is nearest, so the tracks keep their roles;
a track with the instrument but no notes, else a new track with the right program / drum flag.

**The overlap rule.** MIDI cannot hold two notes of one pitch on one channel at once: a reader pairs
each note-off with a note-on its own way, and a kept note comes back with another length. So, for every
pitch on every channel *as the file is written* (symusic gives track ``i`` its channel by position, drums
channel 10, so several tracks may share one: ``written_channels``):

* a written note that starts while a kept note of that pitch sounds (kept onset <= its onset < kept
  end), or at the onset of an earlier written note of that pitch, is dropped;
* every other written note ends no later than the next onset of that pitch, kept or written (it is
  trimmed, so it keeps at least one tick).

Kept notes are never touched (two kept notes that overlap in the user's own file stay as they were).
The file then has a note-off before each note-on of the same pitch and channel, and symusic, mido, a
DAW or a synthesizer all read the same notes back.
"""
from __future__ import annotations

import numpy as np
import symusic

from midigen.music.codec import DRUMS, instrument_name, track_instrument

DRUM_CHANNEL = 9
FIELDS = ("time", "duration", "pitch", "velocity")
TYPES = (np.int32, np.int32, np.int8, np.int8)  # as symusic stores them


def written_channels(score) -> np.ndarray:
    """The MIDI channel (0-based) symusic writes each track's events on: drums on 9; the others by the
    track's position, cycling through the 15 other channels (so track 15 shares channel 0 with track 0)."""
    pos = np.arange(len(score.tracks)) % 15
    melodic = pos + (pos >= DRUM_CHANNEL)
    drums = np.array([t.is_drum for t in score.tracks], bool)
    return np.where(drums, DRUM_CHANNEL, melodic).astype(np.int64)


def _tracks_for(score, inst: int, new_tracks: list) -> list[tuple[int, float]]:
    """(track index, median pitch) of every track of ``inst`` with notes; else its first empty track;
    else a new one (appended to ``score`` and recorded in ``new_tracks``)."""
    mine = [i for i, t in enumerate(score.tracks) if track_instrument(t) == inst]
    with_notes = [(i, float(np.median(score.tracks[i].notes.numpy()["pitch"]))) for i in mine
                  if score.tracks[i].note_num()]
    if with_notes or mine:
        return with_notes or [(mine[0], 60.0)]
    score.tracks.append(symusic.Track(instrument_name(inst), 0 if inst == DRUMS else inst, inst == DRUMS))
    new_tracks.append(inst)
    return [(len(score.tracks) - 1, 60.0)]


def _add(track, notes: dict, rows: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """Add ``notes`` rows ``rows`` to ``track`` (its notes kept in onset order); returns the track's new
    written-or-not flags (``flags`` are its old ones)."""
    a = track.notes.numpy()
    cols = {f: np.concatenate((a[f].astype(np.int64), notes[f][rows])) for f in FIELDS}
    o = np.argsort(cols["time"], kind="stable")
    track.notes = symusic.core.NoteTickList.from_numpy(*(cols[f][o].astype(t) for f, t in zip(FIELDS, TYPES)))
    return np.concatenate((flags, np.ones(len(rows), bool)))[o]


def _place(score, notes: dict) -> tuple[list[np.ndarray], list[int]]:
    """Add ``notes`` (arrays: time, duration, pitch, velocity, instrument) to the tracks of ``score``.

    Returns, per track, which of its notes are written (True) rather than kept, and the instruments
    that got a new track."""
    written = [np.zeros(t.note_num(), bool) for t in score.tracks]
    new_tracks: list[int] = []
    for inst in np.unique(notes["instrument"]).tolist():
        sel = np.flatnonzero(notes["instrument"] == inst)
        tracks = _tracks_for(score, int(inst), new_tracks)
        written += [np.zeros(0, bool)] * (len(score.tracks) - len(written))
        centres = np.array([c for _, c in tracks])
        which = np.argmin(np.abs(notes["pitch"][sel][:, None] - centres[None, :]), axis=1)
        for k, (i, _) in enumerate(tracks):
            if (which == k).any():
                written[i] = _add(score.tracks[i], notes, sel[which == k], written[i])
    return written, new_tracks


def _one_pitch(time: np.ndarray, end: np.ndarray, written: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The overlap rule for the notes of one pitch on one channel, sorted by onset with kept notes first
    at equal onsets: (which to keep, their ends)."""
    keep = np.ones(len(time), bool)
    kept_t, kept_e = time[~written], end[~written]
    if len(kept_t):
        last = np.searchsorted(kept_t, time, side="right") - 1  # the last kept onset at or before each
        sounding = np.maximum.accumulate(kept_e)[np.maximum(last, 0)]
        keep &= ~(written & (last >= 0) & (sounding > time))
    repeat = np.zeros(len(time), bool)
    repeat[1:] = time[1:] == time[:-1]
    keep &= ~(written & repeat)
    onsets = np.unique(time[keep])
    nxt = np.searchsorted(onsets, time, side="right")
    limit = np.where(nxt < len(onsets), onsets[np.minimum(nxt, len(onsets) - 1)], np.iinfo(np.int64).max)
    return keep, np.where(written, np.minimum(end, limit), end)


def _apply_rule(score, written: list[np.ndarray]) -> int:
    """Apply the overlap rule to ``score`` in place; returns how many written notes it holds after."""
    chans = written_channels(score)
    arrays = [t.notes.numpy() for t in score.tracks]
    none = [np.zeros(0, np.int64)]
    cols = {f: np.concatenate([a[f].astype(np.int64) for a in arrays] or none) for f in FIELDS}
    track = np.concatenate([np.full(len(a["time"]), i, np.int64) for i, a in enumerate(arrays)] or none)
    flags = np.concatenate(written or [np.zeros(0, bool)])
    end = cols["time"] + cols["duration"]
    keep = np.ones(len(track), bool)
    order = np.lexsort((flags, cols["time"], cols["pitch"], chans[track]))
    group = (chans[track] * 128 + cols["pitch"])[order]
    for lo, hi in zip(*_runs(group)):
        idx = order[lo:hi]
        if flags[idx].any():
            keep[idx], end[idx] = _one_pitch(cols["time"][idx], end[idx], flags[idx])
    cols["duration"] = end - cols["time"]
    for i, t in enumerate(score.tracks):
        if flags[track == i].any():  # a track without written notes is the user's, untouched
            mine = (track == i) & keep
            t.notes = symusic.core.NoteTickList.from_numpy(*(cols[f][mine].astype(y) for f, y in zip(FIELDS, TYPES)))
    return int((keep & flags).sum())


def _runs(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the runs of equal values in ``sorted_keys``."""
    if not len(sorted_keys):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cut = np.flatnonzero(np.diff(sorted_keys)) + 1
    return np.concatenate(([0], cut)), np.concatenate((cut, [len(sorted_keys)]))


def splice(score, notes: dict) -> tuple[object, int, list[int]]:
    """``score`` (the kept music, a copy the caller owns: changed in place) with the written ``notes``
    (arrays in its ticks: time, duration, pitch, velocity, instrument) placed on its tracks under the
    overlap rule. Returns (score, notes written into it, instruments that got a new track)."""
    notes = {k: np.asarray(notes[k], np.int64) for k in (*FIELDS, "instrument")}
    notes["duration"] = np.maximum(1, notes["duration"])
    written, new_tracks = _place(score, notes)
    return score, _apply_rule(score, written), new_tracks


def settle(score):
    """A score the model wrote whole (``sample``), under the overlap rule (in place; returns it)."""
    _apply_rule(score, [np.ones(t.note_num(), bool) for t in score.tracks])
    return score
