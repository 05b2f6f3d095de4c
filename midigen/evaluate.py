"""`midigen eval`: a checkpoint's loss and bits per note on a split, next to an n-gram baseline.

Both models score exactly the same tokens (every token of the first songs of the split up to
``max_tokens``, each once, song BOS excluded), so the two bits-per-note figures are comparable. The
model reads each song in context-sized chunks; a chunk after the first carries the song header and
the half context before it as unscored context (see ``dataset.eval_rows``). The n-gram sees its
n-1 previous tokens within the song.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from midigen.checkpoint import unwrap
from midigen.dataset import eval_rows
from midigen.errors import MidigenError, UsageError

LN2 = math.log(2.0)
NGRAM_MAX_TRAIN_TOKENS = 20_000_000  # keeps the baseline to seconds and a few GB on Lakh-size data


def score_rows(model, x: np.ndarray, y: np.ndarray, batch_size: int, device, amp=None,
               rank: int = 0, world: int = 1, progress: bool = False) -> float:
    """Total cross-entropy (nats) over the targets != -1 of this process's share of the rows."""
    raw = unwrap(model)
    was_training = raw.training
    raw.eval()
    idx = np.arange(rank, len(x), world)
    total = torch.zeros((), dtype=torch.float64, device=device)
    batches = range(0, len(idx), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="scoring", unit="batch", file=sys.stderr, dynamic_ncols=True, leave=False)
    with torch.no_grad():
        for a in batches:
            sel = idx[a : a + batch_size]
            xb = torch.from_numpy(x[sel]).to(device, non_blocking=True)
            yb = torch.from_numpy(y[sel]).to(device, non_blocking=True)
            # trim trailing all-padding columns (short last chunks): less work, same numbers
            used = int((yb >= 0).any(0).nonzero().max().item()) + 1 if (yb >= 0).any() else 1
            xb, yb = xb[:, :used], yb[:, :used]
            with amp or contextlib.nullcontext():
                logits, _ = raw(xb)
            total += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), yb.reshape(-1),
                                     ignore_index=-1, reduction="sum").double()
    if was_training:
        raw.train()
    return float(total.item()) if world == 1 else total


def summarize(nats: float, tokens: int, notes: int, prefix: str = "") -> dict:
    bits = nats / LN2
    return {
        f"{prefix}loss": nats / tokens,
        f"{prefix}bits_per_token": bits / tokens,
        f"{prefix}bits_per_note": bits / notes if notes else None,
    }


def control_cost(model, sp, T: int, budget: int, device, amp, progress: bool = False) -> dict:
    """Bits per note of the songs' events (header excluded) with each song's controls in its header and
    without any: the same tokens scored both ways, so the ratio is what steering costs (or gains)."""
    out = {}
    for name, controls in (("without", None), ("with", sp.song_controls)):
        flat = None if controls is None else (lambda i: [t for g in controls(i) for t in g])
        x, y = eval_rows(sp, T, budget, controls=flat, skip_header=True)
        targets = y[y >= 0]
        notes = sp.codec.count_notes(targets)
        nats = score_rows(model, x, y, max(1, 16384 // T), device, amp, progress=progress)
        out[f"bits_per_note_{name}"] = nats / LN2 / notes if notes else None
        out["tokens"], out["notes"] = int(len(targets)), int(notes)
    if out["bits_per_note_without"]:
        out["ratio"] = out["bits_per_note_with"] / out["bits_per_note_without"]
    return out


def evaluate(ckpt, data, split: str = "test", max_tokens: int | None = None, ngram_order: int = 5,
             device: str | None = None, progress: bool = True, controls: bool = False) -> dict:
    """Bits per note of a checkpoint and its n-gram baseline; ``controls`` adds ``control_cost``."""
    from midigen.checkpoint import load_checkpoint, resolve
    from midigen.dataset import Dataset, eval_positions, eval_rows
    from midigen.device import best_device
    from midigen.ngram import KneserNey, unigram_log2prob

    ds = Dataset(data)
    path = resolve(ckpt)
    device = device or best_device().type
    model, codec, config = load_checkpoint(path, device=device)
    if codec.to_dict() != ds.codec.to_dict():
        raise MidigenError(f"checkpoint {path} was trained with a different codec than the dataset {data}: "
                           "prepare the data with the checkpoint's midigen version")
    sp = ds.split(split)
    budget = int(max_tokens) if max_tokens else len(sp)
    T = model.cfg.block_size
    x, y = eval_rows(sp, T, budget)
    targets = y[y >= 0]
    tokens, notes = int(len(targets)), codec.count_notes(targets)
    amp = (torch.autocast("cuda", dtype=torch.bfloat16)
           if device.startswith("cuda") and torch.cuda.is_bf16_supported() else None)
    t0 = time.time()
    nats = score_rows(model, x, y, max(1, 16384 // T), device, amp, progress=progress)
    model_s = time.time() - t0

    out = {"ckpt": str(path), "data": str(data), "split": split, "tokens": tokens, "notes": notes}
    out.update(summarize(nats, tokens, notes))

    # the baseline, on the very same tokens
    pos = eval_positions(sp, budget)
    if len(pos) != tokens:
        raise MidigenError(f"internal error: model scored {tokens} tokens, baseline would score {len(pos)}")
    train = ds.split("train")
    n_train = min(len(train), NGRAM_MAX_TRAIN_TOKENS)
    if n_train < 2:
        raise MidigenError(f"the train split of {data} is empty: no n-gram baseline possible")
    t0 = time.time()
    train_tokens = np.asarray(train.tokens[:n_train])
    lm = KneserNey(ngram_order, codec.vocab_size).fit(train_tokens, codec.BOS)
    stream = np.asarray(sp.tokens[: int(pos[-1]) + 1]) if len(pos) else np.zeros(0, np.uint16)
    lp = lm.score(stream, pos, codec.BOS)
    nats_ng = float(-lp.sum() * LN2)
    out["ngram_order"] = ngram_order
    out.update(summarize(nats_ng, tokens, notes, prefix="ngram_"))
    out["ngram_train_tokens"] = int(n_train)
    if n_train < len(train):
        out["ngram_note"] = (f"n-gram trained on the first {n_train:,} of {len(train):,} train tokens "
                             f"(capped for speed)")
    uni = unigram_log2prob(train_tokens, stream[pos], codec.vocab_size)
    out["unigram_bits_per_note"] = float(-uni.sum() / notes) if notes else None
    if out["bits_per_note"] and out["ngram_bits_per_note"]:
        out["ratio_to_ngram"] = out["bits_per_note"] / out["ngram_bits_per_note"]
    out["seconds"] = {"model": round(model_s, 2), "ngram": round(time.time() - t0, 2)}
    if controls:
        if sp.controls is None:
            raise UsageError(f"--controls: the dataset {data} has no controls (prepared before them, or codec v1)")
        out["controls"] = control_cost(model, sp, T, budget, device, amp, progress=progress)
    return out
