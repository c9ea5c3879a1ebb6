"""The load generator: each request timed into an outcome ``{'ok', 'seconds'}`` (and ``'lost'``,
``'error'`` when not ok), over plain HTTP clients in threads or one gradio_client."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

from benchmarks.loadtest.gradio_rest import HttpClient, Lost


def timed(fn) -> dict:
    """Time one request ``fn()``: an outcome {'ok', 'seconds'} (and 'lost', 'error' when not ok)."""
    t0 = time.perf_counter()
    try:
        result = fn()
    except Lost as e:
        return {"ok": False, "lost": True, "error": f"lost: {e}", "seconds": time.perf_counter() - t0}
    except Exception as e:  # noqa: BLE001 - every failure is counted, none stops the run
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
        except Exception as e:  # noqa: BLE001 - then every request of this client is an error
            rows.extend({"ok": False, "error": f"connect: {type(e).__name__}: {e}", "seconds": 0.0}
                        for _ in range(requests))
            start.wait()
            return
        with contextlib.closing(c):
            start.wait()
            for _ in range(requests):  # the file uploaded beforehand, or upload it now
                rows.append(timed(lambda: c.call(path or c.upload(image.name, content), image.name)))

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
    outcomes = [timed(lambda: client.predict(handle_file(str(image)), None, api_name="/predict"))
                for _ in range(requests)]
    wall = time.perf_counter() - t0
    with contextlib.suppress(Exception):
        client.close()
    return outcomes, wall
