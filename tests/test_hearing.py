"""What the model hears of a song: instruments it never learned heard as the nearest it knows.

The rules on made songs (``midigen.generate.hearing``), then the real commands on a song with an
instrument the tiny edit checkpoint (conftest's ``edit_run``) never saw: the written file keeps that
instrument's program and notes (read back with mido), and the report says how it was heard.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import symusic

from midigen.generate import continuation
from midigen.generate.hearing import heard, heard_as, hearing_map, hearing_note, written_as
from midigen.music.codec import DRUMS, Codec, instrument_name, track_instrument
from midigen.music.ranges import note_limits
from midigen.model.checkpoint import capabilities, load_checkpoint
from midiread import mido_notes
from clirun import midigen

ROOT = Path(__file__).resolve().parents[1]
TABLE = note_limits(None)
PIANO, BRIGHT_PIANO, BASS, VIOLIN, TUBA, FLUTE = 0, 1, 32, 40, 58, 73


def song(parts: dict[int, range], tpq: int = 480, bars: int = 8) -> symusic.core.ScoreTick:
    """One track per instrument (DRUMS: a drum track), quarter notes walking through its pitches."""
    s = symusic.Score(tpq)
    for inst, pitches in parts.items():
        t = symusic.Track(instrument_name(inst), 0 if inst == DRUMS else inst, inst == DRUMS)
        for k in range(bars * 4):
            t.notes.append(symusic.Note(k * tpq, tpq // 2, pitches[k % len(pitches)], 80))
        s.tracks.append(t)
    return s


def test_a_bright_piano_is_heard_as_the_grand_piano_the_model_knows():
    s = song({BRIGHT_PIANO: range(60, 72), BASS: range(36, 48)})
    mapping = hearing_map(s, [PIANO, BASS, VIOLIN], TABLE)
    assert mapping == {BRIGHT_PIANO: PIANO, BASS: BASS}
    assert heard_as(mapping) == {"Bright Acoustic Piano": "Acoustic Grand Piano"}
    assert hearing_note(mapping) == "Bright Acoustic Piano heard as Acoustic Grand Piano"


def test_an_unknown_family_is_heard_by_range():
    low = song({TUBA: range(30, 46)})  # brass: the model knows none; a bass's range holds these, a violin's none
    assert hearing_map(low, [BASS, VIOLIN], TABLE) == {TUBA: BASS}
    high = song({FLUTE: range(80, 92)})  # both piano and violin hold these; the violin's middle is nearer
    assert hearing_map(high, [PIANO, VIOLIN], TABLE) == {FLUTE: VIOLIN}
    recorded = note_limits({"instruments": {str(VIOLIN): {"low": 20, "high": 100, "polyphony": 2}}})
    assert hearing_map(low, [VIOLIN, FLUTE - 1], recorded) == {TUBA: VIOLIN}  # the checkpoint's own range


def test_drums_are_left_out_for_a_model_without_them_and_kept_for_one_with_them():
    s = song({DRUMS: [36, 38, 42], BRIGHT_PIANO: range(60, 72)})
    without = hearing_map(s, [PIANO], TABLE)
    assert without == {DRUMS: None, BRIGHT_PIANO: PIANO}
    assert heard_as(without) == {"Bright Acoustic Piano": "Acoustic Grand Piano", "Drums": None}
    assert hearing_note(without) == ("Bright Acoustic Piano heard as Acoustic Grand Piano; "
                                     "drums: this model never learned them, left out of what it hears")
    h = heard(s, without)
    assert [(t.program, t.is_drum, t.note_num()) for t in h.tracks] == [(PIANO, False, 32)]
    assert [(t.program, t.is_drum) for t in s.tracks] == [(0, True), (BRIGHT_PIANO, False)]  # the song untouched
    assert hearing_map(s, [PIANO, DRUMS], TABLE)[DRUMS] == DRUMS
    assert hearing_map(s, [DRUMS], TABLE) == {DRUMS: DRUMS, BRIGHT_PIANO: None}  # nothing tonal to hear it as


def test_edit_targets_are_never_mapped_nor_mapped_onto():
    s = song({BRIGHT_PIANO: range(60, 72), 2: range(60, 72)})
    assert hearing_map(s, [PIANO, 2], TABLE, exclude=[2]) == {BRIGHT_PIANO: PIANO}
    assert hearing_map(s, [PIANO, 2], TABLE, exclude=[PIANO]) == {BRIGHT_PIANO: 2, 2: 2}


def test_new_notes_go_back_to_the_one_instrument_heard_that_way():
    assert written_as({BRIGHT_PIANO: PIANO, BASS: BASS}, [BRIGHT_PIANO, BASS]) == {PIANO: BRIGHT_PIANO}
    assert written_as({BRIGHT_PIANO: PIANO, 2: PIANO}, [BRIGHT_PIANO, 2]) == {}  # two sources: ambiguous
    assert written_as({BRIGHT_PIANO: PIANO, PIANO: PIANO}, [BRIGHT_PIANO, PIANO]) == {}  # the song has its own


def test_a_continuation_hears_no_drums_yet_starts_after_them():
    s = song({DRUMS: [36, 38, 42], BRIGHT_PIANO: range(60, 72)})
    piano = next(t for t in s.tracks if not t.is_drum)
    piano.notes = symusic.core.NoteTickList.from_numpy(*(a[:16] for a in (piano.notes.numpy()[f] for f in
                                                        ("time", "duration", "pitch", "velocity"))))
    codec = Codec()
    p = continuation.plan(codec, s, None, {DRUMS: None, BRIGHT_PIANO: PIANO})
    assert p.instruments == [PIANO]
    assert not np.any(p.prompt == codec.inst_token(DRUMS)) and np.any(p.prompt == codec.inst_token(PIANO))
    last_drum = int(next(t for t in s.tracks if t.is_drum).notes.numpy()["time"].max())
    assert p.start_tick >= last_drum > 16 * 480  # the new part starts after the last drum, unheard as it is
    as_is = continuation.plan(codec, s, None)
    assert as_is.instruments == [BRIGHT_PIANO, DRUMS] and as_is.start_tick >= last_drum


# ----- the commands, on the tiny edit checkpoint ------------------------------------------------------


@pytest.fixture(scope="module")
def unheard_song(edit_run, tmp_path_factory):
    """(song path, the known instrument it keeps, the unknown one and what it must be heard as): a known
    instrument and one the checkpoint never learned whose family it knows."""
    _, codec, config = load_checkpoint(edit_run, "cpu")
    known = capabilities(config, codec)["instruments"]
    tonal = [i for i in known if i != DRUMS]
    unknown = next(u for u in range(128) if u not in known and any(k // 8 == u // 8 for k in tonal))
    family = [k for k in tonal if k // 8 == unknown // 8]
    other = next(k for k in tonal if k not in family)
    lo = max(int(TABLE.low[unknown]), 48)
    path = tmp_path_factory.mktemp("hearing") / "own.mid"
    path.write_bytes(bytes(song({other: range(48, 60), unknown: range(lo, lo + 12)}).dumps_midi()))
    return path, other, unknown, family


def _programs(path: Path) -> dict[int, int]:
    """Notes per program in a written file, as mido reads it."""
    notes, _ = mido_notes(path.read_bytes())
    out: dict[int, int] = {}
    for (program, *_), n in notes.items():
        out[program] = out.get(program, 0) + n
    return out


def test_cli_infill_keeps_the_unknown_instrument_and_reports_how_it_was_heard(edit_run, unheard_song, tmp_path):
    path, other, unknown, family = unheard_song
    r = midigen("infill", "--ckpt", edit_run, path, "--bars", "3-4", "--instruments", other, "--seed", 3,
                "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    (line,) = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    (heard_name,) = line["heard_as"].values()
    assert list(line["heard_as"]) == [instrument_name(unknown)]
    assert heard_name in {instrument_name(k) for k in family}
    assert line["heard"] == f"{instrument_name(unknown)} heard as {heard_name}"
    before, after = mido_notes(path.read_bytes())[0], mido_notes(Path(line["file"]).read_bytes())[0]
    theirs = lambda notes: {k: n for k, n in notes.items() if k[0] == unknown}  # noqa: E731
    assert theirs(after) == theirs(before) and sum(theirs(before).values()) == 32  # every note, its program
    written = symusic.Score.from_midi(Path(line["file"]).read_bytes())
    assert {track_instrument(t) for t in written.tracks} == {other, unknown}


def test_cli_continuation_writes_onto_the_songs_own_instrument_and_says_how_it_heard(edit_run, unheard_song,
                                                                                   tmp_path):
    path, other, unknown, family = unheard_song
    r = midigen("sample", "--ckpt", edit_run, "--prompt", path, "--prompt-seconds", 8, "--seconds", 6,
                "--seed", 2, "--retry", 0, "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    (said,) = [x for x in r.stdout.splitlines() if x.startswith("heard: ")]
    assert said.startswith(f"heard: {instrument_name(unknown)} heard as ")
    assert said.removeprefix(f"heard: {instrument_name(unknown)} heard as ") in {instrument_name(k) for k in family}
    (mid,) = tmp_path.glob("*.mid")
    programs = _programs(mid)
    assert not set(programs) & (set(family) - {unknown})  # what the model wrote as the stand-in is the song's own
    assert programs[unknown] >= 8  # the song's notes before the point, under their own program
    tracks = [track_instrument(t) for t in symusic.Score.from_midi(mid.read_bytes()).tracks if t.note_num()]
    assert unknown in tracks and not set(tracks) & (set(family) - {unknown})


def test_studio_versions_say_how_the_model_heard_the_song(edit_run, unheard_song, tmp_path):
    from studio_server import Server, call, wait_job

    path, other, unknown, family = unheard_song
    server = Server(edit_run, tmp_path / "ws")
    try:
        status, piece = call("POST", f"{server.url}/api/pieces/upload?name=own.mid", raw=path.read_bytes())
        assert status == 201, piece
        said = []
        for kind, body in (("continue", {"seconds": 3, "seed": 1, "at_seconds": 8}),
                           ("infill", {"start_s": 4, "end_s": 6, "seed": 1, "instruments": [instrument_name(other)]})):
            status, job = call("POST", f"{server.url}/api/pieces/{piece['id']}/{kind}", body)
            assert status == 202, job
            assert wait_job(server.url, job)[0]["status"] == "done"
            v = call("GET", f"{server.url}/api/pieces/{piece['id']}")[1]["versions"][-1]
            said += [w for w in v["warnings"] if w.startswith("heard: ")]
            data = call("GET", f"{server.url}/api/pieces/{piece['id']}/versions/{v['id']}/midi")[1]
            assert unknown in _programs_of(data)  # the song's own instrument, in the file
        assert len(said) == 2
        assert all(w.startswith(f"heard: {instrument_name(unknown)} heard as ") for w in said), said
    finally:
        assert server.stop() == 0, "".join(server.stderr)[-2000:]


def _programs_of(data: bytes) -> set[int]:
    return {program for (program, *_) in mido_notes(data)[0]}


@pytest.mark.parametrize("keep_unknown", [True, False])
def test_cli_arrange_hears_only_the_kept_parts(edit_run, unheard_song, tmp_path, keep_unknown):
    path, other, unknown, family = unheard_song
    _, codec, config = load_checkpoint(edit_run, "cpu")
    add = next(k for k in capabilities(config, codec)["instruments"] if k not in (DRUMS, other, *family))
    keep = ["--keep", other] + (["--keep", unknown] if keep_unknown else [])
    r = midigen("arrange", "--ckpt", edit_run, path, "--add", add, *keep, "--seed", 1, "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    (line,) = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    if keep_unknown:
        assert list(line["heard_as"]) == [instrument_name(unknown)]
        assert line["heard_as"][instrument_name(unknown)] in {instrument_name(k) for k in family}
        before, after = mido_notes(path.read_bytes())[0], mido_notes(Path(line["file"]).read_bytes())[0]
        assert {k: n for k, n in after.items() if k[0] == unknown} == {k: n for k, n in before.items() if k[0] == unknown}
    else:  # the dropped part is not heard at all, so nothing to say
        assert line["heard_as"] == {} and line["heard"] is None
