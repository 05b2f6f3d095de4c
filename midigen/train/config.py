"""Training configuration: a flat TOML file plus ``--key=value`` overrides, checked up front.

Every key has a type and a default here, so a typo or a wrong type fails before any work starts
(exit 2, naming the key and the nearest valid one) instead of an hour into a GPU job.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

from midigen.errors import UsageError


@dataclass
class TrainConfig:
    # run
    data: str = "data/demo"  # dataset dir written by `midigen prepare`
    out: str = "runs/demo"  # run dir: best/, last/, log.jsonl, loss.png
    init_from: str = ""  # a run dir or checkpoint dir to fine-tune from ("" = from scratch)
    seed: int = 1337
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    dtype: str = "auto"  # auto (bfloat16 where the GPU or CPU does it natively, else float32), float32, bfloat16
    compile: bool | str = "auto"  # torch.compile: auto = on CUDA only
    threads: int = 0  # CPU threads per process (0 = cores / processes on this node)
    overwrite: bool = False  # allow starting fresh over a run dir that already has checkpoints
    # model
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    dropout: float = 0.0
    bias: bool = True
    restrict_vocab: bool = True  # softmax over the ids the training data uses (others share 1e-4)
    # optimisation
    steps: int = 1000  # optimizer steps
    batch_size: int = 16  # windows per micro-step per process
    grad_accum: int = 1  # micro-steps per optimizer step
    lr: float = 6e-4
    min_lr: float = 6e-5
    warmup_steps: int = 100
    decay_steps: int = 0  # cosine decay length (0 = until `steps`)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    # data
    transpose: bool = True  # random pitch shift of non-drum notes, training only
    edit_fraction: float = 0.0  # share of training windows that are editing sequences (infill/arrange)
    # logging and evaluation
    eval_interval: int = 100
    eval_tokens: int = 262144  # val tokens scored at each eval (each exactly once)
    eval_batch_size: int = 0  # 0 = batch_size
    log_interval: int = 1
    wandb_project: str = "midigen"
    wandb_run_name: str = ""

    @property
    def tokens_per_step_per_process(self) -> int:
        return self.batch_size * self.block_size * self.grad_accum

    def to_dict(self) -> dict:
        return asdict(self)


KEYS = {f.name: f for f in fields(TrainConfig)}
_CHOICES = {"dtype": ("auto", "float32", "bfloat16"), "compile": ("auto", True, False)}
# keys that must be >= 1 / > 0 / >= 0
_POSITIVE_INT = ("n_layer", "n_head", "n_embd", "block_size", "steps", "batch_size", "grad_accum",
                 "eval_interval", "eval_tokens", "log_interval")
_NONNEG = ("min_lr", "weight_decay", "grad_clip", "warmup_steps", "decay_steps", "threads", "eval_batch_size")


def _suggest(key: str) -> str:
    near = difflib.get_close_matches(key, KEYS, n=1, cutoff=0.5)
    return f" (did you mean '{near[0]}'?)" if near else ""


def _type_name(key: str) -> str:
    if key == "compile":
        return "true, false or \"auto\""
    t = KEYS[key].type
    return {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "text"}.get(
        t if isinstance(t, str) else t.__name__, str(t))


def _check_type(key: str, value, source: str):
    """A TOML value (already typed) for ``key``, or UsageError."""
    t = KEYS[key].type
    if key == "compile":
        if isinstance(value, bool) or value == "auto":
            return value
    elif t == "bool":
        if isinstance(value, bool):
            return value
    elif t == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif t == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif t == "str":
        if isinstance(value, str):
            return value
    raise UsageError(f"{source}: '{key}' must be {_type_name(key)}, got {value!r}")


def _parse_text(key: str, text: str, source: str):
    """A command-line value (a string) for ``key``, converted to the key's type."""
    t = KEYS[key].type
    low = text.strip().lower()
    bools = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False, "on": True, "off": False}
    try:
        if key == "compile":
            return "auto" if low == "auto" else bools[low]
        if t == "bool":
            return bools[low]
        if t == "int":
            f = float(text)  # accept 1e3 and 1_000 for whole numbers
            if not f.is_integer():
                raise ValueError
            return int(f)
        if t == "float":
            return float(text)
    except (KeyError, ValueError, OverflowError):
        raise UsageError(f"{source}: '{key}' must be {_type_name(key)}, got {text!r}") from None
    return text


def parse_overrides(args: list[str]) -> dict:
    """``--key=value`` / ``--key value`` in any order; ``-`` and ``_`` are the same in key names."""
    out = {}
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--") or a == "--":
            raise UsageError(f"unexpected argument {a!r}: overrides look like --key=value")
        body = a[2:]
        if "=" in body:
            name, text = body.split("=", 1)
            i += 1
        else:
            name = body
            if i + 1 >= len(args) or (args[i + 1].startswith("--") and not _looks_numeric(args[i + 1])):
                raise UsageError(f"--{name} needs a value (--{name}=VALUE)")
            text = args[i + 1]
            i += 2
        key = name.replace("-", "_")
        if key not in KEYS:
            raise UsageError(f"unknown config key '{name}'{_suggest(key)}")
        out[key] = _parse_text(key, text, f"--{name}")
    return out


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def validate(cfg: TrainConfig) -> TrainConfig:
    for k in _POSITIVE_INT:
        if getattr(cfg, k) < 1:
            raise UsageError(f"'{k}' must be >= 1, got {getattr(cfg, k)}")
    for k in _NONNEG:
        v = getattr(cfg, k)
        if not (v >= 0 and math.isfinite(v)):
            raise UsageError(f"'{k}' must be >= 0, got {v}")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise UsageError(f"'lr' must be a positive number, got {cfg.lr}")
    if not 0 <= cfg.dropout < 1:
        raise UsageError(f"'dropout' must be in [0, 1), got {cfg.dropout}")
    if not 0 <= cfg.edit_fraction < 1:
        raise UsageError(f"'edit_fraction' must be in [0, 1), got {cfg.edit_fraction}")
    for k in ("beta1", "beta2"):
        if not 0 <= getattr(cfg, k) < 1:
            raise UsageError(f"'{k}' must be in [0, 1), got {getattr(cfg, k)}")
    if cfg.dtype not in _CHOICES["dtype"]:
        raise UsageError(f"'dtype' must be one of {', '.join(_CHOICES['dtype'])}, got {cfg.dtype!r}")
    if cfg.n_embd % cfg.n_head:
        raise UsageError(f"'n_embd' ({cfg.n_embd}) must be a multiple of 'n_head' ({cfg.n_head})")
    if cfg.block_size < 16:
        raise UsageError(f"'block_size' must be at least 16 (a song header alone can be ~10 tokens), got {cfg.block_size}")
    if not cfg.data:
        raise UsageError("'data' (the dataset dir) is empty")
    if not cfg.out:
        raise UsageError("'out' (the run dir) is empty")
    return cfg


def load_config(path, overrides: list[str] | dict | None = None) -> TrainConfig:
    """Read a TOML config, apply command-line overrides, check every key and value."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except OSError as e:
        raise UsageError(f"cannot read config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path} is not valid TOML: {e}") from None
    values = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            raise UsageError(f"{path}: tables like [{key}] are not used; write every key at the top level")
        k = key.replace("-", "_")
        if k not in KEYS:
            raise UsageError(f"{path}: unknown config key '{key}'{_suggest(k)}")
        values[k] = _check_type(k, value, str(path))
    if isinstance(overrides, dict):
        values.update(overrides)
    elif overrides:
        values.update(parse_overrides(list(overrides)))
    return validate(TrainConfig(**values))
