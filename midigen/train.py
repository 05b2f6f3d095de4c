"""`midigen train`: one loop for a CPU, one GPU, Apple MPS, or torchrun DDP over many GPUs/nodes.

Design choices, and why:
- Windows are drawn from (seed, step, global micro-batch index), and dropout is reseeded from
  (seed, step, rank) every step. So nothing about the data order or the randomness lives in process
  state: ``--resume`` continues bit-for-bit on the same hardware, and a 2-process run is the same
  computation as a 1-process run with twice the gradient accumulation.
- The loss is all-reduced every step (one scalar) so every rank agrees when it turns non-finite and
  they all stop at the same step.
- Checkpoints, logs and the plot come from rank 0 only; evaluation is split over all ranks.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from midigen.config import TrainConfig, load_config
from midigen.errors import MidigenError, UsageError

H100_BF16_PEAK_FLOPS = 989e12  # dense bf16 tensor-core peak of an H100/H200 SXM


def _warn(msg: str) -> None:
    print(f"midigen train: warning: {msg}", file=sys.stderr, flush=True)


# ----- info -------------------------------------------------------------------------------------


def _vocab_for(data_dir) -> int:
    """The codec vocabulary of the dataset when it exists, else the default codec's."""
    from midigen.codec import Codec

    if (Path(data_dir) / "meta.json").exists():
        from midigen.dataset import read_meta

        try:
            return Codec.from_dict(read_meta(data_dir)["codec"]).vocab_size
        except (KeyError, TypeError, ValueError) as e:
            raise MidigenError(f"{data_dir}/meta.json: unusable codec ({e})") from None
    return Codec().vocab_size


def model_info(config_path, overrides=None) -> dict:
    from midigen.model import GPT, padded_vocab

    cfg = load_config(config_path, overrides)
    gcfg = _gpt_config(cfg, padded_vocab(_vocab_for(cfg.data)))
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = GPT(gcfg)
    return {
        "n_layer": gcfg.n_layer, "n_head": gcfg.n_head, "n_embd": gcfg.n_embd, "block_size": gcfg.block_size,
        "vocab_size": gcfg.vocab_size, "params": model.num_params(),
        "params_non_embedding": model.num_params(non_embedding=True),
    }


# The config keys that fix a model's shape: they must match a checkpoint being resumed or fine-tuned.
SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "bias")


def _gpt_config(cfg: TrainConfig, vocab_size: int):
    from midigen.model import GPTConfig

    return GPTConfig(vocab_size=vocab_size, dropout=cfg.dropout, **{k: getattr(cfg, k) for k in SHAPE_KEYS})


# ----- environment ------------------------------------------------------------------------------


class Dist:
    """Who this process is: rank/world from torchrun's environment variables, or a single process."""

    def __init__(self):
        self.enabled = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        self.rank = int(os.environ.get("RANK", 0))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
        self.master = self.rank == 0

    def init(self, device: torch.device) -> None:
        if not self.enabled:
            return
        import torch.distributed as dist

        backend = "nccl" if device.type == "cuda" else "gloo"
        kw = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kw)

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled and self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t /= self.world
        return t

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled and self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.enabled and self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def pick_device(name: str, dist: Dist) -> torch.device:
    """The config's device; under torchrun each process takes the GPU of its local rank."""
    from midigen.device import best_device

    try:
        device = best_device(name)
    except UsageError as e:
        raise UsageError(f"'device': {e}") from None
    if device.type == "cuda":
        if dist.enabled:
            device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    return device


def _native_bf16(device: torch.device) -> bool:
    """bf16 autocast only where the hardware does bf16 matmuls natively (elsewhere it is emulated, slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:  # oneDNN: AVX-512 BF16 / AMX CPUs; about 1.3-1.5x faster training of the demo model
            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        name = "bfloat16" if _native_bf16(device) else "float32"
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to ``min_lr`` over ``decay_steps`` (GPT-2/3 practice)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay = cfg.decay_steps or cfg.steps
    if step >= decay:
        return cfg.min_lr
    frac = (step - cfg.warmup_steps) / max(1, decay - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * frac)) * (cfg.lr - cfg.min_lr)


# ----- state for exact resume -------------------------------------------------------------------


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all(state["cuda"])


def _seed_step(seed: int, step: int, rank: int) -> None:
    """Dropout randomness as a pure function of (seed, step, rank)."""
    torch.manual_seed((seed * 1_000_003 + step * 7919 + rank * 104_729) % (1 << 62))


# ----- logging ----------------------------------------------------------------------------------


class RunLog:
    """log.jsonl (one JSON object per line, flushed each row), optional wandb mirror."""

    def __init__(self, out: Path, keep_upto_step: int | None, wandb_run=None):
        self.path = out / "log.jsonl"
        if keep_upto_step is None:
            self.path.unlink(missing_ok=True)
        else:  # resume: drop rows of steps that will be redone, so the curve has no duplicates
            from midigen.fsutil import atomic_write_text
            from midigen.plot import read_log

            rows = [r for r in read_log(self.path) if r.get("step", 0) <= keep_upto_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))
        self.f = open(self.path, "a", encoding="utf-8")
        self.wandb = wandb_run

    def write(self, row: dict) -> None:
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()
        if self.wandb is not None:
            with contextlib.suppress(Exception):
                self.wandb.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def close(self) -> None:
        self.f.close()
        if self.wandb is not None:
            with contextlib.suppress(Exception):
                self.wandb.finish()


def _start_wandb(cfg: TrainConfig, out: Path, resume: bool):
    try:
        import wandb
    except ImportError:
        _warn("--wandb: the wandb package is not installed (pip install wandb); "
              "logging to log.jsonl only")
        return None
    try:  # WANDB_MODE=offline/disabled is read by wandb itself
        return wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name or out.name, config=cfg.to_dict(),
                          dir=str(out), resume="allow" if resume else None)
    except Exception as e:  # not logged in, no network, ...: the run itself must go on
        _warn(f"--wandb: could not start a wandb run ({e}); logging to log.jsonl only")
        return None


# ----- the run ----------------------------------------------------------------------------------


def train_from_cli(config, overrides, resume: bool = False, use_wandb: bool = False) -> dict:
    cfg = load_config(config, overrides)
    return train(cfg, resume=resume, use_wandb=use_wandb)


def _check_run_dir(out: Path, resume: bool, cfg: TrainConfig) -> None:
    has_last = (out / "last" / "config.json").exists()
    if resume:
        if not has_last or not (out / "last" / "train_state.pt").exists():
            raise UsageError(f"--resume: {out}/last holds no checkpoint to continue from; start the run without "
                             "--resume (or point --out at the run dir)")
    elif has_last or (out / "best").exists():
        if not cfg.overwrite:
            raise UsageError(f"{out} already holds a run: add --resume to continue it, --overwrite=true to start "
                             "over (deleting its checkpoints), or choose another --out")


def _load_init(cfg: TrainConfig, codec, device):
    """Weights to fine-tune from: the checkpoint's architecture, this config's dropout."""
    from midigen.checkpoint import load_checkpoint
    from midigen.model import GPT, GPTConfig

    model, ck_codec, config = load_checkpoint(cfg.init_from, device="cpu")
    if ck_codec.to_dict() != codec.to_dict():
        raise MidigenError(f"init_from {cfg.init_from}: its codec differs from the dataset's; prepare the data "
                           "with the same codec as the checkpoint")
    shape = model.cfg.to_dict()
    mine = {k: getattr(cfg, k) for k in SHAPE_KEYS}
    if any(shape[k] != v for k, v in mine.items()):
        _warn(f"init_from: using the checkpoint's model shape {({k: shape[k] for k in mine})} "
              f"instead of the config's {mine}")
    for k in mine:
        setattr(cfg, k, shape[k])
    shape["dropout"] = cfg.dropout
    fresh = GPT(GPTConfig.from_dict(shape))
    fresh.load_state_dict(model.state_dict())
    fresh.init_support = None if model.support is None else model.support.tolist()
    return fresh


def train(cfg: TrainConfig, resume: bool = False, use_wandb: bool = False, progress: bool = True) -> dict:
    dist = Dist()
    device = pick_device(cfg.device, dist)
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // max(1, dist.local_world)))
    dist.init(device)
    try:
        return _train(cfg, dist, device, resume, use_wandb, progress)
    finally:
        dist.close()


def _train(cfg: TrainConfig, dist: Dist, device: torch.device, resume: bool, use_wandb: bool, progress: bool):
    from midigen.checkpoint import load_checkpoint, load_train_state, save_checkpoint
    from midigen.dataset import Dataset, WindowSampler, eval_rows
    from midigen.evaluate import score_rows, summarize
    from midigen.model import GPT, padded_vocab
    from midigen.plot import plot_losses

    out = Path(cfg.out)
    ds = Dataset(cfg.data)
    codec = ds.codec
    if dist.master:
        from midigen.checkpoint import recover

        for name in ("best", "last"):
            recover(out / name)  # finish a swap a kill interrupted, before anyone looks
    dist.barrier()
    _check_run_dir(out, resume, cfg)  # every rank, so all of them stop on a bad run dir
    dist.barrier()
    if dist.master:
        out.mkdir(parents=True, exist_ok=True)
        if not resume and cfg.overwrite:
            import shutil

            for name in ("best", "last", "loss.png"):
                p = out / name
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    # ---- model, optimizer, state
    state = None
    if resume:
        model, ck_codec, ck_config = load_checkpoint(out / "last", device="cpu")
        if ck_codec.to_dict() != codec.to_dict():
            raise MidigenError(f"--resume: {out}/last was trained on a dataset with another codec than {cfg.data}")
        shape = model.cfg.to_dict()
        for k in SHAPE_KEYS:
            if shape[k] != getattr(cfg, k):
                raise UsageError(f"--resume: the run was trained with {k}={shape[k]}, the config now says "
                                 f"{getattr(cfg, k)}; the model shape cannot change on resume")
        if shape["dropout"] != cfg.dropout:
            model.cfg.dropout = cfg.dropout
            for m in model.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = cfg.dropout
                elif hasattr(m, "dropout") and isinstance(m.dropout, float):
                    m.dropout = cfg.dropout
        state = load_train_state(out / "last")
    elif cfg.init_from:
        model = _load_init(cfg, codec, device)
    else:
        torch.manual_seed(cfg.seed)
        model = GPT(_gpt_config(cfg, padded_vocab(codec.vocab_size)))
    if cfg.restrict_vocab:
        from midigen.dataset import token_support

        support = set(token_support(ds.split("train"), cfg.transpose).tolist())
        support |= set(getattr(model, "init_support", None) or [])  # fine-tuning keeps what it knew
        model.set_support(sorted(support))
    else:
        model.set_support(None)
    model.to(device)
    model.train()
    raw = model

    use_fused = device.type in ("cuda", "cpu")
    opt = torch.optim.AdamW(raw.optimizer_groups(cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                            eps=1e-8, fused=use_fused)
    start_step, best_val, elapsed0 = 0, float("inf"), 0.0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        start_step = int(state["step"])
        best_val = float(state["best_val_loss"])
        elapsed0 = float(state.get("elapsed", 0.0))
        _set_rng_state(state["rng"])
        if start_step >= cfg.steps:
            raise UsageError(f"--resume: the run already reached step {start_step} of {cfg.steps}; "
                             f"raise --steps to train further")

    dtype = pick_dtype(cfg.dtype, device)
    amp = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    compile_on = cfg.compile if isinstance(cfg.compile, bool) else device.type == "cuda"
    fwd = torch.compile(raw) if compile_on else raw
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        fwd = DDP(fwd, device_ids=[device.index] if device.type == "cuda" else None)

    # ---- data
    sampler = WindowSampler(ds.split("train"), cfg.block_size, cfg.seed, transpose=cfg.transpose,
                            edit_fraction=cfg.edit_fraction)
    ex, ey = eval_rows(ds.split("val"), cfg.block_size, cfg.eval_tokens)
    eval_targets = ey[ey >= 0]
    eval_tokens, eval_notes = int(len(eval_targets)), codec.count_notes(eval_targets)
    eval_bs = cfg.eval_batch_size or cfg.batch_size
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum * dist.world
    flops_per_token = raw.flops_per_token()

    def run_eval() -> dict:
        nats = score_rows(raw, ex, ey, eval_bs, device, amp, dist.rank, dist.world)
        if dist.world > 1:
            nats = float(dist.all_reduce_sum(nats).item())
        return summarize(nats, eval_tokens, eval_notes, prefix="val_")

    # ---- logging (rank 0)
    log = None
    if dist.master:
        wb = _start_wandb(cfg, out, resume) if use_wandb else None
        log = RunLog(out, start_step if resume else None, wb)
        n = raw.num_params(non_embedding=True)
        print(f"midigen train: {n / 1e6:.2f}M non-embedding params, {dist.world} process(es) on {device.type}, "
              f"{dtype}, compile={'on' if compile_on else 'off'}, {tokens_per_step:,} tokens/step, "
              f"steps {start_step}->{cfg.steps}; val: {eval_tokens:,} tokens, {eval_notes:,} notes",
              file=sys.stderr, flush=True)

    def save(step: int, ev: dict, is_best: bool) -> None:
        info = {"step": step, "tokens_seen": step * tokens_per_step, "data": str(cfg.data),
                "train_config": cfg.to_dict(), **ev}
        if ds.controls is not None:  # what --style/--key/--density mean for this model
            info["controls"] = ds.controls.to_info(cfg.transpose)
        if is_best:
            save_checkpoint(out / "best", raw, codec, info)
        ts = {"step": step, "optimizer": opt.state_dict(), "best_val_loss": best_val,
              "elapsed": elapsed0 + time.time() - t_start, "rng": _rng_state(),
              "sampler": {"seed": cfg.seed, "next_step": step}, "config": cfg.to_dict()}
        save_checkpoint(out / "last", raw, codec, info, train_state=ts)

    bar = None
    if dist.master and progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start_step, unit="step", file=sys.stderr, dynamic_ncols=True,
                   desc="train")
    t_start = time.time()
    t_log, steps_since_log = time.time(), 0
    last_saved = start_step if resume else None
    last_ev: dict = {}
    sleep = float(os.environ.get("MIDIGEN_TEST_STEP_SLEEP", "0") or 0)  # lets tests kill mid-run
    params = [p for p in raw.parameters() if p.requires_grad]
    step = start_step
    try:
        while step < cfg.steps:
            lr = lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            _seed_step(cfg.seed, step, dist.rank)
            loss_sum = torch.zeros((), device=device)
            for micro in range(cfg.grad_accum):
                xb, yb = sampler.batch(step, micro * dist.world + dist.rank, cfg.batch_size)
                x = torch.from_numpy(xb).to(device, non_blocking=True)
                y = torch.from_numpy(yb).to(device, non_blocking=True)
                sync = not dist.enabled or micro == cfg.grad_accum - 1
                with (contextlib.nullcontext() if sync else fwd.no_sync()):
                    with amp or contextlib.nullcontext():
                        _, loss = fwd(x, y)
                    (loss / cfg.grad_accum).backward()
                loss_sum += loss.detach()
            loss_t = dist.all_reduce_mean(loss_sum / cfg.grad_accum)
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            loss_v, norm_v = float(loss_t.item()), float(norm.item())
            if not (math.isfinite(loss_v) and math.isfinite(norm_v)):
                what = f"loss became {loss_v}" if not math.isfinite(loss_v) else f"gradient norm became {norm_v}"
                where = (f"the last good checkpoint is {out / 'last'} (step {last_saved})" if last_saved
                         else "no checkpoint was written yet")
                raise MidigenError(f"{what} at step {step + 1}: stopping ({where}). Lower 'lr' or check the data.")
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            steps_since_log += 1
            if sleep:
                time.sleep(sleep)

            if dist.master and (step % cfg.log_interval == 0 or step == cfg.steps):
                now = time.time()
                tps = tokens_per_step * steps_since_log / max(now - t_log, 1e-9)
                row = {"step": step, "loss": loss_v, "lr": lr, "grad_norm": norm_v, "tokens_per_s": tps,
                       "tokens": step * tokens_per_step, "elapsed": elapsed0 + now - t_start}
                if device.type == "cuda":
                    row["mfu"] = flops_per_token * tps / dist.world / H100_BF16_PEAK_FLOPS
                    row["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
                log.write(row)
                t_log, steps_since_log = now, 0
                if bar is not None:
                    bar.set_postfix_str(f"loss {loss_v:.3f}  {tps:,.0f} tok/s" +
                                        (f"  val {last_ev['val_loss']:.3f}" if last_ev else ""), refresh=False)
            if bar is not None:
                bar.update(1)

            if step % cfg.eval_interval == 0 or step == cfg.steps:
                ev = run_eval()
                last_ev = ev
                is_best = ev["val_loss"] < best_val
                if is_best:
                    best_val = ev["val_loss"]
                if dist.master:
                    log.write({"step": step, **ev, "elapsed": elapsed0 + time.time() - t_start})
                    save(step, ev, is_best)
                    last_saved = step
                    plot_losses(out / "log.jsonl", out / "loss.png", title=out.name)
                    bpn = ev["val_bits_per_note"]
                    msg = (f"step {step}: val loss {ev['val_loss']:.4f} nats/token, "
                           f"{bpn:.3f} bits/note" if bpn is not None else
                           f"step {step}: val loss {ev['val_loss']:.4f} nats/token")
                    (bar.write if bar is not None else lambda s: print(s, file=sys.stderr))(
                        msg + ("  (best)" if is_best else ""))
                t_log = time.time()  # eval time does not count against throughput
                dist.barrier()
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    return {"step": step, "best_val_loss": best_val, **last_ev, "out": str(out)}
