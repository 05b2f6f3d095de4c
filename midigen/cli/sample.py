"""``midigen sample``: check every flag first, then load, generate, write and report."""
from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

from midigen.cli.common import chord_flags, instruments_flag, sampling_flags, steering_flags
from midigen.cli.form import sample_form
from midigen.device import best_device
from midigen.errors import UsageError
from midigen.fsutil import atomic_write_bytes
from midigen.generate.checks import redraw, sample_warnings
from midigen.generate.harmony import need_chords
from midigen.generate.hearing import hearing_note
from midigen.generate.render import find_soundfont, play, write_piano_roll
from midigen.generate.sample import (DEFAULT_SECONDS, continue_song, generate_samples, prompt_plan, sample_score,
                                     summary)
from midigen.generate.synth import Renderer, wav_beside
from midigen.music.ranges import learned_tempo_changes
from midigen.model.checkpoint import capabilities, checkpoint_limits, load_checkpoint, recorded_ranges


def _check_flags(a) -> None:
    if a.prompt_seconds is not None and a.prompt is None:
        raise UsageError("--prompt-seconds needs --prompt")
    if a.free_tempo and a.prompt is None:
        raise UsageError("--free-tempo needs --prompt (without one the model chooses its tempo changes anyway)")
    if a.tempo is not None and not 16 <= a.tempo <= 512:
        raise UsageError(f"--tempo must be within 16..512 BPM, got {a.tempo}")
    if a.prompt is not None and not Path(a.prompt).is_file():
        raise UsageError(f"prompt {a.prompt} does not exist")
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is not a directory")


def sample(a) -> None:
    """``midigen sample`` (with ``--form``: ``midigen.cli.form``)."""
    if a.form is not None or a.vary is not None or a.section or a.key_weight is not None or a.vary_weight is not None:
        sample_form(a)
        return
    sampling = sampling_flags(a)
    _check_flags(a)
    chart, chart_meter = chord_flags(a)
    soundfont = find_soundfont(a.soundfont) if a.wav or a.play or a.soundfont else None
    device = best_device(a.device)
    model, codec, config = load_checkpoint(a.ckpt, device, precision=a.precision)
    caps = capabilities(config, codec)
    instruments = instruments_flag(a.instruments, caps["instruments"], "--instruments")
    controls, time_signature = steering_flags(a, caps, codec, instruments)
    need_chords(codec, chart)
    if chart_meter is not None and time_signature is None and a.prompt is None:
        time_signature = chart_meter  # --chords-from: its bars, in its meter
    limits = None if a.free_range else checkpoint_limits(config)
    free_tempo = a.free_tempo and learned_tempo_changes(recorded_ranges(config)) is not False
    if a.free_tempo and not free_tempo:
        print("note: --free-tempo: this model's training data never changed tempo within a song; "
              "the song's tempo is kept", file=sys.stderr, flush=True)
    song, plan = (prompt_plan(codec, a.prompt, a.prompt_seconds, caps["instruments"], checkpoint_limits(config))
                  if a.prompt else (None, None))
    renderer = Renderer(soundfont) if a.wav or a.play else None  # its child starts while the model samples
    if renderer is not None:
        renderer.start()
    seconds = a.seconds if a.seconds is not None or a.max_tokens is not None else DEFAULT_SECONDS
    kw = dict(seconds=seconds, max_new_tokens=a.max_tokens, instruments=instruments, tempo=a.tempo, device=device,
              controls=controls, time_signature=time_signature, limits=limits, free_tempo=free_tempo, chords=chart)

    def draw(seed: int, n: int) -> list:
        s = replace(sampling, seed=seed)
        if plan is not None:
            return continue_song(model, codec, song, plan, num_samples=n, sampling=s, **kw)
        return [(x, sample_score(codec, x)) for x in generate_samples(model, codec, num_samples=n, sampling=s, **kw)]

    def warnings_of(result) -> list[str]:
        s, score = result
        return sample_warnings(score, s.start_seconds if plan is not None else 0.0, s.end_seconds, instruments)

    results = redraw(draw, warnings_of, sampling.seed, a.num_samples, a.retry)
    try:
        _write(a, codec, results, sampling.seed, renderer, hearing_note(plan.hearing) if plan is not None else None,
               chart if plan is None else None)
    finally:
        if renderer is not None:
            renderer.close()


def _write(a, codec, results: list, first_seed: int, renderer: Renderer | None, heard: str | None = None,
           chart=None) -> None:
    """Each sample's MIDI (+ WAV, PNG) written atomically, its path and a summary printed (with the
    seed that gives it again, and its warnings), then how the model heard the prompt (``heard``, if it
    heard an instrument as another or left one out). ``chart``: the chords asked for from bar 1, drawn
    in the PNG's chord lane (else the lane shows what the labeller hears)."""
    out = Path(a.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --out {out}: {e.strerror or e}") from None
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{int(time.time() * 1000) % 1000:03d}"
    for i, ((s, score), seed, row, warnings) in enumerate(results):
        base = out / f"{stamp}-{i}"
        atomic_write_bytes(base.with_suffix(".mid"), bytes(score.dumps_midi()))
        print(base.with_suffix(".mid"), flush=True)
        if renderer is not None and (wav := wav_beside(renderer, score, base.with_suffix(".mid"))):
            print(wav, flush=True)
        if a.png:
            write_piano_roll(score, base.with_suffix(".png"), title=f"midigen sample {i} (seed {seed})", chords=chart)
            print(base.with_suffix(".png"), flush=True)
        again = "" if seed == first_seed else f" (redrawn: seed {seed} with --num-samples 1 gives it)"
        print(f"sample {i}: {summary(codec, s, score, warnings)}{again}", flush=True)
    if heard:
        print(f"heard: {heard}", flush=True)
    print(f"seed {first_seed} (the same seed and arguments give the same files)", flush=True)
    if a.play:
        for i in range(len(results)):
            if not play(out / f"{stamp}-{i}.wav"):
                break
