"""Continuation at the score level: the prompt up to a point, and the result spliced onto the user's notes.

Kept music never passes through tokens: the output is the user's own score cut at the point (every
event before it untouched: notes, their full durations, tempos, meters, controls, tracks) plus the
newly decoded notes placed after it. Token time is only used *relative* to the last kept note, so a
prompt whose long silences the codec shortened still lines up with the real song.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import symusic

from midigen.music.codec import DRUMS, Codec, CodecError, instrument_name
from midigen.errors import UsageError
from midigen.studio.roll import instruments_of, track_instrument
from midigen.music.timing import TempoMap


@dataclass
class Plan:
    """How one continuation maps token time onto the song."""

    cut: int | None  # tick where the kept part ends (None: the whole song is kept)
    prompt: np.ndarray | None  # tokens to continue (None: nothing before the point; start a new header)
    instruments: list[int]  # the song's instruments
    tempo: float  # BPM in force where the new part starts
    anchor_tick: int  # token time ``anchor_steps`` is this tick of the song
    anchor_steps: int
    start_tick: int  # where the new part starts (tick)
    start_seconds: float


def _shifts(codec: Codec, steps: int) -> list[int]:
    """SHIFT tokens for a gap of ``steps``, written the way the encoder writes a gap."""
    m = codec.params.max_shift
    out = [codec.shift_token(m)] * (steps // m)
    if steps % m:
        out.append(codec.shift_token(steps % m))
    return out


def plan(codec: Codec, score, at_seconds: float | None) -> Plan:
    """The prompt for continuing ``score`` from ``at_seconds`` (None: from its end)."""
    tm = TempoMap(score)
    cut = None if at_seconds is None else int(tm.ticks(max(0.0, float(at_seconds))))
    kept = score if cut is None else score.clip(0, cut, False)
    insts = instruments_of(score)
    scale = codec.params.steps_per_quarter / score.ticks_per_quarter
    if kept.note_num() == 0:
        tick = cut or 0
        return Plan(cut, None, insts, tm.bpm_at(tick), tick, 0, tick, float(tm.seconds(tick)))
    try:
        prompt = codec.encode_score(kept).astype(np.int64)
    except CodecError as e:
        raise UsageError(f"cannot continue this piece: {e}") from None
    ev = codec.decode_events(prompt)
    last_steps = int(np.max(ev["notes"]["time"]))
    last_tick = max(int(np.max(t.notes.numpy()["time"])) for t in kept.tracks if t.note_num())
    end_steps = int(ev["end_step"])
    if cut is not None:  # move the prompt's "now" to the point, as a silence the model hears
        want = int(round((cut - last_tick) * scale)) - (end_steps - last_steps)
        room = codec.params.max_gap - (end_steps - last_steps)
        gap = max(0, min(want, room))
        if gap:
            body = prompt[:-1] if prompt[-1] == codec.EOS else prompt
            prompt = np.concatenate((body, _shifts(codec, gap)))
            end_steps += gap
    start_tick = last_tick + int(round((end_steps - last_steps) / scale))
    tempo = float(ev["tempo_bpm"][-1]) if len(ev["tempo_bpm"]) else tm.bpm_at(start_tick)
    return Plan(cut, prompt, insts, tempo, last_tick, last_steps, start_tick, float(tm.seconds(start_tick)))


def _track(out, inst: int, name: str | None = None):
    """The first track of ``out`` that plays ``inst`` (and has ``name``, if given), else a new one."""
    for track in out.tracks:
        if track_instrument(track) == inst and (name is None or track.name == name):
            return track
    track = symusic.Track(name or instrument_name(inst), 0 if inst == DRUMS else inst, inst == DRUMS)
    out.tracks.append(track)
    return out.tracks[len(out.tracks) - 1]


def _clashes(track, t: np.ndarray, d: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """Which new notes overlap a note of the same pitch already on ``track``.

    A MIDI file cannot hold two overlapping notes of one pitch on one track unambiguously: a reader
    pairs the note-offs its own way and the kept note comes back with another length. Such new notes
    go to a track of their own instead.
    """
    a = track.notes.numpy()
    out = np.zeros(len(t), bool)
    if not len(a["time"]):
        return out
    ks, ke, kp = a["time"].astype(np.int64), a["time"].astype(np.int64) + a["duration"], a["pitch"]
    for p in np.unique(pitch):
        mine = np.flatnonzero(pitch == p)
        same = kp == p
        if same.any():
            s, e = ks[same], ke[same]
            out[mine] = [bool(np.any((s < t[i] + d[i]) & (e > t[i]))) for i in mine]
    return out


def _append(track, t, d, pitch, vel) -> None:
    a = track.notes.numpy()
    track.notes = symusic.core.NoteTickList.from_numpy(
        np.concatenate((a["time"], t)).astype(np.int32), np.concatenate((a["duration"], d)).astype(np.int32),
        np.concatenate((a["pitch"], pitch)).astype(np.int8), np.concatenate((a["velocity"], vel)).astype(np.int8))


def splice(codec: Codec, score, p: Plan, tokens: np.ndarray, start_index: int):
    """The user's score cut at ``p.cut`` plus the notes and tempo changes that tokens[start_index:] wrote."""
    tokens = np.asarray(tokens, dtype=np.int64)
    ev = codec.decode_events(tokens)
    head = tokens[:start_index]
    n_old = codec.count_notes(head)
    n_old_tempos = int(np.count_nonzero((head >= codec.tempo_start) & (head < codec.ts_start)))
    scale = score.ticks_per_quarter / codec.params.steps_per_quarter
    to_tick = lambda steps: p.anchor_tick + np.round((np.asarray(steps) - p.anchor_steps) * scale).astype(np.int64)

    out = score.copy() if p.cut is None else score.clip(0, p.cut, False)
    notes = {k: v[n_old:] for k, v in ev["notes"].items()}
    for inst in np.unique(notes["instrument"]):
        sel = notes["instrument"] == inst
        t = to_tick(notes["time"][sel])
        d = np.maximum(1, np.round(notes["duration"][sel] * scale)).astype(np.int64)
        pitch, vel = notes["pitch"][sel], notes["velocity"][sel]
        track = _track(out, int(inst))
        clash = _clashes(track, t, d, pitch)
        _append(track, t[~clash], d[~clash], pitch[~clash], vel[~clash])
        if clash.any():
            extra = _track(out, int(inst), f"{instrument_name(int(inst))} (new)")
            _append(extra, t[clash], d[clash], pitch[clash], vel[clash])
    for steps, bpm in zip(ev["tempo_time"][n_old_tempos:], ev["tempo_bpm"][n_old_tempos:]):
        out.tempos.append(symusic.Tempo(int(to_tick(steps)), float(bpm)))
    return out


def stream_head(codec: Codec, p: Plan, instruments) -> np.ndarray:
    """Header tokens for decoding the continuation's new tokens alone (time 0 = where it starts)."""
    insts = sorted(set(p.instruments) | set(int(i) for i in instruments or []))
    return np.array([codec.BOS] + [codec.inst_token(i) for i in insts] + [codec.tempo_token(p.tempo)], np.int64)
