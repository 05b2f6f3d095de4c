"""Styles from the user's folders: STYLE=PATH sources, --style-from folder, --styles csv, the demo corpus."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import PYTHON, REPO
from midigen.data.prepare import prepare
from songgen import make_song_bytes


def rows_of(out) -> dict[str, dict]:
    with open(Path(out) / "files.jsonl", encoding="utf-8") as f:
        return {r["name"]: r for r in map(json.loads, f)}


def run_cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([PYTHON, "-m", "midigen", "prepare", *map(str, args), "--no-progress", "--workers", "1"],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """A user's MIDI folder: jazz/ and bach/ (one nested deeper), a loose file, and a folder named a=b."""
    root = tmp_path_factory.mktemp("library")
    layout = {"jazz/one.mid": 1, "jazz/two.mid": 2, "bach/chorales/three.mid": 3, "bach/four.mid": 4,
              "loose.mid": 5, "a=b/six.mid": 6}
    for rel, seed in layout.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(make_song_bytes(seed, bars=4))
    return root


def test_named_sources(tmp_path, library):
    s = prepare([f"swing={library / 'jazz'}", f"baroque={library / 'bach'}", str(library / "loose.mid")],
                tmp_path / "out", workers=1, progress=False)
    rows = rows_of(tmp_path / "out")
    styles = {Path(n).name: r["styles"] for n, r in rows.items()}
    assert styles == {"one.mid": ["swing"], "two.mid": ["swing"], "three.mid": ["baroque"], "four.mid": ["baroque"],
                      "loose.mid": []}
    # the source keeps its plain path as the entry name prefix
    assert all(n.startswith(str(library)) for n in rows)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["styles"] == {"baroque": 2, "swing": 2} == s["styles"]


def test_style_from_folder_cli(tmp_path, library):
    r = run_cli(library, "--out", tmp_path / "out", "--style-from", "folder")
    assert r.returncode == 0, r.stderr
    styles = {n[len(str(library)) + 1 :]: r["styles"] for n, r in rows_of(tmp_path / "out").items()}
    assert styles == {"a=b/six.mid": ["a=b"], "bach/chorales/three.mid": ["bach"], "bach/four.mid": ["bach"],
                      "jazz/one.mid": ["jazz"], "jazz/two.mid": ["jazz"], "loose.mid": []}
    assert json.loads(r.stdout)["styles"] == {"a=b": 1, "bach": 2, "jazz": 2}


def test_a_path_containing_equals_that_exists_is_a_path(tmp_path, library):
    s = prepare([str(library / "a=b")], tmp_path / "out", workers=1, progress=False)
    (row,) = rows_of(tmp_path / "out").values()
    assert row["name"] == f"{library / 'a=b'}/six.mid" and row["styles"] == [] and s["kept"] == 1


def test_styles_csv_by_md5_relative_path_and_name(tmp_path, library):
    md5 = hashlib.md5((library / "jazz" / "one.mid").read_bytes()).hexdigest()
    table = tmp_path / "genres.csv"
    table.write_text("file,genre\n"
                     f"{md5.upper()},Jazz\n"  # content md5, as Lakh genre lists are keyed
                     "bach/chorales/three.mid,Sacred\n"  # path relative to the source
                     "four.mid,Baroque,Keyboard\n"  # file name, two styles
                     "nothing-like-this.mid,Ghost\n")
    r = run_cli(library, "--out", tmp_path / "out", "--styles", table)
    assert r.returncode == 0, r.stderr
    styles = {Path(n).name: r["styles"] for n, r in rows_of(tmp_path / "out").items()}
    assert styles == {"one.mid": ["Jazz"], "two.mid": [], "three.mid": ["Sacred"], "four.mid": ["Baroque", "Keyboard"],
                      "loose.mid": [], "six.mid": []}
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["styles"] == {"Baroque": 1, "Jazz": 1, "Keyboard": 1, "Sacred": 1}


def test_styles_csv_tab_separated_over_an_archive(tmp_path, library):
    """A Lakh-like archive whose members are named by md5, with a tab-separated genre list."""
    arc = tmp_path / "lmd.tar.gz"
    with tarfile.open(arc, "w:gz") as tar:
        for seed in (7, 8):
            data = make_song_bytes(seed, bars=4)
            name = hashlib.md5(data).hexdigest()
            p = tmp_path / f"{name}.mid"
            p.write_bytes(data)
            tar.add(p, arcname=f"lmd_full/{name[0]}/{name}.mid")
    first = hashlib.md5(make_song_bytes(7, bars=4)).hexdigest()
    table = tmp_path / "genres.tsv"
    table.write_text(f"{first}\tRock\n")
    prepare([str(arc)], tmp_path / "out", workers=1, progress=False, styles=table)
    got = {Path(n.split(":", 1)[1]).stem: r["styles"] for n, r in rows_of(tmp_path / "out").items()}
    assert got[first] == ["Rock"] and sorted(map(len, got.values())) == [0, 1]


def test_demo_source_is_tagged_by_collection(tmp_path, music21_dir, monkeypatch):
    import midigen.data.corpus

    monkeypatch.setattr(midigen.data.corpus, "demo_corpus_dir", lambda progress=True: music21_dir)
    s = prepare(["demo"], tmp_path / "out", workers=1, progress=False)
    rows = rows_of(tmp_path / "out")
    kept = [r for r in rows.values() if r["split"]]
    for r in kept:
        assert r["styles"] == [r["name"].split("/")[1]]  # demo/<collection>/...
    assert set(s["styles"]) == {p.name for p in music21_dir.iterdir() if p.is_dir()}  # the collections exported
    assert sum(s["styles"].values()) == len(kept)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert sum(meta["time_signatures"].values()) == len(kept) and "4/4" in meta["time_signatures"]


@pytest.mark.parametrize("args, message", [
    (["=/nowhere"], "STYLE=PATH"),
    (["jazz=/no/such/folder"], "no such file or folder"),
    (["a,b=/tmp"], "cannot contain ','"),
    (["--styles", "/no/such.csv", "LIB"], "no such file"),
    (["--style-from", "nothing", "LIB"], "invalid choice"),
])
def test_bad_style_arguments_exit_2(tmp_path, library, args, message):
    args = [str(library) if a == "LIB" else a for a in args]
    r = run_cli(*args, "--out", tmp_path / "out")
    assert r.returncode == 2 and message in r.stderr, r.stderr
