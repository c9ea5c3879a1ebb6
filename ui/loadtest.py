"""Load-test the demo: its /predict API over plain HTTP and its page in Chromium, beside a no-op floor.

    python -m ui.loadtest [--url URL] [--checkpoint results/best] [--clients 8] [--requests 10]
                          [--serial-requests 30] [--client-requests 10] [--browser-uploads 20]
                          [--no-browser] [--image ui/examples/14-stop.png] [--out results/ui/loadtest.json]

Without --url it starts ``python -m ui.app --checkpoint ...`` itself; with --url the checkpoint is
only recorded. It always starts the *no-op floor* (``serve_noop``): a Gradio app with the demo's
queue settings and a gr.Image input like the demo's, whose /predict answers ``{"top5": []}`` at once.
What the floor costs is Gradio and the client, not the model.

Rows, each for the demo and then the floor: HTTP with 1 client (upload + call + SSE stream, Gradio's
REST protocol over one keep-alive connection); the same with the file uploaded once beforehand; HTTP
with ``--clients`` concurrent clients; gradio_client (demo only, its own overhead included); and
Chromium: ``--browser-uploads`` different images uploaded on one page, each timed until every panel
shows it (``DRAWN_JS``). Each row has n, p50/p95/p99/mean/max latency (ms), errors, lost and answered
requests/s. A request is an *error* when it raises, gets an HTTP error or ``event: error``; *lost*
when it ends without a dict holding ``"top5"``. Warm-up requests (two per server, one upload per page)
are not counted. Exit status 1 when a request to the demo erred or was lost, 2 when a server could
not be started.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from gtsrb.util import machine, sha256_file, write_text_atomic

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = Path(__file__).parent / "examples"
DEFAULT_IMAGE = EXAMPLES / "14-stop.png"
CHROMIUM = Path("/usr/bin/chromium")
FILE_INPUT = "#image-input input[type=file]"
CLEAR_BUTTON = "#image-input button[aria-label='Remove Image']"  # gr.Image's own clear button
HTTP_TIMEOUT = 120.0  # seconds for one request; 8 clients queue behind one model on 2 busy cores
BROWSER_TIMEOUT_MS = 30_000  # one upload until every panel is drawn
WARMUP = 2  # uncounted requests per server before the rows
NOOP_ARGS = ["-m", "ui.loadtest", "--serve-noop"]
QUEUE_LINE = "no-op floor queue: "  # the floor prints its queue settings after this


# --------------------------------------------------------------------------- the servers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serve(servers: list[tuple[list[str], str, Path | None]], timeout: float):
    """Start every ``(args, what, log)`` at once, as ``python <args> --port P`` on a free port P with
    its output in ``log``; yield their URLs once all answer HTTP 200; stop them all afterwards."""
    ports: list[int] = []
    while len(ports) < len(servers):
        if (port := free_port()) not in ports:
            ports.append(port)
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    procs = []
    try:
        for (args, _, log), port in zip(servers, ports):
            out = open(log, "w") if log else subprocess.DEVNULL
            procs.append(subprocess.Popen([sys.executable, *args, "--port", str(port)], cwd=REPO, env=env,
                                          stdout=out, stderr=subprocess.STDOUT))
            if log:
                out.close()  # the child holds its own copy
        deadline = time.monotonic() + timeout
        urls = [f"http://127.0.0.1:{port}/" for port in ports]
        for proc, (_, what, log), url in zip(procs, servers, urls):
            while True:
                if proc.poll() is not None:
                    tail = log.read_text(errors="replace")[-1000:] if log else ""
                    raise RuntimeError(f"{what} exited with status {proc.returncode}"
                                       + (f"; its output ends:\n{tail}" if tail else ""))
                try:
                    with urllib.request.urlopen(url, timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what} did not answer on {url} within {timeout:.0f} s")
                time.sleep(0.5)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def app_args(checkpoint: str) -> list[str]:
    return ["-m", "ui.app", "--checkpoint", str(checkpoint)]


@contextlib.contextmanager
def start_app(checkpoint: str, timeout: float = 180.0, log: Path | None = None):
    """Run ``python -m ui.app`` on a free port; yield its URL once it answers HTTP 200."""
    with _serve([(app_args(checkpoint), "ui.app", log)], timeout) as (url,):
        yield url


@contextlib.contextmanager
def start_noop(timeout: float = 120.0, log: Path | None = None):
    """Run the no-op floor on a free port; yield its URL once it answers HTTP 200."""
    with _serve([(NOOP_ARGS, "the no-op floor", log)], timeout) as (url,):
        yield url


def floor_queue(log: Path) -> dict:
    """The queue settings a started floor printed into its output ``log``."""
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(QUEUE_LINE):
            return {**json.loads(line[len(QUEUE_LINE):]), "from": "ui/app.py"}
    return {}


def serve_noop(port: int) -> int:
    """The floor's own process: a gr.Image ``#image-input`` whose upload writes the file name into
    ``#summary``, and a ``/predict`` taking what the demo's takes (the image, an optional list) that
    answers ``{"top5": []}`` at once. ``preprocess=False`` leaves payloads undecoded, as the demo does."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from ui.app import CONCURRENCY, MAX_QUEUE  # here: the load generator itself needs no torch

    with gr.Blocks(title="loadtest: no-op floor") as app:
        image_in = gr.Image(type="filepath", label="Image", elem_id="image-input", height=280)
        summary = gr.Markdown(elem_id="summary")
        se_off = gr.CheckboxGroup(choices=["se1"], value=[], visible=False)
        raw = gr.JSON(visible=False)

        def show_name(payload) -> str:  # the upload's FileData as the browser sent it
            if not payload:
                return ""
            return f"**{payload.get('orig_name') or Path(payload['path']).name}**"

        image_in.upload(None, None, summary, js="() => ''")
        image_in.upload(show_name, image_in, summary, preprocess=False, api_visibility="private")
        image_in.clear(None, None, summary, js="() => ''")
        gr.Button(visible=False).click(lambda image, off: {"top5": []}, [image_in, se_off], raw,
                                       api_name="predict", preprocess=False)
    app.queue(default_concurrency_limit=CONCURRENCY, max_size=MAX_QUEUE)
    print(QUEUE_LINE + json.dumps({"default_concurrency_limit": CONCURRENCY, "max_size": MAX_QUEUE}), flush=True)
    app.launch(server_name="127.0.0.1", server_port=port, share=False, show_error=True)
    return 0


# --------------------------------------------------------------------------- Gradio's REST protocol

def parse_sse(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """Server-sent events from the stream's lines: (event, data), the data lines joined by newlines.
    A blank line ends an event; lines starting with ':' are comments; an event still open when the
    stream ends is given too (a server that closes without the last blank line loses nothing)."""
    event, data = "", []
    for line in lines:
        line = line.rstrip("\r\n")
        if not line:
            if data or event:
                yield event or "message", "\n".join(data)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
    if data or event:
        yield event or "message", "\n".join(data)


class RequestError(Exception):
    """The server answered with an error (HTTP status, ``event: error``, unreadable stream)."""


class Lost(Exception):
    """The request ended without an answer: no ``event: complete``, or one without a result."""


def read_result(lines: Iterable[str]):
    """The first output of the ``event: complete`` in an SSE stream of /gradio_api/call/.../{id}.
    Raises RequestError on ``event: error``, Lost when the stream ends without ``complete``;
    heartbeats and ``generating`` events are skipped."""
    for event, data in parse_sse(lines):
        if event == "complete":
            try:
                outputs = json.loads(data)
            except ValueError as e:
                raise RequestError(f"complete event with unreadable data {data[:200]!r}") from e
            if not isinstance(outputs, list) or not outputs:
                raise Lost(f"complete event without outputs: {data[:200]!r}")
            return outputs[0]
        if event == "error":
            raise RequestError(f"event: error: {data[:300]}")
    raise Lost("the stream ended without an 'event: complete'")


class HttpClient:
    """One keep-alive connection speaking Gradio's REST protocol to ``{url}gradio_api/``."""

    def __init__(self, url: str, timeout: float = HTTP_TIMEOUT):
        import httpx

        self.http = httpx.Client(base_url=url + "gradio_api/", timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def upload(self, name: str, content: bytes) -> str:
        r = self.http.post("upload", files=[("files", (name, content, "image/png"))])
        if r.status_code != 200:
            raise RequestError(f"upload: HTTP {r.status_code}: {r.text[:200]}")
        paths = r.json()
        if not isinstance(paths, list) or not paths or not isinstance(paths[0], str):
            raise RequestError(f"upload: unexpected answer {r.text[:200]}")
        return paths[0]

    def call(self, server_path: str, name: str, endpoint: str = "predict"):
        """POST the call, then read its SSE stream to the end; the first output of ``complete``."""
        body = {"data": [{"path": server_path, "meta": {"_type": "gradio.FileData"}, "orig_name": name}, None]}
        r = self.http.post(f"call/{endpoint}", json=body)
        if r.status_code != 200:
            raise RequestError(f"call: HTTP {r.status_code}: {r.text[:200]}")
        event_id = r.json().get("event_id")
        if not event_id:
            raise RequestError(f"call: no event_id in {r.text[:200]}")
        with self.http.stream("GET", f"call/{endpoint}/{event_id}") as s:
            if s.status_code != 200:
                s.read()
                raise RequestError(f"stream: HTTP {s.status_code}: {s.text[:200]}")
            lines = s.iter_lines()
            result = read_result(lines)
            for _ in lines:  # the server ends the stream after 'complete': read it out, keep the connection
                pass
        return result


# --------------------------------------------------------------------------- the rows

def summarise(latencies_s: list[float]) -> dict:
    """n and the p50/p95/p99/mean/min/max of latencies given in seconds, in ms (0.1 ms)."""
    keys = ("p50_ms", "p95_ms", "p99_ms", "mean_ms", "min_ms", "max_ms")
    if not latencies_s:
        return {"n": 0, **dict.fromkeys(keys)}
    ms = np.asarray(latencies_s, dtype=float) * 1000.0
    values = [*np.percentile(ms, [50, 95, 99]), ms.mean(), ms.min(), ms.max()]
    return {"n": len(ms), **{k: round(float(v), 1) for k, v in zip(keys, values)}}


def make_row(target: str, method: str, clients: int, requests: int, outcomes: list[dict], wall: float,
             not_run: int = 0, **extra) -> dict:
    """One table row from per-request outcomes ({'ok', 'lost', 'error', 'seconds'}); ``not_run``
    requests were never sent (the browser gives up after two failures in a row): not lost."""
    total = clients * requests - not_run
    answered = [o for o in outcomes if o["ok"]]
    errors = [o for o in outcomes if not o["ok"] and not o.get("lost")]
    lost = sum(1 for o in outcomes if o.get("lost")) + max(0, total - len(outcomes))  # never accounted for
    return {
        "target": target, "method": method, "clients": clients, "requests_per_client": requests,
        "total": total, **summarise([o["seconds"] for o in answered]),
        "errors": len(errors), "lost": lost,
        "requests_per_s": round(len(answered) / wall, 2) if wall > 0 else None,
        "wall_s": round(wall, 3),
        **({"not_run": not_run} if not_run else {}),
        "error_samples": sorted({o["error"] for o in outcomes if o.get("error")})[:5],
        **extra,
    }


def _one(fn) -> dict:
    """Time one request ``fn()``: an outcome {'ok', 'seconds'} (and 'lost', 'error' when not ok)."""
    t0 = time.perf_counter()
    try:
        result = fn()
    except Lost as e:
        return {"ok": False, "lost": True, "error": f"lost: {e}", "seconds": time.perf_counter() - t0}
    except Exception as e:  # noqa: BLE001: every failure is counted, none stops the run
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:300], "seconds": time.perf_counter() - t0}
    seconds = time.perf_counter() - t0
    if not (isinstance(result, dict) and "top5" in result):
        return {"ok": False, "lost": True, "error": f"lost: answer without 'top5': {repr(result)[:150]}",
                "seconds": seconds}
    return {"ok": True, "seconds": seconds}


def run_http(url: str, image: Path, clients: int, requests: int, preupload: bool = False) -> tuple[list, float]:
    """``clients`` threads, each on its own connection, each sending ``requests`` requests one after
    another (upload + call + stream, or call + stream of a file each client uploaded beforehand).
    The clock starts once every client is connected (and has uploaded). (outcomes, wall seconds)."""
    content = image.read_bytes()
    results: list[list[dict]] = [[] for _ in range(clients)]
    start = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        rows = results[index]
        try:
            c = HttpClient(url)
            path = c.upload(image.name, content) if preupload else None
        except Exception as e:  # noqa: BLE001: then every request of this client is an error
            rows.extend({"ok": False, "error": f"connect: {type(e).__name__}: {e}", "seconds": 0.0}
                        for _ in range(requests))
            start.wait()
            return
        with contextlib.closing(c):
            start.wait()
            for _ in range(requests):  # the file uploaded beforehand, or upload it now
                rows.append(_one(lambda: c.call(path or c.upload(image.name, content), image.name)))

    threads = [threading.Thread(target=client, args=(i,), name=f"client-{i}", daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return [o for per in results for o in per], time.perf_counter() - t0


def run_gradio_client(url: str, image: Path, requests: int) -> tuple[list, float]:
    """One gradio_client.Client sending ``requests`` predictions one after another (the image and
    None for the SE switches, as the HTTP rows send)."""
    from gradio_client import Client, handle_file

    try:
        client = Client(url, verbose=False)
    except Exception as e:  # noqa: BLE001
        return [{"ok": False, "error": f"connect: {type(e).__name__}: {e}"[:300], "seconds": 0.0}] * requests, 1.0
    t0 = time.perf_counter()
    outcomes = [_one(lambda: client.predict(handle_file(str(image)), None, api_name="/predict"))
                for _ in range(requests)]
    wall = time.perf_counter() - t0
    with contextlib.suppress(Exception):
        client.close()
    return outcomes, wall


# --------------------------------------------------------------------------- the browser

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
                except Exception:  # noqa: BLE001: this page's clear keeps the summary: no more waiting
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
        except Exception as e:  # noqa: BLE001: a timeout, or the page went away
            try:
                diag = page.evaluate(DIAGNOSE_JS, path.name)
            except Exception as d:  # noqa: BLE001: the page is gone
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


# --------------------------------------------------------------------------- main

def measure(url: str, noop_url: str, a) -> list[dict]:
    """Every row: HTTP on the demo then the floor, gradio_client, then both pages in Chromium."""
    rows: list[dict] = []
    image = a.image
    for target, u in (("demo", url), ("noop", noop_url)):
        w, _ = run_http(u, image, 1, WARMUP)
        warm = {"warmup_requests": len(w), "warmup_failed": sum(not o["ok"] for o in w)}
        print(f"{target}: HTTP rows ...", flush=True)
        out, wall = run_http(u, image, 1, a.serial_requests)
        rows.append(make_row(target, "HTTP 1 client: upload + call + stream", 1, a.serial_requests, out, wall,
                             **warm))
        out, wall = run_http(u, image, 1, a.serial_requests, preupload=True)
        rows.append(make_row(target, "HTTP 1 client: call + stream (uploaded once before)", 1,
                             a.serial_requests, out, wall))
        out, wall = run_http(u, image, a.clients, a.requests)
        rows.append(make_row(target, f"HTTP {a.clients} clients: upload + call + stream", a.clients, a.requests,
                             out, wall))
    if a.client_requests:
        print("demo: gradio_client row ...", flush=True)
        out, wall = run_gradio_client(url, image, a.client_requests)
        rows.append(make_row("demo", "gradio_client (client library overhead included)", 1, a.client_requests,
                             out, wall))
    if not a.no_browser:
        rows += measure_browser(url, noop_url, a.browser_uploads)
    return rows


def print_table(rows: list[dict]) -> None:
    head = f"{'target':<10} {'method':<52} {'c x r':>7} {'n':>4} {'p50':>7} {'p95':>7} {'p99':>7} " \
           f"{'mean':>7} {'err':>4} {'lost':>4} {'req/s':>7}"
    print(head)
    print("-" * len(head))
    f = lambda x: "-" if x is None else f"{x:.0f}"  # noqa: E731
    for r in rows:
        print(f"{r['target']:<10} {r['method'][:52]:<52} {str(r['clients']) + 'x' + str(r['requests_per_client']):>7} "
              f"{r['n']:>4} {f(r['p50_ms']):>7} {f(r['p95_ms']):>7} {f(r['p99_ms']):>7} {f(r['mean_ms']):>7} "
              f"{r['errors']:>4} {r['lost']:>4} {'-' if r['requests_per_s'] is None else r['requests_per_s']:>7}")
    print("latencies in ms; req/s: answered requests per second of the row's wall time")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ui.loadtest", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running demo (default: start one with --checkpoint)")
    p.add_argument("--checkpoint", default="results/best",
                   help="checkpoint file or run folder to serve (with --url: only recorded)")
    p.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients, each with its own connection")
    p.add_argument("--requests", type=int, default=10, help="requests per concurrent client, one after another")
    p.add_argument("--serial-requests", type=int, default=30, help="requests of each 1-client HTTP row")
    p.add_argument("--client-requests", type=int, default=10, help="requests of the gradio_client row (0: none)")
    p.add_argument("--browser-uploads", type=int, default=20, help="uploads of different images on each page")
    p.add_argument("--no-browser", action="store_true", help="no Chromium rows")
    p.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="the image every HTTP request sends")
    p.add_argument("--out", type=Path, help="write everything here as JSON")
    p.add_argument("--server-log", type=Path, help="where a started demo's output goes (default: discarded)")
    p.add_argument("--serve-noop", action="store_true", help=argparse.SUPPRESS)  # the floor's own process
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.serve_noop:
        if not a.port:
            p.error("--serve-noop needs --port")
        return serve_noop(a.port)
    if min(a.clients, a.requests, a.serial_requests) < 1 or a.client_requests < 0 or a.browser_uploads < 1:
        p.error("--clients, --requests, --serial-requests and --browser-uploads must be at least 1")
    if not a.image.is_file():
        p.error(f"{a.image}: no such image")

    with contextlib.ExitStack() as stack:
        floor_log = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="loadtest-"))) / "noop.log"
        servers = [] if a.url else [(app_args(a.checkpoint), "ui.app", a.server_log)]
        servers.append((NOOP_ARGS, "the no-op floor", floor_log))
        print(("starting the no-op floor" if a.url else
               f"starting python -m ui.app --checkpoint {a.checkpoint} and the no-op floor") + " ...", flush=True)
        try:
            urls = stack.enter_context(_serve(servers, timeout=180.0))
        except RuntimeError as e:
            print(f"loadtest: error: {e}", file=sys.stderr)
            return 2
        url = (a.url if a.url.endswith("/") else a.url + "/") if a.url else urls[0]
        noop_url, queue = urls[-1], floor_queue(floor_log)
        print(f"demo {url}  floor {noop_url} (queue {queue})", flush=True)
        rows = measure(url, noop_url, a)

    print()
    print_table(rows)
    for r in rows:
        for e in r["error_samples"]:
            print(f"  {r['target']} / {r['method']}: {e}")
        for t in r.get("timeouts", [])[:2]:
            print(f"  {r['target']} / not drawn: {json.dumps(t)[:600]}")
    failed = sum(r["errors"] + r["lost"] for r in rows if r["target"] == "demo")

    if a.out:
        ckpt = Path(a.checkpoint)
        ckpt = ckpt / "best.pt" if ckpt.is_dir() else ckpt
        record = {
            "command": shlex.join(["python", "-m", "ui.loadtest", *(sys.argv[1:] if argv is None else argv)]),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "server": "given by --url" if a.url else "started by the load test",
            "checkpoint": _shown(ckpt),
            "checkpoint_sha256": sha256_file(ckpt) if ckpt.is_file() else None,
            "checkpoint_note": "as given; the server at --url is not checked against it" if a.url else None,
            "http_image": _shown(a.image),
            "noop_floor": {"what": "python -m ui.loadtest --serve-noop: a gr.Image input and the demo's queue "
                                   "settings; /predict returns {'top5': []} at once; the page's upload only "
                                   "writes the file name into #summary",
                           "input_kind": "image", "queue": queue},
            "protocol": "HTTP rows: POST gradio_api/upload, POST gradio_api/call/predict, GET the SSE stream "
                        "to 'event: complete'; httpx, one keep-alive connection per client",
            "browser_images": "ui/examples/*.png, then mirrored and brightened copies, each with its own name",
            "rows": rows,
        }
        write_text_atomic(a.out, json.dumps(record, indent=2) + "\n")
        print(f"wrote {a.out}")
    return 1 if failed else 0


def _shown(path: Path) -> str:
    """A path relative to the repository when it lies inside it."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
