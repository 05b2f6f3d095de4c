"""Training and prompting sequences built from a song's tokens: controls in the header, and the editing task.

A prepared song is ``BOS INST... TEMPO [TS] events... EOS``. The model also learns two variants,
built here on the fly from the same tokens (so one prepared dataset serves every task):

* **Controls.** Control tokens (``STYLE``, ``KEY``, ``DENSITY``) go right after ``BOS`` (codec v3; v2
  put them after the base header); each is dropped at random while training, so each can be left out
  when generating.
* **Editing (fill in the middle).** The part to write comes *after* the context on both sides of it::

      BOS [controls] INST(all)... TEMPO [TS] EDIT INST(targets)...
          context events ... HOLE ... HOLE_END ... context events
      FILL  the span's events in time order (times from the span start): the notes to write, and the
            other instruments' notes inside the span (given)  ...  EOS

  The context is the song without the span's notes (and, sometimes, without the targets after the
  span and before it, which is what arranging looks like chunk by chunk: the parts being written exist
  before the chunk, not after it). ``HOLE`` and ``HOLE_END`` sit at times ``S`` and ``E`` in the event
  stream, so the model knows where and how long the gap is, and ``EDIT INST...`` says which instruments
  it must write there. The other instruments' notes inside the span are *given*: they come after
  ``FILL``, interleaved in time order with what is written, and the decoder forces them where they
  fall (``Grammar.force_notes``), so a new bass line is written right next to the melody notes it
  sounds with rather than matched to them across the whole prompt. They are not learned (the loss
  skips them: ``given_positions``). Infilling one part around the others and arranging new parts
  under kept ones (``arrange`` = the same task over the whole song, in chunks) are one objective.
  (Codec v2 kept the given notes inside the hole, in the context, and wrote the targets alone.)

Chords (codec v4) are units too: they stay in the context (inside the hole as well, so the model reads
the harmony it writes under), and the written part carries the chord in force at the span's start and
each change inside it (``span_chords``), learned like the notes it writes.

Everything works on *units*: a note (NOTE + DV), a tempo change, a chord, or a marker, each at a time in steps.
Units are re-emitted with fresh SHIFT tokens, so removing notes never leaves odd shift runs behind.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from midigen.music.codec import Codec, Kind

# order of units at the same time step: tempo changes, then markers, then chords, then notes (the
# encoder's order; a chord at a hole's start is inside the hole)
_ORDER_TEMPO, _ORDER_MARK, _ORDER_CHORD, _ORDER_NOTE = 0, 1, 2, 3
NOTE_ORDER, CHORD_ORDER = _ORDER_NOTE, _ORDER_CHORD  # for units built elsewhere (an edit's written part)


@dataclass
class Units:
    """A song's events as parallel arrays (one row per unit), in stream order."""

    time: np.ndarray  # steps from the song start (token time: long silences already shortened)
    tok0: np.ndarray  # NOTE, TEMPO or marker id
    tok1: np.ndarray  # the DV of a note, -1 otherwise
    inst: np.ndarray  # the note's instrument, -1 otherwise
    order: np.ndarray  # _ORDER_* for sorting units that share a time

    def __len__(self) -> int:
        return len(self.time)

    def select(self, keep: np.ndarray) -> "Units":
        return Units(self.time[keep], self.tok0[keep], self.tok1[keep], self.inst[keep], self.order[keep])

    @staticmethod
    def concat(parts) -> "Units":
        """Units of several sources in stream order: time, then tempo/marker/note, then id (the encoder's
        order: the notes of one step in increasing id)."""
        parts = [p for p in parts if p is not None and len(p)]
        if not parts:
            return Units(*(np.zeros(0, np.int64) for _ in range(5)))
        u = Units(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("time", "tok0", "tok1", "inst", "order")))
        return u.select(np.lexsort((u.tok0, u.order, u.time)))

    @staticmethod
    def markers(times, ids) -> "Units":
        n = len(times)
        return Units(np.asarray(times, np.int64), np.asarray(ids, np.int64), np.full(n, -1, np.int64),
                     np.full(n, -1, np.int64), np.full(n, _ORDER_MARK, np.int64))


def song_units(codec: Codec, song: np.ndarray) -> tuple[np.ndarray, Units]:
    """(base header, units of the events) of one song's tokens (``BOS ... [EOS]``)."""
    song = np.asarray(song, dtype=np.int64)
    h = codec.header_length(song)
    head = codec.base_header(song[:h])
    body = song[h:]
    end = np.flatnonzero((body == codec.EOS) | (body == codec.BOS))
    body = body[: end[0]] if len(end) else body
    kind = codec.kinds(body)
    time = np.cumsum(codec.shift_steps()[np.where(kind == Kind.SHIFT, body, 0)])
    is_note = np.zeros(len(body), bool)
    is_note[:-1] = (kind[:-1] == Kind.NOTE) & (kind[1:] == Kind.DV)
    notes = np.flatnonzero(is_note)
    tempos = np.flatnonzero((kind == Kind.TEMPO) | (kind == Kind.CHORD))
    idx = np.concatenate((tempos, notes))
    o = np.argsort(idx, kind="stable")
    idx = idx[o]
    note = is_note[idx]
    tok1 = np.where(note, body[np.minimum(idx + 1, len(body) - 1)], -1)
    inst = np.where(note, (body[idx] - codec.note_start) // 128, -1)
    order = np.where(note, _ORDER_NOTE, np.where(kind[idx] == Kind.CHORD, _ORDER_CHORD, _ORDER_TEMPO))
    return head, Units(time[idx], body[idx], tok1, inst, order)


def chord_units(units: Units) -> Units:
    """The chord units among ``units``."""
    return units.select(units.order == _ORDER_CHORD)


def chords_at(times, ids) -> Units:
    """Chord units from (steps, CHORD token ids)."""
    n = len(times)
    return Units(np.asarray(times, np.int64), np.asarray(ids, np.int64), np.full(n, -1, np.int64),
                 np.full(n, -1, np.int64), np.full(n, _ORDER_CHORD, np.int64))


def span_chords(units: Units, start: int, end: int) -> Units:
    """The chords a span ``[start, end)`` is written under: the one in force at ``start`` (placed there)
    and each change inside it."""
    ch = chord_units(units)
    before = np.flatnonzero(ch.time < start)
    inside = ch.select((ch.time >= start) & (ch.time < end))
    if len(before) and not (len(inside) and inside.time[0] == start):
        held = ch.select(before[-1:])
        inside = Units.concat([chords_at([start], held.tok0), inside])
    return inside


def emit(codec: Codec, units: Units, start_time: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Units -> (tokens with SHIFTs, index of the unit each token belongs to).

    Time starts at ``start_time`` (default: the first unit's time, so a context cut from the middle of
    a song begins with its first event, as training windows do).
    """
    if len(units) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    t0 = units.time[0] if start_time is None else start_time
    at = np.cumsum(np.maximum(np.diff(np.concatenate(([t0], units.time))), 0))  # a step back is no gap
    return codec.timed_stream(units.tok0, at, units.tok1)


def instruments_of(codec: Codec, head: np.ndarray) -> list[int]:
    h = np.asarray(head)
    return sorted((h[(h >= codec.inst_start) & (h < codec.note_start)] - codec.inst_start).tolist())


def header_with(codec: Codec, head: np.ndarray, instruments=None, controls=(), targets=None) -> np.ndarray:
    """A header from a base header: ``controls``, its instruments (or ``instruments``), tempo and TS
    (controls last in a v2 codec), then ``EDIT INST(targets)`` when ``targets`` is given."""
    head = np.asarray(head, np.int64)
    insts = instruments_of(codec, head) if instruments is None else sorted(set(int(i) for i in instruments))
    rest = head[(head >= codec.tempo_start) & (head < codec.inst_start)]  # TEMPO, TS
    controls = [int(c) for c in controls]
    body = [*(codec.inst_token(i) for i in insts), *rest.tolist()]
    ids = [codec.BOS, *controls, *body] if codec.controls_first else [codec.BOS, *body, *controls]
    if targets is not None:
        ids += [codec.EDIT, *(codec.inst_token(i) for i in sorted(set(int(i) for i in targets)))]
    return np.array(ids, np.int64)


@dataclass
class EditTask:
    """What to write: instruments ``targets`` over steps ``[start, end)``; which target notes are absent."""

    start: int
    end: int
    targets: tuple[int, ...]
    drop_after: bool = False  # the targets play nowhere after the span (arranging, chunk by chunk)
    drop_before: bool = False  # ... nor before it (arranging from the first chunk on)


def split_units(units: Units, task: EditTask, interleave: bool = False) -> tuple[Units, Units, Units]:
    """(context with the targets' absent notes taken out, the units to write, the given notes).

    With ``interleave`` (codec v3) the other instruments' notes inside the span leave the context and
    become the *given* notes, which the written part carries in time order among the ones it writes.
    """
    note = units.tok1 >= 0
    target = np.isin(units.inst, np.array(task.targets, np.int64)) & note
    inside = (units.time >= task.start) & (units.time < task.end)
    middle = target & inside
    given = ~target & note & inside if interleave else np.zeros(len(units), bool)
    gone = middle | given | (target & (units.time >= task.end) & task.drop_after) | (
        target & (units.time < task.start) & task.drop_before)
    return units.select(~gone), units.select(middle), units.select(given)


def _fit_context(codec: Codec, context: Units, task: EditTask, room: int) -> np.ndarray | None:
    """Context tokens around the hole within ``room`` tokens: the hole whole, then as much before and
    after it as fits (half each; what one side does not use goes to the other), cut at unit
    boundaries. None if the hole alone does not fit."""
    marks = Units.markers([task.start, task.end], [codec.HOLE, codec.HOLE_END])
    units = Units.concat([context, marks])
    toks, group = emit(codec, units)
    hole = int(np.flatnonzero(toks == codec.HOLE)[0])
    hole_end = int(np.flatnonzero(toks == codec.HOLE_END)[0])
    # a unit's tokens start with its shifts: cut points are group starts
    g_start = np.flatnonzero(np.diff(np.concatenate(([-1], group))) != 0)
    g_hole = int(group[hole])
    hole_from = int(g_start[g_hole])  # the hole's own shifts belong to it
    inner = hole_end + 1 - hole_from
    if inner > room:
        return None
    left_avail, right_avail = hole_from, len(toks) - (hole_end + 1)
    half = (room - inner) // 2
    right = min(right_avail, max(half, room - inner - left_avail))
    left = min(left_avail, room - inner - right)
    # cut the prefix at a unit start at or after hole_from - left, the suffix at a unit end
    starts_before = g_start[g_start <= hole_from]
    a = int(starts_before[np.searchsorted(starts_before, hole_from - left)])
    ends_after = np.concatenate((g_start[g_start > hole_end], [len(toks)]))
    b = int(ends_after[np.searchsorted(ends_after, hole_end + 1 + right, side="right") - 1])
    return toks[a:b]


def edit_prompt(codec: Codec, head: np.ndarray, units: Units, task: EditTask, room: int,
                controls=(), instruments=None) -> tuple[np.ndarray, Units, Units] | None:
    """The tokens up to and including FILL for ``task``, using at most ``room`` tokens in all; the
    units to write (the truth, when training) and the given notes the written part interleaves (v3).
    None when the span's context cannot fit ``room``."""
    context, middle, given = split_units(units, task, codec.interleaves_edits)
    head_ids = header_with(codec, head, instruments=instruments, controls=controls, targets=task.targets)
    ctx = _fit_context(codec, context, task, room - len(head_ids) - 1)
    if ctx is None:
        return None
    return np.concatenate((head_ids, ctx, [codec.FILL])), middle, given


def written_tokens(codec: Codec, middle: Units, task: EditTask, given: Units | None = None,
                   chords: Units | None = None) -> np.ndarray:
    """The written part as tokens after FILL: the units to write, the ``given`` notes and the ``chords``
    (``span_chords``) in time order, times from the span start, then EOS."""
    toks, _ = emit(codec, Units.concat([middle, given, chords]), start_time=task.start)
    return np.concatenate((toks, [codec.EOS]))


def given_positions(codec: Codec, seq: np.ndarray) -> np.ndarray:
    """Which tokens of an editing sequence are given notes (NOTE and DV of an instrument the header's
    ``EDIT INST...`` does not name, after FILL): the model does not write them, so they are not
    learned (their shifts are: where the model puts time is its choice)."""
    seq = np.asarray(seq, np.int64)
    out = np.zeros(len(seq), bool)
    fill = np.flatnonzero(seq == codec.FILL)
    edit = np.flatnonzero(seq == codec.EDIT)
    if not len(fill) or not len(edit):
        return out
    h = codec.header_length(seq)
    targets = seq[edit[0] + 1 : h] - codec.inst_start
    after = np.arange(len(seq)) > fill[0]
    is_note = (codec.kinds(seq) == Kind.NOTE) & after
    given = is_note & ~np.isin((seq - codec.note_start) // 128, targets)
    out |= given
    out[1:] |= given[:-1]  # its DV
    return out


def training_edit_sequence(codec: Codec, song: np.ndarray, rng: np.random.Generator, length: int,
                           controls=(), span_quarters=(4, 8, 16)) -> np.ndarray | None:
    """A random editing sequence of at most ``length`` tokens from one song (None: the song is too
    short or has nothing to write). The span, the targets and what is absent are drawn from ``rng``."""
    head, units = song_units(codec, song)
    if len(units) < 4:
        return None
    insts = instruments_of(codec, head)
    notes = units.tok1 >= 0
    if not notes.any() or not insts:
        return None
    task = _draw_task(codec, units, insts, rng, span_quarters)
    middle_room = length // 2
    _, middle, given = split_units(units, task, codec.interleaves_edits)
    chords = span_chords(units, task.start, task.end)
    mid = written_tokens(codec, middle, task, given, chords)
    if len(mid) > middle_room:  # shorten the span so what is written fits half the window
        both = Units.concat([middle, given, chords])
        toks, group = emit(codec, both, start_time=task.start)
        cut = int(group[middle_room - 1])  # the first unit that does not fit whole
        task.end = int(both.time[cut])
        if task.end <= task.start:
            return None
        _, middle, given = split_units(units, task, codec.interleaves_edits)
        chords = span_chords(units, task.start, task.end)
        mid = written_tokens(codec, middle, task, given, chords)
    built = edit_prompt(codec, head, units, task, length - len(mid), controls=controls)
    if built is None:
        return None
    return np.concatenate((built[0], mid))


def _draw_task(codec: Codec, units: Units, insts: list[int], rng: np.random.Generator, span_quarters) -> EditTask:
    spq = codec.params.steps_per_quarter
    note_times = units.time[units.tok1 >= 0]
    start = int(note_times[rng.integers(0, len(note_times))])
    start -= start % spq if rng.random() < 0.5 else 0  # often on a beat, as people select
    span = int(rng.choice(span_quarters)) * spq
    if len(insts) > 1 and rng.random() < 0.5:  # some parts, around the others
        k = int(rng.integers(1, len(insts)))
        targets = tuple(sorted(rng.choice(insts, size=k, replace=False).tolist()))
        drop_after = bool(rng.random() < 0.5)
        drop_before = drop_after and bool(rng.random() < 0.4)
    else:  # everything in the span
        targets, drop_after, drop_before = tuple(insts), False, False
    return EditTask(start, start + span, targets, drop_after, drop_before)
