"""What a request to the demo may be: size limits, the ASGI middleware that enforces them before Gradio
reads a body, and the check of the file an event names.

``RequestLimits`` bounds every POST body and refuses a file whose path is a URL; ``uploaded_file`` accepts
only files uploaded to this server and the examples; ``user_error`` is how a refusal reaches the page (a
toast) and gradio_client (the exception's message).
"""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder
from starlette.datastructures import Headers
from starlette.responses import JSONResponse

EXAMPLES = Path(__file__).parent / "examples"
MAX_FILE_SIZE = "20mb"  # larger uploads are refused by the server before they reach the model
MAX_PIXELS = 40_000_000  # larger images are refused from their header, before decoding (16-bit, alpha: 1/4)
# The JSON of an API call or a page event names uploaded files and SE blocks: a few kB. The bound keeps
# a payload that carries an image itself (a data URL) from being read into memory at all.
MAX_JSON_BYTES = 1 << 20
# One upload request: the crop editor sends its layers together, each at most MAX_FILE_SIZE.
MAX_UPLOAD_REQUEST_BYTES = 5 * 20 * 1024 * 1024
# Uploaded files are deleted this long after they arrive, checked this often (seconds): a page reads its
# upload again only while its SE toggles are used.
UPLOAD_LIFETIME_S, UPLOAD_SWEEP_S = 3600, 600


def user_error(message: str) -> gr.Error:
    """An error the page shows for 20 s (and gradio_client raises with this message)."""
    return gr.Error(message, duration=20, print_exception=False)


def strip_dir(message: str, file: str, name: str) -> str:
    """Gradio keeps uploads under a temp folder: show the user their file's name, not that path."""
    return message.replace(str(Path(file)), name)


def uploaded_file(payload) -> Path | None:
    """What an image input sends (events run with preprocess=False) -> the path of a file uploaded to this
    server, or of an example; None when nothing was sent; gr.Error for anything else.

    Skipping Gradio's preprocessing hands the uploaded file to the project's decoder untouched (PPM, 16-bit,
    EXIF, ...), which names a bad file clearly; gr.Image would open it with PIL first and fail with a
    generic error. It also skips Gradio's own checks of a payload without FileData's "meta" tag, so the
    path is checked here: only uploads (bounded by max_file_size) and the examples are read, never a
    data URL (an image inside the JSON, past the upload limit) or another file of the server's."""
    if payload is None:
        return None
    if isinstance(payload, dict) and not payload.get("path") and str(payload.get("url") or "").startswith("data:"):
        raise user_error("A data URL is not accepted: send the image as an uploaded file "
                         "(the upload box, or gradio_client's handle_file on a local file).")
    path = payload.get("path") if isinstance(payload, dict) else payload
    if not isinstance(path, str) or not path:
        raise user_error(f"Expected an uploaded image file (FileData with a path), got {type(payload).__name__} "
                         f"{json.dumps(payload)[:60]}.")
    resolved = Path(path).resolve()
    if not any(resolved.is_relative_to(Path(d).resolve()) for d in (get_upload_folder(), EXAMPLES)):
        raise user_error(f"{Path(path).name}: not a file uploaded to this server; upload the image first "
                         "(the upload box, or gradio_client's handle_file on a local file).")
    return resolved


class RequestLimits:
    """ASGI middleware in front of Gradio's routes: every request body is bounded, and no file in a
    payload may be a URL.

    Files come in as multipart uploads (``/upload``, and the crop editor's layers through
    ``/component_server``): Gradio bounds each file by ``max_file_size``, this the whole request by
    MAX_UPLOAD_REQUEST_BYTES. Every other POST is JSON naming uploaded files: it is read here, at most
    MAX_JSON_BYTES of it, so an image sent inside the JSON (a data URL) is refused before it is in
    memory, and so is a file whose path is a URL, which Gradio would download before any handler ran."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        multipart = headers.get("content-type", "").startswith("multipart/form-data")
        upload = multipart and scope["path"].rstrip("/").endswith(("/upload", "/component_server"))
        limit = MAX_UPLOAD_REQUEST_BYTES if upload else MAX_JSON_BYTES
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await _refusal(413, f"request body of {length} bytes; the limit is {limit} bytes"
                                  + ("" if upload else " (send images as uploaded files, not inside the JSON)")
                                  )(scope, receive, send)
        if upload:
            return await self.app(scope, receive, send)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if len(body) > limit:
                return await _refusal(413, f"request body over {limit} bytes (send images as uploaded "
                                      "files, not inside the JSON)")(scope, receive, send)
            if not message.get("more_body", False):
                break
        problem = _url_as_file(bytes(body))
        if problem:
            return await _refusal(400, problem)(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: the disconnect Gradio waits for
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return await self.app(scope, replay, send)


def _url_as_file(body: bytes) -> str | None:
    """What is wrong with a JSON body that has a URL where a file's path should be, or None."""
    try:
        data = json.loads(body)
    except ValueError:
        return None  # not JSON: Gradio refuses it itself
    except RecursionError:
        return "request body: JSON nested too deep"
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            path = value.get("path")
            if isinstance(path, str) and path.lower().startswith(("http://", "https://", "data:")):
                return (f"file path {path[:80]!r}: a URL is not accepted; upload the image file "
                        "(POST /gradio_api/upload, or gradio_client's handle_file on a local file)")
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return None


def _refusal(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)
