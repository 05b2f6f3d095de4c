"""Styles from the user's own folders: which styles each prepared file carries.

A file gets the union of:

* the style its source was named with on the command line (``jazz=~/midi/jazz``); a source that is a
  real path containing ``=`` stays a plain path;
* with ``--style-from folder``, the first folder under its source (``~/midi/jazz/x.mid`` under
  ``~/midi`` -> ``jazz``; for an archive, the first folder of the member path). The embedded ``demo``
  corpus is always tagged this way, so its collections become its styles;
* the rows of a ``--styles FILE.csv`` naming it: rows of (key, style, [more styles]), where the key is
  the file's name, its stem, its path relative to its source, its full entry name, or the md5 of its
  content (the form in which Lakh genre lists circulate). Tab-separated files work too;
* the styles of its duplicates: the same content met again (under another ``NAME=SOURCE``, say) is
  kept once, with every style it came with (``add_duplicate_styles``).

Everything except the md5 is known from names before any file is read, so tags are attached in the
parent while the chunks are enumerated; the md5 is computed by the workers, and only when a styles
file is given (prepare hashes with blake2b otherwise).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path, PurePosixPath

from midigen.errors import UsageError

STYLE_FROM = ("folder",)
_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")
_HEADER_WORDS = {"style", "styles", "genre", "genres", "label", "labels", "tag", "tags"}


def clean_style(name: str) -> str:
    """A style name as stored: surrounding space removed, commas (the --style list separator) -> '_'."""
    return " ".join(str(name).split()).replace(",", "_")


def split_source(text: str) -> tuple[str, str | None]:
    """``'jazz=~/midi/jazz'`` -> (``'/home/u/midi/jazz'``, ``'jazz'``); a plain source -> (text, None).

    A source that exists as written (a path with ``=`` in it) is never split.
    """
    if "=" not in text or text in ("demo", "lakh") or Path(text).expanduser().exists():
        return text, None
    name, _, path = text.partition("=")
    style = clean_style(name)
    if not style or not path:
        raise UsageError(f"bad source {text!r}: use STYLE=PATH (e.g. jazz=~/midi/jazz) or an existing path")
    if "," in name:
        raise UsageError(f"bad style name {name!r}: a style name cannot contain ','")
    return (path if path in ("demo", "lakh") else os.path.expanduser(path)), style


def load_styles_csv(path) -> dict[str, list[str]]:
    """Rows of (key, style, ...) -> {key: [styles]}; md5 keys are lower-cased. A header row is skipped."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"--styles {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--styles {path}: unreadable ({e})") from None
    first = text.split("\n", 1)[0]
    delimiter = "\t" if "\t" in first and "," not in first else ","
    table: dict[str, list[str]] = {}
    import csv  # start-up time: only a --styles table needs it (prepare imports this module every run)

    for n, row in enumerate(csv.reader(text.splitlines(), delimiter=delimiter)):
        cells = [c.strip() for c in row]
        if not cells or not cells[0] or cells[0].startswith("#"):
            continue
        if n == 0 and len(cells) > 1 and cells[1].lower() in _HEADER_WORDS:
            continue
        key = cells[0].lower() if _MD5.match(cells[0]) else cells[0]
        for style in cells[1:]:
            style = clean_style(style)
            if style and style not in table.setdefault(key, []):
                table[key].append(style)
    if not table:
        raise UsageError(f"--styles {path}: no rows of (file name, relative path or md5; style)")
    return table


def relative_name(label: str, kind: str, entry_name: str) -> str:
    """An entry's path inside its source (what ``--style-from folder`` and csv rows refer to)."""
    if kind == "file":
        return PurePosixPath(entry_name).name
    for sep in ("/", ":"):
        if entry_name.startswith(label + sep):
            return entry_name[len(label) + 1 :]
    return entry_name


class StyleTagger:
    """Which styles a file carries, from its source, its folder and a styles table (see module doc)."""

    def __init__(self, source_styles, folder_sources, table: dict[str, list[str]] | None = None):
        self.source_styles = list(source_styles)  # per source: its named style or None
        self.folder_sources = list(folder_sources)  # per source: tag by first folder?
        self.table = table or {}
        self.needs_md5 = any(_MD5.match(k) for k in self.table)

    def by_name(self, src_index: int, label: str, kind: str, entry_name: str) -> list[str]:
        """The styles known from the source and the names (all but the md5 rows)."""
        out = []
        named = self.source_styles[src_index]
        if named:
            out.append(named)
        if not (self.folder_sources[src_index] or self.table):
            return out  # nothing more to learn from the name: skip parsing it (prepare asks for every file)
        rel = relative_name(label, kind, entry_name)
        parts = PurePosixPath(rel.replace("\\", "/")).parts
        if self.folder_sources[src_index] and len(parts) > 1:
            out.append(clean_style(parts[0]))
        if self.table:
            base = parts[-1] if parts else rel
            for key in (entry_name, rel, base, base.rsplit(".", 1)[0]):
                out.extend(self.table.get(key, ()))
                if _MD5.match(key):
                    out.extend(self.table.get(key.lower(), ()))
        return out

    def by_md5(self, md5: str | None) -> list[str]:
        return list(self.table.get(md5, ())) if md5 else []

    def describe(self) -> str:
        """How files were tagged, for meta.json."""
        how = []
        if any(self.source_styles):
            how.append("source names (STYLE=PATH)")
        if any(self.folder_sources):
            how.append("the first folder under the source")
        if self.table:
            how.append(f"a styles table of {len(self.table)} keys (file name, relative path or md5)")
        return ", ".join(how) or "none"


def make_tagger(sources_with_styles, style_from: str | None, styles_csv) -> StyleTagger:
    """A tagger for ``[(source text, style or None)]`` and the --style-from/--styles options."""
    if style_from is not None and style_from not in STYLE_FROM:
        raise UsageError(f"--style-from must be one of {', '.join(STYLE_FROM)}, got {style_from!r}")
    table = load_styles_csv(styles_csv) if styles_csv is not None else None
    folder = [style_from == "folder" or text == "demo" for text, _ in sources_with_styles]
    return StyleTagger([s for _, s in sources_with_styles], folder, table)


def add_duplicate_styles(rows_path: Path, extra: dict[str, set], counts) -> None:
    """Give each kept row of prepare's ``files.jsonl`` named in ``extra`` the styles its duplicates came
    with, counting the new ones in ``counts`` (a Counter); the file is rewritten only when one changes
    (and not even read when no duplicate brought a style: reading it back costs a large run ~5 us a row)."""
    if not any(extra.values()):
        return
    rows = [json.loads(line) for line in Path(rows_path).read_text(encoding="utf-8").splitlines() if line]
    changed = False
    for r in rows:
        new = extra.get(r["name"], set()) - set(r["styles"]) if r["split"] is not None else set()
        if new:
            r["styles"] = sorted(set(r["styles"]) | new)
            counts.update(new)
            changed = True
    if changed:
        with open(rows_path, "w", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())
