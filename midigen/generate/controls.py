"""Resolving what a user asks for (style, key, density, meter) against what a checkpoint learned.

The vocabulary itself (what the control tokens mean, how training drops them) is data:
``midigen.music.controls``. Here a request's names become control ids, or a UsageError that lists the
names the checkpoint knows.
"""
from __future__ import annotations

from midigen.errors import UsageError
from midigen.music.codec import DENSITY_LEVELS, DRUMS, Codec, instrument_name, key_name, match_instrument, parse_key


# ----- what the user asks for ---------------------------------------------------------------------


def _one_of(what: str, value: str, valid: list[str]) -> UsageError:
    shown = ", ".join(valid) if valid else "none (this checkpoint learned no " + what + "s)"
    return UsageError(f"unknown {what} {value!r}: this checkpoint knows {shown}")


def parse_time_signature(text: str) -> tuple[int, int]:
    try:
        n, d = (int(x) for x in text.strip().split("/"))
    except ValueError:
        raise UsageError(f"bad time signature {text!r}: use N/D like 3/4 or 6/8") from None
    return n, d


def resolve(capabilities: dict, codec: Codec, style: str | None = None, key: str | None = None,
            density: str | None = None, time_signature: str | None = None) -> tuple[list[int], tuple | None]:
    """User names -> (control ids for the header, time signature or None), checked against what the
    checkpoint learned (``checkpoint.capabilities``). Unknown names are UsageErrors listing the valid ones."""
    ts = None
    if time_signature is not None:
        ts = parse_time_signature(time_signature)
        meters = capabilities.get("time_signatures", [])
        if f"{ts[0]}/{ts[1]}" not in meters:
            raise _one_of("time signature", time_signature, meters)
    if (style, key, density) == (None, None, None):
        return [], ts
    if not codec.has_controls:
        raise UsageError(f"this checkpoint (codec v{codec.version}) has no style, key or density controls; "
                         "prepare the data and train again to get them")
    ids: list[int] = []
    if style is not None:
        styles = capabilities.get("styles", [])
        names = [s.strip() for s in style.split(",") if s.strip()]
        if not names:
            raise UsageError("--style needs at least one style name")
        for s in sorted(set(names)):
            if s not in styles:
                raise _one_of("style", s, styles)
            ids.append(codec.style_token(styles.index(s)))
    if key is not None:
        keys = capabilities.get("keys", [])
        try:
            k = parse_key(key)
        except ValueError as e:
            raise UsageError(f"{e}; this checkpoint knows {', '.join(keys) or 'no keys'}") from None
        if key_name(k) not in keys:
            raise _one_of("key", key, keys)
        ids.append(codec.key_token(k))
    if density is not None:
        levels = capabilities.get("densities", [])
        if density not in levels:
            raise _one_of("density", density, levels)
        ids.append(codec.density_token(DENSITY_LEVELS.index(density)))
    return ids, ts


def instrument_words(request) -> list[str]:
    """What a user typed for instruments, word by word: a comma-separated string, or a list of such
    strings or numbers (a repeated flag, a JSON list)."""
    items = [request] if isinstance(request, (str, int)) else list(request or ())
    return [w.strip() for x in items for w in str(x).split(",") if w.strip()]


def _refusal(typed, known, owner: str) -> UsageError:
    names = ", ".join(f"{instrument_name(i)} ({i})" for i in known) or "none"
    return UsageError(f"unknown instrument {str(typed)!r}: {owner} {names}")


def resolve_instruments(request, known, owner: str = "this checkpoint knows") -> list[int]:
    """Instruments a user named -> sorted instrument numbers, each one of ``known`` (what the checkpoint
    saw in training; all of General MIDI when it records nothing). A name matches among ``known`` only,
    so 'guitar' means a guitar this checkpoint can write; anything else is a UsageError quoting what was
    typed and listing ``known`` (``owner`` says whose they are: the checkpoint's, or a song's parts)."""
    known = sorted(known) or list(range(DRUMS + 1))
    out = set()
    for word in instrument_words(request):
        i = match_instrument(word, known)
        if i is None:
            raise _refusal(word, known, owner)
        out.add(i)
    return sorted(out)


def check_instruments(capabilities: dict, instruments) -> None:
    """Refuse instruments (numbers) the checkpoint never saw: it could only write noise for them."""
    known = capabilities.get("instruments") or list(range(DRUMS + 1))
    unseen = [i for i in instruments or () if i not in known]
    if unseen:
        raise _refusal(instrument_name(unseen[0]), known, "this checkpoint knows")
