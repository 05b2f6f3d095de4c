"""`midigen tune` cost: adapter size against the base's weights file, and step time and peak memory of
an adapter tune against ``--full``, on the demo shape (configs/demo.toml) and the 124M shape
(configs/gpt2-124m-lakh.toml). Weights are random (speed and memory do not depend on them).

Each (shape, mode) runs in its own process, so its peak resident memory (ru_maxrss) is its own. The
base has an output support (``restrict_vocab``): ``--support`` ids, of which ``--new`` are ids the base
never trained, as a user's drums would be for the demo model; the adapter trains their rows.

    python benchmarks/tune.py                       # both shapes, 5 timed steps each
    python benchmarks/tune.py --shapes demo --steps 20

``--quality BASE`` measures what tuning changes in the music instead (the demo model as base): a
collection is tuned into an adapter (``--madrigals DIR``: Monteverdi's madrigals from the music21
wheel, real music the demo corpus does not hold; ``--music DIR``; else 60 made band songs from
tests/songgen.py, with drums; ``--adapter DIR`` reuses a finished tune), then 16 samples with no
controls from the base and from the adapter (``midigen sample``, same seeds) are measured: the share
of their notes on instruments the collection uses, whether drums appear, and a nearest-centroid
classifier on the music features `midigen eval --samples` computes (``eval.metrics.piece_features``,
each in units of ``feature_scale``): the share of samples nearer the collection's centroid than the
demo corpus's (its test split, ``--demo-data``).

    python benchmarks/tune.py --quality out/demo/model --demo-data data/demo --madrigals out/madrigals \
        --style madrigal --minutes 10
    python benchmarks/tune.py --quality out/demo/model --demo-data data/demo --style band --minutes 8
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from midigen.data.corpus import music21_corpus_root
from midigen.data.ensembles import PALESTRINA_PROGRAMS
from midigen.data.scoremidi import conductor, part_notes, write_midi
from midigen.model import adapter as adapters
from midigen.model.checkpoint import save_checkpoint
from midigen.model.model import GPT, GPTConfig, padded_vocab
from midigen.music.codec import Codec
from midigen.train.config import load_config
from midigen.train.tune import make_optimizer, train_step

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"demo": REPO / "configs" / "demo.toml", "124m": REPO / "configs" / "gpt2-124m-lakh.toml"}
# CPU-sized batches: the demo config's own batch; one 1,024-token window for 124M (its 16 x 4 would be minutes a step)
BATCH = {"demo": None, "124m": 1}
SUPPORT = {"demo": 640, "124m": 4000}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def build(shape: str, new: int):
    cfg = load_config(SHAPES[shape])
    codec = Codec()
    gcfg = GPTConfig(vocab_size=padded_vocab(codec.vocab_size), block_size=cfg.block_size, n_layer=cfg.n_layer,
                     n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=0.0, bias=cfg.bias)
    torch.manual_seed(0)
    model = GPT(gcfg)
    ids = torch.randperm(codec.vocab_size)[: SUPPORT[shape]].sort().values.tolist()
    base_support, new_ids = ids[new:], ids[:new]
    batch = BATCH[shape] or cfg.batch_size
    return model, codec, base_support, new_ids, batch, cfg.block_size


def child(shape: str, mode: str, steps: int, new: int) -> dict:
    model, codec, base_support, new_ids, batch, T = build(shape, new)
    out = {"shape": shape, "mode": mode, "batch": batch, "block": T}
    with tempfile.TemporaryDirectory() as tmp:
        model.set_support(base_support)
        base_bytes = save_checkpoint(Path(tmp) / "base", model, codec).joinpath("model.safetensors").stat().st_size
        model.set_support(sorted(base_support + new_ids))
        if mode == "adapter":
            adapters.attach(model, 8, 16.0, new_ids, seed=0)
            params = adapters.trainable(model)
            save_file({k: v.detach().contiguous() for k, v in params.items()}, str(Path(tmp) / "a.safetensors"))
            out["adapter_share_of_base"] = (Path(tmp) / "a.safetensors").stat().st_size / base_bytes
        else:
            params = dict(model.named_parameters())
        out["base_weights_mb"] = base_bytes / 1e6
    out["trainable_params"] = sum(p.numel() for p in params.values())
    model.train()
    opt = make_optimizer(params, 1e-4)
    g = torch.Generator().manual_seed(1)
    support = torch.tensor(sorted(base_support + new_ids))
    x, y = (support[torch.randint(len(support), (batch, T), generator=g)] for _ in range(2))
    out["rss_before_mb"] = rss_mb()
    train_step(model, params, opt, x, y, 1e-4)  # warm-up: allocates the optimizer state
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        train_step(model, params, opt, x, y, 1e-4)
    out["step_s"] = (time.perf_counter() - t0) / steps
    out["step_cpu_s"] = (time.process_time() - c0) / steps
    out["peak_rss_mb"] = rss_mb()
    return out


# ----- quality: what the tuned model writes --------------------------------------------------------


def midigen(*args) -> str:
    r = subprocess.run([sys.executable, "-m", "midigen", *map(str, args)], cwd=REPO, capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    if r.returncode:
        sys.exit(f"midigen {args[0]} failed: {r.stderr[-2000:]}")
    return r.stdout


def instruments_of(path: Path) -> dict[int, int]:
    """Notes per instrument (GM program, 128 = drums) in a MIDI file."""
    import symusic

    out: dict[int, int] = {}
    for t in symusic.Score(str(path)).tracks:
        key = 128 if t.is_drum else int(t.program)
        out[key] = out.get(key, 0) + t.note_num()
    return out


FEATURE_NAMES = ("pitch_class_entropy", "polyphony", "notes_per_second", "pitch_range", "in_scale_rate",
                 "drum_density")  # eval.metrics.FEATURES' scalar ones (not the IOI histogram)


def features(codec, tokens_list, cut: float | None = None) -> np.ndarray:
    from midigen.eval.metrics import piece_features

    rows = [piece_features(codec, t, max_seconds=cut) for t in tokens_list]
    return np.array([[r[n] for n in FEATURE_NAMES] for r in rows if r is not None], dtype=float)


# Monteverdi's madrigals as a mixed Renaissance consort, parts top to bottom as the score writes them
# (Canto, Quinto/Alto, ..., Basso, and the continuo where a book has one): sung lines as voices, a
# recorder, a lute (nylon guitar), a violone (contrabass), the continuo on a harpsichord. None of these
# programs is in the demo corpus, and no Monteverdi either (midigen.data.ensembles).
MADRIGAL_PROGRAMS = (53, 74, 52, 24, 43, 6)
MADRIGAL_BPM = 100.0  # the scores give no tempo; music21's 120 would rush the half-note tactus


def write_madrigals(dest: Path, brass: bool = False) -> Path:
    """The music21 corpus's 49 Monteverdi madrigals (MusicXML) as multi-track MIDI in ``dest``, through
    the same score-to-MIDI path as the demo corpus (midigen.data.scoremidi). ``brass``: on the demo
    corpus's Palestrina brass choir instead, instruments the base knows, so what a tune gains is the
    music's, not new instruments'."""
    from music21 import converter

    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted((music21_corpus_root() / "monteverdi").glob("*.mxl")):
        score = converter.parse(str(path))
        cond = conductor(score, MADRIGAL_BPM)
        programs = PALESTRINA_PROGRAMS[len(score.parts)] if brass else MADRIGAL_PROGRAMS
        tracks = [(part.partName or f"Voice {i + 1}", programs[i], part_notes(part, cond.bars))
                  for i, part in enumerate(score.parts)]
        (dest / f"{path.stem}.mid").write_bytes(write_midi(cond, tracks))
    return dest


SCALE_FLOOR = 0.1  # a feature's scale is at least a tenth of its typical size


def feature_scale(ref_c: np.ndarray, ref_d: np.ndarray) -> np.ndarray:
    """Each feature's unit for the nearest-centroid distance: the spread of the feature within a
    reference (the two references' variances pooled), but at least SCALE_FLOOR of the feature's
    typical size (its mean absolute value over both references); the same for every figure.

    Why: z-scoring over both references let a feature with no spread in one reference (made songs
    are exactly diatonic: in-scale rate 1.000 in every song) decide the classification on its own,
    since any sample a few hundredths off then sits many units away. The floor bounds that: a
    difference of a tenth of a feature's size is at most one unit, whatever its spread."""
    pooled = np.sqrt((ref_c.var(0) + ref_d.var(0)) / 2)
    typical = np.abs(np.vstack([ref_c, ref_d])).mean(0)
    # a feature that is 0 throughout both references (drum density of two drumless ones) cannot tell
    # them apart: an infinite unit leaves it out
    return np.where(typical > 0, np.maximum(pooled, SCALE_FLOOR * typical), np.inf)


def nearer_share(x: np.ndarray, ref_c: np.ndarray, ref_d: np.ndarray, scale: np.ndarray) -> float:
    """Share of the rows of ``x`` nearer the collection's centroid than the demo corpus's, distances
    measured in ``scale`` units per feature."""
    to_c = np.linalg.norm((x - ref_c.mean(0)) / scale, axis=1)
    to_d = np.linalg.norm((x - ref_d.mean(0)) / scale, axis=1)
    return float(np.mean(to_c < to_d))


def sample_set(ckpt: Path, out: Path, n: int, seconds: float) -> list[Path]:
    midigen("sample", "--ckpt", ckpt, "--num-samples", n, "--seconds", seconds, "--seed", 1, "--out", out,
            "--device", "cpu")
    return sorted(out.glob("*.mid"))


def quality(a) -> None:
    from midigen.eval.metrics import real_pieces

    work = Path(tempfile.mkdtemp(prefix="tune-quality-"))
    music = write_madrigals(Path(a.madrigals), a.brass) if a.madrigals else Path(a.music) if a.music else None
    if music is None:
        sys.path.insert(0, str(REPO / "tests"))
        from songgen import write_songs

        music = work / "band"
        write_songs(music, 60)
    adapter = Path(a.adapter) if a.adapter else Path(a.keep) if a.keep else work / "adapter"
    if not a.adapter:
        t0 = time.perf_counter()
        res = json.loads(midigen("tune", "--ckpt", a.quality, music, "--out", adapter, "--style", a.style,
                                 "--minutes", a.minutes, "--steps", a.tune_steps, "--no-progress", "--device", "cpu"))
        print(f"tune: {(time.perf_counter() - t0) / 60:.1f} min, stopped {res['stopped']} at step {res['step']}, "
              f"held-out bits/note {res['base_val_bits_per_note']:.2f} -> {res['val_bits_per_note']:.2f}")
    files = sorted(p for p in music.rglob("*") if p.suffix.lower() in (".mid", ".midi"))
    used: set[int] = set()
    for p in files:
        used |= set(instruments_of(p))
    print(f"collection: {len(files)} files, instruments {sorted(used)}; drums: {128 in used}")
    codec, demo = real_pieces(a.demo_data, "test")
    sets = {name: sample_set(ckpt, work / name, a.samples, a.sample_seconds)
            for name, ckpt in (("base", Path(a.quality)), ("tuned", adapter))}
    gen = {name: [codec.encode(p.read_bytes()) for p in paths] for name, paths in sets.items()}
    cut = a.sample_seconds  # the references cut to the samples' length, as `eval --samples` does
    ref_c = features(codec, [codec.encode(p.read_bytes()) for p in files], cut)
    ref_d = features(codec, demo, cut)
    scale = feature_scale(ref_c, ref_d)
    print(f"\n{a.samples} samples of {a.sample_seconds:g} s, no controls, seed 1; references: the collection "
          f"({len(ref_c)}) and the demo corpus's test split ({len(ref_d)}), cut to {cut:g} s")
    means = {"collection": ref_c.mean(0), "demo corpus": ref_d.mean(0),
             **{name: features(codec, gen[name]).mean(0) for name in sets}}
    print("  feature means: " + ", ".join(f for f in FEATURE_NAMES))
    for name, m in means.items():
        print(f"    {name:11s} " + "  ".join(f"{v:7.3f}" for v in m))
    print(f"    {'scale':11s} " + "  ".join(f"{v:7.3f}" for v in scale))
    for name, paths in sets.items():
        counts: dict[int, int] = {}
        for p in paths:
            for k, v in instruments_of(p).items():
                counts[k] = counts.get(k, 0) + v
        total = sum(counts.values()) or 1
        share = sum(v for k, v in counts.items() if k in used) / total
        with_drums = sum(128 in instruments_of(p) for p in paths)
        x = features(codec, gen[name])
        nearer = nearer_share(x, ref_c, ref_d, scale)
        nearer_z = nearer_share(x, ref_c, ref_d, np.vstack([ref_c, ref_d]).std(0) + 1e-9)
        print(f"  {name:5s}: notes on the collection's instruments {100 * share:5.1f}% ({total} notes); "
              f"samples with drums {with_drums}/{len(paths)}; nearer the collection than the demo corpus "
              f"{100 * nearer:.0f}% ({len(x)} with notes; z-scored over both "
              f"references instead: {100 * nearer_z:.0f}%)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quality", metavar="BASE", help="measure the music instead: tune BASE (the demo model)")
    ap.add_argument("--music", help="with --quality: the collection (default: 60 made band songs)")
    ap.add_argument("--adapter", help="with --quality: a finished tune of --music to reuse")
    ap.add_argument("--madrigals", metavar="DIR", help="write Monteverdi's madrigals (a real collection the "
                    "demo corpus does not hold) to DIR as MIDI and use them as --music")
    ap.add_argument("--brass", action="store_true", help="with --madrigals: on the demo corpus's Palestrina "
                    "brass choir (instruments the base knows) instead of the consort")
    ap.add_argument("--style", default="band", help="with --quality: the tune's new style (default band)")
    ap.add_argument("--demo-data", default=str(REPO / "data" / "demo"), help="the base's prepared corpus")
    ap.add_argument("--minutes", type=float, default=8.0, help="with --quality: the tune's time limit")
    ap.add_argument("--tune-steps", type=int, default=1000, help="with --quality: the tune's step limit (tune's "
                    "default 1000)")
    ap.add_argument("--keep", metavar="DIR", help="with --quality: write the adapter to DIR (default: a temp dir)")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--sample-seconds", type=float, default=20.0)
    ap.add_argument("--shapes", default="demo,124m")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--new", type=int, default=128, help="ids the base never trained (default 128)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each run (default: torch's choice)")
    ap.add_argument("--child", nargs=2, metavar=("SHAPE", "MODE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.child:
        print(json.dumps(child(*a.child, a.steps, a.new)))
        return
    if a.quality:
        quality(a)
        return
    print(f"torch {torch.__version__}, {a.threads or torch.get_num_threads()} threads, "
          f"{a.steps} timed steps after 1 warm-up")
    for shape in a.shapes.split(","):
        report(shape, *(run_child(shape, mode, a) for mode in ("adapter", "full")))


def run_child(shape: str, mode: str, a) -> dict:
    cmd = [sys.executable, __file__, "--child", shape, mode, "--steps", str(a.steps), "--new", str(a.new),
           "--threads", str(a.threads)]
    r = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def report(shape: str, ad: dict, full: dict) -> None:
    print(f"\n{shape}: {ad['batch']} x {ad['block']} tokens a step, base weights {ad['base_weights_mb']:.1f} MB")
    print(f"  adapter size: {100 * ad['adapter_share_of_base']:.2f}% of the base's weights file (target <= 5%)")
    for m in (ad, full):
        print(f"  {m['mode']:8s} trainable {m['trainable_params'] / 1e6:8.2f} M   step {m['step_s']:7.3f} s "
              f"({m['step_cpu_s']:.3f} CPU s)   peak RSS {m['peak_rss_mb']:7.0f} MB "
              f"(model built: {m['rss_before_mb']:.0f} MB)")
    above = (ad["peak_rss_mb"] - ad["rss_before_mb"]) / max(1.0, full["peak_rss_mb"] - full["rss_before_mb"])
    print(f"  adapter / full: step time {ad['step_s'] / full['step_s']:.2f}x (CPU time "
          f"{ad['step_cpu_s'] / full['step_cpu_s']:.2f}x), peak memory {ad['peak_rss_mb'] / full['peak_rss_mb']:.2f}x, "
          f"memory above the built model {above:.2f}x")

if __name__ == "__main__":
    main()
