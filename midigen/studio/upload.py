"""Client MIDI bytes, read in a sandboxed child process under `prepare`'s limits.

A hostile file can crash a MIDI parser, hang it, or make it allocate without bound. The server never
parses client bytes itself: a ``Sandbox`` child (replaced after a crash, a timeout or a memory
blow-up) reads each upload with the rules `prepare` applies to a corpus — the 16 MiB cap,
symusic behind ``smf.sanitize_smf``, at most ``prepare.MAX_NOTES`` notes — plus two that a page with
audio needs: at most ``MAX_SECONDS`` of music and ``MAX_TRACKS`` tracks. What comes back is the song
re-written by symusic, which is what the studio stores and later reads in-process.
"""
from __future__ import annotations

from midigen.errors import MidigenError
from midigen.data.prepare import MAX_NOTES
from midigen.data.sources import MAX_FILE_BYTES
from midigen.generate.sandbox import Refused, Sandbox, SandboxError, serve
from midigen.music.codec import Codec, CodecError, score_instruments
from midigen.music.timing import notes_end_seconds

MAX_UPLOAD_BYTES = MAX_FILE_BYTES  # the same 16 MiB as prepare
MAX_SECONDS = 10 * 60.0  # the studio renders the whole piece as audio: 10 minutes is ~106 MB of WAV
MAX_TRACKS = 256
READ_TIMEOUT = 20.0  # seconds one file may take to read


class UploadError(MidigenError):
    """The upload is not a MIDI file the studio can take; the message says why (a 4xx)."""


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def check_midi(data: bytes) -> tuple[bytes, dict]:
    """-> (the song as symusic writes it, facts); UploadError with a one-line reason otherwise."""
    import symusic

    if not data:
        raise UploadError("the file is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(f"the file is too large: {len(data)} bytes > {MAX_UPLOAD_BYTES // (1 << 20)} MiB")
    try:
        score = Codec().read_midi(data)
    except CodecError as e:
        raise UploadError(f"not a MIDI file the studio can read ({e})") from None
    notes = score.note_num()
    if notes == 0:
        raise UploadError("the file has no notes")
    if notes > MAX_NOTES:
        raise UploadError(f"too many notes: {notes} > {MAX_NOTES}")
    if len(score.tracks) > MAX_TRACKS:
        raise UploadError(f"too many tracks: {len(score.tracks)} > {MAX_TRACKS}")
    seconds = notes_end_seconds(score)
    if seconds > MAX_SECONDS:
        raise UploadError(f"too long: {_minutes(seconds)} > {_minutes(MAX_SECONDS)} of music")
    out = bytes(score.dumps_midi())
    again = symusic.Score.from_midi(out)
    if again.note_num() != notes:
        raise UploadError("the file does not survive a MIDI round trip")

    return out, {"notes": notes, "seconds": round(seconds, 3), "instruments": score_instruments(score)}


def _check(args: dict, data: bytes | None) -> tuple[dict, bytes]:
    out, facts = check_midi(data or b"")
    return facts, out


def _child(conn) -> None:
    serve(conn, _check)


class Reader:
    """The reader process: one file at a time, each within ``timeout`` seconds."""

    def __init__(self, timeout: float = READ_TIMEOUT, target=_child):
        self.box = Sandbox(target, timeout, "midigen-studio-reader")

    def start(self) -> None:
        self.box.start()

    def read(self, data: bytes) -> tuple[bytes, dict]:
        """-> (the song as symusic writes it, facts); UploadError for a bad file, a crash or a timeout."""
        try:
            facts, midi = self.box.call({}, bytes(data), "reading the file")
        except (Refused, SandboxError) as e:
            raise UploadError(str(e)) from None
        return midi, facts

    def close(self) -> None:
        self.box.close()
