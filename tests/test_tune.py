"""`midigen tune` and adapter dirs as checkpoints, through the real CLI in subprocesses.

The base is the shared ``edit_run`` checkpoint; the music taught is a small folder of real music21
pieces and generated band songs. Also: shared checkpoints and adapters are untrusted input (a config
asking for a huge model, a lying manifest, a corrupt weights file), and a real SIGKILL mid-tune.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from midigen.errors import UsageError
from midigen.model import adapter as adapters
from midigen.model.checkpoint import load_checkpoint, resolve

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
TUNE_ARGS = ["--steps", "40", "--eval-every", "5", "--patience", "100", "--style", "mine", "--workers", "1",
             "--no-progress", "--device", "cpu"]


def midigen(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "midigen", *map(str, args)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def one_line_error(r: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert r.returncode == code, (r.returncode, r.stderr[-2000:])
    lines = [line for line in r.stderr.splitlines() if line.strip() and "warning" not in line]
    assert len(lines) == 1 and "error:" in lines[0], r.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture(scope="module")
def music(tmp_path_factory, music21_dir, songs_dir) -> Path:
    """Ten files the user wants taught: four real music21 pieces and six band songs (drums, bass...).

    The held-out file (chosen by content hash) is then a band song, like most of what is taught: a
    40-step tune of the tiny base lowers its bits steadily, where a lone held-out chorale stays in the noise."""
    d = tmp_path_factory.mktemp("my_music")
    for p in sorted(music21_dir.rglob("*.mid"))[:4] + sorted(songs_dir.glob("*.mid"))[:6]:
        shutil.copy(p, d / p.name)
    return d


@pytest.fixture(scope="module")
def tuned(edit_run, music, tmp_path_factory) -> dict:
    """An uninterrupted tune, with the base's file hashes before and after."""
    base = resolve(edit_run)
    before = file_hashes(base)
    out = tmp_path_factory.mktemp("tuned") / "adapter"
    r = midigen("tune", "--ckpt", edit_run, music, "--out", out, *TUNE_ARGS)
    assert r.returncode == 0, r.stderr[-3000:]
    return {"out": out, "base": base, "before": before, "result": json.loads(r.stdout)}


def test_tune_writes_an_adapter_and_never_the_base(tuned):
    out, result = tuned["out"], tuned["result"]
    for name in ("adapter.safetensors", "adapter.json", "log.jsonl", "loss.png"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "adapter.json").read_text())
    assert manifest["base"]["sha256"] == hashlib.sha256((tuned["base"] / "config.json").read_bytes()).hexdigest()
    assert manifest["rank"] == 8 and manifest["new_styles"] == ["mine"]
    assert result["files"] == {"train": 9, "val": 1}  # 10% held out, by content hash
    assert result["step"] == 40 and result["val_bits_per_note"] < result["base_val_bits_per_note"]
    # the new style's control id is outside the base's support: the adapter brings its embedding row
    base_config = json.loads((tuned["base"] / "config.json").read_text())
    assert set(base_config["support"]) < set(manifest["support"])
    assert set(manifest["new_ids"]) == set(manifest["support"]) - set(base_config["support"])
    weights = (out / "adapter.safetensors").stat().st_size
    assert weights < 0.5 * (tuned["base"] / "model.safetensors").stat().st_size
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any("val_bits_per_note" in r for r in rows) and any("loss" in r for r in rows)
    assert "128" in manifest["note_ranges"]["instruments"]  # the band songs' drums: generation may play them
    assert file_hashes(tuned["base"]) == tuned["before"]


def test_adapter_dir_is_a_checkpoint_everywhere(tuned, tiny_dataset, tmp_path):
    out, base = tuned["out"], tuned["base"]
    r = midigen("info", "--ckpt", out)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["adapter"]["rank"] == 8 and info["adapter"]["base_sha256"]
    assert "mine" in info["styles"] and info["adapter"]["new_styles"] == ["mine"]
    one_line_error(midigen("sample", "--ckpt", base, "--style", "mine", "--max-tokens", "8", "--out", tmp_path),
                   2, "mine")  # the base never learned the style
    r = midigen("sample", "--ckpt", out, "--style", "mine", "--max-tokens", "120", "--seed", "3", "--out",
                tmp_path / "gen")
    assert r.returncode == 0, r.stderr[-2000:]
    import symusic

    mids = list((tmp_path / "gen").glob("*.mid"))
    assert len(mids) == 1 and symusic.Score(str(mids[0])).note_num() > 0
    r = midigen("eval", "--ckpt", out, "--data", tiny_dataset, "--split", "val", "--max-tokens", "1500")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["bits_per_note"] > 0
    assert file_hashes(base) == tuned["before"]


def test_merged_weights_compute_what_the_tuned_layers_did(tuned):
    """Loading merges ``B @ A`` into the base weights: the logits equal the unmerged low-rank model's."""
    manifest = adapters.read_manifest(tuned["out"])
    merged, _, config = load_checkpoint(tuned["out"])
    model, _, _ = load_checkpoint(tuned["base"])
    model.set_support(manifest["support"], model.support_epsilon)
    adapters.attach(model, manifest["rank"], manifest["alpha"], manifest["new_ids"], seed=0)
    tensors = load_file(str(tuned["out"] / "adapter.safetensors"))
    with torch.no_grad():
        for name, p in adapters.trainable(model).items():
            p.copy_(tensors[name])
    model.eval()
    idx = torch.tensor([manifest["new_ids"][:1] + manifest["support"][:40]])
    with torch.no_grad():
        want, got = model(idx)[0], merged(idx)[0]
        base_logits = load_checkpoint(tuned["base"])[0](idx)[0]
    assert torch.allclose(want, got, atol=1e-4), (want - got).abs().max()
    assert not torch.allclose(base_logits, got, atol=1e-3)  # the adapter changed something
    assert config["adapter"]["rank"] == manifest["rank"]
    quantized = load_checkpoint(tuned["out"], precision="int8")[0]  # merged in float32, then converted
    with torch.no_grad():
        assert torch.isfinite(quantized(idx)[0]).all()


def test_a_changed_or_missing_base_is_refused_naming_its_hash(tuned, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tuned["base"], base)
    ad = tmp_path / "adapter"
    shutil.copytree(tuned["out"], ad, ignore=shutil.ignore_patterns("data", ".tune"))
    manifest = json.loads((ad / "adapter.json").read_text())
    manifest["base"]["path"] = str(base)
    del manifest["base"]["relative"]  # as adapters written before it was recorded: only the absolute path
    (ad / "adapter.json").write_text(json.dumps(manifest))
    assert midigen("info", "--ckpt", ad).returncode == 0  # the same content elsewhere is the same base
    config = json.loads((base / "config.json").read_text())
    config["info"]["step"] = 41
    (base / "config.json").write_text(json.dumps(config))
    want = manifest["base"]["sha256"]
    one_line_error(midigen("sample", "--ckpt", ad, "--max-tokens", "8", "--out", tmp_path), 2, want, "changed")
    one_line_error(midigen("info", "--ckpt", ad), 2, want)
    shutil.rmtree(base)
    one_line_error(midigen("sample", "--ckpt", ad, "--max-tokens", "8", "--out", tmp_path), 2, want, "missing")


def test_a_project_folder_moved_whole_keeps_its_adapter_working(tuned, tmp_path):
    """The manifest also records the base relative to the adapter, so moving or sharing a folder that
    holds both does not make the base 'missing'."""
    recorded = json.loads((tuned["out"] / "adapter.json").read_text())["base"]
    assert (tuned["out"] / recorded["relative"]).resolve() == tuned["base"].resolve()
    project = tmp_path / "moved"
    shutil.copytree(tuned["base"], project / "models" / "base")
    ad = project / "mine"
    shutil.copytree(tuned["out"], ad, ignore=shutil.ignore_patterns("data", ".tune"))
    manifest = json.loads((ad / "adapter.json").read_text())
    manifest["base"].update(path=str(tmp_path / "gone" / "base"), relative="../models/base")
    (ad / "adapter.json").write_text(json.dumps(manifest))
    r = midigen("info", "--ckpt", ad)
    assert r.returncode == 0, r.stderr
    shutil.rmtree(project / "models")
    one_line_error(midigen("info", "--ckpt", ad), 2, manifest["base"]["sha256"], "missing")


def test_kill_and_rerun_resumes_to_the_same_adapter(tuned, edit_run, music, tmp_path):
    out = tmp_path / "adapter"
    cmd = [sys.executable, "-m", "midigen", "tune", "--ckpt", str(edit_run), str(music), "--out", str(out),
           *TUNE_ARGS]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / ".tune" / "state.json"
    t0 = time.monotonic()
    while not state.exists() and proc.poll() is None and time.monotonic() - t0 < 240:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL
    killed_at = json.loads(state.read_text())["step"]
    assert 0 < killed_at < 40
    r = midigen("tune", "--ckpt", edit_run, music, "--out", out, *TUNE_ARGS)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout)
    assert result["resumed_from"] >= killed_at and result["step"] == 40
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # the rerun's log continues the killed run's, no step twice
    a = load_file(str(out / "adapter.safetensors"))
    b = load_file(str(tuned["out"] / "adapter.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    # a finished tune run again does nothing and says so
    again = json.loads(midigen("tune", "--ckpt", edit_run, music, "--out", out, *TUNE_ARGS).stdout)
    assert again["stopped"] == "already finished"


def _hostile_copy(src: Path, dst: Path, **model) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["model"].update(model)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_a_config_asking_for_a_giant_model_is_refused_before_allocating(edit_run, tmp_path):
    giant = _hostile_copy(resolve(edit_run), tmp_path / "giant", n_layer=4000, n_embd=4096, n_head=32)
    one_line_error(midigen("info", "--ckpt", giant), 2, "4000 layers")
    one_line_error(midigen("sample", "--ckpt", giant, "--max-tokens", "8", "--out", tmp_path), 2, "4000 layers")
    wider = _hostile_copy(resolve(edit_run), tmp_path / "wider", n_embd=256)
    one_line_error(midigen("info", "--ckpt", wider), 2, "does not match its weights")
    for i, bad in enumerate(({"n_layer": -1}, {"n_head": 3}, {"vocab_size": "many"})):
        with pytest.raises(UsageError, match="config.json"):
            load_checkpoint(_hostile_copy(resolve(edit_run), tmp_path / f"bad{i}", **bad))


def test_corrupt_or_lying_adapters_are_refused(tuned, tmp_path):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tuned["out"], corrupt, ignore=shutil.ignore_patterns("data", ".tune"))
    data = bytearray((corrupt / "adapter.safetensors").read_bytes())
    data[-100] ^= 0xFF
    (corrupt / "adapter.safetensors").write_bytes(bytes(data))
    # a tampered file the user pointed at: exit 2 (README, "Exit codes")
    one_line_error(midigen("sample", "--ckpt", corrupt, "--max-tokens", "8", "--out", tmp_path), 2, "hash")
    lying = tmp_path / "lying"
    shutil.copytree(tuned["out"], lying, ignore=shutil.ignore_patterns("data", ".tune"))
    manifest = json.loads((lying / "adapter.json").read_text())
    manifest["rank"] = 200  # the hash still matches the weights; the shapes do not
    (lying / "adapter.json").write_text(json.dumps(manifest))
    one_line_error(midigen("info", "--ckpt", lying), 2, "does not fit its base", "rank 200")


def test_a_folder_without_usable_midi_is_a_one_line_error(edit_run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(midigen("tune", "--ckpt", edit_run, empty, "--out", tmp_path / "a", "--no-progress"), 2,
                   "no MIDI")
    (empty / "song.mid").write_bytes(b"MThd not really")
    one_line_error(midigen("tune", "--ckpt", edit_run, empty, "--out", tmp_path / "a", "--no-progress",
                           "--workers", "1"), 2, "no usable MIDI")


def test_the_studio_serves_an_adapter_dir(tuned, tmp_path):
    from studio_server import Server, call

    server = Server(tuned["out"], tmp_path / "ws")
    try:
        status, info = call("GET", server.url + "/api/info")
        assert status == 200, info
        assert "mine" in info["capabilities"]["styles"]
    finally:
        server.stop()


def test_param_shapes_are_the_models_saved_tensors():
    from midigen.model.model import GPT, GPTConfig, param_shapes

    for cfg in (GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=8),
                GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=1, n_embd=8, bias=False)):
        with torch.device("meta"):
            model = GPT(cfg)
        want = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "head.weight"}
        assert param_shapes(cfg) == want


def test_the_library_call_reports_progress_cancels_and_resumes(edit_run, music, tmp_path):
    """What a studio worker calls: plain values in, a progress callback, a cancel flag."""
    import threading

    from midigen.train.tune import TuneSettings, tune

    seen, cancel = [], threading.Event()

    def on_progress(p):
        seen.append(p)
        if p.step >= 3:
            cancel.set()

    settings = TuneSettings(base=str(edit_run), sources=[str(music)], out=str(tmp_path / "a"), steps=40,
                            eval_every=100, workers=1, device="cpu")
    result = tune(settings, on_progress, cancel, progress=False)
    assert result["stopped"] == "cancelled" and result["step"] == 3
    assert [p.step for p in seen[:3]] == [1, 2, 3] and seen[0].loss > 0 and seen[0].seconds_left > 0
    assert seen[-1].done
    settings.steps = 5
    result = tune(settings, progress=False)
    assert result["resumed_from"] == 3 and result["step"] == 5 and result["stopped"] == "steps"
    assert (tmp_path / "a" / "adapter.json").is_file()


def test_patience_ends_a_tune_early_but_not_at_its_last_step(edit_run, music, tmp_path):
    """With nothing learned (a learning rate of 1e-30: no weight moves) every validation after the first ties the best, so patience 4
    (a validation a step) ends a longer tune at step 5, at its best; a tune of exactly 5 steps ran them
    all, and says so ("steps", as the studio's teach test expects of a tune that reached its last step)."""
    from midigen.train.tune import TuneSettings, tune

    for steps, want in ((8, ("best", 5)), (5, ("steps", 5))):
        settings = TuneSettings(base=str(edit_run), sources=[str(music)], out=str(tmp_path / f"t{steps}"),
                                steps=steps, eval_every=1, patience=4, lr=1e-30, eval_tokens=1024, workers=1,
                                device="cpu")
        result = tune(settings, progress=False)
        assert (result["stopped"], result["step"]) == want, result
