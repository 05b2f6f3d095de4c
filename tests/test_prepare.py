"""`prepare` end to end: real files, real archives, real worker processes, the real CLI."""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import faults
import midigen.data.prepare
from conftest import PYTHON, REPO, TESTS
from hostile import write_hostile
from midigen.music.codec import Codec
from midigen.data.prepare import prepare
from midigen.data.splits import split_of
from songgen import make_song_bytes, write_songs

OUTPUTS = ("train.bin", "val.bin", "test.bin", "meta.json", "files.jsonl")


def rows_of(out) -> list[dict]:
    with open(Path(out) / "files.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def read_outputs(out) -> dict[str, bytes]:
    return {name: (Path(out) / name).read_bytes() for name in OUTPUTS}


def check_consistent(out) -> None:
    """Every kept row points at exactly one BOS...EOS song in its split's .bin; meta agrees."""
    codec = Codec()
    meta = json.loads((Path(out) / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == codec.vocab_size
    assert meta["codec"] == codec.to_dict()
    bins = {s: np.fromfile(Path(out) / f"{s}.bin", dtype=np.uint16) for s in ("train", "val", "test")}
    totals = {s: 0 for s in bins}
    for r in rows_of(out):
        assert set(r) == {"name", "hash", "split", "skipped", "notes", "tokens", "offset",
                          "styles", "key", "key_source", "time_signature", "seconds"}  # + the song facts controls use
        if r["split"] is None:
            assert r["skipped"]
            continue
        song = bins[r["split"]][r["offset"] : r["offset"] + r["tokens"]]
        assert len(song) == r["tokens"] and song[0] == codec.BOS and song[-1] == codec.EOS
        assert np.count_nonzero(song == codec.EOS) == 1
        assert codec.count_notes(song) == r["notes"]
        totals[r["split"]] += r["tokens"]
    for s, b in bins.items():
        assert totals[s] == len(b) == meta["splits"][s]["tokens"]
    assert not (Path(out) / ".work").exists()


def run_cli(*args, env=None, timeout=120):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([PYTHON, "-m", "midigen", "prepare", *map(str, args)], cwd=REPO, env=e,
                          capture_output=True, text=True, timeout=timeout)


def faulty_cli(*args, env=None, **popen):
    """`midigen prepare ARGS` in a real process whose workers run tests/faults.py's task (MIDIGEN_FAULTS)."""
    e = dict(os.environ, **(env or {}))
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), str(REPO), e.get("PYTHONPATH")) if p)
    cmd = [PYTHON, "-c", "import sys, faults; sys.exit(faults.run_cli(sys.argv[1:]))", "prepare", *map(str, args)]
    return subprocess.Popen(cmd, cwd=REPO, env=e, **popen)


@pytest.fixture
def chunk_files(monkeypatch):
    """Sets prepare's files per chunk (tests force many small chunks)."""
    return lambda n: monkeypatch.setattr(midigen.data.prepare, "CHUNK_FILES", n)


@pytest.fixture
def inject(monkeypatch):
    """Runs prepare's workers with tests/faults.py's faults (a spec as in MIDIGEN_FAULTS); None stops them."""
    def set_faults(spec):
        if spec is None:
            monkeypatch.setattr(midigen.data.prepare, "WORKER_TASK", "midigen.data.prepare:encode_chunk")
            monkeypatch.delenv("MIDIGEN_FAULTS", raising=False)
        else:
            monkeypatch.setattr(midigen.data.prepare, "WORKER_TASK", faults.TASK)
            monkeypatch.setenv("MIDIGEN_FAULTS", spec)
    return set_faults


def test_tiny_dataset_fixture(tiny_dataset):
    check_consistent(tiny_dataset)
    meta = json.loads((tiny_dataset / "meta.json").read_text())
    assert all(meta["splits"][s]["files"] >= 2 for s in ("train", "val", "test"))


def test_mixed_sources(tmp_path, songs_dir):
    songs = sorted(songs_dir.glob("*.mid"))
    with tarfile.open(tmp_path / "a.tar", "w") as t:
        for p in songs[0:5]:
            t.add(p, arcname=f"tar/{p.name}")
    with tarfile.open(tmp_path / "b.tar.gz", "w:gz") as t:
        for p in songs[5:10]:
            t.add(p, arcname=f"tgz/deep/{p.name.upper()}")
        t.add(songs[10], arcname="readme.txt")  # not a MIDI name: ignored
    shutil.copy(tmp_path / "b.tar.gz", tmp_path / "c.tgz")  # same contents: all duplicates
    with zipfile.ZipFile(tmp_path / "d.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for p in songs[11:15]:
            z.write(p, arcname=f"zip/{p.stem}.midi")
    folder = tmp_path / "folder" / "sub"
    folder.mkdir(parents=True)
    for i, p in enumerate(songs[15:20]):
        shutil.copy(p, folder / (p.stem + (".KAR" if i % 2 else ".Mid")))
    single = tmp_path / "single.mid"
    shutil.copy(songs[20], single)
    out = tmp_path / "out"
    s = prepare([tmp_path / "a.tar", tmp_path / "b.tar.gz", tmp_path / "c.tgz", tmp_path / "d.zip",
                 tmp_path / "folder", single], out, workers=2, progress=False)
    assert s["files_seen"] == 5 + 5 + 5 + 4 + 5 + 1
    assert s["kept"] == 20 and s["duplicates"] == 5 and s["skipped"] == 5
    check_consistent(out)
    rows = rows_of(out)
    names = [r["name"] for r in rows]
    assert names[0] == f"{tmp_path / 'a.tar'}:tar/{songs[0].name}"
    assert f"{tmp_path / 'd.zip'}:zip/{songs[11].stem}.midi" in names
    assert f"{tmp_path / 'folder'}/sub/{songs[16].stem}.KAR" in names and str(single) in names
    dup = [r for r in rows if r["name"].startswith(str(tmp_path / "c.tgz"))]
    assert all(r["skipped"] == "duplicate of " + r["name"].replace("c.tgz", "b.tar.gz") for r in dup)
    # the tokens are exactly the codec's, and the hash is of the file's bytes
    codec = Codec()
    r = rows[0]
    data = songs[0].read_bytes()
    assert r["hash"] == hashlib.blake2b(data, digest_size=16).hexdigest()
    b = np.fromfile(out / f"{r['split']}.bin", dtype=np.uint16)
    assert np.array_equal(b[r["offset"] : r["offset"] + r["tokens"]], codec.encode(data))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["skipped"] == {"count": 5, "reasons": {"duplicate": 5}}
    assert "200000" in meta["filter"]["rule"] and meta["filter"]["max_notes"] == 200000


def test_hostile_corpus_never_stops_the_run(tmp_path):
    expect = write_hostile(tmp_path / "h")
    write_songs(tmp_path / "h", 3)
    s = prepare([tmp_path / "h"], tmp_path / "out", workers=2, progress=False)
    check_consistent(tmp_path / "out")
    rows = {r["name"].split("/h/", 1)[1]: r for r in rows_of(tmp_path / "out")}
    assert s["files_seen"] == len(expect) + 3
    for name, what in expect.items():
        r = rows[name]
        if what == "skip":
            assert r["skipped"] and r["split"] is None, r
        elif what == "keep":
            assert r["split"] is not None, r
        else:
            assert (r["split"] is None) != (r["skipped"] is None), r
    assert rows["many_notes.mid"]["skipped"].startswith("too many notes")
    assert rows["too_big.mid"]["skipped"].startswith("too large") and rows["too_big.mid"]["hash"] is None
    assert rows["empty.mid"]["skipped"] == "empty file"
    assert rows["few_notes.mid"]["skipped"].startswith("too few notes")
    assert all(rows[f"song_{i:05d}.mid"]["split"] for i in range(3))
    # RIFF-wrapped MIDI is unwrapped: same song as the plain one
    assert rows["rmid.mid"]["split"] is not None
    reasons = json.loads((tmp_path / "out" / "meta.json").read_text())["skipped"]["reasons"]
    assert reasons["unreadable MIDI"] >= 3 and reasons["too many notes"] == 1


def test_unsafe_archive_members_refused(tmp_path):
    song = make_song_bytes(5)

    def add(t, name, data=song, kind=tarfile.REGTYPE):
        info = tarfile.TarInfo(name)
        info.type = kind
        if kind == tarfile.SYMTYPE:
            info.linkname = "/etc/passwd"
        else:
            info.size = len(data)
        t.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    with tarfile.open(tmp_path / "evil.tar.gz", "w:gz") as t:
        add(t, "../evil.mid")
        add(t, "/abs/evil.mid")
        add(t, "ok/../../evil2.mid")
        add(t, "link.mid", kind=tarfile.SYMTYPE)
        add(t, "good/song.mid", make_song_bytes(6))
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as z:
        z.writestr("../../zipevil.mid", song)
        z.writestr("/zipabs.mid", song)
        z.writestr("fine.mid", make_song_bytes(7))
    out = tmp_path / "out"
    s = prepare([tmp_path / "evil.tar.gz", tmp_path / "evil.zip"], out, workers=1, progress=False)
    rows = {r["name"].split(":", 1)[1]: r for r in rows_of(out)}
    for n in ("../evil.mid", "/abs/evil.mid", "ok/../../evil2.mid", "../../zipevil.mid"):
        assert rows[n]["skipped"] == "unsafe path in archive" and rows[n]["hash"] is None
    assert rows["link.mid"]["skipped"] == "not a regular file in archive"
    assert rows["good/song.mid"]["split"] and rows["fine.mid"]["split"]
    assert s["kept"] == 2
    assert not (tmp_path / "evil.mid").exists() and not Path("/zipabs.mid").exists()


def test_split_is_stable_when_files_are_added(tmp_path, songs_dir):
    a = tmp_path / "a"
    shutil.copytree(songs_dir, a)
    prepare([a], tmp_path / "o1", workers=1, val_frac=0.2, test_frac=0.2, progress=False)
    before = {r["name"]: r for r in rows_of(tmp_path / "o1")}
    write_songs(a, 30, seed0=1000)
    prepare([a], tmp_path / "o2", workers=2, val_frac=0.2, test_frac=0.2, progress=False)
    after = {r["name"]: r for r in rows_of(tmp_path / "o2")}
    assert len(after) == len(before) + 30
    for name, r in before.items():
        assert after[name]["split"] == r["split"] and after[name]["hash"] == r["hash"]
        assert split_of(r["hash"], 0.2, 0.2) == r["split"]
    counts = {s: sum(r["split"] == s for r in after.values()) for s in ("train", "val", "test")}
    assert counts["val"] >= 8 and counts["test"] >= 8 and counts["train"] >= 40


def test_workers_1_and_2_are_byte_identical(tmp_path, songs_dir, music21_dir, chunk_files):
    chunk_files(5)
    write_hostile(tmp_path / "h")
    srcs = [songs_dir, music21_dir, tmp_path / "h"]
    s1 = prepare(srcs, tmp_path / "w1", workers=1, val_frac=0.1, test_frac=0.1, progress=False)
    s2 = prepare(srcs, tmp_path / "w2", workers=2, val_frac=0.1, test_frac=0.1, progress=False)
    assert read_outputs(tmp_path / "w1") == read_outputs(tmp_path / "w2")
    assert s1["kept"] == s2["kept"] > 60
    check_consistent(tmp_path / "w2")


def test_hanging_or_crashing_worker_costs_one_file(tmp_path, songs_dir, chunk_files, inject):
    chunk_files(6)
    inject("hang:song_00003,abort:song_00008,segv:song_00020")
    s = prepare([songs_dir], tmp_path / "out", workers=2, timeout=1.5, progress=False)
    rows = {Path(r["name"]).name: r for r in rows_of(tmp_path / "out")}
    assert rows["song_00003.mid"]["skipped"] == "timed out after 1.5 s"
    assert rows["song_00008.mid"]["skipped"] == f"worker crashed (exit code {-signal.SIGABRT})"
    assert rows["song_00020.mid"]["skipped"] == f"worker crashed (exit code {-signal.SIGSEGV})"
    assert s["kept"] == 57 and s["skipped"] == 3
    # the other files are exactly what a clean run gives
    inject(None)
    prepare([songs_dir], tmp_path / "clean", workers=1, progress=False)
    clean = {Path(r["name"]).name: r for r in rows_of(tmp_path / "clean")}
    for name, r in rows.items():
        if r["split"]:
            assert (r["hash"], r["split"], r["tokens"]) == (clean[name]["hash"], clean[name]["split"],
                                                            clean[name]["tokens"])


def test_compiled_and_numpy_encoders_give_identical_datasets(tmp_path, songs_dir, music21_dir, monkeypatch):
    write_hostile(tmp_path / "h")
    srcs = [songs_dir, music21_dir, tmp_path / "h"]
    prepare(srcs, tmp_path / "jit", workers=1, val_frac=0.1, test_frac=0.1, progress=False)
    monkeypatch.setenv("MIDIGEN_NO_JIT", "1")
    prepare(srcs, tmp_path / "numpy", workers=1, val_frac=0.1, test_frac=0.1, progress=False)
    assert read_outputs(tmp_path / "jit") == read_outputs(tmp_path / "numpy")


def test_crash_in_batched_encode_loses_nothing(tmp_path, songs_dir, monkeypatch, chunk_files, inject):
    """The numpy encoder's batched call crashes; the retry encodes file by file."""
    monkeypatch.setenv("MIDIGEN_NO_JIT", "1")  # the compiled encoder has no batch phase
    chunk_files(10)
    inject("batchabort:song_00012")
    prepare([songs_dir], tmp_path / "out", workers=2, progress=False)
    inject(None)
    prepare([songs_dir], tmp_path / "clean", workers=2, progress=False)
    assert read_outputs(tmp_path / "out") == read_outputs(tmp_path / "clean")


@pytest.mark.parametrize("args, message", [
    (["/no/such/folder"], "no such file or folder"),
    (["{tmp}/notes.txt"], "unknown source"),
    (["{songs}", "--val-frac", "0.6", "--test-frac", "0.5"], "must be < 1"),
    (["{songs}", "--out-is-file"], "is not a folder"),
    (["{songs}", "--out-under-file"], "not writable"),
    (["{songs}", "--workers", "0"], "expected a number >= 1"),
    (["{songs}", "--val-frac", "x"], "expected a fraction"),
])
def test_usage_errors_exit_2(tmp_path, songs_dir, args, message):
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "afile").write_text("hi")
    out = tmp_path / "out"
    cmd = []
    for a in args:
        if a == "--out-is-file":
            out = tmp_path / "afile"
        elif a == "--out-under-file":
            out = tmp_path / "afile" / "sub"
        else:
            cmd.append(a.format(tmp=tmp_path, songs=songs_dir))
    r = run_cli(*cmd, "--out", out, "--no-progress")
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and r.stdout == ""
    if "usage:" not in r.stderr:  # our own errors are one line; argparse adds its usage line
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.is_dir()


def test_no_midi_found_exits_2(tmp_path):
    (tmp_path / "empty").mkdir()
    r = run_cli(tmp_path / "empty", "--out", tmp_path / "out", "--no-progress")
    assert r.returncode == 2 and "no MIDI files" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_cli_prints_one_json_summary(tmp_path, songs_dir):
    r = run_cli(songs_dir, "--out", tmp_path / "out", "--workers", "2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    s = json.loads(lines[0])
    for k in ("files_seen", "kept", "skipped", "duplicates", "splits", "seconds", "files_per_s", "notes_per_s"):
        assert k in s
    assert s["kept"] == 60 and s["splits"]["train"]["notes"] > 0
    assert "prepare" in r.stderr  # the progress bar
    check_consistent(tmp_path / "out")


@pytest.mark.slow
def test_sigkill_then_rerun_is_byte_identical(tmp_path, songs_dir, chunk_files):
    env = {"MIDIGEN_CHUNK_FILES": "3", "MIDIGEN_FAULTS": "sleep0.1:song_"}
    out = tmp_path / "out"
    args = [songs_dir, "--out", out, "--workers", "2", "--no-progress"]
    proc = faulty_cli(*args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list((out / ".work").glob("*.shard"))) < 4:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    shards = len(list((out / ".work").glob("*.shard")))
    assert 4 <= shards < 20, "the kill must land mid-run"
    assert not (out / "meta.json").exists()
    time.sleep(0.3)  # the workers die with their parent (PR_SET_PDEATHSIG)
    rerun = faulty_cli(*args, env={**env, "MIDIGEN_FAULTS": ""}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["reused_files"] >= 3 * 4
    chunk_files(3)
    prepare([str(songs_dir)], tmp_path / "clean", workers=1, progress=False)
    assert read_outputs(out) == read_outputs(tmp_path / "clean")
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)


def test_kill_while_publishing_never_leaves_a_mixed_set(tmp_path, songs_dir, monkeypatch):
    """A re-prepare into a used folder is SIGKILLed between its renames: readers must refuse the
    folder (before the fix they read the new train.bin with the old files.jsonl offsets), and the
    rerun completes it byte for byte."""
    from midigen.data.dataset import Dataset
    from midigen.errors import MidigenError

    small = tmp_path / "small"
    small.mkdir()
    for p in sorted(songs_dir.glob("*.mid"))[:12]:
        shutil.copy(p, small)
    out = tmp_path / "data"
    prepare([small], out, workers=1, val_frac=0.2, test_frac=0.2, progress=False)
    old = read_outputs(out)
    args = [songs_dir, "--out", out, "--workers", "1", "--no-progress", "--val-frac", "0.2", "--test-frac", "0.2"]
    proc = faulty_cli(*args, env={"MIDIGEN_KILL_BEFORE": "val.bin"}, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert (out / "train.bin").read_bytes() != old["train.bin"], "the kill must land between the renames"
    assert (out / "val.bin").read_bytes() == old["val.bin"]
    monkeypatch.setattr(Dataset, "OPEN_WAIT", 0.3, raising=False)
    with pytest.raises(MidigenError, match="being prepared"):
        Dataset(out)
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["reused_files"] == 60
    prepare([songs_dir], tmp_path / "clean", workers=1, val_frac=0.2, test_frac=0.2, progress=False)
    assert read_outputs(out) == read_outputs(tmp_path / "clean")
    check_consistent(out)
    assert len(Dataset(out).split("train")) == json.loads((out / "meta.json").read_text())["splits"]["train"]["tokens"]


# ----- the Lakh download path, against a real local HTTP server ---------------------------------


def make_lakh_archive(path: Path, n: int = 12, songs: list[bytes] | None = None) -> bytes:
    """lmd_full.tar.gz's layout: lmd_full/<first hex digit>/<md5 of the file>.mid."""
    songs = songs if songs is not None else [make_song_bytes(500 + i, bars=8) for i in range(n)]
    with tarfile.open(path, "w:gz") as t:
        for data in songs:
            md5 = hashlib.md5(data).hexdigest()
            info = tarfile.TarInfo(f"lmd_full/{md5[0]}/{md5}.mid")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path.read_bytes()


class RangeServer:
    """Serves one file at /lmd_full.tar.gz with HTTP Range support and logs each request."""

    def __init__(self, data: bytes):
        self.data = data
        self.requests: list[tuple[str | None, int]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                rng = self.headers.get("Range")
                start = 0
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                body = owner.data[start:]
                owner.requests.append((rng, len(body)))
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(owner.data) - 1}/{len(owner.data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/lmd_full.tar.gz"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def lakh_server(tmp_path, monkeypatch):
    data = make_lakh_archive(tmp_path / "src.tar.gz")
    server = RangeServer(data)
    monkeypatch.setenv("MIDIGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MIDIGEN_LAKH_MD5", hashlib.md5(data).hexdigest())
    monkeypatch.setenv("MIDIGEN_LAKH_SIZE", str(len(data)))
    yield server
    server.close()


def test_lakh_full_download(tmp_path, lakh_server):
    s = prepare(["lakh"], tmp_path / "out", workers=1, url=lakh_server.url, progress=False)
    assert s["kept"] == 12
    assert lakh_server.requests == [(None, len(lakh_server.data))]
    names = [r["name"] for r in rows_of(tmp_path / "out")]
    assert all(n.startswith("lakh:lmd_full/") and n.endswith(".mid") for n in names)
    cached = tmp_path / "cache" / "lmd_full.tar.gz"
    assert cached.read_bytes() == lakh_server.data
    # a second run uses the verified cache: no request at all
    prepare(["lakh"], tmp_path / "out2", workers=1, url=lakh_server.url, progress=False)
    assert len(lakh_server.requests) == 1
    assert read_outputs(tmp_path / "out") == read_outputs(tmp_path / "out2")


def test_lakh_amt_split(tmp_path, monkeypatch):
    """`prepare lakh --split amt`: AMT's split of Lakh (md5 names starting with f -> test, e -> val),
    on a served archive with Lakh's layout, through the real CLI."""
    picked, want = [], {"e": 3, "f": 3, "other": 6}
    seed = 500
    while any(want.values()):
        data = make_song_bytes(seed, bars=8)
        first = hashlib.md5(data).hexdigest()[0]
        kind = first if first in "ef" else "other"
        if want[kind]:
            want[kind] -= 1
            picked.append(data)
        seed += 1
    data = make_lakh_archive(tmp_path / "src.tar.gz", songs=picked)
    server = RangeServer(data)
    env = {"MIDIGEN_CACHE": str(tmp_path / "cache"), "MIDIGEN_LAKH_MD5": hashlib.md5(data).hexdigest(),
           "MIDIGEN_LAKH_SIZE": str(len(data))}
    try:
        r = run_cli("lakh", "--split", "amt", "--out", tmp_path / "out", "--url", server.url, "--no-progress",
                    env=env)
        assert r.returncode == 0, r.stderr
        bad = run_cli("lakh", "--split", "amt", "--val-frac", "0.1", "--out", tmp_path / "o2", "--url", server.url,
                      "--no-progress", env=env)
        assert bad.returncode == 2 and "--split amt takes the split from the file names" in bad.stderr
    finally:
        server.close()
    summary = json.loads(r.stdout)
    assert summary["split_method"] == "amt"
    assert {s: summary["splits"][s]["files"] for s in ("train", "val", "test")} == {"train": 6, "val": 3, "test": 3}
    for row in rows_of(tmp_path / "out"):
        md5 = row["name"].rsplit("/", 1)[1][:-4]
        assert row["name"] == f"lakh:lmd_full/{md5[0]}/{md5}.mid"
        assert row["split"] == {"e": "val", "f": "test"}.get(md5[0], "train")
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["split"]["method"] == "amt" and "'f' test, 'e' val" in meta["split_rule"]
    check_consistent(tmp_path / "out")


def test_split_methods_on_a_folder(tmp_path, songs_dir):
    """--split amt takes the split from each file's own name (any folder layout, any case); the
    default hash split records its fractions."""
    src = tmp_path / "src"
    songs = sorted(songs_dir.glob("*.mid"))
    names = ["e1.mid", "E2.MID", "sub/f3.mid", "f4.kar", "0a.mid", "a0.mid", "sub/deep/b5.mid", "ef.mid", "fe.mid"]
    for name, p in zip(names, songs):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, src / name)
    s = prepare([src], tmp_path / "amt", workers=1, split="amt", progress=False)
    got = {r["name"].split("/src/", 1)[1]: r["split"] for r in rows_of(tmp_path / "amt")}
    assert got == {"E2.MID": "val", "a0.mid": "train", "e1.mid": "val", "ef.mid": "val", "fe.mid": "test",
                   "f4.kar": "test", "0a.mid": "train", "sub/deep/b5.mid": "train", "sub/f3.mid": "test"}
    assert s["split_method"] == "amt"
    prepare([src], tmp_path / "hash", workers=1, val_frac=0.3, test_frac=0.2, progress=False)
    meta = json.loads((tmp_path / "hash" / "meta.json").read_text())
    assert meta["split"] == {"method": "hash", "val_frac": 0.3, "test_frac": 0.2, "rule": meta["split_rule"]}
    for r in rows_of(tmp_path / "hash"):
        assert r["split"] == split_of(r["hash"], 0.3, 0.2)


def test_lakh_resumes_partial_download(tmp_path, lakh_server):
    cache = tmp_path / "cache"
    cache.mkdir()
    have = len(lakh_server.data) // 3
    (cache / "lmd_full.tar.gz.part").write_bytes(lakh_server.data[:have])
    s = prepare(["lakh"], tmp_path / "out", workers=1, url=lakh_server.url, progress=False)
    assert s["kept"] == 12
    assert lakh_server.requests == [(f"bytes={have}-", len(lakh_server.data) - have)]
    assert (cache / "lmd_full.tar.gz").read_bytes() == lakh_server.data
    assert not (cache / "lmd_full.tar.gz.part").exists()


def test_lakh_checksum_mismatch_is_a_clear_error(tmp_path, lakh_server):
    env = {"MIDIGEN_LAKH_MD5": "0" * 32}
    r = run_cli("lakh", "--out", tmp_path / "out", "--url", lakh_server.url, "--no-progress", env=env)
    assert r.returncode == 1
    assert "checksum mismatch" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "cache" / "lmd_full.tar.gz").exists()
    assert not (tmp_path / "out").exists()
    # with the right checksum the next run succeeds from scratch
    r = run_cli("lakh", "--out", tmp_path / "out", "--url", lakh_server.url, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["kept"] == 12


def test_lakh_download_failure_exits_1(tmp_path, monkeypatch):
    monkeypatch.setenv("MIDIGEN_CACHE", str(tmp_path / "cache"))
    r = run_cli("lakh", "--out", tmp_path / "out", "--url", "http://127.0.0.1:9/lmd_full.tar.gz", "--no-progress")
    assert r.returncode == 1 and "download" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_demo_source_uses_the_demo_corpus(tmp_path, music21_dir, monkeypatch):
    import midigen.data.corpus

    monkeypatch.setattr(midigen.data.corpus, "demo_corpus_dir", lambda progress=True: music21_dir)
    s = prepare(["demo"], tmp_path / "out", workers=1, progress=False)
    names = [r["name"] for r in rows_of(tmp_path / "out")]
    assert s["kept"] >= 20 and all(n.startswith("demo/") for n in names)


def test_demo_sets_aside_a_corpus_and_model_of_an_older_codec(tmp_path, monkeypatch):
    """`make demo` after a codec bump moves the old corpus and model aside (never deletes them) and
    keeps current ones."""
    from midigen.cli import demo
    from midigen.music.codec import CODEC_VERSION

    data, run = tmp_path / "data" / "demo", tmp_path / "out" / "model"
    (run / "last").mkdir(parents=True)
    data.mkdir(parents=True)
    (data / "meta.json").write_text(json.dumps({"codec": {"version": CODEC_VERSION - 1}}))
    (run / "last" / "codec.json").write_text(json.dumps({"version": CODEC_VERSION}))
    monkeypatch.setattr(demo, "DATA", data)
    monkeypatch.setattr(demo, "RUN", run)
    demo._set_aside_outdated()
    aside = data.with_name(f"demo-codec-v{CODEC_VERSION - 1}")
    assert not data.exists() and json.loads((aside / "meta.json").read_text())["codec"]["version"] == CODEC_VERSION - 1
    assert (run / "last" / "codec.json").exists()  # current: kept in place
