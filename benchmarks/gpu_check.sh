#!/usr/bin/env bash
# GPU check, one command, about 5-8 minutes on one H100/H200:
#   bash benchmarks/gpu_check.sh
# Prepares the demo corpus, trains the GPT-2 124M config (bf16 autocast, torch.compile, flash attention
# through scaled_dot_product_attention) as one process and as a 1-process torchrun DDP run, scores it,
# samples with the KV cache, and prints tokens/s, MFU (vs 989 TFLOPS dense bf16) and peak memory.
# Knobs: GPU_CHECK_STEPS (default 300), GPU_CHECK_DDP_STEPS (60), PYTHON (an interpreter with CUDA torch).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${GPU_CHECK_STEPS:-300}"
DDP_STEPS="${GPU_CHECK_DDP_STEPS:-60}"
OUT="${GPU_CHECK_OUT:-runs/gpu_check}"

has_cuda() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in .venv/bin/python .venv-gpu/bin/python python3; do
    if command -v "$cand" >/dev/null 2>&1 && has_cuda "$cand" && "$cand" -c 'import midigen' 2>/dev/null; then
      PY="$cand"; break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "== no interpreter with CUDA torch and midigen: creating .venv-gpu (needs PyPI)"
  python3 -m venv .venv-gpu
  .venv-gpu/bin/pip install -q -e .
  PY=.venv-gpu/bin/python
fi
has_cuda "$PY" || { echo "gpu_check: $PY sees no CUDA GPU" >&2; exit 1; }
TORCHRUN="$(dirname "$PY")/torchrun"
[ -x "$TORCHRUN" ] || TORCHRUN="$PY -m torch.distributed.run"
"$PY" - <<'PY'
import torch
p = torch.cuda.get_device_properties(0)
print(f"== {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"bf16 {torch.cuda.is_bf16_supported()}, flash SDPA {torch.backends.cuda.flash_sdp_enabled()}")
PY

if [ ! -f data/demo/meta.json ]; then
  echo "== preparing the demo corpus"
  "$PY" -m midigen prepare demo --out data/demo --val-frac 0.05 --test-frac 0.05 --no-progress
fi

COMMON=(--data=data/demo --overwrite=true --batch-size=16 --grad-accum=1 --warmup-steps=20
        --eval-tokens=65536 --log-interval=1)
echo "== GPT-2 124M, 1 process: $STEPS steps of 16 x 1024 tokens"
"$PY" -m midigen train configs/gpt2-124m-lakh.toml "${COMMON[@]}" --out="$OUT/single" \
  --steps="$STEPS" --eval-interval="$STEPS"

echo "== GPT-2 124M, torchrun DDP with 1 process: $DDP_STEPS steps"
$TORCHRUN --standalone --nproc_per_node=1 -m midigen train configs/gpt2-124m-lakh.toml "${COMMON[@]}" \
  --out="$OUT/ddp" --steps="$DDP_STEPS" --eval-interval="$DDP_STEPS"

echo "== eval (test split, model vs n-gram)"
"$PY" -m midigen eval --ckpt "$OUT/single" --data data/demo --split test

if "$PY" -c 'import midigen.sample' 2>/dev/null; then
  echo "== sampling with the KV cache"
  "$PY" - "$OUT/single" <<'PY'
import subprocess, sys, time
t0 = time.time()
cmd = [sys.executable, "-m", "midigen", "sample", "--ckpt", sys.argv[1], "--num-samples", "4",
       "--max-tokens", "1000", "--seed", "1", "--device", "cuda", "--out", sys.argv[1] + "/samples"]
subprocess.run(cmd, check=True)
dt = time.time() - t0
print(f"sampled 4 x 1000 tokens in {dt:.1f} s including start-up: >= {4000 / dt:,.0f} tokens/s")
PY
fi

echo "== summary"
"$PY" benchmarks/gpu_check.py "$OUT/single" "$OUT/ddp"
