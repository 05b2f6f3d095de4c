"""The embedded default corpus `demo`: real music from the music21 corpus, exported to MIDI once.

music21 ships scores (MusicXML, ABC) in its wheel, so a fresh clone has real music without any
download. Exporting is slow-ish (0.1-1 s a piece, some pieces far longer), so it runs in worker
processes with a per-piece time limit and is cached; each piece is written atomically and failures
leave a ``.skip`` note, so a killed export resumes where it stopped and never retries a bad piece.
"""
from __future__ import annotations

import time
from pathlib import Path

from midigen.fsutil import atomic_write_bytes, atomic_write_text, cache_dir, file_lock
from midigen.workers import WorkerPool, usable_cpus

DEMO_VERSION = "demo-corpus-v1"
# Picked for notes per CPU second so the first export fits ~2 minutes on 2 cores: Bach chorales
# (~0.15 s a piece) and Ryan's Mammoth fiddle tunes (~0.13 s). Monteverdi (1.1 s a piece, 3x fewer
# notes per second) and the Opus-style collections (essenFolksong, oneills: 5-14 s a file) are left out.
DEMO_COLLECTIONS = (("bach", ".mxl"), ("ryansMammoth", ".abc"))
PIECE_TIMEOUT = 10.0
COMPLETE = ".complete"


def music21_corpus_root() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("music21")
    if spec is None or not spec.origin:
        from midigen.errors import MidigenError

        raise MidigenError("music21 is not installed (pip install music21)")
    return Path(spec.origin).parent / "corpus"


def demo_pieces() -> list[str]:
    """Corpus-relative paths of the demo pieces, sorted (the export order and the file names)."""
    root = music21_corpus_root()
    names = []
    for folder, suffix in DEMO_COLLECTIONS:
        for p in (root / folder).rglob(f"*{suffix}"):
            names.append(p.relative_to(root).as_posix())
    return sorted(names)


def _dest_name(piece: str) -> str:
    return piece.rsplit(".", 1)[0] + ".mid"


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
                from music21 import converter, midi, stream

                score = converter.parse(str(Path(root) / piece))
                if isinstance(score, stream.Opus):
                    score = score.scores[0]
                data = midi.translate.music21ObjectToMidiFile(score).writestr()
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
    """Export music21 corpus pieces (corpus-relative paths) to ``dest``; finished pieces are kept."""
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
        pool = WorkerPool(workers, "midigen.corpus:export_task", timeout)
        try:
            pool.run(tasks, lambda _id, result: bar.update(sum(result)))
        finally:
            pool.close()
    bar.close()
    return dest


def demo_corpus_dir(progress: bool = True, limit: int | None = None) -> Path:
    """Folder of the demo corpus as .mid files, exporting it on first use (about 2 minutes).

    ``limit`` exports only the first N pieces (spread over the collections) into a separate folder,
    for tests that need real music fast.
    """
    pieces = demo_pieces()
    if limit is not None:
        step = max(1, len(pieces) // max(1, limit))
        pieces = pieces[::step][:limit]
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
