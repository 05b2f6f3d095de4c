"""The studio's Teach panel: what a running tune costs generation, and the time from "Teach" to music.

One real `midigen studio` (OMP_NUM_THREADS=--threads) over the demo model, measured side by side in one
run:

* generation latency without and with a tune running: the same requests (``--seconds`` of new music,
  fixed seeds) timed from the request to the first streamed notes and to the version written, in
  rounds before the tune, while it trains (in the studio's child at nice 10 with half the cores as
  torch threads), and after it; the ratio is "during" over the median of "before" and "after";
* the time from "Teach" to the first sample in the new style with ``--songs`` uploaded songs: the
  uploads (each through the sandboxed reader), the tune (until it stops: its best validation loss,
  ``--steps`` or ``--minutes``), selecting the new model, and a ``--seconds`` sample in its style.

The songs are made band songs (tests/songgen.py: drums, bass, chords, melody), none in the demo corpus.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/teach_studio.py --ckpt out/demo/model [--songs 30]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from songgen import write_songs  # noqa: E402
from studio_server import Server, call, wait_job  # noqa: E402

SAMPLING = {"temperature": 1.0, "top_p": 0.95}


def one_generation(url: str, pid: str, seconds: float, seed: int, style: str | None = None) -> tuple[float, float]:
    """(seconds to the first notes, seconds to the version written) for one generate request."""
    t = time.perf_counter()
    status, job = call("POST", f"{url}/api/pieces/{pid}/generate",
                       {**SAMPLING, "seconds": seconds, "seed": seed, "style": style})
    assert status == 202, job
    first = None
    while job["status"] in ("queued", "running"):
        job = call("GET", f"{url}/api/jobs/{job['id']}?since=0&wait=5")[1]
        if first is None and job["notes_total"]:
            first = time.perf_counter() - t
    assert job["status"] == "done", job
    return first or time.perf_counter() - t, time.perf_counter() - t


def rounds(url: str, pid: str, n: int, seconds: float) -> list[tuple[float, float]]:
    return [one_generation(url, pid, seconds, seed) for seed in range(n)]


def upload_set(url: str, songs: list[Path]) -> str:
    sid = None
    for p in songs:
        status, r = call("POST", f"{url}/api/teach/files?name={p.name}" + (f"&set={sid}" if sid else ""),
                         raw=p.read_bytes())
        assert status == 201 and not r["refused"], r
        sid = r["set"]
    return sid


def wait_status(url: str, t: dict, wanted: set[str]) -> dict:
    while t["status"] not in wanted:
        assert t["status"] in ("queued", "preparing", "training"), t
        t = call("GET", f"{url}/api/teach/{t['id']}?since={t['points_total']}&wait=5")[1]
    return t


def latency(url: str, sid: str, a) -> None:
    pid = call("POST", url + "/api/pieces", {"name": "bench"})[1]["id"]
    one_generation(url, pid, a.seconds, 99)  # warm-up
    before = rounds(url, pid, a.rounds, a.seconds)
    t = call("POST", url + "/api/teach", {"set": sid, "style": "load", "steps": 5000, "minutes": 60})[1]
    wait_status(url, t, {"training"})
    during = rounds(url, pid, a.rounds, a.seconds)
    call("POST", f"{url}/api/teach/{t['id']}/cancel")
    wait_status(url, t, {"cancelled", "done", "failed"})
    after = rounds(url, pid, a.rounds, a.seconds)
    idle = before + after
    print(f"\ngeneration of {a.seconds:g} s of music, {a.rounds} rounds each (before, during, after a tune):")
    for k, what in ((0, "first notes"), (1, "version written")):
        base = statistics.median(x[k] for x in idle)
        busy = statistics.median(x[k] for x in during)
        print(f"  {what:16s} no tune {base:6.2f} s   tune running {busy:6.2f} s   ratio {busy / base:.2f}x   "
              f"(before {statistics.median(x[k] for x in before):.2f}, after "
              f"{statistics.median(x[k] for x in after):.2f})")


def teach_to_music(url: str, songs: list[Path], a) -> None:
    t0 = time.perf_counter()
    sid = upload_set(url, songs)
    t_up = time.perf_counter() - t0
    t = call("POST", url + "/api/teach", {"set": sid, "style": "my band", "steps": a.steps, "minutes": a.minutes})[1]
    t = wait_status(url, t, {"done", "failed", "cancelled"})
    assert t["status"] == "done", t
    t_tune = time.perf_counter() - t0 - t_up
    status, models = call("POST", url + "/api/models/select", {"model": t["model"]})
    assert status == 200, models
    pid = call("POST", url + "/api/pieces", {"name": "taught"})[1]["id"]
    status, job = call("POST", f"{url}/api/pieces/{pid}/generate",
                       {**SAMPLING, "seconds": a.seconds, "seed": 1, "style": "my band"})
    assert status == 202, job
    job, notes, _ = wait_job(url, job)
    assert job["status"] == "done" and notes, job
    total = time.perf_counter() - t0
    r = t["result"]
    print(f"\n'Teach' to the first sample in the new style, {len(songs)} songs: {total / 60:.1f} min")
    print(f"  uploads {t_up:.1f} s, tune {t_tune / 60:.1f} min (stopped: {r['stopped']} at step {r['step']}; "
          f"held-out {r['val']:.2f} bits/note, base {r['base_val']:.2f}), select + {a.seconds:g} s sample "
          f"{total - t_up - t_tune:.1f} s; base weights read {models['base_loads']}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", default=str(ROOT / "out" / "demo" / "model"))
    ap.add_argument("--songs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0, help="music per generation (default 10 s)")
    ap.add_argument("--steps", type=int, default=300, help="the tune's step limit (the panel's default 300)")
    ap.add_argument("--minutes", type=float, default=10.0, help="the tune's time limit (the panel's default 10)")
    ap.add_argument("--skip", default="", help="latency or teach: leave that part out")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        songs = write_songs(Path(tmp) / "songs", a.songs, seed0=5000)
        server = Server(Path(a.ckpt), Path(tmp) / "ws", threads=a.threads)
        try:
            print(f"studio over {a.ckpt}, OMP_NUM_THREADS={a.threads}, {a.songs} made band songs")
            if "latency" not in a.skip:
                latency(server.url, upload_set(server.url, songs), a)
            if "teach" not in a.skip:
                teach_to_music(server.url, songs, a)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
