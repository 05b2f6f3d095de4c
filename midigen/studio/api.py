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
from midigen.music.codec import DRUMS, instrument_name
from midigen.studio import schemas as S
from midigen.studio.audio import AudioCache
from midigen.studio.jobs import Engine, Job, JobQueue
from midigen.studio.roll import score_roll
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
        "parameters": sum(p.numel() for p in e.model.parameters()), "block_size": e.model.cfg.block_size,
        "capabilities": e.caps,
        "instruments": [{"id": i, "name": instrument_name(i)} for i in range(DRUMS + 1)],
        "limits": {"upload_bytes": MAX_UPLOAD_BYTES, "piece_seconds": MAX_SECONDS, "new_seconds": S.MAX_NEW_SECONDS,
                   "pieces": lim.pieces, "versions_per_piece": lim.versions, "workspace_midi_bytes": lim.midi_bytes},
        "defaults": {k: v for k, v in DEFAULTS.items() if k in S.DefaultsOut.model_fields},
        "queue": st.queue.load(),
    }


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
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
        raise HTTPException(413, f"the file is too large: {int(declared)} bytes > {MAX_UPLOAD_BYTES >> 20} MiB")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"the file is too large: over {MAX_UPLOAD_BYTES >> 20} MiB")
    midi, facts = await run_in_threadpool(st.reader.read, bytes(data))
    return await run_in_threadpool(_store_upload, st.workspace, name, midi, facts)


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
