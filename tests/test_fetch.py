"""gtsrb.fetch against a local HTTP server that can cut connections and ignore Range."""

from __future__ import annotations

import hashlib
import http.server
import random
import re
import threading
import urllib.parse
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import gtsrb.fetch as fetch_mod
from gtsrb.fetch import FetchError, fetch


@dataclass
class ServerState:
    """What the handler serves and how it misbehaves; what it saw."""

    root: Path
    url: str = ""
    cut_after: int | None = None  # send only this many body bytes, then close...
    cut_times: int = 1  # ...on this many requests (the first ones)
    ignore_range: bool = False  # answer every request with 200 and the whole file
    requests: list[tuple[str, str | None, int]] = field(default_factory=list)  # (path, Range, status)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves files from state.root, with single open-ended ranges (bytes=N-) as 206."""

    server: http.server.ThreadingHTTPServer

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        st: ServerState = self.server.state  # type: ignore[attr-defined]
        rng = self.headers.get("Range")
        path = st.root / urllib.parse.unquote(urllib.parse.urlsplit(self.path).path.lstrip("/"))
        if not path.is_file():
            self._log(rng, 404)
            self.send_error(404)
            return
        data = path.read_bytes()
        start, status = 0, 200
        if rng and not st.ignore_range:
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            assert m, rng
            start = int(m[1])
            if start >= len(data):
                self._log(rng, 416)
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        with st.lock:
            cut = st.cut_after is not None and st.cut_times > 0
            if cut:
                st.cut_times -= 1
        self._log(rng, status)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))  # the full length, even when we cut
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if not st.ignore_range:
            self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if cut:
            self.wfile.write(body[: st.cut_after])
            self.close_connection = True  # the client sees EOF before Content-Length
            return
        self.wfile.write(body)

    def _log(self, rng: str | None, status: int) -> None:
        st: ServerState = self.server.state  # type: ignore[attr-defined]
        with st.lock:
            st.requests.append((self.path, rng, status))


@pytest.fixture
def server(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state = ServerState(root=root, url=f"http://127.0.0.1:{httpd.server_address[1]}/")
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch_mod, "_RETRY_DELAY_S", 0.0)


def make_zip(path: Path, seed: int = 0) -> bytes:
    """A few-KB zip with two members (stored, so its bytes are mostly incompressible noise)."""
    rng = random.Random(seed)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("a.txt", "hello GTSRB\n" * 50)
        z.writestr("b/c.bin", rng.randbytes(4000))
    return path.read_bytes()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def get(dest: Path, server: ServerState, archives, **kw) -> list[Path]:
    kw = {"progress": False, "timeout": 5, **kw}
    return fetch(dest, base_url=server.url, archives=archives, **kw)


def test_downloads_verifies_and_skips_when_present(server: ServerState, tmp_path: Path) -> None:
    data = make_zip(server.root / "x.zip")
    dest = tmp_path / "data"
    assert get(dest, server, [("x.zip", md5(data))]) == [dest / "x.zip"]
    assert (dest / "x.zip").read_bytes() == data
    assert not (dest / "x.zip.part").exists()
    assert len(server.requests) == 1

    assert get(dest, server, [("x.zip", md5(data))]) == [dest / "x.zip"]
    assert len(server.requests) == 1  # verified in place: nothing downloaded


def test_cut_connection_resumes_with_range(server: ServerState, tmp_path: Path) -> None:
    data = make_zip(server.root / "x.zip")
    server.cut_after = 1000
    dest = tmp_path / "data"
    get(dest, server, [("x.zip", md5(data))])
    assert (dest / "x.zip").read_bytes() == data
    assert not (dest / "x.zip.part").exists()
    assert [(r, s) for _, r, s in server.requests] == [(None, 200), ("bytes=1000-", 206)]


def test_md5_mismatch_raises_and_leaves_nothing(server: ServerState, tmp_path: Path) -> None:
    data = make_zip(server.root / "x.zip")
    dest = tmp_path / "data"
    with pytest.raises(FetchError) as info:
        get(dest, server, [("x.zip", "0" * 32)])
    msg = str(info.value)
    assert "x.zip" in msg and "0" * 32 in msg and md5(data) in msg
    assert not (dest / "x.zip").exists()
    assert not (dest / "x.zip.part").exists()


def test_server_ignoring_range_restarts_from_zero(server: ServerState, tmp_path: Path) -> None:
    data = make_zip(server.root / "x.zip")
    server.cut_after = 1000
    server.ignore_range = True
    dest = tmp_path / "data"
    get(dest, server, [("x.zip", md5(data))])
    assert (dest / "x.zip").read_bytes() == data  # not the first 1000 bytes twice
    assert [(r, s) for _, r, s in server.requests] == [(None, 200), ("bytes=1000-", 200)]


def test_404_names_the_url(server: ServerState, tmp_path: Path) -> None:
    dest = tmp_path / "data"
    with pytest.raises(FetchError, match=re.escape(server.url + "missing.zip") + ".*404"):
        get(dest, server, [("missing.zip", None)])
    assert not (dest / "missing.zip").exists()
    assert len(server.requests) == 1  # a 404 is final, not retried


def test_no_md5_checks_the_zip(server: ServerState, tmp_path: Path) -> None:
    data = make_zip(server.root / "good.zip")
    (server.root / "bad.zip").write_bytes(b"this is not a zip archive\n" * 100)
    dest = tmp_path / "data"
    get(dest, server, [("good.zip", None)])
    assert (dest / "good.zip").read_bytes() == data

    with pytest.raises(FetchError, match="bad.zip.*not a valid zip"):
        get(dest, server, [("bad.zip", None)])
    assert not (dest / "bad.zip").exists()
    assert not (dest / "bad.zip.part").exists()


def test_zip_with_bad_crc_is_rejected(server: ServerState, tmp_path: Path) -> None:
    data = bytearray(make_zip(server.root / "x.zip"))
    i = data.index(b"hello GTSRB")
    data[i] ^= 0xFF  # a member's bytes change; its CRC no longer matches
    (server.root / "x.zip").write_bytes(bytes(data))
    with pytest.raises(FetchError, match="x.zip.*a.txt"):
        get(tmp_path / "data", server, [("x.zip", None)])
    assert not (tmp_path / "data" / "x.zip").exists()


def test_complete_part_gets_416_and_is_verified(server: ServerState, tmp_path: Path) -> None:
    data = make_zip(server.root / "x.zip")
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "x.zip.part").write_bytes(data)  # finished earlier, killed before verifying
    get(dest, server, [("x.zip", md5(data))])
    assert (dest / "x.zip").read_bytes() == data
    assert [s for _, _, s in server.requests] == [416]


def test_junk_part_after_416_is_replaced(server: ServerState, tmp_path: Path) -> None:
    data = make_zip(server.root / "x.zip")
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "x.zip.part").write_bytes(b"\0" * (len(data) + 10))
    get(dest, server, [("x.zip", md5(data))])
    assert (dest / "x.zip").read_bytes() == data
    assert [(r is not None, s) for _, r, s in server.requests] == [(True, 416), (False, 200)]


def test_corrupt_existing_file_is_downloaded_again(server: ServerState, tmp_path: Path) -> None:
    data = make_zip(server.root / "x.zip")
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "x.zip").write_bytes(data[:-7])
    get(dest, server, [("x.zip", md5(data))])
    assert (dest / "x.zip").read_bytes() == data
    assert len(server.requests) == 1


def test_gives_up_after_retries_and_keeps_part(server: ServerState, tmp_path: Path) -> None:
    data = make_zip(server.root / "x.zip")
    server.cut_after, server.cut_times = 100, 99
    dest = tmp_path / "data"
    with pytest.raises(FetchError, match="x.zip.*2 retries"):
        get(dest, server, [("x.zip", md5(data))], retries=2)
    assert len(server.requests) == 3  # one try and two retries, each resuming
    assert (dest / "x.zip.part").read_bytes() == data[:300]
    assert not (dest / "x.zip").exists()

    server.cut_times = 0  # the next run resumes where the last one stopped
    get(dest, server, [("x.zip", md5(data))])
    assert (dest / "x.zip").read_bytes() == data
    assert server.requests[-1][1:] == ("bytes=300-", 206)


def test_default_training_archive_and_base_url_without_slash(server: ServerState, tmp_path: Path) -> None:
    data = make_zip(server.root / "GTSRB_Final_Training_Images.zip")
    dest = tmp_path / "data"
    paths = fetch(dest, base_url=server.url.rstrip("/"), progress=False, timeout=5)
    assert paths == [dest / "GTSRB_Final_Training_Images.zip"]
    assert paths[0].read_bytes() == data


def test_archive_table() -> None:
    assert fetch_mod.BASE_URL == "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"
    assert fetch_mod.TRAIN_ARCHIVES == (("GTSRB_Final_Training_Images.zip", None),)
    assert dict(fetch_mod.TEST_ARCHIVES) == {
        "GTSRB_Final_Test_Images.zip": "c7e4e6327067d32654124b0fe9e82185",
        "GTSRB_Final_Test_GT.zip": "fe31e9c9270bbcd7b84b7f21a9d9d9e5",
    }


def test_file_url_mirror(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    data = make_zip(mirror / "x.zip")
    dest = tmp_path / "data"
    fetch(dest, base_url=mirror.as_uri(), archives=[("x.zip", md5(data))], progress=False)
    assert (dest / "x.zip").read_bytes() == data
