"""Instruments play their range, and a continuation keeps the song's tempo (issue 21, items 1 and 3).

What training records (``measure_ranges`` on the tiny dataset, through the real ``midigen train`` of the
``edit_run`` fixture), what ``info`` shows, and what a model with random weights (which would write
anything) writes through the real CLI: inside every instrument's range and polyphony by default, outside
with ``--free-range``; no tempo change in a continuation unless ``--free-tempo``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import symusic
import torch

from midigen.data.dataset import Dataset
from midigen.generate.grammar import Grammar
from midigen.model.checkpoint import checkpoint_limits, read_config, resolve, save_checkpoint
from midigen.model.model import GPT, GPTConfig
from midigen.music.codec import DRUMS, Codec, Kind
from midigen.music.ranges import FAMILY_LIMITS, how_played, measure_ranges, note_limits, table_limits
from songgen import make_song
from clirun import midigen as cli

ROOT = Path(__file__).resolve().parents[1]
BASS, CELLO, FLUTE, TIMPANI = 32, 42, 73, 47

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def random_ckpt(edit_run, tmp_path_factory) -> Path:
    """The edit_run checkpoint's shape and training record (its measured ranges included) with random
    weights and no output restriction: a model that writes any id the grammar lets through."""
    config = read_config(edit_run)
    codec = Codec.load(resolve(edit_run) / "codec.json")
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_dict(config["model"]))
    return save_checkpoint(tmp_path_factory.mktemp("random") / "ckpt", model.eval(), codec, config["info"])


@pytest.fixture(scope="module")
def band_song(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("band") / "band.mid"
    make_song(7, bars=8).dump_midi(str(path))
    return path


# ----- what training records ------------------------------------------------------------------------


def test_measured_ranges_hold_the_training_notes(tiny_dataset):
    ds = Dataset(tiny_dataset)
    tokens = ds.split("train").tokens
    m = measure_ranges(ds.codec, tokens)
    assert m["instruments"] and m["tempo_change_songs"] > 0  # songgen's songs change tempo
    for key, r in m["instruments"].items():
        assert 0 <= r["low"] <= r["high"] <= 127 and r["polyphony"] >= 1 and r["notes"] >= 50
    # every song's notes, read by the codec: at least 99% of each measured instrument's inside its range
    starts = np.flatnonzero(np.asarray(tokens) == ds.codec.BOS)
    inside, total = {}, {}
    for a, b in zip(starts, list(starts[1:]) + [len(tokens)]):
        n = ds.codec.decode_events(tokens[a:b])["notes"]
        for key, r in m["instruments"].items():
            p = n["pitch"][n["instrument"] == int(key)]
            inside[key] = inside.get(key, 0) + int(((p >= r["low"]) & (p <= r["high"])).sum())
            total[key] = total.get(key, 0) + len(p)
    for key in m["instruments"]:
        assert inside[key] >= 0.99 * total[key], (key, inside[key], total[key])


def test_unmeasured_instruments_take_the_documented_table():
    limits = note_limits({"instruments": {"33": {"low": 30, "high": 60, "polyphony": 1}}})
    assert limits.of(33) == {"low": 30, "high": 60, "polyphony": 1, "source": "data"}
    assert limits.of(CELLO)["source"] == "table" and (limits.low[CELLO], limits.high[CELLO]) == (36, 76)
    assert table_limits(DRUMS) == (35, 81, 8)
    assert table_limits(105) == FAMILY_LIMITS[13]  # banjo: the ethnic family's
    old = note_limits(None)  # a checkpoint from before the ranges were recorded
    assert set(old.source) == {"table"}


def test_info_shows_the_ranges_training_recorded(edit_run):
    r = cli("info", "--ckpt", edit_run)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    recorded = read_config(edit_run)["info"]["note_ranges"]["instruments"]
    assert info["learned_tempo_changes"] is True
    assert set(info["note_ranges"]) == set(info["instrument_names"])
    bass = info["note_ranges"]["Acoustic Bass"]
    assert bass["source"] == "data" and bass["low"] == recorded[str(BASS)]["low"]


# ----- the grammar ----------------------------------------------------------------------------------


def _walk(codec, g, rng, steps):
    """Draw uniformly among the allowed ids for every row (a model that writes anything, but never
    stops while anything else is allowed)."""
    seqs = [[] for _ in range(g.B)]
    for _ in range(steps):
        m = g.mask().numpy()
        m[:, codec.EOS] &= m.sum(axis=1) == 1
        tok = np.array([rng.choice(np.flatnonzero(m[b])) for b in range(g.B)])
        for b in range(g.B):
            seqs[b].append(int(tok[b]))
        g.advance(tok)
        if g.done.all():
            break
    return seqs


def test_grammar_holds_notes_to_range_and_polyphony_and_lets_given_notes_through():
    codec = Codec()
    limits = note_limits(None)
    g = Grammar(codec, 4)
    g.for_edit((BASS, FLUTE), 20000, 3000)
    g.hold_notes(limits.low, limits.high, limits.polyphony)
    given = codec.note_token(BASS, 100)  # a kept bass note far above the range: forced all the same
    g.force_notes([48], [given], [codec.dv_start + 40 * codec.params.velocity_levels + 8])
    for seq in _walk(codec, g, np.random.default_rng(1), 1500):
        ev = codec.decode_events([codec.BOS, codec.inst_token(BASS), codec.inst_token(FLUTE),
                                  codec.tempo_token(120), *seq])
        n = ev["notes"]
        assert len(n["pitch"]) > 20
        for inst in (BASS, FLUTE):
            sel = n["instrument"] == inst
            p, on, end = n["pitch"][sel], n["time"][sel].astype(np.int64), (n["time"] + n["duration"])[sel]
            kept = (p == 100) & (on == 48) if inst == BASS else np.zeros(len(p), bool)
            assert kept.sum() == (1 if inst == BASS else 0)
            assert np.all((p[~kept] >= limits.low[inst]) & (p[~kept] <= limits.high[inst]))
            counts = np.searchsorted(np.sort(on), on, "right") - np.searchsorted(np.sort(end), on, "right")
            assert counts[~kept].max() <= limits.polyphony[inst] + (1 if inst == BASS else 0)


# ----- the commands, with a model that writes anything -----------------------------------------------


def _arranged(out_dir: Path) -> symusic.Score:
    (path,) = out_dir.glob("*.mid")
    return symusic.Score(str(path))


def test_arrange_keeps_bass_cello_flute_in_range_unless_free_range(random_ckpt, band_song, tmp_path):
    limits = checkpoint_limits(read_config(random_ckpt))
    args = ["arrange", "--ckpt", random_ckpt, band_song, "--add", "acoustic bass,cello,flute", "--seed", 3,
            "--top-p", 1]
    r = cli(*args, "--out", tmp_path / "held")
    assert r.returncode == 0, r.stderr
    held = how_played(_arranged(tmp_path / "held"), limits, (BASS, CELLO, FLUTE))
    for inst, h in held.items():
        assert h["notes"] > 0 and h["inside"] == h["notes"], (inst, h)
        assert h["max_polyphony"] <= limits.polyphony[inst], (inst, h)
    r = cli(*args, "--free-range", "--out", tmp_path / "free")
    assert r.returncode == 0, r.stderr
    free = how_played(_arranged(tmp_path / "free"), limits, (BASS, CELLO, FLUTE))
    assert sum(f["notes"] - f["inside"] for f in free.values()) > 0
    assert any(free[i]["max_polyphony"] > limits.polyphony[i] for i in free)


def _tempo_events_after(path: Path, seconds: float) -> int:
    s = symusic.Score(str(path)).to("second")
    return sum(1 for t in s.tempos if t.time > seconds + 1e-3)


def test_continuation_keeps_the_song_tempo_unless_free_tempo(random_ckpt, band_song, tmp_path):
    args = ["sample", "--ckpt", random_ckpt, "--prompt", band_song, "--prompt-seconds", 4, "--seconds", 12,
            "--seed", 5, "--top-p", 1]
    r = cli(*args, "--out", tmp_path / "kept")
    assert r.returncode == 0, r.stderr
    (kept,) = (tmp_path / "kept").glob("*.mid")
    assert _tempo_events_after(kept, 4.0) == 0
    r = cli(*args, "--free-tempo", "--out", tmp_path / "free")
    assert r.returncode == 0, r.stderr
    (free,) = (tmp_path / "free").glob("*.mid")
    assert _tempo_events_after(free, 4.0) > 0
    r = cli(*args, "--tempo", 90, "--out", tmp_path / "asked")
    assert r.returncode == 0, r.stderr
    (asked,) = (tmp_path / "asked").glob("*.mid")
    r = cli("sample", "--ckpt", random_ckpt, "--free-tempo", "--out", tmp_path / "nothing")
    assert r.returncode == 2 and "--free-tempo needs --prompt" in r.stderr
    later = [t for t in symusic.Score(str(asked)).to("second").tempos if t.time >= 4.0 - 1e-3]  # at the point
    assert len(later) == 1 and later[0].qpm == pytest.approx(90, abs=0.5)


def test_sample_from_nothing_still_holds_ranges(random_ckpt, tmp_path):
    r = cli("sample", "--ckpt", random_ckpt, "--instruments", "cello,drums", "--seconds", 8, "--seed", 2,
            "--top-p", 1, "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    (path,) = tmp_path.glob("*.mid")
    limits = checkpoint_limits(read_config(random_ckpt))
    played = how_played(symusic.Score(str(path)), limits, (CELLO, DRUMS))
    assert sum(p["notes"] for p in played.values()) > 0
    for inst, p in played.items():
        assert p["inside"] == p["notes"] and p["max_polyphony"] <= limits.polyphony[inst], (inst, p)


def test_studio_holds_ranges_unless_the_request_sets_free_range(random_ckpt, band_song, tmp_path):
    from studio_server import Server, call, wait_job

    server = Server(random_ckpt, tmp_path / "ws")
    try:
        base = server.url
        status, piece = call("POST", f"{base}/api/pieces/upload?name=band.mid", raw=band_song.read_bytes())
        assert status == 201, piece
        limits = checkpoint_limits(read_config(random_ckpt))
        played = {}
        for free in (False, True):
            status, job = call("POST", f"{base}/api/pieces/{piece['id']}/arrange",
                               {"add": ["cello"], "seed": 4, "top_p": 1, "free_range": free})
            assert status == 202, job
            job, _, _ = wait_job(base, job)
            assert job["status"] == "done", job
            status, data = call("GET", f"{base}/api/pieces/{piece['id']}/versions/{job['versions'][0]}/midi")
            assert status == 200
            played[free] = how_played(symusic.Score.from_midi(data), limits, (CELLO,))[CELLO]
        held, free = played[False], played[True]
        assert held["notes"] > 0 and held["inside"] == held["notes"]
        assert held["max_polyphony"] <= limits.polyphony[CELLO]
        assert free["inside"] < free["notes"]
    finally:
        assert server.stop() == 0, "".join(server.stderr)[-2000:]


def test_limits_that_hold_nothing_leave_the_grammar_as_it_was():
    """Limits wide enough to allow everything give exactly the mask of a grammar without limits, step by
    step through the header, chords and shifts of a sampled song (the limits only ever take ids away)."""
    codec = Codec()
    rng = np.random.default_rng(3)
    plain, wide = Grammar(codec, 2), Grammar(codec, 2)
    wide.hold_notes(np.zeros(129, np.int64), np.full(129, 127), np.full(129, 1000))
    chords = 0
    for _ in range(600):
        m = plain.mask()
        assert torch.equal(m, wide.mask())
        tok = np.array([rng.choice(np.flatnonzero(row)) for row in m.numpy()])
        chords += int(np.any((codec.kinds(tok) == Kind.NOTE) & (plain.last_note.numpy() >= 0)))
        plain.advance(tok)
        wide.advance(tok)
        if plain.done.all():
            break
    assert chords > 0  # several notes in one step came up
