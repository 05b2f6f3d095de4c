"""Control tokens in the song header: what a dataset's songs carry, and what a user may ask for.

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
checkpoint resolves ``--style jazz`` without its dataset.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from midigen.music.codec import DENSITY_LEVELS, N_STYLES, Codec, key_name, parse_key
from midigen.errors import UsageError

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


# ----- what the user asks for ---------------------------------------------------------------------


def _one_of(what: str, value: str, valid: list[str]) -> UsageError:
    shown = ", ".join(valid) if valid else "none (this checkpoint learned no " + what + "s)"
    return UsageError(f"unknown {what} {value!r}: this checkpoint knows {shown}")


def parse_time_signature(text: str) -> tuple[int, int]:
    try:
        n, d = (int(x) for x in text.strip().split("/"))
    except ValueError:
        raise UsageError(f"bad time signature {text!r}: use N/D like 3/4 or 6/8") from None
    return n, d


def resolve(capabilities: dict, codec: Codec, style: str | None = None, key: str | None = None,
            density: str | None = None, time_signature: str | None = None) -> tuple[list[int], tuple | None]:
    """User names -> (control ids for the header, time signature or None), checked against what the
    checkpoint learned (``checkpoint.capabilities``). Unknown names are UsageErrors listing the valid ones."""
    ts = None
    if time_signature is not None:
        ts = parse_time_signature(time_signature)
        meters = capabilities.get("time_signatures", [])
        if f"{ts[0]}/{ts[1]}" not in meters:
            raise _one_of("time signature", time_signature, meters)
    if (style, key, density) == (None, None, None):
        return [], ts
    if not codec.has_controls:
        raise UsageError(f"this checkpoint (codec v{codec.version}) has no style, key or density controls; "
                         "prepare the data and train again to get them")
    ids: list[int] = []
    if style is not None:
        styles = capabilities.get("styles", [])
        names = [s.strip() for s in style.split(",") if s.strip()]
        if not names:
            raise UsageError("--style needs at least one style name")
        for s in sorted(set(names)):
            if s not in styles:
                raise _one_of("style", s, styles)
            ids.append(codec.style_token(styles.index(s)))
    if key is not None:
        keys = capabilities.get("keys", [])
        try:
            k = parse_key(key)
        except ValueError as e:
            raise UsageError(f"{e}; this checkpoint knows {', '.join(keys) or 'no keys'}") from None
        if key_name(k) not in keys:
            raise _one_of("key", key, keys)
        ids.append(codec.key_token(k))
    if density is not None:
        levels = capabilities.get("densities", [])
        if density not in levels:
            raise _one_of("density", density, levels)
        ids.append(codec.density_token(DENSITY_LEVELS.index(density)))
    return ids, ts


def check_instruments(capabilities: dict, instruments) -> None:
    """Refuse instruments the checkpoint never saw (it could only write noise for them)."""
    from midigen.music.codec import instrument_name

    seen = capabilities.get("instruments")
    if not instruments or not seen:
        return
    unseen = [i for i in instruments if i not in seen]
    if unseen:
        names = ", ".join(f"{instrument_name(i)} ({i})" for i in seen)
        raise UsageError(f"unknown instrument {instrument_name(unseen[0])!r}: this checkpoint knows {names}")


def from_cli(args, config: dict, codec: Codec, instruments=None) -> tuple[list[int], tuple | None]:
    """The ``--style/--key/--density/--time-signature`` flags (see ``cli._add_control_flags``) -> ids, meter."""
    from midigen.model.checkpoint import capabilities

    caps = capabilities(config, codec)
    check_instruments(caps, instruments)
    return resolve(caps, codec, style=getattr(args, "style", None), key=getattr(args, "key", None),
                   density=getattr(args, "density", None), time_signature=getattr(args, "time_signature", None))
