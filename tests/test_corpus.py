"""The multi-instrument demo corpus: each collection's ensemble, repeats, the fiddle-tune accompaniment."""
from __future__ import annotations

import numpy as np
import pytest
import symusic

from midigen.data import corpus, ensembles
from midigen.data.accompany import accompany, candidate_chords, scale_of
from midigen.data.scoremidi import Bar, measure_order

# the ensemble every file of a collection must come out as: its tracks' programs, in order
ENSEMBLES = {
    "chorale": {(73, 68, 71, 70)},
    "quartet": {(40, 40, 41, 42)},
    "palestrina": {tuple(v) for v in ensembles.PALESTRINA_PROGRAMS.values()},
    "fiddle": {(40,)},
    "tune-with-chords": {(40, 0, 32)},
}


def smallest(collection: str, n: int) -> list[str]:
    """The n smallest pieces of a collection (fast to export), as demo piece names."""
    root = corpus.music21_corpus_root()
    paths = sorted(ensembles.COLLECTIONS[collection].files(root), key=lambda p: ((root / p).stat().st_size, p))
    return [f"{collection}/{p}" for p in paths[:n]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Two small pieces of every collection, plus a piano piece the chorale ensemble must refuse."""
    pieces = [p for c in ensembles.COLLECTIONS for p in smallest(c, 2)] + ["chorale/bach/bwv846.mxl"]
    dest = corpus.export_subset(pieces, tmp_path_factory.mktemp("demo"), progress=False, workers=2)
    return dest, pieces


def test_collections_are_folders_and_styles(exported):
    dest, pieces = exported
    styles = corpus.demo_styles(dest)
    assert set(styles.values()) == set(ensembles.COLLECTIONS)
    assert len(styles) == len(pieces) - 1  # all but the piano piece
    for rel, style in styles.items():
        assert rel.split("/")[0] == style and corpus.demo_style(rel) == style
    assert corpus.demo_style("somewhere/else.mid") is None
    skip = dest / "chorale/bach/bwv846.mid.skip"
    assert "not a four-part chorale" in skip.read_text()


def test_every_part_plays_its_collections_instrument(exported):
    dest, _ = exported
    for rel, style in corpus.demo_styles(dest).items():
        score = symusic.Score.from_midi((dest / rel).read_bytes())
        programs = tuple(t.program for t in score.tracks)
        assert programs in ENSEMBLES[style], (rel, programs)
        assert not any(t.is_drum for t in score.tracks)
        assert all(t.note_num() > 0 for t in score.tracks), rel
        assert len(score.tempos) >= 1 and len(score.time_signatures) >= 1, rel


def test_no_note_is_doubled_or_cut_by_its_own_pitch(exported):
    dest, _ = exported
    for rel in corpus.demo_styles(dest):
        for track in symusic.Score.from_midi((dest / rel).read_bytes()).tracks:
            a = track.notes.numpy()
            order = np.lexsort((a["time"], a["pitch"]))
            t, d, p = a["time"][order], a["duration"][order], a["pitch"][order]
            same = p[1:] == p[:-1]
            assert not (same & (t[1:] < t[:-1] + d[:-1])).any(), (rel, track.name)
            assert (d > 0).all()


def test_chords_and_bass_sit_under_the_fiddle(exported):
    dest, _ = exported
    files = [r for r, s in corpus.demo_styles(dest).items() if s == "tune-with-chords"]
    for rel in files:
        fiddle, piano, bass = symusic.Score.from_midi((dest / rel).read_bytes()).tracks
        pp, bp = piano.notes.numpy()["pitch"], bass.notes.numpy()["pitch"]
        assert pp.min() >= 55 and pp.max() <= 66  # closed position from G3
        assert bp.min() >= 36 and bp.max() <= 47  # C2..B2
        chord_onsets = np.unique(piano.notes.numpy()["time"])
        assert len(pp) >= 3 * len(chord_onsets)  # every strike is a triad or a seventh chord
        assert fiddle.notes.numpy()["time"].max() >= bass.notes.numpy()["time"].max()


def _midi_notes(data: bytes) -> list[set]:
    s = symusic.Score.from_midi(data)
    out = []
    for t in s.tracks:
        a = t.notes.numpy()
        q = s.ticks_per_quarter
        out.append(set(zip((a["time"] / q).round(3), a["pitch"].tolist(), (a["duration"] / q).round(3))))
    return [n for n in out if n]


@pytest.mark.parametrize("collection,path", [
    ("chorale", "bach/bwv66.6.mxl"),
    ("fiddle", "ryansMammoth/7thRegimentReel.abc"),  # an end repeat with no start, then |: :|
    ("fiddle", "ryansMammoth/AmericanRifleTeamHornpipe.abc"),  # first and second endings, twice
    ("fiddle", "ryansMammoth/CelebratedStopHornpipe.abc"),  # an end repeat read onto the next bar's left
])
def test_notes_as_music21_plays_them(collection, path):
    """Where music21's own MIDI writer expands a piece right, the fast path writes the same notes."""
    import warnings

    from music21 import converter, midi

    root = corpus.music21_corpus_root()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = _midi_notes(ensembles.export_piece(root, collection, path))
        score = converter.parse(str(root / path), forceSource=True)
        theirs = _midi_notes(midi.translate.music21ObjectToMidiFile(score).writestr())
    assert ours == theirs


def _measures(spec: str):
    """music21 measures from a compact spec: 'S' starts a repeat, 'E' ends one, digits are endings."""
    from music21 import bar, note, spanner, stream

    part = stream.Part()
    brackets = {}
    for k, token in enumerate(spec.split()):
        m = stream.Measure(number=k + 1)
        m.append(note.Note(60 + k, quarterLength=4))
        if "S" in token:
            m.leftBarline = bar.Repeat(direction="start")
        if "E" in token:
            m.rightBarline = bar.Repeat(direction="end")
        for d in token:
            if d.isdigit():
                brackets.setdefault(d, []).append(m)
        part.append(m)
    for number, ms in brackets.items():
        part.insert(0, spanner.RepeatBracket(ms, number=int(number)))
    return list(part.getElementsByClass(stream.Measure))


@pytest.mark.parametrize("spec,order", [
    ("- - -", [0, 1, 2]),
    ("- E -", [0, 1, 0, 1, 2]),
    ("- S -E -", [0, 1, 2, 1, 2, 3]),
    ("- 1E 2 -", [0, 1, 0, 2, 3]),
    # AABB: the second strain repeats from its own start, not from the top
    ("- E - -E", [0, 1, 0, 1, 2, 3, 2, 3]),
    ("- 1E 2 - 1E 2", [0, 1, 0, 2, 3, 4, 3, 5]),
])
def test_measure_order(spec, order):
    assert measure_order(_measures(spec)) == order


def test_the_vamp_follows_the_harmony():
    """A melody outlining C, G, F, C in C major gets those chords: bass roots on 1, chords on 2; the
    band waits out the upbeat, also where a repeat plays it again."""
    rows = [(0.0, 1.0, 67, 80), (9.0, 1.0, 67, 80)]  # the upbeat, then its replay after bar 4
    for bar, triad in enumerate([(60, 64, 67), (67, 71, 74), (65, 69, 72), (60, 64, 67)]):
        for beat, pitch in enumerate(triad + (triad[0] + 12,)):
            rows.append((1.0 + bar * 2.0 + beat * 0.5, 0.5, pitch, 80))
    bars = [Bar(0, 0.0, 1.0, (2, 4), 1.0)] + [Bar(k + 1, 1.0 + k * 2.0, 2.0, (2, 4), 1.0) for k in range(4)]
    bars.append(Bar(0, 9.0, 1.0, (2, 4), 1.0))
    bass, comp = accompany(np.array(sorted(rows), dtype=np.float64), bars, sharps=0, minor=False)
    assert bass[:, 0].tolist() == [1.0, 3.0, 5.0, 7.0]
    assert [int(p) % 12 for p in bass[:, 2]] == [0, 7, 5, 0]
    assert comp[:, 0].tolist() == [2.0] * 3 + [4.0] * 3 + [6.0] * 3 + [8.0] * 3
    assert [sorted(int(p) % 12 for p in comp[k:k + 3, 2]) for k in range(0, 12, 3)] == [
        [0, 4, 7], [2, 7, 11], [0, 5, 9], [0, 4, 7]]


def test_chords_are_diatonic_with_a_dominant_seventh():
    a_minor = candidate_chords(scale_of(0), tonic=9)
    assert (4, 8, 11) in a_minor  # the major V of a minor, with its raised leading tone
    assert (4, 8, 11, 2) in a_minor  # V7
    assert (11, 2, 5) not in a_minor  # no diminished triads
    assert scale_of(-1) == [5, 7, 9, 10, 0, 2, 4]  # F major


def test_spread_takes_from_every_collection():
    pieces = corpus.demo_pieces()
    chosen = corpus.spread(pieces, 10)
    assert len(chosen) == 10
    assert {p.split("/")[0] for p in chosen} == set(ensembles.COLLECTIONS)


@pytest.mark.parametrize("collection,path,bpm", [
    ("fiddle", "ryansMammoth/IrishHornpipe.abc", 100.0),  # Q:1/4=100
    ("chorale", "bach/bwv66.6.mxl", ensembles.CHORALE_BPM),  # no tempo written: the collection's
])
def test_one_tempo_from_the_score_or_the_collection(collection, path, bpm):
    data = ensembles.export_piece(corpus.music21_corpus_root(), collection, path)
    tempos = symusic.Score.from_midi(data).tempos
    assert [(t.time, round(t.qpm, 3)) for t in tempos] == [(0, bpm)]
