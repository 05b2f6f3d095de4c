"""The compiled encoder (prepare's hot path) against the numpy encoder, which is the reference.

Every comparison is token for token, on real music21 pieces, generated songs, broken files and
scores built to reach the odd corners (duplicates, dropped notes, far onsets, tempo edge cases,
disordered chords, sparse files). Garbage serialized states must be refused, never crash.
"""
from __future__ import annotations

import numpy as np
import pytest
import symusic

from hostile import write_hostile
from midigen.data.keys import pitch_class_histogram
from midigen.music import codec_jit
from midigen.music.codec import Codec, CodecError

CODEC = Codec()


@pytest.fixture(scope="module")
def fast():
    assert codec_jit.available(CODEC), "the compiled encoder failed its self-check on this symusic"
    return codec_jit.CompiledEncoder(CODEC)


def assert_same(fast, score, label=""):
    want = CODEC.encode_scores([score])[0]
    got, notes, secs, facts = fast.encode_one(score)
    if isinstance(want, CodecError):
        assert isinstance(got, CodecError) and str(got) == str(want), label
        return None
    assert isinstance(got, np.ndarray) and got.dtype == np.uint16, label
    np.testing.assert_array_equal(got, want, err_msg=label)
    assert notes == CODEC.count_notes(want), label
    assert_same_facts(facts, want, label)
    return secs


def assert_same_facts(facts, tokens, label):
    """The song facts the compiled encoder gathers equal what prepare would read off the tokens."""
    histogram, ts_token = facts
    np.testing.assert_array_equal(histogram, pitch_class_histogram(CODEC, tokens), err_msg=label)
    head = tokens[: CODEC.header_length(tokens)]
    ts = [int(t) for t in head if CODEC.ts_start <= t < CODEC.inst_start]
    assert ts_token == (ts[0] if ts else -1), label


def test_real_and_generated_files_encode_identically(fast, songs_dir, music21_dir):
    paths = sorted(songs_dir.glob("*.mid")) + sorted(music21_dir.rglob("*.mid"))
    assert len(paths) >= 80
    for p in paths:
        assert_same(fast, CODEC.read_midi(p.read_bytes()), p.name)


def test_broken_files_that_parse_encode_identically(fast, tmp_path):
    write_hostile(tmp_path)
    n = 0
    for p in sorted(tmp_path.rglob("*.mid*")):
        if not p.is_file() or p.stat().st_size > 4_000_000:
            continue
        try:
            score = CODEC.read_midi(p.read_bytes())
        except CodecError:
            continue
        assert_same(fast, score, p.name)
        n += 1
    assert n >= 10


def test_seconds_match_prepare_length_rule(fast, songs_dir):
    from midigen.data.prepare import _Encoder

    enc = _Encoder()
    for p in sorted(songs_dir.glob("*.mid"))[:10]:
        score = CODEC.read_midi(p.read_bytes())
        secs = assert_same(fast, score, p.name)
        assert secs == pytest.approx(enc.seconds(CODEC.encode_scores([score])[0]), rel=1e-9)


def build(tpq=480, tracks=(), tempos=(), time_sigs=()):
    s = symusic.Score(tpq)
    for t, qpm in tempos:
        s.tempos.append(symusic.Tempo(t, qpm))
    for t, num, den in time_sigs:
        s.time_signatures.append(symusic.TimeSignature(t, num, den))
    for program, drum, notes in tracks:
        tr = symusic.Track("t", program, drum)
        for t, d, p, v in notes:
            tr.notes.append(symusic.Note(t, d, p, v))
        s.tracks.append(tr)
    return s


EDGE_CASES = {
    "duplicates keep the first": build(tracks=[(0, False, [(0, 480, 60, 100), (0, 10, 60, 20), (0, 480, 62, 90)]),
                                               (0, False, [(0, 960, 60, 50)])]),
    "dropped notes": build(tracks=[(5, False, [(0, 480, 60, 0), (0, 480, -3, 90), (-20, 480, 61, 90),
                                               (10, 480, 64, 90)]), (7, False, [(0, 100, 60, 0)])]),
    "no notes left": build(tracks=[(5, False, [(0, 480, 60, 0)])]),
    "empty score": build(),
    "far onset": build(tpq=1, tracks=[(0, False, [(0, 1, 60, 90), (2**31 - 1, 1, 62, 90)])]),
    "long silence": build(tracks=[(0, False, [(0, 480, 60, 90), (480 * 4000, 480, 62, 90)])]),
    "tempo edge cases": build(
        tracks=[(0, False, [(i * 240, 240, 60 + i % 12, 80) for i in range(40)])],
        tempos=[(0, 100), (0, 140), (960, 140), (960, 90), (1920, 90.5), (2880, 200), (9600, 60), (99999, 30)]),
    "extreme tempos": build(tracks=[(0, False, [(0, 480, 60, 90), (4800, 480, 62, 90)])],
                            tempos=[(0, 1000.0), (960, 5.0), (1920, 120)]),
    "time signatures": build(tracks=[(0, False, [(0, 480, 60, 90)])],
                             time_sigs=[(960, 3, 4), (0, 5, 7), (0, 6, 8)]),
    "odd tpq": build(tpq=7, tracks=[(0, True, [(i * 3, i, 36 + i % 5, 100) for i in range(50)])]),
    "huge tpq": build(tpq=32767, tracks=[(1, False, [(i * 16383, 1, 60, 90) for i in range(50)])]),
    "reversed big chord": build(tracks=[(0, False, [(0, 480, 127 - i % 128, 90) for i in range(3000)])]),
    "drums and programs": build(tracks=[(200, False, [(0, 480, 60, 90)]), (0, True, [(0, 480, 36, 127)]),
                                        (127, False, [(240, 5000000, 127, 1)])]),
}


@pytest.mark.parametrize("name", EDGE_CASES)
def test_edge_cases_encode_identically(fast, name):
    assert_same(fast, EDGE_CASES[name], name)


def test_random_scores_encode_identically(fast):
    rng = np.random.default_rng(5)
    for k in range(200):
        tracks = []
        for _ in range(int(rng.integers(0, 6))):
            n = int(rng.integers(0, 80))
            onsets = np.sort(rng.integers(0, int(rng.choice([50, 5000, 2**20, 2**30])), n))
            notes = [(int(t), int(rng.integers(-5, 3000)), int(rng.integers(-2, 128)), int(rng.integers(0, 128)))
                     for t in onsets]
            tracks.append((int(rng.integers(0, 128)), bool(rng.random() < 0.2), notes))
        tempos = [(int(rng.integers(0, 20000)), float(rng.uniform(5, 600))) for _ in range(int(rng.integers(0, 5)))]
        sigs = [(int(rng.integers(0, 5000)), int(rng.integers(1, 20)), int(rng.choice([1, 2, 4, 8, 16, 32])))
                for _ in range(int(rng.integers(0, 3)))]
        assert_same(fast, build(int(rng.choice([1, 24, 96, 480, 1000])), tracks, tempos, sigs), f"random {k}")


def test_garbage_states_are_refused_not_crashed(fast):
    rng = np.random.default_rng(11)
    good = np.frombuffer(CODEC.read_midi(build(tracks=[(0, False, [(0, 480, 60, 90)])]).dumps_midi())
                         .__getstate__(), dtype=np.uint8)
    cases = [good[:k] for k in range(len(good))]
    cases += [rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8) for _ in range(2000)]
    for k in range(500):
        b = good.copy()
        b[rng.integers(0, len(b), 3)] = rng.integers(0, 256, 3)
        cases.append(b)
    for buf in cases:
        out = np.zeros(len(buf) + 140, dtype=np.uint16)
        status, n, notes, secs = codec_jit.encode_state(buf, out, 0, fast._consts, *fast._tables, np.zeros(15),
                                                  np.zeros((3, len(buf) // 12 + 1)))
        assert status in (codec_jit.OK, codec_jit.NO_NOTES, codec_jit.ABSURD, codec_jit.LAYOUT)
        assert 0 <= n <= len(out)
    assert codec_jit.encode_state(good[:-1], np.zeros(300, np.uint16), 0, fast._consts,
                                  *fast._tables, np.zeros(15), np.zeros((3, len(good) // 12 + 1)))[0] == codec_jit.LAYOUT
