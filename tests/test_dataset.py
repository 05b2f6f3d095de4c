"""Reading prepared data: evaluation rows score the right tokens, and a folder is read as one set."""
from __future__ import annotations

import json

import numpy as np
import pytest
import symusic

import midigen.data.dataset
from midigen.music.codec import Codec
from midigen.data.dataset import Dataset, Split, eval_positions, eval_rows
from midigen.errors import MidigenError, UsageError
from midigen.data.prepare import prepare

CODEC = Codec()


def many_instruments_song(n_programs: int, seed: int) -> np.ndarray:
    """A real encoded song whose header (one INST token per instrument) is n_programs + 2 long."""
    rng = np.random.default_rng(seed)
    s = symusic.Score(480)
    for prog in range(n_programs):
        tr = symusic.Track("t", prog, False)
        for k in range(6):
            tr.notes.append(symusic.Note(k * 240 + int(rng.integers(0, 120)), 200, int(rng.integers(30, 90)), 90))
        s.tracks.append(tr)
    return CODEC.encode_score(s)


def split_of_songs(tmp_path, songs) -> Split:
    np.concatenate(songs).astype(np.uint16).tofile(tmp_path / "test.bin")
    return Split(tmp_path, "test", CODEC, None)


@pytest.mark.parametrize("block_size", [16, 40, 64, 200])
def test_eval_rows_with_headers_longer_than_the_context(tmp_path, block_size):
    """Headers of 82 and 52 tokens against contexts of 16-200: every token is scored once, in order,
    each from the token right before it (before the fix, n_ctx went negative and the wrong tokens
    were scored)."""
    songs = [many_instruments_song(80, 1), many_instruments_song(50, 2), many_instruments_song(3, 3)]
    assert [CODEC.header_length(s) for s in songs] == [82, 52, 5]
    sp = split_of_songs(tmp_path, songs)
    tokens = np.asarray(sp.tokens).astype(np.int64)
    for budget in (10**9, 100, 1500):
        x, y = eval_rows(sp, block_size, budget)
        pos = eval_positions(sp, budget)
        scored = y >= 0
        assert scored.sum() == len(pos) == min(budget, len(tokens) - len(songs))
        np.testing.assert_array_equal(y[scored], tokens[pos])
        np.testing.assert_array_equal(x[scored], tokens[pos - 1])  # the true previous token as context
        # the scored positions in each row are one run at its end: context, then targets
        for row in scored:
            k = np.flatnonzero(row)
            assert len(k) and k[-1] - k[0] + 1 == len(k)


def test_eval_rows_unchanged_for_ordinary_songs(tmp_path):
    """Short headers take the same rows as before the fix: BOS first in every row, header in front."""
    songs = [many_instruments_song(4, s) for s in range(5)]
    sp = split_of_songs(tmp_path, songs)
    x, y = eval_rows(sp, 32, 10**9)
    assert (x[:, 0] == CODEC.BOS).all()
    for row_x, row_y in zip(x, y):
        k = int(np.flatnonzero(row_y >= 0)[0])
        h = CODEC.header_length(row_x)
        assert h >= 3 and (k == 0 or k >= h - 1)  # a later chunk's header is context, never scored


# ----- a dataset folder is read as one set ------------------------------------------------------


def test_reader_racing_a_republish_gets_one_whole_set(tmp_path, songs_dir, monkeypatch):
    """A prepare publishes a new set while a reader is opening the folder: the reader notices and
    reads the new set whole, never new tokens with old offsets."""
    out = tmp_path / "data"
    (tmp_path / "a").mkdir()
    for p in sorted(songs_dir.glob("*.mid"))[:12]:
        (tmp_path / "a" / p.name).write_bytes(p.read_bytes())
    prepare([tmp_path / "a"], out, workers=1, val_frac=0.3, test_frac=0.3, progress=False)
    old = json.loads((out / "meta.json").read_text())
    real_split = midigen.data.dataset.Split
    raced = []

    def split_then_republish(data_dir, name, codec, offsets, controls=None):
        sp = real_split(data_dir, name, codec, offsets, controls)
        if not raced:  # between this reader's first file and its others, a new set is published
            raced.append(name)
            prepare([songs_dir], out, workers=1, val_frac=0.3, test_frac=0.3, progress=False)
        return sp

    monkeypatch.setattr(midigen.data.dataset, "Split", split_then_republish)
    ds = Dataset(out)
    new = json.loads((out / "meta.json").read_text())
    assert raced and new["files"] == 60 != old["files"]
    assert ds.meta == new
    for name in ("train", "val", "test"):
        sp = ds.split(name)
        assert len(sp) == new["splits"][name]["tokens"] and len(sp.starts) == new["splits"][name]["files"]
        assert (np.asarray(sp.tokens)[sp.starts] == CODEC.BOS).all()
        assert (np.asarray(sp.tokens)[sp.ends - 1] == CODEC.EOS).all()


def test_folder_without_meta_is_refused(tmp_path, monkeypatch):
    (tmp_path / "plain").mkdir()
    with pytest.raises(UsageError, match="not a prepared dataset"):
        Dataset(tmp_path / "plain")
    (tmp_path / "busy" / ".work").mkdir(parents=True)  # a prepare is running there, or was killed
    monkeypatch.setattr(Dataset, "OPEN_WAIT", 0.2, raising=False)
    with pytest.raises(MidigenError, match="being prepared"):
        Dataset(tmp_path / "busy")


def test_token_counts_are_checked_against_meta(tiny_dataset, tmp_path):
    import shutil

    d = tmp_path / "edited"
    shutil.copytree(tiny_dataset, d)
    with open(d / "val.bin", "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(MidigenError, match="val.bin holds"):
        Dataset(d)
