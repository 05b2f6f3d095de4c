"""Editing: infill and arrange keep the user's music exactly, write only where asked, and the commands.

A tiny model is trained (conftest's ``edit_run``, shared with the studio tests) through the real
`midigen train` command with the editing objective on (configs/test.toml, ``--edit-fraction 0.5``), so
these tests also prove that training with it works and that its checkpoint says it can edit. Songs are
real multi-track General MIDI files from ``songgen`` (drums, tempo changes, two tracks of one program, a
key signature, a marker, a meter change) and real music21 exports.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import symusic

from midigen.music.codec import DRUMS, Codec, Kind, track_instrument
from midigen.errors import Cancelled, UsageError
from midigen.generate.edit import arrange_edits, infill_edits, read_song
from midigen.music.timing import bars_to_seconds
from midigen.generate.grammar import Grammar
from midigen.generate.sampling import Sampling
from songgen import make_song
from clirun import midigen

ROOT = Path(__file__).resolve().parents[1]
TEST_TOML = ROOT / "configs" / "test.toml"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def plain_run(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain_run") / "run"
    r = midigen("train", TEST_TOML, "--data", tiny_dataset, "--out", out, "--steps", "2", "--eval-interval", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def loaded(edit_run):
    from midigen.model.checkpoint import capabilities, load_checkpoint

    model, codec, config = load_checkpoint(edit_run, "cpu")
    caps = capabilities(config, codec)
    assert caps["can_edit"]
    return model, codec, caps


def band_song() -> symusic.core.ScoreTick:
    """A GM song with drums, tempo changes, two tracks of one program, a key signature, a marker and a
    change to 3/4 in bar 9."""
    s = make_song(5, bars=16, tpq=384)
    chords = next(t for t in s.tracks if t.name == "Chords")
    twin = symusic.Track("Chords 2", chords.program, False)
    a = chords.notes.numpy()
    twin.notes = symusic.core.NoteTickList.from_numpy(
        (a["time"] + 192).astype(np.int32), a["duration"], (a["pitch"] + 12).astype(np.int8), a["velocity"])
    s.tracks.append(twin)
    s.key_signatures.append(symusic.KeySignature(0, -1, 0))
    s.markers.append(symusic.TextMeta(384 * 8, "verse"))
    bar = s.time_signatures[0].numerator * 384 * 4 // s.time_signatures[0].denominator
    s.time_signatures.append(symusic.TimeSignature(8 * bar, 3, 4))
    return symusic.Score.from_midi(bytes(s.dumps_midi()))  # as a user's file would read


def rows(track) -> Counter:
    a = track.notes.numpy()
    return Counter(zip(*(a[k].tolist() for k in ("time", "duration", "pitch", "velocity"))))


def events(lst) -> list:
    return [repr(x) for x in lst]


def check_kept(original, e, removed, allowed_new):
    """Everything but the ``removed(track index, notes)`` notes is identical; extra notes satisfy
    ``allowed_new(instrument, onset tick)``; the tempo map, signatures, markers and length are the file's."""
    out = e.score
    assert out.ticks_per_quarter == original.ticks_per_quarter
    for name in ("tempos", "time_signatures", "key_signatures"):
        assert events(getattr(out, name)) == events(getattr(original, name)), name
    assert events(out.markers)[: len(original.markers)] == events(original.markers)
    assert out.end() == original.end()
    assert len(out.tracks) >= len(original.tracks)
    written = 0
    for i, t in enumerate(original.tracks):
        o = out.tracks[i]
        assert (o.name, o.program, o.is_drum) == (t.name, t.program, t.is_drum)
        for name in ("controls", "pitch_bends", "pedals"):
            assert events(getattr(o, name)) == events(getattr(t, name)), name
        kept = rows(t) - removed(i, t)
        got = rows(o)
        assert not kept - got, "a kept note changed or vanished"
        extra = got - kept
        for (time, *_rest) in extra.elements():
            assert allowed_new(track_instrument(t), time)
        written += sum(extra.values())
    for o in out.tracks[len(original.tracks):]:
        for (time, *_rest) in rows(o).elements():
            assert allowed_new(track_instrument(o), time)
        written += o.note_num()
    return written


def _span_rule(song, e):
    qs, qe = e.span_steps
    lo, hi = int(song.tick_of(qs)), int(song.tick_of(qe))

    def removed(i, track):
        a = track.notes.numpy()
        if track_instrument(track) not in e.targets:
            return Counter()
        inside = (song.step_of(a["time"]) >= qs) & (song.step_of(a["time"]) < qe)
        return Counter(zip(*(a[k][inside].tolist() for k in ("time", "duration", "pitch", "velocity"))))

    return removed, lambda inst, t: inst in e.targets and lo <= t < hi


# ----- the library ------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["all", "some"])
def test_infill_keeps_every_other_note_exactly(loaded, which):
    model, codec, _ = loaded
    score = band_song()
    song = read_song(codec, score)
    insts = song.instruments
    targets = None if which == "all" else [i for i in insts if i not in (DRUMS,)][:2]
    edits = infill_edits(model, codec, score, start_s=4.0, end_s=9.0, instruments=targets, num_samples=2,
                         sampling=Sampling(seed=3, top_k=30))
    assert len(edits) == 2
    for e in edits:
        assert e.targets == tuple(insts if targets is None else targets)
        removed, allowed = _span_rule(song, e)
        written = check_kept(score, e, removed, allowed)
        assert written == e.written
        assert e.removed == sum(sum(removed(i, t).values()) for i, t in enumerate(score.tracks)) > 0


def test_infill_on_a_real_chorale(loaded, music21_dir):
    model, codec, _ = loaded
    path = sorted(Path(music21_dir).rglob("*.mid"))[0]
    score = symusic.Score.from_midi(path.read_bytes())
    song = read_song(codec, score)
    (e,) = infill_edits(model, codec, score, start_s=2.0, end_s=6.0, sampling=Sampling(seed=1))
    removed, allowed = _span_rule(song, e)
    check_kept(score, e, removed, allowed)


def test_arrange_keeps_the_kept_parts_and_writes_the_new_ones(loaded):
    model, codec, _ = loaded
    score = band_song()
    song = read_song(codec, score)
    bass = next(track_instrument(t) for t in score.tracks if t.name == "Bass")
    (e,) = arrange_edits(model, codec, score, add=[DRUMS, 73], keep=[bass], sampling=Sampling(seed=2, top_k=30))
    out = e.score
    for i, t in enumerate(score.tracks):  # every track stays where it was (its MIDI channel): kept or emptied
        o = out.tracks[i]
        assert (o.name, o.program, o.is_drum) == (t.name, t.program, t.is_drum)
        if track_instrument(t) == bass:
            assert rows(o) == rows(t)
        elif track_instrument(t) != DRUMS:
            assert o.note_num() == 0
    assert events(out.tempos) == events(score.tempos) and out.end() == score.end()
    assert events(out.time_signatures) == events(score.time_signatures)
    drums = [t for t in out.tracks if t.is_drum]  # the song's drum track, emptied, takes the new drums
    new = drums + list(out.tracks[len(score.tracks):])
    assert {(t.program, t.is_drum) for t in new} <= {(0, True), (73, False)}
    assert e.new_tracks == [73]
    assert sum(t.note_num() for t in new) == e.written
    onsets = np.concatenate([t.notes.numpy()["time"] for t in new])
    assert len(onsets) == e.written > 0
    end = int(song.tick_of(song.end_step()))
    assert onsets.min() < end // 3 and onsets.max() > end // 2  # written over the song, not its start only


def test_same_seed_same_edit(loaded):
    model, codec, _ = loaded
    score = band_song()
    a = infill_edits(model, codec, score, start_s=3.0, end_s=7.0, sampling=Sampling(seed=9), num_samples=2)
    b = infill_edits(model, codec, score, start_s=3.0, end_s=7.0, sampling=Sampling(seed=9), num_samples=2)
    assert [bytes(e.score.dumps_midi()) for e in a] == [bytes(e.score.dumps_midi()) for e in b]


def test_listener_sees_tokens_and_can_cancel(loaded):
    model, codec, _ = loaded
    seen = []

    def listener(tokens):
        seen.append(tokens.shape)
        return len(seen) >= 5

    with pytest.raises(Cancelled):
        infill_edits(model, codec, band_song(), start_s=3.0, end_s=7.0, sampling=Sampling(seed=1), num_samples=3,
                     listener=listener)
    assert seen == [(3, n) for n in range(1, 6)]


def test_bad_spans_are_usage_errors(loaded):
    model, codec, _ = loaded
    score = band_song()
    for kw in (dict(start_s=5.0, end_s=5.0), dict(start_s=-1.0, end_s=2.0), dict(start_s=9999.0, end_s=10000.0)):
        with pytest.raises(UsageError):
            infill_edits(model, codec, score, **kw)
    with pytest.raises(UsageError):
        arrange_edits(model, codec, score, add=[DRUMS], keep=[DRUMS])


def test_bars_follow_the_songs_meter_and_tempo():
    s = symusic.Score(480)
    s.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    s.time_signatures.append(symusic.TimeSignature(3840, 3, 4))
    s.tempos.append(symusic.Tempo(0, 120.0))
    s.tempos.append(symusic.Tempo(1920, 60.0))
    assert bars_to_seconds(s, 1, 1) == pytest.approx((0.0, 2.0))
    assert bars_to_seconds(s, 2, 3) == pytest.approx((2.0, 9.0))  # bar 3 is 3/4 at 60 BPM
    with pytest.raises(UsageError):
        bars_to_seconds(s, 0, 2)


def _random_walk(codec, g, rng, steps: int = 400) -> list[list[int]]:
    """Each row's tokens when every step draws a kind of token the grammar allows, then one of its ids
    (so rare kinds, like EOS, come up often)."""
    kinds = codec.kinds(np.arange(codec.vocab_size))
    seqs = [[] for _ in range(g.B)]
    for _ in range(steps):
        m = g.mask().numpy()
        tok = np.full(g.B, codec.EOS)
        for b in np.flatnonzero(~g.done.numpy()):
            ids = np.flatnonzero(m[b])
            k = rng.choice(np.unique(kinds[ids]))
            tok[b] = rng.choice(ids[kinds[ids] == k])
            seqs[b].append(int(tok[b]))
        g.advance(tok)
        if g.done.all():
            break
    return seqs


def test_edit_grammar_writes_only_targets_inside_the_span():
    codec = Codec()
    B, span, targets = 8, 200, (33, DRUMS)
    g = Grammar(codec, B)
    g.for_edit(targets, span, 400)
    seqs = _random_walk(codec, g, np.random.default_rng(0))
    for s in seqs:
        t = np.array(s)
        k = codec.kinds(t)
        assert not np.any(k == Kind.TEMPO) and not np.any(k == Kind.INST)
        notes = t[k == Kind.NOTE]
        assert set(((notes - codec.note_start) // 128).tolist()) <= set(targets)
        time = np.cumsum(codec.shift_steps()[t])
        assert np.all(time[k == Kind.NOTE] < span)
        ends = np.flatnonzero(t == codec.EOS)
        if len(ends):
            assert ends[0] == 0 or k[ends[0] - 1] == Kind.DV


def test_given_notes_come_where_they_fall():
    """The kept notes inside an edit's span (v3) are forced into the written part at their steps, in the
    step's id order among the written notes, with their own durations, before the part may end."""
    codec = Codec()
    B, span, targets = 8, 200, (33, DRUMS)
    violin = lambda p: codec.note_start + 40 * 128 + p  # noqa: E731  between the targets' ids
    given = [(0, violin(60), codec.dv_start + 5), (0, violin(64), codec.dv_start + 9),
             (48, violin(67), codec.dv_start + 40), (199, violin(72), codec.dv_start + 3)]
    g = Grammar(codec, B)
    g.for_edit(targets, span, 400)
    g.force_notes(*zip(*given))
    seqs = _random_walk(codec, g, np.random.default_rng(1))
    assert g.done.all()
    lower = []
    for s in seqs:
        t = np.array(s)
        k = codec.kinds(t)
        time = np.cumsum(codec.shift_steps()[t])
        notes = np.flatnonzero(k == Kind.NOTE)
        inst = (t[notes] - codec.note_start) // 128
        mine = notes[inst == 40]
        assert [(int(time[i]), int(t[i]), int(t[i + 1])) for i in mine] == given
        assert set(inst.tolist()) <= {40, *targets} and np.all(time[notes] < span)
        for a, b in zip(notes[:-1], notes[1:]):  # a step's notes in increasing id order
            assert time[a] < time[b] or t[a] < t[b]
        assert t[-1] == codec.EOS and mine[-1] < len(t) - 1
        lower.append(any(time[i] == time[j] and i < j for i in notes[inst == 33] for j in mine))
    assert any(lower)  # written notes did come before a given one at its step


def test_controls_and_time_signature_go_into_the_header(loaded):
    from midigen.generate.sample import generate

    model, codec, _ = loaded
    controls = [codec.key_token(14), codec.density_token(1)]
    for kw in (dict(), dict(instruments=[0, DRUMS], tempo=100)):
        for t in generate(model, codec, num_samples=2, max_new_tokens=30, controls=controls,
                          time_signature=(3, 4), **kw, sampling=Sampling(seed=0)):
            h = codec.header_length(t)
            head = t[:h].tolist()
            i = next(j for j, x in enumerate(head) if codec.tempo_start <= x < codec.ts_start)
            assert head[1:3] == controls and head[i + 1 :] == [codec.ts_token(3, 4)]


# ----- the commands ---------------------------------------------------------------------------------


def _json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_cli_infill_writes_files_one_json_line_each_and_repeats_for_a_seed(edit_run, tmp_path):
    song = tmp_path / "band.mid"
    song.write_bytes(bytes(band_song().dumps_midi()))
    common = ["infill", "--ckpt", edit_run, song, "--bars", "3-4", "--seed", 4, "--num-samples", 2]
    a = midigen(*common, "--out", tmp_path / "a", "--png")
    b = midigen(*common, "--out", tmp_path / "b")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    la, lb = _json_lines(a.stdout), _json_lines(b.stdout)
    assert len(a.stdout.strip().splitlines()) == len(la) == 4 and len(lb) == 2
    mids_a = [Path(x["file"]) for x in la if x["kind"] == "midi"]
    mids_b = [Path(x["file"]) for x in lb]
    assert [p.read_bytes() for p in mids_a] == [p.read_bytes() for p in mids_b]
    start, end = bars_to_seconds(band_song(), 3, 4)
    assert la[0]["span_seconds"] == pytest.approx([start, end], abs=0.05)
    png = next(Path(x["file"]) for x in la if x["kind"] == "png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_arrange(edit_run, loaded, tmp_path):
    _, _, caps = loaded
    song = tmp_path / "band.mid"
    song.write_bytes(bytes(band_song().dumps_midi()))
    add = DRUMS if DRUMS in caps["instruments"] else caps["instruments"][0]
    keep = [i for i in (32, 80, 89) if i != add][:2]  # the band's bass, lead and pad: two of them, by two flags
    r = midigen("arrange", "--ckpt", edit_run, song, "--add", str(add), "--keep", "acoustic bass" if keep[0] == 32
                else str(keep[0]), "--keep", str(keep[1]), "--seed", 1, "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    (line,) = _json_lines(r.stdout)
    assert line["task"] == "arrange" and Path(line["file"]).is_file()
    out = symusic.Score.from_midi(Path(line["file"]).read_bytes())
    assert {track_instrument(t) for t in out.tracks if t.note_num()} - {add} == set(keep)  # both --keep parts kept


@pytest.mark.parametrize("case", ["no-span", "both-spans", "bad-bars", "outside", "empty", "unknown-name",
                                  "never-seen", "broken", "no-notes", "missing-song", "cannot-edit", "arrange-no-add"])
def test_cli_refuses_bad_input(edit_run, plain_run, loaded, tmp_path, case):
    _, codec, caps = loaded
    song = tmp_path / "band.mid"
    song.write_bytes(bytes(band_song().dumps_midi()))
    ckpt, task, args, want = edit_run, "infill", ["--start", "1", "--end", "3"], 2
    if case == "no-span":
        args = []
    elif case == "both-spans":
        args += ["--bars", "1-2"]
    elif case == "bad-bars":
        args = ["--bars", "4-2"]
    elif case == "outside":
        args = ["--start", "5000", "--end", "5005"]
    elif case == "empty":
        args = ["--start", "3", "--end", "3"]
    elif case == "unknown-name":
        args += ["--instruments", "kazoo-of-doom"]
    elif case == "never-seen":
        unseen = next(i for i in range(128) if i not in caps["instruments"])
        args += ["--instruments", str(unseen)]
    elif case == "broken":
        song.write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01\xe0MTrk\xff\xff")
    elif case == "no-notes":
        empty = symusic.Score(480)
        empty.tracks.append(symusic.Track("x", 0, False))
        song.write_bytes(bytes(empty.dumps_midi()))
    elif case == "missing-song":
        song = tmp_path / "absent.mid"
    elif case == "cannot-edit":
        ckpt, want = plain_run, 2  # a checkpoint that cannot do what was asked: the user can fix it
    elif case == "arrange-no-add":
        task, args = "arrange", ["--add", ","]
    r = midigen(task, "--ckpt", ckpt, song, *args, "--out", tmp_path / "o")
    assert r.returncode == want, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"midigen {task}: error:"), r.stderr
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())
