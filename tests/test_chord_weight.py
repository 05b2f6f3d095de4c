"""The chord weight: under a given chart, the chord in force's tones get a logit bonus (and nothing
else does), so the notes follow the chords more often; without a chart nothing changes."""
from __future__ import annotations

import numpy as np
import pytest

from midigen.errors import UsageError
from midigen.eval.metrics import chord_adherence
from midigen.generate.grammar import Grammar
from midigen.generate.harmony import chart_changes, meter_grid
from midigen.generate.sample import generate_samples, sample_score
from midigen.generate.sampling import MAX_CHORD_WEIGHT, Sampling
from midigen.model.checkpoint import load_checkpoint
from midigen.music.chords import chord_id
from midigen.music.chordtext import chart_beats, parse_chords
from midigen.music.codec import DRUMS, N_PITCHES, Codec
from midigen.music.timing import beat_grid

pytestmark = pytest.mark.usefixtures("one_thread")


def _grammar_on(codec, chart_text: str) -> Grammar:
    g = Grammar(codec, 2)
    for t in codec.header([0], 120.0, (4, 4)):
        g.advance([t, t])
    g.close_header()
    end = 8 * 96
    g.force_chords(*chart_changes(parse_chords(chart_text), meter_grid(codec, (4, 4), end), 0, end))
    return g


def test_the_tones_are_the_chord_in_forces_pitched_notes_only():
    codec = Codec()
    g = Grammar(codec, 2)
    assert g.chord_tones() is None  # no chart: the model's own chords are its business
    g = _grammar_on(codec, "G7")
    assert g.chord_tones().sum() == 0  # the chord is due but not written yet: no tones
    g.advance([codec.chord_token(chord_id(7, "7"))] * 2)
    tones = g.chord_tones()
    ids = np.flatnonzero(tones[0].numpy())
    inst, pitch = np.divmod(ids - codec.note_start, N_PITCHES)
    assert set(pitch % 12) == {7, 11, 2, 5} and (inst < DRUMS).all()
    assert len(ids) == DRUMS * sum(1 for p in range(N_PITCHES) if p % 12 in (7, 11, 2, 5))
    assert (tones[0] == tones[1]).all()


def test_a_bad_weight_is_a_usage_error():
    for bad in (-0.5, MAX_CHORD_WEIGHT + 1):
        with pytest.raises(UsageError, match="chord weight"):
            Sampling(chord_weight=bad)


def test_the_weight_pulls_the_notes_onto_the_chart(edit_run):
    """Same seeds, same chart: a strong weight puts more of the written note-time on chord tones."""
    model, codec, _ = load_checkpoint(edit_run, "cpu")
    chart = parse_chords("C | Am | F | G")
    share = {}
    for w in (0.0, 4.0):
        scores = [sample_score(codec, s) for s in generate_samples(
            model, codec, num_samples=4, seconds=12, chords=chart, sampling=Sampling(seed=3, chord_weight=w))]
        shares = [chord_adherence(s, beat_grid(s), chart_beats(chart, beat_grid(s))) for s in scores]
        share[w] = np.mean([x for x in shares if x is not None])
    assert share[4.0] > share[0.0] + 0.15, share
