"""`make demo`: the whole job on the embedded corpus — prepare, train, sample, evaluate.

Runs the same `midigen` commands a user would type, so the demo doubles as their walkthrough. Work
already done is reused: the prepared corpus, a finished model; a rerun only samples anew.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

DATA = Path("data/demo")
OUT = Path("out/demo")
RUN = OUT / "model"
CONFIG = Path("configs/demo.toml")


def _midigen(*args: str, capture: bool = False) -> str:
    cmd = [sys.executable, "-m", "midigen", *args]
    print(f"\n$ midigen {' '.join(args)}", flush=True)
    res = subprocess.run(cmd, stdout=subprocess.PIPE if capture else None, text=True)
    if res.returncode != 0:
        sys.exit(f"demo: `midigen {args[0]}` failed (exit {res.returncode}); rerun `make demo` to resume")
    return res.stdout or ""


def _last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


def _training_finished() -> bool:
    cfg = RUN / "last" / "config.json"
    if not cfg.exists():
        return False
    steps = tomllib.loads(CONFIG.read_text())["steps"]
    info = json.loads(cfg.read_text()).get("info", {})
    return int(info.get("step", -1)) >= int(steps)


def _one_per_style(seed: str) -> None:
    """One piece per style the model learned (the corpus's collections), steered with --style."""
    styles = _last_json(_midigen("info", "--ckpt", str(RUN), capture=True)).get("styles", [])
    if not styles:
        print("  (this model learned no styles: prepare the corpus again to get them)")
        return
    for style in styles:
        out = _midigen("sample", "--ckpt", str(RUN), "--style", style, "--seconds", "30", "--seed", seed,
                       "--out", str(OUT / "styles" / style), "--wav", capture=True)
        print(out, end="")


def main() -> int:
    t0 = time.time()
    if not CONFIG.exists():
        sys.exit("demo: run `make demo` from the repository root (configs/demo.toml not found)")
    if (DATA / "meta.json").exists():
        print(f"[1/4] corpus: reusing {DATA}")
    else:
        print("[1/4] preparing the embedded corpus (music21: Bach chorales and fiddle tunes, exported once and cached)")
        _midigen("prepare", "demo", "--out", str(DATA), "--val-frac", "0.05", "--test-frac", "0.05")

    if _training_finished():
        print(f"[2/4] model: reusing {RUN} (delete it to train again)")
    else:
        print("[2/4] training configs/demo.toml on the CPU (about 8 minutes on 2 cores)")
        resume = ["--resume"] if (RUN / "last" / "train_state.pt").exists() else []
        _midigen("train", str(CONFIG), f"--data={DATA}", f"--out={RUN}", *resume)

    print("[3/4] sampling 3 pieces of about 30 seconds")
    seed = str(int(time.time()) % 100_000)
    out = _midigen("sample", "--ckpt", str(RUN), "--num-samples", "3", "--seconds", "30", "--seed", seed,
                   "--out", str(OUT), "--wav", "--png", capture=True)
    print(out, end="")
    written = [line.split()[-1] for line in out.splitlines() if line.strip().endswith((".mid", ".wav", ".png"))]
    print("[3/4] ... and one piece per style")
    _one_per_style(seed)

    print("[4/4] evaluating on the test split")
    ev = _last_json(_midigen("eval", "--ckpt", str(RUN), "--data", str(DATA), "--split", "test", capture=True))
    ratio = ev["bits_per_note"] / ev["ngram_bits_per_note"] if ev.get("ngram_bits_per_note") else float("nan")

    mids = sorted(str(p) for p in OUT.glob("*.mid"))
    print("\n" + "=" * 72)
    print("midigen demo finished in %.1f minutes" % ((time.time() - t0) / 60))
    print(f"  corpus        {DATA}/ (train.bin, val.bin, test.bin, meta.json, files.jsonl)")
    print(f"  model         {RUN}/ (best/, last/, log.jsonl, loss.png)")
    print(f"  new pieces    {OUT}/ (.mid, .wav, .png) — {len(mids)} MIDI files there in all; "
          f"one per style in {OUT}/styles/")
    print(f"  test bits/note: model {ev.get('bits_per_note', float('nan')):.3f}, "
          f"{ev.get('ngram_order', 5)}-gram baseline {ev.get('ngram_bits_per_note', float('nan')):.3f} "
          f"(ratio {ratio:.2f}; lower is better)")
    wavs = [w for w in written if w.endswith(".wav")]
    print("  listen:       " + (wavs[0] if wavs else f"{OUT}/*.wav") + "  (any audio player), or")
    print(f"                midigen sample --ckpt {RUN} --seconds 30 --play")
    print("  more music:   midigen sample --ckpt out/demo/model --num-samples 4 --instruments piano --tempo 90 --wav")
    print("=" * 72)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
