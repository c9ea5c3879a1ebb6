"""Load-test the demo: its /predict API over plain HTTP and its page in Chromium, beside a no-op floor.

    python -m benchmarks.loadtest [--url URL] [--checkpoint results/best] [--clients 8] [--requests 10]
                                  [--serial-requests 30] [--client-requests 10] [--browser-uploads 20]
                                  [--no-browser] [--image ui/examples/14-stop.png]
                                  [--out results/ui/loadtest.json]

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
import shlex
import sys
import tempfile
from pathlib import Path

from benchmarks.loadtest import DEFAULT_IMAGE, REPO
from benchmarks.loadtest.browser import measure_browser
from benchmarks.loadtest.load import run_gradio_client, run_http
from benchmarks.loadtest.noop import NOOP_ARGS, floor_queue, serve_noop
from benchmarks.loadtest.rows import make_row, print_table
from benchmarks.loadtest.servers import app_args, serve
from gtsrb.util import machine, sha256_file, write_text_atomic

WARMUP = 2  # uncounted requests per server before the rows


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loadtest", description=__doc__.split("\n\n")[0])
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
            urls = stack.enter_context(serve(servers, timeout=180.0))
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
            "command": shlex.join(["python", "-m", "benchmarks.loadtest", *(sys.argv[1:] if argv is None else argv)]),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "server": "given by --url" if a.url else "started by the load test",
            "checkpoint": _shown(ckpt),
            "checkpoint_sha256": sha256_file(ckpt) if ckpt.is_file() else None,
            "checkpoint_note": "as given; the server at --url is not checked against it" if a.url else None,
            "http_image": _shown(a.image),
            "noop_floor": {"what": "python -m benchmarks.loadtest --serve-noop: a gr.Image input and the demo's "
                                   "queue settings; /predict returns {'top5': []} at once; the page's upload "
                                   "only writes the file name into #summary",
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
