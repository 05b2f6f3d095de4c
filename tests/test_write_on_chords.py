"""`--chords` end to end: sample, infill and arrange through the real CLI on the session's v4 model,
with the chord symbols read back from the written files by symusic and mido; and a v3 dataset and
checkpoint (no chords) that still prepare, train, sample and edit in their own layout."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import symusic

from clirun import ROOT, midigen
from midiread import text_events
from midigen.data.prepare import prepare
from midigen.generate.sample import generate_samples
from midigen.generate.sampling import Sampling
from midigen.model.checkpoint import load_checkpoint
from midigen.music.chords import label_chords
from midigen.music.chordtext import bar_chords, marker_chord, parse_chords, parse_symbol
from midigen.music.codec import Codec
from midigen.errors import UsageError


def _markers(path: Path) -> list[tuple[int, str]]:
    """(tick, text) of the chord symbols as symusic reads them, checked against mido's reading: marker
    meta events on the first track."""
    got = [(int(m.time), m.text) for m in symusic.Score(str(path)).markers]
    first = [(tick, text) for k, tick, kind, text in text_events(path.read_bytes()) if kind == "marker" and k == 0]
    assert first == got
    return [(t, marker_chord(text)) for t, text in got if marker_chord(text) is not None]


def _written(result) -> list[Path]:
    return [Path(line) for line in result.stdout.splitlines() if line.endswith(".mid")]


def _edit_files(result) -> list[Path]:
    return [Path(json.loads(line)["file"]) for line in result.stdout.splitlines()
            if line.startswith("{") and json.loads(line)["kind"] == "midi"]


def test_sample_writes_on_the_chart(edit_run, tmp_path):
    """`sample --chords` forces the chart bar by bar and repeats it; the file carries the symbols at
    the bar lines (4/4 unless asked), and --png still draws."""
    r = midigen("sample", "--ckpt", edit_run, "--chords", "C Am F G", "--seconds", "16", "--seed", "3",
                "--tempo", "120", "--out", tmp_path, "--png")
    assert r.returncode == 0, r.stderr
    (mid,) = _written(r)
    assert mid.with_suffix(".png").is_file()
    marks = _markers(mid)
    tpq = symusic.Score(str(mid)).ticks_per_quarter
    assert [t for _, t in marks][:6] == ["C", "Am", "F", "G", "C", "Am"]
    assert [k for k, _ in marks][:6] == [i * 4 * tpq for i in range(6)]


def test_sample_with_a_chart_file_of_split_bars(edit_run, tmp_path):
    chart = tmp_path / "chart.txt"
    chart.write_text("| Dm7 G7 | Cmaj7 |\n| Am7 D7 | G |\n")
    r = midigen("sample", "--ckpt", edit_run, "--chords", f"@{chart}", "--time-signature", "4/4", "--seconds", "10",
                "--seed", "1", "--tempo", "120", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    marks = _markers(_written(r)[0])
    tpq = symusic.Score(str(_written(r)[0])).ticks_per_quarter
    assert marks[:6] == [(0, "Dm7"), (2 * tpq, "G7"), (4 * tpq, "Cmaj7"), (8 * tpq, "Am7"), (10 * tpq, "D7"),
                         (12 * tpq, "G")]


def test_library_forces_chords_for_every_row(edit_run):
    """``generate_samples(chords=...)``: every row of a batch carries the chart's CHORD tokens at the
    chart's steps (what the grammar forced), whatever else it drew."""
    model, codec, _ = load_checkpoint(edit_run, "cpu")
    chart = parse_chords("Am | Dm | E7 | F")
    samples = generate_samples(model, codec, num_samples=3, seconds=12, sampling=Sampling(seed=5),
                               instruments=[0, 33], tempo=100.0, chords=chart)
    for s in samples:
        ev = codec.decode_events(s.tokens)
        bars = ev["chord_time"] // 96
        names = [codec.token_name(codec.chord_start + i) for i in ev["chord_id"]]
        assert names[:5] == ["CHORD_Am", "CHORD_Dm", "CHORD_E7", "CHORD_F", "CHORD_Am"]
        assert np.array_equal(ev["chord_time"] % 96, np.zeros(len(bars))) and np.array_equal(bars, np.arange(len(bars)))


def test_continuation_on_a_chart_keeps_the_prompt(edit_run, songs_dir, tmp_path):
    """`sample --prompt --chords`: the new part is written on the chart from the bar it starts in (the
    chord of that bar held from the point), every prompt note before the point stays, and the chord
    symbols stand only in the new part."""
    src = sorted(Path(songs_dir).glob("*.mid"))[2]
    song = symusic.Score(str(src))
    r = midigen("sample", "--ckpt", edit_run, "--prompt", src, "--prompt-seconds", "4", "--chords", "Dm | G7",
                "--seconds", "8", "--seed", "6", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    out = symusic.Score(str(_written(r)[0]))
    marks = _markers(_written(r)[0])
    assert [t for _, t in marks][:4] in (["Dm", "G7", "Dm", "G7"], ["G7", "Dm", "G7", "Dm"])
    start = marks[0][0]
    kept = lambda s: sorted((n.time, n.pitch) for t in s.tracks for n in t.notes if n.time < start - 1)  # noqa: E731
    assert kept(out) and set(kept(out)) <= set(kept(song))


def test_bad_chords_are_one_line_usage_errors(edit_run, tmp_path):
    r = midigen("sample", "--ckpt", edit_run, "--chords", "C G Hm7 F", "--out", tmp_path)
    assert r.returncode == 2 and "'Hm7'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = midigen("sample", "--ckpt", edit_run, "--chords", f"@{tmp_path / 'missing.txt'}", "--out", tmp_path)
    assert r.returncode == 2 and "missing.txt" in r.stderr
    r = midigen("sample", "--ckpt", edit_run, "--chords", "C | | G", "--out", tmp_path)
    assert r.returncode == 2 and "empty bar 2" in r.stderr


def test_chords_from_another_song(edit_run, music21_dir, tmp_path):
    """`--chords-from` writes on another song's detected chords, on its bars and in its meter."""
    src = next(p for p in sorted(Path(music21_dir).rglob("*.mid")) if "chorale" in str(p))
    score = symusic.Score(str(src))
    song = label_chords(score)
    r = midigen("sample", "--ckpt", edit_run, "--chords-from", src, "--seconds", "8", "--seed", "2",
                "--tempo", "90", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    mid = _written(r)[0]
    out = symusic.Score(str(mid))
    ts = score.time_signatures[0] if len(score.time_signatures) else None
    if ts is not None:
        assert (out.time_signatures[0].numerator, out.time_signatures[0].denominator) == (ts.numerator, ts.denominator)
    want = [c for bar in bar_chords(song) for c in bar]
    got = [parse_symbol(t).id for _, t in _markers(mid)]
    squeezed = [c for i, c in enumerate(want) if i == 0 or c != want[i - 1]]
    assert got == squeezed[: len(got)] and len(got) >= 3


def test_infill_follows_the_songs_chords_or_the_chart(edit_run, music21_dir, tmp_path):
    """By default the span is written on the song's own chords (its symbols over the span come out as
    the labeller reads the song); --chords re-harmonizes it; --free-chords lets the model choose. The
    kept notes stay (test_edit's checks) and nothing else changes in the file's own markers. (After the
    span, a file without symbols gets the labeller's: test_edit_chord_marks.)"""
    src = next(p for p in sorted(Path(music21_dir).rglob("*.mid")) if "chorale" in str(p))
    score = symusic.Score(str(src))
    song = label_chords(score)
    r = midigen("infill", "--ckpt", edit_run, src, "--bars", "2-3", "--seed", "1", "--out", tmp_path / "own")
    assert r.returncode == 0, r.stderr
    bar2 = int(np.flatnonzero(song.grid.bars == 1)[0])
    bar4 = int(np.flatnonzero(song.grid.bars == 3)[0])
    end = int(round(song.grid.starts[bar4]))
    marks = [m for m in _markers(_edit_files(r)[0]) if m[0] < end]
    expect = [song.labels[bar2]] + [song.labels[i] for i in range(bar2 + 1, bar4) if song.labels[i] != song.labels[i - 1]]
    assert [parse_symbol(t).id for _, t in marks] == [int(x) for x in expect]
    # the span snaps inward to the model's grid (its first step is after the bar line), but the chord it
    # starts under is marked on the bar line itself
    assert abs(marks[0][0] - song.grid.starts[bar2]) < 1

    r = midigen("infill", "--ckpt", edit_run, src, "--bars", "2-3", "--seed", "1", "--chords", "Eb | Bb7",
                "--out", tmp_path / "chart")
    assert r.returncode == 0, r.stderr
    marks = _markers(_edit_files(r)[0])
    assert [name for tick, name in marks if tick < end] == ["Eb", "Bb7"]
    assert abs(marks[0][0] - song.grid.starts[bar2]) < 1
    assert marks[1][0] == int(round(song.grid.starts[int(np.flatnonzero(song.grid.bars == 2)[0])]))

    r = midigen("infill", "--ckpt", edit_run, src, "--bars", "2-3", "--seed", "1", "--free-chords",
                "--out", tmp_path / "free")
    assert r.returncode == 0, r.stderr
    r = midigen("infill", "--ckpt", edit_run, src, "--bars", "2-3", "--free-chords", "--chords", "C", "--out", tmp_path)
    assert r.returncode == 2 and "--free-chords" in r.stderr


def test_arrange_on_the_songs_chords(edit_run, songs_dir, tmp_path):
    """Arrange writes its parts over the song's own chords by default: the file's symbols are the
    song's labelled changes, whole song, as the model reads them (the labeller on the song's tokens,
    whose durations are the codec's: nearly always what it reads in the file)."""
    src = sorted(Path(songs_dir).glob("*.mid"))[1]
    score = symusic.Score(str(src))
    song = label_chords(score)
    model_caps = json.loads(midigen("info", "--ckpt", edit_run).stdout)
    add = next(n for n in model_caps["instrument_names"] if "Bass" in n)
    r = midigen("arrange", "--ckpt", edit_run, src, "--add", add, "--seed", "4", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    marks = _markers(_edit_files(r)[0])
    codec = Codec()
    steps, ids = codec.chord_changes(codec.encode_score(codec.read_midi(src.read_bytes())))
    assert [parse_symbol(t).id for _, t in marks] == ids.tolist()
    assert [k for k, _ in marks] == np.round(steps * score.ticks_per_quarter / 24).astype(int).tolist()
    from_file = [int(song.labels[i]) for i in song.changes()]
    assert np.mean([a == b for a, b in zip(ids.tolist(), from_file)]) >= 0.8


def test_info_reports_chords(edit_run):
    r = midigen("info", "--ckpt", edit_run)
    info = json.loads(r.stdout)
    assert info["chords"] is True and info["codec_version"] == 4
    assert info["chord_vocabulary"] and all(parse_symbol(n) for n in info["chord_vocabulary"])


@pytest.fixture(scope="module")
def v3_run(songs_dir, tmp_path_factory):
    """A codec v3 dataset (prepare without chords) and a tiny edit-capable model trained on it."""
    data = tmp_path_factory.mktemp("v3_data")
    prepare([str(songs_dir)], data, workers=1, val_frac=0.1, test_frac=0.1, progress=False, chords=False)
    assert json.loads((data / "meta.json").read_text())["codec"]["version"] == 3
    run = tmp_path_factory.mktemp("v3_run") / "run"
    r = midigen("train", ROOT / "configs" / "test.toml", "--data", data, "--out", run, "--edit-fraction", "0.5",
                "--steps", "10", "--grad-accum", "1", "--block-size", "128", "--eval-interval", "10", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return run


def test_v3_checkpoint_samples_and_edits_without_chords(v3_run, songs_dir, tmp_path):
    """A v3 model samples and infills in its own layout (no CHORD ids anywhere, nothing a v4 codec would
    add), and --chords on it is a usage error that says it has no chords."""
    model, codec, _ = load_checkpoint(v3_run, "cpu")
    assert codec.version == 3 and not codec.has_chords
    (s,) = generate_samples(model, codec, num_samples=1, seconds=6, sampling=Sampling(seed=1), instruments=[0])
    assert s.tokens.max() < codec.vocab_size and codec.count_notes(s.tokens) > 0
    with pytest.raises(UsageError, match="no chords"):
        generate_samples(model, codec, seconds=4, instruments=[0], chords=parse_chords("C"))
    r = midigen("sample", "--ckpt", v3_run, "--seconds", "5", "--seed", "1", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    assert _markers(_written(r)[0]) == []
    r = midigen("sample", "--ckpt", v3_run, "--chords", "C G", "--out", tmp_path)
    assert r.returncode == 2 and "no chords" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    src = sorted(Path(songs_dir).glob("*.mid"))[0]
    r = midigen("infill", "--ckpt", v3_run, src, "--bars", "2-3", "--seed", "1", "--out", tmp_path / "e")
    assert r.returncode == 0, r.stderr
    assert _markers(_edit_files(r)[0]) == [(m.time, m.text) for m in symusic.Score(str(src)).markers]
    r = midigen("arrange", "--ckpt", v3_run, src, "--add", "0", "--chords", "C", "--out", tmp_path / "e")
    assert r.returncode == 2 and "no chords" in r.stderr
    info = json.loads(midigen("info", "--ckpt", v3_run).stdout)
    assert info["chords"] is False and info["chord_vocabulary"] == []
