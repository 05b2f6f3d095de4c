"""Chords in the studio, on real `midigen studio` processes: each version's chords by bar in its roll
JSON (the chord symbols its file carries, else the labeller's, from the library), chord charts read by
the API (400 naming a bad chord) and checked before a job is queued, jobs that write on a chart end to
end (the chords the file carries), and on the page (headless Chromium): the chord lane above the
roll, bars selected on the lane filling the chord fields, a chart checked as it is typed, and the
fields of a checkpoint without chords.

Two servers: conftest's ``edit_run`` (trained on the codec v4 tiny dataset: it has chords and can
edit) and a random-weight codec v3 checkpoint (no chords; nothing it writes is looked at).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import symusic

from midigen.generate.render import bar_spans, detected_bar_chords
from midigen.model.checkpoint import save_checkpoint
from midigen.music.chordtext import marker_chord
from midigen.model.model import GPT, GPTConfig, padded_vocab
from midigen.music.codec import Codec
from midigen.music.timing import bar_tick, tick_at_seconds
from studio_server import Server, call, wait_job
from test_studio_browser import _need_browser, _open_page, new_piece, open_tab, upload

CHROMIUM = Path("/usr/bin/chromium")
JOB_ROUTES = ("generate", "continue", "infill", "arrange")


@pytest.fixture(scope="module")
def server(edit_run, tmp_path_factory):
    s = Server(edit_run, tmp_path_factory.mktemp("studio-chords-ws"))
    yield s
    assert s.stop() == 0, "".join(s.stderr)[-2000:]


@pytest.fixture(scope="module")
def v3_server(tmp_path_factory):
    """A studio over a checkpoint of codec v3 (no chord tokens): random weights, a tiny shape."""
    import torch

    codec = Codec(version=3)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=padded_vocab(codec.vocab_size), n_layer=1, n_head=2, n_embd=32, block_size=64))
    ckpt = save_checkpoint(tmp_path_factory.mktemp("v3-run") / "best", model, codec, {"step": 0})
    s = Server(ckpt, tmp_path_factory.mktemp("studio-v3-ws"))
    yield s
    assert s.stop() == 0, "".join(s.stderr)[-2000:]


@pytest.fixture(scope="module")
def tune(music21_dir) -> Path:
    """A real fiddle tune with its chord accompaniment (the demo corpus's 'tune-with-chords')."""
    return sorted((music21_dir / "tune-with-chords").rglob("*.mid"))[0]


@pytest.fixture(scope="module")
def piece(server, tune) -> dict:
    status, piece = call("POST", f"{server.url}/api/pieces/upload?name=tune.mid", raw=tune.read_bytes())
    assert status == 201, piece
    return piece


def job_body(kind: str, **extra) -> dict:
    need = {"infill": {"start_s": 1.0, "end_s": 4.0}, "arrange": {"add": ["Flute"]}}.get(kind, {})
    return {"seconds": 2, **need, **extra} if kind in ("generate", "continue") else {**need, **extra}


# ----- the API ----------------------------------------------------------------------------------


def test_the_roll_carries_each_bars_chords_as_the_labeller_hears_them(server, piece, tune):
    status, roll = call("GET", f"{server.url}/api/pieces/{piece['id']}/versions/{piece['current']}/roll")
    assert status == 200
    stored = symusic.Score.from_midi(call("GET", f"{server.url}/api/pieces/{piece['id']}/versions/"
                                                 f"{piece['current']}/midi")[1])
    names = detected_bar_chords(stored)
    assert [b["chords"] for b in roll["chords"]] == names and len(names) >= 8
    assert len({n for n in names}) >= 3  # the tune's harmony moves
    spans = bar_spans(stored)
    assert [x for b in roll["chords"] for x in (b["start"], b["end"])] == pytest.approx(
        [x for span in spans for x in span], abs=1e-3)
    assert [b["start"] for b in roll["chords"][:8]] == pytest.approx(roll["bars"][:8], abs=1e-3)  # on the bar lines
    assert roll["chords"][-1]["end"] == pytest.approx(roll["duration"], abs=1e-3)


def test_the_lane_shows_the_chords_a_file_carries_not_the_labellers(server, tune):
    """A song with chord symbols (``Chord NAME`` markers: the chords its music was written on) gets them
    on its lane, not what the labeller hears in its notes: from bar 3 on here, a chord in force held
    into the bars after it, the last of two at one tick standing; its bars before the first symbol as
    the labeller hears them (as a song without any: the test above)."""
    score = symusic.Score.from_midi(tune.read_bytes())
    heard = detected_bar_chords(score)
    bar = lambda k: bar_tick(score, k)  # noqa: E731  (bars counted from 1)
    for tick, name in ((bar(3), "F#"), ((bar(3) + bar(4)) // 2, "Bbm7"), (bar(5), "F#"), (bar(6), "C"),
                       (bar(6), "Eb")):
        score.markers.append(symusic.core.TextMetaTick(tick, "Chord " + name))
    score.markers.append(symusic.core.TextMetaTick(bar(4), "A"))  # a section's marker is no chord
    status, piece = call("POST", f"{server.url}/api/pieces/upload?name=marked.mid", raw=bytes(score.dumps_midi()))
    assert status == 201, piece
    lane = call("GET", f"{server.url}/api/pieces/{piece['id']}/versions/{piece['current']}/roll")[1]["chords"]
    names = [b["chords"] for b in lane]
    assert len(names) == len(heard) >= 8
    assert names == heard[:2] + ["F# Bbm7", "Bbm7", "F#"] + ["Eb"] * (len(heard) - 5)
    assert heard[2:] != names[2:]  # the labeller hears the tune otherwise


def test_a_chart_is_read_once_by_the_api_and_a_bad_one_named(server):
    status, out = call("POST", f"{server.url}/api/chords", {"chords": "C G | Am F | Dm7/A G7 | C"})
    assert status == 200 and out["bars"] == [["C", "G"], ["Am", "F"], ["Dm7/A", "G7"], ["C"]]
    assert out["text"] == "| C G | Am F | Dm7/A G7 | C |"
    assert call("POST", f"{server.url}/api/chords", {"chords": "C Am F G"})[1]["bars"] == [["C"], ["Am"], ["F"], ["G"]]
    status, out = call("POST", f"{server.url}/api/chords", {"chords": "C G | Am Hm7 | F"})
    assert status == 400 and "'Hm7'" in out["detail"] and "\n" not in out["detail"]
    status, out = call("POST", f"{server.url}/api/chords", {"chords": "C | | G"})
    assert status == 400 and "empty bar 2" in out["detail"]
    status, out = call("POST", f"{server.url}/api/chords", {"chords": "C " * 3000})
    assert status == 422 and out["detail"].startswith("chords:")


@pytest.mark.parametrize("kind", JOB_ROUTES)
def test_every_job_route_names_a_bad_chord_before_queueing(server, piece, kind):
    status, out = call("POST", f"{server.url}/api/pieces/{piece['id']}/{kind}",
                       job_body(kind, chords="C G Xb7 F"))
    assert status == 400 and "'Xb7'" in out["detail"], out
    assert call("GET", f"{server.url}/api/info")[1]["queue"] == {"running": 0, "waiting": 0}


@pytest.mark.parametrize("kind", JOB_ROUTES)
def test_a_chart_for_a_checkpoint_without_chords_is_refused_and_says_so(v3_server, tune, kind):
    info = call("GET", f"{v3_server.url}/api/info")[1]
    assert info["capabilities"]["chords"] is False and info["capabilities"]["chord_vocabulary"] == []
    status, piece = call("POST", f"{v3_server.url}/api/pieces/upload?name=tune.mid", raw=tune.read_bytes())
    assert status == 201
    status, out = call("POST", f"{v3_server.url}/api/pieces/{piece['id']}/{kind}", job_body(kind, chords="C Am F G"))
    assert status == 400 and "has no chords" in out["detail"], out


def test_a_chart_and_free_chords_contradict_each_other(server, piece):
    for kind in ("infill", "arrange"):
        status, out = call("POST", f"{server.url}/api/pieces/{piece['id']}/{kind}",
                           job_body(kind, chords="C G", free_chords=True))
        assert status == 400 and "contradict" in out["detail"], out


# ----- jobs written on a chart, end to end ------------------------------------------------------


def _run(server, pid: str, kind: str, body: dict) -> dict:
    status, job = call("POST", f"{server.url}/api/pieces/{pid}/{kind}", body)
    assert status == 202, job
    job, _, _ = wait_job(server.url, job)
    assert job["status"] == "done", job
    return call("GET", f"{server.url}/api/pieces/{pid}")[1]


def _version_score(server, pid: str, vid: str) -> symusic.Score:
    return symusic.Score.from_midi(call("GET", f"{server.url}/api/pieces/{pid}/versions/{vid}/midi")[1])


def _chord_marks(score, lo: int = 0, hi: int = 1 << 62) -> list[tuple[int, str]]:
    return [(int(m.time), marker_chord(m.text)) for m in score.markers
            if lo <= m.time < hi and marker_chord(m.text) is not None]


def test_generate_on_a_chart_writes_its_chords_on_the_bars(server):
    """Four bars of C Am F G, then the chart again: the file's chord symbols are the chart, bar by bar."""
    assert call("GET", f"{server.url}/api/info")[1]["capabilities"]["chords"] is True
    pid = call("POST", f"{server.url}/api/pieces", {"name": "on a chart"})[1]["id"]
    piece = _run(server, pid, "generate", {"seconds": 12, "seed": 3, "tempo": 120, "instruments": ["piano"],
                                           "chords": "C Am F G"})
    (v,) = piece["versions"]
    assert v["params"]["chords"] == "C Am F G"
    score = _version_score(server, pid, v["id"])
    bar = 4 * score.ticks_per_quarter
    marks = _chord_marks(score)
    assert len(marks) >= 5
    assert marks == [(k * bar, "C Am F G".split()[k % 4]) for k in range(len(marks))]
    lane = call("GET", f"{server.url}/api/pieces/{pid}/versions/{v['id']}/roll")[1]["chords"]
    assert [b["chords"] for b in lane] == ["C Am F G".split()[k % 4] for k in range(len(lane))] and len(lane) >= 5


def test_infill_on_a_chart_rewrites_the_spans_harmony_and_continue_follows_one(server, tune):
    status, piece = call("POST", f"{server.url}/api/pieces/upload?name=tune.mid", raw=tune.read_bytes())
    pid, first = piece["id"], piece["current"]
    bars = call("GET", f"{server.url}/api/pieces/{pid}/versions/{first}/roll")[1]["chords"]
    start, end = bars[2]["start"], bars[4]["end"]  # bars 3 to 5
    piece = _run(server, pid, "infill", {"start_s": start, "end_s": end, "seed": 1, "chords": "Dm | Bb"})
    score = _version_score(server, pid, piece["current"])
    lo, hi = (tick_at_seconds(score, t) for t in (start, end))
    inside = [name for _, name in _chord_marks(score, lo, hi)]
    assert inside and set(inside) <= {"Dm", "Bb"} and inside[0] == "Dm"

    point = bars[-6]["start"]  # from a bar line near the end (from the end itself the tiny model just stops)
    piece = _run(server, pid, "continue", {"seconds": 6, "seed": 0, "at_seconds": point, "chords": "E7 Am"})
    score = _version_score(server, pid, piece["current"])
    after = [name for _, name in _chord_marks(score, tick_at_seconds(score, point))]
    assert len(after) >= 2 and after == ["E7", "Am"] * (len(after) // 2) + ["E7"] * (len(after) % 2), after


def test_arrange_follows_the_songs_chords_or_its_own(server, piece):
    base = call("GET", f"{server.url}/api/pieces/{piece['id']}/versions/{piece['current']}/roll")[1]["chords"]
    heard = {c for b in base for c in b["chords"].split()}
    done = _run(server, piece["id"], "arrange", {"add": ["Flute"], "seed": 4, "version": piece["current"]})
    marks = {name for _, name in _chord_marks(_version_score(server, piece["id"], done["current"]))}
    assert marks and marks <= heard  # written on the song's own chords
    done = _run(server, piece["id"], "arrange", {"add": ["Flute"], "seed": 4, "free_chords": True,
                                                 "version": piece["current"]})
    assert done["versions"][-1]["params"]["free_chords"] is True and "free chords" in done["versions"][-1]["label"]


# ----- the page ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    sync_playwright = _need_browser()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM))
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    yield from _open_page(browser, server.page_url)


def _roll_chords(server, page) -> list[dict]:
    pid = page.evaluate("() => location.hash").partition("piece=")[2]  # set before the piece is drawn
    p = call("GET", f"{server.url}/api/pieces/{pid}")[1]
    return call("GET", f"{server.url}/api/pieces/{pid}/versions/{p['current']}/roll")[1]["chords"]


def _lane_pixels(page) -> list[int]:
    """Distinct colours in the chord lane's rows of the canvas (y 23..38 CSS px, right of the gutter)."""
    return page.evaluate("""() => {
        const c = document.getElementById('roll'), dpr = window.devicePixelRatio || 1;
        const d = c.getContext('2d').getImageData(60 * dpr, 24 * dpr, c.width - 60 * dpr, 14 * dpr).data;
        const seen = new Set();
        for (let i = 0; i < d.length; i += 4) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
        return [...seen];
    }""")


def test_the_lane_shows_the_chords_and_selecting_bars_fills_the_fields(page, server, tune):
    new_piece(page)
    page.wait_for_function("document.getElementById('roll').dataset.chords === ''")
    before = _lane_pixels(page)
    upload(page, tune)
    bars = _roll_chords(server, page)
    page.wait_for_function("(document.getElementById('roll').dataset.chords || '').length > 0")
    said = page.locator("#roll").get_attribute("data-chords").split()
    assert said[0] == bars[0]["chords"].split()[0]
    assert set(said) <= {c for b in bars for c in b["chords"].split()} and len(set(said)) >= 3
    assert len(_lane_pixels(page)) > len(before) + 10  # names and bar cells drawn where it was one colour

    open_tab(page, "arrange")
    box = page.locator("#roll").bounding_box()
    scale = min(120, max(8, (box["width"] - 52 - 20) / max(bars[-1]["end"], 8)))  # the song fits on opening
    x = lambda t: box["x"] + 52 + t * scale  # noqa: E731  (52: the keyboard gutter)
    y = box["y"] + 22 + 9  # the middle of the lane
    mid = lambda k: (bars[k]["start"] + bars[k]["end"]) / 2  # noqa: E731
    page.mouse.move(x(mid(2)), y)
    page.mouse.down()
    page.mouse.move(x(mid(4)), y, steps=6)
    page.mouse.up()
    want = " | ".join(b["chords"] for b in bars[2:5])
    for field in ("#infill-chords", "#arrange-chords"):
        assert page.locator(field).input_value() == want
    assert page.locator("#gen-chords").input_value() == ""  # a tab not open keeps its own
    span = page.locator("#infill-span").inner_text()
    assert span.startswith(_clock(bars[2]["start"])) and span.endswith(_clock(bars[4]["end"]))  # whole bars


def _clock(t: float) -> str:
    return f"{int(t // 60)}:{t % 60:04.1f}"


def test_a_chart_is_checked_as_it_is_typed_and_a_bad_one_never_queued(page, server):
    new_piece(page)
    note = page.locator("#gen-chords-note")
    page.fill("#gen-chords", "C G | Am Hx7")
    page.wait_for_function("document.getElementById('gen-chords-note').textContent.includes('Hx7')")
    assert "bad" in note.get_attribute("class") and page.locator("#gen-chords").get_attribute("aria-invalid")
    page.click("#generate")
    page.wait_for_function("!document.getElementById('error').hidden")
    assert "'Hx7'" in page.locator("#error-text").inner_text()
    assert page.locator("#job").is_hidden()
    page.fill("#gen-chords", "C G | Am F")
    page.wait_for_function("document.getElementById('gen-chords-note').textContent.startsWith('2 bars')")
    assert note.text_content() == "2 bars: | C G | Am F |"
    assert page.locator("#gen-chords").get_attribute("aria-invalid") is None
    page.fill("#gen-seconds", "4")
    page.click("#generate")
    page.wait_for_function("document.querySelectorAll('#versions li').length === 1 && "
                           "document.getElementById('job').hidden", timeout=120_000)
    pid = page.locator("#piece-select").input_value()
    (version,) = call("GET", f"{server.url}/api/pieces/{pid}")[1]["versions"]
    assert version["params"]["chords"] == "C G | Am F"
    assert "on C G | Am F" in page.locator("#versions li.current .vlabel").inner_text()


def test_free_chords_sets_the_chart_aside(page):
    open_tab(page, "arrange")
    page.fill("#arrange-chords", "C G")
    page.check("#arrange-free-chords")
    assert page.locator("#arrange-chords").is_disabled()
    page.uncheck("#arrange-free-chords")
    assert page.locator("#arrange-chords").is_enabled()


@pytest.fixture
def v3_page(browser, v3_server):
    yield from _open_page(browser, v3_server.page_url)


def test_a_checkpoint_without_chords_says_so_in_every_chord_field(v3_page):
    for prefix in ("gen", "cont", "infill", "arrange"):
        assert v3_page.locator(f"#{prefix}-chords").is_disabled()
        assert "no chords" in v3_page.locator(f"#{prefix}-chords-note").text_content()
    for prefix in ("infill", "arrange"):
        assert v3_page.locator(f"#{prefix}-free-chords").is_disabled()
