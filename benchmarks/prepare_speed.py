"""`prepare` with one worker vs reading the same files with mido alone, side by side in one run.

The prepare figure is the whole job: worker start-up, reading files, hashing, parsing, tokenizing,
shard writes, the merge into train/val/test .bin, files.jsonl and meta.json. The mido figure is only
`mido.MidiFile(file=BytesIO(path.read_bytes()))` per file, the first step of a pure-Python pipeline.

Two prepare runs share the same fixed costs (process start, imports, loading the compiled encoder,
the final fsyncs): one on a quarter of the songs, one on all of them. Their difference is the
steady-state rate, what a corpus of 100k+ files (Lakh: 178k) sees; the full run is reported whole
too. Each round times mido and both prepare runs back to back, and the median round is reported
(the machine is shared); CPU time (parent + worker) is reported beside wall time.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/prepare_speed.py [--songs 12000] [--bars 48] [--repeat 5] [--folder DIR]

With ``--compare REV`` it instead times whole ``python -m midigen prepare`` processes (one worker) of
this tree against git revision REV (``git archive`` into a temp dir) on the same files, alternating
old/new for ``--pairs`` pairs, and prints each median and the median of the per-pair ratios (wall
time, and CPU time of the process and its worker, which a busy machine disturbs less), then
the rounds above (``--repeat 0`` skips them). Both trees are byte-compiled first, as an install is:

    .venv/bin/python benchmarks/prepare_speed.py --compare c3c769f --songs 4000 --pairs 7

``--no-chords`` runs this tree without chords (codec v3, as REV wrote), so the chords' share shows;
``--before REV2`` times a third revision in the same rotation, run as this tree is (this tree before a
change).

With ``--chords-cost`` it times prepare (in this process, one worker) with chords (codec v4: every song
labelled, its CHORD tokens written) and without (``chords=False``, codec v3) on the same files,
alternating for ``--pairs`` pairs, and prints the median ratio and the CPU time a file's chords take
(the compiled pass prepare runs, ``chords_jit`` on the encoder's own notes, and the numpy reference,
``Codec.add_chords``):

    .venv/bin/python benchmarks/prepare_speed.py --chords-cost --songs 2000 --pairs 5
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from songgen import write_songs  # noqa: E402

from midigen.data.prepare import prepare  # noqa: E402


def write_part(folder, first: int, n: int, bars: int) -> None:
    write_songs(folder, n, seed0=first, bars=bars)


def cpu_seconds() -> float:
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def stages(files) -> dict:
    """Where a worker's time goes: each step of the per-file path timed alone (best of 3 passes)."""
    import hashlib

    import numpy as np

    from midigen.music import codec_jit
    from midigen.music.codec import Codec
    from midigen.data.sources import read_file

    codec = Codec()
    fast = codec_jit.CompiledEncoder(codec) if codec_jit.available(codec) else None
    paths = [str(p) for p in files]
    datas = [read_file(p) for p in paths]

    def best(fn, items) -> float:
        t_best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for x in items:
                fn(x)
            t_best = min(t_best, time.perf_counter() - t)
        return round(t_best / len(items) * 1e6, 1)

    out = {
        "read_file": best(read_file, paths),
        "blake2b_hash": best(lambda d: hashlib.blake2b(d, digest_size=16).hexdigest(), datas),
        "parse (sanitize + symusic)": best(codec.read_midi, datas),
    }
    if fast is not None:
        scores = [codec.read_midi(d) for d in datas[:200]]
        states = [np.frombuffer(s.__getstate__(), dtype=np.uint8) for s in scores]
        buf = np.empty(max(len(b) for b in states) + 140, dtype=np.uint16)
        facts, notes = np.zeros(15), np.empty((3, max(len(b) for b in states) // 12 + 1))
        out["score.__getstate__"] = best(lambda s: s.__getstate__(), scores)
        out["compiled encode"] = best(lambda b: codec_jit.encode_state(b, buf, 0, fast._consts, *fast._tables, facts, notes),
                                      states)
    return out


def build_corpus(tmp: Path, songs: int, bars: int, folder: str | None) -> tuple[Path, Path]:
    """The files both runs read, in two parts (a quarter, the rest): generated songs or ``folder``'s."""
    quarter = tmp / "songs" / "a"
    rest = tmp / "songs" / "b"
    if folder:  # your files, copied into the two parts
        own = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in (".mid", ".midi", ".kar"))
        if not own:
            raise SystemExit(f"no MIDI files in {folder}")
        n_quarter = max(1, len(own) // 4)
        for i, p in enumerate(own):
            dest = (quarter if i < n_quarter else rest) / f"{i:07d}{p.suffix.lower()}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dest)
    else:  # generated in parallel: ~10 ms a song
        from concurrent.futures import ProcessPoolExecutor

        n_quarter, step = max(1, songs // 4), 500
        jobs = [(quarter, i, min(step, n_quarter - i)) for i in range(0, n_quarter, step)]
        jobs += [(rest, i, min(step, songs - i)) for i in range(n_quarter, songs, step)]
        with ProcessPoolExecutor() as ex:
            list(ex.map(write_part, *zip(*jobs), [bars] * len(jobs)))
    return quarter, rest


def _tree(rev: str, folder: Path) -> Path:
    """git revision ``rev``'s package, ``git archive``d into ``folder``."""
    folder.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "midigen"], check=True, capture_output=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tf:
        tf.extractall(folder, filter="data")
    return folder


def _compile(tree: Path) -> None:
    """Byte-compile a tree's package, as ``pip install`` does. Without it, where bytecode is not
    written (PYTHONDONTWRITEBYTECODE=1, as on the development machine), every run compiles each
    module it imports from source, in the parent and again in the worker: a cost that grows with the
    package, no installed copy pays, and that measured ~0.05 s of this tree's fixed cost."""
    import compileall

    compileall.compile_dir(str(tree / "midigen"), quiet=1)


def compare_trees(ref: str, songs: Path, pairs: int, no_chords: bool = False, before: str | None = None) -> dict:
    """Whole-process ``python -m midigen prepare SONGS --workers 1`` of git revision ``ref`` against
    this tree, on the same files, alternating old/new for ``pairs`` pairs after one untimed run of
    each (numba compiles and caches its kernels there). Each tree runs with PYTHONPATH at itself
    and its own folder as the working directory, so ``-m midigen`` finds that tree's package (the
    old flat layout runs the same way). ``no_chords``: this tree runs with ``--no-chords`` (codec v3,
    what ``ref`` wrote), so what the chords cost is left out. ``before``: a third revision (this
    tree's own before some change) timed in the same rotation, run as this tree is.
    -> the wall and CPU times, their medians and the median ratios to ``ref``."""
    trees = {"old": _tree(ref, songs.parent / "old-tree"), "new": ROOT}
    if before:
        trees["before"] = _tree(before, songs.parent / "before-tree")
    for tree in trees.values():  # as an install has it (pip compiles on install): see _compile
        _compile(tree)
    extra = {name: ["--no-chords"] if no_chords else [] for name in ("new", "before")}

    def run(name: str) -> tuple[float, float]:
        out = songs.parent / f"out-{name}"
        shutil.rmtree(out, ignore_errors=True)
        env = dict(os.environ, PYTHONPATH=str(trees[name]))
        t, c = time.perf_counter(), cpu_seconds()
        subprocess.run([sys.executable, "-m", "midigen", "prepare", str(songs), "--out", str(out), "--workers", "1",
                        *extra.get(name, [])], env=env, cwd=trees[name], check=True, capture_output=True)
        return time.perf_counter() - t, cpu_seconds() - c

    for name in trees:
        run(name)
    names = list(trees)
    times: dict = {name: [] for name in names}
    cpu: dict = {name: [] for name in names}
    for i in range(pairs):
        for name in (names if i % 2 == 0 else names[::-1]):
            wall, used = run(name)
            times[name].append(wall)
            cpu[name].append(used)
    tokens = {name: sum((songs.parent / f"out-{name}" / f"{s}.bin").stat().st_size // 2 for s in ("train", "val", "test"))
              for name in trees}  # not compared token for token: the codec's vocabulary may differ between trees
    ratios = [n / o for n, o in zip(times["new"], times["old"])]
    cpu_ratios = [n / o for n, o in zip(cpu["new"], cpu["old"])]
    return {"ref": ref, "pairs": pairs, "files": sum(1 for p in songs.rglob("*") if p.is_file()),
            "old_seconds": [round(x, 3) for x in times["old"]], "new_seconds": [round(x, 3) for x in times["new"]],
            "old_median_s": round(statistics.median(times["old"]), 3),
            "new_median_s": round(statistics.median(times["new"]), 3),
            "ratio_each_pair": [round(r, 3) for r in ratios], "median_ratio_new_over_old": round(statistics.median(ratios), 3),
            "old_cpu_seconds": [round(x, 3) for x in cpu["old"]], "new_cpu_seconds": [round(x, 3) for x in cpu["new"]],
            "cpu_ratio_each_pair": [round(r, 3) for r in cpu_ratios],
            "median_cpu_ratio_new_over_old": round(statistics.median(cpu_ratios), 3),
            "old_tokens": tokens["old"], "new_tokens": tokens["new"], "no_chords": no_chords,
            **(_before_figures(before, times, cpu) if before else {}), "load_avg": os.getloadavg()[0]}


def _before_figures(rev: str, times: dict, cpu: dict) -> dict:
    ratios = [b / o for b, o in zip(cpu["before"], cpu["old"])]
    return {"before": rev, "before_seconds": [round(x, 3) for x in times["before"]],
            "before_cpu_seconds": [round(x, 3) for x in cpu["before"]],
            "median_cpu_ratio_before_over_old": round(statistics.median(ratios), 3),
            "median_cpu_ratio_new_over_before": round(statistics.median(
                [n / b for n, b in zip(cpu["new"], cpu["before"])]), 3)}


def chords_cost(songs: Path, pairs: int) -> dict:
    """prepare with chords against prepare without, same files, one worker, alternating (after one
    untimed run of each); plus the per-file cost of labelling and inserting chords, timed alone."""
    import numpy as np

    from midigen.music.codec import Codec

    def run(chords: bool) -> tuple[float, float, dict]:
        out = songs.parent / f"out-chords-{chords}"
        shutil.rmtree(out, ignore_errors=True)
        t, c = time.perf_counter(), cpu_seconds()
        s = prepare([str(songs)], out, workers=1, progress=False, chords=chords)
        return time.perf_counter() - t, cpu_seconds() - c, s

    run(True), run(False)
    times: dict = {True: [], False: []}
    cpu: dict = {True: [], False: []}
    summary = {}
    for i in range(pairs):
        for chords in ((True, False) if i % 2 == 0 else (False, True)):
            wall, used, summary[chords] = run(chords)
            times[chords].append(wall)
            cpu[chords].append(used)
    ratios = [a / b for a, b in zip(times[True], times[False])]
    cpu_ratios = [a / b for a, b in zip(cpu[True], cpu[False])]
    from midigen.music import chords_jit, codec_jit

    files = sorted(p for p in songs.rglob("*") if p.is_file())[:300]
    codec = Codec()
    codec_jit.available(codec)  # as prepare's workers do: the compiled parts, once they pass their checks
    scores = [codec.read_midi(p.read_bytes()) for p in files]
    base = [codec.encode_base([s])[0] for s in scores]
    v3 = codec_jit.CompiledEncoder(Codec(version=3))
    given = []  # what prepare's encoder hands the chord pass: its stream, its pitched notes, their count, last step
    for s in scores:
        tokens = v3.encode_one(s)[0].copy()
        given.append((tokens, v3._notes.copy(), int(v3._facts[13]), int(v3._facts[14])))

    def per_file(add, items) -> float:
        """CPU seconds a file of ``add`` (best of 3 passes over the files)."""
        add(items[0])
        best = float("inf")
        for _ in range(3):
            t = time.process_time()
            for x in items:
                add(x)
            best = min(best, (time.process_time() - t) / len(items))
        return best

    fast = chords_jit.CompiledChords(codec)
    compiled = per_file(lambda g: fast.add_for_notes(*g), given)  # what prepare runs
    reference = per_file(codec.add_chords, base)  # numpy (with the compiled profile sums and Viterbi)
    return {"files": summary[True]["files_seen"], "pairs": pairs,
            "with_chords_s": [round(x, 3) for x in times[True]], "without_chords_s": [round(x, 3) for x in times[False]],
            "median_with_s": round(statistics.median(times[True]), 3),
            "median_without_s": round(statistics.median(times[False]), 3),
            "ratio_each_pair": [round(r, 3) for r in ratios], "median_ratio_with_over_without": round(statistics.median(ratios), 3),
            "cpu_ratio_each_pair": [round(r, 3) for r in cpu_ratios],
            "median_cpu_ratio_with_over_without": round(statistics.median(cpu_ratios), 3),
            "tokens_with": summary[True]["tokens"], "tokens_without": summary[False]["tokens"],
            "token_ratio": round(summary[True]["tokens"] / summary[False]["tokens"], 4),
            "label_and_insert_us_per_file": round(compiled * 1e6, 1),
            "numpy_reference_us_per_file": round(reference * 1e6, 1),
            "notes_per_file": round(float(np.mean([codec.count_notes(b) for b in base]))),
            "load_avg": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--songs", type=int, default=12000, help="generated multi-track GM songs")
    ap.add_argument("--bars", type=int, default=48)
    ap.add_argument("--folder", default=None, help="your own MIDI files instead of generated songs (copied, split in two)")
    ap.add_argument("--repeat", type=int, default=5,
                    help="rounds (mido, then both prepare runs); the median counts; 0 with --compare: only that")
    ap.add_argument("--mido-files", type=int, default=100, help="files mido reads (it is slow; rate is per file)")
    ap.add_argument("--compare", default=None, metavar="REV",
                    help="instead: whole-process prepare of this tree against git revision REV, alternating")
    ap.add_argument("--pairs", type=int, default=5, help="--compare: timed old/new pairs; the medians count")
    ap.add_argument("--no-chords", action="store_true",
                    help="--compare: this tree prepares without chords (codec v3), leaving their cost out")
    ap.add_argument("--before", default=None, metavar="REV",
                    help="--compare: also time revision REV in the same rotation, run as this tree is")
    ap.add_argument("--chords-cost", action="store_true",
                    help="instead: prepare with chords (codec v4) against without (v3), alternating --pairs pairs")
    a = ap.parse_args()
    import mido

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        quarter, rest = build_corpus(tmp, a.songs, a.bars, a.folder)
        if a.chords_cost:
            res = chords_cost(tmp / "songs", a.pairs)
            print(json.dumps(res, indent=1))
            print(f"prepare, 1 worker, {res['files']} files: {res['median_with_s']} s with chords vs "
                  f"{res['median_without_s']} s without (medians of {res['pairs']} alternating pairs); median ratio "
                  f"{res['median_ratio_with_over_without']}x (CPU time {res['median_cpu_ratio_with_over_without']}x); labelling and inserting chords "
                  f"{res['label_and_insert_us_per_file']} us CPU per file compiled "
                  f"({res['numpy_reference_us_per_file']} us in numpy); tokens x{res['token_ratio']}", file=sys.stderr)
            return
        compared = compare_trees(a.compare, tmp / "songs", a.pairs, a.no_chords, a.before) if a.compare else None
        if compared:
            print(json.dumps(compared, indent=1), flush=True)
            if a.repeat < 1:
                return print_compared(compared)
        files = sorted(p for p in (tmp / "songs").rglob("*") if p.is_file())

        sample = files[:: max(1, len(files) // a.mido_files)][: a.mido_files]

        def mido_read():
            t, c = time.perf_counter(), time.process_time()
            for p in sample:
                try:
                    mido.MidiFile(file=io.BytesIO(p.read_bytes()))
                except Exception:  # a broken file in --folder: mido gives up on it, which costs time too
                    pass
            return (time.perf_counter() - t) / len(sample), (time.process_time() - c) / len(sample)

        def run(srcs):
            out = tmp / "out"
            shutil.rmtree(out, ignore_errors=True)
            t, c = time.perf_counter(), cpu_seconds()
            s = prepare([str(x) for x in srcs], out, workers=1, progress=False)
            return s, time.perf_counter() - t, cpu_seconds() - c

        # Rounds interleave mido and prepare, so a slow spell of the shared machine hits both sides
        # of a ratio; the median round is reported.
        rounds = []
        for _ in range(a.repeat):
            m_wall, m_cpu = mido_read()
            s_part, wall_part, cpu_part = run([quarter])
            s, wall, cpu = run([quarter, rest])
            n, n_part = s["files_seen"], s_part["files_seen"]
            rounds.append({
                "mido_wall": m_wall, "mido_cpu": m_cpu, "wall": wall, "cpu": cpu,
                "steady_wall": (wall - wall_part) / (n - n_part), "steady_cpu": (cpu - cpu_part) / (n - n_part),
            })
        for r in rounds:
            r["ratio_steady_wall"] = r["mido_wall"] / r["steady_wall"]
            r["ratio_steady_cpu"] = r["mido_cpu"] / r["steady_cpu"]
            r["ratio_whole_run_wall"] = r["mido_wall"] * n / r["wall"]
            r["ratio_whole_run_cpu"] = r["mido_cpu"] * n / r["cpu"]
        med = sorted(rounds, key=lambda r: r["ratio_steady_wall"])[len(rounds) // 2]
        steady_wall, wall = med["steady_wall"], med["wall"]
        res = {
            "files": n, "kept": s["kept"], "notes": s["notes"], "tokens": s["tokens"],
            "notes_per_file": round(s["notes"] / max(1, s["kept"])),
            "bytes_per_file": round(sum(p.stat().st_size for p in files) / len(files)),
            "rounds": len(rounds),
            "median_round": {
                "prepare_whole_run_seconds": round(wall, 3),
                "prepare_whole_run_files_per_s": round(n / wall, 1),
                "prepare_fixed_seconds": round(wall - n * steady_wall, 3),
                "prepare_steady_files_per_s": round(1 / steady_wall, 1),
                "prepare_steady_files_per_cpu_s": round(1 / med["steady_cpu"], 1),
                "prepare_steady_notes_per_s": round(s["notes"] / n / steady_wall),
                "prepare_steady_us_per_file": round(steady_wall * 1e6, 1),
                "mido_files_per_s": round(1 / med["mido_wall"], 1),
                "mido_ms_per_file": round(med["mido_wall"] * 1e3, 2),
            },
            **{k: round(med[k], 1) for k in ("ratio_steady_wall", "ratio_steady_cpu", "ratio_whole_run_wall",
                                             "ratio_whole_run_cpu")},
            "ratio_steady_wall_each_round": [round(r["ratio_steady_wall"], 1) for r in rounds],
            "ratio_whole_run_wall_each_round": [round(r["ratio_whole_run_wall"], 1) for r in rounds],
        }
        res["stages_us_per_file"] = stages(files[: min(len(files), 1000)])
    if n < 5000:
        res["note"] = "fewer than 5,000 files: the steady-state figures are mostly noise at this size"
    print(json.dumps(res, indent=1))
    print(f"prepare, 1 worker: {1 / steady_wall:.0f} files/s steady ({n / wall:.0f} over the whole {n}-file run) "
          f"vs mido read {1 / med['mido_wall']:.1f} files/s: {res['ratio_steady_wall']}x steady, "
          f"{res['ratio_whole_run_wall']}x whole run; per CPU second {res['ratio_steady_cpu']}x steady "
          f"(target >= 100x)", file=sys.stderr)
    if compared:
        print_compared(compared)


def print_compared(res: dict) -> None:
    how = " (--no-chords here)" if res.get("no_chords") else ""
    print(f"prepare, whole process, {res['files']} files, 1 worker: {res['new_median_s']} s here{how} vs "
          f"{res['old_median_s']} s at {res['ref']} (medians of {res['pairs']} alternating pairs); median ratio "
          f"{res['median_ratio_new_over_old']}x (target <= 1.05x); CPU seconds (parent + workers) median ratio "
          f"{res['median_cpu_ratio_new_over_old']}x", file=sys.stderr)
    if res.get("before"):
        print(f"  and {res['before']} in the same rotation: CPU median ratio {res['median_cpu_ratio_before_over_old']}x "
              f"to {res['ref']}; this tree / {res['before']}: {res['median_cpu_ratio_new_over_before']}x", file=sys.stderr)


if __name__ == "__main__":
    main()
