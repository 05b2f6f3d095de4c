"""The control vocabulary: the header tokens a dataset's songs carry, and how training drops them.

A v3 song header is ``BOS`` and the controls, then ``INST... TEMPO [TS]`` (v2 put the controls last, so
the instruments were chosen before the style was known). The controls are ``STYLE`` tokens (one per
style the file was tagged with), one ``KEY`` and one ``DENSITY``. The meanings come from the dataset:

* styles: the train split's style names, sorted, one slot each (the 64 most common when there are
  more), so slot numbers are the same for everyone reading the same dataset;
* keys: the file's key (signature or estimate, see ``midigen.data.keys``);
* density: notes per second against the train split's terciles (low < first edge <= medium <
  second edge <= high), so "high" means dense *for this corpus*.

While training, each control is dropped at random (``DROP_P`` each, independently, all styles of a
song together), so the model also learns songs with any of them left out — which is what generating
without a flag asks for. The vocabulary travels in the checkpoint (``info["controls"]``), so a
checkpoint resolves ``--style jazz`` without its dataset (``midigen.generate.controls``).
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from midigen.music.codec import DENSITY_LEVELS, N_STYLES, Codec, key_name, parse_key

DROP_P = 0.3  # chance that each control (styles, key, density) is left out of a training header


class ControlVocab:
    """Style slots and density edges of a dataset, and each song's control ids."""

    def __init__(self, styles: list[str], density_edges: list[float], keys: list[str]):
        self.styles = list(styles)
        self.slot = {s: i for i, s in enumerate(self.styles)}
        self.density_edges = [float(e) for e in density_edges]
        self.keys = list(keys)

    @classmethod
    def from_rows(cls, train_rows: list[dict]) -> "ControlVocab":
        counts = Counter(s for r in train_rows for s in r.get("styles") or ())
        styles = sorted(s for s, _ in counts.most_common(N_STYLES))
        rates = [rate for r in train_rows if (rate := notes_per_second(r)) is not None]
        edges = np.quantile(rates, [1 / 3, 2 / 3]).tolist() if rates else [0.0, 0.0]
        keys = sorted({r["key"] for r in train_rows if r.get("key")}, key=parse_key)
        return cls(styles, edges, keys)

    def density_level(self, rate: float) -> int:
        return int(np.searchsorted(self.density_edges, rate, side="right"))

    def song_ids(self, codec: Codec, row: dict) -> tuple[list[int], list[int], list[int]]:
        """(STYLE ids, [KEY id], [DENSITY id]) of one files.jsonl row; a group is empty when unknown."""
        styles = [codec.style_token(self.slot[s]) for s in sorted(row.get("styles") or ()) if s in self.slot]
        key = [codec.key_token(parse_key(row["key"]))] if row.get("key") else []
        rate = notes_per_second(row)
        density = [codec.density_token(self.density_level(rate))] if rate is not None else []
        return styles, key, density

    def to_info(self, transpose: bool) -> dict:
        """What a checkpoint records (``checkpoint.capabilities`` reads it back)."""
        keys = [key_name(k) for k in range(24)] if transpose and self.keys else self.keys
        return {"styles": self.styles, "keys": keys, "densities": list(DENSITY_LEVELS),
                "density_edges": [round(e, 4) for e in self.density_edges], "drop_p": DROP_P}


def notes_per_second(row: dict) -> float | None:
    secs = row.get("seconds")
    return row["notes"] / secs if secs and row.get("notes") else None


def draw(groups, keep: np.ndarray) -> list[int]:
    """The control ids of a training header: each group kept where ``keep`` (one bool per group) says."""
    return [t for group, k in zip(groups, keep) if k for t in group]
