"""Does the music follow the chords it is given? (issue 17, Measure 2 and 3)

    PYTHONPATH=$PWD python benchmarks/chord_adherence.py --ckpt RUN --data DATA [--samples 32] [--seconds 30]

The measure is `midigen.eval.metrics.chord_adherence`: the share of sounding pitched note-time,
duration weighted, whose pitch classes belong to the chord asked for at that moment. Every figure is
the note-time pooled over its pieces (a long piece counts for its length), measured in one run:

- ceiling: the real test pieces (their first --seconds) under their own labels (the labeller's);
- with chords: --samples samples of --seconds each, a quarter on each of the four progressions
  below (major and minor keys, one and two chords a bar), scored against the progression asked for;
- floor: as many samples written without chords, each scored against the progression its
  counterpart was given;
- labeller agreement: of the beats the chords-given samples ask a chord for and sound in, the share
  where the labeller hears the same root and triad (sevenths as their triads) in what was written;
- arrange: a part added to --edits test pieces (their first --seconds) under the song's own chords
  (the library's default for an edit), scored on the new part's notes against those chords;
- infill: bars 3-6 of the same pieces written again, scored on the written notes likewise.

Targets (issue 17): with chords >= 0.9 x ceiling and >= floor + 0.25; arrange and infill >= 0.9 x
ceiling. A checkpoint trained without chords cannot be asked for chords: the script says so (exit 2).
Every figure is printed as a JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from midigen.data.dataset import Dataset
from midigen.errors import MidigenError
from midigen.eval.metrics import chord_note_time
from midigen.generate.edit import arrange_edits, infill_edits
from midigen.generate.sample import generate_samples, sample_score
from midigen.generate.sampling import DEFAULTS, TOP_P, Sampling
from midigen.model.checkpoint import load_checkpoint
from midigen.music.chords import NO_CHORD, QUALITIES, TRIAD_OF, ChordError, label_chords
from midigen.music.chordtext import chart_beats, parse_chords
from midigen.music.codec import score_instruments, track_instrument
from midigen.music.timing import bars_to_seconds, beat_grid, tick_at_seconds

PROGRESSIONS = {  # major and minor keys, one and two chords a bar
    "major, 1 a bar": "C Am F G",
    "major, 2 a bar": "C G | Am F | Dm G | C G7",
    "minor, 1 a bar": "Am Dm E7 Am",
    "minor, 2 a bar": "Dm Gm | A7 Dm | Bb Gm | A7 Dm",
}
ADD_CANDIDATES = (0, 33, 40, 73, 24)  # the part arrange adds: the first of these the song lacks
INFILL_BARS = (3, 6)


class Pool:
    """Note-time inside the chords and under a chord, summed over pieces."""

    def __init__(self):
        self.inside = self.total = 0.0
        self.pieces = 0

    def add(self, inside_total: tuple[float, float]) -> None:
        inside, total = inside_total
        if total > 0:
            self.inside += inside
            self.total += total
            self.pieces += 1

    @property
    def share(self) -> float | None:
        return self.inside / self.total if self.total > 0 else None


def emit(**row) -> None:
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)


def first_seconds(score, seconds: float):
    """The score's first ``seconds`` (notes starting before then, cut there)."""
    return score.clip(0, tick_at_seconds(score, seconds), clip_end=True)


def test_songs(codec, data, count: int, seconds: float) -> list:
    """Up to ``count`` test-split songs with pitched notes, decoded and cut to their first ``seconds``."""
    sp = Dataset(data).split("test")
    out = []
    for a, b in zip(sp.starts, sp.ends):
        score = first_seconds(codec.decode(np.asarray(sp.tokens[a:b], np.int64)), seconds)
        if any(not t.is_drum and t.note_num() for t in score.tracks):
            out.append(score)
        if len(out) >= count:
            break
    return out


def own_chords(score):
    """(grid, labels) of a song's own chords as the labeller hears them, or None."""
    try:
        song = label_chords(score)
    except ChordError:
        return None
    return song.grid, song.labels


def under_chart(score, chart) -> tuple[float, float]:
    grid = beat_grid(score)
    return chord_note_time(score, grid, chart_beats(chart, grid))


def triad(cid: np.ndarray) -> np.ndarray:
    """Chord ids as (root, triad quality) codes, so a seventh agrees with its triad; N.C. stays apart."""
    quality = np.array([QUALITIES.index(TRIAD_OF[q]) for q in QUALITIES])
    root, q = np.divmod(np.minimum(cid, NO_CHORD - 1), len(QUALITIES))
    return np.where(cid == NO_CHORD, -1, root * len(QUALITIES) + quality[q])


def labeller_agreement(score, chart) -> tuple[int, int]:
    """(beats the labeller hears as asked, beats asked for a chord where it hears one) of a sample: a
    silent beat (N.C. to the labeller) is left out, as adherence leaves out what does not sound."""
    heard = own_chords(score)
    if heard is None:
        return 0, 0
    grid, labels = heard
    asked = chart_beats(chart, grid)
    use = (asked != NO_CHORD) & (labels != NO_CHORD)
    return int((triad(labels) == triad(asked))[use].sum()), int(use.sum())


def written_part(edit):
    """The notes an edit wrote: its target instruments' notes that start inside its span."""
    out = edit.score.copy()
    lo, hi = (tick_at_seconds(out, s) for s in edit.span_seconds)
    for track in out.tracks:
        keep = track_instrument(track) in edit.targets
        notes = [n for n in track.notes if keep and lo <= n.time < hi]
        track.notes.clear()
        track.notes.extend(notes)
    return out


def samples(model, codec, n: int, seconds: float, a, chart=None) -> list:
    """``n`` samples of ``seconds`` (a chart given or not) as scores, in batches of --batch."""
    out = []
    for k in range(0, n, a.batch):
        kw = {} if chart is None else {"chords": chart}
        got = generate_samples(model, codec, num_samples=min(a.batch, n - k), seconds=seconds, device=a.device,
                               sampling=Sampling(top_p=a.top_p, seed=a.seed + k, chord_weight=a.chord_weight), **kw)
        out += [sample_score(codec, s) for s in got]
    return out


def with_chords(model, codec, charts, per: int, a) -> Pool:
    """Adherence of ``per`` samples on each chart, pooled."""
    given = Pool()
    for chart in charts.values():
        for score in samples(model, codec, per, a.seconds, a, chart):
            given.add(under_chart(score, chart))
    return given


def sweep(model, codec, charts, per: int, a) -> None:
    """The 'with chords' figure at each of --sweep's chord weights, the same seeds each time."""
    for w in (float(x) for x in a.sweep.split(",")):
        a.chord_weight = w
        t0 = time.perf_counter()
        got = with_chords(model, codec, charts, per, a)
        emit(figure="with chords", chord_weight=w, adherence=got.share, samples=got.pieces,
             seconds=round(time.perf_counter() - t0, 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--samples", type=int, default=32, help="samples with chords (a quarter per progression)")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--pieces", type=int, default=64, help="real test pieces for the ceiling")
    p.add_argument("--edits", type=int, default=8, help="test pieces arranged and infilled")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--top-p", type=float, default=TOP_P)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--chord-weight", type=float, default=DEFAULTS["chord_weight"],
                   help="nats added to chord tones while a chart is given (the commands' default)")
    p.add_argument("--sweep", help="comma-separated chord weights: measure only 'with chords' at each, then stop")
    a = p.parse_args()
    t0 = time.perf_counter()
    model, codec, _ = load_checkpoint(a.ckpt, a.device)
    charts = {name: parse_chords(text) for name, text in PROGRESSIONS.items()}
    per = max(1, a.samples // len(charts))

    if a.sweep:
        return sweep(model, codec, charts, per, a)
    ceiling = Pool()
    songs = test_songs(codec, a.data, max(a.pieces, a.edits), a.seconds)
    for score in songs[: a.pieces]:
        heard = own_chords(score)
        if heard is not None:
            ceiling.add(chord_note_time(score, *heard))
    emit(figure="ceiling", adherence=ceiling.share, pieces=ceiling.pieces, seconds_each=a.seconds)

    given, floor, agree = Pool(), Pool(), [0, 0]
    try:
        for i, (name, chart) in enumerate(charts.items()):
            here = Pool()
            for score in samples(model, codec, per, a.seconds, a, chart):
                here.add(under_chart(score, chart))
                given.add(under_chart(score, chart))
                same, asked = labeller_agreement(score, chart)
                agree[0] += same
                agree[1] += asked
            emit(figure="with chords", progression=name, chords=PROGRESSIONS[name], adherence=here.share,
                 samples=here.pieces)
    except MidigenError as e:
        sys.exit(f"cannot sample with chords: {e}")
    emit(figure="with chords", adherence=given.share, samples=given.pieces)
    free = samples(model, codec, per * len(charts), a.seconds, a)
    for k, score in enumerate(free):
        floor.add(under_chart(score, list(charts.values())[k % len(charts)]))
    emit(figure="floor (no chords)", adherence=floor.share, samples=floor.pieces)
    emit(figure="labeller agreement with the request", share=agree[0] / max(1, agree[1]), beats=agree[1])

    arranged, infilled = Pool(), Pool()
    for k, score in enumerate(songs[: a.edits]):
        heard = own_chords(score)
        if heard is None:
            continue
        add = [next(i for i in ADD_CANDIDATES if i not in score_instruments(score))]
        kw = dict(num_samples=1, sampling=Sampling(seed=a.seed + k, top_p=a.top_p, chord_weight=a.chord_weight),
                  device=a.device)
        (e,) = arrange_edits(model, codec, score, add=add, **kw)
        arranged.add(chord_note_time(written_part(e), *heard))
        start, end = bars_to_seconds(score, *INFILL_BARS)
        if end < a.seconds:
            (e,) = infill_edits(model, codec, score, start_s=start, end_s=end, **kw)
            infilled.add(chord_note_time(written_part(e), *heard))
    emit(figure="arrange under the song's chords", adherence=arranged.share, pieces=arranged.pieces)
    emit(figure="infill under the song's chords", adherence=infilled.share, pieces=infilled.pieces,
         bars=f"{INFILL_BARS[0]}-{INFILL_BARS[1]}")

    top = ceiling.share or 0.0
    checks = {"with chords >= 0.9 x ceiling": (given.share or 0) >= 0.9 * top,
              "with chords >= floor + 0.25": (given.share or 0) >= (floor.share or 0) + 0.25,
              "arrange >= 0.9 x ceiling": (arranged.share or 0) >= 0.9 * top,
              "infill >= 0.9 x ceiling": (infilled.share or 0) >= 0.9 * top}
    for name, ok in checks.items():
        emit(target=name, met=bool(ok))
    emit(figure="ratios", with_chords_over_ceiling=(given.share or 0) / top if top else None,
         with_chords_minus_floor=(given.share or 0) - (floor.share or 0),
         arrange_over_ceiling=(arranged.share or 0) / top if top else None,
         infill_over_ceiling=(infilled.share or 0) / top if top else None,
         wall_seconds=time.perf_counter() - t0)


if __name__ == "__main__":
    main()
