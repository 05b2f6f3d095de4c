"""Sampling: grammar, length control, prompts, instruments, determinism and the `sample` command.

A tiny GPT is trained here for a few seconds on songs from ``songgen``, so the tests exercise a real
checkpoint without depending on the training module. Its context (128 tokens) is much shorter than the
songs it writes, so every long sample goes through the sliding window.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from midigen.music.codec import DRUMS, Codec
from midigen.generate.grammar import Grammar
from midigen.generate.sample import generate, generate_samples, notes_end_seconds, prompt_plan, sample_score
from midigen.generate.sampling import Sampling
from songgen import make_song, make_song_bytes

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 128


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    from midigen.model.checkpoint import save_checkpoint
    from midigen.model.model import GPT, GPTConfig, padded_vocab

    codec = Codec()
    data = np.concatenate([codec.encode_score(make_song(s)).astype(np.int64) for s in range(24)])
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=padded_vocab(codec.vocab_size), block_size=BLOCK, n_layer=2, n_head=2, n_embd=64)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    rng = np.random.default_rng(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for _ in range(150):
        ix = rng.integers(0, len(data) - 65, 8)
        x = torch.from_numpy(np.stack([data[i : i + 64] for i in ix]))
        y = torch.from_numpy(np.stack([data[i + 1 : i + 65] for i in ix]))
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    assert loss.item() < 6.0
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", model.eval(), codec, {"test": True})


@pytest.fixture(scope="module")
def loaded(tiny_ckpt):
    from midigen.model.checkpoint import load_checkpoint

    model, codec, _ = load_checkpoint(tiny_ckpt, "cpu")
    return model, codec


def cli(*args, env=None, timeout=180):
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "midigen", "sample", *map(str, args)], cwd=ROOT, env=e,
                          capture_output=True, text=True, timeout=timeout)


# ----- helpers ----------------------------------------------------------------------------------


def skipped_tokens(codec: Codec, tokens) -> int:
    """Tokens the decoder would skip: out-of-place ids in the body, unpaired NOTE/DV."""
    t = np.asarray(tokens, dtype=np.int64)
    assert t[0] == codec.BOS and t[-1] == codec.EOS
    body = t[codec.header_length(t) : -1]
    kind = codec.kinds(body)
    bad = int(np.count_nonzero((kind == 0) | (kind == 3) | (kind == 4)))
    note, dv = kind == 5, kind == 6
    paired = note[:-1] & dv[1:]
    bad += int(note.sum() - paired.sum()) + int(dv.sum() - paired.sum())
    return bad


def check_midi(data: bytes, instruments=None):
    """Parses with mido and symusic, every note has a duration and an off, values in range."""
    import mido
    import symusic

    mf = mido.MidiFile(file=io.BytesIO(data))
    for track in mf.tracks:
        on = {}
        for msg in track:
            if msg.type == "note_on" and msg.velocity > 0:
                on[(msg.channel, msg.note)] = on.get((msg.channel, msg.note), 0) + 1
            elif msg.type in ("note_off", "note_on"):
                on[(msg.channel, msg.note)] = on.get((msg.channel, msg.note), 0) - 1
        assert all(v == 0 for v in on.values()), "a note is left sounding"
    score = symusic.Score.from_midi(data)
    seen = set()
    for track in score.tracks:
        if not track.note_num():
            continue
        a = track.notes.numpy()
        assert (a["duration"] > 0).all()
        assert ((a["pitch"] >= 0) & (a["pitch"] <= 127)).all()
        assert ((a["velocity"] >= 1) & (a["velocity"] <= 127)).all()
        seen.add(DRUMS if track.is_drum else int(track.program))
    if instruments is not None:
        assert seen <= set(instruments)
    return score


# ----- the grammar ------------------------------------------------------------------------------


def test_grammar_accepts_what_the_encoder_writes():
    codec = Codec()
    for seed in range(3):
        toks = codec.encode_score(make_song(seed, bars=12)).astype(np.int64)
        g = Grammar(codec, 1)
        for t in toks[1:-1]:
            assert g.allowed([t])[0], codec.token_name(t)
            g.advance([t])


def test_random_sampling_under_the_mask_decodes_without_skips():
    codec = Codec()
    rng = np.random.default_rng(0)
    B = 16
    g = Grammar(codec, B)
    g.advance(np.full(B, codec.BOS))
    g.set_target(6.0, 400)  # a time target for half the rows ...
    g.target[B // 2 :] = float("inf")  # ... and only a token budget for the others
    g.budget[: B // 2] = 10_000
    seqs = [[codec.BOS] for _ in range(B)]
    kinds = codec.kinds(np.arange(codec.vocab_size))
    for _ in range(12_000):
        m = g.mask()
        assert m[~g.done].any(axis=1).all()
        tok = np.full(B, codec.EOS)
        for b in np.flatnonzero(~g.done):  # a random kind among those allowed, then a random id of it
            ids = np.flatnonzero(m[b])
            k = rng.choice(np.unique(kinds[ids]))
            tok[b] = rng.choice(ids[kinds[ids] == k])
            seqs[b].append(int(tok[b]))
        g.advance(tok)
        if (g.done | (g.budget <= 0)).all():
            break
    for b, s in enumerate(seqs):
        if s[-1] != codec.EOS:
            s.append(codec.EOS)
        assert skipped_tokens(codec, s) == 0, b
        ev = codec.decode_events(s)
        assert len(ev["notes"]["time"]) == codec.count_notes(s)
        notes_inst = set(ev["notes"]["instrument"].tolist())
        assert notes_inst <= set(ev["header_instruments"])
    for b in range(B // 2):  # the time target rows ended by EOS, within it
        assert g.done[b]
        score = codec.decode(seqs[b])
        assert notes_end_seconds(score) <= 6.0 * 1.1 + 1e-6


# ----- the API ----------------------------------------------------------------------------------


def test_many_seeds_give_valid_midi(loaded):
    model, codec = loaded
    for seed in range(3):
        samples = generate_samples(model, codec, num_samples=6, seconds=6,
                                   sampling=Sampling(seed=seed, temperature=1.2))
        for s in samples:
            assert skipped_tokens(codec, s.tokens) == 0
            score = sample_score(codec, s)
            check_midi(bytes(score.dumps_midi()))
            assert codec.count_notes(s.tokens) > 0


@pytest.mark.parametrize("seconds", [20, 60])
def test_length_matches_seconds_through_the_sliding_window(loaded, seconds):
    model, codec = loaded
    samples = generate_samples(model, codec, num_samples=3, seconds=seconds, sampling=Sampling(seed=11, top_k=50))
    assert max(len(s.tokens) for s in samples) > 2 * BLOCK  # the context slid
    for s in samples:
        length = notes_end_seconds(sample_score(codec, s))
        assert 0.9 * seconds <= length <= 1.1 * seconds, length


def test_max_tokens_gives_that_many_new_tokens(loaded):
    model, codec = loaded
    out = generate(model, codec, num_samples=2, max_new_tokens=300, sampling=Sampling(seed=3, top_p=0.9))
    for t in out:
        assert t[-1] == codec.EOS
        assert len(t) - 2 == 300  # BOS and EOS around exactly the budget
        assert skipped_tokens(codec, t) == 0


def test_instruments_are_masked(loaded):
    model, codec = loaded
    out = generate(model, codec, num_samples=4, seconds=10, instruments=[0, DRUMS], tempo=100,
                   sampling=Sampling(seed=2, repetition_penalty=1.3))
    for t in out:
        ev = codec.decode_events(t)
        assert ev["header_instruments"] == [0, DRUMS]
        assert set(ev["notes"]["instrument"].tolist()) <= {0, DRUMS}
        assert abs(ev["tempo_bpm"][0] - 100) < 1.5


def test_prompt_notes_come_back(loaded, tmp_path):
    from midigen.generate.continuation import continued

    model, codec = loaded
    path = tmp_path / "prompt.mid"
    path.write_bytes(make_song_bytes(100, bars=12))
    song, plan = prompt_plan(codec, path, seconds=8)
    prompt = plan.prompt  # the song's notes before 8 s, then the silence up to 8 s
    samples = generate_samples(model, codec, num_samples=2, seconds=20, prompt_tokens=prompt,
                               instruments=[DRUMS, 40], tempo=90, sampling=Sampling(seed=4))
    p_head = codec.header_length(prompt)
    before = song.clip(0, plan.cut, False)
    want_notes = {(t.program if not t.is_drum else DRUMS, n.pitch, n.time, n.duration, n.velocity)
                  for t in before.tracks for n in t.notes}
    assert want_notes and plan.start_tick >= plan.cut
    for s in samples:
        head = codec.header_length(s.tokens)
        body = prompt[p_head:]
        assert np.array_equal(s.tokens[head : head + len(body)], body)  # verbatim
        ev = codec.decode_events(s.tokens)
        assert set(ev["header_instruments"]) >= {DRUMS, 40}
        later = ev["tempo_time"] >= s.start_steps
        assert np.any(np.abs(ev["tempo_bpm"][later] - 90) < 1.0)  # the requested tempo where the new part starts
        score = check_midi(bytes(continued(codec, song, plan, s.tokens, s.start_index).dumps_midi()))
        got = {(t.program if not t.is_drum else DRUMS, n.pitch, n.time, n.duration, n.velocity)
               for t in score.tracks for n in t.notes}
        assert want_notes <= got  # the song's own notes, untouched
        assert min(n[2] for n in got - want_notes) >= plan.cut  # the new ones from the point on
        assert notes_end_seconds(score) > plan.start_seconds + 0.8 * 20


def test_silence_and_loops_are_reported():
    from midigen.generate.sample import Sample, find_problems

    codec = Codec()
    head = list(codec.header([0], 120.0))
    note = [codec.note_token(0, 60), codec.dv_token(12, 80)]
    silent = head + note + [codec.shift_token(96)] * 3 + note + [codec.EOS]
    s = Sample(np.array(silent, np.uint16), len(head), 0, 0.0, None)
    assert any("silent for" in w for w in find_problems(codec, s))
    loop = head + (note + [codec.shift_token(6)]) * 40 + note + [codec.EOS]
    s = Sample(np.array(loop, np.uint16), len(head), 0, 0.0, None)
    assert any("3-token pattern" in w for w in find_problems(codec, s))
    fine = head + sum(([codec.note_token(0, 60 + i % 7), codec.dv_token(12, 80), codec.shift_token(6 + i % 5)]
                       for i in range(40)), []) + note + [codec.EOS]
    assert find_problems(codec, Sample(np.array(fine, np.uint16), len(head), 0, 0.0, None)) == []


def test_bad_arguments_are_usage_errors(loaded):
    from midigen.errors import UsageError

    model, codec = loaded
    for kw in (dict(top_p=1.5), dict(top_p=0), dict(temperature=0), dict(top_k=0), dict(repetition_penalty=0)):
        with pytest.raises(UsageError):
            Sampling(**kw)  # checked once, where the value is made
    for kw in (dict(tempo=5), dict(instruments=[200])):
        with pytest.raises(UsageError):
            generate(model, codec, max_new_tokens=5, **kw, sampling=Sampling(seed=0))
    drawn = Sampling(top_p=0.9)
    assert 0 <= drawn.seed < 2**31 and drawn.seed == drawn.seed  # a missing seed is drawn once, then reported
    a, b = (generate(model, codec, max_new_tokens=20, sampling=drawn)[0] for _ in range(2))
    assert np.array_equal(a, b)


# ----- the command ------------------------------------------------------------------------------


def _written(stdout: str, suffix: str) -> list[Path]:
    return [ROOT / line.strip() if not Path(line.strip()).is_absolute() else Path(line.strip())
            for line in stdout.splitlines() if line.strip().endswith(suffix)]


@pytest.fixture(scope="module")
def cli_runs(tiny_ckpt, tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    common = ["--ckpt", tiny_ckpt, "--seconds", 12, "--num-samples", 2, "--seed", 5, "--top-k", 40]
    first = cli(*common, "--out", d / "a", "--wav", "--png")
    second = cli(*common, "--out", d / "b")
    return first, second


def test_cli_writes_files_and_summaries(cli_runs):
    first, _ = cli_runs
    assert first.returncode == 0, first.stderr
    mids = _written(first.stdout, ".mid")
    assert len(mids) == 2
    for m in mids:
        check_midi(m.read_bytes())
    summaries = [line for line in first.stdout.splitlines() if line.startswith("sample ")]
    assert len(summaries) == 2 and all(" s, " in s and "notes" in s and "instruments:" in s for s in summaries)


def test_cli_same_seed_same_bytes(cli_runs):
    first, second = cli_runs
    assert second.returncode == 0, second.stderr
    a, b = _written(first.stdout, ".mid"), _written(second.stdout, ".mid")
    assert a[0].parent != b[0].parent
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


def test_cli_wav_is_audible_and_as_long_as_the_song(cli_runs):
    import symusic
    import wave

    first, _ = cli_runs
    for w, m in zip(_written(first.stdout, ".wav"), _written(first.stdout, ".mid")):
        with wave.open(str(w)) as f:
            assert f.getnchannels() == 2 and f.getsampwidth() == 2
            seconds = f.getnframes() / f.getframerate()
            pcm = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").astype(np.float64) / 32768
        rms = float(np.sqrt(np.mean(pcm**2)))
        assert rms > 0.01, rms
        assert np.max(np.abs(pcm)) < 0.95  # normalized below full scale: no clipping
        song = notes_end_seconds(symusic.Score.from_midi(m.read_bytes()))
        assert abs(seconds - song) < 1.0, (seconds, song)


def test_cli_png_is_a_picture(cli_runs):
    first, _ = cli_runs
    pngs = _written(first.stdout, ".png")
    assert len(pngs) == 2
    for p in pngs:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_cli_play_without_audio_device_exits_0(tiny_ckpt, tmp_path):
    # with no sound card here the real pygame path fails and reports; a machine with one gets the dummy driver
    env = {"SDL_AUDIODRIVER": "dummy"} if Path("/dev/snd").exists() else {}
    r = cli("--ckpt", tiny_ckpt, "--max-tokens", 40, "--seed", 1, "--play", "--out", tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "nothing played" in r.stdout and ".wav" in r.stdout.split("nothing played")[-1]
    assert list(tmp_path.glob("*.wav"))


def test_cli_prompt_and_instruments(tiny_ckpt, tmp_path):
    import symusic

    prompt = tmp_path / "p.mid"
    prompt.write_bytes(make_song_bytes(7, bars=8))
    r = cli("--ckpt", tiny_ckpt, "--prompt", prompt, "--prompt-seconds", 4, "--instruments", "drums,violin",
            "--seconds", 8, "--seed", 2, "--tempo", 90, "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    (mid,) = _written(r.stdout, ".mid")
    score = check_midi(mid.read_bytes())
    head = Codec().encode(make_song_bytes(7, bars=8))
    allowed = {int(t) - Codec().inst_start for t in head[1 : Codec().header_length(head)]
               if Codec().inst_start <= t < Codec().note_start} | {DRUMS, 40}
    assert {DRUMS if t.is_drum else t.program for t in score.tracks if t.note_num()} <= allowed
    assert isinstance(score, symusic.Score)


@pytest.mark.parametrize("case", ["missing-ckpt", "bad-prompt", "missing-prompt", "bad-instrument", "top-p",
                                  "prompt-seconds", "tampered"])
def test_cli_refuses_bad_input(tiny_ckpt, tmp_path, case):
    ckpt = tiny_ckpt
    args = []
    if case == "missing-ckpt":
        ckpt = tmp_path / "nope"
    elif case == "bad-prompt":
        (tmp_path / "bad.mid").write_bytes(b"this is not a MIDI file at all")
        args = ["--prompt", tmp_path / "bad.mid"]
    elif case == "missing-prompt":
        args = ["--prompt", tmp_path / "absent.mid"]
    elif case == "bad-instrument":
        args = ["--instruments", "piano,kazoo-of-doom"]
    elif case == "top-p":
        args = ["--top-p", "1.5"]
    elif case == "prompt-seconds":
        args = ["--prompt-seconds", "3"]
    elif case == "tampered":
        ckpt = tmp_path / "tampered"
        shutil.copytree(tiny_ckpt, ckpt)
        w = ckpt / "model.safetensors"
        data = bytearray(w.read_bytes())
        data[len(data) // 2] ^= 0x01
        w.write_bytes(bytes(data))
    r = cli("--ckpt", ckpt, "--max-tokens", 10, "--out", tmp_path / "o", *args)
    want = (2,)
    assert r.returncode in want, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("midigen sample: error:"), r.stderr
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_commands_and_the_studio_share_the_nucleus_default():
    """sample, infill and arrange (and the studio's API) sample with top-p 0.95 unless told; 1 turns it off."""
    from midigen.cli import build_parser
    from midigen.generate.sampling import TOP_P
    from midigen.studio.schemas import Sampling

    p = build_parser()
    assert TOP_P == 0.95
    for argv in (["sample", "--ckpt", "x"], ["infill", "--ckpt", "x", "s.mid", "--bars", "1-2"],
                 ["arrange", "--ckpt", "x", "s.mid", "--add", "bass"]):
        assert p.parse_args(argv).top_p == TOP_P
        assert p.parse_args([*argv, "--top-p", "1"]).top_p == 1.0
    assert Sampling().top_p == TOP_P
