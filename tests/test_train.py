"""Training: config overrides, data windows, DDP = single process, exact resume after SIGKILL, failures."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from midigen.music.chords import NO_CHORD, QUALITIES
from midigen.train.config import load_config, parse_overrides
from midigen.errors import UsageError

TEST_TOML = "configs/test.toml"


def run(repo_root, python_exe, *args, env=None, timeout=300, cmd=None):
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run((cmd or [python_exe, "-m", "midigen"]) + [str(a) for a in args], cwd=repo_root,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def hooks_env(**hooks) -> dict:
    """Environment that lets `python -m hooked_midigen` (tests/hooked_midigen.py) inject ``hooks``."""
    tests = str(Path(__file__).resolve().parent)
    return {"PYTHONPATH": os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH", "")) if p), **hooks}


def log_rows(run_dir) -> list[tuple]:
    rows = [json.loads(line) for line in open(Path(run_dir) / "log.jsonl")]
    return [(r["step"], r.get("loss"), r.get("val_loss"), r.get("val_bits_per_note")) for r in rows]


# ----- config -----------------------------------------------------------------------------------


def test_overrides_any_form_and_order(repo_root):
    o = parse_overrides(["--eval-interval", "5", "--lr=1e-3", "--grad_accum", "3", "--transpose=false",
                         "--init-from", "runs/x", "--min_lr", "-0"])
    assert o == {"eval_interval": 5, "lr": 1e-3, "grad_accum": 3, "transpose": False, "init_from": "runs/x",
                 "min_lr": 0.0}
    cfg = load_config(repo_root / TEST_TOML, ["--eval_interval=7", "--steps", "1e3", "--compile", "auto"])
    assert (cfg.eval_interval, cfg.steps, cfg.compile) == (7, 1000, "auto")


@pytest.mark.parametrize("args, named", [
    (["--lr=abc"], "lr"), (["--steps=2.5"], "steps"), (["--transpose=maybe"], "transpose"),
    (["--lr=-1"], "lr"), (["--n-head=3"], "n_head"), (["--dtype=float16"], "dtype"), (["--steps"], "steps"),
])
def test_bad_override_values_are_usage_errors(repo_root, args, named):
    with pytest.raises(UsageError, match=named):
        load_config(repo_root / TEST_TOML, args)


def test_unknown_key_exits_2_with_suggestion(repo_root, python_exe, tmp_path):
    res = run(repo_root, python_exe, "train", TEST_TOML, "--eval-intervl=5", "--out", tmp_path / "r")
    assert res.returncode == 2, res.stderr
    assert "eval-intervl" in res.stderr and "eval_interval" in res.stderr
    res = run(repo_root, python_exe, "train", TEST_TOML, "--batch-size", "many")
    assert res.returncode == 2 and "batch_size" in res.stderr, res.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('steps = 10\nlearning_rate = 3e-4\n')
    res = run(repo_root, python_exe, "info", "--config", bad)
    assert res.returncode == 2 and "learning_rate" in res.stderr, res.stderr


# ----- data -------------------------------------------------------------------------------------


def test_editing_windows_learn_only_what_the_model_writes(tiny_dataset):
    """An editing window learns its base header, the context and the written notes; not the EDIT part
    (the user's choice), not the jump into the song's middle, not the given notes the decoder forces."""
    from midigen.data.dataset import Dataset, WindowSampler
    from midigen.music.sequences import given_positions

    sp = Dataset(tiny_dataset).split("train")
    codec = sp.codec
    x, y = WindowSampler(sp, 128, seed=4, transpose=False, edit_fraction=1.0).batch(0, 0, 32)
    edits = given_seen = 0
    for row, target in zip(x, y):
        if codec.FILL not in row:
            continue  # no editing sequence fitted there: a plain window
        edits += 1
        e, h = int(np.flatnonzero(row == codec.EDIT)[0]), codec.header_length(row)
        assert (target[: e - 1] == row[1:e]).all() and (target[e - 1 : h] == -1).all()
        given = given_positions(codec, row)
        fill = int(np.flatnonzero(row == codec.FILL)[0])
        for p in range(h + 1, len(row)):
            want = -1 if given[p] or row[p] == codec.PAD else row[p]
            assert target[p - 1] == want, (p, fill)
        given_seen += int(given.sum())
    assert edits >= 16 and given_seen > 0


def test_windows_carry_the_song_header(tiny_dataset):
    from midigen.data.dataset import Dataset, WindowSampler

    ds = Dataset(tiny_dataset)
    sp = ds.split("train")
    codec = ds.codec
    s = WindowSampler(sp, 64, seed=3, transpose=False)
    x, y = s.batch(step=5, micro=1, batch_size=32)
    x2, y2 = s.batch(step=5, micro=1, batch_size=32)
    assert (x == x2).all() and (y == y2).all()  # a pure function of (seed, step, micro)
    assert not (x == s.batch(step=5, micro=2, batch_size=32)[0]).all()
    assert (x[:, 0] == codec.BOS).all()  # every window starts with a song's header
    masked = (y == -1).sum(1)
    for row, target, m in zip(x, y, masked):
        h = codec.header_length(row)
        # the header is learned; in a window starting mid-song only the jump out of it is not
        assert m == 0 or (m == 1 and target[h - 1] == -1)
        assert (target[: h - 1] == row[1:h]).all()
    assert (masked > 0).any()  # most windows start mid-song
    # transposition moves pitched notes, chord roots (codec v4) and the header's KEY control together and
    # touches nothing else
    t = WindowSampler(sp, 64, seed=3, transpose=True)
    xt, _ = t.batch(step=5, micro=1, batch_size=32)
    is_note = (x >= codec.note_start) & (x < codec.dv_start)
    is_key = (x >= codec.key_start) & (x < codec.density_start)
    cs = codec.chord_start
    is_chord = (x >= cs) & (x < cs + NO_CHORD) if codec.has_chords else np.zeros_like(is_note)
    assert is_chord.any()
    assert (xt[~is_note & ~is_key & ~is_chord] == x[~is_note & ~is_key & ~is_chord]).all()
    moved = (xt != x).any(1)
    assert moved.any()
    for a, b in zip(x[moved], xt[moved]):
        n = (a >= codec.note_start) & (a < codec.dv_start) & ((a - codec.note_start) // 128 != 128)
        d = np.unique(b[n] - a[n])
        assert len(d) == 1 and -5 <= d[0] <= 6
        c = (a >= cs) & (a < cs + NO_CHORD)
        roots = ((b[c] - cs) // len(QUALITIES) - (a[c] - cs) // len(QUALITIES)) % 12
        assert (roots == d[0] % 12).all() and ((b[c] - cs) % len(QUALITIES) == (a[c] - cs) % len(QUALITIES)).all()


def test_eval_rows_score_each_token_once(tiny_dataset):
    from midigen.data.dataset import Dataset, eval_positions, eval_rows

    sp = Dataset(tiny_dataset).split("val")
    for budget in (10**9, 777):
        x, y = eval_rows(sp, 64, budget)
        pos = eval_positions(sp, budget)
        targets = y[y >= 0]
        assert len(targets) == len(pos) == min(budget, len(sp) - len(sp.starts))
        assert (targets == np.asarray(sp.tokens)[pos]).all()
        assert (x[:, 0] == Dataset(tiny_dataset).codec.BOS).all()  # every chunk sees the header


# ----- training runs ----------------------------------------------------------------------------


@pytest.mark.slow
def test_torchrun_two_processes_match_one(repo_root, python_exe, tiny_dataset, tmp_path):
    common = ["--data", tiny_dataset, "--steps", "6", "--eval-interval", "3", "--batch-size", "4"]
    torchrun = [str(Path(python_exe).parent / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "midigen"]
    ddp = run(repo_root, python_exe, "train", TEST_TOML, *common, "--out", tmp_path / "ddp", cmd=torchrun)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "2 process(es)" in ddp.stderr
    one = run(repo_root, python_exe, "train", TEST_TOML, *common, "--out", tmp_path / "one", "--grad-accum", "4")
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = log_rows(tmp_path / "ddp"), log_rows(tmp_path / "one")
    assert [r[0] for r in a] == [r[0] for r in b]
    for ra, rb in zip(a, b):
        for va, vb in zip(ra[1:], rb[1:]):
            assert (va is None) == (vb is None)
            if va is not None:
                assert va == pytest.approx(vb, rel=1e-4), (ra, rb)
    assert a[-2][1] < a[0][1]  # and it learns (the last row is the eval)


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(repo_root, python_exe, tiny_dataset, tmp_path):
    common = ["train", TEST_TOML, "--data", tiny_dataset, "--steps", "12", "--eval-interval", "4"]
    full = run(repo_root, python_exe, *common, "--out", tmp_path / "full")
    assert full.returncode == 0, full.stderr[-3000:]

    out = tmp_path / "killed"
    env = {**os.environ, **hooks_env(HOOK_STEP_SLEEP="0.25")}  # slowed from outside: no hook in train.py
    proc = subprocess.Popen([python_exe, "-m", "hooked_midigen", *map(str, common), "--out", str(out)],
                            cwd=repo_root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = None
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            saved = json.loads((out / "last" / "config.json").read_text())["info"]["step"]
        except (OSError, ValueError, KeyError):
            saved = None
        if saved:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert saved and saved < 12, "the run should have been killed mid-way"

    again = run(repo_root, python_exe, *common, "--out", out)  # no --resume: refuses to clobber
    assert again.returncode == 2 and "--resume" in again.stderr
    res = run(repo_root, python_exe, *common, "--out", out, "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    assert log_rows(out) == log_rows(tmp_path / "full")  # bit-for-bit the same run
    for name in ("best", "last"):
        assert (out / name / "model.safetensors").exists()
    png = (out / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    done = run(repo_root, python_exe, *common, "--out", out, "--resume")
    assert done.returncode == 2 and "already reached step 12" in done.stderr

    # fine-tuning from that run: same codec works; a dataset with another codec is refused
    ft = run(repo_root, python_exe, "train", TEST_TOML, "--data", tiny_dataset, "--steps", "2", "--eval-interval",
             "2", "--out", tmp_path / "ft", "--init-from", out)
    assert ft.returncode == 0, ft.stderr[-3000:]
    other = tmp_path / "other_codec"
    shutil.copytree(tiny_dataset, other)
    meta = json.loads((other / "meta.json").read_text())
    from midigen.music.codec import Codec, CodecParams

    meta["codec"] = Codec(CodecParams(velocity_levels=8)).to_dict()
    (other / "meta.json").write_text(json.dumps(meta))
    bad = run(repo_root, python_exe, "train", TEST_TOML, "--data", other, "--steps", "2", "--out",
              tmp_path / "ft2", "--init-from", out)
    assert bad.returncode == 2 and "codec" in bad.stderr, bad.stderr[-2000:]


def test_resume_without_checkpoint_exits_2(repo_root, python_exe, tiny_dataset, tmp_path):
    res = run(repo_root, python_exe, "train", TEST_TOML, "--data", tiny_dataset, "--out", tmp_path / "none",
              "--resume")
    assert res.returncode == 2 and "--resume" in res.stderr and "last" in res.stderr, res.stderr


def test_non_finite_loss_stops_naming_the_step(repo_root, python_exe, tiny_dataset, tmp_path):
    res = run(repo_root, python_exe, "train", TEST_TOML, "--data", tiny_dataset, "--out", tmp_path / "nan",
              "--lr=1e30", "--warmup-steps=0", "--steps=8", "--eval-interval=100")
    assert res.returncode == 1, res.stderr[-2000:]
    assert "at step 2" in res.stderr and "no checkpoint was written yet" in res.stderr, res.stderr[-2000:]


def test_wandb_flag_without_wandb_warns(repo_root, python_exe, tiny_dataset, tmp_path):
    try:
        import wandb  # noqa: F401

        pytest.skip("wandb is installed")
    except ImportError:
        pass
    res = run(repo_root, python_exe, "train", TEST_TOML, "--data", tiny_dataset, "--out", tmp_path / "wb",
              "--steps=2", "--eval-interval=2", "--wandb")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "wandb" in res.stderr and "not installed" in res.stderr
    rows = [json.loads(line) for line in open(tmp_path / "wb" / "log.jsonl")]
    assert {"step", "loss", "lr", "tokens_per_s", "elapsed"} <= set(rows[0])
    assert {"val_loss", "val_bits_per_note", "val_bits_per_second"} <= set(rows[-1])
    assert rows[-1]["val_bits_per_second"] > 0


# ----- learning-rate schedule on resume ----------------------------------------------------------


def test_resume_schedule_never_jumps():
    from midigen.train.schedule import Schedule, resume_schedule

    done = Schedule(lr=6e-4, min_lr=6e-5, warmup_steps=700, decay_end=10_000)
    assert resume_schedule(done, done, 10_000) == (done, None)  # same settings: exact resume
    # a finished run resumed with twice the steps stays at its floor instead of going back to ~3.4e-4
    longer = Schedule(6e-4, 6e-5, 700, 20_000)
    assert longer.lr_at(10_000) == pytest.approx(3.4e-4, rel=0.05)
    s, note = resume_schedule(done, longer, 10_000)
    assert "floor" in note and "6e-05" in note and "20000" in note
    assert all(s.lr_at(k) == pytest.approx(6e-5) for k in (10_000, 15_000, 19_999, 25_000))
    # mid-decay: continues from where the old schedule was, on a cosine to the new end
    s, note = resume_schedule(done, longer, 5_000)
    assert s.lr_at(5_000) == pytest.approx(done.lr_at(5_000)) and "cosine" in note
    lrs = [s.lr_at(k) for k in range(5_000, 20_001, 500)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:])) and lrs[-1] == pytest.approx(6e-5)
    # saved and resumed again with the same settings: the anchored curve goes on unchanged
    s2 = Schedule.from_dict(s.to_dict())
    assert resume_schedule(s2, longer, 8_000) == (s2, None)
    # inside warmup the two schedules agree: the new one is taken, and said
    s, note = resume_schedule(done, longer, 100)
    assert s == longer and "unchanged" in note


def test_resume_with_more_steps_keeps_the_lr_floor(repo_root, python_exe, tiny_dataset, tmp_path):
    common = ["train", TEST_TOML, "--data", tiny_dataset, "--out", tmp_path / "r", "--eval-interval", "4",
              "--warmup-steps", "2"]
    first = run(repo_root, python_exe, *common, "--steps", "4")
    assert first.returncode == 0, first.stderr[-2000:]
    more = run(repo_root, python_exe, *common, "--steps", "8", "--resume")
    assert more.returncode == 0, more.stderr[-2000:]
    assert "lr schedule changed" in more.stderr and "floor" in more.stderr, more.stderr[-2000:]
    lrs = {r["step"]: r["lr"] for r in map(json.loads, open(tmp_path / "r" / "log.jsonl")) if "lr" in r}
    min_lr = load_config(repo_root / TEST_TOML).min_lr
    assert lrs[4] > min_lr  # the first run's last step was still decaying; its schedule ended at step 4
    assert all(lrs[k] == pytest.approx(min_lr) for k in (5, 6, 7, 8)), lrs  # not stretched back up


# ----- batches ----------------------------------------------------------------------------------


def test_prefetcher_gives_the_samplers_batches_in_order(tiny_dataset):
    import torch

    from midigen.data.dataset import Dataset, WindowSampler
    from midigen.train.loader import Prefetcher

    sampler = WindowSampler(Dataset(tiny_dataset).split("train"), 64, seed=5)
    pf = Prefetcher(sampler, 4, start=3, stop=6, micros=2, rank=1, world=2, device=torch.device("cpu"))
    try:
        for step in range(3, 6):
            for micro in range(2):
                x, y = pf.get(step, micro)
                xb, yb = sampler.batch(step, micro * 2 + 1, 4)  # this rank's share of the global batch
                assert (x.numpy() == xb).all() and (y.numpy() == yb).all()
    finally:
        pf.close()
    assert not pf.thread.is_alive()

    class Broken:
        def batch(self, *a):
            raise OSError("the .bin file went away")

    pf = Prefetcher(Broken(), 4, start=0, stop=2, micros=1, rank=0, world=1, device=torch.device("cpu"))
    with pytest.raises(OSError, match="went away"):
        pf.get(0, 0)
    pf.close()


# ----- failures under torchrun ------------------------------------------------------------------


@pytest.mark.slow
def test_rank0_failure_stops_every_rank_with_its_error(repo_root, python_exe, tiny_dataset, tmp_path):
    """Rank 0 cannot save (disk full, injected): rank 1 must not wait for it in a collective."""
    torchrun = [str(Path(python_exe).parent / "torchrun"), "--standalone", "--nproc_per_node=2", "-m",
                "hooked_midigen"]
    t0 = time.time()
    res = run(repo_root, python_exe, "train", TEST_TOML, "--data", tiny_dataset, "--out", tmp_path / "r",
              "--steps", "6", "--eval-interval", "2", cmd=torchrun, env=hooks_env(HOOK_FAIL_SAVE_RANK="0"),
              timeout=240)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    assert "midigen train: error: saving the step-2 checkpoint failed: [Errno 28] No space left" in out, out[-3000:]
    assert "midigen train: error: stopping: rank 0 failed saving the step-2 checkpoint" in out, out[-3000:]
    assert "Connection closed by peer" not in out  # rank 1 left at the agreement, not by a broken socket
    assert time.time() - t0 < 200
