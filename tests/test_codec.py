"""The token codec against its targets: compactness, fidelity, total decoding, persistence, CLI."""
from __future__ import annotations

import io
import json
import subprocess

import mido
import numpy as np
import pytest
import symusic

from conftest import PYTHON, REPO
from hostile import write_hostile
from midigen.music.codec import DRUMS, Codec, CodecError, CodecParams, Kind, fidelity
from songgen import make_song, make_song_bytes


@pytest.fixture(scope="module")
def codec():
    return Codec()


def test_vocab_fits_uint16(codec):
    assert codec.vocab_size < 65536
    d = codec.to_dict()
    assert d["vocab_size"] == codec.vocab_size == max(hi for _, hi in d["ranges"].values())


def test_tokens_per_note_on_generated_songs(codec, songs_dir):
    tokens = notes = 0
    for p in sorted(songs_dir.glob("*.mid")):
        t = codec.encode(p.read_bytes())
        assert t.dtype == np.uint16 and t[0] == codec.BOS and t[-1] == codec.EOS
        tokens += len(t)
        notes += codec.count_notes(t)
    assert tokens / notes <= 3.0, tokens / notes


@pytest.mark.parametrize("which", ["songs", "music21"])
def test_fidelity_targets(codec, songs_dir, music21_dir, which):
    folder = songs_dir if which == "songs" else music21_dir
    paths = sorted(folder.rglob("*.mid"))[:30]
    sums = {"onset_ok": 0.0, "duration_ok": 0.0, "velocity_ok": 0.0}
    n_total = 0
    worst_len = 0.0
    for p in paths:
        score = codec.read_midi(p.read_bytes())
        decoded = codec.decode(codec.encode_score(score))
        f = fidelity(codec, score, decoded)
        for k in sums:
            sums[k] += f[k] * f["notes_in"]
        n_total += f["notes_in"]
        worst_len = max(worst_len, f["length_error"])
    onset, dur, vel = (sums[k] / n_total for k in ("onset_ok", "duration_ok", "velocity_ok"))
    assert onset >= 0.995, onset
    assert dur >= 0.98, dur
    assert vel >= 0.99, vel
    assert worst_len <= 0.01, worst_len


def _parses_everywhere(midi: bytes) -> None:
    symusic.Score.from_midi(midi)
    mido.MidiFile(file=io.BytesIO(midi))


def test_decoding_is_total(codec):
    rng = np.random.default_rng(0)
    for k in range(40):
        n = int(rng.integers(0, 3000))
        if k % 4 == 0:  # any 16-bit id, most outside the vocabulary
            ids = rng.integers(0, 65536, n)
        elif k % 4 == 1:  # ids in the vocabulary, in random order
            ids = rng.integers(0, codec.vocab_size, n)
        elif k % 4 == 2:  # raw garbage bytes read as uint16
            ids = np.frombuffer(rng.bytes(2 * n), dtype=np.uint16)
        else:  # plausible NOTE/DV/SHIFT mixtures with stray BOS/EOS
            pool = np.concatenate(([codec.BOS, codec.EOS], np.arange(codec.shift_start, codec.vocab_size)))
            ids = rng.choice(pool, n)
        midi = codec.decode_to_midi(ids)
        _parses_everywhere(midi)
        ev = codec.decode_events(ids)
        assert np.all(ev["notes"]["pitch"] < 128) and np.all(ev["notes"]["duration"] >= 1)
    _parses_everywhere(codec.decode_to_midi(np.zeros(0, dtype=np.uint16)))


def test_encode_decode_encode_is_stable(codec):
    t1 = codec.encode(make_song_bytes(11))
    t2 = codec.encode(codec.decode_to_midi(t1))
    assert codec.count_notes(t2) == codec.count_notes(t1)
    assert abs(len(t2) - len(t1)) <= 0.02 * len(t1)


def test_transposition_table(codec):
    tokens = codec.encode(make_song_bytes(21)).astype(np.int64)
    up = codec.transpose_table(2)
    moved = up[tokens]
    notes_in = codec.decode_events(tokens)["notes"]
    if np.any(moved < 0):  # a pitch left the range: the caller must drop this transposition
        pytest.skip("song too close to the pitch limits")
    notes_out = codec.decode_events(moved)["notes"]
    drums = notes_in["instrument"] == DRUMS
    assert np.array_equal(notes_out["pitch"][~drums], notes_in["pitch"][~drums] + 2)
    assert np.array_equal(notes_out["pitch"][drums], notes_in["pitch"][drums])
    assert np.array_equal(notes_out["time"], notes_in["time"])
    non_note = ((tokens < codec.note_start) | (tokens >= codec.dv_start)) & (codec.kinds(tokens) != Kind.CHORD)
    assert np.array_equal(moved[non_note], tokens[non_note])  # chords move (tests/test_chord_tokens.py)
    back = codec.transpose_table(-2)[moved]
    assert np.array_equal(back, tokens)
    # out-of-range pitches map to -1, drums never do
    hi = codec.transpose_table(12)
    assert hi[codec.note_token(0, 120)] == -1 and hi[codec.note_token(0, 100)] == codec.note_token(0, 112)
    assert hi[codec.note_token(DRUMS, 120)] == codec.note_token(DRUMS, 120)


def test_json_round_trip(codec, tmp_path):
    again = Codec.from_json(codec.to_json())
    assert again.to_dict() == codec.to_dict() and again.vocab_size == codec.vocab_size
    codec.save(tmp_path / "codec.json")
    assert Codec.load(tmp_path / "codec.json").to_dict() == codec.to_dict()
    song = make_song_bytes(4)
    assert np.array_equal(again.encode(song), codec.encode(song))
    d = codec.to_dict()
    d["version"] = 999
    with pytest.raises(CodecError):
        Codec.from_dict(d)
    other = Codec(CodecParams(velocity_levels=8))
    assert Codec.from_dict(other.to_dict()).vocab_size == other.vocab_size != codec.vocab_size


def test_hostile_files_raise_only_codec_errors(codec, tmp_path):
    from midigen.music.smf import sanitize_smf

    write_hostile(tmp_path)
    for p in sorted(tmp_path.iterdir()):
        if p.is_dir() or p.stat().st_size > 4_000_000:
            continue
        try:
            t = codec.encode(sanitize_smf(p.read_bytes()))
        except CodecError as e:
            assert str(e)
        else:
            assert t[0] == codec.BOS and t[-1] == codec.EOS


def test_long_silence_is_shortened(codec):
    score = make_song(3, bars=4)
    tr = score.tracks[1]
    tr.notes.append(symusic.Note(1 << 27, 100, 60, 90))
    t = codec.encode(bytes(score.dumps_midi()))
    assert len(t) < len(codec.encode(make_song_bytes(3, bars=4))) + 20


def test_roundtrip_cli(tmp_path):
    src = tmp_path / "in.mid"
    src.write_bytes(make_song_bytes(8))
    r = subprocess.run([PYTHON, "-m", "midigen", "roundtrip", str(src), str(tmp_path / "out.mid")], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["notes_in"] > 0 and out["tokens"] > out["notes_in"] and out["notes_out"] > 0
    _parses_everywhere((tmp_path / "out.mid").read_bytes())
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"not midi at all")
    r = subprocess.run([PYTHON, "-m", "midigen", "roundtrip", str(bad), str(tmp_path / "o2.mid")], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""  # a bad file the user pointed at
    assert len(r.stderr.strip().splitlines()) == 1 and "error" in r.stderr
    assert not (tmp_path / "o2.mid").exists()
