"""The API's request and response bodies; FastAPI turns them into the OpenAPI document at /docs."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from midigen.generate.sampling import DEFAULTS, MAX_CHORD_WEIGHT, TOP_P
from midigen.studio.workspace import ID_PATTERN

MAX_NEW_SECONDS = 300.0  # one job writes at most five minutes of music

Instrument = int | str  # a General MIDI program 0..127, 128 or "drums", or a (partial) GM name


class Sampling(BaseModel):
    """The sampling controls shared by every kind of job."""

    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(DEFAULTS["temperature"], gt=0, le=5, description="higher: more surprising choices")
    top_p: float | None = Field(TOP_P, gt=0, le=1, description=f"nucleus sampling (default {TOP_P}, as the "
                                                                 "commands); null or 1: off")
    top_k: int | None = Field(None, ge=1, le=65535, description="null: off")
    chord_weight: float = Field(DEFAULTS["chord_weight"], ge=0, le=MAX_CHORD_WEIGHT,
                                description="nats more for the tones of the chord asked for (0: none)")
    seed: int | None = Field(None, ge=0, lt=2**31, description="the same seed and request give the same music; "
                                                                "null: a random seed (reported in the version)")
    free_range: bool = Field(False, description="let instruments write outside the pitch range and polyphony "
                                                "they play in the training data (/api/info: note_ranges)")


class Steering(BaseModel):
    """Controls a checkpoint may offer (see /api/info capabilities); a value it never learned is a 400
    that lists the ones it did. null or "": the model chooses."""

    style: str | None = Field(None, max_length=1000, description="a style, or several separated by commas")
    key: str | None = Field(None, max_length=40, examples=["D", "F# minor"])
    density: str | None = Field(None, max_length=40, examples=["low", "medium", "high"])


MAX_CHORD_TEXT = 4000  # characters of a chord chart (a few hundred bars)


class Chords(BaseModel):
    """A chord chart for the new music, as `--chords` takes it (a 400 names a bad chord)."""

    chords: str | None = Field(None, max_length=MAX_CHORD_TEXT, examples=["C G Am F", "C G | Am F | Dm7 G7 | C"],
                               description="one chord per bar, or bars separated by |; it repeats to the end. "
                                           "null or \"\": none asked for (an edit follows the song's own chords)")


class EditChords(Chords):
    free_chords: bool = Field(False, description="let the model choose the harmony of what it writes, instead of "
                                                 "following the song's own chords (or the chart given)")


class ChordsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chords: str = Field(..., max_length=MAX_CHORD_TEXT, examples=["C G | Am F"])


class ChordsOut(BaseModel):
    """A chart as the server reads it: its bars, each a list of chord names, and the chart written back."""

    bars: list[list[str]]
    text: str


class ChordBar(BaseModel):
    start: float = Field(description="seconds")
    end: float
    chords: str = Field(description="the bar's chords as the labeller hears them, space-separated (\"Am F\")")


class Meter(BaseModel):
    time_signature: str | None = Field(None, max_length=40, examples=["3/4"],
                                       description="for new music only: an edit keeps the song's own")


class GenerateIn(Sampling, Steering, Meter, Chords):
    """New music from nothing; the result replaces what the piece shows (undo brings it back)."""

    instruments: list[Instrument] | None = Field(None, description="null: the model chooses")
    tempo: float | None = Field(None, ge=16, le=512, description="start tempo in BPM; null: the model chooses")
    seconds: float = Field(30.0, gt=0, le=MAX_NEW_SECONDS, description="length of the new music")
    form: str | None = Field(None, max_length=2000, examples=["A:4 B:4 A:4 B:4"],
                             description="a song with a form (docs/form.md): sections as LABEL:BARS, A' a variation "
                                         "of A; it sets the length (seconds is then not used); null or '': none")
    vary: float | None = Field(None, gt=0, le=1, description="with a form: the share of a variation's bars written "
                                                             "anew (null: 1/3)")


class LikeIn(Sampling, Steering):
    """A span rewritten as a variation of another (a section of the song's form, or any bars): the
    other span's notes copied over it, then about ``vary`` of its bars written anew. The same span
    twice: a variation of itself."""

    version: str | None = Field(None, pattern=ID_PATTERN, description="null: the current version")
    start_s: float = Field(..., ge=0, description="the span to rewrite")
    end_s: float = Field(..., gt=0)
    like_start_s: float = Field(..., ge=0, description="the span it becomes like (as long as the other)")
    like_end_s: float = Field(..., gt=0)
    vary: float | None = Field(None, gt=0, le=1, description="share of bars written anew (null: 1/3)")


class ContinueIn(Sampling, Chords):
    """More music after a version's notes, from its end or from a point (what was after the point goes)."""

    version: str | None = Field(None, pattern=ID_PATTERN, description="the version to continue; null: the current one")
    at_seconds: float | None = Field(None, ge=0, description="continue from here; null: from the end")
    seconds: float = Field(30.0, gt=0, le=MAX_NEW_SECONDS, description="length of the new music")
    instruments: list[Instrument] | None = Field(None, description="instruments to add to the song's own")
    tempo: float | None = Field(None, ge=16, le=512, description="a tempo change where the new music starts")


class InfillIn(Sampling, Steering, EditChords):
    """Rewrite a time span (optionally only some instruments); N variants to audition."""

    version: str | None = Field(None, pattern=ID_PATTERN, description="null: the current version")
    start_s: float = Field(..., ge=0)
    end_s: float = Field(..., gt=0)
    instruments: list[Instrument] | None = Field(None, description="rewrite only these; null: all")
    num_samples: int = Field(1, ge=1, le=8, description="variants to write")


class ArrangeIn(Sampling, Steering, EditChords):
    """New parts over the whole song, keeping some of its parts."""

    version: str | None = Field(None, pattern=ID_PATTERN, description="null: the current version")
    add: list[Instrument] = Field(..., min_length=1, description="instruments to write")
    keep: list[Instrument] | None = Field(None, description="the song's parts to keep; null: all of them")
    num_samples: int = Field(1, ge=1, le=8)


class SelectIn(BaseModel):
    version: str = Field(..., pattern=ID_PATTERN)


class VersionOut(BaseModel):
    id: str
    number: int = Field(description="the version's number in its piece (v1, v2, ...), kept for life: it names "
                                    "the downloaded files")
    label: str
    kind: str = Field(description="upload, generate, continue, infill, arrange or like")
    created: float
    parent: str | None
    notes: int
    seconds: float
    instruments: list[int]
    params: dict
    warnings: list[str] = Field([], description="what the result lacks, e.g. an instrument the model wrote no "
                                               "notes for (empty: nothing to say)")


class PieceOut(BaseModel):
    id: str
    name: str
    created: float
    versions: list[VersionOut]
    history: list[str] = Field(description="the undo list: version ids")
    cursor: int = Field(description="index of the current version in history (-1: empty piece)")
    current: str | None
    can_undo: bool
    can_redo: bool


class PieceBrief(BaseModel):
    id: str
    name: str
    created: float
    versions: int
    current: str | None
    seconds: float


class Track(BaseModel):
    index: int
    name: str
    instrument: int = Field(description="GM program 0..127, 128 = drums")
    label: str
    drums: bool
    start: list[float] = Field(description="note onsets, seconds")
    duration: list[float]
    pitch: list[int]
    velocity: list[int]


class TempoOut(BaseModel):
    time: float
    bpm: float


class MeterOut(BaseModel):
    time: float
    numerator: int
    denominator: int


class SectionOut(BaseModel):
    label: str
    start: float = Field(description="seconds")
    end: float


class RollOut(BaseModel):
    """A version as the page draws it: every track's notes in seconds, bar and beat lines."""

    duration: float
    ticks_per_quarter: int
    tracks: list[Track]
    bars: list[float]
    beats: list[float]
    tempos: list[TempoOut]
    time_signatures: list[MeterOut]
    sections: list[SectionOut] = Field([], description="the sections the song's markers name (a form's), "
                                                       "drawn as bands over the roll")
    chords: list[ChordBar] = Field(description="each bar's chords as the labeller hears the notes")


class JobOut(BaseModel):
    id: str
    kind: str
    piece: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    position: int | None = Field(description="jobs that run before this one: 0 while it runs, null when over")
    tokens: int = Field(description="tokens written so far")
    notes_total: int = Field(description="notes written so far")
    notes: list[list[float]] = Field(description="notes written after the first `since`: "
                                                 "[start s, duration s, pitch, velocity, instrument]")
    versions: list[str] = Field(description="the versions the job made, once done")
    error: str | None
    elapsed: float


class Capabilities(BaseModel):
    can_edit: bool
    styles: list[str]
    instruments: list[int]
    time_signatures: list[Any]
    keys: list[Any]
    densities: list[Any]
    chords: bool = Field(False, description="whether jobs can follow a chord chart (`chords`): codec v4")
    chord_vocabulary: list[str] = Field([], description="the chords the model learned to write (any chord of "
                                                        "the vocabulary can be asked for)")


class InstrumentOut(BaseModel):
    id: int
    name: str


class LimitsOut(BaseModel):
    upload_bytes: int
    piece_seconds: float
    new_seconds: float
    pieces: int
    versions_per_piece: int
    workspace_midi_bytes: int


class DefaultsOut(BaseModel):
    """The sampling settings a request gets when it leaves them out (the page's form starts from them)."""

    temperature: float
    top_p: float | None
    top_k: int | None


class InfoOut(BaseModel):
    version: str
    checkpoint: str
    device: str
    parameters: int
    block_size: int
    capabilities: Capabilities
    instruments: list[InstrumentOut] = Field(description="every General MIDI instrument, 128 = drums")
    limits: LimitsOut
    defaults: DefaultsOut
    queue: dict
    model: str = Field("base", description="the model in use: 'base' or an id from /api/models")


class ErrorOut(BaseModel):
    detail: str


# ----- teaching and models ------------------------------------------------------------------------


class TeachIn(BaseModel):
    """Tune the base on a teaching set's files into a new model (one tune at a time: 409 otherwise)."""

    model_config = ConfigDict(extra="forbid")
    set: str = Field(..., pattern=ID_PATTERN, description="the set the files went to (/api/teach/files)")
    style: str = Field(..., min_length=1, max_length=60, description="the style's name: it names the model and, "
                                                                     "when the base knows styles, the new style")
    steps: int = Field(300, ge=1, le=5000, description="at most this many steps (it stops earlier at the best "
                                                        "validation loss)")
    minutes: float = Field(10.0, gt=0, le=120, description="stop within this many minutes")


class TeachFilesOut(BaseModel):
    set: str
    files: int = Field(description="MIDI files the set holds now")
    added: list[str]
    refused: list[dict] = Field(description="[{name, reason}] for each file that could not be read")


class TeachOut(BaseModel):
    id: str
    set: str
    style: str
    status: Literal["queued", "preparing", "training", "done", "failed", "cancelled"]
    steps: int
    files: int
    points: list[list[float | None]] = Field(description="[step, loss, val bits/note or null] after `since`")
    points_total: int
    model: str | None = Field(description="the new model's id, once done")
    error: str | None
    result: dict
    elapsed: float


class ModelOut(BaseModel):
    id: str
    name: str
    styles: list[str] = []
    val_bits_per_note: float | None = None
    base_val_bits_per_note: float | None = None


class ModelsOut(BaseModel):
    current: str = Field(description="the model generation uses now: 'base' or an adapter's id")
    models: list[ModelOut]
    base_loads: int = Field(description="times the base weights were read (switching models reads none)")


class SelectModelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(..., max_length=48, description="'base' or a model id from /api/models")
