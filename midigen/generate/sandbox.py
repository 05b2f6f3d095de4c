"""Work a process must not do itself: a child process with a time limit and a memory cap.

Parsing client MIDI and running the soundfont synthesizer are C++ code fed with data we do not
control; a crash, a hang or a runaway allocation there must cost one request (the studio) or end in
a one-line error (the CLI's `--wav`), never take down or freeze the caller.
A ``Sandbox`` keeps one spawned child that runs ``handler(args, blob)`` for each call; a call that
takes longer than its time limit kills the child, a child that dies is replaced, and the next call
gets a fresh one. Messages are JSON plus raw bytes, never pickles: what comes back from a child that
chewed on a hostile file is data, not code.
"""
from __future__ import annotations

import json
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


def _send(conn, head: dict, blob: bytes | None) -> None:
    conn.send_bytes(json.dumps({**head, "blob": blob is not None}).encode())
    if blob is not None:
        conn.send_bytes(blob)


def _recv(conn) -> tuple[dict, bytes | None]:
    head = json.loads(conn.recv_bytes().decode())
    return head, conn.recv_bytes() if head.pop("blob") else None


def _reason(e: BaseException) -> str:
    if isinstance(e, MidigenError):
        return str(e)
    if isinstance(e, MemoryError):
        return "it needs too much memory"
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}".strip(": ")


def serve(conn, handler) -> None:
    """The child's loop: ``handler(args, blob) -> (result, blob)`` for each call, until the pipe closes."""
    _limit_memory()
    while True:
        try:
            head, blob = _recv(conn)
        except (EOFError, OSError):
            return
        try:
            result, out = handler(head["args"], blob)
            _send(conn, {"ok": True, "result": result}, out)
        except Exception as e:  # MidigenError is the handler's refusal; anything else a library bug
            _send(conn, {"ok": False, "error": _reason(e)}, None)


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

    def call(self, args, blob: bytes | None, what: str, timeout: float | None = None) -> tuple:
        """``handler(args, blob)`` in the child -> (result, blob); Refused with its message, or SandboxError.

        A child found dead is replaced and the call tried once more, so a child that died between
        calls (killed from outside) is not blamed on the next input.
        """
        limit = self.timeout if timeout is None else timeout
        with self.lock:
            for attempt in (1, 2):
                self._ensure()
                try:
                    _send(self.conn, {"args": args}, blob)
                    if not self.conn.poll(limit):
                        self._stop()
                        raise SandboxError(f"{what} took longer than {limit:g} s")
                    head, out = _recv(self.conn)
                    break
                except (EOFError, OSError, ValueError):
                    self._stop()
                    if attempt == 2:
                        raise SandboxError(f"{what} crashed") from None
        if head.get("ok"):
            return head.get("result"), out
        raise Refused(str(head.get("error", "refused")))

    def close(self) -> None:
        with self.lock:
            self._stop()
