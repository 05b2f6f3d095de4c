"""``midigen sample --form``: check every flag first, then load, write each song of the form
(``midigen.generate.form``), and report one JSON line per song."""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from midigen.cli.common import instruments_flag, sampling_flags, steering_flags
from midigen.device import best_device
from midigen.errors import UsageError
from midigen.fsutil import atomic_write_bytes
from midigen.generate.controls import resolve
from midigen.generate.form import (VARY_SHARE, form_summary, parse_form, parse_form_chords, parse_section_controls,
                                   section_bands, write_form)
from midigen.generate.harmony import need_chords
from midigen.generate.render import find_soundfont, play, write_piano_roll
from midigen.generate.sampling import KEY_WEIGHT, VARY_WEIGHT
from midigen.generate.synth import Renderer, wav_beside
from midigen.model.checkpoint import capabilities, checkpoint_limits, load_checkpoint


def check_form_flags(a) -> list:
    """The form's sections; refuses the flags a form cannot take, and --vary/--section without --form."""
    if a.form is None:
        weights = (getattr(a, f, None) for f in ("key_weight", "vary_weight"))
        if a.vary is not None or a.section or any(w is not None for w in weights):
            raise UsageError("--vary, --section, --key-weight and --vary-weight need --form")
        return []
    for flag, value in (("--prompt", a.prompt), ("--seconds", a.seconds), ("--max-tokens", a.max_tokens),
                        ("--free-tempo", a.free_tempo or None)):
        if value is not None:
            raise UsageError(f"--form sets the song's length and writes it from nothing: it takes no {flag}")
    if getattr(a, "chords_from", None):
        raise UsageError("--form takes --chords (a chart, or one per section: 'A: C G Am F | B: F G C C'), "
                         "not --chords-from")
    if a.vary is not None and not 0 < a.vary <= 1:
        raise UsageError(f"--vary must be in (0, 1], got {a.vary}")
    return parse_form(a.form)


def form_charts(a, sections) -> dict:
    """--chords with --form (its text, or ``@FILE``'s) -> label -> chart (``parse_form_chords``)."""
    text = getattr(a, "chords", None)
    if text is None:
        return {}
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read chord chart {text[1:]}: {getattr(e, 'strerror', None) or e}") from None
    return parse_form_chords(text, sections)


def _section_controls(a, caps: dict, codec, sections, whole: list[int]) -> dict:
    """label -> control ids: the whole song's (key "") and each --section's, its names on top of the
    song's --style/--key/--density."""
    labels = {s.label for s in sections}
    out = {"": whole}
    for text in a.section or ():
        label, names = parse_section_controls(text)
        if label not in labels:
            raise UsageError(f"--section {label}: the form has no section {label} (it has {', '.join(sorted(labels))})")
        asked = {"style": a.style, "key": a.key, "density": a.density, **names}
        out[label], _ = resolve(caps, codec, **asked)
    return out


def sample_form(a) -> None:
    """``midigen sample --form``: ``--num-samples`` songs, seeds ``--seed``, ``--seed`` + 1, ..."""
    sections = check_form_flags(a)
    charts = form_charts(a, sections)
    sampling = replace(sampling_flags(a), key_weight=KEY_WEIGHT if a.key_weight is None else a.key_weight,
                       vary_weight=VARY_WEIGHT if a.vary_weight is None else a.vary_weight)
    if a.tempo is not None and not 16 <= a.tempo <= 512:
        raise UsageError(f"--tempo must be within 16..512 BPM, got {a.tempo}")
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is not a directory")
    soundfont = find_soundfont(a.soundfont) if a.wav or a.play or a.soundfont else None
    device = best_device(a.device)
    model, codec, config = load_checkpoint(a.ckpt, device, precision=a.precision)
    caps = capabilities(config, codec)
    need_chords(codec, next(iter(charts.values()), None))
    if not caps["can_edit"]:
        raise UsageError(f"checkpoint {a.ckpt} was trained without the editing objective: it cannot write a form")
    instruments = instruments_flag(a.instruments, caps["instruments"], "--instruments")
    whole, time_signature = steering_flags(a, caps, codec, instruments)
    controls = _section_controls(a, caps, codec, sections, whole)
    limits = None if a.free_range else checkpoint_limits(config)
    renderer = Renderer(soundfont) if a.wav or a.play else None
    if renderer is not None:
        renderer.start()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --out {out}: {e.strerror or e}") from None
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{int(time.time() * 1000) % 1000:03d}"
    wavs = []
    try:
        for i in range(a.num_samples):
            song = write_form(model, codec, sections, sampling=replace(sampling, seed=sampling.seed + i),
                              tempo=a.tempo, time_signature=time_signature, instruments=instruments, controls=controls,
                              vary=VARY_SHARE if a.vary is None else a.vary, device=device, limits=limits,
                              charts=charts)
            wavs += _write_song(a, out / f"{stamp}-{i}", song, i, renderer)
    finally:
        if renderer is not None:
            renderer.close()
    print(f"seed {sampling.seed} (the same seed and arguments give the same files; song i has seed + i)", flush=True)
    if a.play:
        for wav in wavs:
            if not play(wav):
                break


def _write_song(a, base: Path, song, i: int, renderer) -> list:
    """The song's MIDI (+ WAV, PNG with the sections shaded) written atomically, each path printed, then
    its JSON summary line. Returns the WAVs written."""
    midi = base.with_suffix(".mid")
    atomic_write_bytes(midi, bytes(song.score.dumps_midi()))
    print(midi, flush=True)
    files = {"midi": str(midi)}
    wavs = []
    if renderer is not None and (wav := wav_beside(renderer, song.score, midi)):
        print(wav, flush=True)
        files["wav"] = str(wav)
        wavs.append(wav)
    if a.png:
        png = write_piano_roll(song.score, base.with_suffix(".png"), sections=section_bands(song, song.sections),
                               title=f"midigen form {i} (seed {song.seed}): {a.form}")
        print(png, flush=True)
        files["png"] = str(png)
    print(json.dumps({"sample": i, **files, **form_summary(song)}), flush=True)
    return wavs
