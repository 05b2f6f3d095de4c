"""The draw on a CPU, compiled with numba: at batch 1 it is a chain of small tensor ops over a few hundred
candidates, each costing more in dispatch (and, right after the forward has streamed the weights through
the caches, in cache misses) than in work.

* ``nucleus_draw``: the draw in one call: gather, temperature, top-k, softmax, nucleus (a selection,
  not a sort) and inverse-CDF pick. It does its own float work, in float64, and hands a step back to
  the torch ops wherever they could pick another id: a mass within float32 summing error of top-p, or
  a pick among equal logits that straddle the cut (torch's sort leaves their order open). So it picks
  the ids they pick, but for a uniform within a rounding error of a CDF step. In the engine's step it
  costs 60-80% of what the torch chain did (docs/benchmarks.md).
* the steps it hands back (and a draw without the compiled grammar's candidates) run torch's ops,
  ``engine._draw_by_ops``, whose float work (sort, softmax, cumulative sums) stays torch's; what is
  compiled for them only compares, moves and searches those numbers, so it cannot round differently:
  the gather, the top-k cut, the nucleus cut (which sorted candidates fall outside top-p, put back in
  candidate order) and the pick (the inverse-CDF search and its fallback).

``engine.draw`` uses them on a CPU; ``tests/test_grammar_jit.py`` checks them against the torch ops.
"""
from __future__ import annotations

import math

import numpy as np

from midigen.generate.grammar_jit import available, compiled as _jit  # noqa: F401 (one switch)

# How far torch's float32 "mass before" a candidate may be from the float64 one: n / 16 + 8 float32
# epsilons (2 ** -24) is 4 times the largest gap measured over 400 random rows of 2-3,000 candidates,
# and the margin is twice that
CLOSE_PER_16, CLOSE_BASE = 2.0 ** -23, 2.0 ** -23 * 8


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


@_jit
def nucleus_draw(logits, ids, counts, temperature, top_k, top_p, u, out):
    """``out[b]``: an id drawn for row ``b`` from its first ``counts[b]`` candidates ``ids[b]``: their
    logits over ``temperature`` (in float32, as torch divides them), those below the ``top_k``-th largest
    cut (0: none), the smallest set of most likely ones whose mass reaches ``top_p`` (a candidate is cut
    where the strictly more likely ones already hold more; ``top_p`` >= 1 keeps all), then the inverse
    CDF of ``u[b]`` over the kept ones in candidate order, as ``engine.draw`` does with torch's ops. -1
    where torch's ops could pick another id (``_nucleus``, ``_tie_decides``): the caller draws that
    step with them, so a seed writes what it wrote before."""
    t = np.float32(temperature)
    for b in range(logits.shape[0]):
        n = counts[b]
        x = np.empty(n)
        for i in range(n):
            x[i] = np.float32(logits[b, ids[b, i]]) / t
        if 0 < top_k < n:
            kth = np.partition(x, n - top_k)[n - top_k]  # the top_k-th largest, as torch.topk's last value
            for i in range(n):
                x[i] = -np.inf if x[i] < kth else x[i]
        weight = _exp_shares(x)
        keep, settled, tie = _nucleus(x, weight, top_p)
        i = _inverse_cdf(weight, keep, u[b, 0])
        out[b] = ids[b, i] if settled and not _tie_decides(x, tie, i) else -1


@_jit
def _exp_shares(x):
    """exp(x - max x): the candidates' unnormalised probabilities (the largest is exactly 1)."""
    top = x[0]
    for v in x:
        top = v if v > top else top
    w = np.empty(len(x))
    for i in range(len(x)):
        w[i] = math.exp(x[i] - top)
    return w


@_jit
def _nucleus(x, weight, top_p):
    """(which candidates the nucleus keeps, whether torch's ops would keep the same, the logit of equal
    candidates on both sides of the cut or NaN).

    The kept ones are those whose strictly more likely candidates hold at most ``top_p`` of the mass. They
    are found as a selection, not a sort: ranges of candidates are split around a pivot logit (``_split``)
    and only the part holding the cut is split again, so a row costs a few passes over its candidates
    however many the nucleus keeps (a sort of ~900 was most of a flat row's draw). Only candidates holding
    at least (1 - top_p) / n of the mass take part: together the others hold less than 1 - top_p, and the
    larger ones more than top_p, so every one of them is cut.

    Not settled where a candidate's mass before it is within float32 summing error of ``top_p`` (torch
    sums the shares in float32; ``CLOSE_PER_16``). Equal logits on both sides of the cut are kept lower
    index first here, while torch's sort leaves their order open (arrange's rows often have runs of
    them: ids the model never saw share one logit): ``_tie_decides`` says whether that can move the pick."""
    n = len(x)
    keep = np.zeros(n, dtype=np.bool_)
    total = weight.sum()
    if top_p >= 1.0:
        keep[:] = weight > 0.0
        return keep, True, np.nan
    floor = (1.0 - top_p) / n * total
    cand = np.empty(n, dtype=np.int64)
    m = 0
    for i in range(n):
        cand[m] = i
        m += weight[i] >= floor
    limit = top_p * total
    margin = (CLOSE_PER_16 * n / 16 + CLOSE_BASE) * total
    lo, hi, above = 0, m, 0.0  # cand[:lo] kept (mass ``above``), cand[hi:m] cut, the cut lies in between
    while lo < hi:
        g, e, heavier, pivot = _split(x, weight, cand, lo, hi)
        if above + heavier > limit:  # the first of the pivot's equals is cut: the cut is among the heavier
            hi = g
            continue
        above, lo = above + heavier, g
        share, run = weight[cand[g]], e - g
        kept = min(run, int((limit - above) // share) + 1)  # equals kept while the mass before them <= limit
        while kept > 0 and above + (kept - 1) * share > limit:  # the floor division's rounding, undone
            kept -= 1
        while kept < run and above + kept * share <= limit:
            kept += 1
        if kept < run:  # the cut falls among equals: the lowest-index ones stay
            keep[np.sort(cand[g:e])[:kept]] = True
            keep[cand[:lo]] = True
            before = above + kept * share
            return keep, abs(before - limit) > margin and abs(before - share - limit) > margin, pivot
        above, lo = above + run * share, e
        if above > limit:
            hi = lo
    keep[cand[:lo]] = True
    least = weight[cand[:lo]].min()  # the last one kept
    return keep, abs(above - limit) > margin and abs(above - least - limit) > margin, np.nan


@_jit
def _split(x, weight, cand, lo, hi):
    """Reorder ``cand[lo:hi]`` in place as [logit > pivot | == pivot | < pivot] around the median of its
    first, middle and last candidates' logits; -> (start of the equals, start of the lighter, mass of the
    heavier, the pivot)."""
    a, b, c = x[cand[lo]], x[cand[(lo + hi - 1) // 2]], x[cand[hi - 1]]
    pivot = max(min(a, b), min(max(a, b), c))
    g, i, e = lo, lo, hi  # [lo, g) heavier, [g, i) equal, [e, hi) lighter, [i, e) not seen yet
    heavier = 0.0
    while i < e:
        v = x[cand[i]]
        if v > pivot:
            heavier += weight[cand[i]]
            cand[g], cand[i] = cand[i], cand[g]
            g += 1
            i += 1
        elif v < pivot:
            e -= 1
            cand[e], cand[i] = cand[i], cand[e]
        else:
            i += 1
    return g, e, heavier, pivot


@_jit
def _tie_decides(x, tie, picked):
    """Whether torch's ops could pick another candidate than ``picked`` because they keep other members
    of the run of equal logits ``tie`` (NaN: none) across the cut. They keep as many of them, each with
    the same weight, so the CDF differs only between the run's first and last member (in candidate order),
    and only a pick there is in doubt."""
    if np.isnan(tie):
        return False
    first, last = -1, -1
    for i in range(len(x)):
        if x[i] == tie:
            first = i if first < 0 else first
            last = i
    return first <= picked <= last


@_jit
def _inverse_cdf(weight, keep, u):
    """The index of the kept candidate whose step of the CDF (kept weights summed in candidate order)
    holds ``u`` times their total; the last kept one if rounding puts ``u`` times the total at the top."""
    kept = 0.0
    for i in range(len(weight)):
        if keep[i]:
            kept += weight[i]
    v, run, last = u * kept, 0.0, -1
    for i in range(len(weight)):
        if keep[i]:
            run += weight[i]
            last = i
            if run > v:
                break
    return last
