"""Weight precision at load (``--precision``): the choice and its refusals, same seed same music at
each precision, kept notes exact in arrange at each, int8's logits close to fp32's, and int8's
output head: exact about the support, rebuilt with it, the same in eval as in sampling.

The model is conftest's ``edit_run`` (trained through the real `midigen train`); its blocks are far
below the size where ``auto`` picks int8, so int8 is asked for by name where it is tested.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import symusic
import torch

from midigen.errors import UsageError
from midigen.generate.sample import generate_samples
from midigen.generate.sampling import Sampling
from midigen.model.checkpoint import load_checkpoint
from midigen.model.model import GPT, GPTConfig
from midigen.model.precision import INT8_MIN_WEIGHTS, Bf16Linear, block_linear_weights, resolve_precision
from midiread import track_notes
from songgen import make_song

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16", "int8")

pytestmark = pytest.mark.usefixtures("one_thread")


def midigen(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "midigen", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_auto_follows_the_device_and_the_model_size():
    cpu = torch.device("cpu")
    small = GPT(GPTConfig(vocab_size=256, n_layer=1, n_head=2, n_embd=64, block_size=32))
    big = GPT(GPTConfig(vocab_size=256, n_layer=3, n_head=4, n_embd=384, block_size=32))
    assert block_linear_weights(small) < INT8_MIN_WEIGHTS <= block_linear_weights(big)
    assert resolve_precision("auto", cpu, small) == "fp32"
    assert resolve_precision("auto", cpu, big) == "int8"
    assert resolve_precision("auto", torch.device("mps"), big) == "fp32"
    for p in PRECISIONS:
        assert resolve_precision(p, cpu, small) == p


def test_int8_off_the_cpu_and_unknown_names_are_refused(edit_run):
    with pytest.raises(UsageError, match="int8 runs on CPUs only"):
        load_checkpoint(edit_run, "cuda", precision="int8")  # refused before any CUDA call
    with pytest.raises(UsageError, match="unknown precision"):
        load_checkpoint(edit_run, "cpu", precision="fp16")
    r = midigen("sample", "--ckpt", edit_run, "--precision", "fp16", "--max-tokens", "8")
    assert r.returncode == 2 and "invalid choice: 'fp16'" in r.stderr


@pytest.mark.parametrize("precision", PRECISIONS)
def test_conversion_touches_the_blocks_and_int8s_head_only(edit_run, precision):
    model, _, _ = load_checkpoint(edit_run, "cpu", precision=precision)
    assert model.precision == precision
    assert model.wte.weight.dtype == torch.float32 and model.head.weight is model.wte.weight
    kinds = {type(m) for m in model.blocks.modules()}
    want = {"fp32": torch.nn.Linear, "bf16": Bf16Linear, "int8": torch.ao.nn.quantized.dynamic.Linear}[precision]
    assert want in kinds
    if precision != "fp32":
        assert torch.nn.Linear not in kinds
    if precision == "int8":  # the head too: an int8 copy of the support's rows, the embedding itself untouched
        assert isinstance(model.support_head, torch.ao.nn.quantized.dynamic.Linear)
        assert model.support_head.out_features == len(model.support)
    else:
        assert model.support_head is None
    fp32, _, _ = load_checkpoint(edit_run, "cpu", precision="fp32")
    assert model.num_params() == fp32.num_params() == sum(p.numel() for p in fp32.parameters())


@pytest.mark.parametrize("precision", PRECISIONS)
def test_same_seed_same_music_at_each_precision(edit_run, precision):
    """Two loads, two runs, one seed: the same tokens (the conversion and its kernels are deterministic)."""
    runs = []
    for _ in range(2):
        model, codec, _ = load_checkpoint(edit_run, "cpu", precision=precision)
        samples = generate_samples(model, codec, num_samples=2, max_new_tokens=120,
                                   sampling=Sampling(top_k=40, seed=11))
        runs.append([s.tokens.tolist() for s in samples])
    assert runs[0] == runs[1]


def _notes_symusic(score, name: str) -> list:
    (t,) = [t for t in score.tracks if t.name == name]
    a = t.notes.numpy()
    return sorted(zip(*(a[k].tolist() for k in ("time", "duration", "pitch", "velocity"))))



@pytest.mark.parametrize("precision", PRECISIONS)
def test_arrange_keeps_notes_exactly_at_each_precision(edit_run, tmp_path, precision):
    from midigen.model.checkpoint import capabilities

    model, codec, config = load_checkpoint(edit_run, "cpu")
    caps = capabilities(config, codec)
    song = make_song(3, bars=8, tpq=384)
    names = [t.name for t in song.tracks]
    keep = "Bass" if "Bass" in names else names[0]
    src = tmp_path / "song.mid"
    src.write_bytes(bytes(song.dumps_midi()))
    original = src.read_bytes()
    kept = next(t for t in song.tracks if t.name == keep)
    kept_id = 128 if kept.is_drum else kept.program
    add = next(i for i in caps["instruments"] if i != kept_id)
    r = midigen("arrange", "--ckpt", edit_run, src, "--add", add, "--keep", kept_id, "--seed", 3,
                "--precision", precision, "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    (line,) = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    written = Path(line["file"]).read_bytes()
    assert _notes_symusic(symusic.Score.from_midi(written), keep) == _notes_symusic(symusic.Score.from_midi(original), keep)
    assert track_notes(written, keep) == track_notes(original, keep)


def test_int8_logits_stay_close_to_fp32(edit_run, tiny_dataset):
    """On real songs' tokens: the argmax over the trained support agrees at most positions and the
    cross-entropy moves by well under a percent."""
    ref, codec, _ = load_checkpoint(edit_run, "cpu", precision="fp32")
    q, _, _ = load_checkpoint(edit_run, "cpu", precision="int8")
    tokens = np.fromfile(tiny_dataset / "val.bin", dtype=np.uint16)[: 4 * 128 + 1].astype(np.int64)
    x = torch.from_numpy(tokens[:-1]).view(4, 128)
    y = torch.from_numpy(tokens[1:]).view(-1)
    with torch.inference_mode():
        a, b = ref(x)[0], q(x)[0]
    s = ref.support if ref.support is not None else slice(None)
    agree = (a[..., s].argmax(-1) == b[..., s].argmax(-1)).float().mean().item()
    ce_a = torch.nn.functional.cross_entropy(a.reshape(-1, a.size(-1)), y).item()
    ce_b = torch.nn.functional.cross_entropy(b.reshape(-1, b.size(-1)), y).item()
    assert agree >= 0.9, agree
    assert abs(ce_b / ce_a - 1) < 0.01, (ce_a, ce_b)
    assert not torch.equal(a, b)  # int8 did change the weights


def test_eval_scores_each_precision_close_to_fp32(edit_run, tiny_dataset):
    """`midigen eval --precision`: int8 and bf16 bits/note within 1% of fp32's on the same tokens."""
    bits = {}
    for p in PRECISIONS:
        r = midigen("eval", "--ckpt", edit_run, "--data", tiny_dataset, "--split", "val", "--precision", p)
        assert r.returncode == 0, r.stderr
        bits[p] = json.loads(r.stdout.strip().splitlines()[-1])["bits_per_note"]
    assert abs(bits["int8"] / bits["fp32"] - 1) < 0.01 and abs(bits["bf16"] / bits["fp32"] - 1) < 0.01, bits


def _int8_pair(edit_run):
    ref, _, _ = load_checkpoint(edit_run, "cpu", precision="fp32")
    q, _, _ = load_checkpoint(edit_run, "cpu", precision="int8")
    assert ref.support is not None  # the test model trains on a support, as every real run does
    return ref, q


@torch.inference_mode()
def test_int8_head_keeps_the_support_exact(edit_run):
    """At int8 the ids outside the support still get no computed logit: each gets exactly the smoothed
    share (their total probability is epsilon, as at fp32), and only the support's logits move."""
    ref, q = _int8_pair(edit_run)
    x = torch.randint(0, ref.cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(4))
    outside = torch.ones(ref.cfg.vocab_size, dtype=torch.bool)
    outside[ref.support] = False
    for model in (ref, q):
        p = torch.softmax(model(x)[0].double(), -1)
        out = p[..., outside]
        assert torch.allclose(out.sum(-1), torch.full_like(out.sum(-1), model.support_epsilon), rtol=1e-6)
        assert torch.equal(out.amax(-1), out.amin(-1))  # one share for every id outside, none computed
    a, b = ref(x)[0][..., ref.support], q(x)[0][..., q.support]
    assert not torch.equal(a, b) and (a - b).abs().mean() < 0.05 * a.abs().mean()


@torch.inference_mode()
def test_int8_head_follows_the_support_and_the_rows(edit_run):
    """``set_support`` rebuilds the int8 head from the rows it restricts to (an adapter changes both),
    and with no support the head covers the whole vocabulary; it always computes ``h @ rows.T``."""
    _, q = _int8_pair(edit_run)
    h = torch.randn(3, q.cfg.n_embd, generator=torch.Generator().manual_seed(5))
    ids = q.support[::2].tolist()
    q.wte.weight[ids[0]] *= 2  # as an adapter's new rows do, before it sets its support
    for support in (ids, None):
        q.set_support(support, 1e-4)
        rows = q.wte.weight if support is None else q.wte.weight[ids]
        assert q.support_head.out_features == len(rows)
        want = h @ rows.T
        assert (q.support_head(h) - want).abs().max() < 0.05 * want.abs().max()
    q.set_head_maker(None)
    assert q.support_head is None and torch.equal(q._full_logits(h), q.head(h))


@torch.inference_mode()
def test_int8_eval_scores_with_the_head_sampling_uses(edit_run, tiny_dataset):
    """``sum_nll`` (what `midigen eval` adds up) and the sampler's logits use the same int8 head."""
    _, q = _int8_pair(edit_run)
    tokens = np.fromfile(tiny_dataset / "val.bin", dtype=np.uint16)[: 2 * 64 + 1].astype(np.int64)
    x = torch.from_numpy(tokens[:-1]).view(2, 64)
    y = torch.from_numpy(tokens[1:]).view(2, 64)
    logits = q(x)[0]
    ce = torch.nn.functional.cross_entropy(logits.double().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
    assert abs(q.sum_nll(x, y).item() / ce.item() - 1) < 1e-5


@torch.inference_mode()
def test_int8_keeps_its_kv_cache_in_bfloat16(edit_run, tiny_dataset):
    """At int8 keys and values are stored, and attended over, in bfloat16 (half the bytes a step reads
    besides the weights); fp32 and bf16 keep them float32. A prefill, then one token at a time through
    that cache, gives the logits the whole sequence gets at once without a cache (float32 attention)
    within the rounding, and the cross-entropy moves by well under a percent."""
    dtypes = {p: load_checkpoint(edit_run, "cpu", precision=p)[0].new_cache(1).k.dtype for p in PRECISIONS}
    assert dtypes == {"fp32": torch.float32, "bf16": torch.float32, "int8": torch.bfloat16}
    q, _, _ = load_checkpoint(edit_run, "cpu", precision="int8")
    tokens = np.fromfile(tiny_dataset / "val.bin", dtype=np.uint16)[: 2 * 64 + 1].astype(np.int64)
    x = torch.from_numpy(tokens[:-1]).view(2, 64)
    y = torch.from_numpy(tokens[1:]).view(-1)
    whole = q(x)[0]
    cache = q.new_cache(2)
    steps = [q(x[:, :32], cache=cache)[0]] + [q(x[:, t : t + 1], cache=cache)[0] for t in range(32, 64)]
    cached = torch.cat(steps, 1)
    assert cache.length == 64 and cache.k[:, :, :, :64].abs().sum() > 0
    a, b = whole[..., q.support], cached[..., q.support]
    assert not torch.equal(a, b) and (a - b).abs().mean() < 0.05 * a.abs().mean()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.9
    ce = [torch.nn.functional.cross_entropy(z.reshape(-1, z.size(-1)), y).item() for z in (whole, cached)]
    assert abs(ce[1] / ce[0] - 1) < 0.01, ce
