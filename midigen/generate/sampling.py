"""How every task draws its tokens: one ``Sampling`` value, checked once, carrying the seed it used.

The commands build it from their flags, the studio from its request; the generators take it whole.
A missing seed is drawn when the value is made, so every caller can report the seed that gives the
same music again.

Nucleus sampling by default for the commands and the page: the cut tail is mostly rare, out-of-key
notes. With it the demo model's samples meet every music-feature overlap with the real test pieces (the
in-scale rate's goes from 0.55 at top-p 1 to 0.76 at 0.95; docs/benchmarks.md). ``--top-p 1`` turns it
off. (A ``Sampling()`` made in code cuts nothing unless asked.)

Under a chord chart the user gives, the tones of the chord in force get ``chord_weight`` nats more
(``Grammar.chord_tones``): the demo model alone put 0.76 of its note-time on the asked chords, real
music 0.88 under its own. A weight of 2.5 (12 times the odds) brings new music to 0.89-0.90, about as
chordal as real music, so passing notes keep their place; a part added to a song, or a span written
again, then follows the song's chords at 0.95-0.98 of real music's share (2: 0.87-0.89;
``benchmarks/chord_adherence.py``, ``--sweep``). ``--chord-weight 0`` leaves the model alone.

A key asked for is held the same way: ``key_weight`` nats less for a pitched note outside the key's
scale (``Grammar.tone_bias``, the one logit bias of both). A song with a form uses it (the key control
alone steers the demo model's key 41-63% of the time, and infill carries on whatever key the first
section took; docs/form.md).
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

from midigen.errors import UsageError

TOP_P = 0.95
CHORD_WEIGHT = 2.5  # nats toward a given chart's tones: adherence 0.76 -> 0.89-0.90 on the demo model
DEFAULTS = {"temperature": 1.0, "top_k": None, "top_p": TOP_P, "repetition_penalty": 1.0,
            "chord_weight": CHORD_WEIGHT}  # commands and page
SEED_RANGE = 2**31  # drawn seeds are below this
MAX_CHORD_WEIGHT = 8.0  # and the most a key weight may be
KEY_WEIGHT = 2.0  # nats off out-of-key notes in a song with a form under a key (docs/benchmarks.md)
# nats off EOS before the last beat of a form section written over silence: in effect a hold (under a
# chart the model's EOS outweighed 8 nats and left bars silent; docs/form.md)
FILL_WEIGHT = 60.0
MAX_FILL_WEIGHT = 100.0
VARY_WEIGHT = 6.0  # nats toward a variation's model bars' tones and onsets (``--vary-weight``; docs/benchmarks.md)
RETRIES = 2  # redraws of an empty result, with the next seeds, before giving up (midigen.generate.checks)


@dataclass(frozen=True)
class Sampling:
    """Temperature, top-k, top-p, repetition penalty and seed of one call; a bad one is a UsageError."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    seed: int | None = None  # None: one is drawn now
    chord_weight: float = 0.0  # nats added to chord tones while a given chart is in force (``Grammar.chord_tones``)
    key: int | None = None  # 0..23 (``midigen.music.codec.key_name``): the key whose scale ``key_weight`` holds to
    key_weight: float = 0.0  # nats taken off a pitched note outside ``key``'s scale (``Grammar.tone_bias``)
    vary_weight: float = 0.0  # nats toward a variation's model bar's pitch classes (``Grammar.favour_tones``)
    fill_weight: float = 0.0  # nats off an edit's EOS before its span's last beat (``Grammar.fill_bias``)

    def __post_init__(self):
        if not self.temperature > 0:
            raise UsageError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k is not None and int(self.top_k) < 1:
            raise UsageError(f"top-k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UsageError(f"top-p must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise UsageError(f"repetition penalty must be > 0, got {self.repetition_penalty}")
        if not 0 <= self.chord_weight <= MAX_CHORD_WEIGHT:
            raise UsageError(f"chord weight must be in [0, {MAX_CHORD_WEIGHT}], got {self.chord_weight}")
        if not 0 <= self.key_weight <= MAX_CHORD_WEIGHT:
            raise UsageError(f"key weight must be in [0, {MAX_CHORD_WEIGHT}], got {self.key_weight}")
        if not 0 <= self.vary_weight <= MAX_CHORD_WEIGHT:
            raise UsageError(f"vary weight must be in [0, {MAX_CHORD_WEIGHT}], got {self.vary_weight}")
        if not 0 <= self.fill_weight <= MAX_FILL_WEIGHT:
            raise UsageError(f"fill weight must be in [0, {MAX_FILL_WEIGHT}], got {self.fill_weight}")
        if self.key is not None and not 0 <= int(self.key) < 24:
            raise UsageError(f"key must be 0..23, got {self.key}")
        seed = secrets.randbelow(SEED_RANGE) if self.seed is None else int(self.seed)
        object.__setattr__(self, "seed", seed)
        object.__setattr__(self, "top_k", None if self.top_k is None else int(self.top_k))
