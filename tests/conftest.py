"""Shared fixtures: generated songs, real music21 exports and a small prepared dataset.

All are session-scoped and built from real files by the real code paths, so every test module
(codec, prepare, training, sampling) sees the same data without paying for it twice.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable

MUSIC21_TEST_PIECES = 30


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models decode fastest on one thread, and a busy machine does not stall them (modules opt in
    with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def python_exe() -> str:
    """The interpreter for CLI subprocesses (`python -m midigen ...`)."""
    return PYTHON


@pytest.fixture(scope="session")
def songs_dir(tmp_path_factory) -> Path:
    """60 generated multi-track GM songs (drums, bass, chords, melody, tempo changes)."""
    from songgen import write_songs

    d = tmp_path_factory.mktemp("songs")
    write_songs(d, 60)
    return d


@pytest.fixture(scope="session")
def music21_dir() -> Path:
    """About 30 real pieces exported from music21, the same number from each demo collection
    (chorales, Palestrina, string quartets, fiddle tunes alone and with chords), one track per part.

    Cached in the user cache (MIDIGEN_CACHE), so only the first session pays the ~10 s export.
    """
    from midigen.data.corpus import demo_corpus_dir

    return demo_corpus_dir(progress=False, limit=MUSIC21_TEST_PIECES)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, songs_dir, music21_dir) -> Path:
    """A prepared dataset folder (train/val/test .bin, meta.json, files.jsonl) from both fixtures.

    val and test are 10% each, so every split holds several songs.
    """
    from midigen.data.prepare import prepare

    out = tmp_path_factory.mktemp("tiny_dataset")
    summary = prepare([str(songs_dir), str(music21_dir)], out, workers=2, val_frac=0.1, test_frac=0.1,
                      progress=False)
    for split in ("train", "val", "test"):
        assert summary["splits"][split]["files"] >= 2, summary
    return out


@pytest.fixture(scope="session")
def edit_run(tiny_dataset, tmp_path_factory) -> Path:
    """A run dir trained through the real `midigen train` with the editing objective on
    (configs/test.toml, ``--edit-fraction 0.5``, 40 steps: a few seconds), so its checkpoint can infill
    and arrange. Shared by the editing and studio tests."""
    out = tmp_path_factory.mktemp("edit_run") / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "midigen", "train", str(REPO / "configs" / "test.toml"),
                        "--data", str(tiny_dataset), "--out", str(out), "--edit-fraction", "0.5", "--steps", "40",
                        "--grad-accum", "1", "--block-size", "128", "--eval-interval", "40"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return out
