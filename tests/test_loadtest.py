"""benchmarks.loadtest: its SSE parser, its percentile summary, its rows, and its HTTP client against the
no-op floor (never the demo: no model, no browser)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from benchmarks.loadtest import DEFAULT_IMAGE
from benchmarks.loadtest.browser import make_browser_images
from benchmarks.loadtest.gradio_rest import (
    HttpClient,
    Lost,
    RequestError,
    parse_sse,
    read_result,
)
from benchmarks.loadtest.load import run_http, timed
from benchmarks.loadtest.noop import floor_queue, start_noop
from benchmarks.loadtest.rows import make_row, summarise


# ------------------------------------------------------------------------------------------ SSE
def test_sse_complete_after_heartbeats_gives_the_first_output():
    lines = ["event: heartbeat", "data: null", "",
             ": a comment line", "",
             "event: generating", 'data: [{"partial": 1}]', "",
             "event: complete", 'data: [{"top5": [{"class_id": 14}]}, "second output"]', ""]
    assert next(parse_sse(lines)) == ("heartbeat", "null")
    assert read_result(lines) == {"top5": [{"class_id": 14}]}


def test_sse_multi_line_data_is_joined_with_newlines():
    lines = ["event: complete", 'data: [{"top5":', "data: []}]", "", "data: plain", ""]
    events = list(parse_sse(lines))
    assert events == [("complete", '[{"top5":\n[]}]'), ("message", "plain")]
    assert read_result(lines) == {"top5": []}


def test_sse_field_without_space_and_crlf_line_ends():
    assert list(parse_sse(["event:complete\r\n", "data:[1]\r\n", "\r\n"])) == [("complete", "[1]")]


def test_sse_event_open_at_the_end_of_the_stream_still_counts():
    assert read_result(["event: complete", "data: [{\"top5\": []}]"]) == {"top5": []}


def test_sse_error_event_raises_request_error():
    with pytest.raises(RequestError, match="Cannot use this file"):
        read_result(["event: heartbeat", "data: null", "", "event: error", 'data: "Cannot use this file"', ""])
    with pytest.raises(RequestError):
        read_result(["event: error", "data: null", ""])


def test_sse_stream_without_complete_is_lost():
    with pytest.raises(Lost):
        read_result(["event: heartbeat", "data: null", "", "event: heartbeat", "data: null", ""])
    with pytest.raises(Lost):
        read_result(["event: complete", "data: []", ""])  # complete, but no output at all


def test_a_result_without_top5_is_lost_and_an_exception_is_an_error():
    assert timed(lambda: {"top5": []})["ok"]
    lost = timed(lambda: {"prediction": 14})
    assert not lost["ok"] and lost["lost"]
    lost = timed(lambda: None)
    assert lost["lost"]
    err = timed(lambda: 1 / 0)
    assert not err["ok"] and not err.get("lost") and "ZeroDivisionError" in err["error"]


# ------------------------------------------------------------------------------------------ summaries
def test_summarise_percentiles_in_ms():
    s = summarise([i / 1000 for i in range(1, 101)])  # 1 .. 100 ms
    assert s["n"] == 100
    assert s["p50_ms"] == pytest.approx(50.5)
    assert s["p95_ms"] == pytest.approx(95.05, abs=0.05)
    assert s["p99_ms"] == pytest.approx(99.01, abs=0.05)
    assert s["mean_ms"] == pytest.approx(50.5)
    assert (s["min_ms"], s["max_ms"]) == (1.0, 100.0)
    one = summarise([0.25])
    assert one["p50_ms"] == one["p99_ms"] == 250.0
    assert summarise([])["n"] == 0 and summarise([])["p50_ms"] is None


def test_row_counts_errors_lost_and_requests_never_accounted_for():
    outcomes = [{"ok": True, "seconds": 0.1}, {"ok": True, "seconds": 0.3},
                {"ok": False, "error": "HTTPError: 500", "seconds": 0.2},
                {"ok": False, "lost": True, "error": "lost: no top5", "seconds": 0.2}]
    row = make_row("demo", "HTTP", 2, 3, outcomes, wall=2.0)
    assert row["n"] == 2 and row["p50_ms"] == pytest.approx(200.0)
    assert row["errors"] == 1
    assert row["lost"] == 1 + 2  # one without top5, two of the 6 never came back
    assert row["requests_per_s"] == 1.0
    assert row["error_samples"] == ["HTTPError: 500", "lost: no top5"]


# ------------------------------------------------------------------------------------------ helpers
def test_browser_images_differ_in_content_and_name(tmp_path: Path):
    from PIL import Image

    images = make_browser_images(tmp_path, 40)
    assert len(images) == 40
    assert len({p.name for p in images}) == 40
    assert len({Image.open(p).tobytes() for p in images}) == 40


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_http_client_against_the_noop_floor(tmp_path: Path):
    """Start ``python -m benchmarks.loadtest --serve-noop`` (an image input and the queue settings of the
    demo) and run the REST client against it: upload, call, stream; one and two clients; nothing erred or
    was lost."""
    import urllib.request

    from ui.app import CONCURRENCY, MAX_QUEUE

    log = tmp_path / "noop.log"
    with start_noop(log=log, timeout=90) as url:
        assert floor_queue(log) == {"default_concurrency_limit": CONCURRENCY, "max_size": MAX_QUEUE,
                                    "from": "ui/app.py"}
        with urllib.request.urlopen(url + "config", timeout=10) as r:
            components = json.load(r)["components"]
        assert [c["type"] for c in components if c.get("props", {}).get("elem_id") == "image-input"] == ["image"]
        client = HttpClient(url)
        try:
            path = client.upload("03-foo.png", DEFAULT_IMAGE.read_bytes())
            assert path.endswith("03-foo.png")
            assert client.call(path, "03-foo.png") == {"top5": []}
            client.call(path, "03-foo.png")
            assert len(client.http._transport._pool.connections) == 1  # keep-alive: one connection
            with pytest.raises(RequestError, match="call: HTTP"):  # Gradio says 500
                client.call(path, "03-foo.png", endpoint="no-such-endpoint")
        finally:
            client.close()

        outcomes, wall = run_http(url, DEFAULT_IMAGE, 2, 3)
        row = make_row("noop", "HTTP 2 clients", 2, 3, outcomes, wall)
        assert (row["n"], row["errors"], row["lost"]) == (6, 0, 0), json.dumps(row)
        outcomes, wall = run_http(url, DEFAULT_IMAGE, 1, 3, preupload=True)
        assert all(o["ok"] for o in outcomes) and len(outcomes) == 3
