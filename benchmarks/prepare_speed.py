"""`prepare` with one worker vs reading the same files with mido alone.

The prepare figure is the whole job: worker start, reading, hashing, tokenizing, shard and .bin
writes, merge. The mido figure is only `mido.MidiFile(file=BytesIO(data))` per file (bytes read
from disk included), the usual first step of a pure-Python pipeline. Both are reported in wall
time and in CPU time (parent + workers); on a shared machine the CPU figures are the stable ones.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/prepare_speed.py [--songs 1500] [--bars 48] [--folder DIR]
"""
from __future__ import annotations

import argparse
import io
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from songgen import write_songs  # noqa: E402

from midigen.prepare import prepare  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--songs", type=int, default=1500, help="generated songs (ignored with --folder)")
    ap.add_argument("--bars", type=int, default=48)
    ap.add_argument("--folder", default=None, help="use this folder of MIDI files instead (e.g. the demo corpus)")
    ap.add_argument("--mido-files", type=int, default=100, help="files mido reads (it is slow; rate is per file)")
    a = ap.parse_args()
    import mido

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(a.folder) if a.folder else Path(tmp) / "songs"
        if not a.folder:
            write_songs(folder, a.songs, bars=a.bars)
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".mid", ".midi", ".kar"))

        sample = files[:: max(1, len(files) // a.mido_files)][: a.mido_files]
        t, c = time.perf_counter(), time.process_time()
        for p in sample:
            mido.MidiFile(file=io.BytesIO(p.read_bytes()))
        mido_rate = len(sample) / (time.perf_counter() - t)
        mido_cpu_rate = len(sample) / (time.process_time() - c)

        def cpu():
            kids = resource.getrusage(resource.RUSAGE_CHILDREN)
            return time.process_time() + kids.ru_utime + kids.ru_stime

        def run(src, out):
            t, c = time.perf_counter(), cpu()
            s = prepare([str(src)], Path(tmp) / out, workers=1, progress=False)
            return s, time.perf_counter() - t, cpu() - c

        # Fixed cost (worker start-up, imports, merge) measured on a handful of files, so the
        # steady-state rate (what a corpus of 100k+ files sees) can be reported beside the total.
        small = Path(tmp) / "small"
        small.mkdir()
        for p in files[:8]:
            (small / p.name).write_bytes(p.read_bytes())
        s0, wall0, cpu0 = run(small, "out0")
        s, wall, cpu_s = run(folder, "out")
        n = s["files_seen"]
        rate, cpu_rate = n / wall, n / cpu_s
        steady = (n - 8) / max(1e-9, wall - wall0)
        steady_cpu = (n - 8) / max(1e-9, cpu_s - cpu0)
        res = {
            "files": n, "kept": s["kept"], "notes": s["notes"], "tokens": s["tokens"],
            "notes_per_file": round(s["notes"] / max(1, s["kept"])),
            "prepare_1_worker": {
                "seconds": round(wall, 3), "files_per_s": round(rate, 1), "notes_per_s": round(s["notes"] / wall),
                "cpu_seconds": round(cpu_s, 3), "files_per_cpu_s": round(cpu_rate, 1),
                "fixed_seconds": round(wall0, 3), "steady_files_per_s": round(steady, 1),
                "steady_files_per_cpu_s": round(steady_cpu, 1),
                "steady_notes_per_s": round(s["notes"] / n * steady),
            },
            "mido_read": {"files": len(sample), "files_per_s": round(mido_rate, 1),
                          "files_per_cpu_s": round(mido_cpu_rate, 1)},
            "ratio_wall": round(rate / mido_rate, 1),
            "ratio_cpu": round(cpu_rate / mido_cpu_rate, 1),
            "ratio_steady_wall": round(steady / mido_rate, 1),
            "ratio_steady_cpu": round(steady_cpu / mido_cpu_rate, 1),
        }
    print(json.dumps(res, indent=1))
    print(f"prepare (1 worker) {rate:.0f} files/s ({steady:.0f} steady) vs mido read {mido_rate:.1f} files/s: "
          f"{res['ratio_wall']}x wall ({res['ratio_steady_wall']}x steady), {res['ratio_cpu']}x per CPU second "
          f"({res['ratio_steady_cpu']}x steady) (target >= 100x)", file=sys.stderr)


if __name__ == "__main__":
    main()
