"""Rendering: WAV through the bundled GM soundfont, piano-roll PNG, playback without a sound card."""
from __future__ import annotations

import wave

import numpy as np
import pytest
import symusic

from midigen.music.codec import Codec
from midigen.errors import UsageError
from midigen.generate.render import default_soundfont, play, write_piano_roll, write_wav
from midigen.generate.sample import notes_end_seconds
from songgen import make_song


@pytest.fixture(scope="module")
def score():
    codec = Codec()
    return codec.decode(codec.encode_score(make_song(3, bars=6)))


def read_wav(path):
    with wave.open(str(path)) as f:
        frames = f.readframes(f.getnframes())
        return f.getnchannels(), f.getframerate(), np.frombuffer(frames, "<i2").reshape(-1, 2) / 32768.0


def test_default_soundfont_ships_with_pretty_midi():
    assert default_soundfont().is_file()


def test_wav_is_loud_unclipped_and_as_long_as_the_song(score, tmp_path):
    path = write_wav(score, tmp_path / "a.wav", sample_rate=16000)
    channels, rate, pcm = read_wav(path)
    assert channels == 2 and rate == 16000
    assert abs(len(pcm) / rate - notes_end_seconds(score)) < 1.0
    assert np.sqrt(np.mean(pcm**2)) > 0.02
    assert 0.8 < np.max(np.abs(pcm)) < 0.95  # normalized to -1 dBFS
    write_wav(score, tmp_path / "b.wav", sample_rate=16000)
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()


def test_missing_soundfont_is_a_usage_error(score, tmp_path):
    with pytest.raises(UsageError):
        write_wav(score, tmp_path / "a.wav", soundfont=tmp_path / "none.sf2")


def test_piano_roll_png(score, tmp_path):
    path = write_piano_roll(score, tmp_path / "roll.png", title="test")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    empty = write_piano_roll(symusic.Score(480), tmp_path / "empty.png")
    assert empty.read_bytes()[:4] == b"\x89PNG"


def test_play_reports_instead_of_failing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SDL_AUDIODRIVER", "dummy")
    assert play(tmp_path / "song.wav") is False
    out = capsys.readouterr().out
    assert "nothing played" in out and str(tmp_path / "song.wav") in out


def test_piano_roll_marks_an_edited_span(score, tmp_path):
    """The shaded span and outlined new notes make the picture differ exactly inside the span's columns."""
    import matplotlib.image as mpimg

    plain = write_piano_roll(score, tmp_path / "plain.png", title="t")
    marked = write_piano_roll(score, tmp_path / "marked.png", title="t", highlight=((2.0, 4.0), [0, 128]))
    a, b = mpimg.imread(plain), mpimg.imread(marked)
    assert a.shape == b.shape
    cols = np.flatnonzero(np.abs(a - b).sum(axis=(0, 2)) > 0.5)
    assert len(cols) > 20  # the span is visibly marked
    width = a.shape[1]
    assert cols.min() > width * 0.05  # ... and not from the start of the plot


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", [4, 5, 10])
def test_wav_of_songs_that_hung_the_synthesizer_at_22050_hz(tmp_path, seed):
    """Bug: at the old default rate (22,050 Hz) symusic's synthesizer never returned on these songs."""
    score = make_song(seed)
    path = write_wav(score, tmp_path / f"{seed}.wav")
    with wave.open(str(path)) as w:
        assert w.getframerate() == 44100
        assert abs(w.getnframes() / w.getframerate() - notes_end_seconds(score)) < 3.0
