"""Checkpoints: readers never write, even when they land between a save's two renames."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from midigen.model.checkpoint import load_checkpoint, read_config, resolve, save_checkpoint, verify
from midigen.music.codec import Codec
from midigen.errors import UsageError
from midigen.model.model import GPT, GPTConfig, padded_vocab


def _tree(root: Path) -> dict:
    """Every path under ``root`` with its inode and mtime: any rename or rewrite shows."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.stat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_ino, st.st_mtime_ns)
    return out


def _model(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=padded_vocab(Codec().vocab_size), n_layer=1, n_head=2, n_embd=32, block_size=16))


def test_reader_reads_a_mid_swap_run_dir_without_renaming(tmp_path):
    codec = Codec()
    run = tmp_path / "run"
    save_checkpoint(run / "best", _model(1), codec, {"step": 10})
    save_checkpoint(run / "last", _model(2), codec, {"step": 20})
    # a save killed between its two renames: best/ moved aside to best.old/, the new one not yet in
    os.replace(run / "best", run / "best.old")
    before = _tree(tmp_path)

    assert resolve(run) == run / "best.old"
    assert resolve(run / "best") == run / "best.old"
    assert read_config(run)["info"]["step"] == 10
    verify(run)
    model, _, config = load_checkpoint(run)
    assert config["info"]["step"] == 10
    torch.testing.assert_close(model.wte.weight, _model(1).wte.weight)
    assert _tree(tmp_path) == before  # nothing renamed, nothing written

    # the writer is the one that finishes the swap
    save_checkpoint(run / "best", _model(3), codec, {"step": 30})
    assert sorted(p.name for p in run.iterdir()) == ["best", "last"]
    assert read_config(run)["info"]["step"] == 30


def test_reader_refuses_what_is_not_a_checkpoint(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        resolve(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="not a midigen checkpoint"):
        resolve(tmp_path / "empty")
