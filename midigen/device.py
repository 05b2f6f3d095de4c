"""Which torch device and compute dtype to run on: one rule for training, evaluation and sampling."""
from __future__ import annotations

import contextlib
import re

import torch

from midigen.errors import UsageError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# Dense (not 2:4 sparse) bf16 tensor-core peaks with fp32 accumulation, from NVIDIA's datasheets and
# architecture whitepapers, matched against torch.cuda.get_device_name(). First match wins, so the
# PCIe/NVL variants come before the bare names. A GPU not listed gets no MFU figure rather than a guess.
BF16_PEAK_FLOPS = (
    (r"\bH100\b.*\bPCIe\b", 756e12),
    (r"\bH[12]00\b.*\bNVL\b", 835e12),
    (r"\bH100\b", 989e12),  # SXM ("H100 80GB HBM3", "H100 SXM5")
    (r"\bH200\b", 989e12),  # SXM (also GH200's GPU)
    (r"\bA100\b", 312e12),  # SXM4 and PCIe alike
    (r"\bA40$", 149.7e12),
    (r"\bA10$", 125e12),  # not the A10G, whose figure NVIDIA does not publish
    (r"\bL4$", 121e12),
    (r"\bRTX 4090$", 165.2e12),
    (r"\bRTX 3090$", 71e12),
    (r"\bRTX A6000$", 154.8e12),
)


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


def cuda_device(device: torch.device, local_rank: int | None = None) -> torch.device:
    """A CUDA device with an index (torch.cuda.set_device refuses a bare 'cuda'), checked against the GPUs seen.

    Under torchrun (``local_rank`` given) each process takes the GPU of its local rank; otherwise the
    index asked for (``cuda:1``), or the current GPU for a bare ``cuda``.
    """
    count = torch.cuda.device_count()
    if local_rank is not None:
        index = local_rank
        if index >= count:
            raise UsageError(f"LOCAL_RANK {index} but only {count} CUDA GPU(s) are visible: start at most "
                             f"{count} processes per node (--nproc_per_node)")
    else:
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= count:
            raise UsageError(f"device cuda:{index} requested but only {count} CUDA GPU(s) are visible")
    return torch.device("cuda", index)


def _native_bf16(device: torch.device) -> bool:
    """bf16 only where the hardware does bf16 matmuls natively (elsewhere it is emulated, slower)."""
    if device.type == "cuda":
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # older torch: no emulation to tell apart
            return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:  # oneDNN: AVX-512 BF16 / AMX CPUs; about 1.3-1.5x faster training of the demo model
            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def compute_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """The dtype matmuls run in: 'auto' is bfloat16 where the device does it natively, else float32.

    float16 is not offered: training in it needs loss scaling, and one policy serves training, eval and
    sampling alike so that a model is scored and sampled the way it was trained.
    """
    if name == "auto":
        return torch.bfloat16 if _native_bf16(device) else torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise UsageError(f"unknown dtype {name!r}: use auto, float32 or bfloat16") from None


def autocast(device: torch.device, dtype: torch.dtype):
    """A context that runs matmuls in ``dtype`` (autocast), or nothing for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The GPU's dense bf16 peak (FLOP/s) for MFU, or None: not CUDA, not bf16, or a GPU not in the table."""
    if device.type != "cuda" or dtype != torch.bfloat16:
        return None
    return bf16_peak_for(torch.cuda.get_device_name(device))


def bf16_peak_for(name: str) -> float | None:
    name = name.strip()
    for pattern, flops in BF16_PEAK_FLOPS:
        if re.search(pattern, name):
            return flops
    return None
