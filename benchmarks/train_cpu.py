"""CPU training throughput of midigen's GPT-2 124M step against a nanoGPT-style reference model.

The reference is not part of midigen: pass the path of nanoGPT's ``model.py`` (a checkout of
github.com/karpathy/nanoGPT) with --ref or the NANOGPT_MODEL environment variable. Both models get the
same shape (GPT-2 small, midigen's padded vocabulary), the same batch and the same thread count; each
timed step is forward + backward + AdamW step, as in training. The two are timed in alternation so
that background load on the machine hits both alike.

    .venv/bin/python benchmarks/train_cpu.py --ref /path/to/nanoGPT/model.py
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from midigen.music.codec import Codec  # noqa: E402
from midigen.model.model import GPT, GPTConfig, padded_vocab  # noqa: E402


def load_reference(path: str):
    spec = importlib.util.spec_from_file_location("nanogpt_reference_model", path)
    if spec is None or spec.loader is None:
        sys.exit(f"train_cpu: cannot import {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build(kind: str, ref, a, vocab: int):
    torch.manual_seed(0)
    shape = dict(n_layer=a.layers, n_head=12, n_embd=768, block_size=a.block, vocab_size=vocab, dropout=0.0, bias=True)
    if kind == "midigen":
        model = GPT(GPTConfig(**shape))
        # what `midigen train` builds on a CPU: fused AdamW over decay / no-decay groups
        opt = torch.optim.AdamW(model.optimizer_groups(0.1), lr=6e-4, betas=(0.9, 0.95), fused=True)
    else:
        model = ref.GPT(ref.GPTConfig(**shape))
        opt = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), "cpu")
    model.train()
    return model, opt


def step(model, opt, x, y) -> float:
    t0 = time.perf_counter()
    _, loss = model(x, y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", default=os.environ.get("NANOGPT_MODEL"), help="nanoGPT's model.py (or NANOGPT_MODEL)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--block", type=int, default=1024)
    p.add_argument("--layers", type=int, default=12, help="12 = GPT-2 124M (fewer only for a quick look)")
    p.add_argument("--steps", type=int, default=4, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    if not a.ref:
        sys.exit("train_cpu: the reference is owed: pass --ref PATH/TO/nanoGPT/model.py (or set NANOGPT_MODEL)")
    if not Path(a.ref).is_file():
        sys.exit(f"train_cpu: {a.ref} is not a file")
    torch.set_num_threads(a.threads)
    ref = load_reference(a.ref)
    vocab = padded_vocab(Codec().vocab_size)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, vocab, (a.batch, a.block), generator=g)
    y = torch.randint(0, vocab, (a.batch, a.block), generator=g)

    runs = {k: build(k, ref, a, vocab) for k in ("midigen", "reference")}
    times = {k: [] for k in runs}
    for k, (m, o) in runs.items():
        for _ in range(a.warmup):
            step(m, o, x, y)
    for _ in range(a.steps):  # alternate, so drifting background load is shared fairly
        for k, (m, o) in runs.items():
            times[k].append(step(m, o, x, y))

    tokens = a.batch * a.block
    res = {k: tokens / statistics.median(v) for k, v in times.items()}
    params = runs["midigen"][0].num_params(non_embedding=True)
    print(f"GPT-2 124M shape ({a.layers} layers, {params / 1e6:.2f}M non-embedding params), vocab {vocab}, "
          f"batch {a.batch} x {a.block} tokens, {a.threads} threads, torch {torch.__version__}")
    for k, v in times.items():
        print(f"  {k:10s} {res[k]:8.1f} tokens/s   (median step {statistics.median(v):.2f} s; "
              f"steps {', '.join(f'{t:.2f}' for t in v)})")
    ratio = res["midigen"] / res["reference"]
    print(f"  ratio midigen / reference = {ratio:.3f}")
    print(json.dumps({"midigen_tokens_per_s": round(res["midigen"], 1),
                      "reference_tokens_per_s": round(res["reference"], 1), "ratio": round(ratio, 3),
                      "batch": a.batch, "block": a.block, "layers": a.layers, "threads": a.threads}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
