"""The decoding loop every task shares: batched, KV-cached, sampled under the grammar's mask on the device.

A task hands ``decode`` a prompt (one token array shared by every row), a ``Grammar`` already placed
after it, and a token budget. Each step masks the logits, applies the repetition penalty, temperature,
top-k and top-p, and draws one id per row by inverse CDF from a seeded generator on the model's device.
Everything stays on the device; the only transfer per step is one small tensor coming back: the ids
just drawn (for the output, the listener and the stopping test) and how many ids each row may write
next (which tells the next step whether it is forced and how wide its draw is). On a CPU the grammar's
step and the draw run compiled (``grammar_jit``, ``draw_jit``, each tested against its torch twin; the
draw in one call), since there a step's many small tensor ops cost more than their work. When the cache
fills, the context slides: it is rebuilt in one pass from the header plus the most recent tokens
(``window``), and decoding goes on incrementally.

**Forced runs in one pass.** A token the grammar forces (its mask allows one id: header tokens asked
for, an edit's kept notes and their durations, EOS of a finished row) needs no logits, so the model does
not run for it. Decided tokens wait in the sequence (``pending``) and the next step that must *sample*
feeds all of them in one multi-token forward, exactly like a prefill of the KV cache. The batch case:
rows stay in lockstep, one decided token per row per step; the model runs only at steps where some row
samples, and then feeds every row's pending tokens together (the same count for every row). A row that
is forced while another samples rides along in that batched forward at the cost of one more column of a
matmul; a step where every row is forced runs no model at all. Letting forced rows run ahead (per-row
cache lengths and positions) would save forwards only in batches whose rows are forced at different
times, while costing a ragged cache, per-row positions and masks in every layer; the case that matters
(one row: ``sample`` b=1, every chunk of ``arrange``/``infill`` after the first, ``harmonize``) gets the
whole saving from the lockstep design.

**Same seed, same music.** Every step takes its row of uniforms from the generator whether or not it
samples, so skipping the model for forced tokens moves no later draw: on a CPU the tokens are the ones
the step-by-step path (``Decoder(one_pass=False)``) writes, up to the rounding of a multi-token forward
against single-token ones (which could only flip a draw that lands within a rounding error of a CDF
boundary). The draw works on the allowed ids only (``draw``'s ``width``), in id order, so it picks the
same id the draw over the whole vocabulary picked.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from midigen.music.codec import Codec
from midigen.device import autocast, sampling_dtype
from midigen.errors import Cancelled
from midigen.generate import draw_jit
from midigen.generate.grammar import Grammar, allowed_counts  # noqa: F401 (callers read engine.allowed_counts)
from midigen.generate.sampling import Sampling

KEEP_FRACTION = 0.5  # share of the context kept when the window slides (the rest is recomputed later)
REPETITION_WINDOW = 256  # recent tokens whose notes the repetition penalty discourages

Listener = Callable[[np.ndarray], object]


def realtime(music_seconds: float, compute_seconds: float) -> float:
    """Seconds of music written per second of compute (> 1: faster than it plays). Every piece's
    summary reports it; pieces written together in one call share that call's time."""
    return float(music_seconds) / max(float(compute_seconds), 1e-9)


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    """The seeded generator every draw of a call comes from, on the model's device."""
    return torch.Generator(device=device).manual_seed(int(seed))


def wide_float(device: torch.device) -> torch.dtype:
    """The dtype of the draw's CDF and uniforms: float64 where the device has it."""
    return torch.float32 if device.type == "mps" else torch.float64


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


def candidates(mask: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, width) allowed ids of each row in increasing order, and which of those slots are real.

    ``width`` is at least the most ids any row allows; rows with fewer ids are padded (with id 0,
    marked not real). On a CPU the ids come from ``nonzero`` (2-4x cheaper than the running count, and
    a CPU has no device to sync with); elsewhere from a running count of the mask, which stays on the
    device."""
    if mask.device.type == "cpu":
        return _candidates_by_nonzero(mask, width)
    return _candidates_by_count(mask, width)


def _candidates_by_count(mask: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A running count of the mask gives each allowed id its slot (three passes over the vocabulary)."""
    B, V = mask.shape
    count = torch.cumsum(mask, dim=1)
    slot = torch.where(mask, count - 1, width)  # everything not allowed lands in a spill column
    ids = torch.zeros((B, width + 1), dtype=torch.long, device=mask.device)
    ids.scatter_(1, slot, torch.arange(V, device=mask.device).expand(B, V))
    real = torch.arange(width, device=mask.device)[None, :] < count[:, -1:]
    return ids[:, :width], real


def _candidates_by_nonzero(mask: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The allowed (row, id) pairs in row-major order, each placed after its row's earlier ones."""
    B = mask.size(0)
    row, col = mask.nonzero(as_tuple=True)
    counts = torch.bincount(row, minlength=B)
    slot = torch.arange(row.numel(), device=mask.device) - (torch.cumsum(counts, 0) - counts)[row]
    ids = torch.zeros((B, width), dtype=torch.long, device=mask.device)
    ids[row, slot] = col
    return ids, torch.arange(width, device=mask.device)[None, :] < counts[:, None]


def draw(logits: torch.Tensor, mask: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
         u: torch.Tensor, width: int | None = None, cands: tuple | None = None) -> torch.Tensor:
    """One id per row from float32 logits restricted to ``mask``, with the uniforms ``u`` (B, 1).

    ``width`` (at least the most ids any row's mask allows; None: the whole vocabulary) bounds the
    work: top-k, top-p and the CDF run over each row's allowed ids (``candidates``), not over the
    18k-wide vocabulary. The CDF runs over them in id order, as it would over the whole vocabulary (the
    other ids add exact zeros), so the same uniform picks the same id. All on one device, no host sync.
    ``cands`` (the compiled grammar's allowed ids and counts, ``Grammar.step_mask``) saves finding
    them. On a CPU with them the draw is one compiled call (``draw_jit.nucleus_draw``: its own float64
    work), which hands back to the torch ops (``_draw_by_ops``) the steps whose nucleus they could set
    otherwise (equal logits across the top-p cut, or a mass within float32 error of top-p), so it picks
    the ids they pick but for a uniform within a rounding error of a CDF step.
    """
    if cands is not None and logits.device.type == "cpu" and draw_jit.available():
        out = np.empty(logits.size(0), dtype=np.int64)
        draw_jit.nucleus_draw(logits.numpy(), cands[0].numpy(), cands[1].numpy(), temperature,
                              0 if top_k is None else top_k, 1.0 if top_p is None else top_p, u.numpy(), out)
        if (out >= 0).all():  # else a nucleus was not settled: the torch ops decide it, as they always did
            return torch.from_numpy(out)
    return _draw_by_ops(logits, mask, temperature, top_k, top_p, u, width, cands)


def _draw_by_ops(logits: torch.Tensor, mask: torch.Tensor, temperature: float, top_k: int | None,
                 top_p: float | None, u: torch.Tensor, width: int | None = None,
                 cands: tuple | None = None) -> torch.Tensor:
    """``draw`` by tensor ops: any device's, and the reference. On a CPU the moves, comparisons and the
    search run compiled (``draw_jit``: the same comparisons, so the same ids) and the float work (sort,
    softmax, sums) stays torch's."""
    V = logits.size(1)
    k = V if width is None else max(1, min(int(width), V))
    compiled = logits.device.type == "cpu" and draw_jit.available()
    if cands is not None and compiled:
        ids = cands[0]  # (B, V): only the first k columns are read
        x = torch.empty((logits.size(0), k), dtype=logits.dtype)
        draw_jit.gather(logits.numpy(), ids.numpy(), cands[1].numpy(), x.numpy())
    else:
        if cands is None:
            ids, real = candidates(mask, k)
        else:
            ids, real = cands[0][:, :k], torch.arange(k, device=mask.device)[None, :] < cands[1][:, None]
        x = logits.gather(1, ids).masked_fill(~real, float("-inf"))
    if temperature != 1.0:
        x = x / temperature
    if top_k is not None and top_k < k:
        kth = torch.topk(x, top_k, dim=1).values[:, -1:]
        if compiled:
            draw_jit.cut_below(x.numpy(), kth.numpy())
        else:
            x = x.masked_fill(x < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        x, wide = _nucleus(x, top_p, u.dtype)
    else:
        wide = x.to(u.dtype)
    cdf = torch.cumsum(torch.softmax(wide, dim=1), dim=1)
    if compiled:
        out = np.empty(x.size(0), dtype=np.int64)
        draw_jit.pick(x.numpy(), ids.numpy(), cdf.numpy(), u.numpy(), out)
        return torch.from_numpy(out)
    pick = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=k - 1)
    ok = torch.isfinite(x.gather(1, pick))[:, 0]  # only rounding at the very top of the CDF can miss
    return torch.where(ok, ids.gather(1, pick)[:, 0], ids.gather(1, x.argmax(dim=1, keepdim=True))[:, 0])


def _nucleus(x: torch.Tensor, top_p: float, wide_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` with -inf where the strictly more likely candidates already hold more than ``top_p``, and
    the same in ``wide_dtype`` (the CDF's)."""
    sorted_x, order = torch.sort(x, dim=1, descending=True)
    probs = torch.softmax(sorted_x, dim=1)
    cum = torch.cumsum(probs, dim=1)
    if x.device.type == "cpu" and draw_jit.available():
        out, wide = torch.empty_like(x), torch.empty(x.shape, dtype=wide_dtype)
        draw_jit.nucleus_cut(sorted_x.numpy(), order.numpy(), probs.numpy(), cum.numpy(), top_p, out.numpy(),
                             wide.numpy())
        return out, wide
    drop = cum - probs > top_p  # the most likely candidate never drops: its "before" is exactly 0
    x = x.scatter(1, order, sorted_x.masked_fill(drop, float("-inf")))
    return x, x.to(wide_dtype)


def warm_up_draw_by_ops() -> None:
    """Run ``_draw_by_ops``' compiled steps once on a CPU, on a row laid out as the engine's (float32
    logits, int64 candidate ids and counts, float64 uniforms; numba specializes on those, not on sizes),
    with top-k and top-p so that each of them runs: the one-call draw hands steps to them only now and
    then, and a process that stays up should not compile them then."""
    if not draw_jit.available():
        return
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, 0.0, 0.0]])
    ids = torch.tensor([[0, 1, 2, 3, 0, 0]])
    _draw_by_ops(logits, None, 1.0, 3, 0.9, torch.full((1, 1), 0.5, dtype=torch.float64), 4, (ids, torch.tensor([4])))


def forced_ids(mask: torch.Tensor) -> torch.Tensor:
    """The one id each row's mask allows (rows that are forced)."""
    return mask.view(torch.uint8).argmax(dim=1)


# ----- the step as a CUDA graph ---------------------------------------------------------------------

CUDA_GRAPHS = False  # replay the one-token step from a CUDA graph (benchmarks/gpu_check.sh measures both)


class StaticStep:
    """The one-token step with static shapes (``GPT.decode_step``), replayed from a CUDA graph.

    The token and position sit in fixed device buffers and the KV cache is the whole preallocated one,
    so every step runs the same kernels on the same memory: on CUDA that is recorded once per batch
    size (``capture``) and replayed, which removes the per-kernel launch cost that dominates a small
    model's step. Without ``capture`` the same code runs eagerly (how the CPU tests exercise it).
    Warm-up and capture write at the cache's last position, which no step reads before writing it.
    """

    def __init__(self, decoder: "Decoder", cache, batch: int, capture: bool):
        self.decoder, self.cache = decoder, cache
        dev = decoder.device
        self.tok = torch.zeros((batch, 1), dtype=torch.long, device=dev)
        self.pos = torch.full((1,), cache.max_len - 1, dtype=torch.long, device=dev)
        self.graph = None
        if capture:
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                for _ in range(2):  # kernels chosen and memory pooled before recording
                    self._run()
            torch.cuda.current_stream(dev).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self._run()

    def _run(self) -> torch.Tensor:
        d = self.decoder
        with autocast(d.device, sampling_dtype(d.device)):
            logits = d.model.decode_step(self.tok, self.pos, self.cache)
        return logits[:, -1, : d.codec.vocab_size].float()

    def __call__(self, tok: torch.Tensor) -> torch.Tensor:
        """Logits after ``tok`` (B,), fed at the cache's length (which advances by one)."""
        self.tok.copy_(tok.view(-1, 1))
        self.pos.fill_(self.cache.length)
        self.cache.length += 1
        if self.graph is None:
            return self._run()
        self.graph.replay()
        return self.out


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
    """One call's model, device, sampling settings and generator (shared by a task's chunks).

    ``one_pass=False`` runs the model at every token, forced or not: the reference path the tests
    compare forced runs against. ``static_step`` feeds single tokens through ``StaticStep`` (default:
    ``CUDA_GRAPHS`` on a CUDA device), recorded as a CUDA graph there and run eagerly elsewhere; its KV
    cache and graph are kept per batch size for the decoder's next calls.
    """

    def __init__(self, model, codec: Codec, sampling: Sampling, *, device=None, listener: Listener | None = None,
                 keep_fraction: float = KEEP_FRACTION, one_pass: bool = True, static_step: bool | None = None):
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.codec = codec
        self.block = model.cfg.block_size
        self.temperature, self.top_k, self.top_p = sampling.temperature, sampling.top_k, sampling.top_p
        self.penalty = sampling.repetition_penalty
        self.chord_weight = sampling.chord_weight
        self.key, self.key_weight = sampling.key, sampling.key_weight
        self.vary_weight, self.fill_weight = sampling.vary_weight, sampling.fill_weight
        self.listener = listener
        self.keep = max(2, min(self.block - 1, int(self.block * keep_fraction)))
        self.gen = make_generator(self.device, sampling.seed)
        self.one_pass = one_pass
        self.forwards = 0  # model calls so far (the benchmark and tests read it)
        cuda = self.device.type == "cuda"
        self.static_step = (CUDA_GRAPHS and cuda) if static_step is None else bool(static_step)
        self._steps: dict[int, StaticStep] = {}  # batch size -> its static step (and cache)

    def _new_cache(self, batch: int):
        """A KV cache for ``batch`` rows (the static step's, reused, when there is one) and its step."""
        dtype = sampling_dtype(self.device)
        dtype = None if dtype == torch.float32 else dtype
        if not self.static_step:
            return self.model.new_cache(batch, dtype=dtype), None
        step = self._steps.get(batch)
        if step is None:
            cache = self.model.new_cache(batch, dtype=dtype)
            step = self._steps[batch] = StaticStep(self, cache, batch, capture=self.device.type == "cuda")
        step.cache.reset()
        return step.cache, step

    def _forward(self, ids: np.ndarray | torch.Tensor, cache) -> torch.Tensor:
        x = ids if isinstance(ids, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(ids)).to(self.device)
        self.forwards += 1
        with autocast(self.device, sampling_dtype(self.device)):
            logits, _ = self.model(x, cache=cache, last_only=True)
        return logits[:, -1, : self.codec.vocab_size].float()

    def _feed(self, seq: np.ndarray, dev_seq: torch.Tensor, start: int, end: int, cache, step=None) -> torch.Tensor:
        """Logits after tokens ``[start, end)`` (decided, not yet in the cache), fed in one forward.

        Where they do not fit, the context slides where the token-by-token path slid (at the first
        token that found the cache full), so the logits are the ones it would have computed."""
        while cache.length + (end - start) > self.block:
            start += self.block - cache.length + 1  # the tokens that still fit, then the one that slides
            cache.reset()
            logits = self._forward(window(seq, start, self.codec, self.keep), cache)
            if start == end:
                return logits
        if step is not None and end - start == 1:
            self.forwards += 1
            return step(dev_seq[:, start])
        return self._forward(dev_seq[:, start:end], cache)

    def _next_step(self, grammar: Grammar, tok: torch.Tensor, dev_seq: torch.Tensor, L: int, cpu: bool):
        """(mask, counts, candidate ids, counts on the host, forced ids or None, ``tok`` on the host) for
        the step after ``tok``, which this writes at ``dev_seq[:, L]`` and feeds to the grammar.

        Usually one transfer: ``tok`` and the mask's counts (none on a CPU, where ``dev_seq`` is the
        host's array). On the torch grammar (a GPU), an edit's written part first asks which rows are
        forced (``Grammar.forced``, a few ops): where every row is, the step needs no mask at all (``mask``
        None, the ids in ``ahead``); where one may choose, the mask and its counts follow (a second,
        small transfer, only at the steps that sample). The compiled grammar's mask is cheaper than that
        question, so on a CPU it is not asked."""
        ask = self.one_pass and not grammar.jit
        ahead = None
        if ask:
            grammar.advance(tok)
            ahead = grammar.forced()
        if ahead is None:
            mask, counts, ids = grammar.step_mask() if ask else grammar.advance_and_mask(tok)
            if cpu:  # dev_seq is seq: the caller writes it
                return mask, counts, ids, counts.numpy(), None, tok.numpy()
            dev_seq[:, L] = tok
            back = torch.stack((tok, counts)).cpu().numpy()  # the one transfer per step
            return mask, counts, ids, back[1], None, back[0]
        dev_seq[:, L] = tok
        back = torch.stack((tok, ahead)).cpu().numpy()
        if (back[1] >= 0).all():
            return None, None, None, np.ones(grammar.B, np.int64), ahead, back[0]
        mask, counts, ids = grammar.step_mask()
        return mask, counts, ids, counts.cpu().numpy(), None, back[0]

    @torch.inference_mode()
    def decode(self, prefix: np.ndarray, grammar: Grammar, budget: int) -> np.ndarray:
        """(B, len(prefix) + n) tokens: ``prefix`` then up to ``budget`` new tokens per row, until every
        row wrote EOS. Rows that finish early are padded with EOS."""
        B, codec = grammar.B, self.codec
        prefix = np.asarray(prefix, dtype=np.int64)
        L = len(prefix)
        seq = np.zeros((B, L + budget), dtype=np.int64)
        seq[:, :L] = prefix
        dev_seq = torch.from_numpy(seq).to(self.device)  # the penalty's window and the forced runs read it
        cpu = dev_seq.data_ptr() == seq.ctypes.data  # the same memory: nothing to transfer
        cache, step = self._new_cache(B)
        ctx = seq[:, :L] if L <= self.block else window(seq, L, codec, self.keep)
        logits = self._forward(ctx, cache)
        fed = L  # tokens before this index are in the cache (or behind the window)
        mask, counts, ids = grammar.step_mask()
        width = counts.cpu().numpy()
        ahead = None  # the ids ``Grammar.forced`` found for the coming step, when every row is forced
        bias, stale = None, True  # the logit bias, kept until a CHORD (with bar tones or a fill: a SHIFT) is written
        chords = codec.ranges["chord"] if codec.has_chords else (0, 0)
        shifts = codec.ranges["shift"]  # with bar tones the bias moves with time (``Grammar.favour_tones``)
        done = np.zeros(B, bool)
        wide = wide_float(self.device)
        for new in range(budget):
            u = torch.rand((B, 1), generator=self.gen, dtype=wide, device=self.device)  # forced or not
            most = int(width.max())  # every row allows at least one id: 1 means every row is forced
            if self.one_pass and most == 1:
                tok = forced_ids(mask) if ahead is None else ahead
            else:
                if fed < L:
                    logits = self._feed(seq, dev_seq, fed, L, cache, step)
                    fed = L
                if self.penalty != 1.0:
                    logits = penalize(logits, dev_seq[:, max(0, L - REPETITION_WINDOW) : L], codec, self.penalty)
                if stale:  # the chord in force may have changed: the harmony's bias again
                    bias, stale = grammar.tone_bias(self.chord_weight, self.key_weight, self.key,
                                                    self.vary_weight, self.fill_weight), False
                if bias is not None:
                    logits = logits + bias
                tok = draw(logits, mask, self.temperature, self.top_k, self.top_p, u, most,
                           None if ids is None else (ids, counts))
            mask, counts, ids, width, ahead, host = self._next_step(grammar, tok, dev_seq, L, cpu)
            grammar.observe(host)
            stale |= bool(((host >= chords[0]) & (host < chords[1])).any())
            moves = grammar.tones_given or (self.fill_weight > 0 and grammar.editing)  # biases that move with time
            stale |= moves and bool(((host >= shifts[0]) & (host < shifts[1])).any())
            seq[:, L] = np.where(done, codec.EOS, host)
            L += 1
            done |= host == codec.EOS
            if self.listener is not None and self.listener(seq[:, L - new - 1 : L]):
                raise Cancelled("cancelled")
            if done.all() or new + 1 >= budget:
                break
            if not self.one_pass:
                logits = self._feed(seq, dev_seq, fed, L, cache, step)
                fed = L
        return seq[:, :L]
