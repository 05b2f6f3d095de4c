"""Songs with a form (``sample --form``) and "make this like that" (``infill --like``), through the real
command in a child (tests/clirun.py) on conftest's ``edit_run`` checkpoint.

What is checked is what a user would check in the written file, read back by symusic and by mido: a
marker at each section's first bar, each repeat note for note the same as its first occurrence but for
the seam bar the summary names, a variation the same but for the bars it names, the rest of a song an
infill --like leaves alone untouched.
"""
from __future__ import annotations

import json
from collections import Counter
from io import BytesIO
from pathlib import Path

import mido
import numpy as np
import pytest
import symusic

from clirun import midigen
from midiread import mido_notes
from midigen.errors import UsageError
from midigen.generate.form import bar_tones, parse_form, parse_section_controls, plan_steps, seam_sections, write_form
from midigen.generate.render import bar_chord_names, detected_bar_chords, piano_roll_figure
from midigen.generate.sampling import Sampling
from midigen.model.checkpoint import checkpoint_limits, load_checkpoint
from midigen.music.timing import bar_tick
from songgen import make_song

FORM = "intro:1 A:3 B:4 A:3 B':4 A:3"


# ----- the form text and the plan (no model) -------------------------------------------------------------


@pytest.mark.parametrize("text, says", [
    ("", "empty"), ("A:8 B", "LABEL:BARS"), ("A:0", "0 bars"), ("A:65", "limit"), ("A:8 B:8 A:4", "same length"),
    ("A:8 B':8", "does not have"), ("A:8 A':4", "keeps the length"), ("8:A", "LABEL:BARS"),
    (" ".join(["A:64"] * 9), "limit"),
])
def test_bad_forms_are_one_line_usage_errors(text, says):
    with pytest.raises(UsageError) as e:
        parse_form(text)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_the_plan_writes_the_anchor_first_then_between_then_variations_then_seams():
    sections = parse_form(FORM)
    steps = plan_steps(sections, 0.5, seed=1)
    assert [(s.kind, s.label) for s in steps] == [
        ("anchor", "A"), ("first", "intro"), ("first", "B"), ("vary", "B'"), ("seam", "A"), ("seam", "A")]
    vary = steps[3]
    assert vary.last_bar - vary.first_bar + 1 == 2 and 12 < vary.first_bar <= 14  # half of bars 12-15, not the first
    # A at 9-11 leads into B' (its first occurrence led into B), A at 16-18 into the end: both seams
    assert [s.last_bar for s in seam_sections(sections)] == [11, 18]


def test_section_controls_text():
    assert parse_section_controls("B:density=high,key=E minor") == ("B", {"density": "high", "key": "E minor"})
    assert parse_section_controls("C:style=a,b") == ("C", {"style": "a,b"})
    for bad in ("B", "B:", "B:tempo=90", ":density=high"):
        with pytest.raises(UsageError):
            parse_section_controls(bad)


# ----- a song with a form, in the written file -------------------------------------------------------------


def _bar_notes(score, bar_ticks, first: int, last: int) -> Counter:
    """symusic's notes (track, onset from the span's start, duration, pitch, velocity) starting in bars
    first..last (from 1)."""
    lo, hi = bar_ticks(first), bar_ticks(last + 1)
    return Counter((i, n.time - lo, n.duration, n.pitch, n.velocity)
                   for i, t in enumerate(score.tracks) for n in t.notes if lo <= n.time < hi)


def _mido_bar_notes(data: bytes, bar_ticks, first: int, last: int) -> Counter:
    lo, hi = bar_ticks(first), bar_ticks(last + 1)
    notes, clashes = mido_notes(data)
    assert clashes == 0
    return Counter({(p, c, pitch, on - lo, d, v): k for (p, c, pitch, on, d, v), k in notes.items() if lo <= on < hi})


def _mido_markers(data: bytes) -> list[tuple[str, int]]:
    """(text, tick) of every marker meta event as mido reads the file."""
    tick, marks = 0, []
    for msg in mido.merge_tracks(mido.MidiFile(file=BytesIO(data)).tracks):
        tick += msg.time
        if msg.type == "marker":
            marks.append((msg.text, tick))
    return marks


@pytest.fixture(scope="module")
def form_song(edit_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("form")
    r = midigen("sample", "--ckpt", edit_run, "--form", FORM, "--vary", "0.5", "--seed", "11", "--tempo", "100",
                "--out", out, "--png", "--section", "B:density=high")
    assert r.returncode == 0, r.stderr[-2000:]
    line = json.loads(next(x for x in r.stdout.splitlines() if x.startswith("{")))
    midi = Path(line["midi"])
    return line, midi.read_bytes(), r.stdout


def test_form_song_has_a_marker_at_each_sections_first_bar(form_song):
    line, data, _ = form_song
    score = symusic.Score.from_midi(data)
    bar = score.ticks_per_quarter * 4 * score.time_signatures[0].numerator // score.time_signatures[0].denominator
    want = [(r["label"], (r["bars"][0] - 1) * bar) for r in line["sections"]] + [("end", 18 * bar)]
    sections = lambda marks: [m for m in marks if not m[0].startswith("Chord ")]  # noqa: E731  (v4: chords too)
    assert sections([(m.text, m.time) for m in score.markers]) == want
    assert sections(_mido_markers(data)) == want
    assert line["bars"] == 18 and line["seconds"] == pytest.approx(18 * bar / score.ticks_per_quarter * 0.6)


def test_repeats_are_exact_in_the_file_but_for_their_named_seam_bars(form_song):
    line, data, _ = form_song
    score = symusic.Score.from_midi(data)
    ts = score.time_signatures[0]
    bar = score.ticks_per_quarter * 4 * ts.numerator // ts.denominator
    at = lambda b: (b - 1) * bar  # noqa: E731
    assert line["exact_repeats"] == ["A@9", "A@16"] and line["seam_bars"] == [11, 18]
    repeats = [r for r in line["sections"] if r["kind"] == "repeat"]
    assert [r["seam_bar"] for r in repeats] == [11, 18]
    a = _bar_notes(score, at, 2, 3)  # A's bars 2-4 less its last bar (the repeats' seam bars)
    assert sum(a.values()) > 0, "nothing to compare: the first A has no notes in its first two bars"
    for r in repeats:
        first = r["bars"][0]
        assert _bar_notes(score, at, first, first + 1) == a
        assert _mido_bar_notes(data, at, first, first + 1) == _mido_bar_notes(data, at, 2, 3)


def test_a_variation_is_its_section_but_for_the_bars_it_names(form_song):
    line, data, _ = form_song
    score = symusic.Score.from_midi(data)
    ts = score.time_signatures[0]
    bar = score.ticks_per_quarter * 4 * ts.numerator // ts.denominator
    at = lambda b: (b - 1) * bar  # noqa: E731
    (v,) = [r for r in line["sections"] if r["kind"] == "variation"]
    assert v["label"] == "B'" and v["of"] == "B" and v["bars"] == [12, 15]
    lo, hi = v["rewritten_bars"]
    assert hi - lo + 1 == 2 and lo > 12  # --vary 0.5 of 4 bars, one run, never the first bar
    kept = [b for b in range(12, 16) if not lo <= b <= hi]
    assert sum(sum(_bar_notes(score, at, b - 7, b - 7).values()) for b in kept) > 0
    for b in kept:
        assert _bar_notes(score, at, b, b) == _bar_notes(score, at, b - 7, b - 7)  # B is bars 5-8


def test_a_variations_rewritten_bars_lean_toward_their_model_bars_tones(edit_run):
    """``vary_weight``: each rewritten bar of A' leans toward the pitch classes its A bar dwells on
    (``form.bar_tones``); the same seed with the weight off leaves the model alone. The share of
    bars kept as copies stays what ``--vary`` says."""
    model, codec, config = load_checkpoint(edit_run, "cpu")
    share = {}
    for weight in (0.0, 8.0):
        song = write_form(model, codec, parse_form("A:4 B:2 A':4"), sampling=Sampling(seed=5, vary_weight=weight),
                          vary=0.5, limits=checkpoint_limits(config))
        first, last = song.rewritten["A'"]
        assert last - first + 1 == 2
        times, tones, onsets = bar_tones(song.score, first - 6, first, 2)
        assert (onsets >= times[0]).all() and (onsets < bar_tick(song.score, last + 1)).all()
        assert list(times) == [bar_tick(song.score, b) for b in (first, first + 1)]
        on, total = 0.0, 0.0
        for t in song.score.tracks:
            for n in ([] if t.is_drum else t.notes):
                k = int(np.searchsorted(times, n.time, side="right")) - 1
                if 0 <= k < 2 and n.time < bar_tick(song.score, last + 1):
                    on += n.duration * (tones[k, n.pitch % 12] > 0)
                    total += n.duration
        share[weight] = on / max(total, 1)
    assert share[8.0] >= 0.9 and share[8.0] > share[0.0], share


def test_form_summary_and_files(form_song):
    line, _, stdout = form_song
    assert Path(line["png"]).stat().st_size > 10_000
    assert set(line["compute_seconds"]) == {"first", "infill", "seams"}
    assert line["form"] == FORM and line["variations"] == ["B'@12"]
    assert stdout.strip().splitlines()[-1].startswith("seed 11 ")


def test_same_seed_same_song(form_song, edit_run, tmp_path):
    r = midigen("sample", "--ckpt", edit_run, "--form", FORM, "--vary", "0.5", "--seed", "11", "--tempo", "100",
                "--out", tmp_path, "--section", "B:density=high")
    assert r.returncode == 0, r.stderr[-2000:]
    line = json.loads(next(x for x in r.stdout.splitlines() if x.startswith("{")))
    assert Path(line["midi"]).read_bytes() == form_song[1]


@pytest.mark.parametrize("args, says", [
    (["--form", "A:4 B"], "LABEL:BARS"),
    (["--form", "A:0"], "0 bars"),
    (["--form", "A:100"], "limit"),
    (["--form", "A:4", "--seconds", "10"], "--seconds"),
    (["--vary", "0.5"], "need --form"),
    (["--form", "A:4", "--vary", "1.5"], "--vary"),
    (["--form", "A:4 B:4", "--section", "C:density=high"], "no section C"),
    (["--form", "A:4", "--section", "A:tempo=fast"], "style=, key= or density="),
    (["--form", "A:4", "--section", "A:density=loud"], "density"),
])
def test_cli_refuses_bad_forms(edit_run, tmp_path, args, says):
    r = midigen("sample", "--ckpt", edit_run, "--out", tmp_path, *args)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and says in err[0], r.stderr


# ----- a form on chords (a chord-token, v4 model) ---------------------------------------------------------


def _chords_by_quarter(data: bytes) -> list[tuple[int, str]]:
    """(quarter, chord name) of the chord symbols in the file, as symusic reads them and mido agrees."""
    score = symusic.Score.from_midi(data)
    tpq = score.ticks_per_quarter
    marks = [(m.text, m.time) for m in score.markers]
    assert marks == _mido_markers(data)
    return [(t // tpq, text.removeprefix("Chord ")) for text, t in marks if text.startswith("Chord ")]


def _form_on(edit_run, out, form, chords):
    r = midigen("sample", "--ckpt", edit_run, "--form", form, "--chords", chords, "--seed", "4", "--tempo", "120",
                "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    line = json.loads(next(x for x in r.stdout.splitlines() if x.startswith("{")))
    return line, Path(line["midi"]).read_bytes()


def test_each_section_plays_its_own_chart_every_time_it_comes(edit_run, tmp_path):
    """``--chords "A: ... | B: ..."``: every occurrence starts its section's chart at its first bar (4/4
    under a chart), the seam bar rewritten on a repeat plays its bar of the chart, and the file carries
    the symbols."""
    line, data = _form_on(edit_run, tmp_path, "A:2 B:2 A:2 B:2", "A: C G | Am F | B: Dm G7")
    assert line["seam_bars"] == [8]  # the last B leads into the end, the first one into A
    a = [(0, "C"), (2, "G"), (4, "Am"), (6, "F")]
    b = [(8, "Dm"), (12, "G7")]
    shift = lambda marks, q: [(t + q, c) for t, c in marks]  # noqa: E731
    assert _chords_by_quarter(data) == a + b + shift(a, 16) + shift(b, 16)
    assert symusic.Score.from_midi(data).time_signatures[0].numerator == 4


def test_chord_symbols_written_by_infill_sit_on_their_bar_lines(edit_run, tmp_path):
    """Every section but the anchor, and the seam bar, is written by infill, whose span starts one step
    after the bar line (``span_steps``); the chord a span starts under is still marked at the bar line,
    at the very tick of its section's marker, as symusic and mido read the file back."""
    _, data = _form_on(edit_run, tmp_path, "A:2 B:2 A:2 B:2", "A: C G | Am F | B: Dm G7")
    score = symusic.Score.from_midi(data)
    tpq = score.ticks_per_quarter
    chords = {int(m.time): m.text for m in score.markers if m.text.startswith("Chord ")}
    sections = {int(m.time): m.text for m in score.markers if m.text in ("A", "B")}
    assert all(t % tpq == 0 for t in chords), sorted(chords)  # each on its beat, not a step after it
    assert {t: chords.get(t) for t in sections if sections[t] == "B"} == {8 * tpq: "Chord Dm", 24 * tpq: "Chord Dm"}
    assert chords.get(28 * tpq) == "Chord G7"  # the seam bar (8), rewritten last, marks its chord on its line


def test_the_pngs_chord_lane_shows_the_chords_the_file_carries(edit_run, tmp_path):
    """The lane names the ``Chord NAME`` markers the file was written on (bar by bar, as a lead sheet
    writes a bar), not the labeller's hearing of the tiny model's notes; bars before the first marker
    fall back to the labeller."""
    _, data = _form_on(edit_run, tmp_path, "A:2 B:2 A:2 B:2", "A: C G | Am F | B: Dm G7")
    score = symusic.Score.from_midi(data)
    chart = ["C G", "Am F", "Dm", "G7"] * 2
    names = bar_chord_names(score)
    assert len(names) >= 6 and names == chart[: len(names)]
    tpq = score.ticks_per_quarter
    score.markers = [m for m in score.markers if not m.text.startswith("Chord ")]
    score.markers.append(symusic.TextMeta(4 * tpq, "Chord F#"))  # bar 2 on
    score.markers.append(symusic.TextMeta(10 * tpq, "Chord Bbm7"))  # from the middle of bar 3
    score.markers.sort(key=lambda m: m.time)
    names, heard = bar_chord_names(score), detected_bar_chords(score)
    assert names[:4] == [heard[0], "F#", "F# Bbm7", "Bbm7"] and heard[1:4] != names[1:4]
    fig = piano_roll_figure(score)  # what --png draws: its lane (the top axes) names the file's chords
    lane = [t.get_text() for t in fig.axes[0].texts + fig.axes[1].texts]
    assert "F#" in lane and "Bbm7" in lane


def test_a_chart_without_labels_starts_again_in_every_section(edit_run, tmp_path):
    _, data = _form_on(edit_run, tmp_path, "A:3 B:2", "C Am F G")
    assert _chords_by_quarter(data) == [(0, "C"), (4, "Am"), (8, "F"), (12, "C"), (16, "Am")]


@pytest.mark.parametrize("chords, says", [
    ("A: C G | C: F", "names section C, which the form does not have"),
    ("A: C Hm7", "bad chord 'Hm7'"),
    ("F G A: C", "before any section label"),
    ("A: C | A: F", "twice"),
    ("A: | B: F", "no chords"),
])
def test_bad_section_charts_are_one_line_usage_errors(edit_run, tmp_path, chords, says):
    r = midigen("sample", "--ckpt", edit_run, "--form", "A:2 B:2", "--chords", chords, "--out", tmp_path)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and says in err[0], r.stderr


# ----- infill --like on an existing song ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def marked_song(tmp_path_factory):
    """A real GM song (songgen: drums, bass, chords, melody) in 4/4 at one tempo, with markers naming
    its sections."""
    s = make_song(3, bars=16, tpq=480)
    s.time_signatures = [symusic.TimeSignature(0, 4, 4)]
    s.tempos = [symusic.Tempo(0, 110.0)]
    s.markers = [symusic.TextMeta(t * 1920, n) for t, n in ((0, "Verse 1"), (4, "Verse 2"), (8, "Bridge"))]
    path = tmp_path_factory.mktemp("marked") / "song.mid"
    s.dump_midi(str(path))
    return path


def _outside(score, lo: int, hi: int) -> Counter:
    return Counter((i, n.time, n.duration, n.pitch, n.velocity)
                   for i, t in enumerate(score.tracks) for n in t.notes if not lo <= n.time < hi)


@pytest.mark.parametrize("span", [("--bars", "5-8", "--like", "1-4"), ("--section", "Verse 2", "--like", "Verse 1")])
def test_infill_like_keeps_the_rest_and_copies_most_bars(edit_run, marked_song, tmp_path, span):
    r = midigen("infill", marked_song, "--ckpt", edit_run, *span, "--seed", "4", "--out", tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    line = json.loads(r.stdout.splitlines()[0])
    assert line["span_seconds"] == pytest.approx([4 * 4 * 60 / 110, 8 * 4 * 60 / 110], abs=1e-3)
    before = symusic.Score(str(marked_song))
    after = symusic.Score(line["file"])
    assert _outside(after, 4 * 1920, 8 * 1920) == _outside(before, 4 * 1920, 8 * 1920)
    # the song's own markers stay (a chord-token model adds its chords' names as markers in the span)
    kept = Counter((m.text, m.time) for m in after.markers)
    assert not Counter((m.text, m.time) for m in before.markers) - kept
    at = lambda b: (b - 1) * 1920  # noqa: E731
    # a copy keeps onsets, pitches and velocities; a length may be cut at the span's end, or where the
    # user's own notes of one pitch overlapped (the overlap rule); a kept note ringing in from bar 4 may
    # keep a copied one out of bar 5, so bars 6-8 are compared: one of them is rewritten
    onsets = lambda c: Counter({k[:2] + k[3:]: v for k, v in c.items()})  # noqa: E731
    same = [b for b in range(6, 9)
            if onsets(_bar_notes(after, at, b, b)) == onsets(_bar_notes(before, at, b - 4, b - 4))]
    assert len(same) == 2, same
    # the song itself overlaps notes of one pitch here and there; nothing written adds to them
    assert mido_notes(Path(line["file"]).read_bytes())[1] <= mido_notes(marked_song.read_bytes())[1]


@pytest.mark.parametrize("args, says", [
    (["--bars", "5-8", "--like", "1-3"], "differ in length"),
    (["--section", "Chorus", "--like", "Verse 1"], "no marker named 'Chorus'"),
    (["--section", "Verse 2", "--like", "Nope"], "no marker named 'Nope'"),
    (["--bars", "5-8", "--vary", "0.5"], "--vary needs --like"),
    (["--like", "1-4", "--start", "1", "--end", "2"], "--like needs"),
    (["--bars", "5-8", "--section", "Verse 2"], "one way"),
])
def test_infill_like_refuses_bad_spans(edit_run, marked_song, tmp_path, args, says):
    r = midigen("infill", marked_song, "--ckpt", edit_run, *args, "--out", tmp_path)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and says in err[0], r.stderr


# ----- the studio's API: a form, its sections over the roll, and "make this like that" ------------------


@pytest.fixture(scope="module")
def form_server(edit_run, tmp_path_factory):
    from studio_server import Server

    s = Server(edit_run, tmp_path_factory.mktemp("studio-form-ws"))
    yield s
    assert s.stop() == 0, "".join(s.stderr)[-2000:]


def test_studio_writes_a_form_shows_its_sections_and_varies_one_with_undo(form_server):
    from studio_server import call, wait_job

    base = form_server.url
    status, piece = call("POST", f"{base}/api/pieces", {"name": "form"})
    assert status == 201, piece
    pid = piece["id"]
    status, job = call("POST", f"{base}/api/pieces/{pid}/generate",
                       {"form": "A:2 B:2 A:2", "seed": 5, "tempo": 100, "chords": "A: C G | B: Dm | Em"})
    assert status == 202, job
    job, streamed, _ = wait_job(base, job)
    assert job["status"] == "done", job
    v1 = job["versions"][0]
    piece = call("GET", f"{base}/api/pieces/{pid}")[1]
    assert "A: C G | B: Dm | Em" in next(v for v in piece["versions"] if v["id"] == v1)["label"]
    status, err = call("POST", f"{base}/api/pieces/{pid}/generate", {"form": "A:2", "chords": "B: C"})
    assert status == 400 and "section B" in err["detail"], (status, err)
    status, roll = call("GET", f"{base}/api/pieces/{pid}/versions/{v1}/roll")
    assert status == 200
    labels = [s["label"] for s in roll["sections"]]
    assert labels == ["A", "B", "A"]
    a1, b, a2 = roll["sections"]
    assert a1["start"] == 0 and a1["end"] == b["start"] and b["end"] == a2["start"] > 0
    # the job streamed what it wrote: the first A sampled, then B by infill (a copy is not written)
    onsets = [n[0] for n in streamed]
    assert any(t < a1["end"] for t in onsets) and any(b["start"] <= t < b["end"] for t in onsets), onsets
    written = Counter((round(n, 2), p) for t in roll["tracks"] for n, p in zip(t["start"], t["pitch"]))
    inside = Counter((round(n[0], 2), n[2]) for n in streamed if n[0] < b["end"])
    kept = sum((inside & written).values())  # the song's notes where the stream put them (the splice and
    assert kept >= 0.5 * sum(inside.values()), (kept, inside)  # the meter the first section took may move a few)
    # make the second A like B (same length): a new version, B's onsets there but for the bar written anew
    status, job = call("POST", f"{base}/api/pieces/{pid}/like",
                       {"start_s": a2["start"], "end_s": a2["end"], "like_start_s": b["start"], "like_end_s": b["end"],
                        "seed": 1, "vary": 0.5})
    assert status == 202, job
    job, _, _ = wait_job(base, job)
    assert job["status"] == "done", job
    v2 = job["versions"][0]
    piece = call("GET", f"{base}/api/pieces/{pid}")[1]
    assert piece["current"] == v2 and piece["can_undo"]
    assert "like" in next(v for v in piece["versions"] if v["id"] == v2)["label"]
    status, roll2 = call("GET", f"{base}/api/pieces/{pid}/versions/{v2}/roll")
    before = Counter((n, p) for t in roll["tracks"] for n, p in zip(t["start"], t["pitch"]) if n < a2["start"])
    after = Counter((n, p) for t in roll2["tracks"] for n, p in zip(t["start"], t["pitch"]) if n < a2["start"])
    assert before == after and sum(before.values()) > 0  # everything before the span is kept
    assert call("POST", f"{base}/api/pieces/{pid}/undo")[1]["current"] == v1
    # a bad form and a span past the end are one-line 4xx
    status, err = call("POST", f"{base}/api/pieces/{pid}/generate", {"form": "A:0"})
    assert status == 400 and "0 bars" in err["detail"]
    status, err = call("POST", f"{base}/api/pieces/{pid}/like",
                       {"start_s": 0, "end_s": 999, "like_start_s": 0, "like_end_s": 999})
    assert status == 400 and "past the end" in err["detail"]
