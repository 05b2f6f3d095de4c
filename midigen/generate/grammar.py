"""The token grammar as a per-step mask, so decoding can only produce what the encoder could have written.

The codec decodes any id sequence, but silently skips ids out of place; a sampler that relies on that
wastes tokens and drifts from the training distribution. ``Grammar`` tracks, for every row of a batch,
where the song stands (header or events, time, tempo, the notes already in this time step) and
``mask()`` returns the ids that may come next. State and mask are torch tensors on the model's device,
so decoding needs no host round trip per step. The rules mirror ``Codec.encode_score``:

* header: ``BOS INST...`` in increasing order (at least one), then ``TEMPO`` ends it; then an optional TS
  (or the one asked for), then, for a v2 codec, the control tokens asked for, in order (v3 puts them
  right after BOS, in the prompt the caller builds, so the grammar never writes them);
* events: ``NOTE`` is always followed by ``DV``; notes of one time step come in increasing id order and
  only for allowed instruments; a tempo change sits after the step's shifts and before its notes, never at
  time 0 and never repeating the tempo in force; a shift shorter than ``max_shift`` ends a gap, and a gap
  between events never exceeds ``max_gap`` steps;
* ``EOS`` follows a DV, and only when length control allows it.

Instruments play their range (``hold_notes``, from ``midigen.music.ranges``): a NOTE outside its
instrument's pitch range is masked, and so is a NOTE of an instrument that already sounds its most notes
at once at this step. The state is a small table of end steps per instrument (``ends``: one slot per note
it may sound), filled by each DV; the mask is two table lookups, no loop over the vocabulary. Notes the
grammar forces (``force_notes``) are never blocked. A continuation keeps the song's tempo
(``keep_tempo``): no tempo change, except one the caller requested.

Chords (codec v4): a CHORD token may sit at a step after its shifts and tempo, before its notes, at most
one per step and never repeating the chord in force. Chords the caller gives (``force_chords``: a chart
laid out on bars) are forced where they fall: time never passes the next one, and at its step it is the
only id allowed, so the engine feeds it in its forced run; while chords are forced the model writes no
others.

The written part of an edit (after ``FILL``) is the same event grammar with other limits
(``for_edit``): notes only of the target instruments, no tempo changes, onsets before the span's end,
no gap limit (other instruments' notes sit in the gaps), and EOS after any DV or right after FILL.

Length control is part of the grammar because it is a constraint on what may come next: with a time
target, shifts that would pass it and durations that would ring past it are masked, EOS opens once 90%
of the target is reached and is forced when no shift fits any more; a tempo change that would make
sounding notes ring past the target is masked too, so every note ends within it. With a token budget, a
NOTE is never the last token (its DV would not fit).
"""
from __future__ import annotations

import operator

import numpy as np
import torch

from midigen.music.chords import NO_CHORD, TONE_MASK
from midigen.music.codec import DRUMS, N_INSTRUMENTS, N_PITCHES, Codec, Kind
from midigen.music.timing import seconds_per_step
from midigen.generate import grammar_jit

_STATE_OF = operator.attrgetter(*grammar_jit.STATE)
JIT = True  # on a CPU, mask and advance run compiled (``grammar_jit``, checked against the torch rules)

# phases
HEAD = 0  # after BOS: INSTs, then TEMPO
AFTER_TEMPO = 1  # header tempo written: an optional TS, the controls, or the first event
EVENTS = 2
NEED_DV = 3  # a NOTE was just written
DONE = 4  # EOS written
CONTROLS = 5  # forced control tokens still to write

# kinds of the last token, for the rules that look one token back
_K_OTHER, _K_SHIFT, _K_TEMPO, _K_NOTE, _K_DV, _K_CHORD = 0, 1, 2, 3, 4, 5

EOS_FRACTION = 0.9  # EOS is allowed once this fraction of the time target has passed
NO_LIMIT = 1 << 60  # "no span end" / "no gap limit" in integer state


class _Tables:
    """Per-vocabulary lookup tables on one device (built once per grammar)."""

    def __init__(self, codec: Codec, device: torch.device):
        c, p = codec, codec.params
        t = lambda a, dt=torch.long: torch.as_tensor(np.asarray(a), dtype=dt, device=device)  # noqa: E731
        self.kind = t(c.kinds(np.arange(c.vocab_size)).astype(np.int64))
        last = {Kind.SHIFT: _K_SHIFT, Kind.TEMPO: _K_TEMPO, Kind.NOTE: _K_NOTE, Kind.DV: _K_DV,
                Kind.CHORD: _K_CHORD}
        self.last_kind = t([last.get(k, _K_OTHER) for k in Kind])  # a kind -> its code for the one-back rules
        self.steps = t(c.shift_steps())
        self.shift_k = torch.arange(1, p.max_shift + 1, device=device)
        self.n_tempo = c.ts_start - c.tempo_start
        self.tempo_j = torch.arange(self.n_tempo, device=device)
        self.inst_i = torch.arange(N_INSTRUMENTS, device=device)
        self.note_ids = torch.arange(c.note_start, c.dv_start, device=device)
        self.dv_steps = t(c.durations[np.arange(c.dv_end - c.dv_start) // p.velocity_levels])
        self.fdtype = torch.float32 if device.type == "mps" else torch.float64
        self.tempo_bpm = t(c.tempo_bpm, self.fdtype)
        self.sec_per_step = t(seconds_per_step(c, c.tempo_bpm), self.fdtype)  # timing's rule, as a table
        self.note_pc, self.chord_tone = (t(a) for a in chord_tone_tables(c))
        self.scale_tone = t(scale_tone_table(), torch.float32)


def chord_tone_tables(codec: Codec) -> tuple[np.ndarray, np.ndarray]:
    """(pitch class of each id: 0..11 for a pitched NOTE, 12 for every other id;
    for each CHORD id and one more row for "no chord yet", which of those 13 classes are its tones)."""
    pc = np.full(codec.vocab_size, 12, dtype=np.int64)
    pitched = np.arange(DRUMS * N_PITCHES)
    pc[codec.note_start + pitched] = pitched % N_PITCHES % 12
    tones = np.zeros((NO_CHORD + 2, 13), dtype=bool)
    tones[: NO_CHORD + 1, :12] = TONE_MASK
    return pc, tones


MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10, 11)  # natural minor with the leading tone (its V chord is major)


def scale_tone_table() -> np.ndarray:
    """(24 keys, 13 classes): 1.0 where a pitch class (12: not a pitched note) lies outside the key's
    scale, the notes a key weight holds back; keys as ``midigen.music.codec.key_name`` numbers them."""
    out = np.zeros((24, 13), dtype=np.float32)
    for key in range(24):
        scale = MINOR_SCALE if key >= 12 else MAJOR_SCALE
        out[key, :12] = 1.0
        out[key, [(key % 12 + d) % 12 for d in scale]] = 0.0
    return out


class _Limits:
    """The note limits as device tables: which (instrument, pitch) NOTEs may be written, and how many
    notes each instrument may sound at once."""

    def __init__(self, low, high, polyphony, note_start: int, device: torch.device):
        pitch = np.arange(N_PITCHES)[None, :]
        ok = (pitch >= np.asarray(low)[:, None]) & (pitch <= np.asarray(high)[:, None])
        self.arrays = (low, high, polyphony, note_start)
        ids = note_start + np.arange(N_INSTRUMENTS * N_PITCHES).reshape(N_INSTRUMENTS, N_PITCHES)
        # a NOTE's id where its pitch is in range, else -1: "later in the step and in range" is one compare
        self.note_key = torch.as_tensor(np.where(ok, ids, -1), device=device)  # (instruments, pitches)
        # contiguous (a NoteLimits column is strided), as the free tables are: one compiled mask for both
        self.polyphony = torch.as_tensor(np.ascontiguousarray(polyphony, np.int64), device=device)
        self.slots = int(max(1, int(np.max(polyphony))))
        self.active = None  # the instruments any row may write, once the header is closed (host fact)


class Grammar:
    """Which ids may come next, for a batch of rows decoded in lockstep (state on ``device``)."""

    def __init__(self, codec: Codec, batch_size: int, max_header_instruments: int = 16, device="cpu"):
        self.codec = c = codec
        self.B = B = int(batch_size)
        self.V = c.vocab_size
        self.device = dev = torch.device(device)
        self.max_header_instruments = max_header_instruments
        p = c.params
        self.max_shift, self.spq = p.max_shift, p.steps_per_quarter
        self.T = _Tables(c, dev)
        long = lambda v: torch.full((B,), int(v), dtype=torch.long, device=dev)  # noqa: E731
        flag = lambda v: torch.full((B,), bool(v), dtype=torch.bool, device=dev)  # noqa: E731
        self.phase = long(HEAD)
        self.last_kind = long(_K_OTHER)
        self.last_shift = long(0)  # steps of the last token when it was a SHIFT
        self.last_inst = long(-1)  # last header instrument
        self.n_inst = long(0)
        self.instruments = torch.zeros((B, N_INSTRUMENTS), dtype=torch.bool, device=dev)  # notes may use these
        self.header_open = flag(True)  # may the model add header instruments?
        self.last_note = long(-1)  # last NOTE id in the current time step
        self.step_busy = flag(False)  # a TEMPO or NOTE already sits at the current step
        self.steps = long(0)  # song time in steps
        self.gap = long(0)  # steps since the last event (note or tempo)
        self.tempo = long(c.tempo_token(120.0) - c.tempo_start)  # tempo bin in force
        self.seconds = torch.zeros(B, dtype=self.T.fdtype, device=dev)  # song time in seconds
        self.notes = long(0)
        self.sounding_until = long(0)  # step where the last sounding note ends
        self.forced_tempo = long(-1)  # header TEMPO bin the user asked for
        self.forced_ts = long(-1)  # header TS id the user asked for
        self.pending_tempo = long(-1)  # tempo change to write at the next new step
        self.target = torch.full((B,), float("inf"), dtype=self.T.fdtype, device=dev)  # time target (s)
        self.budget = long(NO_LIMIT)  # tokens still allowed
        self.span = long(NO_LIMIT)  # onsets must stay below this step (the written part of an edit)
        self.gap_limit = long(p.max_gap)
        self.tempo_ok = flag(True)  # may tempo changes be written?
        self.eos_anytime = flag(False)  # an edit's written part may end after any DV (or be empty)
        self.controls = torch.zeros((B, 0), dtype=torch.long, device=dev)  # v2: forced after TEMPO [TS]
        self.control_pos = long(0)
        self.rows = torch.arange(B, device=dev)
        # given notes (an edit's kept notes inside the span, v3): times, NOTE and DV ids, in stream order
        self.given_time = torch.zeros((B, 0), dtype=torch.long, device=dev)
        self.given_note = torch.zeros((B, 0), dtype=torch.long, device=dev)
        self.given_dv = torch.zeros((B, 0), dtype=torch.long, device=dev)
        self.given_pos = long(0)  # the next given note to write
        self.given_dv_due = flag(False)  # a given NOTE was just written: its DV comes next
        self.forcing = False  # host fact: some row has given notes
        # chords (v4): the chord in force, whether one sits at this step, and the chords to force
        self.chord = long(-1)
        self.chord_here = flag(False)
        self.chord_time = torch.zeros((B, 0), dtype=torch.long, device=dev)
        self.chord_id = torch.zeros((B, 0), dtype=torch.long, device=dev)
        self.chord_pos = long(0)
        self.chords_forced = False  # host fact: a chord list was given (the model writes no others)
        # bar tones (a variation's model bars): from each of these steps on, the weight of each of 13 classes
        self.tones_time = torch.zeros((B, 0), dtype=torch.long, device=dev)
        self.tones_pc = torch.zeros((B, 0, 13), dtype=torch.float32, device=dev)
        self.onsets = torch.zeros((B, 0), dtype=torch.float32, device=dev)  # 1.0 at a model bar's onset steps
        self.tones_given = False  # host fact: some stretch has tones to favour (the bias moves with time)
        self.editing = False  # host fact: an edit's written part (``for_edit``): ``forced`` applies
        # Host-side facts that let the mask skip whole rules without reading device state:
        self.timed = False  # some row has a time target
        self.pending = False  # a tempo change was requested
        self.in_header = np.ones(B, bool)  # the row may still write header tokens (until its first event)
        self.limits: _Limits | None = None  # note ranges and polyphony (``hold_notes``); None: anything
        self.ends = torch.zeros((B, N_INSTRUMENTS, 0), dtype=torch.long, device=dev)  # sounding notes' end steps
        self.jit = JIT and dev.type == "cpu" and grammar_jit.available()  # compiled mask and advance
        self._jit_ids = None  # the compiled mask's candidate ids, reused every step
        self._jit_views = None  # (the state tensors, their numpy views, tables), rebuilt when one is replaced

    # ----- setup ------------------------------------------------------------------------------

    def close_header(self) -> None:
        """No more header instruments may be sampled (the user fixed them)."""
        self.header_open[:] = False

    def set_target(self, seconds: float | None, max_tokens: int) -> None:
        """Length control for the tokens still to come: a time target (counted from now) and a budget."""
        if seconds is not None:
            self.target[:] = self.seconds + float(seconds)
            self.timed = True
        self.budget[:] = int(max_tokens)

    def request_tempo(self, tempo_bin: int) -> None:
        """A tempo change to write at the first step where one may sit."""
        self.pending_tempo[:] = int(tempo_bin)
        self.pending = True

    def observe(self, host_tokens: np.ndarray) -> None:
        """The sampled ids as the host sees them (the engine's one transfer): a row that wrote a SHIFT or
        a NOTE is past its header, so the header rules can be skipped once every row is."""
        if not self.in_header.any():
            return
        k = self.codec.kinds(host_tokens)
        self.in_header &= ~((k == Kind.SHIFT) | (k == Kind.NOTE))

    def force_header(self, controls=(), time_signature_id: int | None = None) -> None:
        """Control ids (and a TS id) the header must carry right after its TEMPO."""
        ids = torch.as_tensor([int(i) for i in controls], dtype=torch.long, device=self.device)
        self.controls = ids.view(1, -1).expand(self.B, -1).clone()
        self.control_pos[:] = 0
        if time_signature_id is not None:
            self.forced_ts[:] = int(time_signature_id)

    def hold_notes(self, low, high, polyphony) -> None:
        """Written notes stay within each instrument's pitch range ``[low[i], high[i]]`` and sound at most
        ``polyphony[i]`` at once (arrays over the 129 instruments; ``midigen.music.ranges.NoteLimits``).
        Call before any note is advanced, so the notes of a prompt count too."""
        self.limits = _Limits(low, high, polyphony, self.codec.note_start, self.device)
        self.ends = torch.zeros((self.B, N_INSTRUMENTS, self.limits.slots), dtype=torch.long, device=self.device)

    def sounding(self, instruments, end_steps) -> None:
        """Notes already sounding (instrument, steps from now until they end), given before the written
        part starts (an edit chunk's notes ringing in from before it), so polyphony counts them."""
        if self.limits is None:
            return
        for i, e in zip(np.asarray(instruments).tolist(), np.asarray(end_steps).tolist()):
            slots = self.ends[:, int(i)]
            slot = slots.argmin(dim=1)
            slots[self.rows, slot] = torch.maximum(slots[self.rows, slot], self.steps + int(e))

    def keep_tempo(self) -> None:
        """No tempo change from here on, except one asked for with ``request_tempo`` (a continuation keeps
        the song's tempo map)."""
        self.tempo_ok[:] = False

    def for_edit(self, targets, span_steps: int, max_tokens: int) -> None:
        """Start the written part of an edit (right after FILL): notes of ``targets`` with onsets in
        ``[0, span_steps)``, no tempo changes, no gap limit, EOS after any DV."""
        self.phase[:] = EVENTS
        self.header_open[:] = False
        self.instruments[:] = False
        self.instruments[:, torch.as_tensor(sorted(int(i) for i in targets), device=self.device)] = True
        self.span[:] = int(span_steps)
        self.gap_limit[:] = NO_LIMIT
        self.tempo_ok[:] = False
        self.eos_anytime[:] = True
        self.budget[:] = int(max_tokens)
        self.in_header[:] = False
        self.editing = True
        if self.limits is not None:
            self.limits.active = None

    def force_notes(self, steps, notes, dvs) -> None:
        """Notes the written part must carry, at their steps (from the span start), among the notes it
        writes: the edit's kept notes inside the span (``sequences``, v3). In stream order."""
        def rows(a):
            return torch.as_tensor(np.asarray(a, np.int64), device=self.device).view(1, -1).expand(self.B, -1).clone()

        self.given_time, self.given_note, self.given_dv = rows(steps), rows(notes), rows(dvs)
        self.given_pos[:] = 0
        self.given_dv_due[:] = False
        self.forcing = len(steps) > 0

    def force_chords(self, steps, ids) -> None:
        """Chords the stream must carry at their steps (song steps, increasing; chord ids of
        ``midigen.music.chords``): each CHORD is forced where it falls, and no other is written. Steps
        already passed are dropped; a chord falling in the current step is forced at once."""
        c = self.codec
        if not c.has_chords:
            raise ValueError(f"codec v{c.version} has no chord tokens")
        steps, ids = np.asarray(steps, np.int64), np.asarray(ids, np.int64)
        now = int(self.steps[0])
        keep = steps >= now
        rows = lambda a: torch.as_tensor(a, device=self.device).view(1, -1).expand(self.B, -1).clone()  # noqa: E731
        self.chord_time, self.chord_id = rows(steps[keep]), rows(c.chord_start + ids[keep])
        self.chord_pos[:] = 0
        self.chords_forced = True

    def favour_tones(self, steps, weights, onsets=()) -> None:
        """Pitch classes each stretch of the written part leans toward, from each of ``steps`` (from the
        span start, increasing) to the next: ``weights`` (n, 12) in [0, 1] (a variation's model bars:
        ``midigen.generate.form``). ``tone_bias`` adds ``tones_weight`` times them to the pitched notes,
        and as much to a SHIFT landing on one of ``onsets`` (steps from the span start: where the model
        bars' notes start), so the rhythm leans on the model's too."""
        steps = np.asarray(steps, np.int64)
        pc = np.zeros((len(steps), 13), np.float32)
        pc[:, :12] = np.asarray(weights, np.float32).reshape(len(steps), 12)
        self.tones_time = torch.as_tensor(steps, device=self.device).view(1, -1).expand(self.B, -1).clone()
        self.tones_pc = torch.as_tensor(pc, device=self.device).view(1, -1, 13).expand(self.B, -1, -1).clone()
        self.tones_given = len(steps) > 0
        onsets = np.asarray(onsets, np.int64)
        onsets = onsets[onsets >= 0]
        dense = np.zeros(int(onsets.max()) + 1 if len(onsets) else 0, np.float32)
        dense[onsets] = 1.0
        self.onsets = torch.as_tensor(dense, device=self.device).view(1, -1).expand(self.B, -1).clone()

    def replicate(self, batch_size: int, device=None) -> "Grammar":
        """This (one-row) state copied to ``batch_size`` rows on ``device`` (a shared prompt is read once)."""
        out = Grammar.__new__(Grammar)
        out.__dict__.update(self.__dict__)
        dev = torch.device(device) if device is not None else self.device
        out.B, out.device = int(batch_size), dev
        out.in_header = np.repeat(self.in_header[:1], batch_size)
        out.T = self.T if dev == self.device else _Tables(self.codec, dev)
        if self.limits is not None:
            out.limits = _Limits(*self.limits.arrays, dev)
        for k, v in self.__dict__.items():
            if isinstance(v, torch.Tensor):
                setattr(out, k, v[:1].to(dev).expand(batch_size, *v.shape[1:]).clone())
        out.rows = torch.arange(batch_size, device=dev)
        out.jit = JIT and dev.type == "cpu" and grammar_jit.available()
        return out

    # ----- state ------------------------------------------------------------------------------

    def _sec_per_step(self, tempo_bin: torch.Tensor) -> torch.Tensor:
        return self.T.sec_per_step[tempo_bin]

    def advance(self, tokens) -> None:
        """Move every row past its next token (sampled or forced). Out-of-grammar ids still update time."""
        if not isinstance(tokens, torch.Tensor):  # host data: the header flags come free
            tokens = np.asarray(tokens, dtype=np.int64).reshape(self.B)
            self.observe(tokens)
        elif self.jit and tokens.dtype == torch.long and tokens.shape == (self.B,):  # the engine's draw
            tokens = tokens.numpy()
        if self.jit:
            s, tabs, lim, ints = self._jit_state()
            grammar_jit.advance_rows(s, np.asarray(tokens, dtype=np.int64).reshape(self.B), tabs, lim,
                                     self._jit_flags(), ints)
            return
        t = torch.as_tensor(tokens, device=self.device).long().reshape(self.B)
        kind = self.T.kind[t.clamp(0, self.V - 1)]
        live = self.phase != DONE
        self.budget -= live.long()
        if self.in_header.any():
            self._advance_header(t, kind, live)
        else:
            self._advance_tempo(t, kind, live)
        self._advance_time(t, kind, live)
        if self.forcing:
            self._advance_given(t, kind, live)
        self._advance_notes(t, kind, live)
        if self.codec.has_chords:
            self._advance_chord(t, kind, live)
        self.phase = torch.where(live & (t == self.codec.EOS), DONE, self.phase)
        self.last_kind = self.T.last_kind[kind]

    def _advance_tempo(self, t, kind, live, head=None) -> None:
        """A tempo change among the events (or, with ``head``, the header's tempo)."""
        is_tempo = live & (kind == Kind.TEMPO)
        j = (t - self.codec.tempo_start).clamp(0, self.T.n_tempo - 1)
        self.tempo = torch.where(is_tempo, j, self.tempo)
        ev = is_tempo if head is None else is_tempo & ~head
        self.step_busy |= ev
        self.gap = torch.where(ev, 0, self.gap)
        if self.pending:
            self.pending_tempo = torch.where(is_tempo & (self.pending_tempo == j), -1, self.pending_tempo)

    def _advance_header(self, t, kind, live) -> None:
        c = self.codec
        is_inst = live & (kind == Kind.INST) & (self.phase == HEAD)
        i = (t - c.inst_start).clamp(0, N_INSTRUMENTS - 1)
        self.instruments[self.rows, i] |= is_inst
        self.last_inst = torch.where(is_inst, i, self.last_inst)
        self.n_inst += is_inst.long()
        head = live & (kind == Kind.TEMPO) & (self.phase == HEAD)
        self._advance_tempo(t, kind, live, head)
        n_ctl = self.controls.shape[1]
        is_ts = live & (kind == Kind.TS) & (self.phase == AFTER_TEMPO)
        self.forced_ts = torch.where(is_ts, -1, self.forced_ts)
        is_ctl = live & (kind >= Kind.STYLE) & (kind <= Kind.DENSITY) & (
            (self.phase == AFTER_TEMPO) | (self.phase == CONTROLS))
        self.control_pos += is_ctl.long()
        more = self.control_pos < n_ctl
        after = torch.where(more, CONTROLS, EVENTS)
        self.phase = torch.where(head, AFTER_TEMPO, torch.where(is_ts | is_ctl, after, self.phase))

    def _advance_time(self, t, kind, live) -> None:
        is_shift = live & (kind == Kind.SHIFT)
        k = torch.where(is_shift, self.T.steps[t.clamp(0, self.V - 1)], 0)
        self.seconds += k * self._sec_per_step(self.tempo)
        self.steps += k
        self.gap += k
        self.last_note = torch.where(is_shift, -1, self.last_note)
        self.step_busy &= ~is_shift
        self.phase = torch.where(is_shift & (self.phase == AFTER_TEMPO), EVENTS, self.phase)
        self.last_shift = k

    def _next_given(self):
        """(is one still owed, its step, NOTE id, DV id) per row."""
        n = self.given_time.shape[1]
        i = self.given_pos.clamp(max=n - 1)[:, None]
        at = lambda t: t.gather(1, i)[:, 0]  # noqa: E731
        return self.given_pos < n, at(self.given_time), at(self.given_note), at(self.given_dv)

    def _advance_given(self, t, kind, live) -> None:
        owed, step, note, _ = self._next_given()
        wrote_dv = live & self.given_dv_due & (kind == Kind.DV)
        self.given_pos += wrote_dv.long()
        self.given_dv_due = (self.given_dv_due & ~wrote_dv) | (live & owed & (self.steps == step) & (t == note))

    def _advance_chord(self, t, kind, live) -> None:
        is_chord = live & (kind == Kind.CHORD)
        self.chord = torch.where(is_chord, t, self.chord)
        self.chord_here = (self.chord_here & (kind != Kind.SHIFT)) | is_chord
        self.gap = torch.where(is_chord, 0, self.gap)
        self.phase = torch.where(is_chord & (self.phase == AFTER_TEMPO), EVENTS, self.phase)
        if self.chords_forced:
            n = self.chord_time.shape[1]
            due = self.chord_id.gather(1, self.chord_pos.clamp(max=max(n - 1, 0))[:, None])[:, 0] if n else t
            self.chord_pos += (is_chord & (self.chord_pos < n) & (t == due)).long()

    def _next_chord(self):
        """(is one still owed, its step, its CHORD id) per row."""
        n = self.chord_time.shape[1]
        i = self.chord_pos.clamp(max=max(n - 1, 0))[:, None]
        if n == 0:
            return torch.zeros_like(self.chord_here), self.steps, self.chord
        return self.chord_pos < n, self.chord_time.gather(1, i)[:, 0], self.chord_id.gather(1, i)[:, 0]

    def _advance_notes(self, t, kind, live) -> None:
        c = self.codec
        is_note = live & (kind == Kind.NOTE)
        self.last_note = torch.where(is_note, t, self.last_note)
        self.step_busy |= is_note
        self.gap = torch.where(is_note, 0, self.gap)
        self.notes += is_note.long()
        is_dv = live & (kind == Kind.DV) & (self.phase == NEED_DV)
        ends = self.steps + self.T.dv_steps[(t - c.dv_start).clamp(0, len(self.T.dv_steps) - 1)]
        self.sounding_until = torch.where(is_dv, torch.maximum(self.sounding_until, ends), self.sounding_until)
        if self.limits is not None:
            self._sound(is_dv, ends)
        self.phase = torch.where(is_note, NEED_DV, torch.where(is_dv, EVENTS, self.phase))

    def _sound(self, is_dv, ends) -> None:
        """The note a DV completes takes its instrument's slot that ended first."""
        inst = ((self.last_note - self.codec.note_start).clamp(min=0) // N_PITCHES).clamp(max=N_INSTRUMENTS - 1)
        slots = self.ends[self.rows, inst]
        slot = slots.argmin(dim=1)
        old = slots.gather(1, slot[:, None])[:, 0]
        self.ends[self.rows, inst, slot] = torch.where(is_dv, ends, old)

    def chord_tones(self) -> torch.Tensor | None:
        """(B, V) 1.0 where an id is a pitched NOTE whose pitch class belongs to the given chord in
        force, else 0.0; None when no chart was given (the model's own chords are its business)."""
        if not self.chords_forced:
            return None
        row = torch.where(self.chord >= 0, self.chord - self.codec.chord_start, NO_CHORD + 1)
        return self.T.chord_tone[row][:, self.T.note_pc].float()

    def tone_bias(self, chord_weight: float, key_weight: float = 0.0, key: int | None = None,
                  tones_weight: float = 0.0, fill_weight: float = 0.0) -> torch.Tensor | None:
        """The nats added to the logits, the one bias toward the harmony asked for: ``chord_weight`` on
        the tones of a given chord in force (``chord_tones``), minus ``key_weight`` on a pitched note
        outside ``key``'s scale, plus ``tones_weight``
        times the weight of a pitched note's class in the stretch in force (``favour_tones``), and minus
        it on EOS while that stretch has tones (its bar is not to fall silent where its model plays);
        drums, shifts and the rest untouched; minus ``fill_weight`` on EOS until the last beat of an edit's
        span (``fill_bias``). None when none applies."""
        tones = self.chord_tones() if chord_weight else None
        bias = None if tones is None else chord_weight * tones
        if key_weight and key is not None:
            off = -key_weight * self.T.scale_tone[int(key)][self.T.note_pc]  # (V,): the same for every row
            bias = off.expand(self.B, -1) if bias is None else bias + off
        if tones_weight and self.tones_given:
            now = torch.searchsorted(self.tones_time, self.steps[:, None], right=True)[:, 0] - 1  # the stretch in force
            pc = self.tones_pc[self.rows, now.clamp(min=0)] * (now >= 0)[:, None]  # (B, 13)
            lean = tones_weight * pc[:, self.T.note_pc]
            lean[:, self.codec.EOS] = -tones_weight * (pc.sum(1) > 0)
            n = self.onsets.shape[1]
            if n:
                land = self.steps[:, None] + self.T.shift_k[None, :]  # (B, max_shift): where each SHIFT lands
                hit = self.onsets.gather(1, land.clamp(max=n - 1)) * (land < n)
                c = self.codec
                lean[:, c.shift_start: c.shift_start + self.max_shift] += tones_weight * hit
            bias = lean if bias is None else bias + lean
        if fill_weight and self.editing:
            bias = self.fill_bias(fill_weight) if bias is None else bias + self.fill_bias(fill_weight)
        return bias

    def fill_bias(self, weight: float) -> torch.Tensor:
        """``weight`` nats off EOS while an edit's written part is more than a beat from its span's end:
        a section written over silence (``midigen.generate.form``) is not to stop early and leave its
        last bars silent; where the model has nothing to say it can still rest with SHIFTs."""
        early = self.steps < self.span - self.codec.params.steps_per_quarter  # (B,)
        out = torch.zeros((self.B, len(self.T.note_pc)), dtype=torch.float32, device=self.device)
        out[:, self.codec.EOS] = -weight * early.float()
        return out

    @property
    def done(self) -> torch.Tensor:
        return self.phase == DONE

    # ----- the mask ---------------------------------------------------------------------------

    def mask(self) -> torch.Tensor:
        """(B, vocab) bool on the device: True where an id may come next. Every live row has one True."""
        return self.step_mask()[0]

    def advance_and_mask(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``advance(tokens)`` (the engine's drawn or forced ids, (B,) int64 on the device), then
        ``step_mask()``: on the compiled path one call, the decoding loop's whole grammar step."""
        if not (self.jit and tokens.dtype == torch.long and tokens.shape == (self.B,)):
            self.advance(tokens)
            return self._step_mask()
        s, tabs, lim, ints = self._jit_state()
        m, counts, ids = self._jit_buffers()
        grammar_jit.advance_and_mask(s, tokens.numpy(), m, counts, ids, tabs, lim, self._jit_flags(), ints)
        return torch.from_numpy(m), torch.from_numpy(counts), torch.from_numpy(ids)

    def _jit_buffers(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A new mask and counts (callers may keep them), and the reused candidate ids."""
        if self._jit_ids is None:
            self._jit_ids = np.empty((self.B, self.V), dtype=np.int64)
        return np.empty((self.B, self.V), dtype=bool), np.empty(self.B, dtype=np.int64), self._jit_ids

    def step_mask(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The mask, how many ids each row allows ((B,) int64; 1: the row is forced), and on the compiled
        path the allowed ids themselves ((B, V) int64, each row's first ``count`` in increasing order: the
        draw's candidates, read before the next call overwrites them; None on the torch path)."""
        return self._step_mask()

    def _step_mask(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if not self.jit:
            m = self._torch_mask()
            return m, allowed_counts(m), None
        s, tabs, lim, ints = self._jit_state()
        m, counts, ids = self._jit_buffers()
        grammar_jit.mask_rows(s, m, counts, ids, tabs, lim, self._jit_flags(), ints)
        return torch.from_numpy(m), torch.from_numpy(counts), torch.from_numpy(ids)

    def _jit_flags(self) -> tuple:
        """The host facts the compiled rules branch on (``grammar_jit.mask_rows``)."""
        return (bool(self.in_header.any()), self.timed, self.forcing, self.pending, self.chords_forced,
                self.limits is not None, self.codec.has_chords)

    def _jit_ints(self) -> tuple:
        c, (lo, hi) = self.codec, self.codec.ranges.get("chord", (0, 0))
        return (self.V, c.EOS, c.shift_start, c.tempo_start, c.ts_start, c.inst_start, c.note_start, c.dv_start,
                c.dv_end, lo, hi, self.max_shift, self.max_header_instruments, self.spq)

    def _jit_state(self):
        """The state tensors' numpy views (shared memory) in ``grammar_jit.STATE`` order, the tables, the
        note limits and the codec's numbers; rebuilt only when a tensor was replaced (setup, or the torch
        rules)."""
        tensors = _STATE_OF(self)
        cached = self._jit_views
        if cached is None or not all(map(operator.is_, cached[0], tensors)) or cached[3] is not self.limits:
            T = self.T
            tabs = tuple(x.numpy() for x in (T.sec_per_step, T.tempo_bpm, T.dv_steps, T.kind, T.last_kind, T.steps))
            if self.limits is None:
                lim = (np.zeros(N_INSTRUMENTS, np.int64), np.full((N_INSTRUMENTS, N_PITCHES), -1, np.int64))
            else:
                lim = (self.limits.polyphony.numpy(), self.limits.note_key.numpy())
            cached = self._jit_views = (tensors, tuple(x.numpy() for x in tensors), tabs, self.limits, lim,
                                        self._jit_ints())
            self._jit_ids = None
        return cached[1], cached[2], cached[4], cached[5]

    def _torch_mask(self) -> torch.Tensor:
        c = self.codec
        m = torch.zeros((self.B, self.V), dtype=torch.bool, device=self.device)
        room = self.budget >= 1
        held = (self.forced_ts >= 0) | (self.control_pos < self.controls.shape[1])  # header still owed
        events = (self.phase == EVENTS) | ((self.phase == AFTER_TEMPO) & ~held)
        if self.in_header.any():
            _header_rules(self, m, room)
            _control_rules(self, m, room)
        _shift_rules(self, m, events & room)
        ev_tempo = _tempo_rules(self, m, events & room)
        _note_rules(self, m, events & (self.budget >= 2))
        _duration_rules(self, m)
        owed = _given_rules(self, m, events & room) if self.forcing else None
        chord_due = _chord_rules(self, m, events & room) if c.has_chords else None  # after: a due chord goes first
        _end_rules(self, m, events, room, m[:, c.shift_start : c.tempo_start], ev_tempo)  # the shifts left
        if owed is not None:
            m[:, c.EOS] &= ~owed  # the written part ends only once every given note is in
        if chord_due is not None:
            m[:, c.EOS] &= ~chord_due  # a chord due at this step comes before anything else
        dead = m.view(torch.uint8).amax(dim=1) == 0  # a row left with nothing (should not happen) may end
        # rather than sample garbage (amax over bytes: ~20x cheaper than any() over 18k bools on a CPU)
        m[:, c.EOS] |= dead
        return m

    def forced(self) -> torch.Tensor | None:
        """(B,) the one id the rules leave each row of an edit's written part, -1 where the row may
        choose; None outside an edit (no time target, no pending tempo, past the header), where only
        ``mask`` answers.

        It finds an edit's forced runs from a few ops on the rows' state, nothing vocabulary-wide, so
        the engine builds no mask for them: a kept note's DV; its NOTE at its step when no written note
        can come before it (``_written_before``), nor a chord of the model's own, and no chord is due
        there; a chord due at its step; EOS of a finished row. Where it gives an id, ``mask`` allows that
        id alone (tests/test_engine.py checks every step of real edits); where it gives -1, the mask
        decides (it may still force)."""
        if not self.editing or self.timed or self.pending or self.in_header.any():
            return None
        c = self.codec
        out = torch.where(self.phase == DONE, c.EOS, -1)
        at_step = self.phase == EVENTS
        if self.forcing:
            owed, step, note, dv = self._next_given()
            out = torch.where(self.given_dv_due & (self.phase == NEED_DV), dv, out)
            first = owed & at_step & ~self.given_dv_due & (self.steps == step) & ~self._written_before(note)
            if c.has_chords and not self.chords_forced:  # the model may put its own chord before the step's notes
                first &= (self.last_note >= 0) | self.chord_here
            out = torch.where(first & (self.budget >= 2), note, out)
        if self.chords_forced:
            owed, step, cid = self._next_chord()
            out = torch.where(owed & at_step & (self.steps == step) & (self.budget >= 1), cid, out)
        return out

    def _written_before(self, note: torch.Tensor) -> torch.Tensor:
        """(B,) may the row write a note of its own before the given ``note`` at this step: an id after
        the step's last note and below ``note`` (the step's order), of an instrument it writes, in range
        and with a voice free (``_note_rules``' conditions, on the written instruments only)."""
        if self.limits is None:
            base = self.codec.note_start + N_PITCHES * self.T.inst_i
            lo = torch.maximum(self.last_note[:, None] + 1, base[None, :])
            hi = torch.minimum(note[:, None], base[None, :] + N_PITCHES)
            return ((lo < hi) & self.instruments).any(dim=1)
        act = _active(self)
        key = self.limits.note_key[act][None]  # (1, instruments, pitches): the id where in range, else -1
        between = ((key > self.last_note[:, None, None]) & (key < note[:, None, None])).any(dim=2)
        free = (self.ends[:, act] > self.steps[:, None, None]).sum(dim=2) < self.limits.polyphony[act][None, :]
        return (between & free & self.instruments[:, act]).any(dim=1)

    def allowed(self, tokens) -> torch.Tensor:
        """(B,) bool: is each row's token allowed by the current mask (used to check prompts)."""
        t = torch.as_tensor(np.asarray(tokens), device=self.device).long().reshape(self.B)
        return self.mask().gather(1, t[:, None])[:, 0]


def allowed_counts(mask: torch.Tensor) -> torch.Tensor:
    """(B,) int64: how many ids each row may write (1: the row is forced). Summed as bytes: a bool sum
    over 18k ids costs several times more on a CPU."""
    return mask.view(torch.uint8).sum(dim=1, dtype=torch.int32).long()


# ----- the rules, one per kind of token -----------------------------------------------------------


def _only_rows(block: torch.Tensor, rows: torch.Tensor) -> None:
    """``block &= rows[:, None]`` in place, as bytes: a broadcast ``&`` of bool tensors costs several
    times more (20x at 16 rows over the vocabulary) on a CPU."""
    block.view(torch.uint8).__iand__(rows.view(torch.uint8)[:, None])


def _header_rules(g: Grammar, m: torch.Tensor, room: torch.Tensor) -> None:
    """Instruments in increasing order, then the tempo (or the one asked for); then a TS (or the one
    asked for)."""
    c, T = g.codec, g.T
    head = g.phase == HEAD
    more_inst = head & g.header_open & (g.n_inst < g.max_header_instruments) & room
    m[:, c.inst_start : c.note_start] = more_inst[:, None] & (T.inst_i[None, :] > g.last_inst[:, None])
    head_tempo = head & (g.n_inst > 0)
    forced = g.forced_tempo >= 0
    tempo_ok = ~forced[:, None] | (T.tempo_j[None, :] == g.forced_tempo[:, None])
    m[:, c.tempo_start : c.ts_start] = head_tempo[:, None] & tempo_ok
    ts = torch.arange(c.ts_start, c.inst_start, device=g.device)
    after = (g.phase == AFTER_TEMPO) & room
    ts_forced = g.forced_ts >= 0
    m[:, c.ts_start : c.inst_start] = after[:, None] & (~ts_forced[:, None] | (ts[None, :] == g.forced_ts[:, None]))


def _control_rules(g: Grammar, m: torch.Tensor, room: torch.Tensor) -> None:
    """The control tokens asked for, in order, once any forced TS is written."""
    n = g.controls.shape[1]
    if n == 0:
        return
    owed = (g.control_pos < n) & (g.forced_ts < 0) & room & (
        (g.phase == AFTER_TEMPO) | (g.phase == CONTROLS))
    ids = g.controls[g.rows, g.control_pos.clamp(max=n - 1)]
    m[g.rows, ids] |= owed


def _shift_rules(g: Grammar, m: torch.Tensor, events: torch.Tensor) -> None:
    """A short shift ends its gap; gaps stay within the gap limit, time within the target, onsets
    within the span."""
    c, T = g.codec, g.T
    may = events & ((g.last_kind != _K_SHIFT) | (g.last_shift == g.max_shift))
    k = T.shift_k[None, :]
    fits = (g.gap[:, None] + k <= g.gap_limit[:, None]) & (g.steps[:, None] + k < g.span[:, None])
    if g.timed:
        fits &= g.seconds[:, None] + k * g._sec_per_step(g.tempo)[:, None] <= g.target[:, None] + 1e-9
    if g.limits is not None:
        fits &= _lands_free(g, g.steps[:, None] + k) | (k == g.max_shift)
    m[:, c.shift_start : c.tempo_start] = may[:, None] & fits


def _lands_free(g: Grammar, lands: torch.Tensor) -> torch.Tensor:
    """(B, n) bool: may a short shift land at these steps? Only where some allowed instrument has a free
    voice (or a given note is due): a short shift must be followed by an event, so landing where every
    instrument still sounds its most notes would leave the row nothing to write."""
    act = _active(g)
    if not len(act):  # no instrument to write: nothing for polyphony to hold
        return torch.ones_like(lands, dtype=torch.bool)
    top = torch.sort(g.ends[:, act], dim=2, descending=True).values  # (B, active instruments, slots)
    idx = (g.limits.polyphony[act] - 1).clamp(max=top.shape[2] - 1).view(1, -1, 1).expand(g.B, -1, 1)
    free_at = top.gather(2, idx)[:, :, 0]  # fewer than polyphony notes sound from this step on
    inst = g.instruments[:, act]
    earliest = torch.where(inst, free_at, NO_LIMIT).min(dim=1).values
    earliest = torch.where(inst.any(dim=1), earliest, 0)
    ok = lands >= earliest[:, None]
    if g.forcing:
        owed, step, _, _ = g._next_given()
        ok |= owed[:, None] & (lands == step[:, None])
    if g.chords_forced:
        owed, step, _ = g._next_chord()
        ok |= owed[:, None] & (lands == step[:, None])
    return ok


def _active(g: Grammar) -> torch.Tensor:
    """Indices of the instruments any row may write: all of them while a header is open, else the
    fixed set (read from the device once, then kept), so the polyphony rules look at a few rows only."""
    if g.in_header.any():
        return g.T.inst_i
    if g.limits.active is None:
        g.limits.active = torch.nonzero(g.instruments.any(dim=0)).flatten()
    return g.limits.active


def _tempo_rules(g: Grammar, m: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
    """Tempo changes: after a shift, before the step's notes, not the tempo in force, and not so slow
    that the notes still sounding would ring past the time target; none where tempo is kept (a requested
    one still may sit there). Returns the rows where one may sit."""
    c, T = g.codec, g.T
    ev_tempo = events & (g.steps > 0) & ~g.step_busy & (g.last_kind == _K_SHIFT)
    ok = (ev_tempo & g.tempo_ok)[:, None] & (T.tempo_j[None, :] != g.tempo[:, None])
    if g.timed:
        ring = (g.sounding_until - g.steps).clamp(min=0)[:, None] * (60.0 / g.spq)
        ok &= ring / T.tempo_bpm[None, :] <= (g.target - g.seconds)[:, None] + 1e-9
    m[:, c.tempo_start : c.ts_start] |= ok
    return ev_tempo


def _note_rules(g: Grammar, m: torch.Tensor, rows: torch.Tensor) -> None:
    """Allowed instruments only, increasing ids within a step (and room for the DV after); with note
    limits, only pitches in the instrument's range, and none while it sounds its most notes at once."""
    c, T = g.codec, g.T
    notes = m[:, c.note_start : c.dv_start].view(g.B, N_INSTRUMENTS, N_PITCHES)
    allowed = rows[:, None] & g.instruments
    if g.limits is None:
        later = T.note_ids.view(N_INSTRUMENTS, N_PITCHES)[None] > g.last_note[:, None, None]
        notes.copy_(allowed[:, :, None] & later)
        return
    later = g.limits.note_key[None] > g.last_note[:, None, None]  # in range too
    sounding = (g.ends > g.steps[:, None, None]).sum(dim=2)
    allowed &= sounding < g.limits.polyphony[None, :]
    notes.copy_(allowed[:, :, None] & later)


def _given_rules(g: Grammar, m: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
    """Given notes come where they fall: time never passes the next one; at its step, only written
    notes with a lower id (the step's order) or the given note itself; its DV as given. Returns the
    rows that still owe one (they may not end)."""
    c, T = g.codec, g.T
    owed, step, note, dv = g._next_given()
    owed = owed & events & ~g.given_dv_due
    fits = g.steps[:, None] + T.shift_k[None, :] <= step[:, None]
    due = owed & (g.steps == step)
    m[:, c.shift_start : c.tempo_start] &= (~owed[:, None] | fits) & ~due[:, None]
    lower = T.note_ids[None, :] < note[:, None]
    m[:, c.note_start : c.dv_start] &= ~due[:, None] | lower
    m[g.rows, note] |= due & (g.budget >= 2)
    dv_due = g.given_dv_due & (g.phase == NEED_DV)
    _only_rows(m[:, c.dv_start : c.dv_end], ~dv_due)
    m[g.rows, dv.clamp(min=c.dv_start)] |= dv_due
    return (g.given_pos < g.given_time.shape[1]) & (g.phase != DONE)


def _chord_rules(g: Grammar, m: torch.Tensor, events: torch.Tensor) -> torch.Tensor | None:
    """A CHORD after the step's shifts and tempo, before its notes, once per step, not the chord in force;
    with forced chords only those: time never passes the next one, and at its step it is all there is.
    Returns the rows where a forced chord is due (None without forced chords)."""
    c, T = g.codec, g.T
    lo, hi = c.ranges["chord"]
    if not g.chords_forced:
        free = events & (g.last_note < 0) & ~g.chord_here & (g.phase != NEED_DV)
        m[:, lo:hi] = free[:, None]
        m[g.rows, g.chord.clamp(min=lo)] &= g.chord < 0
        return None
    m[:, lo:hi] = False
    owed, step, cid = g._next_chord()
    owed = owed & events & (g.phase != NEED_DV)
    fits = g.steps[:, None] + T.shift_k[None, :] <= step[:, None]
    m[:, c.shift_start : c.tempo_start] &= ~owed[:, None] | fits
    due = owed & (g.steps == step)
    m.masked_fill_(due[:, None], False)
    m[g.rows, cid.clamp(min=lo)] |= due
    return due


def _duration_rules(g: Grammar, m: torch.Tensor) -> None:
    """After a NOTE, any duration, unless a time target is near; the shortest always fits."""
    c, T = g.codec, g.T
    need_dv = g.phase == NEED_DV
    if not g.timed:
        m[:, c.dv_start : c.dv_end] = need_dv[:, None]
        return
    left = torch.floor((g.target - g.seconds) / g._sec_per_step(g.tempo) + 1e-6)
    m[:, c.dv_start : c.dv_end] = need_dv[:, None] & ((T.dv_steps[None, :] <= left[:, None]) | (T.dv_steps == 1))


def _end_rules(g: Grammar, m: torch.Tensor, events, room, shift_ok, ev_tempo) -> None:
    """EOS after a DV once 90% of the time target passed or nothing else fits (an edit: after any DV,
    or at once); a requested tempo change at the first step where one may sit; done rows stay done."""
    c = g.codec
    after_dv = g.last_kind == _K_DV
    eos = events & ~room  # the budget is spent (the caller normally stops first)
    eos |= events & g.eos_anytime & (after_dv | (g.last_kind == _K_OTHER))
    if g.timed:
        no_shift = ~shift_ok.any(dim=1)
        eos_time = (g.seconds >= EOS_FRACTION * g.target) | no_shift
        timed_eos = events & after_dv & (g.notes > 0) & torch.isfinite(g.target) & eos_time
        eos |= timed_eos
        m.masked_fill_((timed_eos & no_shift & ~g.eos_anytime)[:, None], False)  # nothing else fits: end
    if g.pending:
        pend = ev_tempo & (g.pending_tempo >= 0) & (g.pending_tempo != g.tempo)
        m.masked_fill_(pend[:, None], False)
        m[g.rows, c.tempo_start + g.pending_tempo.clamp(min=0)] |= pend
    done = g.phase == DONE
    m[:, c.EOS] = eos | done
    _only_rows(m[:, c.EOS + 1 :], ~done)
