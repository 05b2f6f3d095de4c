"""The `midigen` command (argument parsing only)."""
from midigen.cli.main import main

__all__ = ["main"]
