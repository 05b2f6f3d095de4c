"""Songs with a form (issue 18's Measure): is the form held, are the seams as likely as the music inside
the sections, does a 3-minute song finish healthy, and how does it compare with left-to-right sampling.

    nice python benchmarks/form.py --ckpt out/demo/model/best [--songs 16] [--threads 2] [--key "C major"]
                                   [--key-weight W]

Bar features: a pitch-class histogram (duration-weighted, drums left out) and an onset pattern (onsets
per sixteenth of the bar, drums included); the similarity of two bars is the mean of the two cosines
(two empty bars: 1; one empty: 0).

1. Form held: ``--songs`` songs of ``A:8 B:8 A:8 B:8`` and as many of ``A:8 B:8 A':8 B:8`` against as
   many plain samples (``midigen.generate.sample``) of the same length, seeds and controls:
   - the share of repeats identical note for note in the written file (symusic and mido), but for the
     seam bar the summary names;
   - the mean similarity of A' bars to their A bars (target >= 0.8);
   - the mean similarity of A's bars to B's bars (bar i to bar i) against bars 8 apart in the plain
     samples (target: lower).
2. Seams: the model's own bits per note (the written song encoded and scored in windows of the
   model's context) over each section's first and last bar, against its inner bars (target <= 1.10x),
   and the same bars of the plain samples for reference.
3. A 3-minute song (90 bars at 120 BPM in 4/4): seconds on ``--threads`` threads, split into first
   occurrence / infill / seams, its warnings, the key asked and the key its notes have. Key held: over
   the ``A:8 B:8 A:8 B:8`` songs (written with ``--key-weight``, default the command's) and the plain
   samples (the model alone), the share whose notes have the key asked (Krumhansl profile), the share
   with its scale (the key or its relative), and the share of pitched note-time in its scale.
4. Against left to right: the share of 8-bar stretches that return (mean bar similarity >= 0.8 with an
   earlier stretch that does not overlap it) in the 3-minute song and in a 3-minute plain sample.

Prints one JSON line per measure; nothing is hard-coded.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from midiread import mido_notes  # noqa: E402
from midigen.data.keys import estimate_key  # noqa: E402
from midigen.generate.controls import resolve  # noqa: E402
from midigen.generate.form import form_summary, parse_form, write_form  # noqa: E402
from midigen.generate.sample import generate_samples, sample_score  # noqa: E402
from midigen.generate.grammar import scale_tone_table  # noqa: E402
from midigen.generate.sampling import KEY_WEIGHT, VARY_WEIGHT, Sampling  # noqa: E402
from midigen.model.checkpoint import capabilities, checkpoint_limits, load_checkpoint  # noqa: E402
from midigen.music.codec import key_name, parse_key  # noqa: E402
from midigen.music.timing import bar_tick  # noqa: E402

RETURN_SIMILARITY = 0.8
LONG_FORM = "intro:4 A:8 B:8 A:8 B:8 C:8 A:8 B:8 C:8 A':8 B:8 outro:6"  # 90 bars


# ----- bar features ---------------------------------------------------------------------------------------


def bar_features(score, bars: int) -> tuple[np.ndarray, np.ndarray]:
    """(bars, 12) pitch-class histograms and (bars, 16) onset patterns of bars 1..``bars``."""
    edges = np.array([bar_tick(score, b) for b in range(1, bars + 2)], np.int64)
    pcs, onsets = np.zeros((bars, 12)), np.zeros((bars, 16))
    for t in score.tracks:
        if not t.note_num():
            continue
        a = t.notes.numpy()
        time_, dur, pitch = a["time"].astype(np.int64), a["duration"].astype(np.int64), a["pitch"].astype(np.int64)
        bar = np.searchsorted(edges, time_, side="right") - 1
        ok = (bar >= 0) & (bar < bars)
        pos = ((time_[ok] - edges[bar[ok]]) * 16 // (edges[bar[ok] + 1] - edges[bar[ok]])).clip(0, 15)
        np.add.at(onsets, (bar[ok], pos), 1)
        if not t.is_drum:
            np.add.at(pcs, (bar[ok], pitch[ok] % 12), dur[ok])
    return pcs, onsets


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    both_empty = (na == 0) & (nb == 0)
    c = (a * b).sum(-1) / np.maximum(na * nb, 1e-12)
    return np.where(both_empty, 1.0, c)


def similarity(f, i, j) -> np.ndarray:
    """Similarity of bars ``i`` and ``j`` (index arrays, from 0) of one song's features ``f``."""
    pcs, on = f
    return (_cos(pcs[i], pcs[j]) + _cos(on[i], on[j])) / 2


def returning_share(f, bars: int, length: int = 8) -> float:
    """The share of ``length``-bar stretches whose mean bar similarity with an earlier stretch that does
    not overlap them reaches ``RETURN_SIMILARITY``."""
    hits, n = 0, 0
    for s in range(length, bars - length + 1):
        n += 1
        i = np.arange(s, s + length)
        earlier = (similarity(f, i, np.arange(e, e + length)).mean() for e in range(0, s - length + 1))
        hits += any(x >= RETURN_SIMILARITY for x in earlier)
    return hits / max(1, n)


# ----- the model's own bits per note by bar ---------------------------------------------------------------


def bits_by_bar(model, codec, score, bars: int) -> tuple[np.ndarray, np.ndarray]:
    """(bits, notes) per bar (1..``bars``) of ``score`` encoded, every token scored with the context of
    the tokens before it (windows of the model's block, half of each scored); a token's bar is the bar
    of its time."""
    tokens = np.asarray(codec.encode_score(score), np.int64)
    block = model.cfg.block_size if hasattr(model, "cfg") else 256
    nll = np.zeros(len(tokens))
    stride = block // 2
    with torch.no_grad():
        for start in range(0, max(1, len(tokens) - 1), stride):
            lo = max(0, start + stride - block)
            x = torch.from_numpy(tokens[lo: start + stride][None, :-1] if start + stride < len(tokens)
                                 else tokens[lo:][None, :-1])
            if x.shape[1] == 0:
                continue
            logits, _ = model(x)
            lp = torch.log_softmax(logits[0].double(), -1)
            y = tokens[lo + 1: lo + 1 + x.shape[1]]
            got = lp[torch.arange(len(y)), torch.from_numpy(y)].numpy()
            first = max(start, lo + 1) - (lo + 1)
            nll[lo + 1 + first: lo + 1 + len(y)] = -got[first:]
    ev_steps = np.cumsum(codec.shift_steps()[np.where(codec.kinds(tokens) == codec.KINDS.index("shift"), tokens, 0)])
    spq = codec.params.steps_per_quarter
    edges = np.array([bar_tick(score, b) for b in range(1, bars + 2)]) * spq // score.ticks_per_quarter
    bar = np.searchsorted(edges, ev_steps, side="right") - 1
    is_note = codec.kinds(tokens) == codec.KINDS.index("note")
    head = codec.header_length(tokens)
    ok = (bar >= 0) & (bar < bars) & (np.arange(len(tokens)) >= head)
    bits = np.bincount(bar[ok], weights=nll[ok] / np.log(2), minlength=bars)[:bars]
    notes = np.bincount(bar[ok & is_note], minlength=bars)[:bars]
    return bits, notes


def _ratio(bits, notes, edge_bars, inner_bars) -> float:
    e, i = np.array(sorted(edge_bars)), np.array(sorted(inner_bars))
    return float((bits[e].sum() / max(1, notes[e].sum())) / (bits[i].sum() / max(1, notes[i].sum())))


# ----- the measures -----------------------------------------------------------------------------------------


def _bar_counter(score, first: int, last: int, mido_data: bytes | None = None) -> Counter:
    lo, hi = bar_tick(score, first), bar_tick(score, last + 1)
    if mido_data is not None:
        notes, _ = mido_notes(mido_data)
        return Counter({(p, c, pi, on - lo, d, v): k for (p, c, pi, on, d, v), k in notes.items() if lo <= on < hi})
    return Counter((i, n.time - lo, n.duration, n.pitch, n.velocity)
                   for i, t in enumerate(score.tracks) for n in t.notes if lo <= n.time < hi)


def exact_repeats(song) -> tuple[int, int]:
    """(repeats identical in the file but for their seam bar, repeats), read back by symusic and mido."""
    import symusic

    data = bytes(song.score.dumps_midi())
    back = symusic.Score.from_midi(data)
    good = total = 0
    for r in form_summary(song)["sections"]:
        if r["kind"] != "repeat":
            continue
        total += 1
        last = r["bars"][1] - (r["seam_bar"] is not None)
        n = last - r["bars"][0]
        src = r["of_bars"][0]
        good += all(_bar_counter(back, r["bars"][0], last, m) == _bar_counter(back, src, src + n, m)
                    for m in (None, data))
    return good, total


def key_stats(score, bars: int, key: int) -> tuple[bool, bool, float]:
    """(the notes' key is ``key``, their key has ``key``'s scale (it or its relative), the share of
    pitched note-time in ``key``'s scale)."""
    hist = bar_features(score, bars)[0].sum(0)
    found = estimate_key(hist)
    scale = 1.0 - scale_tone_table()[key, :12]
    relative = (key + 9) % 12 + 12 if key < 12 else (key + 3) % 12
    share = float((hist * scale).sum() / hist.sum()) if hist.sum() else 0.0
    return found == key, found in (key, relative), share


def _key_row(name: str, stats: list) -> dict:
    return {"songs": name, "key_asked": sum(a for a, _, _ in stats) / len(stats),
            "key_or_relative": sum(b for _, b, _ in stats) / len(stats),
            "in_scale_note_time": round(float(np.mean([c for _, _, c in stats])), 3)}


def form_held(model, codec, songs: int, controls, limits, rows: list, key: int, key_weight: float,
              vary_weight: float) -> None:
    sims_var, sims_ab, sims_plain, good, total = [], [], [], 0, 0
    seam_r, plain_r, keys_form, keys_plain = [], [], [], []
    edge = [b for s in (0, 8, 16, 24) for b in (s, s + 7)]
    inner = [b for b in range(32) if b not in edge]
    for seed in range(songs):
        song = write_form(model, codec, parse_form("A:8 B:8 A:8 B:8"),
                          sampling=Sampling(seed=seed, key_weight=key_weight), controls={"": controls}, limits=limits)
        keys_form.append(key_stats(song.score, 32, key))
        g, t = exact_repeats(song)
        good, total = good + g, total + t
        f = bar_features(song.score, 32)
        sims_ab.append(similarity(f, np.arange(8), np.arange(8, 16)).mean())
        bits, notes = bits_by_bar(model, codec, song.score, 32)
        seam_r.append((bits, notes))
        varied = write_form(model, codec, parse_form("A:8 B:8 A':8 B:8"),
                            sampling=Sampling(seed=seed, key_weight=key_weight, vary_weight=vary_weight), controls={"": controls}, limits=limits)
        sims_var.append(similarity(bar_features(varied.score, 32), np.arange(16, 24), np.arange(8)).mean())
        seconds = float(form_summary(song)["seconds"])
        (s,) = generate_samples(model, codec, seconds=seconds, sampling=Sampling(seed=seed), tempo=120.0,
                                controls=controls, limits=limits)
        plain = sample_score(codec, s)
        fp = bar_features(plain, 32)
        keys_plain.append(key_stats(plain, 32, key))
        sims_plain.append(similarity(fp, np.arange(8, 24), np.arange(16, 32)).mean())
        plain_r.append(bits_by_bar(model, codec, plain, 32))
    ratio = lambda rs: _ratio(sum(b for b, _ in rs), sum(n for _, n in rs), edge, inner)  # noqa: E731
    rows.append({"measure": "form held", "songs": songs, "exact_repeats": f"{good}/{total}",
                 "variation_similarity_to_A": round(float(np.mean(sims_var)), 3),
                 "A_to_B_similarity": round(float(np.mean(sims_ab)), 3),
                 "plain_8_bars_apart_similarity": round(float(np.mean(sims_plain)), 3)})
    rows.append({"measure": "seams", "form_edge_over_inner_bits_per_note": round(ratio(seam_r), 3),
                 "plain_same_bars_edge_over_inner": round(ratio(plain_r), 3), "target": "<= 1.10"})
    rows.append({"measure": "key held", "key": key_name(key), "key_weight": key_weight,
                 "form": _key_row("A:8 B:8 A:8 B:8", keys_form), "plain": _key_row("plain samples", keys_plain)})


def long_song(model, codec, controls, key, limits, rows: list, key_weight: float, vary_weight: float) -> None:
    sections = parse_form(LONG_FORM)
    t0 = time.perf_counter()
    song = write_form(model, codec, sections, sampling=Sampling(seed=1, key_weight=key_weight, vary_weight=vary_weight),
                      tempo=120.0,
                      time_signature=(4, 4), controls={"": controls}, limits=limits)
    took = time.perf_counter() - t0
    summary = form_summary(song)
    found = estimate_key(bar_features(song.score, 90)[0].sum(0))
    rows.append({"measure": "3-minute song", "form": LONG_FORM, "bars": summary["bars"], "seconds": summary["seconds"],
                 "compute_seconds": round(took, 1), "split": summary["compute_seconds"],
                 "warnings": summary["warnings"], "key_asked": key,
                 "key_of_its_notes": None if found is None else key_name(found)})
    t0 = time.perf_counter()
    (s,) = generate_samples(model, codec, seconds=summary["seconds"], sampling=Sampling(seed=1), tempo=120.0,
                            time_signature=(4, 4), controls=controls, limits=limits)
    plain_took = time.perf_counter() - t0
    plain = sample_score(codec, s)
    rows.append({"measure": "8-bar stretches that return (similarity >= 0.8)",
                 "form_song": round(returning_share(bar_features(song.score, 90), 90), 3),
                 "plain_sample": round(returning_share(bar_features(plain, 90), 90), 3),
                 "plain_compute_seconds": round(plain_took, 1)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="out/demo/model/best")
    p.add_argument("--songs", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--key", default="C major")
    p.add_argument("--key-weight", type=float, default=KEY_WEIGHT)
    p.add_argument("--vary-weight", type=float, default=VARY_WEIGHT)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model, codec, config = load_checkpoint(a.ckpt, "cpu")
    controls, _ = resolve(capabilities(config, codec), codec, key=a.key)
    limits = checkpoint_limits(config)
    rows: list = []
    form_held(model, codec, a.songs, controls, limits, rows, parse_key(a.key), a.key_weight, a.vary_weight)
    long_song(model, codec, controls, a.key, limits, rows, a.key_weight, a.vary_weight)
    for r in rows:
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
