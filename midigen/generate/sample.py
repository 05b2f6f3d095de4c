"""Generate music from a checkpoint: continue a song, or write one from nothing (what ``midigen sample`` runs).

The task part of sampling: what the prompt is (a song's tokens, or a header built from the asked
instruments, tempo, time signature and controls), the grammar placed after it, and the length control.
The decoding itself is the shared engine (``midigen.generate.engine``): all samples of a call decode as
one batch in lockstep with a KV cache, sliding the context from the song's header plus its most recent
part when it fills. Draws come from a seeded generator on the model's device, so the same seed and
arguments give the same files.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from midigen.music.codec import Codec, CodecError, Kind, instrument_name
from midigen.music.timing import notes_end_seconds, tick_at_seconds  # noqa: F401 (notes_end_seconds: re-exported)
from midigen.errors import UsageError
from midigen.generate import continuation
from midigen.generate.hearing import hearing_map
from midigen.generate.engine import KEEP_FRACTION, Decoder, Listener, realtime, warm_up_draw_by_ops
from midigen.generate.grammar import Grammar
from midigen.generate.harmony import chart_changes, meter_grid, need_chords
from midigen.generate.sampling import Sampling
from midigen.generate.splice import settle
from midigen.music.ranges import NoteLimits, note_limits

DEFAULT_SECONDS = 30.0
TOKENS_PER_SECOND_CAP = 200  # token budget per second of music when only a time target is given
SILENCE_BEATS = 8  # longer silences are reported
LOOP_PERIOD_MAX = 8  # a pattern of at most this many tokens ...
LOOP_MIN_TOKENS = 64  # ... repeated over this many tokens is reported as a loop
WARM_TOKENS = 8  # drawn by ``warm_up``: enough for a step with several candidates


@dataclass
class Sample:
    """One generated song and where its new part starts, for summaries and length checks."""

    tokens: np.ndarray  # the whole song: header, prompt, new tokens, EOS
    start_index: int  # index of the first new token
    start_steps: int  # song time (steps) where the new part starts
    start_seconds: float  # ... and in seconds
    end_seconds: float | None  # the time target (seconds), when there is one
    budget_spent: bool = False  # stopped by the token budget rather than by EOS
    warnings: list = field(default_factory=list)
    compute_seconds: float = 0.0  # the decoding that wrote it (shared by the samples of one call)


# ----- generation -------------------------------------------------------------------------------


def _prefix(codec: Codec, prompt_tokens, instruments, tempo, controls=(), ts_id=None) -> tuple[np.ndarray, bool]:
    """The tokens every row starts from, and whether its header is already complete.

    The ``controls`` go right after BOS (v3) or after TEMPO [TS] (v2); where the prefix holds the
    header's TEMPO, the time signature ``ts_id`` follows it here, otherwise the grammar forces it (and
    v2's controls) once the model has written its TEMPO.
    """
    lead = list(controls) if codec.controls_first else []
    tail = [] if codec.controls_first else list(controls)
    insts = sorted(set(int(i) for i in instruments)) if instruments else []
    if prompt_tokens is not None:
        p = np.asarray(prompt_tokens, dtype=np.int64).ravel()
        if len(p) and p[0] != codec.BOS:
            p = np.concatenate(([codec.BOS], p))
        end = np.flatnonzero(p[1:] == codec.EOS)
        if len(end):
            p = p[: end[0] + 1]
        h = codec.header_length(p)
        head_insts = [int(t) - codec.inst_start for t in p[1:h] if codec.inst_start <= t < codec.note_start]
        tempos = [int(t) for t in p[1:h] if codec.tempo_start <= t < codec.ts_start]
        ts = [int(t) for t in p[1:h] if codec.ts_start <= t < codec.inst_start]
        if not head_insts or not tempos:
            raise UsageError("the prompt has no complete song header")
        union = sorted(set(head_insts) | set(insts))
        ts = [ts_id] if ts_id is not None else ts
        head = [codec.BOS, *lead, *(codec.inst_token(i) for i in union), tempos[0], *ts, *tail]
        return np.concatenate((np.array(head, np.int64), p[h:])), True
    if insts:
        ids = [codec.BOS, *lead, *(codec.inst_token(i) for i in insts)]
        if tempo is not None:
            ids += [codec.tempo_token(tempo), *([ts_id] if ts_id is not None else []), *tail]
        return np.array(ids, np.int64), True
    return np.array([codec.BOS, *lead], np.int64), False


def _ts_id(codec: Codec, time_signature) -> int | None:
    if time_signature is None:
        return None
    n, d = time_signature
    ts = codec.ts_token(n, d)
    if ts is None:
        raise UsageError(f"time signature {n}/{d} is not one the codec knows (1..16 over 2, 4, 8 or 16)")
    return ts


def _check_controls(codec: Codec, controls) -> list[int]:
    ids = [int(c) for c in controls or ()]
    if ids and not codec.has_controls:
        raise UsageError(f"this checkpoint's codec v{codec.version} has no control tokens")
    kinds = codec.kinds(np.array(ids, np.int64))
    if ids and not np.all((kinds >= Kind.STYLE) & (kinds <= Kind.DENSITY)):
        raise UsageError("controls must be STYLE, KEY or DENSITY token ids")
    return ids


def _check_args(num_samples, seconds, max_new_tokens, tempo, instruments):
    if int(num_samples) < 1:
        raise UsageError("num_samples must be >= 1")
    if seconds is not None and not seconds > 0:
        raise UsageError(f"seconds must be > 0, got {seconds}")
    if max_new_tokens is not None and int(max_new_tokens) < 1:
        raise UsageError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if tempo is not None and not 16 <= tempo <= 512:
        raise UsageError(f"tempo must be within 16..512 BPM, got {tempo}")
    for i in instruments or []:
        if not 0 <= int(i) <= 128:
            raise UsageError(f"instrument {i} is outside 0..128")


def generate_samples(model, codec: Codec, *, num_samples: int = 1, seconds: float | None = None,
                     max_new_tokens: int | None = None, sampling: Sampling | None = None, prompt_tokens=None,
                     instruments=None, tempo: float | None = None, device=None,
                     keep_fraction: float = KEEP_FRACTION, controls: list[int] | None = None,
                     time_signature: tuple[int, int] | None = None,
                     listener: Listener | None = None, limits: NoteLimits | None = None,
                     free_tempo: bool = False, chords=None) -> list[Sample]:
    """``generate`` with the bookkeeping the CLI reports (where the new part starts, the target).

    ``limits`` (``midigen.music.ranges.note_limits``) hold every written note to its instrument's range
    and polyphony; None writes anything. A continuation (``prompt_tokens``) keeps the song's tempo: no
    tempo change is written unless ``tempo`` asks for one or ``free_tempo`` is set. ``chords`` (a chart,
    ``midigen.music.chordtext.parse_chords``) is forced bar by bar from the bar where the new part
    starts, repeating to the end (``_force_chart``); a checkpoint without chords refuses it."""
    _check_args(num_samples, seconds, max_new_tokens, tempo, instruments)
    controls = _check_controls(codec, controls)
    need_chords(codec, chords)
    if chords is not None and time_signature is None and prompt_tokens is None:
        time_signature = (4, 4)  # the chart's bars need a meter the header states
    ts_id = _ts_id(codec, time_signature)
    if seconds is None and max_new_tokens is None:
        seconds = DEFAULT_SECONDS
    B = int(num_samples)
    dec = Decoder(model, codec, sampling or Sampling(), device=device, listener=listener, keep_fraction=keep_fraction)
    budget = int(max_new_tokens) if max_new_tokens is not None else int(seconds * TOKENS_PER_SECOND_CAP) + 256

    prefix, header_done = _prefix(codec, prompt_tokens, instruments, tempo, controls, ts_id)
    g = Grammar(codec, 1, max_header_instruments=max(1, min(16, dec.block // 8)))  # read the prompt once
    if limits is not None:
        g.hold_notes(limits.low, limits.high, limits.polyphony)
    if tempo is not None and not header_done:
        g.forced_tempo[:] = codec.tempo_token(tempo) - codec.tempo_start
    if not np.any((prefix >= codec.tempo_start) & (prefix < codec.ts_start)):
        # the header's TEMPO is still to come: force what follows it (v3's controls are in the prefix)
        g.force_header(() if codec.controls_first else controls, ts_id)
    for t in prefix:
        g.advance([t])
    if header_done:
        g.close_header()
    if prompt_tokens is not None and not free_tempo:
        g.keep_tempo()
    if prompt_tokens is not None and tempo is not None:
        g.request_tempo(codec.tempo_token(tempo) - codec.tempo_start)
    start_steps, start_seconds = int(g.steps[0]), float(g.seconds[0])
    if chords is not None:
        _force_chart(codec, g, chords, time_signature or codec.decode_events(prefix)["time_signature"], seconds, budget)
    g.set_target(seconds, budget)
    g = g.replicate(B, dec.device)
    target = float(g.target[0])

    t0 = time.perf_counter()
    seq = dec.decode(prefix, g, budget)
    took = time.perf_counter() - t0
    samples = []
    for b in range(B):
        body = seq[b, len(prefix) :]
        eos = np.flatnonzero(body == codec.EOS)
        spent = not len(eos)
        body = body[: eos[0]] if len(eos) else body
        tokens = np.concatenate((prefix, body, [codec.EOS])).astype(np.uint16)
        end = target if np.isfinite(target) else None
        samples.append(Sample(tokens, len(prefix), start_steps, start_seconds, end, spent and seconds is not None,
                              compute_seconds=took))
    return samples


def warm_up(model, codec: Codec, device=None) -> None:
    """A few tokens drawn and thrown away, so that on a CPU numba compiles the grammar step and the draw
    (``grammar_jit``, ``draw_jit``; about 9 s of CPU the first time on a machine) or loads them from its
    cache (~0.3 s) now, before anyone waits on them: a process that stays up (the studio) calls it when
    it starts. The draw's torch-ops path, which the one-call draw hands a step now and then, is warmed
    on its own (``engine.warm_up_draw_by_ops``)."""
    generate_samples(model, codec, max_new_tokens=WARM_TOKENS, sampling=Sampling(seed=0, top_p=0.95), device=device)
    if torch.device(device or next(model.parameters()).device).type == "cpu":
        warm_up_draw_by_ops()


def _force_chart(codec: Codec, g: Grammar, chart, time_signature, seconds, budget: int) -> None:
    """Force ``chart`` from the bar holding the grammar's current step, on the stream's meter, as far
    as the music can reach: the time target at the fastest tempo, or the token budget's longest shifts."""
    start = int(g.steps[0])
    reach = seconds * codec.tempo_bpm[-1] / 60 * codec.params.steps_per_quarter if seconds else budget * codec.params.max_shift
    end = start + int(min(reach, 1 << 20)) + 1
    g.force_chords(*chart_changes(chart, meter_grid(codec, time_signature, end), start, end))


def generate(model, codec: Codec, *, num_samples: int = 1, seconds: float | None = None,
             max_new_tokens: int | None = None, sampling: Sampling | None = None, prompt_tokens=None,
             instruments=None, tempo: float | None = None, device=None,
             controls: list[int] | None = None, time_signature: tuple[int, int] | None = None,
             listener: Listener | None = None) -> list[np.ndarray]:
    """Sample ``num_samples`` songs as one batch; each comes back as a uint16 token array (BOS ... EOS).

    ``seconds`` (default 30 unless ``max_new_tokens`` is given) of new music, or ``max_new_tokens`` new
    tokens, drawn as ``sampling`` says (default ``Sampling()``: a fresh seed, nothing cut).
    ``prompt_tokens`` (an encoded song) is continued verbatim; ``instruments`` (0..127, 128 =
    drums) fixes the header (joined with the prompt's); ``tempo`` sets the start tempo (with a prompt: a
    tempo change where the new part starts); ``time_signature`` (n, d) and ``controls`` (STYLE/KEY/DENSITY
    ids) go into the header (the controls right after BOS; after TEMPO [TS] for a v2 checkpoint).
    ``listener(new_tokens)`` is called after every generated token with the (B, n) tokens so far;
    returning True stops at once with ``Cancelled``. Raises UsageError on bad arguments.
    """
    return [s.tokens for s in generate_samples(
        model, codec, num_samples=num_samples, seconds=seconds, max_new_tokens=max_new_tokens,
        sampling=sampling, prompt_tokens=prompt_tokens, instruments=instruments, tempo=tempo, device=device,
        controls=controls, time_signature=time_signature, listener=listener)]


def continue_song(model, codec: Codec, score, plan: continuation.Plan, *, instruments=None, tempo=None,
                  time_signature: tuple[int, int] | None = None, **kw) -> list[tuple[Sample, object]]:
    """Continue the user's ``score`` as ``plan`` (``continuation.plan``) says: [(sample, the score written)]
    per sample, each the user's notes before the point, untouched, plus the new ones from it on.

    ``instruments`` join the song's; ``tempo`` is a change where the new part starts (or, with nothing
    before the point, its tempo: the song's there by default). ``kw``: ``generate_samples``' arguments.
    """
    insts = sorted(set(plan.instruments) | set(int(i) for i in instruments or ()))
    if plan.prompt is None:
        tempo = tempo or plan.tempo
    samples = generate_samples(model, codec, prompt_tokens=plan.prompt, instruments=insts, tempo=tempo,
                               time_signature=time_signature, **kw)
    return [(s, continuation.continued(codec, score, plan, s.tokens, s.start_index, time_signature))
            for s in samples]


# ----- scores, prompts, checks ------------------------------------------------------------------


def clip_score(score, end_seconds: float):
    """Cut notes that would sound past ``end_seconds`` so the song ends there (in place; returns it)."""
    import symusic

    end = tick_at_seconds(score, end_seconds)
    for track in score.tracks:
        if not track.note_num():
            continue
        a = track.notes.numpy()
        keep = a["time"] < end
        t = a["time"][keep]
        d = np.maximum(1, np.minimum(a["duration"][keep], end - t))
        track.notes = symusic.core.NoteTickList.from_numpy(
            t.astype(np.int32), d.astype(np.int32), a["pitch"][keep].astype(np.int8),
            a["velocity"][keep].astype(np.int8),
        )
    return score


def sample_score(codec: Codec, sample: Sample):
    """The symusic score of a sample, clipped to its time target, with no note-on while the same pitch
    still sounds on its channel (``midigen.generate.splice.settle``)."""
    score = codec.decode(sample.tokens)
    if sample.end_seconds is not None:
        clip_score(score, sample.end_seconds)
    return settle(score)


def read_prompt(codec: Codec, path):
    """The prompt MIDI file as a score; a file that cannot be read is a usage error."""
    try:
        return codec.read_midi(Path(path).read_bytes())
    except OSError as e:
        raise UsageError(f"cannot read prompt {path}: {e.strerror or e}") from None
    except CodecError as e:
        raise UsageError(f"bad prompt {path}: {e}") from None


def prompt_plan(codec: Codec, path, seconds: float | None = None, known_instruments=None,
                limits: NoteLimits | None = None) -> tuple[object, continuation.Plan]:
    """(the prompt's score, the plan continuing it from ``seconds``, or from its end). With the
    instruments the checkpoint knows and its ``limits``, the prompt is the song as the model hears it
    (``midigen.generate.hearing``); the plan's ``hearing`` says how."""
    score = read_prompt(codec, path)
    hearing = None if known_instruments is None else hearing_map(score, known_instruments, limits or note_limits(None))
    plan = continuation.plan(codec, score, seconds, hearing)
    if plan.prompt is None:
        what = f"its first {seconds:g} s have no notes" if seconds is not None else "no notes"
        raise UsageError(f"bad prompt {path}: {what}")
    return score, plan


def find_problems(codec: Codec, sample: Sample) -> list[str]:
    """Warnings for a sample that fell silent for a long time or loops on a short pattern."""
    out = []
    new = np.asarray(sample.tokens[sample.start_index :], dtype=np.int64)
    new = new[new != codec.EOS]
    ev = codec.decode_events(sample.tokens)
    n = ev["notes"]
    fresh = n["time"] >= sample.start_steps
    if not fresh.any():
        out.append("no new notes")
    else:
        order = np.argsort(n["time"], kind="stable")
        on, end = n["time"][order], (n["time"] + n["duration"])[order]
        sounding = np.maximum.accumulate(end)
        gaps = on[1:] - sounding[:-1]
        gaps = gaps[on[1:] >= sample.start_steps]
        spq = codec.params.steps_per_quarter
        first_gap = on[fresh[order]][0] - sample.start_steps
        worst = max([first_gap] + gaps.tolist())
        if worst > SILENCE_BEATS * spq:
            out.append(f"silent for {worst / spq:.0f} beats")
    for p in range(1, LOOP_PERIOD_MAX + 1):
        if len(new) <= p:
            break
        same = np.concatenate(([0], (new[p:] == new[:-p]).astype(np.int8), [0]))
        edges = np.flatnonzero(np.diff(same))
        if len(edges):
            run = int(np.max(edges[1::2] - edges[0::2])) + p
            if run >= LOOP_MIN_TOKENS:
                out.append(f"loops on a {p}-token pattern for {run} tokens")
                break
    if sample.budget_spent:
        out.append("token budget spent before the time target")
    return out


def summary(codec: Codec, sample: Sample, score, warnings=()) -> str:
    """One line: length, notes, instruments by name, how much faster than real time the new music was
    written (seconds of music per second of compute), and any warning (``find_problems``' and the
    ``warnings`` given, ``midigen.generate.checks``)."""
    secs = notes_end_seconds(score)
    notes = sum(t.note_num() for t in score.tracks)
    head = codec.decode_events(sample.tokens)["header_instruments"]
    names = ", ".join(instrument_name(i) for i in head) or "none"
    new = max(0.0, secs - sample.start_seconds)
    line = f"{secs:.1f} s"
    if sample.start_index > 1 and sample.start_seconds > 0:
        line += f" ({new:.1f} s new)"
    line += f", {notes} notes, instruments: {names}"
    if sample.compute_seconds > 0:
        line += f", realtime: {realtime(new, sample.compute_seconds):.1f}x"
    problems = list(warnings) + [p for p in find_problems(codec, sample)
                                 if not (p == "no new notes" and any(w.startswith(p) for w in warnings))]
    if problems:
        line += "; warning: " + "; ".join(problems)
    return line
