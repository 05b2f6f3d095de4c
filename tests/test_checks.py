"""Empty results are said, not passed as successes, and ``--retry`` draws them again with the next seeds.

Emptiness is made deterministic with ``hooked_midigen``'s ``HOOK_NOTELESS_SEEDS``: draws with those seeds
write no notes of the listed instruments, every other seed runs the real model (conftest's ``edit_run``).
The commands run as subprocesses on real MIDI files.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import symusic

from midigen.generate.checks import edit_warnings, redraw, sample_warnings
from midigen.generate.edit import Edit
from songgen import make_song

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
CELLO, FLUTE = 42, 73


def hooked(*args, seeds="", instruments="", timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{ROOT}{os.pathsep}{TESTS}",
               HOOK_NOTELESS_SEEDS=str(seeds), HOOK_NOTELESS_INSTRUMENTS=str(instruments))
    return subprocess.run([sys.executable, "-m", "hooked_midigen", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("checks") / "band.mid"
    p.write_bytes(bytes(make_song(5, bars=8, tpq=384).dumps_midi()))
    return p


def lines(r) -> list[dict]:
    assert r.returncode == 0, r.stderr[-2000:]
    return [json.loads(x) for x in r.stdout.splitlines()]


def test_arrange_with_no_notes_warns_and_gives_up_after_the_retries(edit_run, song, tmp_path):
    r = hooked("arrange", "--ckpt", edit_run, song, "--add", "cello", "--seed", 5, "--retry", 1, "--out", tmp_path,
               seeds="5,6", instruments=CELLO)
    (row,) = lines(r)
    assert row["notes_written"] == 0 and row["seed"] == 5
    assert row["warnings"][0].startswith("the model wrote no Cello")
    assert "seed 6" in row["warnings"][-1]
    assert not symusic.Score(row["file"]).tracks[-1].name == "Cello" or \
        symusic.Score(row["file"]).tracks[-1].note_num() == 0


def test_retry_redraws_with_the_next_seeds_and_says_which_gave_the_result(edit_run, song, tmp_path):
    r = hooked("arrange", "--ckpt", edit_run, song, "--add", "cello", "--seed", 5, "--out", tmp_path,
               seeds="5,6", instruments=CELLO)  # default --retry 2: seeds 6 (empty) then 7
    (row,) = lines(r)
    assert row["seed"] == 7 and row["warnings"] == [] and row["notes_written"] > 0
    again = lines(hooked("arrange", "--ckpt", edit_run, song, "--add", "cello", "--seed", 7, "--out", tmp_path))[0]
    assert Path(again["file"]).read_bytes() == Path(row["file"]).read_bytes()  # seed 7 gives it again
    assert again["file"] != row["file"]  # and never over the earlier file


def test_infill_span_left_silent_is_said(edit_run, song, tmp_path):
    r = hooked("infill", "--ckpt", edit_run, song, "--start", 2, "--end", 6, "--seed", 5, "--retry", 0,
               "--out", tmp_path, seeds="5")
    (row,) = lines(r)
    assert row["notes_written"] == 0 and row["notes_removed"] > 0
    assert row["warnings"] == [f"the rewritten span 2.0-6.0 s is silent where the song had {row['notes_removed']} "
                               "notes: it may not know this music. Try another seed, or teach it your music "
                               "(midigen tune)"]


def test_sample_requested_instrument_with_no_notes(edit_run, tmp_path):
    r = hooked("sample", "--ckpt", edit_run, "--instruments", "flute,piano", "--seconds", 5, "--seed", 5,
               "--retry", 0, "--out", tmp_path, seeds="5", instruments=FLUTE)
    assert r.returncode == 0, r.stderr
    assert "warning: the model wrote no Flute" in r.stdout
    r = hooked("sample", "--ckpt", edit_run, "--instruments", "flute,piano", "--seconds", 5, "--seed", 5,
               "--out", tmp_path, seeds="5", instruments=FLUTE)
    assert "warning" not in r.stdout and "(redrawn: seed 6 with --num-samples 1 gives it)" in r.stdout


def test_sample_sparse_continuation_is_said(edit_run, song, tmp_path):
    r = hooked("sample", "--ckpt", edit_run, "--prompt", song, "--seconds", 5, "--seed", 5, "--retry", 0,
               "--out", tmp_path, seeds="5")
    assert r.returncode == 0, r.stderr
    assert "warning: " in r.stdout
    assert "under 10% of the song's own" in r.stdout or "no new notes" in r.stdout


# ----- the library functions, on scores built by hand --------------------------------------------


def _score(notes: dict[int, list[int]], tpq=480):
    """A score at 120 BPM with one track per instrument; notes as onset ticks (a quarter long each)."""
    s = symusic.Score(tpq)
    for inst, onsets in notes.items():
        t = symusic.Track(str(inst), inst, False)
        for o in onsets:
            t.notes.append(symusic.Note(o, tpq, 60, 80))
        s.tracks.append(t)
    return s


def test_sample_warnings_rate_threshold():
    song = list(range(0, 480 * 40, 240))  # 20 s of eighths: 4 notes per second
    sparse = _score({0: song + [480 * 40, 480 * 60]})  # 2 new notes in 10 s: 0.2/s = 5%
    assert "under 10%" in sample_warnings(sparse, 20.0, 30.0)[0]
    dense = _score({0: song + list(range(480 * 40, 480 * 60, 960))})  # 0.5/s = 12.5%
    assert sample_warnings(dense, 20.0, 30.0) == []
    assert sample_warnings(_score({0: song}), 20.0, 30.0)[0].startswith("no new notes")
    assert sample_warnings(_score({0: song}), 0.0, 20.0, instruments=[0, FLUTE]) == [
        "the model wrote no Flute: it may not know this music. Try another seed, or teach it your music "
        "(midigen tune)"]


def test_edit_warnings_infill_only_for_instruments_the_span_had():
    original = _score({0: [0, 480, 960], 33: [4800]})
    edited = _score({0: [0, 480], 33: [4800]})
    e = Edit(edited, written=1, removed=2, span_steps=(0, 48), span_seconds=(0.0, 1.0), targets=(0, 33))
    assert edit_warnings(original, e, "infill") == []  # bass had nothing in the span
    e = Edit(_score({0: [], 33: [4800]}), written=0, removed=2, span_steps=(0, 48), span_seconds=(0.0, 1.0),
             targets=(0, 33))
    assert "silent where the song had 2 notes" in edit_warnings(original, e, "infill")[0]
    e = Edit(edited, written=0, removed=0, span_steps=(0, 480), span_seconds=(0.0, 10.0), targets=(CELLO,))
    assert edit_warnings(original, e, "arrange")[0].startswith("the model wrote no Cello")


def test_redraw_seeds_never_repeat_and_empty_keeps_the_first():
    calls = []

    def draw(seed, n):
        calls.append((seed, n))
        return [(seed, row) for row in range(n)]

    out = redraw(draw, lambda r: ["empty"] if r[0] < 100 else [], seed=10, num_samples=3, retries=2)
    assert calls == [(10, 3), (11, 1), (14, 1), (12, 1), (15, 1), (13, 1), (16, 1)]
    assert [(seed, row) for _, seed, row, _ in out] == [(10, 0), (10, 1), (10, 2)]
    assert out[0][3] == ["empty", "still empty after redrawing with seed 11, 14"]
    out = redraw(draw, lambda r: ["empty"] if r[0] == 10 else [], seed=10, num_samples=1, retries=2)
    assert out == [((11, 0), 11, 0, [])]
