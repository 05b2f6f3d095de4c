"""The model: GPT-2 124M's exact size, KV-cached decoding equal to a full pass, and that it can learn."""
from __future__ import annotations

import json
import subprocess

import torch

from midigen.model.model import GPT, GPTConfig, padded_vocab


def test_124m_config_has_gpt2_small_size(python_exe, repo_root):
    res = subprocess.run([python_exe, "-m", "midigen", "info", "--config", "configs/gpt2-124m-lakh.toml"],
                         cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert (info["n_layer"], info["n_head"], info["n_embd"], info["block_size"]) == (12, 12, 768, 1024)
    assert info["vocab_size"] % 64 == 0
    assert info["params_non_embedding"] == 85_056_000  # GPT-2 small: 85.06M without embeddings
    assert info["params"] == info["params_non_embedding"] + info["vocab_size"] * 768 + 1024 * 768


def _tiny(dropout=0.0, vocab=96, block=32):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=2, n_embd=32, dropout=dropout))


def test_kv_cache_equals_full_forward():
    model = _tiny().eval()
    idx = torch.randint(0, 96, (3, 20))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache(3)
        parts = [model(idx[:, :7], cache=cache)[0]]  # a prompt, then one token at a time
        for t in range(7, 20):
            parts.append(model(idx[:, t : t + 1], cache=cache)[0])
        assert cache.length == 20
    inc = torch.cat(parts, dim=1)
    torch.testing.assert_close(inc, full, atol=2e-5, rtol=1e-4)
    # last_only gives the final position of the same pass
    with torch.no_grad():
        last, _ = model(idx, last_only=True)
    torch.testing.assert_close(last[:, 0], full[:, -1], atol=2e-5, rtol=1e-4)


def test_tiny_model_overfits_one_batch():
    torch.set_num_threads(1)
    model = _tiny()
    opt = torch.optim.AdamW(model.optimizer_groups(0.0), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 96, (4, 32), generator=g)
    y = torch.roll(x, -1, dims=1)
    first = None
    for _ in range(150):
        _, loss = model(x, y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 4.0  # ~ln(96) at init
    assert loss.item() < 0.1, loss.item()


def test_masked_targets_do_not_count():
    model = _tiny().eval()
    x = torch.randint(0, 96, (2, 16))
    y = torch.randint(0, 96, (2, 16))
    y_masked = y.clone()
    y_masked[:, :5] = -1
    with torch.no_grad():
        logits, loss = model(x, y_masked)
    ref = torch.nn.functional.cross_entropy(logits[:, 5:].reshape(-1, 96), y[:, 5:].reshape(-1))
    torch.testing.assert_close(loss, ref)


def test_output_support_is_a_normalized_smoothed_distribution(tmp_path):
    """Training over the support only; eval/sampling see (1-eps) softmax on it and eps spread elsewhere."""
    import math

    import torch.nn.functional as F

    from midigen.model.checkpoint import load_checkpoint, save_checkpoint
    from midigen.music.codec import Codec

    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=128, n_layer=1, n_head=2, n_embd=32, block_size=16)).eval()
    support = [1, 2, 5, 9, 40, 77]
    m.set_support(support, epsilon=1e-4)
    x = torch.randint(0, 100, (2, 8))
    logits, _ = m(x)
    p = logits.softmax(-1)
    assert torch.allclose(p.sum(-1), torch.ones(2, 8), atol=1e-5)
    assert torch.allclose(p[..., support].sum(-1), torch.full((2, 8), 1 - 1e-4), atol=1e-5)
    outside = p[0, 0, 3].item()
    assert math.isclose(outside, 1e-4 / (128 - len(support)), rel_tol=1e-3)
    # the training loss is the cross-entropy over the support (a constant log(1-eps) below eval's)
    y = torch.tensor([[1, 2, 5, 9, 40, 77, 1, -1]] * 2)
    _, loss = m(x, y)
    full = F.cross_entropy(logits.view(-1, 128), y.view(-1), ignore_index=-1)
    assert abs((full - loss).item() - (-math.log1p(-1e-4))) < 1e-4
    # a token outside the support has a finite, large cost
    y_out = torch.full((2, 8), 3)
    assert math.isfinite(F.cross_entropy(logits.view(-1, 128), y_out.view(-1)).item())
    # the KV cache path gives the same smoothed logits
    cache = m.new_cache(2)
    m(x[:, :5], cache=cache)
    step, _ = m(x[:, 5:6], cache=cache)
    assert torch.allclose(step[:, -1], logits[:, 5], atol=1e-4)
    # the support travels in the checkpoint's JSON, not in the weights
    codec = Codec()
    big = GPT(GPTConfig(vocab_size=padded_vocab(codec.vocab_size), n_layer=1, n_head=2, n_embd=32, block_size=16))
    big.set_support(support + [codec.EOS])
    save_checkpoint(tmp_path / "ck", big, codec, {"step": 1})
    loaded, _, config = load_checkpoint(tmp_path / "ck")
    assert config["support"] == sorted(set(support) | {codec.EOS})
    assert loaded.support.tolist() == sorted(set(support) | {codec.EOS})


def test_flops_count_the_output_ids_actually_computed():
    """MFU counts the head over the support only, when training restricts the softmax to it."""
    cfg = GPTConfig(vocab_size=18176, n_layer=2, n_head=2, n_embd=64, block_size=128)
    m = GPT(cfg)
    blocks = m.num_params(non_embedding=True)
    attention = 12 * 2 * 64 * 128
    assert m.flops_per_token() == 6 * (blocks + 18176 * 64) + attention
    m.set_support(range(400))
    assert m.flops_per_token() == 6 * (blocks + 400 * 64) + attention
    m.set_support(None)
    assert m.flops_per_token() == 6 * (blocks + 18176 * 64) + attention
