"""Errors the CLI turns into one-line messages, by one rule (README, "Exit codes"):

- exit 2, ``UsageError``: something the user can fix in what they typed or pointed at: a bad flag or
  number, a missing path, an empty folder, a bad or truncated MIDI file, a checkpoint or dataset that
  is missing, foreign, changed or truncated, or one that cannot do what was asked;
- exit 1, ``MidigenError``: the run itself failed: a download, a worker, a write, a loss that
  diverged, a cancelled job.
"""


class MidigenError(Exception):
    """The run itself failed (download, worker, disk, diverged training): exit 1."""


class UsageError(MidigenError):
    """What the user typed or pointed at is wrong (flags, paths, files, checkpoints, datasets): exit 2."""


class Cancelled(MidigenError):
    """Generation stopped because its listener asked (the studio's cancel button): exit 1."""
