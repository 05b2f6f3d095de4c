"""Work the server must not do in its own process: a child process with a time limit and a memory cap.

Parsing client MIDI and running the soundfont synthesizer are C++ code fed with data the server does
not control; a crash, a hang or a runaway allocation there must cost one request, not the server.
A ``Sandbox`` keeps one spawned child that runs ``handler(payload)`` for each call; a call that takes
longer than its time limit kills the child, a child that dies is replaced, and the next call gets a
fresh one.
"""
from __future__ import annotations

import multiprocessing as mp
import threading

from midigen.errors import MidigenError

MEMORY_LIMIT = 3 << 30  # address space of a child process


class SandboxError(MidigenError):
    """The child crashed or ran out of time on this input."""


class Refused(MidigenError):
    """The handler's own one-line refusal (raised in the child, re-raised in the server)."""


def _limit_memory() -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    except (ImportError, ValueError, OSError):
        pass


def serve(conn, handler) -> None:
    """The child's loop: answer ('ok', result) or ('error', message) for each payload until closed."""
    _limit_memory()
    while True:
        try:
            payload = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(("ok", handler(payload)))
        except MidigenError as e:
            conn.send(("error", str(e)))
        except MemoryError:
            conn.send(("error", "it needs too much memory"))
        except Exception as e:  # a library bug on a hostile input costs that input only
            conn.send(("error", f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"))


class Sandbox:
    """One child process running ``target(conn)`` (a module-level function that calls ``serve``)."""

    def __init__(self, target, timeout: float, name: str):
        self.target = target
        self.timeout = timeout
        self.name = name
        self.lock = threading.Lock()
        self.proc = None
        self.conn = None

    def start(self) -> None:
        with self.lock:
            self._ensure()

    def _ensure(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            return
        self._stop()
        ctx = mp.get_context("spawn")  # never fork a process that holds a model and threads
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=self.target, args=(child,), name=self.name, daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent

    def _stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.proc is not None:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(5)
            self.proc = None

    def call(self, payload, what: str, timeout: float | None = None):
        """``handler(payload)`` in the child; Refused with its message, or SandboxError.

        A child found dead is replaced and the call tried once more, so a child that died between
        calls (killed from outside) is not blamed on the next input.
        """
        limit = self.timeout if timeout is None else timeout
        with self.lock:
            for attempt in (1, 2):
                self._ensure()
                try:
                    self.conn.send(payload)
                    if not self.conn.poll(limit):
                        self._stop()
                        raise SandboxError(f"{what} took longer than {limit:g} s")
                    answer = self.conn.recv()
                    break
                except (EOFError, OSError):
                    self._stop()
                    if attempt == 2:
                        raise SandboxError(f"{what} crashed") from None
        if answer[0] == "ok":
            return answer[1]
        raise Refused(answer[1])

    def close(self) -> None:
        with self.lock:
            self._stop()
