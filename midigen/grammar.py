"""The token grammar as a per-step mask, so sampling can only produce songs the encoder could have written.

The codec decodes any id sequence, but silently skips ids out of place; a sampler that relies on that
wastes tokens and drifts from the training distribution. ``Grammar`` tracks, for every row of a batch,
where the song stands (header or events, time, tempo, the notes already in this time step) and
``mask()`` returns the ids that may come next. The rules mirror ``Codec.encode_score``:

* header: ``BOS INST...`` in increasing order (at least one), then ``TEMPO`` ends it; then an optional TS;
* events: ``NOTE`` is always followed by ``DV``; notes of one time step come in increasing id order and
  only for header instruments; a tempo change sits after the step's shifts and before its notes, never at
  time 0 and never repeating the tempo in force; a shift shorter than ``max_shift`` ends a gap, and a gap
  between events never exceeds ``max_gap`` steps;
* ``EOS`` follows a DV, and only when length control allows it.

Length control is part of the grammar because it is a constraint on what may come next: with a time
target, shifts that would pass it and durations that would ring past it are masked, EOS opens once 90%
of the target is reached and is forced when no shift fits any more; a tempo change that would make
sounding notes ring past the target is masked too, so every note ends within it. With a token budget, a NOTE is never
the last token (its DV would not fit).

State lives in numpy arrays of batch length; each rule is one broadcast over the batch.
"""
from __future__ import annotations

import numpy as np

from midigen.codec import N_INSTRUMENTS, N_PITCHES, Codec

# phases
HEAD = 0  # after BOS: INSTs, then TEMPO
AFTER_TEMPO = 1  # header tempo written: an optional TS, or the first event
EVENTS = 2
NEED_DV = 3  # a NOTE was just written
DONE = 4  # EOS written

# kinds of the last token, for the rules that look one token back
_K_OTHER, _K_SHIFT, _K_TEMPO, _K_NOTE, _K_DV = 0, 1, 2, 3, 4

EOS_FRACTION = 0.9  # EOS is allowed once this fraction of the time target has passed


class Grammar:
    """Which ids may come next, for a batch of songs decoded in lockstep."""

    def __init__(self, codec: Codec, batch_size: int, max_header_instruments: int = 16):
        c = codec
        self.codec = c
        self.B = B = batch_size
        self.V = c.vocab_size
        self.max_header_instruments = max_header_instruments
        p = c.params
        self.max_shift, self.max_gap, self.spq = p.max_shift, p.max_gap, p.steps_per_quarter
        self.n_tempo = c.ts_start - c.tempo_start
        self._shift_k = np.arange(1, p.max_shift + 1)
        self._tempo_j = np.arange(self.n_tempo)
        self._inst_i = np.arange(N_INSTRUMENTS)
        self._note_ids = np.arange(c.note_start, c.dv_start)
        self._note_inst = (self._note_ids - c.note_start) // N_PITCHES
        lv = p.velocity_levels
        self._dv_steps = c.durations[np.arange(c.dv_end - c.dv_start) // lv]
        self._kind = c.kinds(np.arange(c.vocab_size))
        self._steps = c.shift_steps()
        default_tempo = c.tempo_token(120.0) - c.tempo_start

        self.phase = np.full(B, HEAD, np.int64)
        self.last_kind = np.full(B, _K_OTHER, np.int64)
        self.last_shift = np.zeros(B, np.int64)  # steps of the last token when it was a SHIFT
        self.last_inst = np.full(B, -1, np.int64)
        self.n_inst = np.zeros(B, np.int64)
        self.instruments = np.zeros((B, N_INSTRUMENTS), bool)  # header instruments
        self.header_open = np.ones(B, bool)  # may the model add header instruments?
        self.last_note = np.full(B, -1, np.int64)  # last NOTE id in the current time step
        self.step_busy = np.zeros(B, bool)  # a TEMPO or NOTE already sits at the current step
        self.steps = np.zeros(B, np.int64)  # song time in steps
        self.gap = np.zeros(B, np.int64)  # steps since the last event (note or tempo)
        self.tempo = np.full(B, default_tempo, np.int64)  # tempo bin in force
        self.seconds = np.zeros(B, np.float64)  # song time in seconds
        self.notes = np.zeros(B, np.int64)
        self.sounding_until = np.zeros(B, np.int64)  # step where the last sounding note ends
        self.forced_tempo = np.full(B, -1, np.int64)  # header TEMPO bin the user asked for
        self.pending_tempo = np.full(B, -1, np.int64)  # tempo change to write at the next new step
        self.target = np.full(B, np.inf)  # time target in seconds (inf: none)
        self.budget = np.full(B, np.iinfo(np.int64).max // 2, np.int64)  # tokens still allowed

    # ----- setup ------------------------------------------------------------------------------

    def close_header(self) -> None:
        """No more header instruments may be sampled (the user fixed them)."""
        self.header_open[:] = False

    def set_target(self, seconds: float | None, max_tokens: int) -> None:
        """Length control for the tokens still to come: a time target (counted from now) and a budget."""
        if seconds is not None:
            self.target[:] = self.seconds + float(seconds)
        self.budget[:] = int(max_tokens)

    # ----- state ------------------------------------------------------------------------------

    def _sec_per_step(self, tempo_bin: np.ndarray) -> np.ndarray:
        return 60.0 / (self.codec.tempo_bpm[tempo_bin] * self.spq)

    def advance(self, tokens) -> None:
        """Move every row past its next token (sampled or forced). Out-of-grammar ids still update time."""
        t = np.asarray(tokens, dtype=np.int64).reshape(self.B)
        c = self.codec
        kind = self._kind[t]
        live = self.phase != DONE
        self.budget -= live

        is_inst = live & (kind == 4) & (self.phase == HEAD)
        if is_inst.any():
            i = t[is_inst] - c.inst_start
            self.instruments[np.flatnonzero(is_inst), i] = True
            self.last_inst[is_inst] = i
            self.n_inst[is_inst] += 1

        is_tempo = live & (kind == 2)
        if is_tempo.any():
            j = t - c.tempo_start
            self.tempo = np.where(is_tempo, j, self.tempo)
            head = is_tempo & (self.phase == HEAD)
            self.phase[head] = AFTER_TEMPO
            ev = is_tempo & ~head
            self.step_busy |= ev
            self.gap[ev] = 0
            self.pending_tempo[is_tempo & (self.pending_tempo == j)] = -1

        is_ts = live & (kind == 3) & (self.phase == AFTER_TEMPO)
        self.phase[is_ts] = EVENTS

        is_shift = live & (kind == 1)
        if is_shift.any():
            k = self._steps[t]
            self.seconds += np.where(is_shift, k * self._sec_per_step(self.tempo), 0.0)
            self.steps += np.where(is_shift, k, 0)
            self.gap += np.where(is_shift, k, 0)
            self.last_note[is_shift] = -1
            self.step_busy[is_shift] = False
            self.phase[is_shift & (self.phase == AFTER_TEMPO)] = EVENTS
        self.last_shift = np.where(is_shift, self._steps[t], 0)

        is_note = live & (kind == 5)
        self.last_note = np.where(is_note, t, self.last_note)
        self.step_busy |= is_note
        self.gap[is_note] = 0
        self.notes += is_note
        self.phase[is_note] = NEED_DV

        is_dv = live & (kind == 6) & (self.phase == NEED_DV)
        if is_dv.any():
            ends = self.steps + self._dv_steps[np.clip(t - c.dv_start, 0, len(self._dv_steps) - 1)]
            self.sounding_until = np.where(is_dv, np.maximum(self.sounding_until, ends), self.sounding_until)
        self.phase[is_dv] = EVENTS

        self.phase[live & (t == c.EOS)] = DONE
        self.last_kind = np.select(
            [kind == 1, kind == 2, kind == 5, kind == 6], [_K_SHIFT, _K_TEMPO, _K_NOTE, _K_DV], _K_OTHER
        )

    @property
    def done(self) -> np.ndarray:
        return self.phase == DONE

    # ----- the mask ---------------------------------------------------------------------------

    def mask(self) -> np.ndarray:
        """(B, vocab) bool: True where an id may come next. Every live row has at least one True."""
        c, B = self.codec, self.B
        m = np.zeros((B, self.V), bool)
        head = self.phase == HEAD
        events = (self.phase == AFTER_TEMPO) | (self.phase == EVENTS)
        need_dv = self.phase == NEED_DV
        done = self.phase == DONE
        room = self.budget >= 1
        sps = self._sec_per_step(self.tempo)

        # header: instruments in increasing order, then the tempo (or the one the user asked for)
        more_inst = head & self.header_open & (self.n_inst < self.max_header_instruments) & room
        m[:, c.inst_start : c.note_start] = more_inst[:, None] & (self._inst_i[None, :] > self.last_inst[:, None])
        head_tempo = head & (self.n_inst > 0)
        tempo_ok = np.where(
            (self.forced_tempo >= 0)[:, None], self._tempo_j[None, :] == self.forced_tempo[:, None], True
        )
        m[:, c.tempo_start : c.ts_start] = head_tempo[:, None] & tempo_ok
        m[:, c.ts_start : c.inst_start] = ((self.phase == AFTER_TEMPO) & room)[:, None]

        # shifts: a short shift ends its gap, gaps stay within max_gap, time stays within the target
        may_shift = events & room & ((self.last_kind != _K_SHIFT) | (self.last_shift == self.max_shift))
        k = self._shift_k[None, :]
        fits = (self.gap[:, None] + k <= self.max_gap) & (
            self.seconds[:, None] + k * sps[:, None] <= self.target[:, None] + 1e-9
        )
        shift_ok = may_shift[:, None] & fits
        m[:, c.shift_start : c.tempo_start] = shift_ok

        # tempo changes: after a shift, before the step's notes, not the tempo in force, and not so slow
        # that the notes still sounding would ring past the time target
        ev_tempo = events & room & (self.steps > 0) & ~self.step_busy & (self.last_kind == _K_SHIFT)
        ring = np.maximum(0, self.sounding_until - self.steps)[:, None] * (60.0 / self.spq)
        slow_ok = ring / self.codec.tempo_bpm[None, :] <= (self.target - self.seconds)[:, None] + 1e-9
        m[:, c.tempo_start : c.ts_start] |= (
            ev_tempo[:, None] & (self._tempo_j[None, :] != self.tempo[:, None]) & slow_ok
        )

        # notes: header instruments only, increasing ids within a step, and room for the DV after
        note_row = events & (self.budget >= 2)
        m[:, c.note_start : c.dv_start] = (
            note_row[:, None]
            & self.instruments[:, self._note_inst]
            & (self._note_ids[None, :] > self.last_note[:, None])
        )

        # durations: any, unless a time target is near; the shortest always fits
        left = np.floor((self.target - self.seconds) / sps + 1e-6)
        m[:, c.dv_start : c.dv_end] = need_dv[:, None] & ((self._dv_steps[None, :] <= left[:, None]) | (self._dv_steps == 1))

        # the end: after a DV, with a note written, once 90% of the target passed or nothing else fits
        no_shift = ~shift_ok.any(axis=1)
        eos_time = (self.seconds >= EOS_FRACTION * self.target) | no_shift
        eos = events & (self.last_kind == _K_DV) & (self.notes > 0) & np.isfinite(self.target) & eos_time
        eos |= events & ~room  # the budget is spent (the caller normally stops first)
        force_eos = eos & no_shift & (self.last_kind == _K_DV)

        # a requested tempo change goes in at the first step where a tempo change may sit
        pend = ev_tempo & (self.pending_tempo >= 0) & (self.pending_tempo != self.tempo)
        if pend.any():
            m[pend] = False
            m[pend, c.tempo_start + self.pending_tempo[pend]] = True
        if force_eos.any():
            m[force_eos] = False
        m[:, c.EOS] = eos | done
        m[done, c.EOS + 1 :] = False

        # a row left with nothing (should not happen) may end rather than sample garbage
        dead = ~m.any(axis=1)
        m[dead, c.EOS] = True
        return m

    def allowed(self, tokens) -> np.ndarray:
        """(B,) bool: is each row's token allowed by the current mask (used to check prompts)."""
        t = np.asarray(tokens, dtype=np.int64).reshape(self.B)
        return self.mask()[np.arange(self.B), t]
