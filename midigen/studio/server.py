"""The studio's web app and ``run``, which `midigen studio` calls.

``create_app`` joins the parts (engine, workspace, worker, reader, audio) into one FastAPI app that
serves the page at / and the API at /api, and turns every expected failure into a JSON error with a
4xx status: bad requests 400, unknown ids 404, what the piece or the checkpoint cannot do 409, an
upload over 16 MiB 413, audio the synthesizer cannot make 422, a full queue 429. In front of it all
sits ``security.Guard``: a request from anywhere but the page the user opened gets 401, 403 or 415.
"""
from __future__ import annotations

import re
import secrets
import socket
import sys
import threading
import webbrowser
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from midigen import __version__
from midigen.device import best_device
from midigen.errors import MidigenError, UsageError
from midigen.generate.render import find_soundfont
from midigen.generate.synth import RenderError
from midigen.studio.api import Studio, router
from midigen.studio.audio import AudioCache
from midigen.studio.jobs import CannotEdit, Engine, JobQueue, QueueFull
from midigen.studio.teach import Teacher
from midigen.studio.security import Guard, Policy, is_loopback
from midigen.studio.upload import Reader, UploadError
from midigen.studio.workspace import Conflict, Limits, NotFound, Workspace

TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~-]+")  # what a URL's query carries as is
STATIC = Path(str(resources.files("midigen.studio") / "static"))
STATUS = [(NotFound, 404), (CannotEdit, 409), (Conflict, 409), (QueueFull, 429), (UploadError, 400),
          (RenderError, 422), (UsageError, 400), (MidigenError, 400)]
DESCRIPTION = """The JSON API behind the midigen studio page: upload or create pieces, generate and continue
music with the loaded checkpoint, follow a job's notes as they are written, undo and redo, download
any version as MIDI or WAV. Errors come back as `{"detail": "one line"}` with a 4xx status."""


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(MidigenError)
    async def midigen_error(request: Request, exc: MidigenError):
        code = next(c for cls, c in STATUS if isinstance(exc, cls))
        return JSONResponse({"detail": str(exc)}, status_code=code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": _validation_message(exc)}, status_code=422)


def can_learn_styles(engine: Engine) -> bool:
    """Whether a tune can give the base a new style: it learned style controls (else the name only names
    the model)."""
    return engine.codec.has_controls and (engine.base_config.get("info") or {}).get("controls") is not None


def create_app(engine: Engine, workspace: Workspace, soundfont, policy: Policy,
               reader: Reader | None = None) -> FastAPI:
    """The app over an already loaded engine, behind ``policy``; the worker thread starts now, the reader
    in the background."""
    reader = reader or Reader()
    teacher = Teacher(workspace.root / "teach", engine.base_dir, engine.base_sha, can_learn_styles(engine), reader)
    studio = Studio(engine, workspace, JobQueue(engine, workspace), reader, AudioCache(workspace, soundfont),
                    teacher)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for box in (reader, studio.audio):  # warm the child processes without delaying the page
            threading.Thread(target=box.start, name="midigen-studio-warm", daemon=True).start()
        yield
        teacher.close()
        studio.queue.close()
        reader.close()
        studio.audio.close()

    app = FastAPI(title="midigen studio", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.studio = studio
    app.add_middleware(Guard, policy=policy)
    _add_error_handlers(app)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    return app


# ----- serving ----------------------------------------------------------------------------------


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket, so a busy port fails before the model loads and port 0 picks a free one."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except (OSError, UnicodeError) as e:
        raise UsageError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}") from None
    sock.set_inheritable(True)
    return sock


def _url(host: str, sock: socket.socket, token: str | None) -> str:
    port = sock.getsockname()[1]
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/" + (f"?token={token}" if token else "")


def access_flags(host: str, token: str | None, no_token: bool, allow_hosts=()) -> tuple[str | None, tuple[str, ...]]:
    """(the token to require, the extra host names) from the flags; a fresh token unless one is given.

    Without a token, any program or web page that reaches the port could drive the studio, so
    ``--no-token`` is refused off loopback.
    """
    if no_token and token is not None:
        raise UsageError("--token and --no-token contradict each other: give one")
    if no_token and not is_loopback(host):
        raise UsageError(f"--no-token is allowed only on loopback (127.0.0.1, ::1, localhost), not --host {host}")
    if token is not None and not TOKEN_PATTERN.fullmatch(token):
        raise UsageError("--token must be non-empty and use only letters, digits and - _ . ~ (it goes in a URL)")
    names = []
    for name in allow_hosts:
        clean = name.strip().lower().strip("[]")
        if not clean or any(c in clean for c in "/@ ") or clean.count(":") == 1:  # a port or a URL
            raise UsageError(f"--allow-host takes a host name without port or scheme, got {name!r}")
        names.append(clean)
    return None if no_token else (token or secrets.token_urlsafe(32)), tuple(names)


def run(ckpt, host: str = "127.0.0.1", port: int = 8765, workspace="out/studio", open_browser: bool = False,
        device=None, limits: Limits = Limits(), token: str | None = None, no_token: bool = False,
        allow_hosts=(), precision: str = "auto") -> None:
    """Check the flags, load the checkpoint once (weights at ``precision``), print the address (with the
    token), serve until Ctrl+C."""
    import uvicorn  # start-up time

    token, names = access_flags(host, token, no_token, allow_hosts)
    dev = best_device(device)
    soundfont = find_soundfont()
    sock = _bind(host, port)
    engine = Engine(ckpt, dev, precision)
    try:
        ws = Workspace(workspace, limits)
    except OSError as e:
        raise UsageError(f"cannot use --workspace {workspace}: {e.strerror or e}") from None
    policy = Policy(bound=host, port=sock.getsockname()[1], token=token, allow_hosts=frozenset(names))
    app = create_app(engine, ws, soundfont, policy)
    url = _url(host, sock, token)
    if not is_loopback(host):
        print(f"midigen studio: warning: listening on {host}, not only this machine: anyone who can reach it and "
              "has the token can use the model and read and change the workspace", file=sys.stderr, flush=True)
    print(f"midigen studio: {url}  (checkpoint {ckpt}, workspace {ws.root}; Ctrl+C stops)", flush=True)
    if open_browser:
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shut down cleanly, then re-raised the Ctrl+C
        pass
    print("midigen studio: stopped", flush=True)
