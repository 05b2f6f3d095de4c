"""An interpolated modified Kneser-Ney n-gram model over token ids: the baseline a model must beat.

Counting is vectorized: every n-gram and context is hashed to one uint64 (a polynomial over the
token ids, nearest token first), counted with ``np.unique`` and looked up with ``searchsorted``, so a
few million tokens train in seconds. Histories never reach across a song start (BOS): positions
before it read as a padding symbol, as a sentence-start marker does in text models.

Probabilities are normalized over the whole vocabulary at every order: the discounted mass of a
context is handed to the next lower order, and order 1 hands its share to the uniform distribution,
so no token ever gets probability 0.
"""
from __future__ import annotations

import numpy as np

PAD = -1  # history position before the song start
_MUL = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the polynomial hash


def song_starts(tokens: np.ndarray, bos: int) -> np.ndarray:
    """For every position, the index of the song it belongs to's first token (its BOS)."""
    idx = np.where(np.asarray(tokens) == bos, np.arange(len(tokens)), 0)
    return np.maximum.accumulate(idx)


def _hash_keys(lag_tokens, target: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(context key, n-gram key) of order ``k`` for each row; ``lag_tokens(j)`` gives the token j back."""
    with np.errstate(over="ignore"):
        h = np.zeros(len(target), dtype=np.uint64)
        for lag in range(1, k):
            h = h * _MUL + (lag_tokens(lag) + 2).astype(np.uint64)
        g = h * _MUL + (np.asarray(target, dtype=np.int64) + 2).astype(np.uint64)
    return h, g


class _Order:
    """Counts of one order: n-gram keys -> count, context keys -> total and count-of-count sums."""

    def __init__(self, grams: np.ndarray, counts: np.ndarray, ctx_of_gram: np.ndarray):
        self.grams, self.counts = grams, counts  # grams sorted (np.unique)
        self.ctx, inv = np.unique(ctx_of_gram, return_inverse=True)
        c = counts.astype(np.float64)
        self.total = np.bincount(inv, weights=c, minlength=len(self.ctx))
        self.d = self._discounts(counts)
        dsum = np.where(counts == 1, self.d[0], np.where(counts == 2, self.d[1], self.d[2]))
        self.gamma_mass = np.bincount(inv, weights=dsum, minlength=len(self.ctx))

    @staticmethod
    def _discounts(counts: np.ndarray) -> np.ndarray:
        """Chen & Goodman's estimates D1, D2, D3+ from the count-of-counts, kept in a sane range."""
        n = np.bincount(np.minimum(counts, 5), minlength=6).astype(np.float64)
        n1, n2, n3, n4 = (max(x, 1.0) for x in n[1:5])
        y = n1 / (n1 + 2 * n2)
        d = np.array([1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3])
        # a floor keeps some mass for lower orders (and so for unseen tokens) on tiny data
        return np.clip(d, 0.05, [1.0, 2.0, 3.0])

    def lookup(self, ctx: np.ndarray, grams: np.ndarray):
        ci = np.minimum(np.searchsorted(self.ctx, ctx), len(self.ctx) - 1)
        found = self.ctx[ci] == ctx
        gi = np.minimum(np.searchsorted(self.grams, grams), len(self.grams) - 1)
        c = np.where(self.grams[gi] == grams, self.counts[gi], 0)
        return found, ci, c


class KneserNey:
    def __init__(self, order: int, vocab_size: int):
        if order < 1:
            raise ValueError("order must be >= 1")
        self.order = order
        self.V = vocab_size
        self.levels: list[_Order] = []  # index k-1 holds order k
        self.train_tokens = 0

    def fit(self, tokens: np.ndarray, bos: int) -> "KneserNey":
        """Count every order on a token stream of songs (each starting with BOS); BOS is never a target."""
        tok = np.asarray(tokens, dtype=np.int64)
        self.train_tokens = len(tok)
        start = song_starts(tok, bos)
        pos = np.flatnonzero(tok != bos)
        if len(pos) == 0:
            raise ValueError("no tokens to count")
        levels = []
        # top order counts occurrences; each lower order counts distinct left extensions (continuations)
        for k in range(self.order, 0, -1):
            p = pos

            def lag_tokens(j, p=p):
                back = p - j
                return np.where(back >= start[p], tok[np.maximum(back, 0)], PAD)

            ctx, grams = _hash_keys(lag_tokens, tok[p], k)
            ug, first, cnt = np.unique(grams, return_index=True, return_counts=True)
            levels.append(_Order(ug, cnt.astype(np.int64), ctx[first]))
            pos = p[first]  # one position per distinct k-gram: its suffix is the (k-1)-gram
        self.levels = levels[::-1]
        return self

    def log2prob(self, history: np.ndarray, target: np.ndarray) -> np.ndarray:
        """log2 P(target | history); ``history`` is (N, order-1), nearest token last, PAD (-1) before a song."""
        history = np.asarray(history, dtype=np.int64).reshape(len(target), -1)
        if history.shape[1] < self.order - 1:
            raise ValueError(f"history needs {self.order - 1} columns")
        target = np.asarray(target, dtype=np.int64)
        p = np.full(len(target), 1.0 / self.V)
        for k, lev in enumerate(self.levels, start=1):
            ctx, grams = _hash_keys(lambda j: history[:, -j], target, k)
            found, ci, c = lev.lookup(ctx, grams)
            d = np.where(c == 0, 0.0, lev.d[np.clip(c, 1, 3) - 1])
            total = lev.total[ci]
            higher = (np.maximum(c - d, 0.0) + lev.gamma_mass[ci] * p) / np.where(found, total, 1.0)
            p = np.where(found, higher, p)
        return np.log2(p)

    def score(self, tokens: np.ndarray, positions: np.ndarray, bos: int) -> np.ndarray:
        """log2 probabilities of ``tokens[positions]`` given their in-song histories."""
        tok = np.asarray(tokens, dtype=np.int64)
        pos = np.asarray(positions, dtype=np.int64)
        start = song_starts(tok, bos)[pos]
        n = max(self.order - 1, 1)
        hist = np.full((len(pos), n), PAD, dtype=np.int64)
        for j in range(1, n + 1):
            back = pos - j
            hist[:, n - j] = np.where(back >= start, tok[np.maximum(back, 0)], PAD)
        out = np.empty(len(pos))
        step = 1 << 20  # bounded memory for long streams
        for a in range(0, len(pos), step):
            out[a : a + step] = self.log2prob(hist[a : a + step], tok[pos[a : a + step]])
        return out


def unigram_log2prob(train: np.ndarray, targets: np.ndarray, vocab_size: int) -> np.ndarray:
    """Add-one unigram log2 probabilities: the floor any sequence model must clear."""
    counts = np.bincount(np.asarray(train, dtype=np.int64), minlength=vocab_size).astype(np.float64) + 1.0
    return np.log2(counts[np.asarray(targets, dtype=np.int64)] / counts.sum())
