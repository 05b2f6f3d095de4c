"""Song time, once for the whole project: ticks <-> steps <-> seconds <-> bars.

Tokens: a SHIFT of k steps lasts k * 60 / (bpm * steps_per_quarter) seconds under the tempo in force,
the last TEMPO token before it in its song. Before a song's first TEMPO token, that first tempo holds
(as ``Codec.decode`` reads it); a song without one plays at 120 BPM. A BOS starts a new song.

Scores: a MIDI tempo map (ticks, microseconds per quarter); MIDI's default 120 BPM holds until the
first tempo event, and at equal ticks the last tempo event wins. Bars follow the score's time
signatures: each one starts a new bar where it falls (as notation programs do); 4/4 before the first.
The piano roll, the playhead, ``--bars`` and "continue from 0:12" all ask these functions; chords are
labelled on the beats ``beat_grid`` lays out (dotted beats in compound meters).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from midigen.errors import UsageError

DEFAULT_BPM = 120.0
DEFAULT_MSPQ = 60e6 / DEFAULT_BPM  # MIDI's tempo until the first tempo event
MAX_LINES = 20_000  # bar or beat lines ``grid`` returns at most (a hostile meter cannot flood a page)
_CHUNK = 1 << 24  # tokens per pass over a long split, so memory stays bounded


def token_seconds(codec, tokens) -> np.ndarray:
    """Seconds each token advances the music (0 for all but SHIFT tokens), float64, for a stream of songs."""
    return _token_seconds(codec, tokens)[0]


def _token_seconds(codec, tokens, carry: float | None = None) -> tuple[np.ndarray, float | None]:
    """``token_seconds``, continuing a song cut by a chunk boundary: ``carry`` is the tempo in force there.

    Also returns the tempo in force after the last token (None when its song has had no TEMPO yet).
    """
    t = np.asarray(tokens).astype(np.int64, copy=False).ravel()
    n = len(t)
    out = np.zeros(n, dtype=np.float64)
    if n == 0:
        return out, carry
    kind = codec.kinds(t)
    is_shift = kind == codec.KINDS.index("shift")
    is_tempo = kind == codec.KINDS.index("tempo")
    is_bos = t == codec.BOS
    marks = is_tempo | is_bos
    idx = np.arange(n)
    song = np.cumsum(is_bos)
    # the tempo in force: the last TEMPO of the song at or before the token ...
    last = np.maximum.accumulate(np.where(marks, idx, -1))
    # ... or, before the song's first TEMPO, that first one (found scanning backwards)
    nxt = np.minimum.accumulate(np.where(marks, idx, n)[::-1])[::-1]
    use = np.where((last >= 0) & is_tempo[np.maximum(last, 0)], last, nxt)
    safe = np.minimum(use, n - 1)
    valid = (use < n) & is_tempo[safe] & (song[safe] == song)
    bpm = np.full(n, DEFAULT_BPM)
    bpm[valid] = codec.tempo_bpm[t[use[valid]] - codec.tempo_start]
    if carry is not None:  # the chunk starts inside a song whose tempo is known
        first_mark = int(np.argmax(marks)) if marks.any() else n
        bpm[:first_mark] = carry
    steps = codec.shift_steps()[np.where(is_shift, t, 0)]
    out[is_shift] = steps[is_shift] * seconds_per_step(codec, bpm[is_shift])
    final = int(last[-1])
    if final < 0:  # no TEMPO or BOS in the chunk: still the carried tempo
        return out, carry
    if is_bos[final]:  # a song that has had no TEMPO yet
        return out, None
    return out, float(codec.tempo_bpm[t[final] - codec.tempo_start])


def seconds_per_step(codec, bpm) -> np.ndarray:
    return 60.0 / (np.asarray(bpm, dtype=np.float64) * codec.params.steps_per_quarter)


def song_seconds(codec, tokens) -> float:
    """Seconds of music in a token sequence (one song or several, each starting with BOS)."""
    return float(token_seconds(codec, tokens).sum())


def positions_seconds(codec, tokens, positions) -> float:
    """Seconds covered by the tokens at ``positions`` (sorted, absolute) of a split's stream of songs.

    This is the music behind the tokens an evaluation scores: bits per second divides total bits by it.
    Long streams are read in chunks, the tempo in force carried from one to the next.
    """
    positions = np.asarray(positions, dtype=np.int64)
    if len(positions) == 0:
        return 0.0
    end = int(positions[-1]) + 1
    total, carry = 0.0, None
    for a in range(0, end, _CHUNK):
        b = min(end, a + _CHUNK)
        secs, carry = _token_seconds(codec, np.asarray(tokens[a:b]), carry)
        lo, hi = np.searchsorted(positions, [a, b])
        total += float(secs[positions[lo:hi] - a].sum())
    return total


def steps_to_seconds(codec, tempo_time, tempo_bpm, steps) -> np.ndarray:
    """Seconds at step values ``steps`` under a decoded tempo map (``Codec.decode_events``' tempo_time/bpm)."""
    t_time = np.asarray(tempo_time, dtype=np.float64)
    t_bpm = np.asarray(tempo_bpm, dtype=np.float64)
    if len(t_bpm) == 0:
        t_time, t_bpm = np.array([0.0]), np.array([DEFAULT_BPM])
    t_time = t_time.copy()
    t_time[0] = 0.0  # the first tempo holds from the start
    sps = seconds_per_step(codec, t_bpm)
    seg_start = np.concatenate(([0.0], np.cumsum(np.diff(t_time) * sps[:-1])))
    k = np.clip(np.searchsorted(t_time, steps, side="right") - 1, 0, len(t_time) - 1)
    return seg_start[k] + (np.asarray(steps, dtype=np.float64) - t_time[k]) * sps[k]


# ----- symusic scores (ticks) -------------------------------------------------------------------


class TempoMap:
    """Piecewise-constant tempo of a symusic ScoreTick; converts whole arrays of ticks and seconds."""

    def __init__(self, score):
        self.tpq = float(score.ticks_per_quarter)
        times, mspq = np.zeros(0), np.zeros(0)
        if len(score.tempos):
            t = score.tempos.numpy()
            order = np.argsort(t["time"], kind="stable")  # equal times: the last one wins
            times = t["time"][order].astype(np.float64)
            mspq = np.maximum(t["mspq"][order].astype(np.float64), 1.0)
        if not len(times) or times[0] > 0:
            times, mspq = np.concatenate(([0.0], times)), np.concatenate(([DEFAULT_MSPQ], mspq))
        self.times, self.mspq = times, mspq
        self.starts = np.concatenate(([0.0], np.cumsum(np.diff(times) * mspq[:-1] / 1e6 / self.tpq)))

    def seconds(self, ticks) -> np.ndarray:
        t = np.asarray(ticks, dtype=np.float64)
        i = np.clip(np.searchsorted(self.times, t, side="right") - 1, 0, None)
        return self.starts[i] + (t - self.times[i]) * self.mspq[i] / 1e6 / self.tpq

    def ticks(self, seconds) -> np.ndarray:
        s = np.asarray(seconds, dtype=np.float64)
        i = np.clip(np.searchsorted(self.starts, s, side="right") - 1, 0, None)
        return np.round(self.times[i] + (s - self.starts[i]) * 1e6 * self.tpq / self.mspq[i]).astype(np.int64)

    def bpm_at(self, tick: int) -> float:
        i = max(0, int(np.searchsorted(self.times, tick, side="right")) - 1)
        return 60e6 / float(self.mspq[i])


def seconds_at_tick(score, ticks) -> np.ndarray:
    """Seconds at tick positions ``ticks`` of a symusic score (tick-based), following its tempo map."""
    return TempoMap(score).seconds(ticks)


def tick_at_seconds(score, seconds: float) -> int:
    """The tick where ``seconds`` of the score's tempo map have passed."""
    return int(TempoMap(score).ticks(seconds))


def first_tick_at(score, seconds: float) -> int:
    """The first tick that is at or after ``seconds``: every note before it starts before ``seconds``
    (``tick_at_seconds`` rounds, so a note half a tick earlier could fall on the tick it gives)."""
    tm = TempoMap(score)
    at = seconds - 1e-9  # float noise: a tick computed to sit a hair before ``seconds`` is at it
    tick = max(0, int(tm.ticks(seconds)))
    while tick > 0 and float(tm.seconds(tick - 1)) >= at:
        tick -= 1
    while float(tm.seconds(tick)) < at:
        tick += 1
    return tick


def notes_end_seconds(score) -> float:
    """When the last note of a (tick-based) score stops sounding (0 without notes); other events far
    beyond it do not make a song long."""
    end = notes_end_tick(score)
    return float(TempoMap(score).seconds(end)) if end else 0.0


def notes_end_tick(score) -> int:
    """The tick where the last note of a (tick-based) score stops sounding; 0 without notes."""
    ends = [int(np.max(a["time"].astype(np.int64) + a["duration"])) for a in
            (t.notes.numpy() for t in score.tracks if t.note_num())]
    return max(ends) if ends else 0


# ----- bars and beats ---------------------------------------------------------------------------


def meters(score) -> list[tuple[int, int, int]]:
    """(tick, numerator, denominator) of each usable time signature, in order; 4/4 when there is none."""
    out = []
    for ts in sorted(score.time_signatures, key=lambda x: x.time):
        n, d = int(ts.numerator), int(ts.denominator)
        if n < 1 or d < 1 or d > 64:
            continue
        if out and out[-1][0] == int(ts.time):
            out[-1] = (int(ts.time), n, d)
        else:
            out.append((int(ts.time), n, d))
    if not out or out[0][0] > 0:
        out.insert(0, (0, 4, 4))
    return out


def grid(score, end_tick: int) -> tuple[np.ndarray, np.ndarray]:
    """(bar ticks, beat ticks) up to ``end_tick``: each meter restarts the bar count where it begins."""
    tpq = score.ticks_per_quarter
    bars, beats = [], []
    ms = meters(score)
    for k, (start, n, d) in enumerate(ms):
        stop = ms[k + 1][0] if k + 1 < len(ms) else end_tick + 1
        beat = tpq * 4.0 / d
        if beat <= 0:
            continue
        room = MAX_LINES - len(beats)
        if room <= 0:
            break
        nb = min(int(np.ceil((stop - start) / beat)), room)
        t = start + beat * np.arange(max(nb, 0))
        beats.append(t)
        bars.append(t[(np.arange(len(t)) % n) == 0])
    cat = lambda xs: np.round(np.concatenate(xs)).astype(np.int64) if xs else np.zeros(0, np.int64)  # noqa: E731
    return cat(bars), cat(beats)


def bar_tick(score, bar: int) -> int:
    """The tick where bar ``bar`` (counted from 1) starts, walking the score's meters."""
    tpq = score.ticks_per_quarter
    ms = meters(score)
    first = 1
    for k, (at, n, d) in enumerate(ms):
        length = max(1, n * tpq * 4 // d)
        here = -(-(ms[k + 1][0] - at) // length) if k + 1 < len(ms) else None  # bars this meter holds
        if here is None or first + here > bar:
            return at + (bar - first) * length
        first += here
    raise AssertionError("unreachable: the last meter runs forever")


def bars_to_seconds(score, first_bar: int, last_bar: int) -> tuple[float, float]:
    """(start, end) seconds of bars ``first_bar..last_bar`` (counted from 1, inclusive) on the song's
    own time signatures and tempo map."""
    if first_bar < 1 or last_bar < first_bar:
        raise UsageError(f"bars {first_bar}-{last_bar}: count from 1, the first bar not after the last")
    tm = TempoMap(score)
    return float(tm.seconds(bar_tick(score, first_bar))), float(tm.seconds(bar_tick(score, last_bar + 1)))


# ----- beats, for chord labels ------------------------------------------------------------------


@dataclass(frozen=True)
class BeatGrid:
    """The beats of a song as its time signatures lay them out, up to the end of its last note.

    ``starts``/``ends``: ticks where each beat starts and stops (float: a beat of an odd meter may
    fall between ticks); ``bars``/``beats``: its bar and its beat in that bar, both from 0. A change
    of time signature starts a new bar, even where the bar before it was cut short.
    """

    starts: np.ndarray
    ends: np.ndarray
    bars: np.ndarray
    beats: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)


def beat_ticks(tpq: int, numerator: int, denominator: int) -> float:
    """Ticks per beat: the denominator's note, or its dotted value in compound meters (6/8, 9/8, 12/8)."""
    unit = tpq * 4.0 / denominator
    compound = denominator >= 8 and numerator > 3 and numerator % 3 == 0
    return unit * 3 if compound else unit


def _beats_in(tpq: int, meter: tuple[int, int, int], next_tick: float, end: int) -> int:
    """How many beats a time signature lays out from its tick to the next one's (or the song's end)."""
    tick, num, den = meter
    stop = min(float(next_tick), float(end))
    return max(0, int(np.ceil((stop - tick) / beat_ticks(tpq, num, den) - 1e-9)))


def beat_grid(score, max_beats: int | None = None) -> BeatGrid:
    """The bars and beats of a (tick-based) symusic score, from its time signatures (see ``BeatGrid``).

    ``max_beats``: a ValueError instead of a grid longer than that (a hostile file's note hours long
    under a 1/64 meter would otherwise ask for billions of beats).
    """
    return meter_beat_grid(score.ticks_per_quarter, meters(score), notes_end_tick(score), max_beats)


def meter_beat_grid(tpq: int, ms: list[tuple[int, int, int]], end: int, max_beats: int | None = None) -> BeatGrid:
    """``beat_grid`` from the parts it reads: ticks per quarter, the (tick, numerator, denominator) meters
    (the first at tick 0) and the tick the music ends at. A token stream's grid is one meter in steps."""
    counts = [_beats_in(tpq, m, ms[k + 1][0] if k + 1 < len(ms) else end, end) for k, m in enumerate(ms)]
    if max_beats is not None and sum(counts) > max_beats:
        raise ValueError(f"{sum(counts)} beats (at most {max_beats} are labelled)")
    starts, bars, beats = [], [], []
    bar = 0
    for k, (tick, num, den) in enumerate(ms):
        step = beat_ticks(tpq, num, den)
        per_bar = max(1, round(num * tpq * 4.0 / den / step))
        n = counts[k]
        i = np.arange(n)
        starts.append(tick + i * step)
        bars.append(bar + i // per_bar)
        beats.append(i % per_bar)
        bar += -(-n // per_bar)
    s = np.concatenate(starts) if starts else np.zeros(0)
    e = np.append(s[1:], float(end)) if len(s) else s
    return BeatGrid(s, e, np.concatenate(bars).astype(np.int64), np.concatenate(beats).astype(np.int64))
