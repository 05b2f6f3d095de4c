"""Errors the CLI turns into one-line messages: UsageError exits 2, MidigenError exits 1."""


class MidigenError(Exception):
    """A failure the user can act on (bad file, missing checkpoint, ...): exit 1."""


class UsageError(MidigenError):
    """Bad arguments, unknown source, unwritable directory, bad numbers: exit 2."""


class Cancelled(MidigenError):
    """Generation stopped because its listener asked it to (the studio's cancel button)."""
