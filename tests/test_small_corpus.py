"""A musician's own small folder: every split gets a file, the counts agree, nothing is lost unsaid.

Real `midigen prepare` processes on real MIDI files (songgen's multi-track songs).
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from midigen.data.splits import MIN_FILES, SplitRule, position, split_of, top_up
from midigen.music.codec import Codec
from songgen import make_song_bytes, write_songs

REPO = Path(__file__).resolve().parents[1]


def prepare(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "midigen", "prepare", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "files.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def twelve(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("twelve")
    write_songs(d, 12)
    return d


def test_twelve_songs_get_a_file_in_val_and_test_with_their_own_tokens(twelve, tmp_path):
    out = tmp_path / "data"
    r = prepare(twelve, "--out", out, "--workers", 1, "--no-progress")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert [summary["splits"][s]["files"] for s in ("val", "test")] == [1, 1]
    assert summary["splits"]["train"]["files"] == 10
    assert r.stderr.count("moved to") == 2 and "small corpus" in r.stderr
    codec = Codec()
    for row in rows(out):  # every row's tokens are its file's, wherever it went
        tokens = np.fromfile(out / f"{row['split']}.bin", dtype=np.uint16)[row["offset"]:row["offset"] + row["tokens"]]
        assert np.array_equal(tokens, codec.encode(Path(row["name"]).read_bytes())), row["name"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["splits"] == summary["splits"] and "nearest its range" in meta["split_rule"]
    again = tmp_path / "again"
    prepare(twelve, "--out", again, "--workers", 2, "--no-progress")
    assert (again / "val.bin").read_bytes() == (out / "val.bin").read_bytes()  # deterministic


def test_explicit_zero_fraction_and_too_few_files_are_said_naming_the_flag(twelve, tmp_path):
    r = prepare(twelve, "--out", tmp_path / "a", "--val-frac", 0, "--no-progress", "--workers", 1)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["splits"]["val"]["files"] == 0
    assert "the val split is empty: --val-frac is 0" in r.stderr
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    t = subprocess.run([sys.executable, "-m", "midigen", "train", str(REPO / "configs" / "test.toml"), "--data",
                        str(tmp_path / "a"), "--out", str(tmp_path / "run"), "--steps", "2", "--eval-interval", "2"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert t.returncode == 2 and "--val-frac" in t.stderr and t.stderr.count("\n") == 1, t.stderr
    two = tmp_path / "two"
    two.mkdir()
    for f in sorted(twelve.iterdir())[:2]:
        shutil.copy(f, two)
    r = prepare(two, "--out", tmp_path / "b", "--no-progress", "--workers", 1)
    assert "2 kept files are too few" in r.stderr and "--val-frac" in r.stderr


def test_top_up_leaves_large_corpora_alone_and_is_a_pure_function():
    rule = SplitRule("hash", 0.1, 0.1)
    rng = np.random.default_rng(0)
    hashes = [bytes(rng.integers(0, 256, 16, dtype=np.uint8)).hex() for _ in range(400)]
    splits = [split_of(h, 0.1, 0.1) for h in hashes]
    assert top_up(hashes, splits, rule) == {}  # every split already has files
    few = hashes[:5]
    few_splits = ["train"] * 5
    moves = top_up(few, few_splits, rule)
    assert sorted(moves.values()) == ["test", "val"]
    val = next(i for i, s in moves.items() if s == "val")
    # the file moved to val is the train file nearest [0, 0.1) on the circle
    dist = lambda u: min(u - 0.1 if u >= 0.1 else 0, 1 - u)  # noqa: E731
    assert val == min((i for i in range(5) if moves.get(i) != "test"), key=lambda i: dist(position(few[i])))
    assert top_up(few, few_splits, rule) == moves
    assert top_up(few[: MIN_FILES - 1], few_splits[: MIN_FILES - 1], rule) == {}


def test_counts_agree_duplicates_keep_every_style_and_truncated_rmi_are_handled(twelve, tmp_path):
    src = tmp_path / "mine"
    src.mkdir()
    for f in sorted(twelve.iterdir())[:4]:
        shutil.copy(f, src)
    shutil.copy(sorted(twelve.iterdir())[0], src / "copy.mid")  # a duplicate
    whole = make_song_bytes(99)
    (src / "cut.mid").write_bytes(whole[: len(whole) * 2 // 3])  # truncated
    body = b"RMID" + b"data" + struct.pack("<I", len(make_song_bytes(98))) + make_song_bytes(98)
    (src / "wrapped.rmi").write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    out = tmp_path / "data"
    r = prepare(f"jazz={src}", f"blues={src}", "--out", out, "--workers", 1)  # progress bar on
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    bar = r.stderr.replace("\r", "\n").split("kept=")[-1]
    assert bar.startswith(f"{s['kept']}, skipped={s['skipped']}"), r.stderr
    assert s["kept"] == 5 and s["duplicates"] == 7  # 4 songs + the .rmi; the second source repeats them all
    by_name = {(r["name"], r["split"] is not None): r for r in rows(out)}
    kept = [r for r in rows(out) if r["split"] is not None]
    assert all(r["styles"] == ["blues", "jazz"] for r in kept), kept
    assert s["styles"] == {"blues": 5, "jazz": 5}
    assert any(name.endswith("wrapped.rmi") for name, ok in by_name if ok)
    cut = [r for r in rows(out) if r["name"].endswith("cut.mid")]
    assert cut and all(r["skipped"].startswith("truncated: ") for r in cut)
