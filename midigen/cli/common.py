"""What several commands read from their flags: sampling settings, steering, instruments.

The flags themselves are defined in ``midigen.cli.main``; here they become the library's values
(``Sampling``, control ids, instrument numbers), checked by the library's own rules.
"""
from __future__ import annotations

from midigen.errors import UsageError
from midigen.generate.controls import check_instruments, instrument_words, resolve, resolve_instruments
from midigen.generate.sampling import Sampling


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
