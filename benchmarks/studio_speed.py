"""Studio speed: page ready, first notes after "generate", and a 30 s piece in the studio vs `midigen sample`.

For each model it starts the real `midigen studio` (one process, OMP_NUM_THREADS=--threads) and
measures, side by side in one run:

* page interactive: from navigation to the page's ready flag in headless Chromium (when Chromium and
  Playwright are installed), else the HTTP requests the page makes at load, in order;
* first notes: from pressing Generate (the API call) to the first notes arriving on the long poll,
  and in the browser from the click to the first notes on the roll;
* a 30-second piece: the studio job (request to version written, followed as the page follows it,
  streaming its notes) against the same work `midigen sample` does (`generate_samples` +
  `sample_score` + writing the MIDI, same seed and arguments) in this process, on a second thread as
  the studio's worker runs it and on the main thread as the command runs it, and against the
  `midigen sample` command's wall time (which also loads the model); rounds alternate. (On a busy
  2-core machine torch's 2-thread OpenMP runs far slower on the main thread than on a second one.)

Models: ``--ckpt DIR`` if given, else ``out/demo/model`` if `make demo` made it, else the tiny test
model (configs/test.toml trained here on generated songs, ~1 min); plus a demo-shaped model with
random weights (configs/demo.toml's shape: the per-token cost of the demo model, not its music).

    .venv/bin/python benchmarks/studio_speed.py [--ckpt DIR] [--threads 2] [--rounds 3] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from studio_server import Server, call, wait_job  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
ARGS = {"seconds": 30.0, "temperature": 1.0, "top_p": 0.95}
PAGE_POLL_GAP = 0.12  # the page waits this long after an answer with notes (studio.js POLL_GAP_MS)


def _midigen(*args, threads: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads))
    res = subprocess.run([sys.executable, "-m", "midigen", *map(str, args)], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"midigen {args[0]} failed: {res.stderr[-2000:]}")
    return res


def tiny_model(work: Path, threads: int) -> Path:
    from songgen import write_songs

    write_songs(work / "songs", 40)
    _midigen("prepare", work / "songs", "--out", work / "data", "--no-progress", "--val-frac", "0.1",
             "--test-frac", "0.1", threads=threads)
    _midigen("train", "configs/test.toml", f"--data={work / 'data'}", f"--out={work / 'run'}", threads=threads)
    return work / "run"


def demo_shaped(work: Path) -> Path:
    from midigen.model.checkpoint import save_checkpoint
    from midigen.music.codec import Codec
    from midigen.model.model import GPT, GPTConfig, padded_vocab

    raw = tomllib.loads((ROOT / "configs" / "demo.toml").read_text())
    codec = Codec()
    cfg = GPTConfig(vocab_size=padded_vocab(codec.vocab_size),
                    **{k: int(raw[k]) for k in ("n_layer", "n_head", "n_embd", "block_size")})
    torch.manual_seed(0)
    return save_checkpoint(work / "demo-shaped", GPT(cfg).eval(), codec, {"random_init": True})


def models(a, work: Path) -> list[tuple[str, Path]]:
    if a.ckpt:
        out = [(f"{a.ckpt}", Path(a.ckpt))]
    elif (ROOT / "out" / "demo" / "model").exists():
        out = [("demo model (out/demo/model)", ROOT / "out" / "demo" / "model")]
    else:
        t = time.time()
        run = tiny_model(work, a.threads)
        out = [(f"tiny test model (configs/test.toml, trained here in {time.time() - t:.0f} s; no demo model)", run)]
    if not a.no_demo_shape:
        out.append(("demo-shaped, random weights (configs/demo.toml)", demo_shaped(work)))
    return out


def page_ready(url: str, rounds: int) -> dict:
    """Median seconds from navigation to the studio's ready flag (browser), or the load requests (HTTP)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not CHROMIUM.exists():
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            for path in ("/", "/static/studio.css", "/static/studio.js", "/static/api.js", "/static/roll.js",
                         "/api/info", "/api/pieces"):
                assert call("GET", url + path)[0] == 200
            times.append(time.perf_counter() - t)
        return {"how": "HTTP requests of a page load (no browser here)", "seconds": statistics.median(times)}
    times, first_notes = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        for r in range(rounds):
            page = browser.new_page()
            t = time.perf_counter()
            page.goto(url + "/")
            page.wait_for_function("window.studioReady === true")
            times.append(time.perf_counter() - t)
            page.fill("#gen-seconds", "30")
            page.fill("#seed", str(100 + r))
            t = time.perf_counter()
            page.click("#generate")
            page.wait_for_function("/\\b[1-9][0-9]* notes/.test(document.getElementById('job-status').textContent)")
            first_notes.append(time.perf_counter() - t)
            page.click("#cancel")
            page.wait_for_function("document.getElementById('job').hidden")
            page.close()
        browser.close()
    return {"how": "headless Chromium", "seconds": statistics.median(times),
            "first_notes_on_roll_s": statistics.median(first_notes)}


def first_notes(url: str, rounds: int) -> float:
    """Median seconds from the generate request to the first streamed notes (then the job is cancelled)."""
    pid = call("POST", url + "/api/pieces", {"name": "bench"})[1]["id"]
    times = []
    for r in range(rounds):
        t = time.perf_counter()
        job = call("POST", f"{url}/api/pieces/{pid}/generate", {**ARGS, "seed": r})[1]
        while not job["notes"] and job["status"] in ("queued", "running"):
            job = call("GET", f"{url}/api/jobs/{job['id']}?since=0&wait=10")[1]
        times.append(time.perf_counter() - t)
        call("POST", f"{url}/api/jobs/{job['id']}/cancel")
        wait_job(url, job)
    return statistics.median(times)


def in_process(ckpt: Path, seed: int, out: Path, thread: bool) -> float:
    """What `midigen sample` does after loading (generate, decode, write the MIDI), on the main thread
    as the command runs it, or on a second thread as the studio's worker runs it."""
    from midigen.model.checkpoint import load_checkpoint
    from midigen.fsutil import atomic_write_bytes
    from midigen.generate.sample import generate_samples, sample_score
    from midigen.generate.sampling import Sampling

    model, codec, _ = load_checkpoint(ckpt, "cpu")
    took = []

    def work():
        t = time.perf_counter()
        s = generate_samples(model, codec, **ARGS, sampling=Sampling(seed=seed))[0]
        atomic_write_bytes(out / f"{seed}.mid", bytes(sample_score(codec, s).dumps_midi()))
        took.append(time.perf_counter() - t)

    if thread:
        th = threading.Thread(target=work)
        th.start()
        th.join()
    else:
        work()
    return took[0]


def piece_30s(url: str, ckpt: Path, rounds: int, threads: int, out: Path) -> dict:
    pid = call("POST", url + "/api/pieces", {"name": "bench"})[1]["id"]
    runs = {"studio": [], "sample_worker_thread": [], "sample_main_thread": [], "sample_command": []}
    for r in range(rounds):
        seed = 1000 + r
        t = time.perf_counter()
        job = call("POST", f"{url}/api/pieces/{pid}/generate", {**ARGS, "seed": seed})[1]
        job, _, _ = wait_job(url, job, timeout=3600, pace=PAGE_POLL_GAP)
        runs["studio"].append(time.perf_counter() - t)
        assert job["status"] == "done", job
        runs["sample_worker_thread"].append(in_process(ckpt, seed, out, thread=True))
        runs["sample_main_thread"].append(in_process(ckpt, seed, out, thread=False))
        t = time.perf_counter()
        _midigen("sample", "--ckpt", ckpt, "--seconds", "30", "--seed", seed, "--top-p", "0.95", "--out", out,
                 threads=threads)
        runs["sample_command"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {**{f"{k}_s": round(v, 3) for k, v in med.items()},
            **{f"studio_vs_{k}": round(med["studio"] / v, 3) for k, v in med.items() if k != "studio"},
            "rounds": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-demo-shape", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    results = {"threads": a.threads, "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()[0], "models": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, ckpt in models(a, work):
            server = Server(ckpt, work / f"ws-{len(results['models'])}", threads=a.threads)
            try:
                r = {"model": name, "page": page_ready(server.url, a.rounds),
                     "first_notes_api_s": round(first_notes(server.url, a.rounds), 3)}
                r["piece_30s"] = piece_30s(server.url, ckpt, a.rounds, a.threads, work)
            finally:
                server.stop()
            results["models"].append(r)
            p, f = r["page"], r["piece_30s"]
            print(f"\n{name}")
            print(f"  page interactive ({p['how']}): {p['seconds']:.3f} s  (target <= 1 s)")
            if "first_notes_on_roll_s" in p:
                print(f"  first notes on the roll after clicking Generate: {p['first_notes_on_roll_s']:.3f} s")
            print(f"  first notes after the generate request (API): {r['first_notes_api_s']:.3f} s  (target <= 1 s)")
            print(f"  30 s piece, studio {f['studio_s']:.2f} s (target <= 1.10x sample) vs")
            for k, what in (("sample_worker_thread", "sample's work on a second thread, as the studio runs it"),
                            ("sample_main_thread", "sample's work on the main thread, as the command runs it"),
                            ("sample_command", "the `midigen sample` command, model loading included")):
                print(f"    {what}: {f[k + '_s']:.2f} s -> studio {f['studio_vs_' + k]:.3f}x", flush=True)
    results["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(results))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
