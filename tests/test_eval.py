"""Evaluation: the n-gram baseline is a proper distribution, and `midigen eval` beats a unigram model."""
from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

from midigen.eval.ngram import KneserNey, unigram_log2prob


def _songs(rng, n, vocab, bos):
    """Songs with structure (motifs from a shared pool, repeated, plus noise), each starting with BOS."""
    pool = [np.random.default_rng(k).integers(3, vocab, size=3 + k % 4) for k in range(12)]
    out = []
    for _ in range(n):
        motif = pool[rng.integers(len(pool))]
        body = np.tile(motif, 6)
        noise = rng.random(len(body)) < 0.15
        body[noise] = rng.integers(3, vocab, size=noise.sum())
        out.append(np.concatenate(([bos], body)))
    return np.concatenate(out)


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
def test_ngram_probabilities_sum_to_one(order):
    rng = np.random.default_rng(order)
    V, bos = 9, 1
    lm = KneserNey(order, V).fit(_songs(rng, 40, V, bos), bos)
    hists = [rng.integers(-1, V, size=max(order - 1, 1)) for _ in range(30)]
    hists.append(np.full(max(order - 1, 1), -1))  # at a song start
    hists.append(np.array([2] * max(order - 1, 1)))  # a context never seen
    for h in hists:
        p = 2.0 ** lm.log2prob(np.tile(h, (V, 1)), np.arange(V))
        assert (p > 0).all()
        assert p.sum() == pytest.approx(1.0, abs=1e-9)


def test_ngram_score_uses_in_song_history_and_beats_unigram():
    rng = np.random.default_rng(0)
    V, bos = 40, 1
    train, test = _songs(rng, 300, V, bos), _songs(rng, 30, V, bos)
    lm = KneserNey(4, V).fit(train, bos)
    pos = np.flatnonzero(test != bos)
    lp = lm.score(test, pos, bos)
    # the same numbers through explicit histories, PAD (-1) before each song's BOS
    i = pos[5]
    start = np.flatnonzero(test[: i + 1] == bos)[-1]
    hist = [test[j] if j >= start else -1 for j in range(i - 3, i)]
    assert lp[5] == pytest.approx(lm.log2prob(np.array([hist]), np.array([test[i]]))[0])
    uni = unigram_log2prob(train, test[pos], V)
    assert -lp.mean() < 0.7 * -uni.mean()


@pytest.mark.slow
def test_eval_cli_beats_unigram_on_real_music(repo_root, python_exe, tiny_dataset, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = tmp_path / "run"
    res = subprocess.run([python_exe, "-m", "midigen", "train", "configs/test.toml", "--data", str(tiny_dataset),
                          "--out", str(run), "--steps", "60", "--eval-interval", "30"], cwd=repo_root, capture_output=True,
                         text=True, env=env, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run([python_exe, "-m", "midigen", "eval", "--ckpt", str(run), "--data", str(tiny_dataset),
                          "--ngram-order", "4"], cwd=repo_root, capture_output=True, text=True, env=env, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1
    ev = json.loads(lines[0])
    for k in ("loss", "bits_per_token", "bits_per_note", "tokens", "notes", "ngram_loss", "ngram_bits_per_token",
              "ngram_bits_per_note", "bits_per_second", "ngram_bits_per_second", "music_seconds"):
        assert isinstance(ev[k], (int, float)), k
    assert ev["ckpt"].endswith("best")
    assert ev["bits_per_token"] == pytest.approx(ev["loss"] / np.log(2))
    assert ev["bits_per_note"] == pytest.approx(ev["bits_per_token"] * ev["tokens"] / ev["notes"])
    # bits per second: the same bits over the seconds of music the scored tokens cover
    from midigen.data.dataset import Dataset, eval_positions
    from midigen.music.timing import positions_seconds

    sp = Dataset(tiny_dataset).split("test")
    secs = positions_seconds(sp.codec, sp.tokens, eval_positions(sp, len(sp)))
    assert ev["music_seconds"] == pytest.approx(secs, abs=1e-3) and secs > 10
    assert ev["bits_per_second"] == pytest.approx(ev["bits_per_token"] * ev["tokens"] / secs, rel=1e-4)
    assert ev["ngram_bits_per_second"] == pytest.approx(ev["ngram_bits_per_token"] * ev["tokens"] / secs, rel=1e-4)
    assert ev["bits_per_note"] < ev["unigram_bits_per_note"], ev
    assert ev["ngram_bits_per_note"] < ev["unigram_bits_per_note"], ev
    # a token budget is honoured, and the checkpoint dir itself works as --ckpt
    res = subprocess.run([python_exe, "-m", "midigen", "eval", "--ckpt", str(run / "last"), "--data",
                          str(tiny_dataset), "--split", "val", "--max-tokens", "500"], cwd=repo_root,
                         capture_output=True, text=True, env=env, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout)["tokens"] == 500


@pytest.mark.parametrize("support", [None, [0, 1, 2, 5, 9, 40, 77, 101, 150]])
def test_scoring_without_full_logits_gives_the_same_bits(support):
    """sum_nll (support logits + epsilon mass, chunked) == cross-entropy over the full-vocabulary logits."""
    import torch
    import torch.nn.functional as F

    from midigen.eval.evaluate import score_rows
    from midigen.model.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=192, n_layer=2, n_head=2, n_embd=32, block_size=24)).eval()
    if support is not None:
        model.set_support(support, epsilon=1e-4)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 192, size=(7, 24))
    pool = np.array(support) if support is not None else np.arange(192)
    y = rng.choice(pool, size=(7, 24))
    y[:, :5] = -1  # unscored context
    y[3, 10:] = -1  # a short last chunk
    y[0, 7] = 3  # outside the support (when there is one): the epsilon share
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(x))
        ref = F.cross_entropy(logits.float().reshape(-1, 192), torch.from_numpy(y).reshape(-1), ignore_index=-1,
                              reduction="sum").item()
        chunked = model.sum_nll(torch.from_numpy(x), torch.from_numpy(y), max_logits=192 * 5).item()
    new = score_rows(model, x, y, batch_size=3, device="cpu")
    assert new == pytest.approx(ref, rel=1e-5)
    assert chunked == pytest.approx(ref, rel=1e-5)
