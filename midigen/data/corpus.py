"""The embedded default corpus `demo`: real music from the music21 corpus, exported to MIDI once.

music21 ships scores (MusicXML, ABC, Humdrum) in its wheel, so a fresh clone has real music without
any download. Each collection of `midigen.data.ensembles` (a style: chorale, palestrina, quartet, fiddle,
tune-with-chords) is exported into its own folder, ``<cache>/demo-corpus-v2/<collection>/...``, with
every part on its own instrument. Exporting runs in worker processes with a per-piece time limit
and is cached; each piece is written atomically and failures leave a ``.skip`` note, so a killed
export resumes where it stopped and never retries a bad piece.
"""
from __future__ import annotations

import time
from pathlib import Path

from midigen.fsutil import atomic_write_bytes, atomic_write_text, cache_dir, file_lock
from midigen.data.workers import WorkerPool, usable_cpus
from midigen.data.ensembles import COLLECTIONS, export_piece
from midigen.errors import MidigenError

DEMO_VERSION = "demo-corpus-v2"
PIECE_TIMEOUT = 20.0
COMPLETE = ".complete"


def music21_corpus_root() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("music21")
    if spec is None or not spec.origin:
        raise MidigenError("music21 is not installed (pip install music21)")
    return Path(spec.origin).parent / "corpus"


def demo_pieces() -> list[str]:
    """The demo pieces as ``<collection>/<corpus-relative path>``, sorted (export order and file names)."""
    root = music21_corpus_root()
    return sorted(f"{name}/{path}" for name, spec in COLLECTIONS.items() for path in spec.files(root))


def _dest_name(piece: str) -> str:
    return piece.rsplit(".", 1)[0] + ".mid"


def demo_style(relpath: str) -> str | None:
    """The collection (style) of a file of the exported corpus, from its path under the corpus folder."""
    head = Path(relpath).parts[0] if Path(relpath).parts else ""
    return head if head in COLLECTIONS else None


def demo_styles(folder: str | Path | None = None) -> dict[str, str]:
    """Exported file (path relative to the corpus folder) -> its collection, for `prepare` to tag.

    ``folder`` defaults to the full demo corpus in the cache; nothing is exported here.
    """
    folder = Path(folder) if folder is not None else cache_dir() / DEMO_VERSION
    out = {}
    for p in sorted(folder.rglob("*.mid")):
        rel = p.relative_to(folder).as_posix()
        style = demo_style(rel)
        if style:
            out[rel] = style
    return out


def export_task(payload, failed: dict, state) -> tuple:
    """Worker task: export pieces to MIDI; returns (exported, skipped) counts."""
    import warnings

    root, dest, pieces = payload
    done = skipped = 0
    for i, piece in enumerate(pieces):
        state[0], state[1] = i, time.monotonic()
        out = Path(dest) / _dest_name(piece)
        skip = out.with_name(out.name + ".skip")
        if out.exists():
            done += 1
            continue
        if skip.exists():
            skipped += 1
            continue
        if i in failed:
            atomic_write_text(skip, failed[i] + "\n")
            skipped += 1
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")

                collection, path = piece.split("/", 1)
                data = export_piece(root, collection, path)
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            atomic_write_text(skip, f"{type(e).__name__}: {msg}\n")
            skipped += 1
            continue
        atomic_write_bytes(out, data)
        done += 1
    state[1] = 0.0
    return done, skipped


def export_subset(pieces, dest, progress: bool = True, workers: int | None = None,
                  timeout: float = PIECE_TIMEOUT, batch: int = 8) -> Path:
    """Export demo pieces (``<collection>/<corpus path>``) to ``dest``; finished pieces are kept."""
    from tqdm import tqdm

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = str(music21_corpus_root())
    pieces = list(pieces)
    todo = [p for p in pieces if not (dest / _dest_name(p)).exists()
            and not (dest / (_dest_name(p) + ".skip")).exists()]
    bar = tqdm(total=len(pieces), initial=len(pieces) - len(todo), unit="piece",
               desc="export demo corpus", disable=not progress, dynamic_ncols=True)
    if todo:
        workers = workers or min(usable_cpus(), max(1, len(todo) // batch))
        tasks = ((k, (root, str(dest), todo[k : k + batch]), len(todo[k : k + batch]))
                 for k in range(0, len(todo), batch))
        pool = WorkerPool(workers, "midigen.data.corpus:export_task", timeout)
        try:
            pool.run(tasks, lambda _id, result: bar.update(sum(result)))
        finally:
            pool.close()
    bar.close()
    return dest


def spread(pieces: list[str], limit: int) -> list[str]:
    """At most ``limit`` pieces, the same number from each collection, evenly spaced within it."""
    groups: dict[str, list[str]] = {}
    for p in pieces:
        groups.setdefault(p.split("/", 1)[0], []).append(p)
    per = max(1, limit // max(1, len(groups)))
    out = []
    for group in groups.values():
        out += group[:: max(1, len(group) // per)][:per]
    return out[:limit]


def demo_corpus_dir(progress: bool = True, limit: int | None = None) -> Path:
    """Folder of the demo corpus as .mid files, exporting it on first use (about 3 minutes).

    ``limit`` exports only N pieces (spread over the collections) into a separate folder, for tests
    that need real music fast.
    """
    pieces = demo_pieces()
    if limit is not None:
        pieces = spread(pieces, limit)
        dest = cache_dir() / f"{DEMO_VERSION}-first{limit}"
    else:
        dest = cache_dir() / DEMO_VERSION
    marker = dest / COMPLETE
    if marker.exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    # Two runs started together (a test session and a `prepare demo`) share one export.
    with file_lock(dest.parent / f".{dest.name}.lock"):
        if marker.exists():
            return dest
        t0 = time.monotonic()
        export_subset(pieces, dest, progress=progress)
        n = sum(1 for _ in dest.rglob("*.mid"))
        atomic_write_text(marker, f"{n} files exported in {time.monotonic() - t0:.1f} s\n")
    return dest
