"""Kept notes come back identical in the written file, as symusic and mido read it (issue 16 part A).

The songs are made to break a splice: several tracks of one program, two drum tracks sharing MIDI
channel 10, one pitch repeated right before and right after each span edge (in two tracks of one
program), and spans and continuation points a few ticks after a chord. Every file the real commands
(`midigen infill/arrange/sample`, ``--num-samples 2``) and the real studio server (continue, infill,
arrange) write is read back with symusic and with mido: every note outside the span comes back with
its program, channel, pitch, onset, duration and velocity; no note-on starts while the same pitch
still sounds on its channel; a continuation writes nothing before its point.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from io import BytesIO
from pathlib import Path

import mido
import numpy as np
import pytest
import symusic

from midigen.generate.splice import settle, written_channels
from midigen.music.codec import DRUMS, Codec
from midiread import PIANO, POINT, SPAN, TICKS_PER_SECOND, mido_notes, tricky_song
from studio_server import Server, call, wait_job

ROOT = Path(__file__).resolve().parents[1]
TPQ = 480
BASSES, ADDS = (32, 33, 34, 35), (73, 40, 71, 56, 24, 41, 42)

pytestmark = pytest.mark.usefixtures("one_thread")


# ----- reading a written file back -------------------------------------------------------------


def symusic_notes(data: bytes) -> dict[str, Counter]:
    """Per track name: (program, drums, pitch, onset, duration, velocity) as symusic reads the file (it
    skips tracks without notes, so positions may differ between files; the test songs' names do not)."""
    score = symusic.Score.from_midi(data)
    return {t.name: Counter((t.program, t.is_drum, n.pitch, n.time, n.duration, n.velocity) for n in t.notes)
            for t in score.tracks}


def check_file(data: bytes, original: bytes, kept, point: float | None = None) -> None:
    """Every note of ``original`` that ``kept(onset_seconds, program, drums)`` says is kept comes back
    identical in ``data`` (mido and symusic); no note-on over a sounding one of its pitch and channel;
    with a continuation ``point`` (seconds), no new note before it."""
    before, _ = mido_notes(original)
    after, clashes = mido_notes(data)
    assert clashes == 0, f"{clashes} note-ons while the same pitch sounds on that channel"
    want = Counter({n: c for n, c in before.items() if kept(n[3] / TICKS_PER_SECOND, n[0], n[1] == 9)})
    assert want, "the check needs kept notes"
    assert not want - after, f"kept notes changed (mido): {sorted(want - after)[:6]}"
    got = symusic_notes(data)
    for name, track in symusic_notes(original).items():
        mine = Counter({n: c for n, c in track.items() if kept(n[3] / TICKS_PER_SECOND, n[0], n[1])})
        lost = mine - got.get(name, Counter())
        assert not lost, f"kept notes of {name} changed (symusic): {sorted(lost)[:6]}"
    if point is not None:
        new = after - want
        assert new, "the continuation wrote nothing"
        assert min(n[3] for n in new) >= point * TICKS_PER_SECOND, "a new note starts before the point"


# ----- the songs --------------------------------------------------------------------------------




def outside(lo: float, hi: float):
    return lambda s, program, drums: s < lo or s >= hi


# ----- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def known(edit_run) -> dict:
    from midigen.model.checkpoint import capabilities, load_checkpoint

    _, codec, config = load_checkpoint(edit_run, "cpu")
    caps = capabilities(config, codec)
    insts = set(caps["instruments"])
    assert caps["can_edit"] and {PIANO, DRUMS} <= insts
    return {"bass": next(b for b in BASSES if b in insts), "add": next(a for a in ADDS if a in insts)}


@pytest.fixture(scope="module")
def song(known, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kept") / "tricky.mid"
    path.write_bytes(tricky_song(known["bass"]))
    return path


def midigen(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "midigen", *map(str, args)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def written_midis(stdout: str) -> list[Path]:
    return [Path(json.loads(line)["file"]) for line in stdout.splitlines()
            if line.startswith("{") and json.loads(line)["kind"] == "midi"]


# ----- the commands -----------------------------------------------------------------------------


def test_cli_infill_keeps_every_note_outside_the_span(edit_run, song, tmp_path):
    lo, hi = SPAN
    out = midigen("infill", song, "--ckpt", edit_run, "--start", lo, "--end", hi, "--num-samples", 2,
                  "--seed", 1, "--out", tmp_path)
    files = written_midis(out)
    assert len(files) == 2
    for f in files:
        check_file(f.read_bytes(), song.read_bytes(), outside(lo, hi))
    report = json.loads(out.splitlines()[0])
    assert lo - 1e-3 <= report["span_seconds"][0] < report["span_seconds"][1] <= hi + 1e-3  # never past the ask


def test_cli_infill_of_some_parts_keeps_the_others_whole(edit_run, song, tmp_path):
    lo, hi = SPAN
    out = midigen("infill", song, "--ckpt", edit_run, "--start", lo, "--end", hi, "--instruments", "piano",
                  "--num-samples", 2, "--seed", 5, "--out", tmp_path)
    for f in written_midis(out):
        check_file(f.read_bytes(), song.read_bytes(), lambda s, prog, drums: drums or prog != PIANO or not lo <= s < hi)


def test_cli_arrange_keeps_the_kept_parts_on_their_channels(edit_run, known, song, tmp_path):
    out = midigen("arrange", song, "--ckpt", edit_run, "--add", known["add"], "--keep", "piano",
                  "--num-samples", 2, "--seed", 2, "--out", tmp_path)
    files = written_midis(out)
    assert len(files) == 2
    for f in files:
        check_file(f.read_bytes(), song.read_bytes(), lambda s, prog, drums: not drums and prog == PIANO)
        assert known["add"] in {t.program for t in symusic.Score.from_midi(f.read_bytes()).tracks if t.note_num()}


def test_cli_arrange_over_every_part(edit_run, known, song, tmp_path):
    out = midigen("arrange", song, "--ckpt", edit_run, "--add", known["add"], "--num-samples", 2, "--seed", 3,
                  "--out", tmp_path)
    for f in written_midis(out):
        check_file(f.read_bytes(), song.read_bytes(), lambda s, prog, drums: True)


def test_cli_sample_continues_from_the_point_and_writes_clean_notes(edit_run, song, tmp_path):
    out = midigen("sample", "--ckpt", edit_run, "--prompt", song, "--prompt-seconds", POINT, "--seconds", 8,
                  "--num-samples", 2, "--seed", 4, "--out", tmp_path / "cont")
    files = [Path(line) for line in out.splitlines() if line.endswith(".mid")]
    assert len(files) == 2
    for f in files:
        check_file(f.read_bytes(), song.read_bytes(), lambda s, prog, drums: s < POINT, point=POINT)
    out = midigen("sample", "--ckpt", edit_run, "--seconds", 20, "--num-samples", 3, "--seed", 6,
                  "--instruments", "piano,drums", "--out", tmp_path / "fresh")
    for line in out.splitlines():
        if line.endswith(".mid"):
            notes, clashes = mido_notes(Path(line).read_bytes())
            assert notes and clashes == 0


# ----- the studio -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def studio(edit_run, tmp_path_factory):
    s = Server(edit_run, tmp_path_factory.mktemp("kept-ws"))
    yield s
    assert s.stop() == 0, "".join(s.stderr)[-2000:]


def studio_files(server, song: Path, kind: str, body: dict) -> list[bytes]:
    status, piece = call("POST", f"{server.url}/api/pieces/upload?name=tricky.mid", raw=song.read_bytes())
    assert status == 201, piece
    status, job = call("POST", f"{server.url}/api/pieces/{piece['id']}/{kind}", body)
    assert status == 202, job
    job, _, _ = wait_job(server.url, job)
    assert job["status"] == "done", job
    return [call("GET", f"{server.url}/api/pieces/{piece['id']}/versions/{v}/midi")[1] for v in job["versions"]]


def test_studio_continue_infill_and_arrange_keep_notes(studio, known, song):
    (cont,) = studio_files(studio, song, "continue", {"seconds": 6, "seed": 3, "at_seconds": POINT})
    check_file(cont, song.read_bytes(), lambda s, prog, drums: s < POINT, point=POINT)
    lo, hi = SPAN
    infills = studio_files(studio, song, "infill", {"start_s": lo, "end_s": hi, "seed": 1, "num_samples": 2})
    arranged = studio_files(studio, song, "arrange", {"add": [known["add"]], "keep": ["piano"], "seed": 2,
                                                      "num_samples": 2})
    assert len(infills) == len(arranged) == 2
    for data in infills:
        check_file(data, song.read_bytes(), outside(lo, hi))
    for data in arranged:
        check_file(data, song.read_bytes(), lambda s, prog, drums: not drums and prog == PIANO)


# ----- the rule itself --------------------------------------------------------------------------


def test_written_channels_are_the_ones_symusic_writes():
    rng = np.random.default_rng(0)
    score = symusic.Score(TPQ)
    for i in range(40):
        track = symusic.Track(f"t{i}", int(rng.integers(128)), bool(rng.random() < 0.2))
        if rng.random() < 0.8:
            track.notes.append(symusic.Note(0, 10, 60, 80))
        score.tracks.append(track)
    files = mido.MidiFile(file=BytesIO(bytes(score.dumps_midi()))).tracks
    got = [{m.channel for m in t if m.type in ("note_on", "program_change")} for t in files]
    assert got == [{c} for c in written_channels(score).tolist()]


def test_a_sample_never_starts_a_note_over_one_still_sounding():
    from midigen.generate.sample import Sample, sample_score

    codec = Codec()
    note = lambda pitch, steps: [codec.note_token(0, pitch), codec.dv_token(steps, 80)]  # noqa: E731
    tokens = list(codec.header([0], 120.0)) + note(60, 48) + [codec.shift_token(12)] + note(60, 12) + note(64, 6) \
        + [codec.shift_token(3)] + note(64, 6) + [codec.shift_token(24)] + note(60, 6) + [codec.EOS]
    raw = codec.decode(np.array(tokens, np.uint16))
    assert mido_notes(bytes(raw.dumps_midi()))[1] > 0  # as decoded, the notes overlap
    score = sample_score(codec, Sample(np.array(tokens, np.uint16), 3, 0, 0.0, None))
    notes, clashes = mido_notes(bytes(score.dumps_midi()))
    assert clashes == 0
    scale = codec.params.decode_tpq // codec.params.steps_per_quarter
    assert sorted((n[2], n[3] // scale, n[4] // scale) for n in notes) == [(60, 0, 12), (60, 12, 12), (60, 39, 6),
                                                                          (64, 12, 3), (64, 15, 6)]
    assert settle(score.copy()).note_num() == score.note_num()  # settling twice changes nothing
