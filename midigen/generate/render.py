"""Hear and see a score: WAV through a General MIDI soundfont, a piano-roll PNG, playback.

Audio uses symusic's built-in SoundFont synthesizer, so no system package (fluidsynth, timidity) is
needed; the default soundfont is the small GM set that the pretty_midi wheel ships.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import wave
from pathlib import Path

import numpy as np

from midigen.music.chords import MAX_BEATS, ChordError, chord_name, label_chords
from midigen.music.chordtext import bar_chords, bar_names, marked_chords
from midigen.music.codec import DRUMS, instrument_name
from midigen.music.timing import TempoMap, beat_grid
from midigen.errors import MidigenError, UsageError
from midigen.fsutil import atomic_write_bytes

PEAK = 0.89  # -1 dBFS: loud enough to hear, never clipping
LANE_CHAR_PX = 6.0  # the width of a character of the chord lane's 8-point names, at the figure's 100 dpi


def default_soundfont() -> Path:
    import pretty_midi

    return Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"


def find_soundfont(path=None) -> Path:
    """The soundfont to render with: ``path`` if given (must exist), else pretty_midi's TimGM6mb."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"soundfont {p} does not exist")
        if p.suffix.lower() not in (".sf2", ".sf3"):
            raise UsageError(f"soundfont {p} is not an .sf2/.sf3 file")
        return p
    try:
        p = default_soundfont()
    except ImportError:
        raise MidigenError("no default soundfont (pretty_midi is not installed): pass --soundfont FILE") from None
    if not p.is_file():
        raise MidigenError(f"the default soundfont {p} is missing: pass --soundfont FILE")
    return p


# symusic 0.5.9's synthesizer never returns on some songs at 22,050 Hz (tests/songgen.py seeds 4, 5 and
# 10 among them) that render in a fraction of a second at 44,100 Hz, the CD rate.
SAMPLE_RATE = 44100


def render_audio(score, soundfont=None, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(2, n) float32 stereo, normalized so the loudest sample sits at -1 dBFS."""
    import symusic

    sf = find_soundfont(soundfont)
    try:
        synth = symusic.Synthesizer(str(sf), int(sample_rate))
        audio = np.asarray(synth.render(score, stereo=True), dtype=np.float32)
    except Exception as e:  # the synthesizer raises plain RuntimeErrors on bad soundfonts
        raise MidigenError(f"cannot render audio with {sf}: {e}") from None
    if audio.ndim != 2 or audio.shape[0] != 2:
        audio = np.atleast_2d(audio)
        audio = np.repeat(audio[:1], 2, axis=0)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > 0:
        audio = audio * (PEAK / peak)
    return audio


def write_wav(score, path, soundfont=None, sample_rate: int = SAMPLE_RATE) -> Path:
    """Render ``score`` to a 16-bit stereo WAV at ``path`` (atomically); returns the path."""
    import io

    audio = render_audio(score, soundfont, sample_rate)
    pcm = np.clip(np.round(audio.T * 32767.0), -32767, 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_piano_roll(score, path, title: str | None = None, highlight=None, chords=None, sections=None) -> Path:
    """A piano roll PNG (``piano_roll_figure``), written atomically; ``sections`` shade a song's form
    (``section_bands``)."""
    fig = piano_roll_figure(score, title, highlight, chords)
    if sections:
        section_bands(fig.axes[0], sections)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


def piano_roll_figure(score, title: str | None = None, highlight=None, chords=None):
    """A piano roll: one colour per instrument (every track of it alike), drums as grey crosses, seconds
    on x, pitch on y, the legend beside the notes (never over them). Each bar has a thin white edge, so
    repeated notes of one pitch show as separate bars. Above the roll, a chord lane names the chords
    of each bar of the song (``draw_chord_lane``): ``chords`` (one name per bar, several chords of a
    bar space-separated, repeating to the end as a chart does), or else the chord symbols the file
    carries (``bar_chord_names``), the labeller's hearing of the notes where it carries none.

    ``highlight`` = ((start, end) seconds, instruments) marks what an edit wrote: the span is shaded,
    and the notes of those instruments inside it are outlined in black (one legend entry, "new notes");
    kept notes keep their instrument's colour whichever track they are on.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    s = score.to("second")
    fig = Figure(figsize=(13, 5.4), dpi=100)
    rows = fig.add_gridspec(2, 1, height_ratios=(1, 11))
    ax = fig.add_subplot(rows[1])  # the roll is the figure's first axes, the lane its second
    lane = fig.add_subplot(rows[0], sharex=ax)
    colours = matplotlib.colormaps["tab10"]
    handles, lo, hi, end = {}, 127, 0, 0.0
    colour_of: dict[int, tuple] = {}
    any_new = False
    for track in s.tracks:
        if not track.note_num():
            continue
        a = track.notes.numpy()
        t, d, p = a["time"], a["duration"], a["pitch"].astype(int)
        lo, hi = min(lo, int(p.min())), max(hi, int(p.max()))
        end = max(end, float(np.max(t + d)))
        inst = DRUMS if track.is_drum else int(track.program)
        new = _written(highlight, inst, t)
        any_new |= bool(new.any())
        label = instrument_name(inst)
        if track.is_drum:
            ax.scatter(t[~new], p[~new], marker="x", s=14, color="0.35", linewidths=0.8, zorder=3)
            ax.scatter(t[new], p[new], marker="x", s=22, color="black", linewidths=1.4, zorder=4)
            handles.setdefault(label, Line2D([], [], marker="x", color="0.35", linestyle="none", label=label))
        else:
            c = colour_of.setdefault(inst, colours(len(colour_of) % 10))
            ax.barh(p[~new], d[~new], left=t[~new], height=0.85, color=c, alpha=0.8, edgecolor="white",
                    linewidth=0.5)
            ax.barh(p[new], d[new], left=t[new], height=0.85, color=c, alpha=0.95, edgecolor="black",
                    linewidth=0.9)
            handles.setdefault(label, Patch(facecolor=c, edgecolor=c, label=label))
    handles = list(handles.values())
    if any_new:
        handles.append(Patch(facecolor="white", edgecolor="black", label="new notes"))
    if highlight is not None:
        (s0, s1), _ = highlight
        ax.axvspan(s0, s1, color="gold", alpha=0.18, zorder=0)
        handles.append(Patch(color="gold", alpha=0.4, label="rewritten span"))
    if not handles:
        ax.text(0.5, 0.5, "no notes", ha="center", va="center", transform=ax.transAxes)
        lo, hi = 48, 72
    ax.set_xlim(0, max(end, 1.0))
    ax.set_ylim(lo - 2, hi + 2)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("pitch")
    # note names (C4 = middle C = 60): every C for a wide range, C/E/G for a narrower one, else all
    span = range(int(lo) - 1, int(hi) + 2)
    marks = {0} if hi - lo > 30 else ({0, 4, 7} if hi - lo > 10 else set(range(12)))
    ticks = [t for t in span if t % 12 in marks]
    names = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
    ax.set_yticks(ticks, [f"{names[t % 12]}{t // 12 - 1}" for t in ticks])
    lane.set_title(title or "midigen")
    spans = bar_spans(score)
    draw_chord_lane(lane, spans, _repeat(chords, len(spans)) if chords is not None else bar_chord_names(score))
    ax.grid(True, axis="x", alpha=0.3)
    if handles:  # beside the axes, so it never hides a note
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, framealpha=0.8,
                  borderaxespad=0.0)
    fig.tight_layout(h_pad=0.2)
    return fig


def section_bands(ax, sections) -> list:
    """Shade each (start s, end s, label) section of a form in alternating greys, behind the notes (the
    same label gets the same shade wherever it returns), its label inside the band's top left corner
    on a pale box over the notes (above the roll the chord lane would hide it). Returns the labels'
    text objects, in the sections' order."""
    shades, labels = {}, []
    for start, end, label in sections:
        shade = shades.setdefault(label.rstrip("'"), ("0.55", "0.8", "0.35")[len(shades) % 3])
        ax.axvspan(start, end, color=shade, alpha=0.12, zorder=0, linewidth=0)
        ax.axvline(start, color="0.3", linewidth=0.6, zorder=1)
        labels.append(ax.text(start, 0.985, label, transform=ax.get_xaxis_transform(), va="top", ha="left",
                              fontsize=9, fontweight="bold", zorder=6, clip_on=True,
                              bbox={"boxstyle": "square,pad=0.2", "facecolor": "white", "edgecolor": "0.3",
                                    "linewidth": 0.5, "alpha": 0.85}))
    return labels


def bar_spans(score) -> list[tuple[float, float]]:
    """(start, end) seconds of each bar of a symusic score, on the beat grid the chord labeller uses,
    up to the end of its last note; [] for a song too long to lay out."""
    score = score if str(score.ttype).lower().endswith("tick") else score.to("tick")
    try:
        grid = beat_grid(score, max_beats=MAX_BEATS)
    except ValueError:
        return []
    if len(grid) == 0:
        return []
    first = np.flatnonzero(np.concatenate(([True], grid.bars[1:] != grid.bars[:-1])))
    last = np.append(first[1:], len(grid)) - 1
    tempo = TempoMap(score)
    return list(zip(tempo.seconds(grid.starts[first]).tolist(), tempo.seconds(grid.ends[last]).tolist()))


def bar_chord_names(score) -> list[str]:
    """Each bar's chords for the lane (``bar_spans``'s bars, ``Am F``): the chord symbols the file
    carries (its ``Chord NAME`` markers: what its music was written on, or what a chart asked), the
    labeller's hearing of the notes only where it carries none (a song without them, or its bars
    before the first)."""
    score = score if str(score.ttype).lower().endswith("tick") else score.to("tick")
    marks = marked_chords(score)
    if not marks:
        return detected_bar_chords(score)
    seconds = TempoMap(score).seconds(np.array([t for t, _ in marks], dtype=np.int64)).tolist()
    names = bar_names([(x, name) for x, (_, name) in zip(seconds, marks)], bar_spans(score))
    if None in names:
        heard = detected_bar_chords(score)
        names = [n if n is not None else (heard[k] if k < len(heard) else "") for k, n in enumerate(names)]
    return names


def detected_bar_chords(score) -> list[str]:
    """The labeller's chords of each bar of a symusic score (``bar_spans``'s bars), a bar's chords
    space-separated (``Am F``), as a lead sheet writes them; [] for a song the labeller will not read."""
    score = score if str(score.ttype).lower().endswith("tick") else score.to("tick")
    try:
        song = label_chords(score)
    except ChordError:
        return []
    return [" ".join(chord_name(c) for c in bar) for bar in bar_chords(song)]


def _repeat(names, n: int) -> list[str]:
    """A chart's bars (names, or ``parse_chords``'s lists of chords) as names, repeated (or cut) to
    ``n`` bars, as a chart plays to the end of a song."""
    names = [" ".join(map(str, x)) if isinstance(x, (list, tuple)) else str(x) for x in names]
    return [names[k % len(names)] for k in range(n)] if names else []


def draw_chord_lane(ax, spans, names) -> None:
    """A lane of bar cells, each bar's chord names spread evenly across it (``"Am F"``: Am over its
    first half, F its second), bars shaded in turn. A name is written where the chord changes, and
    only where the name before it has room to end first (short bars in a long song would overprint).

    ``spans``: (start, end) seconds of each bar; ``names``: one string per bar (extra ones are
    ignored). It draws on its own axes (x shared with the roll, its limits already set), so other
    lanes can stand beside it.
    """
    ax.set_yticks([])
    ax.set_ylim(0, 1)
    ax.tick_params(axis="x", labelbottom=False, length=0)
    ax.set_ylabel("chords", rotation=0, ha="right", va="center", fontsize=8)
    lo, hi = ax.get_xlim()
    seconds_per_char = LANE_CHAR_PX * (hi - lo) / max(1.0, ax.bbox.width)
    previous, free_from = None, -np.inf
    for k, ((a, b), bar) in enumerate(zip(spans, names)):
        ax.axvspan(a, b, color="0.93" if k % 2 else "0.85", zorder=0, linewidth=0)
        chords = bar.split()
        width = (b - a) / max(1, len(chords))
        for i, chord in enumerate(chords):
            x = a + i * width
            if chord != previous and x >= free_from:
                ax.text(x + 0.1 * width, 0.5, chord, ha="left", va="center", fontsize=8, clip_on=True)
                free_from = x + 0.1 * width + (len(chord) + 1) * seconds_per_char
            previous = chord


def _written(highlight, instrument: int, onsets: np.ndarray) -> np.ndarray:
    """Which notes (by onset in seconds) an edit wrote, for the piano roll's marks."""
    if highlight is None:
        return np.zeros(len(onsets), bool)
    (s0, s1), instruments = highlight
    if instrument not in set(int(i) for i in instruments):
        return np.zeros(len(onsets), bool)
    return (onsets >= s0 - 1e-6) & (onsets < s1)


@contextlib.contextmanager
def _quiet_stderr():
    """SDL's audio backends print ALSA diagnostics straight to fd 2; keep them off the terminal."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def play(path) -> bool:
    """Play a WAV file and wait for it to end; True if it played.

    Without an audio device (or with SDL's dummy driver) it prints where the file is and returns False,
    so a headless machine is not an error.
    """
    path = Path(path)
    where = f"the audio is at {path}"
    driver = os.environ.get("SDL_AUDIODRIVER", "").strip().lower()
    if driver in ("dummy", "disk"):
        print(f"no audio device (SDL_AUDIODRIVER={driver}): nothing played; {where}", flush=True)
        return False
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import pygame
    except ImportError:
        print(f"pygame is not installed: nothing played; {where}", flush=True)
        return False
    try:
        with _quiet_stderr():
            pygame.mixer.init()
    except pygame.error as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else "unavailable"
        print(f"no audio device ({reason}): nothing played; {where}", flush=True)
        return False
    try:
        sound = pygame.mixer.Sound(str(path))
        channel = sound.play()
        print(f"playing {path} ({sound.get_length():.1f} s)", flush=True)
        while channel is not None and channel.get_busy():
            time.sleep(0.05)
    except pygame.error as e:
        print(f"cannot play {path}: {e}; {where}", flush=True)
        return False
    finally:
        pygame.mixer.quit()
    return True
