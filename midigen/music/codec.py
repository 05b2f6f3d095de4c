"""MIDI <-> token codec: one interleaved event stream for every instrument.

Layout (ids in this order; exact ranges live on the ``Codec`` instance):

    PAD BOS EOS                       specials (PAD never appears in data)
    SHIFT_k        k = 1..96          advance time by k steps (1 step = 1/24 quarter note)
    TEMPO_b                           log-spaced BPM bins, ~1% apart
    TS_n/d                            time signature (header only)
    INST_i         i = 0..128         an instrument present in the song (128 = drums)
    NOTE_i,p       129 x 128          a note of instrument i at pitch p ...
    DV_d,v         durations x 16     ... always followed by its duration and velocity
    STYLE KEY DENSITY EDIT HOLE HOLE_END FILL     v2+: controls and the editing task's markers
    CHORD_c        c = 0..108         v4: the harmony from here on (``midigen.music.chords`` ids, 108 = N.C.)

A song is ``BOS INST_a INST_b ... TEMPO [TS] events... EOS``. Events are sorted by onset, then
instrument, then pitch, so all tracks sound together in the stream. Time is beat-relative (steps of
the file's ticks per quarter), so rhythm survives any tempo; tempo changes are events, so real time
does not drift. Gaps longer than ``max_gap`` steps are shortened to it, so a note after 2^27 ticks of
silence costs a few SHIFT tokens.

Chords (v4): the encoder labels the song's own pitched notes beat by beat (``chord_changes``, the
labeller of ``midigen.music.chords`` on the token stream's notes, so every encoding path labels alike)
and writes a CHORD at each change, after that step's shifts and tempo, before its notes (``add_chords``);
they decode to chord-name markers.

Decoding is total: any id sequence gives a valid score. Ids out of place (a DV with no NOTE before it,
a NOTE with no DV after it, header tokens among events, unknown ids) are skipped.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from types import SimpleNamespace

import numpy as np
import symusic

from midigen.errors import MidigenError
from midigen.fsutil import atomic_write_text
from midigen.music.chords import MAX_BEATS, NO_CHORD, QUALITIES, ChordError, chord_name, label_notes
from midigen.music.chords import VOCAB_SIZE as CHORD_VOCAB
from midigen.music.chordtext import add_chord_markers
from midigen.music.smf import sanitize_smf, unwrap_rmid
from midigen.music.timing import meter_beat_grid, notes_end_seconds

CODEC_NAME = "midigen-event"
CODEC_VERSION = 4  # v2: tempo bins hold every integer BPM 40..250; control and editing tokens.
# v3: the same ids, with the controls right after BOS, so a song's instruments, tempo and meter are
# written knowing the style, key and density asked for (v2 put them after TEMPO [TS]); and an edit's
# written part interleaves the kept notes inside the span, so the parts it writes line up with them.
# v4: v3's ids plus a CHORD token per chord of `midigen.music.chords` (108 chords and N.C.), written
# at each change of the song's labelled harmony, after that step's shifts and tempo, before its notes.
SUPPORTED_VERSIONS = (1, 2, 3, 4)  # older datasets and checkpoints still load and sample in their own layout

DRUMS = 128  # the instrument number used for every drum track
N_INSTRUMENTS = 129
N_PITCHES = 128

_TS_DENOMINATORS = (2, 4, 8, 16)
_INT32_MAX = 2**31 - 1
N_STYLES = 64  # style slots; a dataset maps its style names onto them (meta.json, checkpoint)
N_KEYS = 24  # tonic pitch class + 12 x minor
DENSITY_LEVELS = ("low", "medium", "high")  # notes per second, in the training corpus's terciles
MARKERS = ("EDIT", "HOLE", "HOLE_END", "FILL")  # the editing task's structure tokens (see edit docs)


class Kind(IntEnum):
    """What a token id is. ``Codec.kinds`` maps ids to these; comparisons read by name."""

    SPECIAL = 0
    SHIFT = 1
    TEMPO = 2
    TS = 3
    INST = 4
    NOTE = 5
    DV = 6
    STYLE = 7
    KEY = 8
    DENSITY = 9
    MARKER = 10
    CHORD = 11


class CodecError(MidigenError):
    """A file that cannot be turned into tokens (unreadable, empty, unsupported)."""


def _duration_values(exact_upto: int, ratio: float, max_steps: int) -> list[int]:
    values = list(range(1, exact_upto + 1))
    x = float(exact_upto)
    while True:
        x *= ratio
        v = int(round(x))
        if v > max_steps:
            break
        if v > values[-1]:
            values.append(v)
    if values[-1] != max_steps:
        values.append(max_steps)
    return values


def _tempo_values(lo: float, hi: float, ratio: float, exact_lo: int, exact_hi: int) -> np.ndarray:
    """Tempo bin centres: every integer BPM in ``exact_lo..exact_hi`` (so the common tempos come back
    exactly) and the ends ``lo`` and ``hi``, with every gap wider than ``ratio`` split evenly in the log
    domain. No two neighbours are more than ``ratio`` apart, so any tempo rounds by at most half that."""
    anchors = np.concatenate(([lo], np.arange(exact_lo, exact_hi + 1, dtype=np.float64), [hi]))
    out = [anchors[:1]]
    for a, b in zip(anchors[:-1], anchors[1:]):
        parts = max(1, math.ceil(math.log(b / a) / math.log(ratio) - 1e-9))
        out.append(a * (b / a) ** (np.arange(1, parts + 1) / parts))
    return np.concatenate(out)


@dataclass(frozen=True)
class CodecParams:
    steps_per_quarter: int = 24
    max_shift: int = 96  # largest single SHIFT token, in steps (one 4/4 bar)
    max_gap: int = 384  # longer silences are shortened to this many steps (4 bars of 4/4)
    tempo_min: float = 16.0
    tempo_max: float = 512.0
    tempo_ratio: float = 1.01
    duration_exact_upto: int = 12  # durations up to half a quarter note are exact (in steps)
    duration_ratio: float = 1.1
    duration_max: int = 1536  # 64 quarter notes
    velocity_levels: int = 16
    decode_tpq: int = 480
    exact_tempo_min: int = 40  # v2: integer BPMs from here ...
    exact_tempo_max: int = 250  # ... to here are bin centres


@dataclass
class Codec:
    """Token vocabulary plus encode/decode. Construct from params; save/restore with JSON.

    ``version`` 2 adds, after the v1 ids, the control tokens a song header may carry (STYLE, KEY,
    DENSITY) and the editing markers (EDIT, HOLE, HOLE_END, FILL); 3 moves the controls first; 4 (the
    default) adds the CHORD ids after those (``has_chords``). Versions 1-3 are kept so datasets and
    checkpoints made before them still load, sample and edit in their own layout.
    """

    params: CodecParams = field(default_factory=CodecParams)
    batch_bytes: int = 1 << 17  # encode_many works through ~128 kB of MIDI at a time
    version: int = CODEC_VERSION

    def __post_init__(self) -> None:
        p = self.params
        if self.version not in SUPPORTED_VERSIONS:
            raise ValueError(f"codec version {self.version} is not one of {SUPPORTED_VERSIONS}")
        if 128 % p.velocity_levels:
            raise ValueError("velocity_levels must divide 128")
        if p.steps_per_quarter < 1 or p.decode_tpq < p.steps_per_quarter or p.decode_tpq % p.steps_per_quarter:
            raise ValueError(f"decode_tpq {p.decode_tpq} must be a positive multiple of steps_per_quarter "
                             f"{p.steps_per_quarter}")
        self.durations = np.array(
            _duration_values(p.duration_exact_upto, p.duration_ratio, p.duration_max), dtype=np.int64
        )
        self.tempo_bpm = self._tempo_table()
        self.time_signatures = [(n, d) for d in _TS_DENOMINATORS for n in range(1, 17)]
        self._layout()
        if self.vocab_size > 65535:
            raise ValueError("vocabulary does not fit uint16")
        # Boundaries between duration bins: geometric means, so rounding is relative (log domain).
        d = self.durations.astype(np.float64)
        self._duration_edges = np.sqrt(d[:-1] * d[1:])
        self._duration_bin = np.searchsorted(self._duration_edges, np.arange(p.duration_max + 1))
        # DV id for every (duration in steps, MIDI velocity): one lookup per note when encoding
        vel_bin = np.clip(np.arange(128), 1, 127) * p.velocity_levels // 128
        self._dv_lut = (
            self.dv_start + self._duration_bin[:, None] * p.velocity_levels + vel_bin[None, :]
        ).astype(np.uint16)
        self._tempo_edges = np.sqrt(self.tempo_bpm[:-1] * self.tempo_bpm[1:])
        self._kind = self._build_kind_table()

    def _tempo_table(self) -> np.ndarray:
        p = self.params
        if self.version == 1:  # a plain 1% log grid (misses 120 BPM by 0.5%)
            n = int(math.floor(math.log(p.tempo_max / p.tempo_min) / math.log(p.tempo_ratio))) + 1
            return p.tempo_min * p.tempo_ratio ** np.arange(n)
        return _tempo_values(p.tempo_min, p.tempo_max, p.tempo_ratio, p.exact_tempo_min, p.exact_tempo_max)

    def _layout(self) -> None:
        """Id ranges, in vocabulary order; v2's control and marker ids come after v1's."""
        sizes = [("shift", self.params.max_shift), ("tempo", len(self.tempo_bpm)), ("ts", len(self.time_signatures)),
                 ("inst", N_INSTRUMENTS), ("note", N_INSTRUMENTS * N_PITCHES),
                 ("dv", len(self.durations) * self.params.velocity_levels)]
        if self.version >= 2:
            sizes += [("style", N_STYLES), ("key", N_KEYS), ("density", len(DENSITY_LEVELS)),
                      ("marker", len(MARKERS))]
        if self.version >= 4:
            sizes += [("chord", CHORD_VOCAB)]
        self.PAD, self.BOS, self.EOS = 0, 1, 2
        self.n_durations = len(self.durations)
        start, self.ranges = 3, {}
        for name, size in sizes:
            self.ranges[name] = (start, start + size)
            start += size
        self.vocab_size = start
        self.shift_start, self.tempo_start, self.ts_start, self.inst_start, self.note_start, self.dv_start = (
            self.ranges[k][0] for k in ("shift", "tempo", "ts", "inst", "note", "dv"))
        self.dv_end = self.ranges["dv"][1]
        self.has_controls = self.version >= 2
        self.controls_first = self.version >= 3  # where a header's controls sit (see ``header_length``)
        self.interleaves_edits = self.version >= 3  # an edit's written part carries the kept notes (``sequences``)
        self.has_chords = self.version >= 4  # CHORD tokens at each change of harmony (``add_chords``)
        self.chord_start = self.ranges["chord"][0] if self.has_chords else -1
        if self.has_controls:
            self.style_start, self.key_start, self.density_start, marker = (
                self.ranges[k][0] for k in ("style", "key", "density", "marker"))
            self.EDIT, self.HOLE, self.HOLE_END, self.FILL = range(marker, marker + len(MARKERS))

    # ----- vocabulary -------------------------------------------------------------------------

    KINDS = tuple(k.name.lower() for k in Kind)

    def _build_kind_table(self) -> np.ndarray:
        kind = np.zeros(self.vocab_size, dtype=np.int8)
        for name, (lo, hi) in self.ranges.items():
            kind[lo:hi] = Kind[name.upper()]
        return kind

    def kinds(self, tokens: np.ndarray) -> np.ndarray:
        """Kind (a ``Kind`` value) per token; ids past the vocabulary count as special."""
        tokens = np.asarray(tokens, dtype=np.int64)
        out = np.zeros(tokens.shape, dtype=np.int8)
        ok = (tokens >= 0) & (tokens < self.vocab_size)
        out[ok] = self._kind[tokens[ok]]
        return out

    def shift_token(self, steps: int) -> int:
        if not 1 <= steps <= self.params.max_shift:
            raise ValueError(f"shift of {steps} steps is outside 1..{self.params.max_shift}")
        return self.shift_start + steps - 1

    def tempo_token(self, bpm: float) -> int:
        return self.tempo_start + int(np.searchsorted(self._tempo_edges, bpm))

    def ts_token(self, numerator: int, denominator: int) -> int | None:
        try:
            return self.ts_start + self.time_signatures.index((int(numerator), int(denominator)))
        except ValueError:
            return None

    def inst_token(self, instrument: int) -> int:
        return self.inst_start + int(instrument)

    def note_token(self, instrument: int, pitch: int) -> int:
        return self.note_start + int(instrument) * N_PITCHES + int(pitch)

    def dv_token(self, duration_steps: int, velocity: int) -> int:
        d = min(max(1, int(duration_steps)), self.params.duration_max)
        return int(self._dv_lut[d, min(max(int(velocity), 0), 127)])

    def shift_steps(self) -> np.ndarray:
        """Steps each id advances time by (0 for non-shift ids); a lookup table of vocab size."""
        table = np.zeros(self.vocab_size, dtype=np.int64)
        table[self.shift_start : self.tempo_start] = np.arange(1, self.params.max_shift + 1)
        return table

    def tempo_of(self, token: int) -> float:
        return float(self.tempo_bpm[token - self.tempo_start])

    def dv_of(self, token: int) -> tuple[int, int]:
        """(duration in steps, velocity) of a DV id."""
        k = token - self.dv_start
        lv = self.params.velocity_levels
        return int(self.durations[k // lv]), self._velocity_value(k % lv)

    def _velocity_value(self, vbin):
        width = 128 // self.params.velocity_levels
        return vbin * width + width // 2

    def token_name(self, token: int) -> str:
        t = int(token)
        k = Kind(self.kinds(np.array([t]))[0])
        if k == Kind.SPECIAL:
            return {0: "PAD", 1: "BOS", 2: "EOS"}.get(t, f"UNK_{t}")
        if k == Kind.SHIFT:
            return f"SHIFT_{t - self.shift_start + 1}"
        if k == Kind.TEMPO:
            return f"TEMPO_{self.tempo_of(t):.1f}"
        if k == Kind.TS:
            n, d = self.time_signatures[t - self.ts_start]
            return f"TS_{n}/{d}"
        if k == Kind.INST:
            return f"INST_{t - self.inst_start}"
        if k == Kind.NOTE:
            i, p = divmod(t - self.note_start, N_PITCHES)
            return f"NOTE_{i}_{p}"
        if k == Kind.DV:
            d, v = self.dv_of(t)
            return f"DV_{d}_{v}"
        if k == Kind.STYLE:
            return f"STYLE_{t - self.style_start}"
        if k == Kind.KEY:
            return f"KEY_{key_name(t - self.key_start).replace(' ', '_')}"
        if k == Kind.DENSITY:
            return f"DENSITY_{DENSITY_LEVELS[t - self.density_start]}"
        if k == Kind.CHORD:
            return f"CHORD_{chord_name(t - self.chord_start)}"
        return MARKERS[t - self.EDIT]

    # ----- control tokens (v2) ----------------------------------------------------------------

    def _need_controls(self) -> None:
        if not self.has_controls:
            raise CodecError(f"codec v{self.version} has no control tokens (styles, keys, densities, editing)")

    def style_token(self, slot: int) -> int:
        self._need_controls()
        if not 0 <= slot < N_STYLES:
            raise ValueError(f"style slot {slot} is outside 0..{N_STYLES - 1}")
        return self.style_start + int(slot)

    def key_token(self, key: int) -> int:
        """``key`` = tonic pitch class (0 = C) + 12 for minor."""
        self._need_controls()
        if not 0 <= key < N_KEYS:
            raise ValueError(f"key {key} is outside 0..{N_KEYS - 1}")
        return self.key_start + int(key)

    def density_token(self, level: int) -> int:
        self._need_controls()
        return self.density_start + int(level)

    # ----- chord tokens (v4) ------------------------------------------------------------------

    def chord_token(self, cid: int) -> int:
        """The CHORD id of a chord id of ``midigen.music.chords`` (0..107, or NO_CHORD)."""
        if not self.has_chords:
            raise CodecError(f"codec v{self.version} has no chord tokens")
        if not 0 <= int(cid) < CHORD_VOCAB:
            raise ValueError(f"not a chord id: {cid}")
        return self.chord_start + int(cid)

    def chord_changes(self, tokens) -> tuple[np.ndarray, np.ndarray]:
        """(steps, chord ids) where the harmony of a song's tokens changes, as the labeller reads its
        own pitched notes beat by beat on its header's meter (time in token steps, so long silences
        are already shortened); the harmony starts as N.C., and nothing after the last event counts.
        A stream too long or dense to label has no changes (it still encodes)."""
        ev = self.decode_events(tokens)
        n = ev["notes"]
        pitched = n["instrument"] != DRUMS
        start, pitch = n["time"][pitched], n["pitch"][pitched]
        end = start + n["duration"][pitched]
        num, den = ev["time_signature"] or (4, 4)
        none = np.zeros(0, np.int64), np.zeros(0, np.int64)
        if not len(start):
            return none
        try:
            grid = meter_beat_grid(self.params.steps_per_quarter, [(0, num, den)], int(end.max()), MAX_BEATS)
            labels = label_notes(start, end, pitch, grid)
        except (ValueError, ChordError):
            return none
        change = labels != np.concatenate(([NO_CHORD], labels[:-1]))
        steps = np.round(grid.starts[change]).astype(np.int64)
        keep = steps <= ev["end_step"]
        return steps[keep], labels[change][keep].astype(np.int64)

    def add_chords(self, tokens, changes=None) -> np.ndarray:
        """A song's tokens (``BOS`` header, events, ``EOS``) with a CHORD token at each change of harmony:
        ``changes`` = (steps, chord ids), by default the labeller's (``chord_changes``). Each goes after
        the shifts and tempo of its step and before its notes; a change between events splits the
        shifts there. CHORD tokens already in the stream are replaced. Changes after the last event are
        left out."""
        t = np.asarray(tokens)
        steps, ids = self.chord_changes(t) if changes is None else changes
        h = self.header_length(t)
        body = t[h:].astype(np.int64)
        stop = np.flatnonzero((body == self.EOS) | (body == self.BOS))
        tail = body[stop[0]:] if len(stop) else body[:0]
        body = body[: stop[0]] if len(stop) else body
        kind = self.kinds(body)
        is_shift = kind == Kind.SHIFT
        time = np.cumsum(self.shift_steps()[np.where(is_shift, body, 0)])
        ev = ~is_shift & (kind != Kind.CHORD)
        ev_ids, ev_time, ev_kind = body[ev], time[ev], kind[ev]
        steps, ids = np.asarray(steps, np.int64), np.asarray(ids, np.int64)
        last = int(ev_time[-1]) if len(ev_time) else 0
        steps, ids = steps[steps <= last], ids[steps <= last]
        key = 2 * ev_time + (ev_kind != Kind.TEMPO)  # a step's tempo, then its chord, then its notes
        at = np.searchsorted(key, 2 * steps + 1, side="left")
        ev_ids = np.insert(ev_ids, at, self.chord_start + ids)
        ev_time = np.insert(ev_time, at, steps)
        return np.concatenate((t[:h], self.timed_stream(ev_ids, ev_time)[0], tail)).astype(t.dtype)

    def timed_stream(self, ids, times, seconds=None) -> tuple[np.ndarray, np.ndarray]:
        """Events at their steps (in order, from step 0) -> (the stream with the SHIFT runs the encoder
        writes between them, ``max_shift`` steps at a time then the rest; the event each token belongs to).
        An event is ``ids[i]``, followed by ``seconds[i]`` where that is >= 0 (a note's DV)."""
        ids, times = np.asarray(ids, np.int64), np.asarray(times, np.int64)
        mx = self.params.max_shift
        gaps = np.maximum(np.diff(times, prepend=0), 0)
        n_full, rem = np.divmod(gaps, mx)
        n_shift = n_full + (rem > 0)
        second = np.full(len(ids), -1, np.int64) if seconds is None else np.asarray(seconds, np.int64)
        count = n_shift + 1 + (second >= 0)
        group = np.repeat(np.arange(len(ids)), count)
        pos = np.arange(len(group)) - np.repeat(np.cumsum(count) - count, count)
        own = pos - n_shift[group]
        out = np.where(own == 0, ids[group], second[group])
        out = np.where(pos < n_shift[group], self.shift_start + rem[group] - 1, out)
        return np.where(pos < n_full[group], self.shift_start + mx - 1, out), group

    def transpose_table(self, semitones: int) -> np.ndarray:
        """id -> id after shifting every pitched note by ``semitones``; -1 where a pitch leaves 0..127.

        Drums are untouched (their pitch is the drum sound). Apply with ``table[tokens]``.
        """
        table = np.arange(self.vocab_size, dtype=np.int64)
        notes = np.arange(self.note_start, self.dv_start)
        inst, pitch = np.divmod(notes - self.note_start, N_PITCHES)
        shifted = pitch + semitones
        pitched = inst != DRUMS
        ok = (shifted >= 0) & (shifted < N_PITCHES)
        table[notes[pitched]] = np.where(
            ok[pitched], self.note_start + inst[pitched] * N_PITCHES + shifted[pitched], -1
        )
        if self.has_controls:  # the key moves with the notes
            k = np.arange(N_KEYS)
            table[self.key_start + k] = self.key_start + (k % 12 + semitones) % 12 + 12 * (k // 12)
        if self.has_chords:  # and so do the chords' roots (N.C. stays)
            cid = np.arange(NO_CHORD)
            root, quality = np.divmod(cid, len(QUALITIES))
            table[self.chord_start + cid] = self.chord_start + ((root + semitones) % 12) * len(QUALITIES) + quality
        return table

    def count_notes(self, tokens: np.ndarray) -> int:
        """Notes a token stream holds (NOTE ids); the denominator of bits per note."""
        t = np.asarray(tokens)
        return int(np.count_nonzero((t >= self.note_start) & (t < self.dv_start)))

    def _skip_controls(self, t: np.ndarray, n: int) -> int:
        while n < len(t) and self.style_start <= t[n] < self.EDIT:
            n += 1
        return n

    def header_length(self, tokens: np.ndarray) -> int:
        """Length of the song header at the start of ``tokens``.

        The header is ``BOS [controls] INST... TEMPO [TS]`` in v3 and ``BOS INST... TEMPO [TS] [controls]``
        in v2 (controls: STYLE, KEY, DENSITY), then, in an editing sequence, ``EDIT INST...`` naming the
        instruments to write. Both orders are read, so any checkpoint's output parses.
        """
        t = np.asarray(tokens)
        n = 1 if len(t) and t[0] == self.BOS else 0
        if self.has_controls:
            n = self._skip_controls(t, n)
        while n < len(t) and self.inst_start <= t[n] < self.note_start:
            n += 1
        if n < len(t) and self.tempo_start <= t[n] < self.ts_start:
            n += 1
        if n < len(t) and self.ts_start <= t[n] < self.inst_start:
            n += 1
        if not self.has_controls:
            return n
        n = self._skip_controls(t, n)
        if n < len(t) and t[n] == self.EDIT:
            n += 1
            while n < len(t) and self.inst_start <= t[n] < self.note_start:
                n += 1
        return n

    def base_header(self, tokens: np.ndarray) -> np.ndarray:
        """``BOS INST... TEMPO [TS]`` of the header at the start of ``tokens``: no controls, no EDIT part."""
        t = np.asarray(tokens)
        head = t[: self.header_length(t)]
        if not self.has_controls:
            return head
        edit = np.flatnonzero(head == self.EDIT)
        head = head[: edit[0]] if len(edit) else head
        return head[(head < self.style_start) | (head >= self.EDIT)]

    def header(self, instruments, bpm: float = 120.0, time_signature=(4, 4)) -> np.ndarray:
        """A song header for conditioning generation: the instruments present and the start tempo."""
        ids = [self.BOS] + [self.inst_token(i) for i in sorted(set(int(i) for i in instruments))]
        ids.append(self.tempo_token(bpm))
        if time_signature is not None:
            ts = self.ts_token(*time_signature)
            if ts is not None:
                ids.append(ts)
        return np.array(ids, dtype=np.uint16)

    # ----- persistence ------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "name": CODEC_NAME,
            "version": self.version,
            "params": asdict(self.params),
            "vocab_size": self.vocab_size,
            "ranges": {k: list(v) for k, v in self.ranges.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Codec":
        if d.get("name") != CODEC_NAME or d.get("version") not in SUPPORTED_VERSIONS:
            raise CodecError(
                f"codec {d.get('name')!r} v{d.get('version')} is not {CODEC_NAME!r} "
                f"v{'/'.join(map(str, SUPPORTED_VERSIONS))}"
            )
        try:
            codec = cls(CodecParams(**d["params"]), version=d["version"])
        except (TypeError, ValueError) as e:
            raise CodecError(f"bad codec parameters: {e}") from None
        if codec.vocab_size != d.get("vocab_size"):
            raise CodecError("codec parameters do not reproduce the stored vocabulary size")
        return codec

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Codec":
        return cls.from_dict(json.loads(text))

    def save(self, path) -> None:
        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path) -> "Codec":
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read())

    # ----- encoding ---------------------------------------------------------------------------

    def read_midi(self, data: bytes) -> symusic.Score:
        return self.read_smf(sanitize_smf(unwrap_rmid(bytes(data))))

    def read_smf(self, smf: bytes) -> symusic.Score:
        """``read_midi`` of a file already unwrapped and through ``smf.sanitize_smf`` (prepare checks and
        sanitizes in one walk, ``smf.checked_smf``)."""
        try:
            score = symusic.core.ScoreTick.from_midi(smf, False)
        except Exception as e:  # symusic raises plain RuntimeError/ValueError on bad files
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CodecError(f"unreadable MIDI: {msg}") from None
        if score.ticks_per_quarter <= 0:
            raise CodecError("unsupported time division (SMPTE or zero ticks per quarter)")
        return score

    @staticmethod
    def gather_notes(scores) -> dict:
        """Every note of ``scores`` as flat int64 arrays in ticks, with its instrument and score index.

        Keys: time, duration, pitch, velocity, instrument, file; plus ``tracks`` = (score index,
        instrument) of each track with notes, and ``complete`` = no note was dropped. Notes with
        velocity 0, a negative pitch or a negative time are dropped.
        """
        fields = ("time", "duration", "pitch", "velocity")
        cols = {k: [] for k in fields}
        insts, fids, counts = [], [], []
        for f, score in enumerate(scores):
            for track in score.tracks:
                n = track.note_num()
                if n:
                    a = track.notes.numpy()
                    for k in fields:
                        cols[k].append(a[k])
                    insts.append(DRUMS if track.is_drum else int(track.program) & 127)
                    fids.append(f)
                    counts.append(n)
        if not counts:
            out = {k: np.zeros(0, np.int64) for k in (*fields, "instrument", "file")}
            out.update(tracks=([], []), complete=True)
            return out
        out = {k: np.concatenate(cols[k]).astype(np.int64) for k in fields}
        counts = np.array(counts, dtype=np.int64)
        out["instrument"] = np.repeat(np.array(insts, dtype=np.int64), counts)
        out["file"] = np.repeat(np.array(fids, dtype=np.int64), counts)
        keep = (out["velocity"] > 0) & (out["pitch"] >= 0) & (out["time"] >= 0)
        complete = bool(keep.all())
        if not complete:
            out = {k: v[keep] for k, v in out.items()}
        out.update(tracks=(fids, insts), complete=complete)
        return out

    def note_arrays(self, score: symusic.Score) -> dict[str, np.ndarray]:
        """All notes of a score as flat int64 arrays in ticks: time, duration, pitch, velocity, instrument."""
        g = self.gather_notes([score])
        return {k: g[k] for k in ("time", "duration", "pitch", "velocity", "instrument")}

    def encode(self, data: bytes) -> np.ndarray:
        """MIDI file bytes -> uint16 token ids (BOS ... EOS). Raises CodecError."""
        return self.encode_score(self.read_midi(data))

    def encode_score(self, score: symusic.Score) -> np.ndarray:
        """One score -> tokens. Raises CodecError (no notes, absurd length)."""
        out = self.encode_scores([score])[0]
        if isinstance(out, CodecError):
            raise out
        return out

    def encode_many(self, datas) -> list:
        """Many MIDI files (bytes) -> a list of token arrays, or CodecError where a file fails.

        Vectorized across the whole batch: per-file Python work is only parsing and pulling the
        note arrays out of symusic, so small files cost little more than their parse.
        """
        scores, out, encoded, size = [], [], [], 0
        for data in datas:
            try:
                scores.append(self.read_midi(data))
                out.append(None)
                size += len(data)
            except CodecError as e:
                out.append(e)
            if size > self.batch_bytes:  # keep batches cache-sized
                encoded += self.encode_scores(scores)
                scores, size = [], 0
        encoded += self.encode_scores(scores) if scores else []
        done = iter(encoded)
        return [next(done) if o is None else o for o in out]

    def encode_scores(self, scores) -> list:
        """Scores -> list of token arrays (or CodecError per score), computed in one vectorized pass
        (``encode_base``), with their chords added in v4 (``add_chords``)."""
        out = self.encode_base(scores)
        if not self.has_chords:
            return out
        return [o if isinstance(o, BaseException) else self.add_chords(o) for o in out]

    def encode_base(self, scores) -> list:
        """``encode_scores`` without chord tokens (``_encode_batch`` below: the reference encoder that
        ``codec_jit`` must match token for token)."""
        return _encode_batch(self, scores)

    # ----- decoding ---------------------------------------------------------------------------

    def decode_events(self, tokens) -> dict:
        """Token ids -> note and tempo arrays (times in steps). Total: bad ids are skipped.

        Reads one song: a leading BOS is skipped and decoding stops at the first EOS after it.
        """
        t = np.asarray(tokens, dtype=np.int64).ravel()
        if len(t) and t[0] == self.BOS:
            t = t[1:]
        stop = (t == self.EOS) | (t == self.BOS)
        if self.has_controls:  # an editing sequence's written part follows FILL: not part of this song
            stop |= t == self.FILL
        eos = np.flatnonzero(stop)
        if len(eos):
            t = t[: eos[0]]
        kind = self.kinds(t)
        steps = self.shift_steps()[np.where(kind == Kind.SHIFT, t, 0)]
        time = np.cumsum(steps)  # time at each token (shift counts at and after itself)

        is_note = kind == Kind.NOTE
        is_dv = kind == Kind.DV
        pair = np.zeros(len(t), dtype=bool)
        pair[:-1] = is_note[:-1] & is_dv[1:]
        ni = np.flatnonzero(pair)
        note_id = t[ni] - self.note_start
        dv_id = t[ni + 1] - self.dv_start
        lv = self.params.velocity_levels
        notes = {
            "time": time[ni],
            "duration": self.durations[dv_id // lv],
            "pitch": note_id % N_PITCHES,
            "velocity": self._velocity_value(dv_id % lv),
            "instrument": note_id // N_PITCHES,
        }

        is_tempo = kind == Kind.TEMPO
        head_len = self.header_length(np.concatenate(([self.BOS], t)))  # header within t, plus BOS
        tempo_idx = np.flatnonzero(is_tempo)
        tempo_time = time[tempo_idx]
        tempo_bpm = self.tempo_bpm[t[tempo_idx] - self.tempo_start]
        chord_idx = np.flatnonzero(kind == Kind.CHORD)
        chord_idx = chord_idx[chord_idx >= head_len - 1]
        ts = None
        head_t, head_k = t[: max(0, head_len - 1)], kind[: max(0, head_len - 1)]
        for tok, k in zip(head_t, head_k):
            if k == Kind.TS:
                ts = self.time_signatures[tok - self.ts_start]
        in_edit = np.cumsum(head_t == self.EDIT) > 0 if self.has_controls else np.zeros(len(head_t), bool)
        instruments = sorted(set((head_t[(head_k == Kind.INST) & ~in_edit] - self.inst_start).tolist()))
        return {
            "notes": notes,
            "tempo_time": tempo_time,
            "tempo_bpm": tempo_bpm,
            "time_signature": ts,
            "header_instruments": instruments,
            "end_step": int(time[-1]) if len(time) else 0,
            "chord_time": time[chord_idx],
            "chord_id": t[chord_idx] - self.chord_start if self.has_chords else np.zeros(0, np.int64),
        }

    def decode(self, tokens) -> symusic.Score:
        """Token ids -> symusic Score (ticks, ``decode_tpq`` per quarter), one track per instrument.

        MIDI ticks are 32-bit: a song so long that ``decode_tpq`` would overflow them is written at
        ``steps_per_quarter`` ticks per quarter instead, and notes past even that are dropped.
        """
        ev = self.decode_events(tokens)
        notes = ev["notes"]
        ends = notes["time"] + notes["duration"]
        last = max(int(ends.max()) if len(ends) else 0, int(ev["tempo_time"].max()) if len(ev["tempo_time"]) else 0)
        tpq = self.params.decode_tpq
        if last * (tpq // self.params.steps_per_quarter) > _INT32_MAX:
            tpq = self.params.steps_per_quarter
        scale = tpq // self.params.steps_per_quarter
        score = symusic.Score(tpq)
        score.tempos = self._tempo_list(ev, scale)
        n, d = ev["time_signature"] or (4, 4)
        score.time_signatures.append(symusic.TimeSignature(0, n, d))
        chords = ev["chord_time"] * scale <= _INT32_MAX  # CHORD tokens: chord symbols, as written files carry them
        add_chord_markers(score, ev["chord_time"][chords] * scale, ev["chord_id"][chords])
        fits = ends * scale <= _INT32_MAX
        for inst in np.unique(notes["instrument"]):
            sel = (notes["instrument"] == inst) & fits
            name = "Drums" if inst == DRUMS else GM_PROGRAM_NAMES[int(inst)]
            track = symusic.Track(name, 0 if inst == DRUMS else int(inst), bool(inst == DRUMS))
            track.notes = symusic.core.NoteTickList.from_numpy(
                (notes["time"][sel] * scale).astype(np.int32),
                (notes["duration"][sel] * scale).astype(np.int32),
                notes["pitch"][sel].astype(np.int8),
                notes["velocity"][sel].astype(np.int8),
            )
            score.tracks.append(track)
        return score

    @staticmethod
    def _tempo_list(ev: dict, scale: int):
        """The decoded tempo map: the first tempo holds from tick 0, the last change at a tick wins."""
        bpm = ev["tempo_bpm"]
        if len(bpm) == 0:
            bpm, ttime = np.array([120.0]), np.array([0])
        else:
            ttime = ev["tempo_time"].copy()
            ttime[0] = 0
        keep = np.ones(len(ttime), dtype=bool)
        keep[:-1] = ttime[1:] != ttime[:-1]
        keep &= ttime * scale <= _INT32_MAX
        mspq = np.round(60_000_000.0 / bpm[keep]).astype(np.int32)
        return symusic.core.TempoTickList.from_numpy((ttime[keep] * scale).astype(np.int32), mspq)

    def decode_to_midi(self, tokens) -> bytes:
        return bytes(self.decode(tokens).dumps_midi())


# ----- the batch encoder ------------------------------------------------------------------------
# Many scores -> tokens in a few vectorized passes over flat arrays of every note of every score,
# carried in one namespace ``b``:
# 1. ``_read_scores``: per file, ticks per quarter, tempo maps, the first time signature; all notes.
# 2. ``_quantize``: ticks -> steps (round half up, exact integer arithmetic); files that cannot be
# encoded (no notes, notes past 2^32 steps) fail alone.
# 3. ``_sort_notes``: one key per note (file, onset, instrument, pitch); exact duplicates dropped.
# 4. ``_tempo_changes``: the header tempo of each file and the changes that move the bin before its last onset.
# 5. ``_event_groups``: distinct event times per file, the shortened gaps before them, the tokens each needs.
# 6. ``_write``: the headers and the events into one output array, cut into one array per file.

_LOW32 = (1 << 32) - 1


def _encode_batch(codec, scores) -> list:
    """Scores -> list of token arrays (or CodecError per score), in the six steps listed above."""
    b = _read_scores(codec, scores)
    if len(b.time) == 0:
        return [CodecError("no notes")] * b.n_files
    if not _quantize(codec, b):
        return b.results
    _sort_notes(b)
    _tempo_changes(codec, b)
    _event_groups(codec, b)
    return _write(codec, b)


def _read_scores(codec, scores) -> SimpleNamespace:
    n_files = len(scores)
    b = SimpleNamespace(n_files=n_files, results=[None] * n_files)
    b.tpq = np.array([s.ticks_per_quarter for s in scores], dtype=np.int64)
    b.tempo_parts, b.ts_tok = [], np.full(n_files, -1, dtype=np.int64)
    for f, score in enumerate(scores):
        if len(score.tempos):
            b.tempo_parts.append((f, score.tempos.numpy()))
        if len(score.time_signatures):
            ts = min(score.time_signatures, key=lambda x: x.time)
            tok = codec.ts_token(ts.numerator, ts.denominator)
            b.ts_tok[f] = -1 if tok is None else tok
    g = codec.gather_notes(scores)
    b.time, b.duration, b.pitch, b.velocity, b.inst, b.fid = (
        g[k] for k in ("time", "duration", "pitch", "velocity", "instrument", "file"))
    b.tracks, b.complete = g["tracks"], g["complete"]
    return b


def _quantize(codec, b) -> bool:
    """Steps for every note; False when no file of the batch is left to encode."""
    spq2 = 2 * codec.params.steps_per_quarter
    q = b.tpq[b.fid]
    b.onset = (b.time * spq2 + q) // (2 * q)
    b.dur = np.maximum(1, (b.duration * spq2 + q) // (2 * q))
    too_far = np.zeros(b.n_files, dtype=bool)
    too_far[b.fid[b.onset >= 1 << 32]] = True  # such notes cannot be keyed; their file fails alone
    has_notes = np.bincount(b.fid, minlength=b.n_files) > 0
    b.bad = too_far | ~has_notes
    for f in np.flatnonzero(b.bad):
        b.results[f] = CodecError("no notes" if not has_notes[f] else "absurd length (notes after 2^32 steps)")
    if b.bad.any():
        ok = ~b.bad[b.fid]
        for k in ("onset", "dur", "velocity", "inst", "fid", "pitch"):
            setattr(b, k, getattr(b, k)[ok])
    return len(b.onset) > 0


def _sort_notes(b) -> None:
    key = (b.fid << 47) | (b.onset << 15) | (b.inst * N_PITCHES + b.pitch)
    order = np.argsort(key, kind="stable")
    key = key[order]
    first = np.empty(len(key), dtype=bool)
    first[0] = True
    np.not_equal(key[1:], key[:-1], out=first[1:])
    order, key = order[first], key[first]
    b.fid, b.onset, b.note_id = key >> 47, (key >> 15) & _LOW32, key & 0x7FFF
    b.dur, b.velocity = b.dur[order], b.velocity[order]


def _tempo_changes(codec, b) -> None:
    """``head_bin`` per file; ``t_fid, t_time, t_bin``: changes that move the bin, before the last onset."""
    b.head_bin = np.full(b.n_files, int(np.searchsorted(codec._tempo_edges, 120.0)), dtype=np.int64)
    b.t_fid = b.t_time = b.t_bin = np.zeros(0, dtype=np.int64)
    if not b.tempo_parts:
        return
    spq2 = 2 * codec.params.steps_per_quarter
    t_fid = np.concatenate([np.full(len(a["time"]), f, np.int64) for f, a in b.tempo_parts])
    t_raw = np.concatenate([a["time"] for _, a in b.tempo_parts]).astype(np.int64)
    mspq = np.concatenate([a["mspq"] for _, a in b.tempo_parts]).astype(np.float64)
    q = b.tpq[t_fid]
    t_time = np.minimum(np.maximum(0, (t_raw * spq2 + q) // (2 * q)), _LOW32)
    t_bin = np.searchsorted(codec._tempo_edges, 60_000_000.0 / np.maximum(mspq, 1.0))
    tkey = (t_fid << 32) | t_time
    o = np.argsort(tkey, kind="stable")
    tkey, t_bin = tkey[o], t_bin[o]
    last = np.ones(len(tkey), dtype=bool)  # the last change at any step wins
    last[:-1] = tkey[1:] != tkey[:-1]
    tkey, t_bin = tkey[last], t_bin[last]
    t_fid, t_time = tkey >> 32, tkey & _LOW32
    at0 = t_time == 0
    b.head_bin[t_fid[at0]] = t_bin[at0]
    file_last_onset = np.zeros(b.n_files, dtype=np.int64)
    file_last_onset[b.fid] = b.onset  # sorted, so the last write per file is its last onset
    inside = ~at0 & (t_time < file_last_onset[t_fid]) & ~b.bad[t_fid]
    t_fid, t_time, t_bin = t_fid[inside], t_time[inside], t_bin[inside]
    prev = np.empty(len(t_bin), dtype=np.int64)
    if len(t_bin):
        prev[1:] = t_bin[:-1]
        new_file = np.ones(len(t_bin), dtype=bool)
        new_file[1:] = t_fid[1:] != t_fid[:-1]
        prev[new_file] = b.head_bin[t_fid[new_file]]
    changed = t_bin != prev
    b.t_fid, b.t_time, b.t_bin = t_fid[changed], t_time[changed], t_bin[changed]


def _event_groups(codec, b) -> None:
    """Distinct event times (note onsets, tempo changes) per file, and the tokens each one takes:
    the shifts arriving there (gaps shortened to ``max_gap``), an optional tempo, two per note."""
    p = codec.params
    b.nkey = (b.fid << 32) | b.onset
    tk = (b.t_fid << 32) | b.t_time
    times = np.sort(np.concatenate((b.nkey, tk)), kind="stable") if len(tk) else b.nkey
    is_first = np.empty(len(times), dtype=bool)
    is_first[0] = True
    np.not_equal(times[1:], times[:-1], out=is_first[1:])
    b.groups = groups = times[is_first]
    b.g_fid, g_time = groups >> 32, groups & _LOW32
    gaps = np.empty(len(groups), dtype=np.int64)
    gaps[0] = g_time[0]
    gaps[1:] = g_time[1:] - g_time[:-1]
    b.file_start_group = np.ones(len(groups), dtype=bool)
    b.file_start_group[1:] = b.g_fid[1:] != b.g_fid[:-1]
    gaps[b.file_start_group] = g_time[b.file_start_group]
    np.minimum(gaps, p.max_gap, out=gaps)
    # group of each note: its rank among distinct note times, plus the tempo-only times before it
    new_time = np.empty(len(b.nkey), dtype=bool)
    new_time[0] = True
    np.not_equal(b.nkey[1:], b.nkey[:-1], out=new_time[1:])
    b.note_group = np.cumsum(new_time) - 1
    if len(tk):
        u = b.nkey[new_time]
        j = np.minimum(np.searchsorted(u, tk), len(u) - 1)
        tempo_only = np.sort(tk[u[j] != tk])
        if len(tempo_only):
            b.note_group += np.searchsorted(tempo_only, b.nkey)
    b.n_notes = np.bincount(b.note_group, minlength=len(groups))
    b.n_full, b.rem = np.divmod(gaps, p.max_shift)
    b.n_shift = b.n_full + (b.rem > 0)
    b.has_tempo = np.zeros(len(groups), dtype=np.int64)
    b.tempo_group = np.searchsorted(groups, tk) if len(tk) else np.zeros(0, np.int64)
    b.has_tempo[b.tempo_group] = 1
    b.count = b.n_shift + b.has_tempo + 2 * b.n_notes


def _write(codec, b) -> list:
    out, file_start, file_len, head_len = _write_headers(codec, b)
    p = codec.params
    # group start = body start of its file + tokens of the earlier groups in the same file
    excl = np.cumsum(b.count) - b.count
    first_group_excl = np.zeros(b.n_files, dtype=np.int64)
    first_group_excl[b.g_fid[b.file_start_group]] = excl[b.file_start_group]
    g_start = file_start[b.g_fid] + head_len[b.g_fid] + excl - first_group_excl[b.g_fid]
    s_group = np.repeat(np.arange(len(b.groups)), b.n_shift)
    s_pos = np.arange(len(s_group)) - np.repeat(np.cumsum(b.n_shift) - b.n_shift, b.n_shift)
    out[g_start[s_group] + s_pos] = np.where(
        s_pos < b.n_full[s_group], codec.shift_start + p.max_shift - 1, codec.shift_start + b.rem[s_group] - 1)
    if len(b.t_time):
        out[g_start[b.tempo_group] + b.n_shift[b.tempo_group]] = codec.tempo_start + b.t_bin
    # a note's slot: its group's first note slot + 2 x its rank in the group (one gather)
    g_note0 = g_start + b.n_shift + b.has_tempo - 2 * (np.cumsum(b.n_notes) - b.n_notes)
    pos = g_note0[b.note_group] + 2 * np.arange(len(b.nkey))
    out[pos] = codec.note_start + b.note_id
    out[pos + 1] = codec._dv_lut[np.minimum(b.dur, p.duration_max), b.velocity]
    for f in np.flatnonzero(~b.bad):
        b.results[f] = out[file_start[f] : file_start[f] + file_len[f]]
    return b.results


def _write_headers(codec, b):
    """The output array with every file's ``BOS INST... TEMPO [TS] ... EOS`` in place."""
    present = np.zeros((b.n_files, N_INSTRUMENTS), dtype=bool)
    if not b.complete:  # some notes were dropped: find the instruments that still have notes
        present[b.fid, b.note_id >> 7] = True
    else:
        present[np.array(b.tracks[0]), np.array(b.tracks[1])] = True
    present[b.bad] = False
    pf, pi = np.nonzero(present)
    n_inst = np.bincount(pf, minlength=b.n_files)
    has_ts = (b.ts_tok >= 0).astype(np.int64)
    head_len = 2 + n_inst + has_ts
    body_len = np.bincount(b.g_fid, weights=b.count, minlength=b.n_files).astype(np.int64)
    file_len = np.where(b.bad, 0, head_len + body_len + 1)
    file_start = np.cumsum(file_len) - file_len
    out = np.zeros(int(file_len.sum()), dtype=np.uint16)
    ok = np.flatnonzero(~b.bad)
    out[file_start[ok]] = codec.BOS
    inst_rank = np.arange(len(pf)) - (np.cumsum(n_inst) - n_inst)[pf]
    out[file_start[pf] + 1 + inst_rank] = codec.inst_start + pi
    out[file_start[ok] + 1 + n_inst[ok]] = codec.tempo_start + b.head_bin[ok]
    ts_files = ok[has_ts[ok] == 1]
    out[file_start[ts_files] + 2 + n_inst[ts_files]] = b.ts_tok[ts_files]
    out[file_start[ok] + file_len[ok] - 1] = codec.EOS
    return out, file_start, file_len, head_len


GM_PROGRAM_NAMES = [
    "Acoustic Grand Piano", "Bright Acoustic Piano", "Electric Grand Piano", "Honky-tonk Piano",
    "Electric Piano 1", "Electric Piano 2", "Harpsichord", "Clavinet", "Celesta", "Glockenspiel",
    "Music Box", "Vibraphone", "Marimba", "Xylophone", "Tubular Bells", "Dulcimer", "Drawbar Organ",
    "Percussive Organ", "Rock Organ", "Church Organ", "Reed Organ", "Accordion", "Harmonica",
    "Tango Accordion", "Acoustic Guitar (nylon)", "Acoustic Guitar (steel)", "Electric Guitar (jazz)",
    "Electric Guitar (clean)", "Electric Guitar (muted)", "Overdriven Guitar", "Distortion Guitar",
    "Guitar Harmonics", "Acoustic Bass", "Electric Bass (finger)", "Electric Bass (pick)",
    "Fretless Bass", "Slap Bass 1", "Slap Bass 2", "Synth Bass 1", "Synth Bass 2", "Violin", "Viola",
    "Cello", "Contrabass", "Tremolo Strings", "Pizzicato Strings", "Orchestral Harp", "Timpani",
    "String Ensemble 1", "String Ensemble 2", "Synth Strings 1", "Synth Strings 2", "Choir Aahs",
    "Voice Oohs", "Synth Voice", "Orchestra Hit", "Trumpet", "Trombone", "Tuba", "Muted Trumpet",
    "French Horn", "Brass Section", "Synth Brass 1", "Synth Brass 2", "Soprano Sax", "Alto Sax",
    "Tenor Sax", "Baritone Sax", "Oboe", "English Horn", "Bassoon", "Clarinet", "Piccolo", "Flute",
    "Recorder", "Pan Flute", "Blown Bottle", "Shakuhachi", "Whistle", "Ocarina", "Lead 1 (square)",
    "Lead 2 (sawtooth)", "Lead 3 (calliope)", "Lead 4 (chiff)", "Lead 5 (charang)", "Lead 6 (voice)",
    "Lead 7 (fifths)", "Lead 8 (bass + lead)", "Pad 1 (new age)", "Pad 2 (warm)", "Pad 3 (polysynth)",
    "Pad 4 (choir)", "Pad 5 (bowed)", "Pad 6 (metallic)", "Pad 7 (halo)", "Pad 8 (sweep)",
    "FX 1 (rain)", "FX 2 (soundtrack)", "FX 3 (crystal)", "FX 4 (atmosphere)", "FX 5 (brightness)",
    "FX 6 (goblins)", "FX 7 (echoes)", "FX 8 (sci-fi)", "Sitar", "Banjo", "Shamisen", "Koto", "Kalimba",
    "Bag pipe", "Fiddle", "Shanai", "Tinkle Bell", "Agogo", "Steel Drums", "Woodblock", "Taiko Drum",
    "Melodic Tom", "Synth Drum", "Reverse Cymbal", "Guitar Fret Noise", "Breath Noise", "Seashore",
    "Bird Tweet", "Telephone Ring", "Helicopter", "Applause", "Gunshot",
]
assert len(GM_PROGRAM_NAMES) == 128


PITCH_CLASSES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_PC_ALIASES = {"DB": 1, "D#": 3, "GB": 6, "G#": 8, "A#": 10, "CB": 11, "E#": 5, "FB": 4, "B#": 0}


def key_name(key: int) -> str:
    """0..23 -> 'C major' .. 'B minor' (tonic pitch class + 12 for minor)."""
    return f"{PITCH_CLASSES[key % 12]} {'minor' if key >= 12 else 'major'}"


def parse_key(text: str) -> int:
    """'D', 'D major', 'F# minor', 'Bbm', 'c#' -> 0..23. Lower-case single letters are not minor."""
    s = text.strip().replace("♯", "#").replace("♭", "b")
    parts = s.split()
    if len(parts) == 2 and parts[1].lower() in ("major", "minor", "maj", "min"):
        tonic, minor = parts[0], parts[1].lower().startswith("min")
    elif len(parts) == 1 and len(s) >= 2 and s[-1] == "m" and s[:-1].upper().rstrip("#B") in "ABCDEFG":
        tonic, minor = s[:-1], True
    elif len(parts) == 1:
        tonic, minor = s, False
    else:
        raise ValueError(f"unknown key {text!r}: use a tonic and mode like 'D', 'F# minor' or 'Bbm'")
    t = tonic[:1].upper() + tonic[1:].replace("b", "B").upper()
    names = {n.upper(): i for i, n in enumerate(PITCH_CLASSES)}
    pc = names.get(t, _PC_ALIASES.get(t))
    if pc is None:
        raise ValueError(f"unknown key {text!r}: use a tonic and mode like 'D', 'F# minor' or 'Bbm'")
    return pc + 12 * minor


def track_instrument(track) -> int:
    """A symusic track's instrument id: its GM program, or ``DRUMS`` for a drum track."""
    return DRUMS if track.is_drum else int(track.program) & 127


def score_instruments(score) -> list[int]:
    """The instruments of a symusic score's tracks that have notes, sorted."""
    return sorted({track_instrument(t) for t in score.tracks if t.note_num()})


def instrument_name(instrument: int) -> str:
    return "Drums" if instrument == DRUMS else GM_PROGRAM_NAMES[instrument]


DRUM_WORDS = ("drums", "drum", "percussion", "drumkit", "drum kit")


def match_instrument(text, among=range(DRUMS + 1)) -> int | None:
    """The instrument ``text`` names among ``among``: 'drums', a number 0..128 (128 = drums), or a
    General MIDI name, case-insensitive, exact or else a part of one (the first in GM order). None when
    nothing matches. Which instruments exist to match is the caller's: a checkpoint's, a song's."""
    s = str(text).strip().lower()
    if s in DRUM_WORDS or s.isdigit():
        i = DRUMS if s in DRUM_WORDS else int(s)
        return i if i in among else None
    norm = lambda x: "".join(ch for ch in x.lower() if ch.isalnum())  # noqa: E731
    key, named = norm(s), [(i, norm(instrument_name(i))) for i in sorted(among)]
    exact = [i for i, n in named if n == key]
    partial = [i for i, n in named if key and key in n]
    return (exact or partial or [None])[0]


def fidelity(codec: Codec, original: symusic.Score, decoded: symusic.Score) -> dict:
    """How well ``decoded`` reproduces ``original``, note by note (the codec's targets).

    Each original note is matched to the decoded note of the same instrument and pitch with the
    nearest onset (in quarter notes). Returns the fractions within the codec tolerances.
    """
    a = codec.note_arrays(original)
    b = codec.note_arrays(decoded)
    qa, qb = original.ticks_per_quarter, decoded.ticks_per_quarter
    n = len(a["time"])
    onset_ok = np.zeros(n, bool)
    dur_ok = np.zeros(n, bool)
    vel_ok = np.zeros(n, bool)
    key_a = a["instrument"] * 128 + a["pitch"]
    key_b = b["instrument"] * 128 + b["pitch"]
    ob = np.lexsort((b["time"], key_b))
    kb, tb = key_b[ob], b["time"][ob] / qb
    db, vb = b["duration"][ob] / qb, b["velocity"][ob]
    ta, da = a["time"] / qa, a["duration"] / qa
    lo = np.searchsorted(kb, key_a, "left")
    hi = np.searchsorted(kb, key_a, "right")
    for i in range(n):  # per note, only to score fidelity (not on the encode path)
        l, h = lo[i], hi[i]
        if l == h:
            continue
        j = l + int(np.searchsorted(tb[l:h], ta[i]))
        cands = [k for k in (j - 1, j) if l <= k < h]
        k = min(cands, key=lambda k: abs(tb[k] - ta[i]))
        onset_ok[i] = abs(tb[k] - ta[i]) <= 1 / 24 + 1e-9
        dur_ok[i] = abs(db[k] - da[i]) <= max(1 / 12, 0.2 * da[i]) + 1e-9
        vel_ok[i] = abs(int(vb[k]) - int(a["velocity"][i])) <= 8

    len_in, len_out = notes_end_seconds(original), notes_end_seconds(decoded)
    return {
        "notes_in": n,
        "notes_out": int(len(b["time"])),
        "onset_ok": float(onset_ok.mean()) if n else 1.0,
        "duration_ok": float(dur_ok.mean()) if n else 1.0,
        "velocity_ok": float(vel_ok.mean()) if n else 1.0,
        "seconds_in": round(len_in, 3),
        "seconds_out": round(len_out, 3),
        "length_error": abs(len_out - len_in) / len_in if len_in > 0 else 0.0,
    }
