"""A run's log: log.jsonl (one JSON object per line, flushed each row), optionally mirrored to wandb."""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from midigen.fsutil import atomic_write_text
from midigen.train.plot import read_log


def warn(msg: str) -> None:
    print(f"midigen train: warning: {msg}", file=sys.stderr, flush=True)


class RunLog:
    def __init__(self, out: Path, keep_upto_step: int | None, wandb_run=None):
        self.path = out / "log.jsonl"
        if keep_upto_step is None:
            self.path.unlink(missing_ok=True)
        else:  # resume: drop rows of steps that will be redone, so the curve has no duplicates
            rows = [r for r in read_log(self.path) if r.get("step", 0) <= keep_upto_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))
        self.f = open(self.path, "a", encoding="utf-8")
        self.wandb = wandb_run

    def write(self, row: dict) -> None:
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()
        if self.wandb is not None:
            with contextlib.suppress(Exception):
                self.wandb.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def close(self) -> None:
        self.f.close()
        if self.wandb is not None:
            with contextlib.suppress(Exception):
                self.wandb.finish()


def start_wandb(cfg, out: Path, resume: bool):
    """A wandb run mirroring the log, or None (with a warning) when wandb is missing or cannot start."""
    try:
        import wandb
    except ImportError:
        warn("--wandb: the wandb package is not installed (pip install wandb); logging to log.jsonl only")
        return None
    try:  # WANDB_MODE=offline/disabled is read by wandb itself
        return wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name or out.name, config=cfg.to_dict(),
                          dir=str(out), resume="allow" if resume else None)
    except Exception as e:  # not logged in, no network, ...: the run itself must go on
        warn(f"--wandb: could not start a wandb run ({e}); logging to log.jsonl only")
        return None
