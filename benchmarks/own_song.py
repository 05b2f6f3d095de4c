"""Your own song in (issue 21): do written parts stay in their instrument's range, does a continuation
keep the song's tempo?

    python benchmarks/own_song.py --ckpt RUN [--random] [--songs 4] [--seconds 15]
    python benchmarks/own_song.py --ckpt RUN --hearing [--songs 4] [--seconds 15]

* Range: arrange Acoustic Bass, Cello and Flute under ``--songs`` band songs made by tests/songgen.py
  (drums, bass, chords, melody; seeds the test and demo corpora do not use), once with the checkpoint's
  note limits and once with ``--free-range``. Per instrument: the share of written notes inside the
  range the checkpoint records (or the documented table for an instrument it never measured), and the
  most notes sounding at once against its recorded maximum.
* Tempo: continue each song from its middle for ``--seconds`` seconds; tempo events written after the
  continuation point, by default (target 0) and with ``--free-tempo``.

* Cost: ``generate_samples`` of 400 new tokens for 4 rows (piano, bass, cello, flute) with and without the
  limits, rounds alternating, the fastest of each (the grammar's extra work per step).

* Hearing (``--hearing``, measured alone): continue each song from 30 s (or its middle, if shorter) for
  ``--seconds`` seconds, with the song's instruments heard as the checkpoint's nearest ones
  (``midigen.generate.hearing``) and as they are; new notes per second of the continuation as a share of
  the song's own over the 20 s before the point (target >= 0.3), same seed for both.

``--random`` keeps the checkpoint's records (its measured ranges) but draws fresh random weights and
lifts the output restriction: a model that writes anything, the hardest case for the limits.
Prints one JSON line per measurement and a summary line; nothing is hard-coded.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from midigen.generate.sampling import TOP_P, Sampling  # noqa: E402
from midigen.generate.edit import arrange_edits  # noqa: E402
from midigen.generate import continuation  # noqa: E402
from midigen.generate.hearing import hearing_map, hearing_note  # noqa: E402
from midigen.generate.sample import continue_song, generate_samples  # noqa: E402
from midigen.model.checkpoint import capabilities, checkpoint_limits, load_checkpoint  # noqa: E402
from midigen.model.model import GPT  # noqa: E402
from midigen.music.codec import instrument_name  # noqa: E402
from midigen.music.ranges import how_played  # noqa: E402
from midigen.music.timing import tick_at_seconds  # noqa: E402
from songgen import make_song  # noqa: E402

ADD = (32, 42, 73)  # Acoustic Bass, Cello, Flute
SONG_SEED0 = 5000  # songgen seeds no fixture or demo corpus uses


def _model(ckpt: str, random: bool):
    model, codec, config = load_checkpoint(ckpt, "cpu")
    if random:
        torch.manual_seed(0)
        model = GPT(model.cfg).eval()  # no output support: it may write any id the grammar allows
    return model, codec, config


def _ranges(model, codec, limits, songs, seed):
    """Per song, instrument and mode (held / free): notes, share inside the range, max polyphony."""
    for k, score in enumerate(songs):
        for mode in ("held", "free"):
            (e,) = arrange_edits(model, codec, score, add=ADD, sampling=Sampling(seed=seed + k, top_p=TOP_P),
                                 limits=limits if mode == "held" else None)
            for inst, h in how_played(e.score, limits, ADD).items():
                yield {"measure": "range", "song": k, "mode": mode, "instrument": instrument_name(inst),
                       "notes": h["notes"], "inside": h["inside"], "max_polyphony": h["max_polyphony"],
                       "range": [int(limits.low[inst]), int(limits.high[inst])],
                       "polyphony_limit": int(limits.polyphony[inst]), "source": limits.source[inst]}


def _tempo_events(codec, model, limits, score, seconds, seed, free_tempo):
    """Tempo events the model writes after the middle of ``score`` when continuing it."""
    half = float(score.to("second").end()) / 2
    prompt = codec.encode_score(score.clip(0, tick_at_seconds(score, half), False))
    (s,) = generate_samples(model, codec, seconds=seconds, prompt_tokens=prompt, sampling=Sampling(seed=seed, top_p=TOP_P),
                            limits=limits, free_tempo=free_tempo)
    ev = codec.decode_events(s.tokens)
    return int(np.sum(ev["tempo_time"] > s.start_steps)), int(np.sum(ev["notes"]["time"] >= s.start_steps))


def _cost(model, codec, limits, rounds: int = 3) -> dict:
    """Seconds for the same sampling with and without the limits, side by side."""
    best = {"held": float("inf"), "free": float("inf")}
    for r in range(rounds):
        for mode in best:
            t = time.perf_counter()
            generate_samples(model, codec, num_samples=4, max_new_tokens=400, sampling=Sampling(seed=r), instruments=[0, *ADD],
                             tempo=100, limits=limits if mode == "held" else None)
            best[mode] = min(best[mode], time.perf_counter() - t)
    return {"held_s": round(best["held"], 3), "free_s": round(best["free"], 3),
            "ratio": round(best["held"] / best["free"], 3)}


def _onsets_seconds(score) -> np.ndarray:
    arrays = [t.notes.numpy()["time"] for t in score.to("second").tracks if t.note_num()]
    return np.concatenate(arrays) if arrays else np.zeros(0)


def _hearing(model, codec, config, limits, songs, seconds, seed):
    """Per song and mode (mapped / as is): new notes per second after the point over the song's own in
    the 20 s before it."""
    known = capabilities(config, codec)["instruments"]
    for k, score in enumerate(songs):
        onsets = _onsets_seconds(score)
        point = min(30.0, float(onsets.max()) / 2)
        before = max(0.0, point - 20.0)
        own = np.sum((onsets >= before) & (onsets < point)) / (point - before)
        mapping = hearing_map(score, known, limits)
        for mode in ("mapped", "as_is"):
            plan = continuation.plan(codec, score, point, mapping if mode == "mapped" else None)
            ((s, out),) = continue_song(model, codec, score, plan, seconds=seconds, limits=limits,
                                        sampling=Sampling(seed=seed + k, top_p=TOP_P))
            new = int(np.sum(_onsets_seconds(out) >= plan.start_seconds))
            yield {"measure": "hearing", "song": k, "mode": mode, "point_s": round(point, 2),
                   "own_notes_per_s": round(float(own), 3), "new_notes": new,
                   "share": round(new / seconds / max(own, 1e-9), 3),
                   "heard": hearing_note(mapping) if mode == "mapped" else "as is"}


def _hearing_summary(rows) -> dict:
    return {f"{mode}_share_mean": round(float(np.mean([r["share"] for r in rows if r["mode"] == mode])), 3)
            for mode in ("mapped", "as_is")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--random", action="store_true", help="random weights, the checkpoint's records")
    p.add_argument("--songs", type=int, default=4)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hearing", action="store_true", help="only the hearing figure (mapping on vs off)")
    a = p.parse_args()
    torch.set_num_threads(1)
    model, codec, config = _model(a.ckpt, a.random)
    limits = checkpoint_limits(config)
    songs = [make_song(SONG_SEED0 + k) for k in range(a.songs)]
    if a.hearing:
        rows = list(_hearing(model, codec, config, limits, songs, a.seconds, a.seed))
        for r in rows:
            print(json.dumps(r), flush=True)
        print(json.dumps({"summary": {"model": a.ckpt, "seconds": a.seconds, **_hearing_summary(rows)}}), flush=True)
        return
    rows = list(_ranges(model, codec, limits, songs, a.seed))
    for r in rows:
        print(json.dumps(r), flush=True)
    summary = {"model": "random weights" if a.random else a.ckpt}
    for mode in ("held", "free"):
        mine = [r for r in rows if r["mode"] == mode]
        notes = sum(r["notes"] for r in mine)
        summary[f"{mode}_notes"] = notes
        summary[f"{mode}_inside_share"] = round(sum(r["inside"] for r in mine) / max(1, notes), 4)
        summary[f"{mode}_polyphony_over_limit"] = sum(r["max_polyphony"] > r["polyphony_limit"] for r in mine)
        summary[f"{mode}_max_polyphony_vs_limit"] = {
            instrument_name(i): [max(r["max_polyphony"] for r in mine if r["instrument"] == instrument_name(i)),
                                 int(limits.polyphony[i])] for i in ADD}
    for free in (False, True):
        counts = [_tempo_events(codec, model, limits, s, a.seconds, a.seed + k, free) for k, s in enumerate(songs)]
        key = "free_tempo" if free else "kept_tempo"
        for k, (tempos, notes) in enumerate(counts):
            print(json.dumps({"measure": "tempo", "song": k, "mode": key, "tempo_events_after_point": tempos,
                              "new_notes": notes}), flush=True)
        summary[f"{key}_tempo_events"] = sum(t for t, _ in counts)
    summary["cost_400_tokens_x4"] = _cost(model, codec, limits)
    print(json.dumps({"summary": summary}), flush=True)


if __name__ == "__main__":
    main()
