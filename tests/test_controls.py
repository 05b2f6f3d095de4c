"""Controls in training headers, the sampler's --style/--key/--density/--time-signature, info --ckpt."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import PYTHON, REPO
from midigen.music.codec import Codec, Kind, parse_key
from midigen.errors import UsageError
from midigen.generate.controls import resolve
from midigen.music.controls import DROP_P
from midigen.generate.sampling import Sampling


def cli(*args, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([PYTHON, "-m", "midigen", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.fixture(scope="module")
def styled_data(tmp_path_factory, music21_dir) -> Path:
    """The real music21 pieces, styled by collection folder (chorale, fiddle, palestrina, ...)."""
    out = tmp_path_factory.mktemp("styled") / "data"
    r = cli("prepare", music21_dir, "--style-from", "folder", "--out", out, "--val-frac", "0.15", "--test-frac",
            "0.15", "--workers", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    return out


def train_styles(data: Path, source: Path) -> list[str]:
    """The collection folders (the first folder under the source) of the train split's files."""
    rows = [json.loads(line) for line in (data / "files.jsonl").open()]
    return sorted({Path(r["name"]).relative_to(source).parts[0] for r in rows if r["split"] == "train"})


@pytest.fixture(scope="module")
def styled_run(styled_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run") / "model"
    r = cli("train", REPO / "configs" / "test.toml", f"--data={styled_data}", f"--out={run}", "--steps=12",
            "--eval_interval=6", "--eval_tokens=1024")
    assert r.returncode == 0, r.stderr[-2000:]
    return run


def test_windows_carry_controls_with_dropout(styled_data, music21_dir):
    from midigen.data.dataset import Dataset, WindowSampler

    ds = Dataset(styled_data)
    codec, sp = ds.codec, ds.split("train")
    assert ds.controls.styles == train_styles(styled_data, music21_dir) and len(ds.controls.styles) >= 2
    counts = np.zeros(3)
    n = 0
    s = WindowSampler(sp, 64, seed=1, transpose=False)
    for step in range(8):
        x, y = s.batch(step, 0, 32)
        for row, target in zip(x, y):
            h = codec.header_length(row)
            kinds = codec.kinds(row[:h])
            groups = [(kinds == Kind.STYLE).sum(), (kinds == Kind.KEY).sum(), (kinds == Kind.DENSITY).sum()]
            assert all(g <= 1 for g in groups[1:])
            counts += np.array(groups) > 0
            n += 1
            # the controls sit right after BOS (v3), in style, key, density order, before the instruments
            ctl = kinds[(kinds >= Kind.STYLE) & (kinds <= Kind.DENSITY)]
            assert (np.diff(ctl) >= 0).all()
            if len(ctl):
                assert row[0] == codec.BOS and (kinds[1 : 1 + len(ctl)] == ctl).all()
                assert kinds[1 + len(ctl)] == Kind.INST
    kept = counts / n
    assert np.all(np.abs(kept - (1 - DROP_P)) < 0.12), kept  # each control left out ~30% of the time


def test_song_controls_match_files_jsonl(styled_data):
    from midigen.data.dataset import Dataset

    ds = Dataset(styled_data)
    codec, sp = ds.codec, ds.split("train")
    rows = [json.loads(line) for line in (styled_data / "files.jsonl").open()]
    by_offset = {r["offset"]: r for r in rows if r["split"] == "train"}
    rates = sorted(r["notes"] / r["seconds"] for r in by_offset.values())
    lo, hi = ds.controls.density_edges
    assert sum(r < lo for r in rates) == pytest.approx(len(rates) / 3, abs=1.5)
    for i, start in enumerate(sp.starts):
        r = by_offset[int(start)]
        styles, key, density = sp.song_controls(i)
        assert styles == [codec.style_token(ds.controls.styles.index(s)) for s in r["styles"]]
        assert key == [codec.key_token(parse_key(r["key"]))]
        rate = r["notes"] / r["seconds"]
        assert density == [codec.density_token(0 if rate < lo else 1 if rate < hi else 2)]


def test_transposition_moves_the_key(styled_data):
    from midigen.data.dataset import Dataset, WindowSampler

    ds = Dataset(styled_data)
    codec, sp = ds.codec, ds.split("train")
    plain = WindowSampler(sp, 64, seed=2, transpose=False).batch(0, 0, 32)[0]
    moved = WindowSampler(sp, 64, seed=2, transpose=True).batch(0, 0, 32)[0]
    checked = 0
    for a, b in zip(plain, moved):
        is_note = (a >= codec.note_start) & (a < codec.dv_start)
        is_key = (a >= codec.key_start) & (a < codec.density_start)
        if not is_key.any() or (a == b).all():
            continue
        shift = int(np.unique(b[is_note] - a[is_note])[0])
        ka, kb = int(a[is_key][0]) - codec.key_start, int(b[is_key][0]) - codec.key_start
        assert kb == (ka % 12 + shift) % 12 + 12 * (ka // 12)  # same mode, tonic moved with the notes
        checked += 1
    assert checked >= 5


def test_eval_rows_with_controls_score_the_same_tokens(styled_data):
    from midigen.data.dataset import Dataset, eval_rows

    sp = Dataset(styled_data).split("val")
    flat = lambda i: [t for g in sp.song_controls(i) for t in g]
    x0, y0 = eval_rows(sp, 64, 10**9, skip_header=True)
    x1, y1 = eval_rows(sp, 64, 10**9, controls=flat, skip_header=True)
    t0, t1 = y0[y0 >= 0], y1[y1 >= 0]
    assert len(t0) == len(t1) and (t0 == t1).all()
    assert (x1[:, 0] == sp.codec.BOS).all()
    # every chunk's context carries the controls
    assert all(((row >= sp.codec.style_start) & (row < sp.codec.EDIT)).any() for row in x1)


def test_info_ckpt_json(styled_run, styled_data, music21_dir):
    r = cli("info", "--ckpt", styled_run)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["styles"] == train_styles(styled_data, music21_dir)
    assert info["densities"] == ["low", "medium", "high"] and len(info["density_notes_per_second"]) == 2
    assert len(info["keys"]) == 24  # transposition reaches every key
    assert "4/4" in info["time_signatures"] and info["instruments"] and info["can_edit"] is False
    assert info["step"] == 12 or info["step"] == 6


@pytest.mark.parametrize("flag, value, listed", [
    ("--style", "jazz", "chorale, fiddle"),
    ("--style", "chorale,jazz", "chorale, fiddle"),
    ("--time-signature", "7/8", "4/4"),
    ("--time-signature", "three", "N/D"),
    ("--key", "H minor", "C major"),
    ("--instruments", "gunshot", "Acoustic Grand Piano"),
])
def test_unknown_names_exit_2_listing_valid_ones(styled_run, tmp_path, flag, value, listed):
    r = cli("sample", "--ckpt", styled_run, flag, value, "--seconds", "2", "--out", tmp_path)
    assert r.returncode == 2, r.stderr
    assert listed in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not list(tmp_path.glob("*.mid"))


def test_sample_with_every_control(styled_run, tmp_path):
    from midigen.model.checkpoint import capabilities, load_checkpoint
    from midigen.generate.sample import generate_samples

    model, codec, config = load_checkpoint(styled_run)
    caps = capabilities(config, codec)
    ids, ts = resolve(caps, codec, style="fiddle,chorale", key="F# minor", density="high", time_signature="3/4")
    assert ts == (3, 4)
    want = [codec.style_token(0), codec.style_token(1), codec.key_token(parse_key("F# minor")), codec.density_token(2)]
    assert ids == want
    for instruments in (None, [0]):
        samples = generate_samples(model, codec, num_samples=3, seconds=4, controls=ids, time_signature=ts,
                                   instruments=instruments, tempo=100 if instruments else None,
                                   sampling=Sampling(seed=5))
        for s in samples:
            h = codec.header_length(s.tokens)
            head = [int(t) for t in s.tokens[:h]]
            # v3: the controls right after BOS, so the instruments are chosen knowing them; the meter after TEMPO
            assert head[1:5] == want and head[-1] == codec.ts_token(3, 4), [codec.token_name(t) for t in head]
            score = codec.decode(s.tokens)
            assert [(t.numerator, t.denominator) for t in score.time_signatures] == [(3, 4)]
    # a prompt's header takes the controls too
    prompt = samples[0].tokens[: codec.header_length(samples[0].tokens) + 12]
    ids2, _ = resolve(caps, codec, key="D")
    (s,) = generate_samples(model, codec, seconds=2, prompt_tokens=prompt, controls=ids2, time_signature=(2, 4),
                            sampling=Sampling(seed=1))
    h = codec.header_length(s.tokens)
    assert [int(s.tokens[1]), int(s.tokens[h - 1])] == [codec.key_token(2), codec.ts_token(2, 4)]
    assert codec.kinds(s.tokens[2:3])[0] == Kind.INST


def test_v2_checkpoints_keep_their_controls_after_the_meter():
    """A v2 codec (datasets and checkpoints made before v3) keeps the order it was trained with."""
    from midigen.generate.sample import _prefix
    from midigen.music.sequences import header_with

    for version, first in ((2, False), (3, True)):
        codec = Codec(version=version)
        assert codec.controls_first is first
        ctl = [codec.style_token(1), codec.key_token(7)]
        base = codec.header([0, 33], bpm=90, time_signature=(3, 4)).astype(np.int64)
        full = header_with(codec, base, controls=ctl)
        prefix, done = _prefix(codec, None, [0, 33], 90, ctl, codec.ts_token(3, 4))
        assert done and full.tolist() == prefix.tolist()
        want = [codec.BOS, *ctl, *base[1:]] if first else [*base, *ctl]
        assert full.tolist() == want
        assert codec.header_length(np.concatenate((full, [codec.shift_token(4)]))) == len(full)
        assert codec.base_header(full).tolist() == base.tolist()


def test_sample_cli_with_controls(styled_run, tmp_path):
    r = cli("sample", "--ckpt", styled_run, "--style", "chorale", "--key", "G", "--density", "low",
            "--time-signature", "3/4", "--seconds", "3", "--seed", "3", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    (mid,) = tmp_path.glob("*.mid")
    score = Codec().read_midi(mid.read_bytes())
    assert [(t.numerator, t.denominator) for t in score.time_signatures] == [(3, 4)]


def test_no_controls_means_the_model_chooses(styled_run):
    from midigen.model.checkpoint import load_checkpoint
    from midigen.generate.sample import generate_samples

    model, codec, _ = load_checkpoint(styled_run)
    for s in generate_samples(model, codec, num_samples=4, seconds=3, sampling=Sampling(seed=2)):
        kinds = codec.kinds(s.tokens)
        assert not ((kinds >= Kind.STYLE) & (kinds <= Kind.DENSITY)).any()


def test_eval_controls_flag(styled_run, styled_data):
    r = cli("eval", "--ckpt", styled_run, "--data", styled_data, "--controls", "--max-tokens", "3000")
    assert r.returncode == 0, r.stderr
    c = json.loads(r.stdout)["controls"]
    assert c["notes"] > 0 and c["bits_per_note_with"] > 0 and c["ratio"] == pytest.approx(
        c["bits_per_note_with"] / c["bits_per_note_without"])


def test_v1_dataset_and_checkpoint_still_sample(tmp_path, music21_dir):
    """A codec v1 dataset (no controls) trains and samples; asking it for a style is a clear error."""
    from midigen.model.model import padded_vocab

    codec = Codec(version=1)
    data = tmp_path / "v1"
    data.mkdir()
    songs = [codec.encode_score(codec.read_midi(p.read_bytes())) for p in sorted(music21_dir.rglob("*.mid"))[:12]]
    rows, offsets = [], {"train": 0, "val": 0, "test": 0}
    bins = {k: [] for k in offsets}
    for i, song in enumerate(songs):
        split = "val" if i == 0 else "test" if i == 1 else "train"
        rows.append({"name": f"s{i}", "split": split, "offset": offsets[split], "notes": codec.count_notes(song),
                     "tokens": len(song)})
        bins[split].append(song)
        offsets[split] += len(song)
    for k, v in bins.items():
        np.concatenate(v).astype(np.uint16).tofile(data / f"{k}.bin")
    (data / "files.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "meta.json").write_text(json.dumps({"codec": codec.to_dict(), "vocab_size": codec.vocab_size}))
    run = tmp_path / "run"
    r = cli("train", REPO / "configs" / "test.toml", f"--data={data}", f"--out={run}", "--steps=4",
            "--eval_interval=4", "--eval_tokens=512")
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads(cli("info", "--ckpt", run).stdout)
    assert info["codec_version"] == 1 and info["styles"] == []
    r = cli("sample", "--ckpt", run, "--seconds", "2", "--out", tmp_path / "s", "--time-signature", "4/4")
    assert r.returncode == 0, r.stderr
    r = cli("sample", "--ckpt", run, "--seconds", "2", "--out", tmp_path / "s", "--style", "chorale")
    assert r.returncode == 2 and "no style" in r.stderr, r.stderr


def test_edit_commands_take_style_key_density(styled_data, music21_dir, tmp_path):
    """infill/arrange steer like sample: known controls are used, an unknown style exits 2 listing the valid
    ones, and nothing is written for it."""
    run = tmp_path / "edit-model"
    r = cli("train", REPO / "configs" / "test.toml", f"--data={styled_data}", f"--out={run}", "--steps=8",
            "--eval_interval=8", "--eval_tokens=1024", "--edit-fraction=0.5")
    assert r.returncode == 0, r.stderr[-2000:]
    styles = json.loads(cli("info", "--ckpt", run).stdout)["styles"]
    song = sorted((music21_dir / "chorale").rglob("*.mid"))[0]
    out = tmp_path / "edits"
    r = cli("infill", "--ckpt", run, song, "--bars", "2-3", "--style", styles[0], "--key", "G", "--density", "low",
            "--seed", "1", "--out", out)
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["task"] for line in r.stdout.splitlines()] == ["infill"]
    r = cli("arrange", "--ckpt", run, song, "--add", "viola", "--style", "jazz", "--out", tmp_path / "none")
    assert r.returncode == 2 and ", ".join(styles) in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "none").exists()
    r = cli("arrange", "--ckpt", run, song, "--add", "viola", "--time-signature", "3/4", "--out", tmp_path / "none")
    assert r.returncode == 2  # an edit keeps the song's own meter: no such flag


# ----- instruments: one parser, resolved against what the checkpoint knows ----------------------------


def test_instrument_names_resolve_among_the_checkpoints_instruments():
    from midigen.generate.controls import resolve_instruments

    guitars = [24, 25, 26, 27]  # a model that knows four guitars and nothing else
    assert resolve_instruments("guitar", guitars) == [24]
    assert resolve_instruments("Acoustic Guitar (steel)", guitars) == [25]
    assert resolve_instruments("electric", guitars) == [26]  # a part of a name it knows, not of all GM
    assert resolve_instruments("guitar, 27", guitars) == resolve_instruments(["guitar", 27], guitars) == [24, 27]
    assert resolve_instruments(["jazz,clean"], guitars) == [26, 27]
    assert resolve_instruments("piano", []) == [0]  # a checkpoint that records nothing: all of General MIDI


@pytest.mark.parametrize("typed", ["strings", "Kazoo of Doom", "drums", "0", "128"])
def test_an_unknown_instrument_quotes_the_request_and_lists_only_what_the_checkpoint_knows(typed):
    from midigen.generate.controls import resolve_instruments

    with pytest.raises(UsageError) as e:
        resolve_instruments(typed, [40, 41, 42, 52])  # violin, viola, cello, choir: no drums, no piano
    msg = str(e.value)
    assert f"unknown instrument {typed!r}: this checkpoint knows" in msg and "\n" not in msg
    assert "Violin (40)" in msg and "Choir Aahs (52)" in msg
    assert "Drums" not in msg and "Piano" not in msg
