"""`python -m hooked_midigen ...`: the midigen command with faults injected from the environment (tests only).

Tests put ``tests/`` on PYTHONPATH and run this module instead of ``midigen`` (also under torchrun), so
product code carries no test hooks:

- ``HOOK_STEP_SLEEP=S``: sleep S seconds after every optimizer step (lets a test kill a run mid-way).
- ``HOOK_FAIL_SAVE_RANK=R``: the process of rank R fails with an OSError when it saves a checkpoint.
- ``HOOK_SYNTH_HANG=S``: the `--wav` synthesizer hangs on every render, and a render may take S seconds.
"""
from __future__ import annotations

import os
import sys
import time


def _install() -> None:
    sleep = float(os.environ.get("HOOK_STEP_SLEEP", "0") or 0)
    if sleep:
        from midigen.train import train
        inner = train._seed_step

        def slow_seed_step(*a, **kw):
            time.sleep(sleep)
            return inner(*a, **kw)

        train._seed_step = slow_seed_step
    fail_rank = os.environ.get("HOOK_FAIL_SAVE_RANK")
    if fail_rank is not None and os.environ.get("RANK", "0") == fail_rank:
        from midigen.model import checkpoint
        def failing_save(path, *a, **kw):
            raise OSError(28, "No space left on device (injected by the test)", str(path))

        checkpoint.save_checkpoint = failing_save
    hang = float(os.environ.get("HOOK_SYNTH_HANG", "0") or 0)
    if hang:
        from midigen.generate import synth
        from studio_server import synth_always_hanging

        synth._child = synth_always_hanging
        synth.render_timeout = lambda seconds: hang


if __name__ == "__main__":
    _install()
    from midigen.cli import main

    sys.exit(main())
