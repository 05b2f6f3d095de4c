"""``midigen infill`` and ``midigen arrange``: check every flag and the input first, then load, write
the edits (``midigen.generate.edit``), and report one JSON line per file written."""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

from midigen.cli.common import chord_flags, instruments_flag, sampling_flags, steering_flags
from midigen.device import best_device
from midigen.errors import UsageError
from midigen.fsutil import atomic_write_bytes
from midigen.generate.checks import edit_warnings, redraw
from midigen.generate.edit import arrange_edits, infill_edits
from midigen.generate.form import VARY_SHARE, like_edits, named_section
from midigen.generate.hearing import heard_as, hearing_note
from midigen.generate.render import find_soundfont, play, write_piano_roll
from midigen.generate.sampling import VARY_WEIGHT
from midigen.generate.synth import Renderer, wav_beside
from midigen.model.checkpoint import capabilities, checkpoint_limits, load_checkpoint
from midigen.music.codec import Codec, CodecError, instrument_name, score_instruments
from midigen.music.timing import bar_tick, seconds_at_tick


def parse_bars(text: str) -> tuple[int, int]:
    """'9-12' -> (9, 12); '5' -> (5, 5)."""
    parts = text.split("-")
    try:
        a, b = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (None, None)
    except ValueError:
        a = b = None
    if a is None or a < 1 or b < a:
        raise UsageError(f"--bars wants FIRST-LAST counted from 1 (like 9-12), got {text!r}")
    return a, b


def _read_song(codec: Codec, path):
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"song {p} does not exist")
    try:
        score = codec.read_midi(p.read_bytes())
    except OSError as e:
        raise UsageError(f"cannot read {p}: {e.strerror or e}") from None
    except CodecError as e:
        raise UsageError(f"bad song {p}: {e}") from None
    if not any(t.note_num() for t in score.tracks):
        raise UsageError(f"bad song {p}: no notes")
    return score


def _check_out(a) -> None:
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is not a directory")


def _load(a):
    """(model, codec, device, soundfont, capabilities, limits) of a checkpoint that can edit; ``limits``: its
    instrument ranges and polyphony (None with ``--free-range``)."""
    soundfont = find_soundfont(getattr(a, "soundfont", None)) if a.wav or a.play else None
    device = best_device(getattr(a, "device", None))
    model, codec, config = load_checkpoint(a.ckpt, device, precision=a.precision)
    caps = capabilities(config, codec)
    if not caps["can_edit"]:
        raise UsageError(f"checkpoint {a.ckpt} was trained without the editing objective "
                           "(edit_fraction = 0): it cannot infill or arrange")
    return model, codec, device, soundfont, caps, None if a.free_range else checkpoint_limits(config)


def free_base(out: Path, name: str) -> Path:
    """``out/name``, or ``out/name-2``, ``-3``, ... : the first base no .mid, .wav or .png uses yet, so an
    edit never overwrites an earlier one."""
    base, n = out / name, 1
    while any(Path(f"{base}{x}").exists() for x in (".mid", ".wav", ".png")):
        n += 1
        base = out / f"{name}-{n}"
    return base


def _write(a, edits: list, task: str, soundfont) -> None:
    """Each edit's MIDI (+ WAV, PNG) written atomically under a name no earlier file has, one JSON line
    per file (``heard_as``: the song's instruments the model heard as another, or not at all: null;
    ``heard``: the same in words): ``SONG-infill-STARTMS-ENDMSms-SEED-I`` or ``SONG-arrange-SEED-I``
    (SEED: the seed that gives that result again; ``-2``, ``-3``... added when the name is taken)."""
    out = Path(a.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --out {out}: {e.strerror or e}") from None
    stem = Path(a.song).stem
    renderer = Renderer(soundfont) if a.wav or a.play else None
    wavs = []
    for i, (e, seed, row, warnings) in enumerate(edits):
        span = "-".join(str(round(x * 1000)) for x in e.span_seconds) + "ms-" if task == "infill" else ""
        base = free_base(out, f"{stem}-{task}-{span}{seed}-{i}")
        info = {"sample": i, "seed": seed, "row": row, "task": task,
                "span_seconds": [round(x, 3) for x in e.span_seconds],
                "instruments": [instrument_name(t) for t in e.targets],
                "notes_written": e.written, "notes_removed": e.removed, "realtime": round(e.realtime, 2),
                "warnings": warnings, "heard_as": heard_as(e.hearing), "heard": hearing_note(e.hearing)}
        midi = Path(f"{base}.mid")
        atomic_write_bytes(midi, bytes(e.score.dumps_midi()))
        print(json.dumps({"file": str(midi), "kind": "midi", **info}), flush=True)  # before a render can fail
        files = []
        if renderer is not None and (wav := wav_beside(renderer, e.score, midi)):
            files.append((wav, "wav"))
            wavs.append(wav)
        if a.png:
            title = f"midigen {task} {i} (seed {seed}): " + ", ".join(info["instruments"])
            files.append((write_piano_roll(e.score, Path(f"{base}.png"), title=title,
                                           highlight=(e.span_seconds, e.targets)), "png"))
        for path, kind in files:
            print(json.dumps({"file": str(path), "kind": kind, **info}), flush=True)
    if renderer is not None:
        renderer.close()
    if a.play:
        for wav in wavs:
            if not play(wav):
                break


def _redrawn(a, score, task: str, edit_with, sampling, device) -> list:
    """``edit_with(num_samples=, sampling=, device=)`` for ``--num-samples``, each empty result drawn again
    with the next seeds (``--retry``)."""
    def draw(seed: int, n: int) -> list:
        return edit_with(num_samples=n, sampling=replace(sampling, seed=seed), device=device)

    return redraw(draw, lambda e: edit_warnings(score, e, task), sampling.seed, a.num_samples, a.retry)


def _check_span_flags(a) -> None:
    given = [f for f, v in (("--start/--end", a.start if a.start is not None else a.end), ("--bars", a.bars),
                            ("--section", a.section)) if v is not None]
    if len(given) > 1:
        raise UsageError(f"give the span one way: {' or '.join(given)}, not both")
    if not given or (a.bars is None and a.section is None and (a.start is None or a.end is None)):
        raise UsageError("infill needs a span: --start S --end E (seconds), --bars A-B or --section NAME")
    if a.vary is not None and a.like is None:
        raise UsageError("--vary needs --like")
    if a.like is not None and a.bars is None and a.section is None:
        raise UsageError("--like needs the span as --bars or --section")
    if a.vary is not None and not 0 < a.vary <= 1:
        raise UsageError(f"--vary must be in (0, 1], got {a.vary}")


def _span_ticks(score, text: str | None, bars: str | None) -> tuple[int, int]:
    """The ticks of bars ``A-B`` or of the section a marker names."""
    if bars is not None:
        first, last = parse_bars(bars)
        return bar_tick(score, first), bar_tick(score, last + 1)
    return named_section(score, text)


def infill(a) -> None:
    """``midigen infill``: rewrite a span of a song (seconds, bars or a marked section), for all or some
    instruments; with ``--like``, as a variation of another span (``midigen.generate.form.like_edits``)."""
    sampling = sampling_flags(a)
    _check_out(a)
    _check_span_flags(a)
    chart, _ = chord_flags(a)
    if chart is not None and a.like is not None:
        raise UsageError("--chords does not go with --like yet: a variation keeps its section's own harmony")
    score = _read_song(Codec(), a.song)
    target = _span_ticks(score, a.section, a.bars) if a.bars is not None or a.section is not None else None
    source = None
    if a.like is not None:
        source = _span_ticks(score, a.like, a.like if re.fullmatch(r"[0-9]+(-[0-9]+)?", a.like.strip()) else None)
    model, codec, device, soundfont, caps, limits = _load(a)
    instruments = instruments_flag(a.instruments, caps["instruments"], "--instruments")
    controls, _ = steering_flags(a, caps, codec, instruments or score_instruments(score))
    if source is not None:
        edits = _redrawn(a, score, "infill", lambda **kw: like_edits(
            model, codec, score, source=source, target=target, vary=VARY_SHARE if a.vary is None else a.vary,
            instruments=instruments, controls=controls, limits=limits, **kw),
            replace(sampling, vary_weight=VARY_WEIGHT), device)  # a variation leans toward its model
        _write(a, edits, "infill", soundfont)
        return
    start, end = (a.start, a.end) if target is None else (float(x) for x in seconds_at_tick(score, list(target)))
    edits = _redrawn(a, score, "infill", lambda **kw: infill_edits(
        model, codec, score, start_s=start, end_s=end, instruments=instruments, controls=controls, limits=limits,
        known_instruments=caps["instruments"], chords=chart, free_chords=a.free_chords, **kw), sampling, device)
    _write(a, edits, "infill", soundfont)


def arrange(a) -> None:
    """``midigen arrange``: write parts for ``--add`` over the whole song, keeping ``--keep``."""
    sampling = sampling_flags(a)
    _check_out(a)
    chart, _ = chord_flags(a)
    score = _read_song(Codec(), a.song)
    model, codec, device, soundfont, caps, limits = _load(a)
    add = instruments_flag(a.add, caps["instruments"], "--add")
    keep = instruments_flag(a.keep, score_instruments(score), "--keep", owner="the song has")
    controls, _ = steering_flags(a, caps, codec, add)
    edits = _redrawn(a, score, "arrange", lambda **kw: arrange_edits(
        model, codec, score, add=add, keep=keep, controls=controls, limits=limits,
        known_instruments=caps["instruments"], chords=chart, free_chords=a.free_chords, **kw), sampling, device)
    _write(a, edits, "arrange", soundfont)
