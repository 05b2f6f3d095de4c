"""`midigen train`: one loop for a CPU, one GPU, Apple MPS, or torchrun DDP over many GPUs/nodes.

Design choices, and why:
- Windows are drawn from (seed, step, global micro-batch index), and dropout is reseeded from
  (seed, step, rank) every step. So nothing about the data order or the randomness lives in process
  state: ``--resume`` continues bit-for-bit on the same hardware, and a 2-process run is the same
  computation as a 1-process run with twice the gradient accumulation.
- Batches are built ahead on a background thread (``loader.Prefetcher``; pinned, non_blocking copies
  on CUDA), and the host waits for the device only where it must read a number: at log steps and
  evaluations. A non-finite loss or gradient norm is noted on the device at the step it happens; the
  run stops at the next log step or evaluation, naming that step, before anything is saved.
- The loss is all-reduced every step (one scalar, no host sync), so every rank sees the same value
  and they all stop at the same step.
- Checkpoints, logs and the plot come from rank 0 only, through ``Dist.on_master``: a failure there
  stops every rank at once with its error (see ``distributed.py``). Evaluation is split over all ranks.
"""
from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from midigen.train.config import TrainConfig, load_config
from midigen.train.distributed import Dist
from midigen.errors import MidigenError, UsageError
from midigen.train.runlog import RunLog, start_wandb, warn as _warn
from midigen.data.dataset import Dataset, eval_positions, eval_rows, read_meta, token_support, WindowSampler
from midigen.device import autocast, best_device, compute_dtype, cuda_device, peak_flops
from midigen.eval.evaluate import score_rows, summarize
from midigen.model.checkpoint import load_checkpoint, load_train_state, recover, save_checkpoint
from midigen.model.model import GPT, GPTConfig, padded_vocab
from midigen.music.codec import Codec
from midigen.music.timing import positions_seconds
from midigen.train.loader import Prefetcher
from midigen.train.plot import plot_losses
from midigen.train.schedule import resume_schedule, Schedule
from midigen.music.ranges import measure_ranges


# ----- info -------------------------------------------------------------------------------------


def _vocab_for(data_dir) -> int:
    """The codec vocabulary of the dataset when it exists, else the default codec's."""
    if (Path(data_dir) / "meta.json").exists():
        try:
            return Codec.from_dict(read_meta(data_dir)["codec"]).vocab_size
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"{data_dir}/meta.json: unusable codec ({e})") from None
    return Codec().vocab_size


def model_info(config_path, overrides=None) -> dict:
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
    return GPTConfig(vocab_size=vocab_size, dropout=cfg.dropout, **{k: getattr(cfg, k) for k in SHAPE_KEYS})


# ----- device -----------------------------------------------------------------------------------


def pick_device(name: str, dist: Dist) -> torch.device:
    """The config's device, with an index on CUDA: under torchrun each process takes its LOCAL_RANK's GPU."""
    try:
        device = best_device(name)
    except UsageError as e:
        raise UsageError(f"'device': {e}") from None
    if device.type == "cuda":
        if dist.enabled and device.index is not None and device.index != dist.local_rank:
            _warn(f"'device' {name}: under torchrun each process uses the GPU of its LOCAL_RANK "
                  f"(cuda:{dist.local_rank} here); choose GPUs with CUDA_VISIBLE_DEVICES")
        device = cuda_device(device, dist.local_rank if dist.enabled else None)
        torch.cuda.set_device(device)
    return device


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


# ----- the run ----------------------------------------------------------------------------------


def train(cfg: TrainConfig, resume: bool = False, use_wandb: bool = False, progress: bool = True) -> dict:
    dist = Dist()
    device = pick_device(cfg.device, dist)
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // max(1, dist.local_world)))
    dist.init(device)
    ok = False
    try:
        result = Run(cfg, dist, device, resume, use_wandb, progress).loop()
        ok = True
        return result
    finally:
        dist.close(ok)


def _check_run_dir(out: Path, resume: bool, cfg: TrainConfig) -> None:
    has_last = (out / "last" / "config.json").exists()
    if resume:
        if not has_last or not (out / "last" / "train_state.pt").exists():
            raise UsageError(f"--resume: {out}/last holds no checkpoint to continue from; start the run without "
                             "--resume (or point --out at the run dir; every node must see it)")
    elif has_last or (out / "best").exists():
        if not cfg.overwrite:
            raise UsageError(f"{out} already holds a run: add --resume to continue it, --overwrite=true to start "
                             "over (deleting its checkpoints), or choose another --out")


def _clear_run_dir(out: Path, resume: bool, cfg: TrainConfig) -> None:
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    if not resume and cfg.overwrite:
        for name in ("best", "last", "loss.png"):
            p = out / name
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _load_init(cfg: TrainConfig, codec):
    """Weights to fine-tune from: the checkpoint's architecture, this config's dropout."""
    model, ck_codec, config = load_checkpoint(cfg.init_from, device="cpu")
    if ck_codec.to_dict() != codec.to_dict():
        raise UsageError(f"init_from {cfg.init_from}: its codec differs from the dataset's; prepare the data "
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


def _load_resume(out: Path, cfg: TrainConfig, codec):
    """The run's last/ model (with this config's dropout) and its training state."""
    model, ck_codec, _ = load_checkpoint(out / "last", device="cpu")
    if ck_codec.to_dict() != codec.to_dict():
        raise UsageError(f"--resume: {out}/last was trained on a dataset with another codec than {cfg.data}")
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
    return model, load_train_state(out / "last")


def _saved_schedule(state: dict):
    """The schedule a run was following when it saved (older runs: the one its config described)."""
    from types import SimpleNamespace

    if "schedule" in state:
        return Schedule.from_dict(state["schedule"])
    return Schedule.from_config(SimpleNamespace(**state["config"]))


class Run:
    """One training run, set up in phases every rank passes together, then ``loop``."""

    def __init__(self, cfg: TrainConfig, dist: Dist, device: torch.device, resume: bool, use_wandb: bool,
                 progress: bool):
        self.cfg, self.dist, self.device, self.resume = cfg, dist, device, resume
        self.out = Path(cfg.out)
        self.log, self.bar = None, None
        dist.on_all(self._open_data, "reading the dataset")
        dist.on_master(self._recover, "recovering the run dir")
        dist.on_all(lambda: _check_run_dir(self.out, resume, cfg), "checking the run dir")
        dist.on_master(lambda: _clear_run_dir(self.out, resume, cfg), "preparing the run dir")
        dist.on_all(self._build_model, "building the model")
        self._build_compute()  # DDP's start is a collective: after every rank has its model
        dist.on_all(self._build_data, "preparing the data")
        dist.on_master(lambda: self._start_log(use_wandb, progress), "starting the log")

    # ---- setup phases

    def _open_data(self) -> None:
        self.ds = Dataset(self.cfg.data)
        self.codec = self.ds.codec

    def _recover(self) -> None:
        for name in ("best", "last"):
            recover(self.out / name)  # finish a swap a kill interrupted, before anyone looks

    def _build_model(self) -> None:
        cfg = self.cfg
        state = None
        if self.resume:
            model, state = _load_resume(self.out, cfg, self.codec)
        elif cfg.init_from:
            model = _load_init(cfg, self.codec)
        else:
            torch.manual_seed(cfg.seed)
            model = GPT(_gpt_config(cfg, padded_vocab(self.codec.vocab_size)))
        self._set_support(model)
        model.to(self.device).train()
        self.raw = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(model.optimizer_groups(cfg.weight_decay), lr=cfg.lr,
                                     betas=(cfg.beta1, cfg.beta2), eps=1e-8,
                                     fused=self.device.type in ("cuda", "cpu"))
        self.start_step, self.best_val, self.elapsed0 = 0, float("inf"), 0.0
        self.schedule, self.schedule_note = Schedule.from_config(cfg), None
        if state is not None:
            self._restore(state)

    def _restore(self, state: dict) -> None:
        """Continue from last/'s training state: optimizer, step, best loss, RNG, and the lr schedule."""
        self.opt.load_state_dict(state["optimizer"])
        self.start_step = int(state["step"])
        self.best_val = float(state["best_val_loss"])
        self.elapsed0 = float(state.get("elapsed", 0.0))
        _set_rng_state(state["rng"])
        if self.start_step >= self.cfg.steps:
            raise UsageError(f"--resume: the run already reached step {self.start_step} of {self.cfg.steps}; "
                             f"raise --steps to train further")
        self.schedule, self.schedule_note = resume_schedule(_saved_schedule(state), self.schedule, self.start_step)

    def _set_support(self, model) -> None:
        if not self.cfg.restrict_vocab:
            model.set_support(None)
            return

        support = set(token_support(self.ds.split("train"), self.cfg.transpose).tolist())
        support |= set(getattr(model, "init_support", None) or [])  # fine-tuning keeps what it knew
        model.set_support(sorted(support))

    def _build_compute(self) -> None:
        """dtype, compile and DDP: bf16 autocast, torch.compile and flash attention on CUDA by default."""
        cfg, device = self.cfg, self.device
        self.dtype = compute_dtype(device, cfg.dtype)
        if device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for what stays in float32
        self.compile_on = cfg.compile if isinstance(cfg.compile, bool) else device.type == "cuda"
        self.ddp = None
        fwd = self.raw
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # the support buffers never change: nothing to broadcast before each forward
            self.ddp = fwd = DDP(self.raw, device_ids=[device.index] if device.type == "cuda" else None,
                                 broadcast_buffers=False, gradient_as_bucket_view=True)
        # compiled around DDP, so dynamo splits the graph at DDP's buckets and all-reduce overlaps backward
        self.fwd = torch.compile(fwd) if self.compile_on else fwd
        self.peak = peak_flops(device, self.dtype)
        self.flops_per_token = self.raw.flops_per_token()
        self.tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum * self.dist.world

    def _build_data(self) -> None:
        """The training windows and the fixed evaluation rows (with their notes and seconds of music)."""
        cfg, val = self.cfg, self.ds.split("val")
        self.sampler = WindowSampler(self.ds.split("train"), cfg.block_size, cfg.seed, transpose=cfg.transpose,
                                     edit_fraction=cfg.edit_fraction)
        self.ex, self.ey = eval_rows(val, cfg.block_size, cfg.eval_tokens)
        targets = self.ey[self.ey >= 0]
        self.eval_tokens, self.eval_notes = int(len(targets)), self.codec.count_notes(targets)
        self.eval_seconds = positions_seconds(self.codec, val.tokens, eval_positions(val, cfg.eval_tokens))
        self.eval_bs = cfg.eval_batch_size or cfg.batch_size
        self.note_ranges = measure_ranges(self.codec, self.ds.split("train").tokens)

    def _start_log(self, use_wandb: bool, progress: bool) -> None:
        cfg = self.cfg
        wb = start_wandb(cfg, self.out, self.resume) if use_wandb else None
        self.log = RunLog(self.out, self.start_step if self.resume else None, wb)
        n = self.raw.num_params(non_embedding=True)
        flash = self.device.type == "cuda" and self.dtype == torch.bfloat16 and torch.backends.cuda.flash_sdp_enabled()
        print(f"midigen train: {n / 1e6:.2f}M non-embedding params, {self.dist.world} process(es) on "
              f"{self.device.type}, {self.dtype}, compile={'on' if self.compile_on else 'off'}"
              f"{', flash attention' if flash else ''}, "
              f"{self.tokens_per_step:,} tokens/step, steps {self.start_step}->{cfg.steps}; val: "
              f"{self.eval_tokens:,} tokens, {self.eval_notes:,} notes, {self.eval_seconds:,.0f} s of music",
              file=sys.stderr, flush=True)
        if self.schedule_note:
            print(f"midigen train: {self.schedule_note}", file=sys.stderr, flush=True)
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.steps, initial=self.start_step, unit="step", file=sys.stderr,
                            dynamic_ncols=True, desc="train")

    # ---- the loop

    def loop(self) -> dict:
        cfg, dist = self.cfg, self.dist
        loader = Prefetcher(self.sampler, cfg.batch_size, self.start_step, cfg.steps, cfg.grad_accum, dist.rank,
                            dist.world, self.device)
        self.bad_step = torch.full((), -1, dtype=torch.long, device=self.device)  # first non-finite step
        self.t_start = self.t_log = time.time()
        self.steps_since_log = 0
        self.last_saved = self.start_step if self.resume else None
        self.last_ev: dict = {}
        step = self.start_step
        try:
            while step < cfg.steps:
                loss, norm, lr = self._step(step, loader)
                step += 1
                self.steps_since_log += 1
                if step % cfg.log_interval == 0 or step == cfg.steps:
                    self._log_step(step, loss, norm, lr)
                if self.bar is not None:
                    self.bar.update(1)
                if step % cfg.eval_interval == 0 or step == cfg.steps:
                    self._eval_and_save(step)
        finally:
            loader.close()
            if self.bar is not None:
                self.bar.close()
            if self.log is not None:
                self.log.close()
        return {"step": step, "best_val_loss": self.best_val, **self.last_ev, "out": str(self.out)}

    def _step(self, step: int, loader) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimizer step; returns the all-reduced loss and the gradient norm as device tensors."""
        cfg = self.cfg
        lr = self.schedule.lr_at(step)
        for g in self.opt.param_groups:
            g["lr"] = lr
        _seed_step(cfg.seed, step, self.dist.rank)
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(cfg.grad_accum):
            x, y = loader.get(step, micro)
            sync = self.ddp is None or micro == cfg.grad_accum - 1
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                with autocast(self.device, self.dtype):
                    _, loss = self.fwd(x, y)
                (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach()
        loss_t = self.dist.all_reduce_mean(loss_sum / cfg.grad_accum)
        norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        finite = torch.isfinite(loss_t) & torch.isfinite(norm)
        self.bad_step = torch.where(~finite & (self.bad_step < 0), step + 1, self.bad_step)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss_t, norm, lr

    def _check_finite(self, step: int, loss_v: float | None = None, norm_v: float | None = None) -> None:
        """Stop, naming the first step whose loss or gradient norm was not finite (same on every rank)."""
        bad = int(self.bad_step.item())
        if bad < 0:
            return
        now = f" (at step {step}: loss {loss_v}, gradient norm {norm_v})" if loss_v is not None else ""
        where = (f"the last good checkpoint is {self.out / 'last'} (step {self.last_saved})" if self.last_saved
                 else "no checkpoint was written yet")
        raise MidigenError(f"the loss or gradient norm became non-finite at step {bad}{now}: stopping ({where}). "
                           "Lower 'lr' or check the data.")

    def _log_step(self, step: int, loss: torch.Tensor, norm: torch.Tensor, lr: float) -> None:
        """The one host sync of a log interval: read the loss and norm, check them, write a row on rank 0."""
        loss_v, norm_v = torch.stack([loss.float(), norm.float()]).tolist()
        self._check_finite(step, loss_v, norm_v)
        now = time.time()
        tps = self.tokens_per_step * self.steps_since_log / max(now - self.t_log, 1e-9)
        self.dist.on_master(lambda: self._write_row(step, loss_v, norm_v, lr, tps, now), "writing the log")
        self.t_log, self.steps_since_log = now, 0

    def _write_row(self, step: int, loss_v: float, norm_v: float, lr: float, tps: float, now: float) -> None:
        row = {"step": step, "loss": loss_v, "lr": lr, "grad_norm": norm_v, "tokens_per_s": tps,
               "tokens": step * self.tokens_per_step, "elapsed": self.elapsed0 + now - self.t_start}
        if self.peak:
            row["mfu"] = self.flops_per_token * tps / self.dist.world / self.peak
        if self.device.type == "cuda":
            row["peak_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 1e9
        self.log.write(row)
        if self.bar is not None:
            val = f"  val {self.last_ev['val_loss']:.3f}" if self.last_ev else ""
            self.bar.set_postfix_str(f"loss {loss_v:.3f}  {tps:,.0f} tok/s{val}", refresh=False)

    # ---- evaluation and checkpoints

    def _evaluate(self) -> dict:
        dist = self.dist
        nats = score_rows(self.raw, self.ex, self.ey, self.eval_bs, self.device, self.dtype, dist.rank, dist.world)
        if dist.world > 1:
            nats = float(dist.all_reduce_sum(nats).item())
        return summarize(nats, self.eval_tokens, self.eval_notes, self.eval_seconds, prefix="val_")

    def _eval_and_save(self, step: int) -> None:
        self._check_finite(step)  # never save weights a non-finite step has touched
        ev = self._evaluate()
        self.last_ev = ev
        is_best = ev["val_loss"] < self.best_val
        if is_best:
            self.best_val = ev["val_loss"]
        self.dist.on_master(lambda: self._record(step, ev, is_best), f"saving the step-{step} checkpoint")
        self.last_saved = step
        self.t_log = time.time()  # eval time does not count against throughput

    def _record(self, step: int, ev: dict, is_best: bool) -> None:
        """Rank 0: the eval row, the checkpoints, the plot and one line for the user."""
        self.log.write({"step": step, **ev, "elapsed": self.elapsed0 + time.time() - self.t_start})
        self._save(step, ev, is_best)
        plot_losses(self.out / "log.jsonl", self.out / "loss.png", title=self.out.name)
        msg = f"step {step}: val loss {ev['val_loss']:.4f} nats/token"
        if ev["val_bits_per_note"] is not None:
            msg += f", {ev['val_bits_per_note']:.3f} bits/note"
        if ev["val_bits_per_second"] is not None:
            msg += f", {ev['val_bits_per_second']:.1f} bits/s"
        (self.bar.write if self.bar is not None else lambda s: print(s, file=sys.stderr))(
            msg + ("  (best)" if is_best else ""))

    def _save(self, step: int, ev: dict, is_best: bool) -> None:
        cfg = self.cfg
        info = {"step": step, "tokens_seen": step * self.tokens_per_step, "data": str(cfg.data),
                "train_config": cfg.to_dict(), **ev}
        info["note_ranges"] = self.note_ranges  # what each instrument played: generation keeps to it
        if self.ds.controls is not None:  # what --style/--key/--density mean for this model
            info["controls"] = self.ds.controls.to_info(cfg.transpose)
        if is_best:
            save_checkpoint(self.out / "best", self.raw, self.codec, info)
        ts = {"step": step, "optimizer": self.opt.state_dict(), "best_val_loss": self.best_val,
              "elapsed": self.elapsed0 + time.time() - self.t_start, "rng": _rng_state(),
              "sampler": {"seed": cfg.seed, "next_step": step}, "config": cfg.to_dict(),
              "schedule": self.schedule.to_dict()}
        save_checkpoint(self.out / "last", self.raw, self.codec, info, train_state=ts)
