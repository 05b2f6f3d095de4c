"""Summarize the GPU check's runs: tokens/s, MFU and peak memory from their log.jsonl files.

The first steps (torch.compile, CUDA warm-up) are left out of the medians.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def summarize(run_dir: str, skip: int = 5) -> dict:
    rows = [json.loads(line) for line in open(Path(run_dir) / "log.jsonl") if line.strip()]
    steps = [r for r in rows if "loss" in r and "tokens_per_s" in r]
    evals = [r for r in rows if "val_loss" in r]
    steady = steps[skip:] or steps
    out = {
        "run": run_dir,
        "steps": steps[-1]["step"] if steps else 0,
        "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in steady)),
        "mfu": round(statistics.median(r.get("mfu", 0.0) for r in steady), 4),
        "peak_mem_gb": round(max(r.get("peak_mem_gb", 0.0) for r in steps), 2) if steps else None,
        "first_loss": round(steps[0]["loss"], 4) if steps else None,
        "last_loss": round(steps[-1]["loss"], 4) if steps else None,
    }
    if evals:
        out["val_loss"] = round(evals[-1]["val_loss"], 4)
        out["val_bits_per_note"] = round(evals[-1]["val_bits_per_note"], 3)
    return out


def main() -> int:
    for run_dir in sys.argv[1:]:
        s = summarize(run_dir)
        print(f"{s['run']}: {s['tokens_per_s']:,} tokens/s, MFU {100 * s['mfu']:.1f}% of 989 TFLOPS bf16, "
              f"peak memory {s['peak_mem_gb']} GB, loss {s['first_loss']} -> {s['last_loss']}"
              + (f", val {s['val_loss']} nats/token ({s['val_bits_per_note']} bits/note)" if "val_loss" in s else ""))
        print(json.dumps(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
