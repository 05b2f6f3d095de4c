"""Weight precision on a CPU, side by side in one run: issue 20's int8 targets, each printed with its
figure and verdict.

* Speed: the 124M shape of configs/gpt2-124m-lakh.toml (random weights: speed does not depend on
  them) and the demo shape of configs/demo.toml, batch 1, ``--threads`` threads, one token at a
  time through the KV cache after a ``--context``-token prefill; the bare forward, as ``midigen``
  converts it at load (``midigen.model.precision``). Variants alternate for ``--rounds`` rounds; the
  best round counts (the machine is shared). Besides fp32, int8 and bf16: ``int8 fp32 head`` (the
  blocks int8, the output head left float32: what int8 was before its head went int8),
  ``int8 fp32 kv`` (int8 with the float32 KV cache it had before its cache went bfloat16),
  ``fp32 1 thread`` and ``int8 1 thread`` (whether the second thread helps at b = 1; their ratio
  in CPU time is the load-robust one), and with ``--engines`` int8 under
  other quantized engines (packed and run under each). Each variant also gets tokens per CPU second
  of the process: at 1 thread the work a token costs, robust to a shared machine; at 2 threads
  OpenMP's spin-waiting counts too, so there wall time (best round) is the figure.
* The limit: bytes of weights a step reads (the blocks' Linear weights at their precision, plus the
  output head over the whole vocabulary: int8 at int8, float32 otherwise; int8 adds a float scale
  and zero point per output channel) divided by the read bandwidth measured here (an fp32
  matrix-vector product over a 512 MB matrix, the streaming read a decoding step does, same threads,
  best over the rounds). A step also reads its KV cache (at its dtype, at the timed steps' mean
  length): ``share_with_kv`` counts those bytes too. The 1-thread rows are held against the same probe (run
  at ``--threads``), so their shares are not a 1-thread limit.
* Quality: the 124M shape trained for ``--train-steps`` steps on generated multi-track songs (so the
  weights are not random), then fp32 vs int8 on held-out songs as prompts: the mean absolute
  logit difference over the trained support, how often the argmax agrees, and bits per token (the
  int8 variants through their KV cache, as a prefill, so its dtype counts); and, with
  ``--demo-ckpt``/``--demo-data``, ``midigen eval``'s test bits/note of a trained model at int8
  against fp32 (target <= 1.01x), and the same model's test bits/token through the KV cache at int8
  with the bfloat16 cache against the float32 one.
* Real time: int8's 124M tokens/s x notes per token of dense band music (``tests/songgen.py``
  songs: drums, bass, chords, melody, encoded by the codec) against the notes per second that
  music plays.

    .venv/bin/python benchmarks/precision.py [--threads 2] [--rounds 5] [--train-steps 30] \
        [--demo-ckpt out/demo/model --demo-data data/demo] [--engines fbgemm,onednn] [--json FILE]
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

from midigen.data.dataset import Dataset, eval_rows  # noqa: E402
from midigen.eval.evaluate import evaluate  # noqa: E402
from midigen.model.checkpoint import load_checkpoint, resolve  # noqa: E402
from midigen.model.model import GPT, GPTConfig, padded_vocab  # noqa: E402
from midigen.model.precision import INT8_KV_DTYPE, apply_precision, block_linear_weights  # noqa: E402
from midigen.music.codec import Codec  # noqa: E402

BYTES = {"fp32": 4, "bf16": 2, "int8": 1}
TARGET_SPEEDUP, TARGET_SHARE, TARGET_BITS = 2.2, 0.60, 1.01


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


def bytes_per_token(cfg: GPTConfig, blocks: str, head: str, block_weights: int, channels: int) -> int:
    """Weights one decoding step reads: the blocks' Linear weights at ``blocks`` precision and the
    head over the whole vocabulary at ``head`` precision (int8 adds a float scale and an integer
    zero point per output channel); embeddings and norms are a row or a vector each and left out."""
    def extra(p, n):
        return 8 * n if p == "int8" else 0

    return (block_weights * BYTES[blocks] + extra(blocks, channels)
            + cfg.vocab_size * cfg.n_embd * BYTES[head] + extra(head, cfg.vocab_size))


def kv_bytes(cfg: GPTConfig, length: float, dtype: torch.dtype) -> int:
    """The keys and values (of ``dtype``) one step reads at a context of ``length`` tokens."""
    return int(cfg.n_layer * 2 * length * cfg.n_embd * dtype.itemsize)


@torch.inference_mode()
def decode_rate(model: GPT, context: int, steps: int) -> tuple[float, float]:
    """Tokens per wall second and per CPU second of this process (all its threads, OpenMP's
    spin-waiting included) over ``steps`` single-token steps after a ``context``-token prefill."""
    g = torch.Generator().manual_seed(0)
    cache = model.new_cache(1)
    logits, _ = model(torch.randint(3, 1000, (1, context), generator=g), cache=cache, last_only=True)
    tok = logits[:, -1].argmax(-1, keepdim=True)
    t, c = time.perf_counter(), time.process_time()
    for _ in range(steps):
        logits, _ = model(tok, cache=cache, last_only=True)
        tok = logits[:, -1].argmax(-1, keepdim=True)
    return steps / (time.perf_counter() - t), steps / (time.process_time() - c)


def variants(base: GPT, engines) -> dict:
    """name -> (model, quantized engine, threads or None, (blocks, head) precision)."""
    default = torch.backends.quantized.engine
    out = {p: (apply_precision(copy.deepcopy(base), p), default, None, (p, "int8" if p == "int8" else "fp32"))
           for p in ("fp32", "int8", "bf16")}
    head32 = apply_precision(copy.deepcopy(base), "int8")
    head32.set_head_maker(None)
    out["int8 fp32 head"] = (head32, default, None, ("int8", "fp32"))
    out["int8 fp32 kv"] = (fp32_kv(apply_precision(copy.deepcopy(base), "int8")), default, None, ("int8", "int8"))
    out["fp32 1 thread"] = (out["fp32"][0], default, 1, ("fp32", "fp32"))
    out["int8 1 thread"] = (out["int8"][0], default, 1, ("int8", "int8"))
    out["int8 fp32 kv 1 thread"] = (out["int8 fp32 kv"][0], default, 1, ("int8", "int8"))
    for e in engines:
        torch.backends.quantized.engine = e
        out[f"int8 {e}"] = (apply_precision(copy.deepcopy(base), "int8"), e, None, ("int8", "int8"))
    torch.backends.quantized.engine = default
    return out


def fp32_kv(model: GPT) -> GPT:
    """``model`` with a float32 KV cache (what int8 had before its cache went bfloat16)."""
    model.kv_dtype = torch.float32
    return model


def speed(name: str, cfg: GPTConfig, a, probe, engines=()) -> dict:
    """Each variant's best round, and the bandwidth probe's best, all measured in turn per round."""
    torch.manual_seed(0)
    base = GPT(cfg).eval()
    runs = variants(base, engines)
    rates, cpu_rates = {v: [] for v in runs}, {v: [] for v in runs}
    context = min(a.context, cfg.block_size - a.steps)
    bandwidth, threads, engine = 0.0, torch.get_num_threads(), torch.backends.quantized.engine
    for _ in range(a.rounds):
        bandwidth = max(bandwidth, read_bandwidth(*probe))
        for v, (model, eng, n, _) in runs.items():
            torch.backends.quantized.engine = eng
            torch.set_num_threads(n or threads)
            wall, cpu = decode_rate(model, context, a.steps)
            rates[v].append(wall)
            cpu_rates[v].append(cpu)
        torch.backends.quantized.engine = engine
        torch.set_num_threads(threads)
    w = block_linear_weights(base)
    channels = sum(m.out_features for m in base.blocks.modules() if isinstance(m, torch.nn.Linear))
    length = context + a.steps / 2
    out = {"model": name, "params_M": round(base.num_params() / 1e6, 1), "block_linear_weights": w,
           "context": context, "read_bandwidth_GB_per_s": round(bandwidth / 1e9, 2),
           "kv_cache_MB_read_per_token_fp32": round(kv_bytes(cfg, length, torch.float32) / 1e6, 1), "variants": {}}
    for v, (model, eng, n, (blocks, head)) in runs.items():
        best, read = max(rates[v]), bytes_per_token(cfg, blocks, head, w, channels)
        kv = kv_bytes(cfg, length, model.kv_dtype or torch.float32)
        out["variants"][v] = {
            "tokens_per_s": round(best, 1), "each_round": [round(r, 1) for r in rates[v]], "engine": eng,
            "kv_cache_MB_read_per_token": round(kv / 1e6, 1),
            "threads": n or threads, "MB_read_per_token": round(read / 1e6, 1),
            "limit_tokens_per_s": round(bandwidth / read, 1), "share_of_limit": round(best * read / bandwidth, 3),
            "share_with_kv": round(best * (read + kv) / bandwidth, 3),
            "over_fp32": round(best / max(rates["fp32"]), 2),
            "tokens_per_cpu_s": round(max(cpu_rates[v]), 1)}
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
    """fp32 vs int8 (and int8 with the fp32 head) of one trained model on held-out songs: logits over
    the support, argmax, bits/token."""
    q = apply_precision(copy.deepcopy(model), "int8")
    prompts = [t[: prompt_len + 1] for t in song_tokens(codec, range(10_000, 10_008)) if len(t) > prompt_len]
    x = torch.from_numpy(np.stack(prompts).astype(np.int64))
    y = x[:, 1:].reshape(-1)
    ref_full = model(x[:, :-1])[0]  # the whole vocabulary, support-smoothed
    ref = ref_full[..., model.support]

    def bits(z):
        return round((F.cross_entropy(z.reshape(-1, z.size(-1)), y) / math.log(2)).item(), 4)

    def against_fp32(m) -> dict:
        full = m(x[:, :-1], cache=m.new_cache(len(x)))[0]  # a prefill: keys and values go through the cache
        got = full[..., model.support]
        return {"mean_abs_logit_diff": round((got - ref).abs().mean().item(), 4),
                "argmax_agrees": round((got.argmax(-1) == ref.argmax(-1)).float().mean().item(), 4),
                "bits_per_token": bits(full)}

    out = {"prompts": len(prompts), "positions": int(y.numel()), "mean_abs_logit_fp32": round(ref.abs().mean().item(), 3),
           "bits_per_token_fp32": bits(ref_full), "int8": against_fp32(q)}
    out["int8 fp32 kv"] = against_fp32(fp32_kv(copy.deepcopy(q)))
    q.set_head_maker(None)
    out["int8 fp32 head"] = against_fp32(q)
    return out


def dense_music(codec: Codec, seeds=range(5000, 5008), bars: int = 32) -> dict:
    """Tokens per note and notes per second of band songs (drums, bass, chords, melody) as encoded."""
    tokens = notes = seconds = 0
    for s in seeds:
        song = make_song(int(s), bars=bars)
        t = codec.encode_score(song)
        tokens, notes = tokens + len(t), notes + codec.count_notes(t)
        seconds += song.to("second").end()
    return {"songs": len(seeds), "tokens_per_note": round(tokens / notes, 3),
            "notes_per_s_of_music": round(notes / seconds, 2)}


def demo_bits(ckpt: str, data: str) -> dict:
    """``midigen eval``'s test bits/note at fp32 and int8 (one thread, as the tests score)."""
    out = {}
    for p in ("fp32", "int8"):
        r = evaluate(ckpt, data, split="test", device="cpu", progress=False, precision=p)
        out[p] = {"bits_per_note": round(r["bits_per_note"], 5), "tokens": r["tokens"]}
    out["int8_over_fp32"] = round(out["int8"]["bits_per_note"] / out["fp32"]["bits_per_note"], 5)
    return out


@torch.inference_mode()
def demo_kv_bits(ckpt: str, data: str, max_tokens: int = 20_000) -> dict:
    """The trained model at int8, test bits/token through the KV cache (each row a prefill, so every
    key and value is read back from the cache) with int8's cache dtype against a float32 cache, and
    the mean |logit difference| between the two over the support."""
    model, _, _ = load_checkpoint(resolve(ckpt), device="cpu", precision="int8")
    x, y = (torch.from_numpy(a.astype(np.int64)) for a in eval_rows(Dataset(data).split("test"), model.cfg.block_size,
                                                                      max_tokens))
    nats, diff, n = {}, 0.0, 0
    for row in range(len(x)):
        logits = {}
        for name, dtype in (("int8_kv", INT8_KV_DTYPE), ("fp32_kv", torch.float32)):
            z = model(x[row : row + 1], cache=model.new_cache(1, dtype=dtype))[0][0]
            logits[name] = z
            nats[name] = nats.get(name, 0.0) + F.cross_entropy(z, y[row], ignore_index=-1, reduction="sum").item()
        s = model.support if model.support is not None else slice(None)
        diff += (logits["int8_kv"][:, s] - logits["fp32_kv"][:, s]).abs().mean().item() * (y[row] >= 0).sum().item()
        n += int((y[row] >= 0).sum())
    out = {f"bits_per_token_{k}": round(v / n / math.log(2), 5) for k, v in nats.items()}
    out.update({"tokens": n, "mean_abs_logit_diff": round(diff / n, 5),
                "ratio": round(nats["int8_kv"] / nats["fp32_kv"], 5)})
    return out


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(res: dict, a) -> None:
    """Every target's figure and verdict, on stderr after the JSON lines."""
    m = res["models"][0]
    v = m["variants"]
    fp, q = v["fp32"], v["int8"]
    say = lambda s: print(s, file=sys.stderr)  # noqa: E731
    say(f"--- issue 20 int8 targets: 124M shape, b=1, {a.threads} threads, torch {res['torch']}, "
        f"engine {res['quantized_engine']}, load average {res['load_avg']:.1f} -> {res['load_avg_end']:.1f} "
        f"on {res['cpus']} CPUs, best of {a.rounds} rounds")
    say(f"probe: {m['read_bandwidth_GB_per_s']} GB/s (fp32 mv, 512 MB); per token: fp32 {fp['MB_read_per_token']} MB, "
        f"int8 {q['MB_read_per_token']} MB of weights; KV cache {m['kv_cache_MB_read_per_token_fp32']} MB at fp32, "
        f"{q['kv_cache_MB_read_per_token']} MB at int8's {res['int8_kv_dtype']}")
    for name, r in v.items():
        say(f"  {name:21s} {r['tokens_per_s']:7.1f} tok/s  {r['over_fp32']:5.2f}x fp32  {r['share_of_limit']:6.1%} of its "
            f"limit ({r['limit_tokens_per_s']} tok/s; {r['share_with_kv']:.1%} counting the KV cache)  "
            f"{r['tokens_per_cpu_s']} tok/CPU-s  rounds {r['each_round']}")
    say(f"[{verdict(q['over_fp32'] >= TARGET_SPEEDUP)}] int8 / fp32 = {q['over_fp32']}x (target >= {TARGET_SPEEDUP}x)")
    one = v["int8 1 thread"]["tokens_per_cpu_s"] / v["fp32 1 thread"]["tokens_per_cpu_s"]
    say(f"[figure] int8 / fp32 at 1 thread in CPU time (robust to other load): {one:.2f}x")
    kv = v["int8 1 thread"]["tokens_per_cpu_s"] / v["int8 fp32 kv 1 thread"]["tokens_per_cpu_s"]
    say(f"[figure] int8 with its {res['int8_kv_dtype']} KV cache / with a float32 one, 1 thread, CPU time: {kv:.3f}x")
    say(f"[{verdict(q['share_of_limit'] >= TARGET_SHARE)}] int8 = {q['share_of_limit']:.1%} of its memory-bandwidth "
        f"limit (target >= {TARGET_SHARE:.0%}); {q['share_with_kv']:.1%} counting the KV cache it also reads")
    if "demo_bits_per_note" in res:
        d = res["demo_bits_per_note"]
        say(f"[{verdict(d['int8_over_fp32'] <= TARGET_BITS)}] demo model test bits/note: int8 {d['int8']['bits_per_note']} / "
            f"fp32 {d['fp32']['bits_per_note']} = {d['int8_over_fp32']}x (target <= {TARGET_BITS}x)")
        k = d["kv_cache"]
        say(f"[figure] demo model at int8 through the KV cache, {k['tokens']} test tokens: bits/token "
            f"{k['bits_per_token_int8_kv']} with the {res['int8_kv_dtype']} cache vs {k['bits_per_token_fp32_kv']} with "
            f"a float32 one ({k['ratio']}x); mean |logit difference| {k['mean_abs_logit_diff']}")
    else:
        say("[not run] demo model bits/note: pass --demo-ckpt and --demo-data")
    if "quality_124M" in res:
        g = res["quality_124M"]
        for k in ("int8", "int8 fp32 kv", "int8 fp32 head"):
            say(f"[figure] 124M trained {a.train_steps} steps, {k}: mean |logit - fp32| = {g[k]['mean_abs_logit_diff']} "
                f"(mean |logit| {g['mean_abs_logit_fp32']}), argmax agrees {g[k]['argmax_agrees']:.2%}, "
                f"bits/token {g[k]['bits_per_token']} vs {g['bits_per_token_fp32']}")
    rt = res["real_time"]
    say(f"[{verdict(rt['factor'] > 1)}] real time: 124M int8 writes {rt['notes_per_s']} notes/s of dense band music "
        f"({q['tokens_per_s']} tok/s / {rt['tokens_per_note']} tokens per note); it plays {rt['notes_per_s_of_music']} "
        f"notes/s: {rt['factor']}x real time (target > 1)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--context", type=int, default=256, help="prefilled tokens before the timed steps")
    ap.add_argument("--steps", type=int, default=32, help="timed decoding steps per round")
    ap.add_argument("--train-steps", type=int, default=30, help="brief training of the 124M shape (0: skip quality)")
    ap.add_argument("--demo-ckpt", default=None, help="a trained checkpoint for the bits/note target (with --demo-data)")
    ap.add_argument("--demo-data", default=None)
    ap.add_argument("--engines", default="", help="also time int8 under these quantized engines (comma-separated)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    codec = Codec()
    vocab = padded_vocab(codec.vocab_size)
    probe = (torch.randn(4096, 32768), torch.randn(32768))
    res = {"torch": torch.__version__, "threads": a.threads, "cpus": os.cpu_count(), "load_avg": os.getloadavg()[0],
           "quantized_engine": torch.backends.quantized.engine, "int8_kv_dtype": str(INT8_KV_DTYPE).split(".")[-1],
           "models": []}
    big = shape("gpt2-124m-lakh.toml", vocab)
    engines = [e for e in a.engines.split(",") if e]
    for name, cfg, more in (("124M (configs/gpt2-124m-lakh.toml)", big, engines),
                            ("demo (configs/demo.toml)", shape("demo.toml", vocab), ())):
        r = speed(name, cfg, a, probe, more)
        res["models"].append(r)
        print(json.dumps(r), flush=True)
    del probe
    music = dense_music(codec)
    rate = res["models"][0]["variants"]["int8"]["tokens_per_s"]
    res["real_time"] = {**music, "notes_per_s": round(rate / music["tokens_per_note"], 1),
                        "factor": round(rate / music["tokens_per_note"] / music["notes_per_s_of_music"], 2)}
    print(json.dumps({"real_time": res["real_time"]}), flush=True)
    if a.demo_ckpt and a.demo_data:
        torch.set_num_threads(1)
        res["demo_bits_per_note"] = demo_bits(a.demo_ckpt, a.demo_data)
        res["demo_bits_per_note"]["kv_cache"] = demo_kv_bits(a.demo_ckpt, a.demo_data)
        torch.set_num_threads(a.threads)
        print(json.dumps({"demo_bits_per_note": res["demo_bits_per_note"]}), flush=True)
    if a.train_steps > 0:
        trained = train_briefly(GPTConfig(**{**big.to_dict(), "block_size": 256}), codec, a.train_steps, 128, 4)
        res["quality_124M"] = logit_gap(trained, codec, 255)
        print(json.dumps({"quality_124M": res["quality_124M"]}), flush=True)
    res["load_avg_end"] = os.getloadavg()[0]
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    report(res, a)


if __name__ == "__main__":
    main()
