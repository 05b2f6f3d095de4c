"""Source enumeration (folders, archives, safety checks) and the music21 demo corpus export."""
from __future__ import annotations

import gzip
import io
import tarfile
import zipfile

import pytest

from midigen.data import sources as S
from midigen.errors import UsageError
from midigen.music.smf import sanitize_smf, unwrap_rmid
from songgen import make_song_bytes


def names(src) -> list[str]:
    return [e.name for e in S.entries(src)]


def test_unsafe_member_names():
    for bad in ("/etc/x.mid", "../x.mid", "a/../../x.mid", "..\\x.mid", "C:/x.mid", "a/.."):
        assert S.unsafe_member(bad), bad
    for ok in ("a/b.mid", "lmd_full/0/0abc.mid", "a..b.mid", "./a.mid"):
        assert not S.unsafe_member(ok), ok


def test_folder_order_and_suffixes(tmp_path):
    for rel in ("b/2.MID", "b/1.midi", "a.Kar", "c.txt", "z/y/x.mid", "song.mid.bak"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    (tmp_path / "dir.mid").mkdir()  # a folder with a MIDI name is walked, not read
    (tmp_path / "dir.mid" / "in.mid").write_bytes(b"y")
    src = S.resolve(str(tmp_path))
    assert src.kind == "folder"
    lab = str(tmp_path)
    assert names(src) == [f"{lab}/a.Kar", f"{lab}/b/1.midi", f"{lab}/b/2.MID", f"{lab}/dir.mid/in.mid",
                          f"{lab}/z/y/x.mid"]
    e = next(S.entries(src))
    assert callable(e.data) and e.load() == b"x"  # read lazily


def test_resolve_errors(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(UsageError, match="no such file"):
        S.resolve(str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="unknown source"):
        S.resolve(str(tmp_path / "a.txt"))
    (tmp_path / "x.TGZ").write_bytes(b"")
    assert S.resolve(str(tmp_path / "x.TGZ")).kind == "tar"
    (tmp_path / "x.Mid").write_bytes(b"")
    assert S.resolve(str(tmp_path / "x.Mid")).kind == "file"


def test_tar_stream_and_truncated_archive(tmp_path):
    songs = [make_song_bytes(i, bars=4) for i in range(6)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for i, d in enumerate(songs):
            info = tarfile.TarInfo(f"m/{i}.mid")
            info.size = len(d)
            t.addfile(info, io.BytesIO(d))
    data = buf.getvalue()
    (tmp_path / "ok.tar.gz").write_bytes(data)
    got = list(S.entries(S.resolve(str(tmp_path / "ok.tar.gz"))))
    assert [e.data for e in got] == songs
    # a truncated archive yields the members before the damage, then one error entry
    raw = gzip.decompress(data)
    (tmp_path / "cut.tar").write_bytes(raw[: len(raw) // 2])
    got = list(S.entries(S.resolve(str(tmp_path / "cut.tar"))))
    assert got[-1].reason.startswith("unreadable archive") and got[-1].name == str(tmp_path / "cut.tar")
    assert all(e.reason is None for e in got[:-1]) and 1 <= len(got) - 1 < 6
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    got = list(S.entries(S.resolve(str(tmp_path / "junk.zip"))))
    assert len(got) == 1 and got[0].reason.startswith("unreadable archive")


def test_oversized_members_refused_before_reading(tmp_path):
    big = bytes(S.MAX_FILE_BYTES + 1)
    with zipfile.ZipFile(tmp_path / "z.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("big.mid", big)
        z.writestr("small.mid", b"MThd")
    got = {e.name.split(":")[1]: e for e in S.entries(S.resolve(str(tmp_path / "z.zip")))}
    assert got["big.mid"].reason.startswith("too large") and got["big.mid"].data is None
    assert got["small.mid"].data == b"MThd"
    with tarfile.open(tmp_path / "t.tgz", "w:gz") as t:
        info = tarfile.TarInfo("big.mid")
        info.size = len(big)
        t.addfile(info, io.BytesIO(big))
    (e,) = S.entries(S.resolve(str(tmp_path / "t.tgz")))
    assert e.reason.startswith("too large") and e.data is None


def test_sanitize_clamps_chunks_and_unwrap_rmid():
    song = make_song_bytes(3, bars=4)
    assert sanitize_smf(song) is song  # a valid file is passed through untouched
    cut = sanitize_smf(song[:-10])
    assert len(cut) == len(song) - 10 and cut[:14] == song[:14]
    body = b"RMID" + b"data" + len(song).to_bytes(4, "little") + song
    rmid = b"RIFF" + len(body).to_bytes(4, "little") + body
    assert unwrap_rmid(rmid) == song and unwrap_rmid(song) is song


def test_checked_smf_is_sanitize_and_truncation_in_one_walk():
    """prepare checks and sanitizes every file in one walk; it must say what truncation() says and give
    the bytes sanitize_smf gives, on whole, cut, padded, miscounted and byte-flipped files."""
    import random
    import struct

    from midigen.music.smf import checked_smf, truncation

    rng = random.Random(5)
    song = make_song_bytes(4, bars=4)
    cases = [song, song[:-10], song + b"xyz", song[:10] + struct.pack(">H", 9) + song[12:],
             song[:10] + struct.pack(">H", 0) + song[12:], b"MThd\x00\x00\x00\x02" + song[8:], song[:30]]
    for _ in range(300):
        b = bytearray(song)
        b[rng.randrange(len(b))] = rng.randrange(256)
        cases.append(bytes(b[: rng.randrange(len(b) + 1)]))
    reasons = set()
    for data in cases:
        fixed, cut = checked_smf(data)
        assert cut == truncation(data)
        assert fixed == sanitize_smf(data)
        reasons.add(cut.split(":")[1].split()[0] if cut else None)
    assert checked_smf(song)[0] is song
    assert {None, "a", "9"} <= reasons  # whole files, cut chunks and missing tracks were all met


def test_demo_pieces_and_subset_export(tmp_path, monkeypatch):
    from midigen.data import corpus
    from midigen.data.ensembles import COLLECTIONS

    pieces = corpus.demo_pieces()
    assert len(pieces) > 1000
    assert {p.split("/")[0] for p in pieces} == set(COLLECTIONS)
    assert len(pieces) == len(set(p.split("/", 1)[1] for p in pieces))  # no piece in two collections
    chosen = [p for p in pieces if p.startswith("chorale/bach/")][:3]
    dest = corpus.export_subset(chosen, tmp_path / "demo", progress=False, workers=1)
    mids = sorted(dest.rglob("*.mid"))
    assert len(mids) == 3 and all(m.read_bytes()[:4] == b"MThd" for m in mids)
    # finished pieces are not exported again
    stamp = [m.stat().st_mtime_ns for m in mids]
    corpus.export_subset(chosen, dest, progress=False, workers=1)
    assert [m.stat().st_mtime_ns for m in mids] == stamp


def test_music21_fixture_is_real_music(music21_dir):
    from midigen.music.codec import Codec

    codec = Codec()
    mids = sorted(music21_dir.rglob("*.mid"))
    assert len(mids) >= 25
    assert (music21_dir / ".complete").exists()
    notes = [codec.count_notes(codec.encode(m.read_bytes())) for m in mids[:10]]
    assert min(notes) > 20
