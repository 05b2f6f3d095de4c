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

from midigen.data.dataset import Dataset
from midigen.model.checkpoint import capabilities, load_checkpoint
from midigen.music.codec import CODEC_VERSION, DRUMS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

DATA = Path("data/demo")
OUT = Path("out/demo")
RUN = OUT / "model"
CONFIG = Path("configs/demo.toml")


def _midigen(*args: str, capture: bool = False, fatal: bool = True) -> str:
    cmd = [sys.executable, "-m", "midigen", *args]
    print(f"\n$ midigen {' '.join(args)}", flush=True)
    res = subprocess.run(cmd, stdout=subprocess.PIPE if capture else None, text=True)
    if res.returncode != 0:
        if not fatal:  # an optional step: say so and go on
            print(f"demo: `midigen {args[0]}` failed (exit {res.returncode}); going on", flush=True)
            return ""
        sys.exit(f"demo: `midigen {args[0]}` failed (exit {res.returncode}); rerun `make demo` to resume")
    return res.stdout or ""


def _last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


def _codec_version(path: Path) -> int | None:
    """The codec version a dataset's meta.json or a checkpoint's codec.json records (None: none there)."""
    try:
        d = json.loads(path.read_text())
        return int((d["codec"] if "codec" in d else d)["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _set_aside_outdated() -> None:
    """A corpus or model made with an older codec is moved aside (never deleted), so this run makes
    current ones: a new codec changes what training sequences look like (v3: controls first, edits
    interleave the kept notes)."""
    for path, record in ((DATA, DATA / "meta.json"), (RUN, RUN / "last" / "codec.json")):
        version = _codec_version(record)
        if version is not None and version < CODEC_VERSION:
            aside = path.with_name(f"{path.name}-codec-v{version}")
            while aside.exists():
                aside = aside.with_name(aside.name + "-old")
            path.rename(aside)
            print(f"demo: {path} was made with codec v{version}; moved to {aside} (current: v{CODEC_VERSION})")


def _training_finished() -> bool:
    cfg = RUN / "last" / "config.json"
    if not cfg.exists():
        return False
    steps = tomllib.loads(CONFIG.read_text())["steps"]
    info = json.loads(cfg.read_text()).get("info", {})
    return int(info.get("step", -1)) >= int(steps)


def _harmony_source(path: Path) -> tuple[str, str] | None:
    """Write a test-split piece with several parts to ``path``; (its top part, the others) as flags."""
    import numpy as np

    sp = Dataset(DATA).split("test")
    codec = sp.codec
    for a, b in zip(sp.starts, sp.ends):
        score = codec.decode(np.asarray(sp.tokens[a:b]))
        parts = {(128 if t.is_drum else int(t.program)): t for t in score.tracks if t.note_num() and not t.is_drum}
        if len(parts) >= 2:
            top = max(parts, key=lambda p: float(np.mean(parts[p].notes.numpy()["pitch"])))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(bytes(score.dumps_midi()))
            others = [str(p) for p in parts if p != top and p != DRUMS]
            return str(top), ",".join(others)
    return None


def _edit_demo(written: list[str], seed: str) -> list[str]:
    """`midigen infill` on the first new piece and `midigen arrange` on a test piece's top part."""
    _, codec, config = load_checkpoint(RUN, "cpu")
    if not capabilities(config, codec)["can_edit"]:
        return [f"editing: skipped ({RUN} was trained without edit_fraction; delete it and rerun to retrain)"]
    out, lines = OUT / "edit", []
    mids = [w for w in written if w.endswith(".mid")]
    if mids:
        res = _midigen("infill", "--ckpt", str(RUN), mids[0], "--bars", "3-4", "--seed", seed, "--out", str(out),
                       "--wav", "--png", capture=True, fatal=False)
        print(res, end="")
        lines.append("infilled      " + ", ".join(json.loads(x)["file"] for x in res.splitlines() if x.startswith("{")))
    lines.append(_form_demo(seed))
    source = _harmony_source(out / "harmony-source.mid")
    if source is None:
        lines.append("harmonized:   skipped (no test piece with two or more parts in this corpus)")
        return lines
    top, others = source
    res = _midigen("arrange", "--ckpt", str(RUN), str(out / "harmony-source.mid"), "--keep", top, "--add", others,
                   "--seed", seed, "--out", str(out), "--wav", "--png", capture=True, fatal=False)
    print(res, end="")
    lines.append("harmonized    " + ", ".join(json.loads(x)["file"] for x in res.splitlines() if x.startswith("{")))
    return lines


def _form_demo(seed: str) -> str:
    """`midigen sample --form`: one song whose sections return (a few seconds on a CPU)."""
    res = _midigen("sample", "--ckpt", str(RUN), "--form", "A:4 B:4 A:4 B:4 A:4", "--seed", seed,
                   "--out", str(OUT / "form"), "--wav", "--png", capture=True, fatal=False)
    print(res, end="")
    songs = [json.loads(x) for x in res.splitlines() if x.startswith("{")]
    files = [s[k] for s in songs for k in ("midi", "wav", "png") if s.get(k)]
    return "with a form   " + (", ".join(files) or "failed")


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


DEMO_CHORDS = "C Am F G"


def _on_chords(seed: str) -> list[str]:
    """One piece written on ``DEMO_CHORDS`` (the grammar forces the chart bar by bar; the model writes the
    notes), its piano roll drawn; the files written."""
    out = _midigen("sample", "--ckpt", str(RUN), "--chords", DEMO_CHORDS, "--seconds", "30", "--seed", seed,
                   "--out", str(OUT / "chords"), "--wav", "--png", capture=True, fatal=False)
    print(out, end="")
    return [line.split()[-1] for line in out.splitlines() if line.strip().endswith((".mid", ".wav", ".png"))]


def main() -> int:
    t0 = time.time()
    if not CONFIG.exists():
        sys.exit("demo: run `make demo` from the repository root (configs/demo.toml not found)")
    _set_aside_outdated()
    if (DATA / "meta.json").exists():
        print(f"[1/5] corpus: reusing {DATA}")
    else:
        print("[1/5] preparing the embedded corpus (music21: chorales, Palestrina, string quartets, fiddle tunes with and without a band; exported once and cached)")
        _midigen("prepare", "demo", "--out", str(DATA), "--val-frac", "0.05", "--test-frac", "0.05")

    if _training_finished():
        print(f"[2/5] model: reusing {RUN} (delete it to train again)")
    else:
        print("[2/5] training configs/demo.toml on the CPU (about 11 minutes on 2 cores)")
        resume = ["--resume"] if (RUN / "last" / "train_state.pt").exists() else []
        _midigen("train", str(CONFIG), f"--data={DATA}", f"--out={RUN}", *resume)

    print("[3/5] sampling 3 pieces of about 30 seconds")
    seed = str(int(time.time()) % 100_000)
    out = _midigen("sample", "--ckpt", str(RUN), "--num-samples", "3", "--seconds", "30", "--seed", seed,
                   "--out", str(OUT), "--wav", "--png", capture=True)
    print(out, end="")
    written = [line.split()[-1] for line in out.splitlines() if line.strip().endswith((".mid", ".wav", ".png"))]
    print("[3/5] ... one piece per style")
    _one_per_style(seed)
    print(f"[3/5] ... and one piece on the chords {DEMO_CHORDS}")
    on_chords = _on_chords(seed)

    print("[4/5] editing: one infilled piece, one song with a form (A B A B A) and one harmonized melody")
    edited = _edit_demo(written, seed)

    print("[5/5] evaluating on the test split")
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
    print(f"  on chords     {DEMO_CHORDS}: " + (", ".join(on_chords) or "(failed; see above)"))
    for line in edited:
        print(f"  {line}")
    wavs = [w for w in written if w.endswith(".wav")]
    print("  listen:       " + (wavs[0] if wavs else f"{OUT}/*.wav") + "  (any audio player), or")
    print(f"                midigen sample --ckpt {RUN} --seconds 30 --play")
    print("  more music:   midigen sample --ckpt out/demo/model --num-samples 4 --style quartet --wav")
    print("  your chords:  midigen sample --ckpt out/demo/model --chords 'Dm7 G7 | Cmaj7 | Am7 D7 | G' --png")
    print("  studio:       midigen studio --ckpt out/demo/model --open   (hear, see, generate, continue in a browser)")
    print("=" * 72)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
