"""Adapters: a base checkpoint's hash plus low-rank weight updates and a few new embedding rows.

An adapter dir holds ``adapter.safetensors`` and ``adapter.json``. The manifest names the base
checkpoint (its path and the SHA-256 of its ``config.json``, which itself records the hash of every
base file), the rank and scale of the low-rank updates, the token ids whose embedding rows the
adapter brings (ids the base never trained: a new style, drums for a model that never heard any),
the widened output support, the control vocabulary and the hash of the weights file.

Every attention and MLP projection ``W`` (out x in) gets ``W + scale * B @ A`` with ``A`` (rank x in)
and ``B`` (out x rank). Loading merges the update into the base weights once, so an adapted model
runs exactly as fast as the base.

Adapters are shared files, so everything is untrusted: the manifest's types, the tensor names and
shapes in the safetensors header (read without loading a tensor) and the base hash are all checked
before anything is allocated. ``midigen.model.checkpoint`` composes these checks with the base's.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from midigen.errors import MidigenError, UsageError
from midigen.fsutil import atomic_write_json, sha256_file
from midigen.model.model import GPT, GPTConfig, block_linears

WEIGHTS = "adapter.safetensors"
MANIFEST = "adapter.json"
FORMAT = "midigen-adapter-v1"
TARGETS = tuple(block_linears(1))  # every Linear inside a block
ROWS = "wte.rows"  # the embedding (and, tied, output) rows of ``new_ids``
MAX_RANK = 256


def is_adapter_dir(path) -> bool:
    return (Path(path) / MANIFEST).is_file()


# ----- shapes, read without loading -------------------------------------------------------------


def expected_shapes(cfg: GPTConfig, rank: int, n_rows: int) -> dict[str, tuple[int, ...]]:
    out = {}
    for i in range(cfg.n_layer):
        for name, (o, n_in) in block_linears(cfg.n_embd).items():
            out[f"blocks.{i}.{name}.lora_A"] = (rank, n_in)
            out[f"blocks.{i}.{name}.lora_B"] = (o, rank)
    if n_rows:
        out[ROWS] = (n_rows, cfg.n_embd)
    return out


def header_shapes(path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors file's JSON header alone (no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise MidigenError(f"{path}: unreadable safetensors header ({e})") from None


def describe_mismatch(expected: dict, got: dict) -> str:
    """A short account of how two name -> shape maps differ (for one-line errors)."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    bad = sorted(k for k in set(expected) & set(got) if tuple(expected[k]) != tuple(got[k]))
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if extra:
        parts.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
    if bad:
        parts.append(f"{len(bad)} of the wrong shape (e.g. {bad[0]}: {list(got[bad[0]])} for "
                     f"{list(expected[bad[0]])})")
    return ", ".join(parts)


# ----- the manifest ----------------------------------------------------------------------------


def _int_list(value, what: str, limit: int) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise ValueError(f"{what} must be a list of token ids")
    if any(not 0 <= i < limit for i in value) or len(set(value)) != len(value):
        raise ValueError(f"{what} holds ids outside the vocabulary of {limit} or repeats")
    return value


def read_manifest(path) -> dict:
    """adapter.json, with every field the loader relies on checked for type and range."""
    f = Path(path) / MANIFEST
    try:
        m = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MidigenError(f"{f} is unreadable: {e}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        found = m.get("format") if isinstance(m, dict) else None
        raise MidigenError(f"{f} is not a midigen adapter (format {found!r})")
    try:
        base = m["base"]
        if not isinstance(base, dict) or not all(isinstance(base.get(k), str) for k in ("path", "sha256")):
            raise ValueError("'base' must name the base checkpoint's path and sha256")
        rank = m["rank"]
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= MAX_RANK:
            raise ValueError(f"rank must be a whole number in 1..{MAX_RANK}")
        if isinstance(m["alpha"], bool) or not isinstance(m["alpha"], (int, float)) or not math.isfinite(m["alpha"]):
            raise ValueError("alpha must be a number")
        if not isinstance(m.get("sha256"), str):
            raise ValueError(f"no sha256 of {WEIGHTS}")
        if not isinstance(m.get("new_ids"), list) or not isinstance(m.get("support"), (list, type(None))):
            raise ValueError("new_ids and support must be lists of token ids")
        if not isinstance(m.get("controls"), (dict, type(None))) or not isinstance(m.get("note_ranges"), (dict, type(None))):
            raise ValueError("controls and note_ranges must be objects")
    except (KeyError, ValueError) as e:
        raise MidigenError(f"{f}: bad adapter manifest ({e})") from None
    return m


def check_against_base(path, manifest: dict, cfg: GPTConfig) -> None:
    """The manifest's ids and the weights' header fit the base's shape: nothing is allocated before this."""
    path = Path(path)
    try:
        _int_list(manifest["new_ids"], "new_ids", cfg.vocab_size)
        if manifest["support"] is not None:
            _int_list(manifest["support"], "support", cfg.vocab_size)
    except ValueError as e:
        raise MidigenError(f"adapter {path}: {e}") from None
    expected = expected_shapes(cfg, manifest["rank"], len(manifest["new_ids"]))
    got = header_shapes(path / WEIGHTS)
    if got != expected:
        raise UsageError(f"adapter {path} does not fit its base ({cfg.n_layer} layers x {cfg.n_embd} wide, rank "
                         f"{manifest['rank']}): tensors {describe_mismatch(expected, got)}")


def adapted_config(base_config: dict, manifest: dict, path, base) -> dict:
    """The base's config as the adapted model answers for it: widened support, the adapter's controls.

    ``base`` is where the base was found, which is not always where the manifest recorded it."""
    config = dict(base_config)
    info = dict(config.get("info") or {})
    if manifest.get("controls") is not None:
        info["controls"] = manifest["controls"]
    if isinstance(manifest.get("note_ranges"), dict):
        info["note_ranges"] = manifest["note_ranges"]
    config["info"] = info
    config["support"] = manifest["support"]
    config["adapter"] = summary(manifest, path, base)
    return config


def summary(manifest: dict, path, base) -> dict:
    """What ``midigen info`` shows of an adapter."""
    controls = manifest.get("controls") or {}
    return {"dir": str(path), "base": str(base), "base_sha256": manifest["base"]["sha256"],
            "rank": manifest["rank"], "new_ids": len(manifest["new_ids"]),
            "new_styles": list(manifest.get("new_styles") or []), "styles": list(controls.get("styles", [])),
            "step": manifest.get("step"), "val_bits_per_note": manifest.get("val_bits_per_note")}


# ----- tuning: low-rank layers and new rows -------------------------------------------------------


class LoRALinear(nn.Module):
    """A frozen Linear plus ``scale * B @ A``; B starts at zero, so tuning starts from the base exactly."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        a = torch.randn(rank, base.in_features, generator=generator) / math.sqrt(base.in_features)
        self.lora_A = nn.Parameter(a.to(base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in place: the base's output is not needed for its backward; the scale goes on the small matrix
        return self.base(x).add_(F.linear(F.linear(x, self.lora_A), self.lora_B * self.scale))


class RowPatch(nn.Module):
    """A parametrization of the embedding: the base rows with ``ids`` replaced by trainable ``rows``."""

    def __init__(self, ids: torch.Tensor, rows: torch.Tensor):
        super().__init__()
        self.register_buffer("ids", ids)
        self.rows = nn.Parameter(rows)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.index_put((self.ids,), self.rows)


def attach(model: GPT, rank: int, alpha: float, new_ids: list[int], seed: int) -> None:
    """Freeze ``model`` and give it trainable low-rank updates and rows for ``new_ids`` (tuning)."""
    from torch.nn.utils import parametrize

    if model.support is None and new_ids:
        raise ValueError("new rows need a base with an output support")  # tied head: see GPT._full_logits
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    for block in model.blocks:
        for name in TARGETS:
            owner, attr = name.split(".")
            parent = getattr(block, owner)
            setattr(parent, attr, LoRALinear(getattr(parent, attr), rank, alpha, g))
    if new_ids:
        ids = torch.tensor(new_ids, dtype=torch.long, device=model.wte.weight.device)
        parametrize.register_parametrization(model.wte, "weight", RowPatch(ids, model.wte.weight[ids].clone()))


def trainable(model: GPT) -> dict[str, nn.Parameter]:
    """The adapter's tensors by their saved names (``attach`` made them)."""
    out = {}
    for i, block in enumerate(model.blocks):
        for name in TARGETS:
            owner, attr = name.split(".")
            layer = getattr(getattr(block, owner), attr)
            out[f"blocks.{i}.{name}.lora_A"] = layer.lora_A
            out[f"blocks.{i}.{name}.lora_B"] = layer.lora_B
    patches = getattr(getattr(model.wte, "parametrizations", None), "weight", None)
    if patches is not None:
        out[ROWS] = patches[0].rows
    return out


# ----- loading: merge into the base ---------------------------------------------------------------


@torch.no_grad()
def merge(model: GPT, tensors: dict[str, torch.Tensor], manifest: dict) -> None:
    """Fold the adapter into ``model``'s weights (shapes were checked by ``check_against_base``)."""
    scale = float(manifest["alpha"]) / manifest["rank"]
    for i, block in enumerate(model.blocks):
        for name in TARGETS:
            owner, attr = name.split(".")
            w = getattr(getattr(block, owner), attr).weight
            a, b = tensors[f"blocks.{i}.{name}.lora_A"], tensors[f"blocks.{i}.{name}.lora_B"]
            w += (b.float() @ a.float()).mul_(scale).to(w.dtype)
    if manifest["new_ids"]:
        ids = torch.tensor(manifest["new_ids"], dtype=torch.long)
        model.wte.weight[ids] = tensors[ROWS].to(model.wte.weight.dtype)
    model.set_support(manifest["support"], model.support_epsilon or 1e-4)


def save(path, tensors: dict[str, torch.Tensor], manifest: dict) -> None:
    """Write adapter.safetensors then adapter.json (the manifest, with the weights' hash, is the commit)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path / (WEIGHTS + ".tmp")
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={"format": FORMAT})
    manifest = {**manifest, "format": FORMAT, "sha256": sha256_file(tmp)}
    (path / MANIFEST).unlink(missing_ok=True)  # never a manifest beside weights it does not describe
    tmp.replace(path / WEIGHTS)
    atomic_write_json(path / MANIFEST, manifest)


# ----- switching: applied beside the base, removable ----------------------------------------------


class LiveAdapter(nn.Module):
    """A base layer of any kind (fp32, bf16 or int8 Linear) plus a fixed low-rank update added to its
    output. The base layer is kept as it is, so removing the adapter gives back the very same tensors:
    the studio switches between a base and its adapters without reading the base weights again."""

    def __init__(self, base: nn.Module, a: torch.Tensor, b: torch.Tensor, scale: float):
        super().__init__()
        self.base = base
        self.register_buffer("a", a.float())
        self.register_buffer("b", b.float() * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return y + F.linear(F.linear(x.float(), self.a), self.b).to(y.dtype)


@torch.no_grad()
def apply_live(model: GPT, tensors: dict[str, torch.Tensor], manifest: dict):
    """Put the adapter on ``model`` beside its base weights (shapes checked by ``check_against_base``);
    returns the function that takes it off again, leaving every base tensor exactly as it was."""
    scale, dev = float(manifest["alpha"]) / manifest["rank"], model.wte.weight.device
    swapped = []
    for i, block in enumerate(model.blocks):
        for name in TARGETS:
            owner, attr = name.split(".")
            parent = getattr(block, owner)
            base = getattr(parent, attr)
            a, b = (tensors[f"blocks.{i}.{name}.lora_{x}"].to(dev) for x in "AB")
            setattr(parent, attr, LiveAdapter(base, a, b, scale))
            swapped.append((parent, attr, base))
    ids = torch.tensor(manifest["new_ids"], dtype=torch.long, device=dev)
    old_rows = model.wte.weight[ids].clone()  # rows the base never trained, but restored bit for bit
    if len(ids):
        model.wte.weight[ids] = tensors[ROWS].to(dev, model.wte.weight.dtype)
    old_support = None if model.support is None else model.support.tolist()
    old_epsilon = model.support_epsilon
    model.set_support(manifest["support"], old_epsilon or 1e-4)

    @torch.no_grad()
    def remove() -> None:
        for parent, attr, base in swapped:
            setattr(parent, attr, base)
        if len(ids):
            model.wte.weight[ids] = old_rows
        model.set_support(old_support, old_epsilon)

    return remove
