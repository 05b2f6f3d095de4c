"""The piano-roll PNG: the legend beside the notes, repeated notes apart, one colour per instrument,
and the chord lane above the roll."""
from __future__ import annotations

import matplotlib.colors as mcolors
import matplotlib.image as mpimg
import numpy as np
import pytest
import symusic
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.patches import Rectangle

from midigen.music.chordtext import marker_chord, parse_chords
from midigen.music.timing import tick_at_seconds
from midigen.generate.render import bar_spans, detected_bar_chords, piano_roll_figure, section_bands, write_piano_roll


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


# ----- the chord lane above the roll ------------------------------------------------------------


@pytest.fixture(scope="module")
def fiddle_tune(music21_dir) -> symusic.Score:
    """A real tune with a chord accompaniment (the demo corpus's 'tune-with-chords'), as written to MIDI."""
    path = sorted((music21_dir / "tune-with-chords").rglob("*.mid"))[0]
    return symusic.Score(str(path))


def _lane_texts(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[1].texts]


def _pixels_and_lane_rows(fig, path):
    """The PNG's pixels as written, and the pixel rows the lane's axes cover in it."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    fig.savefig(path, format="png")
    image = mpimg.imread(path)
    box = fig.axes[1].get_window_extent(canvas.get_renderer())
    height = image.shape[0]
    return image, (int(height - box.y1) - 1, int(np.ceil(height - box.y0)) + 1)


def test_lane_names_the_chords_the_labeller_hears(fiddle_tune):
    fig = piano_roll_figure(fiddle_tune, "t")
    names = detected_bar_chords(fiddle_tune)
    assert len(names) == len(bar_spans(fiddle_tune)) >= 8
    texts = _lane_texts(fig)
    assert texts[0] == names[0].split()[0]
    assert len(texts) >= 4 and set(texts) <= {c for bar in names for c in bar.split()}
    assert len(set(texts)) >= 3  # a tune's harmony moves: the lane is not one chord copied along
    lane, roll = fig.axes[1].get_position(), fig.axes[0].get_position()
    assert lane.y0 >= roll.y1 and abs(lane.x0 - roll.x0) < 1e-6 and abs(lane.x1 - roll.x1) < 1e-6


def test_a_given_chart_fills_the_lane_bar_by_bar_repeating(fiddle_tune):
    """Two bars of two chords each on the tune's first 6 bars: C and G share odd bars, Am and F even
    ones, the chart repeating to the end; each name stands in its half of its bar."""
    spans = bar_spans(fiddle_tune)[:6]
    short = fiddle_tune.clip(0, tick_at_seconds(fiddle_tune, spans[-1][1]))
    fig = piano_roll_figure(short, "t", chords=parse_chords("C G | Am F"))
    texts = fig.axes[1].texts
    assert [t.get_text() for t in texts] == ["C", "G", "Am", "F"] * 3
    for k, (a, b) in enumerate(bar_spans(short)):
        first, second = (t.get_position()[0] for t in texts[2 * k : 2 * k + 2])
        assert a <= first < (a + b) / 2 <= second < b


def test_names_that_would_overprint_are_left_out(fiddle_tune):
    """On the whole tune a half bar is narrower than a name: only names with room are drawn, and no
    two drawn names touch."""
    fig = piano_roll_figure(fiddle_tune, "t", chords=parse_chords("C G | Am F"))
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    texts = fig.axes[1].texts
    assert {"C", "G", "Am"} <= set(_lane_texts(fig)) <= {"C", "G", "Am", "F"}
    assert len(texts) < 2 * len(bar_spans(fiddle_tune))
    boxes = [t.get_window_extent(canvas.get_renderer()) for t in texts]
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:]))


def test_the_lane_changes_only_the_lanes_pixels(fiddle_tune, tmp_path):
    """The detected chords and a given chart draw the same roll: every pixel row that differs lies in
    the lane, and the lane's rows do differ (its names are drawn, not just its cells)."""
    detected, rows = _pixels_and_lane_rows(piano_roll_figure(fiddle_tune, "t"), tmp_path / "a.png")
    given, _ = _pixels_and_lane_rows(piano_roll_figure(fiddle_tune, "t", chords=["Bbm7b5"]), tmp_path / "b.png")
    empty, _ = _pixels_and_lane_rows(piano_roll_figure(fiddle_tune, "t", chords=[]), tmp_path / "c.png")
    assert detected.shape == given.shape == empty.shape
    for other in (given, empty):
        changed = np.flatnonzero(np.abs(detected - other).sum(axis=(1, 2)) > 0)
        assert len(changed) > 3
        assert rows[0] <= changed.min() and changed.max() <= rows[1]


def test_written_png_has_the_lane_and_a_song_without_notes_an_empty_one(fiddle_tune, tmp_path):
    assert write_piano_roll(fiddle_tune, tmp_path / "tune.png", chords=["C"]).read_bytes()[:4] == b"\x89PNG"
    fig = piano_roll_figure(symusic.Score(480), "empty")
    assert len(fig.axes) == 2 and _lane_texts(fig) == []


def test_sample_with_chords_draws_the_chart_it_was_asked_for(edit_run, tmp_path):
    """`sample --chords ... --png` (a checkpoint with chords): the PNG is the chart's lane over the
    written notes, the very picture `write_piano_roll` draws for that file and chart, and the one it
    draws from the file alone (its chord symbols), not the labeller's (the file without its symbols)."""
    from clirun import midigen

    r = midigen("sample", "--ckpt", edit_run, "--chords", "C Am | F G", "--seconds", 8, "--seed", 5, "--png",
                "--instruments", "piano", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    (png,) = tmp_path.glob("*.png")
    score = symusic.Score.from_file(str(png.with_suffix(".mid")))
    again = write_piano_roll(score, tmp_path / "again.png", title="midigen sample 0 (seed 5)",
                             chords=parse_chords("C Am | F G"))
    marked = write_piano_roll(score, tmp_path / "marked.png", title="midigen sample 0 (seed 5)")
    score.markers = [m for m in score.markers if marker_chord(m.text) is None]
    heard = write_piano_roll(score, tmp_path / "heard.png", title="midigen sample 0 (seed 5)")
    assert png.read_bytes() == again.read_bytes() == marked.read_bytes() != heard.read_bytes()


def test_section_bands_name_each_section_inside_the_roll(fiddle_tune, tmp_path):
    """A form's bands carry their labels where a reader sees them: each at its section's start, drawn
    inside the roll's axes (not under the chord lane above it), on top of the notes; and the PNG's
    pixels there change when the labels are drawn."""
    sections = [(0.0, 4.0, "intro"), (4.0, 12.0, "A"), (12.0, 20.0, "B"), (20.0, 28.0, "A")]
    fig = piano_roll_figure(fiddle_tune, "t")
    labels = section_bands(fig.axes[0], sections)
    assert [t.get_text() for t in labels] == ["intro", "A", "B", "A"]
    assert [t.get_position()[0] for t in labels] == [0.0, 4.0, 12.0, 20.0]
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    roll, lane = (a.get_window_extent(canvas.get_renderer()) for a in fig.axes[:2])
    for t in labels:
        box = t.get_window_extent(canvas.get_renderer())
        assert roll.x0 <= box.x0 and box.x1 <= roll.x1 and roll.y0 <= box.y0 and box.y1 <= roll.y1 < lane.y0
        assert t.get_zorder() > max(p.get_zorder() for p in _bars(fig))
    plain = write_piano_roll(fiddle_tune, tmp_path / "plain.png")
    banded = write_piano_roll(fiddle_tune, tmp_path / "bands.png", sections=sections)
    a, b = mpimg.imread(plain), mpimg.imread(banded)
    top = int(a.shape[0] * (1 - roll.y1 / fig.bbox.height)) + 2  # the roll's top rows, where labels sit
    assert np.abs(a[top : top + 12] - b[top : top + 12]).sum() > 0
