"""Edit a song: rewrite a span (``infill``) or write new parts over it (``arrange``).

Both are one task for the engine: the model reads the song's context on both sides of a hole
(``midigen.music.sequences``: ``HOLE ... HOLE_END`` in the events, then ``FILL``) and writes the hole's
notes for the target instruments, under the edit grammar (``Grammar.for_edit``); with a v3 codec the
kept notes inside the hole are forced into the written part where they fall (``Grammar.force_notes``),
so what is written lines up with them. A long span is written
in chunks of at most ``CHUNK_QUARTERS`` (the longest span training shows), each chunk seeing the chunks
already written; a chunk whose written part runs out of tokens ends at its last complete onset and the
next chunk starts there. The first chunk decodes every sample as one batch; after it the samples'
contexts differ, so each goes on alone.

The model reads the song as it hears it (``midigen.generate.hearing``: an instrument it never learned
as the nearest one it knows, drums left out if it never learned them); the instruments being written
are never mapped, and nothing is mapped onto them.

Kept music never passes through tokens: the result is the user's own score (same ticks per quarter,
tracks, tempo map, time and key signatures, markers, every kept note, same length) with the decoded
notes converted from steps back to the file's ticks and spliced in by ``midigen.generate.splice`` (the
one splice of every task: a written note never sounds over a kept one of its pitch and channel).

Time: the model's steps are 1/24 quarter note. The song is encoded with no gap limit, so unit times
are the file's own steps (``round(tick * 24 / tpq)``, as the encoder rounds); the gaps the encoder
would shorten are shortened only when a chunk's prompt is built, around the hole, never inside it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import symusic

from midigen.music.codec import Codec, CodecError, Kind, instrument_name, score_instruments, track_instrument
from midigen.errors import UsageError
from midigen.generate.engine import Decoder, Listener, realtime
from midigen.generate.grammar import Grammar
from midigen.generate.hearing import heard, heard_instruments, hearing_map
from midigen.generate.sampling import Sampling
from midigen.generate.splice import FIELDS, splice
from midigen.music.ranges import NoteLimits, note_limits
from midigen.generate.harmony import chart_changes, need_chords
from midigen.music.chordtext import marked_chord_ids, replace_chord_markers
from midigen.music.sequences import (CHORD_ORDER, NOTE_ORDER, EditTask, Units, chord_units, chords_at, edit_prompt,
                                     song_units, span_chords)
from midigen.music.timing import BeatGrid, first_tick_at, meter_beat_grid, meters, notes_end_tick, seconds_at_tick

CHUNK_QUARTERS = 16  # the longest span the editing objective trains on
WRITTEN_SHARE = 0.5  # share of the context reserved for a chunk's written part
_NO_GAP_LIMIT = 1 << 40


# ----- the song as the model sees it ----------------------------------------------------------------


@dataclass
class Song:
    """A user's score with its events as units in the file's own steps (no silence shortened)."""

    score: symusic.core.ScoreTick
    head: np.ndarray  # base header: BOS INST... TEMPO [TS]
    units: Units
    spq: int

    @property
    def tpq(self) -> int:
        return int(self.score.ticks_per_quarter)

    def step_of(self, ticks):
        """Ticks -> steps, rounding half up as the encoder does."""
        t = np.asarray(ticks, dtype=np.int64)
        return (t * 2 * self.spq + self.tpq) // (2 * self.tpq)

    def tick_of(self, steps):
        s = np.asarray(steps, dtype=np.int64)
        return (s * 2 * self.tpq + self.spq) // (2 * self.spq)

    def first_tick_of(self, step: int) -> int:
        """The first tick that ``step_of`` puts at ``step`` or later."""
        return max(0, -(-(2 * int(step) - 1) * self.tpq // (2 * self.spq)))

    @property
    def instruments(self) -> list[int]:
        return score_instruments(self.score)

    def end_step(self) -> int:
        """The step where the last note ends (at least 1)."""
        ends = [int(np.max(self.step_of(a["time"].astype(np.int64) + a["duration"]))) for a in
                (t.notes.numpy() for t in self.score.tracks if t.note_num())]
        return max([1, *ends])


def read_song(codec: Codec, score, hearing: dict | None = None) -> Song:
    """Encode ``score`` for editing, as the model hears it under ``hearing``
    (``midigen.generate.hearing.hearing_map``; the Song's score stays the user's own); CodecError when
    it has no notes."""
    free = Codec(replace(codec.params, max_gap=_NO_GAP_LIMIT), version=codec.version)
    tokens = free.encode_score(heard(score, hearing or {}))
    head, units = song_units(free, tokens)
    return Song(score, head, units, codec.params.steps_per_quarter)


def shortened(units: Units, marks, max_gap: int) -> tuple[Units, list[int]]:
    """Units and mark times on the token time line: every gap between events capped at ``max_gap``."""
    times = np.unique(np.concatenate((units.time, np.asarray(marks, np.int64))))
    gaps = np.diff(times, prepend=0)
    capped = np.cumsum(np.minimum(gaps, max_gap))
    at = lambda t: capped[np.searchsorted(times, t)]  # noqa: E731
    out = Units(at(units.time), units.tok0, units.tok1, units.inst, units.order)
    return out, [int(at(m)) for m in marks]


def written_chords(codec: Codec, tokens: np.ndarray, start: int) -> Units:
    """The chord units of a written part (tokens after FILL, times from ``start``): what the model chose."""
    t = np.asarray(tokens, dtype=np.int64)
    eos = np.flatnonzero(t == codec.EOS)
    t = t[: eos[0]] if len(eos) else t
    kind = codec.kinds(t)
    time = np.cumsum(codec.shift_steps()[np.where(kind == Kind.SHIFT, t, 0)])
    i = np.flatnonzero(kind == Kind.CHORD)
    return chords_at(start + time[i], t[i])


def written_units(codec: Codec, tokens: np.ndarray, start: int) -> tuple[Units, int, bool]:
    """Units of a written part (tokens after FILL, times from ``start``), the step of its last onset
    (relative), and whether it ended with EOS."""
    t = np.asarray(tokens, dtype=np.int64)
    eos = np.flatnonzero(t == codec.EOS)
    ended = bool(len(eos))
    t = t[: eos[0]] if ended else t
    kind = codec.kinds(t)
    time = np.cumsum(codec.shift_steps()[np.where(kind == Kind.SHIFT, t, 0)])
    pair = np.zeros(len(t), bool)
    pair[:-1] = (kind[:-1] == Kind.NOTE) & (kind[1:] == Kind.DV)
    i = np.flatnonzero(pair)
    n = len(i)
    units = Units(start + time[i], t[i], t[i + 1], (t[i] - codec.note_start) // 128, np.full(n, NOTE_ORDER, np.int64))
    return units, int(time[i[-1]]) if n else 0, ended


# ----- writing a span in chunks ---------------------------------------------------------------------


@dataclass
class Plan:
    """What to write: ``targets`` over steps ``[start, end)`` around ``context`` (the kept units)."""

    start: int
    end: int
    targets: tuple[int, ...]
    instruments: list[int]  # the header's instruments
    context: Units
    drop_after: bool = False
    controls: tuple = ()
    limits: NoteLimits | None = None  # instrument ranges and polyphony the written notes keep to
    force_chords: bool = False  # the context's chords over the span are forced into the written part (v4)
    tones: tuple | None = None  # (song steps, (n, 12) weights, onset steps): what each stretch leans toward


@dataclass
class _Chunk:
    units: Units
    reached: int  # the step the next chunk starts from


def _chunk_prompt(codec: Codec, song: Song, plan: Plan, written: Units, s: int, e: int, room: int):
    """(prompt, given notes with steps from the chunk start) for writing ``[s, e)``, shrinking ``e``
    until the hole's own context fits ``room``; (None, None) when not even one step fits."""
    units = Units.concat([plan.context, written])
    while True:
        capped, (cs, ce) = shortened(units, [s, e], codec.params.max_gap)
        task = EditTask(cs, ce, plan.targets, drop_after=plan.drop_after)
        built = edit_prompt(codec, song.head, capped, task, room, controls=plan.controls,
                            instruments=plan.instruments)
        if built is not None:
            prompt, _, given = built
            chords = span_chords(capped, cs, ce) if plan.force_chords else chords_at([], [])
            return prompt, Units(given.time - cs, given.tok0, given.tok1, given.inst, given.order), e, (
                chords.time - cs, chords.tok0 - codec.chord_start)
        if e - s <= 1:
            return None, None, e, None
        e = s + (e - s) // 2


def _write_chunk(dec: Decoder, codec: Codec, song: Song, plan: Plan, written: Units, s: int,
                 rows: int) -> list[_Chunk]:
    """Decode ``[s, s + chunk)`` for ``rows`` rows that share what was ``written`` before (one batch).

    The kept notes inside the chunk (v3) are forced into the written part where they fall; only the
    target instruments' notes are kept from it."""
    hook = getattr(dec.listener, "chunk", None)
    if hook is not None:  # the coming tokens are timed from step s of this song (a studio draws them there)
        hook(s, song, plan.targets)
    block = dec.block
    chunk = min(CHUNK_QUARTERS * song.spq, codec.params.max_gap)
    room = block - max(2, int(block * WRITTEN_SHARE))
    prompt, given, e, chords = _chunk_prompt(codec, song, plan, written, s, min(s + chunk, plan.end), room)
    if prompt is None:  # even one step's kept notes do not fit the context: leave that step
        return [_Chunk(Units.markers([], []), e) for _ in range(rows)]
    budget = block - len(prompt)
    g = Grammar(codec, rows, device=dec.device)
    g.for_edit(plan.targets, e - s, budget)
    if plan.limits is not None:
        g.hold_notes(plan.limits.low, plan.limits.high, plan.limits.polyphony)
        _ringing(codec, g, Units.concat([plan.context, written]), plan.targets, s)
    g.force_notes(given.time, given.tok0, given.tok1)
    if plan.force_chords:
        g.force_chords(*chords)
    if plan.tones is not None:
        g.favour_tones(plan.tones[0] - s, plan.tones[1], plan.tones[2] - s)
    seq = dec.decode(prompt, g, budget)
    out = []
    for b in range(rows):
        units, last, ended = written_units(codec, seq[b, len(prompt):], s)
        mine = np.isin(units.inst, np.array(plan.targets, np.int64))
        complete = ended and int((~mine).sum()) == len(given)  # every given note went in before EOS
        units = units.select(mine)
        if codec.has_chords and not plan.force_chords:  # the model's own chords: context for the next chunk
            chosen = written_chords(codec, seq[b, len(prompt):], s)
            units = Units.concat([units, chosen.select(chosen.time < (e if complete else s + last))])
        if complete or last == 0:
            out.append(_Chunk(units, e))
        else:  # out of tokens: keep the complete onsets, go on from the last one
            out.append(_Chunk(units.select(units.time < s + last), s + last))
    return out


def _ringing(codec: Codec, g: Grammar, units: Units, targets, s: int) -> None:
    """Tell the grammar which notes of the target instruments still sound at the chunk's start ``s``
    (kept ones, or written by the chunk before), so its polyphony limit counts them."""
    notes = (units.tok1 >= 0) & np.isin(units.inst, np.array(targets, np.int64)) & (units.time < s)
    u = units.select(notes)
    end = u.time + codec.durations[(u.tok1 - codec.dv_start) // codec.params.velocity_levels]
    ring = end > s
    g.sounding(u.inst[ring], end[ring] - s)


def write_plan(dec: Decoder, codec: Codec, song: Song, plan: Plan, num_samples: int) -> list[Units]:
    """The written units of every sample (file steps): the first chunk as one batch, then row by row."""
    empty = Units.markers([], [])
    first = _write_chunk(dec, codec, song, plan, empty, plan.start, num_samples)
    results = []
    for c in first:
        written, pos = c.units, c.reached
        while pos < plan.end:
            (c,) = _write_chunk(dec, codec, song, plan, written, pos, 1)
            written, pos = Units.concat([written, c.units]), max(c.reached, pos + 1)
        results.append(written)
    return results


# ----- splicing into the user's score ---------------------------------------------------------------


@dataclass
class Edit:
    """One edited score and what changed (for the command's report and the piano roll)."""

    score: symusic.core.ScoreTick
    written: int
    removed: int
    span_steps: tuple[int, int]
    span_seconds: tuple[float, float]
    targets: tuple[int, ...]
    new_tracks: list = field(default_factory=list)
    compute_seconds: float = 0.0  # the call that wrote it (shared by the samples of one call)
    hearing: dict = field(default_factory=dict)  # song instrument -> heard as (``hearing.hearing_map``)

    @property
    def realtime(self) -> float:
        """Seconds of the span per second of compute."""
        return realtime(self.span_seconds[1] - self.span_seconds[0], self.compute_seconds)


def _notes_from_units(codec: Codec, song: Song, units: Units) -> dict:
    """Written units -> note arrays in the file's ticks, per instrument."""
    d = units.tok1 - codec.dv_start
    lv = codec.params.velocity_levels
    dur_steps = codec.durations[d // lv]
    onset = song.tick_of(units.time)
    return {
        "time": onset,
        "duration": np.maximum(1, song.tick_of(units.time + dur_steps) - onset),
        "pitch": (units.tok0 - codec.note_start) % 128,
        "velocity": codec._velocity_value(d % lv),
        "instrument": units.inst,
    }


def song_beats(song: Song, until: int = 0) -> BeatGrid:
    """The user's score's beats (its own meters), in the song's steps, to its last note's end or step
    ``until`` if later (a span may reach past the last note: ``infill_edits(open_end=True)``)."""
    end = max(notes_end_tick(song.score), int(song.tick_of(until)))
    g = meter_beat_grid(song.tpq, meters(song.score), end)
    steps = lambda ticks: song.step_of(np.round(ticks).astype(np.int64))  # noqa: E731
    return BeatGrid(steps(g.starts), steps(g.ends), g.bars, g.beats)


def harmonized(codec: Codec, song: Song, context: Units, start: int, end: int, chart=None,
               free: bool = False) -> Units:
    """``context`` with the chords over ``[start, end)`` as asked: the song's own (unchanged:
    ``song_chords``), ``chart`` laid out from the bar holding ``start`` (``midigen.generate.harmony``), or
    none (``free``: the model chooses). The song's own chord resumes at ``end``."""
    if not codec.has_chords or (chart is None and not free):
        return context
    is_chord = context.order == CHORD_ORDER
    resume = span_chords(context, end, end + 1)
    out = [context.select(~(is_chord & (context.time >= start) & (context.time <= end))), resume]
    if chart is not None:
        steps, ids = chart_changes(chart, song_beats(song, end), start, end)
        out.append(chords_at(steps, codec.chord_start + ids))
    return Units.concat(out)


def _edited(codec: Codec, song: Song, units: Units, remove, drop_instruments=(), marks: tuple | None = None) -> tuple:
    """The user's score less the notes ``remove(instrument, onset_steps) -> bool mask`` picks and the
    notes of ``drop_instruments``, plus ``units`` (``midigen.generate.splice``: each to its track, under
    the overlap rule), its chord symbols over the span replaced by ``marks`` (``_chord_marks``). A dropped
    part's track stays, empty, so every kept track keeps its MIDI channel. Returns (score, notes written,
    notes removed, instruments that got a new track)."""
    out = song.score.copy()
    original_end = song.score.end()
    removed = 0
    for t in out.tracks:
        if not t.note_num():
            continue
        a = t.notes.numpy()
        gone = (np.ones(len(a["time"]), bool) if track_instrument(t) in set(drop_instruments)
                else remove(track_instrument(t), song.step_of(a["time"])))
        if gone.any():
            removed += int(gone.sum())
            t.notes = symusic.core.NoteTickList.from_numpy(*(a[f][~gone] for f in FIELDS))
    new = _notes_from_units(codec, song, units.select(units.tok1 >= 0))
    new["duration"] = np.maximum(1, np.minimum(new["duration"], original_end - new["time"]))  # no ringing past the end
    out, written, new_tracks = splice(out, new)
    if marks is not None:  # the chord symbols the new notes were written on, in place of the span's
        replace_chord_markers(out, *marks)
    if out.end() < original_end:  # the song keeps its length where the end fell silent
        out.markers.append(symusic.core.TextMetaTick(original_end, "end"))
    return out, written, removed, new_tracks


# ----- the two tasks --------------------------------------------------------------------------------


def _decoder(model, codec, sampling: Sampling | None, device, listener) -> Decoder:
    if not codec.has_controls:
        raise UsageError(f"this checkpoint's codec v{codec.version} cannot edit (no editing tokens)")
    return Decoder(model, codec, sampling or Sampling(), device=device, listener=listener)


def _song(codec: Codec, score) -> Song:
    """The song to edit, its chords the song's own (``song_chords``)."""
    try:
        song = read_song(codec, score)
    except CodecError as e:
        raise UsageError(f"cannot edit this song: {e}") from None
    if codec.has_chords:
        song.units = Units.concat([song.units.select(song.units.order != CHORD_ORDER), song_chords(codec, song)])
    return song


def song_chords(codec: Codec, song: Song) -> Units:
    """The song's chords (chord units, file steps): what an edit that keeps its harmony is written on.
    The file's chord symbols (``Chord NAME`` markers: the user's, or an earlier edit's) from the first
    on, as a reader of the file takes them (the studio's chord lane); the labeller's hearing of every part
    (``read_song``'s chords) before the first, or everywhere in a file without any."""
    heard = chord_units(song.units)
    ticks, ids = marked_chord_ids(song.score)
    if not len(ticks):
        return heard
    steps = song.step_of(ticks)
    last = np.append(steps[1:] != steps[:-1], True)  # of several symbols on one step the last stands
    marked = chords_at(steps[last], codec.chord_start + ids[last])
    return Units.concat([heard.select(heard.time < steps[0]), marked])


def _heard_song(codec: Codec, song: Song, known_instruments, limits: NoteLimits | None, targets,
                left_out=()) -> tuple[Song, dict]:
    """(``song`` as the model hears it, the mapping of its instruments other than ``targets`` and
    ``left_out``) where the checkpoint's ``known_instruments`` are given; ``left_out`` parts are not
    heard at all. The song itself where nothing changes or nothing would be left."""
    if known_instruments is None:
        return song, {}
    mapping = hearing_map(song.score, known_instruments, limits or note_limits(None), exclude=(*targets, *left_out))
    if all(m == i for i, m in mapping.items()) and not left_out:
        return song, mapping
    try:
        heard_song = read_song(codec, song.score, {**mapping, **{int(i): None for i in left_out}})
    except CodecError:  # nothing heard around the hole: the model reads the parts as they are
        return song, {}
    u = heard_song.units  # the harmony stays the whole song's, as labelled with every part
    heard_song.units = Units.concat([u.select(u.order != CHORD_ORDER), chord_units(song.units)])
    return heard_song, mapping


def _chord_marks(codec: Codec, song: Song, plan: Plan, units: Units, first_tick: int) -> tuple | None:
    """(first tick, end tick, ticks, chord ids): the chord symbols an edit writes in place of the file's
    over its span, from ``first_tick`` (where it was asked to start: a bar line, before the step the
    snapped span starts on, ``span_steps``) to its end (``replace_chord_markers``). Over the span, the
    chords it was written on: the forced ones (the one it starts under marked at ``first_tick``), or the
    ones the model chose (``units``' chords). Then the song's own chords (``song_chords``)
    from the span's end up to the file's next symbol: the chord in force at the end restated there, and
    for a file without symbols (or with none yet) the labeller's changes after it, so a reader, which
    takes a file's symbols from its first on, reads the chords after the span as they were heard."""
    if not codec.has_chords:
        return None
    span = span_chords(plan.context, plan.start, plan.end) if plan.force_chords else chord_units(units)
    lo, hi = min(int(first_tick), song.first_tick_of(plan.start)), song.first_tick_of(plan.end)
    later, _ = marked_chord_ids(song.score)
    later = later[later >= hi]
    stop = int(song.step_of(later[0])) if len(later) else song.end_step()
    after = span_chords(song.units, plan.end, stop) if plan.end < stop else None
    chords = Units.concat([span, after])
    return lo, hi, np.where(chords.time == plan.start, lo, song.tick_of(chords.time)), chords.tok0 - codec.chord_start


def span_steps(song: Song, start_s: float, end_s: float) -> tuple[int, int]:
    """``[start_s, end_s)`` on the song's step grid, snapped inward: a note is rewritten only if it starts
    at or after ``start_s`` and before ``end_s``. The notes of a step are those whose onset rounds to it,
    so the span starts at the first step that no earlier note rounds to, and ends at the step that the
    first tick at ``end_s`` rounds to; a note within half a step inside either edge is kept."""
    first, last = (first_tick_at(song.score, x) for x in (start_s, end_s))
    return (0 if first == 0 else int(song.step_of(first - 1)) + 1), int(song.step_of(last))


def infill_edits(model, codec: Codec, score, *, start_s: float, end_s: float, instruments=None,
                 num_samples: int = 1, sampling: Sampling | None = None, controls=None, device=None,
                 listener: Listener | None = None, limits: NoteLimits | None = None, known_instruments=None,
                 chords=None, free_chords: bool = False, open_end: bool = False, bar_tones=None) -> list[Edit]:
    """``infill`` with what changed, for the command's report (``sampling``, ``limits``,
    ``known_instruments``, ``chords``, ``free_chords``: see ``arrange_edits``). ``open_end``: the span may
    reach past the last note, up to the score's last event (a song with a form writes its sections there:
    ``midigen.generate.form``, which also holds them to a key: ``Sampling.key``). ``bar_tones``: (ticks,
    (n, 12) weights, onset ticks), the pitch classes the span leans toward from each tick on and the onsets
    its rhythm leans on, ``Sampling.vary_weight`` nats at weight 1 (a variation's model bars:
    ``midigen.generate.form``).

    Chord symbols (v4): the span's ``Chord NAME`` markers are replaced by the chords it was written on,
    and the chord in force at the span's end is restated there; a file that had none also gets the
    labeller's changes from there to its end (``_chord_marks``): a reader takes a file's symbols from its
    first on, so without them the span's last chord would read as held to the end."""
    need_chords(codec, chords)
    dec = _decoder(model, codec, sampling, device, listener)
    song = _song(codec, score)
    if int(num_samples) < 1:
        raise UsageError("num_samples must be >= 1")
    if not (start_s >= 0 and end_s > start_s):
        raise UsageError(f"the span {start_s:g}-{end_s:g} s is empty or negative")
    end_step = max(song.end_step(), int(song.step_of(score.end())) if open_end else 0)
    qs, qe = span_steps(song, start_s, end_s)
    qe = min(qe, end_step)
    if qs >= end_step:
        raise UsageError(f"the span starts at {start_s:g} s, after the song's end "
                         f"({float(seconds_at_tick(score, int(song.tick_of(end_step)))):.1f} s)")
    if qe <= qs:
        raise UsageError(f"the span {start_s:g}-{end_s:g} s is shorter than one step of the song's grid")
    present = song.instruments
    targets = tuple(present if instruments is None else sorted({int(i) for i in instruments}))
    if not targets:
        raise UsageError("infill needs at least one instrument")
    song, hearing = _heard_song(codec, song, known_instruments, limits, targets)
    u = song.units
    gone = (u.tok1 >= 0) & np.isin(u.inst, targets) & (u.time >= qs) & (u.time < qe)
    context = harmonized(codec, song, u.select(~gone), qs, qe, chords, free_chords)
    plan = Plan(qs, qe, targets, sorted(set(heard_instruments(present, hearing)) | set(targets)), context,
                controls=tuple(controls or ()), limits=limits, force_chords=codec.has_chords and not free_chords,
                tones=None if bar_tones is None else (song.step_of(np.asarray(bar_tones[0], np.int64)), bar_tones[1],
                                                      song.step_of(np.asarray(bar_tones[2], np.int64))))
    remove = lambda inst, steps: (inst in targets) & (steps >= qs) & (steps < qe)  # noqa: E731
    span_s = tuple(float(seconds_at_tick(score, song.first_tick_of(q))) for q in (qs, qe))  # the onsets rewritten
    out = []
    t0 = time.perf_counter()
    written_units = write_plan(dec, codec, song, plan, int(num_samples))
    took = time.perf_counter() - t0
    for units in written_units:
        marks = _chord_marks(codec, song, plan, units, first_tick_at(score, start_s))
        s, written, removed, new_tracks = _edited(codec, song, units, remove, marks=marks)
        out.append(Edit(s, written, removed, (qs, qe), span_s, targets, new_tracks, took, hearing))
    return out


def arrange_edits(model, codec: Codec, score, *, add, keep=None, num_samples: int = 1,
                  sampling: Sampling | None = None, controls=None, device=None, listener: Listener | None = None,
                  limits: NoteLimits | None = None, known_instruments=None, chords=None,
                  free_chords: bool = False) -> list[Edit]:
    """``arrange`` with what changed, for the command's report. ``sampling``: how the tokens are drawn
    (``midigen.generate.sampling``; default ``Sampling()``: a seed drawn, nothing cut). ``limits``
    (``midigen.music.ranges.note_limits``) hold the written notes to each instrument's range and
    polyphony; None writes anything. ``known_instruments`` (the checkpoint's): the song's other
    instruments are heard as the nearest of them (``midigen.generate.hearing``); None hears them as
    they are. Chords (codec v4): the new parts follow the song's own chords over the span (its file's
    chord symbols, labelled from the whole song where it has none: ``song_chords``), and the file's
    symbols over the span become the chords written on (``_chord_marks``), unless ``chords`` (a chart,
    ``midigen.music.chordtext``) re-harmonizes it or ``free_chords`` lets the model choose; UsageError
    for a chart given to a model without chords."""
    need_chords(codec, chords)
    dec = _decoder(model, codec, sampling, device, listener)
    song = _song(codec, score)
    if int(num_samples) < 1:
        raise UsageError("num_samples must be >= 1")
    add = tuple(sorted({int(i) for i in add or ()}))
    if not add:
        raise UsageError("arrange needs at least one instrument to add")
    present = song.instruments
    keep = [i for i in present if i not in add] if keep is None else sorted({int(i) for i in keep})
    if set(keep) & set(add):
        raise UsageError("an instrument cannot be both kept and added: "
                         + ", ".join(instrument_name(i) for i in sorted(set(keep) & set(add))))
    missing = [i for i in keep if i not in present]
    if missing:
        raise UsageError("--keep names parts the song does not have: " + ", ".join(map(instrument_name, missing)))
    dropped = [i for i in present if i not in keep]
    song, hearing = _heard_song(codec, song, known_instruments, limits, add, left_out=dropped)
    heard_keep = heard_instruments(keep, hearing)
    u = song.units
    gone = (u.tok1 >= 0) & ~np.isin(u.inst, heard_keep)
    end = song.end_step()
    context = harmonized(codec, song, u.select(~gone), 0, end, chords, free_chords)
    plan = Plan(0, end, add, sorted(set(heard_keep) | set(add)), context, drop_after=True,
                controls=tuple(controls or ()), limits=limits, force_chords=codec.has_chords and not free_chords)
    never = lambda inst, steps: np.zeros(len(steps), bool)  # noqa: E731
    span_s = (0.0, float(seconds_at_tick(score, int(song.tick_of(end)))))
    out = []
    t0 = time.perf_counter()
    written_units = write_plan(dec, codec, song, plan, int(num_samples))
    took = time.perf_counter() - t0
    for units in written_units:
        s, written, removed, new_tracks = _edited(codec, song, units, never, drop_instruments=dropped,
                                                  marks=_chord_marks(codec, song, plan, units, 0))
        out.append(Edit(s, written, removed, (0, end), span_s, add, new_tracks, took, hearing))
    return out


def infill(model, codec: Codec, score, *, start_s: float, end_s: float, instruments=None, num_samples: int = 1,
           sampling: Sampling | None = None, controls=None, device=None, listener: Listener | None = None,
           limits: NoteLimits | None = None) -> list[symusic.core.ScoreTick]:
    """Rewrite ``[start_s, end_s)`` of ``score`` for ``instruments`` (default: all it has).

    The notes of those instruments that start in the span (snapped inward to the model's 1/24-beat
    grid: ``span_steps``) are replaced by new ones written from the music on both sides; everything
    else is the user's score, untouched. One score per sample; the same seed gives the same scores.
    """
    return [e.score for e in infill_edits(
        model, codec, score, start_s=start_s, end_s=end_s, instruments=instruments, num_samples=num_samples,
        sampling=sampling, controls=controls, device=device, listener=listener, limits=limits)]


def arrange(model, codec: Codec, score, *, add, keep=None, num_samples: int = 1, sampling: Sampling | None = None,
            controls=None, device=None, listener: Listener | None = None,
            limits: NoteLimits | None = None) -> list[symusic.core.ScoreTick]:
    """Write parts for the instruments ``add`` over the whole song, keeping the parts ``keep`` (default:
    every part it has that is not being added) exactly and dropping the others."""
    return [e.score for e in arrange_edits(
        model, codec, score, add=add, keep=keep, num_samples=num_samples, sampling=sampling, controls=controls,
        device=device, listener=listener, limits=limits)]
