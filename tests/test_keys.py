"""Key of a song: its first key signature, else the Krumhansl-Kessler estimate over its tokens."""
from __future__ import annotations

import json

import numpy as np
import pytest
import symusic

from midigen.music.codec import Codec, key_name, parse_key
from midigen.data.keys import (estimate_key, estimate_keys, pitch_class_histogram, score_signature_key, signature_key,
                                song_key)


def _melody(pitches, tpq=480, key_signature=None) -> symusic.Score:
    score = symusic.Score(tpq)
    score.tempos.append(symusic.Tempo(0, 120.0))
    track = symusic.Track("melody", 0, False)
    for i, p in enumerate(pitches):
        track.notes.append(symusic.Note(i * tpq, tpq, int(p), 80))
    score.tracks.append(track)
    if key_signature is not None:
        score.key_signatures.append(symusic.KeySignature(0, *key_signature))
    return score


def _key_of(score) -> tuple:
    codec = Codec()
    score = codec.read_midi(bytes(score.dumps_midi()))  # through a real MIDI file
    return song_key(codec, score, codec.encode_score(score))


def test_c_major_scale_is_c_major():
    assert _key_of(_melody([60, 62, 64, 65, 67, 69, 71, 72, 67, 64, 60])) == ("C major", "estimated")


def test_a_harmonic_minor_is_a_minor():
    line = [57, 59, 60, 62, 64, 65, 68, 69, 64, 60, 57, 64, 68, 69, 57]
    assert _key_of(_melody(line)) == ("A minor", "estimated")


def test_every_transposition_of_a_scale_is_found():
    codec = Codec()
    for tonic in range(12):
        major = _melody([60 + tonic + d for d in (0, 2, 4, 5, 7, 9, 11, 12, 7, 4, 0)])
        tokens = codec.encode_score(major)
        assert estimate_key(pitch_class_histogram(codec, tokens)) == tonic


@pytest.mark.parametrize("sharps, minor, name", [(0, 0, "C major"), (2, 0, "D major"), (-1, 1, "D minor"),
                                                  (3, 1, "F# minor"), (-3, 1, "C minor"), (-6, 0, "F# major"),
                                                  (7, 0, "C# major"), (0, 1, "A minor")])
def test_signature_table(sharps, minor, name):
    assert key_name(signature_key(sharps, bool(minor))) == name


def test_key_signature_in_a_generated_file_wins_over_the_notes():
    # C major notes, but the file says C minor (3 flats): the file's own signature is what counts
    score = _melody([60, 62, 64, 65, 67, 69, 71, 72], key_signature=(-3, 1))
    assert _key_of(score) == ("C minor", "signature")


def test_first_key_signature_in_time_is_used():
    score = _melody([60, 62, 64])
    score.key_signatures.append(symusic.KeySignature(960, 2, 0))
    score.key_signatures.append(symusic.KeySignature(0, -1, 1))
    assert key_name(score_signature_key(score)) == "D minor"


def test_drums_do_not_count():
    codec = Codec()
    score = _melody([60, 64, 67, 72, 67, 64, 60])
    drums = symusic.Track("drums", 0, True)
    for i in range(64):
        drums.notes.append(symusic.Note(i * 120, 60, 42 + (i % 3), 90))  # F#, G, G# over and over
    score.tracks.append(drums)
    h = pitch_class_histogram(codec, codec.encode_score(score))
    assert h[6] == h[8] == 0 and h[0] > 0


def test_real_music21_pieces(music21_dir):
    """The estimate agrees with the composers' key signatures on most real pieces; an E minor reel is E minor."""
    codec = Codec()
    agree = total = 0
    for path in sorted(music21_dir.rglob("*.mid")):
        score = codec.read_midi(path.read_bytes())
        sig = score_signature_key(score)
        if sig is None:
            continue
        total += 1
        agree += estimate_key(pitch_class_histogram(codec, codec.encode_score(score))) == sig
    assert total >= 20 and agree / total >= 0.6, (agree, total)
    reel = music21_dir / "fiddle" / "ryansMammoth" / "OldTempleHouseReel.mid"  # written with E minor's signature
    score = codec.read_midi(reel.read_bytes())
    assert score_signature_key(score) == parse_key("E minor")
    score.key_signatures = symusic.Score(score.ticks_per_quarter).key_signatures  # strip them: estimate only
    assert song_key(codec, score, codec.encode_score(score)) == ("E minor", "estimated")


def test_estimate_keys_gives_estimate_key_row_for_row():
    """prepare estimates a chunk's keys in one batch; it must give estimate_key's answer on every row,
    ties (symmetric histograms, where only the rounding decides) and flat or empty ones included."""
    rng = np.random.default_rng(3)
    ties = np.zeros((24, 12))
    for i in range(12):
        ties[i, i] = 1.0  # one pitch class: a tie between keys sharing it at equal weight
        ties[i + 12, i] = ties[i + 12, (i + 7) % 12] = 2.0
    rows = np.concatenate([rng.integers(0, 50, (3000, 12)), rng.integers(0, 3, (3000, 12)), np.zeros((3, 12)),
                           np.full((3, 12), 4.0), ties, np.round(rng.random((2000, 12)), 1)]).astype(np.float64)
    want = [estimate_key(h) for h in rows]
    assert estimate_keys(rows) == want
    assert None in want and len(set(want)) == 25  # every key, and None
    assert estimate_keys(np.zeros((0, 12))) == []


def test_prepare_records_keys(tmp_path):
    from midigen.data.prepare import prepare

    src = tmp_path / "src"
    src.mkdir()
    (src / "signed.mid").write_bytes(bytes(_melody([62, 66, 69, 74] * 3, key_signature=(2, 0)).dumps_midi()))
    (src / "plain.mid").write_bytes(bytes(_melody([57, 60, 64, 69, 68, 69, 64, 60, 57, 59, 60]).dumps_midi()))
    prepare([str(src)], tmp_path / "out", workers=1, progress=False)
    rows = {r["name"].split("/")[-1]: r for r in map(json.loads, (tmp_path / "out" / "files.jsonl").open())}
    assert (rows["signed.mid"]["key"], rows["signed.mid"]["key_source"]) == ("D major", "signature")
    assert (rows["plain.mid"]["key"], rows["plain.mid"]["key_source"]) == ("A minor", "estimated")
    # seconds to the last onset (what the SHIFT tokens add up to): 10 quarter notes at 120 BPM
    assert rows["plain.mid"]["seconds"] == pytest.approx(5.0, abs=0.01)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["keys"] == {"D major": 1, "A minor": 1}
    assert meta["key_sources"] == {"estimated": 1, "signature": 1}
    assert parse_key(rows["plain.mid"]["key"]) == 21
