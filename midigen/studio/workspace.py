"""Pieces and their versions on disk, so a reload or a restart loses nothing.

Layout (every id is 16 hex digits the server made; nothing from a client becomes a path):

    WORKSPACE/pieces/<piece>/piece.json      name, versions (number, label, kind, parameters, facts), history
    WORKSPACE/pieces/<piece>/<version>.mid   each version, written atomically
    WORKSPACE/pieces/<piece>/<version>.wav   rendered audio, a cache (see audio.py)
    WORKSPACE/pieces/<piece>/<version>.<mix>.wav   the same with some tracks muted (``mix`` names which)

A piece's history is the undo/redo list: a cursor into version ids. A new version is pushed after the
cursor (what was ahead of it is no longer reachable by redo, but stays in the version list).
Limits keep one client from filling the disk: pieces, versions per piece and bytes of MIDI in all.

A version's number (v1, v2, ...) is given once and kept for life, deleted neighbours or not: it names
the downloaded files, so the same number must always mean the same music. A workspace written before
numbers were stored gets them on loading, in the order its versions were made.
"""
from __future__ import annotations

import json
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from midigen.errors import MidigenError
from midigen.fsutil import atomic_write_bytes, atomic_write_json

ID = re.compile(r"^[0-9a-f]{16}$")
ID_PATTERN = ID.pattern
PIECE_FILE = "piece.json"


class NotFound(MidigenError):
    """No such piece or version (a 404)."""


class Conflict(MidigenError):
    """The request does not fit the piece's state or the workspace's limits (a 409)."""


@dataclass(frozen=True)
class Limits:
    pieces: int = 200
    versions: int = 200  # per piece
    midi_bytes: int = 1 << 30  # all versions of all pieces
    wav_bytes: int = 1 << 30  # the audio cache (oldest renders are dropped first)


def new_id() -> str:
    return secrets.token_hex(8)


def clean_name(name: str | None, default: str = "untitled") -> str:
    """A display name: printable, no path parts, at most 80 characters."""
    base = re.split(r"[\\/]", str(name or ""))[-1]
    base = re.sub(r"\.(mid|midi|rmi|kar)$", "", base, flags=re.IGNORECASE)
    base = re.sub(r"[^\w .,()+#&'-]", "_", base).strip(" ._")
    return base[:80] or default


def check_id(text: str, what: str) -> str:
    if not isinstance(text, str) or not ID.match(text):
        raise NotFound(f"no such {what}")
    return text


class Workspace:
    """Thread-safe store of pieces; every change is written to disk before it returns."""

    def __init__(self, root, limits: Limits = Limits()):
        self.root = Path(root)
        self.limits = limits
        self.lock = threading.RLock()
        (self.root / "pieces").mkdir(parents=True, exist_ok=True)
        self.pieces: dict[str, dict] = {}
        self._load()

    # ----- disk -------------------------------------------------------------------------------

    def _dir(self, pid: str) -> Path:
        return self.root / "pieces" / check_id(pid, "piece")

    def _load(self) -> None:
        for d in sorted((self.root / "pieces").iterdir()):
            if not (d.is_dir() and ID.match(d.name)):
                continue
            try:
                piece = json.loads((d / PIECE_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # a half-made piece (killed before its first write): not listed
            if isinstance(piece, dict) and piece.get("id") == d.name:
                piece["versions"] = [v for v in piece.get("versions", []) if (d / f"{v['id']}.mid").exists()]
                _number_versions(piece)
                self.pieces[d.name] = piece
            for tmp in d.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    def _save(self, piece: dict) -> None:
        atomic_write_json(self._dir(piece["id"]) / PIECE_FILE, piece)

    # ----- reading ----------------------------------------------------------------------------

    def get(self, pid: str) -> dict:
        """A copy of the piece's record (with its current version id)."""
        with self.lock:
            piece = self.pieces.get(check_id(pid, "piece"))
            if piece is None:
                raise NotFound("no such piece")
            return json.loads(json.dumps(piece))

    def listing(self) -> list[dict]:
        with self.lock:
            return sorted((self.get(pid) for pid in self.pieces), key=lambda p: p["created"], reverse=True)

    def version(self, pid: str, vid: str) -> dict:
        check_id(vid, "version")
        for v in self.get(pid)["versions"]:
            if v["id"] == vid:
                return v
        raise NotFound("no such version")

    def midi_path(self, pid: str, vid: str) -> Path:
        self.version(pid, vid)
        return self._dir(pid) / f"{vid}.mid"

    def wav_path(self, pid: str, vid: str, mix: str = "") -> Path:
        """Where the version's audio goes; ``mix`` (letters and digits, the server's own) names a mix of
        some of its tracks."""
        self.version(pid, vid)
        if mix and not mix.isalnum():
            raise NotFound("no such mix")
        return self._dir(pid) / (f"{vid}.{mix}.wav" if mix else f"{vid}.wav")

    def score(self, pid: str, vid: str):
        """The version as a symusic ScoreTick (files the studio wrote itself, never raw uploads)."""
        import symusic

        return symusic.Score.from_midi(self.midi_path(pid, vid).read_bytes())

    def midi_bytes(self) -> int:
        with self.lock:
            return sum(v.get("bytes", 0) for p in self.pieces.values() for v in p["versions"])

    # ----- changing ---------------------------------------------------------------------------

    def create(self, name: str | None = None) -> dict:
        """A new empty piece."""
        with self.lock:
            if len(self.pieces) >= self.limits.pieces:
                raise Conflict(f"the workspace holds {self.limits.pieces} pieces, its limit: delete some first")
            pid = new_id()
            piece = {"id": pid, "name": clean_name(name), "created": time.time(), "versions": [],
                     "history": [], "cursor": -1, "next_number": 1}
            self._dir(pid).mkdir(parents=True)
            self._save(piece)
            self.pieces[pid] = piece
            return self.get(pid)

    def add_version(self, pid: str, midi: bytes, *, label: str, kind: str, facts: dict, params: dict | None = None,
                    parent: str | None = None, current: bool = True) -> dict:
        """Store ``midi`` as a new version; make it the current one unless ``current`` is False."""
        with self.lock:
            piece = self.pieces.get(check_id(pid, "piece"))
            if piece is None:
                raise NotFound("the piece was deleted")
            if len(piece["versions"]) >= self.limits.versions:
                raise Conflict(f"this piece has {self.limits.versions} versions, its limit: delete old ones first")
            if self.midi_bytes() + len(midi) > self.limits.midi_bytes:
                raise Conflict(f"the workspace holds {self.limits.midi_bytes >> 20} MiB of MIDI, its limit: "
                               "delete old pieces or versions first")
            vid = new_id()
            atomic_write_bytes(self._dir(pid) / f"{vid}.mid", midi)
            v = {"id": vid, "number": piece["next_number"], "label": label[:200], "kind": kind,
                 "created": time.time(), "parent": parent, "params": params or {}, "bytes": len(midi), **facts}
            piece["next_number"] += 1
            piece["versions"].append(v)
            if current:
                self._push(piece, vid)
            self._save(piece)
            return dict(v)

    def _push(self, piece: dict, vid: str) -> None:
        piece["history"] = piece["history"][: piece["cursor"] + 1] + [vid]
        piece["cursor"] = len(piece["history"]) - 1

    def select(self, pid: str, vid: str) -> dict:
        """Make ``vid`` current (an undoable step)."""
        with self.lock:
            self.version(pid, vid)
            piece = self.pieces[pid]
            if current_id(piece) != vid:
                self._push(piece, vid)
                self._save(piece)
            return self.get(pid)

    def step(self, pid: str, delta: int) -> dict:
        """Undo (-1) or redo (+1)."""
        with self.lock:
            self.get(pid)
            piece = self.pieces[pid]
            c = piece["cursor"] + delta
            if not 0 <= c < len(piece["history"]):
                raise Conflict("nothing to " + ("undo" if delta < 0 else "redo"))
            piece["cursor"] = c
            self._save(piece)
            return self.get(pid)

    def delete_version(self, pid: str, vid: str) -> dict:
        with self.lock:
            self.version(pid, vid)
            piece = self.pieces[pid]
            if current_id(piece) == vid:
                raise Conflict("this is the current version: switch to another one before deleting it")
            piece["versions"] = [v for v in piece["versions"] if v["id"] != vid]
            history, cursor = [], -1
            for i, h in enumerate(piece["history"]):  # drop it; merge the neighbours it separated
                if h != vid and (not history or history[-1] != h):
                    history.append(h)
                if i == piece["cursor"]:
                    cursor = len(history) - 1  # still the current version
            piece["history"], piece["cursor"] = history, cursor
            self._save(piece)
            for path in [self._dir(pid) / f"{vid}.mid", *self._dir(pid).glob(f"{vid}*.wav")]:
                path.unlink(missing_ok=True)
            return self.get(pid)

    def delete_piece(self, pid: str) -> None:
        with self.lock:
            self.get(pid)
            del self.pieces[pid]
            shutil.rmtree(self._dir(pid), ignore_errors=True)


def _number_versions(piece: dict) -> None:
    """Give numbers to versions stored without one (an older workspace), after any already given."""
    taken = [v["number"] for v in piece["versions"] if isinstance(v.get("number"), int)]
    n = max([*taken, int(piece.get("next_number") or 1) - 1, 0]) + 1
    for v in piece["versions"]:
        if not isinstance(v.get("number"), int):
            v["number"], n = n, n + 1
    piece["next_number"] = n


def current_id(piece: dict) -> str | None:
    c = piece.get("cursor", -1)
    return piece["history"][c] if 0 <= c < len(piece.get("history", [])) else None
