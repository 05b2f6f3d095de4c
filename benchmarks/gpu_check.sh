#!/usr/bin/env bash
# The GPU check, one command (about 5-8 minutes on one H100/H200), one JSON report:
#   bash benchmarks/gpu_check.sh                     # -> docs/gpu_check.json
#   bash benchmarks/gpu_check.sh --out /tmp/r.json --steps 200 --only machine,train
#   bash benchmarks/gpu_check.sh --cpu-smoke         # the same steps with a tiny model on the CPU
# Every step (machine, data, train, ddp1, eval, sample) runs on its own and is reported even when another
# fails; see benchmarks/gpu_check.py. Nothing is installed: a GPU machine may reach no package index, so
# bring a prepared venv and point PYTHON at its interpreter (default: .venv/bin/python, else python3).
cd "$(dirname "$0")/.." || exit 2
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
exec "$PY" benchmarks/gpu_check.py "$@"
