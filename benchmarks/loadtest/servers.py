"""Servers for the load test: ``python <args> --port P`` on free ports, each answering HTTP 200 before
anything is measured, all stopped afterwards (the demo here; the no-op floor in ``noop.py``)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from benchmarks.loadtest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(servers: list[tuple[list[str], str, Path | None]], timeout: float):
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
            # Closed once the child has started: the child holds its own copy.
            with open(log, "w") if log else contextlib.nullcontext(subprocess.DEVNULL) as out:
                procs.append(subprocess.Popen([sys.executable, *args, "--port", str(port)], cwd=REPO, env=env,
                                              stdout=out, stderr=subprocess.STDOUT))
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
    with serve([(app_args(checkpoint), "ui.app", log)], timeout) as (url,):
        yield url
