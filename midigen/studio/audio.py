"""Versions as WAV: rendered with the soundfont on first request, then served from disk.

The rendering itself is ``generate.synth.Renderer`` (a child process with a time limit, another sample
rate tried when the synthesizer hangs), the same renderer `--wav` uses. What the studio adds is the
cache: one render at a time, and the cache trimmed to ``Limits.wav_bytes`` by dropping the renders
used longest ago; a dropped one is simply made again.
"""
from __future__ import annotations

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
        seconds = float(self.ws.version(pid, vid).get("seconds") or 0.0)
        try:
            self.renderer.render(self.ws.midi_path(pid, vid), path, seconds)
        except Refused as e:
            raise Conflict(f"this version cannot be played: {e}") from None

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
