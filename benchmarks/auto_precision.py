"""Does ``--precision auto`` pick the faster weights for a checkpoint? The whole engine, as ``sample`` runs
it (the checkpoint's note limits, top-p 0.95, 400 new tokens, b = 1), at fp32 and at int8, alternating
round by round in one process, at 1 thread (tokens per CPU second: robust to other load) and at
``--threads`` (tokens per wall second: what a user waits on). Prints each median, int8 / fp32, what
``auto`` resolves to for this checkpoint on this CPU, and whether that is the faster one at ``--threads``.

``auto`` is a rule on the model's size (``midigen.model.precision``), not a timing taken at load, so that
a seed gives the same music on every run; this is the measurement the rule rests on.

    .venv/bin/python benchmarks/auto_precision.py --ckpt out/demo/model [--threads 2] [--rounds 6]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from midigen.generate.sample import generate_samples
from midigen.generate.sampling import Sampling
from midigen.model.checkpoint import checkpoint_limits, load_checkpoint
from midigen.model.precision import resolve_precision

PRECISIONS = ("fp32", "int8")


def timed_rounds(models: dict, threads: int, rounds: int, tokens: int) -> dict:
    """{precision: [(tokens per wall s, tokens per CPU s), ...]}, the precisions alternating each round."""
    torch.set_num_threads(threads)
    out = {p: [] for p in models}
    for r in range(rounds + 1):  # round 0 warms up: compiled kernels, first-call costs
        for p, (model, codec, config) in models.items():
            w, c = time.perf_counter(), time.process_time()
            (s,) = generate_samples(model, codec, max_new_tokens=tokens, instruments=[0, 33, 128], tempo=110,
                                    limits=checkpoint_limits(config), sampling=Sampling(seed=r, top_p=0.95))
            n = len(s.tokens) - s.start_index - 1
            if r:
                out[p].append((n / (time.perf_counter() - w), n / (time.process_time() - c)))
    return out


def medians(rounds: dict, column: int) -> dict:
    return {p: round(float(np.median([r[column] for r in v])), 1) for p, v in rounds.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=400)
    a = ap.parse_args()
    models = {p: load_checkpoint(a.ckpt, "cpu", precision=p) for p in PRECISIONS}
    one = medians(timed_rounds(models, 1, a.rounds, a.tokens), 1)
    many = medians(timed_rounds(models, a.threads, a.rounds, a.tokens), 0)
    auto = resolve_precision("auto", torch.device("cpu"), models["fp32"][0])
    faster = max(many, key=many.get)
    res = {"ckpt": a.ckpt, "tokens_per_cpu_s_1_thread": one, f"tokens_per_s_{a.threads}_threads": many,
           "int8_over_fp32_1_thread_cpu": round(one["int8"] / one["fp32"], 3),
           f"int8_over_fp32_{a.threads}_threads": round(many["int8"] / many["fp32"], 3),
           "auto_picks": auto, f"faster_at_{a.threads}_threads": faster}
    print(json.dumps(res))
    print(f"[{'agrees' if auto == faster else 'DISAGREES'}] auto picks {auto}; at {a.threads} threads {faster} is faster "
          f"(int8 / fp32 {res[f'int8_over_fp32_{a.threads}_threads']}x wall; at 1 thread "
          f"{res['int8_over_fp32_1_thread_cpu']}x in CPU time)")


if __name__ == "__main__":
    main()
