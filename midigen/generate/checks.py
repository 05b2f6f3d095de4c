"""Say when a result is empty or nearly so, and draw again with the next seeds before giving up.

A small model asked for music it never heard (a cello over a band song, a flute it saw twice) often
writes nothing, or next to nothing. Such a result must not pass as a normal success: each function
here returns the warnings of one result as sentences a musician can act on, for the commands' JSON and
summary lines and for the studio's versions alike. Every warning here means "empty or nearly so", so a
result with any of them is one ``redraw`` tries again.

- a requested instrument that got no notes (sample --instruments, arrange --add, infill's instruments);
- a continuation with under ``SPARSE_SHARE`` of the song's own notes per second, measured over the
  ``LOOKBACK_SECONDS`` before the continuation point;
- a rewritten span that is silent where the song had notes.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from midigen.generate.edit import Edit
from midigen.generate.sampling import RETRIES
from midigen.music.codec import instrument_name, track_instrument
from midigen.music.timing import seconds_at_tick, tick_at_seconds

SPARSE_SHARE = 0.1  # a continuation with under this share of the song's notes per second is "nearly empty"
LOOKBACK_SECONDS = 20.0  # the song's own rate is measured over this much music before the point
ADVICE = "it may not know this music. Try another seed, or teach it your music (midigen tune)"


def no_notes(instrument: int) -> str:
    """The warning for a requested instrument that got no notes."""
    return f"the model wrote no {instrument_name(instrument)}: {ADVICE}"


def _onsets(score, instrument: int | None = None) -> np.ndarray:
    """Onset ticks of every note of ``score`` (of one instrument when given), sorted."""
    parts = [t.notes.numpy()["time"].astype(np.int64) for t in score.tracks
             if t.note_num() and (instrument is None or track_instrument(t) == instrument)]
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def _count(onsets: np.ndarray, start: int, end: int) -> int:
    return int(np.searchsorted(onsets, end, "left") - np.searchsorted(onsets, start, "left"))


def sample_warnings(score, start_seconds: float, end_seconds: float | None, instruments=()) -> list[str]:
    """Warnings for a generated song ``score`` whose new part starts at ``start_seconds`` (0 without a
    prompt) and ends at ``end_seconds`` (None: where its notes end): no new notes at all, a requested
    instrument with no new notes, or (after a prompt) a continuation under ``SPARSE_SHARE`` of the
    song's own notes per second."""
    start = tick_at_seconds(score, start_seconds)
    new = _onsets(score)
    new = new[new >= start]
    if not len(new):
        return [f"no new notes: {ADVICE}"]
    out = [no_notes(i) for i in sorted(set(int(i) for i in instruments or ()))
           if not np.any(_onsets(score, i) >= start)]
    if start_seconds > 0:
        out += _sparse(score, start_seconds, end_seconds, len(new))
    return out


def _sparse(score, start_s: float, end_s: float | None, new_notes: int) -> list[str]:
    """The continuation-rate warning, when the new part has under ``SPARSE_SHARE`` of the song's rate."""
    onsets = _onsets(score)
    look = min(LOOKBACK_SECONDS, start_s)
    before = _count(onsets, tick_at_seconds(score, start_s - look), tick_at_seconds(score, start_s))
    ends = [int(t.end()) for t in score.tracks if t.note_num()]
    end_s = end_s if end_s is not None else float(seconds_at_tick(score, max(ends)))
    if before == 0 or end_s <= start_s:
        return []
    song_rate, new_rate = before / look, new_notes / (end_s - start_s)
    if new_rate >= SPARSE_SHARE * song_rate:
        return []
    return [f"the continuation has {new_rate:.2f} notes per second, under {SPARSE_SHARE:.0%} of the song's own "
            f"{song_rate:.1f} over the {look:.0f} s before it: {ADVICE}"]


def edit_warnings(original, edit: Edit, task: str) -> list[str]:
    """Warnings for an ``edit`` (infill or arrange, ``task``) of the score ``original``: a target instrument
    that got no notes (in infill: one the song played in the span, or one it did not have), or an infill
    span left silent where the song had notes."""
    a, b = (tick_at_seconds(edit.score, s) for s in edit.span_seconds)
    had = {i: _count(_onsets(original, i), a, b) for i in edit.targets}
    present = {track_instrument(t) for t in original.tracks if t.note_num()}
    got = {i: _count(_onsets(edit.score, i), a, b) for i in edit.targets}
    if task == "infill" and edit.written == 0 and sum(had.values()):
        s0, s1 = edit.span_seconds
        return [f"the rewritten span {s0:.1f}-{s1:.1f} s is silent where the song had {sum(had.values())} notes: "
                f"{ADVICE}"]
    return [no_notes(i) for i in edit.targets
            if got[i] == 0 and (task != "infill" or had[i] or i not in present)]


def redraw(draw: Callable[[int, int], list], warnings_of: Callable[[object], list[str]], seed: int,
           num_samples: int, retries: int = RETRIES) -> list[tuple[object, int, int, list[str]]]:
    """``draw(seed, n)`` -> n results, then each result with warnings drawn again, alone, with the next
    seeds (row i's k-th try uses ``seed + i + 1 + (k - 1) * num_samples``, so no two tries share one)
    until one has none or ``retries`` are spent.

    Returns (result, seed, row, warnings) per sample: the seed and row that give that result again
    (``--seed SEED`` with ``--num-samples`` 1 for a redrawn one, row 0). A sample still empty after every
    try keeps its first draw and says which seeds were tried.
    """
    n = int(num_samples)
    out = []
    for row, result in enumerate(draw(seed, n)):
        first = (result, seed, row, warnings_of(result))
        best, tried = first, []
        for k in range(1, int(retries) + 1):
            if not best[3]:
                break
            s = seed + row + 1 + (k - 1) * n
            tried.append(s)
            again = draw(s, 1)[0]
            best = (again, s, 0, warnings_of(again))
        if best[3]:
            best = first
            if tried:
                best = (*first[:3], first[3] + [f"still empty after redrawing with seed "
                                                f"{', '.join(map(str, tried))}"])
        out.append(best)
    return out
