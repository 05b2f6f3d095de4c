"""The `midigen` command (argument parsing only)."""
from midigen.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
