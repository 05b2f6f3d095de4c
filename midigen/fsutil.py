"""Files on every OS: atomic writes (a reader or a resumed run never sees a half-written file), the
user cache folder, and an advisory lock between processes.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path, data, durable: bool = True) -> None:
    """Write to a temporary file beside ``path``, then rename over it.

    ``data`` is bytes or a list of byte strings. ``durable`` adds fsyncs so the file also survives a
    power cut; without them it still survives any kill of the process (what resumable work needs).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for part in ([data] if isinstance(data, (bytes, bytearray, memoryview)) else data):
                f.write(part)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        _fsync_dir(path.parent)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def cache_dir() -> Path:
    """Downloads and the exported demo corpus live here (env MIDIGEN_CACHE overrides)."""
    env = os.environ.get("MIDIGEN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "midigen"


@contextlib.contextmanager
def file_lock(path):
    """Hold an exclusive lock on ``path`` (created if missing) between processes, waiting for it.

    ``fcntl.flock`` on Linux and macOS, ``msvcrt.locking`` on Windows. Where neither exists the
    block runs unlocked: callers use the lock only to avoid doing the same work twice, and their
    writes are atomic, so two unlocked runs still leave correct files.
    """
    with open(path, "a+b") as f:
        try:
            import fcntl
        except ImportError:
            fcntl = None
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            yield
            return  # closing the file releases the lock
        try:
            import msvcrt
        except ImportError:
            yield
            return
        f.seek(0)
        while True:  # LK_LOCK gives up after 10 s; an export holds the lock for minutes
            try:
                msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
                break
            except OSError:
                time.sleep(0.2)
        try:
            yield
        finally:
            f.seek(0)
            msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)


def sha256_file(path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB pieces (checkpoint and adapter hashes)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
