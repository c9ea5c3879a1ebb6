"""Start ``python -m ui.app`` on a free port for the UI tests (the load test's launcher), and stop it afterwards."""

from __future__ import annotations

import contextlib
from pathlib import Path

from benchmarks.loadtest.servers import start_app

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "results" / "best" / "best.pt"


@contextlib.contextmanager
def serve(checkpoint: Path = CHECKPOINT, timeout: float = 120.0, log: Path | None = None):
    """Yield the base URL of a running app; the server's output goes to ``log``."""
    with start_app(str(checkpoint), timeout=timeout, log=log) as url:
        yield url
