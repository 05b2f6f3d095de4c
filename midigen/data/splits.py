"""Which split (train, val, test) a prepared file goes to: the rules `prepare --split` offers.

Both rules are pure functions of the file itself, never of the order or the number of files, so
adding files to a corpus never moves old ones between splits:

- ``hash`` (default): from the content hash, ``--val-frac`` and ``--test-frac`` of the files.
- ``amt``: from the file name, the split the Anticipatory Music Transformer (Thickstun et al., 2023)
  used on Lakh: names starting with ``f`` are test, ``e`` val, the rest train. Lakh names are MD5
  digests in hex, so that is 1/16 test, 1/16 val; the same split as AMT's makes results comparable
  with their published numbers. On other corpora the rule still applies to the file names, whatever
  they are.
"""
from __future__ import annotations

import posixpath

from midigen.errors import UsageError

SPLITS = ("train", "val", "test")
METHODS = ("hash", "amt")
DEFAULT_FRACS = (0.01, 0.01)  # val, test for --split hash
_AMT = {"e": "val", "f": "test"}


def split_of(hash_hex: str, val_frac: float, test_frac: float) -> str:
    """The hash rule: the first 64 bits of the content hash as a uniform number in [0, 1)."""
    u = int(hash_hex[:16], 16) / float(1 << 64)
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
                "rule": f"by content hash (blake2b-128): val {self.val_frac:g}, test {self.test_frac:g}, rest train"}


def _check_fracs(val_frac, test_frac) -> None:
    for flag, v in (("--val-frac", val_frac), ("--test-frac", test_frac)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise UsageError(f"{flag} must be a fraction in [0, 1), got {v!r}")
    if val_frac + test_frac >= 1.0:
        raise UsageError(f"--val-frac + --test-frac must be < 1, got {val_frac + test_frac:g}")
