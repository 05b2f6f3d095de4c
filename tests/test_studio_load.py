"""Eight clients at once against a real studio server: uploads (hostile files among them) and generation.

Every request must succeed or get a clean 4xx with a one-line reason, every job must finish with its
version, the server's memory must stay bounded, and it must keep serving afterwards.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import symusic

from hostile import write_hostile
from songgen import make_song_bytes
from studio_server import Server, call, tiny_checkpoint, wait_job

CLIENTS = 8
ROUNDS = 3
RSS_GROWTH_MB = 400  # the model, the worker and the caches are in memory before the load starts


@pytest.fixture(scope="module")
def server(tiny_dataset, tmp_path_factory):
    ckpt = tiny_checkpoint(tiny_dataset, tmp_path_factory.getbasetemp())
    s = Server(ckpt, tmp_path_factory.mktemp("studio-load-ws"))
    yield s
    assert s.stop() == 0


def client(base: str, k: int, hostile: list[Path], report: list) -> None:
    """One user: uploads a song and a hostile file, generates and continues, downloads the results."""
    try:
        for r in range(ROUNDS):
            bad = hostile[(k * ROUNDS + r) % len(hostile)]
            status, body = call("POST", f"{base}/api/pieces/upload?name={bad.name}", raw=bad.read_bytes())
            assert status in (201, 400), (bad.name, status, body)
            assert isinstance(body, dict) and (status == 201 or body["detail"]), (bad.name, body)
            status, piece = call("POST", f"{base}/api/pieces/upload?name=c{k}.mid", raw=make_song_bytes(100 + k))
            assert status == 201, piece
            kind, body = ("continue", {"seconds": 3, "seed": k, "at_seconds": 4.0}) if r % 2 else \
                ("generate", {"seconds": 4, "seed": k, "instruments": ["drums", "piano"]})
            status, job = call("POST", f"{base}/api/pieces/{piece['id']}/{kind}", body)
            assert status == 202, job
            job, notes, _ = wait_job(base, job, timeout=600)
            assert job["status"] == "done" and len(job["versions"]) == 1, job
            status, midi = call("GET", f"{base}/api/pieces/{piece['id']}/versions/{job['versions'][0]}/midi")
            assert status == 200 and symusic.Score.from_midi(midi).note_num() > 0
        report.append(None)
    except BaseException as e:  # collected and raised in the test thread
        report.append(e)


def test_eight_clients_at_once(server, tmp_path):
    expect = write_hostile(tmp_path)
    hostile = sorted(tmp_path / name for name in expect if name != "too_big.mid")
    status, _ = call("POST", f"{server.url}/api/pieces/upload?name=warm.mid", raw=make_song_bytes(1))
    assert status == 201
    before = server.rss_mb()
    report: list = []
    threads = [threading.Thread(target=client, args=(server.url, k, hostile, report)) for k in range(CLIENTS)]
    t = time.time()
    for th in threads:
        th.start()
    peak = before
    while any(th.is_alive() for th in threads):
        peak = max(peak, server.rss_mb())
        time.sleep(0.2)
    elapsed = time.time() - t
    errors = [e for e in report if e is not None]
    assert len(report) == CLIENTS and not errors, errors[:3]
    print(f"\n{CLIENTS} clients x {ROUNDS} rounds in {elapsed:.1f} s; server RSS {before:.0f} MB before, "
          f"{peak:.0f} MB peak")
    assert peak < before + RSS_GROWTH_MB, (before, peak)
    status, info = call("GET", f"{server.url}/api/info")
    assert status == 200 and info["queue"] == {"running": 0, "waiting": 0}
    assert len(call("GET", f"{server.url}/api/pieces")[1]) >= 1 + CLIENTS * ROUNDS
