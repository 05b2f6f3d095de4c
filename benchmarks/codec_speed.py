"""Encode speed and fidelity: midigen's codec vs MidiTok REMI, same songs, one process, one run.

Both sides start from MIDI bytes (parse included) and produce token ids. midigen is timed twice:
the batched numpy encoder (``Codec.encode_many``) and the compiled encoder prepare's workers use
(``codec_jit``), whose tokens must be identical. Fidelity of both is scored
with the same yardstick, ``midigen.music.codec.fidelity`` (onset within 1/24 quarter, duration within
20%, velocity within 8, total length), on each tokenizer's own decoded output.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/codec_speed.py [--songs 100] [--bars 48]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import symusic

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from songgen import make_song_bytes  # noqa: E402

from midigen.music.codec import Codec, fidelity  # noqa: E402


def timed(fn, items, min_seconds: float = 2.0):
    """CPU seconds per pass over items (repeated until min_seconds, best pass) and the last outputs.

    CPU time, not wall time: this process is single-threaded, and on a shared machine wall time
    mostly measures the neighbours.
    """
    best, total, out = float("inf"), 0.0, None
    while total < min_seconds:
        t = time.process_time()
        out = [fn(x) for x in items]
        dt = time.process_time() - t
        best, total = min(best, dt), total + dt
    return best, out


def fid_summary(codec, originals, decoded) -> dict:
    agg = {"onset_ok": 0.0, "duration_ok": 0.0, "velocity_ok": 0.0}
    n, len_err = 0, []
    for o, d in zip(originals, decoded):
        f = fidelity(codec, o, d)
        for k in agg:
            agg[k] += f[k] * f["notes_in"]
        n += f["notes_in"]
        len_err.append(f["length_error"])
    out = {k: round(v / n, 4) for k, v in agg.items()}
    out["length_error_mean"] = round(float(np.mean(len_err)), 4)
    out["length_error_max"] = round(float(np.max(len_err)), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--songs", type=int, default=100)
    ap.add_argument("--bars", type=int, default=48)
    a = ap.parse_args()
    import miditok

    songs = [make_song_bytes(i, bars=a.bars) for i in range(a.songs)]
    originals = [symusic.Score.from_midi(b) for b in songs]
    codec = Codec()
    notes = sum(codec.count_notes(codec.encode(b)) for b in songs)  # notes the codec keeps

    many = getattr(codec, "encode_many", None)
    if many is not None:  # the batched path prepare's workers use
        t_ours, (ours,) = timed(many, [songs])
    else:
        t_ours, ours = timed(codec.encode, songs)
    ours_tokens = sum(len(t) for t in ours)

    # prepare's hot path: parse, then the compiled encoder (midigen/music/codec_jit.py), file by file
    from midigen.music import codec_jit
    compiled = None
    if codec_jit.available(codec):
        fast = codec_jit.CompiledEncoder(codec)
        t_fast, fast_out = timed(lambda b: fast.encode_one(codec.read_midi(b))[0].copy(), songs)
        if not all(np.array_equal(x, y) for x, y in zip(fast_out, ours)):
            raise SystemExit("the compiled encoder's tokens differ from the numpy encoder's")
        compiled = {"files_per_s": round(a.songs / t_fast, 1), "notes_per_s": round(notes / t_fast),
                    "same_tokens_as_numpy": True}

    cfg = miditok.TokenizerConfig(use_programs=True, use_tempos=True, use_time_signatures=True,
                                  use_velocities=True, one_token_stream_for_programs=True,
                                  num_velocities=16, beat_res={(0, 4): 24, (4, 12): 4})
    remi = miditok.REMI(cfg)
    t_remi, theirs = timed(lambda b: remi.encode(symusic.Score.from_midi(b)), songs)
    remi_tokens = sum(len(s.ids) for s in theirs)

    ours_dec = [codec.decode(t) for t in ours]
    remi_dec = [remi.decode(s) for s in theirs]
    res = {
        "songs": a.songs, "bars": a.bars, "notes": notes,
        "midigen": {"files_per_s": round(a.songs / t_ours, 1), "notes_per_s": round(notes / t_ours),
                    "tokens_per_note": round(ours_tokens / notes, 3), "vocab": codec.vocab_size,
                    **fid_summary(codec, originals, ours_dec)},
        "miditok_remi": {"files_per_s": round(a.songs / t_remi, 1), "notes_per_s": round(notes / t_remi),
                         "tokens_per_note": round(remi_tokens / notes, 3), "vocab": len(remi),
                         **fid_summary(codec, originals, remi_dec)},
    }
    res["speed_ratio"] = round(t_remi / t_ours, 1)
    if compiled is not None:
        res["midigen_compiled"] = compiled
        res["speed_ratio_compiled"] = round(t_remi / t_fast, 1)
    print(json.dumps(res, indent=1))
    print(f"midigen {res['midigen']['files_per_s']} files/s vs MidiTok REMI {res['miditok_remi']['files_per_s']}"
          f" files/s: {res['speed_ratio']}x (target >= 50x); compiled encoder (prepare's path): "
          f"{res.get('speed_ratio_compiled', 'n/a')}x", file=sys.stderr)


if __name__ == "__main__":
    main()
