"""Chromium through Playwright: different images uploaded one after another on one page, each timed
from ``set_input_files`` until every panel of the page shows it (``DRAWN_JS``), on the demo and the floor."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from benchmarks.loadtest import EXAMPLES
from benchmarks.loadtest.rows import make_row

CHROMIUM = Path("/usr/bin/chromium")
FILE_INPUT = "#image-input input[type=file]"
CLEAR_BUTTON = "#image-input button[aria-label='Remove Image']"  # gr.Image's own clear button
BROWSER_TIMEOUT_MS = 30_000  # one upload until every panel is drawn


def make_browser_images(folder: Path, n: int) -> list[Path]:
    """n PNGs with different contents and names: the examples, then, round after round, copies of them
    brightened a little more each round and mirrored every other round."""
    from PIL import Image, ImageEnhance, ImageOps

    sources = sorted(EXAMPLES.glob("*.png"))
    paths = []
    for i in range(n):
        src, rnd = sources[i % len(sources)], i // len(sources)
        img = Image.open(src).convert("RGB")
        if rnd % 2:
            img = ImageOps.mirror(img)
        if rnd:
            img = ImageEnhance.Brightness(img).enhance(1 + 0.15 * rnd)
        paths.append(folder / f"{i:02d}-{src.stem}-v{rnd}.png")
        img.save(paths[-1])
    return paths


# Before an upload: marks the charts now on the page as stale, and watches the Vega embeds that hold
# them (gr.Plot draws a new chart each time; the native plots redraw in their old svg), so that only
# a chart drawn after this counts. Gives the views' image sources now.
MARK_STALE_JS = """() => {
  for (const el of document.querySelectorAll('.vega-embed canvas, .vega-embed svg')) el.dataset.ltStale = '1';
  for (const o of window.__ltObservers || []) o.disconnect();
  const mutated = window.__ltMutated = new WeakSet();
  window.__ltObservers = [...document.querySelectorAll('[id^="se-plot"] .vega-embed')].map(embed => {
    const o = new MutationObserver(() => mutated.add(embed));
    o.observe(embed, {subtree: true, childList: true, attributes: true, characterData: true});
    return o;
  });
  return [...document.querySelectorAll('#views img')].map(i => i.src).join(' ');
}"""

# True (the views' sources and the page's clock) once every panel on the page shows the new upload.
DRAWN_JS = """({name, prevViews, required}) => {
  const summary = document.querySelector('#summary');
  if (!summary || !summary.textContent.includes(name)) return false;
  const top5 = document.querySelector('#top5');
  if (top5 ? !top5.querySelector('[data-testid=label-output-value]') : required.includes('#top5')) return false;
  for (const plot of document.querySelectorAll('[id^="se-plot"]')) {
    const embed = plot.querySelector('.vega-embed');
    if (!embed) return false;
    const fresh = el => !el.dataset.ltStale || (window.__ltMutated && window.__ltMutated.has(embed));
    const canvas = [...embed.querySelectorAll('canvas')].some(c => fresh(c) && c.width > 0 && c.height > 0);
    const svg = [...embed.querySelectorAll('svg')].some(s => fresh(s) && s.querySelector('g[class*="mark-"] *'));
    if (!canvas && !svg) return false;
  }
  const views = document.querySelector('#views');
  let srcs = '';
  if (views) {
    const imgs = [...views.querySelectorAll('img')];
    if (!imgs.length || !imgs.every(i => i.complete && i.naturalWidth > 0)) return false;
    srcs = imgs.map(i => i.src).join(' ');
    if (srcs === prevViews) return false;
  } else if (required.includes('#views')) return false;
  return {views: srcs, t: performance.now()};
}"""

# What of the contract holds now: said when an upload times out.
DIAGNOSE_JS = """(name) => {
  const q = s => document.querySelector(s);
  const plots = [...document.querySelectorAll('[id^="se-plot"]')];
  return {
    summary: q('#summary') ? q('#summary').textContent.slice(0, 200) : null,
    summary_has_name: !!q('#summary') && q('#summary').textContent.includes(name),
    top5: q('#top5') ? !!q('#top5').querySelector('[data-testid=label-output-value]') : null,
    se_plots: plots.map(p => ({id: p.id, vega_embed: !!p.querySelector('.vega-embed'),
      canvas: p.querySelectorAll('.vega-embed canvas').length, svg: p.querySelectorAll('.vega-embed svg').length,
      img: p.querySelectorAll('img').length})),
    views: q('#views') ? [...q('#views').querySelectorAll('img')].map(i =>
      ({complete: i.complete, naturalWidth: i.naturalWidth, src: i.src.slice(-80)})) : null,
    toasts: [...document.querySelectorAll('[data-testid=toast-body]')].map(t => t.textContent.slice(0, 200)),
  };
}"""


def run_browser(browser, url: str, images: list[Path], warmup: Path, required: list[str],
                timeout_ms: int = BROWSER_TIMEOUT_MS) -> tuple[list, float, dict]:
    """Upload each image on one page (clearing the input first); time upload -> every panel drawn.
    An upload not drawn within ``timeout_ms`` is an error; two in a row end the page.
    (outcomes, wall seconds, notes)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(timeout_ms)
    js_errors: list[str] = []
    page.on("pageerror", lambda e: js_errors.append(str(e)[:300]))
    notes: dict = {}
    prev = {"views": None}

    def upload(path: Path) -> dict:
        clear = page.locator(CLEAR_BUTTON)
        if clear.count():
            clear.first.click()
            if prev.get("name") and not notes.get("clear_kept_summary"):
                # Let the clear event land first, so that it cannot blank the new result.
                try:
                    page.wait_for_function("n => !(document.querySelector('#summary')?.textContent || '')"
                                           ".includes(n)", arg=prev["name"], polling="raf", timeout=3000)
                except Exception:  # noqa: BLE001 - this page's clear keeps the summary: no more waiting
                    notes["clear_kept_summary"] = (f"after clicking the input's clear button, #summary still "
                                                   f"showed {prev['name']} 3 s later (not waited for again)")
        page.locator(FILE_INPUT).wait_for(state="attached")
        prev["name"] = path.name
        views_now = page.evaluate(MARK_STALE_JS)
        if prev["views"] is None:  # the first upload: what the page shows before it
            prev["views"] = views_now or ""
        t0 = page.evaluate("performance.now()")
        page.locator(FILE_INPUT).set_input_files(str(path))
        try:
            done = page.wait_for_function(DRAWN_JS, arg={"name": path.name, "prevViews": prev["views"],
                                                         "required": required},
                                          polling="raf", timeout=timeout_ms).json_value()
        except Exception as e:  # noqa: BLE001 - a timeout, or the page went away
            try:
                diag = page.evaluate(DIAGNOSE_JS, path.name)
            except Exception as d:  # noqa: BLE001 - the page is gone
                diag = f"{type(d).__name__}: {d}"[:300]
            notes.setdefault("timeouts", []).append({"image": path.name, "state": diag})
            return {"ok": False, "error": f"{path.name}: not drawn within {timeout_ms / 1000:.0f} s "
                                          f"({type(e).__name__})", "seconds": timeout_ms / 1000}
        prev["views"] = done["views"]
        return {"ok": True, "seconds": (done["t"] - t0) / 1000.0, "image": path.name}

    outcomes: list[dict] = []
    try:
        page.goto(url)
        first = upload(warmup)
        notes["warmup_upload_ms"] = round(first["seconds"] * 1000, 1)
        if not first["ok"]:
            notes["warmup_error"] = first["error"]
        t0 = time.perf_counter()
        for path in images:
            outcomes.append(upload(path))
            if len(outcomes) >= 2 and not outcomes[-1]["ok"] and not outcomes[-2]["ok"]:
                notes["stopped"] = f"two uploads in a row were not drawn: stopped after {len(outcomes)}"
                break
        wall = time.perf_counter() - t0
    finally:
        context.close()
    if js_errors:
        notes["js_errors"] = js_errors[:5]
    return outcomes, wall, notes


def measure_browser(url: str, noop_url: str, uploads: int) -> list[dict]:
    """The Chromium rows: the same ``uploads`` images on the demo's page, then on the floor's."""
    method = "Chromium: upload -> every panel drawn"
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        err = [{"ok": False, "error": f"{CHROMIUM} not found (sudo apt-get install chromium)", "seconds": 0.0}]
        return [make_row(t, method, 1, uploads, err * uploads, 1.0) for t in ("demo", "noop")]
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    rows = []
    with tempfile.TemporaryDirectory(prefix="loadtest-images-") as tmp, sync_playwright() as p:
        warmup, *images = make_browser_images(Path(tmp), uploads + 1)
        names = [path.name for path in images]
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            for target, u, required in (("demo", url, ["#top5", "#views"]), ("noop", noop_url, [])):
                print(f"{target}: Chromium, {uploads} uploads ...", flush=True)
                out, wall, notes = run_browser(browser, u, images, warmup, required)
                rows.append(make_row(target, method, 1, len(images), out, wall, not_run=len(images) - len(out),
                                     images=names, required_panels=["#summary", *required],
                                     **notes))
        finally:
            browser.close()
    return rows
