"""Chords as text: chord charts people type, lead sheets we print, and chord symbols in MIDI files.

A chart is read into bars of ``ChordSymbol`` (vocabulary id, and a slash chord's bass); a song's
labels (`midigen.music.chords.SongChords`) are printed bar by bar in the same syntax, so what
`midigen chords` prints can be given back as a chart.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import symusic

from midigen.errors import UsageError
from midigen.music.chords import NO_CHORD, NO_CHORD_NAME, QUALITIES, SongChords, chord_id, chord_name
from midigen.music.timing import BeatGrid

NOTE_NAMES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
ACCIDENTALS = {"": 0, "#": 1, "b": -1}
# chord suffixes as lead sheets write them -> vocabulary quality
SUFFIX_QUALITY = {
    "": "maj", "maj": "maj", "M": "maj", "m": "min", "min": "min", "-": "min",
    "dim": "dim", "o": "dim", "aug": "aug", "+": "aug", "sus4": "sus4", "sus": "sus4",
    "7": "7", "maj7": "maj7", "M7": "maj7", "m7": "m7", "min7": "m7", "-7": "m7",
    "m7b5": "m7b5", "min7b5": "m7b5", "ø": "m7b5", "ø7": "m7b5",
}
NO_CHORD_SPELLINGS = {"N.C.", "NC", "N.C", "N"}
_SYMBOL = re.compile(r"([A-G])([#b]?)([^/]*)(?:/([A-G])([#b]?))?\Z")


@dataclass(frozen=True)
class ChordSymbol:
    """One chord of a chart: its vocabulary id and, for a slash chord, the bass pitch class."""

    id: int
    bass: int | None = None

    def __str__(self) -> str:
        if self.bass is None or self.id == NO_CHORD:
            return chord_name(self.id)
        return f"{chord_name(self.id)}/{chord_name(chord_id(self.bass, 'maj'))}"


def parse_symbol(text: str) -> ChordSymbol:
    """One chord name (C, F#m, Bb7, Cmaj7, Cm7b5, C/E, N.C., ...) -> ChordSymbol; UsageError names a bad one."""
    if text in NO_CHORD_SPELLINGS:
        return ChordSymbol(NO_CHORD)
    m = _SYMBOL.match(text)
    if not m or m.group(3) not in SUFFIX_QUALITY:
        kinds = ", ".join("C" + s for s in ("", "m", "dim", "aug", "sus4", "7", "maj7", "m7", "m7b5"))
        raise UsageError(f"bad chord {text!r}: expected a root A-G (# or b), a kind ({kinds}), "
                         f"an optional /bass, or N.C.")
    root = (NOTE_NAMES[m.group(1)] + ACCIDENTALS[m.group(2)]) % 12
    bass = (NOTE_NAMES[m.group(4)] + ACCIDENTALS[m.group(5)]) % 12 if m.group(4) else None
    return ChordSymbol(chord_id(root, SUFFIX_QUALITY[m.group(3)]), bass)


def parse_chords(text: str) -> list[list[ChordSymbol]]:
    """A chord chart -> its bars, each a list of the chords that share that bar equally.

    Without ``|`` every chord is a bar: ``"C G Am F"`` is four bars of one chord. With ``|`` the
    bars are what the bars separate: ``"C G | Am F | Dm7 G7 | C"`` is four bars, the first three with
    two chords (half a bar each). Bar lines at the start and end of a line are optional (``"| C | G |"``,
    as `midigen chords` prints), and a line break ends a bar. An empty bar or a bad name is a UsageError that
    names it; what the chart means past its last bar (it repeats) is for its user to decide.
    """
    if "|" not in text:
        bars = [[word] for word in text.split()]
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        inner = " | ".join(line.removeprefix("|").removesuffix("|") for line in lines)
        bars = [piece.split() for piece in inner.split("|")]
        for k, bar in enumerate(bars):
            if not bar:
                raise UsageError(f"empty bar {k + 1} in chords {text.strip()!r}")
    if not bars:
        raise UsageError("no chords given")
    return [[parse_symbol(word) for word in bar] for bar in bars]


def read_chord_text(arg: str) -> list[list[ChordSymbol]]:
    """``parse_chords`` of the text, or of a file's contents when given as ``@chart.txt``."""
    if arg.startswith("@"):
        path = Path(arg[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read chord chart {path}: {getattr(e, 'strerror', None) or e}") from None
        return parse_chords(text)
    return parse_chords(arg)


def chart_beats(chart: list[list[ChordSymbol]], grid: BeatGrid) -> np.ndarray:
    """A chord id for every beat of ``grid`` from a chart: bar k of the song plays the chart's bar
    k (the chart repeats to the end), its chords sharing the bar's beats equally, the first ones
    taking the longer shares (three chords in 4/4: 2 + 1 + 1 beats; a chord with no beat left is
    dropped). The form the labeller's output has, so a request and a song compare beat by beat."""
    out = np.full(len(grid), NO_CHORD, dtype=np.int64)
    if not chart or len(grid) == 0:
        return out
    bar_start = np.flatnonzero(np.concatenate(([True], grid.bars[1:] != grid.bars[:-1])))
    bar_end = np.append(bar_start[1:], len(grid))
    for k, (a, b) in enumerate(zip(bar_start, bar_end)):
        chords = chart[k % len(chart)]
        share = -(-np.arange(len(chords) + 1) * (b - a) // len(chords))  # ceil: longer shares first
        for chord, lo, hi in zip(chords, share[:-1], share[1:]):
            out[a + lo : a + hi] = chord.id
    return out


# ----- a song's chords as text ------------------------------------------------------------------


def bar_chords(song: SongChords) -> list[list[int]]:
    """The chords of each bar in order, a chord held over several beats (or into the bar) named once."""
    out: list[list[int]] = [[] for _ in range(int(song.grid.bars[-1]) + 1)] if len(song.labels) else []
    for bar, label in zip(song.grid.bars, song.labels):
        if not out[bar] or out[bar][-1] != label:
            out[bar].append(int(label))
    return out


def lead_sheet(song: SongChords, bars_per_line: int = 4) -> str:
    """The song's chords bar by bar, ``| C | G | Am F |``, ``bars_per_line`` bars to a line."""
    bars = [" ".join(chord_name(c) for c in chords) for chords in bar_chords(song)]
    lines = []
    for k in range(0, len(bars), bars_per_line):
        lines.append("| " + " | ".join(bars[k : k + bars_per_line]) + " |")
    return "\n".join(lines)


def chord_events(song: SongChords) -> list[dict]:
    """One record per chord change: bar and beat (from 1), seconds, chord name and id."""
    return [{"bar": int(song.grid.bars[i]) + 1, "beat": int(song.grid.beats[i]) + 1,
             "seconds": round(float(song.seconds[i]), 3), "chord": chord_name(int(song.labels[i])),
             "id": int(song.labels[i])} for i in song.changes()]


CHORD_MARKER = "Chord "  # what starts a chord symbol's marker text ("Chord Am7")


def with_chord_symbols(score: symusic.Score, song: SongChords) -> symusic.Score:
    """A copy of ``score`` with the chord symbols as score-level markers at each chord change.

    symusic writes score markers as marker meta events (FF 06, a text meta event) on the first track,
    which is where DAWs show their marker lane and where symusic reads them back; plain FF 01 text
    events it would drop on reading. The score's own markers are kept; N.C. is written too, so a
    reader sees where the harmony stops. ``song`` must be labelled from this score (same ticks).
    """
    out = score.copy() if str(score.ttype).lower().endswith("tick") else score.to("tick")
    changes = song.changes()
    add_chord_markers(out, np.round(song.grid.starts[changes]), song.labels[changes])
    return out


def chord_marker(cid: int) -> str:
    """The marker text of a chord: its name after ``CHORD_MARKER``, so a chord A is never taken for a
    section A (sections are markers named by their bare label, as songs name them)."""
    return CHORD_MARKER + chord_name(int(cid))


def marker_chord(text: str) -> str | None:
    """The chord name a marker carries, or None when the marker is not a chord symbol."""
    return text[len(CHORD_MARKER):] if text.startswith(CHORD_MARKER) else None


def add_chord_markers(score: symusic.Score, ticks, ids) -> None:
    """Chord symbols as score markers at ``ticks`` (a tick-based score, changed in place; kept sorted):
    the one way chord symbols go into a written file (``with_chord_symbols``, decoded CHORD tokens)."""
    for tick, cid in zip(np.asarray(ticks).tolist(), np.asarray(ids).tolist()):
        score.markers.append(symusic.TextMeta(int(tick), chord_marker(cid)))
    score.markers.sort(key=lambda m: m.time)



def marked_chords(score: symusic.Score) -> list[tuple[int, str]]:
    """The chord symbols a file carries (its ``Chord NAME`` markers) as (tick, name), in time order: the
    chords its music was written on. Of several at one tick the last written stands (an edit appends its
    own after the song's)."""
    at: dict[int, str] = {}
    for m in sorted(score.markers, key=lambda m: m.time):  # a stable sort keeps a tick's writing order
        name = marker_chord(str(m.text))
        if name is not None:
            at[int(m.time)] = name
    return sorted(at.items())


def bar_names(marks: list[tuple[float, str]], bars) -> list[str | None]:
    """Each bar's chords from ``marks`` ((time, name) in time order, the bars' (start, end) on the same
    clock), as a lead sheet writes a bar (``Am F``): the chord in force at its start, then each change
    inside it, a chord held on named once. None for a bar over before the first mark (no chord written yet)."""
    times = np.array([t for t, _ in marks], dtype=np.float64)
    out: list[str | None] = []
    for start, end in bars:
        held = int(np.searchsorted(times, start, side="right")) - 1
        if held < 0 and not (len(times) and times[0] < end):
            out.append(None)
            continue
        names: list[str] = []
        for _, name in marks[max(held, 0): int(np.searchsorted(times, end, side="left"))]:
            if not names or names[-1] != name:
                names.append(name)
        out.append(" ".join(names))
    return out


assert set(SUFFIX_QUALITY.values()) == set(QUALITIES) and chord_name(NO_CHORD) == NO_CHORD_NAME
