"""The studio's Teach panel: what a running tune costs generation, and the time from "Teach" to music.

One real `midigen studio` (OMP_NUM_THREADS=--threads) over the demo model, measured side by side in one
run:

* generation latency with a tune running and without: while a tune trains (in the studio's child at
  nice 10 with half the cores as torch threads), each round generates ``--seconds`` of new music with
  one seed twice, once with the tune's process running and once with it paused (SIGSTOP/SIGCONT), in
  alternating order; timed from the request to the first streamed notes and to the version written,
  with the studio process's CPU time and the tune's CPU share meanwhile and in the second before
  (from /proc). The figure is
  the median over rounds of each round's ratio, so the shared machine's other load, which drifts over
  minutes, falls on both halves of a round alike;
* the time from "Teach" to the first sample in the new style with ``--songs`` uploaded songs: the
  uploads (each through the sandboxed reader), the tune (until it stops: its best validation loss,
  ``--steps`` or ``--minutes``), selecting the new model, and a ``--seconds`` sample in its style.

The songs are made band songs (tests/songgen.py: drums, bass, chords, melody), none in the demo corpus.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/teach_studio.py --ckpt out/demo/model [--songs 30]
"""
from __future__ import annotations

import argparse
import os
import signal
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


def one_generation(url: str, pid: str, seconds: float, seed: int, style: str | None = None,
                   server_pid: int | None = None) -> tuple[float, float, float]:
    """(seconds to the first notes, seconds to the version written, CPU seconds the studio's process
    spent meanwhile, 0 without ``server_pid``) for one generate request."""
    t, cpu = time.perf_counter(), cpu_seconds(server_pid)
    status, job = call("POST", f"{url}/api/pieces/{pid}/generate",
                       {**SAMPLING, "seconds": seconds, "seed": seed, "style": style})
    assert status == 202, job
    first = None
    while job["status"] in ("queued", "running"):
        job = call("GET", f"{url}/api/jobs/{job['id']}?since=0&wait=5")[1]
        if first is None and job["notes_total"]:
            first = time.perf_counter() - t
    assert job["status"] == "done", job
    return first or time.perf_counter() - t, time.perf_counter() - t, cpu_seconds(server_pid) - cpu


# ----- /proc: the studio's and the tune's CPU time, and the tune's process --------------------------


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()  # fields from 3 (state) on


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process (all its threads) so far; 0 for None."""
    if pid is None:
        return 0.0
    f = _stat(pid)
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def tune_child(server_pid: int) -> int:
    """The studio's tune process: its child that runs at a lower priority than the studio itself."""
    mine = int(_stat(server_pid)[16])
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                f = _stat(int(d.name))
            except OSError:
                continue
            if int(f[1]) == server_pid and int(f[16]) > mine:
                return int(d.name)
    raise RuntimeError("no lower-priority child of the studio: is a tune running?")


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


def latency(server, sid: str, a) -> None:
    """Generation with and without a tune running, interleaved: each round generates the same seed twice,
    once with the tune's process running and once with it paused (SIGSTOP, then SIGCONT), in alternating
    order, so the shared machine's other load falls on both alike. Per round: the ratio of the two."""
    url = server.url
    pid = call("POST", url + "/api/pieces", {"name": "bench"})[1]["id"]
    one_generation(url, pid, a.seconds, 99)  # warm-up
    t = call("POST", url + "/api/teach", {"set": sid, "style": "load", "steps": 5000, "minutes": 60})[1]
    t = wait_status(url, t, {"training"})
    while not t["points_total"]:  # its first step taken: the tune is at its steady work
        t = call("GET", f"{url}/api/teach/{t['id']}?since=0&wait=5")[1]
    child = tune_child(server.pid)
    nices = int(_stat(child)[16]), int(_stat(server.pid)[16])
    on, off, tune_share, tune_alone = [], [], [], []
    try:
        for r in range(a.rounds):
            for running in ((True, False) if r % 2 == 0 else (False, True)):
                os.kill(child, signal.SIGCONT if running else signal.SIGSTOP)
                c0, w0 = cpu_seconds(child), time.perf_counter()
                time.sleep(1.0)
                if running:  # the tune alone, between generations
                    tune_alone.append((cpu_seconds(child) - c0) / (time.perf_counter() - w0))
                c0, w0 = cpu_seconds(child), time.perf_counter()
                m = one_generation(url, pid, a.seconds, r, server_pid=server.pid)
                (on if running else off).append(m)
                if running:
                    tune_share.append((cpu_seconds(child) - c0) / (time.perf_counter() - w0))
    finally:
        os.kill(child, signal.SIGCONT)
    still = call("GET", f"{url}/api/teach/{t['id']}?since=0")[1]["status"]
    call("POST", f"{url}/api/teach/{t['id']}/cancel")
    wait_status(url, t, {"cancelled", "done", "failed"})
    med = statistics.median
    print(f"\ngeneration of {a.seconds:g} s of music, {a.rounds} rounds, each the same seed with the tune running "
          f"and paused, in alternating order (the tune still {still} at the end):")
    for k, what in ((0, "first notes (s)"), (1, "version written (s)"), (2, "studio CPU s")):
        ratios = [x[k] / y[k] for x, y in zip(on, off)]
        q1, q2, q3 = statistics.quantiles(ratios, n=4)
        print(f"  {what:20s} paused {med(y[k] for y in off):6.2f}   running {med(x[k] for x in on):6.2f}   "
              f"ratio per round: median {q2:.2f}x, quartiles {q1:.2f}-{q3:.2f} (all {min(ratios):.2f}-"
              f"{max(ratios):.2f})")
    print(f"  the tune's CPU while generation ran: median {med(tune_share):.2f} cores "
          f"(range {min(tune_share):.2f}-{max(tune_share):.2f}); between generations {med(tune_alone):.2f} "
          f"(range {min(tune_alone):.2f}-{max(tune_alone):.2f}); its nice {nices[0]}, the studio's {nices[1]}, "
          f"load average {os.getloadavg()[0]:.1f}")


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
    ap.add_argument("--rounds", type=int, default=10, help="latency rounds (each a pair: tune running, paused)")
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
                latency(server, upload_set(server.url, songs), a)
            if "teach" not in a.skip:
                teach_to_music(server.url, songs, a)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
