"""Chord labels: made chords, drums, transposition, the music21 experts, chord charts, markers, the CLI."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import mido
import numpy as np
import pytest
import symusic

from midigen.data.chord_analyses import agreement, analysed_pieces, cached_piece
from midigen.errors import UsageError
from midigen.music.chords import NO_CHORD, VOCAB_SIZE, chord_id, chord_name, label_chords
from midigen.music.chordtext import (ChordSymbol, chart_beats, lead_sheet, parse_chords, read_chord_text,
                                     with_chord_symbols)
from midigen.music.timing import beat_grid

TPQ = 480
# The first eight analysed chorales (Riemenschneider 1-8: 594 beats the analyses name a triad on).
CHORALES = tuple(f"riemenschneider{k:03d}" for k in range(1, 9))
CHORALE_FLOOR = 0.85  # they agree on 90.9% of the beats at the weights committed with this test


def song(bars, meter=(4, 4), drums=None, tempo=100.0) -> symusic.Score:
    """A score read back from MIDI bytes: one chord per bar (pitches held for the bar) on a piano,
    an optional drum track of ``drums`` pitches on every beat."""
    s = symusic.Score(TPQ)
    s.tempos.append(symusic.Tempo(0, tempo))
    s.time_signatures.append(symusic.TimeSignature(0, *meter))
    bar_len = meter[0] * TPQ * 4 // meter[1]
    piano = symusic.Track("Piano", 0, False)
    for k, pitches in enumerate(bars):
        for p in pitches:
            piano.notes.append(symusic.Note(k * bar_len, bar_len, p, 80))
    s.tracks.append(piano)
    if drums:
        kit = symusic.Track("Drums", 0, True)
        for t in range(0, len(bars) * bar_len, TPQ):
            for p in drums:
                kit.notes.append(symusic.Note(t, TPQ // 2, p, 100))
        s.tracks.append(kit)
    return symusic.Score.from_midi(bytes(s.dumps_midi()))


def names(score) -> list[str]:
    labels = label_chords(score).labels
    return [chord_name(c) for c in labels]


C, AM7, G7, DM7B5, F_SUS4, E_AUG = (48, 64, 67, 72), (45, 60, 64, 67), (43, 59, 62, 65), (50, 65, 68, 72), \
    (41, 65, 70, 72), (52, 64, 68, 72)


def test_made_chords_are_named_beat_by_beat():
    got = names(song([C, AM7, G7, DM7B5, F_SUS4]))
    assert got == ["C"] * 4 + ["Am7"] * 4 + ["G7"] * 4 + ["Dm7b5"] * 4 + ["Fsus4"] * 4


def test_the_bass_decides_a_symmetric_chord():
    assert set(names(song([E_AUG]))) == {"Eaug"}


def test_drums_are_left_out():
    """A kit hitting pitches that spell another chord (C#, F, G#) changes nothing."""
    assert names(song([C, AM7], drums=(37, 41, 44, 49))) == names(song([C, AM7]))


def test_transposition_moves_the_root():
    base = label_chords(song([C, AM7, G7, DM7B5])).labels
    for k in (1, 5, -3):
        moved = label_chords(song([[p + k for p in ch] for ch in (C, AM7, G7, DM7B5)])).labels
        assert [chord_name(c) for c in moved] == [chord_name((c // 9 + k) % 12 * 9 + c % 9) for c in base]


def test_silence_is_no_chord_and_a_passing_note_is_smoothed_away():
    s = song([C, (), (), (), (), C])
    assert names(s)[:4] == ["C"] * 4 and set(names(s)[5:19]) == {"N.C."} and names(s)[-1] == "C"
    # a rest of a beat or two keeps the chord
    r = song([C, C])
    r.tracks[0].notes.filter(lambda n: n.time == 0, inplace=True)
    r.tracks[0].notes.append(symusic.Note(TPQ * 6, TPQ * 2, 60, 80))
    assert set(names(r)) == {"C"}
    # an F sixteenth over a held C chord stays C
    t = song([C, C])
    t.tracks[0].notes.append(symusic.Note(TPQ * 2, TPQ // 4, 77, 80))
    assert set(names(t)) == {"C"}


def test_beat_grid_follows_meter_changes():
    s = song([C] * 3, meter=(3, 4))
    s.time_signatures.append(symusic.TimeSignature(TPQ * 3, 6, 8))
    g = beat_grid(s)
    # bar 1 of 3/4, then 6/8 bars of two dotted-quarter beats up to the end (9 quarters)
    assert g.starts.tolist() == [0, 480, 960, 1440, 2160, 2880, 3600]
    assert g.bars.tolist() == [0, 0, 0, 1, 1, 2, 2] and g.beats.tolist() == [0, 1, 2, 0, 1, 0, 1]


def test_vocabulary_ids_are_stable_and_names_parse_back():
    assert VOCAB_SIZE == 109 and NO_CHORD == 108
    assert chord_id(0, "maj") == 0 and chord_id(9, "m7") == 88 and chord_name(88) == "Am7"
    for cid in range(VOCAB_SIZE):
        assert parse_chords(chord_name(cid)) == [[ChordSymbol(cid)]]


# ----- expert labels --------------------------------------------------------------------------------


def test_labeller_agrees_with_bach_analyses():
    """Root and triad quality, beat by beat, on chorales the music21 wheel analyses (exports cached)."""
    pieces = [p for p in analysed_pieces() if p.name in CHORALES]
    assert len(pieces) == len(CHORALES)
    beats = hits = 0
    for piece in pieces:
        midi, expert = cached_piece(piece)
        got = agreement(label_chords(symusic.Score.from_file(str(midi))).labels, expert)
        beats, hits = beats + got["beats"], hits + got["root_triad"]
    assert beats > 500
    assert hits / beats >= CHORALE_FLOOR, f"{hits}/{beats}"


# ----- chord charts ---------------------------------------------------------------------------------


def ids(bars):
    return [[chord_name(c.id) for c in bar] for bar in bars]


def test_chart_without_bar_lines_is_one_chord_per_bar():
    assert ids(parse_chords("C G Am F")) == [["C"], ["G"], ["Am"], ["F"]]


def test_chart_with_bar_lines():
    assert ids(parse_chords("C G | Am F | Dm7 G7 | C")) == [["C", "G"], ["Am", "F"], ["Dm7", "G7"], ["C"]]
    assert ids(parse_chords("| C | G |\n| Am F |")) == [["C"], ["G"], ["Am", "F"]]


def test_spellings():
    bars = parse_chords("C Cm C7 Cmaj7 Cm7 Cdim Caug Csus4 Cm7b5 F# Bb Ebm7 C/E N.C.")
    assert ids(bars) == [[n] for n in ("C", "Cm", "C7", "Cmaj7", "Cm7", "Cdim", "Caug", "Csus4", "Cm7b5",
                                       "F#", "Bb", "Ebm7", "C", "N.C.")]
    slash = bars[12][0]
    assert slash.id == chord_id(0, "maj") and slash.bass == 4 and str(slash) == "C/E"
    assert parse_chords("Gb A#m") == [[ChordSymbol(chord_id(6, "maj"))], [ChordSymbol(chord_id(10, "min"))]]


@pytest.mark.parametrize("text, bad", [("C G H7", "H7"), ("C | Cmaj9", "Cmaj9"), ("C/X", "C/X"), ("c", "c")])
def test_bad_chord_names_the_symbol(text, bad):
    with pytest.raises(UsageError, match=f"'{bad}'"):
        parse_chords(text)


def test_empty_bar_and_empty_chart_are_errors():
    with pytest.raises(UsageError, match="empty bar 2"):
        parse_chords("C | | G")
    with pytest.raises(UsageError, match="no chords"):
        parse_chords("  ")


def test_chart_from_a_file(tmp_path):
    chart = tmp_path / "chart.txt"
    chart.write_text("| C G | Am F |\n| Dm7 G7 | C |\n")
    assert ids(read_chord_text(f"@{chart}")) == [["C", "G"], ["Am", "F"], ["Dm7", "G7"], ["C"]]
    with pytest.raises(UsageError, match="cannot read chord chart"):
        read_chord_text(f"@{tmp_path / 'missing.txt'}")


def test_lead_sheet_merges_a_held_chord_within_the_bar():
    s = song([C, C, AM7])
    s.tracks[0].notes.append(symusic.Note(TPQ * 8 + TPQ * 2, TPQ * 2, 41, 90))  # F bass under half of bar 3
    s.tracks[0].notes.append(symusic.Note(TPQ * 8 + TPQ * 2, TPQ * 2, 53, 90))
    assert lead_sheet(label_chords(s)) == "| C | C | Am7 Fmaj7 |"
    assert parse_chords(lead_sheet(label_chords(s)))[2] == [ChordSymbol(chord_id(9, "m7")),
                                                           ChordSymbol(chord_id(5, "maj7"))]


# ----- chord symbols in the written file ------------------------------------------------------------


def test_chord_symbols_are_text_meta_events_on_the_first_track():
    s = song([C, C, AM7, G7], drums=(36,))
    s.markers.append(symusic.TextMeta(0, "Intro"))
    marked = with_chord_symbols(s, label_chords(s))
    data = bytes(marked.dumps_midi())
    mid = mido.MidiFile(file=io.BytesIO(data))
    first = mid.tracks[0]
    texts, t = [], 0
    for msg in first:
        t += msg.time
        if msg.type == "marker":
            texts.append((t * TPQ // mid.ticks_per_beat, msg.text))
    assert texts == [(0, "Intro"), (0, "Chord C"), (TPQ * 8, "Chord Am7"), (TPQ * 12, "Chord G7")]
    assert not any(m.type == "marker" for tr in mid.tracks[1:] for m in tr)
    back = symusic.Score.from_midi(data)
    assert [(m.time, m.text) for m in back.markers] == texts
    # the music is untouched
    for a, b in zip(s.tracks, back.tracks):
        assert np.array_equal(a.notes.numpy()["time"], b.notes.numpy()["time"]) and a.is_drum == b.is_drum
        assert np.array_equal(a.notes.numpy()["pitch"], b.notes.numpy()["pitch"])


# ----- the command ----------------------------------------------------------------------------------


def run_cli(repo_root, *args):
    env = dict(os.environ, PYTHONPATH=str(repo_root))
    return subprocess.run([sys.executable, "-m", "midigen", "chords", *args], capture_output=True, text=True,
                          env=env, cwd=repo_root, timeout=120)


def test_cli_prints_a_chorale_as_a_lead_sheet_and_json(repo_root):
    piece = next(p for p in analysed_pieces() if p.name == "riemenschneider001")
    midi, _ = cached_piece(piece)
    r = run_cli(repo_root, str(midi))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) >= 5 and all(line.startswith("| ") and line.endswith(" |") for line in lines)
    assert lines[0].split("|")[1].split()[0] == "G"  # Aus meines Herzens Grunde starts on G major
    bars = parse_chords("\n".join(lines))  # the lead sheet is a chart midigen reads back
    r = run_cli(repo_root, str(midi), "--json")
    assert r.returncode == 0, r.stderr
    events = [json.loads(x) for x in r.stdout.splitlines()]
    assert [e["chord"] for e in events[:1]] == ["G"] and events[0]["bar"] == 1 and events[0]["seconds"] == 0
    sheet = [c for bar in bars for c in bar]
    held = [chord_name(a.id) for k, a in enumerate(sheet) if k == 0 or a != sheet[k - 1]]
    assert held == [e["chord"] for e in events]  # the same changes, a chord held into the next bar named again
    assert all(a["seconds"] < b["seconds"] for a, b in zip(events, events[1:]))
    assert {"bar", "beat", "seconds", "chord", "id"} <= set(events[0])


def test_cli_bad_or_missing_file_exits_2(repo_root, tmp_path):
    r = run_cli(repo_root, str(tmp_path / "missing.mid"))
    assert r.returncode == 2 and "does not exist" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"MThd not really")
    r = run_cli(repo_root, str(bad))
    assert r.returncode == 2 and "bad song" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_cli_refuses_a_hostile_song_with_billions_of_beats(repo_root, tmp_path):
    """A note 280,000 quarters long under a 1/64 meter would be 4.5 million beats: one line, exit 2."""
    s = symusic.Score(TPQ)
    s.time_signatures.append(symusic.TimeSignature(0, 1, 64))
    t = symusic.Track("Piano", 0, False)
    t.notes.append(symusic.Note(0, 2**27, 60, 80))  # MIDI delta times stop at 2**28
    s.tracks.append(t)
    hostile = tmp_path / "hostile.mid"
    hostile.write_bytes(bytes(s.dumps_midi()))
    r = run_cli(repo_root, str(hostile))
    assert r.returncode == 2 and "too long to label" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_chart_laid_on_a_songs_beats_repeats_and_shares_bars():
    grid = beat_grid(song([C] * 5))  # five bars of 4/4
    got = [chord_name(c) for c in chart_beats(parse_chords("C G Am | F"), grid)]
    assert got == ["C", "C", "G", "Am"] + ["F"] * 4 + ["C", "C", "G", "Am"] + ["F"] * 4 + ["C", "C", "G", "Am"]
    # the labeller agrees with a chart of what was played
    played = song([C, AM7, G7, DM7B5])
    assert np.array_equal(label_chords(played).labels,
                          chart_beats(parse_chords("C Am7 G7 Dm7b5"), beat_grid(played)))
