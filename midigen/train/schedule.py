"""The learning-rate schedule, and what happens to it when a run is resumed with other settings.

Linear warmup, then a cosine from ``lr`` down to ``min_lr`` ending at ``decay_end`` (GPT-2/3 practice).
A resumed run must not jump: stretching the cosine of a finished 10k-step run to 20k steps would
lift its learning rate from 6e-5 back to ~3.4e-4 at once. So when the schedule settings change on
resume, the learning rate continues from where the old schedule was at the resumed step, on a new
cosine (re-anchored there) down to the new ``min_lr`` at the new decay end; and the run says so in
one line. The anchor is saved with the run, so later resumes continue the same curve exactly.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Schedule:
    lr: float
    min_lr: float
    warmup_steps: int
    decay_end: int  # step at which the cosine reaches min_lr
    anchor_step: int = -1  # >= 0: a resumed run's cosine starts here ...
    anchor_lr: float = 0.0  # ... from this learning rate

    @classmethod
    def from_config(cls, cfg) -> "Schedule":
        return cls(cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.decay_steps or cfg.steps)

    @classmethod
    def from_dict(cls, d: dict) -> "Schedule":
        return cls(float(d["lr"]), float(d["min_lr"]), int(d["warmup_steps"]), int(d["decay_end"]),
                   int(d.get("anchor_step", -1)), float(d.get("anchor_lr", 0.0)))

    def to_dict(self) -> dict:
        return asdict(self)

    def lr_at(self, step: int) -> float:
        if self.anchor_step >= 0 and step >= self.anchor_step:
            return self._cosine(step, self.anchor_step, self.anchor_lr)
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        return self._cosine(step, self.warmup_steps, self.lr)

    def _cosine(self, step: int, start: int, top: float) -> float:
        if step >= self.decay_end:
            return self.min_lr
        frac = (step - start) / max(1, self.decay_end - start)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * frac)) * (top - self.min_lr)

    def settings(self) -> tuple:
        """What a config decides (everything but a resume's anchor)."""
        return (self.lr, self.min_lr, self.warmup_steps, self.decay_end)


def resume_schedule(saved: Schedule, wanted: Schedule, step: int) -> tuple[Schedule, str | None]:
    """The schedule a run resumed at ``step`` follows, and a one-line note when it is not the saved one.

    Same settings: the saved schedule, unchanged (exact resume). Changed settings that give the same
    learning rate at ``step`` (e.g. a longer run resumed inside its warmup): the new schedule. Otherwise
    a cosine from the saved schedule's learning rate at ``step`` to ``wanted.min_lr`` at
    ``wanted.decay_end``, so the learning rate never jumps.
    """
    if saved.settings() == wanted.settings():
        return saved, None
    old_lr, new_lr = saved.lr_at(step), wanted.lr_at(step)
    changed = _describe_change(saved, wanted)
    if math.isclose(old_lr, new_lr, rel_tol=1e-9, abs_tol=0.0):
        return wanted, (f"lr schedule changed ({changed}); the lr at step {step} is unchanged ({old_lr:.3g}) "
                        f"and follows the new schedule to {wanted.min_lr:.3g} at step {wanted.decay_end}")
    anchored = Schedule(wanted.lr, wanted.min_lr, wanted.warmup_steps, wanted.decay_end, step, old_lr)
    if wanted.decay_end <= step:
        how = f"goes to min_lr {wanted.min_lr:.3g} at once (the new decay ends at step {wanted.decay_end})"
    elif math.isclose(old_lr, wanted.min_lr, rel_tol=1e-9):
        how = f"stays at the old schedule's floor {old_lr:.3g} until step {wanted.decay_end}"
    else:
        how = (f"continues from the old schedule's {old_lr:.3g} on a cosine to {wanted.min_lr:.3g} at step "
               f"{wanted.decay_end}")
    return anchored, (f"lr schedule changed ({changed}): instead of jumping to {new_lr:.3g}, the lr at step "
                      f"{step} {how}")


def _describe_change(saved: Schedule, wanted: Schedule) -> str:
    names = ("lr", "min_lr", "warmup_steps", "decay end")
    parts = [f"{n} {a:g} -> {b:g}" for n, a, b in zip(names, saved.settings(), wanted.settings()) if a != b]
    return ", ".join(parts)
