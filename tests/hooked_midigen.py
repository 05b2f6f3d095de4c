"""`python -m hooked_midigen ...`: the midigen command with faults injected from the environment (tests only).

Tests put ``tests/`` on PYTHONPATH and run this module instead of ``midigen`` (also under torchrun), so
product code carries no test hooks:

- ``HOOK_STEP_SLEEP=S``: sleep S seconds after every optimizer step (lets a test kill a run mid-way).
- ``HOOK_FAIL_SAVE_RANK=R``: the process of rank R fails with an OSError when it saves a checkpoint.
- ``HOOK_SYNTH_HANG=S``: the `--wav` synthesizer hangs on every render, and a render may take S seconds.
- ``HOOK_NOTELESS_SEEDS=5,6``: draws seeded with one of these all but never choose a note of the
  instruments ``HOOK_NOTELESS_INSTRUMENTS`` lists (default: every instrument; their note logits are
  pushed far down; an edit's written part and a continuation's new notes are dropped, since their
  grammars can force notes), so a test gets an empty result for exactly those seeds.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np


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

    noteless = {int(x) for x in os.environ.get("HOOK_NOTELESS_SEEDS", "").split(",") if x.strip()}
    if noteless:
        which = os.environ.get("HOOK_NOTELESS_INSTRUMENTS", "")
        _silence_seeds(noteless, [int(x) for x in which.split(",") if x.strip()] or list(range(129)))


def _silence_seeds(seeds: set, instruments: list) -> None:
    from midigen.generate import engine

    init, forward = engine.Decoder.__init__, engine.Decoder._forward

    def hooked_init(self, model, codec, sampling, **kw):
        init(self, model, codec, sampling, **kw)
        self.noteless = sampling.seed in seeds

    def hooked_forward(self, ids, cache):
        logits = forward(self, ids, cache)
        if self.noteless:
            for i in instruments:
                at = self.codec.note_start + 128 * i
                logits[:, at : at + 128] -= 1e4
        return logits

    engine.Decoder.__init__, engine.Decoder._forward = hooked_init, hooked_forward
    from midigen.generate import edit
    from midigen.music.codec import track_instrument
    from midigen.music.sequences import Units

    write_plan = edit.write_plan

    def hooked_write_plan(dec, codec, song, plan, num_samples):
        written = write_plan(dec, codec, song, plan, num_samples)
        if not dec.noteless:
            return written
        return [u.select(~np.isin(u.inst, instruments)) for u in written]

    edit.write_plan = hooked_write_plan
    from midigen.generate import continuation

    continued = continuation.continued
    last = {"noteless": False}
    init2 = engine.Decoder.__init__

    def remembering_init(self, *a, **kw):
        init2(self, *a, **kw)
        last["noteless"] = self.noteless

    def hooked_continued(codec, score, p, *a, **kw):
        out = continued(codec, score, p, *a, **kw)
        if last["noteless"]:  # the continuation grammar wants a note after every shift: drop the new ones
            for t in out.tracks:
                notes = t.notes.numpy()
                keep = (notes["time"] < p.start_tick) | ~np.isin(track_instrument(t), instruments)
                t.notes = type(t.notes).from_numpy(*(notes[k][keep] for k in ("time", "duration", "pitch",
                                                                                "velocity")))
        return out

    engine.Decoder.__init__ = remembering_init
    continuation.continued = hooked_continued


if __name__ == "__main__":
    _install()
    from midigen.cli import main

    sys.exit(main())
