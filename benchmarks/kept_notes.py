"""Kept notes in the written files: what infill, arrange and sample write, read back as mido reads it.

Makes the song of tests/test_kept_notes.py (several tracks of one program, two drum tracks on channel
10, one pitch repeated across both span edges, a span and a continuation point 3 ticks after a chord),
runs the real commands of each ``--repo`` (a midigen checkout: give an older one beside this one to see
both side by side) with one checkpoint, and prints per command: the song's kept notes that did not come
back identical, note-ons that start while the same pitch sounds on that channel, and new notes before
the continuation point.

    python benchmarks/kept_notes.py --ckpt out/demo/model [--repo OLD_CHECKOUT --repo .]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from midiread import PIANO, POINT, SPAN, TICKS_PER_SECOND, mido_notes, tricky_song  # noqa: E402

ADDS, BASSES = (73, 40, 71, 56, 24, 41, 42), (32, 33, 34, 35)


def run(repo: Path, args: list, out: Path) -> list[Path]:
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "midigen", *map(str, args), "--out", str(out)], cwd=repo, env=env,
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{repo}: midigen {args[0]} failed: {r.stderr[-500:]}")
    return sorted(out.glob("*.mid"))


def figures(files: list[Path], song: bytes, kept, point: float | None) -> str:
    before, _ = mido_notes(song)
    want = Counter({n: c for n, c in before.items() if kept(n[3] / TICKS_PER_SECOND, n[0], n[1] == 9)})
    changed = clashes = ons = early = 0
    for f in files:
        after, c = mido_notes(f.read_bytes())
        changed += sum((want - after).values())
        clashes += c
        ons += sum(after.values())
        if point is not None:
            early += sum(n for k, n in (after - want).items() if k[3] < point * TICKS_PER_SECOND)
    line = (f"{len(files)} files, kept notes changed {changed}/{sum(want.values()) * len(files)}, "
            f"note-ons over a sounding one {clashes}/{ons}")
    return line + (f", new notes before the point {early}" if point is not None else "")


def known(ckpt: str) -> tuple[int, int]:
    from midigen.model.checkpoint import capabilities, load_checkpoint

    _, codec, config = load_checkpoint(ckpt, "cpu")
    insts = set(capabilities(config, codec)["instruments"])
    return next(b for b in BASSES if b in insts), next(a for a in ADDS if a in insts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--repo", action="append", default=None, help="a midigen checkout (repeat; default: this one)")
    a = p.parse_args()
    bass, add = known(a.ckpt)
    with tempfile.TemporaryDirectory() as tmp:
        song = Path(tmp) / "tricky.mid"
        song.write_bytes(tricky_song(bass))
        data, (lo, hi) = song.read_bytes(), SPAN
        tasks = [
            (f"infill --start {lo} --end {hi}", ["infill", song, "--start", lo, "--end", hi],
             lambda s, prog, drums: not lo <= s < hi, None),
            (f"arrange --add {add} --keep piano", ["arrange", song, "--add", add, "--keep", "piano"],
             lambda s, prog, drums: not drums and prog == PIANO, None),
            (f"sample --prompt --prompt-seconds {POINT}", ["sample", "--prompt", song, "--prompt-seconds", POINT,
                                                          "--seconds", 8], lambda s, prog, drums: s < POINT, POINT),
            ("sample --seconds 20", ["sample", "--seconds", 20], lambda s, prog, drums: False, None),
        ]
        for repo in [Path(r).resolve() for r in a.repo or [ROOT]]:
            print(f"{repo}:")
            for k, (name, args, kept, point) in enumerate(tasks):
                out = Path(tmp) / f"{repo.name}-{k}"
                files = run(repo, [*args, "--ckpt", a.ckpt, "--num-samples", 4, "--seed", 1], out)
                print(f"  {name:<48} {figures(files, data, kept, point)}", flush=True)


if __name__ == "__main__":
    main()
