"""The GPU check: every step on its own, one JSON report.

    bash benchmarks/gpu_check.sh                      # on a CUDA machine; writes docs/gpu_check.json
    bash benchmarks/gpu_check.sh --cpu-smoke          # the same steps with a tiny model on the CPU

Steps, each a separate process with its own time limit, so one that fails (a CUDA error, a timeout,
a crash) is reported and the others still run:

  machine  GPU name, memory, torch/CUDA versions, native bf16, whether a flash-attention forward runs
  data     synthetic multi-track songs (tests/songgen.py) written and prepared with `midigen prepare`
  train    GPT-2 124M (configs/gpt2-124m-lakh.toml), one process, bf16 + torch.compile: tokens/s, MFU,
           peak memory, step time (medians over the steps after compilation)
  ddp1     the same under `torchrun --nproc_per_node=1` (DDP with one process), 2 micro-steps per step
  eval     `midigen eval` of the trained model on the test split (model and n-gram times)
  sample   `midigen.generate.sample.generate_samples` at batch 1 and 16 with a 1,024-token context (a real
           prompt of 768 tokens, 256 new), tokens/s after a warm-up; then batch 1 with the decode step
           replayed from a CUDA graph against eager steps, for the trained 124M model and the demo shape
           (``graphs``: tokens/s of each, their ratio, whether the tokens agree; on a CPU nothing is
           recorded and ``captured`` is false)

Needs no package index: it uses the interpreter it runs under (a venv carried to the machine) and
writes its own data. The main process imports no torch, so the report is written whatever happens.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("machine", "data", "train", "ddp1", "eval", "sample")
TARGETS = {"mfu": 0.40, "sample_b1_tokens_per_s": 150.0, "sample_b16_over_b1": 8.0}


def modes(smoke: bool) -> dict:
    """Sizes: the real check, or a tiny model that runs the same steps on a CPU in about a minute."""
    if smoke:
        model = ["--n-layer=2", "--n-head=2", "--n-embd=64", "--block-size=128", "--batch-size=4",
                 "--device=cpu", "--compile=false", "--dtype=float32", "--threads=1", "--eval-tokens=2048"]
        return {"songs": 30, "bars": 24, "train_steps": 4, "ddp_steps": 2, "log_interval": 1, "model": model,
                "context": 128, "new_tokens": 16, "batches": (1, 4), "device": "cpu"}
    return {"songs": 400, "bars": 48, "train_steps": 300, "ddp_steps": 60, "log_interval": 10,
            "model": ["--eval-tokens=65536"], "context": 1024, "new_tokens": 256, "batches": (1, 16),
            "device": "cuda"}


# ----- running a step ---------------------------------------------------------------------------


def _env() -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def _run(cmd: list, timeout: float, log: Path) -> subprocess.CompletedProcess:
    """A command with a time limit; its output kept in ``log``; a failure raises with the output's tail."""
    try:
        res = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=_env(), capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired as e:
        log.write_text(f"{e.stdout or ''}\n{e.stderr or ''}")
        raise RuntimeError(f"timed out after {timeout:.0f} s: {' '.join(map(str, cmd))}") from None
    log.write_text(f"$ {' '.join(map(str, cmd))}\n{res.stdout}\n{res.stderr}")
    if res.returncode != 0:
        said = [line for line in res.stderr.splitlines() if "error" in line.lower() and "Error:" not in line[:5]]
        raise RuntimeError(f"exit {res.returncode}: " + ("\n".join(said[-5:]) if said else res.stderr[-1500:]))
    return res


def _worker(kind: str, args: dict, timeout: float, log: Path) -> dict:
    """Run one of this file's worker functions in a fresh interpreter; it prints one JSON line."""
    res = _run([sys.executable, __file__, "--worker", kind, json.dumps(args)], timeout, log)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _train_cmd(a, m: dict, out: Path, steps: int, accum: int = 1) -> list:
    return ["-m", "midigen", "train", "configs/gpt2-124m-lakh.toml", f"--data={a.work / 'data'}", f"--out={out}",
            "--overwrite=true", f"--steps={steps}", f"--eval-interval={steps}", f"--grad-accum={accum}",
            f"--warmup-steps={min(20, steps)}", f"--log-interval={m['log_interval']}", *m["model"]]


def run_log_figures(run_dir: Path, skip_rows: int) -> dict:
    """Medians over a run's logged steps after the first ``skip_rows`` rows (compilation, warm-up)."""
    rows = [json.loads(line) for line in open(run_dir / "log.jsonl") if line.strip()]
    steps = [r for r in rows if "tokens_per_s" in r]
    evals = [r for r in rows if "val_loss" in r]
    steady = steps[skip_rows:] or steps
    tps = statistics.median(r["tokens_per_s"] for r in steady)
    per_step = steady[-1]["tokens"] / steady[-1]["step"]
    mfus = [r["mfu"] for r in steady if "mfu" in r]
    mem = [r["peak_mem_gb"] for r in steps if "peak_mem_gb" in r]
    out = {"steps": steps[-1]["step"], "tokens_per_step": per_step, "tokens_per_s": round(tps),
           "step_time_s": round(per_step / tps, 4), "mfu": round(statistics.median(mfus), 4) if mfus else None,
           "peak_mem_gb": round(max(mem), 2) if mem else None,
           "first_loss": round(steps[0]["loss"], 4), "last_loss": round(steps[-1]["loss"], 4)}
    if evals:
        out.update({k: evals[-1][k] for k in ("val_loss", "val_bits_per_note", "val_bits_per_second")})
    return out


def step_machine(a, m) -> dict:
    return _worker("machine", {"device": m["device"]}, a.timeout, a.work / "machine.log")


def step_data(a, m) -> dict:
    songs = a.work / "songs"
    _worker("songs", {"dir": str(songs), "n": m["songs"], "bars": m["bars"]}, a.timeout, a.work / "songs.log")
    res = _run([sys.executable, "-m", "midigen", "prepare", songs, "--out", a.work / "data", "--val-frac", "0.1",
                "--test-frac", "0.1", "--no-progress"], a.timeout, a.work / "data.log")
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    return {"songs": m["songs"], "splits": summary.get("splits")}


def step_train(a, m) -> dict:
    out = a.work / "train"
    _run([sys.executable, *_train_cmd(a, m, out, m["train_steps"])], a.timeout, a.work / "train.log")
    return run_log_figures(out, skip_rows=2)


def step_ddp1(a, m) -> dict:
    out = a.work / "ddp1"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    # two micro-steps, so DDP's no_sync under torch.compile is exercised too
    _run([*torchrun, *_train_cmd(a, m, out, m["ddp_steps"], accum=2)], a.timeout, a.work / "ddp1.log")
    return run_log_figures(out, skip_rows=2)


def step_eval(a, m) -> dict:
    t0 = time.time()
    res = _run([sys.executable, "-m", "midigen", "eval", "--ckpt", a.work / "train", "--data", a.work / "data",
                "--split", "test"], a.timeout, a.work / "eval.log")
    ev = json.loads(res.stdout.strip().splitlines()[-1])
    keep = ("tokens", "notes", "music_seconds", "bits_per_note", "bits_per_second", "ngram_bits_per_note",
            "ngram_bits_per_second", "seconds")
    return {"wall_s": round(time.time() - t0, 2), **{k: ev.get(k) for k in keep}}


def step_sample(a, m) -> dict:
    args = {"ckpt": str(a.work / "train"), "data": str(a.work / "data"), "device": m["device"],
            "context": m["context"], "new_tokens": m["new_tokens"], "batches": list(m["batches"])}
    return _worker("sample", args, a.timeout, a.work / "sample.log")


# ----- workers (run in their own interpreter) ----------------------------------------------------


def worker_machine(args: dict) -> dict:
    import platform

    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available()}
    if args["device"] != "cuda":
        return out
    if not torch.cuda.is_available():
        raise RuntimeError("this torch sees no CUDA GPU")
    from midigen.device import bf16_peak_for, compute_dtype

    p = torch.cuda.get_device_properties(0)
    out.update(gpu=p.name, gpus=torch.cuda.device_count(), memory_gib=round(p.total_memory / 2**30, 1),
               capability=f"{p.major}.{p.minor}", bf16_native=compute_dtype(torch.device("cuda"), "auto") ==
               torch.bfloat16, bf16_peak_flops=bf16_peak_for(p.name))
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(4, 12, 1024, 64, device="cuda", dtype=torch.bfloat16)
    try:  # the kernel training asks for: causal attention in bf16, flash only
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
        torch.cuda.synchronize()
        out["flash_attention"] = True
    except RuntimeError as e:
        out["flash_attention"] = f"unavailable: {str(e)[:200]}"
    return out


def worker_songs(args: dict) -> dict:
    from songgen import write_songs

    write_songs(args["dir"], int(args["n"]), bars=int(args["bars"]))
    return {"written": int(args["n"])}


def _prompt(data: str, length: int):
    """The first ``length`` tokens of the longest test song: a real header and real music as context."""
    import numpy as np

    from midigen.data.dataset import Dataset

    sp = Dataset(data).split("test")
    song = max((sp.song(i) for i in range(len(sp.starts))), key=len)
    return np.asarray(song[: min(length, len(song) - 1)], dtype=np.int64)


def worker_sample(args: dict) -> dict:
    import torch

    from midigen.model.checkpoint import load_checkpoint
    from midigen.generate.sample import generate_samples
    from midigen.generate.sampling import Sampling

    device = torch.device(args["device"])
    model, codec, _ = load_checkpoint(args["ckpt"], device=device)
    prompt = _prompt(args["data"], args["context"] - args["new_tokens"])
    out = {"context": args["context"], "prompt_tokens": int(len(prompt)), "new_tokens": args["new_tokens"]}
    generate_samples(model, codec, num_samples=1, max_new_tokens=8, prompt_tokens=prompt, device=device,
                     sampling=Sampling(seed=0))
    for b in args["batches"]:
        t0 = time.perf_counter()
        samples = generate_samples(model, codec, num_samples=b, max_new_tokens=args["new_tokens"],
                                   prompt_tokens=prompt, device=device, sampling=Sampling(seed=1))
        dt = time.perf_counter() - t0
        steps = max(len(s.tokens) - s.start_index for s in samples)  # generated steps, EOS included
        out[f"b{b}"] = {"seconds": round(dt, 3), "steps": steps, "tokens_per_s": round(b * steps / dt, 1)}
    b_lo, b_hi = args["batches"]
    out[f"b{b_hi}_over_b{b_lo}"] = round(out[f"b{b_hi}"]["tokens_per_s"] / out[f"b{b_lo}"]["tokens_per_s"], 2)
    out["graphs"] = {"124m": _graphs_vs_eager(model, codec, prompt, args["new_tokens"], device),
                     "demo": _graphs_vs_eager(_demo_model(codec, device), codec, prompt, args["new_tokens"], device)}
    return out


def _demo_model(codec, device):
    """The demo shape (configs/demo.toml), random weights: speed does not depend on them."""
    import tomllib

    import torch

    from midigen.model.model import GPT, GPTConfig, padded_vocab

    cfg = tomllib.loads((ROOT / "configs" / "demo.toml").read_text())
    torch.manual_seed(0)
    shape = {k: cfg[k] for k in ("n_layer", "n_head", "n_embd", "block_size")}
    return GPT(GPTConfig(vocab_size=padded_vocab(codec.vocab_size), **shape)).to(device).eval()


def _graphs_vs_eager(model, codec, prompt, new_tokens: int, device) -> dict:
    """Batch 1 decoding with the step replayed from a CUDA graph against eager steps, alternating, the
    median of 3 each (the graph is recorded inside each call, as a user's call records it). On a CPU
    there is nothing to record: both run eagerly and ``captured`` says so."""
    from midigen.generate import engine
    from midigen.generate.sample import generate_samples
    from midigen.generate.sampling import Sampling

    runs = {"eager": [], "graphs": []}
    new = {}
    try:
        for _ in range(3):
            for name in runs:
                engine.CUDA_GRAPHS = name == "graphs"
                t0 = time.perf_counter()
                (s,) = generate_samples(model, codec, num_samples=1, max_new_tokens=new_tokens, prompt_tokens=prompt,
                                        device=device, sampling=Sampling(seed=1))
                runs[name].append(time.perf_counter() - t0)
                new[name] = s.tokens[s.start_index :].tolist()
    finally:
        engine.CUDA_GRAPHS = False
    rate = {k: len(new[k]) / statistics.median(v) for k, v in runs.items()}
    return {"captured": device.type == "cuda", "eager_tokens_per_s": round(rate["eager"], 1),
            "graphs_tokens_per_s": round(rate["graphs"], 1), "graphs_over_eager": round(rate["graphs"] / rate["eager"], 2),
            "same_tokens": new["eager"] == new["graphs"]}


# ----- the report -------------------------------------------------------------------------------


def summary(steps: dict) -> dict:
    """The headline figures, and the targets of issue 9 where a figure exists."""
    def get(step, *keys):
        v = steps.get(step, {})
        if not v.get("ok"):
            return None
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        return v

    b = [k for k in steps.get("sample", {}) if k.startswith("b") and "_over_" not in k]
    s = {"gpu": get("machine", "gpu"), "tokens_per_s": get("train", "tokens_per_s"),
         "mfu": get("train", "mfu"), "peak_mem_gb": get("train", "peak_mem_gb"),
         "step_time_s": get("train", "step_time_s"), "ddp1_runs": bool(get("ddp1", "ok")),
         "ddp1_tokens_per_s": get("ddp1", "tokens_per_s"), "eval_wall_s": get("eval", "wall_s"),
         "sample_b1_tokens_per_s": get("sample", "b1", "tokens_per_s")}
    for shape in ("124m", "demo"):
        s[f"graphs_over_eager_{shape}"] = get("sample", "graphs", shape, "graphs_over_eager")
    if len(b) == 2:
        s[f"sample_{b[1]}_tokens_per_s"] = get("sample", b[1], "tokens_per_s")
        s[f"sample_{b[1]}_over_b1"] = get("sample", f"{b[1]}_over_b1")
    met = {}
    if s["mfu"] is not None:
        met["mfu >= 40%"] = s["mfu"] >= TARGETS["mfu"]
    if s["sample_b1_tokens_per_s"] is not None:
        met["sample batch 1 >= 150 tokens/s"] = s["sample_b1_tokens_per_s"] >= TARGETS["sample_b1_tokens_per_s"]
    if s.get("sample_b16_over_b1") is not None:
        met["sample batch 16 >= 8x batch 1"] = s["sample_b16_over_b1"] >= TARGETS["sample_b16_over_b1"]
    for shape in ("124m", "demo"):
        ratio, captured = s[f"graphs_over_eager_{shape}"], get("sample", "graphs", shape, "captured")
        if ratio is not None and captured:
            met[f"CUDA graphs >= 2x eager at batch 1 ({shape})"] = ratio >= 2.0
    s["targets_met"] = met
    return s


def write_report(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="GPU check: training, DDP, eval and sampling figures as one JSON report")
    p.add_argument("--out", type=Path, default=None, help="report path (default docs/gpu_check.json; "
                   "with --cpu-smoke WORK/report.json)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "gpu_check", help="scratch folder for data and runs")
    p.add_argument("--cpu-smoke", action="store_true", help="a tiny model on the CPU: checks the script itself")
    p.add_argument("--steps", type=int, default=None, help="training steps of the 1-process run (default 300)")
    p.add_argument("--ddp-steps", type=int, default=None, help="training steps of the DDP run (default 60)")
    p.add_argument("--only", default=",".join(STEPS), help=f"comma-separated steps to run ({','.join(STEPS)})")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per step (default 900)")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(globals()[f"worker_{a.worker[0]}"](json.loads(a.worker[1]))))
        return 0
    m = modes(a.cpu_smoke)
    m["train_steps"] = a.steps or m["train_steps"]
    m["ddp_steps"] = a.ddp_steps or m["ddp_steps"]
    a.work = a.work.resolve()
    a.work.mkdir(parents=True, exist_ok=True)
    out = a.out or (a.work / "report.json" if a.cpu_smoke else ROOT / "docs" / "gpu_check.json")
    report = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "mode": "cpu-smoke" if a.cpu_smoke else "gpu", "sizes": {k: v for k, v in m.items() if k != "model"},
              "steps": {}}
    for name in [s for s in a.only.split(",") if s]:
        t0 = time.time()
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            result = {"ok": True, **globals()[f"step_{name}"](a, m)}
        except Exception as e:  # reported; the next step still runs
            result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        result["wall_s"] = result.get("wall_s", round(time.time() - t0, 2))
        report["steps"][name] = result
        print(json.dumps({name: result}), file=sys.stderr, flush=True)
        write_report(out, report)
    report["summary"] = summary(report["steps"])
    write_report(out, report)
    print(json.dumps(report["summary"], indent=2))
    print(f"report: {out}", file=sys.stderr)
    return 0 if all(r["ok"] for r in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
