"""The no-op floor: a Gradio app with the demo's queue settings and a gr.Image input like the demo's,
whose /predict answers ``{"top5": []}`` at once. Measured beside the demo, it shows what Gradio and the
client cost on their own, without the model."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from benchmarks.loadtest.servers import serve

NOOP_ARGS = ["-m", "benchmarks.loadtest", "--serve-noop"]
QUEUE_LINE = "no-op floor queue: "  # the floor prints its queue settings after this


@contextlib.contextmanager
def start_noop(timeout: float = 120.0, log: Path | None = None):
    """Run the no-op floor on a free port; yield its URL once it answers HTTP 200."""
    with serve([(NOOP_ARGS, "the no-op floor", log)], timeout) as (url,):
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

    # Imported here, in the floor's process: the load generator itself needs no torch.
    from ui.app import CONCURRENCY, MAX_QUEUE

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
