"""Where `prepare` reads MIDI from: folders, single files, tar/zip archives, Lakh and the demo corpus.

Every source becomes a deterministic stream of ``Entry`` objects (same inputs -> same order, names
and sizes), because chunk boundaries, resume and the final file order are all derived from it.
Archives are read as streams (never extracted); a member is refused before its bytes are read when
its path is unsafe or its size is over the limit, so a hostile archive costs little.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from midigen.errors import MidigenError, UsageError
from midigen.fsutil import cache_dir

MIDI_SUFFIXES = (".mid", ".midi", ".kar", ".rmi")  # .rmi: RIFF-wrapped, unwrapped when read
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
MAX_FILE_BYTES = 16 * 1024 * 1024

LAKH_URL = "http://hog.ee.columbia.edu/craffel/lmd/lmd_full.tar.gz"
LAKH_FILE = "lmd_full.tar.gz"
LAKH_SIZE = 1_768_163_879
LAKH_MD5 = "2536ce3fd2cede53ddaa264f731859ab"


@dataclass
class Entry:
    """One input file. ``data`` is bytes, or a loader called only if the file must be processed
    (a resumed run skips reading files whose chunk is already done); ``reason`` set = refused."""

    name: str
    size: int
    data: bytes | Callable[[], bytes] | None = None
    reason: str | None = None
    path: str | None = None  # a file on disk: prepare's workers read it themselves, in parallel
    source: int = 0  # index of the SOURCE argument it came from (its styles depend on it)

    def load(self) -> bytes | None:
        if callable(self.data):
            self.data = self.data()
        return self.data


def is_midi_name(name: str) -> bool:
    return name.lower().endswith(MIDI_SUFFIXES)


def is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def unsafe_member(name: str) -> bool:
    """Absolute paths, drive letters and '..' components could escape a folder if ever extracted."""
    n = name.replace("\\", "/")
    return n.startswith("/") or (len(n) > 1 and n[1] == ":") or ".." in PurePosixPath(n).parts


def too_big(size: int) -> str | None:
    if size > MAX_FILE_BYTES:
        return f"too large: {size} bytes > {MAX_FILE_BYTES // (1024 * 1024)} MiB"
    return None


# ----- resolving SOURCE arguments ---------------------------------------------------------------


@dataclass
class Source:
    """A resolved SOURCE argument: kind is folder, file, tar or zip; label prefixes entry names."""

    kind: str
    path: Path
    label: str


def resolve(text: str, url: str | None = None, progress: bool = True) -> Source:
    """SOURCE argument -> Source, downloading Lakh or exporting the demo corpus when named."""
    if text == "lakh":
        return Source("tar", download_lakh(url=url, progress=progress), "lakh")
    if text == "demo":
        from midigen.data import corpus  # start-up time: the demo export's modules only when it is named

        return Source("folder", corpus.demo_corpus_dir(progress=progress), "demo")
    p = Path(text)
    label = text.rstrip("/") or text
    if p.is_dir():
        return Source("folder", p, label)
    if not p.exists():
        raise UsageError(f"no such file or folder: {text} (sources are folders, MIDI files, archives, 'lakh', 'demo')")
    if not p.is_file():
        raise UsageError(f"not a regular file: {text}")
    low = p.name.lower()
    if low.endswith(".zip"):
        return Source("zip", p, label)
    if low.endswith((".tar", ".tar.gz", ".tgz")):
        return Source("tar", p, label)
    if is_midi_name(low):
        return Source("file", p, label)
    raise UsageError(
        f"unknown source {text!r}: expected a folder, a .mid/.midi/.kar file, "
        "a .tar/.tar.gz/.tgz/.zip archive, 'lakh' or 'demo'"
    )


def entries(src: Source) -> Iterator[Entry]:
    if src.kind == "folder":
        yield from _folder_entries(src)
    elif src.kind == "file":
        yield _file_entry(src.path, src.label)
    elif src.kind == "tar":
        yield from _tar_entries(src)
    elif src.kind == "zip":
        yield from _zip_entries(src)
    else:  # pragma: no cover - resolve() only makes the kinds above
        raise ValueError(src.kind)


def read_file(path, size: int | None = None) -> bytes:
    """A file's bytes, at most one past the size limit (enough to refuse it). Raises OSError.

    Reads are sized from the file's size (``size`` when the caller already knows it, else fstat):
    asking for the limit up front makes every read allocate 16 MiB, which costs more than reading
    a typical MIDI file. A file that grew meanwhile is still read to its end (or past the limit).
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))  # Windows: no newline translation
    try:
        if size is None:
            size = os.fstat(fd).st_size
        want = min(size, MAX_FILE_BYTES) + 1
        parts, total = [], 0
        while total <= MAX_FILE_BYTES:
            chunk = os.read(fd, want)
            parts.append(chunk)
            total += len(chunk)
            if len(chunk) < want:  # a short read of a regular file is its end
                break
            want = min(1 << 20, MAX_FILE_BYTES + 1 - total)
        return b"".join(parts)
    finally:
        os.close(fd)


def _file_entry(path: str | Path, name: str) -> Entry:
    """A file on disk; ``path`` as a str where the caller has one (a folder walk: no Path per file)."""
    path = os.fspath(path)
    try:
        size = os.stat(path).st_size
    except OSError as e:
        return Entry(name, 0, reason=f"unreadable: {e.strerror}")
    reason = too_big(size)
    if reason:
        return Entry(name, size, reason=reason)
    return Entry(name, size, lambda: read_file(path), path=path)


def _folder_entries(src: Source) -> Iterator[Entry]:
    def walk(folder: Path, rel: str) -> Iterator[Entry]:
        try:
            with os.scandir(folder) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError as e:
            yield Entry(f"{src.label}/{rel}".rstrip("/"), 0, reason=f"unreadable folder: {e.strerror}")
            return
        for e in items:
            r = f"{rel}{e.name}"
            try:
                is_dir = e.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if is_dir:
                yield from walk(Path(e.path), r + "/")
            elif is_midi_name(e.name):
                yield _file_entry(e.path, f"{src.label}/{r}")

    yield from walk(src.path, "")


def _archive_error(src: Source, e: BaseException) -> Entry:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return Entry(src.label, 0, reason=f"unreadable archive: {msg}")


def _tar_entries(src: Source) -> Iterator[Entry]:
    """Stream mode (r|*): members are visited in order, never seeked, never written to disk."""
    try:
        with open(src.path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for m in tar:
                if not is_midi_name(m.name):
                    continue
                name = f"{src.label}:{m.name}"
                if unsafe_member(m.name):
                    yield Entry(name, m.size, reason="unsafe path in archive")
                elif not m.isfile():
                    yield Entry(name, 0, reason="not a regular file in archive")
                elif too_big(m.size):
                    yield Entry(name, m.size, reason=too_big(m.size))
                else:
                    fobj = tar.extractfile(m)
                    yield Entry(name, m.size, fobj.read() if fobj else b"")
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:  # truncated / corrupt archive
        yield _archive_error(src, e)


def _zip_entries(src: Source) -> Iterator[Entry]:
    try:
        zf = zipfile.ZipFile(src.path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        yield _archive_error(src, e)
        return
    with zf:
        for info in zf.infolist():  # names and sizes only (the central directory)
            if info.is_dir() or not is_midi_name(info.filename):
                continue
            name = f"{src.label}:{info.filename}"
            if unsafe_member(info.filename):
                yield Entry(name, info.file_size, reason="unsafe path in archive")
            elif too_big(info.file_size):
                yield Entry(name, info.file_size, reason=too_big(info.file_size))
            else:
                try:
                    with zf.open(info) as fobj:
                        data = fobj.read(MAX_FILE_BYTES + 1)
                except Exception as e:  # bad CRC, encrypted, unsupported compression, ...
                    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    yield Entry(name, info.file_size, reason=f"unreadable archive member: {msg}")
                    continue
                yield Entry(name, info.file_size, data)


# ----- Lakh download -----------------------------------------------------------------------------


def _md5_of(path: Path, h=None) -> "hashlib._Hash":
    h = h or hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h


def download_lakh(url: str | None = None, dest_dir=None, md5: str | None = None, size: int | None = None,
                  progress: bool = True) -> Path:
    """Fetch lmd_full.tar.gz into the cache, resuming a partial download, and verify its md5.

    The archive only takes its final name once the checksum matches, so a failed or corrupt
    download never looks finished. Tests point url/md5/size (or MIDIGEN_LAKH_MD5/SIZE) at a
    local server; the defaults are the real Lakh numbers.
    """
    url = url or LAKH_URL
    md5 = (md5 or os.environ.get("MIDIGEN_LAKH_MD5") or LAKH_MD5).lower()
    size = int(size or os.environ.get("MIDIGEN_LAKH_SIZE") or LAKH_SIZE)
    dest_dir = Path(dest_dir) if dest_dir else cache_dir()
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create cache folder {dest_dir}: {e.strerror}") from None
    final = dest_dir / LAKH_FILE
    stamp = dest_dir / (LAKH_FILE + ".md5")
    if final.exists() and final.stat().st_size == size:
        if stamp.exists() and stamp.read_text().strip() == md5:
            return final
        if _md5_of(final).hexdigest() == md5:
            stamp.write_text(md5 + "\n")
            return final
    part = dest_dir / (LAKH_FILE + ".part")
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    h = _md5_of(part) if have else hashlib.md5()
    if have < size:
        resp = _request(url, have)
        if resp is not None:
            with resp:
                if have and resp.status != 206:  # no Range support: start over
                    have, h = 0, hashlib.md5()
                _save(resp, part, have, size, h, url, progress)
    got_size = part.stat().st_size
    if got_size != size:
        raise MidigenError(
            f"download of {url} is incomplete: {got_size} of {size} bytes (run again to resume)"
        )
    digest = h.hexdigest()
    if digest != md5:
        part.unlink()
        raise MidigenError(
            f"checksum mismatch for {LAKH_FILE}: md5 {digest}, expected {md5}; the download was deleted"
        )
    os.replace(part, final)
    stamp.write_text(md5 + "\n")
    return final


def _request(url: str, have: int):
    """The HTTP response for ``url`` from byte ``have`` on, or None when the server says nothing is left."""
    import urllib.error  # here, not at the top: prepare's workers import this module too
    import urllib.request

    req = urllib.request.Request(url, headers={"User-Agent": "midigen"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        return urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the server says we already have everything
            return None
        raise MidigenError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise MidigenError(f"download of {url} failed: {reason}") from None


def _save(resp, part: Path, have: int, size: int, h, url: str, progress: bool) -> None:
    """Stream ``resp`` into ``part`` (appending after ``have`` bytes), updating the md5 ``h``; fsynced."""
    from tqdm import tqdm

    bar = tqdm(total=size, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
               desc=f"download {LAKH_FILE}", disable=not progress, dynamic_ncols=True)
    try:
        with open(part, "ab" if have else "wb") as out:
            while True:
                try:
                    block = resp.read(1 << 20)
                except OSError as e:
                    raise MidigenError(f"download of {url} interrupted: {e} (run again to resume)") from None
                if not block:
                    break
                out.write(block)
                h.update(block)
                bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
    finally:
        bar.close()
