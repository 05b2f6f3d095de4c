"""The Teach panel in headless Chromium: files in (chosen, zipped and dropped), a real tune with its curve,
the taught model in the selector with its new style, and a cancelled tune that leaves no model.

The server is the real `midigen studio` over conftest's ``edit_run`` (it learned style controls, so the
taught style becomes selectable); the tunes take a few steps.
"""
from __future__ import annotations

import base64
import re
import zipfile

import pytest

from studio_server import Server, call
from test_studio_browser import _need_browser, _open_page, browser  # noqa: F401  (browser: a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def server(edit_run, tmp_path_factory):
    _need_browser()
    s = Server(edit_run, tmp_path_factory.mktemp("teach-browser-ws"))
    yield s
    s.stop()


@pytest.fixture
def page(browser, server):  # noqa: F811
    yield from _open_page(browser, server.page_url)


@pytest.fixture(scope="module")
def files(songs_dir, music21_dir, tmp_path_factory):
    """Three files to choose, a zip of three more, one to drop: made band songs and real music21 pieces."""
    songs = sorted(songs_dir.glob("*.mid"))[10:14] + sorted(music21_dir.rglob("*.mid"))[3:6]
    zpath = tmp_path_factory.mktemp("teach-zip") / "more songs.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for p in songs[3:6]:
            z.write(p, p.name)
    return {"chosen": songs[:3], "zip": zpath, "drop": songs[6]}


def _drop(page, path) -> None:
    """Drop a file on the panel's drop zone as a browser does: a drop event carrying a DataTransfer."""
    page.evaluate("""([name, b64]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, { type: "audio/midi" }));
        const zone = document.getElementById("teach-drop");
        for (const kind of ["dragenter", "dragover", "drop"]) {
            zone.dispatchEvent(new DragEvent(kind, { dataTransfer: dt, bubbles: true, cancelable: true }));
        }
    }""", [path.name, base64.b64encode(path.read_bytes()).decode()])


def _options(page, sel: str) -> list[str]:
    return page.eval_on_selector_all(f"{sel} option", "os => os.map(o => o.value)")


def test_teach_a_style_then_write_in_it(page, server, files):
    assert _options(page, "#model-select") == ["base"]
    page.click("#teach-open")
    assert page.is_visible("#teach") and page.is_disabled("#teach-start")
    page.set_input_files("#teach-input", [str(p) for p in files["chosen"]] + [str(files["zip"])])
    page.wait_for_function("document.getElementById('teach-files').textContent.startsWith('6 files')")
    _drop(page, files["drop"])
    page.wait_for_function("document.getElementById('teach-files').textContent.startsWith('7 files')")
    assert page.is_hidden("#drop")  # the page's own drop (open as a piece) stayed out of it
    assert call("GET", server.url + "/api/pieces")[1] == []
    page.fill("#teach-style", "my band")
    page.fill("#teach-steps", "6")
    page.click("#teach-start")
    page.wait_for_selector("#teach-status[data-status=done]", timeout=300_000)
    assert "my-band" in page.text_content("#teach-status")
    assert page.text_content("#teach-files") == "no files yet"  # the set's files were deleted with its tune
    plot = page.eval_on_selector("#teach-plot", "c => [c.dataset.points, c.dataset.valPoints]")
    ran = re.search(r"Done after (\d+) steps", page.text_content("#teach-status")).group(1)
    assert 1 <= int(ran) <= 6 and plot[0] == ran and int(plot[1]) >= 1, plot  # every step's loss, held-out measures
    assert _options(page, "#model-select") == ["base", "my-band"]
    assert "my band" not in _options(page, "#gen-style")

    page.select_option("#model-select", "my-band")
    page.wait_for_function("[...document.querySelectorAll('#gen-style option')].some(o => o.value === 'my band')")
    assert call("GET", server.url + "/api/models")[1]["current"] == "my-band"
    page.select_option("#gen-style", "my band")
    page.fill("#gen-seconds", "3")
    page.click("#generate")
    page.wait_for_function("document.querySelectorAll('#versions li').length === 1", timeout=120_000)
    page.select_option("#model-select", "base")
    page.wait_for_function("![...document.querySelectorAll('#gen-style option')].some(o => o.value === 'my band')")
    assert call("GET", server.url + "/api/models")[1]["base_loads"] == 1


def test_cancel_a_tune_from_the_panel(page, server, files):
    page.click("#teach-open")
    page.set_input_files("#teach-input", [str(p) for p in files["chosen"]])
    page.wait_for_function("document.getElementById('teach-files').textContent.startsWith('3 files')")
    page.fill("#teach-style", "never kept")
    page.fill("#teach-steps", "5000")
    page.click("#teach-start")
    page.wait_for_selector("#teach-status[data-status=training]", timeout=120_000)
    assert page.is_disabled("#teach-start")
    page.click("#teach-cancel")
    page.wait_for_selector("#teach-status[data-status=cancelled]", timeout=120_000)
    assert page.is_hidden("#teach-cancel") and page.text_content("#teach-files") == "no files yet"
    assert page.is_disabled("#teach-start")  # the cancelled tune's files were deleted: choose them again
    page.set_input_files("#teach-input", [str(p) for p in files["chosen"]])
    page.wait_for_function("document.getElementById('teach-files').textContent.startsWith('3 files')")
    assert not page.is_disabled("#teach-start")
    assert "never-kept" not in [m["id"] for m in call("GET", server.url + "/api/models")[1]["models"]]
