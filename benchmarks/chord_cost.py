"""What chord tokens cost (issue 17): tokens per note with and without them, and bits per note over the
note and duration tokens only for a codec v4 model (chords in the stream) and a v3 model (none) trained
alike on the same files, side by side in one run; the v4 model's chord tokens' own bits apart.

The same MIDI files are prepared twice (``prepare(chords=True)`` = v4, ``chords=False`` = v3; the split
is by content hash, so both test splits hold the same songs), a model is trained on each with the same
config, seed and steps, and each is scored on its test split with ``midigen eval --by-kind``. Bits over
NOTE and DV tokens only are comparable across the two: the same notes, the same targets.

    .venv/bin/python benchmarks/chord_cost.py                      # the music21 demo corpus, test config
    .venv/bin/python benchmarks/chord_cost.py --config configs/demo.toml --steps 3000   # the demo's model

Default: ``configs/test.toml`` for 200 steps, a tiny model (2 x 128): its figures say how the
bookkeeping comes out, not what a real model gains; pass the demo config for that (about 11 minutes
per model on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from midigen.data.corpus import demo_corpus_dir  # noqa: E402
from midigen.data.prepare import prepare  # noqa: E402


def _midigen(*args) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "midigen", *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                       text=True)
    if r.returncode:
        raise SystemExit(f"midigen {args[0]} failed: {r.stderr[-2000:]}")
    return r.stdout


def one(tmp: Path, source: Path, chords: bool, config: Path, steps: int) -> dict:
    name = "v4" if chords else "v3"
    data, run = tmp / f"data-{name}", tmp / f"run-{name}"
    prepare([str(source)], data, workers=1, val_frac=0.05, test_frac=0.05, progress=False, chords=chords)
    _midigen("train", config, "--data", data, "--out", run, "--steps", steps, "--edit-fraction", "0")
    ev = json.loads(_midigen("eval", "--ckpt", run, "--data", data, "--split", "test", "--by-kind"))
    return {"bits_per_note": ev["bits_per_note"], "tokens": ev["tokens"], "notes": ev["notes"], **ev["by_kind"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=None, help="a folder of MIDI files (default: the demo corpus, 1,143 pieces)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "test.toml"))
    ap.add_argument("--steps", type=int, default=200)
    a = ap.parse_args()
    source = Path(a.source) if a.source else demo_corpus_dir(progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        v4 = one(Path(tmp), source, True, Path(a.config), a.steps)
        v3 = one(Path(tmp), source, False, Path(a.config), a.steps)
    res = {"config": a.config, "steps": a.steps, "source": str(source), "v4": v4, "v3": v3,
           "note_token_bits_ratio_v4_over_v3": v4["bits_per_note_note_tokens"] / v3["bits_per_note_note_tokens"]}
    print(json.dumps(res, indent=1))
    print(f"tokens/note: {v4['tokens_per_note']:.3f} with chords, {v4['tokens_per_note_without_chords']:.3f} without "
          f"(+{100 * (v4['tokens_per_note'] / v4['tokens_per_note_without_chords'] - 1):.1f}%); bits/note over note and "
          f"duration tokens: v4 {v4['bits_per_note_note_tokens']:.3f} vs v3 {v3['bits_per_note_note_tokens']:.3f} "
          f"({res['note_token_bits_ratio_v4_over_v3']:.3f}x); the chords' own bits: "
          f"{v4['bits_per_note_chord_tokens']:.3f} per note ({v4['bits_per_chord']:.2f} per chord); all bits/note: "
          f"v4 {v4['bits_per_note']:.3f}, v3 {v3['bits_per_note']:.3f}", file=sys.stderr)


if __name__ == "__main__":
    main()
