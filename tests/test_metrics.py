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
