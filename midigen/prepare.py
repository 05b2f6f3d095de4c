"""`midigen prepare`: MIDI sources -> train/val/test token files, in parallel, resumable, deterministic.

Design, and why:
- The sources are enumerated in a fixed order and cut into chunks by file count and byte size
  (both known before reading), so a chunk's identity does not depend on timing or worker count.
- Worker processes encode whole chunks (few round trips) and each writes one shard file into
  ``DIR/.work`` atomically. A killed run keeps its finished shards; the rerun skips them. Files on
  disk are read by the workers themselves (the parent sends paths), so reading scales with them;
  archive members arrive as bytes. Each file goes read -> hash -> parse -> encode -> free, with
  the compiled encoder (``codec_jit``) when it passes its check and the numpy one otherwise.
- A supervisor watches each worker's current file: a worker that crashes or runs past the per-file
  time limit is killed and replaced, that file is recorded as skipped, and the chunk is redone
  without it.
- The merge follows the workers: as soon as the next shard in chunk order exists it is merged
  (duplicate contents dropped, first one wins; the split from the content hash, so adding files
  never moves old ones; tokens streamed into the .bin files), so little is left when the last
  chunk finishes. Outputs are written under ``.work`` and published with atomic renames at the
  end. Memory stays at a few chunks.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import signal
import struct
import sys
import time
from collections import Counter, deque
from pathlib import Path

import numpy as np

from midigen.errors import MidigenError, UsageError
from midigen.fsutil import _fsync_dir, atomic_write_bytes
from midigen import sources as S

# ----- the filter rule --------------------------------------------------------------------------

MIN_NOTES = 8
MAX_NOTES = 200_000
MAX_SECONDS = 2 * 3600.0
FILTER_RULE = (
    f"skip a file that is empty, larger than {S.MAX_FILE_BYTES // (1024 * 1024)} MiB, not readable as "
    f"Standard MIDI (format 0/1/2, ticks per quarter; SMPTE time is refused), has fewer than {MIN_NOTES} "
    f"or more than {MAX_NOTES} notes, or lasts over {MAX_SECONDS / 3600:g} hours once silences longer "
    "than 4 bars are shortened; an exact duplicate of an earlier file is kept once; a file that crashes "
    "a worker or takes longer than the per-file time limit is skipped"
)

CHUNK_FILES = 256  # per-chunk costs (a shard file, a round trip) stay under 3 us a file
CHUNK_BYTES = 8 * 1024 * 1024
SHARD_MAGIC = b"MGSHARD1"
SPLITS = ("train", "val", "test")
JOB_VERSION = 1


def _chunk_files() -> int:
    """Files per chunk; MIDIGEN_CHUNK_FILES lets tests force many small chunks."""
    return max(1, int(os.environ.get("MIDIGEN_CHUNK_FILES", CHUNK_FILES)))


def split_of(hash_hex: str, val_frac: float, test_frac: float) -> str:
    """The split is a pure function of the content hash, so it never moves when files are added."""
    u = int(hash_hex[:16], 16) / float(1 << 64)
    if u < val_frac:
        return "val"
    if u < val_frac + test_frac:
        return "test"
    return "train"


def reason_key(reason: str) -> str:
    """Histogram bucket of a skip reason: its text before the first ':' ('duplicate' for duplicates)."""
    if reason.startswith("duplicate of "):
        return "duplicate"
    return reason.split(":", 1)[0].strip()


# ----- worker side ------------------------------------------------------------------------------


class _Encoder:
    """Per-process codec: the compiled encoder (``codec_jit``) when it passes its check, else numpy."""

    def __init__(self):
        from midigen.codec import Codec, CodecError

        self.CodecError = CodecError
        self.codec = Codec()
        c = self.codec
        self.fast = None
        if os.environ.get("MIDIGEN_NO_JIT", "") in ("", "0"):  # MIDIGEN_NO_JIT=1: numpy only, no numba
            try:
                from midigen import codec_jit

                self.fast = codec_jit.CompiledEncoder(c) if codec_jit.available(c) else None
            except Exception:  # numba unusable here (no cache location, ...): numpy does the same work
                self.fast = None
        self.shift = c.shift_steps()
        spq = c.params.steps_per_quarter
        self.sec_per_step = np.zeros(c.vocab_size)
        self.sec_per_step[c.tempo_start : c.ts_start] = 60.0 / (c.tempo_bpm * spq)
        self.default_sps = 60.0 / (120.0 * spq)

    def seconds(self, tokens: np.ndarray) -> float:
        t = tokens.astype(np.int64)
        cum = np.cumsum(self.shift[t])
        pos = np.flatnonzero(self.sec_per_step[t] > 0)
        if len(pos) == 0:
            return float(cum[-1]) * self.default_sps
        starts = cum[pos]
        ends = np.append(starts[1:], cum[-1])
        rates = self.sec_per_step[t[pos]]
        return float(starts[0] * rates[0] + np.sum((ends - starts) * rates))

    def read(self, data: bytes):
        """-> (score, None) or (None, reason): the per-file half (parse, size and note-count checks)."""
        CodecError = self.CodecError
        if len(data) == 0:
            return None, "empty file"
        if S.too_big(len(data)):
            return None, S.too_big(len(data))
        try:
            score = self.codec.read_midi(data)
            n = score.note_num()
        except CodecError as e:
            return None, str(e)
        except Exception as e:  # a parser bug on a hostile file must cost that file only
            return None, _describe("unreadable MIDI", e)
        if n > MAX_NOTES:
            return None, f"too many notes: {n} > {MAX_NOTES}"
        return score, None

    def encode_scores(self, scores) -> list:
        """Scores -> [(tokens or exception, None, None)] through the numpy encoder, batched if it can."""
        if len(scores) > 1:
            try:
                return [(out, None, None) for out in self.codec.encode_scores(scores)]
            except Exception:
                pass  # fall back to one at a time, so only the bad score fails
        out = []
        for sc in scores:
            try:
                out.append((self.codec.encode_score(sc), None, None))
            except Exception as e:
                out.append((e, None, None))
        return out

    def check(self, result) -> tuple[np.ndarray | None, int, float, str | None]:
        """Encoder output -> (tokens, notes, seconds, None) or (None, 0, 0, reason): the filter rule on tokens."""
        tokens, notes, secs = result
        if isinstance(tokens, self.CodecError):
            return None, 0, 0.0, str(tokens)
        if isinstance(tokens, BaseException):
            return None, 0, 0.0, _describe("encode failed", tokens)
        if notes is None:
            notes, secs = self.codec.count_notes(tokens), self.seconds(tokens)
        if notes < MIN_NOTES:
            return None, 0, 0.0, f"too few notes: {notes} < {MIN_NOTES}"
        if notes > MAX_NOTES:
            return None, 0, 0.0, f"too many notes: {notes} > {MAX_NOTES}"
        if secs > MAX_SECONDS:
            return None, 0, 0.0, f"too long: {secs / 3600:.1f} h > {MAX_SECONDS / 3600:g} h"
        return tokens, notes, float(secs), None

    def song_fields(self, score, tokens, secs: float) -> dict:
        """The facts a kept file's row records for the controls: key (and where from), meter, length."""
        from midigen.keys import song_key

        key, source = song_key(self.codec, score, tokens)
        head = tokens[: self.codec.header_length(tokens[:200])]
        ts = [self.codec.time_signatures[int(t) - self.codec.ts_start] for t in head
              if self.codec.ts_start <= t < self.codec.inst_start]
        return {"key": key, "key_source": source, "time_signature": f"{ts[0][0]}/{ts[0][1]}" if ts else None,
                "seconds": round(secs, 3)}


def _describe(prefix: str, e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{prefix}: {type(e).__name__} {msg}".strip()


_HOOK = os.environ.get("MIDIGEN_TEST_HOOK")  # read once: workers are fresh processes


def _test_hook(name: str, batch: bool = False) -> None:
    """MIDIGEN_TEST_HOOK='hang:PAT,abort:PAT,segv:PAT,sleep2.5:PAT' misbehaves on names containing PAT.

    Only for tests of the supervisor (a real hang, abort or segfault inside a worker). Actions
    prefixed 'batch' (batchabort:PAT) fire in the batched encode of a chunk holding PAT instead.
    """
    if not _HOOK:
        return
    for part in _HOOK.split(","):
        action, _, pat = part.partition(":")
        if not pat or pat not in name or action.startswith("batch") != batch:
            continue
        action = action[5:] if batch else action
        if action == "hang":
            while True:
                time.sleep(1)
        elif action == "abort":
            os.abort()
        elif action == "segv":
            ctypes.string_at(0)
        elif action.startswith("sleep"):
            time.sleep(float(action[5:] or 1))


_ENCODER = None


def _write_shard(path: Path, header: dict, blobs: list) -> None:
    head = json.dumps(header, separators=(",", ":")).encode()
    atomic_write_bytes(path, [SHARD_MAGIC + struct.pack("<Q", len(head)) + head, *blobs], durable=False)


def read_shard_header(path: Path) -> tuple[dict, int]:
    """(header, byte offset of the token blob); raises ValueError on a damaged shard."""
    with open(path, "rb") as f:
        pre = f.read(16)
        if len(pre) != 16 or pre[:8] != SHARD_MAGIC:
            raise ValueError("bad shard")
        (n,) = struct.unpack("<Q", pre[8:])
        head = json.loads(f.read(n))
    return head, 16 + n


BATCH_PHASE = -2  # the worker's "current item" while it encodes the whole chunk at once


def encode_chunk(payload, failed: dict, state) -> tuple:
    """Worker task: encode one chunk and write its shard. Returns (files, kept, notes).

    With the compiled encoder each file goes read -> parse -> encode -> free in turn, so its data
    is still in cache at every step and a crash anywhere is blamed on that file. The numpy encoder
    instead parses file by file and encodes the chunk in one batched call; if that batch crashed
    or hung, the retry encodes file by file.
    """
    global _ENCODER
    if _ENCODER is None:
        _ENCODER = _Encoder()
    enc = _ENCODER
    shard_path, chunk_id, key, items, *options = payload
    want_md5 = bool(options and options[0])  # --styles keyed by content md5
    rows: list[dict] = []
    parsed: list[tuple[int, object]] = []  # numpy path: scores waiting for the batched encode
    blobs: list = []  # numpy path: token arrays of kept files
    written = 0  # compiled path: kept tokens so far, back to back in the encoder's buffer
    for i, (name, data, reason) in enumerate(items):
        state[0], state[1] = i, time.monotonic()
        if isinstance(data, tuple):  # (path, size): files on disk are read here, spreading the I/O
            try:
                data = S.read_file(*data)
            except OSError as err:
                data, reason = None, reason or f"unreadable: {err.strerror}"
        digest = hashlib.blake2b(data, digest_size=16).hexdigest() if data is not None else None
        if reason is None and i in failed:
            reason = failed[i]
        if reason is None and data is None:
            reason = "unreadable"
        row = {"name": name, "hash": digest}
        if want_md5 and data is not None:
            row["md5"] = hashlib.md5(data).hexdigest()
        if reason is None:
            _test_hook(name)
            score, reason = enc.read(data)
            if reason is None and enc.fast is not None:
                tokens, notes, secs, reason = enc.check(enc.fast.encode_one(score, written))
                if reason is None:
                    row.update(notes=notes, tokens=len(tokens), **enc.song_fields(score, tokens, secs))
                    written += len(tokens)
                del score
            elif reason is None:
                parsed.append((i, score))
        if reason is not None:
            row["reason"] = reason
        rows.append(row)
    if parsed:
        if BATCH_PHASE in failed:
            outs = []
            for i, score in parsed:
                state[0], state[1] = i, time.monotonic()
                outs.append(enc.encode_scores([score])[0])
        else:
            state[0], state[1] = BATCH_PHASE, time.monotonic()
            for i, _ in parsed:
                _test_hook(items[i][0], batch=True)
            outs = enc.encode_scores([sc for _, sc in parsed])
        for (i, score), out in zip(parsed, outs):
            tokens, notes, secs, reason = enc.check(out)
            if reason is not None:
                rows[i]["reason"] = reason
                continue
            rows[i].update(notes=notes, tokens=len(tokens), **enc.song_fields(score, tokens, secs))
            blobs.append(tokens)
    kept_rows = [r for r in rows if "tokens" in r]
    if written:
        blobs = [enc.fast.written(written)]
    elif blobs:
        blobs = [np.concatenate(blobs)]
    state[0], state[1] = len(items), time.monotonic()
    if os.getppid() != _PARENT[0]:  # the run was killed: leave nothing behind
        os._exit(0)
    _write_shard(Path(shard_path), {"chunk": chunk_id, "key": key, "rows": rows}, blobs)
    state[1] = 0.0
    return len(items), len(kept_rows), sum(r["notes"] for r in kept_rows)


_PARENT = [0]


def _worker_main(conn, state, target) -> None:
    """Loop: receive a task, run it, send the result. Exits when the parent goes away."""
    _PARENT[0] = os.getppid()
    try:  # Linux: die with the parent, so a SIGKILLed run leaves no orphans
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    except Exception:
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    module, _, fn_name = target.partition(":")
    import importlib

    fn = getattr(importlib.import_module(module), fn_name)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:  # done: skip interpreter teardown (numba's alone takes ~0.2 s); nothing is buffered
            os._exit(0)
        task_id, payload, failed = msg
        result = fn(payload, failed, state)
        try:
            conn.send((task_id, result))
        except (BrokenPipeError, OSError):
            return


# ----- the supervisor ---------------------------------------------------------------------------


class _Worker:
    def __init__(self, ctx, target):
        self.state = ctx.RawArray("d", 2)
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, self.state, target), daemon=True)
        self.proc.start()
        child.close()
        self.job = None

    def kill(self) -> None:
        try:
            self.proc.kill()
        except Exception:
            pass
        self.proc.join(5)
        self.conn.close()


class WorkerPool:
    """Runs tasks (lists of items) in worker processes; one bad item costs that item only.

    A task is (task_id, payload, n_items). The worker records which item it is on in shared memory;
    if it dies or spends more than ``timeout`` s on one item, it is killed and replaced and the task
    is sent again with that item marked failed (``failed`` maps item index -> reason).
    """

    def __init__(self, workers: int, target: str, timeout: float):
        import multiprocessing as mp

        self.ctx = mp.get_context("spawn")
        self.target = target
        self.timeout = timeout
        self.workers = [_Worker(self.ctx, target) for _ in range(workers)]

    def close(self) -> None:
        for w in self.workers:
            try:
                w.conn.send(None)
            except Exception:
                pass
        for w in self.workers:
            w.proc.join(2)
            if w.proc.is_alive():
                w.kill()

    def run(self, tasks, on_result) -> None:
        from multiprocessing.connection import wait

        it = iter(tasks)
        queue: deque = deque()  # (task_id, payload, n_items, failed, retries)
        exhausted = False

        def refill():
            nonlocal exhausted
            while not exhausted and len(queue) < len(self.workers):
                t = next(it, None)
                if t is None:
                    exhausted = True
                else:
                    queue.append((t[0], t[1], t[2], {}, 0))

        def dispatch():
            refill()
            for w in self.workers:
                if w.job is None and queue:
                    job = queue.popleft()
                    w.state[0], w.state[1] = -1, 0.0
                    w.job = job
                    try:
                        w.conn.send((job[0], job[1], job[3]))
                    except OSError:  # it died before its first task: handled as a crash below
                        pass

        finished = []
        while True:
            dispatch()
            # Idle workers have their next task: results are handled (merged) while they encode.
            for task_id, result in finished:
                on_result(task_id, result)
            finished.clear()
            refill()  # read ahead while the workers encode
            busy = [w for w in self.workers if w.job is not None]
            if not busy:
                if exhausted and not queue:
                    return
                continue
            wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=0.2)
            now = time.monotonic()
            for i, w in enumerate(self.workers):
                if w.job is None:
                    continue
                result = None
                got = False
                try:
                    if w.conn.poll():
                        task_id, result = w.conn.recv()
                        got = True
                except (EOFError, OSError):
                    pass
                if got:
                    job, w.job = w.job, None
                    finished.append((job[0], result))
                    continue
                started = w.state[1]
                if w.proc.is_alive() and not (started > 0 and now - started > self.timeout):
                    continue
                why = (f"timed out after {self.timeout:g} s" if w.proc.is_alive()
                       else f"worker crashed (exit code {w.proc.exitcode})")
                idx = int(w.state[0])
                job = w.job
                w.kill()
                self.workers[i] = _Worker(self.ctx, self.target)
                task_id, payload, n, failed, retries = job
                if 0 <= idx < n or (idx == BATCH_PHASE and BATCH_PHASE not in failed):
                    failed = {**failed, idx: why}
                else:
                    retries += 1
                    if retries > 2:
                        raise MidigenError(f"a worker failed 3 times outside any file ({why})")
                queue.appendleft((task_id, payload, n, failed, retries))


# ----- the run ------------------------------------------------------------------------------------


def _check_numbers(workers, val_frac, test_frac, timeout) -> None:
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise UsageError(f"--workers must be a whole number >= 1, got {workers!r}")
    for flag, v in (("--val-frac", val_frac), ("--test-frac", test_frac)):
        if not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise UsageError(f"{flag} must be a fraction in [0, 1), got {v!r}")
    if val_frac + test_frac >= 1.0:
        raise UsageError(f"--val-frac + --test-frac must be < 1, got {val_frac + test_frac:g}")
    if not isinstance(timeout, (int, float)) or not timeout > 0:
        raise UsageError(f"--timeout must be a number of seconds > 0, got {timeout!r}")


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    p = out
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out} is not writable")


def _chunks(srcs, work: Path):
    """Yield (chunk_id, key, entries) with boundaries from names and sizes only."""
    limit = _chunk_files()
    buf, size, cid = [], 0, 0

    def close():
        h = hashlib.blake2b(digest_size=8)
        for e in buf:
            h.update(f"{e.name}\0{e.size}\0{e.reason}\n".encode())
        return cid, h.hexdigest(), buf

    for i, src in enumerate(srcs):
        for e in S.entries(src):
            e.source = i
            buf.append(e)
            size += e.size if e.reason is None else 0
            if len(buf) >= limit or size >= CHUNK_BYTES:
                yield close()
                buf, size, cid = [], 0, cid + 1
    if buf:
        yield close()


def prepare(sources, out, workers=None, val_frac=0.01, test_frac=0.01, url=None, timeout=60.0,
            progress=True, style_from=None, styles=None) -> dict:
    """Prepare a dataset folder from MIDI sources; returns the run summary (see module docstring).

    ``STYLE=PATH`` sources, ``style_from`` and ``styles`` (a csv) tag files with styles (``midigen.styles``).
    """
    from midigen.styles import make_tagger, split_source

    t0 = time.monotonic()
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    named = [split_source(str(s)) for s in sources]
    sources = [s for s, _ in named]
    if not sources:
        raise UsageError("no sources given")
    tagger = make_tagger(named, style_from, styles)
    _check_numbers(workers, val_frac, test_frac, timeout)
    out = Path(out)
    _check_out(out)
    # Check every local path before any download or export starts.
    for s in sources:
        if s not in ("lakh", "demo"):
            S.resolve(s)
    srcs = [S.resolve(s, url=url, progress=progress) for s in sources]
    workers = workers or len(os.sched_getaffinity(0))

    try:
        out.mkdir(parents=True, exist_ok=True)
        work = out / ".work"
        job = {"version": JOB_VERSION, "codec": _codec_dict(), "filter": FILTER_RULE, "chunk_files": _chunk_files(),
               "chunk_bytes": CHUNK_BYTES, "md5": tagger.needs_md5}
        job_path = work / "job.json"
        if work.exists():
            try:
                same = json.loads(job_path.read_text()) == job
            except (OSError, ValueError):
                same = False
            if not same:
                shutil.rmtree(work)
        work.mkdir(exist_ok=True)
        if not job_path.exists():
            from midigen.fsutil import atomic_write_json

            atomic_write_json(job_path, job)
    except OSError as e:
        raise UsageError(f"--out {out} is not writable: {e.strerror}") from None

    chunk_list: list[tuple[int, str]] = []
    stats = {"files": 0, "kept": 0, "notes": 0, "reused": 0}
    from tqdm import tqdm

    bar = tqdm(unit="file", desc="prepare", disable=not progress, file=sys.stderr, dynamic_ncols=True,
               smoothing=0.1)

    def shard_path(cid, key):
        return work / f"{cid:08d}-{key}.shard"

    def show(files, kept, notes):
        stats["files"] += files
        stats["kept"] += kept
        stats["notes"] += notes
        bar.update(files)
        bar.set_postfix(kept=stats["kept"], skipped=stats["files"] - stats["kept"], refresh=False)

    def tasks():
        for cid, key, entries in _chunks(srcs, work):
            chunk_list.append((cid, key))
            merge.tags[cid] = [tagger.by_name(e.source, srcs[e.source].label, srcs[e.source].kind, e.name)
                               for e in entries]
            p = shard_path(cid, key)
            if p.exists():
                try:
                    head, _ = read_shard_header(p)
                    if head["key"] == key and len(head["rows"]) == len(entries):
                        rows = head["rows"]
                        kept = [r for r in rows if "reason" not in r]
                        stats["reused"] += len(rows)
                        show(len(rows), len(kept), sum(r["notes"] for r in kept))
                        merge.ready(cid)
                        continue
                except (OSError, ValueError, KeyError):
                    pass
                p.unlink(missing_ok=True)
            items = []
            for e in entries:
                data = None
                reason = e.reason
                if reason is None and e.path is not None:
                    data = (e.path, e.size)  # the worker reads it
                elif reason is None:
                    try:
                        data = e.load()
                    except OSError as err:
                        reason = f"unreadable: {err.strerror}"
                items.append((e.name, data, reason))
            yield cid, (str(p), cid, key, items, tagger.needs_md5), len(items)

    def done(cid, result):
        show(*result)
        merge.ready(cid)

    merge = _Merge(work, chunk_list, val_frac, test_frac, tagger)
    pool = WorkerPool(workers, "midigen.prepare:encode_chunk", timeout)
    try:
        pool.run(tasks(), done)
    except BaseException:
        merge.close()
        raise
    finally:
        pool.close()
        bar.close()
    if stats["files"] == 0:
        merge.close()
        shutil.rmtree(work, ignore_errors=True)
        raise MidigenError("no MIDI files (.mid, .midi, .kar) found in " + ", ".join(sources))
    try:
        summary = merge.finish(out, sources)
    finally:
        merge.close()
    secs = time.monotonic() - t0
    summary.update({
        "reused_files": stats["reused"],
        "workers": workers,
        "seconds": round(secs, 3),
        "files_per_s": round(summary["files_seen"] / secs, 1) if secs > 0 else None,
        "notes_per_s": round(summary["notes"] / secs, 1) if secs > 0 else None,
    })
    if summary["kept"] == 0:
        print(f"midigen prepare: warning: no file was usable; see {out / 'files.jsonl'}", file=sys.stderr)
    return summary


def _codec_dict() -> dict:
    from midigen.codec import Codec

    return Codec().to_dict()


class _Merge:
    """Streams finished shards, in chunk order, into the split files while later chunks encode.

    Duplicates are dropped (first one wins), splits come from the content hash, and nothing is
    published until ``finish``: the outputs are written under ``.work`` and renamed into place.
    A killed run leaves only temporaries, which the rerun truncates and writes again.
    """

    def __init__(self, work: Path, chunk_list: list, val_frac: float, test_frac: float, tagger=None):
        from midigen.styles import StyleTagger

        self.work, self.chunk_list = work, chunk_list
        self.tagger = tagger or StyleTagger([], [])
        self.tags: dict[int, list] = {}  # chunk -> styles known from names, per entry (set as chunks are listed)
        self.counts = {"styles": Counter(), "keys": Counter(), "key_sources": Counter(), "time_signatures": Counter()}
        self.val_frac, self.test_frac = val_frac, test_frac
        self.first_of: dict[str, str] = {}
        self.split_stats = {s: {"files": 0, "notes": 0, "tokens": 0} for s in SPLITS}
        self.reasons: Counter = Counter()
        self.seen = self.kept = self.dups = 0
        self.done: set[int] = set()
        self.next = 0  # index into chunk_list of the next shard to merge
        self.tmp = {s: work / f"{s}.bin.tmp" for s in SPLITS}
        self.bins = {s: open(self.tmp[s], "wb") for s in SPLITS}
        self.rows_tmp = work / "files.jsonl.tmp"
        self.rows_out = open(self.rows_tmp, "w", encoding="utf-8")

    def ready(self, cid: int) -> None:
        """Chunk ``cid`` has its shard; merge every shard now complete in order."""
        self.done.add(cid)
        while self.next < len(self.chunk_list) and self.chunk_list[self.next][0] in self.done:
            self._merge_one(*self.chunk_list[self.next])
            self.done.discard(self.chunk_list[self.next][0])
            self.next += 1

    def _merge_one(self, cid: int, key: str) -> None:
        path = self.work / f"{cid:08d}-{key}.shard"
        head, at = read_shard_header(path)
        blob = np.fromfile(path, dtype=np.uint16, offset=at)
        pos = 0
        lines = []
        tags = self.tags.pop(cid, None) or [[] for _ in head["rows"]]
        for r, tag in zip(head["rows"], tags):
            self.seen += 1
            split = skipped = offset = None
            notes = n_tok = 0
            if "reason" in r:
                skipped = r["reason"]
            else:
                n = r["tokens"]
                start, pos = pos, pos + n
                first = self.first_of.get(r["hash"])
                if first is not None:
                    skipped = f"duplicate of {first}"
                    self.dups += 1
                else:
                    self.first_of[r["hash"]] = r["name"]
                    split = split_of(r["hash"], self.val_frac, self.test_frac)
                    st = self.split_stats[split]
                    notes, n_tok, offset = r["notes"], n, st["tokens"]
                    self.bins[split].write(blob[start:pos])
                    st["files"] += 1
                    st["notes"] += notes
                    st["tokens"] += n
                    self.kept += 1
            if skipped is not None:
                self.reasons[reason_key(skipped)] += 1
            row = {"name": r["name"], "hash": r["hash"], "split": split, "skipped": skipped,
                   "notes": notes, "tokens": n_tok, "offset": offset, **self._song_facts(r, tag, split)}
            lines.append(json.dumps(row, ensure_ascii=False))
        lines.append("")
        self.rows_out.write("\n".join(lines))

    def _song_facts(self, r: dict, tag: list, split: str | None) -> dict:
        """A row's styles, key, meter and length (kept files), counted for meta.json."""
        if split is None:
            return {"styles": [], "key": None, "key_source": None, "time_signature": None, "seconds": None}
        styles = sorted(set(tag) | set(self.tagger.by_md5(r.get("md5"))))
        facts = {"styles": styles, "key": r.get("key"), "key_source": r.get("key_source"),
                 "time_signature": r.get("time_signature"), "seconds": r.get("seconds")}
        c = self.counts
        c["styles"].update(styles)
        for name, value in (("keys", facts["key"]), ("key_sources", facts["key_source"]),
                            ("time_signatures", facts["time_signature"] or "none")):
            if value is not None:
                c[name][value] += 1
        return facts

    def close(self) -> None:
        for f in (*self.bins.values(), self.rows_out):
            f.close()

    def finish(self, out: Path, sources) -> dict:
        """Merge what is left, fsync, write meta.json, and publish every output with a rename."""
        for cid, _ in self.chunk_list[self.next :]:
            self.ready(cid)  # every chunk has its shard by now
        for f in (*self.bins.values(), self.rows_out):
            f.flush()
            os.fsync(f.fileno())
        self.close()
        codec = _codec_dict()
        split_stats, seen, kept = self.split_stats, self.seen, self.kept
        meta = {
            "codec": codec,
            "vocab_size": codec["vocab_size"],
            "dtype": "uint16",
            "splits": split_stats,
            "split_rule": f"by content hash (blake2b-128): val {self.val_frac:g}, test {self.test_frac:g}, rest train",
            "sources": list(sources),
            "files": seen,
            "kept": kept,
            "skipped": {"count": seen - kept, "reasons": dict(sorted(self.reasons.items()))},
            "styles": dict(sorted(self.counts["styles"].items())),
            "style_rule": self.tagger.describe(),
            "keys": dict(self.counts["keys"].most_common()),
            "key_sources": dict(sorted(self.counts["key_sources"].items())),
            "time_signatures": dict(self.counts["time_signatures"].most_common()),
            "filter": {"rule": FILTER_RULE, "min_notes": MIN_NOTES, "max_notes": MAX_NOTES,
                       "max_seconds": MAX_SECONDS, "max_file_bytes": S.MAX_FILE_BYTES},
        }
        work = self.work
        meta_tmp = work / "meta.json.tmp"
        with open(meta_tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(meta, indent=1, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        for s in SPLITS:
            os.replace(self.tmp[s], out / f"{s}.bin")
        os.replace(self.rows_tmp, out / "files.jsonl")
        os.replace(meta_tmp, out / "meta.json")
        _fsync_dir(out)
        shutil.rmtree(work, ignore_errors=True)
        return {
            "out": str(out),
            "files_seen": seen,
            "kept": kept,
            "skipped": seen - kept,
            "duplicates": self.dups,
            "splits": split_stats,
            "tokens": sum(s["tokens"] for s in split_stats.values()),
            "notes": sum(s["notes"] for s in split_stats.values()),
            "styles": meta["styles"],
        }
