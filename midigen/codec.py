"""MIDI <-> token codec: one interleaved event stream for every instrument.

Layout (ids in this order; exact ranges live on the ``Codec`` instance):

    PAD BOS EOS                       specials (PAD never appears in data)
    SHIFT_k        k = 1..96          advance time by k steps (1 step = 1/24 quarter note)
    TEMPO_b                           log-spaced BPM bins, ~1% apart
    TS_n/d                            time signature (header only)
    INST_i         i = 0..128         an instrument present in the song (128 = drums)
    NOTE_i,p       129 x 128          a note of instrument i at pitch p ...
    DV_d,v         durations x 16     ... always followed by its duration and velocity

A song is ``BOS INST_a INST_b ... TEMPO [TS] events... EOS``. Events are sorted by onset, then
instrument, then pitch, so all tracks sound together in the stream. Time is beat-relative (steps of
the file's ticks per quarter), so rhythm survives any tempo; tempo changes are events, so real time
does not drift. Gaps longer than ``max_gap`` steps are shortened to it, so a note after 2^27 ticks of
silence costs a few SHIFT tokens.

Decoding is total: any id sequence gives a valid score. Ids out of place (a DV with no NOTE before it,
a NOTE with no DV after it, header tokens among events, unknown ids) are skipped.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import symusic

from midigen.errors import MidigenError

CODEC_NAME = "midigen-event"
CODEC_VERSION = 1

DRUMS = 128  # the instrument number used for every drum track
N_INSTRUMENTS = 129
N_PITCHES = 128

_TS_DENOMINATORS = (2, 4, 8, 16)


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


@dataclass
class Codec:
    """Token vocabulary plus encode/decode. Construct from params; save/restore with JSON."""

    params: CodecParams = field(default_factory=CodecParams)
    batch_bytes: int = 1 << 17  # encode_many works through ~128 kB of MIDI at a time

    def __post_init__(self) -> None:
        p = self.params
        if 128 % p.velocity_levels:
            raise ValueError("velocity_levels must divide 128")
        self.durations = np.array(
            _duration_values(p.duration_exact_upto, p.duration_ratio, p.duration_max), dtype=np.int64
        )
        n_tempo = int(math.floor(math.log(p.tempo_max / p.tempo_min) / math.log(p.tempo_ratio))) + 1
        self.tempo_bpm = p.tempo_min * p.tempo_ratio ** np.arange(n_tempo)
        self.time_signatures = [(n, d) for d in _TS_DENOMINATORS for n in range(1, 17)]

        self.PAD, self.BOS, self.EOS = 0, 1, 2
        start = 3
        self.shift_start = start
        start += p.max_shift
        self.tempo_start = start
        start += n_tempo
        self.ts_start = start
        start += len(self.time_signatures)
        self.inst_start = start
        start += N_INSTRUMENTS
        self.note_start = start
        start += N_INSTRUMENTS * N_PITCHES
        self.dv_start = start
        self.n_durations = len(self.durations)
        start += self.n_durations * p.velocity_levels
        self.vocab_size = start
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

    # ----- vocabulary -------------------------------------------------------------------------

    KINDS = ("special", "shift", "tempo", "ts", "inst", "note", "dv")

    def _build_kind_table(self) -> np.ndarray:
        kind = np.zeros(self.vocab_size, dtype=np.int8)
        kind[self.shift_start : self.tempo_start] = 1
        kind[self.tempo_start : self.ts_start] = 2
        kind[self.ts_start : self.inst_start] = 3
        kind[self.inst_start : self.note_start] = 4
        kind[self.note_start : self.dv_start] = 5
        kind[self.dv_start : self.vocab_size] = 6
        return kind

    def kinds(self, tokens: np.ndarray) -> np.ndarray:
        """Kind index per token (see ``KINDS``); ids past the vocabulary count as special."""
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
        k = self.KINDS[self.kinds(np.array([t]))[0]]
        if k == "special":
            return {0: "PAD", 1: "BOS", 2: "EOS"}.get(t, f"UNK_{t}")
        if k == "shift":
            return f"SHIFT_{t - self.shift_start + 1}"
        if k == "tempo":
            return f"TEMPO_{self.tempo_of(t):.1f}"
        if k == "ts":
            n, d = self.time_signatures[t - self.ts_start]
            return f"TS_{n}/{d}"
        if k == "inst":
            return f"INST_{t - self.inst_start}"
        if k == "note":
            i, p = divmod(t - self.note_start, N_PITCHES)
            return f"NOTE_{i}_{p}"
        d, v = self.dv_of(t)
        return f"DV_{d}_{v}"

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
        return table

    def count_notes(self, tokens: np.ndarray) -> int:
        """Notes a token stream holds (NOTE ids); the denominator of bits per note."""
        t = np.asarray(tokens)
        return int(np.count_nonzero((t >= self.note_start) & (t < self.dv_start)))

    def header_length(self, tokens: np.ndarray) -> int:
        """Length of the song header at the start of ``tokens`` (BOS, INST..., TEMPO, [TS])."""
        t = np.asarray(tokens)
        n = 0
        if n < len(t) and t[n] == self.BOS:
            n += 1
        while n < len(t) and self.inst_start <= t[n] < self.note_start:
            n += 1
        if n < len(t) and self.tempo_start <= t[n] < self.ts_start:
            n += 1
        if n < len(t) and self.ts_start <= t[n] < self.inst_start:
            n += 1
        return n

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
            "version": CODEC_VERSION,
            "params": asdict(self.params),
            "vocab_size": self.vocab_size,
            "ranges": {
                "shift": [self.shift_start, self.tempo_start],
                "tempo": [self.tempo_start, self.ts_start],
                "ts": [self.ts_start, self.inst_start],
                "inst": [self.inst_start, self.note_start],
                "note": [self.note_start, self.dv_start],
                "dv": [self.dv_start, self.vocab_size],
            },
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Codec":
        if d.get("name") != CODEC_NAME or d.get("version") != CODEC_VERSION:
            raise CodecError(
                f"codec {d.get('name')!r} v{d.get('version')} is not {CODEC_NAME!r} v{CODEC_VERSION}"
            )
        codec = cls(CodecParams(**d["params"]))
        if codec.vocab_size != d.get("vocab_size"):
            raise CodecError("codec parameters do not reproduce the stored vocabulary size")
        return codec

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Codec":
        return cls.from_dict(json.loads(text))

    def save(self, path) -> None:
        from midigen.fsutil import atomic_write_text

        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path) -> "Codec":
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read())

    # ----- encoding ---------------------------------------------------------------------------

    def read_midi(self, data: bytes) -> symusic.Score:
        from midigen.smf import sanitize_smf, unwrap_rmid

        try:
            score = symusic.core.ScoreTick.from_midi(sanitize_smf(unwrap_rmid(bytes(data))), False)
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
        """Scores -> list of token arrays (or CodecError per score), computed in one vectorized pass."""
        p = self.params
        n_files = len(scores)
        results: list = [None] * n_files
        tpq = np.array([s.ticks_per_quarter for s in scores], dtype=np.int64)
        tempo_parts, ts_tok = [], np.full(n_files, -1, dtype=np.int64)
        for f, score in enumerate(scores):
            if len(score.tempos):
                tempo_parts.append((f, score.tempos.numpy()))
            if len(score.time_signatures):
                ts = min(score.time_signatures, key=lambda x: x.time)
                tok = self.ts_token(ts.numerator, ts.denominator)
                ts_tok[f] = -1 if tok is None else tok
        g = self.gather_notes(scores)
        if len(g["time"]) == 0:
            return [CodecError("no notes")] * n_files
        time, duration, pitch, velocity, inst, fid = (
            g[k] for k in ("time", "duration", "pitch", "velocity", "instrument", "file"))
        fid_l, inst_l = g["tracks"]

        # Quantize to steps (round half up, integer arithmetic: exact for any tpq).
        spq2 = 2 * p.steps_per_quarter
        q = tpq[fid]
        onset = (time * spq2 + q) // (2 * q)
        dur = np.maximum(1, (duration * spq2 + q) // (2 * q))

        # Files whose notes are absurdly far out cannot be keyed; they fail alone.
        too_far = np.zeros(n_files, dtype=bool)
        too_far[fid[onset >= 1 << 32]] = True
        has_notes = np.bincount(fid, minlength=n_files) > 0
        bad = too_far | ~has_notes
        for f in np.flatnonzero(bad):
            results[f] = CodecError("no notes" if not has_notes[f] else "absurd length (notes after 2^32 steps)")
        if bad.any():
            ok = ~bad[fid]
            onset, dur, velocity, inst, fid, pitch = (a[ok] for a in (onset, dur, velocity, inst, fid, pitch))
            if len(onset) == 0:
                return results

        # One sort key per note: file, onset, instrument, pitch. Exact duplicates are dropped.
        note_id = inst * N_PITCHES + pitch
        key = (fid << 47) | (onset << 15) | note_id
        order = np.argsort(key, kind="stable")
        key = key[order]
        first = np.empty(len(key), dtype=bool)
        first[0] = True
        np.not_equal(key[1:], key[:-1], out=first[1:])
        order, key = order[first], key[first]
        fid, onset, note_id = key >> 47, (key >> 15) & ((1 << 32) - 1), key & 0x7FFF
        dur, velocity = dur[order], velocity[order]

        # Tempo maps: header tempo per file, then changes (only where the bin moves) before the last onset.
        default_bin = int(np.searchsorted(self._tempo_edges, 120.0))
        head_bin = np.full(n_files, default_bin, dtype=np.int64)
        t_fid = t_time = t_bin = np.zeros(0, dtype=np.int64)
        if tempo_parts:
            t_fid = np.concatenate([np.full(len(a["time"]), f, np.int64) for f, a in tempo_parts])
            t_raw = np.concatenate([a["time"] for _, a in tempo_parts]).astype(np.int64)
            mspq = np.concatenate([a["mspq"] for _, a in tempo_parts]).astype(np.float64)
            q = tpq[t_fid]
            t_time = np.maximum(0, (t_raw * spq2 + q) // (2 * q))
            t_bin = np.searchsorted(self._tempo_edges, 60_000_000.0 / np.maximum(mspq, 1.0))
            t_time = np.minimum(t_time, (1 << 32) - 1)
            tkey = (t_fid << 32) | t_time
            o = np.argsort(tkey, kind="stable")
            tkey, t_bin = tkey[o], t_bin[o]
            last = np.ones(len(tkey), dtype=bool)  # the last change at any step wins
            last[:-1] = tkey[1:] != tkey[:-1]
            tkey, t_bin = tkey[last], t_bin[last]
            t_fid, t_time = tkey >> 32, tkey & ((1 << 32) - 1)
            at0 = t_time == 0
            head_bin[t_fid[at0]] = t_bin[at0]
            file_last_onset = np.zeros(n_files, dtype=np.int64)
            file_last_onset[fid] = onset  # sorted, so the last write per file is its last onset
            inside = ~at0 & (t_time < file_last_onset[t_fid]) & ~bad[t_fid]
            t_fid, t_time, t_bin = t_fid[inside], t_time[inside], t_bin[inside]
            prev = np.empty(len(t_bin), dtype=np.int64)
            if len(t_bin):
                prev[1:] = t_bin[:-1]
                new_file = np.ones(len(t_bin), dtype=bool)
                new_file[1:] = t_fid[1:] != t_fid[:-1]
                prev[new_file] = head_bin[t_fid[new_file]]
            changed = t_bin != prev
            t_fid, t_time, t_bin = t_fid[changed], t_time[changed], t_bin[changed]

        # Event times (per file): note onsets and tempo changes; long gaps are shortened.
        nkey = (fid << 32) | onset
        if len(t_time):
            tk = (t_fid << 32) | t_time
            times = np.concatenate((nkey, tk))
            times.sort(kind="stable")
        else:
            times = nkey
        is_first = np.empty(len(times), dtype=bool)
        is_first[0] = True
        np.not_equal(times[1:], times[:-1], out=is_first[1:])
        groups = times[is_first]
        g_fid, g_time = groups >> 32, groups & ((1 << 32) - 1)
        gaps = np.empty(len(groups), dtype=np.int64)
        gaps[0] = g_time[0]
        gaps[1:] = g_time[1:] - g_time[:-1]
        file_start_group = np.ones(len(groups), dtype=bool)
        file_start_group[1:] = g_fid[1:] != g_fid[:-1]
        gaps[file_start_group] = g_time[file_start_group]
        np.minimum(gaps, p.max_gap, out=gaps)

        # Tokens per event time: shifts arriving there, an optional tempo change, NOTE/DV pairs.
        n_groups = len(groups)
        # group of each note: its rank among distinct note times, plus the tempo-only times before it
        new_time = np.empty(len(nkey), dtype=bool)
        new_time[0] = True
        np.not_equal(nkey[1:], nkey[:-1], out=new_time[1:])
        note_group = np.cumsum(new_time) - 1
        if len(t_time):
            tk = (t_fid << 32) | t_time
            u = nkey[new_time]
            j = np.minimum(np.searchsorted(u, tk), len(u) - 1)
            tempo_only = np.sort(tk[u[j] != tk])
            if len(tempo_only):
                note_group += np.searchsorted(tempo_only, nkey)
        n_notes = np.bincount(note_group, minlength=n_groups)
        n_full, rem = np.divmod(gaps, p.max_shift)
        n_shift = n_full + (rem > 0)
        has_tempo = np.zeros(n_groups, dtype=np.int64)
        tempo_group = np.searchsorted(groups, (t_fid << 32) | t_time) if len(t_time) else np.zeros(0, np.int64)
        has_tempo[tempo_group] = 1
        count = n_shift + has_tempo + 2 * n_notes

        # Headers: BOS, INST of each instrument present, TEMPO, [TS].
        present = np.zeros((n_files, N_INSTRUMENTS), dtype=bool)
        if not g["complete"]:  # some notes were dropped: find the instruments that still have notes
            present[fid, note_id >> 7] = True
        else:
            present[np.array(fid_l), np.array(inst_l)] = True
        present[bad] = False
        pf, pi = np.nonzero(present)
        n_inst = np.bincount(pf, minlength=n_files)
        has_ts = (ts_tok >= 0).astype(np.int64)
        head_len = 2 + n_inst + has_ts
        body_len = np.bincount(g_fid, weights=count, minlength=n_files).astype(np.int64)
        file_len = np.where(bad, 0, head_len + body_len + 1)
        file_start = np.cumsum(file_len) - file_len
        total = int(file_len.sum())
        out = np.zeros(total, dtype=np.uint16)

        ok_files = np.flatnonzero(~bad)
        out[file_start[ok_files]] = self.BOS
        inst_rank = np.arange(len(pf)) - (np.cumsum(n_inst) - n_inst)[pf]
        out[file_start[pf] + 1 + inst_rank] = self.inst_start + pi
        out[file_start[ok_files] + 1 + n_inst[ok_files]] = self.tempo_start + head_bin[ok_files]
        ts_files = ok_files[has_ts[ok_files] == 1]
        out[file_start[ts_files] + 2 + n_inst[ts_files]] = ts_tok[ts_files]
        out[file_start[ok_files] + file_len[ok_files] - 1] = self.EOS

        # Group start = body start of its file + tokens of the earlier groups in the same file.
        excl = np.cumsum(count) - count
        first_group_excl = np.zeros(n_files, dtype=np.int64)
        first_group_excl[g_fid[file_start_group]] = excl[file_start_group]
        g_start = file_start[g_fid] + head_len[g_fid] + excl - first_group_excl[g_fid]

        s_group = np.repeat(np.arange(n_groups), n_shift)
        s_pos = np.arange(len(s_group)) - np.repeat(np.cumsum(n_shift) - n_shift, n_shift)
        out[g_start[s_group] + s_pos] = np.where(
            s_pos < n_full[s_group], self.shift_start + p.max_shift - 1, self.shift_start + rem[s_group] - 1)
        if len(t_time):
            out[g_start[tempo_group] + n_shift[tempo_group]] = self.tempo_start + t_bin
        # a note's slot: its group's first note slot + 2 x its rank in the group (one gather)
        g_note0 = g_start + n_shift + has_tempo - 2 * (np.cumsum(n_notes) - n_notes)
        pos = g_note0[note_group] + 2 * np.arange(len(nkey))
        out[pos] = self.note_start + note_id
        out[pos + 1] = self._dv_lut[np.minimum(dur, p.duration_max), velocity]

        for f in ok_files:
            results[f] = out[file_start[f] : file_start[f] + file_len[f]]
        return results

    # ----- decoding ---------------------------------------------------------------------------

    def decode_events(self, tokens) -> dict:
        """Token ids -> note and tempo arrays (times in steps). Total: bad ids are skipped.

        Reads one song: a leading BOS is skipped and decoding stops at the first EOS after it.
        """
        t = np.asarray(tokens, dtype=np.int64).ravel()
        if len(t) and t[0] == self.BOS:
            t = t[1:]
        eos = np.flatnonzero((t == self.EOS) | (t == self.BOS))
        if len(eos):
            t = t[: eos[0]]
        kind = self.kinds(t)
        steps = self.shift_steps()[np.where(kind == 1, t, 0)]
        time = np.cumsum(steps)  # time at each token (shift counts at and after itself)

        is_note = kind == 5
        is_dv = kind == 6
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

        is_tempo = kind == 2
        head_len = self.header_length(np.concatenate(([self.BOS], t)))  # header within t, plus BOS
        tempo_idx = np.flatnonzero(is_tempo)
        tempo_time = time[tempo_idx]
        tempo_bpm = self.tempo_bpm[t[tempo_idx] - self.tempo_start]
        ts = None
        head_t, head_k = t[: max(0, head_len - 1)], kind[: max(0, head_len - 1)]
        for tok, k in zip(head_t, head_k):
            if k == 3:
                ts = self.time_signatures[tok - self.ts_start]
        instruments = sorted(set((head_t[head_k == 4] - self.inst_start).tolist()))
        return {
            "notes": notes,
            "tempo_time": tempo_time,
            "tempo_bpm": tempo_bpm,
            "time_signature": ts,
            "header_instruments": instruments,
            "end_step": int(time[-1]) if len(time) else 0,
        }

    def decode(self, tokens) -> symusic.Score:
        """Token ids -> symusic Score (ticks, ``decode_tpq`` per quarter), one track per instrument."""
        ev = self.decode_events(tokens)
        tpq = self.params.decode_tpq
        scale = tpq // self.params.steps_per_quarter
        score = symusic.Score(tpq)
        bpm = ev["tempo_bpm"]
        if len(bpm) == 0:
            bpm, ttime = np.array([120.0]), np.array([0])
        else:
            ttime = ev["tempo_time"].copy()
            ttime[0] = 0  # the first tempo holds from the start
        # one tempo per tick: the last at each time wins
        keep = np.ones(len(ttime), dtype=bool)
        keep[:-1] = ttime[1:] != ttime[:-1]
        mspq = np.round(60_000_000.0 / bpm[keep]).astype(np.int32)
        score.tempos = symusic.core.TempoTickList.from_numpy((ttime[keep] * scale).astype(np.int32), mspq)
        n, d = ev["time_signature"] or (4, 4)
        score.time_signatures.append(symusic.TimeSignature(0, n, d))
        notes = ev["notes"]
        for inst in np.unique(notes["instrument"]):
            sel = notes["instrument"] == inst
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

    def decode_to_midi(self, tokens) -> bytes:
        return bytes(self.decode(tokens).dumps_midi())


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


def instrument_name(instrument: int) -> str:
    return "Drums" if instrument == DRUMS else GM_PROGRAM_NAMES[instrument]


def parse_instrument(text: str) -> int:
    """'drums', a GM program number 0..127, or a (case-insensitive, partial) GM name -> instrument."""
    s = text.strip().lower()
    if s in ("drums", "drum", "percussion", "drumkit", "drum kit"):
        return DRUMS
    if s.isdigit():
        n = int(s)
        if 0 <= n <= 127:
            return n
        raise ValueError(f"program {n} is outside 0..127")
    norm = lambda x: "".join(ch for ch in x.lower() if ch.isalnum())
    key = norm(s)
    exact = [i for i, n in enumerate(GM_PROGRAM_NAMES) if norm(n) == key]
    if exact:
        return exact[0]
    partial = [i for i, n in enumerate(GM_PROGRAM_NAMES) if key and key in norm(n)]
    if partial:
        return partial[0]
    raise ValueError(f"unknown instrument {text!r}: use 'drums', 0..127 or a General MIDI name like 'piano'")


def _seconds_end(score: symusic.Score) -> float:
    s = score.to("second")
    ends = [float(np.max(t.notes.numpy()["time"] + t.notes.numpy()["duration"])) for t in s.tracks if t.note_num()]
    return max(ends) if ends else 0.0


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
    len_in, len_out = _seconds_end(original), _seconds_end(decoded)
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
