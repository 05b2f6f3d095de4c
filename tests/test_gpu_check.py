"""benchmarks/gpu_check.sh: its CPU smoke mode runs every step end to end and writes one JSON report."""
from __future__ import annotations

import json
import os
import subprocess

import pytest


@pytest.mark.slow
def test_gpu_check_cpu_smoke_reports_every_step(repo_root, python_exe, tmp_path):
    env = {**os.environ, "PYTHON": python_exe}
    report = tmp_path / "report.json"
    # a step that fails (no data prepared yet) is reported, and the steps after it still run
    res = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--cpu-smoke", "--work", str(tmp_path / "w0"),
                          "--out", str(report), "--only", "train,eval"], cwd=repo_root, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr[-2000:]
    r = json.loads(report.read_text())
    assert "midigen prepare" in r["steps"]["train"]["error"] and not r["steps"]["train"]["ok"]
    assert "midigen eval: error" in r["steps"]["eval"]["error"] and not r["steps"]["eval"]["ok"]

    res = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--cpu-smoke", "--work", str(tmp_path / "w"),
                          "--out", str(report)], cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(report.read_text())
    assert r["mode"] == "cpu-smoke"
    assert list(r["steps"]) == ["machine", "data", "train", "ddp1", "eval", "sample"]
    assert all(step["ok"] for step in r["steps"].values()), r["steps"]
    s = r["summary"]
    assert s["tokens_per_s"] > 0 and s["step_time_s"] > 0 and s["ddp1_runs"] and s["ddp1_tokens_per_s"] > 0
    assert s["mfu"] is None  # a CPU has no entry in the peak table: no MFU rather than a guess
    assert r["steps"]["eval"]["bits_per_second"] > 0 and r["steps"]["eval"]["ngram_bits_per_second"] > 0
    assert s["sample_b1_tokens_per_s"] > 0 and s["sample_b4_tokens_per_s"] > 0
    assert r["steps"]["sample"]["context"] == 128 and r["steps"]["sample"]["prompt_tokens"] == 112
    for shape in ("124m", "demo"):  # the CUDA-graph figures exist; on a CPU nothing is recorded
        g = r["steps"]["sample"]["graphs"][shape]
        assert g["captured"] is False and g["eager_tokens_per_s"] > 0 and g["graphs_tokens_per_s"] > 0
        assert g["same_tokens"] and s[f"graphs_over_eager_{shape}"] > 0
