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
  (duplicate contents dropped, first one wins; the split from the file alone, ``midigen.data.splits``,
  so adding files never moves old ones; tokens streamed into the .bin files), so little is left
  when the last chunk finishes. Memory stays at a few chunks.
- Outputs are written under ``.work`` and published as one set, with ``meta.json`` as the commit
  record: it is removed before the first rename and renamed into place after the last, and
  ``midigen.data.dataset`` only trusts files it opened while one same ``meta.json`` stood. A kill at any
  point, or a reader arriving at any point, never pairs new token files with old offsets. (Why not
  one directory swap: a folder cannot atomically replace a non-empty one with portable calls, and
  swapping a symlink needs privileges on Windows.)
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from midigen.data import sources as S
from midigen.errors import MidigenError, UsageError
from midigen.fsutil import _fsync_dir, atomic_write_bytes, atomic_write_json
from midigen.data.splits import SPLITS, SplitRule, ensure_each_split
from midigen.data.workers import WHOLE_TASK, WorkerPool, parent_alive, usable_cpus
from midigen.data.keys import estimate_keys, score_signature_key, song_key
from midigen.data.styles import add_duplicate_styles, make_tagger, split_source, StyleTagger
from midigen.music.codec import CODEC_VERSION, Codec, CodecError, key_name
from midigen.music.smf import checked_smf, unwrap_rmid

# ----- the filter rule --------------------------------------------------------------------------

MIN_NOTES = 8
MAX_NOTES = 200_000
MAX_SECONDS = 2 * 3600.0
FILTER_RULE = (
    f"skip a file that is empty, larger than {S.MAX_FILE_BYTES // (1024 * 1024)} MiB, not readable as "
    f"Standard MIDI (format 0/1/2, ticks per quarter; SMPTE time is refused), is cut short (truncated), "
    f"has fewer than {MIN_NOTES} or more than {MAX_NOTES} notes, or lasts over {MAX_SECONDS / 3600:g} hours once "
    "silences longer than 4 bars are shortened; an exact duplicate of an earlier file is kept once; a file that crashes "
    "a worker or takes longer than the per-file time limit is skipped"
)

CHUNK_FILES = 256  # per-chunk costs (a shard file, a round trip) stay under 3 us a file
CHUNK_BYTES = 8 * 1024 * 1024
SHARD_MAGIC = b"MGSHARD1"
JOB_VERSION = 1
WORKER_TASK = "midigen.data.prepare:encode_chunk"  # what the workers run, by name (they are spawned)
OUTPUTS = ("train.bin", "val.bin", "test.bin", "files.jsonl", "meta.json")  # meta.json last: the commit
_ROW_JSON = json.JSONEncoder(ensure_ascii=False)  # files.jsonl rows: json.dumps(row, ensure_ascii=False), built once


def reason_key(reason: str) -> str:
    """Histogram bucket of a skip reason: its text before the first ':' ('duplicate' for duplicates)."""
    if reason.startswith("duplicate of "):
        return "duplicate"
    return reason.split(":", 1)[0].strip()


# ----- worker side ------------------------------------------------------------------------------


class _Encoder:
    """Per-process codec: the compiled encoder (``codec_jit``) when it passes its check, else numpy."""

    def __init__(self, version: int = CODEC_VERSION):
        self.CodecError = CodecError
        self.codec = Codec(version=version)
        c = self.codec
        self.fast = None
        if os.environ.get("MIDIGEN_NO_JIT", "") in ("", "0"):  # MIDIGEN_NO_JIT=1: numpy only, no numba
            from midigen.music import codec_jit  # start-up time: numba (~0.1 s) only in workers, not the parent

            try:
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
        smf, cut = checked_smf(unwrap_rmid(data))
        if cut:
            return None, cut
        try:
            score = self.codec.read_smf(smf)
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
                return [(out, None, None, None) for out in self.codec.encode_scores(scores)]
            except Exception:
                pass  # fall back to one at a time, so only the bad score fails
        out = []
        for sc in scores:
            try:
                out.append((self.codec.encode_score(sc), None, None, None))
            except Exception as e:
                out.append((e, None, None, None))
        return out

    def check(self, result) -> tuple[np.ndarray | None, int, float, str | None]:
        """Encoder output -> (tokens, notes, seconds, None) or (None, 0, 0, reason): the filter rule on tokens."""
        tokens, notes, secs, _ = result
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

    def add_song_fields(self, row: dict, score, tokens, secs: float, facts=None, estimate_later=None) -> None:
        """The facts a kept file's row records for the controls: key (and where from), meter, length.

        ``facts`` is what the compiled encoder gathered while writing the tokens (pitch-class
        histogram, TS token), so the tokens are not read again; without it both come from the tokens.
        ``estimate_later``: a list; a key that must be estimated from the histogram is then left
        out, and (the row, the histogram) appended for ``estimate_keys`` to fill in per chunk."""
        c = self.codec
        histogram, ts_token = facts if facts is not None else (None, self._first_ts_token(tokens))
        ts = c.time_signatures[ts_token - c.ts_start] if ts_token >= 0 else None
        row["time_signature"], row["seconds"] = f"{ts[0]}/{ts[1]}" if ts else None, round(secs, 3)
        if estimate_later is not None and histogram is not None and score_signature_key(score) is None:
            estimate_later.append((row, histogram))
        else:
            row["key"], row["key_source"] = song_key(c, score, tokens, histogram)

    @staticmethod
    def estimate_keys(pending: list) -> None:
        """Fill in the keys ``add_song_fields`` left to estimate, all of a chunk's in one batch."""
        for (row, _), k in zip(pending, estimate_keys([h for _, h in pending])):
            row["key"], row["key_source"] = (key_name(k), "estimated") if k is not None else (None, None)

    def _first_ts_token(self, tokens) -> int:
        c = self.codec
        head = tokens[: c.header_length(tokens[:200])]
        return next((int(t) for t in head if c.ts_start <= t < c.inst_start), -1)


def _describe(prefix: str, e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{prefix}: {type(e).__name__} {msg}".strip()


_ENCODERS: dict = {}  # codec version -> this process's encoder


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


def encode_chunk(payload, failed: dict, state) -> tuple:
    """Worker task: encode one chunk and write its shard. Returns (files, kept, notes).

    With the compiled encoder each file goes read -> parse -> encode -> free in turn, so its data
    is still in cache at every step and a crash anywhere is blamed on that file. The numpy encoder
    instead parses file by file and encodes the chunk in one batched call; if that batch crashed
    or hung, the retry encodes file by file.
    """
    shard_path, chunk_id, key, items, *options = payload
    want_md5 = bool(options and options[0])  # --styles keyed by content md5
    version = options[1] if len(options) > 1 else CODEC_VERSION
    if version not in _ENCODERS:
        _ENCODERS[version] = _Encoder(version)
    enc = _ENCODERS[version]
    rows: list[dict] = []
    parsed: list[tuple[int, object]] = []  # numpy path: scores waiting for the batched encode
    written = 0  # compiled path: kept tokens so far, back to back in the encoder's buffer
    keys_later: list = []  # compiled path: (row, histogram) of songs whose key is estimated, done per chunk
    for i, item in enumerate(items):
        state[0], state[1] = i, time.monotonic()
        row, score = _encode_file(enc, item, failed.get(i), written, want_md5, keys_later)
        written += row.get("tokens", 0)
        if score is not None:
            parsed.append((i, score))
        rows.append(row)
    if keys_later:
        state[0], state[1] = WHOLE_TASK, time.monotonic()
        enc.estimate_keys(keys_later)
    blobs = _encode_batch(enc, parsed, rows, failed, state) if parsed else []
    kept_rows = [r for r in rows if "tokens" in r]
    if written:
        blobs = [enc.fast.written(written)]
    state[0], state[1] = len(items), time.monotonic()
    if not parent_alive():  # the run was killed: leave nothing behind
        os._exit(0)
    _write_shard(Path(shard_path), {"chunk": chunk_id, "key": key, "rows": rows}, blobs)
    state[1] = 0.0
    return len(items), len(kept_rows), sum(r["notes"] for r in kept_rows)


def _encode_file(enc: _Encoder, item, failed_reason, written: int, want_md5: bool = False,
                 keys_later: list | None = None) -> tuple[dict, object]:
    """One file -> (its row, its parsed score if the numpy encoder still has to encode it, else None).

    Files on disk arrive as (path, size) and are read here, so reading spreads over the workers. The
    compiled encoder writes kept tokens at ``written`` in its buffer; the row then has ``tokens``
    and the song's facts (``_Encoder.add_song_fields``; an estimated key is left to ``keys_later``, see
    there). ``want_md5`` adds the content md5 (--styles).
    """
    name, data, reason = item
    if isinstance(data, tuple):
        try:
            data = S.read_file(*data)
        except OSError as err:
            data, reason = None, reason or f"unreadable: {err.strerror}"
    row = {"name": name, "hash": hashlib.blake2b(data, digest_size=16).hexdigest() if data is not None else None}
    if want_md5 and data is not None:
        row["md5"] = hashlib.md5(data).hexdigest()
    reason = reason or failed_reason or (None if data is not None else "unreadable")
    score = None
    if reason is None:
        score, reason = enc.read(data)
        if reason is None and enc.fast is not None:
            result = enc.fast.encode_one(score, written)
            tokens, notes, secs, reason = enc.check(result)
            if reason is None:
                row.update(notes=notes, tokens=len(tokens))
                enc.add_song_fields(row, score, tokens, secs, result[3], keys_later)
            score = None
    if reason is not None:
        row["reason"] = reason
    return row, score


def _encode_batch(enc: _Encoder, parsed: list, rows: list, failed: dict, state) -> list:
    """The numpy encoder's half: encode the chunk's parsed scores (one batched call unless that call
    failed before), fill in their rows, and return the kept tokens as one blob."""
    if WHOLE_TASK in failed:
        outs = []
        for i, score in parsed:
            state[0], state[1] = i, time.monotonic()
            outs.append(enc.encode_scores([score])[0])
    else:
        state[0], state[1] = WHOLE_TASK, time.monotonic()
        outs = enc.encode_scores([sc for _, sc in parsed])
    blobs = []
    for (i, score), out in zip(parsed, outs):
        tokens, notes, secs, reason = enc.check(out)
        if reason is not None:
            rows[i]["reason"] = reason
            continue
        rows[i].update(notes=notes, tokens=len(tokens))
        enc.add_song_fields(rows[i], score, tokens, secs)
        blobs.append(tokens)
    return [np.concatenate(blobs)] if blobs else []


# ----- the run ------------------------------------------------------------------------------------


def _check_numbers(workers, timeout) -> None:
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise UsageError(f"--workers must be a whole number >= 1, got {workers!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
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


def _chunks(srcs):
    """Yield (chunk_id, key, entries) with boundaries from names and sizes only; each entry knows the
    index of its source (``Entry.source``), which its styles depend on."""
    limit = max(1, int(CHUNK_FILES))
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


def _start_work(out: Path, needs_md5: bool = False, version: int = CODEC_VERSION) -> Path:
    """``out/.work``, kept from an interrupted run when that run had the same settings, else fresh.

    ``needs_md5`` is a setting too: shards written without md5s cannot serve a run that needs them.
    """
    work = out / ".work"
    job = {"version": JOB_VERSION, "codec": _codec_dict(version), "filter": FILTER_RULE, "chunk_files": CHUNK_FILES,
           "chunk_bytes": CHUNK_BYTES, "md5": needs_md5}
    job_path = work / "job.json"
    try:
        out.mkdir(parents=True, exist_ok=True)
        if work.exists():
            try:
                same = json.loads(job_path.read_text()) == job
            except (OSError, ValueError):
                same = False
            if not same:
                shutil.rmtree(work)
        work.mkdir(exist_ok=True)
        if not job_path.exists():
            atomic_write_json(job_path, job)
    except OSError as e:
        raise UsageError(f"--out {out} is not writable: {e.strerror}") from None
    return work


def _shard_path(work: Path, cid: int, key: str) -> Path:
    return work / f"{cid:08d}-{key}.shard"


def _reused_rows(path: Path, key: str, n: int) -> list | None:
    """The rows of a shard an earlier run finished for this very chunk, else None (it is removed)."""
    if not path.exists():
        return None
    try:
        head, _ = read_shard_header(path)
        if head["key"] == key and len(head["rows"]) == n:
            return head["rows"]
    except (OSError, ValueError, KeyError):
        pass
    path.unlink(missing_ok=True)
    return None


def _task_items(entries) -> list:
    """Entries -> worker items (name, bytes or (path, size) or None, reason)."""
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
    return items


class _Progress:
    """Running counts and the progress bar."""

    def __init__(self, progress: bool):
        from tqdm import tqdm

        self.files = self.kept = self.notes = self.reused = 0
        self.bar = tqdm(unit="file", desc="prepare", disable=not progress, file=sys.stderr, dynamic_ncols=True,
                        smoothing=0.1)

    def add(self, files: int, kept: int, notes: int) -> None:
        self.files += files
        self.kept += kept
        self.notes += notes
        self.bar.update(files)

    def merged(self, merge: "_Merge") -> None:
        """The bar's kept/skipped are the merge's (duplicates are found there), so they end as the JSON's."""
        self.bar.set_postfix(kept=merge.kept, skipped=merge.seen - merge.kept, refresh=False)


def prepare(sources, out, workers=None, val_frac=None, test_frac=None, url=None, timeout=60.0,
            progress=True, split="hash", style_from=None, styles=None, chords: bool = True) -> dict:
    """Prepare a dataset folder from MIDI sources; returns the run summary (see module docstring).

    ``split`` is a ``midigen.data.splits`` method: "hash" (``val_frac``/``test_frac`` of the files, by
    content hash; 0.01 each by default) or "amt" (by file name, AMT's Lakh split).
    ``STYLE=PATH`` sources, ``style_from`` and ``styles`` (a csv) tag files with styles (``midigen.data.styles``).
    ``chords``: codec v4, a CHORD token at each change of every song's labelled harmony; False writes
    codec v3 (no chords, and no labelling cost).
    """
    version = CODEC_VERSION if chords else 3
    t0 = time.monotonic()
    sources = [sources] if isinstance(sources, (str, os.PathLike)) else sources
    named = [split_source(str(s)) for s in sources]
    sources = [s for s, _ in named]
    rule = SplitRule(split, val_frac, test_frac)
    tagger = make_tagger(named, style_from, styles)
    _check_numbers(workers, timeout)
    out = Path(out)
    _check_out(out)
    srcs = _resolve_sources(sources, url, progress)
    workers = workers or usable_cpus()
    work = _start_work(out, tagger.needs_md5, version)
    chunk_list: list[tuple[int, str]] = []
    counts = _Progress(progress)
    merge = _Merge(work, chunk_list, rule, tagger)
    merge.codec_version = version

    def tasks():
        for cid, key, entries in _chunks(srcs):
            chunk_list.append((cid, key))
            merge.tags[cid] = [tagger.by_name(e.source, srcs[e.source].label, srcs[e.source].kind, e.name)
                               for e in entries]
            p = _shard_path(work, cid, key)
            rows = _reused_rows(p, key, len(entries))
            if rows is not None:
                kept = [r for r in rows if "reason" not in r]
                counts.reused += len(rows)
                counts.add(len(rows), len(kept), sum(r["notes"] for r in kept))
                merge.ready(cid)
                counts.merged(merge)
                continue
            items = _task_items(entries)
            yield cid, (str(p), cid, key, items, tagger.needs_md5, version), len(items)

    def done(cid, result):
        counts.add(*result)
        merge.ready(cid)
        counts.merged(merge)

    pool = WorkerPool(workers, WORKER_TASK, timeout)
    try:
        pool.run(tasks(), done)
    except BaseException:
        merge.close()
        raise
    finally:
        pool.close()
        counts.bar.close()
    if counts.files == 0:
        merge.close()
        shutil.rmtree(work, ignore_errors=True)
        raise UsageError("no MIDI files (.mid, .midi, .kar, .rmi) found in " + ", ".join(sources))
    try:
        summary = merge.finish(out, sources)
    finally:
        merge.close()
    secs = time.monotonic() - t0
    summary.update(reused_files=counts.reused, workers=workers, seconds=round(secs, 3),
                   files_per_s=round(summary["files_seen"] / secs, 1) if secs > 0 else None,
                   notes_per_s=round(summary["notes"] / secs, 1) if secs > 0 else None)
    if summary["kept"] == 0:
        print(f"midigen prepare: warning: no file was usable; see {out / 'files.jsonl'}", file=sys.stderr)
    return summary


def _resolve_sources(sources: list[str], url, progress: bool) -> list:
    """SOURCE arguments -> ``sources.Source``; every local path is checked before any download or export."""
    if not sources:
        raise UsageError("no sources given")
    for s in sources:
        if s not in ("lakh", "demo"):
            S.resolve(s)
    return [S.resolve(s, url=url, progress=progress) for s in sources]


def _codec_dict(version: int = CODEC_VERSION) -> dict:
    return Codec(version=version).to_dict()


class _Merge:
    """Streams finished shards, in chunk order, into the split files while later chunks encode.

    Duplicates are dropped (first one wins), each kept file's split comes from ``rule``, and
    nothing is published until ``finish``: the outputs are written under ``.work`` and then
    published as one set (``publish``). A killed run leaves only temporaries, which the rerun
    truncates and writes again.
    """

    def __init__(self, work: Path, chunk_list: list, rule: SplitRule, tagger=None):
        self.work, self.chunk_list, self.rule = work, chunk_list, rule
        self.codec_version = CODEC_VERSION
        self.tagger = tagger or StyleTagger([], [])
        self.tags: dict[int, list] = {}  # chunk -> styles known from names, per entry (set as chunks are listed)
        self.counts = {"styles": Counter(), "keys": Counter(), "key_sources": Counter(), "time_signatures": Counter()}
        self.first_of: dict[str, str] = {}
        self.dup_styles: dict[str, set] = {}  # first file's name -> the styles its duplicates came with
        self.split_stats = {s: {"files": 0, "notes": 0, "tokens": 0} for s in SPLITS}
        self.reasons: Counter = Counter()
        self.seen = self.kept = self.dups = 0
        self.done: set[int] = set()
        self.next = 0  # index into chunk_list of the next shard to merge
        self.bins = {s: open(work / f"{s}.bin.tmp", "wb") for s in SPLITS}
        self.rows_out = open(work / "files.jsonl.tmp", "w", encoding="utf-8")

    def ready(self, cid: int) -> None:
        """Chunk ``cid`` has its shard; merge every shard now complete in order."""
        self.done.add(cid)
        while self.next < len(self.chunk_list) and self.chunk_list[self.next][0] in self.done:
            self._merge_one(*self.chunk_list[self.next])
            self.done.discard(self.chunk_list[self.next][0])
            self.next += 1

    def _merge_one(self, cid: int, key: str) -> None:
        path = _shard_path(self.work, cid, key)
        head, at = read_shard_header(path)
        blob = np.fromfile(path, dtype=np.uint16, offset=at)
        pos = 0
        lines = []
        tags = self.tags.pop(cid, None) or [[] for _ in head["rows"]]
        for r, tag in zip(head["rows"], tags):
            self.seen += 1
            out = {"name": r["name"], "hash": r["hash"], "split": None, "skipped": r.get("reason"), "notes": 0,
                   "tokens": 0, "offset": None}
            if "reason" not in r:
                start, pos = pos, pos + r["tokens"]
                self._keep(r, blob[start:pos], out)
            out.update(self._song_facts(r, tag, out["split"]))
            if out["split"] is None and r["hash"] in self.first_of and "tokens" in r:  # a duplicate: its styles count
                self.dup_styles.setdefault(self.first_of[r["hash"]], set()).update(tag)
            if out["skipped"] is not None:
                self.reasons[reason_key(out["skipped"])] += 1
            lines.append(_ROW_JSON.encode(out))
        lines.append("")
        self.rows_out.write("\n".join(lines))

    def _keep(self, r: dict, tokens: np.ndarray, out: dict) -> None:
        """A file that encoded: a duplicate of an earlier one, or appended to its split."""
        first = self.first_of.get(r["hash"])
        if first is not None:
            out["skipped"] = f"duplicate of {first}"
            self.dups += 1
            return
        self.first_of[r["hash"]] = r["name"]
        split = self.rule(r["name"], r["hash"])
        st = self.split_stats[split]
        out.update(split=split, notes=r["notes"], tokens=len(tokens), offset=st["tokens"])
        self.bins[split].write(tokens)
        st["files"] += 1
        st["notes"] += r["notes"]
        st["tokens"] += len(tokens)
        self.kept += 1

    def _song_facts(self, r: dict, tag: list, split: str | None) -> dict:
        """A row's styles, key, meter and length (kept files), counted for meta.json."""
        if split is None:
            return {"styles": [], "key": None, "key_source": None, "time_signature": None, "seconds": None}
        by_md5 = self.tagger.by_md5(r.get("md5"))
        styles = sorted(set(tag).union(by_md5)) if tag or by_md5 else []
        facts = {"styles": styles, "key": r.get("key"), "key_source": r.get("key_source"),
                 "time_signature": r.get("time_signature"), "seconds": r.get("seconds")}
        c = self.counts
        if styles:
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
        """Merge what is left, fsync, write meta.json, and publish the outputs as one set."""
        for cid, _ in self.chunk_list[self.next :]:
            self.ready(cid)  # every chunk has its shard by now
        for f in (*self.bins.values(), self.rows_out):
            f.flush()
            os.fsync(f.fileno())
        self.close()
        add_duplicate_styles(self.work / "files.jsonl.tmp", self.dup_styles, self.counts["styles"])
        self.split_notes = ensure_each_split(self.work, self.split_stats, self.rule)  # small corpora: one file each
        with open(self.work / "meta.json.tmp", "w", encoding="utf-8") as f:
            f.write(json.dumps(self._meta(sources), indent=1, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        publish(self.work, out)
        shutil.rmtree(self.work, ignore_errors=True)
        stats = self.split_stats
        return {
            "out": str(out),
            "files_seen": self.seen,
            "kept": self.kept,
            "skipped": self.seen - self.kept,
            "duplicates": self.dups,
            "splits": stats,
            "split_method": self.rule.method,
            "tokens": sum(s["tokens"] for s in stats.values()),
            "notes": sum(s["notes"] for s in stats.values()),
            "styles": dict(sorted(self.counts["styles"].items())),
            "split_notes": self.split_notes,  # files moved so val and test are not empty, or why one is
        }

    def _meta(self, sources) -> dict:
        codec = _codec_dict(self.codec_version)
        split = self.rule.describe()
        return {
            "codec": codec,
            "vocab_size": codec["vocab_size"],
            "dtype": "uint16",
            "splits": self.split_stats,
            "split": split,  # how files were assigned: method and settings (midigen.data.splits)
            "split_rule": split["rule"],
            "sources": list(sources),
            "files": self.seen,
            "kept": self.kept,
            "skipped": {"count": self.seen - self.kept, "reasons": dict(sorted(self.reasons.items()))},
            "styles": dict(sorted(self.counts["styles"].items())),
            "style_rule": self.tagger.describe(),
            "keys": dict(self.counts["keys"].most_common()),
            "key_sources": dict(sorted(self.counts["key_sources"].items())),
            "time_signatures": dict(self.counts["time_signatures"].most_common()),
            "filter": {"rule": FILTER_RULE, "min_notes": MIN_NOTES, "max_notes": MAX_NOTES,
                       "max_seconds": MAX_SECONDS, "max_file_bytes": S.MAX_FILE_BYTES},
        }


def publish(work: Path, out: Path) -> None:
    """Move the finished outputs (``work/NAME.tmp``) into ``out`` as one set; meta.json commits it.

    Order: the old meta.json goes first, then the token files and files.jsonl are renamed over the
    old ones, then the new meta.json is renamed into place, each step made durable before the next.
    Until the last rename the folder has no meta.json, which readers take as "being prepared"; a
    kill anywhere in between leaves that state, and the rerun (which reuses every finished shard)
    completes it. A reader that opened the old files keeps reading the old set (POSIX keeps
    replaced files alive while they are open).
    """
    try:
        try:
            os.unlink(out / "meta.json")
        except FileNotFoundError:
            pass
        _fsync_dir(out)
        for name in OUTPUTS[:-1]:
            os.replace(work / f"{name}.tmp", out / name)
        _fsync_dir(out)
        os.replace(work / "meta.json.tmp", out / "meta.json")
        _fsync_dir(out)
    except OSError as e:  # Windows: a file still open elsewhere (a training run) cannot be replaced
        raise MidigenError(f"cannot publish the dataset into {out}: {e.strerror} ({e.filename}); close any "
                           "program reading it and run prepare again (finished work is kept)") from None
