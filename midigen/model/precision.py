"""Weight precision for inference: chosen when a checkpoint loads; the decoding engine does not know.

* ``fp32``: the weights as trained.
* ``bf16``: each Linear layer of the transformer blocks keeps its weight in bfloat16 (half the bytes
  read per token) and casts its input down and its output back, so the residual stream, layer norms,
  KV cache, embeddings and output head stay float32.
* ``int8``: the blocks' Linear layers go through PyTorch's dynamic quantization (int8 weights, one
  scale per output channel; activations quantized per call by the kernel). CPU only: PyTorch has
  no CUDA or MPS kernels for it. torchao's int8 schemes were measured against it on torch 2.13 CPU
  and lost (weight-only and dynamic both ran slower than fp32 here), so this is the maintained path
  that is fast on CPUs today (see README, dependency notes).

  At int8 the output head is int8 too: a dynamic-quantized copy of the (tied, float32) embedding's
  rows, only the support's when ``GPT.set_support`` restricts it (``GPT.set_head_maker`` rebuilds
  it whenever the support changes). Over the whole 18k vocabulary the float32 head was 56 of the
  142 MB a 124M step read; int8 it is 14 MB. The support's structure stays exact: the same ids get a
  computed logit as at fp32 and every other id the same smoothed share, so the grammar masks the
  same set; the int8 rounding moves only the computed logits (benchmarks/precision.py measures by
  how much). The embedding itself, which a step reads one row of, stays float32.

  At int8 the KV cache is bfloat16 (``INT8_KV_DTYPE``; ``GPT.kv_dtype``): once the weights are int8, a
  step at context ~270 reads 20 MB of float32 keys and values beside 100 MB of weights, and attention
  over them was ~17% of a 124M step's CPU time. Half the bytes cut the step's CPU time by 4-10%. The
  rounding is no coarser than int8's own (the projection after attention quantizes its input to 8 bits
  anyway), and benchmarks/precision.py measures it on trained models through the cache.

At fp32 and bf16 the output head is the float32 embedding rows themselves, and the KV cache float32.

``auto`` is a rule, not a timing taken at load, so a seed gives the same music on every run: bf16 on
a CUDA GPU that does it natively; on a CPU with a quantized engine, int8 when the blocks hold at
least ``INT8_MIN_WEIGHTS`` Linear weights (below that a step is dominated by per-op overhead, not by
reading weights, and int8 measured no faster: benchmarks/precision.py); fp32 otherwise.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from midigen.device import compute_dtype
from midigen.errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16", "int8")
INT8_QCONFIG = torch.ao.quantization.per_channel_dynamic_qconfig
INT8_KV_DTYPE = torch.bfloat16  # the KV cache at int8 (see above)
INT8_MIN_WEIGHTS = 4_000_000  # Linear weights in the blocks: the demo model has 1.8M, the 124M shape 85M


class Bf16Linear(nn.Module):
    """A Linear layer whose weight lives in bfloat16; it takes and returns the caller's dtype."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        b = linear.bias
        self.bias = None if b is None else nn.Parameter(b.detach().to(torch.bfloat16), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)


def int8_available() -> bool:
    """Whether this torch build has a CPU kernel for int8 dynamic quantization."""
    return any(e in torch.backends.quantized.supported_engines for e in ("x86", "fbgemm", "qnnpack"))


def block_linear_weights(model) -> int:
    """Weights in the Linear layers of the blocks: what a step reads per token besides the head."""
    return sum(m.weight.numel() for m in model.blocks.modules() if isinstance(m, nn.Linear))


def resolve_precision(name: str, device: torch.device, model=None) -> str:
    """``name`` checked against ``device``; ``auto`` becomes fp32, bf16 or int8 (the module's rule).
    ``model`` (its size) decides auto on a CPU; without it auto means int8 there."""
    if name not in PRECISIONS:
        raise UsageError(f"unknown precision {name!r}: use {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if name == "int8":
        if device.type != "cpu":
            raise UsageError(f"--precision int8 runs on CPUs only (PyTorch has no int8 kernels for {device.type}): "
                             "use bf16 or fp32 there")
        if not int8_available():
            raise UsageError("--precision int8: this torch build has no quantized CPU engine")
        return name
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if compute_dtype(device) == torch.bfloat16 else "fp32"
    if device.type == "cpu" and int8_available() and (model is None or block_linear_weights(model) >= INT8_MIN_WEIGHTS):
        return "int8"
    return "fp32"


def apply_precision(model, precision: str):
    """Convert ``model`` (already on its device, in eval mode) to a resolved precision, in place."""
    if precision == "bf16":
        _swap_linears(model.blocks, Bf16Linear)
    elif precision == "int8":
        model.blocks.to("cpu")
        with warnings.catch_warnings():  # quantize_dynamic warns that it is deprecated in favour of torchao
            warnings.simplefilter("ignore")
            torch.ao.quantization.quantize_dynamic(model.blocks, {nn.Linear: INT8_QCONFIG}, dtype=torch.qint8, inplace=True)
        model.set_head_maker(int8_head)
        model.kv_dtype = INT8_KV_DTYPE
    elif precision != "fp32":
        raise ValueError(f"unresolved precision {precision!r}")
    model.precision = precision
    return model


@torch.no_grad()
def int8_head(rows: torch.Tensor) -> nn.Module:
    """An int8 dynamic-quantized Linear computing ``x @ rows.T`` (one scale per row), on the CPU."""
    linear = nn.Linear(rows.size(1), rows.size(0), bias=False)
    linear.weight.copy_(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(nn.Sequential(linear), {nn.Linear: INT8_QCONFIG},
                                                      dtype=torch.qint8)[0]


def _swap_linears(root: nn.Module, make) -> None:
    for name, child in list(root.named_children()):
        if isinstance(child, nn.Linear):
            setattr(root, name, make(child))
        else:
            _swap_linears(child, make)
