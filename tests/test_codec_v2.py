"""Codec v2: exact common tempos, control and editing tokens, v1 compatibility, total decoding of huge inputs."""
from __future__ import annotations

import numpy as np
import pytest
import symusic

from midigen.music.codec import (CODEC_VERSION, DENSITY_LEVELS, MARKERS, N_KEYS, N_STYLES, Codec, CodecError, CodecParams,
                           Kind, key_name, parse_key)


@pytest.fixture(scope="module")
def codec():
    return Codec()


def _one_note_song(bpm: float) -> symusic.Score:
    s = symusic.Score(480)
    s.tempos.append(symusic.Tempo(0, bpm))
    t = symusic.Track("p", 0, False)
    t.notes.append(symusic.Note(0, 480, 60, 90))
    s.tracks.append(t)
    return s


def test_integer_tempos_round_trip_exactly(codec):
    """Bug: 120 BPM came back as 119.41 (v1's bins); every integer BPM 40..250 must come back within 0.05%."""
    for bpm in range(40, 251):
        score = codec.decode(codec.encode_score(_one_note_song(float(bpm))))
        got = score.tempos[0].qpm
        assert abs(got - bpm) / bpm <= 5e-4, (bpm, got)


def test_tempo_bins_stay_about_one_percent_apart(codec):
    gaps = np.diff(np.log(codec.tempo_bpm))
    assert np.exp(gaps.max()) <= 1.01 + 1e-9
    assert codec.tempo_bpm[0] == 16.0 and codec.tempo_bpm[-1] == 512.0


def test_v1_codec_still_loads_with_its_own_vocabulary():
    v1 = Codec(version=1)
    assert v1.vocab_size == 18161 and not v1.has_controls
    d = v1.to_dict()
    d["params"].pop("exact_tempo_min")  # a v1 codec.json written before these fields existed
    d["params"].pop("exact_tempo_max")
    again = Codec.from_dict(d)
    assert again.version == 1 and again.vocab_size == 18161
    assert abs(again.tempo_of(again.tempo_token(120.0)) - 119.41) < 0.01  # v1 keeps its old bins
    with pytest.raises(CodecError):
        again.key_token(0)


def test_unknown_version_and_inconsistent_tpq_are_refused(codec):
    d = codec.to_dict()
    with pytest.raises(CodecError):
        Codec.from_dict({**d, "version": 99})
    bad = {**d, "params": {**d["params"], "decode_tpq": 500}}  # not a multiple of 24 steps per quarter
    with pytest.raises(CodecError, match="decode_tpq"):
        Codec.from_dict(bad)


def test_control_and_marker_ranges(codec):
    assert codec.version == CODEC_VERSION == 4 and codec.controls_first and codec.has_chords
    kinds = codec.kinds(np.arange(codec.vocab_size))
    assert (kinds == Kind.STYLE).sum() == N_STYLES
    assert (kinds == Kind.KEY).sum() == N_KEYS
    assert (kinds == Kind.DENSITY).sum() == len(DENSITY_LEVELS)
    assert (kinds == Kind.MARKER).sum() == len(MARKERS)
    names = {codec.token_name(t) for t in (codec.EDIT, codec.HOLE, codec.HOLE_END, codec.FILL)}
    assert names == set(MARKERS)
    assert codec.token_name(codec.key_token(parse_key("F# minor"))) == "KEY_F#_minor"


def test_transposition_moves_the_key(codec):
    table = codec.transpose_table(2)
    assert table[codec.key_token(parse_key("C"))] == codec.key_token(parse_key("D"))
    assert table[codec.key_token(parse_key("A minor"))] == codec.key_token(parse_key("B minor"))
    assert codec.transpose_table(-1)[codec.key_token(parse_key("C"))] == codec.key_token(parse_key("B"))
    assert table[codec.style_token(3)] == codec.style_token(3)


@pytest.mark.parametrize("text,key", [("D", 2), ("d major", 2), ("F# minor", 18), ("Bbm", 22), ("Eb", 3),
                                      ("c#", 1), ("Gb major", 6), ("A minor", 21)])
def test_parse_key(text, key):
    assert parse_key(text) == key
    assert parse_key(key_name(key)) == key


@pytest.mark.parametrize("text", ["H", "X minor", "C dorian", ""])
def test_parse_key_refuses_nonsense(text):
    with pytest.raises(ValueError):
        parse_key(text)


def test_header_length_covers_controls_and_edit_targets(codec):
    head = [codec.BOS, codec.inst_token(0), codec.inst_token(33), codec.tempo_token(100), codec.ts_token(3, 4),
            codec.key_token(2), codec.density_token(1), codec.style_token(0), codec.EDIT, codec.inst_token(33)]
    body = [codec.shift_token(24), codec.note_token(0, 60), codec.dv_token(24, 80)]
    assert codec.header_length(np.array(head + body)) == len(head)
    ev = codec.decode_events(np.array(head + body + [codec.EOS]))
    assert ev["header_instruments"] == [0, 33] and ev["time_signature"] == (3, 4)
    assert len(ev["notes"]["time"]) == 1


def test_decoding_stops_at_fill(codec):
    toks = [codec.BOS, codec.inst_token(0), codec.tempo_token(120), codec.note_token(0, 60), codec.dv_token(4, 80),
            codec.FILL, codec.note_token(0, 62), codec.dv_token(4, 80), codec.EOS]
    assert len(codec.decode_events(np.array(toks))["notes"]["pitch"]) == 1


def test_decoding_is_total_past_int32_ticks(codec):
    """Bug: ticks were cast to int32 and wrapped past ~107M steps; a huge song still decodes in order."""
    n_shifts = (2**31 // 20) // 96 + 1000  # past int32 at 480 ticks per quarter
    toks = np.concatenate((
        [codec.BOS, codec.inst_token(0), codec.tempo_token(120), codec.note_token(0, 60), codec.dv_token(24, 80)],
        np.full(n_shifts, codec.shift_token(96)), [codec.note_token(0, 64), codec.dv_token(24, 80), codec.EOS]))
    score = codec.decode(toks)
    midi = bytes(score.dumps_midi())
    back = symusic.Score.from_midi(midi)
    notes = back.tracks[0].notes.numpy()
    assert len(notes["time"]) == 2 and (notes["time"] >= 0).all()
    assert notes["time"][1] == n_shifts * 96 * back.ticks_per_quarter // 24
