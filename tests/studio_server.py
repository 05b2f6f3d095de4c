"""Helpers for the studio tests: a tiny trained checkpoint, a real `midigen studio` process, HTTP calls.

A server prints its address with its token; ``call`` sends that token as a bearer token, as an API
client would, and the browser tests open ``page_url``, the tokened address, as a user would.

The checkpoint is trained once per test session with configs/test.toml on the shared ``tiny_dataset``
(generated songs and music21 pieces) and kept under the session's temporary folder, so the API,
browser and load tests share it. Each server is the real command in its own process on 127.0.0.1,
port 0 (the server picks a free one and prints its address).
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tiny_checkpoint(dataset: Path, base: Path) -> Path:
    """A run dir trained with configs/test.toml on ``dataset`` (made once per session, then reused)."""
    run = base / "studio-run"
    if (run / "best" / "config.json").exists():
        return run
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "midigen", "train", "configs/test.toml", f"--data={dataset}",
                          f"--out={run}", "--overwrite=true"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return run


class Server:
    """`midigen studio` in a child process; ``url`` once it printed its address."""

    def __init__(self, ckpt: Path, workspace: Path, *extra: str, threads: int = 1):
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "midigen", "studio", "--ckpt", str(ckpt), "--port", "0",
               "--workspace", str(workspace), "--device", "cpu", *extra]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.stderr: list[str] = []
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc.stdout, lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append), daemon=True).start()
        self.page_url = self._wait_for_url(lines)  # with ?token=... unless --no-token
        self.url, _, query = self.page_url.partition("/?")
        self.url = self.url.rstrip("/")
        self.token = query.partition("token=")[2] or None
        if self.token:
            TOKENS[self.url] = self.token

    @staticmethod
    def _pump(stream, sink) -> None:
        for line in stream:
            sink(line)

    def _wait_for_url(self, lines: queue.Queue) -> str:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"studio exited {self.proc.returncode}: {''.join(self.stderr)[-2000:]}")
                continue
            if "http://" in line:
                return "http://" + line.split("http://", 1)[1].split()[0]
        raise RuntimeError("studio did not print its address in time")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mb(self) -> float:
        """Resident memory of the server process (Linux /proc)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


TOKENS: dict[str, str] = {}  # each running test server's base URL -> its token


def auth(url: str) -> dict:
    """The Authorization header for the test server ``url`` belongs to (none for a --no-token server)."""
    token = next((t for base, t in TOKENS.items() if url == base or url.startswith(base + "/")), None)
    return {"Authorization": f"Bearer {token}"} if token else {}


def call(method: str, url: str, body=None, raw: bytes | None = None, headers=None, timeout: float = 60,
         token: bool = True):
    """-> (status, parsed JSON or raw bytes); HTTP errors come back as their status, not raised.

    The server's bearer token goes with the request unless ``token`` is False or ``headers`` has one.
    """
    data, hdrs = None, {**(auth(url) if token else {}), **(headers or {})}
    if raw is not None:
        data = raw
        hdrs.setdefault("Content-Type", "audio/midi")
    elif body is not None:
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            status, payload, kind = res.status, res.read(), res.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        status, payload, kind = e.code, e.read(), e.headers.get("Content-Type", "")
    if "json" in kind:
        return status, json.loads(payload) if payload else None
    return status, payload


def wait_job(base: str, job: dict, timeout: float = 300, pace: float = 0.0) -> tuple[dict, list, bool]:
    """Follow a job with long polls -> (final state, every streamed note, whether notes came while it ran).

    ``pace``: seconds to wait after an answer that brought notes, as the page does.
    """
    notes, during, deadline = [], False, time.time() + timeout
    while job["status"] in ("queued", "running"):
        assert time.time() < deadline, f"job {job['id']} did not finish"
        status, job = call("GET", f"{base}/api/jobs/{job['id']}?since={len(notes)}&wait=2")
        assert status == 200, job
        notes += job["notes"]
        during |= bool(job["notes"]) and job["status"] == "running"
        if job["notes"] and pace:
            time.sleep(pace)
    return job, notes, during


def misbehaving_reader(conn) -> None:
    """The upload reader's child, except that files starting CRASH abort it and HANG hang it."""
    from midigen.generate.sandbox import serve
    from midigen.studio.upload import check_midi as real

    def check(args: dict, data: bytes):
        if data.startswith(b"CRASH"):
            os.abort()
        if data.startswith(b"HANG"):
            time.sleep(3600)
        out, facts = real(data)
        return facts, out

    serve(conn, check)


def synth_hanging_at_44100(conn) -> None:
    """The audio renderer's child, except that the synthesizer hangs at 44,100 Hz (as symusic's can)."""
    from midigen.generate.synth import render_file
    from midigen.generate.sandbox import serve

    def render(job: dict, blob):
        if job["rate"] == 44100:
            time.sleep(3600)
        return render_file(job)

    serve(conn, render)


def synth_always_hanging(conn) -> None:
    """The audio renderer's child, except that the synthesizer never returns, at any rate."""
    from midigen.generate.sandbox import serve

    def render(job: dict, blob):
        time.sleep(3600)

    serve(conn, render)
