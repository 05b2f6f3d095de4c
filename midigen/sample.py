"""Generate music from a checkpoint: batched KV-cached decoding under the token grammar.

All samples of a call decode as one batch in lockstep. The KV cache makes each new token cost one
position instead of the whole context; when it fills, the context slides: the cache is rebuilt in one
forward pass from the song's header (so the model keeps knowing the instruments and the start tempo)
plus the most recent part of the song, and decoding goes on incrementally. Sampling draws from a
seeded CPU generator, so the same seed and arguments give the same files.
"""
from __future__ import annotations

import contextlib
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from midigen.codec import Codec, CodecError, instrument_name, parse_instrument
from midigen.device import best_device
from midigen.errors import Cancelled, UsageError
from midigen.grammar import Grammar

DEFAULT_SECONDS = 30.0
KEEP_FRACTION = 0.5  # share of the context kept when the window slides (the rest is recomputed later)
TOKENS_PER_SECOND_CAP = 200  # token budget per second of music when only a time target is given
REPETITION_WINDOW = 256  # recent tokens whose notes the repetition penalty discourages
SILENCE_BEATS = 8  # longer silences are reported
LOOP_PERIOD_MAX = 8  # a pattern of at most this many tokens ...
LOOP_MIN_TOKENS = 64  # ... repeated over this many tokens is reported as a loop


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


# ----- device and sampling ----------------------------------------------------------------------


def _half_dtype(device: torch.device):
    """The autocast dtype on CUDA (bf16 where supported), None elsewhere (fp32)."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(device: torch.device):
    dtype = _half_dtype(device)
    return torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _sample(logits: torch.Tensor, mask: np.ndarray, temperature: float, top_k: int | None, top_p: float | None,
            gen: torch.Generator) -> np.ndarray:
    """Draw one id per row from float32 CPU logits restricted to ``mask``."""
    allowed = torch.from_numpy(mask)
    x = logits.masked_fill(~allowed, float("-inf")) / temperature
    if top_k is not None and top_k < x.size(1):
        kth = torch.topk(x, top_k, dim=1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=1, descending=True)
        probs = torch.softmax(sorted_x, dim=1)
        before = torch.cumsum(probs, dim=1) - probs  # mass of the strictly more likely ids
        drop = before > top_p
        drop[:, 0] = False
        sorted_x = sorted_x.masked_fill(drop, float("-inf"))
        x = torch.full_like(x, float("-inf")).scatter(1, order, sorted_x)
    # inverse-CDF draw: one uniform per row; much cheaper than multinomial over a wide vocabulary
    cdf = torch.cumsum(torch.softmax(x.double(), dim=1), dim=1)
    u = torch.rand((x.size(0), 1), generator=gen, dtype=torch.float64) * cdf[:, -1:]
    tok = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=x.size(1) - 1).numpy()
    rows = np.arange(len(tok))
    bad = ~mask[rows, tok]  # only by rounding at the very top of the CDF
    if bad.any():
        tok[bad] = x[torch.from_numpy(bad)].argmax(dim=1).numpy()
    return tok


def _penalize(logits: torch.Tensor, recent: np.ndarray, codec: Codec, penalty: float) -> torch.Tensor:
    """CTRL-style penalty on the notes of the recent window only.

    Shifts, durations and tempos recur in every song by design; penalizing them would break rhythm, so
    only NOTE ids (which pitches on which instrument) are discouraged from repeating.
    """
    seen = np.zeros(logits.shape, bool)
    rows = np.repeat(np.arange(recent.shape[0]), recent.shape[1])
    seen[rows, recent.ravel()] = True
    seen[:, : codec.note_start] = False
    seen[:, codec.dv_start :] = False
    s = torch.from_numpy(seen)
    return torch.where(s, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


def _window(seq: np.ndarray, length: int, codec: Codec, size: int) -> np.ndarray:
    """(B, size) context: each row's header, then its most recent tokens."""
    B = seq.shape[0]
    out = np.empty((B, size), dtype=np.int64)
    for b in range(B):
        h = codec.header_length(seq[b, : min(length, 200)])
        if size - h < size // 4:  # an absurd header: keep recent music rather than the header
            h = 0
        out[b, :h] = seq[b, :h]
        out[b, h:] = seq[b, length - (size - h) : length]
    return out


# ----- generation -------------------------------------------------------------------------------


def _prefix(codec: Codec, prompt_tokens, instruments, tempo) -> tuple[np.ndarray, bool]:
    """The tokens every row starts from, and whether its header is already complete."""
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
        rest = [int(t) for t in p[1:h] if not codec.inst_start <= t < codec.note_start]
        if not head_insts or not rest:
            raise UsageError("the prompt has no complete song header")
        union = sorted(set(head_insts) | set(insts))
        head = [codec.BOS] + [codec.inst_token(i) for i in union] + rest
        return np.concatenate((np.array(head, np.int64), p[h:])), True
    if insts:
        ids = [codec.BOS] + [codec.inst_token(i) for i in insts]
        if tempo is not None:
            ids.append(codec.tempo_token(tempo))
        return np.array(ids, np.int64), True
    return np.array([codec.BOS], np.int64), False


def _check_args(num_samples, seconds, max_new_tokens, temperature, top_k, top_p, repetition_penalty, tempo,
                instruments):
    if int(num_samples) < 1:
        raise UsageError("num_samples must be >= 1")
    if seconds is not None and not seconds > 0:
        raise UsageError(f"seconds must be > 0, got {seconds}")
    if max_new_tokens is not None and int(max_new_tokens) < 1:
        raise UsageError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not temperature > 0:
        raise UsageError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and int(top_k) < 1:
        raise UsageError(f"top-k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise UsageError(f"top-p must be in (0, 1], got {top_p}")
    if not repetition_penalty > 0:
        raise UsageError(f"repetition penalty must be > 0, got {repetition_penalty}")
    if tempo is not None and not 16 <= tempo <= 512:
        raise UsageError(f"tempo must be within 16..512 BPM, got {tempo}")
    for i in instruments or []:
        if not 0 <= int(i) <= 128:
            raise UsageError(f"instrument {i} is outside 0..128")


@torch.inference_mode()
def generate_samples(model, codec: Codec, *, num_samples: int = 1, seconds: float | None = None,
                     max_new_tokens: int | None = None, temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None, repetition_penalty: float = 1.0, seed: int | None = None,
                     prompt_tokens=None, instruments=None, tempo: float | None = None, device=None,
                     keep_fraction: float = KEEP_FRACTION, listener=None) -> list[Sample]:
    """``generate`` with the bookkeeping the CLI reports (where the new part starts, the target).

    ``listener``, if given, is called after every new token with the (B, n) array of the tokens
    generated so far (a view: copy what you keep); returning True stops at once with ``Cancelled``.
    This is how the studio streams notes to the page and cancels a run.
    """
    _check_args(num_samples, seconds, max_new_tokens, temperature, top_k, top_p, repetition_penalty, tempo,
                instruments)
    if seconds is None and max_new_tokens is None:
        seconds = DEFAULT_SECONDS
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device).eval()
    B = int(num_samples)
    block = model.cfg.block_size
    budget = int(max_new_tokens) if max_new_tokens is not None else int(seconds * TOKENS_PER_SECOND_CAP) + 256
    seed = secrets.randbelow(2**31) if seed is None else int(seed)
    gen = torch.Generator().manual_seed(seed)

    prefix, header_done = _prefix(codec, prompt_tokens, instruments, tempo)
    g = Grammar(codec, B, max_header_instruments=max(1, min(16, block // 8)))
    if tempo is not None and not header_done:
        g.forced_tempo[:] = codec.tempo_token(tempo) - codec.tempo_start
    for t in prefix:
        g.advance(np.full(B, t))
    if header_done:
        g.close_header()
    if prompt_tokens is not None and tempo is not None:
        g.pending_tempo[:] = codec.tempo_token(tempo) - codec.tempo_start
    start_steps, start_seconds = int(g.steps[0]), float(g.seconds[0])
    g.set_target(seconds, budget)

    L = len(prefix)
    seq = np.zeros((B, L + budget + 1), dtype=np.int64)
    seq[:, :L] = prefix
    keep = max(2, min(block - 1, int(block * keep_fraction)))
    vocab = codec.vocab_size

    def forward(ids: np.ndarray, cache):
        with _autocast(device):
            logits, _ = model(torch.from_numpy(ids).to(device), cache=cache, last_only=True)
        return logits[:, -1, :vocab].float().cpu()

    cache = model.new_cache(B, dtype=_half_dtype(device))  # keys/values in the dtype autocast computes
    logits = forward(seq[:, :L] if L <= block else _window(seq, L, codec, keep), cache)
    new = 0
    while True:
        if repetition_penalty != 1.0:
            logits = _penalize(logits, seq[:, max(0, L - REPETITION_WINDOW) : L], codec, repetition_penalty)
        tok = _sample(logits, g.mask(), temperature, top_k, top_p, gen)
        seq[:, L] = tok
        L += 1
        new += 1
        g.advance(tok)
        if listener is not None and listener(seq[:, len(prefix) : L]):
            raise Cancelled("generation cancelled")
        if g.done.all() or new >= budget:
            break
        if cache.length >= block:
            cache.reset()
            logits = forward(_window(seq, L, codec, keep), cache)
        else:
            logits = forward(tok[:, None], cache)

    samples = []
    for b in range(B):
        body = seq[b, len(prefix) : L]
        eos = np.flatnonzero(body == codec.EOS)
        spent = not len(eos)
        body = body[: eos[0]] if len(eos) else body
        tokens = np.concatenate((prefix, body, [codec.EOS])).astype(np.uint16)
        end = float(g.target[b]) if np.isfinite(g.target[b]) else None
        samples.append(Sample(tokens, len(prefix), start_steps, start_seconds, end, spent and seconds is not None))
    return samples


def generate(model, codec: Codec, *, num_samples: int = 1, seconds: float | None = None,
             max_new_tokens: int | None = None, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, repetition_penalty: float = 1.0, seed: int | None = None,
             prompt_tokens=None, instruments=None, tempo: float | None = None, device=None) -> list[np.ndarray]:
    """Sample ``num_samples`` songs as one batch; each comes back as a uint16 token array (BOS ... EOS).

    ``seconds`` (default 30 unless ``max_new_tokens`` is given) of new music, or ``max_new_tokens`` new
    tokens. ``prompt_tokens`` (an encoded song) is continued verbatim; ``instruments`` (0..127, 128 =
    drums) fixes the header (joined with the prompt's); ``tempo`` sets the start tempo (with a prompt: a
    tempo change where the new part starts). Raises UsageError on bad arguments.
    """
    return [s.tokens for s in generate_samples(
        model, codec, num_samples=num_samples, seconds=seconds, max_new_tokens=max_new_tokens,
        temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty, seed=seed,
        prompt_tokens=prompt_tokens, instruments=instruments, tempo=tempo, device=device)]


# ----- scores, prompts, checks ------------------------------------------------------------------


def _tick_at(score, seconds: float) -> int:
    """The tick where ``seconds`` of the score's tempo map have passed."""
    tpq = score.ticks_per_quarter
    if len(score.tempos):
        t = score.tempos.numpy()
        order = np.argsort(t["time"], kind="stable")
        times, mspq = t["time"][order].astype(np.float64), t["mspq"][order].astype(np.float64)
    else:
        times, mspq = np.zeros(0), np.zeros(0)
    if not len(times) or times[0] > 0:  # MIDI's default tempo holds until the first change
        times, mspq = np.concatenate(([0.0], times)), np.concatenate(([500000.0], mspq))
    sec = np.concatenate(([0.0], np.cumsum(np.diff(times) * mspq[:-1] / 1e6 / tpq)))
    i = int(np.searchsorted(sec, seconds, side="right")) - 1
    return int(round(times[i] + (seconds - sec[i]) * 1e6 * tpq / mspq[i]))


def clip_score(score, end_seconds: float):
    """Cut notes that would sound past ``end_seconds`` so the song ends there (in place; returns it)."""
    import symusic

    end = _tick_at(score, end_seconds)
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
    """The symusic score of a sample, clipped to its time target."""
    score = codec.decode(sample.tokens)
    if sample.end_seconds is not None:
        clip_score(score, sample.end_seconds)
    return score


def notes_end_seconds(score) -> float:
    s = score.to("second")
    ends = [float(np.max(t.notes.numpy()["time"] + t.notes.numpy()["duration"])) for t in s.tracks if t.note_num()]
    return max(ends) if ends else 0.0


def load_prompt(codec: Codec, path, seconds: float | None = None) -> np.ndarray:
    """Encode a MIDI file (its first ``seconds``, or all of it) as a prompt; bad files are usage errors."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read prompt {path}: {e.strerror or e}") from None
    try:
        score = codec.read_midi(data)
        if seconds is not None:
            score = score.clip(0, _tick_at(score, seconds), False)
        return codec.encode_score(score)
    except CodecError as e:
        what = f"its first {seconds:g} s have no notes" if seconds is not None and "no notes" in str(e) else str(e)
        raise UsageError(f"bad prompt {path}: {what}") from None


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


def summary(codec: Codec, sample: Sample, score) -> str:
    """One line: length, notes, instruments by name, and any warning."""
    secs = notes_end_seconds(score)
    notes = sum(t.note_num() for t in score.tracks)
    head = codec.decode_events(sample.tokens)["header_instruments"]
    names = ", ".join(instrument_name(i) for i in head) or "none"
    line = f"{secs:.1f} s"
    if sample.start_index > 1 and sample.start_seconds > 0:
        line += f" ({max(0.0, secs - sample.start_seconds):.1f} s new)"
    line += f", {notes} notes, instruments: {names}"
    problems = find_problems(codec, sample)
    if problems:
        line += "; warning: " + "; ".join(problems)
    return line


# ----- the command ------------------------------------------------------------------------------


def _parse_instruments(text: str | None) -> list[int] | None:
    if text is None:
        return None
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise UsageError("--instruments needs at least one name or program number")
    try:
        return sorted(set(parse_instrument(p) for p in parts))
    except ValueError as e:
        raise UsageError(str(e)) from None


def sample_from_cli(a) -> None:
    """``midigen sample``: check every flag first, then load, generate, write and report."""
    from midigen.checkpoint import load_checkpoint
    from midigen.fsutil import atomic_write_bytes

    if a.prompt_seconds is not None and a.prompt is None:
        raise UsageError("--prompt-seconds needs --prompt")
    if a.top_p is not None and a.top_p > 1:
        raise UsageError(f"--top-p must be in (0, 1], got {a.top_p}")
    if a.tempo is not None and not 16 <= a.tempo <= 512:
        raise UsageError(f"--tempo must be within 16..512 BPM, got {a.tempo}")
    instruments = _parse_instruments(a.instruments)
    if a.prompt is not None and not Path(a.prompt).is_file():
        raise UsageError(f"prompt {a.prompt} does not exist")
    soundfont = None
    if a.wav or a.play or a.soundfont:
        from midigen.render import find_soundfont

        soundfont = find_soundfont(a.soundfont)
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is not a directory")
    device = best_device(a.device)

    model, codec, _ = load_checkpoint(a.ckpt, device)
    prompt = load_prompt(codec, a.prompt, a.prompt_seconds) if a.prompt else None
    seed = secrets.randbelow(2**31) if a.seed is None else a.seed
    seconds = a.seconds if a.seconds is not None or a.max_tokens is not None else DEFAULT_SECONDS
    samples = generate_samples(
        model, codec, num_samples=a.num_samples, seconds=seconds, max_new_tokens=a.max_tokens,
        temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, repetition_penalty=a.repetition_penalty,
        seed=seed, prompt_tokens=prompt, instruments=instruments, tempo=a.tempo, device=device,
    )

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --out {out}: {e.strerror or e}") from None
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{int(time.time() * 1000) % 1000:03d}"
    for i, s in enumerate(samples):
        score = sample_score(codec, s)
        base = out / f"{stamp}-{i}"
        atomic_write_bytes(base.with_suffix(".mid"), bytes(score.dumps_midi()))
        print(base.with_suffix(".mid"), flush=True)
        if a.wav or a.play:
            from midigen.render import write_wav

            write_wav(score, base.with_suffix(".wav"), soundfont=soundfont)
            print(base.with_suffix(".wav"), flush=True)
        if a.png:
            from midigen.render import write_piano_roll

            write_piano_roll(score, base.with_suffix(".png"), title=f"midigen sample {i} (seed {seed})")
            print(base.with_suffix(".png"), flush=True)
        print(f"sample {i}: {summary(codec, s, score)}", flush=True)
    print(f"seed {seed} (the same seed and arguments give the same files)", flush=True)
    if a.play:
        from midigen.render import play

        for i in range(len(samples)):
            if not play(out / f"{stamp}-{i}.wav"):
                break
