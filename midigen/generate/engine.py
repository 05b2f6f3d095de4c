"""The decoding loop every task shares: batched, KV-cached, sampled under the grammar's mask on the device.

A task hands ``decode`` a prompt (one token array shared by every row), a ``Grammar`` already placed
after it, and a token budget. Each step runs the model on the new token only (the KV cache holds the
rest), masks the logits, applies the repetition penalty, temperature, top-k and top-p, and draws one id
per row by inverse CDF from a seeded generator on the model's device. Everything stays on the device;
the only transfer per step is the row of sampled ids coming back (for the output, the listener and the
stopping test). When the cache fills, the context slides: it is rebuilt in one pass from the header plus
the most recent tokens (``window``), and decoding goes on incrementally.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from midigen.music.codec import Codec
from midigen.device import autocast, sampling_dtype
from midigen.errors import Cancelled
from midigen.generate.grammar import Grammar
from midigen.generate.sampling import Sampling

KEEP_FRACTION = 0.5  # share of the context kept when the window slides (the rest is recomputed later)
REPETITION_WINDOW = 256  # recent tokens whose notes the repetition penalty discourages

Listener = Callable[[np.ndarray], object]


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    """The seeded generator every draw of a call comes from, on the model's device."""
    return torch.Generator(device=device).manual_seed(int(seed))


# ----- one step's draw ------------------------------------------------------------------------------


def penalize(logits: torch.Tensor, recent: torch.Tensor, codec: Codec, penalty: float) -> torch.Tensor:
    """CTRL-style penalty on the notes of the recent window only.

    Shifts, durations and tempos recur in every song by design; penalizing them would break rhythm, so
    only NOTE ids (which pitches on which instrument) are discouraged from repeating.
    """
    seen = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    seen.scatter_(1, recent, True)
    seen[:, : codec.note_start] = False
    seen[:, codec.dv_start :] = False
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


def draw(logits: torch.Tensor, mask: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
         gen: torch.Generator) -> torch.Tensor:
    """One id per row from float32 logits restricted to ``mask`` (all on one device, no host sync)."""
    x = logits.masked_fill(~mask, float("-inf")) / temperature
    if top_k is not None and top_k < x.size(1):
        kth = torch.topk(x, top_k, dim=1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=1, descending=True)
        probs = torch.softmax(sorted_x, dim=1)
        before = torch.cumsum(probs, dim=1) - probs  # mass of the strictly more likely ids
        drop = before > top_p
        drop[:, 0] = False
        sorted_x = sorted_x.masked_fill(drop, float("-inf"))
        x = torch.full_like(x, float("-inf")).scatter(1, order, sorted_x)
    # inverse-CDF draw: one uniform per row; much cheaper than multinomial over a wide vocabulary
    wide = torch.float32 if x.device.type == "mps" else torch.float64
    cdf = torch.cumsum(torch.softmax(x.to(wide), dim=1), dim=1)
    u = torch.rand((x.size(0), 1), generator=gen, dtype=wide, device=x.device) * cdf[:, -1:]
    tok = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=x.size(1) - 1)
    ok = mask.gather(1, tok[:, None])[:, 0]  # only rounding at the very top of the CDF can miss
    return torch.where(ok, tok, x.argmax(dim=1))


# ----- the loop -------------------------------------------------------------------------------------


def window(seq: np.ndarray, length: int, codec: Codec, size: int) -> np.ndarray:
    """(B, size) context: each row's header, then its most recent tokens."""
    B = seq.shape[0]
    out = np.empty((B, size), dtype=np.int64)
    for b in range(B):
        h = codec.header_length(seq[b, : min(length, 200)])
        if size - h < size // 4:  # an absurd header: keep recent music rather than the header
            h = 0
        out[b, :h] = seq[b, :h]
        out[b, h:] = seq[b, length - (size - h) : length]
    return out


class Decoder:
    """One call's model, device, sampling settings and generator (shared by a task's chunks)."""

    def __init__(self, model, codec: Codec, sampling: Sampling, *, device=None, listener: Listener | None = None,
                 keep_fraction: float = KEEP_FRACTION):
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.codec = codec
        self.block = model.cfg.block_size
        self.temperature, self.top_k, self.top_p = sampling.temperature, sampling.top_k, sampling.top_p
        self.penalty = sampling.repetition_penalty
        self.listener = listener
        self.keep = max(2, min(self.block - 1, int(self.block * keep_fraction)))
        self.gen = make_generator(self.device, sampling.seed)

    def _forward(self, ids: np.ndarray | torch.Tensor, cache) -> torch.Tensor:
        x = ids if isinstance(ids, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(ids)).to(self.device)
        with autocast(self.device, sampling_dtype(self.device)):
            logits, _ = self.model(x, cache=cache, last_only=True)
        return logits[:, -1, : self.codec.vocab_size].float()

    @torch.inference_mode()
    def decode(self, prefix: np.ndarray, grammar: Grammar, budget: int) -> np.ndarray:
        """(B, len(prefix) + n) tokens: ``prefix`` then up to ``budget`` new tokens per row, until every
        row wrote EOS. Rows that finish early are padded with EOS."""
        B, codec = grammar.B, self.codec
        prefix = np.asarray(prefix, dtype=np.int64)
        L = len(prefix)
        seq = np.zeros((B, L + budget), dtype=np.int64)
        seq[:, :L] = prefix
        dev_seq = torch.from_numpy(seq).to(self.device)  # the penalty's window reads it on the device
        dtype = sampling_dtype(self.device)
        cache = self.model.new_cache(B, dtype=None if dtype == torch.float32 else dtype)
        ctx = seq[:, :L] if L <= self.block else window(seq, L, codec, self.keep)
        logits = self._forward(ctx, cache)
        done = np.zeros(B, bool)
        for new in range(budget):
            if self.penalty != 1.0:
                recent = dev_seq[:, max(0, L - REPETITION_WINDOW) : L]
                logits = penalize(logits, recent, codec, self.penalty)
            tok = draw(logits, grammar.mask(), self.temperature, self.top_k, self.top_p, self.gen)
            grammar.advance(tok)
            dev_seq[:, L] = tok
            host = tok.cpu().numpy()  # the one transfer per step
            grammar.observe(host)
            seq[:, L] = np.where(done, codec.EOS, host)
            L += 1
            done |= host == codec.EOS
            if self.listener is not None and self.listener(seq[:, L - new - 1 : L]):
                raise Cancelled("cancelled")
            if done.all() or new + 1 >= budget:
                break
            if cache.length >= self.block:
                cache.reset()
                logits = self._forward(window(seq, L, codec, self.keep), cache)
            else:
                logits = self._forward(tok[:, None], cache)
        return seq[:, :L]
