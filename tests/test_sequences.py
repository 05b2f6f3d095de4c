"""Training/prompting sequences: units round-trip, the editing sequence holds exactly the song's notes."""
from __future__ import annotations

import numpy as np
import pytest

from midigen.music.codec import Codec, Kind
from midigen.music.sequences import (EditTask, edit_prompt, emit, given_positions, song_units, split_units,
                               training_edit_sequence, written_tokens)
from songgen import make_song


@pytest.fixture(scope="module")
def codec():
    return Codec()


@pytest.fixture(scope="module")
def songs(codec):
    return [codec.encode_score(make_song(seed, bars=16)) for seed in range(12)]


def _note_set(codec, units, offset=0):
    sel = units.tok1 >= 0
    return sorted(zip((units.time[sel] + offset).tolist(), units.tok0[sel].tolist(), units.tok1[sel].tolist()))


def test_units_re_emit_the_song_exactly(codec, songs):
    for song in songs:
        head, units = song_units(codec, song)
        toks, _ = emit(codec, units, start_time=0)
        again = np.concatenate((head, toks, [codec.EOS]))
        assert np.array_equal(again, song.astype(np.int64))


def test_context_plus_written_part_is_the_song(codec, songs):
    """Whatever the task, the context's notes and the written notes together are the song's notes."""
    rng = np.random.default_rng(0)
    given_seen = 0
    for song in songs:
        head, units = song_units(codec, song)
        insts = sorted(set(units.inst[units.inst >= 0].tolist()))
        targets = tuple(rng.choice(insts, size=max(1, len(insts) // 2), replace=False).tolist())
        task = EditTask(96, 96 * 3, targets)
        context, middle, given = split_units(units, task, interleave=True)
        assert _note_set(codec, context) + _note_set(codec, middle) != []
        parts = _note_set(codec, context) + _note_set(codec, middle) + _note_set(codec, given)
        assert sorted(parts) == _note_set(codec, units)
        assert all(96 <= t < 288 for t in middle.time) and set(middle.inst.tolist()) <= set(targets)
        assert all(96 <= t < 288 for t in given.time) and not set(given.inst.tolist()) & set(targets)
        assert not ((context.tok1 >= 0) & (context.time >= 96) & (context.time < 288)).any()
        prompt, mid, given2 = edit_prompt(codec, head, units, task, room=100_000)
        assert _note_set(codec, given2) == _note_set(codec, given)
        assert prompt[-1] == codec.FILL
        # the prompt's events, decoded, are the context (all of it fits), with HOLE at 96 and HOLE_END at 288
        h = codec.header_length(prompt)
        ev = prompt[h:-1]
        kind = codec.kinds(ev)
        time = np.cumsum(codec.shift_steps()[np.where(kind == Kind.SHIFT, ev, 0)])
        first = context.time[0] if len(context) else 0
        assert time[ev == codec.HOLE][0] + first == 96 and time[ev == codec.HOLE_END][0] + first == 288
        w = written_tokens(codec, mid, task, given)
        assert w[-1] == codec.EOS and codec.count_notes(w) == len(mid) + len(given)
        # the written part is the span's notes in stream order; the given ones are marked, with their DVs
        seq = np.concatenate((prompt, w))
        marked = given_positions(codec, seq)
        fill = len(prompt) - 1
        assert not marked[: fill + 1].any() and marked.sum() == 2 * len(given)
        kinds = codec.kinds(seq)
        notes = np.flatnonzero((kinds == Kind.NOTE) & (np.arange(len(seq)) > fill))
        inst = (seq[notes] - codec.note_start) // 128
        assert (marked[notes] == ~np.isin(inst, targets)).all() and (marked[notes + 1] == marked[notes]).all()
        _, again = song_units(codec, np.concatenate(([codec.BOS], w)))
        assert _note_set(codec, again, 96) == sorted(_note_set(codec, mid) + _note_set(codec, given))
        given_seen += len(given)
    assert given_seen > 0


def test_prompt_fits_its_room_and_keeps_the_hole(codec, songs):
    head, units = song_units(codec, songs[0])
    task = EditTask(96 * 4, 96 * 5, tuple(sorted(set(units.inst[units.inst >= 0].tolist()))))
    for room in (60, 120, 250, 1000):
        built = edit_prompt(codec, head, units, task, room=room)
        if built is None:
            continue
        prompt = built[0]
        assert len(prompt) <= room
        assert (prompt == codec.HOLE).sum() == 1 and (prompt == codec.HOLE_END).sum() == 1
        # cut at unit boundaries: no DV without its NOTE, no NOTE without its DV
        kind = codec.kinds(prompt)
        notes = np.flatnonzero(kind == Kind.NOTE)
        assert (kind[notes + 1] == Kind.DV).all() and (kind[np.flatnonzero(kind == Kind.DV) - 1] == Kind.NOTE).all()


def test_training_sequences_fit_and_are_well_formed(codec, songs):
    rng = np.random.default_rng(1)
    made = 0
    for i in range(200):
        seq = training_edit_sequence(codec, songs[i % len(songs)], rng, length=257)
        if seq is None:
            continue
        made += 1
        assert len(seq) <= 257 and seq[0] == codec.BOS
        assert (seq == codec.FILL).sum() == 1 and (seq == codec.EDIT).sum() == 1
        fill = int(np.flatnonzero(seq == codec.FILL)[0])
        assert seq[-1] == codec.EOS and fill < len(seq) - 1
    assert made >= 150
