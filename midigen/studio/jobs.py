"""The generation engine behind the studio, and the single worker that runs it.

``Engine`` is the studio's only door into the generators: loading the checkpoint, what it can do
(``capabilities``), and generate / continue / infill / arrange. Everything else in the studio deals in
scores, versions and HTTP, so a new engine changes this file only.

``JobQueue`` runs one job at a time on one thread, so the model is loaded once and never runs twice
at the same time; waiting jobs know their place in line. A job streams through ``Progress``, the
listener the engine calls after every token: it keeps the tokens so far (decoded to notes only when a
page asks) and answers True once the job is cancelled, which stops the engine at that token.
"""
from __future__ import annotations

import sys
import threading
import time
import traceback
from pathlib import Path
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace

import numpy as np

from midigen.music.chordtext import parse_chords
from midigen.music.codec import DRUMS, Codec, instrument_name, score_instruments
from midigen.errors import Cancelled, MidigenError, UsageError
from midigen.generate import continuation
from midigen.generate.edit import arrange_edits, infill_edits
from midigen.generate.form import VARY_SHARE, form_summary, like_edits, parse_form, parse_form_chords, write_form
from midigen.studio.roll import stream_notes, written_notes
from midigen.music.timing import first_tick_at, notes_end_seconds
from midigen.studio.workspace import new_id
from midigen.generate.checks import edit_warnings, sample_warnings
from midigen.generate.hearing import hearing_map, hearing_note
from midigen.generate.engine import realtime
from midigen.generate.controls import resolve, resolve_instruments
from midigen.generate.harmony import need_chords
from midigen.generate.sampling import DEFAULTS, KEY_WEIGHT, VARY_WEIGHT, Sampling
from midigen.generate.sample import continue_song, generate_samples, sample_score, warm_up
from midigen.fsutil import sha256_file
from midigen.model.adapter import apply_live, is_adapter_dir
from midigen.model.checkpoint import CONFIG, adapter_base, load_adapter, load_checkpoint
from midigen.model.checkpoint import resolve as resolve_checkpoint
from midigen.model.checkpoint import capabilities as from_checkpoint, checkpoint_limits
from midigen.music.timing import TempoMap

KINDS = ("generate", "continue", "infill", "arrange", "like")
MAX_WAITING = 32  # jobs waiting at once; more are refused (429) rather than queued for hours
KEEP_FINISHED = 256  # finished jobs remembered for their pollers


class CannotEdit(MidigenError):
    """The checkpoint cannot do this (a 409): e.g. infill with a model trained without editing."""


class QueueFull(MidigenError):
    """Too many jobs are waiting (a 429)."""


# ----- the engine adapter -----------------------------------------------------------------------


def _seen(model, codec: Codec) -> list[int]:
    """Instruments the model's output support includes (all of them when it has no support set)."""
    if getattr(model, "support", None) is None:
        return list(range(DRUMS + 1))
    ids = np.asarray(model.support.tolist())
    ids = ids[(ids >= codec.inst_start) & (ids < codec.note_start)]
    return sorted(int(i) - codec.inst_start for i in ids)


def capabilities(config: dict, model, codec: Codec) -> dict:
    """What the checkpoint can be asked for (``midigen.model.checkpoint.capabilities``), over the defaults of
    a checkpoint that records nothing: continue and generate with the instruments its output knows."""
    caps = {"can_edit": False, "styles": [], "instruments": _seen(model, codec), "time_signatures": [],
            "keys": [], "densities": []}

    return {**caps, **from_checkpoint(config, codec)}


def _sampling(req: dict) -> Sampling:
    """The request's sampling settings, checked (the schema already bounds them) and seeded."""
    return Sampling(temperature=float(req.get("temperature") or 1.0), top_k=req.get("top_k"), top_p=req.get("top_p"),
                    seed=req.get("seed"), chord_weight=float(req.get("chord_weight", DEFAULTS["chord_weight"])))


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


class Engine:
    """One loaded checkpoint and the four things the studio asks of it.

    The base weights are loaded once (``base_loads`` counts it); an adapter (``use``) is put on beside
    them and taken off again, so switching between the base and any adapter reads no base weight.
    ``lock`` is held by every run and every switch: a job never sees the model change under it.
    """

    def __init__(self, ckpt, device, precision: str = "fp32"):
        start = resolve_checkpoint(ckpt)
        self.base_dir = adapter_base(start) if is_adapter_dir(start) else start
        self.model, self.codec, self.base_config = load_checkpoint(self.base_dir, device, precision=precision)
        self.base_loads = 1
        self.base_sha = sha256_file(self.base_dir / CONFIG)
        self.device = device
        self.lock = threading.RLock()
        self._remove = None
        self.adapter = None  # the adapter dir in use, or None for the base
        self.start_adapter = Path(start) if is_adapter_dir(start) else None  # the one --ckpt named
        self.use(self.start_adapter)

    def use(self, adapter) -> None:
        """Switch to the adapter dir ``adapter`` (None: the base), checked before the current one comes off."""
        with self.lock:
            if adapter is not None and self.adapter is not None and Path(adapter) == self.adapter:
                return
            loaded = None if adapter is None else load_adapter(adapter, self.base_sha)
            if self._remove is not None:
                self._remove()
                self._remove = None
            if loaded is None:
                self.config, self.adapter = self.base_config, None
            else:
                manifest, tensors, self.config = loaded
                self._remove = apply_live(self.model, tensors, manifest)
                self.adapter = Path(adapter)
            self.ckpt = str(self.adapter or self.base_dir)
            self.caps = capabilities(self.config, self.model, self.codec)
            self.limits = checkpoint_limits(self.config)

    def _limits(self, req: dict):
        """The checkpoint's instrument ranges and polyphony, unless the request sets ``free_range``."""
        return None if req.get("free_range") else self.limits

    # ----- checks made before a job is queued, so a bad request fails at once --------------------

    def instruments(self, names) -> list[int]:
        """Names or numbers -> instruments the model knows (UsageError listing them otherwise)."""
        return resolve_instruments(names, self.caps["instruments"])

    def steering(self, req: dict) -> tuple[list[int], tuple | None]:
        """The request's style / key / density (and meter, for generate) -> (control ids, (n, d) or None),
        resolved as ``sample --style/--key/--density/--time-signature`` are: a name the checkpoint never
        learned is a UsageError listing the ones it did. Edits keep the song's own meter (no such field)."""
        pick = lambda k: req.get(k) or None  # noqa: E731  ("" from a form means: the model chooses)
        return resolve(self.caps, self.codec, style=pick("style"), key=pick("key"), density=pick("density"),
                       time_signature=pick("time_signature"))

    def chords(self, req: dict, kind: str) -> dict:
        """The request's chord chart as the library's keywords: ``chords`` = ``parse_chords``'s bars (a
        UsageError names a bad chord, or says the checkpoint has none), and for an edit ``free_chords``;
        nothing when neither is asked, so the library's default holds (an edit follows the song's own
        chords, new music the model's own). A checkpoint without chords frees them anyway."""
        text = (req.get("chords") or "").strip()
        chart = parse_chords(text) if text else None
        need_chords(self.codec, chart)
        out = {} if chart is None else {"chords": chart}
        if kind in ("infill", "arrange") and req.get("free_chords") and self.codec.has_chords:
            if chart is not None:
                raise UsageError("chords and free chords contradict each other: give a chart or free the chords")
            out["free_chords"] = True
        return out

    def form_charts(self, req: dict) -> dict:
        """A form's chords: label -> chart (``parse_form_chords``: one chart for every section, or one per
        section as ``A: C G Am F | B: F G C C``); a UsageError names a bad one."""
        text, sections = (req.get("chords") or "").strip(), parse_form(req["form"])
        charts = parse_form_chords(text, sections) if text else {}
        need_chords(self.codec, next(iter(charts.values()), None))
        return charts

    def check(self, kind: str, req: dict, version: dict | None) -> None:
        """Reject what cannot run: unknown instruments, controls the checkpoint lacks, bad chords, bad spans."""
        self.steering(req)
        form = kind == "generate" and req.get("form")
        self.form_charts(req) if form else self.chords(req, kind)
        self.instruments(req.get("instruments"))
        if kind == "generate":
            return
        if version is None or not version.get("notes"):
            raise UsageError(f"nothing to {kind}: upload or generate some music first")
        if kind in ("infill", "arrange", "like") and not self.caps["can_edit"]:
            raise CannotEdit(f"this checkpoint cannot {kind}: it was trained without the editing objective")
        length = float(version.get("seconds") or 0.0)
        if kind == "continue" and req.get("at_seconds") is not None and req["at_seconds"] > length:
            raise UsageError(f"the point {_clock(req['at_seconds'])} is past the end of the piece ({_clock(length)})")
        if kind == "infill":
            if not req["start_s"] < req["end_s"]:
                raise UsageError("the span is empty: its end must come after its start")
            if req["start_s"] >= length:
                raise UsageError(f"the span starts after the end of the piece ({_clock(length)})")
        if kind == "like":
            for a, b in ((req["start_s"], req["end_s"]), (req["like_start_s"], req["like_end_s"])):
                if not a < b <= length + 1e-6:
                    raise UsageError(f"the span {_clock(a)}–{_clock(b)} is empty or reaches past the end "
                                     f"of the piece ({_clock(length)})")
        if kind == "arrange":
            if not self.instruments(req.get("add")):
                raise UsageError("arrange needs at least one instrument to add")
            resolve_instruments(req.get("keep"), version.get("instruments") or [], owner="the song has")

    # ----- the runs: each returns [(score, label, parameters)] ---------------------------------

    def warm(self) -> None:
        """The compiled grammar and draw made ready (``warm_up``) before the first job waits on them."""
        with self.lock:
            warm_up(self.model, self.codec, self.device)

    def run(self, kind: str, req: dict, score, progress: "Progress") -> list[tuple]:
        """[(score, label, parameters, warnings)]: the warnings (``midigen.generate.checks``) say when a
        result is empty or nearly so, as the CLI's summaries do."""
        return getattr(self, "_" + kind)(req, score, progress)

    def _generate(self, req: dict, score, progress) -> list[tuple]:
        insts, tempo, sampling = self.instruments(req.get("instruments")), req.get("tempo"), _sampling(req)
        controls, meter = self.steering(req)
        if req.get("form"):
            return self._form(req, insts, controls, meter, sampling, progress)
        head = [self.codec.BOS] + [self.codec.inst_token(i) for i in insts]
        if insts and tempo is not None:
            head.append(self.codec.tempo_token(tempo))
        progress.begin(np.array(head, np.int64), 0.0)
        s = generate_samples(self.model, self.codec, seconds=req["seconds"], instruments=insts or None, tempo=tempo,
                             controls=controls, time_signature=meter, listener=progress, sampling=sampling,
                             device=self.device, limits=self._limits(req), **self.chords(req, "generate"))[0]
        out = sample_score(self.codec, s)
        label = f"generated {req['seconds']:g} s{_on_chords(req)} · seed {sampling.seed} · {_pace(s, out)}"
        return [(out, label, {**req, "seed": sampling.seed}, sample_warnings(out, 0.0, None, insts))]

    def _form(self, req: dict, insts, controls, meter, sampling, progress) -> list[tuple]:
        """A song with a form (``midigen.generate.form``); its written notes stream as they come (the
        copies of a section appear with the finished song)."""
        # the key asked is held and variations lean toward their section, as the command does
        sampling = replace(sampling, key_weight=KEY_WEIGHT, vary_weight=VARY_WEIGHT)
        song = write_form(self.model, self.codec, parse_form(req["form"]), sampling=sampling, tempo=req.get("tempo"),
                          time_signature=meter, instruments=insts or None, controls={"": controls},
                          vary=req.get("vary") or VARY_SHARE, device=self.device, limits=self._limits(req),
                          charts=self.form_charts(req), listener=progress)
        summary = form_summary(song)
        label = f"form {summary['form']}{_on_chords(req)} · {summary['bars']} bars · seed {sampling.seed}"
        return [(song.score, label, {**req, "seed": sampling.seed}, summary["warnings"])]

    def _like(self, req: dict, score, progress) -> list[tuple]:
        sampling = replace(_sampling(req), vary_weight=VARY_WEIGHT)  # a variation leans toward its model
        span = lambda a, b: tuple(int(t) for t in (first_tick_at(score, a), first_tick_at(score, b)))  # noqa: E731
        target, source = span(req["start_s"], req["end_s"]), span(req["like_start_s"], req["like_end_s"])
        (e,) = like_edits(self.model, self.codec, score, source=source, target=target,
                          vary=req.get("vary") or VARY_SHARE, controls=self.steering(req)[0],
                          limits=self._limits(req), sampling=sampling, device=self.device)
        what = "varied" if source == target else f"like {_clock(req['like_start_s'])}–{_clock(req['like_end_s'])}"
        label = f"{_clock(req['start_s'])}–{_clock(req['end_s'])} {what} · seed {sampling.seed}"
        return [(e.score, label, {**req, "seed": sampling.seed}, edit_warnings(score, e, "infill"))]

    def _continue(self, req: dict, score, progress) -> list[tuple]:
        extra, sampling = self.instruments(req.get("instruments")), _sampling(req)
        p = continuation.plan(self.codec, score, req.get("at_seconds"),
                              hearing_map(score, self.caps["instruments"], self.limits))
        progress.begin(continuation.stream_head(self.codec, p, extra), p.start_seconds)
        ((s, out),) = continue_song(self.model, self.codec, score, p, seconds=req["seconds"], instruments=extra,
                                    tempo=req.get("tempo"), listener=progress, sampling=sampling, device=self.device,
                                    limits=self._limits(req), **self.chords(req, "continue"))
        where = "the end" if req.get("at_seconds") is None else _clock(p.start_seconds)
        pace = realtime(notes_end_seconds(out) - p.start_seconds, s.compute_seconds)
        label = (f"continued from {where} · {req['seconds']:g} s{_on_chords(req)} · seed {sampling.seed} · "
                 f"{pace:.1f}× real time")
        said = sample_warnings(out, p.start_seconds, None, extra) + _heard(p.hearing)
        return [(out, label, {**req, "seed": sampling.seed}, said)]

    def _infill(self, req: dict, score, progress) -> list[tuple]:
        sampling = _sampling(req)
        insts = self.instruments(req.get("instruments")) or None
        progress.begin(None, 0.0)  # the engine says where each chunk's notes go (Progress.chunk)
        edits = infill_edits(self.model, self.codec, score, start_s=req["start_s"], end_s=req["end_s"],
                             instruments=insts, num_samples=req["num_samples"], controls=self.steering(req)[0],
                             listener=progress, limits=self._limits(req), known_instruments=self.caps["instruments"],
                             sampling=sampling, device=self.device, **self.chords(req, "infill"))
        span = f"{_clock(req['start_s'])}–{_clock(req['end_s'])}"
        return [(e.score, f"infill {span}{_on_chords(req)} · variant {i + 1}/{len(edits)} · seed {sampling.seed} · "
                          f"{e.realtime:.1f}× real time", {**req, "seed": sampling.seed},
                 edit_warnings(score, e, "infill") + _heard(e.hearing))
                for i, e in enumerate(edits)]

    def _arrange(self, req: dict, score, progress) -> list[tuple]:
        sampling = _sampling(req)
        add = self.instruments(req.get("add"))
        keep = req.get("keep")
        keep = None if keep is None else resolve_instruments(keep, score_instruments(score), owner="the song has")
        progress.begin(None, 0.0)  # the engine says where each chunk's notes go (Progress.chunk)
        edits = arrange_edits(self.model, self.codec, score, add=add, keep=keep, num_samples=req["num_samples"],
                              controls=self.steering(req)[0], listener=progress, limits=self._limits(req),
                              known_instruments=self.caps["instruments"], sampling=sampling, device=self.device,
                              **self.chords(req, "arrange"))
        names = ", ".join(instrument_name(i) for i in add) + _on_chords(req)
        return [(e.score, f"arranged + {names} · variant {i + 1}/{len(edits)} · seed {sampling.seed} · "
                          f"{e.realtime:.1f}× real time", {**req, "seed": sampling.seed},
                 edit_warnings(score, e, "arrange") + _heard(e.hearing))
                for i, e in enumerate(edits)]


def _on_chords(req: dict) -> str:
    """What a version's label says of its chords: the chart it was written on, or that they were free."""
    text = " ".join((req.get("chords") or "").split())
    if text:
        return f" · on {text if len(text) <= 40 else text[:39] + '…'}"
    return " · free chords" if req.get("free_chords") else ""


def _heard(hearing: dict) -> list[str]:
    """The version's note on how the model heard the song (``midigen.generate.hearing``), if it heard an
    instrument as another or left one out."""
    note = hearing_note(hearing)
    return [] if note is None else [f"heard: {note}"]


def _pace(sample, score) -> str:
    """How much faster than real time a sample's new music was written, for its version's label."""
    return f"{realtime(notes_end_seconds(score) - sample.start_seconds, sample.compute_seconds):.1f}× real time"


def facts(score) -> dict:
    """What a version record says about its music."""
    return {"notes": int(score.note_num()), "seconds": round(notes_end_seconds(score), 3),
            "instruments": score_instruments(score)}


# ----- streaming and the worker -----------------------------------------------------------------


class Progress:
    """The listener a run calls after every token; pollers read the notes written so far.

    The notes only ever grow (a poller asks for those past the ones it has). A generation's tokens are
    read after the ``begin`` head. An edit writes in chunks, each a fresh decode whose tokens are timed
    from the chunk's start in the song's own steps: the engine says where each starts (``chunk``), the
    notes of finished chunks stay, and only the target instruments' notes are drawn. With several
    variants the preview shows the first chunk of the first one, then every later chunk as it comes.
    """

    def __init__(self, codec: Codec):
        self.codec = codec
        self.head = None
        self.offset = 0.0
        self.tokens = np.zeros(0, np.int64)
        self.cancel = False
        self.edit = None  # (start step, Song, targets, TempoMap) of the chunk being written
        self.done: list = []  # notes of the chunks already written
        self.chunks = 0  # chunks started
        self.before = 0  # tokens of the chunks already written
        self._lock = threading.Lock()
        self._cache = (None, [])

    def begin(self, head: np.ndarray | None, offset_seconds: float) -> None:
        """How to read the coming tokens: decoded after ``head``, placed ``offset_seconds`` in."""
        self.head, self.offset = head, float(offset_seconds)
        if self.cancel:
            raise Cancelled("generation cancelled")

    def chunk(self, start_step: int, song, targets) -> None:
        """The editing engine starts a chunk at ``start_step`` of ``song`` (``midigen.generate.edit``);
        a generation before it (a form's first section) keeps its notes."""
        finished = (self._chunk_notes(self.edit, self.tokens) if self.edit is not None or self.head is None
                    else stream_notes(self.codec, self.head, self.tokens, self.offset))
        tempo = self.edit[3] if self.edit is not None and self.edit[1] is song else TempoMap(song.score)
        with self._lock:
            self.done = self.done + finished
            self.before += len(self.tokens)
            self.chunks += 1
            self.edit = (int(start_step), song, tuple(targets), tempo)
            self.tokens = np.zeros(0, np.int64)
        if self.cancel:
            raise Cancelled("generation cancelled")

    def __call__(self, new_tokens: np.ndarray) -> bool:
        self.tokens = new_tokens[0]  # a view the engine only writes past; row 0 is the one shown
        return self.cancel

    @property
    def count(self) -> int:
        return self.before + len(self.tokens)

    def _chunk_notes(self, edit, tokens) -> list:
        if edit is None:
            return []
        start, song, targets, tempo = edit
        return written_notes(self.codec, tokens, start, song, targets, tempo)

    def notes(self) -> list[list[float]]:
        with self._lock:  # one chunk's state at a time: a chunk may start meanwhile
            done, edit, tokens, head, chunks = self.done, self.edit, self.tokens, self.head, self.chunks
        key = (chunks, len(tokens))
        if self._cache[0] == key:
            return self._cache[1]
        if edit is not None:
            notes = done + self._chunk_notes(edit, tokens)
        elif head is not None:
            notes = stream_notes(self.codec, head, tokens, self.offset)
        else:
            notes = []
        self._cache = (key, notes)
        return notes

    def freeze(self) -> None:
        """Keep only this job's own tokens (the engine's whole buffer can go)."""
        self.tokens = np.array(self.tokens, copy=True)


@dataclass
class Job:
    kind: str
    piece: str
    base: str | None
    request: dict
    progress: Progress
    id: str = field(default_factory=new_id)
    status: str = "queued"  # queued, running, done, failed, cancelled
    error: str | None = None
    versions: list = field(default_factory=list)
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None


class JobQueue:
    """One worker thread running jobs in the order they came."""

    def __init__(self, engine: Engine, workspace, max_waiting: int = MAX_WAITING):
        self.engine = engine
        self.ws = workspace
        self.max_waiting = max_waiting
        self.cv = threading.Condition()
        self.waiting: deque[Job] = deque()
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.running: Job | None = None
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="midigen-studio-worker", daemon=True)
        self.thread.start()

    def submit(self, kind: str, piece: str, base: str | None, request: dict) -> Job:
        with self.cv:
            if len(self.waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self.waiting)} jobs are waiting already: try again in a while")
            job = Job(kind, piece, base, request, Progress(self.engine.codec))
            self.jobs[job.id] = job
            self.waiting.append(job)
            self._forget()
            self.cv.notify_all()
            return job

    def _forget(self) -> None:
        done = [j for j in self.jobs.values() if j.finished is not None]
        for j in done[: max(0, len(done) - KEEP_FINISHED)]:
            del self.jobs[j.id]

    def get(self, jid: str) -> Job | None:
        with self.cv:
            return self.jobs.get(jid)

    def position(self, job: Job) -> int | None:
        """How many jobs run before this one: 0 while it runs, None once it has finished."""
        with self.cv:
            if job.status == "running":
                return 0
            if job.status != "queued":
                return None
            ahead = next((i for i, j in enumerate(self.waiting) if j is job), len(self.waiting))
            return ahead + (self.running is not None)

    def load(self) -> dict:
        with self.cv:
            return {"running": int(self.running is not None), "waiting": len(self.waiting)}

    def cancel(self, job: Job) -> None:
        """A waiting job is dropped; a running one stops at its next token."""
        with self.cv:
            job.progress.cancel = True
            if job.status == "queued":
                self.waiting.remove(job)
                job.status, job.finished = "cancelled", time.time()

    def close(self) -> None:
        with self.cv:
            self.stopping = True
            for job in self.waiting:
                job.status, job.finished = "cancelled", time.time()
            self.waiting.clear()
            if self.running is not None:
                self.running.progress.cancel = True
            self.cv.notify_all()
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        self._warm()
        while True:
            with self.cv:
                while not self.waiting and not self.stopping:
                    self.cv.wait()
                if self.stopping:
                    return
                job = self.running = self.waiting.popleft()
                job.status, job.started = "running", time.time()
            status, error = self._run(job)
            with self.cv:
                job.progress.freeze()
                job.status, job.error, job.finished = status, error, time.time()
                self.running = None

    def _warm(self) -> None:
        """The engine warmed as the worker starts: a job asked for meanwhile waits for what is left of it."""
        try:
            self.engine.warm()
        except Exception:  # the first job then compiles, or says what is wrong
            traceback.print_exc(file=sys.stderr)

    def _run(self, job: Job) -> tuple[str, str | None]:
        """-> (status, error): the job's versions are written before it counts as done."""
        try:
            score = self.ws.score(job.piece, job.base) if job.base else None
            with self.engine.lock:
                results = self.engine.run(job.kind, job.request, score, job.progress)
            for i, (sc, label, params, warnings) in enumerate(results):
                v = self.ws.add_version(job.piece, bytes(sc.dumps_midi()), label=label, kind=job.kind,
                                        facts={**facts(sc), "warnings": warnings}, params=params, parent=job.base,
                                        current=i == 0)
                job.versions.append(v["id"])
            return "done", None
        except Cancelled:
            return "cancelled", None
        except MidigenError as e:
            return "failed", str(e)
        except Exception as e:  # a bug must cost this job only, never the worker
            traceback.print_exc(file=sys.stderr)
            return "failed", f"internal error: {type(e).__name__}: {e}"
