"""The JSON API under /api: the same operations as the page, for scripts and DAW bridges.

Every id in a path is checked against the server's own id form before it is used; uploads are read
with a byte cap as they stream in and parsed in the reader process; generation requests are checked
at once (a bad one never waits in the queue) and then run by the single worker.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from fastapi import APIRouter, Body, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response

from midigen import __version__
from midigen.errors import UsageError
from midigen.generate.controls import resolve_instruments
from midigen.generate.sampling import DEFAULTS
from midigen.music.chordtext import parse_chords
from midigen.music.codec import DRUMS, instrument_name
from midigen.studio import schemas as S
from midigen.studio.audio import AudioCache
from midigen.studio.jobs import Engine, Job, JobQueue
from midigen.studio.roll import score_roll
from midigen.studio.teach import Teacher, teach_out
from midigen.studio.upload import MAX_SECONDS, MAX_UPLOAD_BYTES, Reader
from midigen.studio.workspace import ID_PATTERN, Workspace, clean_name, current_id

MAX_WAIT = 10.0  # longest a job poll is held open waiting for news
MAX_NOTES_PER_POLL = 20_000


@dataclass
class Studio:
    engine: Engine
    workspace: Workspace
    queue: JobQueue
    reader: Reader
    audio: AudioCache
    teacher: Teacher


router = APIRouter(prefix="/api")
PID = PathParam(..., pattern=ID_PATTERN, description="a piece id")
VID = PathParam(..., pattern=ID_PATTERN, description="a version id")
JID = PathParam(..., pattern=ID_PATTERN, description="a job id")


def _st(request: Request) -> Studio:
    return request.app.state.studio


def piece_out(piece: dict) -> dict:
    c = piece["cursor"]
    return {**piece, "current": current_id(piece), "can_undo": c > 0, "can_redo": c + 1 < len(piece["history"])}


# ----- the server and the model -----------------------------------------------------------------


@router.get("/info", response_model=S.InfoOut, summary="the checkpoint, what it can do, the limits")
def info(request: Request):
    st = _st(request)
    e, lim = st.engine, st.workspace.limits
    return {
        "version": __version__, "checkpoint": e.ckpt, "device": str(e.device),
        "parameters": e.model.num_params(), "block_size": e.model.cfg.block_size,
        "capabilities": e.caps,
        "instruments": [{"id": i, "name": instrument_name(i)} for i in range(DRUMS + 1)],
        "limits": {"upload_bytes": MAX_UPLOAD_BYTES, "piece_seconds": MAX_SECONDS, "new_seconds": S.MAX_NEW_SECONDS,
                   "pieces": lim.pieces, "versions_per_piece": lim.versions, "workspace_midi_bytes": lim.midi_bytes},
        "defaults": {k: v for k, v in DEFAULTS.items() if k in S.DefaultsOut.model_fields},
        "queue": st.queue.load(), "model": _current_model(st),
    }


@router.post("/chords", response_model=S.ChordsOut, responses={400: {"model": S.ErrorOut}},
             summary="read a chord chart as a job would (400 names a bad chord)",
             description="The page checks its chord field here, so the chart is read in one place.")
def chords(body: S.ChordsIn):
    bars = [[str(c) for c in bar] for bar in parse_chords(body.chords)]
    return {"bars": bars, "text": "| " + " | ".join(" ".join(bar) for bar in bars) + " |"}


# ----- pieces and versions ----------------------------------------------------------------------


@router.get("/pieces", response_model=list[S.PieceBrief], summary="every piece, newest first")
def pieces(request: Request):
    out = []
    for p in _st(request).workspace.listing():
        cur = current_id(p)
        secs = next((v["seconds"] for v in p["versions"] if v["id"] == cur), 0.0)
        out.append({"id": p["id"], "name": p["name"], "created": p["created"], "versions": len(p["versions"]),
                    "current": cur, "seconds": secs})
    return out


@router.post("/pieces", response_model=S.PieceOut, status_code=201, summary="a new empty piece")
def create_piece(request: Request, name: str = Body("untitled", embed=True, max_length=200)):
    return piece_out(_st(request).workspace.create(name))


@router.post("/pieces/upload", response_model=S.PieceOut, status_code=201, summary="a new piece from a MIDI file",
             description="The request body is the file itself (Content-Type audio/midi or "
                         "application/octet-stream), at most 16 MiB; `name` is its file name.",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "audio/midi": {"schema": {"type": "string", "format": "binary"}}}}},
             responses={400: {"model": S.ErrorOut}, 413: {"model": S.ErrorOut}})
async def upload(request: Request, name: str = Query("upload.mid", max_length=200)):
    st = _st(request)
    midi, facts = await run_in_threadpool(st.reader.read, await _body(request))
    return await run_in_threadpool(_store_upload, st.workspace, name, midi, facts)


async def _body(request: Request) -> bytes:
    """An upload's bytes, refused (413) as soon as they pass the 16 MiB cap."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
        raise HTTPException(413, f"the file is too large: {int(declared)} bytes > {MAX_UPLOAD_BYTES >> 20} MiB")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"the file is too large: over {MAX_UPLOAD_BYTES >> 20} MiB")
    return bytes(data)


def _store_upload(ws: Workspace, name: str, midi: bytes, facts: dict) -> dict:
    piece = ws.create(name)
    try:
        ws.add_version(piece["id"], midi, label=f"uploaded {clean_name(name)}", kind="upload", facts=facts)
    except BaseException:
        ws.delete_piece(piece["id"])
        raise
    return piece_out(ws.get(piece["id"]))


@router.get("/pieces/{pid}", response_model=S.PieceOut, summary="a piece: its versions and undo history")
def get_piece(request: Request, pid: str = PID):
    return piece_out(_st(request).workspace.get(pid))


@router.delete("/pieces/{pid}", status_code=204, summary="delete a piece and all its versions")
def delete_piece(request: Request, pid: str = PID):
    _st(request).workspace.delete_piece(pid)
    return Response(status_code=204)


@router.post("/pieces/{pid}/undo", response_model=S.PieceOut, summary="back to the previous version")
def undo(request: Request, pid: str = PID):
    return piece_out(_st(request).workspace.step(pid, -1))


@router.post("/pieces/{pid}/redo", response_model=S.PieceOut, summary="forward again after an undo")
def redo(request: Request, pid: str = PID):
    return piece_out(_st(request).workspace.step(pid, +1))


@router.post("/pieces/{pid}/select", response_model=S.PieceOut, summary="make a version current (undoable)")
def select(request: Request, body: S.SelectIn, pid: str = PID):
    return piece_out(_st(request).workspace.select(pid, body.version))


@router.delete("/pieces/{pid}/versions/{vid}", response_model=S.PieceOut,
               summary="delete a version (not the current one)")
def delete_version(request: Request, pid: str = PID, vid: str = VID):
    return piece_out(_st(request).workspace.delete_version(pid, vid))


@router.get("/pieces/{pid}/versions/{vid}/roll", response_model=S.RollOut, summary="the version as a piano roll")
async def roll(request: Request, pid: str = PID, vid: str = VID):
    ws = _st(request).workspace
    data = await run_in_threadpool(lambda: score_roll(ws.score(pid, vid)))
    return JSONResponse(data)  # already plain JSON; skip re-validating up to 200,000 notes


def _download_name(ws: Workspace, pid: str, vid: str, ext: str) -> str:
    return f"{ws.get(pid)['name']}-v{ws.version(pid, vid)['number']}.{ext}"


@router.get("/pieces/{pid}/versions/{vid}/midi", summary="download the version as a MIDI file",
            response_class=FileResponse, responses={200: {"content": {"audio/midi": {}}}})
def midi(request: Request, pid: str = PID, vid: str = VID):
    ws = _st(request).workspace
    return FileResponse(ws.midi_path(pid, vid), media_type="audio/midi", filename=_download_name(ws, pid, vid, "mid"))


@router.get("/pieces/{pid}/versions/{vid}/wav", summary="the version as audio (rendered once, then cached)",
            response_class=FileResponse, responses={200: {"content": {"audio/wav": {}}}})
def wav(request: Request, pid: str = PID, vid: str = VID, download: bool = False,
        tracks: str | None = Query(None, pattern=r"^\d{1,4}(,\d{1,4}){0,255}$",
                                   description="only these tracks (the roll's track indices, comma-separated): "
                                               "mute and solo")):
    st = _st(request)
    path = st.audio.wav(pid, vid, None if tracks is None else tuple(int(x) for x in tracks.split(",")))
    name = _download_name(st.workspace, pid, vid, "wav") if download else None
    return FileResponse(path, media_type="audio/wav", filename=name, content_disposition_type="attachment")


# ----- generation jobs --------------------------------------------------------------------------


def job_out(st: Studio, job: Job, since: int = 0) -> dict:
    notes = job.progress.notes()
    return {
        "id": job.id, "kind": job.kind, "piece": job.piece, "status": job.status,
        "position": st.queue.position(job), "tokens": job.progress.count, "notes_total": len(notes),
        "notes": notes[since : since + MAX_NOTES_PER_POLL], "versions": list(job.versions), "error": job.error,
        "elapsed": round((job.finished or time.time()) - job.created, 3),
    }


def _submit(request: Request, kind: str, pid: str, body) -> dict:
    st = _st(request)
    piece = st.workspace.get(pid)
    req = body.model_dump()
    vid = req.pop("version", None) or current_id(piece)
    version = st.workspace.version(pid, vid) if vid else None
    _fit(st.engine, kind, req, version)
    st.engine.check(kind, req, version)
    base = None if kind == "generate" else vid
    return job_out(st, st.queue.submit(kind, pid, base, req))


def _fit(engine: Engine, kind: str, req: dict, version: dict | None) -> None:
    """What the engine's checks leave to the API: an infill span reaching past the song is clipped to
    it (the label and the parameters say the span written), and arrange's parts to keep must be parts
    the song has and not ones it is asked to add (422, in the request's own field names)."""
    if version is None:
        return
    length = float(version.get("seconds") or 0.0)
    if kind == "infill" and req["start_s"] < length:
        req["end_s"] = min(req["end_s"], length)
    if kind == "arrange" and req.get("keep") is not None:
        try:
            keep = resolve_instruments(req["keep"], version.get("instruments") or [], owner="the song has")
        except UsageError as e:
            raise HTTPException(422, f"keep: {e}") from None
        both = sorted(set(keep) & set(engine.instruments(req["add"])))
        if both:
            names = ", ".join(instrument_name(i) for i in both)
            raise HTTPException(422, f"keep and add both name {names}: a part is either kept or written anew")


JOB_ERRORS = {400: {"model": S.ErrorOut}, 404: {"model": S.ErrorOut}, 409: {"model": S.ErrorOut},
              429: {"model": S.ErrorOut}}


@router.post("/pieces/{pid}/generate", response_model=S.JobOut, status_code=202, responses=JOB_ERRORS,
             summary="queue new music for the piece (a new version)")
def generate(request: Request, body: S.GenerateIn, pid: str = PID):
    return _submit(request, "generate", pid, body)


@router.post("/pieces/{pid}/continue", response_model=S.JobOut, status_code=202, responses=JOB_ERRORS,
             summary="queue a continuation from the end or from a point")
def continue_(request: Request, body: S.ContinueIn, pid: str = PID):
    return _submit(request, "continue", pid, body)


@router.post("/pieces/{pid}/infill", response_model=S.JobOut, status_code=202, responses=JOB_ERRORS,
             summary="queue a rewrite of a time span (409 when the checkpoint cannot edit)")
def infill(request: Request, body: S.InfillIn, pid: str = PID):
    return _submit(request, "infill", pid, body)


@router.post("/pieces/{pid}/like", response_model=S.JobOut, status_code=202, responses=JOB_ERRORS,
             summary="queue a span rewritten as a variation of another (409 when the checkpoint cannot edit)")
def like(request: Request, body: S.LikeIn, pid: str = PID):
    return _submit(request, "like", pid, body)


@router.post("/pieces/{pid}/arrange", response_model=S.JobOut, status_code=202, responses=JOB_ERRORS,
             summary="queue new parts over the song (409 when the checkpoint cannot edit)")
def arrange(request: Request, body: S.ArrangeIn, pid: str = PID):
    return _submit(request, "arrange", pid, body)


def _job(st: Studio, jid: str) -> Job:
    job = st.queue.get(jid)
    if job is None:
        raise HTTPException(404, "no such job (finished jobs are forgotten after a while)")
    return job


@router.get("/jobs/{jid}", response_model=S.JobOut, summary="a job's state and the notes it wrote so far",
            description="With `wait` > 0 the answer is held (long polling) until the job has notes past "
                        "`since`, changes state, or `wait` seconds pass.")
async def get_job(request: Request, jid: str = JID, since: int = Query(0, ge=0),
                  wait: float = Query(0.0, ge=0, le=MAX_WAIT)):
    st = _st(request)
    job = _job(st, jid)
    deadline, status, seen, place = time.monotonic() + wait, job.status, -1, st.queue.position(job)
    while time.monotonic() < deadline and job.status == status and job.status in ("queued", "running"):
        if st.queue.position(job) != place:
            break
        if job.progress.count != seen:
            seen = job.progress.count
            if len(job.progress.notes()) > since:
                break
        if await request.is_disconnected():
            break
        await asyncio.sleep(0.04)
    return job_out(st, job, since)


@router.post("/jobs/{jid}/cancel", response_model=S.JobOut, summary="stop a job now (a waiting one never starts)")
def cancel(request: Request, jid: str = JID):
    st = _st(request)
    job = _job(st, jid)
    st.queue.cancel(job)
    return job_out(st, job)


# ----- teaching and models ----------------------------------------------------------------------

TID = PathParam(..., pattern=ID_PATTERN, description="a teaching id")


@router.post("/teach/files", response_model=S.TeachFilesOut, status_code=201,
             summary="add a MIDI file, or a zip of them, to a teaching set (a new set without `set`)",
             description="The body is the file itself (audio/midi, application/zip or application/octet-stream), "
                         "at most 16 MiB; each MIDI file is read as an upload is.",
             responses={400: {"model": S.ErrorOut}, 404: {"model": S.ErrorOut}, 413: {"model": S.ErrorOut}})
async def teach_files(request: Request, name: str = Query("upload.mid", max_length=200),
                      set: str | None = Query(None, pattern=ID_PATTERN)):
    st = _st(request)
    data = await _body(request)
    return await run_in_threadpool(st.teacher.add, set, name, data)


@router.post("/teach", response_model=S.TeachOut, status_code=202, summary="start teaching the base a set's music",
             responses={400: {"model": S.ErrorOut}, 404: {"model": S.ErrorOut}, 409: {"model": S.ErrorOut}})
def teach(request: Request, body: S.TeachIn):
    return teach_out(_st(request).teacher.start(body.set, body.style, body.steps, body.minutes))


@router.get("/teach/{tid}", response_model=S.TeachOut, summary="a tune's state and its curve after `since` points",
            description="With `wait` > 0 the answer is held until new points come, the state changes, or "
                        "`wait` seconds pass.")
async def get_teach(request: Request, tid: str = TID, since: int = Query(0, ge=0),
                    wait: float = Query(0.0, ge=0, le=MAX_WAIT)):
    t = _st(request).teacher.get(tid)
    deadline, status = time.monotonic() + wait, t.status
    while time.monotonic() < deadline and t.status == status and len(t.points) <= since and t.finished is None:
        if await request.is_disconnected():
            break
        await asyncio.sleep(0.1)
    return teach_out(t, since)


@router.post("/teach/{tid}/cancel", response_model=S.TeachOut, summary="stop a tune (no model is kept)")
def cancel_teach(request: Request, tid: str = TID):
    teacher = _st(request).teacher
    t = teacher.get(tid)
    teacher.cancel(t)
    return teach_out(t)


def _current_model(st: Studio) -> str:
    a = st.engine.adapter
    if a is None:
        return "base"
    return "checkpoint" if a == st.engine.start_adapter else a.name


def models_out(st: Studio) -> dict:
    listed = st.teacher.models()
    if st.engine.start_adapter is not None:  # the adapter `midigen studio --ckpt` named
        listed.insert(0, {"id": "checkpoint", "name": st.engine.start_adapter.name})
    return {"current": _current_model(st), "models": [{"id": "base", "name": "base"}, *listed],
            "base_loads": st.engine.base_loads}


@router.get("/models", response_model=S.ModelsOut, summary="the base and the models taught from it")
def models(request: Request):
    return models_out(_st(request))


@router.post("/models/select", response_model=S.ModelsOut, summary="generate with another model",
             description="Waits for a running job to finish; no base weight is read again.")
def select_model(request: Request, body: S.SelectModelIn):
    st = _st(request)
    if body.model == "base":
        st.engine.use(None)
    elif body.model == "checkpoint" and st.engine.start_adapter is not None:
        st.engine.use(st.engine.start_adapter)
    else:
        st.engine.use(st.teacher.model_dir(body.model))
    return models_out(st)
