"""The one WAV renderer (generate/synth.py): a child process with a time limit, behind `--wav` and the studio.

A hung synthesizer is faked by a child whose render never returns (tests/studio_server.py); the CLI
gets it through tests/hooked_midigen.py (``HOOK_SYNTH_HANG=S``), so product code carries no hook.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import wave
from pathlib import Path

import mido
import pytest
import symusic

from midigen.generate.render import find_soundfont
from midigen.generate.sandbox import Refused
from midigen.generate.synth import Renderer, RenderError
from midigen.model.checkpoint import capabilities, load_checkpoint
from midigen.music.codec import DRUMS
from midigen.music.timing import notes_end_seconds
from songgen import make_song
from studio_server import ROOT, synth_always_hanging

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def song_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "song.mid"
    path.write_bytes(bytes(make_song(3, bars=6).dumps_midi()))
    return path


def test_renders_the_written_file_to_its_last_note_and_no_further_than_a_tail(song_file, tmp_path):
    score = symusic.Score.from_file(str(song_file))
    with Renderer(find_soundfont()) as r:
        wav = r.render(song_file, tmp_path / "a.wav", notes_end_seconds(score))
        assert r.render(song_file, tmp_path / "b.wav", notes_end_seconds(score)).read_bytes() == wav.read_bytes()
    with wave.open(str(wav)) as w:
        assert w.getframerate() == 44100 and w.getnchannels() == 2
        end = notes_end_seconds(score)
        assert end - 0.05 < w.getnframes() / 44100 < end + 2.05  # every note, at most the tail after


def test_a_file_without_notes_is_refused_in_one_line(tmp_path):
    empty = tmp_path / "empty.mid"
    empty.write_bytes(bytes(symusic.Score(480).dumps_midi()))
    with Renderer(find_soundfont()) as r, pytest.raises(Refused, match="no notes"):
        r.render(empty, tmp_path / "e.wav", 0.0)
    assert not (tmp_path / "e.wav").exists()


def test_a_synthesizer_hanging_at_every_rate_is_a_render_error_not_a_hang(song_file, tmp_path):
    r = Renderer(find_soundfont(), timeout=lambda seconds: 2.0, target=synth_always_hanging)
    try:
        t = time.monotonic()
        with pytest.raises(RenderError) as e:
            r.render(song_file, tmp_path / "h.wav", 10.0)
        assert time.monotonic() - t < 60  # two rates, 2 s each, then given up
        assert "44100 Hz" in str(e.value) and "48000 Hz" in str(e.value) and "\n" not in str(e.value)
        assert not (tmp_path / "h.wav").exists()
    finally:
        r.close()
    assert r.box.proc is None  # the hung child was killed


def _cli(*args, hang: float | None = None, timeout=300):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]), OMP_NUM_THREADS="1")
    module = "midigen"
    if hang is not None:
        env["HOOK_SYNTH_HANG"] = str(hang)
        module = "hooked_midigen"
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _midi_back(path: Path) -> int:
    """Notes in the file as both readers see it (they must agree): the file is whole."""
    notes = symusic.Score.from_file(str(path)).note_num()
    ons = sum(1 for t in mido.MidiFile(str(path)).tracks for m in t if m.type == "note_on" and m.velocity)
    assert notes == ons and notes > 0
    return notes


def test_cli_sample_wav_writes_one_wav_per_midi(edit_run, tmp_path):
    r = _cli("sample", "--ckpt", edit_run, "--seconds", 4, "--seed", 3, "--num-samples", 2, "--wav",
             "--out", tmp_path, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    mids, wavs = sorted(tmp_path.glob("*.mid")), sorted(tmp_path.glob("*.wav"))
    assert len(mids) == 2 and [p.with_suffix(".wav") for p in mids] == wavs
    for mid, wav in zip(mids, wavs):
        _midi_back(mid)
        with wave.open(str(wav)) as w:
            end = notes_end_seconds(symusic.Score.from_file(str(mid)))
            assert end - 0.05 < w.getnframes() / w.getframerate() < end + 2.05


@pytest.mark.parametrize("task", ["sample", "infill", "arrange"])
def test_cli_wav_with_a_hung_synthesizer_exits_1_in_one_line_and_keeps_the_midi(edit_run, tmp_path, task):
    song = tmp_path / "song.mid"
    song.write_bytes(bytes(make_song(3, bars=6).dumps_midi()))
    _, codec, config = load_checkpoint(edit_run, "cpu")
    known = capabilities(config, codec)["instruments"]
    args = {"sample": ["--seconds", 4],
            "infill": [song, "--start", 2, "--end", 4],
            "arrange": [song, "--add", "drums" if DRUMS in known else known[0]]}[task]
    t = time.monotonic()
    r = _cli(task, "--ckpt", edit_run, *args, "--seed", 1, "--wav", "--out", tmp_path / "out", "--device", "cpu",
             hang=2.0)
    assert time.monotonic() - t < 280
    err = r.stderr.strip()
    assert r.returncode == 1, (r.returncode, err)
    assert err.startswith(f"midigen {task}: error: rendering the audio at 44100 Hz took longer than 2 s"), err
    assert "\n" not in err and "48000 Hz" in err
    mids = list((tmp_path / "out").glob("*.mid"))
    assert len(mids) == 1 and not list((tmp_path / "out").glob("*.wav"))
    _midi_back(mids[0])
    if task != "sample":  # the MIDI's line came before the render failed
        assert json.loads(r.stdout.splitlines()[0])["file"] == str(mids[0])
    else:
        assert r.stdout.splitlines()[0] == str(mids[0])
