"""Expert chord labels to test the labeller on: music21's Roman-numeral analyses and their scores.

The music21 wheel ships analyses (``*.rntxt``) of 20 Bach chorales (Riemenschneider's numbering)
and 48 Monteverdi madrigals, next to the scores they analyse. Each pair is exported here to MIDI the
way the demo corpus is (`midigen.data.scoremidi`: repeats played out, every part a track) and, for
every beat of that MIDI file's own beat grid, the analysis's chord at the beat's start is read as
(root pitch class, triad quality), and as a vocabulary chord where its notes spell one.

Where the wheel's score is not quite the analysed edition: three chorales are printed in another
key (their labels move to the score's key, ``_edition_shift``); chorales split a measure in two at a
repeat (``_analysis_positions``); and four analyses end more than a measure away from their score
(flagged ``aligned: false``, for the benchmark to count apart). MIDI and labels are cached, so the
music21 parsing (about a second a piece) is paid once per machine.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import symusic

from midigen.data.corpus import music21_corpus_root
from midigen.data.scoremidi import conductor, part_notes, write_midi
from midigen.fsutil import atomic_write_bytes, atomic_write_json, cache_dir
from midigen.music.chords import (NO_CHORD, QUALITIES, TRIAD_OF, chord_id, chord_pitch_classes, chord_quality,
                                  chord_root)
from midigen.music.timing import beat_grid

CACHE_VERSION = "chord-analyses-v4"
TRIADS = {"major": "maj", "minor": "min", "diminished": "dim", "augmented": "aug"}
UNLABELLED = -1


@dataclass(frozen=True)
class AnalysedPiece:
    corpus: str  # "bach" or "monteverdi"
    name: str
    analysis: Path
    score: Path


def analysed_pieces(root: Path | None = None) -> list[AnalysedPiece]:
    """Every analysis in the music21 corpus with the score it analyses, Bach first."""
    from music21.corpus import chorales, getWork  # music21 imports slowly: only when exporting

    root = root or music21_corpus_root()
    out = []
    for path in sorted((root / "bach" / "choraleAnalyses").glob("riemenschneider*.rntxt")):
        number = int(path.stem.removeprefix("riemenschneider"))
        work = next(iter(chorales.Iterator(number, number, numberingSystem="riemenschneider",
                                           returnType="filename")))
        found = getWork(work)
        paths = sorted(map(Path, found if isinstance(found, list) else [found]), key=lambda f: f.suffix != ".mxl")
        out.append(AnalysedPiece("bach", path.stem, path, paths[0]))
    for path in sorted((root / "monteverdi").glob("madrigal.*.rntxt")):
        scores = [p for p in path.parent.glob(path.stem + ".*") if p.suffix in (".mxl", ".xml", ".krn")]
        if scores:
            out.append(AnalysedPiece("monteverdi", path.stem, path, scores[0]))
    return out


def _expert_chords(analysis_path: Path) -> tuple[dict[int, float], np.ndarray, np.ndarray, list]:
    """The analysis as (measure number -> its offset, chord start offsets, chord end offsets, chords)."""
    from music21 import converter, roman, stream

    analysis = converter.parse(str(analysis_path), format="romanText")
    part = analysis.parts[0] if hasattr(analysis, "parts") and len(analysis.parts) else analysis
    measures = {}
    for m in part.getElementsByClass(stream.Measure):
        measures.setdefault(int(m.number), float(m.offset))
    flat = part.flatten()
    chords = list(flat.getElementsByClass(roman.RomanNumeral))
    starts = np.array([float(c.getOffsetBySite(flat)) for c in chords])
    ends = starts + np.array([float(c.quarterLength) for c in chords])
    return measures, starts, ends, chords


def _labels_of(rn, shift: int) -> tuple[int, str | None, int]:
    """(root pitch class, triad quality or None, vocabulary chord id or UNLABELLED) of a Roman numeral,
    moved up ``shift`` semitones."""
    root = (int(rn.root().pitchClass) + shift) % 12
    triad = TRIADS.get(rn.quality)
    pcs = {(int(p.pitchClass) + shift) % 12 for p in rn.pitches}
    exact = next((chord_id(root, q) for q in QUALITIES if set(chord_pitch_classes(chord_id(root, q))) == pcs),
                 UNLABELLED)
    return root, triad, exact


def _edition_shift(midi, chords) -> int:
    """Semitones from the analysis's key to the score's: some chorales in the wheel are printed in another
    key than the edition that was analysed. Found by matching the analysis's chord tones, weighted by how
    long each chord lasts, with the score's pitch-class durations (no labeller involved)."""
    heard = np.zeros(12)
    for track in midi.tracks:
        a = track.notes.numpy()
        np.add.at(heard, a["pitch"] % 12, a["duration"].astype(np.float64))
    named = np.zeros(12)
    for c in chords:
        for pc in {int(p.pitchClass) for p in c.pitches}:
            named[pc] += float(c.quarterLength)
    fit = [float(np.dot(np.roll(named, k), heard)) for k in range(12)]
    return int(np.argmax(fit))


def _analysis_positions(numbers: list[int], offsets: list[float], measures: dict[int, float]) -> list[float]:
    """Where each measure of the score starts in the analysis's quarters (NaN: not analysed), found by
    its number. A measure the score splits in two at a repeat (both halves keep the number, where the
    analysis has one whole measure) continues from where its first half starts."""
    first: dict[int, float] = {}
    for n, off in zip(numbers, offsets):
        first.setdefault(n, off)
    return [measures[n] + off - first[n] if n in measures else np.nan for n, off in zip(numbers, offsets)]


def export_with_labels(piece: AnalysedPiece) -> tuple[bytes, dict]:
    """MIDI bytes of the piece's score and its expert labels per beat of that MIDI's beat grid:
    ``{"roots": [...], "triads": [...], "chords": [...], "aligned": bool}`` (root -1, triad "" or chord
    -1 where the analysis names nothing the comparison can use: no chord there, or an augmented sixth;
    ``aligned`` false where the analysis and the score disagree on how many measures the piece has)."""
    from music21 import converter, stream

    score = converter.parse(str(piece.score), forceSource=True)
    if isinstance(score, stream.Opus):
        score = score.scores[0]
    cond = conductor(score, 80.0)
    tracks = [(part.partName or f"Voice {i + 1}", 0, part_notes(part, cond.bars))
              for i, part in enumerate(score.parts)]
    data = write_midi(cond, tracks)
    score_measures = list(score.parts[0].getElementsByClass(stream.Measure))
    numbers = [int(m.number) for m in score_measures]
    offsets = [float(m.offset) for m in score_measures]
    measures, starts, ends, chords = _expert_chords(piece.analysis)
    midi = symusic.Score.from_midi(data)
    transpose = _edition_shift(midi, chords)
    labels = [_labels_of(c, transpose) for c in chords]
    where = _analysis_positions(numbers, offsets, measures)
    grid = beat_grid(midi)
    bar_starts = np.array([b.start for b in cond.bars])
    roots, triads, exact = [], [], []
    for q in grid.starts / midi.ticks_per_quarter:
        bar = cond.bars[int(np.searchsorted(bar_starts, q + 1e-9, side="right")) - 1]
        pos = where[bar.index] + (q - bar.start) if bar.index < len(where) else np.nan
        j = int(np.searchsorted(starts, pos + 1e-9, side="right")) - 1 if pos == pos else -1
        ok = j >= 0 and pos < ends[j] - 1e-9
        root, triad, chord = labels[j] if ok else (UNLABELLED, None, UNLABELLED)
        roots.append(root if triad else UNLABELLED)
        triads.append(triad or "")
        exact.append(chord)
    # an analysis that ends more than a measure away from its score was made on another edition
    # (repeats written out, bars added): its labels drift, and the benchmark says how much it counts
    aligned = abs(max(numbers) - max(measures)) <= 1 if numbers and measures else False
    return data, {"roots": roots, "triads": triads, "chords": exact, "aligned": aligned}


def cached_piece(piece: AnalysedPiece, folder: Path | None = None) -> tuple[Path, dict]:
    """(the piece's MIDI file, its expert labels), exported on first use into the user cache."""
    folder = Path(folder or cache_dir() / CACHE_VERSION) / piece.corpus
    midi, labels = folder / f"{piece.name}.mid", folder / f"{piece.name}.json"
    if not (midi.exists() and labels.exists()):
        import warnings

        folder.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data, found = export_with_labels(piece)
        atomic_write_bytes(midi, data)
        atomic_write_json(labels, found)
    return midi, json.loads(labels.read_text())


def agreement(found: np.ndarray, expert: dict) -> dict:
    """Beats where the labeller's root and triad quality match the analysis, and where its vocabulary
    chord does, over the beats the analysis labels."""
    roots = np.array(expert["roots"])
    n = min(len(found), len(roots))
    labelled = roots[:n] >= 0
    hits = sum(1 for i in np.flatnonzero(labelled)
               if found[i] != NO_CHORD and chord_root(found[i]) == roots[i]
               and TRIAD_OF[chord_quality(found[i])] == expert["triads"][i])
    chords = np.array(expert["chords"])[:n]
    exact = chords >= 0
    return {"beats": int(labelled.sum()), "root_triad": int(hits),
            "chord_beats": int(exact.sum()), "chord": int((found[:n][exact] == chords[exact]).sum())}
