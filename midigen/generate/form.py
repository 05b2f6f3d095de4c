"""Whole songs with a form (``midigen sample --form``), and "make this like that" on any song.

A form is a plan of tasks for the one engine (``midigen.generate.engine``), never a second sampler:

1. **The anchor.** The first section that returns (else the first section) is sampled from nothing
   (``midigen.generate.sample``), cut at its last bar and placed at its first bar.
2. **Copies.** Each time a section is written, it is placed at every other bar where its label (or a
   variation of it: ``A'``, ``A''``) stands. A copy is the same notes, shifted by whole bars, spliced in
   by the one splice (``midigen.generate.splice``); no note is re-encoded, so a repeat is exact in the
   written file.
3. **What lies between.** Every other section's first occurrence is written by infill
   (``midigen.generate.edit``) in order of appearance, with the music already placed on both sides: an
   intro knows the section it leads into, a bridge the sections around it, an outro what it ends.
4. **Variations.** ``A'`` starts as a copy of ``A``; then a block of about ``--vary`` of its bars (one
   run, never its first bar when it has more than one) is rewritten by infill, both sides known, and
   the result is copied to every other ``A'``.
5. **Seams.** A repeat that leads into another section than its first occurrence did (or into the
   song's end) has its last bar rewritten by infill, both sides known, so sections lead into each other
   rather than butting together. That bar is the only one where a repeat may differ; the summary names it.

Every section's notes are cut at its last bar line before it is copied, so no copied note sounds into
the next section and a copy never meets a kept note of its pitch. The tempo is one (``DEFAULT_TEMPO``
unless asked) and the meter one (the model's first, unless asked), so a bar is the same length
everywhere. Each section's first bar carries a marker meta event named by its label.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace

import numpy as np
import symusic

from midigen.errors import UsageError
from midigen.generate.edit import Edit, infill_edits
from midigen.generate.harmony import need_chords
from midigen.generate.sample import find_problems, generate_samples, Sample, sample_score
from midigen.generate.sampling import FILL_WEIGHT, Sampling
from midigen.generate.splice import FIELDS, TYPES, splice
from midigen.music.chordtext import marker_chord, parse_chords
from midigen.music.codec import Codec, score_instruments, track_instrument
from midigen.music.ranges import NoteLimits
from midigen.music.timing import bar_tick, meters, seconds_at_tick

DEFAULT_TEMPO = 120.0  # a form needs a known bar length before its first note is written
MAX_SECTION_BARS = 64
MAX_FORM_BARS = 512
VARY_SHARE = 1 / 3  # share of a variation's bars rewritten
END_MARKER = "end"  # keeps the song's length where its last bars fall silent (as an edit does)
_ITEM = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*)('*):([0-9]+)$")


# ----- the form text ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """One occurrence of a section: its label as written (``A``, ``A'``), its length and first bar (from 1)."""

    label: str
    bars: int
    first_bar: int

    @property
    def last_bar(self) -> int:
        return self.first_bar + self.bars - 1

    @property
    def parent(self) -> str | None:
        """The label this one varies (``A'`` -> ``A``, ``A''`` -> ``A'``); None for a plain label."""
        return self.label[:-1] if self.label.endswith("'") else None

    @property
    def root(self) -> str:
        return self.label.rstrip("'")


def parse_form(text: str) -> list[Section]:
    """``"intro:4 A:8 B:8 A':8"`` -> sections; anything else is a one-line UsageError."""
    items = str(text).split()
    if not items:
        raise UsageError("the form is empty: give sections as LABEL:BARS, like 'A:8 B:8 A:8'")
    out, bar = [], 1
    for item in items:
        m = _ITEM.match(item)
        if m is None:
            raise UsageError(f"bad form item {item!r}: use LABEL:BARS, like A:8 (A':8 varies A)")
        label, bars = m[1] + m[2], int(m[3])
        if bars < 1:
            raise UsageError(f"section {label} has 0 bars: each section needs at least one")
        if bars > MAX_SECTION_BARS:
            raise UsageError(f"section {label} has {bars} bars, more than the limit of {MAX_SECTION_BARS}")
        out.append(Section(label, bars, bar))
        bar += bars
    if bar - 1 > MAX_FORM_BARS:
        raise UsageError(f"the form has {bar - 1} bars, more than the limit of {MAX_FORM_BARS}")
    _check_labels(out)
    return out


def _check_labels(sections: list[Section]) -> None:
    """A label keeps its length; a variation needs the section it varies, of the same length."""
    size = {}
    for s in sections:
        if size.setdefault(s.label, s.bars) != s.bars:
            raise UsageError(f"section {s.label} has {size[s.label]} bars and also {s.bars}: "
                             "a repeat is the same length")
    for s in sections:
        if s.parent is not None and s.parent not in size:
            raise UsageError(f"{s.label} varies {s.parent}, which the form does not have")
        if s.parent is not None and size[s.parent] != s.bars:
            raise UsageError(f"{s.label} has {s.bars} bars but {s.parent} has {size[s.parent]}: "
                             "a variation keeps the length")


def parse_section_controls(text: str) -> tuple[str, dict[str, str]]:
    """``"B:density=high,key=E minor"`` -> ("B", {"density": "high", "key": "E minor"}). A comma not
    followed by NAME= belongs to the value before it (``style=a,b``)."""
    label, sep, rest = str(text).partition(":")
    if not sep or not label.strip() or not rest.strip():
        raise UsageError(f"bad --section {text!r}: use LABEL:NAME=VALUE[,NAME=VALUE], like B:density=high")
    out: dict[str, str] = {}
    last = None
    for piece in rest.split(","):
        name, eq, value = piece.partition("=")
        if eq and name.strip() in ("style", "key", "density"):
            last = name.strip()
            out[last] = value.strip()
        elif last is not None and not eq:
            out[last] += "," + piece.strip()
        else:
            raise UsageError(f"bad --section {text!r}: {piece.strip()!r} is not style=, key= or density=")
    return label.strip(), out


_CHART_LABEL = re.compile(r"(?:^|(?<=[\s|]))([A-Za-z][A-Za-z0-9_-]*'*)\s*:")


def parse_form_chords(text: str, sections: list[Section]) -> dict:
    """``--chords`` with ``--form`` -> label -> chart (``midigen.music.chordtext.parse_chords``).

    ``"A: C G Am F | B: F G C C"`` gives each named section its own chart (the ``|`` before a label
    only separates; inside a section's text ``|`` marks bars as in any chart); a section without one
    keeps the chords the model hears (as with no chart). A chart without labels, ``"C Am F G"``, is every
    section's (key ""). Each occurrence of a section starts its chart again at its first bar."""
    parts = _CHART_LABEL.split(str(text))
    if len(parts) == 1:
        return {"": parse_chords(text)}
    if parts[0].strip(" \t\r\n|"):
        raise UsageError(f"chords {parts[0].strip()!r} come before any section label: give LABEL: CHORDS, "
                         "like 'A: C G Am F | B: F G C C'")
    labels = {s.label for s in sections}
    out: dict = {}
    for label, chart in zip(parts[1::2], parts[2::2]):
        if label not in labels:
            raise UsageError(f"--chords names section {label}, which the form does not have "
                             f"(it has {', '.join(sorted(labels))})")
        if label in out:
            raise UsageError(f"--chords gives section {label} twice")
        chart = chart.strip(" \t\r\n|")
        if not chart:
            raise UsageError(f"--chords gives section {label} no chords")
        out[label] = parse_chords(chart)
    return out


def chart_of(charts: dict, label: str) -> list | None:
    """The chart a section plays: its own, else the one of the section it varies (``A'`` -> ``A``), else
    the whole song's; None for none."""
    while label:
        if label in charts:
            return charts[label]
        label = label[:-1] if label.endswith("'") else ""
    return charts.get("")


def chart_from_bar(chart: list | None, bar: int) -> list | None:
    """``chart`` turned so that its bar ``bar`` (from 0, repeating) comes first: what a span starting
    that many bars into its section plays."""
    if chart is None:
        return None
    k = bar % len(chart)
    return chart[k:] + chart[:k]


# ----- what is written, and when ---------------------------------------------------------------------


@dataclass
class Step:
    """One task of the plan: ``kind`` is "anchor" (sampled from nothing), "first" (a first occurrence by
    infill), "vary" (a variation's bars by infill) or "seam" (a repeat's last bar by infill)."""

    kind: str
    label: str
    first_bar: int
    last_bar: int


def seam_sections(sections: list[Section]) -> list[Section]:
    """Repeats whose next section differs from the one after their label's first occurrence (the end
    of the song counts as a section)."""
    nxt = [sections[i + 1].label if i + 1 < len(sections) else None for i in range(len(sections))]
    first_next: dict[str, str | None] = {}
    out = []
    for s, n in zip(sections, nxt):
        if s.label not in first_next:
            first_next[s.label] = n
        elif n != first_next[s.label]:
            out.append(s)
    return out


def anchor_label(sections: list[Section]) -> str:
    """The first plain label that returns, else the first plain label."""
    plain = [s.label for s in sections if s.parent is None]
    return next((x for x in plain if plain.count(x) > 1), plain[0])


def variation_bars(section: Section, share: float, seed: int) -> tuple[int, int]:
    """(first, last) bar (of the song) of the block a variation rewrites: about ``share`` of its bars,
    one run placed by ``seed``, not on its first bar when it has more than one."""
    n = section.bars
    k = min(n, max(1, int(round(share * n))))
    lo = 1 if n > k else 0
    rng = np.random.default_rng([int(seed) % (1 << 63), sum(map(ord, section.label))])
    start = int(rng.integers(lo, n - k + 1)) if n - k >= lo else 0
    return section.first_bar + start, section.first_bar + start + k - 1


def plan_steps(sections: list[Section], share: float, seed: int) -> list[Step]:
    """The tasks in the order they run (module docstring)."""
    firsts: dict[str, Section] = {}
    for s in sections:
        firsts.setdefault(s.label, s)
    anchor = anchor_label(sections)
    a = firsts[anchor]
    steps = [Step("anchor", anchor, a.first_bar, a.last_bar)]
    steps += [Step("first", s.label, s.first_bar, s.last_bar) for s in firsts.values()
              if s.parent is None and s.label != anchor]
    for s in sorted((s for s in firsts.values() if s.parent is not None), key=lambda s: len(s.label)):
        first, last = variation_bars(s, share, seed)
        steps.append(Step("vary", s.label, first, last))
    steps += [Step("seam", s.label, s.last_bar, s.last_bar) for s in seam_sections(sections)]
    return steps


# ----- notes by bars ---------------------------------------------------------------------------------


def _range_ticks(score, first_bar: int, last_bar: int) -> tuple[int, int]:
    return bar_tick(score, first_bar), bar_tick(score, last_bar + 1)


def _notes_in(score, lo: int, hi: int, shift: int, end: int | None = None) -> dict:
    """Notes starting in ``[lo, hi)``, moved by ``shift`` ticks, as splice's arrays; cut at ``end`` if given."""
    cols = {f: [] for f in (*FIELDS, "instrument")}
    for t in score.tracks:
        if not t.note_num():
            continue
        a = t.notes.numpy()
        sel = (a["time"] >= lo) & (a["time"] < hi)
        for f in FIELDS:
            cols[f].append(a[f][sel].astype(np.int64))
        cols["instrument"].append(np.full(int(sel.sum()), track_instrument(t), np.int64))
    out = {f: np.concatenate(v) if v else np.zeros(0, np.int64) for f, v in cols.items()}
    out["time"] = out["time"] + shift
    if end is not None:
        out["duration"] = np.maximum(1, np.minimum(out["duration"], end - out["time"]))
    return out


def drop_notes(score, lo: int, hi: int, instruments=None) -> int:
    """Remove the notes starting in ``[lo, hi)`` (of ``instruments``, or all) from ``score`` in place;
    returns how many."""
    gone = 0
    for t in score.tracks:
        if not t.note_num() or (instruments is not None and track_instrument(t) not in set(instruments)):
            continue
        a = t.notes.numpy()
        keep = (a["time"] < lo) | (a["time"] >= hi)
        gone += int((~keep).sum())
        t.notes = symusic.core.NoteTickList.from_numpy(*(a[f][keep].astype(y) for f, y in zip(FIELDS, TYPES)))
    return gone


def cut_at(score, lo: int, hi: int) -> None:
    """Notes starting in ``[lo, hi)`` end by ``hi`` (in place): a section's notes stay inside it."""
    for t in score.tracks:
        if not t.note_num():
            continue
        a = t.notes.numpy()
        inside = (a["time"] >= lo) & (a["time"] < hi)
        d = a["duration"].astype(np.int64)
        d[inside] = np.maximum(1, np.minimum(d[inside], hi - a["time"][inside]))
        a = {**{f: a[f] for f in FIELDS}, "duration": d}
        t.notes = symusic.core.NoteTickList.from_numpy(*(a[f].astype(y) for f, y in zip(FIELDS, TYPES)))


def _is_chord_mark(m) -> bool:
    return marker_chord(str(m.text)) is not None


def drop_chord_marks(score, lo: int, hi: int) -> None:
    """Remove the chord symbols (``Chord NAME`` markers) in ``[lo, hi)`` from ``score`` in place."""
    score.markers = [m for m in score.markers if not (_is_chord_mark(m) and lo <= int(m.time) < hi)]


def copy_chord_marks(score, source: tuple[int, int], target_start: int) -> None:
    """The chord symbols of ``source`` (ticks) put at the same places from ``target_start`` on, in place
    of the ones there: a copied section carries its chords."""
    lo, hi = source
    if lo == target_start:
        return
    marks = [(int(m.time) - lo + target_start, str(m.text)) for m in score.markers
             if _is_chord_mark(m) and lo <= int(m.time) < hi]
    drop_chord_marks(score, target_start, target_start + hi - lo)
    score.markers.extend(symusic.core.TextMetaTick(t, text) for t, text in marks)
    score.markers.sort(key=lambda m: m.time)


def bar_tones(score, model_bar: int, first_bar: int, bars: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the ticks of bars ``first_bar``.., (``bars``, 12) weights, onset ticks): the pitch classes of the
    ``bars`` bars from ``model_bar`` on, each bar's note-time per class (drums left out, notes cut at
    their bar's end) over its largest, and their notes' onsets (drums too) moved to the bars they stand
    for, so a rewritten bar leans toward the tones and rhythm of its model bar (``Grammar.favour_tones``):
    a variation keeps its section's notes and rewrites their detail."""
    edges = np.array([bar_tick(score, model_bar + i) for i in range(bars + 1)], np.int64)
    out = np.zeros((bars, 12))
    shift = bar_tick(score, first_bar) - edges[0]
    onsets = []
    for t in score.tracks:
        if not t.note_num():
            continue
        a = t.notes.numpy()
        on, end = a["time"].astype(np.int64), (a["time"] + a["duration"]).astype(np.int64)
        bar = np.searchsorted(edges, on, side="right") - 1
        ok = (bar >= 0) & (bar < bars)
        onsets.append(on[ok] + shift)
        if t.is_drum:
            continue
        dur = np.minimum(end[ok], edges[bar[ok] + 1]) - on[ok]
        np.add.at(out, (bar[ok], a["pitch"][ok].astype(np.int64) % 12), np.maximum(dur, 1))
    out /= np.maximum(out.max(axis=1, keepdims=True), 1e-9)
    starts = np.array([bar_tick(score, first_bar + i) for i in range(bars)], np.int64)
    return starts, out, np.unique(np.concatenate([np.zeros(0, np.int64), *onsets]))


def copy_span(score, source: tuple[int, int], target_start: int, instruments=None) -> tuple[object, int, int]:
    """``score`` (changed in place) with the notes starting in ``source`` (ticks) copied to start at
    ``target_start`` through the one splice, after the notes of ``instruments`` (or all) starting in the
    target were removed; each copied note ends by the target's end. Returns (score, copied, removed)."""
    lo, hi = source
    if lo == target_start:  # a span copied onto itself is itself
        return score, 0, 0
    end = target_start + (hi - lo)
    removed = drop_notes(score, target_start, end, instruments)
    notes = _notes_in(score, lo, hi, target_start - lo, end)
    if instruments is not None:
        keep = np.isin(notes["instrument"], np.asarray(list(instruments), np.int64))
        notes = {k: v[keep] for k, v in notes.items()}
    score, written, _ = splice(score, notes)
    return score, written, removed


# ----- writing a song ----------------------------------------------------------------------------------


@dataclass
class FormSong:
    """A song written from a form, with what its summary reports."""

    score: symusic.core.ScoreTick
    sections: list[Section]
    steps: list[Step]
    seed: int
    rewritten: dict = field(default_factory=dict)  # variation label -> (first bar, last bar) rewritten
    seconds_by_kind: dict = field(default_factory=dict)  # compute seconds per step kind
    warnings: list = field(default_factory=list)


@dataclass
class _Writer:
    """What every step of one song shares: the model, the settings and the song so far."""

    model: object
    codec: Codec
    sampling: Sampling
    device: object
    limits: NoteLimits | None
    controls: dict  # label -> control ids (a label not there: "")
    sections: list
    listener: object = None  # the engine's listener (``midigen.generate.engine.Listener``): a studio streams notes
    charts: dict = field(default_factory=dict)  # label -> chord chart ("": every section's; ``parse_form_chords``)
    score: object = None

    def seed(self, k: int) -> int:
        """A seed of its own for step ``k``, from the song's seed."""
        return int(np.random.SeedSequence([self.sampling.seed % (1 << 63), k]).generate_state(1)[0])

    def controls_of(self, label: str) -> list[int]:
        return list(self.controls.get(label, self.controls.get(label.rstrip("'"), self.controls.get("", ()))))

    def key_of(self, label: str) -> int | None:
        """The key ``label``'s controls ask for (0..23), which the key weight holds it to; None for none."""
        c = self.codec
        keys = [t - c.key_start for t in self.controls_of(label) if c.has_controls and 0 <= t - c.key_start < 24]
        return keys[0] if keys else None

    def chart_at(self, label: str, first_bar: int) -> list | None:
        """The chart a span of ``label`` starting at song bar ``first_bar`` plays: its section's chart
        from the bar the span is into the occurrence that holds it."""
        held = next(s for s in self.sections if s.first_bar <= first_bar <= s.last_bar)
        return chart_from_bar(chart_of(self.charts, label), first_bar - held.first_bar)

    def rewrite(self, k: int, label: str, first_bar: int, last_bar: int, like_bar: int | None = None,
                fresh: bool = False) -> None:
        """Bars ``first_bar..last_bar`` written again by infill, both sides known, on their section's
        chart if it has one, else on the chords they carry (a copy's, a seam's) or, ``fresh`` (a section's
        first occurrence, written over silence), on chords the model chooses; with ``like_bar`` (the bar of
        the section a variation varies that ``first_bar`` stands for), each bar leans toward its model
        bar's pitch classes (``bar_tones``)."""
        lo, hi = _range_ticks(self.score, first_bar, last_bar)
        start, end = (float(x) for x in seconds_at_tick(self.score, [lo, hi]))
        sampling = replace(self.sampling, seed=self.seed(k), key=self.key_of(label),
                           fill_weight=FILL_WEIGHT if fresh else 0.0,  # over silence: filled to its end
                           repetition_penalty=1.0)  # rewrites have always drawn without the penalty
        chart = self.chart_at(label, first_bar)
        (edit,) = infill_edits(self.model, self.codec, self.score, start_s=start, end_s=end, sampling=sampling,
                               controls=self.controls_of(label), device=self.device, limits=self.limits,
                               open_end=True, chords=chart, free_chords=fresh and chart is None,
                               listener=self.listener,
                               bar_tones=None if like_bar is None else bar_tones(
                                   self.score, like_bar, first_bar, last_bar - first_bar + 1))
        self.score = edit.score

    def place(self, sections: list[Section], label: str, labels: set[str]) -> None:
        """Cut ``label``'s first occurrence at its last bar line and copy it over every other occurrence
        of the ``labels``."""
        src = next(s for s in sections if s.label == label)
        lo, hi = _range_ticks(self.score, src.first_bar, src.last_bar)
        cut_at(self.score, lo, hi)
        for s in sections:
            if s.label in labels and s is not src:
                self.score, _, _ = copy_span(self.score, (lo, hi), bar_tick(self.score, s.first_bar))
                copy_chord_marks(self.score, (lo, hi), bar_tick(self.score, s.first_bar))


def _family(sections: list[Section], label: str) -> set[str]:
    """``label`` and every label that varies it, at any depth."""
    return {s.label for s in sections if s.label.startswith(label) and s.label.rstrip("'") == label.rstrip("'")
            and len(s.label) >= len(label)}


def _anchor_score(w: _Writer, section: Section, tempo: float, time_signature, instruments) -> object:
    """The anchor sampled from nothing, on one tempo and meter, cut at its last bar and moved to its
    first bar; the song's score from then on."""
    n, d = time_signature or (4, 4)
    seconds = section.bars * n * 4 / d * 60.0 / tempo
    sampling = replace(w.sampling, key=w.key_of(section.label))
    begin = getattr(w.listener, "begin", None)
    if begin is not None:  # the anchor's tokens are read after this head, placed at its first bar
        head = [w.codec.BOS, *(w.codec.inst_token(i) for i in instruments or ()), w.codec.tempo_token(tempo)]
        begin(np.array(head if instruments else [w.codec.BOS], np.int64), (section.first_bar - 1) * seconds / section.bars)
    (s,) = generate_samples(w.model, w.codec, num_samples=1, seconds=seconds, sampling=sampling,
                            instruments=instruments, tempo=tempo, device=w.device, listener=w.listener,
                            controls=w.controls_of(section.label), time_signature=time_signature, limits=w.limits,
                            chords=chart_of(w.charts, section.label))
    score = sample_score(w.codec, s)
    score.tempos = [score.tempos[0]] if len(score.tempos) else [symusic.core.TempoTick(0, int(round(60e6 / tempo)))]
    score.tempos[0].time = 0
    _, num, den = meters(score)[0]
    score.time_signatures = [symusic.core.TimeSignatureTick(0, num, den)]
    length = bar_tick(score, section.bars + 1)
    shift = bar_tick(score, section.first_bar)
    score.markers = [symusic.core.TextMetaTick(int(m.time) + shift, str(m.text)) for m in score.markers
                     if _is_chord_mark(m) and int(m.time) < length]  # its chords stay, as symbols
    drop_notes(score, length, 1 << 62)
    cut_at(score, 0, length)
    for t in score.tracks:
        if shift and t.note_num():
            _shift_track(t, shift)
    return score


def _shift_track(track, shift: int) -> None:
    a = track.notes.numpy()
    a = {**{f: a[f] for f in FIELDS}, "time": a["time"].astype(np.int64) + shift}
    track.notes = symusic.core.NoteTickList.from_numpy(*(a[f].astype(y) for f, y in zip(FIELDS, TYPES)))


def _mark(score, sections: list[Section]) -> None:
    """A marker at each section's first bar, named by its label, and ``END_MARKER`` at the form's end;
    the chord symbols stay (up to the end)."""
    end = bar_tick(score, sections[-1].last_bar + 1)
    chords = [m for m in score.markers if _is_chord_mark(m) and int(m.time) < end]
    score.markers = [symusic.core.TextMetaTick(bar_tick(score, s.first_bar), s.label) for s in sections]
    score.markers.append(symusic.core.TextMetaTick(end, END_MARKER))
    score.markers.extend(chords)
    score.markers.sort(key=lambda m: m.time)


def write_form(model, codec: Codec, sections: list[Section], *, sampling: Sampling | None = None,
               tempo: float | None = None, time_signature: tuple[int, int] | None = None, instruments=None,
               controls: dict | None = None, vary: float = VARY_SHARE, device=None,
               limits: NoteLimits | None = None, charts: dict | None = None, listener=None) -> FormSong:
    """One song in the form ``sections`` (``parse_form``), written as ``plan_steps`` says.

    ``controls``: label -> control ids ("" for the whole song; a variation without its own uses its
    root's). ``charts``: label -> chord chart (``parse_form_chords``; "" for every section), forced on a
    chord (v4) model, each occurrence starting its chart again. ``tempo`` defaults to ``DEFAULT_TEMPO``;
    ``time_signature`` to the model's choice (4/4 under a chart). The same seed and arguments give the
    same song. ``listener`` hears every token the engine writes (the studio streams the notes: the first
    section's after ``listener.begin``, the others chunk by chunk); copies are placed, not written."""
    if not 0 < vary <= 1:
        raise UsageError(f"the variation share must be in (0, 1], got {vary}")
    if not codec.has_controls:
        raise UsageError(f"this checkpoint's codec v{codec.version} cannot edit, so it cannot write a form")
    sampling = sampling or Sampling()
    charts = dict(charts or {})
    need_chords(codec, next(iter(charts.values()), None))
    w = _Writer(model, codec, sampling, device, limits, dict(controls or {}), sections, listener, charts)
    steps = plan_steps(sections, vary, sampling.seed)
    song = FormSong(None, sections, steps, sampling.seed)
    firsts = {s.label: s for s in reversed(sections)}
    for k, step in enumerate(steps):
        t0 = time.perf_counter()
        if step.kind == "anchor":
            w.score = _anchor_score(w, firsts[step.label], tempo or DEFAULT_TEMPO, time_signature, instruments)
            _mark(w.score, sections)
        elif step.kind == "vary":
            src = firsts[firsts[step.label].parent]
            lo, hi = _range_ticks(w.score, src.first_bar, src.last_bar)
            w.score, _, _ = copy_span(w.score, (lo, hi), bar_tick(w.score, firsts[step.label].first_bar))
            copy_chord_marks(w.score, (lo, hi), bar_tick(w.score, firsts[step.label].first_bar))
            w.rewrite(k, step.label, step.first_bar, step.last_bar,
                      like_bar=src.first_bar + step.first_bar - firsts[step.label].first_bar)
            song.rewritten[step.label] = (step.first_bar, step.last_bar)
        else:
            w.rewrite(k, step.label, step.first_bar, step.last_bar, fresh=step.kind == "first")
        if step.kind != "seam":  # a finished section goes wherever its label (or a variation of it) stands
            w.place(sections, step.label, _family(sections, step.label))
        kind = {"anchor": "first", "first": "infill", "vary": "infill"}.get(step.kind, "seams")
        song.seconds_by_kind[kind] = song.seconds_by_kind.get(kind, 0.0) + time.perf_counter() - t0
    _mark(w.score, sections)
    song.score = w.score
    song.warnings = form_problems(codec, w.score)
    return song


def form_problems(codec: Codec, score) -> list[str]:
    """Silence and loop warnings for a whole song (``midigen.generate.sample.find_problems``)."""
    tokens = codec.encode_score(score)
    head = codec.header_length(tokens)
    return find_problems(codec, Sample(tokens, head, 0, 0.0, None))


# ----- the summary ---------------------------------------------------------------------------------------


def form_summary(song: FormSong) -> dict:
    """What the JSON line reports: the sections with their bars and seconds, which are exact repeats
    (but for a named seam bar) and which variations, the seam bars, compute time by kind, warnings."""
    score, sections = song.score, song.sections
    secs = lambda bar: round(float(seconds_at_tick(score, bar_tick(score, bar))), 3)  # noqa: E731
    seams = {s.last_bar for s in seam_sections(sections)}
    firsts: dict[str, Section] = {}
    rows = []
    for s in sections:
        first = firsts.setdefault(s.label, s)
        kind = "first" if first is s else "repeat"
        if first is s and s.parent is not None:
            kind = "variation"
        row = {"label": s.label, "kind": kind, "bars": [s.first_bar, s.last_bar],
               "seconds": [secs(s.first_bar), secs(s.last_bar + 1)]}
        if kind == "repeat":
            row["of_bars"] = [first.first_bar, first.last_bar]
        if kind == "variation":
            row["of"] = s.parent
            row["rewritten_bars"] = list(song.rewritten[s.label])
        row["seam_bar"] = s.last_bar if kind == "repeat" and s.last_bar in seams else None
        rows.append(row)
    total = sections[-1].last_bar
    return {"form": " ".join(f"{s.label}:{s.bars}" for s in sections), "bars": total,
            "seconds": secs(total + 1), "seed": song.seed, "sections": rows,
            "exact_repeats": [f"{r['label']}@{r['bars'][0]}" for r in rows if r["kind"] == "repeat"],
            "variations": [f"{r['label']}@{r['bars'][0]}" for r in rows if r["kind"] == "variation"],
            "seam_bars": sorted(seams),
            "instruments": score_instruments(score),
            "compute_seconds": {k: round(v, 2) for k, v in song.seconds_by_kind.items()},
            "warnings": song.warnings}


def section_bands(song_or_score, sections: list[Section] | None = None) -> list[tuple[float, float, str]]:
    """(start s, end s, label) of each section, for the piano roll's bands; from a score's own markers
    when ``sections`` is None (``marker_sections``)."""
    score = getattr(song_or_score, "score", song_or_score)
    if sections is None:
        return [(float(seconds_at_tick(score, lo)), float(seconds_at_tick(score, hi)), name)
                for name, lo, hi in marker_sections(score)]
    return [(float(seconds_at_tick(score, bar_tick(score, s.first_bar))),
             float(seconds_at_tick(score, bar_tick(score, s.last_bar + 1))), s.label) for s in sections]


# ----- existing songs: a span made like another ----------------------------------------------------------


def marker_sections(score) -> list[tuple[str, int, int]]:
    """(name, first tick, end tick) of each section a song's markers name: from a marker to the next
    (or the song's end); ``END_MARKER`` only ends the one before it."""
    marks = sorted(((int(m.time), str(m.text)) for m in score.markers if marker_chord(str(m.text)) is None),
                   key=lambda m: m[0])  # chord symbols are markers too, but name no section
    end = max(int(score.end()), 1)
    out = []
    for i, (t, name) in enumerate(marks):
        stop = marks[i + 1][0] if i + 1 < len(marks) else end
        if name != END_MARKER and stop > t:
            out.append((name, t, stop))
    return out


def named_section(score, name: str) -> tuple[int, int]:
    """The ticks of the section a song's marker ``name`` starts (UsageError: none, or several)."""
    found = [(lo, hi) for n, lo, hi in marker_sections(score) if n == name]
    if len(found) != 1:
        names = sorted({n for n, _, _ in marker_sections(score)})
        what = "no marker" if not found else f"{len(found)} markers"
        raise UsageError(f"the song has {what} named {name!r} (its sections: {', '.join(names) or 'none'}); "
                         "give bars instead")
    return found[0]


def like_edits(model, codec: Codec, score, *, source: tuple[int, int], target: tuple[int, int],
               vary: float = VARY_SHARE, instruments=None, num_samples: int = 1, sampling: Sampling | None = None,
               controls=None, device=None, limits: NoteLimits | None = None) -> list[Edit]:
    """``target`` (ticks) rewritten as a variation of ``source``: the source's notes copied over it
    (the one splice; the rest of the song kept as it is), then a block of about ``vary`` of its bars
    rewritten by infill, both sides known, leaning toward the source's bars (``bar_tones``,
    ``Sampling.vary_weight``); the source's chord symbols come with its notes. One Edit per sample (row i:
    ``sampling``'s seed + i), reporting the whole target span."""
    (lo, hi), (tlo, thi) = source, target
    if hi - lo != thi - tlo:
        raise UsageError(f"the two spans differ in length ({hi - lo} and {thi - tlo} ticks): "
                         "a variation keeps the length")
    if not 0 < vary <= 1:
        raise UsageError(f"--vary must be in (0, 1], got {vary}")
    if int(num_samples) < 1:
        raise UsageError("num_samples must be >= 1")
    sampling = sampling or Sampling()
    targets = score_instruments(score) if instruments is None else sorted(int(i) for i in instruments)
    span = tuple(float(x) for x in seconds_at_tick(score, [tlo, thi]))
    out = []
    for row in range(int(num_samples)):
        t0 = time.perf_counter()
        copied, written, removed = copy_span(score.copy(), source, tlo, targets)
        copy_chord_marks(copied, source, tlo)
        a, b = _block_ticks(copied, target, vary, sampling.seed + row)
        start, end = (float(x) for x in seconds_at_tick(copied, [a, b]))
        (edit,) = infill_edits(model, codec, copied, start_s=start, end_s=end, instruments=targets,
                               sampling=replace(sampling, seed=sampling.seed + row), controls=controls,
                               device=device, limits=limits, bar_tones=_like_tones(copied, lo - tlo, a, b))
        out.append(Edit(edit.score, written + edit.written - edit.removed, removed, edit.span_steps, span,
                        tuple(targets), edit.new_tracks, time.perf_counter() - t0, edit.hearing))
    return out


def _like_tones(score, offset: int, a: int, b: int):
    """``bar_tones`` for the block ``[a, b)`` (ticks) of a variation whose model lies ``offset`` ticks
    away; None where either is not on bar lines (the lean is by bars)."""
    first, model = _bar_at(score, a), _bar_at(score, a + offset)
    last = _bar_at(score, b)
    if None in (first, model, last) or last <= first:
        return None
    return bar_tones(score, model, first, last - first)


def _bar_at(score, tick: int) -> int | None:
    """The bar (counted from 1) that starts at ``tick``; None if no bar line is there."""
    bar = 1
    while (t := bar_tick(score, bar)) < tick:
        bar += 1
    return bar if t == tick else None


def _block_ticks(score, target: tuple[int, int], vary: float, seed: int) -> tuple[int, int]:
    """The ticks of the block of bar lines inside ``target`` that a variation rewrites."""
    lo, hi = target
    lines = [lo]
    bar = 1
    while (t := bar_tick(score, bar)) < hi:
        if t > lo:
            lines.append(t)
        bar += 1
    lines.append(hi)
    first, last = variation_bars(Section("like", len(lines) - 1, 1), vary, seed)
    return lines[first - 1], lines[last]
