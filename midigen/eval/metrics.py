"""Objective music features, and how closely generated pieces match real ones.

The features follow MusPy (Dong et al., 2020) and Yang & Lerch, "On the evaluation of generative
models in music" (2020): pitch-class entropy, polyphony, notes per second, pitch range, in-scale
rate, inter-onset intervals and drum density. For each feature we estimate its distribution over
the real pieces and over the generated ones (Gaussian kernel density) and report the overlapping
area of the two densities, 1.0 for identical distributions and 0.0 for disjoint ones — Yang &
Lerch's overlap measure applied directly to the feature distributions.

Both sides go through the codec first (generated files are re-encoded, real pieces are read from
the dataset's tokens), so quantization never separates them, and real pieces are cut to the
generated pieces' typical length, so length-dependent features (pitch range) compare like with like.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from midigen.music.chords import NO_CHORD, TONE_MASK, _pitched_notes
from midigen.music.codec import DRUMS, Codec, CodecError
from midigen.errors import UsageError
from midigen.music.timing import BeatGrid, steps_to_seconds
from midigen.data.dataset import Dataset

MAJOR_SCALE = np.array([1, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1], dtype=bool)
FEATURES = (
    "pitch_class_entropy",
    "polyphony",
    "notes_per_second",
    "pitch_range",
    "in_scale_rate",
    "ioi_histogram",
    "drum_density",
)
IOI_BINS = np.array([0.5, 1.5, 2.5, 3.5, 4.5, 6.5, 9.5, 13.5, 19.5, 28.5, 40.5, 60.5, 96.5, 1e9])  # steps


def piece_features(codec: Codec, tokens: np.ndarray, max_seconds: float | None = None) -> dict | None:
    """Features of one piece given as tokens; None when it has no notes."""
    ev = codec.decode_events(tokens)
    n = ev["notes"]
    if len(n["time"]) == 0:
        return None

    def to_seconds(steps):
        return steps_to_seconds(codec, ev["tempo_time"], ev["tempo_bpm"], steps.astype(np.float64))

    onset_s = to_seconds(n["time"])
    if max_seconds is not None:
        keep = onset_s < max_seconds
        if not keep.any():
            return None
        n = {k: v[keep] for k, v in n.items()}
        onset_s = onset_s[keep]
    end_s = to_seconds(n["time"] + n["duration"])
    seconds = max(float(end_s.max()), 1e-3)
    drums = n["instrument"] == DRUMS
    pitched = ~drums
    out = {"seconds": seconds, "notes": int(len(n["time"]))}
    out["notes_per_second"] = len(n["time"]) / seconds
    out["drum_density"] = float(drums.sum()) / seconds
    out["ioi"] = np.diff(np.unique(n["time"]))
    if pitched.sum() == 0:
        out.update(pitch_class_entropy=0.0, polyphony=0.0, pitch_range=0.0, in_scale_rate=1.0)
        return out
    pitch = n["pitch"][pitched]
    hist = np.bincount(pitch % 12, minlength=12).astype(np.float64)
    prob = hist / hist.sum()
    nz = prob[prob > 0]
    out["pitch_class_entropy"] = float(-(nz * np.log2(nz)).sum())
    out["pitch_range"] = float(pitch.max() - pitch.min())
    # in-scale rate: share of pitched notes in the best-fitting major (or relative minor) scale
    out["in_scale_rate"] = float(max((hist * np.roll(MAJOR_SCALE, r)).sum() for r in range(12)) / hist.sum())
    # polyphony: mean number of pitched notes sounding, over the steps where at least one sounds
    start, stop = n["time"][pitched], n["time"][pitched] + n["duration"][pitched]
    edges = np.concatenate((start, stop))
    delta = np.concatenate((np.ones(len(start)), -np.ones(len(stop))))
    order = np.lexsort((delta, edges))  # ends before starts at the same step
    edges, delta = edges[order], delta[order]
    active = np.cumsum(delta)[:-1]
    span = np.diff(edges)
    sounding = (active > 0) & (span > 0)
    out["polyphony"] = float((active[sounding] * span[sounding]).sum() / max(span[sounding].sum(), 1))
    return out


def overlap_area(a: np.ndarray, b: np.ndarray, grid: int = 512) -> float:
    """Overlapping area of two Gaussian kernel density estimates (Scott's bandwidth)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) == 0 or len(b) == 0:
        return 0.0
    both = np.concatenate((a, b))
    spread = both.std()
    if spread == 0:
        return 1.0  # both sets hold the same single value
    def bandwidth(x):
        s = x.std(ddof=1) if len(x) > 1 else 0.0
        s = s if s > 0 else spread * 0.1
        return s * len(x) ** (-1 / 5)
    ha, hb = bandwidth(a), bandwidth(b)
    lo = both.min() - 4 * max(ha, hb)
    hi = both.max() + 4 * max(ha, hb)
    xs = np.linspace(lo, hi, grid)
    def kde(x, h):
        z = (xs[:, None] - x[None, :]) / h
        return np.exp(-0.5 * z * z).sum(1) / (len(x) * h * np.sqrt(2 * np.pi))
    pa, pb = kde(a, ha), kde(b, hb)
    return float(np.clip(np.trapezoid(np.minimum(pa, pb), xs), 0.0, 1.0))


def _histogram_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Overlap of two pooled, normalized histograms (for the inter-onset-interval distribution)."""
    if len(a) == 0 or len(b) == 0:
        return float(len(a) == len(b))
    ha = np.histogram(a, bins=np.concatenate(([0], IOI_BINS)))[0].astype(np.float64)
    hb = np.histogram(b, bins=np.concatenate(([0], IOI_BINS)))[0].astype(np.float64)
    return float(np.minimum(ha / ha.sum(), hb / hb.sum()).sum())


def real_pieces(data_dir, split: str) -> tuple[Codec, list[np.ndarray]]:
    """The codec and every song of a prepared dataset's split, as token arrays."""
    sp = Dataset(data_dir).split(split)
    pieces = [song for song in (sp.song(i) for i in range(len(sp.starts))) if len(song)]
    if not pieces:
        raise UsageError(f"the {split} split of {data_dir} holds no pieces")
    return sp.codec, pieces


def compare_samples(samples_dir, data_dir, split: str = "test") -> dict:
    """One JSON-able dict: per feature, the overlap of generated vs real distributions, and the means.

    The generated pieces are the folder's own .mid/.midi files, not its subfolders': `make demo`'s
    out/demo keeps songs it edits (real chorales among them) in edit/ and styles/, and those are not
    the model's music to score."""
    samples_dir = Path(samples_dir)
    if not samples_dir.is_dir():
        raise UsageError(f"--samples {samples_dir} is not a folder")
    codec, real = real_pieces(data_dir, split)
    files = sorted(p for p in samples_dir.glob("*") if p.suffix.lower() in (".mid", ".midi") and p.is_file())
    gen = []
    for p in files:
        try:
            f = piece_features(codec, codec.encode(p.read_bytes()))
        except CodecError:
            continue
        if f is not None:
            gen.append(f)
    if not gen:
        raise UsageError(f"no readable MIDI files with notes in {samples_dir} (its subfolders are not read)")
    cut = float(np.median([g["seconds"] for g in gen]))
    ref = [f for f in (piece_features(codec, t, max_seconds=cut) for t in real) if f is not None]
    result = {"samples": len(gen), "real": len(ref), "split": split, "real_cut_seconds": round(cut, 2)}
    overlaps = {}
    for name in FEATURES:
        if name == "ioi_histogram":
            overlaps[name] = _histogram_overlap(
                np.concatenate([g["ioi"] for g in gen]), np.concatenate([r["ioi"] for r in ref])
            )
            continue
        a = np.array([g[name] for g in gen])
        b = np.array([r[name] for r in ref])
        overlaps[name] = overlap_area(a, b)
        result[f"{name}_generated_mean"] = round(float(a.mean()), 4)
        result[f"{name}_real_mean"] = round(float(b.mean()), 4)
    result["overlap"] = {k: round(v, 4) for k, v in overlaps.items()}
    result["min_overlap"] = round(min(overlaps.values()), 4)
    return result


# ----- chord adherence --------------------------------------------------------------------------


def chord_note_time(score, grid: BeatGrid, labels: np.ndarray) -> tuple[float, float]:
    """(note-time inside the chords, note-time under a chord), in ticks, over a tick-based score.

    ``labels``: a chord id for every beat of ``grid`` (``label_chords``' labels, or a chart's with
    ``chart_beats``). Each pitched note (drums left out) counts for the time it sounds in each beat,
    inside when its pitch class is a tone of that beat's chord. Beats labelled N.C. ask for no chord
    and count on neither side, nor does what sounds outside the grid. Two sums rather than a share, so
    pieces pool by their note-time (``chord_adherence`` is the share).
    """
    start, end, pitch = _pitched_notes(score)
    labels = np.asarray(labels, dtype=np.int64)
    if len(grid) == 0 or len(start) == 0:
        return 0.0, 0.0
    first = np.clip(np.searchsorted(grid.starts, start, side="right") - 1, 0, None)
    last = np.searchsorted(grid.starts, end, side="left") - 1
    count = np.maximum(last - first + 1, 0)
    beat = np.repeat(first, count) + (np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count))
    note = np.repeat(np.arange(len(start)), count)
    sounding = np.minimum(end[note], grid.ends[beat]) - np.maximum(start[note], grid.starts[beat])
    chord = labels[beat]
    asked = (sounding > 0) & (chord != NO_CHORD)
    inside = asked & TONE_MASK[chord, pitch[note] % 12]
    return float(sounding[inside].sum()), float(sounding[asked].sum())


def chord_adherence(score, grid: BeatGrid, labels: np.ndarray) -> float | None:
    """The share of sounding pitched note-time, duration weighted, whose pitch class belongs to the
    chord ``labels`` ask for at that moment (see ``chord_note_time``); None when no note sounds under
    a chord."""
    inside, total = chord_note_time(score, grid, labels)
    return inside / total if total > 0 else None
