"""The piano-roll PNG: the legend beside the notes, repeated notes apart, one colour per instrument."""
from __future__ import annotations

import matplotlib.colors as mcolors
import symusic
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.patches import Rectangle

from midigen.generate.render import piano_roll_figure, write_piano_roll


def _two_piano_tracks() -> symusic.Score:
    s = symusic.Score(480)
    for name, pitch in (("right hand", 72), ("left hand", 48)):
        t = symusic.Track(name, 0, False)
        for k in range(8):  # repeated notes of one pitch, back to back
            t.notes.append(symusic.Note(k * 480, 480, pitch, 90))
        s.tracks.append(t)
    return s


def _bars(fig):
    return [p for p in fig.axes[0].patches if isinstance(p, Rectangle) and p.get_width() > 0]


def test_legend_sits_beside_the_notes():
    fig = piano_roll_figure(_two_piano_tracks(), "t", highlight=((1.0, 2.0), [0]))
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    legend = fig.axes[0].get_legend().get_window_extent(renderer)
    axes = fig.axes[0].get_window_extent(renderer)
    assert legend.x0 >= axes.x1  # entirely right of the plotting area


def test_repeated_notes_have_an_edge_and_tracks_of_one_instrument_one_colour(tmp_path):
    fig = piano_roll_figure(_two_piano_tracks(), "t", highlight=((1.0, 2.0), [0]))
    bars = _bars(fig)
    kept = [b for b in bars if mcolors.to_hex(b.get_edgecolor()) == "#ffffff"]
    new = [b for b in bars if mcolors.to_hex(b.get_edgecolor()) == "#000000"]
    assert len(kept) == 12 and len(new) == 4 and all(b.get_linewidth() > 0 for b in kept)
    assert len({mcolors.to_hex(b.get_facecolor()) for b in kept + new}) == 1  # both tracks: the piano's colour
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["Acoustic Grand Piano", "new notes", "rewritten span"]
    assert write_piano_roll(_two_piano_tracks(), tmp_path / "r.png").stat().st_size > 1000
