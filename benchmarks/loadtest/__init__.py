"""The demo's load test (``python -m benchmarks.loadtest``; what it measures: ``cli.py``).

    servers.py       start ``python -m`` servers on free ports, wait for HTTP 200, stop them
    noop.py          the no-op floor: a Gradio app with the demo's input and queue, answering at once
    gradio_rest.py   Gradio's REST protocol over httpx: upload, call, the SSE stream's result
    load.py          the load generator: timed requests over HTTP clients and gradio_client
    browser.py       Chromium through Playwright: uploads timed until every panel is drawn
    rows.py          per-request outcomes -> table rows (percentiles, errors, lost), the printed table
    cli.py           the command: every row on the demo and the floor, the JSON record
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "ui" / "examples"
DEFAULT_IMAGE = EXAMPLES / "14-stop.png"
