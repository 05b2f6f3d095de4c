"""The studio page in a real browser: headless Chromium (Debian's package) driven by Playwright.

Without Chromium or Playwright these tests skip and say why, except under CI (CI=true), where a
missing browser is a failure: `.ci/run` installs it. Two servers: the tiny test model (it cannot edit,
so the page must say so) and conftest's ``edit_run`` (infill, arrange, steering selects).
MIDIGEN_DOCS_SCREENSHOT=1 also refreshes docs/studio.png from the screenshot test.
"""
from __future__ import annotations

import os
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import symusic

from songgen import make_song
from studio_server import ROOT, Server, call, tiny_checkpoint, wait_job

CHROMIUM = Path("/usr/bin/chromium")
VIEW = {"width": 1440, "height": 860}


def _need_browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "Playwright for Python is not installed (pip install -e '.[test]')"
    else:
        if CHROMIUM.exists():
            return sync_playwright
        reason = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: CI must run the browser tests")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    sync_playwright = _need_browser()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--autoplay-policy=no-user-gesture-required"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tiny_dataset, tmp_path_factory):
    _need_browser()
    ckpt = tiny_checkpoint(tiny_dataset, tmp_path_factory.getbasetemp())
    s = Server(ckpt, tmp_path_factory.mktemp("studio-browser-ws"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def edit_server(edit_run, tmp_path_factory):
    """A studio over the tiny checkpoint trained with the editing objective (conftest's ``edit_run``)."""
    _need_browser()
    s = Server(edit_run, tmp_path_factory.mktemp("studio-browser-edit-ws"))
    yield s
    s.stop()


def _open_page(browser, url):
    """A fresh page on ``url``, once the studio says it is ready; no page error or console error allowed."""
    context = browser.new_context(viewport=VIEW, accept_downloads=True)
    pg = context.new_page()
    problems = []
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.on("console", lambda m: m.type == "error" and "status of 4" not in m.text and problems.append(m.text))
    pg.goto(url)  # the address `midigen studio` printed, with its token
    pg.wait_for_function("window.studioReady === true", timeout=20_000)
    yield pg
    context.close()
    assert not problems, problems


@pytest.fixture
def page(browser, server):
    yield from _open_page(browser, server.page_url)


@pytest.fixture
def edit_page(browser, edit_server):
    yield from _open_page(browser, edit_server.page_url)


@pytest.fixture(scope="module")
def song_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("browser-songs") / "band song.mid"
    path.write_bytes(bytes(make_song(3).dumps_midi()))
    return path


def coloured_pixels(page) -> int:
    """Pixels of the roll canvas that are clearly coloured (notes), not the grey grid."""
    return page.evaluate("""() => {
        const c = document.getElementById('roll');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) {
            const hi = Math.max(d[i], d[i + 1], d[i + 2]), lo = Math.min(d[i], d[i + 1], d[i + 2]);
            if (hi - lo > 60) n++;
        }
        return n;
    }""")


def wait_for_versions(page, n: int, timeout=120_000):
    """Until the page lists ``n`` versions and no job of its own is running."""
    page.wait_for_function(f"document.querySelectorAll('#versions li').length === {n} && "
                           "document.getElementById('job').hidden", timeout=timeout)


def versions(page) -> list[str]:
    return page.locator("#versions li .vlabel").all_inner_texts()


def current_label(page) -> str:
    return page.locator("#versions li.current .vlabel").inner_text()


def new_piece(page) -> None:
    before = page.locator("#piece-select").input_value()
    page.click("#new-piece")
    page.wait_for_function(f"document.getElementById('piece-select').value !== {before!r}")


def open_tab(page, name: str) -> None:
    page.click(f".tabs button[data-tab={name}]")


def upload(page, path: Path, versions_after: int = 1) -> None:
    page.set_input_files("#upload-input", str(path))
    page.wait_for_function(f"document.querySelectorAll('#versions li').length === {versions_after}")


def drag_on_roll(page, a: float, b: float) -> str:
    """Drag across the roll from ``a`` to ``b`` (fractions of its width) -> the span the page shows."""
    box = page.locator("#roll").bounding_box()
    y = box["y"] + box["height"] * 0.5
    page.mouse.move(box["x"] + box["width"] * a, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * b, y, steps=8)
    page.mouse.up()
    return page.locator("#infill-span").inner_text()


def options(page, select: str) -> list[str]:
    return page.locator(f"{select} option").evaluate_all("os => os.map(o => o.value)")


def note_rows(score, lo: float, hi: float, inside: bool) -> Counter:
    """Notes (track, ticks, pitch, velocity) whose onsets fall inside / outside [lo, hi) seconds."""
    from midigen.music.timing import TempoMap

    tm, out = TempoMap(score), Counter()
    for t in score.tracks:
        a = t.notes.numpy()
        sec = tm.seconds(a["time"])
        pick = ((sec >= lo) & (sec < hi)) == inside
        out.update(zip([(t.name, t.program, t.is_drum)] * int(pick.sum()), *(a[k][pick].tolist() for k in
                                                                            ("time", "duration", "pitch", "velocity"))))
    return out


# ----- the tests --------------------------------------------------------------------------------


def test_the_tokened_address_becomes_a_strict_cookie_and_leaves_the_address_bar(page, server):
    """The page drives the studio with an HttpOnly, SameSite=Strict cookie; its scripts never see the token."""
    assert page.url.rstrip("/") == server.url and "token" not in page.url
    (jar,) = [c for c in page.context.cookies() if c["name"].startswith("midigen-studio-")]
    assert jar["value"] == server.token and jar["httpOnly"] and jar["sameSite"] == "Strict"
    assert server.token not in page.evaluate("document.cookie + location.href")
    page.reload()  # the cookie alone opens it again
    page.wait_for_function("window.studioReady === true", timeout=20_000)


def test_the_page_without_its_token_says_it_needs_one(browser, server):
    context = browser.new_context()
    try:
        pg = context.new_page()
        assert pg.goto(server.url + "/").status == 401
        assert "needs its token" in pg.inner_text("body")
        assert pg.goto(server.url + "/?token=" + "x" * len(server.token)).status == 403
    finally:
        context.close()


def test_a_fresh_studio_says_where_to_start_and_what_it_cannot_do(page):
    assert page.locator("#empty").is_visible()
    assert "Drop a MIDI file here" in page.locator("#empty").inner_text()
    assert "cannot edit" in page.locator("#model-info").inner_text()
    assert page.locator("#top-p").input_value() == "0.95" and page.locator("#temperature").input_value() == "1"
    open_tab(page, "infill")
    assert page.locator("#infill").is_disabled()
    assert "cannot edit" in page.locator("[data-tab=infill] .edit-note").inner_text()
    open_tab(page, "arrange")
    assert page.locator("#arrange").is_disabled()
    assert page.locator("#gen-style").is_disabled()


def test_upload_draws_the_notes_and_plays_with_a_moving_playhead(page, song_file):
    blank = coloured_pixels(page)
    page.set_input_files("#upload-input", str(song_file))
    page.wait_for_function("document.querySelectorAll('#versions li').length === 1")
    page.wait_for_timeout(300)
    legend = page.locator("#legend").inner_text()
    score = symusic.Score.from_midi(song_file.read_bytes())
    assert "Drums" in legend and len(page.locator("#legend span").all()) == len(score.tracks)
    assert coloured_pixels(page) > blank + 2000, "the notes were not drawn"
    assert page.locator("#empty").is_hidden()
    page.wait_for_function("document.getElementById('audio').duration > 0", timeout=60_000)
    duration = page.evaluate("document.getElementById('audio').duration")
    assert abs(duration - score.to("second").end()) < 4
    page.click("#play")
    page.wait_for_function("!document.getElementById('audio').paused")
    first = float(page.get_attribute("#roll", "data-playhead"))
    page.wait_for_timeout(1200)
    later = float(page.get_attribute("#roll", "data-playhead"))
    assert later > first + 0.3, (first, later)
    assert page.locator("#time").inner_text() != "0:00.0"
    page.click("#play")
    page.wait_for_function("document.getElementById('audio').paused")


def test_generate_streams_then_continue_undo_redo_and_download(page, server):
    new_piece(page)
    page.fill("#gen-seconds", "40")
    page.fill("#seed", "5")
    page.select_option("#gen-instrument-pick", "0")
    page.click("#gen-instrument-add")
    assert "Acoustic Grand Piano" in page.locator("#gen-instruments").inner_text()
    page.click("#generate")
    page.wait_for_function("/\\b[1-9][0-9]* notes/.test(document.getElementById('job-status').textContent)")
    wait_for_versions(page, 1)
    assert len(versions(page)) == 1 and current_label(page).startswith("generated 40 s")
    generated = current_label(page)

    open_tab(page, "continue")
    page.fill("#cont-seconds", "6")
    page.click("#continue")
    wait_for_versions(page, 2)
    assert len(versions(page)) == 2 and current_label(page).startswith("continued from the end")

    page.click("#undo")
    page.wait_for_function("document.querySelector('#versions li.current .vlabel').textContent.startsWith('generated')")
    assert current_label(page) == generated
    page.click("#redo")
    page.wait_for_function("document.querySelector('#versions li.current .vlabel').textContent.startsWith('continued')")

    pid = page.locator("#piece-select").input_value()
    piece = call("GET", f"{server.url}/api/pieces/{pid}")[1]
    with page.expect_download() as dl:
        page.click("#versions li.current a:text('MIDI')")
    path = dl.value.path()
    score = symusic.Score.from_midi(Path(path).read_bytes())
    current = next(v for v in piece["versions"] if v["id"] == piece["current"])
    assert score.note_num() == current["notes"] > 0
    assert dl.value.suggested_filename.endswith("-v2.mid")


def test_cancel_stops_a_long_generation_at_once(page):
    new_piece(page)
    page.fill("#gen-seconds", "300")
    page.click("#generate")
    page.wait_for_function("/\\b[1-9][0-9]* notes/.test(document.getElementById('job-status').textContent)")
    page.click("#cancel")
    page.wait_for_function("document.getElementById('job').hidden", timeout=5_000)
    assert "Cancelled" in page.locator("#error-text").inner_text()
    assert versions(page) == []


def test_a_broken_upload_shows_why_and_the_page_goes_on(page, tmp_path):
    bad = tmp_path / "broken.mid"
    bad.write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01\xe0MTrk\xff\xff" + bytes(range(200)))
    pieces = page.locator("#piece-select option").count()
    page.set_input_files("#upload-input", str(bad))
    page.wait_for_selector("#error:not([hidden])")
    text = page.locator("#error-text").inner_text()
    assert re.search(r"not a MIDI file|no notes|unreadable", text), text
    assert page.locator("#piece-select option").count() == pieces
    page.set_input_files("#upload-input", {"name": "notes.mid", "mimeType": "audio/midi",
                                           "buffer": b"This is not a MIDI file at all.\n" * 20})
    page.wait_for_function("document.getElementById('error-text').textContent.includes('not a MIDI file')")


def test_steering_selects_are_filled_from_the_checkpoint(edit_page, edit_server):
    caps = call("GET", edit_server.url + "/api/info")[1]["capabilities"]
    assert caps["keys"] and caps["time_signatures"] and not caps["styles"]  # the tiny data has no styles
    assert options(edit_page, "#gen-key") == ["", *caps["keys"]]
    assert options(edit_page, "#gen-meter") == ["", *caps["time_signatures"]]
    assert options(edit_page, "#gen-density") == ["", *caps["densities"]]
    assert edit_page.locator("#gen-style").is_disabled()
    assert "no style control" in edit_page.locator("#steer-note").inner_text()
    for tab in ("infill", "arrange"):
        open_tab(edit_page, tab)
        body = edit_page.locator(f".tab-body[data-tab={tab}]")
        assert options(edit_page, f"#{tab}-key") == ["", *caps["keys"]]
        assert options(edit_page, f"#{tab}-density") == ["", *caps["densities"]]
        assert edit_page.locator(f"#{tab}-style").is_disabled()
        assert "no style control" in body.locator(".steer-note").inner_text()
        assert body.locator("[data-steer=time_signatures]").count() == 0  # an edit keeps the song's meter
        assert body.locator(".edit-action").is_enabled() and body.locator(".edit-note").inner_text() == ""


def test_select_a_span_and_infill_it(edit_page, edit_server, song_file):
    upload(edit_page, song_file)
    open_tab(edit_page, "infill")
    assert re.match(r"\d:\d\d\.\d – \d:\d\d\.\d", drag_on_roll(edit_page, 0.25, 0.55))
    edit_page.fill("#infill-n", "1")
    edit_page.fill("#seed", "2")
    edit_page.select_option("#infill-density", "high")
    edit_page.click("#infill")
    wait_for_versions(edit_page, 2)
    assert current_label(edit_page).startswith("infill 0:")
    pid = edit_page.locator("#piece-select").input_value()
    piece = call("GET", f"{edit_server.url}/api/pieces/{pid}")[1]
    (v1, v2) = piece["versions"]
    assert piece["current"] == v2["id"] and v2["params"]["density"] == "high"
    lo, hi = v2["params"]["start_s"], v2["params"]["end_s"]
    assert hi - lo > 8, "the drag chose a span several chunks long"
    api = f"{edit_server.url}/api/pieces/{pid}/versions"
    before, after = (symusic.Score.from_midi(call("GET", f"{api}/{v['id']}/midi")[1]) for v in (v1, v2))
    step = 60 / 80 / 24  # one step of the model's grid, at a tempo slower than the song's
    assert note_rows(before, lo - step, hi, False) == note_rows(after, lo - step, hi, False)  # kept exactly
    assert note_rows(before, lo - step, hi, True) != note_rows(after, lo - step, hi, True)  # rewritten


def test_arrange_adds_an_instrument(edit_page, edit_server, song_file):
    upload(edit_page, song_file)
    open_tab(edit_page, "arrange")
    parts = edit_page.locator("#arrange-keep label").all_inner_texts()
    assert len(parts) == 4 and "Flute" not in edit_page.locator("#legend").inner_text()
    edit_page.select_option("#arrange-instrument-pick", "73")
    edit_page.click("#arrange-instrument-add")
    assert "Flute" in edit_page.locator("#arrange-add").inner_text()
    edit_page.fill("#arrange-n", "1")
    edit_page.fill("#seed", "1")
    edit_page.click("#arrange")
    wait_for_versions(edit_page, 2)
    assert current_label(edit_page).startswith("arranged + Flute")
    edit_page.wait_for_function("document.getElementById('legend').textContent.includes('Flute')")
    assert len(edit_page.locator("#legend span").all()) == 5
    assert "Flute" in edit_page.locator("#arrange-keep").inner_text()
    pid = edit_page.locator("#piece-select").input_value()
    piece = call("GET", f"{edit_server.url}/api/pieces/{pid}")[1]
    assert 73 in piece["versions"][-1]["instruments"]


def test_screenshot_of_a_working_session(edit_page, song_file, tmp_path):
    """Continue from a point, arrange a flute part in, choose a span, key and density for infill."""
    page = edit_page
    upload(page, song_file)
    open_tab(page, "continue")
    box = page.locator("#roll").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.62, box["y"] + 200)  # the point to continue from
    page.fill("#cont-seconds", "12")
    page.fill("#seed", "7")
    page.click("#continue")
    wait_for_versions(page, 2)
    assert current_label(page).startswith("continued from 0:")
    open_tab(page, "arrange")
    page.select_option("#arrange-instrument-pick", "73")
    page.click("#arrange-instrument-add")
    page.fill("#arrange-n", "1")
    page.click("#arrange")
    wait_for_versions(page, 3)
    page.wait_for_function("document.querySelectorAll('#legend span').length === 5")
    open_tab(page, "infill")
    assert re.match(r"\d:\d\d\.\d – \d:\d\d\.\d", drag_on_roll(page, 0.3, 0.42))
    page.select_option("#infill-key", "D major")
    page.select_option("#infill-density", "medium")
    page.wait_for_timeout(400)
    shot = tmp_path / "studio.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 20_000
    if os.environ.get("MIDIGEN_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "studio.png")


# ----- a musician's session (issue 21) -----------------------------------------------------------


def _fits(page) -> float:
    """How much of the scrolled width the song takes: ~1 when the roll shows the whole piece at once."""
    return page.evaluate("document.getElementById('roll-spacer').getBoundingClientRect().width / "
                         "document.getElementById('roll').clientWidth")


def _doubled_song(path: Path, unknown: int) -> Path:
    """songgen seed 3 with its bass doubled an octave up on a second track and a part the model never
    learned (program ``unknown``)."""
    score = symusic.Score.from_midi(bytes(make_song(3).dumps_midi()))
    bass = next(t for t in score.tracks if not t.is_drum)
    twin = bass.copy()
    twin.name = "octave"
    for n in twin.notes:
        n.pitch = min(127, n.pitch + 12)
    odd = next(t for t in score.tracks if not t.is_drum and t is not bass).copy()
    odd.program, odd.name = unknown, "odd one"
    score.tracks.extend([twin, odd])
    path.write_bytes(bytes(score.dumps_midi()))
    return path


def test_a_musicians_session_keeps_views_numbers_and_says_what_happens(edit_page, edit_server, song_file, tmp_path):
    page, base = edit_page, edit_server.url
    caps = call("GET", base + "/api/info")[1]["capabilities"]
    unknown = next(i for i in range(1, 112) if i not in caps["instruments"])
    # the drop overlay goes as soon as a first generation draws notes, and comes back if it writes none
    new_piece(page)
    assert page.locator("#empty").is_visible()
    page.fill("#gen-seconds", "300")
    page.click("#generate")
    page.wait_for_function("/\\b[1-9][0-9]* notes/.test(document.getElementById('job-status').textContent)")
    assert page.locator("#empty").is_hidden() and page.locator("#job").is_visible()
    page.click("#cancel")
    page.wait_for_function("document.getElementById('job').hidden", timeout=5_000)
    assert page.locator("#empty").is_visible()

    # a new piece fits the roll whatever the last one's zoom was
    upload(page, song_file)
    assert 0.9 < _fits(page) < 1.25
    for _ in range(3):
        page.click("#zoom-in")
    assert _fits(page) > 3
    before = page.locator("#piece-select").input_value()
    page.set_input_files("#upload-input", str(_doubled_song(tmp_path / "doubled.mid", unknown)))
    page.wait_for_function(f"document.getElementById('piece-select').value !== {before!r} && "
                           "document.querySelectorAll('#legend span').length === 6")
    assert 0.9 < _fits(page) < 1.25, "the zoom of the last piece carried over"

    # one legend entry per track: the doubled bass is two, and solo shows and plays one alone
    legend = page.locator("#legend span").all_inner_texts()
    assert len(legend) == 6 and sum("“octave”" in x for x in legend) == 1, legend
    everything = coloured_pixels(page)
    page.click("#legend span:has-text('“octave”') button:text('S')")
    page.wait_for_function("document.getElementById('audio').src.includes('tracks=')")
    page.wait_for_timeout(300)
    assert coloured_pixels(page) < everything * 0.6
    solo = page.get_attribute("#legend span:has-text('“octave”')", "data-track")
    assert page.evaluate("document.getElementById('audio').src").endswith(f"tracks={solo}")
    page.wait_for_function("document.getElementById('audio').duration > 0", timeout=60_000)
    page.click("#legend span:has-text('“octave”') button:text('S')")
    page.wait_for_function("!document.getElementById('audio').src.includes('tracks=')")

    # infill offers only what the checkpoint can write, and says why the rest is greyed
    open_tab(page, "infill")
    boxes = page.locator("#infill-instruments input")
    assert boxes.count() == 5 and page.locator("#infill-instruments input:disabled").count() == 1
    name = call("GET", base + "/api/info")[1]["instruments"][unknown]["name"]
    assert name in page.locator("#infill-instruments label.cannot").inner_text()
    assert name in page.locator("#infill-note").inner_text() and "cannot rewrite" in page.locator("#infill-note").inner_text()

    # continuing from a point says first what goes; the job leaves the view where it was
    open_tab(page, "continue")
    box = page.locator("#roll").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.45, box["y"] + 200)
    assert re.search(r"Everything from \d:\d\d\.\d on is replaced: the \d+ notes", page.locator("#cont-note").inner_text())
    for _ in range(3):
        page.click("#zoom-in")
    view = page.evaluate("[document.getElementById('roll-scroll').scrollLeft, " + "document.getElementById('roll-spacer').style.width]")
    page.fill("#cont-seconds", "30")
    page.fill("#seed", "4")
    page.click("#continue")
    wait_for_versions(page, 2)
    page.wait_for_timeout(300)
    assert page.evaluate("document.getElementById('roll-scroll').scrollLeft") == view[0]
    assert page.locator("#piece-select option:checked").inner_text().endswith("· 2 versions")

    # the selector follows clicks and deletes; numbers stay with their versions
    page.click("#versions li:not(.current) .vlabel")
    page.wait_for_function("document.querySelector('#versions li.current .vnum').textContent === 'v1'")
    page.click("#versions li:not(.current) button.del")
    page.wait_for_function("document.querySelectorAll('#versions li').length === 1 && document.querySelector("
                           "'#piece-select option:checked').textContent.endsWith('· 1 version')")
    assert page.locator("#versions-note").inner_text().startswith("1 in all")
    pid = page.locator("#piece-select").input_value()
    job = call("POST", f"{base}/api/pieces/{pid}/continue", {"seconds": 0.05, "seed": 1, "instruments": ["flute"]})[1]
    job = wait_job(base, job)[0]
    assert job["status"] == "done", job
    page.select_option("#piece-select", index=1)
    page.select_option("#piece-select", pid)
    page.wait_for_function("document.querySelectorAll('#versions li').length === 2")
    assert page.locator("#versions li.current .vnum").inner_text() == "v3"  # v2 was deleted: no v2 again
    warning = page.locator("#versions li.current .vwarn").inner_text()
    assert ("the model wrote no" in warning or "no new notes" in warning) and "teach it your music" in warning

    # "continue and keep what follows" rewrites from the point to a bar line and keeps the rest
    open_tab(page, "continue")
    page.check("input[name=cont-from][value=end]")
    assert page.locator("#continue-keep").is_hidden() and page.locator("#cont-note").inner_text() == ""
    box = page.locator("#roll").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + 200)
    assert page.locator("#continue-keep").is_visible() and "next bar line" in page.locator("#cont-note").inner_text()
    page.fill("#cont-seconds", "4")
    page.click("#continue-keep")
    wait_for_versions(page, 3)
    piece = call("GET", f"{base}/api/pieces/{pid}")[1]
    parent, made = (next(v for v in piece["versions"] if v["id"] == i) for i in (job["versions"][0], piece["current"]))
    lo, hi = made["params"]["start_s"], made["params"]["end_s"]
    bars = call("GET", f"{base}/api/pieces/{pid}/versions/{parent['id']}/roll")[1]["bars"]
    assert made["kind"] == "infill" and hi - lo >= 4 and any(abs(hi - b) < 1e-3 for b in bars), (lo, hi)
    before, after = (symusic.Score.from_midi(call("GET", f"{base}/api/pieces/{pid}/versions/{v['id']}/midi")[1])
                     for v in (parent, made))
    assert note_rows(before, hi, 1e9, True) == note_rows(after, hi, 1e9, True)  # what follows is kept

    # an error names the page's own fields and keeps off the versions list
    open_tab(page, "generate")
    page.fill("#top-p", "2")
    page.click("#generate")
    # the toast may still hold the last job's warning: wait for this error's own words to replace it
    page.wait_for_function("!document.getElementById('error').hidden && "
                           "document.getElementById('error-text').textContent.includes('op-p')")
    text = page.locator("#error-text").inner_text()
    assert text.startswith("Top-p: ") and "top_p" not in text, text
    toast, listed = page.locator("#error").bounding_box(), page.locator("#versions").bounding_box()
    assert toast["y"] + toast["height"] < listed["y"] or toast["y"] > listed["y"] + listed["height"]

    # the panel's selects stay inside it, and the top bar keeps one line at 1024 px
    for width in (1440, 1024):
        page.set_viewport_size({"width": width, "height": 800})
        page.wait_for_timeout(200)
        right = page.evaluate("document.querySelector('.controls').getBoundingClientRect().right")
        widest = page.evaluate("Math.max(...[...document.querySelectorAll('.controls select')]"
                               ".filter(s => s.offsetParent).map(s => s.getBoundingClientRect().right))")
        assert widest <= right - 10, (width, widest, right)
        assert page.locator("#upload-button").bounding_box()["height"] < 36, width
