"""Where a song's chords cost `prepare` its time: the numpy reference (`Codec.add_chords`) under cProfile,
and the compiled pass prepare runs (`midigen.music.chords_jit`) step by step, in CPU microseconds per
file (best of 5 passes), beside the compiled encoder's own time for the same songs.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/chord_pass_profile.py [--songs 300] [--bars 48]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from songgen import write_songs  # noqa: E402

from midigen.music import chords_jit as J  # noqa: E402
from midigen.music import codec_jit  # noqa: E402
from midigen.music.codec import Codec  # noqa: E402


def cpu_us(fn, items, rounds: int = 5) -> float:
    fn(items[0])
    best = float("inf")
    for _ in range(rounds):
        t = time.process_time()
        for x in items:
            fn(x)
        best = min(best, (time.process_time() - t) / len(items) * 1e6)
    return round(best, 1)


def encoder_notes(codec, scores) -> list:
    """Per song, what the compiled encoder hands the chord pass in prepare: its stream (no chords yet),
    its pitched notes and their count, and its last event's step."""
    v3 = codec_jit.CompiledEncoder(Codec(version=3))
    out = []
    for s in scores:
        tokens = v3.encode_one(s)[0].copy()
        out.append((tokens, v3._notes.copy(), int(v3._facts[13]), int(v3._facts[14])))
    return out


def steps(codec, base, scores) -> dict:
    """The compiled pass's steps, each timed alone on what the step before it gave."""
    cc = J.CompiledChords(codec)
    c, durations = cc._consts, cc._durations
    given = encoder_notes(codec, scores)
    heads = [J._header_end(b, c) for b in base]
    read = [J._read_notes(b, h, c, durations) for b, (h, _) in zip(base, heads)]
    grids = []
    for (start, end, pitch, n, *_), (_, ts) in zip(read, heads):
        step = cc._ts_steps[ts - c[3]] if ts >= 0 else cc._ts_steps[-1]
        stop = end[:n].max()
        starts = np.arange(int(np.ceil(stop / step - 1e-9))) * step
        grids.append((start, end, n, starts, np.append(starts[1:], stop), pitch[:n]))
    pieces = [J._pieces(g[0], g[1], g[2], g[3], g[4]) + (g[5],) for g in grids]
    sums = [J.piece_sums(p[0], p[1], p[5], p[2], p[3]) for p in pieces]
    tables = [J._scores(s, *cc._templates) for s in sums]
    return {
        "whole pass, prepare's (the encoder's notes)": cpu_us(lambda g: cc.add_for_notes(*g), given),
        "whole pass, reading the tokens": cpu_us(cc.add, base),
        "read the notes back (tokens only)": cpu_us(lambda b: J._read_notes(b, J._header_end(b, c)[0], c, durations),
                                                    base),
        "cut into pieces": cpu_us(lambda g: J._pieces(g[0], g[1], g[2], g[3], g[4]), grids),
        "beat profiles (piece sums)": cpu_us(lambda p: J.piece_sums(p[0], p[1], p[5], p[2], p[3]), pieces),
        "scores + Viterbi, beat by beat": cpu_us(lambda s: J.smooth_sums(s, *cc._templates), sums),
        "  template scores alone (table)": cpu_us(lambda s: J._scores(s, *cc._templates), sums),
        "  Viterbi alone (on the table)": cpu_us(lambda s: J.viterbi(s, 0.3), tables),
        "beats per song": round(float(np.mean([len(g[3]) for g in grids])), 1),
        "pitched notes per song": round(float(np.mean([g[2] for g in grids])), 1),
    }


def reference_profile(codec, base, lines: int) -> str:
    codec.add_chords(base[0])
    prof = cProfile.Profile()
    prof.enable()
    for tokens in base:
        codec.add_chords(tokens)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(lines)
    return out.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--songs", type=int, default=300)
    ap.add_argument("--bars", type=int, default=48)
    ap.add_argument("--lines", type=int, default=10, help="cProfile lines of the numpy reference")
    a = ap.parse_args()
    codec = Codec()
    if not codec_jit.available(codec):
        sys.exit("numba is unavailable here: prepare labels chords with numpy")
    with tempfile.TemporaryDirectory() as tmp:
        write_songs(tmp, a.songs, seed0=0, bars=a.bars)
        scores = [codec.read_midi(p.read_bytes()) for p in sorted(Path(tmp).glob("*.mid"))]
    base = [codec.encode_base([s])[0] for s in scores]
    v3 = codec_jit.CompiledEncoder(Codec(version=3))
    print(f"{a.songs} generated {a.bars}-bar songs, CPU us per file (best of 5 passes)")
    print(f"  compiled encoder alone (v3, no chords): {cpu_us(v3.encode_one, scores)}")
    print(f"  numpy reference Codec.add_chords:       {cpu_us(codec.add_chords, base)}")
    for name, value in steps(codec, base, scores).items():
        print(f"  compiled: {name:44s} {value}")
    print(reference_profile(codec, base, a.lines))


if __name__ == "__main__":
    main()
