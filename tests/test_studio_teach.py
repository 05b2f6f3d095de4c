"""The studio's Teach panel behind the API, and switching models without reading the base again.

Switching is tested in-process on conftest's ``edit_run`` checkpoint and an adapter tuned from it:
the base tensors are the same objects with the same bits after any round of switches, the base
weights file is never read again, and the adapter put on beside the base computes what the merged
adapter loaded by ``load_checkpoint`` does. The API is tested through a real `midigen studio` on
127.0.0.1: files (one as a zip) go through the upload reader, a real tune runs in the server's child
process, the model it made is selected and generates in the new style; a second tune is cancelled.
"""
from __future__ import annotations

import io
import json
import shutil
import time
import zipfile
from pathlib import Path

import pytest
import safetensors.torch
import torch

from midigen.model.checkpoint import load_checkpoint, resolve
from midigen.studio.jobs import Engine
from midigen.train.tune import TuneSettings, tune
from studio_server import Server, call, wait_job

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teach_files(songs_dir, music21_dir) -> list[Path]:
    """Six files to teach: four made band songs (drums, bass, ...) and two real music21 pieces."""
    return sorted(songs_dir.glob("*.mid"))[:4] + sorted(music21_dir.rglob("*.mid"))[:2]


@pytest.fixture(scope="module")
def adapter(edit_run, teach_files, tmp_path_factory) -> Path:
    """An adapter tuned from ``edit_run`` in a few steps (enough to change the logits)."""
    music = tmp_path_factory.mktemp("teach_music")
    for p in teach_files:
        shutil.copy(p, music / p.name)
    out = tmp_path_factory.mktemp("teach_adapter") / "mine"
    tune(TuneSettings(base=str(edit_run), sources=[str(music)], out=str(out), style="mine", steps=6, eval_every=3,
                      workers=1, device="cpu", lr=1e-2), progress=False)
    return out


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0]


def test_switching_models_reads_no_base_weights(edit_run, adapter, monkeypatch):
    engine = Engine(edit_run, torch.device("cpu"))
    base_file = (resolve(edit_run) / "model.safetensors").resolve()
    reads = []
    real = safetensors.torch.load_file
    monkeypatch.setattr(safetensors.torch, "load_file", lambda f, *a, **k: reads.append(Path(f).resolve())
                        or real(f, *a, **k))
    tensors = dict(engine.model.named_parameters())
    saved = {n: p.detach().clone() for n, p in tensors.items()}
    ids = [engine.codec.BOS] + sorted(engine.model.support.tolist())[:40]
    base_logits = _logits(engine.model, ids)

    engine.use(adapter)
    assert "mine" in engine.caps["styles"] and engine.ckpt == str(adapter)
    merged = load_checkpoint(adapter)[0]  # the adapter as every command loads it: merged into the weights
    assert torch.allclose(_logits(engine.model, ids), _logits(merged, ids), atol=1e-4)
    assert not torch.allclose(_logits(engine.model, ids), base_logits, atol=1e-3)
    reads.clear()
    for _ in range(2):
        engine.use(None)
        assert torch.equal(_logits(engine.model, ids), base_logits)  # bit for bit the base again
        assert "mine" not in engine.caps["styles"]
        engine.use(adapter)
    engine.use(None)

    assert base_file not in reads and reads  # the adapter's file was read; the base's weights never
    assert engine.base_loads == 1
    after = dict(engine.model.named_parameters())
    assert after.keys() == tensors.keys()
    for name, p in tensors.items():
        assert after[name] is p and torch.equal(p, saved[name]), name  # the same tensors, the same bits


def test_an_adapter_of_another_base_is_refused_before_switching(edit_run, adapter, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(adapter, other)
    manifest = json.loads((other / "adapter.json").read_text())
    manifest["base"]["sha256"] = "0" * 64
    (other / "adapter.json").write_text(json.dumps(manifest))
    engine = Engine(edit_run, torch.device("cpu"))
    engine.use(adapter)
    with pytest.raises(Exception, match="0000"):
        engine.use(other)
    assert engine.adapter == adapter  # the refused one never replaced the one in use


# ----- the API through a real server ----------------------------------------------------------------


def _zip(files: list[Path]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in files:
            z.write(p, f"songs/{p.name}")
        z.writestr("notes.txt", "not music")
    return buf.getvalue()


def wait_teach(base: str, t: dict, timeout: float = 600) -> tuple[dict, list]:
    points, deadline = list(t["points"]), time.time() + timeout
    while t["status"] in ("queued", "preparing", "training"):
        assert time.time() < deadline, t
        status, t = call("GET", f"{base}/api/teach/{t['id']}?since={len(points)}&wait=2")
        assert status == 200, t
        points += t["points"]
    return t, points


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("teach_ws")


@pytest.fixture(scope="module")
def server(edit_run, workspace):
    s = Server(edit_run, workspace)
    yield s
    assert s.stop() == 0, "".join(s.stderr)[-2000:]


def assert_set_deleted(base: str, workspace: Path, sid: str) -> None:
    """A set's uploaded files are gone once its tune ended; adding to it is then a 404."""
    assert not (workspace / "teach" / "sets" / sid).exists()
    status, body = call("POST", f"{base}/api/teach/files?set={sid}&name=more.mid", raw=b"MThd")
    assert status == 404 and sid in body["detail"], body


def test_teach_through_the_api(server, workspace, teach_files):
    base = server.url
    status, first = call("POST", f"{base}/api/teach/files?name={teach_files[0].name}", raw=teach_files[0].read_bytes())
    assert status == 201 and first["files"] == 1, first
    sid = first["set"]
    status, z = call("POST", f"{base}/api/teach/files?set={sid}&name=mine.zip", raw=_zip(teach_files[1:]),
                     headers={"Content-Type": "application/zip"})
    assert status == 201 and z["files"] == len(teach_files) and z["refused"] == [], z
    status, bad = call("POST", f"{base}/api/teach/files?set={sid}&name=x.mid", raw=b"MThd broken")
    assert status == 400 and "read" in bad["detail"], bad  # the upload reader's words, one line
    assert len(list((workspace / "teach" / "sets" / sid).glob("*.mid"))) == len(teach_files)

    status, t = call("POST", f"{base}/api/teach", {"set": sid, "style": "my band", "steps": 6})
    assert status == 202 and t["status"] in ("preparing", "training"), t
    status, busy = call("POST", f"{base}/api/teach", {"set": sid, "style": "again", "steps": 6})
    assert status == 409 and "one at a time" in busy["detail"]
    t, points = wait_teach(base, t)
    assert t["status"] == "done" and t["model"] == "my-band", (t, "".join(server.stderr)[-3000:])
    # every step is a point, up to the last one: all 6, or fewer where 4 validations in a row did not
    # beat the best (patience: the tune then stops at its best, as a long one would)
    result = t["result"]
    assert result["stopped"] == ("steps" if result["step"] == 6 else "best") and result["step"] >= 5, result
    assert [p[0] for p in points] == list(range(1, result["step"] + 1)) and all(p[1] > 0 for p in points)
    assert any(p[2] is not None for p in points)  # val bits/note, measured during the tune
    assert t["result"]["new_styles"] == ["my band"]
    assert_set_deleted(base, workspace, sid)

    status, models = call("GET", f"{base}/api/models")
    assert [m["id"] for m in models["models"]] == ["base", "my-band"] and models["current"] == "base"
    status, models = call("POST", f"{base}/api/models/select", {"model": "my-band"})
    assert status == 200 and models["current"] == "my-band", models
    status, info = call("GET", f"{base}/api/info")
    assert "my band" in info["capabilities"]["styles"] and info["model"] == "my-band"
    status, piece = call("POST", f"{base}/api/pieces", {"name": "taught"})
    status, job = call("POST", f"{base}/api/pieces/{piece['id']}/generate", {"seconds": 4, "style": "my band",
                                                                           "seed": 1})
    assert status == 202, (job, "".join(server.stderr)[-3000:])
    job, notes, _ = wait_job(base, job)
    assert job["status"] == "done" and notes, job
    status, models = call("POST", f"{base}/api/models/select", {"model": "base"})
    assert models["current"] == "base" and models["base_loads"] == 1
    status, info = call("GET", f"{base}/api/info")
    assert "my band" not in info["capabilities"]["styles"]
    status, gone = call("POST", f"{base}/api/models/select", {"model": "nope"})
    assert status == 404


def test_a_cancelled_tune_leaves_no_model(server, workspace, teach_files):
    base = server.url
    status, s = call("POST", f"{base}/api/teach/files?name=all.zip", raw=_zip(teach_files),
                     headers={"Content-Type": "application/zip"})
    assert status == 201
    status, t = call("POST", f"{base}/api/teach", {"set": s["set"], "style": "never", "steps": 5000})
    assert status == 202
    while t["status"] != "training":  # cancel once it trains: the tune itself must stop
        status, t = call("GET", f"{base}/api/teach/{t['id']}?wait=2")
        assert t["status"] in ("preparing", "training"), t
    status, t = call("POST", f"{base}/api/teach/{t['id']}/cancel")
    t, _ = wait_teach(base, t, timeout=120)
    assert t["status"] == "cancelled" and t["model"] is None, t
    status, models = call("GET", f"{base}/api/models")
    assert "never" not in [m["id"] for m in models["models"]]
    assert_set_deleted(base, workspace, s["set"])


def test_teach_is_guarded_like_every_change(server, teach_files):
    base, midi = server.url, teach_files[0].read_bytes()
    assert call("POST", f"{base}/api/teach/files", raw=midi, token=False)[0] == 401
    status, body = call("POST", f"{base}/api/teach/files", raw=midi, headers={"Content-Type": "text/plain"})
    assert status == 415, body
    status, body = call("POST", f"{base}/api/models/select", raw=b'{"model": "base"}',
                        headers={"Content-Type": "text/plain"})
    assert status == 415, body
    assert call("POST", f"{base}/api/teach", {"set": "x" * 8, "style": "a"}, token=False)[0] == 401


def test_a_studio_started_on_an_adapter_offers_it_beside_its_base(adapter, tmp_path):
    s = Server(adapter, tmp_path / "ws")
    try:
        models = call("GET", s.url + "/api/models")[1]
        assert models["current"] == "checkpoint" and [m["id"] for m in models["models"]] == ["base", "checkpoint"]
        assert "mine" in call("GET", s.url + "/api/info")[1]["capabilities"]["styles"]
        assert call("POST", s.url + "/api/models/select", {"model": "base"})[1]["current"] == "base"
        assert "mine" not in call("GET", s.url + "/api/info")[1]["capabilities"]["styles"]
        models = call("POST", s.url + "/api/models/select", {"model": "checkpoint"})[1]
        assert models["current"] == "checkpoint" and models["base_loads"] == 1
    finally:
        assert s.stop() == 0
