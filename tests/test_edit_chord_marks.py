"""Chord symbols in files an edit writes, through the real CLI on the session's chord (v4) model, read
back by symusic and mido: an edit replaces the ``Chord NAME`` markers over its span and nowhere else,
keeps the song's harmony as the file writes it (its markers, not the labeller's hearing), and leaves a
file that had none reading its chords after the span as they were heard."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import symusic

from clirun import midigen
from midiread import text_events
from midigen.music.chordtext import marker_chord, parse_symbol, replace_chord_markers
from midigen.music.codec import Codec

BAR = 1920  # the chorale: 480 ticks a quarter, 4/4 from tick 0
# a harmony no labeller would hear in a Bach chorale, two bars a chord and a change inside bar 6
CHART = ["F#", "F#", "Bbm7", "Bbm7", "Eaug", "C#dim", "Abm7b5", "Abm7b5"]


def _chorale(music21_dir) -> Path:
    return next(p for p in sorted(Path(music21_dir).rglob("*.mid")) if "chorale" in str(p))


@pytest.fixture(scope="module")
def marked(music21_dir, tmp_path_factory) -> Path:
    """The chorale with chord symbols of its own (``CHART``, repeated; a chord held over two bars has one
    marker), sections and a text marker."""
    score = symusic.Score(str(_chorale(music21_dir)))
    assert score.ticks_per_quarter == 480 and score.end() >= 16 * BAR
    marks = []
    for bar in range(score.end() // BAR):
        name = CHART[bar % len(CHART)]
        if not marks or marks[-1][1] != "Chord " + name:
            marks.append((bar * BAR, "Chord " + name))
        if bar % len(CHART) == 5:
            marks.append((bar * BAR + 2 * 480, "Chord G7"))
    marks += [(0, "Intro"), (4 * BAR, "Verse"), (5 * BAR + 240, "breath here")]
    score.markers = [symusic.TextMeta(t, text) for t, text in sorted(marks, key=lambda m: m[0])]
    path = tmp_path_factory.mktemp("marked") / "marked.mid"
    score.dump_midi(str(path))
    return path


def _events(path: Path) -> list[tuple[int, int, str, str]]:
    """The file's text events (mido), checked against symusic's markers: no two chord symbols at a tick."""
    events = text_events(path.read_bytes())
    marks = [(t, text) for k, t, kind, text in events if kind == "marker"]
    assert marks == [(int(m.time), m.text) for m in symusic.Score(str(path)).markers]
    chord_ticks = [t for t, text in marks if marker_chord(text) is not None]
    assert len(chord_ticks) == len(set(chord_ticks)), marks
    return events


def _chords(events) -> list[tuple[int, str]]:
    return [(t, marker_chord(text)) for _, t, kind, text in events if kind == "marker" and marker_chord(text)]


def _edit(*args) -> Path:
    r = midigen(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    return Path(json.loads(r.stdout.splitlines()[0])["file"])


def test_infill_keeps_the_files_chords_and_every_other_marker(edit_run, marked, tmp_path):
    """The span is written on the file's own chords (not the labeller's), so its symbols come out as
    they were, and so does every other text event of the file."""
    out = _edit("infill", "--ckpt", edit_run, marked, "--bars", "3-6", "--seed", "1", "--out", tmp_path)
    assert _events(out) == _events(marked)


def test_arrange_keeps_the_files_chords(edit_run, marked, tmp_path):
    caps = json.loads(midigen("info", "--ckpt", edit_run).stdout)
    add = next(n for n in caps["instrument_names"] if "Bass" in n)
    out = _edit("arrange", "--ckpt", edit_run, marked, "--add", add, "--seed", "4", "--out", tmp_path)
    assert _events(out) == _events(marked)


def test_a_chart_replaces_the_spans_symbols_only(edit_run, marked, tmp_path):
    """--chords over bars 2-3 of a file whose Bbm7 starts in bar 3: the span's symbols are the chart's,
    the Bbm7 in force at bar 4 is restated there, every other event is the file's."""
    out = _edit("infill", "--ckpt", edit_run, marked, "--bars", "2-3", "--chords", "Eb | Bb7", "--seed", "1",
                "--out", tmp_path)
    before, after = _events(marked), _events(out)
    is_span_chord = lambda e: e[2] == "marker" and marker_chord(e[3]) and BAR <= e[1] < 3 * BAR  # noqa: E731
    restated = (0, 3 * BAR, "marker", "Chord Bbm7")
    assert restated not in before and restated in after
    assert [e for e in after if not is_span_chord(e) and e != restated] == [e for e in before if not is_span_chord(e)]
    inside = [(t, name) for t, name in _chords(after) if BAR <= t <= 3 * BAR]
    assert [name for _, name in inside] == ["Eb", "Bb7", "Bbm7"]
    assert [t for t, _ in inside] == [BAR, 2 * BAR, 3 * BAR]  # the first on the bar line the span starts at


def _in_force(marks, tick: int) -> str | None:
    held = [name for t, name in marks if t <= tick]
    return held[-1] if held else None


def test_infill_of_a_song_without_symbols_reads_on_after_the_span(edit_run, music21_dir, tmp_path):
    """A file without chord symbols gets the span's chords and, from the span's end, the chords the
    labeller hears there (the chord in force at the end, then each change), so a reader that takes a
    file's symbols from its first on (the studio's lane) reads every chord after the span as heard."""
    src = _chorale(music21_dir)
    assert not symusic.Score(str(src)).markers
    out = _edit("infill", "--ckpt", edit_run, src, "--bars", "3-4", "--seed", "2", "--out", tmp_path)
    marks = _chords(_events(out))
    assert marks and marks[0][0] == 2 * BAR  # the chord the span starts under, on its bar line
    codec = Codec()
    steps, ids = codec.chord_changes(codec.encode_score(codec.read_midi(src.read_bytes())))
    heard = [(int(s) * 20, int(i)) for s, i in zip(steps, ids)]  # 20 ticks a step
    later = [t for t, _ in heard if t > 4 * BAR] + [4 * BAR]
    assert len(later) >= 4
    for t in later:
        assert parse_symbol(_in_force(marks, t)).id == _in_force(heard, t), t


def test_replace_chord_markers_touches_only_the_spans_symbols():
    score = symusic.Score(480)
    score.markers = [symusic.TextMeta(t, text) for t, text in [
        (0, "Chord C"), (0, "Intro"), (960, "Chord Dm"), (960, "Chord G"), (1920, "Verse"), (1920, "Chord Am"),
        (2400, "Chord xyz"), (3000, "Chord F"), (3840, "Chord C")]]
    """A file's own conflicting symbols outside the span stay; the span's are replaced, a new one that
    repeats the chord in force (G, the last at 960) is left out, and a marker naming no chord stays."""
    replace_chord_markers(score, 1920, 3840, [1920, 2880], [parse_symbol(n).id for n in ("G", "E7")])
    assert [(m.time, m.text) for m in score.markers] == [
        (0, "Chord C"), (0, "Intro"), (960, "Chord Dm"), (960, "Chord G"), (1920, "Verse"), (2400, "Chord xyz"),
        (2880, "Chord E7"), (3840, "Chord C")]
    replace_chord_markers(score, 2880, 3840, [2880, 3360], [parse_symbol(n).id for n in ("E7", "A7")])
    assert [(m.time, m.text) for m in score.markers][-3:] == [(2880, "Chord E7"), (3360, "Chord A7"), (3840, "Chord C")]


def test_a_variation_brings_its_sources_chords(edit_run, marked, tmp_path):
    """``infill --like``: bars 9-12 made like bars 3-6 (other chords: ``CHART`` is 8 bars) carry bars 3-6's
    chord symbols, at the same places in the bar; the symbols outside the target and every other
    marker stay as they were."""
    lo, hi, src = 8 * BAR, 12 * BAR, 2 * BAR
    out = _edit("infill", "--ckpt", edit_run, marked, "--bars", "9-12", "--like", "3-6", "--seed", "2",
                "--out", tmp_path)
    before, after = _chords(_events(marked)), _chords(_events(out))
    source = [(t - src, name) for t, name in before if src <= t < src + hi - lo]
    inside = [(t - lo, name) for t, name in after if lo <= t < hi]
    assert inside == source and inside != [(t - lo, name) for t, name in before if lo <= t < hi]
    outside = lambda marks: [m for m in marks if not lo <= m[0] < hi]  # noqa: E731
    assert outside(after) == outside(before)
    others = lambda evs: [e for e in evs if not (e[2] == "marker" and marker_chord(e[3]))]  # noqa: E731
    assert others(_events(out)) == others(_events(marked))
