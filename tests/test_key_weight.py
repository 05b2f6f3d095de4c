"""The key weight: a song asked for in a key keeps to its scale because a pitched note outside it gets
``key_weight`` nats less, through the one logit bias the chord weight uses (``Grammar.tone_bias``);
drums, shifts and the rest are untouched, and without a key or weight nothing changes."""
from __future__ import annotations

import numpy as np
import pytest

from clirun import midigen
from midigen.errors import UsageError
from midigen.generate.grammar import Grammar
from midigen.generate.sample import generate_samples, sample_score
from midigen.generate.sampling import MAX_CHORD_WEIGHT, Sampling
from midigen.model.checkpoint import load_checkpoint
from midigen.music.chords import chord_id
from midigen.music.codec import DRUMS, N_PITCHES, Codec

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_bias_takes_nats_off_pitched_notes_outside_the_scale_only():
    codec = Codec()
    g = Grammar(codec, 2)
    assert g.tone_bias(0.0, 2.0, None) is None and g.tone_bias(0.0, 0.0, 9) is None
    bias = g.tone_bias(0.0, 2.0, 21).numpy()  # A minor: A B C D E F G and the leading tone G#
    assert bias.shape == (2, codec.vocab_size) and (bias[0] == bias[1]).all()
    off = np.flatnonzero(bias[0] < 0)
    inst, pitch = np.divmod(off - codec.note_start, N_PITCHES)
    assert set(pitch % 12) == {1, 3, 6, 10} and (inst < DRUMS).all() and (bias[0][off] == -2.0).all()
    assert len(off) == DRUMS * sum(1 for p in range(N_PITCHES) if p % 12 in (1, 3, 6, 10))
    assert not (bias[0] > 0).any()


def test_the_key_and_a_given_chord_add_up_in_one_bias():
    codec = Codec()
    g = Grammar(codec, 1)
    for t in codec.header([0], 120.0, (4, 4)):
        g.advance([t])
    g.close_header()
    g.force_chords([0], [chord_id(2, "7")])  # D7: D F# A C, F# outside C major
    g.advance([codec.chord_token(chord_id(2, "7"))])
    both = g.tone_bias(2.5, 2.0, 0)[0].numpy()
    f_sharp, d, c_sharp = (codec.note_start + 60 + k for k in (6, 2, 1))
    assert both[f_sharp] == pytest.approx(0.5) and both[d] == pytest.approx(2.5) and both[c_sharp] == -2.0


def test_a_bad_key_weight_is_a_usage_error():
    for bad in ({"key_weight": -1.0}, {"key_weight": MAX_CHORD_WEIGHT + 1}, {"key": 24}, {"vary_weight": -1.0}):
        with pytest.raises(UsageError):
            Sampling(**bad)


def test_the_weight_keeps_the_notes_in_the_key(edit_run):
    """Same seeds: a strong key weight puts nearly all pitched note-time in C major's scale."""
    model, codec, _ = load_checkpoint(edit_run, "cpu")
    scale = {0, 2, 4, 5, 7, 9, 11}
    share = {}
    for w in (0.0, 6.0):
        scores = [sample_score(codec, s) for s in generate_samples(
            model, codec, num_samples=4, seconds=12, sampling=Sampling(seed=3, key=0, key_weight=w))]
        notes = [(n.pitch % 12, n.duration) for s in scores for t in s.tracks if not t.is_drum for n in t.notes]
        share[w] = sum(d for p, d in notes if p in scale) / sum(d for _, d in notes)
    assert share[6.0] >= 0.95 and share[6.0] > share[0.0] + 0.1, share


def test_key_weight_needs_a_form(edit_run, tmp_path):
    r = midigen("sample", "--ckpt", edit_run, "--key-weight", "2", "--out", tmp_path)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "--key-weight and --vary-weight need --form" in last, r.stderr


def test_bar_tones_lean_each_stretch_toward_its_own_pitch_classes():
    """A variation's rewritten bars lean toward their model bars' pitch classes (``favour_tones``) through
    the same bias, the stretch in force following the song's time; drums and other ids untouched."""
    codec = Codec()
    g = Grammar(codec, 2)
    for t in codec.header([0], 120.0, (4, 4)):
        g.advance([t, t])
    g.close_header()
    weights = np.zeros((2, 12))
    weights[0, [0, 7]] = 1.0, 0.5  # bar 1: C, some G
    weights[1, 2] = 1.0  # bar 2: D
    g.favour_tones([0, 96], weights, onsets=[24, 108])  # the model bars' notes start at steps 24 and 108
    assert g.tone_bias(0.0, 0.0, None, 0.0) is None
    c, gg, d, drum = (codec.note_start + k for k in (60, 67, 62, DRUMS * N_PITCHES + 36))
    first = g.tone_bias(0.0, 0.0, None, 3.0).numpy()
    assert (first[:, [c, gg, d, drum]] == [3.0, 1.5, 0.0, 0.0]).all()
    assert first[0, codec.shift_token(24)] == 3.0 and first[0, codec.shift_token(23)] == 0.0  # lands on an onset
    assert np.count_nonzero(first[0]) == 2 + DRUMS * (N_PITCHES // 12 * 2 + (N_PITCHES % 12 > 7) + (N_PITCHES % 12 > 0))
    g.advance([codec.shift_token(96), codec.shift_token(40)])  # row 0 reaches bar 2, row 1 stays in bar 1
    now = g.tone_bias(0.0, 0.0, None, 3.0).numpy()
    assert (now[0, [c, gg, d]] == [0.0, 0.0, 3.0]).all() and (now[1, [c, gg, d]] == [3.0, 1.5, 0.0]).all()
    assert now[0, codec.shift_token(12)] == 3.0 and now[1, codec.shift_token(68)] == 3.0  # each from where it is
    with_key = g.tone_bias(0.0, 2.0, 0, 3.0).numpy()  # the key's term adds up with it in one bias
    assert with_key[0, d] == 3.0 and with_key[0, c] == 0.0 and with_key[0, codec.note_start + 61] == -2.0
    assert (first[:, codec.EOS] == -3.0).all()  # a stretch whose model bar plays is not to fall silent


def test_a_fill_holds_an_edits_end_back_until_its_last_beat_only():
    """A form section written over silence is filled to its end: ``fill_weight`` nats off EOS while the
    written part is more than a beat before its span's end, nothing once it is within it, nothing on any
    other id, and nothing outside an edit."""
    codec = Codec()
    spq = codec.params.steps_per_quarter
    g = Grammar(codec, 2)
    for t in codec.header([0], 120.0, (4, 4)):
        g.advance([t, t])
    g.close_header()
    assert g.tone_bias(0.0, 0.0, None, 0.0, 4.0) is None  # not an edit: no span to fill
    g.for_edit([0], 16 * spq, 500)
    early = g.tone_bias(0.0, 0.0, None, 0.0, 4.0).numpy()
    assert (early[:, codec.EOS] == -4.0).all() and np.count_nonzero(early) == 2
    for beat in range(15):  # row 0 reaches the last beat (15 of 16); row 1 stops a beat short of it
        g.advance([codec.shift_token(spq), codec.shift_token(spq) if beat < 14 else codec.EOS])
    late = g.tone_bias(0.0, 0.0, None, 0.0, 4.0).numpy()
    assert late[0, codec.EOS] == 0.0 and late[1, codec.EOS] == -4.0
