"""A worker task for tests of ``midigen.data.workers``: reports what the worker process sees."""
from __future__ import annotations

import os
import time

MARK = "as imported"  # a test changes it in the parent; a spawned worker imports it afresh


def report(payload, failed, state) -> dict:
    state[0], state[1] = 0, time.monotonic()
    if payload == "crash" and 0 not in failed:
        os.abort()
    state[1] = 0.0
    return {"mark": MARK, "pid": os.getpid(), "parent": os.getppid(), "failed": failed}
