"""WAV from a MIDI file in a child process with a time limit: the one renderer behind `--wav` and the studio.

The synthesizer is C++ fed with whatever notes a piece holds, and symusic 0.5.9's can loop forever on
some notes (at 22,050 Hz: program 29, pitch 94, and 3 of 12 `tests/songgen.py` songs; none of those at
44,100 or 48,000 Hz). So it runs in a sandboxed child process: a render gets a time limit, and one
that runs out of it is tried once more at another sample rate; a render that fails at every rate is a
one-line ``RenderError``, never a hang. The child reads the MIDI file already written, so what is
heard is exactly what was saved.
"""
from __future__ import annotations

import sys
from pathlib import Path

from midigen.errors import MidigenError
from midigen.generate.render import write_wav
from midigen.generate.sandbox import Refused, Sandbox, SandboxError, serve
from midigen.music.timing import notes_end_seconds, tick_at_seconds

SAMPLE_RATES = (44100, 48000)  # the second is tried when the synthesizer hangs at the first
TAIL_SECONDS = 2.0  # room for the last notes to ring out


def render_timeout(seconds: float) -> float:
    """Time allowed to render ``seconds`` of music (about 100x faster than real time is normal)."""
    return 20.0 + 0.25 * seconds


class RenderError(MidigenError):
    """The synthesizer failed or hung on this score at every sample rate."""


def render_file(job: dict, blob=None) -> tuple[float, None]:
    """{midi, wav, soundfont, rate} -> (seconds of audio written, None); runs in the child."""
    import symusic  # the child's own import; the parent never loads the synthesizer

    score = symusic.Score.from_midi(Path(job["midi"]).read_bytes())
    if not any(t.note_num() for t in score.tracks):
        raise Refused("there are no notes to play")
    # events far past the last note (a stray controller) must not make minutes of silence
    seconds = notes_end_seconds(score) + TAIL_SECONDS
    clipped = score.clip(0, tick_at_seconds(score, seconds), False)
    write_wav(clipped, job["wav"], soundfont=job["soundfont"], sample_rate=int(job["rate"]))
    return seconds, None


def _child(conn) -> None:
    serve(conn, render_file)


class Renderer:
    """One synthesizer child, reused for every render until ``close``.

    ``timeout`` maps seconds of music to seconds allowed (default ``render_timeout``); ``target`` is the
    child's main function (default: the real one; tests pass one whose synthesizer hangs).
    """

    def __init__(self, soundfont: Path, rates=SAMPLE_RATES, timeout=None, target=None, name: str = "midigen-synth"):
        self.soundfont = Path(soundfont)
        self.rates = tuple(rates)
        self.timeout = timeout or render_timeout
        self.box = Sandbox(target or _child, self.timeout(0.0), name)

    def start(self) -> None:
        """Start the child now (it takes a second or two), rather than on the first render."""
        self.box.start()

    def render(self, midi: Path, wav: Path, seconds: float) -> Path:
        """Write ``wav`` from ``midi`` (``seconds`` long, for the time limit); Refused when it has no notes."""
        limit = self.timeout(float(seconds or 0.0))
        problems = []
        for rate in self.rates:
            job = {"midi": str(midi), "wav": str(wav), "soundfont": str(self.soundfont), "rate": rate}
            try:
                self.box.call(job, None, f"rendering the audio at {rate} Hz", timeout=limit)
                return Path(wav)
            except SandboxError as e:
                problems.append(str(e))
        raise RenderError("; ".join(problems) + ": the synthesizer cannot play this music")

    def close(self) -> None:
        self.box.close()

    def __enter__(self) -> "Renderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def wav_beside(renderer: Renderer, score, midi: Path) -> Path | None:
    """The CLI's `--wav`: render ``midi`` (already written from ``score``) to the same name with .wav.

    -> the WAV's path, or None (with a note on stderr) when the score has no notes to play.
    """
    wav = Path(midi).with_suffix(".wav")
    try:
        return renderer.render(midi, wav, notes_end_seconds(score))
    except Refused as e:
        print(f"midigen: no WAV for {midi}: {e}", file=sys.stderr, flush=True)
        return None
