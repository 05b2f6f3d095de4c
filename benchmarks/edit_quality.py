"""Editing benchmarks (issue 10): does the context help, does it sound like the corpus, what does it cost.

    python benchmarks/edit_quality.py both-sides --ckpt RUN --data DATA [--spans 200]
        (a) 4-bar spans drawn at random from the test split: bits/note of the span's notes given the
            music on both sides (the editing sequence) vs the same model given only what comes before
            (plain left-to-right scoring of the same notes). Target: ratio <= 0.90. Also reported: the
            same editing prompt with what comes after the span taken out (the same music before it),
            which isolates what the after side is worth from the change of format and room.
    python benchmarks/edit_quality.py harmonize --ckpt RUN --data DATA [--pieces 50] [--style chorale]
        (b) test pieces of --style (the chorales) with several parts: bits/note of the other parts over
            the first --quarters (halved until the written part fits half the context, as arrange's
            chunks do), given the top part (arrange with only the top part kept) vs given nothing (the
            same task with no kept part). Target: ratio <= 0.85.
    python benchmarks/edit_quality.py overlap --ckpt RUN --data DATA [--spans 64]
        (c) music-feature overlap (midigen.eval.metrics) of infilled 4-bar spans against the real spans they
            replace. Target: >= 0.7 on every feature.
    python benchmarks/edit_quality.py cost [--data data/demo] [--out out/bench] [--edit-run out/demo/model]
        (d) continuation cost: trains configs/demo.toml twice at equal steps (edit_fraction 0 and the
            config's own), or reuses out/bench/{plain,edit} (or --edit-run: the model `make demo` trained
            with the same config); test bits/note of plain continuation of both (`midigen eval`).
            Target: edit/plain <= 1.03. About 2 x 8 minutes on 2 cores.
    python benchmarks/edit_quality.py speed [--ckpt RUN] [--threads 2]
        (e) seconds for a 4-bar infill of a 3-minute song and for arranging 60 s, and the prefill and
            per-token cost of an edit against `sample`'s per-token cost (demo model shape; a random-init
            one when no --ckpt is given: the time per token does not depend on the weights).

Every mode prints JSON lines; nothing is hard-coded.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from midigen.music.codec import Codec  # noqa: E402
from midigen.music.sequences import (EditTask, edit_prompt, emit, given_positions, song_units, split_units,  # noqa: E402
                               written_tokens)

LN2 = float(np.log(2))


def _load(ckpt):
    from midigen.model.checkpoint import load_checkpoint

    model, codec, _ = load_checkpoint(ckpt, "cpu")
    return model, codec


def _songs(data, split="test", style=None):
    """The split's songs as token arrays; with ``style``, only files tagged with it (files.jsonl)."""
    from midigen.data.dataset import Dataset

    sp = Dataset(data).split(split)
    keep = None
    if style:
        with open(Path(data) / "files.jsonl", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        keep = {r["offset"] for r in rows if r.get("split") == split and style in (r.get("styles") or [])}
        if not keep:
            sys.exit(f"no {split} file of {data} has the style {style!r}")
    return [np.asarray(sp.tokens[a:b], np.int64) for a, b in zip(sp.starts, sp.ends) if keep is None or a in keep]


@torch.inference_mode()
def bits_of(model, tokens: np.ndarray, first: int, codec=None) -> float:
    """Bits the model spends on ``tokens[first:]`` given ``tokens[:first]`` (one window); with ``codec``,
    an editing sequence's given notes (forced by the decoder, not written by the model) are not counted."""
    x = torch.from_numpy(tokens[None, :-1])
    logits, _ = model(x)
    logp = F.log_softmax(logits[0].float(), dim=-1)
    y = torch.from_numpy(tokens[1:])
    nats = -logp[torch.arange(len(y)), y]
    scored = np.arange(1, len(tokens)) >= first
    if codec is not None:
        scored &= ~given_positions(codec, tokens)[1:]
    return float(nats[torch.from_numpy(scored)].sum()) / LN2


def _span_task(codec, units, rng, quarters=16):
    spq = codec.params.steps_per_quarter
    notes = units.time[units.tok1 >= 0]
    if len(notes) < 8 or notes[-1] - notes[0] < 3 * quarters * spq:
        return None
    start = int(rng.integers(notes[0] + quarters * spq, notes[-1] - quarters * spq))
    start -= start % spq
    targets = tuple(sorted(set(units.inst[units.tok1 >= 0].tolist())))
    return EditTask(start, start + quarters * spq, targets)


def _written(codec, units, task, block: int):
    """(units, tokens, notes) the task writes (with any given notes interleaved, v3), or None when it
    writes nothing or more than half the context."""
    _, middle, given = split_units(units, task, codec.interleaves_edits)
    mid = written_tokens(codec, middle, task, given)
    k = len(middle)
    if k == 0 or len(mid) > block // 2:
        return None
    return middle, mid, k


def both_sides(a) -> None:
    model, codec = _load(a.ckpt)
    block = model.cfg.block_size
    rng = np.random.default_rng(a.seed)
    both = left = before_only = notes = 0.0
    n = 0
    songs = _songs(a.data)
    for i in range(a.spans * 5):
        if n >= a.spans:
            break
        head, units = song_units(codec, songs[i % len(songs)])
        task = _span_task(codec, units, rng, a.quarters)
        if task is None:
            continue
        target = _written(codec, units, task, block)
        if target is None:
            continue
        middle, mid, k = target
        built = edit_prompt(codec, head, units, task, block + 1 - len(mid))
        if built is None:
            continue
        seq = np.concatenate((built[0], mid))
        # the same notes left to right: the song's header, then as much of what comes before as fits
        before = units.select(units.time < task.start)
        plain_mid, _ = emit(codec, middle, start_time=task.start)
        prev, _ = emit(codec, before, start_time=int(before.time[0]) if len(before) else 0)
        room = block + 1 - len(head) - len(plain_mid)
        plain = np.concatenate((head, prev[max(0, len(prev) - room):], plain_mid))
        # and the same prompt without what comes after the span (the same music before it): what the
        # after side alone is worth, apart from the format and the room
        prompt = built[0]
        n_after = len(prompt) - 2 - int(np.flatnonzero(prompt == codec.HOLE_END)[0])
        cut = edit_prompt(codec, head, units.select(units.time < task.end), task, len(prompt) - n_after)
        if cut is None:
            continue
        before_only += bits_of(model, np.concatenate((cut[0], mid)), len(cut[0]), codec)
        both += bits_of(model, seq, len(built[0]), codec)
        left += bits_of(model, plain, len(plain) - len(plain_mid))
        notes += k
        n += 1
    print(json.dumps({"bench": "both_sides", "spans": n, "notes": int(notes),
                      "bits_per_note_both_sides": round(both / notes, 4),
                      "bits_per_note_left_only": round(left / notes, 4),
                      "ratio": round(both / left, 4), "target": 0.90,
                      "bits_per_note_same_prompt_without_after": round(before_only / notes, 4),
                      "ratio_vs_same_prompt_without_after": round(both / before_only, 4)}))


def harmonize(a) -> None:
    model, codec = _load(a.ckpt)
    block = model.cfg.block_size
    spq = codec.params.steps_per_quarter
    given = alone = notes = 0.0
    n = 0
    for song in _songs(a.data, style=a.style):
        if n >= a.pieces:
            break
        head, units = song_units(codec, song)
        insts = sorted(set(units.inst[units.tok1 >= 0].tolist()))
        if len(insts) < 2:
            continue
        note = units.tok1 >= 0
        top = max(insts, key=lambda i: np.mean((units.tok0[note & (units.inst == i)] - codec.note_start) % 128))
        others = tuple(i for i in insts if i != top)
        start = int(units.time[note][0])
        quarters, target = a.quarters, None
        while target is None and quarters >= 2:  # the first chunk arrange would write: halved until it fits
            task = EditTask(start, start + quarters * spq, others, drop_after=True, drop_before=True)
            target = _written(codec, units, task, block)
            quarters //= 2
        if target is None:
            continue
        _, mid, k = target
        without = units.select(~(note & (units.inst == top)))
        _, mid_alone, _ = _written(codec, without, task, block)
        with_top = edit_prompt(codec, head, units, task, block + 1 - len(mid))
        no_top = edit_prompt(codec, head, without, task, block + 1 - len(mid_alone))
        if with_top is None or no_top is None:
            continue
        given += bits_of(model, np.concatenate((with_top[0], mid)), len(with_top[0]), codec)
        alone += bits_of(model, np.concatenate((no_top[0], mid_alone)), len(no_top[0]), codec)
        notes += k
        n += 1
    print(json.dumps({"bench": "harmonize", "pieces": n, "notes": int(notes),
                      "bits_per_note_given_top": round(given / max(notes, 1), 4),
                      "bits_per_note_without": round(alone / max(notes, 1), 4),
                      "ratio": round(given / max(alone, 1e-9), 4), "target": 0.85}))


def overlap(a) -> None:
    from midigen.generate.edit import infill_edits, read_song
    from midigen.generate.sampling import Sampling
    from midigen.eval.metrics import FEATURES, _histogram_overlap, overlap_area, piece_features

    model, codec = _load(a.ckpt)
    rng = np.random.default_rng(a.seed)
    gen, real = [], []
    songs = _songs(a.data)
    for i in range(a.spans * 3):  # through the test songs as often as it takes, a new span each time
        if len(gen) >= a.spans:
            break
        score = codec.decode(songs[i % len(songs)])
        s = read_song(codec, score)
        task = _span_task(codec, s.units, rng, a.quarters)
        if task is None:
            continue
        (e,) = infill_edits(model, codec, score, start_s=_seconds(score, s, task.start),
                            end_s=_seconds(score, s, task.end), sampling=Sampling(seed=i))
        qs, qe = e.span_steps
        for out, dest in ((e.score, gen), (score, real)):
            clip = out.copy().clip(int(s.tick_of(qs)), int(s.tick_of(qe)), True).shift_time(-int(s.tick_of(qs)))
            try:
                f = piece_features(codec, codec.encode_score(clip))
            except Exception:  # an empty span
                f = None
            if f is not None:
                dest.append(f)
    res = {"bench": "overlap", "generated": len(gen), "real": len(real), "overlap": {}}
    for name in FEATURES:
        if name == "ioi_histogram":
            v = _histogram_overlap(np.concatenate([g["ioi"] for g in gen]), np.concatenate([r["ioi"] for r in real]))
        else:
            v = overlap_area(np.array([g[name] for g in gen]), np.array([r[name] for r in real]))
        res["overlap"][name] = round(float(v), 4)
    res["min_overlap"] = min(res["overlap"].values())
    res["target"] = 0.7
    print(json.dumps(res))


def _seconds(score, song, step) -> float:
    from midigen.music.timing import seconds_at_tick

    return float(seconds_at_tick(score, int(song.tick_of(step))))


def cost(a) -> None:
    runs = {"plain": ["--edit-fraction", "0"], "edit": []}
    out = {}
    for name, extra in runs.items():
        run = Path(a.edit_run) if name == "edit" and a.edit_run else Path(a.out) / name
        if not (run / "best" / "config.json").exists():
            subprocess.run([sys.executable, "-m", "midigen", "train", "configs/demo.toml", f"--data={a.data}",
                            f"--out={run}", *extra], check=True, cwd=ROOT)
        r = subprocess.run([sys.executable, "-m", "midigen", "eval", "--ckpt", str(run), "--data", a.data,
                            "--split", "test"], check=True, cwd=ROOT, capture_output=True, text=True)
        out[name] = json.loads(r.stdout.strip().splitlines()[-1])["bits_per_note"]
    print(json.dumps({"bench": "cost", "bits_per_note_plain": out["plain"], "bits_per_note_edit": out["edit"],
                      "ratio": round(out["edit"] / out["plain"], 4), "target": 1.03}))


def speed(a) -> None:
    import tomllib

    from midigen.generate.edit import arrange_edits, infill_edits
    from midigen.model.model import GPT, GPTConfig, padded_vocab
    from midigen.generate.sample import generate_samples
    from midigen.generate.sampling import Sampling
    from songgen import make_song

    torch.set_num_threads(a.threads)
    if a.ckpt:
        model, codec = _load(a.ckpt)
    else:
        codec = Codec()
        cfg = tomllib.loads((ROOT / "configs" / "demo.toml").read_text())
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=padded_vocab(codec.vocab_size), **{
            k: cfg[k] for k in ("n_layer", "n_head", "n_embd", "block_size")})).eval()
    from midigen.music.timing import tick_at_seconds

    song = make_song(7, bars=150, tpq=480)  # a bit over 3 minutes at this song's tempos
    length = _tick_seconds(song)
    counted = {"n": 0}

    def count(tokens):
        counted["n"] = tokens.shape[1]

    t0 = time.perf_counter()
    (e,) = infill_edits(model, codec, song, start_s=60.0, end_s=60.0 + 4 * 4 * 60 / 120,
                        sampling=Sampling(seed=0, top_k=50), listener=count)
    t_infill = time.perf_counter() - t0
    short = song.copy().clip(0, tick_at_seconds(song, 60.0), False)  # its first 60 s
    t0 = time.perf_counter()
    arrange_edits(model, codec, short, add=[33], sampling=Sampling(seed=0, top_k=50))
    t_arrange = time.perf_counter() - t0
    t0 = time.perf_counter()
    s = generate_samples(model, codec, num_samples=1, max_new_tokens=200, instruments=[0, 33],
                         sampling=Sampling(seed=0, top_k=50))
    t_sample = time.perf_counter() - t0
    block = model.cfg.block_size
    x = torch.randint(3, 300, (1, block // 2))
    with torch.inference_mode():
        t0 = time.perf_counter()
        model(x, cache=model.new_cache(1), last_only=True)
        t_prefill = time.perf_counter() - t0
    print(json.dumps({"bench": "speed", "threads": a.threads, "song_seconds": round(length, 1),
                      "infill_4_bars_s": round(t_infill, 2), "infill_span_s": [round(x, 2) for x in e.span_seconds],
                      "infill_notes_written": e.written, "arrange_60s_s": round(t_arrange, 2), "arrange_song_s": round(_tick_seconds(short), 1),
                      "prefill_half_block_s": round(t_prefill, 4),
                      "sample_per_token_ms": round(1000 * t_sample / (len(s[0].tokens) - s[0].start_index), 2),
                      "model": "checkpoint" if a.ckpt else "demo shape, random init"}))


def _tick_seconds(score) -> float:
    s = score.to("second")
    return max(float(np.max(t.notes.numpy()["time"] + t.notes.numpy()["duration"])) for t in s.tracks if t.note_num())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["both-sides", "harmonize", "overlap", "cost", "speed"])
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--out", default="out/bench")
    ap.add_argument("--spans", type=int, default=200)
    ap.add_argument("--pieces", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quarters", type=int, default=16, help="span length in quarter notes (16 = 4 bars of 4/4)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--edit-run", default=None,
                    help="cost: a finished configs/demo.toml run to use as the editing side (e.g. out/demo/model)")
    ap.add_argument("--style", default="chorale", help="harmonize: test pieces of this style ('' for all)")
    a = ap.parse_args()
    if a.mode in ("both-sides", "harmonize", "overlap") and not a.ckpt:
        ap.error(f"{a.mode} needs --ckpt")
    {"both-sides": both_sides, "harmonize": harmonize, "overlap": overlap, "cost": cost, "speed": speed}[
        a.mode.replace("_", "-")](a)


if __name__ == "__main__":
    main()
