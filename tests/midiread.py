"""Reading a written MIDI file back as a synthesizer would (mido), and a song made to break a splice.

Shared by tests (kept notes, the engine, precision) and benchmarks/kept_notes.py.
"""
from __future__ import annotations

from collections import Counter, defaultdict, deque
from io import BytesIO

import mido
import symusic

TPQ, BPM = 480, 100.0
TICKS_PER_SECOND = TPQ * BPM / 60  # 800: ``tricky_song`` keeps one tempo, so seconds are ticks / 800
BEAT = TPQ
PIANO = 0
SPAN = ((8 * BEAT + 3) / TICKS_PER_SECOND, (16 * BEAT - 5) / TICKS_PER_SECOND)  # starts 3 ticks after a chord
POINT = (12 * BEAT + 3) / TICKS_PER_SECOND  # a continuation point 3 ticks after a chord


def mido_notes(data: bytes) -> tuple[Counter, int]:
    """(notes as (program, channel, pitch, onset, duration, velocity), note-ons that came while the same
    pitch sounded on that channel), reading every track's events merged in time as a synthesizer does:
    at one tick, program changes, then note-offs, then note-ons; each note-off ends the oldest note."""
    events = []
    for track in mido.MidiFile(file=BytesIO(data)).tracks:
        tick = 0
        for msg in track:
            tick += msg.time
            if msg.type in ("note_on", "note_off", "program_change"):
                on = msg.type == "note_on" and msg.velocity > 0
                events.append((tick, 0 if msg.type == "program_change" else 2 if on else 1, msg))
    programs, sounding, notes, clashes = defaultdict(int), defaultdict(deque), Counter(), 0
    for tick, kind, msg in sorted(events, key=lambda e: (e[0], e[1])):
        if kind == 0:
            programs[msg.channel] = msg.program
        elif kind == 2:
            clashes += bool(sounding[msg.channel, msg.note])
            sounding[msg.channel, msg.note].append((tick, msg.velocity, programs[msg.channel]))
        elif sounding[msg.channel, msg.note]:
            onset, velocity, program = sounding[msg.channel, msg.note].popleft()
            notes[program, msg.channel, msg.note, onset, tick - onset, velocity] += 1
    return notes, clashes


def track_notes(data: bytes, name: str) -> list:
    """(tick, on/off, pitch, velocity) of the named track's note events as mido reads the file, sorted."""
    (track,) = [t for t in mido.MidiFile(file=BytesIO(data)).tracks if t.name == name]
    out, now = [], 0
    for msg in track:
        now += msg.time
        if msg.type in ("note_on", "note_off"):
            on = msg.type == "note_on" and msg.velocity > 0
            out.append((now, on, msg.note, msg.velocity if on else 0))
    return sorted(out)


def tricky_song(bass: int) -> bytes:
    """8 bars at 100 BPM: piano chords on every beat (track 0), a bass (1), pitch 55 on every eighth in
    two more piano tracks (2 and 4, the second off the beat), and two drum tracks (3, 5) on channel 10."""
    beats = 32
    rows = {i: [] for i in range(6)}
    for b in range(beats):
        t = b * BEAT
        rows[0] += [(t, 400, p, 70 + b % 5) for p in (60, 64, 67 + (b % 2))]
        rows[1].append((t, 450, 40 + (b // 4) % 3, 90))
        rows[2] += [(t, 200, 55, 60), (t + 240, 200, 55, 61)]
        rows[4] += [(t + 120, 100, 55, 50), (t + 360, 100, 55, 51)]
        rows[3].append((t, 60, 36, 100))
        rows[5] += [(t + k * 120, 30, 42, 40 + k) for k in range(4)] + [(t + 240, 60, 36, 90)]
    score = symusic.Score(TPQ)
    score.tempos.append(symusic.Tempo(0, BPM))
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    spec = [("Piano", PIANO, False), ("Bass", bass, False), ("Piano LH", PIANO, False), ("Kick", 0, True),
            ("Piano off", PIANO, False), ("Hats", 0, True)]
    for i, (name, program, drums) in enumerate(spec):
        track = symusic.Track(name, program, drums)
        for t, d, p, v in rows[i]:
            track.notes.append(symusic.Note(t, d, p, v))
        score.tracks.append(track)
    data = bytes(score.dumps_midi())
    assert mido_notes(data)[1] == 0  # the song itself is clean
    return data


def text_events(data: bytes) -> list[tuple[int, int, str, str]]:
    """(track, tick, type, text) of every marker, lyric and text meta event as mido reads the file, in
    each track's order: what a DAW shows in its marker lane and under the notes."""
    out = []
    for k, track in enumerate(mido.MidiFile(file=BytesIO(data)).tracks):
        tick = 0
        for msg in track:
            tick += msg.time
            if msg.type in ("marker", "lyrics", "text"):
                out.append((k, tick, msg.type, msg.text))
    return out
