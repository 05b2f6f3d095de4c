"""Codec v4's CHORD tokens: where they stand, that they cost the notes nothing, that they move with
transposition, that editing sequences carry them, and that the grammar forces a chart where it falls."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from midigen.generate.grammar import Grammar
from midigen.generate.harmony import chart_changes, meter_grid
from midigen.music import codec_jit
from midigen.music.chords import NO_CHORD, chord_id, chord_name, label_chords
from midigen.music.chordtext import parse_chords
from midigen.music.codec import Codec, Kind
from midigen.music.sequences import given_positions, training_edit_sequence


@pytest.fixture(scope="module")
def codec():
    return Codec()


def _files(folder, pattern="*.mid"):
    files = sorted(folder.rglob(pattern))
    assert files, folder
    return files


def _chorales(music21_dir):
    return [f for f in _files(music21_dir) if "chorale" in str(f)]


def _chord_at(codec, tokens, steps):
    """The chord in force at each of ``steps`` from a stream's CHORD tokens (N.C. before the first)."""
    ev = codec.decode_events(tokens)
    i = np.searchsorted(ev["chord_time"], steps, side="right") - 1
    return np.where(i >= 0, ev["chord_id"][np.maximum(i, 0)], NO_CHORD)


def test_chord_tokens_follow_the_labeller_on_real_music(codec, music21_dir):
    """The stream's chords are the labeller's reading of the song, beat by beat (the chorales, whose
    labels the labeller is tested on against expert analyses); each CHORD sits after its step's shifts
    and before its notes, at most one per step, never repeating the chord before it."""
    agree = total = 0
    for path in _files(music21_dir)[:16]:
        score = codec.read_midi(path.read_bytes())
        tokens = codec.encode_score(score).astype(np.int64)
        song = label_chords(score)
        steps = np.round(song.grid.starts * codec.params.steps_per_quarter / score.ticks_per_quarter)
        heard = _chord_at(codec, tokens, steps)
        last_onset = codec.decode_events(tokens)["notes"]["time"].max()
        on = steps <= last_onset
        agree += int((heard[on] == song.labels[on]).sum())
        total += int(on.sum())
        kind = codec.kinds(tokens)
        at = np.flatnonzero(kind == Kind.CHORD)
        h = codec.header_length(tokens)
        assert len(at) and at[0] >= h
        before = kind[at - 1]
        assert np.all((before == Kind.SHIFT) | (before == Kind.TEMPO) | (at == h)), path.name
        assert not np.any(kind[at + 1] == Kind.DV)
        ids = tokens[at]
        assert np.all(ids[1:] != ids[:-1])
    assert agree / total >= 0.9, agree / total


def test_chords_cost_the_notes_nothing(codec, songs_dir, music21_dir):
    """v4 = v3 plus CHORD tokens: the same notes, tempo and length decode from both, taking the chords
    out gives v3's tokens exactly, and the compiled encoder writes v4's tokens as numpy does."""
    v3 = Codec(version=3)
    fast = codec_jit.CompiledEncoder(codec) if codec_jit.available(codec) else None
    for path in _files(songs_dir)[:10] + _files(music21_dir)[:10]:
        score = codec.read_midi(path.read_bytes())
        with_chords = codec.encode_score(score)
        without = v3.encode_score(score)
        assert np.array_equal(codec.add_chords(with_chords, ([], [])), without)
        a, b = codec.decode_events(with_chords), v3.decode_events(without)
        for k in ("time", "duration", "pitch", "velocity", "instrument"):
            assert np.array_equal(a["notes"][k], b["notes"][k])
        assert np.array_equal(a["tempo_bpm"], b["tempo_bpm"]) and a["end_step"] == b["end_step"]
        assert codec.count_notes(with_chords) == v3.count_notes(without)
        if fast is not None:
            assert np.array_equal(fast.encode_one(score)[0], with_chords), path.name


def test_decoded_chords_are_markers_and_encode_back(codec, music21_dir):
    """CHORD tokens decode to chord-name markers (what written files carry), and the decoded song
    encodes to the same tokens; out-of-place CHORD ids decode without error."""
    for path in _chorales(music21_dir)[:4]:
        tokens = codec.encode(path.read_bytes())
        score = codec.decode(tokens)
        ev = codec.decode_events(tokens)
        assert [m.text for m in score.markers] == ["Chord " + chord_name(i) for i in ev["chord_id"]]
        scale = codec.params.decode_tpq // codec.params.steps_per_quarter
        assert [m.time for m in score.markers] == (ev["chord_time"] * scale).tolist()
        assert np.array_equal(codec.encode_score(score), tokens)
    junk = np.array([codec.BOS, codec.chord_token(5), codec.inst_token(0), codec.chord_token(7), codec.EOS])
    assert codec.decode(junk).note_num() == 0


def test_transposition_moves_the_roots(codec, music21_dir):
    """Transposed tokens carry the transposed song's own chords: labelling the moved notes again gives
    the moved CHORD tokens (all but where two chords score exactly alike and the tie breaks another way)."""
    agree = total = 0
    for path in _chorales(music21_dir)[:6]:
        tokens = codec.encode(path.read_bytes()).astype(np.int64)
        for shift in (-5, 2, 7):
            moved = codec.transpose_table(shift)[tokens]
            if np.any(moved < 0):
                continue
            ev, ev_moved = codec.decode_events(tokens), codec.decode_events(moved)
            roots = ev["chord_id"] // 9
            assert np.array_equal(ev_moved["chord_id"] // 9, np.where(ev["chord_id"] == NO_CHORD, 12, (roots + shift) % 12))
            again = codec.add_chords(moved)
            at = np.unique(np.concatenate((ev_moved["chord_time"], codec.decode_events(again)["chord_time"])))
            agree += int((_chord_at(codec, again, at) == _chord_at(codec, moved, at)).sum())
            total += len(at)
    assert agree / total >= 0.97, agree / total


def test_edit_sequences_see_chords_in_context_hole_and_written_part(codec, music21_dir):
    """The editing objective's sequences carry chords before the hole, inside it and in the written
    part (which starts with the chord in force), and the loss learns them (not given)."""
    seen = {"context": 0, "hole": 0, "written": 0, "starts_with_chord": 0}
    rng = np.random.default_rng(3)
    for path in _files(music21_dir)[:10]:
        song = codec.encode(path.read_bytes()).astype(np.int64)
        for _ in range(4):
            seq = training_edit_sequence(codec, song, rng, 512)
            if seq is None:
                continue
            chord = codec.kinds(seq) == Kind.CHORD
            hole, hole_end, fill = (int(np.flatnonzero(seq == m)[0]) for m in (codec.HOLE, codec.HOLE_END, codec.FILL))
            seen["context"] += int(chord[:hole].any())
            seen["hole"] += int(chord[hole:hole_end].any())
            seen["written"] += int(chord[fill:].any())
            seen["starts_with_chord"] += int(codec.kinds(seq[fill + 1 : fill + 2])[0] == Kind.CHORD)
            assert not np.any(given_positions(codec, seq) & chord)
    assert all(v > 0 for v in seen.values()), seen


def _uniform_run(codec, g: Grammar, n: int, seed: int = 0) -> np.ndarray:
    """Tokens drawn uniformly among what the grammar allows (no model): what it admits, whatever the draw."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        m = g.mask()[0]
        ids = torch.nonzero(m).flatten()
        t = int(ids[torch.randint(len(ids), (1,), generator=gen)])
        g.advance([t])
        out.append(t)
        if t == codec.EOS:
            break
    return np.array(out, np.int64)


def test_grammar_forces_a_chart_where_it_falls(codec):
    """A chart laid on bars is written where it falls, before the notes of its step, even when the
    draw would rather pass it; nothing else is a chord."""
    chart = parse_chords("C Am | F G7 | Dm7 | Bbmaj7/D")
    for seed in range(3):
        head = codec.header([0, 33], 100.0, (4, 4))
        g = Grammar(codec, 1)
        for t in head:
            g.advance([t])
        g.close_header()
        end = 40 * 96
        steps, ids = chart_changes(chart, meter_grid(codec, (4, 4), end), 0, end)
        g.force_chords(steps, ids)
        g.set_target(None, 600)
        body = _uniform_run(codec, g, 600, seed)
        tokens = np.concatenate((head, body))
        ev = codec.decode_events(tokens)
        reached = int(ev["end_step"])
        want = steps <= reached
        assert np.array_equal(ev["chord_time"], steps[want][: len(ev["chord_time"])])
        assert len(ev["chord_time"]) >= want.sum() - 1  # the last may fall at the very end, after EOS
        assert np.array_equal(ev["chord_id"], ids[: len(ev["chord_id"])])
        # the canonical order: putting the chords in again from scratch gives the same stream
        if tokens[-1] == codec.EOS:
            assert np.array_equal(codec.add_chords(tokens, (ev["chord_time"], ev["chord_id"])), tokens)
    assert [chord_name(i) for i in ids[:7]] == ["C", "Am", "F", "G7", "Dm7", "Bbmaj7", "C"]


def test_free_chords_keep_the_encoders_order(codec):
    """Without a chart a v4 grammar lets chords in only where the encoder puts them: after a step's
    shifts and tempo, before its notes, once, never the chord already in force."""
    head = codec.header([0, 33, 128], 120.0, (3, 4))
    for seed in range(3):
        g = Grammar(codec, 1)
        for t in head:
            g.advance([t])
        g.close_header()
        g.set_target(None, 800)
        body = _uniform_run(codec, g, 800, seed + 10)
        tokens = np.concatenate((head, body, [codec.EOS]))
        ev = codec.decode_events(tokens)
        assert len(ev["chord_time"]) > 0
        assert np.all(ev["chord_id"][1:] != ev["chord_id"][:-1])
        assert np.array_equal(codec.add_chords(tokens, (ev["chord_time"], ev["chord_id"])), tokens)


def test_chart_changes_repeat_and_start_at_the_bar(codec):
    chart = parse_chords("C G | Am")
    grid = meter_grid(codec, (3, 4), 20 * 72)
    steps, ids = chart_changes(chart, grid, 0, 20 * 72)
    assert steps.tolist()[:5] == [0, 48, 72, 144, 192]  # C 2 beats, G 1 beat, Am a bar, then again
    assert [chord_name(i) for i in ids[:5]] == ["C", "G", "Am", "C", "G"]
    steps, ids = chart_changes(chart, grid, 100, 300)  # from inside bar 2: the chart starts at its bar
    assert steps.tolist() == [100, 120, 144, 216, 264, 288]  # (72), whose C holds from 100
    assert ids[0] == chord_id(0, "maj") and [chord_name(i) for i in ids[1:3]] == ["G", "Am"]


@pytest.mark.skipif(not codec_jit.available(Codec()), reason="numba unavailable here")
def test_compiled_labeller_labels_as_numpy_does(music21_dir, songs_dir):
    """prepare labels with the compiled profile sums and Viterbi (``codec_jit``): the same profiles to
    the bit and the same labels as the numpy ones on real songs, ties and all."""
    from midigen.music.chords import _pitched_notes, chord_scores, note_profiles, pieces, piece_sums, smooth
    from midigen.music.timing import beat_grid

    for path in _files(music21_dir)[:10] + _files(songs_dir)[:5]:
        score = Codec().read_midi(path.read_bytes())
        grid = beat_grid(score)
        args = pieces(*_pitched_notes(score), grid)
        assert np.array_equal(codec_jit.compiled_piece_sums(*args), piece_sums(*args))
        scores = chord_scores(*note_profiles(*_pitched_notes(score), grid, compiled=False))
        assert np.array_equal(codec_jit.compiled_smooth(scores, 0.3), smooth(scores, 0.3, compiled=False))


@pytest.mark.skipif(not codec_jit.available(Codec()), reason="numba unavailable here")
def test_prepares_fused_scores_and_viterbi_label_as_numpy_does():
    """prepare's pass scores each beat into a quality-major row and runs the Viterbi over that order
    (``chords_jit.smooth_sums``); ties must still go to the first chord id, as numpy's argmax takes it.
    Profiles with many exact ties (coarse values, bare triads, silent beats) against the numpy scores
    and Viterbi."""
    from midigen.music import chords_jit
    from midigen.music.chords import chord_scores, smooth

    templates = chords_jit.CompiledChords(Codec())._templates
    rng = np.random.default_rng(2)
    for trial in range(400):
        n = int(rng.integers(1, 120))
        sums = [np.round(rng.random((n, 24)) * 4) / 2, (rng.random((n, 24)) < 0.3) * 1.0,
                rng.random((n, 24)) * (rng.random((n, 1)) > 0.2)][trial % 3]
        want = smooth(chord_scores(sums[:, :12], sums[:, 12:]), compiled=False)
        assert np.array_equal(chords_jit.smooth_sums(sums, *templates), want)


def test_a_forced_chord_comes_before_a_given_note_of_its_step(codec):
    """In an edit's written part, chords and the kept notes are both forced: where they share a step
    the chord comes first (the encoder's order), whatever the draw would pick."""
    dv = codec.dv_token(24, 80)
    for pick in (0.0, 0.5, 0.99):
        g = Grammar(codec, 1)
        g.for_edit([33], 200, 300)
        g.force_notes([0, 48], [codec.note_token(0, 60), codec.note_token(0, 64)], [dv, dv])
        g.force_chords([0, 48], [chord_id(0, "maj"), chord_id(7, "7")])
        out = []
        for _ in range(300):
            ids = np.flatnonzero(g.mask()[0].numpy())
            t = int(ids[min(len(ids) - 1, int(pick * len(ids)))])
            g.advance([t])
            out.append(t)
            if t == codec.EOS:
                break
        toks = np.array([codec.FILL, *out], np.int64)
        ev = codec.decode_events(np.concatenate(([codec.BOS, codec.inst_token(0), codec.tempo_token(120)], out)))
        assert ev["chord_time"].tolist()[:2] == [0, 48], [codec.token_name(t) for t in toks[:20]]
        names = [codec.token_name(t) for t in out]
        assert names.index("CHORD_G7") < names.index("NOTE_0_64") and names[0] == "CHORD_C"


@pytest.fixture()
def numpy_labeller():
    """The labeller as its numpy reference (``chords.py`` alone), with no compiled parts registered."""
    from midigen.music import chords

    kept = chords._COMPILED_SMOOTH, chords._COMPILED_PIECE_SUMS
    chords.use_compiled(None, None)
    yield
    chords.use_compiled(*kept)


def _meter_score(tpq, num, den, notes, drums=()):
    import symusic

    s = symusic.Score(tpq)
    s.time_signatures.append(symusic.TimeSignature(0, num, den))
    for drum, group in ((False, notes), (True, drums)):
        tr = symusic.Track("t", 0, drum)
        for t, d, p in group:
            tr.notes.append(symusic.Note(int(t), int(d), int(p), 90))
        s.tracks.append(tr)
    return s


def _odd_scores():
    """Scores for the corners: every meter kind (compound, /16, /2, none), notes off the beat grid,
    long silences (capped gaps), drums only, a single note, and a song too long to label (more than
    MAX_BEATS beats: no chords)."""
    rng = np.random.default_rng(20)
    out = []
    for num, den in ((6, 8), (5, 16), (3, 2), (7, 8), (12, 16), (4, 4)):
        onsets = np.sort(rng.integers(0, 3000, 200))
        out.append(_meter_score(int(rng.choice([7, 24, 96, 480])), num, den,
                                [(t, rng.integers(1, 700), rng.integers(30, 90)) for t in onsets]))
    out.append(_meter_score(24, 4, 4, [(0, 10, 60), (24 * 4000, 30, 64), (24 * 4001, 48, 67)]))
    out.append(_meter_score(24, 4, 4, [], drums=[(i * 12, 6, 36) for i in range(50)]))
    out.append(_meter_score(24, 3, 4, [(5, 1, 60)]))
    out.append(_meter_score(24, 1, 16, [(i * 400, 24, 60 + i % 5) for i in range(900)]))  # 57,600 beats
    return out


@pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed here")
def test_compiled_chord_pass_writes_the_numpy_tokens(codec, music21_dir, songs_dir, numpy_labeller):
    """prepare's compiled chord pass (``chords_jit``: labelling and CHORD insertion in one call) writes
    ``Codec.add_chords``' tokens exactly, against the labeller's numpy reference, on real music21
    pieces, made songs and odd corners; and the compiled encoder writes them as prepare stores them."""
    from midigen.music.chords_jit import CompiledChords

    assert codec_jit.available(codec), "the compiled encoder failed its self-check"

    fast, encoder = CompiledChords(codec), codec_jit.CompiledEncoder(codec)
    scores = [codec.read_midi(p.read_bytes()) for p in _files(music21_dir) + _files(songs_dir)] + _odd_scores()
    changed = 0
    for k, score in enumerate(scores):
        base = codec.encode_base([score])[0]
        if isinstance(base, Exception):
            continue
        want = codec.add_chords(base)
        got = fast.add(base)
        assert got.dtype == base.dtype and np.array_equal(got, want), k
        assert np.array_equal(encoder.encode_one(score)[0], want), k
        changed += len(want) > len(base)
    assert len(scores) >= 90 and changed >= len(scores) - 4
    too_long = codec.encode_base([scores[-1]])[0]
    assert np.array_equal(fast.add(too_long), too_long)  # beyond MAX_BEATS: no chords, as numpy
