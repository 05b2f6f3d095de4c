"""A parsed music21 score as multi-track MIDI, without music21's own MIDI writer.

music21's ``midi.translate`` deep-copies the whole score twice (repeat expansion, tie stripping)
and spends 2-10 s on a string-quartet movement; reading the notes measure by measure and writing
them with symusic takes a few hundredths of that, which is what lets the demo corpus hold
quartets and Palestrina within its export budget.

Repeats (``|: :|`` and first/second endings) are played out on the measure grid; D.C./D.S. jumps
are not followed (the piece is played through once from there). Times are in quarter notes until
the file is written.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import symusic

TPQ = 480
DEFAULT_VELOCITY = 80


@dataclass
class Bar:
    """One measure as played: its start in the expanded piece, its length and its meter."""

    index: int  # the measure's position in the part as written
    start: float
    length: float
    meter: tuple[int, int]  # (numerator, denominator)
    beat: float  # quarters per beat (1.5 in compound meters)


@dataclass
class Conductor:
    """What every track shares: the bars as played, tempo, time and key signatures."""

    bars: list[Bar]
    tempos: list[tuple[float, float]] = field(default_factory=list)  # (quarter, bpm)
    meters: list[tuple[float, int, int]] = field(default_factory=list)  # (quarter, num, den)
    keys: list[tuple[float, int, int]] = field(default_factory=list)  # (quarter, sharps, minor)


def _measures(part) -> list:
    from music21 import stream

    return list(part.getElementsByClass(stream.Measure))


def _endings(measure) -> set[int]:
    from music21 import spanner

    numbers: set[int] = set()
    for sp in measure.getSpannerSites():
        if isinstance(sp, spanner.RepeatBracket):
            numbers.update(sp.numberRange)
    return numbers


def _repeat_marks(measures) -> list[tuple[bool, int]]:
    """Per measure: (a repeat starts here, times the section ending here is played; 0 = no end repeat).

    A repeat sign may sit on either side of a bar line (music21's ABC reader sometimes puts an end
    repeat on the next measure's left), so both neighbours are read.
    """
    from music21 import bar

    def is_repeat(barline, direction):
        return isinstance(barline, bar.Repeat) and barline.direction == direction

    out = []
    for k, m in enumerate(measures):
        prev = measures[k - 1] if k > 0 else None
        nxt = measures[k + 1] if k + 1 < len(measures) else None
        starts = is_repeat(m.leftBarline, "start") or (prev is not None and is_repeat(prev.rightBarline, "start"))
        times = 0
        for barline in (m.rightBarline, nxt.leftBarline if nxt is not None else None):
            if is_repeat(barline, "end"):
                times = int(barline.times or 2)
        out.append((starts, times))
    return out


def measure_order(measures) -> list[int]:
    """Indexes of ``measures`` in playing order: repeats taken, first/second endings chosen."""
    marks = _repeat_marks(measures)
    endings = [_endings(m) for m in measures]
    order: list[int] = []
    jumps: dict[int, int] = {}
    start, passno, i, prev_bracketed = 0, 1, 0, False
    limit = 8 * len(measures) + 16
    while i < len(measures) and len(order) < limit:
        starts, times = marks[i]
        if starts and i != start:
            start, passno = i, 1
        if endings[i] and passno not in endings[i]:
            i += 1
            continue
        if not endings[i] and prev_bracketed:
            start, passno = i, 1  # past the last ending: a new section begins
        prev_bracketed = bool(endings[i])
        order.append(i)
        if times and jumps.get(i, 0) < times - 1:
            jumps[i] = jumps.get(i, 0) + 1
            passno += 1
            i, prev_bracketed = start, False
            continue
        if times:
            start, passno = i + 1, 1
        i += 1
    return order


def _meter_of(ts) -> tuple[tuple[int, int], float]:
    beat = float(ts.beatDuration.quarterLength) if ts.beatCount else 1.0
    return (int(ts.numerator), int(ts.denominator)), beat


def conductor(score, default_bpm: float) -> Conductor:
    """Bars in playing order (from the top part) with the tempo, meter and key map along them."""
    from music21 import key, meter, tempo

    measures = _measures(score.parts[0])
    written = [float(m.offset) for m in measures]
    lengths = [(written[k + 1] - written[k]) if k + 1 < len(measures)
               else float(measures[k].duration.quarterLength) for k in range(len(measures))]
    meters, marks, keys, start_bpm = [], [], [], []
    cur_meter, cur_beat, cur_key, cur_bpm = (4, 4), 1.0, None, default_bpm
    for m in measures:  # what is in effect in each measure as written, carried forward
        for ts in m.getElementsByClass(meter.TimeSignature):
            cur_meter, cur_beat = _meter_of(ts)
        for ks in m.getElementsByClass(key.KeySignature):
            cur_key = (int(ks.sharps), int(getattr(ks, "mode", "") == "minor"))
        meters.append((cur_meter, cur_beat))
        keys.append(cur_key)
        start_bpm.append(cur_bpm)
        marks.append([(float(mm.offset), float(mm.getQuarterBPM()))
                      for mm in m.recurse().getElementsByClass(tempo.MetronomeMark)
                      if mm.number is not None and mm.getQuarterBPM()])
        cur_bpm = marks[-1][-1][1] if marks[-1] else cur_bpm
    out = Conductor(bars=[])
    t = 0.0
    for k in measure_order(measures):
        (num, den), beat = meters[k]
        out.bars.append(Bar(k, t, lengths[k], (num, den), beat))
        if not out.meters or out.meters[-1][1:] != (num, den):
            out.meters.append((t, num, den))
        if keys[k] is not None and (not out.keys or out.keys[-1][1:] != keys[k]):
            out.keys.append((t, *keys[k]))
        for off, bpm in [(0.0, start_bpm[k])] + marks[k]:  # a jump back restores the tempo there
            _set_tempo(out.tempos, t + off, bpm)
        t += lengths[k]
    if not out.tempos:
        out.tempos.append((0.0, default_bpm))
    return out


def _set_tempo(tempos: list, when: float, bpm: float) -> None:
    if tempos and tempos[-1][1] == bpm:
        return
    if tempos and tempos[-1][0] == when:
        tempos.pop()
    if not tempos or tempos[-1][1] != bpm:
        tempos.append((when, bpm))


def part_notes(part, bars: list[Bar]) -> np.ndarray:
    """(onset, duration, pitch, velocity) rows of a part played along ``bars``; ties joined."""
    from music21 import chord, dynamics, note

    measures = _measures(part)
    rows: list[list] = []
    held: dict[int, list] = {}  # pitch -> the row a tie continues
    velocity = DEFAULT_VELOCITY
    for b in bars:
        if b.index >= len(measures):
            break
        for el in measures[b.index].flatten():
            if isinstance(el, dynamics.Dynamic):
                if el.volumeScalar:
                    velocity = int(np.clip(round(el.volumeScalar * 127), 20, 127))
                continue
            if not isinstance(el, (note.Note, chord.Chord)) or el.duration.isGrace:
                continue
            onset, length = b.start + float(el.offset), float(el.quarterLength)
            for n in (el.notes if isinstance(el, chord.Chord) else (el,)):
                tie = n.tie if n.tie is not None else el.tie
                kind = tie.type if tie is not None else None
                p = int(n.pitch.midi)
                if kind in ("stop", "continue") and p in held:
                    held[p][1] = onset + length - held[p][0]
                    if kind == "stop":
                        del held[p]
                    continue
                row = [onset, length, p, velocity]
                rows.append(row)
                if kind in ("start", "continue"):
                    held[p] = row
    return _dedupe(np.array(rows, dtype=np.float64).reshape(-1, 4))


def _dedupe(rows: np.ndarray) -> np.ndarray:
    """One note per (onset, pitch) within a track (the longest), none still sounding when the same
    pitch starts again (on one MIDI channel the second note-on would be cut by the first note-off);
    sorted by onset then pitch."""
    if len(rows) == 0:
        return rows
    rows = rows[np.lexsort((-rows[:, 1], rows[:, 0], rows[:, 2]))]  # by pitch, onset, longest first
    first = np.ones(len(rows), dtype=bool)
    first[1:] = (rows[1:, 0] != rows[:-1, 0]) | (rows[1:, 2] != rows[:-1, 2])
    rows = rows[first & (rows[:, 1] > 0)]
    same = rows[1:, 2] == rows[:-1, 2]
    gap = rows[1:, 0] - rows[:-1, 0]
    rows[:-1, 1] = np.where(same, np.minimum(rows[:-1, 1], gap), rows[:-1, 1])
    return rows[np.lexsort((rows[:, 2], rows[:, 0]))]


def _ticks(q) -> np.ndarray:
    return np.round(np.asarray(q, dtype=np.float64) * TPQ).astype(np.int32)


def write_midi(cond: Conductor, tracks: list[tuple[str, int, np.ndarray]]) -> bytes:
    """A MIDI file: the conductor's maps and one track per (name, GM program, note rows)."""
    score = symusic.Score(TPQ)
    for q, bpm in cond.tempos:
        score.tempos.append(symusic.Tempo(int(_ticks(q)), float(bpm)))
    for q, num, den in cond.meters:
        score.time_signatures.append(symusic.TimeSignature(int(_ticks(q)), num, den))
    for q, sharps, minor in cond.keys:
        score.key_signatures.append(symusic.KeySignature(int(_ticks(q)), sharps, minor))
    for name, program, rows in tracks:
        if len(rows) == 0:
            continue
        track = symusic.Track(name, int(program), False)
        track.notes = symusic.core.NoteTickList.from_numpy(
            _ticks(rows[:, 0]), np.maximum(_ticks(rows[:, 1]), 1),
            rows[:, 2].astype(np.int8), np.clip(rows[:, 3], 1, 127).astype(np.int8))
        score.tracks.append(track)
    return bytes(score.dumps_midi())
