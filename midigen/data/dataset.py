"""Prepared token data for training and evaluation: memmapped splits, windows, fixed eval rows.

Training windows are a pure function of (seed, step, micro-batch index): any process count, any
restart, draws the same windows for the same step, which makes ``--resume`` exact and lets a
2-process DDP run see exactly the batches of a 1-process run with twice the accumulation.

A dataset folder is opened as one set: `prepare` removes meta.json before it replaces any file and
puts the new one in place last, so ``Dataset`` opens every file while one same meta.json stands
(checked before and after) and never pairs token files with another run's offsets.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from midigen.music.codec import Codec, CodecError
from midigen.errors import MidigenError, UsageError
from midigen.music.controls import DROP_P, ControlVocab, draw
from midigen.music.sequences import given_positions, header_with, training_edit_sequence

SPLITS = ("train", "val", "test")
TRANSPOSE_RANGE = range(-5, 7)  # a fifth down to a tritone up: every key, each shift small
_MAX_HEADER = 140  # BOS + 129 instruments + tempo + time signature, with room to spare


def read_meta(data_dir) -> dict:
    path = Path(data_dir) / "meta.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(
            f"{data_dir} is not a prepared dataset (no meta.json); create it with "
            f"`midigen prepare SOURCE --out {data_dir}`") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} is unreadable: {e}") from None
    if not isinstance(meta, dict) or "codec" not in meta:
        raise UsageError(f"{path} has no codec: not written by `midigen prepare`")
    return meta


class Split:
    """One split's token stream (memmapped) and where each song starts in it."""

    def __init__(self, data_dir: Path, name: str, codec: Codec, offsets: np.ndarray | None,
                 controls: dict | None = None):
        self.name = name
        self.controls = controls  # song start -> its control id groups (styles, key, density); None: no controls
        path = data_dir / f"{name}.bin"
        if not path.exists():
            raise UsageError(f"{path} is missing: the dataset has no {name} split")
        n = path.stat().st_size // 2
        self.tokens = np.memmap(path, dtype=np.uint16, mode="r", shape=(n,)) if n else np.zeros(0, np.uint16)
        self.codec = codec
        if offsets is None:  # no files.jsonl: every song starts with BOS
            offsets = np.flatnonzero(np.asarray(self.tokens) == codec.BOS)
        self.starts = np.asarray(offsets, dtype=np.int64)
        if len(self.starts) == 0 or self.starts[0] != 0:
            self.starts = np.concatenate(([0], self.starts[self.starts > 0]))
        self.ends = np.append(self.starts[1:], n)
        self._headers: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.tokens)

    def header(self, song: int) -> np.ndarray:
        """The song's header tokens (BOS, INST..., TEMPO, [TS]), cached."""
        h = self._headers.get(song)
        if h is None:
            s = int(self.starts[song])
            head = np.asarray(self.tokens[s : min(s + _MAX_HEADER, int(self.ends[song]))])
            h = head[: self.codec.header_length(head)].astype(np.int64)
            self._headers[song] = h
        return h

    def song(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[int(self.starts[i]) : int(self.ends[i])])

    def song_controls(self, i: int) -> tuple:
        """The control id groups (styles, key, density) of song ``i``; empty without controls."""
        if self.controls is None:
            return ()
        return self.controls.get(int(self.starts[i]), ())


def _identity(path: Path):
    """What changes when a file is replaced (a rename brings another inode), or None if it is missing."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class Dataset:
    OPEN_WAIT = 2.0  # seconds to wait for a `prepare` that is publishing this folder right now

    def __init__(self, data_dir):
        self.dir = Path(data_dir)
        if not self.dir.is_dir():
            raise UsageError(f"dataset dir {self.dir} does not exist; create it with "
                             f"`midigen prepare SOURCE --out {self.dir}`")
        missing_since = None
        while True:
            before = _identity(self.dir / "meta.json")
            if before is None:  # being published right now (a few ms), or a prepare running or killed
                if not (self.dir / ".work").exists():
                    read_meta(self.dir)  # not a prepared dataset: says so
                missing_since = missing_since or time.monotonic()
                if time.monotonic() - missing_since > self.OPEN_WAIT:
                    raise MidigenError(
                        f"{self.dir} is being prepared, or a `midigen prepare` into it was interrupted (no "
                        "meta.json yet): wait for it to finish, or run the same prepare again")
                time.sleep(0.05)
                continue
            try:
                self._open()
            except MidigenError:  # UsageError too: a real problem unless meta.json moved meanwhile
                if _identity(self.dir / "meta.json") == before:
                    raise
                continue
            if _identity(self.dir / "meta.json") == before:  # else a new set came in: open that one
                self._check_lengths()
                return

    def _open(self) -> None:
        """Read meta.json and files.jsonl and open every split (the caller checks they belong together)."""
        self.meta = read_meta(self.dir)
        try:
            self.codec = Codec.from_dict(self.meta["codec"])
        except (CodecError, KeyError, TypeError, ValueError) as e:
            raise MidigenError(f"{self.dir}/meta.json: unusable codec ({e})") from None
        self._rows = self._read_rows()
        self._offsets = None if self._rows is None else {
            s: np.unique(np.array([r["offset"] for r in rows], dtype=np.int64)) for s, rows in self._rows.items()}
        self.controls = self._control_vocab()
        self._splits: dict[str, Split | UsageError] = {}
        for name in SPLITS:
            offs = self._offsets[name] if self._offsets is not None else None
            ctl = None
            if self.controls is not None:
                ctl = {r["offset"]: self.controls.song_ids(self.codec, r) for r in self._rows[name]}
            try:
                self._splits[name] = Split(self.dir, name, self.codec, offs, ctl)
            except UsageError as e:  # a missing split: raised when it is asked for
                self._splits[name] = e

    def _check_lengths(self) -> None:
        """Each token file holds the tokens meta.json counts (a folder edited by hand fails here)."""
        counts = self.meta.get("splits")
        for name, sp in self._splits.items():
            want = counts.get(name) if isinstance(counts, dict) else None
            want = want.get("tokens") if isinstance(want, dict) else None
            if not isinstance(sp, UsageError) and isinstance(want, int) and want != len(sp):
                raise MidigenError(
                    f"{self.dir}/{name}.bin holds {len(sp)} tokens but meta.json says {want}: the folder "
                    "was changed after `midigen prepare`; run prepare again")

    def _read_rows(self) -> dict | None:
        """Kept files.jsonl rows per split (None when there is no files.jsonl)."""
        path = self.dir / "files.jsonl"
        if not path.exists():
            return None
        out = {s: [] for s in SPLITS}
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                row = json.loads(line)
                if row.get("split") in out and row.get("offset") is not None:
                    row["offset"] = int(row["offset"])
                    out[row["split"]].append(row)
        return out

    def _control_vocab(self):
        """The dataset's control vocabulary (``midigen.music.controls``); None for data prepared without one
        (codec v1, or rows without keys and styles): such data trains and samples without controls."""
        if not self.codec.has_controls or self._rows is None:
            return None
        train = self._rows["train"]
        if not any("key" in r or "styles" in r for r in train):
            return None

        return ControlVocab.from_rows(train)

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise UsageError(f"unknown split {name!r}: use one of {', '.join(SPLITS)}")
        sp = self._splits[name]
        if isinstance(sp, UsageError):
            raise sp
        return sp


class WindowSampler:
    """Random training windows of ``block_size + 1`` tokens -> (input, target) int64 arrays.

    A window that starts inside a song gets that song's header in front, so the model always knows
    the instruments and tempo; the header is learned in every window (only the jump from it into the
    middle of the song is masked, target -1), so the choice of instruments, tempo and meter given the
    controls is learned as often as the music. With
    ``edit_fraction`` > 0, that share of windows are editing sequences built from the song around the
    drawn position (``midigen.music.sequences``), so one model learns to continue, infill and arrange.
    When the dataset has controls, every header carries the song's (``midigen.music.controls``), each
    dropped with probability ``controls.DROP_P``.
    """

    def __init__(self, split: Split, block_size: int, seed: int, transpose: bool = True, edit_fraction: float = 0.0):
        self.split = split
        self.T = block_size
        self.seed = seed
        self.transpose = transpose
        self.edit_fraction = float(edit_fraction)
        if len(split) < block_size + 2:
            raise UsageError(
                f"the {split.name} split has {len(split)} tokens, fewer than one window of "
                f"{block_size + 1}: use a smaller block_size or more data")
        codec = split.codec
        if self.edit_fraction and not codec.has_controls:
            raise UsageError(f"edit_fraction needs a codec v2 dataset; {split.name} is codec v{codec.version}: "
                             "prepare it again")
        self._luts = {s: codec.transpose_table(s) for s in TRANSPOSE_RANGE} if transpose else {}

    def batch(self, step: int, micro: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Windows for micro-batch ``micro`` of optimizer step ``step`` (global numbering)."""
        rng = np.random.default_rng([self.seed, step, micro])
        T = self.T
        n = len(self.split)
        starts = rng.integers(0, n - T, size=batch_size)
        shifts = rng.integers(TRANSPOSE_RANGE.start, TRANSPOSE_RANGE.stop, size=(batch_size, 4))
        edits = rng.random(batch_size) < self.edit_fraction
        keep = None
        if self.split.controls is not None:  # drawn only for data with controls: old data keeps its windows
            keep = rng.random((batch_size, 3)) >= DROP_P
        x = np.empty((batch_size, T), dtype=np.int64)
        y = np.empty((batch_size, T), dtype=np.int64)
        for b in range(batch_size):
            kb = None if keep is None else keep[b]
            w, masked = self._edit_window(int(starts[b]), rng, kb) if edits[b] else (None, 0)
            if w is None:
                w, masked = self._window(int(starts[b]), kb)
            if self.transpose:
                w = self._transpose(w, shifts[b])
            x[b] = w[:-1]
            y[b] = w[1:]
            if isinstance(masked, np.ndarray):  # which of the window's tokens are not learned
                y[b, masked[1:]] = -1
            else:  # none (``masked`` 0), or a raw window's first ``masked`` targets
                y[b, :masked] = -1
            y[b, y[b] == self.split.codec.PAD] = -1  # padding after a short editing sequence
        return x, y

    def _controls(self, song: int, keep) -> list[int]:
        return draw(self.split.song_controls(song), keep) if keep is not None else []

    def _window(self, pos: int, keep=None) -> tuple[np.ndarray, int | np.ndarray]:
        """(T+1 tokens from ``pos``, header prepended if mid-song; which tokens are not learned: a
        count of leading targets, or a mask over the window's tokens).

        ``keep`` (one bool per control group) says which of the song's controls the header carries.
        """
        sp = self.split
        T = self.T
        song = int(np.searchsorted(sp.starts, pos, side="right")) - 1
        head = sp.header(song)
        h = len(head)
        start = int(sp.starts[song])
        if pos < start + h:
            pos = start  # inside the header: start at the song's BOS
        if h >= T // 2:  # a header too long to repeat: the raw tokens
            return np.asarray(sp.tokens[pos : pos + T + 1], dtype=np.int64), 0
        controls = self._controls(song, keep)
        if pos == start and not controls:  # nothing to prepend
            return np.asarray(sp.tokens[pos : pos + T + 1], dtype=np.int64), 0
        full = header_with(sp.codec, head, controls=controls) if controls else head
        if pos == start:  # the song's start, its header with controls: all of it is learned
            body = np.asarray(sp.tokens[start + h : start + h + T + 1 - len(full)], dtype=np.int64)
            return np.concatenate((full, body)), 0
        body = np.asarray(sp.tokens[pos : pos + T + 1 - len(full)], dtype=np.int64)
        # The header is learned here too: it is the song's true header, and a window starting at a song's
        # BOS is rare (~1% of them), so without this the model would hardly learn which instruments,
        # tempo and meter go with a style, key or density. The jump from the header to the middle of the
        # song is not a real transition: that one target is masked.
        unlearned = np.zeros(T + 1, bool)
        unlearned[len(full)] = True
        return np.concatenate((full, body)), unlearned

    def _edit_window(self, pos: int, rng: np.random.Generator, keep=None):
        """An editing sequence from the song around ``pos``, padded to T+1, and which of its tokens are
        not learned; (None, 0) when none fits."""
        sp, T = self.split, self.T
        song = int(np.searchsorted(sp.starts, pos, side="right")) - 1
        head = sp.header(song)
        a = max(int(sp.starts[song]) + len(head), pos - T)
        b = min(int(sp.ends[song]), pos + 2 * T)
        local = np.concatenate((head, np.asarray(sp.tokens[a:b], dtype=np.int64)))
        seq = training_edit_sequence(sp.codec, local, rng, T + 1, controls=self._controls(song, keep))
        if seq is None:
            return None, 0
        w = np.full(T + 1, sp.codec.PAD, dtype=np.int64)
        w[: len(seq)] = seq
        # not learned: what the user chooses (EDIT and the instruments to write), the jump from the
        # header into the song's middle, and the given notes the decoder forces
        unlearned = np.zeros(T + 1, bool)
        unlearned[: len(seq)] = given_positions(sp.codec, seq)
        edit = int(np.flatnonzero(seq == sp.codec.EDIT)[0])
        unlearned[edit : sp.codec.header_length(seq) + 1] = True
        return w, unlearned

    def _transpose(self, w: np.ndarray, shifts) -> np.ndarray:
        for s in shifts:  # a few tries; a shift that pushes a note out of range is rejected
            if s == 0:
                return w
            out = self._luts[int(s)][w]
            if (out >= 0).all():
                return out
        return w


def eval_rows(split: Split, block_size: int, max_tokens: int, overlap: int | None = None, controls=None,
              skip_header: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Fixed rows that score each of the first ``max_tokens`` scorable tokens of a split once.

    Songs are taken in order. A song's first chunk starts at its BOS; a later chunk has, as unscored
    context, the song header (so every scored token knows the instruments) and the ``overlap``
    tokens before it (default: half the context), so no token is predicted from a cold start. A
    song's BOS itself is never scored (nothing precedes it). A header longer than the first chunk
    (many instruments, a small ``block_size``) is scored on from plain windows of the song until it
    ends. Returns (inputs, targets) of shape (rows, T), targets -1 where nothing is scored.

    ``controls`` (song index -> control ids) puts those controls in each song's header, as training
    does; ``skip_header`` leaves the header's tokens unscored, so scores with and without controls
    cover exactly the same tokens (the song's events and EOS).
    """
    T = block_size
    overlap = T // 2 if overlap is None else overlap
    xs, ys = [], []
    budget = max_tokens
    for i in range(len(split.starts)):
        if budget <= 0:
            break
        song = split.song(i).astype(np.int64)
        if len(song) < 2:
            continue
        head = split.header(i)
        if controls is not None:
            full = header_with(split.codec, head, controls=controls(i))
            song = np.concatenate((full, song[len(head) :]))
            head = full
        own = len(head)  # the header's length inside the song
        first = own if skip_header else 1  # first token scored
        if len(song) <= first:
            continue
        song = song[: budget + first]
        budget -= len(song) - first
        if len(head) >= T // 2:
            head = head[:1]  # a header too long to repeat: keep just BOS as context
        h = len(head)
        ov = max(0, min(overlap, T - h - 1))
        a = first  # next token to score
        while a < len(song):
            if a <= own:  # in the song's own header or just after: the context is the song before it
                # from its BOS while that fits (the first chunk), else the ``overlap`` tokens before ``a``
                c = 0 if a < T else max(0, a - max(1, min(overlap, T - 1)))
                seq = song[c : c + T + 1]
                n_ctx = a - c - 1
            else:  # the header, then the song from at most ``ov`` tokens before ``a``
                c = max(own, a - ov)
                seq = np.concatenate((head, song[c : c + T + 1 - h]))
                n_ctx = h - 1 + (a - c)
            x = np.zeros(T, dtype=np.int64)
            y = np.full(T, -1, dtype=np.int64)
            L = len(seq) - 1
            x[:L] = seq[:-1]
            y[:L] = seq[1:]
            y[:n_ctx] = -1
            xs.append(x)
            ys.append(y)
            a += L - n_ctx
    if not xs:
        hint = (f": prepare the data again with a larger --{split.name}-frac (a corpus of 3 files or more gets "
                "at least one file in each split)") if split.name in ("val", "test") else ""
        raise UsageError(f"the {split.name} split has no tokens to evaluate{hint}")
    return np.stack(xs), np.stack(ys)


def eval_positions(split: Split, max_tokens: int) -> np.ndarray:
    """Absolute positions (in the split) of the tokens ``eval_rows`` scores, in the same order."""
    out = []
    budget = max_tokens
    for i in range(len(split.starts)):
        if budget <= 0:
            break
        s, e = int(split.starts[i]), int(split.ends[i])
        if e - s < 2:
            continue
        n = min(e - s - 1, budget)
        out.append(np.arange(s + 1, s + 1 + n, dtype=np.int64))
        budget -= n
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def token_support(split: Split, transpose: bool, chunk: int = 1 << 26) -> np.ndarray:
    """Token ids a model trained on ``split`` can be asked to produce: those present, closed under
    the training transpositions, plus BOS, EOS, the controls and editing markers that training adds to
    the stored tokens. Counted in chunks, so Lakh-size splits stay cheap."""
    codec = split.codec
    present = np.zeros(codec.vocab_size, dtype=bool)
    toks = split.tokens
    for a in range(0, len(toks), chunk):
        present |= np.bincount(np.asarray(toks[a : a + chunk]), minlength=codec.vocab_size)[: codec.vocab_size] > 0
    present[[codec.BOS, codec.EOS]] = True
    if split.controls is not None:  # header controls are built on the fly, not stored in the split
        for groups in split.controls.values():
            for group in groups:
                present[group] = True
    if codec.has_controls:  # editing markers are built on the fly too
        present[[codec.EDIT, codec.HOLE, codec.HOLE_END, codec.FILL]] = True
    if transpose:
        ids = np.flatnonzero(present)
        for shift in TRANSPOSE_RANGE:
            moved = codec.transpose_table(shift)[ids]
            present[moved[moved >= 0]] = True
    return np.flatnonzero(present)

