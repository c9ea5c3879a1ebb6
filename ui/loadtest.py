"""Load-test the demo's /predict API: many clients at once, each sending requests one after another.

    python -m ui.loadtest [--url URL | --checkpoint results/best] [--clients 16] [--requests 10]
                          [--image ui/examples/14-stop.png] [--out results/ui/loadtest.json]

Without --url it starts ``python -m ui.app`` on a free port itself and stops it
afterwards. Each client thread has its own ``gradio_client.Client``. A request
is an *error* when it raises, and *lost* when it returns without a well-formed
answer (None, or a dict without 'top5'). The app serves one analysis at a time
(``default_concurrency_limit=1``), so requests queue and latency grows with the
number of clients; that is expected. Exit status 1 when any request erred or
was lost.
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
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from gtsrb.util import machine, write_text_atomic

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = Path(__file__).parent / "examples" / "14-stop.png"


# --------------------------------------------------------------------------- the server

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def start_app(checkpoint: str, timeout: float = 180.0, log: Path | None = None):
    """Run ``python -m ui.app`` on a free port; yield its URL once it answers HTTP 200."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "ui.app", "--checkpoint", str(checkpoint), "--port", str(port)],
                            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ui.app exited with status {proc.returncode}" + (f"; see {log}" if log else ""))
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"ui.app did not answer on {url} within {timeout:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()


# --------------------------------------------------------------------------- the clients

def _client_loop(url: str, image: Path, n: int, start: threading.Barrier, results: list, index: int) -> None:
    """One client: connect, wait for the others, then send n requests one after another."""
    from gradio_client import Client, handle_file

    rows = results[index]
    try:
        client = Client(url, verbose=False)
    except Exception as e:  # every request of this client is then an error
        start.wait()
        rows.extend({"ok": False, "error": f"connect: {type(e).__name__}: {e}", "seconds": None} for _ in range(n))
        return
    start.wait()
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            r = client.predict(handle_file(str(image)), api_name="/predict")
        except Exception as e:
            rows.append({"ok": False, "error": f"{type(e).__name__}: {e}", "seconds": time.perf_counter() - t0})
            continue
        seconds = time.perf_counter() - t0
        if not isinstance(r, dict) or not isinstance(r.get("top5"), list) or len(r["top5"]) == 0:
            rows.append({"ok": False, "lost": True, "seconds": seconds, "got": repr(r)[:200]})
        else:
            rows.append({"ok": True, "seconds": seconds, "top1": r["top5"][0]["class_id"]})


def summarise(latencies_s: list[float]) -> dict:
    if not latencies_s:
        return {"n": 0}
    ms = np.asarray(latencies_s) * 1000.0
    return {"n": int(ms.size), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "max_ms": round(float(ms.max()), 1), "min_ms": round(float(ms.min()), 1),
            "mean_ms": round(float(ms.mean()), 1)}


def run_load(url: str, image: Path, clients: int, requests: int) -> dict:
    results: list[list[dict]] = [[] for _ in range(clients)]
    start = threading.Barrier(clients + 1)
    threads = [threading.Thread(target=_client_loop, args=(url, image, requests, start, results, i),
                                name=f"client-{i}", daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()  # every client is connected: the clock starts now
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    rows = [r for per in results for r in per]
    total = clients * requests
    answered = [r for r in rows if r["ok"]]
    errors = [r for r in rows if not r["ok"] and not r.get("lost")]
    # Lost: returned without a proper answer, or never accounted for at all.
    lost = sum(1 for r in rows if r.get("lost")) + (total - len(rows))
    top1 = sorted({r["top1"] for r in answered})
    return {
        "url": url,
        "clients": clients,
        "requests_per_client": requests,
        "total": total,
        "answered": len(answered),
        "errors": len(errors),
        "lost": lost,
        "error_samples": sorted({r["error"] for r in errors})[:5],
        "wall_seconds": round(wall, 3),
        "throughput_req_per_s": round(len(answered) / wall, 3) if wall > 0 else None,
        "latency": summarise([r["seconds"] for r in answered]),
        "top1_classes": top1,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ui.loadtest", description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", help="a running demo (default: start one with --checkpoint)")
    where.add_argument("--checkpoint", default="results/best", help="checkpoint file or run folder to serve")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients, each with its own connection")
    p.add_argument("--requests", type=int, default=10, help="requests per client, sent one after another")
    p.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="the image every request sends")
    p.add_argument("--out", type=Path, help="write the summary here as JSON")
    p.add_argument("--server-log", type=Path, help="where a started server's output goes (default: discarded)")
    a = p.parse_args(argv)
    if a.clients < 1 or a.requests < 1:
        p.error("--clients and --requests must be at least 1")
    if not a.image.is_file():
        p.error(f"{a.image}: no such image")

    with contextlib.ExitStack() as stack:
        if a.url:
            url = a.url if a.url.endswith("/") else a.url + "/"
            started = False
        else:
            print(f"starting python -m ui.app --checkpoint {a.checkpoint} ...", flush=True)
            try:
                url = stack.enter_context(start_app(a.checkpoint, log=a.server_log))
            except RuntimeError as e:
                print(f"loadtest: error: {e}", file=sys.stderr)
                return 2
            started = True
        print(f"{a.clients} clients x {a.requests} requests of {a.image.name} -> {url}predict", flush=True)
        result = run_load(url, a.image, a.clients, a.requests)

    lat = result["latency"]
    if lat.get("n"):
        print(f"latency ms: p50 {lat['p50_ms']:.0f}  p95 {lat['p95_ms']:.0f}  p99 {lat['p99_ms']:.0f}  "
              f"max {lat['max_ms']:.0f}  (min {lat['min_ms']:.0f}, mean {lat['mean_ms']:.0f})")
    print(f"throughput: {result['throughput_req_per_s']} req/s over {result['wall_seconds']:.1f} s")
    print(f"total {result['total']}  answered {result['answered']}  errors {result['errors']}  lost {result['lost']}")
    for e in result["error_samples"]:
        print(f"  error: {e}")

    if a.out:
        record = {
            "command": shlex.join(["python", "-m", "ui.loadtest", *(sys.argv[1:] if argv is None else argv)]),
            "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "server": "started by the load test" if started else "given by --url",
            "checkpoint": None if a.url else a.checkpoint,
            "image": _shown(a.image),
            "concurrency_note": "the app runs one analysis at a time (default_concurrency_limit=1): requests queue",
            **result,
        }
        write_text_atomic(a.out, json.dumps(record, indent=2) + "\n")
        print(f"wrote {a.out}")
    return 1 if result["errors"] or result["lost"] else 0


def _shown(path: Path) -> str:
    """A path relative to the repository when it lies inside it."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
