"""Gradio's REST protocol over httpx: POST the file to ``gradio_api/upload``, POST the call to
``gradio_api/call/<endpoint>``, then GET ``gradio_api/call/<endpoint>/<event_id>``, a server-sent-event
stream, through httpx's streaming API, and take the first output of its ``event: complete``.

httpx gives the stream's lines (``Response.iter_lines``, any line ending); it has no reader for the
events themselves, and httpx-sse is no dependency of this project, so ``parse_sse`` reads the few
fields Gradio sends (``event``, ``data``, comments) after the SSE specification."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

import httpx

HTTP_TIMEOUT = 120.0  # seconds for one request; 8 clients queue behind one model on 2 busy cores


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
        value = value.removeprefix(" ")
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
