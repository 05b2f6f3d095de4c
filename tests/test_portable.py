"""prepare and the demo export on macOS and Windows: each platform fallback forced here on Linux.

macOS and Windows have no ``os.sched_getaffinity``, Windows has no ``fcntl`` (but ``msvcrt``), and
neither forks by default. The fallbacks are taken by removing the Linux call; the pool always
spawns, which a worker shows by not seeing a change the parent made after import.
"""
from __future__ import annotations

import os
import signal
import sys
import types

import pytest

import pooltask
from midigen import fsutil
from midigen.data import corpus, workers
from midigen.data.prepare import prepare
from midigen.data.workers import WorkerPool, usable_cpus


def test_cpu_count_without_sched_getaffinity(monkeypatch):
    assert usable_cpus() == len(os.sched_getaffinity(0))
    monkeypatch.delattr(os, "sched_getaffinity")
    assert usable_cpus() == os.cpu_count()
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # "undeterminable" is allowed to happen
    assert usable_cpus() == 1


def test_prepare_default_workers_without_sched_getaffinity(tmp_path, songs_dir, monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    s = prepare([songs_dir], tmp_path / "out", progress=False)
    assert s["workers"] == 2 and s["kept"] == 60


def test_pool_spawns_workers_that_share_no_memory(monkeypatch):
    monkeypatch.setattr(pooltask, "MARK", "changed in the parent")  # a forked child would see this
    pool = WorkerPool(2, "pooltask:report", timeout=30)
    assert pool.ctx.get_start_method() == "spawn"
    results = {}
    try:
        pool.run([(k, "crash" if k == 1 else "ok", 1) for k in range(4)], results.__setitem__)
    finally:
        pool.close()
    assert sorted(results) == [0, 1, 2, 3]
    assert {r["mark"] for r in results.values()} == {"as imported"}
    assert {r["parent"] for r in results.values()} == {os.getpid()}
    assert results[1]["failed"] == {0: f"worker crashed (exit code {-signal.SIGABRT})"}  # blamed on item 0


def test_file_lock_without_fcntl_or_msvcrt(tmp_path, monkeypatch):
    """Neither lock exists: the block still runs (the lock only saves duplicate work)."""
    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` now raises ImportError
    monkeypatch.setitem(sys.modules, "msvcrt", None)
    ran = []
    with fsutil.file_lock(tmp_path / "x.lock"):
        ran.append(True)
    assert ran == [True]


def test_file_lock_with_msvcrt(tmp_path, monkeypatch):
    """Windows: msvcrt.locking, retried while another process holds the lock, released after."""
    calls = []

    def locking(fd, mode, n):
        calls.append((mode, n))
        if mode == fake.LK_NBLCK and len(calls) < 3:
            raise OSError(36, "Resource deadlock avoided")  # held elsewhere, twice

    fake = types.SimpleNamespace(LK_NBLCK=2, LK_UNLCK=0, locking=locking)
    monkeypatch.setitem(sys.modules, "fcntl", None)
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    with fsutil.file_lock(tmp_path / "x.lock"):
        assert calls == [(2, 1)] * 3
    assert calls[-1] == (0, 1)


@pytest.mark.slow
def test_demo_export_without_fcntl_or_affinity(tmp_path, monkeypatch):
    """The demo corpus export (the first step of `make demo`) with both Linux calls gone."""
    monkeypatch.setenv("MIDIGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "fcntl", None)
    monkeypatch.setitem(sys.modules, "msvcrt", None)
    monkeypatch.delattr(os, "sched_getaffinity")
    d = corpus.demo_corpus_dir(progress=False, limit=3)
    assert d.parent == tmp_path / "cache" and (d / corpus.COMPLETE).exists()
    mids = sorted(d.rglob("*.mid"))
    assert len(mids) == 3 and all(m.read_bytes()[:4] == b"MThd" for m in mids)
    assert workers.usable_cpus() == os.cpu_count()
