"""Versions as WAV: rendered with the `--wav` soundfont on first request, then served from disk.

The synthesizer runs in a sandboxed child process: it is C++ fed with whatever notes a piece holds,
and symusic 0.5.9's can loop forever on some notes (at 22,050 Hz: program 29, pitch 94, and 3 of 12
`tests/songgen.py` songs; none of those at 44,100 or 48,000 Hz). So a render gets a time limit, and a
render that runs out of it is tried once more at another sample rate. The cache is trimmed to
``Limits.wav_bytes`` by dropping the renders used longest ago; a dropped one is simply made again.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

from midigen.errors import MidigenError
from midigen.studio.sandbox import Refused, Sandbox, SandboxError, serve
from midigen.studio.workspace import Conflict, Workspace
from midigen.generate.render import write_wav
from midigen.music.timing import TempoMap

SAMPLE_RATES = (44100, 48000)  # the second is tried when the synthesizer hangs at the first
TAIL_SECONDS = 2.0  # room for the last notes to ring out


def render_timeout(seconds: float) -> float:
    """Time allowed to render ``seconds`` of music (about 100x faster than real time is normal)."""
    return 20.0 + 0.25 * seconds


class RenderError(MidigenError):
    """The synthesizer failed or hung on this version (a 422)."""


def render_file(job: dict, blob=None) -> tuple[float, None]:
    """{midi, wav, soundfont, rate} -> (seconds of audio written, None); runs in the child."""
    import numpy as np
    import symusic

    midi, wav, soundfont, rate = job["midi"], job["wav"], job["soundfont"], int(job["rate"])
    score = symusic.Score.from_midi(Path(midi).read_bytes())
    ends = [int(np.max(a["time"].astype(np.int64) + a["duration"])) for a in
            (t.notes.numpy() for t in score.tracks if t.note_num())]
    if not ends:
        raise Refused("this version has no notes to play")
    # events far past the last note (a stray controller) must not make minutes of silence
    tm = TempoMap(score)
    seconds = float(tm.seconds(max(ends))) + TAIL_SECONDS
    write_wav(score.clip(0, int(tm.ticks(seconds)), False), wav, soundfont=soundfont, sample_rate=rate)
    return seconds, None


def _child(conn) -> None:
    serve(conn, render_file)


class AudioCache:
    def __init__(self, workspace: Workspace, soundfont: Path, rates=SAMPLE_RATES, timeout=render_timeout,
                 target=_child):
        self.ws = workspace
        self.soundfont = soundfont
        self.rates = rates
        self.timeout = timeout  # seconds of music -> seconds allowed
        self.lock = threading.Lock()
        self.box = Sandbox(target, timeout(0.0), "midigen-studio-audio")

    def wav(self, pid: str, vid: str) -> Path:
        """The version's WAV file, rendering it first if needed."""
        path = self.ws.wav_path(pid, vid)
        if path.exists():
            os.utime(path)  # most recently used
            return path
        with self.lock:
            if not path.exists():
                self._render(pid, vid, path)
                self._trim(keep=path)
        return path

    def _render(self, pid: str, vid: str, path: Path) -> None:
        limit = self.timeout(float(self.ws.version(pid, vid).get("seconds") or 0.0))
        midi = str(self.ws.midi_path(pid, vid))
        for rate in self.rates:
            try:
                job = {"midi": midi, "wav": str(path), "soundfont": str(self.soundfont), "rate": rate}
                self.box.call(job, None, "rendering the audio", timeout=limit)
                return
            except Refused as e:
                raise Conflict(str(e)) from None
            except SandboxError as e:
                problem = e
        raise RenderError(f"{problem}: the synthesizer cannot play this version")

    def _trim(self, keep: Path) -> None:
        files = []
        for p in self.ws.root.glob("pieces/*/*.wav"):
            try:
                st = p.stat()
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, p))
        total = sum(f[1] for f in files)
        for _, size, p in sorted(files):
            if total <= self.ws.limits.wav_bytes:
                break
            if p != keep:
                p.unlink(missing_ok=True)
                total -= size

    def close(self) -> None:
        self.box.close()
