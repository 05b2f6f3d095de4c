"""The demo corpus's collections: which music21 pieces each holds and which instrument plays each part.

Every collection is a style (its folder name in the exported corpus) and an ensemble whose parts
are separate tracks with General MIDI programs, so a model trained on it has heard instruments
play together and `midigen arrange` has parts to keep and parts to write:

- ``chorale``: Bach's four-part chorales as a wind quartet, soprano flute, alto oboe, tenor
  clarinet, bass bassoon (the instrumental parts a few chorales add are left out);
- ``palestrina``: Palestrina's 3-6 voice mass movements as a cornett-and-sackbut style brass choir,
  trumpet on top, tuba at the bottom;
- ``quartet``: Haydn, Mozart and Beethoven string quartets, two violins, viola, cello;
- ``fiddle``: tunes of Ryan's Mammoth Collection on a solo violin;
- ``tune-with-chords``: other tunes of that collection with a piano vamping chords found from the
  melody and an acoustic bass (see `midigen.data.accompany`).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from midigen.data.accompany import accompany
from midigen.data.scoremidi import conductor, part_notes, write_midi

VIOLIN, VIOLA, CELLO = 40, 41, 42
PIANO, ACOUSTIC_BASS = 0, 32
CHORALE_PROGRAMS = {"soprano": 73, "alto": 68, "tenor": 71, "bass": 70}
# top voice to bottom: trumpet, muted trumpet, French horn, brass section, trombone, tuba
PALESTRINA_PROGRAMS = {
    3: (56, 60, 57),
    4: (56, 60, 57, 58),
    5: (56, 59, 60, 57, 58),
    6: (56, 59, 60, 61, 57, 58),
}
# The corpus is sized for the demo's training budget (about 1.1M tokens), not for export time: it
# exports at 3,000-6,000 notes per CPU second, and these choices keep ~430,000 notes.
# Quartets: Haydn, Mozart, Beethoven op. 18 no. 1 and op. 59 no. 3 (about 90,000 notes). Left out
# for that budget: Beethoven op. 59 no. 1-2 (65,000 notes) and op. 18 no. 3-5, op. 74, 132, 133
# (single files of 10,000-18,000 notes, 5-6 s each to parse); and Schumann op. 41 no. 1, whose
# first movement parses at 800 notes per CPU second.
QUARTET_FOLDERS = ("haydn", "mozart/k80", "mozart/k155", "mozart/k156", "mozart/k458",
                   "beethoven/opus18no1", "beethoven/opus59no3")
PALESTRINA_STRIDE = 8  # every 8th of the 1,318 mass movements (sorted by name): 165 pieces
# A hash of a tune's name puts a quarter of Ryan's 1,059 tunes in `fiddle` and another quarter in
# `tune-with-chords`; the other half is left out.
TUNE_SHARES = 4
DEFAULT_BPM = 120.0  # music21's own default where a score gives no tempo
CHORALE_BPM = 80.0  # the chorales give no tempo; 120 would rush a hymn


class SkipPiece(Exception):
    """A piece that does not fit its collection's ensemble (the reason goes into its .skip note)."""


Voices = list[tuple[str, int, object]]  # (track name, GM program, music21 part)


def chorale_voices(score) -> Voices:
    found = {}
    for part in score.parts:
        words = (part.partName or "").lower().split()
        if words and words[0] in CHORALE_PROGRAMS:
            if words[0] in found:
                raise SkipPiece(f"two {words[0]} parts")
            found[words[0]] = part
    if len(found) != 4:
        raise SkipPiece(f"not a four-part chorale (parts: {[p.partName for p in score.parts]})")
    return [(name.capitalize(), CHORALE_PROGRAMS[name], found[name]) for name in CHORALE_PROGRAMS]


def quartet_voices(score) -> Voices:
    out = []
    for part in score.parts:
        name = (part.partName or "").lower()
        program = CELLO if "cello" in name else VIOLA if "viola" in name else VIOLIN if "violin" in name else None
        if program is None:
            raise SkipPiece(f"not a string quartet part: {part.partName!r}")
        out.append((part.partName.strip(" ."), program, part))
    if sorted(p for _, p, _ in out) != [VIOLIN, VIOLIN, VIOLA, CELLO]:
        raise SkipPiece(f"not a string quartet (parts: {[p.partName for p in score.parts]})")
    return out


def palestrina_voices(score) -> Voices:
    parts = list(score.parts)
    programs = PALESTRINA_PROGRAMS.get(len(parts))
    if programs is None:
        raise SkipPiece(f"{len(parts)} voices (3-6 are kept)")
    return [(part.partName or f"Voice {i + 1}", programs[i], part) for i, part in enumerate(parts)]


def fiddle_voices(score) -> Voices:
    return [("Fiddle", VIOLIN, score.parts[0])]


@dataclass(frozen=True)
class Collection:
    files: Callable[[Path], list[str]]  # corpus root -> corpus-relative paths
    voices: Callable[[object], Voices]
    bpm: float = DEFAULT_BPM
    chords: bool = False  # add the piano-and-bass accompaniment


def _glob(root: Path, folders, suffix: str) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for f in folders for p in (root / f).rglob(f"*{suffix}"))


def _tunes(root: Path, share: int) -> list[str]:
    return [p for p in _glob(root, ["ryansMammoth"], ".abc") if zlib.crc32(p.encode()) % TUNE_SHARES == share]


COLLECTIONS: dict[str, Collection] = {
    "chorale": Collection(lambda r: _glob(r, ["bach"], ".mxl") + _glob(r, ["bach"], ".xml"),
                          chorale_voices, CHORALE_BPM),
    "palestrina": Collection(lambda r: _glob(r, ["palestrina"], ".krn")[::PALESTRINA_STRIDE], palestrina_voices),
    "quartet": Collection(lambda r: _glob(r, QUARTET_FOLDERS, ".mxl"), quartet_voices),
    "fiddle": Collection(lambda r: _tunes(r, 1), fiddle_voices),
    "tune-with-chords": Collection(lambda r: _tunes(r, 0), fiddle_voices, chords=True),
}


def export_piece(root: str | Path, collection: str, path: str) -> bytes:
    """MIDI bytes of one corpus piece scored for its collection's ensemble (SkipPiece if it does not fit)."""
    from music21 import converter, stream

    spec = COLLECTIONS[collection]
    score = converter.parse(str(Path(root) / path), forceSource=True)
    if isinstance(score, stream.Opus):
        score = score.scores[0]
    voices = spec.voices(score)
    cond = conductor(score, spec.bpm)
    tracks = [(name, program, part_notes(part, cond.bars)) for name, program, part in voices]
    if not any(len(rows) for _, _, rows in tracks):
        raise SkipPiece("no notes")
    if spec.chords:
        sharps, minor = cond.keys[0][1:] if cond.keys else (0, 0)
        bass, comp = accompany(tracks[0][2], cond.bars, sharps, bool(minor))
        tracks += [("Piano", PIANO, comp), ("Bass", ACOUSTIC_BASS, bass)]
    return write_midi(cond, tracks)

