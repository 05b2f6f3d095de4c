"""Worker processes where one bad item costs that item only: `prepare`'s encoder and the demo export.

Why a pool of its own rather than ``multiprocessing.Pool``: a MIDI file can hang or crash the
process that parses it (a parser bug on a hostile file), and a Pool loses the whole task and
cannot say which file did it. Here each worker records the item it is on in shared memory; the
supervisor kills a worker that dies or overruns the per-item time limit, replaces it, and sends
the task again with that item marked failed.

Portable by construction: workers always start with the ``spawn`` method (the only one on
Windows, the default on macOS), so a task names its function as ``"module:function"`` and nothing
depends on memory inherited through ``fork``. On Linux a worker also dies with its parent
(``PR_SET_PDEATHSIG``), so a SIGKILLed run leaves no orphans; elsewhere a worker finds the pipe
closed and exits once its current task ends.
"""
from __future__ import annotations

import importlib
import os
import signal
import sys
import time
from collections import deque

from midigen.errors import MidigenError

WHOLE_TASK = -2  # a worker's "current item" while it works on the task as a whole (one batched call)
_PARENT = [0]  # the parent's pid, as the worker saw it at start


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask where the OS has one (Linux), else all CPUs."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        return max(1, os.cpu_count() or 1)


def parent_alive() -> bool:
    """In a worker: False once the parent that started it is gone (it was killed)."""
    return os.getppid() == _PARENT[0]


def _die_with_parent() -> None:
    """Linux only: the kernel sends this worker SIGKILL when its parent dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except Exception:
        pass


def _worker_main(conn, state, target: str) -> None:
    """Loop: receive a task, run it, send the result. Exits when the parent goes away."""
    _PARENT[0] = os.getppid()
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    module, _, fn_name = target.partition(":")
    fn = getattr(importlib.import_module(module), fn_name)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:  # done: skip interpreter teardown (numba's alone takes ~0.2 s); nothing is buffered
            os._exit(0)
        task_id, payload, failed = msg
        result = fn(payload, failed, state)
        try:
            conn.send((task_id, result))
        except (BrokenPipeError, OSError):
            return


class _Worker:
    def __init__(self, ctx, target: str):
        self.state = ctx.RawArray("d", 2)  # [item index, its start time (monotonic; 0 = idle)]
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, self.state, target), daemon=True)
        self.proc.start()
        child.close()
        self.job = None

    def kill(self) -> None:
        try:
            self.proc.kill()
        except Exception:
            pass
        self.proc.join(5)
        self.conn.close()

    def receive(self):
        """(True, (task_id, result)) if a result is waiting, else (False, None)."""
        try:
            if self.conn.poll():
                return True, self.conn.recv()
        except (EOFError, OSError):
            pass
        return False, None


class WorkerPool:
    """Runs tasks (lists of items) in worker processes; one bad item costs that item only.

    ``target`` is the task function as ``"module:function"``, called in the worker as
    ``fn(payload, failed, state)``: it sets ``state[0], state[1]`` to the item it starts and the
    time (``time.monotonic()``), or ``WHOLE_TASK`` while it works on all items at once, and skips
    the items in ``failed`` (index -> reason). A task is (task_id, payload, n_items).
    """

    def __init__(self, workers: int, target: str, timeout: float):
        import multiprocessing as mp

        self.ctx = mp.get_context("spawn")
        self.target = target
        self.timeout = timeout
        self.workers = [_Worker(self.ctx, target) for _ in range(workers)]

    def close(self) -> None:
        for w in self.workers:
            try:
                w.conn.send(None)
            except Exception:
                pass
        for w in self.workers:
            w.proc.join(2)
            if w.proc.is_alive():
                w.kill()

    def run(self, tasks, on_result) -> None:
        """Run every task; ``on_result(task_id, result)`` is called in the parent as results come in."""
        from multiprocessing.connection import wait

        self._tasks, self._exhausted = iter(tasks), False
        self._queue: deque = deque()  # (task_id, payload, n_items, failed, retries)
        finished = []
        while True:
            self._dispatch()
            # Idle workers have their next task: results are handled (merged) while they work.
            for task_id, result in finished:
                on_result(task_id, result)
            finished.clear()
            self._refill()  # read ahead while the workers work
            busy = [w for w in self.workers if w.job is not None]
            if not busy:
                if self._exhausted and not self._queue:
                    return
                continue
            wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=0.2)
            now = time.monotonic()
            for i, w in enumerate(self.workers):
                if w.job is None:
                    continue
                got, msg = w.receive()
                if got:
                    job, w.job = w.job, None
                    finished.append((job[0], msg[1]))
                elif not w.proc.is_alive() or 0 < w.state[1] < now - self.timeout:
                    self._restart(i)

    def _refill(self) -> None:
        while not self._exhausted and len(self._queue) < len(self.workers):
            t = next(self._tasks, None)
            if t is None:
                self._exhausted = True
            else:
                self._queue.append((t[0], t[1], t[2], {}, 0))

    def _dispatch(self) -> None:
        self._refill()
        for w in self.workers:
            if w.job is None and self._queue:
                job = self._queue.popleft()
                w.state[0], w.state[1] = -1, 0.0
                w.job = job
                try:
                    w.conn.send((job[0], job[1], job[3]))
                except OSError:  # it died before its first task: handled as a crash
                    pass

    def _restart(self, i: int) -> None:
        """Worker ``i`` crashed or overran: replace it and queue its task again, blaming its item."""
        w = self.workers[i]
        why = (f"timed out after {self.timeout:g} s" if w.proc.is_alive()
               else f"worker crashed (exit code {w.proc.exitcode})")
        idx = int(w.state[0])
        task_id, payload, n, failed, retries = w.job
        w.kill()
        self.workers[i] = _Worker(self.ctx, self.target)
        if 0 <= idx < n or (idx == WHOLE_TASK and WHOLE_TASK not in failed):
            failed = {**failed, idx: why}
        else:
            retries += 1
            if retries > 2:
                raise MidigenError(f"a worker failed 3 times outside any item ({why})")
        self._queue.appendleft((task_id, payload, n, failed, retries))
