"""Download the official GTSRB archives: resumable, retried, verified before use.

``fetch()`` is what ``gtsrb fetch`` runs. Each archive is written to
``dest/NAME.part`` and renamed to ``dest/NAME`` only once it verifies (md5, or
for an archive without a published md5, a full ``ZipFile.testzip()``), so a
file at ``dest/NAME`` can always be trusted. An interrupted download resumes
from the part file with an HTTP ``Range`` request, on a retry or on the next run.

Standard library (urllib) plus tqdm only. Status lines go to stderr so that
stdout stays free for the caller (the CLI prints the resulting paths there).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

BASE_URL = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"

# (file name, md5 or None). The training archive has no md5 we can trust
# (torchvision's known md5 is for a different file, GTSRB-Training_fixed.zip),
# so it is checked by reading every member back through its CRC instead.
TRAIN_ARCHIVES: tuple[tuple[str, str | None], ...] = (
    ("GTSRB_Final_Training_Images.zip", None),
)
TEST_ARCHIVES: tuple[tuple[str, str | None], ...] = (
    ("GTSRB_Final_Test_Images.zip", "c7e4e6327067d32654124b0fe9e82185"),
    ("GTSRB_Final_Test_GT.zip", "fe31e9c9270bbcd7b84b7f21a9d9d9e5"),
)
ARCHIVES: dict[str, tuple[tuple[str, str | None], ...]] = {"train": TRAIN_ARCHIVES, "test": TEST_ARCHIVES}

_CHUNK = 1 << 16
# The most bytes one archive may have: the largest, the training archive, is about 276 MB. A mirror
# that sends more is broken or hostile, and the download stops there instead of filling the disk.
MAX_ARCHIVE_BYTES = 1 << 30
_USER_AGENT = "gtsrb-fetch/0.1 (+python-urllib)"
# Seconds before retry k is k * _RETRY_DELAY_S: a short pause lets a flapping
# link or an overloaded server recover. Tests set it to 0.
_RETRY_DELAY_S = 1.0
# Server-side hiccups worth another try; any other HTTP status is final.
_TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})
# Failures of the transfer itself, after which resuming from the part file makes
# sense. URLError covers refused connections and DNS failures from urlopen;
# ConnectionError resets mid-body; TimeoutError (socket.timeout) stalls;
# HTTPException malformed or truncated responses.
_NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException, ssl.SSLError)


class FetchError(Exception):
    """A download that failed or did not verify. The message names the file or URL and the problem."""


class _RangeNotSatisfiable(Exception):
    """416 to our Range request: the part file is already as long as (or longer than) the archive."""


class _ShortRead(ConnectionError):
    """The body ended before Content-Length: urllib returns b"" there instead of raising."""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _url(base_url: str, name: str) -> str:
    # A mirror given without the trailing slash must still mean "the folder".
    return base_url + ("" if base_url.endswith("/") else "/") + urllib.parse.quote(name)


def check_base_url(url: str) -> str:
    """``url`` if it is one fetch can use (http, https, or file for a local mirror), else FetchError."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https", "file"):
        raise FetchError(f"--base-url {url}: expected an http://, https:// or file:// URL")
    return url


def md5sum(path: str | os.PathLike) -> str:
    """Hex md5 of a file, read in chunks."""
    # usedforsecurity=False: this is an integrity check, and FIPS builds refuse md5 otherwise.
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def verify(path: str | os.PathLike, md5: str | None) -> str | None:
    """None if ``path`` verifies, else what is wrong with it (for a message)."""
    if md5 is not None:
        actual = md5sum(path)
        return None if actual == md5.lower() else f"md5 mismatch: expected {md5}, got {actual}"
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    # A truncated or garbled zip can fail in any of these ways, not only BadZipFile.
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError) as e:
        return f"not a valid zip archive ({e})"
    return None if bad is None else f"not a valid zip archive (member {bad!r} fails its CRC)"


def _content_range(value: str | None) -> tuple[int, int | None]:
    """Start and total of ``Content-Range: bytes START-END/TOTAL`` (total None when '*')."""
    m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if m is None:
        raise http.client.HTTPException(f"206 with an unreadable Content-Range: {value!r}")
    return int(m[1]), None if m[3] == "*" else int(m[3])


def _download_once(url: str, part: Path, name: str, timeout: float, progress: bool) -> None:
    """One request: append to ``part`` on 206, rewrite it on 200. Raises on any failure."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:
            raise _RangeNotSatisfiable() from e
        raise
    with resp:
        status = resp.getcode()  # None for file:// URLs: a whole file, like 200
        length = resp.headers.get("Content-Length")
        length = int(length) if length is not None and length.strip().isdigit() else None
        if status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != offset:
                # Bytes for some other position cannot be appended; start over cleanly.
                part.unlink(missing_ok=True)
                raise http.client.HTTPException(f"asked for bytes from {offset}, got a range from {start}")
            mode = "ab"
            end = offset + length if length is not None else total
        else:
            # 200: the server ignored Range (or none was sent): the body is the whole file.
            if offset:
                _say(f"{name}: server does not resume downloads; restarting from zero")
            offset, mode = 0, "wb"
            end = length
        too_big = f"{url}: more than {MAX_ARCHIVE_BYTES} bytes, larger than any GTSRB archive"
        if end is not None and end > MAX_ARCHIVE_BYTES:
            raise FetchError(too_big)
        with open(part, mode) as f, tqdm(
            total=end, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=name, disable=not progress, file=sys.stderr,
        ) as bar:
            while chunk := resp.read(_CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
                if f.tell() > MAX_ARCHIVE_BYTES:
                    break
        if part.stat().st_size > MAX_ARCHIVE_BYTES:
            part.unlink()  # no archive is this long: nothing worth resuming
            raise FetchError(too_big)
    got = part.stat().st_size
    if end is not None and got < end:
        raise _ShortRead(f"connection closed after {got} of {end} bytes")


def _fetch_one(
    base_url: str, dest: Path, name: str, md5: str | None, progress: bool, retries: int, timeout: float
) -> Path:
    """Make ``dest/name`` a verified copy of the archive, downloading only what is missing."""
    url = _url(base_url, name)
    final = dest / name
    part = dest / f"{name}.part"

    if final.exists():
        problem = verify(final, md5)
        if problem is None:
            _say(f"{final}: already there, verified")
            return final
        # Keep the promise that a file at dest/NAME verified: this one goes.
        _say(f"{final}: {problem}; removing it and downloading again")
        final.unlink()

    if part.exists():
        _say(f"{name}: resuming from {part.stat().st_size} bytes in {part}")
    failures = 0
    restarted = False
    while True:
        try:
            _download_once(url, part, name, timeout, progress)
        except _RangeNotSatisfiable:
            # The part is already full length: either the download finished but was
            # never verified (killed in between), or the part is junk. Verify decides.
            if verify(part, md5) is None:
                break
            if restarted:  # cannot recur (no Range without a part), but never loop forever
                raise FetchError(f"{url}: server refuses the range request after a restart") from None
            _say(f"{name}: {part} is full length but does not verify; restarting from zero")
            part.unlink()
            restarted = True
            continue
        except urllib.error.HTTPError as e:
            if e.code in _TRANSIENT_HTTP and failures < retries:
                failures += 1
                _say(f"{url}: HTTP {e.code} {e.reason}; retry {failures}/{retries}")
                time.sleep(_RETRY_DELAY_S * failures)
                continue
            raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from None
        except _NETWORK_ERRORS as e:
            failures += 1
            if failures > retries:
                kept = f"; {part} kept, run again to resume" if part.exists() else ""
                raise FetchError(f"{url}: {e} (gave up after {retries} retries{kept})") from e
            how = f"resuming from {part.stat().st_size} bytes" if part.exists() else "from the start"
            _say(f"{url}: {e}; retry {failures}/{retries}, {how}")
            time.sleep(_RETRY_DELAY_S * failures)
            continue
        except OSError as e:  # local trouble (disk full, permissions): retrying will not help
            raise FetchError(f"{part}: {e}") from e
        break

    problem = verify(part, md5)
    if problem is not None:
        # A bad part must not be resumed next time either: it would only grow wrong.
        part.unlink(missing_ok=True)
        raise FetchError(f"{name}: {problem} (downloaded from {url}; removed {part})")
    # Rename only now, atomically: dest/NAME exists only as a verified file.
    os.replace(part, final)
    _say(f"{final}: downloaded, verified")
    return final


def fetch(
    dest: str | os.PathLike = "data",
    test: bool = False,
    base_url: str = BASE_URL,
    archives: Sequence[tuple[str, str | None]] | None = None,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60,
) -> list[Path]:
    """Download the training archive (``test=True``: the test images and labels) into ``dest``.

    ``archives`` overrides the list of (file name, md5 or None). Files already
    present and verified are skipped. Returns the archive paths in order.
    Raises FetchError on HTTP errors, exhausted retries or a failed verification.
    """
    if archives is None:
        archives = TEST_ARCHIVES if test else TRAIN_ARCHIVES
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FetchError(f"{dest}: cannot create the download folder ({e})") from e
    return [_fetch_one(base_url, dest, name, md5, progress, max(0, retries), timeout) for name, md5 in archives]
