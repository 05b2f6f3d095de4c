"""Music features and the generated-vs-real overlap (`midigen eval --samples`)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from midigen.eval import metrics
from midigen.music.codec import Codec
from songgen import make_song, write_songs


def test_overlap_area_identical_and_disjoint():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 400)
    assert metrics.overlap_area(a, rng.normal(0, 1, 400)) > 0.85
    assert metrics.overlap_area(a, rng.normal(8, 1, 400)) < 0.01
    assert metrics.overlap_area(np.zeros(5), np.zeros(7)) == 1.0
    assert metrics.overlap_area(np.zeros(0), a) == 0.0


def test_piece_features_on_a_known_piece():
    codec = Codec()
    # C major scale, one note per quarter at 120 BPM, plus a kick on every beat
    tokens = [codec.BOS, codec.inst_token(0), codec.inst_token(128), codec.tempo_token(120.0)]
    for i, p in enumerate([60, 62, 64, 65, 67, 69, 71, 72]):
        if i:
            tokens.append(codec.shift_token(24))
        tokens += [codec.note_token(0, p), codec.dv_token(24, 80), codec.note_token(128, 36), codec.dv_token(2, 100)]
    tokens.append(codec.EOS)
    f = metrics.piece_features(codec, np.array(tokens))
    assert f["seconds"] == pytest.approx(4.0, rel=0.02)  # 8 quarters at 120 BPM
    assert f["in_scale_rate"] == 1.0
    assert f["pitch_range"] == 12
    assert f["polyphony"] == pytest.approx(1.0)
    assert f["drum_density"] == pytest.approx(2.0, rel=0.02)
    assert f["notes_per_second"] == pytest.approx(4.0, rel=0.02)
    # 7 pitch classes, C twice: entropy a little below log2(7)
    assert 2.6 < f["pitch_class_entropy"] < np.log2(7)


def test_polyphony_counts_chords():
    codec = Codec()
    tokens = [codec.BOS, codec.inst_token(0), codec.tempo_token(100.0)]
    for p in (60, 64, 67):
        tokens += [codec.note_token(0, p), codec.dv_token(48, 80)]
    tokens.append(codec.EOS)
    assert metrics.piece_features(codec, np.array(tokens))["polyphony"] == pytest.approx(3.0)


def test_compare_samples_cli(tmp_path, tiny_dataset):
    """Songs like the dataset's overlap strongly; the JSON line has every feature."""
    samples = tmp_path / "samples"
    write_songs(samples, 12, seed0=5000, bars=16)
    res = subprocess.run(
        [sys.executable, "-m", "midigen", "eval", "--samples", str(samples), "--data", str(tiny_dataset), "--split", "test"],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(out["overlap"]) == set(metrics.FEATURES)
    assert all(0.0 <= v <= 1.0 for v in out["overlap"].values())
    assert out["samples"] == 12 and out["real"] >= 1


def test_compare_samples_tells_different_music_apart(tmp_path, tiny_dataset):
    """Drumless, sparse pieces against drum-heavy songs: the drum-density overlap collapses."""
    codec = Codec()
    samples = tmp_path / "sparse"
    samples.mkdir()
    for s in range(6):
        score = make_song(9000 + s, bars=12)
        score.tracks = [t for t in score.tracks if not t.is_drum]
        (samples / f"s{s}.mid").write_bytes(codec.decode_to_midi(codec.encode_score(score)))
    same = tmp_path / "same"
    write_songs(same, 6, seed0=9100, bars=12)
    data_has_drums = metrics.compare_samples(same, tiny_dataset)["drum_density_real_mean"] > 0
    if not data_has_drums:
        pytest.skip("the fixture's test split has no drums")
    diff = metrics.compare_samples(samples, tiny_dataset)
    assert diff["overlap"]["drum_density"] < 0.2


def test_compare_samples_bad_input(tmp_path, tiny_dataset):
    res = subprocess.run(
        [sys.executable, "-m", "midigen", "eval", "--samples", str(tmp_path / "nope"), "--data", str(tiny_dataset)],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    res = subprocess.run(
        [sys.executable, "-m", "midigen", "eval", "--samples", str(empty), "--data", str(tiny_dataset)],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 2 and "no readable MIDI" in res.stderr


# ----- chord adherence: the share of note-time inside the requested chord ---------------------------


def _score(notes, drums=()) -> "symusic.Score":
    """A 4/4 score at 480 ticks per quarter: (start beat, beats, pitch) piano notes, and drum hits."""
    import symusic

    s = symusic.Score(480)
    s.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    piano = symusic.Track("piano", 0, False)
    for beat, length, pitch in notes:
        piano.notes.append(symusic.Note(int(beat * 480), int(length * 480), pitch, 80))
    s.tracks.append(piano)
    if drums:
        kit = symusic.Track("drums", 0, True)
        for beat in drums:
            kit.notes.append(symusic.Note(int(beat * 480), 120, 42, 90))
        s.tracks.append(kit)
    return s


def _adherence(score, chart: str):
    from midigen.music.chordtext import chart_beats, parse_chords
    from midigen.music.timing import beat_grid

    grid = beat_grid(score)
    return metrics.chord_adherence(score, grid, chart_beats(parse_chords(chart), grid)), grid


def test_adherence_of_a_triad_under_itself_and_under_another_chord():
    c_major = _score([(0, 4, 60), (0, 4, 64), (0, 4, 67)])
    assert _adherence(c_major, "C")[0] == 1.0
    assert _adherence(c_major, "Am")[0] == pytest.approx(2 / 3)  # C and E are A minor's, G is not
    assert _adherence(c_major, "F#")[0] == 0.0
    assert _adherence(c_major, "C7")[0] == 1.0  # a seventh chord holds its triad


def test_adherence_weighs_notes_by_the_time_they_sound_under_each_chord():
    """C held two bars under | C | G |, then a beat of D under G: (4 + 1) of 9 beats are chord tones.
    Drums are not pitched music and count for nothing."""
    held = [(0, 8, 48), (4, 1, 62)]
    assert _adherence(_score(held), "C G")[0] == pytest.approx(5 / 9)
    assert _adherence(_score(held, drums=range(8)), "C G")[0] == pytest.approx(5 / 9)
    # two chords a bar, each two beats: C's first half under C, its second under G
    assert _adherence(_score([(0, 4, 60)]), "C G | C G")[0] == pytest.approx(0.5)


def test_no_chord_asks_for_nothing_and_a_silent_request_has_no_share():
    score = _score([(0, 4, 60), (4, 4, 61)])  # C in bar 1, C# in bar 2
    assert _adherence(score, "C N.C.")[0] == 1.0  # bar 2 asks for no chord: its C# is not counted
    grid = _adherence(score, "C")[1]
    assert metrics.chord_note_time(score, grid, np.full(len(grid), 108)) == (0.0, 0.0)
    assert metrics.chord_adherence(score, grid, np.full(len(grid), 108)) is None


def test_a_real_piece_under_its_own_labels_sits_high(music21_dir):
    """A Bach chorale under the labeller's own chords: most of its note-time is chord tones, passing
    notes are not (the ceiling the benchmark compares generated music with)."""
    import symusic

    from midigen.music.chords import label_chords

    path = sorted((music21_dir / "chorale").rglob("*.mid"))[0]
    score = symusic.Score(str(path))
    song = label_chords(score)
    share = metrics.chord_adherence(score, song.grid, song.labels)
    assert 0.7 < share < 1.0
    shifted = np.where(song.labels < 108, (song.labels + 9 * 6) % 108, 108)  # every root a tritone away
    assert metrics.chord_adherence(score, song.grid, shifted) < share - 0.3
