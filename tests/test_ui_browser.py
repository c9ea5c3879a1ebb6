"""The demo page in a real browser: Playwright drives Debian's Chromium against ``python -m ui.app``.

Never a Playwright browser download: the Makefile's ``test`` target installs /usr/bin/chromium with apt.
Screenshots and the server's log go to artifacts/ui/ (git-ignored).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
from PIL import Image

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

pytest.importorskip("playwright")  # the `dev` extra
from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

pytestmark = pytest.mark.slow  # a real browser against a real server
from ui_server import CHECKPOINT, serve  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts" / "ui"
EXAMPLES = REPO / "ui" / "examples"
STOP = EXAMPLES / "14-stop.png"
FIRST_EXAMPLE = sorted(EXAMPLES.glob("*.png"))[0]  # the gallery's first thumbnail
CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = {"width": 1400, "height": 1000}
WAIT_MS = 60_000  # one analysis takes about a second; the machine may be busy training

FILE_INPUT = "#image-input input[type=file]"


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def app_url():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with serve(checkpoint=CHECKPOINT, log=ARTIFACTS / "ui-server.log") as url:
        yield url


def require_chromium() -> None:
    """Fail (never skip) without Debian's Chromium, saying how to get it."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"{CHROMIUM} not found: the browser tests drive Debian's Chromium. Install it with "
                    "`sudo apt-get install chromium` (`make test` does this); never `playwright install`.",
                    pytrace=False)


@pytest.fixture(scope="module")
def browser():
    require_chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, app_url):
    """A fresh page on the demo; fails the test if the page throws an uncaught JavaScript error."""
    context = browser.new_context(viewport=VIEWPORT)
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    js_errors: list[str] = []
    pg.on("pageerror", lambda e: js_errors.append(str(e)))
    pg.goto(app_url)
    expect(pg.locator(FILE_INPUT)).to_be_attached()
    try:
        yield pg
    finally:
        context.close()
    assert not js_errors, f"uncaught JavaScript errors on the page: {js_errors}"


# ------------------------------------------------------------------------------------------ helpers
def upload(page: Page, path: Path) -> None:
    """Put a file into the image input, clearing the one already there (its <input> is gone while it shows)."""
    clear = page.locator("#image-input button[aria-label='Remove Image'], #image-input button[aria-label='Clear']")
    if clear.count():
        clear.first.click()
    page.locator(FILE_INPUT).set_input_files(str(path))


def expect_top_class(page: Page, name: str, class_id: int) -> None:
    top = page.locator("#top5")
    expect(top.get_by_test_id("label-output-value")).to_have_text(f"{name} (class {class_id})", timeout=WAIT_MS)
    expect(top).to_contain_text(name)


def expect_rendered_chart(page: Page, elem_id: str) -> None:
    """A gr.Plot given a Vega-Lite spec: the browser draws it into a canvas (or svg) with a real size."""
    sel = f"#{elem_id} .vega-embed canvas, #{elem_id} .vega-embed svg"
    page.wait_for_function(
        "sel => { const c = document.querySelector(sel); return !!c && c.getBoundingClientRect().width > 100; }",
        arg=sel, timeout=WAIT_MS)
    width, height = page.locator(sel).first.evaluate("c => [c.getBoundingClientRect().width, c.getBoundingClientRect().height]")
    assert width > 300 and height > 150, f"#{elem_id}: chart is {width}x{height} px"


def expect_views(page: Page) -> None:
    """The three views (sent | seen 28x28 | Grad-CAM): one decoded image, three panels wide."""
    page.wait_for_function(
        "() => { const i = document.querySelector('#views img'); return !!i && i.complete && i.naturalWidth > 0; }",
        timeout=WAIT_MS)
    width, height = page.locator("#views img").first.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    assert width > 3 * height > 500, f"#views: image is {width}x{height} px"


def expect_full_result(page: Page, name: str, class_id: int, file: str | None = None) -> None:
    expect_top_class(page, name, class_id)
    expect(page.locator("#summary")).to_contain_text(name, timeout=WAIT_MS)
    if file:
        expect(page.locator("#summary")).to_contain_text(file, timeout=WAIT_MS)
    expect(page.locator("#se-off")).to_contain_text("SE off", timeout=WAIT_MS)
    expect(page.locator("#se-off")).to_contain_text("SE held at its average")
    expect_rendered_chart(page, "se-plot")
    expect_views(page)


# ------------------------------------------------------------------------------------------ tests
def test_chromium_is_installed():
    require_chromium()  # a plain FAILED line here; the tests below then error at setup with the same message


@pytest.mark.timeout(300)
def test_upload_shows_prediction_and_figures(page: Page):
    card = page.locator("#model-card")
    expect(card).to_contain_text("sha256")
    expect(card).to_contain_text(hashlib.sha256(CHECKPOINT.read_bytes()).hexdigest())

    upload(page, STOP)
    expect_full_result(page, "Stop", 14, STOP.name)
    expect(page.locator("#summary table")).to_be_visible()
    expect(page.locator("#summary")).not_to_contain_text("Unsure")
    # the image as sent is shown in the input box itself
    expect(page.locator("#image-input img").first).to_be_visible()
    width = Image.open(STOP).width  # the example as uploaded (a ROI crop at the archive's resolution)
    assert page.locator("#image-input img").first.evaluate("i => i.complete && i.naturalWidth") == width
    expect(page.get_by_test_id("toast-body")).to_have_count(0)

    page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)


@pytest.mark.timeout(300)
def test_a_picture_that_is_no_traffic_sign_is_called_unsure(page: Page, tmp_path: Path):
    """A checkerboard: far from every class's excitation average, so the page says it is unsure (top 3)."""
    from fixtures import checkerboard
    from PIL import Image

    board = tmp_path / "checkerboard.png"
    Image.fromarray(checkerboard()).save(board)
    upload(page, board)
    summary = page.locator("#summary")
    expect(summary).to_contain_text("Unsure", timeout=WAIT_MS)
    expect(summary).to_contain_text("Its top 3")
    expect(summary).to_contain_text("unlike the training data")
    expect_views(page)
    page.screenshot(path=str(ARTIFACTS / "unsure.png"), full_page=True)


@pytest.mark.timeout(300)
def test_per_block_switches_change_the_se_off_result(page: Page):
    upload(page, STOP)
    expect_full_result(page, "Stop", 14)
    se_off = page.locator("#se-off")
    boxes = page.locator("#se-switches input[type=checkbox]")
    names = [b.get_attribute("name") or "" for b in boxes.all()]
    assert boxes.count() >= 2, names
    everything = se_off.inner_text()
    expect(se_off).to_contain_text("stage1, stage2")
    # untick every block but the last: only that one is switched off, and the text says so
    for i in range(boxes.count() - 1):
        boxes.nth(i).uncheck()
    expect(se_off).not_to_contain_text("stage1", timeout=WAIT_MS)
    only_last = se_off.inner_text()
    assert only_last != everything
    for i in range(boxes.count()):
        boxes.nth(i).uncheck()
    expect(se_off).to_contain_text("no block switched off", timeout=WAIT_MS)


@pytest.mark.timeout(300)
def test_study_tab_renders_its_plots(page: Page):
    page.get_by_role("tab", name="Study").click()
    expect(page.locator("#study-trials")).to_be_visible(timeout=WAIT_MS)
    for elem_id in ("study-curves", "study-factors", "study-ablation"):
        expect_rendered_chart(page, elem_id)
    page.screenshot(path=str(ARTIFACTS / "study-tab.png"), full_page=True)


@pytest.mark.timeout(300)
def test_bad_file_shows_error_then_recovers(page: Page, tmp_path: Path):
    # Not an image by its name: the browser refuses it before any upload, naming the file.
    text = tmp_path / "not-an-image.txt"
    text.write_text("this is not a traffic sign\n")
    upload(page, text)
    refused = page.get_by_test_id("toast-text").filter(has_text="Invalid file type")
    expect(refused).to_contain_text("not-an-image.txt", timeout=WAIT_MS)
    page.locator("[data-testid=toast-close]").first.click()

    # Named like an image but not one: the server's decoder refuses it, naming the file.
    upload(page, STOP)
    expect_top_class(page, "Stop", 14)
    bad = tmp_path / "broken-sign.png"
    bad.write_bytes(b"this is not a traffic sign\n" * 4)
    upload(page, bad)
    error = page.get_by_test_id("toast-text").filter(has_text="Cannot use this file")
    expect(error).to_be_visible(timeout=WAIT_MS)
    # Playwright's "visible" ignores opacity: wait for the toast's fade-in to end (also for the screenshot).
    page.wait_for_function(
        """() => [...document.querySelectorAll("[data-testid=toast-body]")].some(t =>
               t.textContent.includes("Cannot use this file") && getComputedStyle(t).opacity === "1")""",
        timeout=WAIT_MS)
    expect(error).to_contain_text("broken-sign.png")  # the user's file name, not the server's temp path
    expect(error).not_to_contain_text("/tmp/")
    # the Stop result before it is gone: nothing old stays beside a failed upload
    expect(page.locator("#top5").get_by_test_id("label-output-value")).to_have_count(0)
    expect(page.locator("#summary")).not_to_contain_text("Stop")
    page.screenshot(path=str(ARTIFACTS / "bad-input.png"), full_page=True)

    # The server keeps serving: the next upload on the same page is classified.
    upload(page, STOP)
    expect_full_result(page, "Stop", 14, STOP.name)


@pytest.mark.timeout(300)
def test_clicking_an_example_classifies_it(page: Page):
    assert FIRST_EXAMPLE.name == "01-speed-limit-30km-h.png"
    thumb = page.locator("#examples img").first
    expect(thumb).to_be_visible()
    assert FIRST_EXAMPLE.stem in (thumb.get_attribute("src") or ""), thumb.get_attribute("src")

    thumb.click()
    expect_full_result(page, "Speed limit (30km/h)", 1, FIRST_EXAMPLE.name)
    expect(page.locator("#image-input img").first).to_be_visible()  # the example fills the input box


@pytest.mark.timeout(300)
def test_the_crop_editor_classifies_its_image(page: Page):
    page.get_by_role("button", name=re.compile("^Crop to the sign")).click()  # open the accordion
    # The editor mounts when the accordion opens; an upload before its canvas exists throws inside Gradio.
    expect(page.locator("#crop-editor canvas").first).to_be_visible(timeout=WAIT_MS)
    page.wait_for_timeout(500)
    page.locator("#crop-editor input[type=file]").set_input_files(str(STOP))
    page.wait_for_timeout(1500)  # the editor draws the upload on its canvas, then makes the composite
    page.locator("#crop-button").click()
    expect_full_result(page, "Stop", 14)
