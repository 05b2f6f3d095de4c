"""Versions as WAV: rendered with the soundfont on first request, then served from disk.

The rendering itself is ``generate.synth.Renderer`` (a child process with a time limit, another sample
rate tried when the synthesizer hangs), the same renderer `--wav` uses. What the studio adds is the
cache: one render at a time, and the cache trimmed to ``Limits.wav_bytes`` by dropping the renders
used longest ago; a dropped one is simply made again. A mix (mute and solo on the page) is the version
with only some of its tracks, rendered and cached the same way under a name made from their indices.
"""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from midigen.generate.sandbox import Refused
from midigen.generate.synth import SAMPLE_RATES, Renderer
from midigen.studio.workspace import Conflict, Workspace


class AudioCache:
    def __init__(self, workspace: Workspace, soundfont: Path, rates=SAMPLE_RATES, timeout=None, target=None):
        self.ws = workspace
        self.lock = threading.Lock()
        self.renderer = Renderer(soundfont, rates, timeout, target, name="midigen-studio-audio")

    def start(self) -> None:
        self.renderer.start()

    def wav(self, pid: str, vid: str, tracks: tuple[int, ...] | None = None) -> Path:
        """The version's WAV file (only the tracks at indices ``tracks``, if given), rendered first if needed."""
        mix = "" if tracks is None else "t" + hashlib.sha256(repr(sorted(set(tracks))).encode()).hexdigest()[:12]
        path = self.ws.wav_path(pid, vid, mix)
        if path.exists():
            os.utime(path)  # most recently used
            return path
        with self.lock:
            if not path.exists():
                self._render(pid, vid, path, tracks)
                self._trim(keep=path)
        return path

    def _render(self, pid: str, vid: str, path: Path, tracks) -> None:
        seconds = float(self.ws.version(pid, vid).get("seconds") or 0.0)
        midi = self.ws.midi_path(pid, vid)
        if tracks is not None:  # the studio's own file, read in-process as the roll reads it
            score = self.ws.score(pid, vid)
            score.tracks = [t for i, t in enumerate(score.tracks) if i in set(tracks)]
            midi = path.with_name(f".{path.stem}.mid.tmp")
            midi.write_bytes(bytes(score.dumps_midi()))
        try:
            self.renderer.render(midi, path, seconds)
        except Refused as e:
            raise Conflict(f"this version cannot be played: {e}") from None
        finally:
            if tracks is not None:
                midi.unlink(missing_ok=True)

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
        self.renderer.close()
