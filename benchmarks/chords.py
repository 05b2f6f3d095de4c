"""The chord labeller against music21's expert Roman-numeral analyses, beat by beat.

For each of the 20 Bach chorales and 48 Monteverdi madrigals that the music21 wheel ships with an
analysis, the score is exported to MIDI (cached), labelled by `midigen.music.chords.label_chords`
and compared with the analysis at every beat it labels: root and triad quality (sevenths reduced
to their triads: the issue's target is >= 80%), and the full vocabulary chord where the analysis
spells one. "aligned" leaves out the pieces whose analysis ends more than a measure away from its
score (another edition: repeats written out, bars added), where the labels drift from the music.
Also prints milliseconds per song for the labeller alone (MIDI already parsed).

    PYTHONPATH=$PWD python benchmarks/chords.py [--corpus bach|monteverdi] [--limit N] [--verbose]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import symusic

from midigen.data.chord_analyses import agreement, analysed_pieces, cached_piece
from midigen.music.chords import label_chords

REPEATS = 5  # labelling runs per song, the fastest one counted


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", choices=["bach", "monteverdi"], default=None)
    p.add_argument("--limit", type=int, default=None, help="at most N pieces per corpus")
    p.add_argument("--verbose", action="store_true", help="one line per piece")
    a = p.parse_args()
    totals: dict[str, dict] = {}
    times = []
    pieces = [x for x in analysed_pieces() if a.corpus in (None, x.corpus)]
    seen: dict[str, int] = {}
    for piece in pieces:
        if a.limit is not None and seen.get(piece.corpus, 0) >= a.limit:
            continue
        seen[piece.corpus] = seen.get(piece.corpus, 0) + 1
        midi, expert = cached_piece(piece)
        score = symusic.Score.from_file(str(midi))
        best = np.inf
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            found = label_chords(score)
            best = min(best, time.perf_counter() - t0)
        times.append(best)
        got = agreement(found.labels, expert)
        keys = [piece.corpus, "overall"] + (["aligned"] if expert["aligned"] else [])
        for key in keys:
            acc = totals.setdefault(key, {"pieces": 0, "beats": 0, "root_triad": 0, "chord_beats": 0, "chord": 0})
            acc["pieces"] += 1
            for k, v in got.items():
                acc[k] += v
        if a.verbose:
            print(f"{piece.corpus:10s} {piece.name:24s} {got['root_triad'] / max(1, got['beats']):6.1%} "
                  f"of {got['beats']} beats  {best * 1e3:6.1f} ms{'' if expert['aligned'] else '  (other edition)'}")
    for key in sorted(totals, key=["bach", "monteverdi", "overall", "aligned"].index):
        acc = totals[key]
        print(f"{key:10s} {acc['pieces']:3d} pieces {acc['beats']:6d} beats  root+triad "
              f"{acc['root_triad'] / max(1, acc['beats']):6.1%}  full chord "
              f"{acc['chord'] / max(1, acc['chord_beats']):6.1%} (of {acc['chord_beats']} beats)")
    print(f"labeller: {np.mean(times) * 1e3:.2f} ms per song on average, {np.max(times) * 1e3:.2f} ms at most "
          f"({len(times)} songs, fastest of {REPEATS} runs each)")


if __name__ == "__main__":
    main()
