"""Broken and hostile MIDI inputs, written by hand so each one hits a specific failure mode.

``write_hostile(folder)`` returns {file name: what prepare must do}: "skip" (skipped, with a reason),
"keep" (a valid song inside a hostile wrapper) or "any" (skipping or keeping are both fine, as
long as the run goes on).
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import symusic

from songgen import make_song_bytes


def vlq(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def chunk(kind: bytes, body: bytes, claimed: int | None = None) -> bytes:
    return kind + struct.pack(">I", len(body) if claimed is None else claimed) + body


def smf(tracks: list[bytes], fmt: int = 1, division: int = 480) -> bytes:
    head = chunk(b"MThd", struct.pack(">HHH", fmt, len(tracks), division))
    return head + b"".join(chunk(b"MTrk", t) for t in tracks)


def note_track(notes, channel: int = 0) -> bytes:
    """notes: (start tick, length, pitch); absolute ticks -> a track body with end-of-track."""
    ev = []
    for t, d, p in notes:
        ev.append((t, 1, bytes([0x90 | channel, p, 100])))
        ev.append((t + d, 0, bytes([0x80 | channel, p, 0])))
    ev.sort(key=lambda e: (e[0], e[1]))
    body, now = b"", 0
    for t, _, msg in ev:
        body += vlq(t - now) + msg
        now = t
    return body + b"\x00\xff\x2f\x00"


def scale_notes(n: int = 16, start: int = 0, step: int = 240):
    return [(start + i * step, step, 60 + i % 12) for i in range(n)]


def many_notes_bytes(n: int = 300_000) -> bytes:
    score = symusic.Score(480)
    tr = symusic.Track("many", 0, False)
    t = np.arange(n, dtype=np.int32) * 10
    tr.notes = symusic.core.NoteTickList.from_numpy(
        t, np.full(n, 10, np.int32), (40 + np.arange(n) % 48).astype(np.int8), np.full(n, 90, np.int8)
    )
    score.tracks.append(tr)
    return bytes(score.dumps_midi())


def write_hostile(folder) -> dict[str, str]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    good = make_song_bytes(1234)
    rng = np.random.default_rng(7)
    files: dict[str, bytes] = {}
    expect: dict[str, str] = {}

    def add(name, data, what):
        files[name] = data
        expect[name] = what

    add("empty.mid", b"", "skip")
    add("header_only.mid", good[:14], "any")
    add("five_bytes.mid", good[:5], "skip")
    for frac in (0.1, 0.5, 0.9):
        add(f"truncated_{int(frac * 100)}.mid", good[: int(len(good) * frac)], "any")
    for k in range(6):
        b = bytearray(good)
        for pos in rng.integers(0, len(b), size=int(rng.integers(1, 40))):
            b[pos] = int(rng.integers(0, 256))
        add(f"flipped_{k}.mid", bytes(b), "any")
    add("bad_header.mid", b"MTxx" + good[4:], "skip")
    add("huge_track.mid", chunk(b"MThd", struct.pack(">HHH", 0, 1, 480))
        + chunk(b"MTrk", note_track(scale_notes()), claimed=0xFFFFFFFF), "any")
    add("long_silence.mid", smf([note_track(scale_notes() + scale_notes(8, start=1 << 27))]), "any")
    add("many_notes.mid", many_notes_bytes(), "skip")
    add("format2.mid", smf([note_track(scale_notes()), note_track(scale_notes(12))], fmt=2), "any")
    add("smpte.mid", smf([note_track(scale_notes())], division=0xE728), "any")
    rmid_body = b"RMID" + chunk(b"data", good)
    add("rmid.mid", b"RIFF" + struct.pack("<I", len(rmid_body)) + rmid_body, "any")
    add("not_midi.mid", b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 3000, dtype=np.uint8)), "skip")
    add("text.MIDI", b"This is not a MIDI file at all.\n" * 50, "skip")
    add("zero_division.mid", smf([note_track(scale_notes())], division=0), "any")
    add("no_notes.mid", smf([b"\x00\xff\x51\x03\x07\xa1\x20\x00\xff\x2f\x00"]), "skip")
    add("few_notes.mid", smf([note_track(scale_notes(3))]), "skip")
    add("bad_running_status.mid", smf([b"\x00\x3c\x40\x10\x3c\x00" + note_track(scale_notes())]), "any")
    for name, data in files.items():
        (folder / name).write_bytes(data)
    # a folder named like a MIDI file, holding a valid song
    (folder / "x.mid").mkdir(exist_ok=True)
    (folder / "x.mid" / "inner.mid").write_bytes(make_song_bytes(99))
    expect["x.mid/inner.mid"] = "keep"
    # over the size limit: sparse, so it costs no disk and must be refused before reading
    with open(folder / "too_big.mid", "wb") as f:
        f.truncate(17 * 1024 * 1024)
    expect["too_big.mid"] = "skip"
    return expect
