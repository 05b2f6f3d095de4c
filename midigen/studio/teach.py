"""The studio's Teach panel behind the API: the user's files, one tune at a time, and the models it made.

Why it is shaped this way:
- Every file comes through the upload reader (``studio.upload.Reader``: the sandboxed child, the 16 MiB
  cap, prepare's limits), a zip member by member (``data.sources`` lists it: MIDI names only, no
  unsafe paths, each member read with the same cap). The tune then prepares only files the studio
  itself re-wrote. Nothing from an upload is unpickled.
- Tuning is minutes of full CPU work. In the server's process it would take the cores generation
  needs, so it runs in a spawned child at ``TEACH_NICE`` (the OS runs generation first) with
  ``tune_threads()`` torch threads (half the cores, at least one), one tune at a time. The child talks
  back in JSON (never pickles): a point per step (loss, val bits/note once measured), then the result.
  Cancel sets an event the tune checks every step; a child that does not stop in time is killed.
- A finished adapter is copied (without the tune's data and state) to ``WORKSPACE/models/ID``; the
  model selector lists the base and those dirs. ``Engine.use`` puts one on beside the base weights.
- A set's uploaded files live only as long as its tune: when the tune ends (done, cancelled or
  failed) the set is deleted, so the user's music is not kept on disk beyond the adapter taught from
  it. Teaching again means choosing the files again (the page starts a new set).
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from midigen.data.sources import Source, entries, is_midi_name
from midigen.data.styles import clean_style
from midigen.errors import MidigenError, UsageError
from midigen.fsutil import atomic_write_bytes
from midigen.model.adapter import MANIFEST, WEIGHTS, is_adapter_dir, read_manifest
from midigen.studio.upload import Reader, UploadError
from midigen.studio.workspace import Conflict, NotFound, new_id
from midigen.train.tune import TuneSettings, tune

MAX_FILES = 500  # files one teaching set may hold
MIN_FILES = 2  # one is held out to tell when to stop
TEACH_NICE = 10
STOP_GRACE = 30.0  # seconds a cancelled child may take to save and exit before it is killed
MODEL_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,47}")
KEEP = (WEIGHTS, MANIFEST, "log.jsonl", "loss.png")  # what a finished tune leaves in the model dir


def tune_threads() -> int:
    """Torch threads for the tune: half the cores, so generation keeps the other half."""
    return max(1, (os.cpu_count() or 2) // 2)


def eval_every(steps: int) -> int:
    """Validate about five times in a short tune, every 50 steps in a long one."""
    return max(1, min(50, steps // 5))


@dataclass
class Teaching:
    """One tune the page started: its settings, its live curve, its end."""

    set: str
    style: str
    steps: int
    minutes: float
    files: int
    cancel: object  # a multiprocessing Event the child's tune checks every step
    id: str = field(default_factory=new_id)
    status: str = "queued"  # preparing, training, done, failed, cancelled
    points: list = field(default_factory=list)  # [step, loss, val bits/note or None]
    error: str | None = None
    model: str | None = None
    result: dict = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    finished: float | None = None


def _child(conn, settings: dict, cancel, threads: int) -> None:
    """The tune's process: low priority, few threads, progress as JSON on ``conn``."""
    import torch  # start-up time

    os.nice(TEACH_NICE)
    torch.set_num_threads(threads)

    def send(**msg) -> None:
        conn.send_bytes(json.dumps(msg).encode())

    def point(p) -> None:
        if p.done:  # the closing report repeats the last step
            return
        measured = p.step % settings["eval_every"] == 0 or p.step == p.steps  # else the value is an old one
        send(kind="point", step=p.step, loss=p.loss, val=p.val_bits_per_note if measured else None,
             left=p.seconds_left)

    try:
        result = tune(TuneSettings(**settings, threads=threads), on_progress=point, cancel=cancel, progress=False)
        send(kind="done", stopped=result["stopped"], val=result["val_bits_per_note"],
             base_val=result["base_val_bits_per_note"], step=result["step"], new_styles=result["new_styles"])
    except MidigenError as e:
        send(kind="failed", error=str(e))
    except Exception as e:  # a bug costs this tune only
        traceback.print_exc(file=sys.stderr)
        send(kind="failed", error=f"internal error: {type(e).__name__}: {e}")
    finally:
        conn.close()


class Teacher:
    """Teaching sets, the one running tune and the models finished ones made, under one workspace."""

    def __init__(self, root, base_dir, base_sha: str, can_style: bool, reader: Reader):
        self.root = Path(root)
        self.sets, self.runs, self.models_dir = self.root / "sets", self.root / "runs", self.root.parent / "models"
        for d in (self.sets, self.runs, self.models_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.base_dir, self.base_sha, self.can_style, self.reader = Path(base_dir), base_sha, can_style, reader
        self.lock = threading.Lock()
        self.teachings: dict[str, Teaching] = {}
        self.current: Teaching | None = None
        self.proc = None

    # ----- files --------------------------------------------------------------------------------

    def _set_dir(self, sid: str | None) -> Path:
        if sid is None:
            d = self.sets / new_id()
            d.mkdir()
            return d
        d = self.sets / sid
        if not d.is_dir():
            raise NotFound(f"no teaching set {sid}")
        return d

    def add(self, sid: str | None, name: str, data: bytes) -> dict:
        """Add a MIDI file, or a zip's MIDI files, to a set (a new one when ``sid`` is None)."""
        d = self._set_dir(sid)
        added, refused = [], []
        for member, blob, reason in self._members(d, name, data):
            if reason is None:
                try:
                    midi, _ = self.reader.read(blob)
                except UploadError as e:
                    reason = str(e)
            if reason is None and len(list(d.glob("*.mid"))) >= MAX_FILES:
                reason = f"the set is full ({MAX_FILES} files)"
            if reason is not None:
                refused.append({"name": member, "reason": reason})
                continue
            atomic_write_bytes(d / f"{new_id()}.mid", midi)  # unique even when two uploads race
            added.append(member)
        if not added:  # nothing to add is the upload's failure, said in the reader's words
            if sid is None:
                shutil.rmtree(d, ignore_errors=True)
            first = refused[0] if refused else {"name": name, "reason": "no MIDI files in it"}
            raise UploadError(first["reason"] if first["name"] == name else
                              f"no MIDI file in {name} could be read ({first['name']}: {first['reason']})")
        return {"set": d.name, "files": len(list(d.glob("*.mid"))), "added": added, "refused": refused}

    @staticmethod
    def _members(d: Path, name: str, data: bytes):
        """(name, bytes, reason refused or None) for the file, or for each MIDI member of a zip."""
        if not data.startswith(b"PK\x03\x04"):
            yield name, data, None
            return
        tmp = d / f".upload-{new_id()}.zip"
        tmp.write_bytes(data)
        try:
            found = 0
            for e in entries(Source("zip", tmp, Path(name).name)):
                if e.reason is None and not is_midi_name(e.name):
                    continue
                found += 1
                if found > MAX_FILES:
                    yield e.name, b"", f"more than {MAX_FILES} files in the archive"
                    break
                yield e.name, e.load() or b"", e.reason
            if not found:
                yield name, b"", "the archive holds no MIDI files (.mid, .midi, .kar)"
        finally:
            tmp.unlink(missing_ok=True)

    # ----- tuning -------------------------------------------------------------------------------

    def start(self, sid: str, style: str, steps: int, minutes: float) -> Teaching:
        d = self._set_dir(sid)
        name = clean_style(style)
        if not name:
            raise UsageError("name the style: it names the new model (and, when the base knows styles, the style)")
        files = len(list(d.glob("*.mid")))
        if files < MIN_FILES:
            raise UsageError(f"teaching needs at least {MIN_FILES} MIDI files (one is held out to tell when to "
                             f"stop); this set has {files}")
        with self.lock:
            if self.current is not None and self.current.finished is None:
                raise Conflict("a tune is already running: wait for it or cancel it (one at a time)")
            t = Teaching(sid, name, steps, minutes, files, mp.get_context("spawn").Event())
            self.teachings[t.id] = self.current = t
        settings = {"base": str(self.base_dir), "sources": [str(d)], "out": str(self.runs / t.id),
                    "style": name if self.can_style else None, "steps": steps, "minutes": minutes,
                    "eval_every": eval_every(steps), "workers": 1, "device": "cpu"}
        ctx = mp.get_context("spawn")
        mine, theirs = ctx.Pipe(duplex=False)
        t.status = "preparing"
        self.proc = ctx.Process(target=_child, args=(theirs, settings, t.cancel, tune_threads()),
                                name="midigen-studio-tune")  # prepare has children of its own
        self.proc.start()
        theirs.close()
        threading.Thread(target=self._follow, args=(t, self.proc, mine), name="midigen-studio-tune-follow",
                         daemon=True).start()
        return t

    def _follow(self, t: Teaching, proc, conn) -> None:
        end = None
        while True:
            try:
                msg = json.loads(conn.recv_bytes().decode())
            except (EOFError, OSError, ValueError):
                break
            if msg["kind"] == "point":
                t.status = "training"
                t.points.append([msg["step"], msg["loss"], msg["val"]])
            else:
                end = msg
        proc.join()
        self._finish(t, end, proc.exitcode)

    def _finish(self, t: Teaching, end: dict | None, code) -> None:
        run = self.runs / t.id
        # the user's files go before the status says the tune ended: the adapter is what is kept
        shutil.rmtree(self.sets / t.set, ignore_errors=True)
        if t.cancel.is_set() or (end or {}).get("stopped") == "cancelled":
            t.status = "cancelled"
        elif end is None or end["kind"] == "failed":
            t.status = "failed"
            t.error = (end or {}).get("error") or f"the tune stopped unexpectedly (exit code {code})"
        else:
            try:
                t.model = self._keep(run, t.style)
                t.result = {k: end[k] for k in ("stopped", "val", "base_val", "step", "new_styles")}
                t.status = "done"
            except (OSError, MidigenError) as e:
                t.status, t.error = "failed", f"could not keep the adapter: {e}"
        shutil.rmtree(run, ignore_errors=True)
        t.finished = time.time()

    def _keep(self, run: Path, style: str) -> str:
        """Copy the finished adapter (not the tune's data) into models/ID; -> ID."""
        base = re.sub(r"[^a-z0-9]+", "-", style.lower()).strip("-")[:40] or "tuned"
        mid, n = base, 1
        while (self.models_dir / mid).exists() or mid == "base":
            n += 1
            mid = f"{base}-{n}"
        tmp = self.models_dir / f".{mid}.tmp"
        tmp.mkdir()
        for name in KEEP:
            if (run / name).exists():
                shutil.copy2(run / name, tmp / name)
        tmp.replace(self.models_dir / mid)
        return mid

    def get(self, tid: str) -> Teaching:
        t = self.teachings.get(tid)
        if t is None:
            raise NotFound(f"no such teaching {tid}")
        return t

    def cancel(self, t: Teaching) -> None:
        """The tune stops at its next step; a child that does not exit in ``STOP_GRACE`` s is killed."""
        if t.finished is not None:
            return
        t.cancel.set()
        proc = self.proc if self.current is t else None
        if proc is not None:
            threading.Timer(STOP_GRACE, lambda: proc.is_alive() and proc.kill()).start()

    def close(self) -> None:
        if self.current is not None and self.current.finished is None:
            self.current.cancel.set()
        if self.proc is not None:
            self.proc.join(timeout=STOP_GRACE)
            if self.proc.is_alive():
                self.proc.kill()

    # ----- models -------------------------------------------------------------------------------

    def models(self) -> list[dict]:
        """The adapters in models/ tuned from this studio's base, oldest first."""
        out = []
        for d in sorted(self.models_dir.iterdir(), key=lambda p: p.stat().st_mtime):
            if not (MODEL_ID.fullmatch(d.name) and is_adapter_dir(d)):
                continue
            try:
                m = read_manifest(d)
            except MidigenError:
                continue
            if m["base"]["sha256"] == self.base_sha:
                out.append({"id": d.name, "name": d.name, "styles": list(m.get("new_styles") or []),
                            "val_bits_per_note": m.get("val_bits_per_note"),
                            "base_val_bits_per_note": m.get("base_val_bits_per_note")})
        return out

    def model_dir(self, mid: str) -> Path:
        if not MODEL_ID.fullmatch(mid) or not any(m["id"] == mid for m in self.models()):
            raise NotFound(f"no model {mid}")
        return self.models_dir / mid


def teach_out(t: Teaching, since: int = 0) -> dict:
    return {"id": t.id, "set": t.set, "style": t.style, "status": t.status, "steps": t.steps, "files": t.files,
            "points": t.points[since:], "points_total": len(t.points), "model": t.model, "error": t.error,
            "result": t.result, "elapsed": round((t.finished or time.time()) - t.created, 3)}
