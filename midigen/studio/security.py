"""Only the page the user opened may drive the studio: a Host allowlist, a token, Origin checks, JSON bodies.

Any web page the user visits can send requests to 127.0.0.1. Without these checks it could read, change
and delete their pieces: by DNS rebinding (its own name resolving to 127.0.0.1, so the browser treats
the studio as that site) or by "simple" cross-site POSTs, which a browser sends without asking. As
Jupyter's server does, every request must

1. name an allowed host in its ``Host`` header (a rebinding page's requests carry the attacker's name);
2. carry the token: ``Authorization: Bearer TOKEN`` (scripts), or the page's cookie, which the page's
   first load with ``?token=TOKEN`` sets (HttpOnly, SameSite=Strict, so other sites never send it);
3. if it changes state (POST, PUT, PATCH, DELETE) and has no bearer token, come from the studio's own
   origin (``Origin``, else ``Referer``);
4. if it changes state and has a body, say what the body is: JSON (``application/json``) everywhere
   but the uploads, which take the MIDI file itself (``audio/midi`` or ``application/octet-stream``; the
   Teach panel's also a zip, ``application/zip``).
   Cross-site forms can only send ``text/plain``, form or multipart bodies, so these never pass.

The checks are one ASGI middleware in front of the whole app (page, static files, API, docs); a refusal
is one line: JSON ``{"detail": ...}`` under /api, plain text elsewhere.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs, urlsplit

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
UPLOAD_TYPES = frozenset({"audio/midi", "audio/x-midi", "audio/mid", "application/octet-stream"})
UPLOADS = {"/api/pieces/upload": UPLOAD_TYPES,  # path -> the body types it takes (the file itself)
           "/api/teach/files": UPLOAD_TYPES | {"application/zip", "application/x-zip-compressed"}}
WILDCARDS = frozenset({"0.0.0.0", "::", ""})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _ip(text: str):
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def split_host(value: str) -> tuple[str, int | None] | None:
    """``Host`` header -> (lower-case name or address without brackets, port or None); None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
        if rest and port is None:
            return None
    elif value.count(":") == 1:
        name, port = value.split(":")
    else:
        name, port = value, None
    if not name or (port is not None and not port.isdigit()):
        return None
    return name, int(port) if port is not None else None


@dataclass(frozen=True)
class Policy:
    """What the server accepts: set once by ``run`` from the command's flags."""

    bound: str  # the --host it listens on
    port: int
    token: str | None  # None: --no-token (loopback only)
    allow_hosts: frozenset[str] = frozenset()  # --allow-host names (any port: a proxy may front them)

    @property
    def cookie(self) -> str:
        """The cookie's name: cookies are kept per host, not per port, so two studios must not share one."""
        return f"midigen-studio-{self.port}"

    def host_allowed(self, header: str) -> bool:
        parsed = split_host(header)
        if parsed is None:
            return False
        name, port = parsed
        if name in self.allow_hosts:
            return True
        if port is not None and port != self.port or port is None and self.port != 80:
            return False
        bound = self.bound.strip("[]").lower()
        if name in ("localhost", bound):
            return True
        ip = _ip(name)
        if ip is None:
            return False  # a name nobody allowed: the tell-tale of DNS rebinding
        if bound in WILDCARDS:
            return True  # any of this machine's addresses; a rebinding page's requests carry a name
        return is_loopback(bound) and ip.is_loopback

    def token_matches(self, given: str | None) -> bool:
        return given is not None and self.token is not None and hmac.compare_digest(
            given.encode("utf-8", "replace"), self.token.encode("utf-8"))


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}


def _bearer(headers: dict[str, str]) -> str | None:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def _cookie(headers: dict[str, str], name: str) -> str | None:
    try:
        jar = SimpleCookie(headers.get("cookie", ""))
    except CookieError:
        return None
    return jar[name].value if name in jar else None


def _query_token(scope) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return values[0] if values else None


def _same_origin(headers: dict[str, str]) -> bool:
    """The request comes from a page the studio served: its Origin (or Referer) names the Host it was sent to."""
    source = headers.get("origin") or headers.get("referer")
    if not source or source == "null":
        return False
    parts = urlsplit(source)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == headers.get("host", "").strip().lower()


def _media_type(headers: dict[str, str]) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


def _has_body(headers: dict[str, str]) -> bool:
    length = headers.get("content-length", "").strip()
    return (length not in ("", "0")) or "transfer-encoding" in headers or "content-type" in headers


@dataclass
class Verdict:
    """The answer to one request: refused (status, reason) or let through, perhaps setting the cookie."""

    status: int = 0
    reason: str = ""
    set_cookie: bool = False


def judge(policy: Policy, method: str, path: str, scope) -> Verdict:
    """Apply the four checks of the module's docstring, in order, to one request."""
    headers = _headers(scope)
    host = headers.get("host", "")
    if not policy.host_allowed(host):
        name = (split_host(host) or (host or "(none)",))[0]
        return Verdict(403, f"host {name!r} is not allowed here: start the studio with --allow-host {name} "
                            "to reach it by that name")
    bearer = _bearer(headers) if policy.token is not None else None
    set_cookie = False
    if policy.token is not None:
        if bearer is not None:
            if not policy.token_matches(bearer):
                return Verdict(403, "the token is wrong: use the one `midigen studio` printed")
        elif policy.token_matches(_cookie(headers, policy.cookie)):
            pass
        elif method == "GET" and path == "/" and policy.token_matches(_query_token(scope)):
            set_cookie = True
        elif _cookie(headers, policy.cookie) is not None or _query_token(scope) is not None:
            return Verdict(403, "the token is wrong: use the one `midigen studio` printed")
        else:
            return Verdict(401, "this studio needs its token: open the address `midigen studio` printed "
                                "(.../?token=...) or send Authorization: Bearer TOKEN")
    if method not in STATE_CHANGING:
        return Verdict(set_cookie=set_cookie)
    if bearer is None and not _same_origin(headers):
        return Verdict(403, "a request that changes something must come from the studio's own page "
                            "(Origin or Referer) or carry Authorization: Bearer TOKEN")
    kind = _media_type(headers)
    if path in UPLOADS:
        if kind not in UPLOADS[path]:
            return Verdict(415, f"an upload's body must be the MIDI file itself (Content-Type audio/midi), "
                                f"not {kind or 'untyped'}")
    elif _has_body(headers) and kind != "application/json":
        return Verdict(415, f"the body must be JSON (Content-Type application/json), not {kind or 'untyped'}")
    return Verdict()


class Guard:
    """ASGI middleware that lets through only what ``judge`` allows."""

    def __init__(self, app, policy: Policy):
        self.app = app
        self.policy = policy

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        verdict = judge(self.policy, scope.get("method", "GET").upper(), scope.get("path", ""), scope)
        if verdict.status:
            return await self._refuse(scope, send, verdict)
        if not verdict.set_cookie:
            return await self.app(scope, receive, send)
        cookie = (f"{self.policy.cookie}={self.policy.token}; Path=/; HttpOnly; SameSite=Strict").encode()

        async def send_with_cookie(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
            await send(message)

        return await self.app(scope, receive, send_with_cookie)

    async def _refuse(self, scope, send, verdict: Verdict) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope.get("path", "").startswith("/api/"):
            body, kind = json.dumps({"detail": verdict.reason}).encode(), b"application/json"
        else:
            body, kind = (verdict.reason + "\n").encode(), b"text/plain; charset=utf-8"
        headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
        if verdict.status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="midigen studio"'))
        await send({"type": "http.response.start", "status": verdict.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
