"""What the page draws: a score as piano-roll JSON, and streamed tokens as notes.

Times go to the page in seconds (the audio element's clock), so the playhead, the notes and the
bar lines agree whatever the song's tempo map does.
"""
from __future__ import annotations

import numpy as np

from midigen.music.codec import Codec, instrument_name, track_instrument
from midigen.music.timing import MAX_LINES, TempoMap, grid, meters
from midigen.generate.edit import written_units
from midigen.generate.form import section_bands
from midigen.generate.render import bar_chord_names, bar_spans


def _r(x) -> list:
    return np.round(np.asarray(x, dtype=np.float64), 4).tolist()


def score_roll(score) -> dict:
    """Every track with notes, the song's length, bar and beat lines, tempos and meters (seconds), and the
    chords of each bar (``bar_chords``)."""
    tm = TempoMap(score)
    tracks, end_tick = [], 0
    for i, track in enumerate(score.tracks):
        if not track.note_num():
            continue
        a = track.notes.numpy()
        t, d = a["time"].astype(np.int64), a["duration"].astype(np.int64)
        on, off = tm.seconds(t), tm.seconds(t + np.maximum(d, 0))
        end_tick = max(end_tick, int(np.max(t + d)))
        inst = track_instrument(track)
        tracks.append({
            "index": i, "name": str(track.name)[:80], "instrument": inst, "label": instrument_name(inst),
            "drums": bool(track.is_drum), "start": _r(on), "duration": _r(off - on),
            "pitch": a["pitch"].astype(int).tolist(), "velocity": a["velocity"].astype(int).tolist(),
        })
    bars, beats = grid(score, end_tick)
    tempos = sorted(((int(x.time), 60e6 / max(1, int(x.mspq))) for x in score.tempos), key=lambda x: x[0])
    return {
        "duration": round(float(tm.seconds(end_tick)), 4),
        "ticks_per_quarter": int(score.ticks_per_quarter),
        "tracks": tracks,
        "bars": _r(tm.seconds(bars)),
        "beats": _r(tm.seconds(beats)),
        "tempos": [{"time": round(float(tm.seconds(t)), 4), "bpm": round(b, 2)} for t, b in tempos[:2000]],
        "time_signatures": [{"time": round(float(tm.seconds(t)), 4), "numerator": n, "denominator": d}
                            for t, n, d in meters(score)[:2000]],
        "sections": [{"label": label[:80], "start": round(a, 4), "end": round(b, 4)}
                     for a, b, label in section_bands(score)[:2000]],
        "chords": bar_chords(score),
    }


def bar_chords(score) -> list[dict]:
    """Each bar's start and end (seconds) and its chords, at most ``MAX_LINES`` bars, as the png's lane
    names them (``midigen.generate.render.bar_chord_names``: the chord symbols the file carries, the
    labeller's hearing only where it carries none)."""
    spans = bar_spans(score)[:MAX_LINES]
    names = bar_chord_names(score)
    return [{"start": round(a, 4), "end": round(b, 4), "chords": names[k] if k < len(names) else ""}
            for k, (a, b) in enumerate(spans)]


def step_seconds(codec: Codec, ev: dict, steps: np.ndarray) -> np.ndarray:
    """Seconds at token-time ``steps`` under the tempo tokens of a decoded stream (120 BPM before any)."""
    spq = codec.params.steps_per_quarter
    times = np.asarray(ev["tempo_time"], dtype=np.float64)
    bpm = np.asarray(ev["tempo_bpm"], dtype=np.float64)
    if not len(times) or times[0] > 0:
        times, bpm = np.concatenate(([0.0], times)), np.concatenate(([120.0], bpm))
    per_step = 60.0 / (bpm * spq)
    starts = np.concatenate(([0.0], np.cumsum(np.diff(times) * per_step[:-1])))
    s = np.asarray(steps, dtype=np.float64)
    i = np.clip(np.searchsorted(times, s, side="right") - 1, 0, None)
    return starts[i] + (s - times[i]) * per_step[i]


def stream_notes(codec: Codec, head: np.ndarray, new: np.ndarray, offset: float) -> list[list[float]]:
    """Notes of ``head`` + ``new`` tokens that ``new`` wrote, as [start s, duration s, pitch, velocity,
    instrument] rows shifted by ``offset`` seconds, in the order they were written."""
    tokens = np.concatenate((np.asarray(head, np.int64), np.asarray(new, np.int64)))
    ev = codec.decode_events(tokens)
    skip = codec.count_notes(head)
    n = ev["notes"]
    t, d = n["time"][skip:], n["duration"][skip:]
    if not len(t):
        return []
    on = step_seconds(codec, ev, t)
    off = step_seconds(codec, ev, t + d)
    rows = np.stack([np.round(on + offset, 4), np.round(off - on, 4), n["pitch"][skip:],
                     n["velocity"][skip:], n["instrument"][skip:]], axis=1)
    return rows.tolist()


def written_notes(codec: Codec, tokens: np.ndarray, start_step: int, song, targets,
                  tempo: TempoMap) -> list[list[float]]:
    """Notes of an edit chunk's written part (the tokens after FILL, timed in the song's own steps from
    ``start_step``) for the ``targets`` instruments, as rows like ``stream_notes``'s, in seconds on the
    song's tempo map (``tempo``), in the order they were written."""
    units, _, _ = written_units(codec, tokens, int(start_step))
    units = units.select(np.isin(units.inst, np.asarray(targets, np.int64)))
    if not len(units):
        return []
    dv = [codec.dv_of(int(t)) for t in units.tok1]
    steps = np.array([d for d, _ in dv], np.int64)
    on = tempo.seconds(song.tick_of(units.time))
    off = tempo.seconds(song.tick_of(units.time + steps))
    rows = np.stack([np.round(on, 4), np.round(off - on, 4), (units.tok0 - codec.note_start) % 128,
                     np.array([v for _, v in dv]), units.inst], axis=1)
    return rows.tolist()
