"""The demo against hostile payloads: only files uploaded to it, under its limits, are decoded.

A data URL (an image inside the JSON, past the 20 MB upload limit), a URL Gradio would download, a path
to another file of the server's, an oversized or endlessly nested body, and 16-bit or alpha images too
large to convert are each refused with one clear message before anything is decoded. The request
checks run in this process against ``ui.limits.RequestLimits``; the end-to-end cases (marked slow) against
a real server, through the plain HTTP API and gradio_client.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")  # the `ui` extra
from gradio.utils import get_upload_folder  # noqa: E402
from test_ui_api import STOP, client, server_url  # noqa: E402,F401  (the module's server fixtures)

from gtsrb.archive import DataError  # noqa: E402
from gtsrb.inference import load_image  # noqa: E402
from ui.limits import EXAMPLES, MAX_JSON_BYTES, MAX_UPLOAD_REQUEST_BYTES, RequestLimits, uploaded_file  # noqa: E402

FILE_META = {"_type": "gradio.FileData"}


def png_header_only(w: int, h: int, depth: int, colour: int) -> bytes:
    """A PNG signature and IHDR claiming w x h (colour 0 gray, 4 gray+alpha, 6 RGBA), then an empty IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def sixteen_bit_png(w: int = 6000, h: int = 6666) -> bytes:
    """A real 16-bit grayscale PNG of w x h: about 78 kB for 40 megapixels of flat gray."""
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w), 30000, np.uint16)).save(buf, "PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- decoding caps (in process)

DECODE_CASES = {
    # name: (file bytes, words the DataError must hold)
    "16-bit gray 6000x6666": (png_header_only(6000, 6666, 16, 0), ("6000x6666 16-bit", "10 megapixels")),
    "RGBA 4000x4000": (png_header_only(4000, 4000, 8, 6), ("alpha-channel", "10 megapixels")),
    "gray+alpha 4000x4000": (png_header_only(4000, 4000, 8, 4), ("alpha-channel",)),
    "8-bit gray 7000x7000": (png_header_only(7000, 7000, 8, 0), ("49 megapixels", "the limit is 40 megapixels")),
    "PPM 21000x21000": (b"P6\n21000 21000\n255\n" + bytes(100), ("21000x21000", "441 megapixels")),
}


@pytest.mark.parametrize("case", list(DECODE_CASES))
def test_large_wide_images_are_refused_from_the_file_header(case, tmp_path):
    data, words = DECODE_CASES[case]
    path = tmp_path / "upload.png"
    path.write_bytes(data)
    with pytest.raises(DataError) as info:
        load_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: image is"), message
    for w in words:
        assert w in message, message


def test_a_real_16_bit_png_at_40_megapixels_is_refused_without_decoding(tmp_path):
    path = tmp_path / "flat16.png"
    path.write_bytes(sixteen_bit_png())
    assert path.stat().st_size < 200_000
    with pytest.raises(DataError, match="16-bit .* the limit for 16-bit images is 10 megapixels"):
        load_image(path)


def test_small_16_bit_and_alpha_images_still_decode_as_before():
    gray16 = Image.fromarray((np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16))
    rgba = Image.new("RGBA", (64, 64), (200, 10, 10, 128))
    for img in (gray16, rgba):
        buf = io.BytesIO()
        img.save(buf, "PNG")
        assert load_image(buf.getvalue()).size == (64, 64)


# --------------------------------------------------------------------------- the payload (in process)




PAYLOADS = {
    # name: (payload, words the gr.Error must hold; None: accepted)
    "data URL": ({"url": "data:image/png;base64," + base64.b64encode(b"\x89PNG").decode()}, ("data URL",)),
    "data URL with meta": ({"url": "data:image/png;base64,AAAA", "meta": FILE_META}, ("data URL",)),
    "server path as a string": ("/etc/passwd", ("passwd", "not a file uploaded to this server")),
    "server path without meta": ({"path": "/etc/hostname"}, ("hostname", "not a file uploaded")),
    "path escaping the upload folder": ({"path": str(Path(get_upload_folder()) / ".." / "x.png")},
                                        ("not a file uploaded",)),
    "a list": ([1, 2], ("Expected an uploaded image file", "list")),
    "a number": (7, ("Expected an uploaded image file", "int")),
    "empty path": ({"path": ""}, ("Expected an uploaded image file",)),
    "nothing": (None, None),
    "an example": (str(EXAMPLES / "14-stop.png"), None),
}


@pytest.mark.parametrize("case", list(PAYLOADS))
def test_only_uploads_and_examples_are_read(case):
    import gradio as gr

    payload, words = PAYLOADS[case]
    if words is None:
        result = uploaded_file(payload)
        assert result is None if payload is None else result == Path(payload).resolve()
        return
    with pytest.raises(gr.Error) as info:
        uploaded_file(payload)
    for w in words:
        assert w in info.value.message, info.value.message


def test_an_uploaded_file_is_read():
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(dir=get_upload_folder()))  # where Gradio puts an upload
    try:
        path = folder / "sign.png"
        path.write_bytes(STOP.read_bytes())
        assert uploaded_file({"path": str(path), "meta": FILE_META}) == path.resolve()
    finally:
        shutil.rmtree(folder)


async def _echo(scope, receive, send):
    """Stands in for Gradio: reads the whole body and answers with its length."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": str(size).encode()})


async def _chunks(n: int, size: int):
    for _ in range(n):
        yield b"x" * size


def _json_body(value) -> dict:
    return {"content": json.dumps(value).encode(), "headers": {"content-type": "application/json"}}


REQUESTS = {
    # name: (path, httpx request arguments, expected status, words the refusal's detail must hold)
    "a normal call": ("/gradio_api/queue/join",
                      _json_body({"data": [{"path": "/tmp/gradio/a/x.png", "meta": FILE_META}, None]}), 200, ()),
    "a body over the JSON limit, declared": ("/gradio_api/call/predict",
                                             {"content": b"{" + b" " * MAX_JSON_BYTES + b"}"}, 413,
                                             ("limit is 1048576 bytes", "uploaded files")),
    "a body over the JSON limit, chunked": ("/gradio_api/queue/join", {"content": "chunks"}, 413, ("over 1048576",)),
    "a remote URL as the file path": ("/gradio_api/call/predict",
                                      _json_body({"data": [{"path": "https://example.com/s.png", "meta": FILE_META}]}),
                                      400, ("https://example.com/s.png", "a URL is not accepted")),
    "a data URL as the file path": ("/gradio_api/queue/join",
                                    _json_body({"data": [[{"path": "data:image/png;base64,AAAA"}]]}), 400,
                                    ("a URL is not accepted",)),
    "JSON nested too deep": ("/gradio_api/queue/join", {"content": b"[" * 200_000 + b"]" * 200_000}, 400,
                             ("nested too deep",)),
    "an upload under the limit": ("/gradio_api/upload", {"files": {"files": ("a.png", b"x" * 1000)}}, 200, ()),
    "an upload over the request limit": ("/gradio_api/upload",
                                         {"content": b"x" * 10, "headers": {
                                             "content-type": "multipart/form-data; boundary=b",
                                             "content-length": str(MAX_UPLOAD_REQUEST_BYTES + 1)}}, 413,
                                         ("request body of",)),
    "multipart elsewhere is JSON-limited": ("/gradio_api/queue/join",
                                            {"files": {"files": ("a.png", b"x" * (MAX_JSON_BYTES + 10))}}, 413, ()),
}


@pytest.mark.parametrize("case", list(REQUESTS))
def test_request_limits(case):
    path, kwargs, status, words = REQUESTS[case]
    if kwargs.get("content") == "chunks":
        kwargs = {"content": _chunks(40, 64 * 1024)}

    async def send():
        transport = httpx.ASGITransport(app=RequestLimits(_echo))
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as c:
            request = c.build_request("POST", path, **kwargs)
            return await c.send(request)

    r = asyncio.run(send())
    assert r.status_code == status, r.text
    if status != 200:
        detail = r.json()["detail"]
        assert "\n" not in detail
        for w in words:
            assert w in detail, detail


# --------------------------------------------------------------------------- end to end (a real server)


def _call(server_url: str, data: list, **kwargs) -> tuple[int, str]:
    """POST /gradio_api/call/predict as curl would, then read its event stream: (HTTP status, events)."""
    r = httpx.post(server_url + "gradio_api/call/predict", json={"data": data}, timeout=60, **kwargs)
    if r.status_code != 200:
        return r.status_code, r.text
    event = r.json()["event_id"]
    with httpx.stream("GET", f"{server_url}gradio_api/call/predict/{event}", timeout=120) as s:
        return 200, "".join(s.iter_text())


def _upload(server_url: str, name: str, data: bytes) -> dict:
    r = httpx.post(server_url + "gradio_api/upload", files={"files": (name, data)}, timeout=60)
    r.raise_for_status()
    return {"path": r.json()[0], "orig_name": name, "meta": FILE_META}


def _error_of(events: str) -> str:
    assert "event: error" in events, events
    return json.loads(events.split("event: error", 1)[1].split("data:", 1)[1].splitlines()[0])["error"]


SERVED = {
    # name: (payload maker (server_url -> the /predict data), expected HTTP status, words of the error)
    "data URL": (lambda url: [{"url": "data:image/png;base64," + base64.b64encode(STOP.read_bytes()).decode()},
                              None], 200, ("data URL is not accepted",)),
    "remote URL": (lambda url: [{"path": "https://example.com/sign.png", "meta": FILE_META}, None], 400,
                   ("a URL is not accepted",)),
    "server file": (lambda url: [{"path": "/etc/hostname"}, None], 200, ("hostname: not a file uploaded",)),
    "16-bit PNG at 40 MP": (lambda url: [_upload(url, "flat16.png", sixteen_bit_png()), None], 200,
                            ("Cannot use this file.", "flat16.png", "16-bit", "10 megapixels")),
    "RGBA at 16 MP": (lambda url: [_upload(url, "rgba.png", png_header_only(4000, 4000, 8, 6)), None], 200,
                      ("rgba.png", "alpha-channel")),
    "se_off not a list": (lambda url: [_upload(url, "stop.png", STOP.read_bytes()), "stage1"], 200,
                          ("se_off: expected a list of SE block names",)),
}


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", list(SERVED))
def test_the_server_refuses_hostile_payloads_before_decoding(server_url, case):  # noqa: F811
    make, status, words = SERVED[case]
    code, text = _call(server_url, make(server_url))
    assert code == status, text
    message = _error_of(text) if code == 200 else json.loads(text)["detail"]
    for w in words:
        assert w in message, message


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_186_mb_data_url_is_refused_unread(server_url):  # noqa: F811
    """What was classified before: the body is refused from its Content-Length, after its first kB."""
    import socket
    import urllib.parse

    url = urllib.parse.urlsplit(server_url)
    with socket.create_connection((url.hostname, url.port), timeout=60) as sock:
        sock.sendall(b"POST /gradio_api/call/predict HTTP/1.1\r\nHost: demo\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {186 << 20}\r\n\r\n".encode()
                     + b'{"data": [{"url": "data:image/png;base64,' + b"A" * 1024)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    status = reply.split(b"\r\n", 1)[0]
    assert b" 413 " in status, reply[:300]
    assert b"uploaded files" in reply


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_gradio_client_sees_the_refusal_and_the_server_keeps_serving(client, tmp_path):  # noqa: F811
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="data URL is not accepted"):
        client.predict({"url": "data:image/png;base64,AAAA"}, api_name="/predict")
    big = tmp_path / "flat16.png"
    big.write_bytes(sixteen_bit_png())
    with pytest.raises(AppError, match="16-bit"):
        client.predict(handle_file(str(big)), api_name="/predict")
    r = client.predict(handle_file(str(STOP)), api_name="/predict")
    assert r["prediction"]["name"] == "Stop"
