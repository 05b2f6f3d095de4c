"""Two steps of the draw compiled with numba for the CPU, each the torch ops it replaces, bit for bit.

At batch 1 on a CPU the draw is a chain of small tensor ops over a few hundred candidates, each costing
more in dispatch than in work. The float work that sets the probabilities (sort, softmax, cumulative
sums) stays in torch, so its rounding is torch's; what is compiled here only compares, moves and
searches those numbers, so it cannot round differently: the nucleus cut (which sorted candidates fall
outside top-p, put back in candidate order) and the pick (the inverse-CDF search and its fallback).
``engine.draw`` uses them on a CPU; ``tests/test_grammar_jit.py`` checks them against the torch ops.
"""
from __future__ import annotations

import numpy as np

from midigen.generate.grammar_jit import available, compiled as _jit  # noqa: F401 (one switch)


@_jit
def gather(logits, ids, counts, out):
    """``out[b, i]`` = ``logits[b, ids[b, i]]`` for each row's first ``counts[b]`` candidates, -inf for
    the padding after them (torch's ``gather`` and ``masked_fill``)."""
    for b in range(out.shape[0]):
        n = counts[b]
        for i in range(out.shape[1]):
            out[b, i] = logits[b, ids[b, i]] if i < n else -np.inf


@_jit
def cut_below(x, kth):
    """``x`` with -inf where it is below its row's ``kth`` (torch's ``masked_fill(x < kth)``), in place."""
    for b in range(x.shape[0]):
        for i in range(x.shape[1]):
            if x[b, i] < kth[b, 0]:
                x[b, i] = -np.inf


@_jit
def nucleus_cut(sorted_x, order, probs, cum, top_p, out, wide):
    """``out`` = the candidates' scaled logits in candidate order, -inf where the strictly more likely
    ones already hold more than ``top_p`` of the mass: torch's ``cum - probs > top_p`` (float32, the
    scalar cast to float32 as torch casts it), ``masked_fill`` and ``scatter`` by ``order``; ``wide``
    gets the same values as float64 (exact), what the CDF is summed in."""
    p = np.float32(top_p)
    for b in range(sorted_x.shape[0]):
        for i in range(sorted_x.shape[1]):
            before = cum[b, i] - probs[b, i]
            v = -np.inf if before > p else sorted_x[b, i]
            out[b, order[b, i]] = v
            wide[b, order[b, i]] = v


@_jit
def pick(x, ids, cdf, u, out):
    """``out[b]`` = the id whose CDF step holds ``u[b] * total`` (torch's ``searchsorted(right=True)``,
    clamped to the last candidate), or the most likely candidate where rounding at the very top of the
    CDF lands on one that is not allowed (``argmax``: the first of equal maxima)."""
    k = cdf.shape[1]
    for b in range(cdf.shape[0]):
        v = u[b, 0] * cdf[b, k - 1]
        lo, hi = 0, k
        while lo < hi:  # the first index whose CDF exceeds v
            mid = (lo + hi) // 2
            if cdf[b, mid] <= v:
                lo = mid + 1
            else:
                hi = mid
        i = min(lo, k - 1)
        if not np.isfinite(x[b, i]):
            i = 0
            for j in range(1, k):
                if x[b, j] > x[b, i]:
                    i = j
        out[b] = ids[b, i]
