"""Sampling speed: KV-cached vs full-recompute decoding, and the time to write 60 s of music.

Random-init models (no weights needed): GPT-2 124M and the demo config (``configs/demo.toml`` when
present, else a 6-layer 384-wide stand-in). For each:

* tokens/s at a full context, batch 1: the KV cache (one position per token) against recomputing the
  whole ``block_size`` window at every step as nanoGPT's ``generate`` does; both in this run, same
  thread count, and their ratio;
* wall time of ``midigen.generate.sample.generate_samples`` for 60 s of music at batch 1 and 3, the whole
  pipeline (grammar mask, sampling, sliding window). A random model writes far sparser music than a
  trained one, so the run is repeated with a token budget at the density of real multi-track songs
  (the ``tests/songgen.py`` songs, measured here) to show what a trained model would cost.

* with ``--compare REF``: this tree against git revision REF (e.g. the commit an engine change started
  from), side by side in one run: every figure is timed in its own child process (same random-init
  demo-shaped model, seed and thread count), old and new alternating for ``--rounds`` rounds, and the
  medians are printed in one table: the engine's tokens/s (b = 1 and 16, top-k 200; b = 1, top-p 0.95),
  the bare forward's (no grammar, no draw) and their ratio; the wall time of arranging a bass under the
  first ``--seconds`` of a dense band song against sampling that long from nothing (with a time target,
  and with a token budget at the song's density) and their ratio; and new / old for each.

    .venv/bin/python benchmarks/sample_speed.py [--threads 2] [--skip-124m] [--json FILE]
    .venv/bin/python benchmarks/sample_speed.py --compare 071453a --threads 1 [--rounds 3] [--tokens 300] [--seconds 60]
    .venv/bin/python benchmarks/sample_speed.py --profile --threads 1 --tokens 600   # PYTHONPATH=OLD_TREE for another
    .venv/bin/python benchmarks/sample_speed.py --draw-in-loop --threads 1 --tokens 600 --rounds 3   # the same
    .venv/bin/python benchmarks/sample_speed.py --arrange --ckpt out/demo/model --threads 1 --rounds 3 [--compare REF]
    .venv/bin/python benchmarks/sample_speed.py --arrange --profile --ckpt out/demo/model --threads 1  # where it goes

* with ``--arrange``: issue 20's arrange target. Arranging a bass under the first ``--seconds`` (60) of
  the dense band song (songgen 7) as ``midigen arrange`` does (with ``--ckpt``: the checkpoint's note
  limits and instruments, default top-p and chord weight), against sampling that long from nothing with
  the same instruments and the song's tempo; CPU and wall seconds, their ratio, the notes written, and
  whether the kept notes come back exactly from the written file (symusic and mido). ``--ckpt`` also
  gives ``--compare``'s children the checkpoint's weights.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from songgen import make_song  # noqa: E402

from midigen.music.codec import Codec  # noqa: E402
from midigen.model.model import GPT, GPTConfig, padded_vocab  # noqa: E402
from midigen.generate.sample import generate_samples, notes_end_seconds  # noqa: E402
from midigen.generate.sampling import Sampling


def demo_config(vocab: int) -> tuple[str, GPTConfig]:
    """The demo model shape from configs/demo.toml (top level or a [model] table), else a stand-in."""
    path = ROOT / "configs" / "demo.toml"
    if path.exists():
        with open(path, "rb") as f:
            raw = tomllib.load(f)
        d = raw.get("model", raw)
        keys = ("n_layer", "n_head", "n_embd", "block_size")
        if all(k in d for k in keys):
            return "demo (configs/demo.toml)", GPTConfig(vocab_size=vocab, **{k: int(d[k]) for k in keys})
    return "demo stand-in", GPTConfig(vocab_size=vocab, block_size=512, n_layer=6, n_head=6, n_embd=384)


def clocks():
    return time.perf_counter(), time.process_time()


@torch.inference_mode()
def cached_rate(model: GPT, steps: int) -> dict:
    """Tokens/s decoding the last ``steps`` positions of a full context through the KV cache."""
    block = model.cfg.block_size
    g = torch.Generator().manual_seed(0)
    ctx = torch.randint(3, 1000, (1, block - steps), generator=g)
    cache = model.new_cache(1)
    logits, _ = model(ctx, cache=cache, last_only=True)
    tok = logits[:, -1].argmax(-1, keepdim=True)
    w0, c0 = clocks()
    for _ in range(steps):
        logits, _ = model(tok, cache=cache, last_only=True)
        tok = logits[:, -1].argmax(-1, keepdim=True)
    w1, c1 = clocks()
    assert cache.length == block
    return {"tokens": steps, "tokens_per_s": steps / (w1 - w0), "tokens_per_cpu_s": steps / (c1 - c0)}


@torch.inference_mode()
def uncached_rate(model: GPT, steps: int) -> dict:
    """Tokens/s recomputing the whole window every step (nanoGPT-style generate)."""
    block = model.cfg.block_size
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(3, 1000, (1, block), generator=g)
    w0, c0 = clocks()
    for _ in range(steps):
        logits, _ = model(idx[:, -block:], last_only=True)
        idx = torch.cat((idx, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    w1, c1 = clocks()
    return {"tokens": steps, "tokens_per_s": steps / (w1 - w0), "tokens_per_cpu_s": steps / (c1 - c0)}


def music_time(model: GPT, codec: Codec, batch: int, seconds: float | None, max_tokens: int | None) -> dict:
    w0, c0 = clocks()
    samples = generate_samples(model, codec, num_samples=batch, seconds=seconds, max_new_tokens=max_tokens,
                               instruments=[0, 33, 128], tempo=120, sampling=Sampling(seed=0, top_k=200))
    w1, c1 = clocks()
    new = sum(len(s.tokens) - s.start_index - 1 for s in samples)
    music = [notes_end_seconds(codec.decode(s.tokens)) for s in samples]
    return {"batch": batch, "wall_s": round(w1 - w0, 2), "cpu_s": round(c1 - c0, 2), "new_tokens": new,
            "tokens_per_s": round(new / (w1 - w0), 2), "music_s": [round(m, 1) for m in music]}


def song_density(codec: Codec, n: int = 10) -> float:
    """Tokens per second of music in the generated multi-track test songs (Lakh-like density)."""
    rates = []
    for s in range(n):
        toks = codec.encode_score(make_song(s))
        rates.append(len(toks) / notes_end_seconds(codec.decode(toks)))
    return float(np.mean(rates))


def bare_forward(model: GPT, tokens: int) -> float:
    """The bare forward (returns ``tokens``, for timing): one token at a time through the KV cache from a 4-token prompt,
    argmax fed back, the cache restarted when full; no grammar, no draw."""
    block = model.cfg.block_size
    with torch.inference_mode():
        cache = model.new_cache(1)
        tok = torch.tensor([[1, 3, 4, 5]])
        for _ in range(tokens):
            if cache.length + tok.shape[1] > block:
                cache.reset()
            logits, _ = model(tok, cache=cache, last_only=True)
            tok = logits[:, -1].argmax(-1, keepdim=True)
        return tokens


def arrange_song(seconds: float):
    """The dense song arrange runs under: songgen's band song 7 (150 bars), its first ``seconds``."""
    from midigen.music.timing import tick_at_seconds

    song = make_song(7, bars=150, tpq=480)
    return song.clip(0, tick_at_seconds(song, seconds), False)


def _model(ckpt: str | None):
    """(model, codec, config): the checkpoint's when ``ckpt`` is given, else the random-init demo shape."""
    if ckpt:
        from midigen.model.checkpoint import load_checkpoint

        return load_checkpoint(ckpt, "cpu")
    codec = Codec()
    _, cfg = demo_config(padded_vocab(codec.vocab_size))
    return GPT(cfg).eval(), codec, None


def as_the_commands(codec: Codec, config: dict | None, seed: int = 0) -> dict:
    """What ``midigen arrange --seed SEED`` passes besides the song (a checkpoint's note limits and
    instruments, the default top-p and chord weight); with no checkpoint (random weights) only top-p, as
    before."""
    from midigen.generate.sampling import DEFAULTS

    from midigen.model.checkpoint import capabilities, checkpoint_limits

    if config is None:
        return {"sampling": Sampling(seed=seed, top_p=0.95)}
    return {"sampling": Sampling(seed=seed, top_p=DEFAULTS["top_p"], chord_weight=DEFAULTS["chord_weight"]),
            "limits": checkpoint_limits(config), "known_instruments": capabilities(config, codec)["instruments"]}


def arranged(model, codec: Codec, song, kw: dict):
    """``arrange_edits(..., add=[33], **kw)`` on this tree or on an older one (``--compare``) whose edit
    functions took the sampling settings one by one."""
    from midigen.generate.edit import arrange_edits

    if "sampling" not in inspect.signature(arrange_edits).parameters:
        s = kw["sampling"]
        kw = {k: v for k, v in kw.items() if k != "sampling"} | {"seed": s.seed, "top_p": s.top_p,
                                                                 "chord_weight": s.chord_weight}
    return arrange_edits(model, codec, song, add=[33], **kw)


def heard_header(song, kw: dict, add: int = 33) -> list[int]:
    """The instruments an arrange's header carries: the song's as the model hears them, and ``add``."""
    from midigen.music.codec import score_instruments

    present = score_instruments(song)
    if "known_instruments" not in kw:
        return sorted(set(present) | {add})
    from midigen.generate.hearing import hearing_map, heard_instruments

    mapping = hearing_map(song, kw["known_instruments"], kw["limits"], exclude=(add,))
    return sorted(set(heard_instruments(present, mapping)) | {add})


def _track_notes(data: bytes) -> dict:
    """Each named track's notes as symusic and as mido read the file: {name: (symusic rows, mido events)}."""
    import io

    import mido
    import symusic

    out = {}
    for t in symusic.Score.from_midi(data).tracks:
        a = t.notes.numpy()
        out[t.name] = [sorted(zip(*(a[k].tolist() for k in ("time", "duration", "pitch", "velocity"))))]
    for track in mido.MidiFile(file=io.BytesIO(data)).tracks:
        now, events = 0, []
        for m in track:
            now += m.time
            if m.type in ("note_on", "note_off"):
                on = m.type == "note_on" and m.velocity > 0
                events.append((now, on, m.note, m.velocity if on else 0))
        if track.name in out:
            out[track.name].append(sorted(events))
    return out


def kept_exact(song, edited, kept_names) -> bool:
    """Every kept track's notes identical in the written file and in the song's, as symusic and mido read
    them back."""
    before, after = _track_notes(bytes(song.dumps_midi())), _track_notes(bytes(edited.dumps_midi()))
    return all(name in after and after[name] == before[name] for name in kept_names)


def engine_child(batch: int, tokens: int, threads: int, what: str, seconds: float, ckpt: str | None = None) -> None:
    """Time ``what`` with whatever ``midigen`` is on the path; print one JSON line.

    ``engine``: ``generate_samples`` of ``tokens`` new tokens (b = ``batch``, top-k 200); ``engine_p``:
    the same at b = 1 with the commands' default nucleus (top-p 0.95); ``bare``: the bare forward
    (``bare_forward``); ``arrange``: a bass part under the first ``seconds`` of the dense song (top-p
    0.95); ``sample``: ``seconds`` of music from nothing with the song's instruments and the bass
    (top-p 0.95); ``sample_dense``: the same with a token budget at the song's density instead of a
    time target (what a trained model, which writes that densely, would cost).

    With ``ckpt`` the checkpoint's weights replace the random ones, and ``arrange`` and ``sample`` run as
    the commands do (``as_the_commands``): the sample then has the instruments the arrange's header
    carries (``heard_header``) and the song's first tempo; ``arrange`` also reports whether the kept
    notes come back exactly from the written file (``kept_exact``, checked after the clock stops)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, codec, config = _model(ckpt)
    insts = [0, 33, 128] if config is None else [0, 33]
    generate_samples(model, codec, num_samples=batch, max_new_tokens=8, instruments=insts, tempo=120,
                     sampling=Sampling(seed=0))
    if what == "arrange":  # the same warm-up as the sample's: first calls and compiled code off the clock
        arranged(model, codec, arrange_song(4.0), as_the_commands(codec, config, seed=1))
    out = {"what": what, "batch": batch}
    w0, c0 = clocks()
    if what == "bare":
        out["tokens"] = bare_forward(model, tokens)
    elif what in ("engine", "engine_p"):
        samp = Sampling(seed=0, top_k=200) if what == "engine" else Sampling(seed=0, top_p=0.95)
        res = generate_samples(model, codec, num_samples=batch, max_new_tokens=tokens, instruments=insts,
                               tempo=120, sampling=samp)
        out["tokens"] = sum(len(s.tokens) - s.start_index - 1 for s in res)
    elif what == "arrange":
        song = arrange_song(seconds)
        (e,) = arranged(model, codec, song, as_the_commands(codec, config))
        out["written_notes"] = e.written
    elif what in ("sample", "sample_dense"):
        song = arrange_song(seconds)
        kw = as_the_commands(codec, config)
        dense = what == "sample_dense"
        budget = int(len(codec.encode_score(song)) * 1.1) if dense else None
        tempo = 120 if config is None else round(float(song.tempos[0].qpm)) if len(song.tempos) else 120
        res = generate_samples(model, codec, seconds=None if dense else seconds, max_new_tokens=budget,
                               instruments=heard_header(song, kw), tempo=tempo, limits=kw.get("limits"),
                               sampling=kw["sampling"])
        out["tokens"] = len(res[0].tokens) - res[0].start_index - 1
        out["notes"] = sum(t.note_num() for t in codec.decode(res[0].tokens).tracks)
    out["wall_s"], out["cpu_s"] = time.perf_counter() - w0, time.process_time() - c0
    if what == "arrange":
        import hashlib

        out["kept_exact"] = kept_exact(song, e.score, [t.name for t in song.tracks if t.note_num()])
        out["midi_sha1"] = hashlib.sha1(bytes(e.score.dumps_midi())).hexdigest()[:12]  # same seed, same file?
    if what in ("bare", "engine", "engine_p"):
        out["tokens_per_s"], out["tokens_per_cpu_s"] = out["tokens"] / out["wall_s"], out["tokens"] / out["cpu_s"]
    print(json.dumps(out))


def profile_step(tokens: int, threads: int) -> dict:
    """Where a step's CPU time goes: cProfile of ``generate_samples`` (demo shape, b = 1, top-p 0.95),
    shares of ``Decoder.decode`` by part. Works on any tree (``PYTHONPATH`` picks it)."""
    import cProfile
    import pstats

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    codec = Codec()
    _, cfg = demo_config(padded_vocab(codec.vocab_size))
    model = GPT(cfg).eval()

    def run():
        generate_samples(model, codec, num_samples=1, max_new_tokens=tokens, instruments=[0, 33, 128], tempo=120,
                         sampling=Sampling(seed=0, top_p=0.95))

    run()
    prof = cProfile.Profile(timer=time.process_time)
    prof.runcall(run)
    stats = pstats.Stats(prof).stats

    def cum(name: str, file: str) -> float:
        return sum(v[3] for k, v in stats.items() if k[2] == name and k[0].endswith(file))

    whole = cum("decode", "engine.py")
    # the grammar's step: one call on the compiled path (``advance_and_mask``, plus the first mask);
    # ``advance`` and ``mask`` on a tree from before it
    grammar = cum("advance_and_mask", "grammar.py") + cum("step_mask", "grammar.py")
    grammar = grammar or cum("advance", "grammar.py") + cum("mask", "grammar.py")
    parts = {"model forward": cum("_forward", "engine.py"), "draw": cum("draw", "engine.py"),
             "grammar advance and mask": grammar, "grammar observe": cum("observe", "grammar.py"),
             "allowed counts": cum("allowed_counts", "engine.py")}
    parts["loop, transfer, bookkeeping"] = whole - sum(parts.values())
    return {"tokens": tokens, "decode_cpu_s": round(whole, 3),
            "parts": {k: {"us_per_token": round(1e6 * v / tokens), "share": round(v / whole, 3)} for k, v in parts.items()}}


def draw_in_loop(tokens: int, threads: int, rounds: int) -> dict:
    """The draw's CPU time per token where it runs, inside the loop, right after each forward
    (``--draw-in-loop``): ``engine.draw`` wrapped in a thread-CPU clock during ``generate_samples`` (demo
    shape, random weights, b = 1), top-p 0.95, top-k 200 and neither, the three alternating for
    ``rounds`` rounds after a warm-up one; medians. A draw timed warm, alone, costs a third of this.
    Works on any tree (``PYTHONPATH`` picks it)."""
    from midigen.generate import engine

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    codec = Codec()
    _, cfg = demo_config(padded_vocab(codec.vocab_size))
    model = GPT(cfg).eval()
    inner, spent = engine.draw, [0.0]

    def timed(*args, **kw):
        t = time.thread_time()
        out = inner(*args, **kw)
        spent[0] += time.thread_time() - t
        return out

    engine.draw = timed
    kinds = {"top-p 0.95": Sampling(seed=0, top_p=0.95), "top-k 200": Sampling(seed=0, top_k=200),
             "neither": Sampling(seed=0)}
    seen = {k: [] for k in kinds}
    for r in range(rounds + 1):
        for name, sampling in kinds.items():
            spent[0] = 0.0
            generate_samples(model, codec, num_samples=1, max_new_tokens=tokens, instruments=[0, 33, 128],
                             tempo=120, sampling=sampling)
            if r:
                seen[name].append(1e6 * spent[0] / tokens)
    engine.draw = inner
    return {"tokens": tokens, "us_per_token": {k: round(float(np.median(v)), 1) for k, v in seen.items()}}


def arrange_profile(ckpt: str | None, threads: int, seconds: float) -> dict:
    """Where arrange's CPU time goes (``--arrange --profile``): the engine's parts timed in place (each
    wrapped with a CPU clock, no profiler's overhead) over one arrange as ``engine_child`` runs it, and
    the counts that explain them: chunks, the prompts' prefills, the forwards of the written part, the
    tokens it decided and how many were sampled, masks built. Works on any tree (``PYTHONPATH`` picks
    it; a part the tree lacks reads 0)."""
    from collections import Counter

    from midigen.generate import engine, grammar

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, codec, config = _model(ckpt)
    song = arrange_song(seconds)
    spent, calls, state = Counter(), Counter(), {"first": False}

    def clocked(owner, name, label, before=None):
        real = getattr(owner, name, None)
        if real is None:
            return

        def run(*a, **k):
            if before:
                before(a)
            part = label(a) if callable(label) else label
            c0 = time.process_time()
            try:
                return real(*a, **k)
            finally:
                spent[part] += time.process_time() - c0
                calls[part] += 1
        setattr(owner, name, run)

    def forward_kind(_):
        first, state["first"] = state["first"], False
        return "forward: chunk prompt (prefill)" if first else "forward: written part"

    clocked(engine.Decoder, "decode", "decode", before=lambda a: state.update(first=True))
    clocked(engine.Decoder, "_forward", forward_kind)
    clocked(grammar.Grammar, "mask", "grammar mask")
    clocked(grammar.Grammar, "forced", "grammar forced")
    clocked(grammar.Grammar, "advance", "grammar advance")
    clocked(grammar.Grammar, "chord_tones", "chord tones")
    clocked(engine, "draw", "draw")
    c0 = time.process_time()
    (e,) = arranged(model, codec, song, as_the_commands(codec, config))
    total = time.process_time() - c0
    inside = spent.pop("decode")
    chunks = calls.pop("decode")
    parts = dict(spent)
    parts["engine loop, transfers, bookkeeping"] = inside - sum(parts.values())
    parts["outside the engine (prompts, grammar set-up, splice)"] = total - inside
    decided = calls["grammar advance"]
    out = {"cpu_s": round(total, 3), "chunks": chunks, "written_notes": e.written, "tokens_decided": decided,
           "tokens_sampled": calls["draw"], "tokens_forced": decided - calls["draw"],
           "masks_built": calls["grammar mask"],
           "forwards": calls["forward: written part"] + calls["forward: chunk prompt (prefill)"],
           "parts": {k: {"cpu_s": round(v, 3), "share": round(v / total, 3), "calls": calls.get(k)}
                     for k, v in sorted(parts.items(), key=lambda kv: -kv[1])}}
    return out


def _old_tree(ref: str) -> Path:
    """``midigen`` at git revision ``ref``, unpacked into a temporary folder."""
    import io
    import subprocess
    import tarfile
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="midigen-old-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "midigen"], check=True, capture_output=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tf:
        tf.extractall(tmp, filter="data")
    return tmp


def _child(tree: Path, what: str, batch: int, tokens: int, threads: int, seconds: float,
           ckpt: str | None = None) -> dict:
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(threads))
    r = subprocess.run([sys.executable, __file__, "--engine-child", str(batch), "--what", what, "--tokens", str(tokens),
                        "--threads", str(threads), "--seconds", str(seconds), *(["--ckpt", ckpt] if ckpt else [])],
                       env=env, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def arrange_check(ckpt: str | None, rounds: int, threads: int, seconds: float, ref: str | None = None) -> dict:
    """Arranging a bass under the first ``seconds`` of the dense song against sampling that long from
    nothing, each in its own child (``engine_child``, with ``ckpt``'s weights), alternating for
    ``rounds`` rounds; with ``ref``, git revision ``ref``'s tree too, in the same rounds. Medians of the
    children's CPU seconds (wall seconds beside them), their ratio, the notes written and whether the
    kept notes came back exactly, against the targets (arrange <= 10 s; <= 1.2x the sample)."""
    import statistics

    trees = {"new": ROOT, **({"old": _old_tree(ref)} if ref else {})}
    runs = {t: {"arrange": [], "sample": []} for t in trees}
    for _ in range(rounds):
        for what in ("arrange", "sample"):
            for t, tree in trees.items():
                r = _child(tree, what, 1, 0, threads, seconds, ckpt)
                runs[t][what].append(r)
                print(json.dumps({"tree": t, **r}), flush=True)
    out = {"ckpt": ckpt, "threads": threads, "seconds": seconds, "rounds": rounds, "ref": ref,
           "load_avg": os.getloadavg()[0], "trees": {}}
    for t, r in runs.items():
        med = lambda what, k: statistics.median(x[k] for x in r[what])  # noqa: E731
        a, s = med("arrange", "cpu_s"), med("sample", "cpu_s")
        out["trees"][t] = {
            "arrange cpu s": round(a, 2), "arrange wall s": round(med("arrange", "wall_s"), 2),
            "sample cpu s": round(s, 2), "sample wall s": round(med("sample", "wall_s"), 2),
            "arrange / sample (cpu)": round(a / s, 3),
            "arrange / sample (wall)": round(med("arrange", "wall_s") / med("sample", "wall_s"), 3),
            "notes written": [x["written_notes"] for x in r["arrange"]],
            "sample notes": [x["notes"] for x in r["sample"]],
            "kept notes exact": all(x["kept_exact"] for x in r["arrange"]),
            "written file (sha1)": sorted({x["midi_sha1"] for x in r["arrange"]}),
            "target arrange <= 10 s (cpu)": a <= 10.0, "target <= 1.2x sample (cpu)": a / s <= 1.2}
    for t, row in out["trees"].items():
        print(f"--- {t}" + (f" ({ref})" if t == "old" else ""))
        for k, v in row.items():
            print(f"{k:30} {v}")
    return out


def compare_engines(ref: str, rounds: int, tokens: int, threads: int, seconds: float, batches=(1, 16),
                    arrange: bool = True, ckpt: str | None = None) -> dict:
    """Old (git ``ref``) vs this tree, each run in its own child process, old and new alternating.

    Per tree, the medians of ``rounds`` runs of: the engine's tokens/s at each batch size (top-k 200)
    and at b = 1 with top-p 0.95, the bare forward's tokens/s, and the wall time of arranging a bass
    under ``seconds`` of the dense song against sampling that long from nothing (with a time target,
    and with a token budget at the song's density). Printed side by side: engine / bare, arrange /
    sample, and new / old. The figures are per CPU second of the child (the wall-clock ones are kept in
    ``runs_wall``): on a machine shared with other jobs, CPU time is what stays put."""
    import statistics

    trees = {"old": _old_tree(ref), "new": ROOT}
    jobs = [(f"engine_b{b}", "engine", b) for b in batches] + [("engine_p_b1", "engine_p", 1), ("bare", "bare", 1)]
    if arrange:
        jobs += [("arrange", "arrange", 1), ("sample", "sample", 1), ("sample_dense", "sample_dense", 1)]
    runs = {t: {name: [] for name, _, _ in jobs} for t in trees}
    walls = {t: {name: [] for name, _, _ in jobs} for t in trees}
    for _ in range(rounds):
        for name, what, b in jobs:
            for t, tree in trees.items():
                r = _child(tree, what, b, tokens, threads, seconds, ckpt)
                runs[t][name].append(r["tokens_per_cpu_s"] if "tokens_per_s" in r else r["cpu_s"])
                walls[t][name].append(r["tokens_per_s"] if "tokens_per_s" in r else r["wall_s"])
                print(json.dumps({"tree": t, "job": name, **r}), flush=True)
    med = {t: {k: statistics.median(v) for k, v in r.items()} for t, r in runs.items()}
    out = {"ref": ref, "threads": threads, "tokens": tokens, "rounds": rounds, "arrange_seconds": seconds,
           "load_avg": os.getloadavg()[0], "runs": runs, "runs_wall": walls, "median": med, "trees": {}}
    for t in trees:
        m = med[t]
        out["trees"][t] = {
            **{f"{k} tokens/s": round(m[k], 1) for k in m if k.startswith("engine") or k == "bare"},
            "engine_b1 / bare": round(m["engine_b1"] / m["bare"], 3),
            "engine_p_b1 / bare": round(m["engine_p_b1"] / m["bare"], 3)}
        if arrange:
            out["trees"][t].update({
                "arrange s": round(m["arrange"], 2), "sample s": round(m["sample"], 2),
                "sample_dense s": round(m["sample_dense"], 2),
                "arrange / sample": round(m["arrange"] / m["sample"], 3),
                "arrange / sample_dense": round(m["arrange"] / m["sample_dense"], 3)})
    o, n = out["trees"]["old"], out["trees"]["new"]
    out["new_over_old"] = {k: round(n[k] / o[k], 3) for k in o if o[k]}
    width = max(len(k) for k in o)
    print(f"{'':{width}}  {'old ' + ref:>14}  {'new':>10}  {'new/old':>8}")
    for k in o:
        print(f"{k:{width}}  {o[k]:>14}  {n[k]:>10}  {out['new_over_old'].get(k, ''):>8}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compare", default=None, metavar="REF", help="time this engine against git revision REF")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--engine-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--what", default="engine", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=60.0, help="--compare: seconds of song to arrange and sample")
    ap.add_argument("--no-arrange", action="store_true", help="--compare: the engine and bare forward only")
    ap.add_argument("--profile", action="store_true", help="where the engine's step goes (cProfile, b = 1)")
    ap.add_argument("--draw-in-loop", action="store_true", help="the draw's CPU time per token inside the loop")
    ap.add_argument("--ckpt", default=None, help="engine children load this checkpoint (default: random weights)")
    ap.add_argument("--arrange", action="store_true",
                    help="arrange under --seconds of the dense song vs sampling that long (with --compare REF: both trees)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cached-steps", type=int, default=32)
    ap.add_argument("--uncached-steps", type=int, default=3)
    ap.add_argument("--skip-124m", action="store_true")
    ap.add_argument("--no-dense", action="store_true", help="skip the runs at real-song token density")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    if a.profile and a.arrange:
        return print(json.dumps(arrange_profile(a.ckpt, a.threads, a.seconds), indent=1))
    if a.profile:
        return print(json.dumps(profile_step(a.tokens, a.threads), indent=1))
    if a.draw_in_loop:
        return print(json.dumps(draw_in_loop(a.tokens, a.threads, a.rounds)))
    if a.engine_child is not None:
        return engine_child(a.engine_child, a.tokens, a.threads, a.what, a.seconds, a.ckpt)
    if a.arrange:
        res = arrange_check(a.ckpt, a.rounds, a.threads, a.seconds, a.compare)
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
        return None
    if a.compare is not None:
        res = compare_engines(a.compare, a.rounds, a.tokens, a.threads, a.seconds, arrange=not a.no_arrange,
                              ckpt=a.ckpt)
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
        return None
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    codec = Codec()
    vocab = padded_vocab(codec.vocab_size)
    density = song_density(codec)
    dense_tokens = int(round(60 * density))
    models = [] if a.skip_124m else [("GPT-2 124M", GPTConfig(vocab_size=vocab))]
    models.append(demo_config(vocab))
    results = {"threads": a.threads, "torch": torch.__version__, "cpus": os.cpu_count(),
               "load_avg_start": os.getloadavg()[0], "song_tokens_per_s": round(density, 1), "models": []}
    for name, cfg in models:
        model = GPT(cfg).eval()
        r = {"model": name, "config": cfg.to_dict(), "params_M": round(model.num_params() / 1e6, 1)}
        r["cached"] = cached_rate(model, a.cached_steps)
        r["uncached"] = uncached_rate(model, a.uncached_steps)
        r["speedup"] = round(r["cached"]["tokens_per_s"] / r["uncached"]["tokens_per_s"], 1)
        r["speedup_cpu"] = round(r["cached"]["tokens_per_cpu_s"] / r["uncached"]["tokens_per_cpu_s"], 1)
        print(json.dumps({k: r[k] for k in ("model", "cached", "uncached", "speedup", "speedup_cpu")}), flush=True)
        r["music_60s"] = [music_time(model, codec, b, 60.0, None) for b in (1, 3)]
        print(json.dumps({"model": name, "music_60s": r["music_60s"]}), flush=True)
        if not a.no_dense:
            r["music_60s_dense"] = [music_time(model, codec, b, None, dense_tokens) for b in (1, 3)]
            print(json.dumps({"model": name, "music_60s_dense": r["music_60s_dense"]}), flush=True)
        results["models"].append(r)
    results["load_avg_end"] = os.getloadavg()[0]
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({"load_avg": [results["load_avg_start"], results["load_avg_end"]],
                      "song_tokens_per_s": results["song_tokens_per_s"]}))


if __name__ == "__main__":
    main()
