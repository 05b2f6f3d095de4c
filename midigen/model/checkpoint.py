"""Self-contained checkpoints: weights (safetensors), model config and codec (JSON).

A checkpoint dir holds ``model.safetensors``, ``config.json`` (model shape, training facts and the
SHA-256 of every file) and ``codec.json``; a run dir's ``last/`` adds ``train_state.pt`` (optimizer,
step, RNG; tensors and plain types only, loaded with ``weights_only=True``). Nothing is unpickled.

Saving is atomic at the directory level: the new checkpoint is written beside the old one and swapped
in with renames, so a SIGKILL at any moment leaves a whole checkpoint (the writer's ``recover`` finishes
a swap that was interrupted between its two renames; readers read the old copy where it lies).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from midigen import __version__
from midigen.music.codec import Codec, CodecError, instrument_name
from midigen.music.chords import chord_name
from midigen.music.ranges import NoteLimits, learned_tempo_changes, note_limits
from midigen.errors import UsageError
from midigen.fsutil import _fsync_dir, atomic_write_json, sha256_file
from midigen.model import adapter as adapters
from midigen.model.model import GPT, GPTConfig, param_shapes
from midigen.model.precision import apply_precision, resolve_precision

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CODEC = "codec.json"
TRAIN_STATE = "train_state.pt"
FORMAT = "midigen-checkpoint-v1"


def _sha256(path: Path) -> str:
    return sha256_file(path)


def unwrap(model) -> GPT:
    """The GPT inside torch.compile and DDP wrappers."""
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    return getattr(model, "module", model)  # DDP wrapper


def _state_dict_for_save(model: GPT) -> dict:
    """Weights without the tied head (safetensors refuses shared storage) and on the CPU."""
    return {k: v.detach().to("cpu").contiguous() for k, v in unwrap(model).state_dict().items() if k != "head.weight"}


def save_checkpoint(path, model: GPT, codec: Codec, info: dict | None = None, train_state: dict | None = None) -> Path:
    """Write a checkpoint dir atomically (replacing any checkpoint already at ``path``)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(_state_dict_for_save(model), str(tmp / WEIGHTS), metadata={"format": FORMAT})
    (tmp / CODEC).write_text(codec.to_json() + "\n", encoding="utf-8")
    if train_state is not None:
        torch.save(train_state, tmp / TRAIN_STATE)
    files = sorted(p.name for p in tmp.iterdir())
    raw = unwrap(model)
    config = {
        "format": FORMAT,
        "midigen_version": __version__,
        "model": raw.cfg.to_dict(),
        "support": None if raw.support is None else [int(i) for i in raw.support.tolist()],
        "support_epsilon": raw.support_epsilon,
        "info": info or {},
        "sha256": {name: _sha256(tmp / name) for name in files},
    }
    atomic_write_json(tmp / CONFIG, config)
    for name in os.listdir(tmp):
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(tmp)
    old = path.with_name(path.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if old.exists():
        shutil.rmtree(old)
    return path


def recover(path) -> None:
    """Finish a swap cut short by a kill: if ``path`` is gone but ``path.old`` exists, restore it.

    Writers only (the trainer, ``save_checkpoint``): a reader that renamed files could race training's
    own swap and make its next rename fail.
    """
    path = Path(path)
    old = path.with_name(path.name + ".old")
    if not path.exists() and old.exists():
        os.replace(old, path)


def _readable(path: Path) -> Path | None:
    """``path`` if it holds a checkpoint, else its ``.old`` twin left by an interrupted swap, else None.

    Read-only: the twin is read where it lies (the trainer puts it back when it next starts or saves).
    """
    if (path / CONFIG).exists():
        return path
    old = path.with_name(path.name + ".old")
    if not path.exists() and (old / CONFIG).exists():
        return old
    return None


def resolve(path) -> Path:
    """A run dir means its ``best/`` (or ``last/`` when no best exists); a checkpoint dir means itself.

    Never writes: a ``best``/``last`` caught between a save's two renames is read from ``best.old``.
    An adapter dir (``midigen.model.adapter``) means itself.
    """
    path = Path(path)
    if adapters.is_adapter_dir(path):
        return path
    found = _readable(path)
    if found is not None:
        return found
    if not path.exists():
        raise UsageError(f"checkpoint {path} does not exist")
    for name in ("best", "last"):
        found = _readable(path / name)
        if found is not None:
            return found
    raise UsageError(f"{path} is not a midigen checkpoint or run dir (no {CONFIG}, best/ or last/)")


def read_config(path) -> dict:
    path = resolve(path)
    if adapters.is_adapter_dir(path):
        manifest, base, base_config = _adapter_base(path)
        return adapters.adapted_config(base_config, manifest, path, base)
    try:
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"{path / CONFIG} is unreadable: {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise UsageError(f"{path} is not a midigen checkpoint (format {config.get('format')!r})")
    return config


def verify(path) -> dict:
    """Check every file against the hashes in config.json; a tampered checkpoint is refused."""
    path = resolve(path)
    if adapters.is_adapter_dir(path):
        return _verify_adapter(path)
    config = read_config(path)
    hashes = config.get("sha256")
    if not isinstance(hashes, dict) or WEIGHTS not in hashes or CODEC not in hashes:
        raise UsageError(f"{path} has no file hashes: not a midigen checkpoint")
    for name, digest in hashes.items():
        f = path / name
        if not f.exists():
            raise UsageError(f"checkpoint {path} is missing {name}")
        if _sha256(f) != digest:
            raise UsageError(f"checkpoint {path}: {name} does not match its recorded hash (tampered or corrupt)")
    return config


def load_checkpoint(path, device="cpu", check_hashes: bool = True, precision: str = "fp32"):
    """-> (model in eval mode, codec, config dict). Refuses tampered, foreign or mismatched files.

    ``precision`` (``model.precision``: auto, fp32, bf16, int8) converts the weights for inference
    once loaded; a precision the device cannot run is refused before anything is read."""
    resolve_precision(precision, torch.device(device))  # refuse int8 on a GPU before reading anything
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = resolve(path)
    if adapters.is_adapter_dir(path):
        return _load_adapted(path, device, check_hashes, precision)
    config = verify(path) if check_hashes else read_config(path)
    try:
        codec = Codec.load(path / CODEC)
    except (OSError, ValueError, KeyError, TypeError, CodecError) as e:
        raise UsageError(f"checkpoint {path}: bad codec.json ({e})") from None
    cfg = check_shapes(path, config)
    if cfg.vocab_size < codec.vocab_size:
        raise UsageError(f"checkpoint {path}: model vocabulary {cfg.vocab_size} < codec's {codec.vocab_size}")
    try:
        state = load_file(str(path / WEIGHTS), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise UsageError(f"checkpoint {path}: unreadable weights ({e})") from None
    model = GPT(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items() if k != "head.weight"}
    got = {k: v.shape for k, v in state.items()}
    if expected != got:
        missing = sorted(set(expected) - set(got))[:3]
        extra = sorted(set(got) - set(expected))[:3]
        bad = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])[:3]
        raise UsageError(
            f"checkpoint {path}: weights do not fit the model config (missing {missing}, unexpected {extra}, "
            f"wrong shape {bad})"
        )
    model.load_state_dict(state, strict=False)  # head.weight is tied to wte.weight
    support = config.get("support")
    if support is not None:
        try:
            model.set_support(support, float(config.get("support_epsilon", 1e-4)))
        except (TypeError, ValueError) as e:
            raise UsageError(f"checkpoint {path}: bad output support ({e})") from None
    model.to(device).eval()
    apply_precision(model, resolve_precision(precision, torch.device(device), model))
    return model, codec, config


def load_train_state(path) -> dict:
    """The optimizer/step/RNG state of a run's ``last/``: tensors and plain containers only."""
    f = Path(path) / TRAIN_STATE
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"no training state at {f}: nothing to resume") from None
    except Exception as e:  # weights_only refuses anything but tensors and plain types
        raise UsageError(f"cannot load {f}: {e}") from None


def capabilities(config: dict, codec: Codec) -> dict:
    """What a checkpoint can be asked for (``midigen info --ckpt``, the studio's controls).

    Read from what training recorded: the editing objective's share of windows, the ids its output
    support covers (the instruments and meters of its training data), and the control vocabularies
    (styles, keys, densities) it learned, when it learned any.
    """
    info = config.get("info") or {}
    train_cfg = info.get("train_config") or {}
    support = config.get("support")
    ids = set(range(codec.vocab_size)) if support is None else {int(i) for i in support}
    lo, hi = codec.inst_start, codec.note_start
    instruments = sorted(i - lo for i in ids if lo <= i < hi)
    meters = [f"{n}/{d}" for k, (n, d) in enumerate(codec.time_signatures) if codec.ts_start + k in ids]
    controls = info.get("controls") or {}
    limits = checkpoint_limits(config)
    return {
        "codec_version": codec.version,
        "can_edit": bool(codec.has_controls and float(train_cfg.get("edit_fraction", 0) or 0) > 0),
        "instruments": instruments,
        "instrument_names": [instrument_name(i) for i in instruments],
        "time_signatures": meters,
        "styles": list(controls.get("styles", [])),
        "keys": list(controls.get("keys", [])),
        "densities": list(controls.get("densities", [])),
        "density_notes_per_second": list(controls.get("density_edges", [])),
        "note_ranges": {instrument_name(i): limits.of(i) for i in instruments},
        "learned_tempo_changes": learned_tempo_changes(recorded_ranges(config)),
        "chords": codec.has_chords,  # --chords works (codec v4)
        "chord_vocabulary": _chord_names(codec, ids),
    }


def _chord_names(codec: Codec, ids: set) -> list[str]:
    """The chords (``midigen.music.chords`` names) whose CHORD token the model learned to write: its
    training data had them. Any chord of the vocabulary can still be forced with --chords."""
    if not codec.has_chords:
        return []
    return [chord_name(i - codec.chord_start) for i in sorted(ids) if codec.chord_start <= i < codec.vocab_size]


def recorded_ranges(config: dict) -> dict | None:
    """The instrument ranges training measured (``midigen.music.ranges.measure_ranges``), if it did."""
    return (config.get("info") or {}).get("note_ranges")


def checkpoint_limits(config: dict) -> NoteLimits:
    """Every instrument's pitch range and polyphony for this checkpoint: what its training data showed,
    the documented table for instruments it never saw (and for checkpoints that recorded none)."""
    return note_limits(recorded_ranges(config))


def describe(path) -> dict:
    """``midigen info --ckpt``: where the checkpoint is, how far it trained, and its ``capabilities``."""
    path = resolve(path)
    config = verify(path)  # as sample does: a truncated or changed file is refused, not described
    base = Path(config["adapter"]["base"]) if "adapter" in config else path
    try:
        codec = Codec.load(resolve(base) / CODEC)
    except (OSError, ValueError, KeyError, TypeError, CodecError) as e:
        raise UsageError(f"checkpoint {path}: bad codec.json ({e})") from None
    check_shapes(resolve(base), read_config(base))
    info = config.get("info") or {}
    out = {"ckpt": str(path), "step": info.get("step"), "data": info.get("data"), **capabilities(config, codec)}
    if "adapter" in config:
        out["adapter"] = config["adapter"]
    return out


# ----- untrusted configs: shapes against the weights' header -------------------------------------


def model_config(path, config: dict) -> GPTConfig:
    """config.json's model shape, each number checked for type and range (no model is built)."""
    try:
        cfg = GPTConfig.from_dict(config["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"checkpoint {path}: bad model config ({e})") from None
    for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UsageError(f"checkpoint {path}: config.json model {name} must be a whole number >= 1, got {v!r}")
    if cfg.n_embd % cfg.n_head:
        raise UsageError(f"checkpoint {path}: config.json n_embd {cfg.n_embd} is not a multiple of n_head {cfg.n_head}")
    if not isinstance(cfg.bias, bool) or not isinstance(cfg.dropout, (int, float)) or not 0 <= cfg.dropout < 1:
        raise UsageError(f"checkpoint {path}: config.json bias must be true/false and dropout in [0, 1)")
    return cfg


def check_shapes(path, config: dict) -> GPTConfig:
    """The model config.json describes is exactly the one its weights hold (read from the safetensors
    header, not loaded): the hashes cover the weights, not the config, so a shared checkpoint whose
    config asks for a huge model is refused here, before anything is allocated."""
    cfg = model_config(path, config)
    got = adapters.header_shapes(Path(path) / WEIGHTS)
    if cfg.n_layer > len(got):  # a layer holds several tensors: too many layers to be in this file
        raise UsageError(f"checkpoint {path}: config.json asks for {cfg.n_layer} layers, but the weights hold "
                         f"{len(got)} tensors in all")
    expected = param_shapes(cfg)
    if expected != got:
        raise UsageError(f"checkpoint {path}: config.json ({cfg.n_layer} layers x {cfg.n_embd} wide, vocabulary "
                         f"{cfg.vocab_size}) does not match its weights: tensors "
                         f"{adapters.describe_mismatch(expected, got)}")
    return cfg


# ----- adapters: a base checkpoint plus an adapter dir --------------------------------------------


def _adapter_base(path) -> tuple[dict, Path, dict]:
    """(manifest, base dir, base config), the base found where the manifest says and of the hash it records."""
    manifest = adapters.read_manifest(path)
    want = manifest["base"]["sha256"]
    base = _find_base(Path(path), manifest["base"])
    if base is None or adapters.is_adapter_dir(base) or not (base / CONFIG).is_file():
        raise UsageError(f"adapter {path}: its base checkpoint {manifest['base']['path']} is missing "
                         f"(expected config.json sha256 {want})")
    if _sha256(base / CONFIG) != want:
        raise UsageError(f"adapter {path}: the base checkpoint {base} has changed (expected config.json sha256 "
                         f"{want})")
    return manifest, base, read_config(base)


def _find_base(adapter_dir: Path, recorded: dict) -> Path | None:
    """The base where the manifest recorded it, else at the same place relative to the adapter dir, so a
    project folder holding both can be moved or shared; the hash check that follows decides."""
    where = [recorded["path"]]
    if isinstance(recorded.get("relative"), str):
        where.append(str(adapter_dir / recorded["relative"]))
    for candidate in where:
        try:
            found = resolve(candidate)
        except UsageError:
            continue
        if (found / CONFIG).is_file():
            return found
    return None


def _verify_adapter(path) -> dict:
    """Base hashes, base shapes, adapter hash and adapter shapes, in that order, before any tensor is read."""
    manifest, base, _ = _adapter_base(path)
    base_config = verify(base)
    cfg = check_shapes(base, base_config)
    _check_adapter_weights(path, manifest, cfg)
    return adapters.adapted_config(base_config, manifest, path, base)


def _check_adapter_weights(path: Path, manifest: dict, cfg) -> None:
    """The adapter's weights file has its recorded hash and the shapes its base needs (header only)."""
    weights = path / adapters.WEIGHTS
    if not weights.is_file() or _sha256(weights) != manifest["sha256"]:
        raise UsageError(f"adapter {path}: {adapters.WEIGHTS} is missing or does not match its recorded hash "
                           "(tampered or corrupt)")
    adapters.check_against_base(path, manifest, cfg)


def adapter_base(path) -> Path:
    """The base checkpoint dir an adapter dir was tuned from (checked against its recorded hash)."""
    return _adapter_base(resolve(path))[1]


def load_adapter(path, base_sha256: str) -> tuple[dict, dict, dict]:
    """-> (manifest, tensors, adapted config) of an adapter for a base that is already loaded, the one
    whose config.json has ``base_sha256``: the studio puts adapters on and off its one copy of the base
    (``adapter.apply_live``), so the base's weights are neither read nor hashed again here."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = resolve(path)
    if not adapters.is_adapter_dir(path):
        raise UsageError(f"{path} is not an adapter dir (no {adapters.MANIFEST})")
    manifest, base, base_config = _adapter_base(path)
    if manifest["base"]["sha256"] != base_sha256:
        raise UsageError(f"adapter {path} was tuned from another base ({base}, config.json sha256 "
                         f"{manifest['base']['sha256']})")
    _check_adapter_weights(path, manifest, check_shapes(base, base_config))
    try:
        tensors = load_file(str(path / adapters.WEIGHTS), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise UsageError(f"adapter {path}: unreadable weights ({e})") from None
    return manifest, tensors, adapters.adapted_config(base_config, manifest, path, base)


def _load_adapted(path, device, check_hashes: bool, precision: str):
    """The base with the adapter merged into its weights, and the adapted config."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = _verify_adapter(path) if check_hashes else read_config(path)
    manifest, base, _ = _adapter_base(path)
    if not check_hashes:
        adapters.check_against_base(path, manifest, check_shapes(base, read_config(base)))
    model, codec, _ = load_checkpoint(base, "cpu", check_hashes=False)  # hashes were checked above
    try:
        tensors = load_file(str(path / adapters.WEIGHTS), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise UsageError(f"adapter {path}: unreadable weights ({e})") from None
    adapters.merge(model, tensors, manifest)  # in float32, before any conversion
    model.to(device).eval()
    apply_precision(model, resolve_precision(precision, torch.device(device), model))
    return model, codec, config
