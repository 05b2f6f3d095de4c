"""A fresh process's first decode on a CPU: numba compiling the grammar step and the draw
(``grammar_jit``, ``draw_jit``) on a machine that never ran them, against loading them from its cache.

Each figure comes from its own child process, with numba's cache in a new temporary folder
(``NUMBA_CACHE_DIR``): "cold" is the first child on that folder (nothing cached: a fresh machine, or
the first run after an update changed the sources), "warm" the next one (what every later process
finds). Two ways to start:

* **command**: load the checkpoint, then decode ``--tokens`` tokens as ``midigen sample`` does (the
  checkpoint's note limits, top-p 0.95, the chord weight), twice: the first pays the compile or the
  cache load, the second is the decode alone;
* **studio**: load, ``warm_up`` (what the studio's worker runs as it starts, before any job), then the
  same decode: what the first job pays once the warm-up is done.

With ``--compiles``, one cold command child instead, printing the CPU seconds numba spent compiling each
kernel (inclusive of the helpers it compiled first) in its first decode.

CPU seconds of each part (the child's own clock) and of the whole child (getrusage of the child),
1 thread.

    .venv/bin/python benchmarks/first_decode.py --ckpt out/demo/model [--tokens 64] [--compiles]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
import torch
from midigen.generate.sample import generate_samples, warm_up
from midigen.generate.sampling import CHORD_WEIGHT, TOP_P, Sampling
from midigen.model.checkpoint import checkpoint_limits, load_checkpoint

ckpt, tokens, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(1)
out, t = {}, time.process_time()
model, codec, config = load_checkpoint(ckpt, "cpu")
out["load"], t = time.process_time() - t, time.process_time()
if how == "studio":
    warm_up(model, codec)
    out["warm_up"], t = time.process_time() - t, time.process_time()
limits = checkpoint_limits(config)
if how == "compiles":
    from numba.core import event

    class Clock(event.Listener):
        def __init__(self):
            self.open = []

        def on_start(self, ev):
            self.open.append((ev.data["dispatcher"].py_func.__name__, time.process_time()))

        def on_end(self, ev):
            name, t0 = self.open.pop()
            out[name] = out.get(name, 0.0) + time.process_time() - t0

    listening = event.install_listener("numba:compile", Clock())  # held: it stops listening when collected
    listening.__enter__()
for k in ("first decode", "second decode"):
    generate_samples(model, codec, max_new_tokens=tokens, instruments=[0, 33], tempo=120, limits=limits,
                     sampling=Sampling(seed=k == "second decode", top_p=TOP_P, chord_weight=CHORD_WEIGHT))
    out[k], t = time.process_time() - t, time.process_time()
print(json.dumps(out))
"""


def child(ckpt: str, tokens: int, how: str, cache: Path) -> dict:
    """One fresh process: its parts' CPU seconds, and the whole child's (getrusage)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = subprocess.run([sys.executable, "-c", CHILD, ckpt, str(tokens), how], env=env, capture_output=True,
                         text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    parts = json.loads(run.stdout.strip().splitlines()[-1])
    whole = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {k: round(v, 2) for k, v in {**parts, "whole process": whole}.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="a checkpoint (run dir or its best/)")
    p.add_argument("--tokens", type=int, default=64, help="tokens per decode (default 64)")
    p.add_argument("--compiles", action="store_true", help="each kernel's compile time in a cold first decode")
    a = p.parse_args()
    if a.compiles:
        with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
            print(json.dumps(child(a.ckpt, a.tokens, "compiles", Path(cache))))
        return
    for how in ("command", "studio"):
        with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
            for state in ("cold", "warm"):
                print(json.dumps({"start": how, "cache": state, **child(a.ckpt, a.tokens, how, Path(cache))}),
                      flush=True)


if __name__ == "__main__":
    main()
