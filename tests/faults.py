"""Test-only faults for `prepare`'s worker supervisor: a real hang, abort or segfault in a worker.

``MIDIGEN_FAULTS='hang:PAT,abort:PAT,segv:PAT,sleep0.1:PAT,batchabort:PAT'`` (read by the workers,
which inherit the environment) picks the files: an action fires when the real task starts parsing
a file whose name contains PAT; ``batch...`` actions fire instead in the batched encode of a chunk
that holds PAT. Nothing here is in product code: a test points prepare at this module's task,
``monkeypatch.setattr(midigen.data.prepare, "WORKER_TASK", faults.TASK)``, or runs the CLI through
``run_cli`` in a subprocess.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

import midigen.data.prepare as P
from midigen.data.workers import WHOLE_TASK

TASK = "faults:encode_chunk"


def _faults() -> list[tuple[str, str]]:
    out = []
    for part in os.environ.get("MIDIGEN_FAULTS", "").split(","):
        action, _, pat = part.partition(":")
        if pat:
            out.append((action, pat))
    return out


def _fire(action: str) -> None:
    if action == "hang":
        while True:
            time.sleep(1)
    elif action == "abort":
        os.abort()
    elif action == "segv":
        ctypes.string_at(0)
    elif action.startswith("sleep"):
        time.sleep(float(action[5:] or 1))


def encode_chunk(payload, failed, state):
    """``midigen.data.prepare.encode_chunk`` with the faults of MIDIGEN_FAULTS injected into its encoder."""
    items = payload[3]
    faults = _faults()
    read, encode_scores = P._Encoder.read, P._Encoder.encode_scores

    def faulty_read(self, data):
        name = items[int(state[0])][0]  # the real task marks the file it is on before parsing it
        for action, pat in faults:
            if pat in name and not action.startswith("batch"):
                _fire(action)
        return read(self, data)

    def faulty_encode_scores(self, scores):
        if state[0] == WHOLE_TASK:
            for action, pat in faults:
                if action.startswith("batch") and any(pat in it[0] for it in items):
                    _fire(action[5:])
        return encode_scores(self, scores)

    P._Encoder.read, P._Encoder.encode_scores = faulty_read, faulty_encode_scores
    try:
        return P.encode_chunk(payload, failed, state)
    finally:
        P._Encoder.read, P._Encoder.encode_scores = read, encode_scores


def _kill_before_replacing(name: str) -> None:
    """SIGKILL this process when it is about to rename a file called ``name`` into place."""
    replace = os.replace

    def replace_or_die(src, dst, **kw):
        if os.path.basename(dst) == name:
            os.kill(os.getpid(), signal.SIGKILL)
        return replace(src, dst, **kw)

    os.replace = replace_or_die


def run_cli(argv: list[str]) -> int:
    """`midigen ARGV` with prepare's workers running this module's task, for tests that kill a real
    CLI process. MIDIGEN_CHUNK_FILES sets the chunk size; MIDIGEN_KILL_BEFORE=NAME kills the process
    (SIGKILL) just before it renames a file called NAME into place."""
    from midigen.cli import main

    P.WORKER_TASK = TASK
    if os.environ.get("MIDIGEN_CHUNK_FILES"):
        P.CHUNK_FILES = int(os.environ["MIDIGEN_CHUNK_FILES"])
    if os.environ.get("MIDIGEN_KILL_BEFORE"):
        _kill_before_replacing(os.environ["MIDIGEN_KILL_BEFORE"])
    return main(argv)


if __name__ == "__main__":
    sys.exit(run_cli(sys.argv[1:]))
