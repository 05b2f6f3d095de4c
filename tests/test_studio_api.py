"""The studio's JSON API against a real `midigen studio` process on 127.0.0.1 with a tiny trained model.

Covers: the listener hook in `generate_samples`, the page and its static files, uploads (good, broken,
hostile, too big), the piano-roll JSON, generate/continue with streamed notes, kept music staying
identical, cancel, queue positions, versions with undo/redo, WAV, infill and arrange on a checkpoint
trained to edit (streamed notes where they land, chunk after chunk, on the song's tempo map), steering
(style/key/density/meter resolved like `sample`'s flags), the edit routes' 409 on one that cannot edit,
bad requests, persistence across a restart, workspace limits, and the command's own checks.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import wave
from collections import Counter
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import symusic

from songgen import make_song, make_song_bytes
from studio_server import (ROOT, Server, auth, call, misbehaving_reader, synth_hanging_at_44100, tiny_checkpoint,
                           wait_job)


@pytest.fixture(scope="module")
def ckpt(tiny_dataset, tmp_path_factory) -> Path:
    return tiny_checkpoint(tiny_dataset, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def server(ckpt, tmp_path_factory):
    s = Server(ckpt, tmp_path_factory.mktemp("studio-ws"))
    yield s
    assert s.stop() == 0, "".join(s.stderr)[-2000:]


@pytest.fixture(scope="module")
def song() -> symusic.Score:
    """A multi-track song in 6/8 with tempo changes and controllers (songgen seed 5)."""
    return make_song(5)


def upload(base: str, data: bytes, name: str = "song.mid") -> tuple[int, dict]:
    return call("POST", f"{base}/api/pieces/upload?name={name}", raw=data)


def uploaded(base: str, score) -> dict:
    status, piece = upload(base, bytes(score.dumps_midi()))
    assert status == 201, piece
    return piece


def run_job(base: str, pid: str, kind: str, body: dict) -> tuple[dict, list, bool]:
    status, job = call("POST", f"{base}/api/pieces/{pid}/{kind}", body)
    assert status == 202, job
    return wait_job(base, job)


def version_score(base: str, pid: str, vid: str) -> symusic.Score:
    status, data = call("GET", f"{base}/api/pieces/{pid}/versions/{vid}/midi")
    assert status == 200
    return symusic.Score.from_midi(data)


# ----- the listener hook ------------------------------------------------------------------------


def test_listener_sees_every_token_and_can_stop_generation(ckpt):
    from midigen.model.checkpoint import load_checkpoint
    from midigen.errors import Cancelled
    from midigen.generate.sample import generate_samples
    from midigen.generate.sampling import Sampling

    model, codec, _ = load_checkpoint(ckpt, "cpu")
    seen = []
    plain = generate_samples(model, codec, seconds=6, sampling=Sampling(seed=3))[0]
    heard = generate_samples(model, codec, seconds=6, listener=lambda t: seen.append(t.copy()) and False,
                             sampling=Sampling(seed=3))[0]
    assert np.array_equal(plain.tokens, heard.tokens)  # listening changes nothing
    assert [s.shape for s in seen] == [(1, n) for n in range(1, len(seen) + 1)]
    body = heard.tokens[heard.start_index :]
    assert np.array_equal(seen[-1][0], body[: len(seen)])

    calls = []
    with pytest.raises(Cancelled):
        generate_samples(model, codec, seconds=60, num_samples=2, listener=lambda t: calls.append(t.shape) or
                         len(calls) == 10, sampling=Sampling(seed=3))
    assert calls[-1] == (2, 10) and len(calls) == 10  # stopped at the very token that asked


# ----- the page ---------------------------------------------------------------------------------


def test_page_and_its_files_are_served_with_nothing_from_elsewhere(server):
    status, html = call("GET", server.url + "/")
    assert status == 200 and b"studio.js" in html
    static = ROOT / "midigen" / "studio" / "static"
    for f in static.iterdir():
        status, body = call("GET", f"{server.url}/static/{f.name}")
        assert status == 200 and body, f.name
        text = f.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, f.name


def test_info_and_openapi_document_the_api(server):
    status, info = call("GET", server.url + "/api/info")
    assert status == 200
    caps = info["capabilities"]
    assert caps["can_edit"] is False and caps["styles"] == []
    assert 128 in caps["instruments"] and len(info["instruments"]) == 129
    assert info["limits"]["upload_bytes"] == 16 * 1024 * 1024
    assert info["defaults"] == {"temperature": 1.0, "top_p": 0.95, "top_k": None}  # the page's form starts here
    status, spec = call("GET", server.url + "/openapi.json")
    assert status == 200
    for path in ("/api/pieces/upload", "/api/pieces/{pid}/generate", "/api/pieces/{pid}/continue",
                 "/api/pieces/{pid}/infill", "/api/pieces/{pid}/arrange", "/api/jobs/{jid}",
                 "/api/jobs/{jid}/cancel", "/api/pieces/{pid}/versions/{vid}/wav"):
        assert path in spec["paths"], path
    for model in ("GenerateIn", "ContinueIn", "InfillIn", "ArrangeIn", "JobOut", "PieceOut", "RollOut"):
        assert model in spec["components"]["schemas"], model
    assert call("GET", server.url + "/docs")[0] == 200


# ----- uploads and the roll ---------------------------------------------------------------------


def test_upload_is_drawn_note_for_note_with_its_own_meter(server, song):
    piece = uploaded(server.url, song)
    (v,) = piece["versions"]
    assert piece["current"] == v["id"] and v["kind"] == "upload" and v["notes"] == song.note_num()
    status, roll = call("GET", f"{server.url}/api/pieces/{piece['id']}/versions/{v['id']}/roll")
    assert status == 200
    assert sorted(len(t["start"]) for t in roll["tracks"]) == sorted(t.note_num() for t in song.tracks)
    assert {t["instrument"] for t in roll["tracks"]} == set(v["instruments"])
    drums = [t for t in roll["tracks"] if t["drums"]]
    assert drums and drums[0]["instrument"] == 128
    ts = song.time_signatures[0]
    quarters = ts.numerator * 4 / ts.denominator  # 6/8: three quarters a bar
    bar = quarters * 60 / song.tempos[0].qpm
    assert roll["time_signatures"][0]["numerator"] == ts.numerator
    assert roll["bars"][1] - roll["bars"][0] == pytest.approx(bar, abs=2e-3)
    secs = song.to("second")
    want = sorted(float(x) for t in secs.tracks for x in t.notes.numpy()["time"])
    got = sorted(x for t in roll["tracks"] for x in t["start"])
    assert np.allclose(got, want, atol=1e-3)


def test_broken_hostile_and_huge_uploads_get_a_clear_4xx(server, tmp_path):
    from hostile import write_hostile

    expect = write_hostile(tmp_path)
    for name, what in sorted(expect.items()):
        if name == "too_big.mid":  # sent below, as a body one byte over the cap
            continue
        path = tmp_path / name
        status, body = upload(server.url, path.read_bytes(), path.name)
        assert status in (201, 400), (name, status, body)
        if what == "skip" and name != "few_notes.mid":  # three notes are a motif to continue, not junk
            assert status == 400, (name, body)
        if status == 400:
            assert isinstance(body["detail"], str) and body["detail"] and "\n" not in body["detail"], name
    assert b" 413 " in _declare_upload(server.url, 16 * 1024 * 1024 + 1)  # refused before a byte is read
    status, body = upload(server.url, b"This is not a MIDI file at all.\n" * 40, "text.mid")
    assert status == 400 and "not a MIDI file" in body["detail"]
    assert call("GET", server.url + "/api/info")[0] == 200  # still serving


def _declare_upload(base: str, length: int) -> bytes:
    """Send only the headers of an upload of ``length`` bytes; -> the raw response."""
    host, port = base.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /api/pieces/upload?name=big.mid HTTP/1.1\r\nHost: {host}:{port}\r\n"
                     f"Authorization: {auth(base)['Authorization']}\r\n"
                     f"Content-Type: audio/midi\r\nContent-Length: {length}\r\n\r\n".encode())
        return sock.recv(4096)


def test_a_reader_crash_or_hang_costs_that_file_only():
    """A file that kills or hangs the reader process gets a 4xx-style error; the next file reads fine."""
    from midigen.studio import upload as U

    reader = U.Reader(timeout=3, target=misbehaving_reader)
    try:
        good = make_song_bytes(2)
        assert reader.read(good)[1]["notes"] > 0
        with pytest.raises(U.UploadError, match="reading the file crashed"):
            reader.read(b"CRASH" + good)
        assert reader.read(good)[1]["notes"] > 0
        t = time.time()
        with pytest.raises(U.UploadError, match="longer than 3 s"):
            reader.read(b"HANG" + good)
        assert time.time() - t < 10 and reader.box.proc is None  # the hung child was killed
        assert reader.read(good)[1]["notes"] > 0
        reader.box.proc.kill()  # dies between files: the next file is not blamed
        assert reader.read(good)[1]["notes"] > 0
    finally:
        reader.close()


def test_a_hanging_synthesizer_is_stopped_and_another_rate_tried(tmp_path, song):
    from midigen.generate.render import find_soundfont
    from midigen.studio.audio import AudioCache
    from midigen.studio.workspace import Workspace

    ws = Workspace(tmp_path)
    pid = ws.create("song")["id"]
    vid = ws.add_version(pid, bytes(song.dumps_midi()), label="song", kind="upload",
                         facts={"notes": song.note_num(), "seconds": 30.0})["id"]
    audio = AudioCache(ws, find_soundfont(), timeout=lambda seconds: 4.0, target=synth_hanging_at_44100)
    try:
        t = time.time()
        with wave.open(str(audio.wav(pid, vid))) as w:
            assert w.getframerate() == 48000 and w.getnframes() > 30 * 48000
        assert 4.0 <= time.time() - t < 30
        assert audio.renderer.box.proc is not None and audio.renderer.box.proc.is_alive()  # a fresh child took over
    finally:
        audio.close()


# ----- generate, continue, stream ---------------------------------------------------------------


def test_generate_streams_notes_and_matches_midigen_sample(server, ckpt, tmp_path):
    status, piece = call("POST", server.url + "/api/pieces", {"name": "fresh"})
    assert status == 201 and piece["versions"] == [] and piece["current"] is None
    body = {"seconds": 25, "seed": 11, "instruments": ["piano", "drums"], "tempo": 110, "temperature": 0.9,
            "top_p": 0.95}
    job, streamed, during = run_job(server.url, piece["id"], "generate", body)
    assert job["status"] == "done" and len(job["versions"]) == 1, job
    assert during, "no notes arrived while the job was running"
    vid = job["versions"][0]
    status, piece = call("GET", f"{server.url}/api/pieces/{piece['id']}")
    assert piece["current"] == vid and piece["versions"][0]["params"]["seed"] == 11
    score = version_score(server.url, piece["id"], vid)
    assert {0, 128} >= {128 if t.is_drum else t.program for t in score.tracks if t.note_num()}
    # the streamed notes are the version's notes
    roll = call("GET", f"{server.url}/api/pieces/{piece['id']}/versions/{vid}/roll")[1]
    final = np.array(sorted((p, s) for t in roll["tracks"] for s, p in zip(t["start"], t["pitch"])))
    live = np.array(sorted((int(n[2]), n[0]) for n in streamed))
    assert live.shape == final.shape and np.array_equal(live[:, 0], final[:, 0])
    assert np.allclose(live[:, 1], final[:, 1], atol=2e-3)
    # and the file is byte for byte what `midigen sample` writes for the same arguments
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "midigen", "sample", "--ckpt", str(ckpt), "--seconds", "25",
                          "--seed", "11", "--instruments", "piano,drums", "--tempo", "110", "--temperature", "0.9",
                          "--top-p", "0.95", "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    (mid,) = tmp_path.glob("*.mid")
    assert mid.read_bytes() == call("GET", f"{server.url}/api/pieces/{piece['id']}/versions/{vid}/midi")[1]


def _notes(track) -> np.ndarray:
    a = track.notes.numpy()
    return np.stack([a["time"], a["duration"], a["pitch"], a["velocity"]], axis=1).astype(np.int64)


def _without(mine: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """``mine`` less one row equal to each row of ``kept``; fails if any kept note is missing or changed."""
    rest = [tuple(r) for r in mine]
    for row in map(tuple, kept):
        assert row in rest, f"kept note {row} is missing or changed"
        rest.remove(row)
    return np.array(rest, dtype=np.int64).reshape(-1, 4)


def test_continue_from_the_end_keeps_every_note(server, song):
    piece = uploaded(server.url, song)
    base = piece["current"]
    job, streamed, _ = run_job(server.url, piece["id"], "continue", {"seconds": 8, "seed": 4})
    assert job["status"] == "done", job
    out = version_score(server.url, piece["id"], job["versions"][0])
    orig = version_score(server.url, piece["id"], base)
    assert out.ticks_per_quarter == orig.ticks_per_quarter
    last_onset = max(int(t.notes.numpy()["time"].max()) for t in orig.tracks if t.note_num())
    new = 0
    for i, track in enumerate(orig.tracks):
        added = _without(_notes(out.tracks[i]), _notes(track))  # every note kept exactly
        assert (added[:, 0] >= last_onset).all()
        new += len(added)
    new += sum(t.note_num() for t in out.tracks[len(orig.tracks) :])
    assert new > 0 and new == len(streamed)
    assert [(t.time, t.mspq) for t in out.tempos][: len(orig.tempos)] == [(t.time, t.mspq) for t in orig.tempos]
    assert [(t.time, t.numerator, t.denominator) for t in out.time_signatures] == \
           [(t.time, t.numerator, t.denominator) for t in orig.time_signatures]
    status, p = call("GET", f"{server.url}/api/pieces/{piece['id']}")
    assert p["versions"][1]["parent"] == base and "continued from the end" in p["versions"][1]["label"]


def test_continue_from_a_point_keeps_what_comes_before_it(server, song):
    piece = uploaded(server.url, song)
    point = 9.0
    job, streamed, _ = run_job(server.url, piece["id"], "continue", {"seconds": 6, "seed": 2, "at_seconds": point})
    assert job["status"] == "done", job
    orig = version_score(server.url, piece["id"], piece["current"])
    out = version_score(server.url, piece["id"], job["versions"][0])
    from midigen.music.timing import TempoMap

    cut = int(TempoMap(orig).ticks(point))
    step = orig.ticks_per_quarter / 24
    new = sum(t.note_num() for t in out.tracks[len(orig.tracks) :])
    for i, track in enumerate(orig.tracks):
        before = _notes(track)
        added = _without(_notes(out.tracks[i]), before[before[:, 0] < cut])  # kept exactly
        assert (added[:, 0] >= cut - step).all(), "a new note starts before the point"
        new += len(added)
    assert new == len(streamed) > 0
    assert min(n[0] for n in streamed) >= point - 0.1
    kept_tempos = [(t.time, t.mspq) for t in orig.tempos if t.time < cut]
    assert [(t.time, t.mspq) for t in out.tempos if t.time < cut] == kept_tempos


def test_cancel_stops_a_running_job_at_once_and_the_worker_goes_on(server):
    status, piece = call("POST", server.url + "/api/pieces", {})
    status, job = call("POST", f"{server.url}/api/pieces/{piece['id']}/generate", {"seconds": 300, "seed": 1})
    assert status == 202
    while job["status"] == "queued" or job["tokens"] < 20:
        job = call("GET", f"{server.url}/api/jobs/{job['id']}?wait=1&since={job['notes_total']}")[1]
    t = time.time()
    status, job = call("POST", f"{server.url}/api/jobs/{job['id']}/cancel")
    assert status == 200
    job, _, _ = wait_job(server.url, job)
    assert job["status"] == "cancelled" and job["versions"] == []
    assert time.time() - t < 2.0
    assert call("GET", f"{server.url}/api/pieces/{piece['id']}")[1]["versions"] == []
    job, _, _ = run_job(server.url, piece["id"], "generate", {"seconds": 3, "seed": 2})
    assert job["status"] == "done"


def test_waiting_jobs_know_their_place_and_can_leave_the_line(server):
    status, piece = call("POST", server.url + "/api/pieces", {})
    url = f"{server.url}/api/pieces/{piece['id']}/generate"
    jobs = [call("POST", url, {"seconds": 300, "seed": k})[1] for k in range(3)]
    while call("GET", f"{server.url}/api/jobs/{jobs[0]['id']}")[1]["status"] == "queued":
        time.sleep(0.05)
    states = [call("GET", f"{server.url}/api/jobs/{j['id']}")[1] for j in jobs]
    assert [s["position"] for s in states] == [0, 1, 2] and states[2]["status"] == "queued"
    assert call("POST", f"{server.url}/api/jobs/{jobs[1]['id']}/cancel")[1]["status"] == "cancelled"
    assert call("GET", f"{server.url}/api/jobs/{jobs[2]['id']}")[1]["position"] == 1
    for j in (jobs[2], jobs[0]):  # the waiting one first, so it never starts
        call("POST", f"{server.url}/api/jobs/{j['id']}/cancel")
    for j in jobs:
        final, _, _ = wait_job(server.url, j)
        assert final["status"] == "cancelled"
        if j is not jobs[0]:
            assert final["tokens"] == 0  # never started


# ----- versions ---------------------------------------------------------------------------------


def test_versions_undo_redo_select_delete(server, song):
    piece = uploaded(server.url, song)
    pid, v1 = piece["id"], piece["current"]
    j2, _, _ = run_job(server.url, pid, "continue", {"seconds": 3, "seed": 1})
    j3, _, _ = run_job(server.url, pid, "continue", {"seconds": 3, "seed": 2, "version": v1})
    v2, v3 = j2["versions"][0], j3["versions"][0]
    api = f"{server.url}/api/pieces/{pid}"
    p = call("GET", api)[1]
    assert p["current"] == v3 and p["history"] == [v1, v2, v3] and p["can_undo"] and not p["can_redo"]
    p = call("POST", api + "/undo")[1]
    assert p["current"] == v2 and p["can_redo"]
    p = call("POST", api + "/redo")[1]
    assert p["current"] == v3
    p = call("POST", api + "/select", {"version": v1})[1]
    assert p["current"] == v1 and p["history"] == [v1, v2, v3, v1]
    status, err = call("POST", api + "/redo")
    assert status == 409 and "redo" in err["detail"]
    status, err = call("DELETE", f"{api}/versions/{v1}")
    assert status == 409 and "current" in err["detail"]
    p = call("DELETE", f"{api}/versions/{v3}")[1]
    assert [v["id"] for v in p["versions"]] == [v1, v2] and p["history"] == [v1, v2, v1] and p["current"] == v1
    assert call("GET", f"{api}/versions/{v3}/midi")[0] == 404
    p = call("POST", api + "/undo")[1]
    assert p["current"] == v2
    assert call("DELETE", api)[0] == 204
    assert call("GET", api)[0] == 404


def test_wav_is_the_version_as_audio_and_seekable(server, song):
    piece = uploaded(server.url, song)
    url = f"{server.url}/api/pieces/{piece['id']}/versions/{piece['current']}/wav"
    status, data = call("GET", url)
    assert status == 200 and data[:4] == b"RIFF"
    with wave.open(BytesIO(data)) as w:
        seconds = w.getnframes() / w.getframerate()
    assert piece["versions"][0]["seconds"] <= seconds <= piece["versions"][0]["seconds"] + 3
    status, part = call("GET", url, headers={"Range": "bytes=100-199"})
    assert status == 206 and part == data[100:200]
    status, body = call("GET", url + "?download=true")
    assert status == 200 and body == data
    status, empty = call("POST", server.url + "/api/pieces", {})
    status, err = call("POST", f"{server.url}/api/pieces/{empty['id']}/continue", {"seconds": 3})
    assert status == 400 and "nothing to continue" in err["detail"]


# ----- editing: a checkpoint trained with the editing objective ---------------------------------


@pytest.fixture(scope="module")
def edit_server(edit_run, tmp_path_factory):
    s = Server(edit_run, tmp_path_factory.mktemp("studio-edit-ws"))
    yield s
    assert s.stop() == 0, "".join(s.stderr)[-2000:]


@pytest.fixture(scope="module")
def slow_song() -> symusic.Score:
    """songgen seed 3: four tracks at 91 BPM slowing to 84 (never 120), as a user's file reads."""
    s = symusic.Score.from_midi(bytes(make_song(3).dumps_midi()))
    assert len(s.tempos) > 1 and all(abs(t.qpm - 120) > 20 for t in s.tempos)
    return s


def roll_notes(base: str, pid: str, vid: str, full: bool = False) -> Counter:
    """A version's notes as the roll draws them: (start s, pitch, instrument) [+ duration, velocity]."""
    roll = call("GET", f"{base}/api/pieces/{pid}/versions/{vid}/roll")[1]
    return Counter((s, p, t["instrument"], *((d, v) if full else ())) for t in roll["tracks"]
                   for s, d, p, v in zip(t["start"], t["duration"], t["pitch"], t["velocity"]))


def test_progress_places_each_edit_chunk_on_the_songs_tempo_map(edit_run, slow_song):
    from midigen.model.checkpoint import load_checkpoint
    from midigen.generate.edit import infill_edits
    from midigen.generate.sampling import Sampling
    from midigen.studio.jobs import Progress
    from midigen.studio.roll import score_roll

    model, codec, _ = load_checkpoint(edit_run, "cpu")
    snapshots = []

    class Watched(Progress):  # what a poller sees every few tokens
        def __call__(self, new_tokens):
            if len(new_tokens[0]) % 5 == 0:
                snapshots.append(list(self.notes()))
            return super().__call__(new_tokens)

    p = Watched(codec)
    (e,) = infill_edits(model, codec, slow_song, start_s=8.0, end_s=28.0, sampling=Sampling(seed=2), listener=p)
    p.freeze()
    final = p.notes()
    assert p.chunks >= 2, "a 20 s span is written in several chunks"
    assert all(final[: len(s)] == s for s in snapshots), "streamed notes only ever grow"
    flat = lambda sc: Counter((s, p, t["instrument"]) for t in score_roll(sc)["tracks"]  # noqa: E731
                              for s, p in zip(t["start"], t["pitch"]))
    written = flat(e.score) - flat(slow_song)
    assert sum(written.values()) == e.written > 0
    streamed = Counter((n[0], int(n[2]), int(n[4])) for n in final)
    assert not written - streamed, "a written note was not streamed where it landed"
    lo, hi = e.span_seconds
    assert all(lo - 1e-3 <= n[0] < hi for n in final)


def test_infill_streams_its_notes_inside_the_span_and_keeps_the_rest(edit_server, slow_song):
    base = edit_server.url
    piece = uploaded(base, slow_song)
    pid, v1 = piece["id"], piece["current"]
    start, end = 10.0, 30.0
    job, streamed, during = run_job(base, pid, "infill", {"start_s": start, "end_s": end, "seed": 2})
    assert job["status"] == "done" and len(job["versions"]) == 1, job
    assert streamed and during
    step = 60 / 84 / 24  # one step of the model's grid at the song's slowest tempo
    assert all(start - step <= n[0] < end for n in streamed), [n[0] for n in streamed]
    v2 = job["versions"][0]
    before, after = roll_notes(base, pid, v1), roll_notes(base, pid, v2)
    new = after - before
    assert sum(new.values()) > 0 and not new - Counter((n[0], int(n[2]), int(n[4])) for n in streamed)
    outside = lambda c: Counter({k: n for k, n in c.items() if not start - step <= k[0] < end})  # noqa: E731
    assert outside(roll_notes(base, pid, v1, True)) == outside(roll_notes(base, pid, v2, True))


def test_arrange_adds_a_part_and_keeps_the_others(edit_server, slow_song):
    base = edit_server.url
    piece = uploaded(base, slow_song)
    pid, v1 = piece["id"], piece["current"]
    job, streamed, _ = run_job(base, pid, "arrange", {"add": ["flute"], "seed": 1})
    assert job["status"] == "done", job
    piece = call("GET", f"{base}/api/pieces/{pid}")[1]
    v2 = next(v for v in piece["versions"] if v["id"] == job["versions"][0])
    assert 73 in v2["instruments"] and "arranged + Flute" in v2["label"]
    flute = Counter({k: n for k, n in roll_notes(base, pid, v2["id"]).items() if k[2] == 73})
    assert flute and not flute - Counter((n[0], int(n[2]), int(n[4])) for n in streamed)
    others = lambda c: Counter({k: n for k, n in c.items() if k[2] != 73})  # noqa: E731
    assert others(roll_notes(base, pid, v1, True)) == others(roll_notes(base, pid, v2["id"], True))


def test_steering_reaches_the_model_and_unknown_names_list_the_valid_ones(edit_server, slow_song):
    base = edit_server.url
    info = call("GET", base + "/api/info")[1]["capabilities"]
    assert info["can_edit"] and "D major" in info["keys"] and info["densities"] == ["low", "medium", "high"]
    assert "3/4" in info["time_signatures"] and info["styles"] == []
    fresh = call("POST", base + "/api/pieces", {"name": "steered"})[1]
    body = {"seconds": 6, "seed": 3, "key": "D", "density": "low", "time_signature": "3/4", "style": ""}
    job, _, _ = run_job(base, fresh["id"], "generate", body)
    assert job["status"] == "done", job
    roll = call("GET", f"{base}/api/pieces/{fresh['id']}/versions/{job['versions'][0]}/roll")[1]
    assert (roll["time_signatures"][0]["numerator"], roll["time_signatures"][0]["denominator"]) == (3, 4)
    piece = uploaded(base, slow_song)
    api = f"{base}/api/pieces/{piece['id']}"
    for kind, req in (("infill", {"start_s": 2, "end_s": 6}), ("arrange", {"add": ["flute"]})):
        job, _, _ = run_job(base, piece["id"], kind, {**req, "key": "F# minor", "density": "high", "seed": 1})
        assert job["status"] == "done", job
        params = call("GET", api)[1]["versions"][-1]["params"]
        assert (params["key"], params["density"]) == ("F# minor", "high")
    for kind, req in (("generate", {"seconds": 5}), ("infill", {"start_s": 2, "end_s": 6}),
                      ("arrange", {"add": ["flute"]})):
        status, err = call("POST", f"{api}/{kind}", {**req, "key": "H minor"})
        assert status == 400 and "C major" in err["detail"] and "B minor" in err["detail"], err
        status, err = call("POST", f"{api}/{kind}", {**req, "density": "thick"})
        assert status == 400 and "unknown density 'thick'" in err["detail"] and "low, medium, high" in err["detail"]
        status, err = call("POST", f"{api}/{kind}", {**req, "style": "jazz"})
        assert status == 400 and "unknown style 'jazz'" in err["detail"] and "none" in err["detail"], err
    status, err = call("POST", f"{api}/generate", {"seconds": 5, "time_signature": "5/4"})
    assert status == 400 and "3/4" in err["detail"], err
    status, err = call("POST", f"{api}/infill", {"start_s": 2, "end_s": 6, "time_signature": "3/4"})
    assert status == 422 and "time_signature" in err["detail"], err  # an edit keeps the song's meter
    assert len(call("GET", api)[1]["versions"]) == 3  # the upload and the two steered edits


# ----- what cannot be done ----------------------------------------------------------------------


def test_edit_routes_say_the_checkpoint_cannot_edit(server, song):
    piece = uploaded(server.url, song)
    api = f"{server.url}/api/pieces/{piece['id']}"
    status, err = call("POST", api + "/infill", {"start_s": 2, "end_s": 5, "num_samples": 2})
    assert status == 409 and "cannot infill" in err["detail"]
    status, err = call("POST", api + "/arrange", {"add": ["bass"], "keep": ["drums"]})
    assert status == 409 and "cannot arrange" in err["detail"]
    assert len(call("GET", api)[1]["versions"]) == 1


@pytest.mark.parametrize("path, body, status, words", [
    ("generate", {"instruments": ["kazoo"]}, 400, "unknown instrument"),
    ("generate", {"instruments": ["Gunshot"]}, 400, "unknown instrument 'Gunshot': this checkpoint knows"),
    ("generate", {"tempo": 1000}, 422, "tempo"),
    ("generate", {"seconds": 0}, 422, "seconds"),
    ("generate", {"seconds": 10, "style": "jazz"}, 400, "unknown style 'jazz'"),
    ("generate", {"seconds": 10, "surprise": 1}, 422, "surprise"),
    ("continue", {"at_seconds": 9999}, 400, "past the end"),
    ("continue", {"version": "../../etc/passwd"}, 422, "version"),
    ("continue", {"version": "0123456789abcdef"}, 404, "no such version"),
])
def test_bad_requests_get_a_one_line_4xx(server, song, path, body, status, words):
    piece = uploaded(server.url, song)
    got, err = call("POST", f"{server.url}/api/pieces/{piece['id']}/{path}", body)
    assert got == status and words in err["detail"], err


@pytest.mark.parametrize("path", ["/api/pieces/0123456789abcdef", "/api/pieces/zz/versions/x/midi",
                                  "/api/pieces/..%2F..%2Fetc/versions/passwd/midi", "/api/jobs/0123456789abcdef",
                                  "/static/../pyproject.toml", "/static/%2e%2e/jobs.py"])
def test_no_client_path_reaches_the_disk(server, path):
    status, body = call("GET", server.url + path)
    assert status in (404, 422), (path, status)
    assert b"[build-system]" not in (body if isinstance(body, bytes) else b"")


def test_workspace_limits_and_ids(tmp_path):
    from midigen.studio.workspace import Conflict, Limits, NotFound, Workspace, clean_name

    ws = Workspace(tmp_path, Limits(pieces=2, versions=2, midi_bytes=3000))
    a = ws.create("a")
    ws.add_version(a["id"], b"x" * 1000, label="one", kind="upload", facts={"notes": 1, "seconds": 1.0})
    ws.add_version(a["id"], b"x" * 1000, label="two", kind="upload", facts={"notes": 1, "seconds": 1.0})
    with pytest.raises(Conflict, match="versions"):
        ws.add_version(a["id"], b"x", label="three", kind="upload", facts={})
    b = ws.create("b")
    with pytest.raises(Conflict, match="pieces"):
        ws.create("c")
    with pytest.raises(Conflict, match="MiB"):
        ws.add_version(b["id"], b"x" * 1001, label="big", kind="upload", facts={})
    old = ws.get(a["id"])["versions"][0]["id"]
    ws.delete_version(a["id"], old)
    ws.add_version(b["id"], b"x" * 1001, label="fits now", kind="upload", facts={})
    for bad in ("../" + a["id"], a["id"].upper(), "", a["id"] + "0"):
        with pytest.raises(NotFound):
            ws.get(bad)
    assert clean_name("../../etc/passwd") == "passwd" and clean_name("C:\\x\\My Song.MID") == "My Song"
    again = Workspace(tmp_path)
    assert [p["id"] for p in again.listing()] == [b["id"], a["id"]]


def test_restart_keeps_every_piece(ckpt, tmp_path, song):
    first = Server(ckpt, tmp_path)
    try:
        piece = uploaded(first.url, song)
        job, _, _ = run_job(first.url, piece["id"], "continue", {"seconds": 3, "seed": 1})
    finally:
        assert first.stop() == 0
    second = Server(ckpt, tmp_path)
    try:
        p = call("GET", f"{second.url}/api/pieces/{piece['id']}")[1]
        assert [v["id"] for v in p["versions"]] == [piece["current"], job["versions"][0]]
        assert p["current"] == job["versions"][0]
        assert call("GET", f"{second.url}/api/pieces/{piece['id']}/versions/{p['current']}/midi")[0] == 200
    finally:
        second.stop()


# ----- the command ------------------------------------------------------------------------------


def test_command_warns_off_loopback_and_refuses_bad_input(ckpt, tmp_path):
    s = Server(ckpt, tmp_path / "ws", "--host", "0.0.0.0")
    try:
        assert call("GET", s.url + "/api/info")[0] == 200
    finally:
        assert s.stop() == 0
    assert any("warning" in line and "0.0.0.0" in line for line in s.stderr)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for args, words in ((["--ckpt", str(tmp_path / "nothing")], "does not exist"),
                        (["--ckpt", str(ckpt), "--port", "70000"], "0..65535"),
                        (["--ckpt", str(ckpt), "--device", "tpu"], "device")):
        res = subprocess.run([sys.executable, "-m", "midigen", "studio", *args], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and words in res.stderr, (args, res.stderr)


# ----- a musician's session (issue 21): numbers, spans, parts, broken files, empty results ---------


def _download_name(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(url, headers=auth(url)), timeout=60) as res:
        return res.headers.get("Content-Disposition", "")


def test_a_version_keeps_its_number_for_life_and_in_its_file_name(server, song):
    piece = uploaded(server.url, song)
    pid, v1 = piece["id"], piece["current"]
    v2 = run_job(server.url, pid, "continue", {"seconds": 3, "seed": 1})[0]["versions"][0]
    v3 = run_job(server.url, pid, "continue", {"seconds": 3, "seed": 2, "version": v1})[0]["versions"][0]
    api = f"{server.url}/api/pieces/{pid}"
    p = call("DELETE", f"{api}/versions/{v2}")[1]
    assert [(v["id"], v["number"]) for v in p["versions"]] == [(v1, 1), (v3, 3)]
    assert _download_name(f"{api}/versions/{v3}/midi").endswith('song-v3.mid"')
    assert _download_name(f"{api}/versions/{v3}/wav?download=true").endswith('song-v3.wav"')
    v4 = run_job(server.url, pid, "continue", {"seconds": 3, "seed": 3})[0]["versions"][0]
    assert [v["number"] for v in call("GET", api)[1]["versions"] if v["id"] == v4] == [4]  # never 3 again


def test_a_workspace_without_version_numbers_still_loads_and_numbers_them_in_order(tmp_path):
    import json

    from midigen.studio.workspace import Workspace

    ws = Workspace(tmp_path)
    pid = ws.create("old")["id"]
    for label in ("one", "two", "three"):
        ws.add_version(pid, b"MThd", label=label, kind="upload", facts={"notes": 1, "seconds": 1.0})
    record = tmp_path / "pieces" / pid / "piece.json"
    old = json.loads(record.read_text())
    del old["next_number"]
    for v in old["versions"]:
        del v["number"]
    record.write_text(json.dumps(old))  # as a studio from before numbers wrote it
    again = Workspace(tmp_path)
    assert [(v["label"], v["number"]) for v in again.get(pid)["versions"]] == [("one", 1), ("two", 2), ("three", 3)]
    assert again.add_version(pid, b"MThd", label="four", kind="upload", facts={})["number"] == 4


def test_an_infill_span_past_the_end_is_clipped_and_parts_to_keep_are_checked_at_once(edit_server, slow_song):
    base = edit_server.url
    piece = uploaded(base, slow_song)
    pid, length = piece["id"], piece["versions"][0]["seconds"]
    api = f"{base}/api/pieces/{pid}"
    job, _, _ = run_job(base, pid, "infill", {"start_s": length - 4, "end_s": 9999, "seed": 1})
    assert job["status"] == "done", job
    v = call("GET", api)[1]["versions"][-1]
    end = f"{int(length // 60)}:{length % 60:04.1f}"
    assert v["params"]["end_s"] == length and v["label"].split(" · ")[0].endswith(f"–{end}"), v["label"]
    for keep, words in (([99], "keep: unknown instrument '99': the song has"),
                        (["flute"], "keep: unknown instrument 'flute': the song has"),
                        ([38, "trumpet"], "keep and add both name Trumpet")):
        add = ["trumpet"] if "Trumpet" in words else ["flute"]
        status, err = call("POST", f"{api}/arrange", {"add": add, "keep": keep})
        assert status == 422 and words in err["detail"] and "--keep" not in err["detail"], err
    assert len(call("GET", api)[1]["versions"]) == 2


def _tempo_song(mspq: int) -> bytes:
    import mido

    mid = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mspq, time=0)])
    for i in range(64):
        track += [mido.Message("note_on", note=60 + i % 12, velocity=80, time=0 if i == 0 else 240),
                  mido.Message("note_off", note=60 + i % 12, velocity=0, time=240)]
    mid.tracks.append(track)
    out = BytesIO()
    mid.save(file=out)
    return out.getvalue()


def test_uploads_refused_in_a_musicians_words_with_the_detail_in_the_log(server):
    for mspq in (1, 0):
        status, err = upload(server.url, _tempo_song(mspq), "fast.mid")
        assert status == 400 and f"tempo is broken: {mspq} µs per quarter note" in err["detail"], err
        assert "64 notes last 0.00 s" in err["detail"]
    assert upload(server.url, _tempo_song(500_000), "fine.mid")[0] == 201
    broken = b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01\xe0MTrk\xff\xff" + bytes(range(200))
    status, err = upload(server.url, broken, "broken.mid")
    assert status == 400 and err["detail"].startswith("not a MIDI file the studio can read: it may be damaged")
    assert not any(w in err["detail"] for w in ("MiniMidi", "Invaild", "Cursor", "symusic", "unreadable MIDI"))
    deadline = time.time() + 10
    while "upload refused: unreadable MIDI" not in "".join(server.stderr) and time.time() < deadline:
        time.sleep(0.1)
    assert "upload refused: unreadable MIDI" in "".join(server.stderr)  # the detail, for whoever runs it


def test_an_empty_result_says_so_on_its_version(server, song):
    """The version carries the CLI's warnings (``midigen.generate.checks``, tested in test_checks.py)."""
    piece = uploaded(server.url, song)
    body = {"seconds": 0.05, "seed": 1, "instruments": ["flute"]}  # too short to bring a flute in
    job, streamed, _ = run_job(server.url, piece["id"], "continue", body)
    assert job["status"] == "done" and 73 not in {n[4] for n in streamed}, job
    v = call("GET", f"{server.url}/api/pieces/{piece['id']}")[1]["versions"][-1]
    first = "no new notes" if not streamed else "the model wrote no Flute"
    assert v["warnings"] and v["warnings"][0].startswith(first), v["warnings"]
    assert all("Try another seed, or teach it your music" in w for w in v["warnings"])
    assert call("GET", f"{server.url}/api/pieces/{piece['id']}")[1]["versions"][0]["warnings"] == []


def test_a_mix_of_some_tracks_is_rendered_and_cached_apart(server, song, tmp_path):
    piece = uploaded(server.url, song)
    pid, v1 = piece["id"], piece["current"]
    url = f"{server.url}/api/pieces/{pid}/versions/{v1}/wav"
    whole = call("GET", url)[1]
    status, first = call("GET", url + "?tracks=0")
    assert status == 200 and first[:4] == b"RIFF" and first != whole
    assert call("GET", url + "?tracks=0")[1] == first and call("GET", url + "?tracks=0,1")[1] not in (first, whole)
    for bad in ("..%2F0", "0;1", "x", ""):
        assert call("GET", f"{url}?tracks={bad}")[0] == 422, bad
    v2 = run_job(server.url, pid, "continue", {"seconds": 3, "seed": 1})[0]["versions"][0]
    call("POST", f"{server.url}/api/pieces/{pid}/select", {"version": v2})
    assert call("DELETE", f"{server.url}/api/pieces/{pid}/versions/{v1}")[0] == 200
    folder = next(p for p in (server_workspace(server) / "pieces").iterdir() if p.name == pid)
    assert not list(folder.glob(f"{v1}*")), "the version's mixes go with it"


def server_workspace(server) -> Path:
    cmd = server.proc.args
    return Path(cmd[cmd.index("--workspace") + 1])
