"""The numpy batch encoder behind ``Codec.encode_scores``: many scores -> tokens in a few vectorized passes.

The reference encoder (``codec_jit`` must match it token for token). A batch flows through six steps,
each a function over flat arrays of every note of every score, carried in one namespace ``b``:

1. ``_read_scores``: per file, ticks per quarter, tempo maps, the first time signature; all notes.
2. ``_quantize``: ticks -> steps (round half up, exact integer arithmetic); files that cannot be
   encoded (no notes, notes past 2^32 steps) fail alone.
3. ``_sort_notes``: one key per note (file, onset, instrument, pitch); exact duplicates dropped.
4. ``_tempo_changes``: the header tempo of each file and the changes that move the bin before its last onset.
5. ``_event_groups``: distinct event times per file, the shortened gaps before them, the tokens each needs.
6. ``_write``: the headers and the events into one output array, cut into one array per file.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from midigen.codec import N_INSTRUMENTS, N_PITCHES, CodecError

_LOW32 = (1 << 32) - 1


def encode_scores(codec, scores) -> list:
    """Scores -> list of token arrays (or CodecError per score)."""
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
