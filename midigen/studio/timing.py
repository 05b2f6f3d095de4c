"""Song time: ticks <-> seconds through a score's tempo map, and bar/beat lines from its meters.

The roll, the playhead and "continue from 0:12" all need the same answer to "when is this tick?",
so one class holds the tempo map and converts whole arrays at once.
"""
from __future__ import annotations

import numpy as np

DEFAULT_MSPQ = 500_000.0  # MIDI's tempo until the first tempo event: 120 BPM
MAX_LINES = 20_000  # bar or beat lines drawn at most (a hostile meter cannot flood the page)


class TempoMap:
    """Piecewise-constant tempo of a symusic ScoreTick; converts ticks and seconds both ways."""

    def __init__(self, score):
        self.tpq = float(score.ticks_per_quarter)
        times, mspq = np.zeros(0), np.zeros(0)
        if len(score.tempos):
            t = score.tempos.numpy()
            order = np.argsort(t["time"], kind="stable")  # equal times: the last one wins
            times = t["time"][order].astype(np.float64)
            mspq = np.maximum(t["mspq"][order].astype(np.float64), 1.0)
        if not len(times) or times[0] > 0:
            times = np.concatenate(([0.0], times))
            mspq = np.concatenate(([DEFAULT_MSPQ], mspq))
        self.times = times
        self.mspq = mspq
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
        bar = beat * n
        if bar <= 0:
            continue
        room = MAX_LINES - len(beats)
        if room <= 0:
            break
        nb = min(int(np.ceil((stop - start) / beat)), room)
        t = start + beat * np.arange(max(nb, 0))
        beats.append(t)
        bars.append(t[(np.arange(len(t)) % n) == 0])
    cat = lambda xs: np.round(np.concatenate(xs)).astype(np.int64) if xs else np.zeros(0, np.int64)
    return cat(bars), cat(beats)
