"""Edit a song with a checkpoint: ``midigen infill`` and ``midigen arrange``.

The library functions (``infill``, ``arrange``, ``bars_to_seconds``) live in ``midigen.generate.edit``
and are re-exported here; this module adds the two commands' handlers: check every flag and the input
first, then load, write the edits, and report one JSON line per file written.
"""
from __future__ import annotations

import json
import secrets
from pathlib import Path

from midigen.music.codec import Codec, CodecError, instrument_name
from midigen.errors import MidigenError, UsageError
from midigen.generate.edit import (Edit, arrange, arrange_edits, bars_to_seconds, infill,  # noqa: F401
                                   infill_edits, instruments_of_score)

__all__ = ["infill", "arrange", "bars_to_seconds", "infill_from_cli", "arrange_from_cli"]


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


def _instrument_list(text: str | None, flag: str) -> list[int] | None:
    from midigen.music.codec import parse_instrument

    if text is None:
        return None
    parts = [p for p in text.split(",") if p.strip()]
    try:
        return sorted({parse_instrument(p) for p in parts})
    except ValueError as e:
        raise UsageError(f"{flag}: {e}") from None


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


def _check_flags(a) -> None:
    if a.top_p is not None and a.top_p > 1:
        raise UsageError(f"--top-p must be in (0, 1], got {a.top_p}")
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is not a directory")


def _load(a, wanted: list[int]):
    """(model, codec, device, soundfont, controls, limits) once the checkpoint is known to edit and to know
    ``wanted``; ``controls`` are the ids of ``--style/--key/--density`` (checked against what it learned)."""
    from midigen.model.checkpoint import capabilities, checkpoint_limits, load_checkpoint
    from midigen.device import best_device

    soundfont = None
    if a.wav or a.play:
        from midigen.generate.render import find_soundfont

        soundfont = find_soundfont(getattr(a, "soundfont", None))
    device = best_device(getattr(a, "device", None))
    model, codec, config = load_checkpoint(a.ckpt, device)
    caps = capabilities(config, codec)
    if not caps["can_edit"]:
        raise MidigenError(f"checkpoint {a.ckpt} was trained without the editing objective "
                           "(edit_fraction = 0): it cannot infill or arrange")
    unknown = [i for i in wanted if i not in caps["instruments"]]
    if unknown:
        raise UsageError("the model never saw " + ", ".join(instrument_name(i) for i in unknown)
                         + " in training: choose among " + ", ".join(instrument_name(i) for i in caps["instruments"]))
    from midigen.generate.controls import from_cli

    controls, _ = from_cli(a, config, codec)
    limits = None if a.free_range else checkpoint_limits(config)
    return model, codec, device, soundfont, controls, limits


def _write(a, edits: list[Edit], task: str, seed: int, soundfont) -> None:
    """Each edit's MIDI (+ WAV, PNG) written atomically, one JSON line per file."""
    from midigen.fsutil import atomic_write_bytes

    out = Path(a.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --out {out}: {e.strerror or e}") from None
    stem = Path(a.song).stem
    for i, e in enumerate(edits):
        base = out / f"{stem}-{task}-{seed}-{i}"
        info = {"sample": i, "seed": seed, "task": task,
                "span_seconds": [round(x, 3) for x in e.span_seconds],
                "instruments": [instrument_name(t) for t in e.targets],
                "notes_written": e.written, "notes_removed": e.removed}
        files = [(base.with_suffix(".mid"), "midi")]
        atomic_write_bytes(files[0][0], bytes(e.score.dumps_midi()))
        if a.wav or a.play:
            from midigen.generate.render import write_wav

            files.append((write_wav(e.score, base.with_suffix(".wav"), soundfont=soundfont), "wav"))
        if a.png:
            from midigen.generate.render import write_piano_roll

            title = f"midigen {task} {i} (seed {seed}): " + ", ".join(info["instruments"])
            files.append((write_piano_roll(e.score, base.with_suffix(".png"), title=title,
                                           highlight=(e.span_seconds, e.targets)), "png"))
        for path, kind in files:
            print(json.dumps({"file": str(path), "kind": kind, **info}), flush=True)
    if a.play:
        from midigen.generate.render import play

        for i in range(len(edits)):
            if not play(out / f"{stem}-{task}-{seed}-{i}.wav"):
                break


def _sampling(a, seed: int, device) -> dict:
    return dict(num_samples=a.num_samples, seed=seed, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                device=device)


def infill_from_cli(a) -> None:
    """``midigen infill``: rewrite a span of a song (seconds or bars), for all or some instruments."""
    _check_flags(a)
    if a.bars is not None and (a.start is not None or a.end is not None):
        raise UsageError("give the span as --start/--end (seconds) or as --bars, not both")
    if a.bars is None and (a.start is None or a.end is None):
        raise UsageError("infill needs a span: --start S --end E (seconds) or --bars A-B")
    bars = parse_bars(a.bars) if a.bars is not None else None
    instruments = _instrument_list(a.instruments, "--instruments")
    score = _read_song(Codec(), a.song)
    model, codec, device, soundfont, controls, limits = _load(a, instruments or instruments_of_score(score))
    start, end = bars_to_seconds(score, *bars) if bars else (a.start, a.end)
    seed = secrets.randbelow(2**31) if a.seed is None else a.seed
    edits = infill_edits(model, codec, score, start_s=start, end_s=end, instruments=instruments,
                         controls=controls, limits=limits, **_sampling(a, seed, device))
    _write(a, edits, "infill", seed, soundfont)


def arrange_from_cli(a) -> None:
    """``midigen arrange``: write parts for ``--add`` over the whole song, keeping ``--keep``."""
    _check_flags(a)
    add = _instrument_list(a.add, "--add")
    if not add:
        raise UsageError("--add needs at least one name or program number")
    keep = _instrument_list(a.keep, "--keep") if a.keep is not None else None
    score = _read_song(Codec(), a.song)
    model, codec, device, soundfont, controls, limits = _load(a, add)
    seed = secrets.randbelow(2**31) if a.seed is None else a.seed
    edits = arrange_edits(model, codec, score, add=add, keep=keep, controls=controls, limits=limits,
                          **_sampling(a, seed, device))
    _write(a, edits, "arrange", seed, soundfont)
