"""Which torch device to run on: one rule for training, evaluation and sampling."""
from __future__ import annotations

import torch

from midigen.errors import UsageError


def best_device(name: str | None = None) -> torch.device:
    """The requested device, checked; None or 'auto' means cuda, then mps, then cpu."""
    if name is None or name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"unknown device {name!r}: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("device cuda requested but this torch build sees no CUDA GPU")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("device mps requested but MPS is not available")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unsupported device {name!r}: use cpu, cuda, cuda:N or mps")
    return dev
