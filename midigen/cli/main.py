"""The `midigen` command: parses arguments and calls library functions, nothing else.

Each subcommand's handler imports its module lazily so `midigen --help` stays instant.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from midigen import __version__
from midigen.errors import MidigenError, UsageError
from midigen.fsutil import atomic_write_bytes
from midigen.generate.sampling import CHORD_WEIGHT, KEY_WEIGHT, MAX_CHORD_WEIGHT, RETRIES, TOP_P, VARY_WEIGHT


def _checked(convert, what: str, ok, bound: str):
    """An argparse type: ``convert`` the text (else "expected ``what``"), then require ``ok(value)``
    (else "expected ``bound``"), so every number flag says what it takes in one line."""
    def parse(text: str):
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"expected {bound}, got {v}")
        return v
    return parse


_positive_int = _checked(int, "a whole number", lambda v: v >= 1, "a number >= 1")
_whole = _checked(int, "a whole number", lambda v: v >= 0, "a number >= 0")
_fraction = _checked(float, "a fraction", lambda v: 0.0 <= v < 1.0, "a fraction in [0, 1)")
_positive_float = _checked(float, "a number", lambda v: v > 0, "a number > 0")
_chord_weight = _checked(float, "a number", lambda v: 0 <= v <= MAX_CHORD_WEIGHT, f"a number in [0, {MAX_CHORD_WEIGHT}]")


def _print_json(obj) -> None:
    print(json.dumps(obj, sort_keys=False), flush=True)


# ----- handlers ---------------------------------------------------------------------------------


def cmd_roundtrip(a) -> int:
    from midigen.music.codec import Codec, CodecError, fidelity  # start-up time

    codec = Codec()
    try:
        with open(a.input, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UsageError(f"cannot read {a.input}: {e.strerror}") from None
    try:
        score = codec.read_midi(data)
    except CodecError as e:
        raise UsageError(f"bad MIDI file {a.input}: {e}") from None
    tokens = codec.encode_score(score)
    decoded = codec.decode(tokens)
    atomic_write_bytes(a.output, bytes(decoded.dumps_midi()))
    report = fidelity(codec, score, decoded)
    notes_in = report.pop("notes_in")
    notes_out = report.pop("notes_out")
    _print_json({"notes_in": notes_in, "tokens": int(len(tokens)), "notes_out": notes_out,
                 "tokens_per_note": round(len(tokens) / max(1, notes_in), 3), **report})
    return 0


def cmd_prepare(a) -> int:
    from midigen.data.prepare import prepare  # start-up time

    summary = prepare(
        sources=a.sources, out=a.out, workers=a.workers, val_frac=a.val_frac, test_frac=a.test_frac,
        url=a.url, timeout=a.timeout, progress=not a.no_progress, split=a.split,
        style_from=a.style_from, styles=a.styles, chords=not a.no_chords,
    )
    for line in summary["split_notes"]:
        print(f"midigen prepare: note: {line}", file=sys.stderr)
    _print_json(summary)
    return 0


def cmd_info(a) -> int:
    if a.ckpt:
        from midigen.model.checkpoint import describe  # start-up time

        _print_json(describe(a.ckpt))
        return 0
    from midigen.train.train import model_info  # start-up time

    _print_json(model_info(a.config, a.overrides))
    return 0


def cmd_train(a) -> int:
    from midigen.train.config import load_config  # start-up time
    from midigen.train.train import train  # start-up time

    train(load_config(a.config, a.overrides), resume=a.resume, use_wandb=a.wandb)
    return 0


def cmd_tune(a) -> int:
    from midigen.train.tune import TuneSettings, tune  # start-up time

    settings = TuneSettings(base=a.ckpt, sources=a.sources, out=a.out, style=a.style, steps=a.steps,
                            minutes=a.minutes, rank=a.rank, lr=a.lr, device=a.device, full=a.full,
                            eval_every=a.eval_every, batch_size=a.batch_size, patience=a.patience,
                            workers=a.workers)
    _print_json(tune(settings, progress=not a.no_progress))
    return 0


def cmd_eval(a) -> int:
    if a.samples and a.ckpt:
        raise UsageError("give --ckpt DIR (score a model) or --samples DIR (compare generated MIDI), not both: "
                         "--samples scores files, not a model")
    if a.samples:
        from midigen.eval.metrics import compare_samples  # start-up time

        _print_json(compare_samples(a.samples, a.data, split=a.split))
        return 0
    if not a.ckpt:
        raise UsageError("eval needs --ckpt DIR (model) or --samples DIR (generated MIDI)")
    from midigen.eval.evaluate import evaluate  # start-up time

    _print_json(evaluate(a.ckpt, a.data, split=a.split, max_tokens=a.max_tokens, ngram_order=a.ngram_order,
                         controls=a.controls, precision=a.precision, by_kind=a.by_kind))
    return 0


def cmd_sample(a) -> int:
    from midigen.cli.sample import sample  # start-up time

    sample(a)
    return 0


def cmd_infill(a) -> int:
    from midigen.cli.edit import infill  # start-up time

    infill(a)
    return 0


def cmd_arrange(a) -> int:
    from midigen.cli.edit import arrange  # start-up time

    arrange(a)
    return 0


def _sampling_flags(s: argparse.ArgumentParser, penalty: bool = False) -> None:
    """How many results and how each draws its notes, in sample, infill and arrange."""
    s.add_argument("--num-samples", type=_positive_int, default=1, metavar="N", help="results to write (default 1)")
    s.add_argument("--seed", type=int, default=None,
                   help="the same seed and flags give the same music (default: a new one, printed)")
    s.add_argument("--retry", type=_whole, default=RETRIES, metavar="N",
                   help=f"draw an empty result (a requested instrument with no notes, a near-silent continuation "
                        f"or span) again with the next seeds, up to N times (default {RETRIES}; 0 = never)")
    s.add_argument("--temperature", type=_positive_float, default=1.0,
                   help="boldness: below 1 safer, above 1 more surprising choices (default 1)")
    s.add_argument("--top-k", type=_positive_int, default=None, metavar="K",
                   help="choose only among the K likeliest next events (default: no limit)")
    s.add_argument("--top-p", type=_positive_float, default=TOP_P, metavar="P",
                   help=f"nucleus: keep only the likeliest choices, together this likely (default {TOP_P}: cuts "
                        "the tail of rare, mostly out-of-key notes; 1 = off)")
    s.add_argument("--chord-weight", type=_chord_weight, default=CHORD_WEIGHT, metavar="W",
                   help=f"under --chords (or a song's own chords in an edit): W nats more for the chord's tones "
                        f"(default {CHORD_WEIGHT}; 0 = the model's own choice of passing notes)")
    if penalty:
        s.add_argument("--repetition-penalty", type=_positive_float, default=1.0, metavar="X",
                       help="above 1: fewer repeats of recently played notes (default 1 = off)")


_FREE_RANGE_HELP = ("let instruments write outside the pitch range and polyphony they play in the training data "
                    "(`midigen info --ckpt` lists them); by default a bass stays a bass")


def _edit_flags(s: argparse.ArgumentParser) -> None:
    """What infill and arrange share: the checkpoint and the song, the sampling and output flags of
    sample, and the controls (not the meter: the song keeps its own)."""
    s.add_argument("--ckpt", required=True, metavar="DIR", help="run dir (uses best/) or checkpoint dir")
    s.add_argument("song", metavar="SONG.mid", help="the song to edit (never changed; results are new files)")
    s.add_argument("--out", default="out/edit", metavar="DIR",
                   help="folder for the results (default out/edit); names are SONG-infill-START-ENDms-SEED-I.mid "
                        "(the span in milliseconds) or SONG-arrange-SEED-I.mid, with -2, -3... added rather than "
                        "overwrite a file")
    _sampling_flags(s)
    _output_flags(s, png_help="also draw a piano roll with the written part marked")
    _add_control_flags(s, meter=False)
    _chord_flags(s, edit=True)


def cmd_chords(a) -> int:
    from midigen.cli.edit import _read_song  # start-up time
    from midigen.music.chords import ChordError, label_chords  # start-up time
    from midigen.music.chordtext import chord_events, lead_sheet  # start-up time
    from midigen.music.codec import Codec  # start-up time

    try:
        song = label_chords(_read_song(Codec(), a.song))
    except ChordError as e:
        raise UsageError(f"bad song {a.song}: {e}") from None
    if a.json:
        for event in chord_events(song):
            _print_json(event)
    else:
        print(lead_sheet(song), flush=True)
    return 0


def cmd_studio(a) -> int:
    from midigen.studio.server import run  # start-up time

    run(a.ckpt, host=a.host, port=a.port, workspace=a.workspace, open_browser=a.open, device=a.device,
        token=a.token, no_token=a.no_token, allow_hosts=a.allow_host, precision=a.precision)
    return 0


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 0..65535, got {v}")
    return v


# ----- parser -----------------------------------------------------------------------------------


def _output_flags(s, png_help: str) -> None:
    """What sample, infill and arrange share after their own flags: the files beside the MIDI, playback,
    the device, the weights' precision and the instrument ranges."""
    s.add_argument("--wav", action="store_true", help="also render WAV through a General MIDI soundfont")
    s.add_argument("--png", action="store_true", help=png_help)
    s.add_argument("--play", action="store_true", help="play the result (needs an audio device)")
    s.add_argument("--soundfont", default=None, metavar="FILE",
                   help="an .sf2/.sf3 soundfont for --wav/--play (default: the first one found)")
    s.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    _precision_flag(s)
    s.add_argument("--free-range", action="store_true", help=_FREE_RANGE_HELP)


def _chord_flags(s, edit: bool) -> None:
    """--chords/--chords-from (and, for edits, --free-chords): the harmony to write on (codec v4 models)."""
    g = s.add_argument_group("chords (a model trained with chords, codec v4)")
    where = "over the span, from the bar it starts in" if edit else "bar by bar from where the new music starts"
    g.add_argument("--chords", default=None, metavar="CHART",
                   help=f"a chord chart forced {where}, repeating to the end: 'C G Am F' (a bar each) or "
                        "'C G | Am F | Dm7 G7 | C' (bars of several), or @chart.txt"
                        + ("" if edit else "; with --form one per section, 'A: C G Am F | B: F G C C', each "
                           "occurrence starting its chart again") + " (default: "
                        + ("the song's own chords" if edit else "the model chooses") + ")")
    g.add_argument("--chords-from", default=None, metavar="SONG.mid",
                   help="the chords midigen detects in another song, beat by beat on its bars"
                        + ("" if edit else " and meter") + " (default: none)")
    if edit:
        g.add_argument("--free-chords", action="store_true",
                       help="let the model choose the span's chords (default: the song's own are forced)")


def _precision_flag(s, default: str = "auto") -> None:
    s.add_argument("--precision", default=default, choices=["auto", "fp32", "bf16", "int8"],
                   help=f"weights for inference (default {default}): auto is int8 on a CPU for models big enough to "
                        "gain (fp32 below that), bf16 on a CUDA GPU; int8 runs on CPUs only")


def _add_control_flags(s, meter: bool = True) -> None:
    """--style/--time-signature/--key/--density: what to write (`midigen info --ckpt` lists the choices).
    Edits keep the song's own meter, so they get no --time-signature (``meter=False``)."""
    g = s.add_argument_group("steering (none given: the model chooses)")
    g.add_argument("--style", default=None, metavar="NAME[,NAME]",
                   help="style(s) the model learned (default: the model chooses)")
    if meter:
        g.add_argument("--time-signature", default=None, metavar="N/D",
                       help="a meter the model saw, e.g. 3/4; after --prompt it starts where the new music does "
                            "(default: the model chooses, or the prompt's)")
    g.add_argument("--key", default=None, metavar="KEY", help="e.g. D, 'F# minor', Bbm (default: the model chooses)")
    g.add_argument("--density", default=None, choices=["low", "medium", "high"],
                   help="notes per second, in the training corpus's terciles (default: the model chooses)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="midigen",
        description="Train GPT-2 124M on MIDI event tokens and generate music.",
    )
    p.add_argument("--version", action="version", version=f"midigen {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("roundtrip", help="encode a MIDI file to tokens and decode it back")
    s.add_argument("input", metavar="IN.mid", help="the MIDI file to encode")
    s.add_argument("output", metavar="OUT.mid",
                   help="where to write the decoded file; a JSON line compares the two (README: roundtrip)")
    s.set_defaults(func=cmd_roundtrip)

    s = sub.add_parser("prepare", help="turn MIDI folders/archives/Lakh/demo into token files")
    s.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="folder, .mid file, .tar/.tar.gz/.tgz/.zip archive, 'lakh' or 'demo'; "
                        "STYLE=SOURCE tags its files with STYLE (e.g. jazz=~/midi/jazz)")
    s.add_argument("--out", required=True, metavar="DIR", help="dataset directory to write")
    s.add_argument("--workers", type=_positive_int, default=None, help="worker processes (default: all cores)")
    s.add_argument("--split", choices=["hash", "amt"], default="hash",
                   help="hash: by content hash, --val-frac/--test-frac of the files (default); amt: by file name, "
                        "AMT's Lakh split (names starting with f: test, e: val)")
    s.add_argument("--val-frac", type=_fraction, default=None, help="fraction of files for val (default 0.01)")
    s.add_argument("--test-frac", type=_fraction, default=None, help="fraction of files for test (default 0.01)")
    s.add_argument("--url", default=None, help="address to download lmd_full.tar.gz from (source 'lakh')")
    s.add_argument("--timeout", type=_positive_float, default=60.0, help="seconds allowed per file (default 60)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--style-from", choices=["folder"], default=None,
                   help="folder: tag each file with the first folder under its source as its style")
    s.add_argument("--styles", metavar="FILE.csv", default=None,
                   help="rows of (file name, relative path or content md5; style) tagging files with styles")
    s.add_argument("--no-chords", action="store_true",
                   help="write codec v3: no CHORD tokens (skips labelling each song's chords)")
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("info", help="print a config's model shape, or what a checkpoint can be asked for")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", metavar="FILE", help="model shape and parameter counts of a training config")
    g.add_argument("--ckpt", metavar="DIR", help="styles, instruments, meters, keys, densities, editing")
    s.set_defaults(func=cmd_info, overrides=[])

    s = sub.add_parser("train", help="train a model from a TOML config (also under torchrun)",
                       description="Train from CONFIG.toml; override any key with --key=value or --key value.")
    s.add_argument("config", metavar="CONFIG.toml")
    s.add_argument("--resume", action="store_true", help="continue exactly from the run dir's last/ checkpoint")
    s.add_argument("--wandb", action="store_true", help="also log to Weights & Biases (if installed)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("tune", help="teach a checkpoint your own MIDI: a small adapter (or a full fine-tune)",
                       description="Tune --ckpt BASE on SOURCE... (what prepare takes) into --out DIR: "
                                   "DIR/adapter.safetensors + adapter.json, usable as --ckpt DIR anywhere. "
                                   "Running the same command again resumes.")
    s.add_argument("sources", nargs="+", metavar="SOURCE", help="folder, .mid file, archive; STYLE=SOURCE tags it")
    s.add_argument("--ckpt", required=True, metavar="BASE", help="the base run dir or checkpoint dir (never written)")
    s.add_argument("--out", required=True, metavar="DIR", help="the adapter dir to write")
    s.add_argument("--style", default=None, metavar="NAME", help="tag the music with a new style NAME for --style")
    s.add_argument("--steps", type=_positive_int, default=1000, help="at most this many steps (default 1000)")
    s.add_argument("--minutes", type=_positive_float, default=None, help="stop within M minutes")
    s.add_argument("--rank", type=_positive_int, default=8, help="rank of the low-rank updates (default 8)")
    s.add_argument("--lr", type=_positive_float, default=None, help="learning rate (default 2e-3; --full 3e-4)")
    s.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    s.add_argument("--full", action="store_true", help="fine-tune every weight (writes a checkpoint, DIR/best)")
    s.add_argument("--eval-every", type=_positive_int, default=50, help="steps between validations (default 50)")
    s.add_argument("--batch-size", type=_positive_int, default=8, help="windows per step (default 8)")
    s.add_argument("--patience", type=_positive_int, default=4,
                   help="stop after this many validations without a better loss (default 4)")
    s.add_argument("--workers", type=_positive_int, default=None, help="prepare's worker processes")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_tune)

    s = sub.add_parser("eval", help="score a checkpoint (bits per note) or compare generated pieces with real ones")
    s.add_argument("--ckpt", metavar="DIR", help="run dir (uses best/) or checkpoint dir")
    s.add_argument("--samples", metavar="DIR",
                   help="folder of generated .mid files to compare with --data (its own files only, not its "
                        "subfolders; not with --ckpt)")
    s.add_argument("--data", required=True, metavar="DIR", help="dataset dir written by prepare")
    s.add_argument("--split", default="test", choices=["train", "val", "test"])
    s.add_argument("--max-tokens", type=_positive_int, default=None, help="score at most this many tokens")
    s.add_argument("--ngram-order", type=_positive_int, default=5, help="order of the n-gram baseline (default 5)")
    s.add_argument("--controls", action="store_true",
                   help="also score the events with each song's controls in the header and without (same tokens)")
    s.add_argument("--by-kind", action="store_true",
                   help="also split the bits by token kind: note and duration tokens, chord tokens (codec v4), the "
                        "rest; and tokens per note with and without chords")
    _precision_flag(s, default="fp32")  # a score measures the model as trained unless asked otherwise
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("sample", help="generate MIDI (and WAV, piano-roll PNG, playback) from a checkpoint")
    s.add_argument("--ckpt", required=True, metavar="DIR", help="run dir (uses best/) or checkpoint dir")
    _sampling_flags(s, penalty=True)
    g = s.add_mutually_exclusive_group()
    g.add_argument("--seconds", type=_positive_float, default=None, help="seconds of new music (default 30)")
    g.add_argument("--max-tokens", type=_positive_int, default=None,
                   help="new events to generate instead of --seconds (default: none)")
    s.add_argument("--prompt", metavar="FILE.mid", default=None, help="MIDI file to continue (default: none)")
    s.add_argument("--prompt-seconds", type=_positive_float, default=None,
                   help="continue from the end of the prompt's first S seconds (default: all of it)")
    s.add_argument("--instruments", default=None, action="append", metavar="LIST",
                   help="General MIDI names (or a part of one), program numbers and 'drums', comma-separated "
                        "or the flag repeated; names match among the instruments the checkpoint knows "
                        "(default: the model chooses)")
    s.add_argument("--tempo", type=_positive_float, default=None, metavar="BPM",
                   help="the tempo, 16..512 (default: the model's choice, or the prompt's)")
    s.add_argument("--out", default="out/generate", metavar="DIR",
                   help="folder for the results, named by date and time (default out/generate)")
    _output_flags(s, png_help="also draw a piano roll")
    s.add_argument("--free-tempo", action="store_true",
                   help="with --prompt: let the model change tempo in what it writes, if its training data had "
                        "tempo changes (by default a continuation keeps the song's tempo; --tempo asks for one change)")
    _add_control_flags(s)
    _chord_flags(s, edit=False)
    g = s.add_argument_group("a song with a form (docs/form.md)")
    g.add_argument("--form", default=None, metavar="TEXT",
                   help="sections as LABEL:BARS, e.g. 'intro:4 A:8 B:8 A:8 B:8 C:8 A:8 outro:4': a repeated label "
                        "is the same music, A' a variation of A (default: no form, one left-to-right sample)")
    g.add_argument("--vary", type=_positive_float, default=None, metavar="F",
                   help="with --form: the share of a variation's bars rewritten (default 1/3)")
    g.add_argument("--section", default=None, action="append", metavar="LABEL:NAME=VALUE,...",
                   help="with --form: controls for one section, e.g. 'B:density=high,key=E minor' (repeatable; "
                        "default: the song's --style/--key/--density everywhere)")
    g.add_argument("--key-weight", type=_chord_weight, default=None, metavar="W",
                   help=f"with --form under a key (--key, or a --section's key=): W nats less for a note outside "
                        f"the key's scale, so the song stays in the key asked (default {KEY_WEIGHT:g}; 0 leaves "
                        "the model alone)")
    g.add_argument("--vary-weight", type=_chord_weight, default=None, metavar="W",
                   help=f"with --form: up to W nats toward the pitch classes of the bar a variation's rewritten "
                        f"bar stands for, so it keeps its section's notes and rewrites their detail (default "
                        f"{VARY_WEIGHT:g}; 0 leaves the model alone)")
    s.set_defaults(func=cmd_sample)

    s = sub.add_parser("infill", help="rewrite a span of a song (all instruments or some) with a checkpoint",
                       description="Rewrite the notes that start in [--start, --end) (or in --bars). The span snaps "
                       "inward to the model's grid (1/24 beat): a note that starts before --start, or at or "
                       "after --end, is always kept as it is; one within half a grid step inside an edge may "
                       "be kept too. New notes never cut into kept ones: a new note that would sound over a "
                       "kept note of its pitch and channel is shortened or left out (docs/editing.md).")
    s.add_argument("--start", type=float, default=None, metavar="S",
                   help="span start (seconds; no default: give --start/--end or --bars); notes starting before "
                        "it are kept (the span snaps inward)")
    s.add_argument("--end", type=float, default=None, metavar="E",
                   help="span end (seconds; no default); notes starting at or after it are kept")
    s.add_argument("--bars", default=None, metavar="A-B",
                   help="the span as bars, counted from 1 (e.g. 9-12; no default)")
    s.add_argument("--section", default=None, metavar="NAME",
                   help="the span as the section a marker of the song names (to the next marker; no default)")
    s.add_argument("--like", default=None, metavar="BARS|NAME",
                   help="rewrite the span as a variation of these bars (e.g. 1-8) or of the section a marker names "
                        "(e.g. 'Chorus 1'): a copy of it with about --vary of its bars written anew "
                        "(default: none, a plain infill)")
    s.add_argument("--vary", type=_positive_float, default=None, metavar="F",
                   help="with --like: the share of bars written anew (default 1/3)")
    s.add_argument("--instruments", default=None, action="append", metavar="LIST",
                   help="rewrite only these (General MIDI names, program numbers, 'drums'; comma-separated or "
                        "repeated); default: all")
    _edit_flags(s)
    s.set_defaults(func=cmd_infill)

    s = sub.add_parser("arrange", help="write new parts (e.g. bass, drums) over a whole song with a checkpoint")
    s.add_argument("--add", required=True, action="append", metavar="LIST",
                   help="instruments to write, e.g. bass,drums (or --add bass --add drums); required")
    s.add_argument("--keep", default=None, action="append", metavar="LIST",
                   help="parts to keep, comma-separated or repeated (default: every part the song has that is "
                        "not in --add); others are dropped (their tracks stay, empty, so the kept ones keep their "
                        "MIDI channels)")
    _edit_flags(s)
    s.set_defaults(func=cmd_arrange)

    s = sub.add_parser("chords", help="print a song's chords bar by bar, as a lead sheet (or JSON lines)",
                       description="Label each beat of a MIDI file with a chord (drums left out) and print "
                                   "them bar by bar: | C | G | Am F |")
    s.add_argument("song", metavar="SONG.mid")
    s.add_argument("--json", action="store_true",
                   help="one JSON line per chord change: bar, beat (from 1), seconds, chord, id")
    s.set_defaults(func=cmd_chords)

    s = sub.add_parser("studio", help="a web page to hear, see, generate and continue music (and its JSON API)")
    s.add_argument("--ckpt", required=True, metavar="DIR", help="run dir (uses best/) or checkpoint dir")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=_port, default=8765, help="port (default 8765; 0 picks a free one)")
    s.add_argument("--workspace", default="out/studio", metavar="DIR",
                   help="where pieces and versions are kept (default out/studio)")
    s.add_argument("--open", action="store_true", help="open the page in the default browser")
    s.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    s.add_argument("--token", default=None, metavar="VALUE",
                   help="the token the page and API clients must show (default: a new random one, printed in "
                        "the address)")
    s.add_argument("--no-token", action="store_true",
                   help="need no token (only with a loopback --host; the Host and Origin checks still apply)")
    s.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also accept requests addressed to NAME (e.g. behind a proxy); repeatable. By default only "
                        "the --host address, localhost and (on loopback) 127.0.0.1 and [::1] are accepted")
    _precision_flag(s)
    s.set_defaults(func=cmd_studio)
    return p


def main(argv=None) -> int:
    # OpenMP threads that spin while they wait fight other processes for a busy machine's cores (an
    # arrange went from 4.8 s to 84 s); passive waiting costs little when idle (benchmarks/busy_machine.py).
    # Set before any handler imports torch; a value the user set wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest:
        if args.command in ("train", "info"):
            args.overrides = rest  # --key=value config overrides, validated against the config
        else:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
    elif args.command == "train":
        args.overrides = []
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"midigen {args.command}: error: {e}", file=sys.stderr)
        return 2
    except MidigenError as e:
        print(f"midigen {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"midigen {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
