"""The decoding engine's fast paths give the music its reference paths give.

* Forced runs in one pass: tokens the grammar forces are fed to the model together, in one multi-token
  forward, where the reference path (``Decoder(one_pass=False)``) runs the model at every token. In a
  batch whose rows are forced at different times (an edit's kept notes, reached at different token
  counts) the tokens must be identical, through sliding windows too, and the model must run less.
* The draw over each row's allowed ids picks the id the draw over the whole vocabulary picks.
* Kept notes stay exact in arrange on the one-pass path, and every piece reports its real-time factor.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import types
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from midigen.music.codec import Codec, track_instrument
from midigen.music.ranges import note_limits
from midigen.generate import edit as edit_module
from midigen.generate import engine
from midigen.generate.edit import arrange_edits, infill_edits
from midigen.generate import grammar as grammar_module
from midigen.generate.grammar import Grammar, allowed_counts
from midigen.generate.sampling import Sampling
from midigen.model.model import GPT, GPTConfig, padded_vocab
from midiread import track_notes
from songgen import make_song

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    codec = Codec()
    torch.manual_seed(3)
    cfg = GPTConfig(vocab_size=padded_vocab(codec.vocab_size), block_size=96, n_layer=2, n_head=2, n_embd=64)
    return GPT(cfg).eval(), codec


def _edit_grammar(codec: Codec, rows: int, budget: int) -> Grammar:
    """Writing bass (33) around kept piano notes (instrument 0): a kept note's NOTE is forced at its
    step (the bass ids sort after it) and so is its DV; the rows reach them at different token counts."""
    g = Grammar(codec, rows)
    g.for_edit([33], 100_000, budget)
    steps = np.repeat(np.arange(0, 400, 12), 2)
    notes = codec.note_start + np.tile([48, 60], len(steps) // 2)
    g.force_notes(steps, notes, np.full(len(steps), codec.dv_start + 40))
    return g


def _decode(model, codec, one_pass: bool, sampling: Sampling, rows: int = 3, budget: int = 260):
    dec = engine.Decoder(model, codec, sampling, one_pass=one_pass)
    prefix = np.array([codec.BOS, codec.inst_token(0), codec.inst_token(33), codec.tempo_token(100)], np.int64)
    return dec.decode(prefix, _edit_grammar(codec, rows, budget), budget), dec.forwards


@pytest.mark.parametrize("sampling", [Sampling(seed=1, top_k=40), Sampling(seed=5, top_p=0.9, repetition_penalty=1.3),
                                      Sampling(seed=2, temperature=0.7)])
def test_forced_runs_in_one_pass_give_the_step_by_step_tokens(tiny, sampling, monkeypatch):
    model, codec = tiny
    counts = []  # each step's allowed-id count per row (1: forced), whether the mask or Grammar.forced said so
    real = engine.Decoder._next_step

    def recorded(self, *args):
        out = real(self, *args)
        counts.append(np.array(out[3]))
        return out

    monkeypatch.setattr(engine.Decoder, "_next_step", recorded)
    fast, fast_forwards = _decode(model, codec, True, sampling)
    widths = np.array(counts)
    forced = widths == 1
    assert (forced.all(axis=1)).sum() >= 3, "no step where every row was forced"
    assert (forced.any(axis=1) & ~forced.all(axis=1)).sum() >= 10, "no step with forced and free rows together"
    slow, slow_forwards = _decode(model, codec, False, sampling)
    assert fast.shape[1] > model.cfg.block_size + 20  # the context slid (several times) on the way
    np.testing.assert_array_equal(fast, slow)
    assert fast_forwards <= slow_forwards - (forced.all(axis=1)[:-1].sum() - 1)  # no model at all-forced steps
    given = (fast >= codec.note_start) & (fast < codec.note_start + 128)  # the piano notes: all kept ones
    assert (given.sum(axis=1) >= 10).all()


def test_one_row_forced_runs_cut_the_forwards(tiny):
    model, codec = tiny
    fast, n_fast = _decode(model, codec, True, Sampling(seed=8, top_k=20), rows=1, budget=200)
    slow, n_slow = _decode(model, codec, False, Sampling(seed=8, top_k=20), rows=1, budget=200)
    np.testing.assert_array_equal(fast, slow)
    new = fast.shape[1] - 4
    forced = int(((fast[0, 4:] >= codec.note_start) & (fast[0, 4:] < codec.note_start + 128)).sum()) * 2
    assert n_slow == new  # the prompt's forward, then one per token but the last
    assert n_fast <= n_slow - forced // 2  # every kept note and its DV came as part of a run


def _whole_vocabulary_draw(logits, mask, temperature, top_k, top_p, u):
    """The draw as it was before candidates: over all ids (the reference)."""
    x = logits.masked_fill(~mask, float("-inf")) / temperature
    if top_k is not None and top_k < x.size(1):
        x = x.masked_fill(x < torch.topk(x, top_k, dim=1).values[:, -1:], float("-inf"))
    if top_p is not None and top_p < 1.0:
        sx, order = torch.sort(x, dim=1, descending=True)
        p = torch.softmax(sx, dim=1)
        drop = torch.cumsum(p, dim=1) - p > top_p
        drop[:, 0] = False
        x = torch.full_like(x, float("-inf")).scatter(1, order, sx.masked_fill(drop, float("-inf")))
    cdf = torch.cumsum(torch.softmax(x.to(torch.float64), dim=1), dim=1)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(1)


@pytest.mark.parametrize("compiled", [True, False])  # False: the torch ops a device runs
@pytest.mark.parametrize("top_k,top_p", [(None, None), (5, None), (None, 0.8), (30, 0.95)])
def test_the_draw_over_allowed_ids_picks_the_whole_vocabulary_draws_id(top_k, top_p, compiled, monkeypatch):
    if not compiled:
        monkeypatch.setattr(engine.draw_jit, "available", lambda: False)
    gen = torch.Generator().manual_seed(0)
    V, B = 3000, 4
    for trial in range(60):
        logits = torch.randn((B, V), generator=gen) * 3
        logits[:, 2000:] = -1.5  # a restricted softmax's outside: many equal logits (ties at the cut)
        mask = torch.rand((B, V), generator=gen) < [0.002, 0.02, 0.2, 0.5][trial % 4]
        mask[:, trial] = True
        u = torch.rand((B, 1), generator=gen, dtype=torch.float64)
        counts = allowed_counts(mask)
        width = int(counts.max())
        ids = torch.zeros((B, V), dtype=torch.long)  # the compiled grammar's candidates: in order, padded
        for r in range(B):
            ids[r, : counts[r]] = torch.nonzero(mask[r])[:, 0]
        for temperature in (0.9, 1.0):
            want = _whole_vocabulary_draw(logits, mask, temperature, top_k, top_p, u)
            got = engine.draw(logits, mask, temperature, top_k, top_p, u, width)
            assert torch.equal(got, want)
            assert torch.equal(engine.draw(logits, mask, temperature, top_k, top_p, u, width, (ids, counts)), want)
            assert mask.gather(1, got[:, None]).all()


def test_both_ways_of_finding_candidates_agree():
    gen = torch.Generator().manual_seed(2)
    for rows, share in ((1, 0.01), (5, 0.1), (16, 0.001)):
        mask = torch.rand((rows, 4000), generator=gen) < share
        mask[-1] = False
        mask[-1, 3999] = True  # a forced row
        width = int(allowed_counts(mask).max())
        a, b = engine._candidates_by_count(mask, width), engine._candidates_by_nonzero(mask, width)
        assert torch.equal(a[1], b[1]) and torch.equal(a[0][a[1]], b[0][b[1]])
        assert torch.equal(a[0][a[1]], mask.nonzero()[:, 1])  # every allowed id once, rows in order


def test_forced_ids_and_counts():
    mask = torch.zeros((3, 50), dtype=torch.bool)
    mask[0, 7] = mask[1, 3] = mask[1, 40] = True
    mask[2, 49] = True
    assert allowed_counts(mask).tolist() == [1, 2, 1]
    assert engine.forced_ids(mask)[[0, 2]].tolist() == [7, 49]


# ----- arrange on the one-pass path -----------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(edit_run):
    from midigen.model.checkpoint import load_checkpoint

    model, codec, _ = load_checkpoint(edit_run, "cpu")
    return model, codec


def _rows(track):
    a = track.notes.numpy()
    return sorted(zip(*(a[k].tolist() for k in ("time", "duration", "pitch", "velocity"))))


def test_arrange_keeps_notes_exactly_and_matches_the_step_by_step_path(loaded, monkeypatch):
    model, codec = loaded
    score = make_song(11, bars=12, tpq=480)
    add = [73]
    (fast,) = arrange_edits(model, codec, score, add=add, sampling=Sampling(seed=3, top_p=0.95))
    monkeypatch.setattr(edit_module, "Decoder", partial(engine.Decoder, one_pass=False))
    (slow,) = arrange_edits(model, codec, score, add=add, sampling=Sampling(seed=3, top_p=0.95))
    for e in (fast, slow):
        kept = [t for t in score.tracks if t.note_num()]
        for t in kept:  # every part of the song is kept, note for note, as MIDI readers read it back
            back = [o for o in e.score.tracks if o.name == t.name and track_instrument(o) == track_instrument(t)]
            assert back and _rows(back[0]) == _rows(t)
        assert e.written > 0 and e.realtime > 0
    assert bytes(fast.score.dumps_midi()) == bytes(slow.score.dumps_midi())


def _checked_forced(monkeypatch) -> dict:
    """``Grammar.forced`` checked against the whole mask at every step it answers; returns counts of the
    rows it found forced and of the rows the mask forces."""
    seen = {"found": 0, "forced": 0, "steps": 0}
    real = Grammar.forced

    def checked(self):
        ids = real(self)
        if ids is not None:
            m = self.mask()
            counts = engine.allowed_counts(m)
            for b in np.flatnonzero(ids.numpy() >= 0):  # an id it gives is the mask's only one
                assert counts[b] == 1 and m[b, ids[b]], (b, int(ids[b]), int(counts[b]))
            seen["found"] += int((ids >= 0).sum())
            seen["forced"] += int((counts == 1).sum())
            seen["steps"] += 1
        return ids

    monkeypatch.setattr(Grammar, "forced", checked)
    return seen


@pytest.mark.parametrize("how", ["as the command does", "no note limits", "free chords", "two samples", "infill"])
def test_the_grammars_forced_ids_are_the_masks_only_ids(loaded, monkeypatch, how):
    """The engine skips the mask where ``Grammar.forced`` answers, so what it answers must be what the
    mask would force, at every step of real edits (with and without note limits, with forced and free
    chords, in a batch, in an infill); and it must find most of the forced steps, or it saves nothing."""
    model, codec = loaded
    monkeypatch.setattr(grammar_module, "JIT", False)  # the torch grammar (a GPU's) is the one that asks
    seen = _checked_forced(monkeypatch)
    score = make_song(11, bars=12, tpq=480)
    kw = {"limits": None if how == "no note limits" else note_limits(None), "free_chords": how == "free chords",
          "num_samples": 2 if how == "two samples" else 1, "sampling": Sampling(seed=3, top_p=0.95, chord_weight=2.5)}
    if how == "infill":
        edits = infill_edits(model, codec, score, start_s=2.0, end_s=9.0, instruments=[33], **kw)
    else:
        edits = arrange_edits(model, codec, score, add=[73], **kw)
    assert all(e.written > 0 for e in edits)
    assert seen["steps"] > 100 and seen["found"] >= 0.6 * seen["forced"], seen



@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_arrange_keeps_every_part_exactly_at_each_precision(edit_run, precision):
    """Arranging under the dense band song with every part kept (the most forced runs, every chunk's
    through ``Grammar.forced``), as the command does it, at each weight precision: every kept part
    comes back note for note from the written file, as symusic and mido read it."""
    import symusic

    from midigen.model.checkpoint import capabilities, checkpoint_limits, load_checkpoint
    from midigen.music.codec import score_instruments

    model, codec, config = load_checkpoint(edit_run, "cpu", precision=precision)
    caps = capabilities(config, codec)
    song = make_song(7, bars=16, tpq=480)
    add = next((i for i in caps["instruments"] if i not in score_instruments(song) and i != 128), 73)
    (e,) = arrange_edits(model, codec, song, add=[add], sampling=Sampling(seed=5, top_p=0.95, chord_weight=2.5),
                         limits=checkpoint_limits(config), known_instruments=caps["instruments"])
    original, written = bytes(song.dumps_midi()), bytes(e.score.dumps_midi())
    kept = [t.name for t in song.tracks if t.note_num()]
    assert len(kept) >= 4 and e.written > 0
    back = {t.name: t for t in symusic.Score.from_midi(written).tracks}
    before = {t.name: t for t in symusic.Score.from_midi(original).tracks}
    for name in kept:
        assert _rows(back[name]) == _rows(before[name]), name
        assert track_notes(written, name) == track_notes(original, name), name


def test_summaries_give_the_real_time_factor(edit_run, tiny_ckpt_song):
    song, out = tiny_ckpt_song
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "midigen", "arrange", "--ckpt", str(edit_run), str(song), "--add", "flute",
                        "--seed", "1", "--out", str(out / "a")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-1500:]
    (line,) = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert line["realtime"] > 0
    r = subprocess.run([sys.executable, "-m", "midigen", "sample", "--ckpt", str(edit_run), "--seconds", "4",
                        "--seed", "1", "--out", str(out / "s")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-1500:]
    (summary,) = [x for x in r.stdout.splitlines() if x.startswith("sample 0:")]
    assert float(summary.split("realtime: ")[1].split("x")[0]) > 0


@pytest.fixture
def tiny_ckpt_song(tmp_path):
    song = tmp_path / "band.mid"
    song.write_bytes(bytes(make_song(4, bars=6, tpq=480).dumps_midi()))
    return song, tmp_path


# ----- the static step (CUDA graphs) ------------------------------------------------------------------


def test_static_decode_step_gives_the_cached_forwards_logits(tiny):
    model, codec = tiny
    ids = torch.randint(3, 400, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref_cache, cache = model.new_cache(2), model.new_cache(2)
        model(ids[:, :30], cache=ref_cache)
        model(ids[:, :30], cache=cache)
        for i in range(30, 40):
            want, _ = model(ids[:, i : i + 1], cache=ref_cache)
            got = model.decode_step(ids[:, i : i + 1], torch.tensor([i]), cache)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cache.k[:, :, :, :40], ref_cache.k[:, :, :, :40])


def test_decoder_with_the_static_step_writes_the_same_tokens(tiny):
    model, codec = tiny
    sampling = Sampling(seed=4, top_p=0.95)
    dec = engine.Decoder(model, codec, sampling, static_step=True)
    prefix = np.array([codec.BOS, codec.inst_token(0), codec.inst_token(33), codec.tempo_token(100)], np.int64)
    got = [dec.decode(prefix, _edit_grammar(codec, 2, 150), 150) for _ in range(2)]  # the second reuses the cache
    assert list(dec._steps) == [2] and dec._steps[2].graph is None  # CPU: the step runs eagerly
    ref = engine.Decoder(model, codec, sampling, static_step=False)
    want = [ref.decode(prefix, _edit_grammar(codec, 2, 150), 150) for _ in range(2)]
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_static_step_capture_warms_up_off_the_live_cache_and_replays(tiny, monkeypatch):
    """CUDA's stream and graph calls faked on the CPU: the warm-up writes only the cache's last slot (no
    step reads it before writing it), the capture records once, and each step replays it."""
    model, codec = tiny
    calls = []

    class FakeGraph:
        def replay(self):
            calls.append("replay")

    @contextlib.contextmanager
    def fake_graph(g):
        calls.append("capture")
        yield

    fake = types.SimpleNamespace(Stream=lambda dev: types.SimpleNamespace(wait_stream=lambda s: None),
                                 current_stream=lambda dev=None: types.SimpleNamespace(wait_stream=lambda s: None),
                                 stream=lambda s: contextlib.nullcontext(), CUDAGraph=FakeGraph, graph=fake_graph)
    monkeypatch.setattr(torch, "cuda", fake)
    dec = engine.Decoder(model, codec, Sampling(seed=0), static_step=True)
    with torch.inference_mode():
        cache = model.new_cache(1)
        step = engine.StaticStep(dec, cache, 1, capture=True)
        assert calls == ["capture"] and cache.k[:, :, :, :-1].abs().sum() == 0 and cache.k[:, :, :, -1].abs().sum() > 0
        out = step(torch.tensor([5]))
        assert calls == ["capture", "replay"] and out is step.out and cache.length == 1
