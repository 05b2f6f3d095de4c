"""Evaluation: the n-gram baseline is a proper distribution, and `midigen eval` beats a unigram model."""
from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

from midigen.ngram import KneserNey, unigram_log2prob


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
              "ngram_bits_per_note"):
        assert isinstance(ev[k], (int, float)), k
    assert ev["ckpt"].endswith("best")
    assert ev["bits_per_token"] == pytest.approx(ev["loss"] / np.log(2))
    assert ev["bits_per_note"] == pytest.approx(ev["bits_per_token"] * ev["tokens"] / ev["notes"])
    assert ev["bits_per_note"] < ev["unigram_bits_per_note"], ev
    assert ev["ngram_bits_per_note"] < ev["unigram_bits_per_note"], ev
    # a token budget is honoured, and the checkpoint dir itself works as --ckpt
    res = subprocess.run([python_exe, "-m", "midigen", "eval", "--ckpt", str(run / "last"), "--data",
                          str(tiny_dataset), "--split", "val", "--max-tokens", "500"], cwd=repo_root,
                         capture_output=True, text=True, env=env, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout)["tokens"] == 500
