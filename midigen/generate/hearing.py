"""What the model hears of a user's song: each instrument it never learned, as the nearest one it knows.

A checkpoint only knows the instruments of its training data; a song may have others (a Bright Piano,
a jazz guitar, drums). Tokens of an instrument the model never saw tell it nothing, so the *context* it
reads (a continuation's prompt, the song around an edit's hole) names each such instrument as the
nearest one it knows:

* an instrument it knows stays itself;
* drums stay drums only if it knows drums, else they are left out of what it hears;
* else a known instrument of the same General MIDI family (program // 8), else any known instrument,
  whichever range (``midigen.music.ranges.NoteLimits``: measured by training, else the table) holds
  most of the track's notes; ties go to the range whose middle is nearest the notes' median, then to
  the nearest program number.

Only what is encoded changes: the written file is the user's own score with its own instruments
(``midigen.generate.splice`` writes onto it), so ``heard`` makes a copy used for encoding alone.
"""
from __future__ import annotations

import numpy as np

from midigen.music.codec import DRUMS, instrument_name, track_instrument
from midigen.music.ranges import NoteLimits


def _pitches(score, instrument: int) -> np.ndarray:
    arrays = [t.notes.numpy()["pitch"] for t in score.tracks if track_instrument(t) == instrument and t.note_num()]
    return np.concatenate(arrays).astype(np.int64) if arrays else np.zeros(0, np.int64)


def _by_range(pitches: np.ndarray, instrument: int, candidates: list[int], limits: NoteLimits) -> int:
    """The candidate whose range holds most of ``pitches`` (ties: nearest middle, then nearest program)."""
    median = float(np.median(pitches)) if len(pitches) else 60.0

    def cost(c: int):
        inside = int(np.sum((pitches >= limits.low[c]) & (pitches <= limits.high[c])))
        return -inside, abs((limits.low[c] + limits.high[c]) / 2 - median), abs(c - instrument), c

    return min(candidates, key=cost)


def hearing_map(score, known_instruments, limits: NoteLimits, exclude=()) -> dict[int, int | None]:
    """Each instrument of ``score``'s tracks with notes -> the instrument the model hears it as (itself
    when known), or None for drums a model without drums never hears. ``exclude``: instruments that
    are not to be mapped (an edit's targets, written as themselves) and that nothing is mapped onto."""
    known = sorted({int(i) for i in known_instruments} - {int(i) for i in exclude})
    tonal = [i for i in known if i != DRUMS]
    out: dict[int, int | None] = {}
    for inst in sorted({track_instrument(t) for t in score.tracks if t.note_num()} - {int(i) for i in exclude}):
        if inst in known:
            out[inst] = inst
        elif inst == DRUMS or not tonal:
            out[inst] = None
        else:
            family = [i for i in tonal if i // 8 == inst // 8]
            out[inst] = _by_range(_pitches(score, inst), inst, family or tonal, limits)
    return out


def heard(score, mapping: dict[int, int | None]):
    """A copy of ``score`` as the model hears it: tracks renamed to their mapped instrument's program,
    tracks mapped to None removed. For encoding only; never written."""
    out = score.copy()
    keep = []
    for t in out.tracks:
        to = mapping.get(track_instrument(t), track_instrument(t))
        if to is None:
            continue
        t.is_drum = to == DRUMS
        t.program = 0 if to == DRUMS else int(to)
        keep.append(t)
    if len(keep) != len(out.tracks):
        out.tracks = type(out.tracks)(keep) if not isinstance(out.tracks, list) else keep
    return out


def heard_instruments(instruments, mapping: dict[int, int | None]) -> list[int]:
    """The instruments the model hears for ``instruments`` (unmapped ones as themselves)."""
    return sorted({mapping.get(int(i), int(i)) for i in instruments} - {None})


def written_as(mapping: dict[int, int | None], present) -> dict[int, int]:
    """Heard instrument -> the song's own, for writing a continuation's notes back onto the song's tracks:
    where one song instrument alone is heard as ``h`` and the song has no ``h`` of its own."""
    present = {int(i) for i in present}
    out: dict[int, int] = {}
    for h in {m for m in mapping.values() if m is not None} - present:
        sources = [i for i, m in mapping.items() if m == h]
        if len(sources) == 1:
            out[h] = sources[0]
    return out


def heard_as(mapping: dict[int, int | None]) -> dict[str, str | None]:
    """The changed entries by name, for a JSON report: {"Bright Acoustic Piano": "Acoustic Grand Piano",
    "Drums": None}."""
    return {instrument_name(i): (None if m is None else instrument_name(m)) for i, m in sorted(mapping.items())
            if m != i}


def hearing_note(mapping: dict[int, int | None]) -> str | None:
    """One readable line for a summary or a studio version; None when the model hears every instrument."""
    parts = []
    for i, m in sorted(mapping.items()):
        if m == i:
            continue
        if m is None:
            what = "drums" if i == DRUMS else instrument_name(i)
            parts.append(f"{what}: this model never learned them, left out of what it hears")
        else:
            parts.append(f"{instrument_name(i)} heard as {instrument_name(m)}")
    return "; ".join(parts) or None
