"""The studio page writes a song with a form and acts on its sections, in headless Chromium (the
helpers and servers of tests/test_studio_browser.py, over conftest's editing checkpoint)."""
from __future__ import annotations

import symusic

from studio_server import call
from test_studio_browser import (_open_page, browser, current_label, edit_server, new_piece, open_tab,  # noqa: F401
                                 wait_for_versions)
import pytest


@pytest.fixture
def edit_page(browser, edit_server):  # noqa: F811
    yield from _open_page(browser, edit_server.page_url)


def _sections(page) -> list[str]:
    return page.locator("#section-list button").all_inner_texts()


def test_a_form_from_the_page_its_bands_and_the_section_actions_with_undo(edit_page, edit_server):  # noqa: F811
    page, base = edit_page, edit_server.url
    new_piece(page)
    page.fill("#gen-form", "A:2 B:2 A:2")
    page.fill("#gen-tempo", "100")
    page.fill("#seed", "5")
    page.click("#generate")
    wait_for_versions(page, 1)
    assert current_label(page).startswith("form A:2 B:2 A:2 · 6 bars")
    open_tab(page, "infill")
    assert page.locator("#sections").is_visible()
    assert [s.split()[0] for s in _sections(page)] == ["A", "B", "A"]
    assert page.locator("#section-vary").is_disabled()  # nothing selected yet

    page.click("#section-list button >> nth=2")  # the second A ...
    assert page.locator("#infill-span").inner_text().startswith("A: ")
    options = page.locator("#section-like-pick option").all_inner_texts()
    assert [o.split()[0] for o in options] == ["A", "B"]  # every other section of its length
    page.select_option("#section-like-pick", index=1)
    page.click("#section-like")  # ... made like B
    wait_for_versions(page, 2)
    assert " like " in current_label(page)

    page.click("#section-list button >> nth=1")  # B varied
    page.click("#section-vary")
    wait_for_versions(page, 3)
    assert "varied" in current_label(page)

    page.click("#section-list button >> nth=0")  # the first A written again (one variant)
    page.fill("#infill-n", "1")
    page.click("#section-regenerate")
    wait_for_versions(page, 4)
    assert current_label(page).startswith("infill 0:00.0")

    pid = page.locator("#piece-select").input_value()
    piece = call("GET", f"{base}/api/pieces/{pid}")[1]
    v1, v2, v3, _ = piece["versions"]
    api = f"{base}/api/pieces/{pid}/versions"
    one, two = (symusic.Score.from_midi(call("GET", f"{api}/{v['id']}/midi")[1]) for v in (v1, v2))
    # the sections stay named (the chord symbols of a chord model's song may change where it was rewritten)
    kept = [(m.text, m.time) for m in one.markers if not m.text.startswith("Chord ")]
    assert [x for x in ((m.text, m.time) for m in two.markers) if x in kept] == kept
    b0, b1 = v2["params"]["like_start_s"], v2["params"]["like_end_s"]
    assert (b0, b1) == (piece_sections(base, pid, v1["id"])[1])  # the second A was made like B

    page.click("#undo")
    page.wait_for_function("document.querySelector('#versions li.current .vlabel').textContent.includes('varied')")
    assert call("GET", f"{base}/api/pieces/{pid}")[1]["current"] == v3["id"]


def piece_sections(base: str, pid: str, vid: str) -> list[tuple[float, float]]:
    roll = call("GET", f"{base}/api/pieces/{pid}/versions/{vid}/roll")[1]
    return [(s["start"], s["end"]) for s in roll["sections"]]
