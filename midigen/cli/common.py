"""What several commands read from their flags: sampling settings, steering, instruments.

The flags themselves are defined in ``midigen.cli.main``; here they become the library's values
(``Sampling``, control ids, instrument numbers), checked by the library's own rules.
"""
from __future__ import annotations

from pathlib import Path

from midigen.errors import UsageError
from midigen.generate.controls import check_instruments, instrument_words, resolve, resolve_instruments
from midigen.generate.sampling import Sampling
from midigen.music.chords import ChordError, label_chords
from midigen.music.chordtext import ChordSymbol, read_chord_text
from midigen.music.codec import Codec, CodecError
from midigen.music.timing import meters


def sampling_flags(a) -> Sampling:
    """--temperature/--top-k/--top-p/--repetition-penalty/--seed (a seed is drawn when none is given)."""
    return Sampling(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                    repetition_penalty=getattr(a, "repetition_penalty", 1.0), seed=a.seed)


def steering_flags(a, caps: dict, codec, instruments=None) -> tuple[list[int], tuple | None]:
    """--style/--key/--density/--time-signature -> (control ids, meter), checked against the checkpoint's
    ``capabilities``, as are the ``instruments`` to be written."""
    check_instruments(caps, instruments)
    return resolve(caps, codec, style=getattr(a, "style", None), key=getattr(a, "key", None),
                   density=getattr(a, "density", None), time_signature=getattr(a, "time_signature", None))


def instruments_flag(value, known, flag: str, owner: str = "this checkpoint knows") -> list[int] | None:
    """A repeatable, comma-separated instrument flag -> instrument numbers among ``known``; None when the
    flag was not given."""
    if value is None:
        return None
    if not instrument_words(value):
        raise UsageError(f"{flag} needs at least one name or program number")
    return resolve_instruments(value, known, owner=owner)


def chord_flags(a) -> tuple[list | None, tuple[int, int] | None]:
    """--chords/--chords-from (/--free-chords) -> (the chart or None, the meter of a --chords-from song).

    A song's chart is its labelled chords beat by beat (each bar a list of its beats' chords, so the
    chart's equal shares are its beats) on its own bars; its first meter comes with it."""
    given = [f for f in ("chords", "chords_from") if getattr(a, f, None) is not None]
    if len(given) > 1:
        raise UsageError("give --chords or --chords-from, not both")
    if given and getattr(a, "free_chords", False):
        raise UsageError("--free-chords lets the model choose the chords: it takes no --chords or --chords-from")
    if getattr(a, "chords", None) is not None:
        return read_chord_text(a.chords), None
    if getattr(a, "chords_from", None) is None:
        return None, None
    path = Path(a.chords_from)
    try:
        score = Codec().read_midi(path.read_bytes())
        song = label_chords(score)
    except OSError as e:
        raise UsageError(f"cannot read --chords-from {path}: {e.strerror or e}") from None
    except (CodecError, ChordError) as e:
        raise UsageError(f"bad --chords-from {path}: {e}") from None
    if not len(song.labels):
        raise UsageError(f"--chords-from {path} has no notes to read chords from")
    bars = [[] for _ in range(int(song.grid.bars[-1]) + 1)]
    for bar, label in zip(song.grid.bars, song.labels):
        bars[bar].append(ChordSymbol(int(label)))
    return [b for b in bars if b], tuple(meters(score)[0][1:])
