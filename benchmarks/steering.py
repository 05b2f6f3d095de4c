"""Does steering work? Styles, meter, key and density of steered samples, and what controls cost.

    python benchmarks/steering.py                      # the demo corpus and configs/demo.toml (~8 min of training)
    python benchmarks/steering.py --reduced            # 8 samples per condition, 15 s each: a quick look

Prepares the demo corpus (tagged by collection) into out/bench/steer-data and trains configs/demo.toml
into out/bench/steer-model unless both exist (pass --data/--run to reuse others), then samples
``--num-samples`` pieces for every style, the corpus's two most common meters, its three most common
keys and each density level, and prints one JSON object with the figures and whether each target is met:

* styles are heard: a nearest-centroid classifier over the ``midigen eval --samples`` features
  (standardized on the real test pieces), fitted on the real test pieces of each style, labels the
  ``--style X`` samples X at least 0.8x as often as it labels the real X test pieces X;
* meter: >= 95% of ``--time-signature T`` samples carry T, and the histogram of their onsets'
  positions in the bar overlaps the real T pieces' more than the real pieces' in other meters;
* key: >= 80% of ``--key K`` samples are in K (same mode) by music21's ``analyze('key')``;
* density: mean notes/s of low < medium < high samples, each inside its tercile of the train split;
* no cost to likelihood: test bits/note of the events with the controls in the header <= 1.0x without
  (``midigen eval --controls``);
* the margin goes away: every feature overlap of each style's samples vs that style's real test
  pieces >= 0.75.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from midigen.music.codec import Codec, CodecError, parse_key  # noqa: E402
from midigen.eval.metrics import FEATURES, IOI_BINS, overlap_area, piece_features  # noqa: E402

SCALARS = [f for f in FEATURES if f != "ioi_histogram"]


def midigen(*args, capture=True) -> str:
    cmd = [sys.executable, "-m", "midigen", *map(str, args)]
    print("$ midigen " + " ".join(map(str, args)), file=sys.stderr, flush=True)
    r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE if capture else None, text=True)
    if r.returncode != 0:
        sys.exit(f"steering: `midigen {args[0]}` failed (exit {r.returncode})")
    return r.stdout or ""


def last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


# ----- data, model, samples -------------------------------------------------------------------------


def ensure_model(a) -> dict:
    if not (a.data / "meta.json").exists():
        src = [a.source, "--style-from", "folder"] if a.source != "demo" else ["demo"]
        midigen("prepare", *src, "--out", a.data, "--val-frac", "0.05", "--test-frac", "0.05", "--no-progress",
                capture=False)
    if not (a.run / "last" / "config.json").exists():
        midigen("train", ROOT / "configs" / "demo.toml", f"--data={a.data}", f"--out={a.run}", *a.train_args,
                capture=False)
    return last_json(midigen("info", "--ckpt", a.run))


def sample_set(a, name: str, flags: list[str]) -> list[Path]:
    out = a.out / name
    done = sorted(out.glob("*.mid"))
    if len(done) >= a.num_samples:
        return done[: a.num_samples]
    midigen("sample", "--ckpt", a.run, "--num-samples", a.num_samples, "--seconds", a.seconds, "--seed", a.seed,
            "--out", out, *flags)
    return sorted(out.glob("*.mid"))[: a.num_samples]


# ----- features ------------------------------------------------------------------------------------


def real_by_song(data: Path, split: str):
    """[(tokens, files.jsonl row)] of a split's songs."""
    from midigen.data.dataset import Dataset

    sp = Dataset(data).split(split)
    rows = {r["offset"]: r for r in map(json.loads, (data / "files.jsonl").open()) if r.get("split") == split}
    return sp.codec, [(sp.song(i), rows.get(int(s), {})) for i, s in enumerate(sp.starts)]


def sample_tokens(codec: Codec, files) -> list[np.ndarray]:
    out = []
    for p in files:
        try:
            out.append(codec.encode(p.read_bytes()))
        except CodecError:
            pass
    return out


def feature_vector(f: dict) -> np.ndarray:
    ioi = np.histogram(f["ioi"], bins=np.concatenate(([0], IOI_BINS)))[0].astype(float)
    ioi = ioi / ioi.sum() if ioi.sum() else ioi
    return np.concatenate(([f[k] for k in SCALARS], ioi))


def overlaps(gen: list[dict], ref: list[dict]) -> dict:
    out = {}
    for k in SCALARS:
        out[k] = overlap_area(np.array([g[k] for g in gen]), np.array([r[k] for r in ref]))
    ha = np.histogram(np.concatenate([g["ioi"] for g in gen]), bins=np.concatenate(([0], IOI_BINS)))[0]
    hb = np.histogram(np.concatenate([r["ioi"] for r in ref]), bins=np.concatenate(([0], IOI_BINS)))[0]
    out["ioi_histogram"] = float(np.minimum(ha / max(ha.sum(), 1), hb / max(hb.sum(), 1)).sum())
    return {k: round(v, 3) for k, v in out.items()}


# ----- the figures -----------------------------------------------------------------------------------


def styles_heard(codec, real, samples: dict, cut: float) -> dict:
    by_style = {s: [piece_features(codec, t, max_seconds=cut) for t, r in real if s in (r.get("styles") or [])]
                for s in samples}
    by_style = {s: [f for f in fs if f] for s, fs in by_style.items()}
    all_real = np.array([feature_vector(f) for fs in by_style.values() for f in fs])
    mu, sd = all_real.mean(0), all_real.std(0) + 1e-9
    centroids = {s: np.mean([(feature_vector(f) - mu) / sd for f in fs], 0) for s, fs in by_style.items() if fs}
    names = sorted(centroids)

    def label(f):
        v = (feature_vector(f) - mu) / sd
        return names[int(np.argmin([np.linalg.norm(v - centroids[s]) for s in names]))]

    out = {s: {"real_test_pieces": 0, "ratio": None, "min_overlap": None} for s in samples if s not in centroids}
    for s in names:
        gen = [f for f in (piece_features(codec, t) for t in samples[s]) if f]
        real_rate = np.mean([label(f) == s for f in by_style[s]])
        gen_rate = np.mean([label(f) == s for f in gen]) if gen else 0.0
        out[s] = {"real_test_pieces": len(by_style[s]), "samples": len(gen), "real_labelled_as_style": round(real_rate, 3),
                  "samples_labelled_as_style": round(gen_rate, 3),
                  "ratio": round(gen_rate / real_rate, 3) if real_rate else None,
                  "feature_overlap": overlaps(gen, by_style[s]) if gen else None}
        out[s]["min_overlap"] = min(out[s]["feature_overlap"].values()) if gen else None
    return out


def onset_positions(codec: Codec, tokens, ts) -> np.ndarray:
    ev = codec.decode_events(tokens)
    bar = ts[0] * codec.params.steps_per_quarter * 4 // ts[1]
    return (ev["notes"]["time"] % bar) / bar


def meter_figures(codec, real, meters: dict) -> dict:
    bins = np.linspace(0, 1, 49)
    hist = lambda pos: np.histogram(pos, bins=bins)[0] / max(len(pos), 1)
    real_hist = {}
    for t, r in real:
        m = r.get("time_signature")
        if m:
            real_hist.setdefault(m, []).append(onset_positions(codec, t, tuple(map(int, m.split("/")))))
    out = {}
    for m, toks in meters.items():
        ts = tuple(map(int, m.split("/")))
        carried = np.mean([codec.decode_events(t)["time_signature"] == ts for t in toks])
        h = hist(np.concatenate([onset_positions(codec, t, ts) for t in toks]))
        same = float(np.minimum(h, hist(np.concatenate(real_hist[m]))).sum()) if m in real_hist else None
        others = {o: round(float(np.minimum(h, hist(np.concatenate(v))).sum()), 3)
                  for o, v in real_hist.items() if o != m}
        out[m] = {"carry_rate": round(float(carried), 3), "overlap_same_meter": round(same, 3) if same else None,
                  "overlap_other_meters": others,
                  "met": bool(carried >= 0.95 and same is not None and all(same > v for v in others.values()))}
    return out


def _key_of(path: Path) -> int:
    """music21's Krumhansl-Schmuckler key of a MIDI file, as a key number (tonic + 12 for minor)."""
    import warnings

    from music21 import converter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = converter.parse(str(path)).analyze("key")
    return parse_key(f"{found.tonic.name.replace('-', 'b')} {found.mode}")


def _real_in_key(codec: Codec, real, key: str, seconds: float, folder: Path) -> float | None:
    """The key finder's agreement with the real test pieces labelled ``key`` (their first ``seconds``):
    the ceiling the samples' figure is read against."""
    from midigen.generate.sample import clip_score

    folder.mkdir(parents=True, exist_ok=True)
    hits = []
    for i, (t, r) in enumerate(real):
        if r.get("key") != key:
            continue
        path = folder / f"{i}.mid"
        clip_score(codec.decode(t), seconds).dump_midi(str(path))
        hits.append(_key_of(path) == parse_key(key))
    return round(float(np.mean(hits)), 3) if hits else None


def key_figures(codec: Codec, real, keys: dict, seconds: float, folder: Path) -> dict:
    out = {}
    for k, files in keys.items():
        hits = sum(_key_of(p) == parse_key(k) for p in files)
        out[k] = {"samples": len(files), "in_key": round(hits / max(len(files), 1), 3),
                  "real_test_pieces_in_key": _real_in_key(codec, real, k, seconds, folder / k.replace(" ", "-"))}
    return out


def density_figures(codec, samples: dict, edges) -> dict:
    out = {}
    bounds = {"low": (0, edges[0]), "medium": (edges[0], edges[1]), "high": (edges[1], float("inf"))}
    for level, toks in samples.items():
        rates = [f["notes"] / f["seconds"] for f in (piece_features(codec, t) for t in toks) if f]
        mean = float(np.mean(rates)) if rates else 0.0
        lo, hi = bounds[level]
        out[level] = {"mean_notes_per_second": round(mean, 3), "tercile": [lo, hi], "inside": bool(lo <= mean < hi)}
    means = [out[k]["mean_notes_per_second"] for k in ("low", "medium", "high")]
    out["ordered"] = bool(means[0] < means[1] < means[2])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT / "out/bench/steer-data")
    p.add_argument("--run", type=Path, default=ROOT / "out/bench/steer-model")
    p.add_argument("--out", type=Path, default=ROOT / "out/bench/steer-samples")
    p.add_argument("--source", default="demo", help="what to prepare (default the demo corpus; a folder is "
                                                     "tagged by its first-level folders)")
    p.add_argument("--num-samples", type=int, default=32)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--reduced", action="store_true", help="8 samples per condition of 15 s (unless given)")
    p.add_argument("--train-args", default="", help="extra `midigen train` overrides, e.g. '--steps=200'")
    a = p.parse_args()
    a.train_args = a.train_args.split()
    if a.reduced:
        given = " ".join(sys.argv)
        a.num_samples = a.num_samples if "--num-samples" in given else 8
        a.seconds = a.seconds if "--seconds" in given else 15.0
    t0 = time.time()
    caps = ensure_model(a)
    meta = json.loads((a.data / "meta.json").read_text())
    codec, real = real_by_song(a.data, "test")
    meters = [m for m, _ in Counter(meta.get("time_signatures", {})).most_common() if m in caps["time_signatures"]][:2]
    keys = [k for k, _ in Counter(meta.get("keys", {})).most_common() if k in caps["keys"]][:3]

    styles = {s: sample_tokens(codec, sample_set(a, f"style-{s}", ["--style", s])) for s in caps["styles"]}
    meter_s = {m: sample_tokens(codec, sample_set(a, f"meter-{m.replace('/', '-')}", ["--time-signature", m]))
               for m in meters}
    key_files = {k: sample_set(a, f"key-{k.replace(' ', '-')}", ["--key", k]) for k in keys}
    dens = {d: sample_tokens(codec, sample_set(a, f"density-{d}", ["--density", d])) for d in caps["densities"]}
    cut = float(np.median([piece_features(codec, t)["seconds"] for ts in styles.values() for t in ts]))

    ev = last_json(midigen("eval", "--ckpt", a.run, "--data", a.data, "--split", "test", "--controls"))
    result = {
        "model": str(a.run), "samples_per_condition": a.num_samples, "seconds": a.seconds,
        "styles": styles_heard(codec, real, styles, cut),
        "meters": meter_figures(codec, real, meter_s),
        "keys": key_figures(codec, real, key_files, a.seconds, a.out / "real-keys"),
        "density": density_figures(codec, dens, caps["density_notes_per_second"]),
        "likelihood": ev["controls"],
    }
    st = result["styles"].values()
    result["targets"] = {
        "styles_heard (ratio >= 0.8 each)": all((s["ratio"] or 0) >= 0.8 for s in st),
        "meter (>= 95% carry, closest to its own meter)": all(m["met"] for m in result["meters"].values()),
        "key (>= 80% in key)": all(k["in_key"] >= 0.8 for k in result["keys"].values()),
        "density (ordered, each in its tercile)": result["density"]["ordered"] and all(
            result["density"][d]["inside"] for d in ("low", "medium", "high")),
        "likelihood (with/without <= 1.0)": ev["controls"]["ratio"] <= 1.0,
        "feature overlaps per style >= 0.75": all((s["min_overlap"] or 0) >= 0.75 for s in st),
    }
    result["wall_seconds"] = round(time.time() - t0, 1)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "steering.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
