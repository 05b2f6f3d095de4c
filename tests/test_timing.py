"""Tempo -> seconds: the token count of seconds agrees with the decoded MIDI's own clock."""
from __future__ import annotations

import numpy as np
import pytest

from midigen.music import timing
from midigen.music.codec import Codec


@pytest.fixture(scope="module")
def songs(songs_dir):
    """Token arrays of real generated songs (tempo changes included) and their decoded scores."""
    codec = Codec()
    files = sorted(songs_dir.glob("*.mid"))[:8]
    tokens = [codec.encode(f.read_bytes()) for f in files]
    return codec, tokens


def test_song_seconds_matches_the_decoded_score(songs):
    codec, tokens = songs
    for t in tokens:
        ev = codec.decode_events(t)
        score = codec.decode(t)
        scale = codec.params.decode_tpq // codec.params.steps_per_quarter
        want = float(timing.seconds_at_tick(score, ev["end_step"] * scale))
        assert len(ev["tempo_bpm"]) >= 1
        got = timing.song_seconds(codec, t)
        assert got == pytest.approx(want, rel=1e-5)  # the MIDI tempo map rounds to whole microseconds
        by_map = timing.steps_to_seconds(codec, ev["tempo_time"], ev["tempo_bpm"], [ev["end_step"]])
        assert got == pytest.approx(float(by_map[0]), rel=1e-12)


def test_seconds_at_tick_agrees_with_symusic(songs):
    codec, tokens = songs
    score = codec.decode(tokens[0])
    secs = score.to("second")
    for tr, ts in zip(score.tracks, secs.tracks):
        ticks = tr.notes.numpy()["time"]
        np.testing.assert_allclose(timing.seconds_at_tick(score, ticks), ts.notes.numpy()["time"], rtol=1e-5,
                                   atol=1e-4)
    for s in (0.0, 1.3, 7.77, 20.0):
        tick = timing.tick_at_seconds(score, s)
        assert float(timing.seconds_at_tick(score, tick)) == pytest.approx(s, abs=2e-3)


def test_a_stream_of_songs_and_its_chunks(songs, monkeypatch):
    codec, tokens = songs
    stream = np.concatenate(tokens)
    per_token = timing.token_seconds(codec, stream)
    assert per_token.sum() == pytest.approx(sum(timing.song_seconds(codec, t) for t in tokens), rel=1e-12)
    # a song without a TEMPO token plays at 120 BPM; one whose first TEMPO comes late has it from the start
    one_bar = np.array([codec.BOS, codec.shift_token(96)])
    assert timing.song_seconds(codec, one_bar) == pytest.approx(2.0)  # 4 quarters at 120 BPM
    late = np.array([codec.BOS, codec.shift_token(96), codec.tempo_token(60.0), codec.shift_token(96)])
    assert timing.song_seconds(codec, late) == pytest.approx(8.0, rel=0.01)  # 8 quarters at ~60 BPM
    # positions: every token but each BOS, read in small chunks, gives the same total
    pos = np.flatnonzero(stream != codec.BOS)
    whole = timing.positions_seconds(codec, stream, pos)
    monkeypatch.setattr(timing, "_CHUNK", 1000)
    assert timing.positions_seconds(codec, stream, pos) == pytest.approx(whole, rel=1e-12)
    assert whole == pytest.approx(per_token.sum(), rel=1e-12)
    half = pos[: len(pos) // 2]
    assert timing.positions_seconds(codec, stream, half) == pytest.approx(per_token[half].sum(), rel=1e-12)


def _score(tempos, meters):
    import symusic

    s = symusic.Score(480)
    for tick, bpm in tempos:
        s.tempos.append(symusic.Tempo(tick, bpm))
    for tick, n, d in meters:
        s.time_signatures.append(symusic.TimeSignature(tick, n, d))
    return s


def test_bars_beats_and_seconds_agree_on_one_tempo_map():
    # 4/4, then 3/4 starting half-way into bar 2 (a new bar starts there), 120 BPM then 60 from tick 1920
    s = _score([(0, 120.0), (1920, 60.0)], [(0, 4, 4), (2880, 3, 4)])
    assert [timing.bar_tick(s, b) for b in (1, 2, 3, 4)] == [0, 1920, 2880, 2880 + 1440]
    bars, beats = timing.grid(s, 2880 + 2 * 1440)
    assert bars.tolist()[:4] == [0, 1920, 2880, 4320]  # the grid and --bars draw the same bars
    assert np.all(np.diff(beats) > 0) and 2880 in beats.tolist()
    tm = timing.TempoMap(s)
    assert float(tm.seconds(1920)) == pytest.approx(2.0) and float(tm.seconds(2880)) == pytest.approx(4.0)
    assert timing.bars_to_seconds(s, 3, 3) == pytest.approx((4.0, 7.0))  # one 3/4 bar at 60 BPM
    ticks = np.array([0, 100, 1920, 2500, 9000])
    assert tm.ticks(tm.seconds(ticks)).tolist() == ticks.tolist()
    assert timing.tick_at_seconds(s, 4.0) == 2880 and tm.bpm_at(2000) == pytest.approx(60.0)


def test_notes_end_seconds_reads_notes_only():
    import symusic

    s = _score([(0, 120.0)], [])
    assert timing.notes_end_seconds(s) == 0.0
    t = symusic.Track("piano", 0, False)
    t.notes.append(symusic.Note(960, 480, 60, 90))  # ends at tick 1440: 1.5 s
    s.tracks.append(t)
    s.markers.append(symusic.TextMeta(48000, "far away"))
    assert timing.notes_end_seconds(s) == pytest.approx(1.5)
