"""The grammar's mask and advance compiled with numba for the CPU: ``Grammar``'s torch rules, row by row.

Why it exists: at batch 1 on a CPU the torch grammar is about a hundred small tensor ops a step (mask
and advance), each 1-3 us of dispatch for a few bytes of work, together about a fifth of the demo
model's forward. Here one compiled call per step does the same work in a few microseconds, reading and
writing the torch grammar's own state in place (CPU tensors and these arrays share memory), so the
torch rules stay the reference and the device path: ``tests/test_grammar_jit.py`` checks this twin
mask for mask and state for state against them over sampled, edited and chord-forced sequences.

Every function mirrors the torch function of the same name in ``grammar.py``, in the same order, one
row at a time (the torch rules are elementwise over rows); a change to a rule there must be made here
too, and the test fails until it is. Float arithmetic follows torch's dtypes (the tempo rule's ring is
a float32 product, as torch computes an integer tensor times a Python float).
"""
from __future__ import annotations

import os

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; the torch grammar works without it
    numba = None

# the grammar's phases and last-token kinds (grammar.py; repeated here as plain ints for the compiler)
HEAD, AFTER_TEMPO, EVENTS, NEED_DV, DONE, CONTROLS = 0, 1, 2, 3, 4, 5
K_OTHER, K_SHIFT, K_TEMPO, K_NOTE, K_DV, K_CHORD = 0, 1, 2, 3, 4, 5
# codec kinds (music.codec.Kind)
SHIFT, TEMPO, TS, INST, NOTE, DV, STYLE, DENSITY, CHORD = 1, 2, 3, 4, 5, 6, 7, 9, 11
N_INST, N_PITCH = 129, 128
EOS_FRACTION = 0.9
NO_LIMIT = 1 << 60

# The state, by name, in the order the compiled functions take it (all (B,) or (B, n) arrays).
STATE = ("phase", "last_kind", "last_shift", "last_inst", "n_inst", "instruments", "header_open", "last_note",
         "step_busy", "steps", "gap", "tempo", "seconds", "notes", "sounding_until", "forced_tempo", "forced_ts",
         "pending_tempo", "target", "budget", "span", "gap_limit", "tempo_ok", "eos_anytime", "controls",
         "control_pos", "given_time", "given_note", "given_dv", "given_pos", "given_dv_due", "chord", "chord_here",
         "chord_time", "chord_id", "chord_pos", "ends")


# MIDIGEN_NO_JIT=1 turns the compiled paths off (as it does prepare's encoder): the torch grammar and draw run instead
_ON = numba is not None and os.environ.get("MIDIGEN_NO_JIT", "") in ("", "0")


def available() -> bool:
    return _ON


def compiled(fn):
    """``fn`` compiled (cached on disk; the draw's steps use it too), or as it is without numba."""
    return numba.njit(cache=True, nogil=True)(fn) if numba is not None else fn


_jit = compiled


@_jit
def _next_given(s, b):
    """(is one still owed, its step, NOTE id, DV id) of row ``b``."""
    n = s[26].shape[1]
    i = min(s[29][b], n - 1)
    return s[29][b] < n, s[26][b, i], s[27][b, i], s[28][b, i]


@_jit
def _next_chord(s, b):
    """(is one still owed, its step, its CHORD id) of row ``b``."""
    n = s[33].shape[1]
    if n == 0:
        return False, s[9][b], s[31][b]
    i = min(s[35][b], max(n - 1, 0))
    return s[35][b] < n, s[33][b, i], s[34][b, i]


@_jit
def _earliest(s, b, polyphony):
    """The first step where some instrument row ``b`` may write has a free voice (0: no instrument)
    (``grammar._lands_free``'s ``earliest``)."""
    ends = s[36]
    slots = ends.shape[2]
    earliest = NO_LIMIT
    any_inst = False
    buf = np.empty(slots, np.int64)
    for i in range(N_INST):
        if not s[5][b, i]:
            continue
        any_inst = True
        for j in range(slots):
            buf[j] = ends[b, i, j]
        buf.sort()  # ascending: the k-th largest sits k from the end
        k = min(max(polyphony[i] - 1, 0), slots - 1)
        earliest = min(earliest, buf[slots - 1 - k])
    return earliest if any_inst else 0


@_jit
def _lands_free(s, b, lands, earliest, flags):
    """May a short shift of row ``b`` land at step ``lands``? (``grammar._lands_free``)"""
    ok = lands >= earliest
    if flags[2]:  # forcing
        owed, step, _, _ = _next_given(s, b)
        ok = ok or (owed and lands == step)
    if flags[4]:  # chords forced
        owed, step, _ = _next_chord(s, b)
        ok = ok or (owed and lands == step)
    return ok


@_jit
def mask_rows(s, m, counts, ids, tabs, lim, flags, ints):
    """Fill ``m`` (B, V) bool with each row's allowed ids, ``counts`` (B,) with how many, and ``ids``
    (B, V) with them in increasing order (the draw's candidates; 0 after them up to the widest row's
    count). ``flags``: header rules on, timed, forcing, pending, chords forced, limits on, has chords;
    ``ints``: the codec's starts (see ``Grammar._jit_ints``)."""
    (V, EOS, shift_start, tempo_start, ts_start, inst_start, note_start, dv_start, dv_end, chord_lo, chord_hi,
     max_shift, max_hi, spq) = (ints[0], ints[1], ints[2], ints[3], ints[4], ints[5], ints[6], ints[7], ints[8],
                                ints[9], ints[10], ints[11], ints[12], ints[13])
    any_header, timed, forcing, pending, chords_forced, limited, has_chords = (
        flags[0], flags[1], flags[2], flags[3], flags[4], flags[5], flags[6])
    sec_per_step, tempo_bpm, dv_steps = tabs[0], tabs[1], tabs[2]
    note_key, polyphony = lim[1], lim[0]
    n_tempo = ts_start - tempo_start
    n_ctl = s[24].shape[1]
    B = m.shape[0]
    for b in range(B):
        row = m[b]
        row[:] = False
        phase, budget = s[0][b], s[19][b]
        room = budget >= 1
        held = s[16][b] >= 0 or s[25][b] < n_ctl
        events = phase == EVENTS or (phase == AFTER_TEMPO and not held)
        ev_room = events and room
        if any_header:
            # _header_rules
            head = phase == HEAD
            more_inst = head and s[6][b] and s[4][b] < max_hi and room
            for i in range(N_INST):
                row[inst_start + i] = more_inst and i > s[3][b]
            head_tempo = head and s[4][b] > 0
            forced = s[15][b] >= 0
            for j in range(n_tempo):
                row[tempo_start + j] = head_tempo and (not forced or j == s[15][b])
            after = phase == AFTER_TEMPO and room
            ts_forced = s[16][b] >= 0
            for t in range(ts_start, inst_start):
                row[t] = after and (not ts_forced or t == s[16][b])
            # _control_rules
            if n_ctl > 0:
                cp = s[25][b]
                owed = cp < n_ctl and s[16][b] < 0 and room and (phase == AFTER_TEMPO or phase == CONTROLS)
                if owed:
                    row[s[24][b, min(cp, n_ctl - 1)]] = True
        # _shift_rules
        may = ev_room and (s[1][b] != K_SHIFT or s[2][b] == max_shift)
        steps, gap, tempo = s[9][b], s[10][b], s[11][b]
        sps = sec_per_step[tempo]
        if may:  # else the row's shifts stay False
            earliest = _earliest(s, b, polyphony) if limited else 0
            for k in range(1, max_shift + 1):
                fits = gap + k <= s[21][b] and steps + k < s[20][b]
                if timed:
                    fits = fits and s[12][b] + k * sps <= s[18][b] + 1e-9
                if limited and fits:
                    fits = k == max_shift or _lands_free(s, b, steps + k, earliest, flags)
                row[shift_start + k - 1] = fits
        # _tempo_rules
        ev_tempo = ev_room and steps > 0 and not s[8][b] and s[1][b] == K_SHIFT
        if ev_tempo and s[22][b]:
            ring = np.float64(np.float32(max(s[14][b] - steps, 0)) * np.float32(60.0 / spq))
            left = s[18][b] - s[12][b] + 1e-9
            for j in range(n_tempo):
                ok = j != tempo
                if timed:
                    ok = ok and ring / tempo_bpm[j] <= left
                if ok:
                    row[tempo_start + j] = True
        # _note_rules
        if events and budget >= 2:
            last_note = s[7][b]
            for i in range(N_INST):
                ok = s[5][b, i]
                if ok and limited:
                    sounding = 0
                    for j in range(s[36].shape[2]):
                        sounding += s[36][b, i, j] > steps
                    ok = sounding < polyphony[i]
                if not ok:
                    continue
                base = note_start + i * N_PITCH
                for p in range(N_PITCH):
                    key = note_key[i, p] if limited else base + p
                    row[base + p] = key > last_note
        # _duration_rules
        if phase == NEED_DV:
            if not timed:
                row[dv_start:dv_end] = True
            else:
                left = np.floor((s[18][b] - s[12][b]) / sps + 1e-6)
                for j in range(dv_end - dv_start):
                    row[dv_start + j] = dv_steps[j] <= left or dv_steps[j] == 1
        # _given_rules
        owed_end = False
        if forcing:
            owed, step, note, dv = _next_given(s, b)
            owed = owed and ev_room and not s[30][b]
            due = owed and steps == step
            if owed:
                for k in range(1, max_shift + 1):
                    if due or steps + k > step:
                        row[shift_start + k - 1] = False
            if due:
                for t in range(note_start, dv_start):
                    if t >= note:
                        row[t] = False
                if budget >= 2:
                    row[note] = True
            if s[30][b] and phase == NEED_DV:
                row[dv_start:dv_end] = False
                row[max(dv, dv_start)] = True
            owed_end = s[29][b] < s[26].shape[1] and phase != DONE
        # _chord_rules
        chord_due = False
        if has_chords:
            if not chords_forced:
                free = ev_room and s[7][b] < 0 and not s[32][b] and phase != NEED_DV
                row[chord_lo:chord_hi] = free
                if s[31][b] >= 0:
                    row[s[31][b]] = False
            else:
                row[chord_lo:chord_hi] = False
                owed, step, cid = _next_chord(s, b)
                owed = owed and ev_room and phase != NEED_DV
                if owed:
                    for k in range(1, max_shift + 1):
                        if steps + k > step:
                            row[shift_start + k - 1] = False
                chord_due = owed and steps == step
                if chord_due:
                    row[:] = False
                    row[max(cid, chord_lo)] = True
        # _end_rules
        last_kind = s[1][b]
        after_dv = last_kind == K_DV
        eos = events and not room
        eos = eos or (events and s[23][b] and (after_dv or last_kind == K_OTHER))
        if timed:
            no_shift = True
            for k in range(max_shift):
                if row[shift_start + k]:
                    no_shift = False
                    break
            target = s[18][b]
            eos_time = s[12][b] >= EOS_FRACTION * target or no_shift
            timed_eos = events and after_dv and s[13][b] > 0 and np.isfinite(target) and eos_time
            eos = eos or timed_eos
            if timed_eos and no_shift and not s[23][b]:
                row[:] = False
        if pending:
            pt = s[17][b]
            if ev_tempo and pt >= 0 and pt != tempo:
                row[:] = False
                row[tempo_start + pt] = True
        done = phase == DONE
        row[EOS] = eos or done
        if done:
            row[EOS + 1:] = False
        if forcing and owed_end:
            row[EOS] = False
        if chord_due:
            row[EOS] = False
        # the count, the candidates, and a dead row's way out
        n = 0
        for t in range(V):
            if row[t]:
                ids[b, n] = t
                n += 1
        if n == 0:
            row[EOS] = True
            ids[b, 0] = EOS
            n = 1
        counts[b] = n
    widest = counts.max()
    for b in range(B):
        ids[b, counts[b]:widest] = 0  # padding, as ``engine.candidates`` pads


@_jit
def advance_rows(s, tok, tabs, lim, flags, ints):
    """Move every row past its token (``Grammar.advance``'s torch rules, row by row)."""
    (V, EOS, shift_start, tempo_start, ts_start, inst_start, note_start, dv_start) = (
        ints[0], ints[1], ints[2], ints[3], ints[4], ints[5], ints[6], ints[7])
    any_header, forcing, pending, chords_forced, limited, has_chords = (
        flags[0], flags[2], flags[3], flags[4], flags[5], flags[6])
    sec_per_step, dv_steps, kind_of, last_kind_of, shift_steps = tabs[0], tabs[2], tabs[3], tabs[4], tabs[5]
    n_tempo = ts_start - tempo_start
    n_dv = dv_steps.shape[0]
    n_ctl = s[24].shape[1]
    for b in range(tok.shape[0]):
        t = tok[b]
        tc = min(max(t, 0), V - 1)
        kind = kind_of[tc]
        live = s[0][b] != DONE
        if live:
            s[19][b] -= 1
        is_tempo = live and kind == TEMPO
        j = min(max(t - tempo_start, 0), n_tempo - 1)
        if any_header:
            # _advance_header
            phase = s[0][b]
            is_inst = live and kind == INST and phase == HEAD
            if is_inst:
                i = min(max(t - inst_start, 0), N_INST - 1)
                s[5][b, i] = True
                s[3][b] = i
                s[4][b] += 1
            head = live and kind == TEMPO and phase == HEAD
            ev = is_tempo and not head
            is_ts = live and kind == TS and phase == AFTER_TEMPO
            if is_ts:
                s[16][b] = -1
            is_ctl = live and STYLE <= kind <= DENSITY and (phase == AFTER_TEMPO or phase == CONTROLS)
            if is_ctl:
                s[25][b] += 1
            if head:
                s[0][b] = AFTER_TEMPO
            elif is_ts or is_ctl:
                s[0][b] = CONTROLS if s[25][b] < n_ctl else EVENTS
        else:
            ev = is_tempo
        # _advance_tempo
        if is_tempo:
            s[11][b] = j
        if ev:
            s[8][b] = True
            s[10][b] = 0
        if pending and is_tempo and s[17][b] == j:
            s[17][b] = -1
        # _advance_time
        is_shift = live and kind == SHIFT
        k = shift_steps[tc] if is_shift else 0
        s[12][b] += k * sec_per_step[s[11][b]]
        s[9][b] += k
        s[10][b] += k
        if is_shift:
            s[7][b] = -1
            s[8][b] = False
            if s[0][b] == AFTER_TEMPO:
                s[0][b] = EVENTS
        s[2][b] = k
        # _advance_given
        if forcing:
            owed, step, note, _ = _next_given(s, b)
            wrote_dv = live and s[30][b] and kind == DV
            if wrote_dv:
                s[29][b] += 1
            s[30][b] = (s[30][b] and not wrote_dv) or (live and owed and s[9][b] == step and t == note)
        # _advance_notes
        is_note = live and kind == NOTE
        if is_note:
            s[7][b] = t
            s[8][b] = True
            s[10][b] = 0
            s[13][b] += 1
        is_dv = live and kind == DV and s[0][b] == NEED_DV
        if is_dv:
            end = s[9][b] + dv_steps[min(max(t - dv_start, 0), n_dv - 1)]
            s[14][b] = max(s[14][b], end)
            if limited:  # _sound: the slot that ended first
                inst = min(max(s[7][b] - note_start, 0) // N_PITCH, N_INST - 1)
                slots = s[36][b, inst]
                slot = 0
                for q in range(1, slots.shape[0]):
                    if slots[q] < slots[slot]:
                        slot = q
                slots[slot] = end
        if is_note:
            s[0][b] = NEED_DV
        elif is_dv:
            s[0][b] = EVENTS
        # _advance_chord
        if has_chords:
            is_chord = live and kind == CHORD
            if is_chord:
                s[31][b] = t
                s[10][b] = 0
                if s[0][b] == AFTER_TEMPO:
                    s[0][b] = EVENTS
            s[32][b] = (s[32][b] and kind != SHIFT) or is_chord
            if chords_forced:
                n = s[33].shape[1]
                due = s[34][b, min(s[35][b], max(n - 1, 0))] if n else t
                if is_chord and s[35][b] < n and t == due:
                    s[35][b] += 1
        if live and t == EOS:
            s[0][b] = DONE
        s[1][b] = last_kind_of[kind]


@_jit
def advance_and_mask(s, tok, m, counts, ids, tabs, lim, flags, ints):
    """``advance_rows`` then ``mask_rows``: one call per decoding step."""
    advance_rows(s, tok, tabs, lim, flags, ints)
    mask_rows(s, m, counts, ids, tabs, lim, flags, ints)
