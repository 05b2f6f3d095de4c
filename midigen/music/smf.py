"""Byte-level hygiene for Standard MIDI Files before symusic parses them.

symusic trusts the lengths a file declares; these fixes make every read bounded by the bytes that
are really there, and unwrap the RIFF container some Windows tools put around MIDI.
"""
from __future__ import annotations

import struct


def sanitize_smf(data: bytes) -> bytes:
    """Clamp chunk lengths and the track count to the bytes actually present.

    symusic 0.5.9 trusts a chunk's declared length, so a truncated file (or a track claiming
    4 GiB) makes it read past the end of its buffer: the result then depends on whatever memory
    follows, and the same file can give different tokens in two runs. Clamped, every read is
    bounded by the real data and the outcome is deterministic.
    """
    return checked_smf(data)[0]


def checked_smf(data: bytes) -> tuple[bytes, str | None]:
    """(``sanitize_smf(data)``, ``truncation(data)``) from one walk over the chunks: prepare needs both
    for every file, and the two walks are the same one wherever the header is whole."""
    n = len(data)
    if n < 14 or data[:4] != b"MThd":
        return data, None
    (hlen,) = struct.unpack_from(">I", data, 4)
    if hlen < 6 or 8 + hlen > n:
        return data, truncation(data)
    out = None  # a copy, made at the first change
    pos, tracks, cut = 8 + hlen, 0, None
    while pos + 8 <= n:
        (clen,) = struct.unpack_from(">I", data, pos + 4)
        if pos + 8 + clen > n:
            cut = cut or _cut_chunk(data, pos, clen)
            clen = n - pos - 8
            out = out or bytearray(data)
            out[pos + 4 : pos + 8] = struct.pack(">I", clen)
        if data[pos : pos + 4] == b"MTrk":
            tracks += 1
        pos += 8 + clen
    if pos < n:  # a few trailing bytes that cannot hold a chunk header
        out = out or bytearray(data)
        del out[pos:]
    (declared,) = struct.unpack_from(">H", data, 10)
    if declared != tracks:
        out = out or bytearray(data)
        out[10:12] = struct.pack(">H", min(tracks, 0xFFFF))
        if tracks < declared:
            cut = cut or _cut_tracks(declared, tracks)
    return (bytes(out) if out is not None else data), cut


def _cut_chunk(data: bytes, pos: int, clen: int) -> str:
    kind = data[pos : pos + 4].decode("latin-1")
    return f"truncated: a {kind!r} chunk declares {clen} bytes, {len(data) - pos - 8} follow"


def _cut_tracks(declared: int, tracks: int) -> str:
    return f"truncated: {declared} tracks declared, {tracks} present"


def truncation(data: bytes) -> str | None:
    """Why a Standard MIDI File is cut short (a chunk declaring more bytes than follow it, or fewer
    tracks than its header declares), or None. ``sanitize_smf`` would read what is there; prepare
    skips such a file with this reason rather than keep half a song silently."""
    n = len(data)
    if n < 14 or data[:4] != b"MThd":
        return None
    (hlen,) = struct.unpack(">I", data[4:8])
    pos, tracks = 8 + hlen, 0
    while pos + 8 <= n:
        (clen,) = struct.unpack(">I", data[pos + 4 : pos + 8])
        if pos + 8 + clen > n:
            return _cut_chunk(data, pos, clen)
        tracks += data[pos : pos + 4] == b"MTrk"
        pos += 8 + clen
    (declared,) = struct.unpack(">H", data[10:12]) if 8 + hlen <= n else (tracks,)
    return _cut_tracks(declared, tracks) if tracks < declared else None


def unwrap_rmid(data: bytes) -> bytes:
    """RIFF-wrapped MIDI (.rmi, 'RIFF....RMID data....') -> the Standard MIDI File inside it."""
    if len(data) < 20 or data[:4] != b"RIFF" or data[8:12] != b"RMID":
        return data
    pos = 12
    while pos + 8 <= len(data):
        kind, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if kind == b"data":
            return data[pos + 8 : pos + 8 + size]
        pos += 8 + size + (size & 1)
    return data
