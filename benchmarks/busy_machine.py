"""A busy machine: the same `midigen` command with the old thread waiting and with midigen's default.

PyTorch's OpenMP threads spin while they wait for work; when other processes hold the cores, the
spinning threads fight them and the command can take many times longer. `midigen` now sets
``OMP_WAIT_POLICY=PASSIVE`` before torch loads (unless the user set it). This script times one fixed
command (`midigen sample`, a fixed token budget, a fixed seed, from a random-init model of the demo
shape that it writes first) four ways, alternating, in one run:

- idle, OpenMP's own default (``OMP_WAIT_POLICY=`` empty: midigen leaves a value the user set alone,
  and libgomp ignores an empty one: the behaviour before this change);
- idle, midigen's default (the variable unset: midigen sets PASSIVE);
- busy, each of the two, while ``--hogs`` processes spin on the CPU (default: as many as cores - 1,
  at least 1).

It prints the median seconds of each and the ratios (old/new, busy and idle), and checks the output
files are byte-identical.

    .venv/bin/python benchmarks/busy_machine.py [--rounds 3] [--tokens 600] [--hogs N]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _hog() -> None:
    while True:
        pass


def make_checkpoint(path: Path) -> Path:
    """A random-init model of the demo shape (configs/demo.toml: 4 layers, 192 wide), full vocabulary."""
    import torch

    from midigen.model.checkpoint import save_checkpoint
    from midigen.model.model import GPT, GPTConfig, padded_vocab
    from midigen.music.codec import Codec

    torch.manual_seed(0)
    codec = Codec()
    cfg = GPTConfig(vocab_size=padded_vocab(codec.vocab_size), block_size=256, n_layer=4, n_head=3, n_embd=192)
    return save_checkpoint(path, GPT(cfg), codec, info={"benchmark": "busy_machine"})


def run_once(ckpt: Path, out: Path, tokens: int, policy: str | None) -> tuple[float, bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("OMP_NUM_THREADS", None)
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    out.mkdir(parents=True, exist_ok=True)
    for f in out.iterdir():
        f.unlink()
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "midigen", "sample", "--ckpt", str(ckpt), "--max-tokens", str(tokens),
                        "--seed", "1", "--retry", "0", "--instruments", "piano", "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    secs = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    return secs, next(out.glob("*.mid")).read_bytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=600)
    ap.add_argument("--hogs", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    a = ap.parse_args()
    cases = {("idle", "old"): [], ("idle", "new"): [], ("busy", "old"): [], ("busy", "new"): []}
    outputs = set()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp) / "ckpt")
        run_once(ckpt, Path(tmp) / "warm", a.tokens, None)  # file caches warm for every case
        for _ in range(a.rounds):
            for load in ("idle", "busy"):
                hogs = [mp.Process(target=_hog, daemon=True) for _ in range(a.hogs if load == "busy" else 0)]
                for h in hogs:
                    h.start()
                try:
                    for which, policy in (("old", ""), ("new", None)):
                        secs, data = run_once(ckpt, Path(tmp) / "out", a.tokens, policy)
                        cases[(load, which)].append(secs)
                        outputs.add(data)
                finally:
                    for h in hogs:
                        h.terminate()
                        h.join()
    med = {f"{load}_{which}_s": round(statistics.median(v), 2) for (load, which), v in cases.items()}
    result = {"cpus": os.cpu_count(), "hogs": a.hogs, "rounds": a.rounds, "tokens": a.tokens, **med,
              "busy_old_over_new": round(med["busy_old_s"] / med["busy_new_s"], 2),
              "idle_old_over_new": round(med["idle_old_s"] / med["idle_new_s"], 2),
              "identical_output": len(outputs) == 1}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
