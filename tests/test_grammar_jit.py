"""The compiled grammar (``grammar_jit``, the CPU path) is the torch grammar, mask for mask.

Two grammars with the same setup, one on each path, walk the same tokens: at every step their masks,
their counts of allowed ids, the compiled path's candidate ids and every state tensor must be equal.
The tokens are random walks through the grammar (a kind, then an id of that kind, among the allowed
ones; now and then any id at all, out of grammar), real songs' encodings, and whole decodes through the
engine (``sample`` with and without a chord chart and note limits, ``arrange`` with kept notes), which
must write the same tokens on both paths.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from midigen.music.codec import Codec
from midigen.music.ranges import note_limits
from midigen.generate import grammar as grammar_module
from midigen.generate import draw_jit, engine, grammar_jit
from midigen.generate.edit import arrange_edits
from midigen.generate.grammar import Grammar
from midigen.generate.sample import generate_samples
from midigen.generate.sampling import Sampling
from midigen.model.model import GPT, GPTConfig, padded_vocab
from songgen import make_song

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not grammar_jit.available(), reason="numba is not installed")]


def _pair(setup, codec: Codec, rows: int):
    """The same grammar on both paths: (compiled, torch)."""
    out = []
    for jit in (True, False):
        g = Grammar(codec, rows, max_header_instruments=8)
        setup(g)
        g.jit = jit
        out.append(g)
    assert out[0].jit and not out[1].jit
    return out


def _same(a: Grammar, b: Grammar, where: str) -> np.ndarray:
    """Both grammars allow the same ids and hold the same state; the allowed ids (B, V) bool."""
    ma, ca, ids = a.step_mask()
    mb, cb, none = b.step_mask()
    assert none is None
    assert torch.equal(ma, mb), f"{where}: masks differ at ids {torch.nonzero(ma != mb)[:8].tolist()}"
    assert torch.equal(ca, cb), where
    for r in range(a.B):
        assert torch.equal(ids[r, : int(ca[r])], torch.nonzero(ma[r])[:, 0]), where
        assert not ids[r, int(ca[r]) : int(ca.max())].any(), where  # padded as engine.candidates pads
    for name in grammar_jit.STATE:
        x, y = getattr(a, name), getattr(b, name)
        assert torch.equal(x, y), f"{where}: {name} {x.tolist()} != {y.tolist()}"
    return ma.numpy()


def _walk(a: Grammar, b: Grammar, codec: Codec, rng, steps: int, wild: float = 0.02) -> int:
    """Advance both by random allowed tokens (a kind first, then an id of it); returns the steps taken."""
    kinds = codec.kinds(np.arange(codec.vocab_size))
    for n in range(steps):
        m = _same(a, b, f"step {n}")
        toks = []
        for row in m:
            ok = np.flatnonzero(row)
            if rng.random() < wild:
                toks.append(int(rng.integers(3, codec.vocab_size)))
                continue
            k = rng.choice(np.unique(kinds[ok]))
            toks.append(int(rng.choice(ok[kinds[ok] == k])))
        toks = np.array(toks, np.int64)
        both = torch.from_numpy(toks)
        if n % 2:  # the engine's one call per step
            m1, c1, ids1 = a.advance_and_mask(both)
            m2, c2, ids2 = a.step_mask()
            assert torch.equal(m1, m2) and torch.equal(c1, c2) and torch.equal(ids1, ids2)
        else:
            a.advance(both)
        b.advance(both.clone())
        a.observe(toks)
        b.observe(toks)
        if (a.phase == grammar_module.DONE).all():
            return n + 1
    return steps


def _header(codec, tempo=None, ts=None, controls=()):
    def setup(g):
        if tempo is not None:
            g.forced_tempo[:] = codec.tempo_token(tempo) - codec.tempo_start
        g.force_header(controls, ts)
        g.advance([codec.BOS] * g.B)
    return setup


@pytest.mark.parametrize("version", [2, 4])
@pytest.mark.parametrize("timed,limited", [(False, False), (True, False), (True, True), (False, True)])
def test_sampling_from_nothing_masks_match(version, timed, limited):
    codec = Codec(version=version)
    rng = np.random.default_rng(version * 10 + timed * 2 + limited)
    lim = note_limits(None)
    controls = (codec.style_start + 3, codec.key_start + 1) if version == 2 else ()
    for trial in range(4):
        head = _header(codec, tempo=[None, 100][trial % 2], ts=[None, codec.ts_start + 2][trial % 2],
                       controls=controls)
        target = rng.uniform(2, 12) if timed else None

        def setup(g):
            if limited:
                g.hold_notes(lim.low, lim.high, lim.polyphony)
            head(g)
            g.set_target(target, 400)
            if trial == 3:
                g.request_tempo(7)
        a, b = _pair(setup, codec, rows=3)
        _walk(a, b, codec, rng, 400)


def test_edits_with_kept_notes_and_limits_match():
    codec = Codec()
    rng = np.random.default_rng(7)
    lim = note_limits(None)
    for trial in range(6):
        span, steps = int(rng.integers(200, 3000)), np.sort(rng.integers(0, 1500, 12))
        notes, dvs = codec.note_start + rng.integers(0, 128, 12), codec.dv_start + rng.integers(0, 200, 12)
        chords = rng.integers(0, 100, 32)

        def setup(g):
            if trial % 2:
                g.hold_notes(lim.low, lim.high, lim.polyphony)
            for t in (codec.BOS, codec.inst_token(0), codec.inst_token(33), codec.inst_token(128),
                      codec.tempo_token(110)):
                g.advance([t] * g.B)
            g.sounding([33, 33, 0], [5, 30, 12])
            g.for_edit([33, 128], span, 300)
            g.force_notes(steps, notes, dvs)
            if trial >= 4:
                g.force_chords(np.arange(0, 3000, 96), chords)
        a, b = _pair(setup, codec, rows=2)
        _walk(a, b, codec, rng, 300)


def test_forced_chords_match():
    codec = Codec()
    rng = np.random.default_rng(3)
    for trial in range(4):
        every = [48, 96, 7, 1][trial]
        chords = rng.integers(0, 100, len(range(0, 4000, every)))

        def setup(g):
            g.advance([codec.BOS] * g.B)
            g.force_chords(np.arange(0, 4000, every), chords)
            g.set_target(8.0 if trial % 2 else None, 300)
        a, b = _pair(setup, codec, rows=2)
        _walk(a, b, codec, rng, 300, wild=0.0)


def test_real_songs_match():
    codec = Codec()
    lim = note_limits(None)
    for seed in range(6):
        toks = codec.encode_score(make_song(seed, bars=8))

        def setup(g):
            if seed % 2:
                g.hold_notes(lim.low, lim.high, lim.polyphony)
            g.set_target(6.0 if seed % 3 == 0 else None, 5000)
        a, b = _pair(setup, codec, rows=1)
        for n, t in enumerate(toks[:-1]):
            if n:
                _same(a, b, f"song {seed} token {n}")
            a.advance([int(t)])
            b.advance([int(t)])


@pytest.fixture(scope="module")
def tiny():
    codec = Codec()
    torch.manual_seed(5)
    cfg = GPTConfig(vocab_size=padded_vocab(codec.vocab_size), block_size=96, n_layer=1, n_head=2, n_embd=32)
    return GPT(cfg).eval(), codec


def _both_paths(monkeypatch, run):
    outs = []
    for jit in (True, False):
        monkeypatch.setattr(grammar_module, "JIT", jit)
        outs.append(run())
    return outs


def test_the_engine_writes_the_same_tokens_on_both_paths(tiny, monkeypatch):
    model, codec = tiny
    lim = note_limits(None)
    runs = [dict(num_samples=2, seconds=6.0, instruments=[0, 33, 128], tempo=96),
            dict(num_samples=1, max_new_tokens=300, limits=lim, chords=[("C", "G", "Am", "F")]),
            dict(num_samples=3, seconds=4.0, instruments=[40, 41], time_signature=(3, 4), limits=lim)]
    for i, kw in enumerate(runs):
        kw = dict(kw)
        if "chords" in kw:
            from midigen.music.chordtext import parse_chords

            kw["chords"] = parse_chords(" ".join(kw["chords"][0]))
        fast, slow = _both_paths(monkeypatch, lambda: generate_samples(
            model, codec, sampling=Sampling(seed=i, top_p=0.95), **kw))
        for x, y in zip(fast, slow):
            np.testing.assert_array_equal(x.tokens, y.tokens)


def test_arrange_writes_the_same_tokens_on_both_paths(tiny, monkeypatch):
    model, codec = tiny
    song = make_song(4, bars=6)
    sampling = Sampling(seed=2, top_p=0.95)
    fast, slow = _both_paths(monkeypatch, lambda: arrange_edits(model, codec, song, add=[33], sampling=sampling))
    assert len(fast) == len(slow)
    for x, y in zip(fast, slow):
        assert x.written == y.written
        assert x.score.dumps_midi() == y.score.dumps_midi()


def test_the_compiled_draw_steps_are_the_torch_ops():
    """``draw_jit``'s gather, top-k cut, nucleus cut and pick against the torch ops they replace, ties
    and -inf included, and uniforms at the very top of the CDF (where the pick falls back to the most
    likely candidate)."""
    gen = torch.Generator().manual_seed(11)
    fallbacks = 0
    for trial in range(200):
        B, k = 1 + trial % 3, int(torch.randint(1, 1500, (1,), generator=gen))
        x = torch.randn((B, k), generator=gen) * 2
        if trial % 2:
            x = torch.round(x * 2) / 2  # ties at the cut
        x[torch.rand((B, k), generator=gen) < 0.2 * (trial % 3)] = float("-inf")
        x[:, 0] = x[:, 0].clamp(min=-5.0)  # every row keeps a finite candidate
        top_p = [0.5, 0.8, 0.9, 0.95, 0.99][trial % 5]
        sx, order = torch.sort(x, dim=1, descending=True)
        probs = torch.softmax(sx, dim=1)
        cum = torch.cumsum(probs, dim=1)
        want = x.scatter(1, order, sx.masked_fill(cum - probs > top_p, float("-inf")))
        got, wide = torch.empty_like(x), torch.empty(x.shape, dtype=torch.float64)
        draw_jit.nucleus_cut(sx.numpy(), order.numpy(), probs.numpy(), cum.numpy(), top_p, got.numpy(), wide.numpy())
        assert torch.equal(got, want) and torch.equal(wide, want.to(torch.float64))
        kth = torch.topk(x, max(1, k // 3), dim=1).values[:, -1:]
        cut = x.clone()
        draw_jit.cut_below(cut.numpy(), kth.numpy())
        assert torch.equal(cut, x.masked_fill(x < kth, float("-inf")))

        ids = torch.sort(torch.randperm(20000, generator=gen)[:k]).values.expand(B, k).contiguous()
        logits = torch.randn((B, 20000), generator=gen)
        counts = torch.randint(1, k + 1, (B,), generator=gen)
        gathered = torch.empty((B, k))
        draw_jit.gather(logits.numpy(), ids.numpy(), counts.numpy(), gathered.numpy())
        real = torch.arange(k)[None, :] < counts[:, None]
        assert torch.equal(gathered, logits.gather(1, ids).masked_fill(~real, float("-inf")))
        u = torch.rand((B, 1), generator=gen, dtype=torch.float64)
        if trial % 4 == 0:
            u[:] = 1.0  # as if the product rounded up to the total: past the last candidate, which is cut
            want[:, -1] = float("-inf") if k > 1 else want[:, -1]
        cdf = torch.cumsum(torch.softmax(want.to(torch.float64), dim=1), dim=1)
        pick = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=k - 1)
        ok = torch.isfinite(want.gather(1, pick))[:, 0]
        ref = torch.where(ok, ids.gather(1, pick)[:, 0], ids.gather(1, want.argmax(dim=1, keepdim=True))[:, 0])
        fallbacks += int((~ok).sum())
        out = np.empty(B, np.int64)
        draw_jit.pick(want.numpy(), ids.numpy(), cdf.numpy(), u.numpy(), out)
        np.testing.assert_array_equal(out, ref.numpy())
    assert fallbacks > 0  # the fallback was exercised



def _torch_draw(x, ids, counts, temperature, top_k, top_p, u):
    """``engine._draw_by_ops``, the torch ops: the reference."""
    mask = torch.zeros(x.shape, dtype=torch.bool)
    for b in range(x.size(0)):
        mask[b, ids[b, : counts[b]]] = True
    return engine._draw_by_ops(x, mask, temperature, top_k, top_p, u, int(counts.max()), (ids, counts))


def test_the_one_call_draw_picks_what_the_torch_ops_pick():
    """``draw_jit.nucleus_draw`` (the draw on a CPU) against the torch ops, rows of random logits from
    near-flat to peaked, some with runs of equal logits, several temperatures, top-k (none, and cuts) and
    nuclei (1.0: none): the same id for every uniform, and most steps settled in the one call (not handed
    back to the torch ops)."""
    gen = torch.Generator().manual_seed(12)
    settled = 0
    for trial in range(400):
        B, k = 1 + trial % 3, int(torch.randint(1, 2500, (1,), generator=gen))
        logits = torch.randn((B, 5000), generator=gen) * [0.05, 0.5, 2.0, 6.0][trial % 4]
        if trial % 7 < 3:  # runs of equal logits, as arrange's rows have
            logits = torch.round(logits * [1, 4, 20][trial % 7]) / [1, 4, 20][trial % 7]
        ids = torch.sort(torch.randperm(5000, generator=gen)[:k]).values.expand(B, k).contiguous()
        counts = torch.randint(1, k + 1, (B,), generator=gen)
        counts[0] = k
        top_p, temperature = [0.5, 0.9, 0.95, 0.99, 1.0][trial % 5], [1.0, 0.8, 1.3][trial % 3]
        top_k = [None, None, 1, 20, 200, 5000][trial % 6]
        u = torch.rand((B, 1), generator=gen, dtype=torch.float64)
        out = np.empty(B, np.int64)
        draw_jit.nucleus_draw(logits.numpy(), ids.numpy(), counts.numpy(), temperature, top_k or 0, top_p,
                              u.numpy(), out)
        settled += int((out >= 0).all())
        got = engine.draw(logits, None, temperature, top_k, top_p, u, k, (ids, counts))
        want = _torch_draw(logits, ids, counts, temperature, top_k, top_p, u)
        assert torch.equal(got, want), (trial, got, want)
    assert settled >= 280, settled


def test_the_one_call_nucleus_names_ties_across_the_cut():
    """Equal logits on both sides of the cut: torch's sort leaves their order open, so which of them its
    nucleus keeps is too; ``_nucleus`` names their logit (for ``_tie_decides``). Where it settles, it
    keeps what torch keeps, by value. And a candidate holding less than (1 - top_p) / n of the mass,
    which ``_nucleus`` does not sort, is never kept by torch either."""
    gen = torch.Generator().manual_seed(13)
    straddles = settles = 0
    for trial in range(300):
        k = int(torch.randint(2, 1500, (1,), generator=gen))
        grain = [2, 20, 200][trial % 3]  # from ties everywhere to a few
        x = torch.round(torch.randn((1, k), generator=gen) * 2 * grain) / grain
        top_p = [0.5, 0.8, 0.9, 0.95, 0.99][trial % 5]
        sx, _ = torch.sort(x, dim=1, descending=True)
        probs = torch.softmax(sx, dim=1)
        kept = (torch.cumsum(probs, dim=1) - probs)[0] <= top_p
        x64 = x[0].to(torch.float64).numpy()
        keep, settled, tie = draw_jit._nucleus(x64, draw_jit._exp_shares(x64), top_p)
        n_kept = int(kept.sum())
        if n_kept < k and sx[0, n_kept] == sx[0, n_kept - 1]:
            straddles += 1
            assert tie == float(sx[0, n_kept]), trial
        elif settled:
            assert np.isnan(tie), trial
        if settled:
            settles += 1
            assert torch.equal(torch.sort(x[0][torch.from_numpy(keep)], descending=True).values, sx[0][kept])
    assert straddles > 30 and settles > 30, (straddles, settles)


def test_the_one_call_nucleus_hands_back_a_mass_at_the_edge_of_top_p():
    """Where a candidate's mass before it is within float32 error of top-p, torch's float32 sums could
    cut it or keep it: ``_nucleus`` hands the step back. Rows built so: top-p a billionth above the
    float64 mass before a random candidate. A step clear of it settles."""
    gen = torch.Generator().manual_seed(15)
    for trial in range(60):
        k = int(torch.randint(20, 2000, (1,), generator=gen))
        x = (torch.randn(k, generator=gen) * [0.3, 1.0, 3.0][trial % 3]).to(torch.float64).numpy()
        w = draw_jit._exp_shares(x)
        order = np.argsort(-x, kind="mergesort")
        before = (np.cumsum(w[order]) - w[order]) / w.sum()
        j = int(torch.randint(1, k, (1,), generator=gen))
        if not 0.05 < before[j] < 0.999:
            continue
        assert not draw_jit._nucleus(x, w, before[j] + 1e-9)[1], trial
        halfway = (before[j] + before[j + 1]) / 2 if j + 1 < k else None
        if halfway is not None and before[j + 1] - before[j] > 1e-3:
            assert draw_jit._nucleus(x, w, halfway)[1], trial


def test_the_one_call_nucleus_draw_follows_the_nucleus_distribution():
    """20,000 draws from one row: each kept candidate comes up as often as its renormalised share of the
    nucleus (within 1.2 points), and no cut one ever does."""
    gen = torch.Generator().manual_seed(14)
    logits = torch.randn((1, 60), generator=gen) * 1.5
    ids, counts = torch.arange(60)[None, :], torch.tensor([60])
    p = torch.softmax(logits[0].double(), dim=0)
    sp, order = torch.sort(p, descending=True)
    kept = order[(torch.cumsum(sp, 0) - sp) <= 0.9]
    share = torch.zeros(60, dtype=torch.float64)
    share[kept] = p[kept] / p[kept].sum()
    u = torch.rand((20000, 1), generator=gen, dtype=torch.float64)
    out = np.empty(1, np.int64)
    seen = np.zeros(60)
    for v in u:
        draw_jit.nucleus_draw(logits.numpy(), ids.numpy(), counts.numpy(), 1.0, 0, 0.9, v[None, :].numpy(), out)
        assert out[0] >= 0  # settled: no ties, no mass near the cut
        seen[out[0]] += 1
    assert seen[share.numpy() == 0].sum() == 0
    assert np.abs(seen / 20000 - share.numpy()).max() < 0.012


_WARMED = """
import sys
from midigen.generate import draw_jit, grammar_jit
from midigen.generate.edit import arrange_edits, infill_edits
from midigen.generate.sample import generate_samples, warm_up
from midigen.generate.sampling import Sampling
from midigen.model.checkpoint import checkpoint_limits, load_checkpoint
from midigen.music.chordtext import parse_chords
from songgen import make_song


def kernels():
    return {f"{m.__name__}.{n}": [str(s) for s in f.signatures] for m in (grammar_jit, draw_jit)
            for n, f in vars(m).items() if hasattr(f, "signatures")}


model, codec, config = load_checkpoint(sys.argv[1], "cpu")
warm_up(model, codec)
warmed = kernels()
limits, s = checkpoint_limits(config), Sampling(seed=1, top_p=0.95, chord_weight=2.5)
song = make_song(3, bars=8, tpq=480)
generate_samples(model, codec, max_new_tokens=48, instruments=[0, 33], tempo=120, sampling=s, limits=limits,
                 chords=parse_chords("C Am F G"), num_samples=2)
infill_edits(model, codec, song, start_s=2.0, end_s=5.0, sampling=s, limits=limits)
arrange_edits(model, codec, song, add=[33], sampling=Sampling(seed=2, top_k=20, temperature=0.9))
print("warmed:", " ".join(sorted(n.rpartition(".")[2] for n, v in warmed.items() if v)))
print("new:", " ".join(sorted(n.rpartition(".")[2] for n, v in kernels().items() if v != warmed[n])))
"""


def test_the_warm_up_compiles_what_every_later_decode_runs(edit_run):
    """``warm_up`` (the studio's, at start) leaves nothing for a later decode to compile: sampling with
    note limits, a chart and two rows, an infill, an arrange with top-k and a temperature all run the
    kernels' specializations it made (one each: the limits' tables are as contiguous as the free ones'),
    whether numba compiled them or loaded them from its cache. In a fresh process, as the studio's
    worker is."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(root), str(root / "tests")]))
    out = subprocess.run([sys.executable, "-c", _WARMED, str(edit_run)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    warmed, new = out.stdout.strip().splitlines()[-2:]
    assert set(warmed.split()[1:]) >= {"mask_rows", "advance_rows", "advance_and_mask", "gather", "cut_below",
                                       "nucleus_cut", "pick", "nucleus_draw"}, out.stdout
    assert new.strip() == "new:", out.stdout  # a second specialization: argument types differ from the warm-up's
