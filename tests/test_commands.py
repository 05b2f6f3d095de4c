"""What trying every README command found: exit codes, `info` verifying, `eval --samples`, edit file
names, a continuation's own meter, and `--help`. Real subprocesses on real files."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import symusic

from midigen.cli.main import build_parser
from songgen import make_song
from clirun import midigen

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def song44(tmp_path_factory) -> Path:
    """A band song in 4/4 (songgen's seed 1), 8 bars."""
    s = make_song(1, bars=8, tpq=480)
    assert (s.time_signatures[0].numerator, s.time_signatures[0].denominator) == (4, 4)
    p = tmp_path_factory.mktemp("commands") / "song44.mid"
    p.write_bytes(bytes(s.dumps_midi()))
    return p


def _ckpt_dir(run: Path) -> Path:
    return run / "best" if (run / "best").is_dir() else run


def test_exit_codes_follow_one_rule(edit_run, tmp_path):
    missing = midigen("sample", "--ckpt", tmp_path / "nothing", "--seconds", 1)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    tampered = tmp_path / "tampered"
    shutil.copytree(_ckpt_dir(edit_run), tampered)
    w = tampered / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    r = midigen("sample", "--ckpt", tampered, "--seconds", 1)
    assert r.returncode == 2 and "does not match its recorded hash" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = midigen("prepare", empty, "--out", tmp_path / "d", "--no-progress")
    assert r.returncode == 2 and "no MIDI files" in r.stderr
    r = midigen("prepare", tmp_path / "absent", "--out", tmp_path / "d", "--no-progress")
    assert r.returncode == 2
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"MThd nonsense")
    r = midigen("roundtrip", bad, tmp_path / "o.mid")
    assert r.returncode == 2 and r.stderr.count("\n") == 1


def test_info_verifies_a_truncated_checkpoint(edit_run, tmp_path):
    ok = midigen("info", "--ckpt", edit_run)
    assert ok.returncode == 0 and json.loads(ok.stdout)["can_edit"]
    cut = tmp_path / "cut"
    shutil.copytree(_ckpt_dir(edit_run), cut)
    w = cut / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    r = midigen("info", "--ckpt", cut)
    assert r.returncode == 2 and r.stdout == "" and "model.safetensors" in r.stderr


def test_eval_samples_reads_the_folders_own_files_and_refuses_ckpt(edit_run, tiny_dataset, song44, tmp_path):
    gen = tmp_path / "gen"
    (gen / "edit").mkdir(parents=True)
    shutil.copy(song44, gen / "a.mid")
    for k in range(3):  # real music in a subfolder must not count
        (gen / "edit" / f"source{k}.mid").write_bytes(bytes(make_song(k + 10, bars=8).dumps_midi()))
    r = midigen("eval", "--samples", gen, "--data", tiny_dataset)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["samples"] == 1
    r = midigen("eval", "--samples", gen, "--ckpt", edit_run, "--data", tiny_dataset)
    assert r.returncode == 2 and "not both" in r.stderr


def test_edit_outputs_never_overwrite_each_other(edit_run, song44, tmp_path):
    files = []
    for span in (("1", "3"), ("4", "6"), ("1", "3")):
        r = midigen("infill", "--ckpt", edit_run, song44, "--start", span[0], "--end", span[1], "--seed", 3,
                    "--retry", 0, "--out", tmp_path)
        assert r.returncode == 0, r.stderr
        files.append(json.loads(r.stdout.splitlines()[0])["file"])
    assert len(set(files)) == 3 and all(Path(f).exists() for f in files)
    names = [Path(f).name for f in files]
    assert re.fullmatch(r"song44-infill-\d+-\d+ms-3-0\.mid", names[0]), names
    assert names[2] == names[0].replace(".mid", "-2.mid")
    assert Path(files[0]).read_bytes() == Path(files[2]).read_bytes()  # same span, same seed: same music


def test_continuation_meter_starts_where_the_new_music_does(edit_run, song44, tmp_path):
    r = midigen("sample", "--ckpt", edit_run, "--prompt", song44, "--time-signature", "3/4", "--seconds", 3,
                "--seed", 1, "--retry", 0, "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    out = symusic.Score(r.stdout.splitlines()[0])
    meters = [(t.time, t.numerator, t.denominator) for t in out.time_signatures]
    assert meters[0] == (0, 4, 4) and len(meters) == 2 and meters[1][1:] == (3, 4)
    prompt_last_onset = max(int(t.notes.numpy()["time"].max()) for t in symusic.Score(song44).tracks
                            if t.note_num())
    step = out.ticks_per_quarter // 24  # the model's grid: the prompt's last onset, rounded to it
    assert meters[1][0] >= prompt_last_onset * out.ticks_per_quarter // 480 - step // 2


@pytest.mark.parametrize("command", ["sample", "infill", "arrange"])
def test_every_flag_has_help_with_its_default(command):
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    for action in sub._actions:
        if action.dest == "help" or action.option_strings == []:
            continue
        text = action.help or ""
        assert text, action.option_strings
        if not isinstance(action.const, bool) and action.nargs != 0:  # store_true flags are off by default
            assert "default" in text or action.required, (action.option_strings, text)
    r = midigen(command, "--help")
    assert "nucleus" in r.stdout and "--retry" in r.stdout
