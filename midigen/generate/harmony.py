"""Chord charts as the grammar forces them: a chart laid out on bars, as (step, chord id) changes.

A chart (``midigen.music.chordtext.parse_chords``: bars of chords) plays from a bar line on; bar k of
the music plays the chart's bar k and the chart repeats to the end (``chart_beats``). Here the beats
are a song's or a stream's, in token steps, and what comes out is where the chord changes: the form
``Grammar.force_chords`` and the codec's ``add_chords`` take.
"""
from __future__ import annotations

import numpy as np

from midigen.errors import UsageError
from midigen.music.chords import MAX_BEATS
from midigen.music.chordtext import chart_beats
from midigen.music.timing import BeatGrid, meter_beat_grid


def need_chords(codec, chart) -> None:
    """A UsageError when a chart is given to a checkpoint whose codec has no chord tokens."""
    if chart is not None and not codec.has_chords:
        raise UsageError(f"this model has no chords (codec v{codec.version}): --chords needs a checkpoint "
                         "trained on a codec v4 dataset (prepare it again, then train)")


def grid_from(grid: BeatGrid, first: int) -> BeatGrid:
    """The beats of ``grid`` from beat ``first`` on."""
    return BeatGrid(grid.starts[first:], grid.ends[first:], grid.bars[first:], grid.beats[first:])


def bar_start_beat(grid: BeatGrid, step: float) -> int:
    """The first beat of the bar that holds ``step`` (0 before the first beat)."""
    i = max(0, int(np.searchsorted(grid.starts, step, side="right")) - 1)
    if not len(grid):
        return 0
    return int(np.searchsorted(grid.bars, grid.bars[i], side="left"))


def chart_changes(chart, grid: BeatGrid, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """(steps, chord ids) of ``chart`` over ``[start, end)`` on ``grid`` (beats in steps): the chart's
    first bar is the bar holding ``start``; the chord in force at ``start`` is placed there."""
    first = bar_start_beat(grid, start)
    sub = grid_from(grid, first)
    ids = chart_beats(chart, sub)
    steps = np.round(sub.starts).astype(np.int64)
    keep = ids != np.concatenate(([-1], ids[:-1]))
    steps, ids = steps[keep], ids[keep]
    held = np.searchsorted(steps, start, side="right") - 1
    if held >= 0 and steps[held] < start:
        steps = steps.copy()
        steps[held] = start
    inside = (steps >= start) & (steps < end)
    return steps[inside], ids[inside].astype(np.int64)


def meter_grid(codec, time_signature, end: int) -> BeatGrid:
    """A stream's beats in steps: one meter (the header's, 4/4 without one) from step 0 to ``end``."""
    n, d = time_signature or (4, 4)
    beat = codec.params.steps_per_quarter * 4 / d
    end = int(min(end, MAX_BEATS * beat))
    return meter_beat_grid(codec.params.steps_per_quarter, [(0, int(n), int(d))], end)
