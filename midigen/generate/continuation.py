"""Continuation at the score level: the prompt up to a point, and the result spliced onto the user's notes.

``sample --prompt`` and the studio's Continue both go through here. Kept music never passes through
tokens: the output is the user's own score cut at the point (every event before it untouched: notes
with their full durations, tempos, meters, controls, tracks) plus the newly decoded notes placed from
the point on (``midigen.generate.splice``: the same splice and overlap rule as infill and arrange).

The point is the first tick at or after the asked second (a note starting before it is kept; one
starting at or after it is dropped), or, without one, the end of the song's last onset. The prompt
hears the silence up to the point (as far as the codec's longest gap allows), and the first new onset
comes at or after the point: token time is placed on the song from the step where the prompt ends,
which is the point's tick (or later, while the prompt's own notes are still to come).

The prompt is the song as the model hears it (``midigen.generate.hearing``: an instrument it never
learned as the nearest one it knows, drums left out if it never learned them); new notes of an
instrument that stands for one of the song's are written onto that instrument's tracks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import symusic

from midigen.errors import UsageError
from midigen.generate.hearing import heard, heard_instruments, written_as
from midigen.generate.splice import splice
from midigen.music.chordtext import add_chord_markers
from midigen.music.codec import Codec, CodecError, Kind, score_instruments
from midigen.music.timing import TempoMap, first_tick_at, seconds_at_tick


@dataclass
class Plan:
    """How one continuation maps token time onto the song."""

    cut: int | None  # tick where the kept part ends (None: the whole song is kept)
    prompt: np.ndarray | None  # tokens to continue (None: nothing before the point; start a new header)
    instruments: list[int]  # the song's instruments, as the model hears them
    tempo: float  # BPM in force where the new part starts
    start_tick: int  # where the new part starts: token time ``start_steps`` is this tick of the song
    start_steps: int
    start_seconds: float
    hearing: dict = field(default_factory=dict)  # song instrument -> heard as (``hearing.hearing_map``)


def _shifts(codec: Codec, steps: int) -> list[int]:
    """SHIFT tokens for a gap of ``steps``, written the way the encoder writes a gap."""
    m = codec.params.max_shift
    out = [codec.shift_token(m)] * (steps // m)
    if steps % m:
        out.append(codec.shift_token(steps % m))
    return out


def _last_onset(kept) -> int:
    return max(int(np.max(t.notes.numpy()["time"])) for t in kept.tracks if t.note_num())


def plan(codec: Codec, score, at_seconds: float | None, hearing: dict | None = None) -> Plan:
    """The prompt for continuing ``score`` from ``at_seconds`` (None: from its end), as the model hears
    it under ``hearing`` (``midigen.generate.hearing.hearing_map``; None: every instrument as itself)."""
    hearing = dict(hearing or {})
    cut = None if at_seconds is None else first_tick_at(score, max(0.0, float(at_seconds)))
    kept = heard(score if cut is None else score.clip(0, cut, False), hearing)
    insts = heard_instruments(score_instruments(score), hearing)
    if kept.note_num() == 0:
        tick = cut or 0
        return Plan(cut, None, insts, TempoMap(score).bpm_at(tick), tick, 0, float(seconds_at_tick(score, tick)),
                    hearing)
    try:
        prompt = codec.encode_score(kept).astype(np.int64)
    except CodecError as e:
        raise UsageError(f"cannot continue this piece: {e}") from None
    ev = codec.decode_events(prompt)
    last_steps, end_steps = int(np.max(ev["notes"]["time"])), int(ev["end_step"])
    last_tick = _last_onset(kept)
    scale = codec.params.steps_per_quarter / score.ticks_per_quarter
    point = cut if cut is not None else _last_onset(score)  # (a part left out may sound after what is heard)
    if point > last_tick:  # move the prompt's "now" to the point, as a silence the model hears
        want = int(round((point - last_tick) * scale)) - (end_steps - last_steps)
        gap = max(0, min(want, codec.params.max_gap - (end_steps - last_steps)))
        if gap:
            body = prompt[:-1] if prompt[-1] == codec.EOS else prompt
            prompt = np.concatenate((body, _shifts(codec, gap)))
            end_steps += gap
    start_tick = max(point, last_tick + int(round((end_steps - last_steps) / scale)))
    tempo = float(ev["tempo_bpm"][-1]) if len(ev["tempo_bpm"]) else TempoMap(score).bpm_at(start_tick)
    return Plan(cut, prompt, insts, tempo, start_tick, end_steps, float(seconds_at_tick(score, start_tick)), hearing)


def continued(codec: Codec, score, p: Plan, tokens, start_index: int, time_signature: tuple[int, int] | None = None):
    """The user's score cut at ``p.cut`` plus the notes and tempo changes that tokens[start_index:] wrote
    (a sample continuing ``p.prompt``); ``time_signature`` (n, d), if given, starts where they do."""
    tokens = np.asarray(tokens, dtype=np.int64)
    ev = codec.decode_events(tokens)
    head = tokens[:start_index]
    n_old = codec.count_notes(head)
    n_old_tempos = int(np.count_nonzero((head >= codec.tempo_start) & (head < codec.ts_start)))
    scale = score.ticks_per_quarter / codec.params.steps_per_quarter

    def to_tick(steps):
        return p.start_tick + np.round((np.asarray(steps) - p.start_steps) * scale).astype(np.int64)

    out = score.copy() if p.cut is None else score.clip(0, p.cut, False)
    for steps, bpm in zip(ev["tempo_time"][n_old_tempos:], ev["tempo_bpm"][n_old_tempos:]):
        out.tempos.append(symusic.Tempo(int(to_tick(steps)), float(bpm)))
    if time_signature is not None:
        out.time_signatures.append(symusic.TimeSignature(p.start_tick, *time_signature))
    notes = {k: v[n_old:] for k, v in ev["notes"].items()}
    notes["time"] = to_tick(notes["time"])
    notes["duration"] = np.maximum(1, np.round(notes["duration"] * scale)).astype(np.int64)
    back = written_as(p.hearing, score_instruments(score))
    notes["instrument"] = np.array([back.get(int(i), int(i)) for i in notes["instrument"]], np.int64)
    n_old_chords = int(np.count_nonzero(codec.kinds(head) == Kind.CHORD))  # the new part's chord symbols
    add_chord_markers(out, to_tick(ev["chord_time"][n_old_chords:]), ev["chord_id"][n_old_chords:])
    return splice(out, notes)[0]


def stream_head(codec: Codec, p: Plan, instruments) -> np.ndarray:
    """Header tokens for decoding the continuation's new tokens alone (time 0 = where it starts)."""
    insts = sorted(set(p.instruments) | set(int(i) for i in instruments or []))
    return np.array([codec.BOS] + [codec.inst_token(i) for i in insts] + [codec.tempo_token(p.tempo)], np.int64)
