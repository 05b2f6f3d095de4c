"""Which split (train, val, test) a prepared file goes to: the rules `prepare --split` offers.

Both rules are pure functions of the file itself, never of the order or the number of files, so
adding files to a corpus never moves old ones between splits (but see the minimum below):

- ``hash`` (default): from the content hash, ``--val-frac`` and ``--test-frac`` of the files.
- ``amt``: from the file name, the split the Anticipatory Music Transformer (Thickstun et al., 2023)
  used on Lakh: names starting with ``f`` are test, ``e`` val, the rest train. Lakh names are MD5
  digests in hex, so that is 1/16 test, 1/16 val; the same split as AMT's makes results comparable
  with their published numbers. On other corpora the rule still applies to the file names, whatever
  they are.

The minimum (``--split hash``): a corpus of ``MIN_FILES`` kept files or more gets at least one file in
each split whose fraction is above 0. Only when the rule left a split empty (a small corpus: 12 songs
at 1% each leave val and test empty), the file whose hash is nearest that split's range (on the
circle [0, 1)) moves there from the split with the most files, ties broken by hash. Large corpora are
never touched, so for them adding files still moves nothing; a small corpus's top-up may change as it
grows, until the rule alone fills every split. A split left empty (fraction 0, or under
``MIN_FILES`` files) is said in one line naming the flag.
"""
from __future__ import annotations

import json
import os
import posixpath
from pathlib import Path

import numpy as np

from midigen.errors import UsageError

SPLITS = ("train", "val", "test")
METHODS = ("hash", "amt")
DEFAULT_FRACS = (0.01, 0.01)  # val, test for --split hash
_AMT = {"e": "val", "f": "test"}
MIN_FILES = 3  # a corpus this large gets at least one file in every split (``top_up``)


def position(hash_hex: str) -> float:
    """The first 64 bits of a content hash as a uniform number in [0, 1)."""
    return int(hash_hex[:16], 16) / float(1 << 64)


def split_of(hash_hex: str, val_frac: float, test_frac: float) -> str:
    """The hash rule: val below ``val_frac``, test up to ``val_frac + test_frac``, train above."""
    u = position(hash_hex)
    if u < val_frac:
        return "val"
    if u < val_frac + test_frac:
        return "test"
    return "train"


def amt_split_of(name: str) -> str:
    """The AMT rule on an entry name ('lakh:lmd_full/f/f00c...mid' -> 'test')."""
    base = posixpath.basename(name.replace("\\", "/").rpartition(":")[2])
    return _AMT.get(base[:1].lower(), "train")


class SplitRule:
    """One of ``METHODS`` with its settings: ``rule(name, hash)`` -> split; ``describe()`` for meta.json."""

    def __init__(self, method: str = "hash", val_frac: float | None = None, test_frac: float | None = None):
        if method not in METHODS:
            raise UsageError(f"--split must be one of {', '.join(METHODS)}, got {method!r}")
        if method == "amt" and (val_frac is not None or test_frac is not None):
            raise UsageError("--val-frac and --test-frac apply to --split hash; --split amt takes the split "
                             "from the file names")
        self.method = method
        self.val_frac = DEFAULT_FRACS[0] if val_frac is None else val_frac
        self.test_frac = DEFAULT_FRACS[1] if test_frac is None else test_frac
        if method == "hash":
            _check_fracs(self.val_frac, self.test_frac)

    def __call__(self, name: str, hash_hex: str) -> str:
        if self.method == "amt":
            return amt_split_of(name)
        return split_of(hash_hex, self.val_frac, self.test_frac)

    def describe(self) -> dict:
        if self.method == "amt":
            return {"method": "amt", "rule": "by file name, as the Anticipatory Music Transformer split Lakh: "
                                             "names starting with 'f' test, 'e' val, the rest train"}
        return {"method": "hash", "val_frac": self.val_frac, "test_frac": self.test_frac,
                "rule": f"by content hash (blake2b-128): val {self.val_frac:g}, test {self.test_frac:g}, rest train; "
                        f"with {MIN_FILES} files or more, a split the rule left empty gets the file whose hash is "
                        "nearest its range"}

    def ranges(self) -> dict[str, tuple[float, float]]:
        """Each split's interval of hash positions under the hash rule."""
        v, t = self.val_frac, self.val_frac + self.test_frac
        return {"val": (0.0, v), "test": (v, t), "train": (t, 1.0)}


def _distance(u: float, lo: float, hi: float) -> float:
    """How far position ``u`` is from ``[lo, hi)`` on the circle [0, 1)."""
    if lo <= u < hi:
        return 0.0
    d = min(abs(u - lo), abs(u - hi))
    return min(d, 1.0 - d)


def top_up(hashes: list[str], splits: list[str], rule: SplitRule) -> dict[int, str]:
    """The minimum (module docstring): {index of a kept file: the split it moves to}, given each kept
    file's hash and the split the rule gave it. Deterministic; empty for large corpora."""
    if rule.method != "hash" or len(hashes) < MIN_FILES:
        return {}
    now = list(splits)
    moves: dict[int, str] = {}
    for split, (lo, hi) in rule.ranges().items():
        if hi <= lo or split in now:
            continue
        donor = max(SPLITS, key=lambda s: (now.count(s), s == "train"))
        if now.count(donor) < 2:
            continue
        i = min((i for i, s in enumerate(now) if s == donor),
                key=lambda i: (_distance(position(hashes[i]), lo, hi), hashes[i]))
        now[i] = moves[i] = split
    return moves


def empty_split_notes(stats: dict, rule: SplitRule, kept: int) -> list[str]:
    """One line per split still empty, naming the flag (or the file count) that left it so; nothing when
    no file was kept (prepare says that on its own)."""
    out = []
    if kept == 0:
        return out
    for split, flag in (("val", "--val-frac"), ("test", "--test-frac")):
        if stats[split]["files"]:
            continue
        if rule.method == "amt":
            first = "'e'" if split == "val" else "'f'"
            why = f"--split amt takes it from the file names (none starts with {first})"
        elif kept < MIN_FILES:
            why = f"{kept} kept files are too few (with {MIN_FILES} or more each split gets one)"
        else:
            why = f"{flag} is 0"
        out.append(f"the {split} split is empty: {why}; `midigen train` needs a val split ({flag} sets its share)")
    return out


def ensure_each_split(work: Path, stats: dict, rule: SplitRule) -> list[str]:
    """Apply ``top_up`` to prepare's unpublished outputs in ``work`` (``files.jsonl.tmp`` and the
    ``SPLIT.bin.tmp`` files): rows and their tokens move, each changed split's tokens are rewritten in row
    order, and ``stats`` is updated. Returns the lines to tell the user (moves and empty splits).
    When no split the rule gives files is empty, ``top_up`` moves nothing, and the rows (read back at
    ~5 us each) are not read."""
    kept_count = sum(s["files"] for s in stats.values())
    if rule.method != "hash" or all(stats[s]["files"] for s, (lo, hi) in rule.ranges().items() if hi > lo):
        return empty_split_notes(stats, rule, kept_count)
    rows_path = work / "files.jsonl.tmp"
    rows = [json.loads(line) for line in rows_path.read_text(encoding="utf-8").splitlines() if line]
    kept = [r for r in rows if r["split"] is not None]
    moves = top_up([r["hash"] for r in kept], [r["split"] for r in kept], rule)
    notes = []
    if moves:
        changed = {kept[i]["split"] for i in moves} | set(moves.values())
        old = {s: np.fromfile(work / f"{s}.bin.tmp", dtype=np.uint16) for s in changed}
        pieces = {s: [] for s in changed}
        for i, r in enumerate(kept):
            new = moves.get(i, r["split"])
            if new in changed:
                piece = old[r["split"]][r["offset"] : r["offset"] + r["tokens"]]
                r["split"], r["offset"] = new, sum(len(p) for p in pieces[new])
                pieces[new].append(piece)
        for s in changed:
            tokens = np.concatenate(pieces[s]) if pieces[s] else np.zeros(0, np.uint16)
            _write_durably(work / f"{s}.bin.tmp", tokens.tobytes())
            mine = [r for r in kept if r["split"] == s]
            stats[s] = {"files": len(mine), "notes": sum(r["notes"] for r in mine), "tokens": int(len(tokens))}
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        _write_durably(rows_path, lines.encode("utf-8"))
        notes += [f"{kept[i]['name']} moved to {s}: the {s} split was empty (a small corpus gets one file in each "
                  "split)" for i, s in sorted(moves.items())]
    return notes + empty_split_notes(stats, rule, len(kept))


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _check_fracs(val_frac, test_frac) -> None:
    for flag, v in (("--val-frac", val_frac), ("--test-frac", test_frac)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise UsageError(f"{flag} must be a fraction in [0, 1), got {v!r}")
    if val_frac + test_frac >= 1.0:
        raise UsageError(f"--val-frac + --test-frac must be < 1, got {val_frac + test_frac:g}")
