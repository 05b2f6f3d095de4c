"""`midigen tune`: teach a trained checkpoint a user's own music, as an adapter (or a full fine-tune).

Why it is shaped this way:
- The user's files are prepared by ``midigen.data.prepare`` with the base's codec into ``DIR/data``,
  then held out by content hash (the 10% with the smallest hashes, at least one file), so a rerun
  holds out the same files and adding files never moves old ones into training.
- By default the base is frozen: every block projection gets a low-rank update and the token ids the
  base never trained (an instrument it never heard, a new style) get trainable embedding rows, which
  widen the output support (``midigen.model.adapter``). ``full`` trains every weight instead and
  writes a checkpoint dir (``DIR/best``).
- It stops at the best validation loss (``patience`` evaluations without improving), at ``steps``,
  or when ``minutes`` run out; what is kept is the best evaluation's weights.
- A kill loses at most one evaluation interval: ``DIR/.tune/state.safetensors`` (the trainable
  tensors and their AdamW moments) and ``state.json`` (step, best loss, the settings) are written at
  each evaluation, and running the same tune again continues from them. Windows are a function of
  (seed, step), so the continued run draws the windows the killed one would have. Nothing is pickled.
- ``tune`` takes plain values, a progress callback and a cancel flag, so the studio's worker can run
  it as the CLI does.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from midigen.data.dataset import Split, WindowSampler, eval_positions, eval_rows, token_support
from midigen.data.prepare import prepare
from midigen.data.styles import clean_style
from midigen.device import best_device
from midigen.errors import MidigenError, UsageError
from midigen.eval.evaluate import score_rows, summarize
from midigen.fsutil import atomic_write_bytes, atomic_write_json, sha256_file
from midigen.model import adapter as adapters
from midigen.model.checkpoint import CONFIG, load_checkpoint, resolve, save_checkpoint
from midigen.music.codec import N_STYLES, Codec
from midigen.music.controls import ControlVocab
from midigen.music.ranges import measure_ranges
from midigen.music.timing import positions_seconds
from midigen.train.plot import plot_losses
from midigen.train.runlog import RunLog

HELD_OUT = 0.1
STATE_DIR = ".tune"
WARMUP = 10


@dataclass
class TuneSettings:
    base: str
    sources: list[str]
    out: str
    style: str | None = None
    steps: int = 1000
    minutes: float | None = None
    rank: int = 8
    alpha: float = 16.0
    lr: float | None = None  # default: 2e-3 for adapters, 3e-4 for full
    device: str | None = None
    full: bool = False
    batch_size: int = 8
    block_size: int | None = None  # default: the base's context, at most 512
    eval_every: int = 50
    patience: int = 4
    eval_tokens: int = 16384
    seed: int = 0
    workers: int | None = None
    threads: int | None = None

    def identity(self) -> dict:
        """What a resumed tune must share with the one it continues."""
        keep = ("sources", "style", "rank", "alpha", "full", "batch_size", "block_size", "seed")
        d = {k: getattr(self, k) for k in keep}
        d["lr"] = self.learning_rate
        return d

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (3e-4 if self.full else 2e-3)

    def check(self) -> None:
        for name in ("steps", "rank", "batch_size", "eval_every", "patience", "eval_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {v!r}")
        if self.rank > adapters.MAX_RANK:
            raise UsageError(f"--rank must be at most {adapters.MAX_RANK}, got {self.rank}")
        if self.minutes is not None and not self.minutes > 0:
            raise UsageError(f"--minutes must be > 0, got {self.minutes}")
        if not self.learning_rate > 0:
            raise UsageError(f"--lr must be > 0, got {self.learning_rate}")
        if not self.sources:
            raise UsageError("tune needs at least one SOURCE (a folder, file or archive of MIDI)")
        if self.style is not None and not clean_style(self.style):
            raise UsageError("--style needs a name")


@dataclass
class Progress:
    """What the progress callback receives after each logged step and evaluation."""
    step: int
    steps: int
    loss: float | None = None
    val_bits_per_note: float | None = None
    best_val_bits_per_note: float | None = None
    seconds_left: float | None = None
    done: bool = False
    extra: dict = field(default_factory=dict)


# ----- data --------------------------------------------------------------------------------------


def _prepare(s: TuneSettings, out: Path, codec: Codec, progress: bool, resuming: bool) -> list[dict]:
    """The user's files as a dataset under ``DIR/data`` (kept rows of files.jsonl, in offset order).

    A resumed tune reuses the data it started with; any other run prepares the sources again (prepare
    is quick on a folder of songs), so files added after a failed start are seen.
    """
    data = out / "data"
    if Codec().to_dict() != codec.to_dict():
        raise UsageError(f"the base checkpoint uses codec v{codec.version}, which `prepare` no longer writes; "
                         "tune a checkpoint trained on data prepared by this version")
    if not (resuming and (data / "meta.json").exists()):
        try:
            prepare(list(s.sources), data, workers=s.workers, val_frac=0.0, test_frac=0.0, progress=progress)
        except UsageError:
            raise
        except MidigenError as e:
            raise UsageError(str(e)) from None
    rows = []
    with open(data / "files.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line) if line.strip() else {}
            if row.get("split") == "train" and row.get("offset") is not None:
                rows.append(row)
    if len(rows) < 2:
        found = "no usable MIDI" if not rows else "only one usable MIDI file"
        raise UsageError(f"{found} in {', '.join(s.sources)} (tuning needs at least 2 files: one is held out to "
                         f"tell when to stop); see {data / 'files.jsonl'}")
    return sorted(rows, key=lambda r: int(r["offset"]))


def _hold_out(rows: list[dict]) -> set[str]:
    """The hashes of the held-out files: the smallest 10% (at least one) of the content hashes."""
    n = max(1, round(HELD_OUT * len(rows)))
    return {r["hash"] for r in sorted(rows, key=lambda r: r["hash"])[:n]}


def _write_splits(out: Path, rows: list[dict], held: set[str]) -> dict[str, tuple[Path, list[dict]]]:
    """train.bin and val.bin under ``.tune/data`` cut from the prepared stream, each row with its new offset."""
    src = np.memmap(out / "data" / "train.bin", dtype=np.uint16, mode="r")
    ends = [int(r["offset"]) for r in rows[1:]] + [len(src)]
    folder = out / STATE_DIR / "data"
    folder.mkdir(parents=True, exist_ok=True)
    result = {}
    for name, keep in (("train", False), ("val", True)):
        parts, mine, at = [], [], 0
        for row, end in zip(rows, ends):
            if (row["hash"] in held) == keep:
                part = np.asarray(src[int(row["offset"]) : end])
                parts.append(part)
                mine.append({**row, "offset": at})
                at += len(part)
        atomic_write_bytes(folder / f"{name}.bin", np.concatenate(parts).astype(np.uint16).tobytes())
        result[name] = (folder, mine)
    return result


# ----- controls ----------------------------------------------------------------------------------


def _controls(base_config: dict, codec: Codec, rows: list[dict], style: str | None) -> tuple[dict | None, list[str]]:
    """The adapted model's control vocabulary (the base's styles, then the new ones) and the new style names."""
    base = (base_config.get("info") or {}).get("controls")
    tagged = {s for r in rows for s in r.get("styles") or ()} | ({clean_style(style)} if style else set())
    if not codec.has_controls or base is None:
        if tagged:
            raise UsageError("the base checkpoint learned no style controls, so it cannot learn a new style: "
                             "tune without --style")
        return None, []
    known = list(base.get("styles", []))
    new = sorted(tagged - set(known))
    if len(known) + len(new) > N_STYLES:
        raise UsageError(f"the base has {len(known)} styles; at most {N_STYLES} fit")
    return {**base, "styles": known + new}, new


def _song_controls(info: dict | None, codec: Codec, rows: list[dict], style: str | None) -> dict | None:
    """Song start -> control id groups, in the adapted vocabulary (every file tagged with ``style``)."""
    if info is None:
        return None
    vocab = ControlVocab(info["styles"], info.get("density_edges", [0.0, 0.0]), info.get("keys", []))
    extra = [clean_style(style)] if style else []
    return {int(r["offset"]): vocab.song_ids(codec, {**r, "styles": sorted(set(r.get("styles") or []) | set(extra))})
            for r in rows}


def _merged_ranges(base: dict | None, mine: dict) -> dict:
    """Instrument ranges for the adapted model: the base's, widened to what the user's music plays
    (generation keeps each instrument inside its range, so new music must not be clipped to the old)."""
    out = dict(base or {})
    inst = {k: dict(v) for k, v in (out.get("instruments") or {}).items()}
    for key, r in mine["instruments"].items():
        old = inst.get(key)
        inst[key] = r if old is None else {"low": min(old["low"], r["low"]), "high": max(old["high"], r["high"]),
                                           "polyphony": max(old["polyphony"], r["polyphony"]),
                                           "notes": old.get("notes", 0) + r["notes"]}
    out["instruments"] = inst
    for k in ("songs", "tempo_change_songs"):
        out[k] = int(out.get(k) or 0) + mine[k]
    out.setdefault("rule", mine["rule"])
    return out


# ----- state for resume --------------------------------------------------------------------------


def _save_state(folder: Path, params: dict, opt: torch.optim.Optimizer, facts: dict) -> None:
    """Trainable tensors and AdamW moments in a new ``state-STEP.safetensors``, then state.json naming it
    and its hash (the commit), then the older tensor files go: a kill at any point leaves a pair that fits."""
    from safetensors.torch import save_file

    tensors = {}
    for name, p in params.items():
        tensors[f"param.{name}"] = p.detach().cpu().contiguous()
        for k, v in opt.state.get(p, {}).items():
            tensors[f"opt.{k}.{name}"] = v.detach().cpu().reshape(v.shape).contiguous()
    name = f"state-{facts['step']}.safetensors"
    tmp = folder / (name + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(folder / name)
    atomic_write_json(folder / "state.json", {**facts, "tensors": name, "sha256": sha256_file(folder / name)})
    for old in folder.glob("state-*.safetensors*"):
        if old.name != name:
            old.unlink(missing_ok=True)


def _load_state(folder: Path, params: dict, opt: torch.optim.Optimizer, facts: dict) -> None:
    from safetensors.torch import load_file

    name = str(facts.get("tensors"))
    f = folder / Path(name).name
    if f.name != name or not f.name.startswith("state-") or not f.is_file() or sha256_file(f) != facts.get("sha256"):
        raise MidigenError(f"{f} is missing or does not match state.json: delete {folder} to start over")
    tensors = load_file(str(f))
    want = {f"param.{n}": tuple(p.shape) for n, p in params.items()}
    if {k: tuple(v.shape) for k, v in tensors.items() if k.startswith("param.")} != want:
        raise MidigenError(f"{f} does not fit this model: delete {folder} to start over")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[f"param.{name}"])
            moments = {k: tensors[f"opt.{k}.{name}"] for k in ("step", "exp_avg", "exp_avg_sq")
                       if f"opt.{k}.{name}" in tensors}
            if moments:
                opt.state[p] = {k: v.to(p.device) if k != "step" else v for k, v in moments.items()}


def _read_facts(folder: Path, settings: TuneSettings) -> dict | None:
    path = folder / "state.json"
    if not path.exists():
        return None
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MidigenError(f"{path} is unreadable ({e}): delete {folder} to start over") from None
    if facts.get("settings") != settings.identity():
        raise UsageError(f"{settings.out} holds a tune with other settings ({facts.get('settings')}): "
                         "choose another --out, or delete it to start over")
    return facts


# ----- the run -----------------------------------------------------------------------------------


def train_step(model, params: dict, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               lr: float) -> float:
    """One optimizer step on the trainable ``params`` (gradients clipped at norm 1); returns the loss."""
    for g in opt.param_groups:
        g["lr"] = lr
    _, loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.item())


def make_optimizer(params: dict, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(list(params.values()), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)


class Tune:
    """One tune: set up in ``__init__`` (data, model, state), then ``run``."""

    def __init__(self, s: TuneSettings, progress: bool):
        s.check()
        self.t_created = time.monotonic()  # --minutes counts preparing the data too
        self.s, self.out, self.progress = s, Path(s.out), progress
        self.out.mkdir(parents=True, exist_ok=True)
        self.state_dir = self.out / STATE_DIR
        self.state_dir.mkdir(exist_ok=True)
        self.facts = _read_facts(self.state_dir, s)
        self.device = best_device(s.device)
        if self.device.type == "cpu" and s.threads:
            torch.set_num_threads(s.threads)
        self._load_base()
        self._build_data()
        self._build_model()

    def _load_base(self) -> None:
        base_dir = resolve(self.s.base)
        if adapters.is_adapter_dir(base_dir):
            raise UsageError(f"{self.s.base} is an adapter: tune from its base checkpoint instead")
        if base_dir.resolve() == self.out.resolve() or self.out.resolve() in base_dir.resolve().parents:
            raise UsageError("--out must not be the base checkpoint's folder (the base is never written)")
        self.model, self.codec, self.base_config = load_checkpoint(base_dir, "cpu")
        self.base_dir, self.base_sha = base_dir.resolve(), sha256_file(base_dir / CONFIG)

    def _build_data(self) -> None:
        s, codec = self.s, self.codec
        rows = _prepare(s, self.out, codec, self.progress, self.facts is not None)
        held = _hold_out(rows)
        self.controls, self.new_styles = _controls(self.base_config, codec, rows, s.style)
        splits = {}
        for name, (folder, mine) in _write_splits(self.out, rows, held).items():
            ctl = _song_controls(self.controls, codec, mine, s.style)
            splits[name] = Split(folder, name, codec, np.array([r["offset"] for r in mine]), ctl)
        self.train, self.val = splits["train"], splits["val"]
        self.files = {"train": len(rows) - len(held), "val": len(held)}
        base_ranges = (self.base_config.get("info") or {}).get("note_ranges")
        self.note_ranges = _merged_ranges(base_ranges, measure_ranges(codec, self.train.tokens))
        train_cfg = (self.base_config.get("info") or {}).get("train_config") or {}
        self.transpose = bool(train_cfg.get("transpose", False))
        self.edit_fraction = float(train_cfg.get("edit_fraction", 0) or 0) if codec.has_controls else 0.0
        base_T = self.model.cfg.block_size
        self.T = min(s.block_size or min(base_T, 512), base_T, len(self.train) - 2)
        if self.T < 16:
            raise UsageError(f"the files left for training hold only {len(self.train)} tokens: give more music")
        self.sampler = WindowSampler(self.train, self.T, s.seed, transpose=self.transpose,
                                     edit_fraction=self.edit_fraction)
        vt = min(self.T, max(16, len(self.val) - 1))
        self.ex, self.ey = eval_rows(self.val, vt, s.eval_tokens)
        targets = self.ey[self.ey >= 0]
        self.eval_tokens, self.eval_notes = int(len(targets)), codec.count_notes(targets)
        self.eval_seconds = positions_seconds(codec, self.val.tokens, eval_positions(self.val, s.eval_tokens))

    def _build_model(self) -> None:
        s, model = self.s, self.model
        model.to(self.device)
        # the base itself on the held-out files, before its support widens: what the tune is measured against
        self.base_bits = None if self.facts is not None else self.evaluate()["val_bits_per_note"]
        base_support = None if model.support is None else set(model.support.tolist())
        mine = set(token_support(self.train, self.transpose).tolist())
        self.support = None if base_support is None else sorted(base_support | mine)
        self.new_ids = [] if base_support is None else sorted(mine - base_support)
        model.set_support(self.support, model.support_epsilon or 1e-4)
        if s.full:
            for p in model.parameters():
                p.requires_grad_(True)
            self.params = dict(model.named_parameters())
        else:
            adapters.attach(model, s.rank, s.alpha, self.new_ids, s.seed)
            self.params = adapters.trainable(model)
        model.train()
        self.opt = make_optimizer(self.params, s.learning_rate)
        self.step, self.best, self.best_step, self.bad, self.elapsed0 = 0, math.inf, 0, 0, 0.0
        if self.facts is not None:
            _load_state(self.state_dir, self.params, self.opt, self.facts)
            f = self.facts
            self.step, self.best, self.best_step = int(f["step"]), float(f["best_val_loss"]), int(f["best_step"])
            self.bad, self.elapsed0 = int(f["bad_evals"]), float(f["elapsed"])
            self.base_bits = f.get("base_val_bits_per_note")

    # ---- evaluation and saving

    def evaluate(self) -> dict:
        nats = score_rows(self.model, self.ex, self.ey, 16, self.device)
        return summarize(nats, self.eval_tokens, self.eval_notes, self.eval_seconds, prefix="val_")

    def _save_best(self, ev: dict) -> None:
        facts = {"step": self.step, **ev, "base_val_bits_per_note": self.base_bits, "files": self.files}
        if self.s.full:
            info = {**(self.base_config.get("info") or {}), **facts,
                    "tuned_from": {"path": str(self.base_dir), "sha256": self.base_sha}}
            if self.controls is not None:
                info["controls"] = self.controls
            info["note_ranges"] = self.note_ranges
            save_checkpoint(self.out / "best", self.model, self.codec, info)
            return
        base = {"path": str(self.base_dir), "relative": os.path.relpath(self.base_dir, self.out), "sha256": self.base_sha}
        manifest = {"base": base, "rank": self.s.rank,
                    "alpha": self.s.alpha, "new_ids": self.new_ids, "support": self.support,
                    "controls": self.controls, "new_styles": self.new_styles, "note_ranges": self.note_ranges,
                    **facts}
        adapters.save(self.out, self.params, manifest)

    def _save_state(self, elapsed: float, finished: bool) -> None:
        facts = {"settings": self.s.identity(), "step": self.step, "best_val_loss": self.best,
                 "best_step": self.best_step, "bad_evals": self.bad, "elapsed": elapsed, "finished": finished,
                 "base_val_bits_per_note": self.base_bits}
        _save_state(self.state_dir, self.params, self.opt, facts)

    # ---- the loop

    def run(self, on_progress: Callable[[Progress], None] | None = None, cancel=None) -> dict:
        s = self.s
        if self.facts is not None and (self.facts.get("finished") or self.step >= s.steps):
            return self._result("already finished")
        log = RunLog(self.out, self.step if self.facts is not None else None)
        t0 = time.monotonic()
        deadline = None if s.minutes is None else self.t_created + s.minutes * 60
        bar = self._bar()
        stopped, loss_v, val_bits = "steps", None, None
        try:
            if self.facts is None:
                log.write({"step": 0, "base_val_bits_per_note": self.base_bits})
            while self.step < s.steps:
                if cancel is not None and cancel.is_set():
                    stopped = "cancelled"
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    stopped = "time"
                    break
                loss_v = self._train_step()
                self.step += 1
                elapsed = self.elapsed0 + time.monotonic() - t0
                if self.step % 10 == 0:
                    log.write({"step": self.step, "loss": loss_v, "elapsed": elapsed})
                if self.step % s.eval_every == 0 or self.step == s.steps:
                    val_bits = self._validate(log, elapsed)
                self._report(bar, on_progress, loss_v, val_bits, self._seconds_left(t0, deadline))
                if self.bad >= s.patience and self.step < s.steps:  # after the report, so the step that
                    stopped = "best"  # ends the tune is shown too; at the last step it ran them all: "steps"
                    break
        finally:
            log.close()
            if bar is not None:
                bar.close()
        if not (self.out / ("best/" + CONFIG if s.full else adapters.MANIFEST)).exists():
            # stopped before any validation (or a kill fell inside the last save): keep what there is
            ev = self.evaluate()
            if ev["val_loss"] < self.best:
                self.best, self.best_step = ev["val_loss"], self.step
            self._save_best(ev)
        self._save_state(self.elapsed0 + time.monotonic() - t0, stopped == "best")
        plot_losses(self.out / "log.jsonl", self.out / "loss.png", title=f"tune {self.out.name}")
        if on_progress is not None:
            on_progress(Progress(self.step, s.steps, loss_v, val_bits, self._best_bits(), 0.0, done=True))
        return self._result(stopped)

    def _validate(self, log: RunLog, elapsed: float) -> float | None:
        """Score the held-out files; keep the weights when they are the best yet; save the state to resume."""
        ev = self.evaluate()
        log.write({"step": self.step, **ev, "elapsed": elapsed})
        if ev["val_loss"] < self.best:
            self.best, self.best_step, self.bad = ev["val_loss"], self.step, 0
            self._save_best(ev)
        else:
            self.bad += 1
        self._save_state(elapsed, self.bad >= self.s.patience)
        plot_losses(self.out / "log.jsonl", self.out / "loss.png", title=f"tune {self.out.name}")
        return ev["val_bits_per_note"]

    def _train_step(self) -> float:
        lr = self.s.learning_rate * min(1.0, (self.step + 1) / WARMUP)
        x, y = self.sampler.batch(self.step, 0, self.s.batch_size)
        v = train_step(self.model, self.params, self.opt, torch.from_numpy(x).to(self.device),
                       torch.from_numpy(y).to(self.device), lr)
        if not math.isfinite(v):
            raise MidigenError(f"the loss became non-finite at step {self.step + 1}: lower --lr")
        return v

    def _seconds_left(self, t0: float, deadline: float | None) -> float:
        now = time.monotonic()
        per_step = (now - t0) / max(1, self.step - (int(self.facts["step"]) if self.facts else 0))
        left = per_step * (self.s.steps - self.step)
        return left if deadline is None else max(0.0, min(left, deadline - now))

    def _best_bits(self) -> float | None:
        if not math.isfinite(self.best) or not self.eval_notes:
            return None
        return self.best * self.eval_tokens / math.log(2) / self.eval_notes

    def _bar(self):
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=self.s.steps, initial=self.step, unit="step", file=sys.stderr, dynamic_ncols=True,
                    desc="tune")

    def _report(self, bar, on_progress, loss_v, val_bits, left) -> None:
        if bar is not None:
            bar.update(1)
            val = f"  val {val_bits:.3f} bits/note" if val_bits is not None else ""
            bar.set_postfix_str(f"loss {loss_v:.3f}{val}  {left / 60:.1f} min left", refresh=False)
        if on_progress is not None:
            on_progress(Progress(self.step, self.s.steps, loss_v, val_bits, self._best_bits(), left))

    def _result(self, stopped: str) -> dict:
        return {"out": str(self.out), "stopped": stopped, "step": self.step, "best_step": self.best_step,
                "best_val_loss": self.best, "val_bits_per_note": self._best_bits(),
                "base_val_bits_per_note": self.base_bits, "files": self.files, "new_ids": len(self.new_ids),
                "new_styles": self.new_styles, "resumed_from": int(self.facts["step"]) if self.facts else None,
                "mode": "full" if self.s.full else f"adapter rank {self.s.rank}"}


def tune(settings: TuneSettings, on_progress: Callable[[Progress], None] | None = None, cancel=None,
         progress: bool = True) -> dict:
    """Tune ``settings.base`` on ``settings.sources`` into ``settings.out``; rerunning it resumes.

    ``on_progress`` gets a ``Progress`` after each step; ``cancel`` (anything with ``is_set()``, e.g. a
    ``threading.Event``) stops it at the next step, keeping the best weights so far.
    """
    return Tune(settings, progress).run(on_progress, cancel)
