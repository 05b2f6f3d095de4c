"""`midigen eval`: a checkpoint's loss, bits per note and per second on a split, next to an n-gram baseline.

Both models score exactly the same tokens (every token of the first songs of the split up to
``max_tokens``, each once, song BOS excluded), so the two bits-per-note figures are comparable. The
model reads each song in context-sized chunks; a chunk after the first carries the song header and
the half context before it as unscored context (see ``dataset.eval_rows``). The n-gram sees its
n-1 previous tokens within the song. Bits per second (AMT's figure, which does not depend on the
tokenizer) divide the total bits by the seconds of music those tokens cover (``timing.positions_seconds``).
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np
import torch

from midigen.model.checkpoint import load_checkpoint, resolve, unwrap
from midigen.data.dataset import Dataset, eval_positions, eval_rows
from midigen.errors import MidigenError, UsageError
from midigen.device import autocast, best_device, compute_dtype
from midigen.eval.ngram import KneserNey, unigram_log2prob
from midigen.music.codec import Kind
from midigen.music.timing import positions_seconds

LN2 = math.log(2.0)
NGRAM_MAX_TRAIN_TOKENS = 20_000_000  # keeps the baseline to seconds and a few GB on Lakh-size data


def score_rows(model, x: np.ndarray, y: np.ndarray, batch_size: int, device, dtype=torch.float32,
               rank: int = 0, world: int = 1, progress: bool = False):
    """Total cross-entropy (nats) over the targets != -1 of this process's share of the rows.

    A float for one process; with ``world`` > 1 a float64 tensor on ``device`` for the caller to
    all-reduce. Logits are never built over the whole vocabulary for a whole batch (``GPT.sum_nll``).
    """
    raw = unwrap(model)
    was_training = raw.training
    raw.eval()
    device = torch.device(device)
    idx = np.arange(rank, len(x), world)
    total = torch.zeros((), dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
    batches = range(0, len(idx), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="scoring", unit="batch", file=sys.stderr, dynamic_ncols=True, leave=False)
    with torch.no_grad():
        for a in batches:
            sel = idx[a : a + batch_size]
            # trim trailing all-padding columns (short last chunks): less work, same numbers
            scored = (y[sel] >= 0).any(0)
            used = int(np.flatnonzero(scored)[-1]) + 1 if scored.any() else 1
            xb = torch.from_numpy(np.ascontiguousarray(x[sel, :used])).to(device, non_blocking=True)
            yb = torch.from_numpy(np.ascontiguousarray(y[sel, :used])).to(device, non_blocking=True)
            with autocast(device, dtype):
                total += raw.sum_nll(xb, yb)
    if was_training:
        raw.train()
    return float(total.item()) if world == 1 else total


def summarize(nats: float, tokens: int, notes: int, seconds: float | None = None, prefix: str = "") -> dict:
    """Loss per token, and bits per token, per note and per second of music (AMT's tokenizer-free figure)."""
    bits = nats / LN2
    return {
        f"{prefix}loss": nats / tokens,
        f"{prefix}bits_per_token": bits / tokens,
        f"{prefix}bits_per_note": bits / notes if notes else None,
        f"{prefix}bits_per_second": bits / seconds if seconds else None,
    }


def control_cost(model, sp, T: int, budget: int, device, dtype=torch.float32, progress: bool = False) -> dict:
    """Bits per note of the songs' events (header excluded) with each song's controls in its header and
    without any: the same tokens scored both ways, so the ratio is what steering costs (or gains)."""
    out = {}
    for name, controls in (("without", None), ("with", sp.song_controls)):
        flat = None if controls is None else (lambda i: [t for g in controls(i) for t in g])
        x, y = eval_rows(sp, T, budget, controls=flat, skip_header=True)
        targets = y[y >= 0]
        notes = sp.codec.count_notes(targets)
        nats = score_rows(model, x, y, max(1, 16384 // T), device, dtype, progress=progress)
        out[f"bits_per_note_{name}"] = nats / LN2 / notes if notes else None
        out["tokens"], out["notes"] = int(len(targets)), int(notes)
    if out["bits_per_note_without"]:
        out["ratio"] = out["bits_per_note_with"] / out["bits_per_note_without"]
    return out


def kind_bits(model, codec, x: np.ndarray, y: np.ndarray, total_nats: float, device, dtype=torch.float32,
              progress: bool = False) -> dict:
    """Bits (and token counts) of the scored targets ``y`` split by what they are: ``notes`` = NOTE and DV
    tokens (what bits per note is about), ``chords`` = CHORD tokens, ``rest`` = everything else (shifts,
    tempo, header, EOS). The same rows scored with the other targets masked (``total_nats``: all of
    them, already scored), so the parts add up."""
    T = x.shape[1]
    kinds = codec.kinds(np.where(y >= 0, y, 0))
    groups = {"notes": (kinds == Kind.NOTE) | (kinds == Kind.DV), "chords": kinds == Kind.CHORD}
    scored = y >= 0
    out, left = {}, total_nats
    for name, sel in groups.items():
        sel &= scored
        nats = score_rows(model, x, np.where(sel, y, -1), max(1, 16384 // T), device, dtype,
                          progress=progress) if sel.any() else 0.0
        out[f"{name}_bits"], out[f"{name}_tokens"] = nats / LN2, int(sel.sum())
        left -= nats
    out["rest_bits"], out["rest_tokens"] = left / LN2, int(scored.sum()) - out["notes_tokens"] - out["chords_tokens"]
    return out


def chord_cost(model, codec, x, y, total_nats: float, device, dtype=torch.float32, progress: bool = False) -> dict:
    """What chord tokens cost a v4 model, per note: tokens per note with and without them, and bits per
    note over the note and duration tokens only, over the chords alone, and over the rest."""
    k = kind_bits(model, codec, x, y, total_nats, device, dtype, progress)
    notes = codec.count_notes(y[y >= 0])
    if not notes:
        return {}
    total = k["notes_tokens"] + k["chords_tokens"] + k["rest_tokens"]
    return {
        "tokens_per_note": total / notes,
        "tokens_per_note_without_chords": (total - k["chords_tokens"]) / notes,
        "chord_tokens": k["chords_tokens"],
        "bits_per_note_note_tokens": k["notes_bits"] / notes,  # NOTE + DV only: comparable with a v3 model's
        "bits_per_note_chord_tokens": k["chords_bits"] / notes,
        "bits_per_note_other_tokens": k["rest_bits"] / notes,
        "bits_per_chord": k["chords_bits"] / k["chords_tokens"] if k["chords_tokens"] else None,
    }


def evaluate(ckpt, data, split: str = "test", max_tokens: int | None = None, ngram_order: int = 5,
             device: str | None = None, progress: bool = True, dtype: str = "auto", controls: bool = False,
             precision: str = "fp32", by_kind: bool = False) -> dict:
    """The checkpoint and an n-gram baseline on the same tokens of ``split``: one JSON-able dict;
    ``controls`` adds ``control_cost``; ``by_kind`` adds ``chord_cost`` (two more scoring passes)."""
    ds = Dataset(data)
    path = resolve(ckpt)
    dev = best_device(device)
    model, codec, _ = load_checkpoint(path, device=dev, precision=precision)
    if codec.to_dict() != ds.codec.to_dict():
        raise UsageError(f"checkpoint {path} was trained with a different codec than the dataset {data}: "
                           "prepare the data with the checkpoint's midigen version")
    sp = ds.split(split)
    budget = int(max_tokens) if max_tokens else len(sp)
    T = model.cfg.block_size
    x, y = eval_rows(sp, T, budget)
    targets = y[y >= 0]
    pos = eval_positions(sp, budget)
    tokens, notes = int(len(targets)), codec.count_notes(targets)
    if len(pos) != tokens:
        raise MidigenError(f"internal error: model scored {tokens} tokens, baseline would score {len(pos)}")
    music_s = positions_seconds(codec, sp.tokens, pos)
    t0 = time.time()
    amp = compute_dtype(dev, dtype) if model.precision == "fp32" else torch.float32  # converted weights: as loaded
    nats = score_rows(model, x, y, max(1, 16384 // T), dev, amp, progress=progress)
    model_s = time.time() - t0

    out = {"ckpt": str(path), "data": str(data), "split": split, "tokens": tokens, "notes": notes,
           "music_seconds": round(music_s, 3)}
    out.update(summarize(nats, tokens, notes, music_s))
    t0 = time.time()
    out.update(_ngram_baseline(ds, sp, pos, ngram_order, notes, music_s))
    if out["bits_per_note"] and out["ngram_bits_per_note"]:
        out["ratio_to_ngram"] = out["bits_per_note"] / out["ngram_bits_per_note"]
    out["seconds"] = {"model": round(model_s, 2), "ngram": round(time.time() - t0, 2)}
    if by_kind:  # the note and duration tokens' own bits apart from the chords' (v4) and the rest: a v3
        # model's same figure is comparable (benchmarks/chord_cost.py)
        out["by_kind"] = chord_cost(model, codec, x, y, nats, dev, amp, progress=progress)
    if controls:
        if sp.controls is None:
            raise UsageError(f"--controls: the dataset {data} has no controls (prepared before them, or codec v1)")
        out["controls"] = control_cost(model, sp, T, budget, dev, amp, progress=progress)
    return out


def _ngram_baseline(ds, sp, pos: np.ndarray, order: int, notes: int, music_s: float) -> dict:
    """A Kneser-Ney n-gram fit on (the start of) the train split, scored on the tokens at ``pos``."""
    codec = ds.codec
    train = ds.split("train")
    n_train = min(len(train), NGRAM_MAX_TRAIN_TOKENS)
    if n_train < 2:
        raise MidigenError(f"the train split of {ds.dir} is empty: no n-gram baseline possible")
    train_tokens = np.asarray(train.tokens[:n_train])
    lm = KneserNey(order, codec.vocab_size).fit(train_tokens, codec.BOS)
    stream = np.asarray(sp.tokens[: int(pos[-1]) + 1]) if len(pos) else np.zeros(0, np.uint16)
    lp = lm.score(stream, pos, codec.BOS)
    out = {"ngram_order": order}
    out.update(summarize(float(-lp.sum() * LN2), len(pos), notes, music_s, prefix="ngram_"))
    out["ngram_train_tokens"] = int(n_train)
    if n_train < len(train):
        out["ngram_note"] = (f"n-gram trained on the first {n_train:,} of {len(train):,} train tokens "
                             f"(capped for speed)")
    uni = unigram_log2prob(train_tokens, stream[pos], codec.vocab_size)
    out["unigram_bits_per_note"] = float(-uni.sum() / notes) if notes else None
    return out
