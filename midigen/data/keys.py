"""A song's key: from its first key signature, or estimated from its pitch classes.

The estimate is the Krumhansl-Schmuckler key finder: the duration-weighted pitch-class histogram of
the song's pitched notes is correlated with the Krumhansl-Kessler probe-tone profiles rotated to each
of the 24 keys, and the best-correlated key wins. Everything works on the song's tokens with numpy
(one pass, a few microseconds), so ``prepare`` can afford it on every file of Lakh.

Keys are numbered as the codec's KEY tokens are: tonic pitch class (0 = C) + 12 for minor.
"""
from __future__ import annotations

import math

import numpy as np

from midigen.music.codec import DRUMS, N_PITCHES, Codec, key_name

# Krumhansl & Kessler (1982), probe-tone ratings for C major and C minor (tonic first)
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def _profiles() -> np.ndarray:
    """(24, 12) z-scored profiles: row k is key k (k < 12 major on tonic k, else minor on k - 12)."""
    rows = [np.roll(MAJOR_PROFILE, k) for k in range(12)] + [np.roll(MINOR_PROFILE, k) for k in range(12)]
    p = np.array(rows)
    p -= p.mean(axis=1, keepdims=True)
    return p / np.linalg.norm(p, axis=1, keepdims=True)


_PROFILES = _profiles()


def estimate_key(histogram) -> int | None:
    """Key (0..23) best correlated with a 12-bin pitch-class histogram; None for an empty or flat one."""
    h = np.asarray(histogram, dtype=np.float64)
    h = h - h.sum() / len(h)  # the mean and the norm as numpy's mean() and linalg.norm() compute them,
    norm = math.sqrt(h.dot(h))  # without their per-call overhead (prepare calls this on every file)
    if not norm > 0:
        return None
    return int((_PROFILES @ (h / norm)).argmax())


def estimate_keys(histograms) -> list:
    """``estimate_key`` of each row of an (n, 12) array: a whole chunk of songs at once.

    One matrix product scores every row (per song, numpy's per-call overhead is most of
    ``estimate_key``'s cost, and prepare runs it on every file). The product may round differently
    from ``estimate_key``'s, so a row whose two best keys are within 1e-9 (a near tie) or whose
    histogram is flat goes through ``estimate_key`` itself: the result is exactly its, row for row."""
    h = np.asarray(histograms, dtype=np.float64).reshape(-1, 12)
    c = h - h.mean(axis=1, keepdims=True)
    norm = np.sqrt(np.einsum("ij,ij->i", c, c))
    scores = (c @ _PROFILES.T) / np.where(norm > 0, norm, 1.0)[:, None]
    two = np.partition(scores, 22, axis=1)  # [:, 22] second best, [:, 23] best
    sure = (norm > 0) & (two[:, 23] - two[:, 22] > 1e-9)
    best = scores.argmax(axis=1)
    return [int(k) if ok else estimate_key(row) for k, ok, row in zip(best, sure, h)]


def pitch_class_histogram(codec: Codec, tokens: np.ndarray) -> np.ndarray:
    """Duration-weighted (in steps) pitch-class histogram of the pitched notes in ``tokens``."""
    t = np.asarray(tokens, dtype=np.int64)
    if len(t) < 2:
        return np.zeros(12)
    note = (t[:-1] >= codec.note_start) & (t[:-1] < codec.dv_start) & (t[1:] >= codec.dv_start) & (t[1:] < codec.dv_end)
    idx = np.flatnonzero(note)
    inst, pitch = np.divmod(t[idx] - codec.note_start, N_PITCHES)
    pitched = inst != DRUMS
    dur = codec.durations[(t[idx + 1] - codec.dv_start) // codec.params.velocity_levels]
    return np.bincount(pitch[pitched] % 12, weights=dur[pitched], minlength=12)


def signature_key(sharps: int, minor: bool) -> int:
    """Key (0..23) of a MIDI key signature: ``sharps`` > 0 sharps, < 0 flats; ``minor`` its mode."""
    major_tonic = (7 * int(sharps)) % 12  # each sharp moves the major tonic up a fifth
    return (major_tonic + 9) % 12 + 12 if minor else major_tonic


def score_signature_key(score) -> int | None:
    """Key of a symusic Score's first key signature (the earliest in time), None when it has none."""
    sigs = score.key_signatures
    if not len(sigs):
        return None
    a = sigs.numpy()
    i = int(np.argmin(a["time"]))
    sharps = int(a["key"][i])
    if not -7 <= sharps <= 7:
        return None  # a broken key signature says nothing
    return signature_key(sharps, bool(a["tonality"][i]))


def song_key(codec: Codec, score, tokens, histogram=None) -> tuple[str | None, str | None]:
    """(key name like 'D major', 'signature' or 'estimated') for one song; (None, None) when unknown.

    ``histogram``: the tokens' ``pitch_class_histogram`` when the caller has it already (the
    compiled encoder gathers it while encoding), else it is computed here."""
    k = score_signature_key(score) if score is not None else None
    if k is not None:
        return key_name(k), "signature"
    k = estimate_key(pitch_class_histogram(codec, tokens) if histogram is None else histogram)
    return (key_name(k), "estimated") if k is not None else (None, None)
