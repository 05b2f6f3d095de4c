"""Multi-track General MIDI songs made for tests and benchmarks.

Real Lakh files cannot be fetched here, so this writes songs with the same shape: drums on channel 10,
a bass line, chords, a melody, sometimes a pad or guitar, tempo changes, humanized timing and
velocities, odd ticks-per-quarter values. Deterministic for a seed.
"""
from __future__ import annotations

import numpy as np
import symusic

MAJOR = np.array([0, 2, 4, 5, 7, 9, 11])
MINOR = np.array([0, 2, 3, 5, 7, 8, 10])
PROGRESSIONS = [[0, 4, 5, 3], [0, 5, 3, 4], [5, 3, 0, 4], [0, 3, 4, 4], [1, 4, 0, 0]]
CHORD_PROGRAMS = [0, 4, 5, 24, 25, 48, 49, 88, 89, 16, 19]
BASS_PROGRAMS = [32, 33, 34, 35, 38, 39]
LEAD_PROGRAMS = [0, 11, 40, 56, 65, 66, 73, 80, 81, 26, 29, 30, 52]
PAD_PROGRAMS = [48, 50, 89, 91, 94]


def _notes(track: symusic.Track, rows) -> None:
    if not rows:
        return
    a = np.array(rows, dtype=np.int64)
    track.notes = symusic.core.NoteTickList.from_numpy(
        a[:, 0].astype(np.int32), np.maximum(a[:, 1], 1).astype(np.int32),
        np.clip(a[:, 2], 0, 127).astype(np.int8), np.clip(a[:, 3], 1, 127).astype(np.int8),
    )


def make_song(seed: int, bars: int = 24, tpq: int | None = None) -> symusic.Score:
    rng = np.random.default_rng(seed)
    tpq = tpq or int(rng.choice([96, 120, 192, 384, 480, 960]))
    score = symusic.Score(tpq)
    beats_per_bar = int(rng.choice([4, 4, 4, 3, 6]))
    denom = 8 if beats_per_bar == 6 else 4
    beat = tpq if denom == 4 else tpq // 2
    bar = beats_per_bar * beat
    score.time_signatures.append(symusic.TimeSignature(0, beats_per_bar, denom))
    bpm = float(rng.uniform(70, 160))
    score.tempos.append(symusic.Tempo(0, bpm))
    for b in range(4, bars, int(rng.integers(6, 12))):  # occasional tempo drift / changes
        bpm = float(np.clip(bpm * rng.uniform(0.9, 1.1), 50, 200))
        score.tempos.append(symusic.Tempo(b * bar, bpm))
    root = int(rng.integers(36, 48))
    scale = MAJOR if rng.random() < 0.6 else MINOR
    prog = PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))]
    jitter = max(1, tpq // 96)

    def hum(t):
        return int(max(0, t + rng.integers(-jitter, jitter + 1)))

    def degree_pitch(deg, octave):
        return root + 12 * octave + scale[deg % 7] + 12 * (deg // 7)

    drums, bass, chords, lead = [], [], [], []
    pad = []
    sixteenth = beat // 4
    for b in range(bars):
        t0 = b * bar
        deg = prog[b % len(prog)]
        # drums: kick/snare/hats, a crash every 8 bars
        for s in range(beats_per_bar * 4):
            t = t0 + s * sixteenth
            if s % 2 == 0:
                drums.append((hum(t), sixteenth, 42, int(rng.integers(50, 90))))
            if s % 8 == 0:
                drums.append((t, sixteenth, 36, int(rng.integers(90, 120))))
            if s % 8 == 4:
                drums.append((hum(t), sixteenth, 38, int(rng.integers(85, 115))))
            if s == 0 and b % 8 == 0:
                drums.append((t, beat * 2, 49, 110))
            if rng.random() < 0.05:
                drums.append((hum(t), sixteenth, int(rng.choice([45, 47, 50, 39])), int(rng.integers(60, 100))))
        # bass: root on beats, an approach note sometimes
        for k in range(beats_per_bar):
            p = degree_pitch(deg, 0) if k % 2 == 0 else degree_pitch(deg + 4, 0)
            dur = int(beat * rng.choice([0.5, 0.75, 1.0]))
            bass.append((hum(t0 + k * beat), dur, p, int(rng.integers(70, 105))))
        # chords: a triad per bar (or per half bar), sometimes staccato comping
        split = 2 if rng.random() < 0.3 else 1
        for h in range(split):
            for dd in (0, 2, 4):
                p = degree_pitch(deg + dd, 2)
                chords.append((t0 + h * bar // split, bar // split - jitter, p, int(rng.integers(55, 85))))
        if b % 4 == 0:
            for dd in (0, 4):
                pad.append((t0, 4 * bar - tpq // 4, degree_pitch(deg + dd, 3), 50))
        # melody: eighths and quarters from the scale around the chord
        t = t0
        while t < t0 + bar:
            dur = int(rng.choice([sixteenth * 2, sixteenth * 2, beat, beat, beat * 2, sixteenth * 3]))
            if rng.random() < 0.15:
                t += dur  # a rest
                continue
            p = degree_pitch(deg + int(rng.integers(-2, 7)), 3)
            lead.append((hum(t), int(dur * rng.uniform(0.6, 0.98)), p, int(rng.integers(70, 120))))
            t += dur

    def add(name, program, rows, is_drum=False):
        tr = symusic.Track(name, program, is_drum)
        _notes(tr, sorted(rows))
        # what real GM files carry besides notes: volume, pan, reverb, expression swells
        for cc, val in ((7, int(rng.integers(80, 120))), (10, int(rng.integers(20, 108))), (91, 40)):
            tr.controls.append(symusic.ControlChange(0, cc, val))
        if not is_drum:
            for b in range(0, bars, 2):
                for k in range(8):
                    tr.controls.append(symusic.ControlChange(b * bar + k * bar // 4, 11, 80 + 5 * k))
        score.tracks.append(tr)
        return tr

    add("Drums", 0, drums, True)
    add("Bass", int(rng.choice(BASS_PROGRAMS)), bass)
    comp = add("Chords", int(rng.choice(CHORD_PROGRAMS)), chords)
    for b in range(bars):  # sustain pedal down through each bar
        comp.controls.append(symusic.ControlChange(b * bar + jitter, 64, 127))
        comp.controls.append(symusic.ControlChange((b + 1) * bar - jitter, 64, 0))
    solo = add("Lead", int(rng.choice(LEAD_PROGRAMS)), lead)
    for t, d, _, _ in lead:  # bends and vibrato on some lead notes
        if rng.random() < 0.2:
            for k in range(12):
                solo.pitch_bends.append(symusic.PitchBend(t + k * d // 12, int(600 * np.sin(k / 2))))
            solo.pitch_bends.append(symusic.PitchBend(t + d, 0))
    if rng.random() < 0.5:
        add("Pad", int(rng.choice(PAD_PROGRAMS)), pad)
    return score


def make_song_bytes(seed: int, bars: int = 24, tpq: int | None = None) -> bytes:
    return bytes(make_song(seed, bars, tpq).dumps_midi())


def write_songs(folder, n: int, seed0: int = 0, bars: int = 24) -> list:
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"song_{seed0 + i:05d}.mid"
        p.write_bytes(make_song_bytes(seed0 + i, bars))
        paths.append(p)
    return paths
