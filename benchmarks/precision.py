"""Weight precision on a CPU, side by side in one run: fp32 vs int8 (and bf16) tokens/s, each against
the memory-bandwidth limit, and what int8 costs in logits and bits.

* Speed: the 124M shape of configs/gpt2-124m-lakh.toml (random weights: speed does not depend on
  them) and the demo shape of configs/demo.toml, batch 1, ``--threads`` threads, one token at a
  time through the KV cache after a ``--context``-token prefill; the bare forward, as ``midigen``
  converts it at load (``midigen.model.precision``). Precisions alternate for ``--rounds`` rounds;
  the best round counts (the machine is shared).
* The limit: bytes of weights a step reads (the blocks' Linear weights at their precision, plus the
  float32 output head over the whole vocabulary) divided by the read bandwidth measured here (an
  fp32 matrix-vector product over a 512 MB matrix, the read a decoding step does, same threads,
  best over the rounds). A share near 100% means a step is bound by memory, as decoding at batch 1
  should be.
* Quality: the 124M shape trained for ``--train-steps`` steps on generated multi-track songs (so the
  weights are not random), then fp32 vs int8 on held-out songs as prompts: the mean absolute
  logit difference over the trained support, how often the argmax agrees, and bits per token.

    .venv/bin/python benchmarks/precision.py [--threads 2] [--rounds 3] [--train-steps 30] [--json FILE]
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from songgen import make_song  # noqa: E402

from midigen.model.model import GPT, GPTConfig, padded_vocab  # noqa: E402
from midigen.model.precision import apply_precision, block_linear_weights  # noqa: E402
from midigen.music.codec import Codec  # noqa: E402

BYTES = {"fp32": 4, "bf16": 2, "int8": 1}


def shape(name: str, vocab: int) -> GPTConfig:
    with open(ROOT / "configs" / name, "rb") as f:
        raw = tomllib.load(f)
    d = raw.get("model", raw)
    return GPTConfig(vocab_size=vocab, bias=bool(d.get("bias", True)),
                     **{k: int(d[k]) for k in ("n_layer", "n_head", "n_embd", "block_size")})


def read_bandwidth(w: torch.Tensor, v: torch.Tensor) -> float:
    """Bytes/s an fp32 matrix-vector product reads from ``w`` (512 MB, far larger than the caches):
    the same kind of read a decoding step does, with the same threads (best of 5)."""
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        torch.mv(w, v)
        best = min(best, time.perf_counter() - t)
    return w.numel() * 4 / best


def bytes_per_token(model: GPT, precision: str) -> int:
    """Weights one decoding step reads: the blocks' Linear weights (int8 adds one float scale per
    output channel) and the float32 head over the whole vocabulary; embeddings and norms are a
    row or a vector each and left out."""
    w = block_linear_weights(model)
    channels = sum(m.out_features for m in model.blocks.modules() if isinstance(m, torch.nn.Linear))
    extra = 8 * channels if precision == "int8" else 0
    return w * BYTES[precision] + extra + model.cfg.vocab_size * model.cfg.n_embd * 4


@torch.inference_mode()
def decode_rate(model: GPT, context: int, steps: int) -> float:
    g = torch.Generator().manual_seed(0)
    cache = model.new_cache(1)
    logits, _ = model(torch.randint(3, 1000, (1, context), generator=g), cache=cache, last_only=True)
    tok = logits[:, -1].argmax(-1, keepdim=True)
    t = time.perf_counter()
    for _ in range(steps):
        logits, _ = model(tok, cache=cache, last_only=True)
        tok = logits[:, -1].argmax(-1, keepdim=True)
    return steps / (time.perf_counter() - t)


def speed(name: str, cfg: GPTConfig, precisions, a, probe) -> dict:
    """Each precision's best round, and the bandwidth probe's best, all measured in turn per round."""
    torch.manual_seed(0)
    base = GPT(cfg).eval()
    models = {p: apply_precision(copy.deepcopy(base), p) for p in precisions}
    rates = {p: [] for p in precisions}
    context = min(a.context, cfg.block_size - a.steps)
    bandwidth = 0.0
    for _ in range(a.rounds):
        bandwidth = max(bandwidth, read_bandwidth(*probe))
        for p in precisions:
            rates[p].append(decode_rate(models[p], context, a.steps))
    out = {"model": name, "params_M": round(base.num_params() / 1e6, 1), "block_linear_weights": block_linear_weights(base),
           "context": context, "read_bandwidth_GB_per_s": round(bandwidth / 1e9, 2)}
    for p in precisions:
        best = max(rates[p])
        limit = bandwidth / bytes_per_token(base, p)
        out[p] = {"tokens_per_s": round(best, 1), "each_round": [round(r, 1) for r in rates[p]],
                  "MB_read_per_token": round(bytes_per_token(base, p) / 1e6, 1),
                  "limit_tokens_per_s": round(limit, 1), "share_of_limit": round(best / limit, 3)}
    for p in precisions[1:]:
        out[f"{p}_over_fp32"] = round(out[p]["tokens_per_s"] / out["fp32"]["tokens_per_s"], 2)
    return out


def song_tokens(codec: Codec, seeds) -> list[np.ndarray]:
    return [codec.encode_score(make_song(int(s), bars=32)) for s in seeds]


def train_briefly(cfg: GPTConfig, codec: Codec, steps: int, block: int, batch: int) -> GPT:
    """The shape trained for ``steps`` AdamW steps on generated songs, softmax over the ids they use."""
    torch.manual_seed(0)
    data = song_tokens(codec, range(200))
    stream = torch.from_numpy(np.concatenate(data).astype(np.int64))
    model = GPT(cfg)
    model.set_support(torch.unique(stream).tolist())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    model.train()
    for step in range(steps):
        starts = torch.randint(0, len(stream) - block - 1, (batch,), generator=g)
        x = torch.stack([stream[s : s + block] for s in starts])
        y = torch.stack([stream[s + 1 : s + block + 1] for s in starts])
        for group in opt.param_groups:
            group["lr"] = 1e-3 * min(1.0, (step + 1) / 5)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    print(json.dumps({"trained_steps": steps, "final_train_loss_nats": round(loss.item(), 3)}), flush=True)
    return model.eval()


@torch.inference_mode()
def logit_gap(model: GPT, codec: Codec, prompt_len: int) -> dict:
    """fp32 vs int8 of one trained model on held-out songs: logits over the support, argmax, bits/token."""
    q = apply_precision(copy.deepcopy(model), "int8")
    prompts = [t[: prompt_len + 1] for t in song_tokens(codec, range(10_000, 10_008)) if len(t) > prompt_len]
    x = torch.from_numpy(np.stack(prompts).astype(np.int64))
    ref_full, got_full = model(x[:, :-1])[0], q(x[:, :-1])[0]  # the whole vocabulary, support-smoothed
    ref, got = ref_full[..., model.support], got_full[..., model.support]
    y = x[:, 1:].reshape(-1)

    def bits(z):
        return (F.cross_entropy(z.reshape(-1, z.size(-1)), y) / math.log(2)).item()

    return {"prompts": len(prompts), "positions": int(y.numel()),
            "mean_abs_logit_diff": round((got - ref).abs().mean().item(), 4),
            "mean_abs_logit_fp32": round(ref.abs().mean().item(), 3),
            "argmax_agrees": round((got.argmax(-1) == ref.argmax(-1)).float().mean().item(), 4),
            "bits_per_token_fp32": round(bits(ref_full), 4), "bits_per_token_int8": round(bits(got_full), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--context", type=int, default=256, help="prefilled tokens before the timed steps")
    ap.add_argument("--steps", type=int, default=32, help="timed decoding steps per round")
    ap.add_argument("--train-steps", type=int, default=30, help="brief training of the 124M shape (0: skip quality)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    codec = Codec()
    vocab = padded_vocab(codec.vocab_size)
    probe = (torch.randn(4096, 32768), torch.randn(32768))
    res = {"torch": torch.__version__, "threads": a.threads, "cpus": os.cpu_count(), "load_avg": os.getloadavg()[0],
           "quantized_engine": torch.backends.quantized.engine, "models": []}
    big = shape("gpt2-124m-lakh.toml", vocab)
    for name, cfg in (("124M (configs/gpt2-124m-lakh.toml)", big), ("demo (configs/demo.toml)", shape("demo.toml", vocab))):
        r = speed(name, cfg, ("fp32", "int8", "bf16"), a, probe)
        res["models"].append(r)
        print(json.dumps(r), flush=True)
    if a.train_steps > 0:
        trained = train_briefly(GPTConfig(**{**big.to_dict(), "block_size": 256}), codec, a.train_steps, 128, 4)
        res["quality_124M"] = logit_gap(trained, codec, 255)
        print(json.dumps({"quality_124M": res["quality_124M"]}), flush=True)
    res["load_avg_end"] = os.getloadavg()[0]
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    m = res["models"][0]
    print(f"124M, b=1, {a.threads} threads: fp32 {m['fp32']['tokens_per_s']} tok/s "
          f"({m['fp32']['share_of_limit']:.0%} of its memory limit), int8 {m['int8']['tokens_per_s']} tok/s "
          f"({m['int8']['share_of_limit']:.0%}): int8/fp32 = {m['int8_over_fp32']}x (target >= 2.2x, >= 60% of limit)",
          file=sys.stderr)
    if "quality_124M" in res:
        q = res["quality_124M"]
        print(f"124M trained {a.train_steps} steps: mean |logit int8 - fp32| = {q['mean_abs_logit_diff']} "
              f"(mean |logit| {q['mean_abs_logit_fp32']}), argmax agrees {q['argmax_agrees']:.1%}, bits/token "
              f"{q['bits_per_token_int8']} vs {q['bits_per_token_fp32']}", file=sys.stderr)


if __name__ == "__main__":
    main()
