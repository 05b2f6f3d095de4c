"""Sampling speed: KV-cached vs full-recompute decoding, and the time to write 60 s of music.

Random-init models (no weights needed): GPT-2 124M and the demo config (``configs/demo.toml`` when
present, else a 6-layer 384-wide stand-in). For each:

* tokens/s at a full context, batch 1: the KV cache (one position per token) against recomputing the
  whole ``block_size`` window at every step as nanoGPT's ``generate`` does; both in this run, same
  thread count, and their ratio;
* wall time of ``midigen.generate.sample.generate_samples`` for 60 s of music at batch 1 and 3, the whole
  pipeline (grammar mask, sampling, sliding window). A random model writes far sparser music than a
  trained one, so the run is repeated with a token budget at the density of real multi-track songs
  (the ``tests/songgen.py`` songs, measured here) to show what a trained model would cost.

* with ``--compare REF``: the decoding engine of this tree against the one at git revision REF (e.g.
  the last commit with the numpy grammar mask, 542de8f), side by side: each is timed in its own child
  process (same model weights, seed, thread count and token budget), alternating old/new for
  ``--rounds`` rounds, at batch 1 and 16; the figure is tokens/s and the new/old ratio per batch size.

    .venv/bin/python benchmarks/sample_speed.py [--threads 2] [--skip-124m] [--json FILE]
    .venv/bin/python benchmarks/sample_speed.py --compare 542de8f [--rounds 3] [--tokens 200]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from songgen import make_song  # noqa: E402

from midigen.music.codec import Codec  # noqa: E402
from midigen.model.model import GPT, GPTConfig, padded_vocab  # noqa: E402
from midigen.generate.sample import generate_samples, notes_end_seconds  # noqa: E402
from midigen.generate.sampling import Sampling


def demo_config(vocab: int) -> tuple[str, GPTConfig]:
    """The demo model shape from configs/demo.toml (top level or a [model] table), else a stand-in."""
    path = ROOT / "configs" / "demo.toml"
    if path.exists():
        with open(path, "rb") as f:
            raw = tomllib.load(f)
        d = raw.get("model", raw)
        keys = ("n_layer", "n_head", "n_embd", "block_size")
        if all(k in d for k in keys):
            return "demo (configs/demo.toml)", GPTConfig(vocab_size=vocab, **{k: int(d[k]) for k in keys})
    return "demo stand-in", GPTConfig(vocab_size=vocab, block_size=512, n_layer=6, n_head=6, n_embd=384)


def clocks():
    return time.perf_counter(), time.process_time()


@torch.inference_mode()
def cached_rate(model: GPT, steps: int) -> dict:
    """Tokens/s decoding the last ``steps`` positions of a full context through the KV cache."""
    block = model.cfg.block_size
    g = torch.Generator().manual_seed(0)
    ctx = torch.randint(3, 1000, (1, block - steps), generator=g)
    cache = model.new_cache(1)
    logits, _ = model(ctx, cache=cache, last_only=True)
    tok = logits[:, -1].argmax(-1, keepdim=True)
    w0, c0 = clocks()
    for _ in range(steps):
        logits, _ = model(tok, cache=cache, last_only=True)
        tok = logits[:, -1].argmax(-1, keepdim=True)
    w1, c1 = clocks()
    assert cache.length == block
    return {"tokens": steps, "tokens_per_s": steps / (w1 - w0), "tokens_per_cpu_s": steps / (c1 - c0)}


@torch.inference_mode()
def uncached_rate(model: GPT, steps: int) -> dict:
    """Tokens/s recomputing the whole window every step (nanoGPT-style generate)."""
    block = model.cfg.block_size
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(3, 1000, (1, block), generator=g)
    w0, c0 = clocks()
    for _ in range(steps):
        logits, _ = model(idx[:, -block:], last_only=True)
        idx = torch.cat((idx, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    w1, c1 = clocks()
    return {"tokens": steps, "tokens_per_s": steps / (w1 - w0), "tokens_per_cpu_s": steps / (c1 - c0)}


def music_time(model: GPT, codec: Codec, batch: int, seconds: float | None, max_tokens: int | None) -> dict:
    w0, c0 = clocks()
    samples = generate_samples(model, codec, num_samples=batch, seconds=seconds, max_new_tokens=max_tokens,
                               instruments=[0, 33, 128], tempo=120, sampling=Sampling(seed=0, top_k=200))
    w1, c1 = clocks()
    new = sum(len(s.tokens) - s.start_index - 1 for s in samples)
    music = [notes_end_seconds(codec.decode(s.tokens)) for s in samples]
    return {"batch": batch, "wall_s": round(w1 - w0, 2), "cpu_s": round(c1 - c0, 2), "new_tokens": new,
            "tokens_per_s": round(new / (w1 - w0), 2), "music_s": [round(m, 1) for m in music]}


def song_density(codec: Codec, n: int = 10) -> float:
    """Tokens per second of music in the generated multi-track test songs (Lakh-like density)."""
    rates = []
    for s in range(n):
        toks = codec.encode_score(make_song(s))
        rates.append(len(toks) / notes_end_seconds(codec.decode(toks)))
    return float(np.mean(rates))


def engine_child(batch: int, tokens: int, threads: int) -> None:
    """Time ``generate_samples`` of whatever ``midigen`` is on the path; print one JSON line."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    codec = Codec()
    _, cfg = demo_config(padded_vocab(codec.vocab_size))
    model = GPT(cfg).eval()
    generate_samples(model, codec, num_samples=batch, max_new_tokens=8, instruments=[0, 33, 128], tempo=120,
                     sampling=Sampling(seed=0))
    w0, c0 = clocks()
    out = generate_samples(model, codec, num_samples=batch, max_new_tokens=tokens,
                           instruments=[0, 33, 128], tempo=120, sampling=Sampling(seed=0, top_k=200))
    w1, c1 = clocks()
    new = sum(len(s.tokens) - s.start_index - 1 for s in out)
    print(json.dumps({"batch": batch, "tokens": new, "wall_s": w1 - w0, "cpu_s": c1 - c0,
                      "tokens_per_s": new / (w1 - w0)}))


def compare_engines(ref: str, rounds: int, tokens: int, threads: int) -> dict:
    """Old (git ``ref``) vs this tree's engine, each in a child process, alternating."""
    import subprocess
    import tarfile
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="midigen-old-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "midigen"], check=True, capture_output=True)
    import io

    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tf:
        tf.extractall(tmp, filter="data")
    trees = {"old": tmp, "new": ROOT}
    out = {"ref": ref, "threads": threads, "tokens": tokens, "rounds": rounds, "batches": {}}
    for batch in (1, 16):
        runs = {"old": [], "new": []}
        for _ in range(rounds):
            for name, tree in trees.items():
                env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(threads))
                r = subprocess.run([sys.executable, __file__, "--engine-child", str(batch), "--tokens", str(tokens),
                                    "--threads", str(threads)], env=env, capture_output=True, text=True, check=True)
                runs[name].append(json.loads(r.stdout.strip().splitlines()[-1])["tokens_per_s"])
        best = {k: max(v) for k, v in runs.items()}
        out["batches"][batch] = {"old_tokens_per_s": [round(x, 1) for x in runs["old"]],
                                 "new_tokens_per_s": [round(x, 1) for x in runs["new"]],
                                 "new_over_old_best": round(best["new"] / best["old"], 3)}
        print(json.dumps({"batch": batch, **out["batches"][batch]}), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compare", default=None, metavar="REF", help="time this engine against git revision REF")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--engine-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cached-steps", type=int, default=32)
    ap.add_argument("--uncached-steps", type=int, default=3)
    ap.add_argument("--skip-124m", action="store_true")
    ap.add_argument("--no-dense", action="store_true", help="skip the runs at real-song token density")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    if a.engine_child is not None:
        return engine_child(a.engine_child, a.tokens, a.threads)
    if a.compare is not None:
        res = compare_engines(a.compare, a.rounds, a.tokens, a.threads)
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
        return None
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    codec = Codec()
    vocab = padded_vocab(codec.vocab_size)
    density = song_density(codec)
    dense_tokens = int(round(60 * density))
    models = [] if a.skip_124m else [("GPT-2 124M", GPTConfig(vocab_size=vocab))]
    models.append(demo_config(vocab))
    results = {"threads": a.threads, "torch": torch.__version__, "cpus": os.cpu_count(),
               "load_avg_start": os.getloadavg()[0], "song_tokens_per_s": round(density, 1), "models": []}
    for name, cfg in models:
        model = GPT(cfg).eval()
        r = {"model": name, "config": cfg.to_dict(), "params_M": round(model.num_params() / 1e6, 1)}
        r["cached"] = cached_rate(model, a.cached_steps)
        r["uncached"] = uncached_rate(model, a.uncached_steps)
        r["speedup"] = round(r["cached"]["tokens_per_s"] / r["uncached"]["tokens_per_s"], 1)
        r["speedup_cpu"] = round(r["cached"]["tokens_per_cpu_s"] / r["uncached"]["tokens_per_cpu_s"], 1)
        print(json.dumps({k: r[k] for k in ("model", "cached", "uncached", "speedup", "speedup_cpu")}), flush=True)
        r["music_60s"] = [music_time(model, codec, b, 60.0, None) for b in (1, 3)]
        print(json.dumps({"model": name, "music_60s": r["music_60s"]}), flush=True)
        if not a.no_dense:
            r["music_60s_dense"] = [music_time(model, codec, b, None, dense_tokens) for b in (1, 3)]
            print(json.dumps({"model": name, "music_60s_dense": r["music_60s_dense"]}), flush=True)
        results["models"].append(r)
    results["load_avg_end"] = os.getloadavg()[0]
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({"load_avg": [results["load_avg_start"], results["load_avg_end"]],
                      "song_tokens_per_s": results["song_tokens_per_s"]}))


if __name__ == "__main__":
    main()
