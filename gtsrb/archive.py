"""Reading the official GTSRB archive: folder or zip sources, and the two layouts they hold.

Two layouts are understood, both as a folder or read in place from zips:

- training: ``.../Final_Training/Images/NNNNN/GT-NNNNN.csv`` plus the PPMs it lists,
  one folder per class (43 of them);
- official test: ``.../Final_Test/Images/NNNNN.ppm`` plus ``GT-final_test.csv``
  (shipped in a separate zip from the images).

``find_layout`` returns the records (file, label, track, size, ROI) without decoding
an image; ``gtsrb.preprocess`` decodes them, ``gtsrb.data`` packs them. What the names and
a CSV row must look like is ``gtsrb.groundtruth``'s; reading and assembling them is this module's.
"""

from __future__ import annotations

import csv
import hashlib
import io
import lzma
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

from gtsrb.classes import NUM_CLASSES
from gtsrb.groundtruth import (
    CSV_COLUMNS,
    TEST_CSV,
    TEST_CSV_NOLABEL,
    TEST_PPM,
    TRACK,
    TRAIN_CSV,
    TRAIN_PPM,
    Record,
    parse_row,
)
from gtsrb.util import sha256_file

# Where `gtsrb pack` looks when it is given no SOURCE, in order.
DEFAULT_SOURCE_DIRS = (Path("data"), Path("../shared/gtsrb"))

# The most bytes one file is read into memory with: far above any image a sign could need (a 32-bit BMP
# at gtsrb.preprocess.MAX_PIXELS is 160 MB), far below what would exhaust memory. A zip member's
# declared size is checked before it is inflated, and a read never goes past the cap whatever the
# member declares.
MAX_READ_BYTES = 256 << 20
# A GTSRB CSV holds at most 12,630 rows of about 40 bytes.
MAX_CSV_BYTES = 16 << 20
# The first bytes of a file, read first: an image's header is in them, so its size can be checked
# before the rest is read.
HEAD_BYTES = 1 << 16


class DataError(Exception):
    """Bad input data. The message names the file and the problem."""


def read_bounded(f: BinaryIO, declared: int, where: str, max_bytes: int,
                 check_head: Callable[[bytes], None] | None = None) -> bytes:
    """All of ``f`` (whose size is said to be ``declared``), holding at most ``max_bytes`` in memory:
    the head first, for ``check_head`` to refuse from; then the declared size; then the rest, read
    no further than the cap whatever was declared (a file may grow, a zip member may lie)."""
    head = f.read(HEAD_BYTES)
    if check_head is not None:
        check_head(head)
    if declared > max_bytes:
        raise DataError(f"{where}: {_mb(declared)}, over the {_mb(max_bytes)} limit for one file")
    data = head + f.read(max_bytes + 1 - len(head))
    if len(data) > max_bytes:
        raise DataError(f"{where}: more than the {_mb(max_bytes)} limit for one file")
    return data


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n} bytes"


class Source:
    """Files of one folder or one zip, addressed by posix paths relative to it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path}: no such file or folder")
        self._zip: zipfile.ZipFile | None = None
        if self.path.is_dir():
            self.kind = "folder"
            self.names = sorted(
                p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()
            )
        elif zipfile.is_zipfile(self.path):
            self.kind = "zip"
            self._zip = zipfile.ZipFile(self.path)
            self.names = sorted(n for n in self._zip.namelist() if not n.endswith("/"))
        else:
            raise DataError(f"{self.path}: not a folder or a zip archive")

    def read(self, name: str, max_bytes: int = MAX_READ_BYTES,
             check_head: Callable[[bytes], None] | None = None) -> bytes:
        """A file's bytes, or a DataError naming it: a zip member that fails its CRC or does not
        inflate, or a file over ``max_bytes`` (refused from a zip member's declared size before it
        is inflated). ``check_head`` sees the first HEAD_BYTES before anything else is read, and may
        refuse the file from them (an image header over the pixel cap)."""
        where = self.describe(name)
        try:
            if self._zip is None:
                f: BinaryIO = open(self.path / name, "rb")
                declared = os.fstat(f.fileno()).st_size
            else:
                info = self._zip.getinfo(name)
                declared = info.file_size
                f = self._zip.open(info)
            with f:
                return read_bounded(f, declared, where, max_bytes, check_head)
        # what zipfile's CRC check and its inflate, bzip2 and lzma decoders raise on bad data
        except (zipfile.BadZipFile, zlib.error, EOFError, lzma.LZMAError) as e:
            raise DataError(f"{where}: corrupt zip member ({e})") from e
        # an encrypted member, or a compression method zipfile does not implement
        except (RuntimeError, NotImplementedError) as e:
            raise DataError(f"{where}: cannot be read ({e})") from e
        except OSError as e:
            what = "corrupt zip member" if self._zip is not None else "cannot be read"
            raise DataError(f"{where}: {what} ({e.strerror or e})") from e

    def describe(self, name: str) -> str:
        """A path a person can find: the zip and the member, or the file."""
        return f"{self.path}:{name}" if self.kind == "zip" else str(self.path / name)

    def sha256(self) -> str:
        if self.kind == "zip":
            return sha256_file(self.path)
        h = hashlib.sha256()  # a folder: hash names and contents in a fixed order, a chunk at a time
        for name in self.names:
            h.update(name.encode() + b"\0")
            try:
                with open(self.path / name, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
            except OSError as e:
                raise DataError(f"{self.describe(name)}: cannot be read ({e.strerror or e})") from e
        return h.hexdigest()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None


@dataclass
class Layout:
    kind: str  # "train" or "test"
    sources: list[Source]
    records: list[Record]
    bad: list[str] = field(default_factory=list)  # skipped rows (with --skip-bad)

    def close(self) -> None:
        """Close every source's zip (a folder holds nothing open)."""
        for s in self.sources:
            s.close()

    def __enter__(self) -> "Layout":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_csv(source: Source, name: str) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of each CSV row; the line number counts physical lines, header included."""
    try:
        text = source.read(name, MAX_CSV_BYTES).decode("utf-8-sig")
        reader = csv.DictReader(io.StringIO(text), delimiter=";")
        rows = [(reader.line_num, row) for row in reader]
        header = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{source.describe(name)}: unreadable CSV ({e})") from e
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing and not (missing == ["ClassId"] and TEST_CSV_NOLABEL.match(name)):
        raise DataError(f"{source.describe(name)}: missing column(s) {', '.join(missing)}")
    return rows


class _Rows:
    """Checks the rows of one layout's CSV(s) and collects its records: with ``skip_bad`` a bad row is
    skipped and counted, without it the first one is a DataError naming the file and the line."""

    def __init__(self, sources: list[Source], all_names: set, skip_bad: bool):
        self.sources, self.all_names, self.skip_bad = sources, all_names, skip_bad
        self.records: list[Record] = []
        self.bad: list[str] = []
        self.listed: set[tuple[int, str]] = set()

    def problem(self, message: str) -> None:
        if not self.skip_bad:
            raise DataError(message)
        self.bad.append(message)

    def add(self, csv_at: tuple[int, str], line: int, row: dict[str, str], image_at: tuple[int, str],
            folder_class: int | None, track: int, filename: str) -> None:
        where = f"{self.sources[csv_at[0]].describe(csv_at[1])} line {line}"
        if image_at in self.listed:  # packing it twice would weigh it twice, and could split it across parts
            return self.problem(f"{where}: {row['Filename']} is listed twice")
        self.listed.add(image_at)  # a bad row still lists its image: it is skipped as a row, not as unlisted
        try:
            w, h, roi, label = parse_row(row)
        except (TypeError, ValueError) as e:
            return self.problem(f"{where}: bad value ({e})")
        if not 0 <= label < NUM_CLASSES:
            return self.problem(f"{where}: ClassId {label} is outside 0-{NUM_CLASSES - 1}")
        if folder_class is not None and label != folder_class:
            return self.problem(f"{where}: ClassId {label} in the folder of class {folder_class:05d}")
        if image_at not in self.all_names:
            image = self.sources[image_at[0]].describe(image_at[1])
            return self.problem(f"{image}: image listed in {csv_at[1]} line {line} is missing")
        self.records.append(Record(image_at[0], image_at[1], label, track, w, h, roi, filename))

    def unlisted(self, images: list[tuple[int, str]], where: str) -> None:
        """Images of the layout that no row lists: packing them would need a label, skipping them
        silently would lose them."""
        left = [at for at in images if at not in self.listed]
        if left:
            first = self.sources[left[0][0]].describe(left[0][1])
            self.problem(f"{first}: listed in no CSV row ({len(left)} image(s) of {where} are not)")


def _source_paths(paths: Sequence[Path | str]) -> list[Path]:
    """The folders and zips to read: a folder may hold the official zips themselves."""
    out: list[Path] = []
    for p in map(Path, paths):
        zips = sorted(p.glob("GTSRB_Final_*.zip")) if p.is_dir() else []
        out += zips or [p]
    seen: dict[Path, Path] = {}
    for p in out:
        first = seen.setdefault(p.resolve(), p)
        if first is not p:
            raise DataError(f"{p}: given twice" + (f" (also as {first})" if str(first) != str(p) else ""))
    return out


def find_layout(paths: Sequence[Path | str], skip_bad: bool = False) -> Layout:
    """Index the official training or test layout in folders or zips (read in place).

    Several sources make one layout only as the official test set ships: the images zip and the GT
    zip. A source that adds nothing to the layout found (a second training archive, a test archive
    beside the training one) is refused, naming it, rather than silently left out.

    Use it as ``with find_layout(paths) as layout:`` so its zips are closed; on an error it closes
    what it opened itself."""
    sources: list[Source] = []
    try:
        for p in _source_paths(paths):
            sources.append(Source(p))
        return _layout(sources, skip_bad)
    except BaseException:
        for s in sources:
            s.close()
        raise


def _layout(sources: list[Source], skip_bad: bool) -> Layout:
    all_names = {(i, n) for i, s in enumerate(sources) for n in s.names}
    train_csvs = [(i, n) for i, n in sorted(all_names) if TRAIN_CSV.match(n)]
    test_images = [(i, n) for i, n in sorted(all_names) if TEST_PPM.match(n)]
    where = ", ".join(str(s.path) for s in sources)
    if train_csvs or any(TRAIN_PPM.match(n) for _, n in all_names):
        layout = _train_layout(sources, all_names, skip_bad)
    elif test_images:
        layout = _test_layout(sources, all_names, test_images, skip_bad)
    else:
        raise DataError(
            f"{where}: not the official GTSRB layout (expected Final_Training/Images/NNNNN/GT-NNNNN.csv "
            "or Final_Test/Images/NNNNN.ppm with GT-final_test.csv)"
        )
    parts = (TRAIN_CSV, TRAIN_PPM) if layout.kind == "train" else (TEST_CSV, TEST_PPM, TEST_CSV_NOLABEL)
    used = {i for i, n in all_names if any(p.match(n) for p in parts)}
    for i, s in enumerate(sources):
        if i not in used:
            others = ", ".join(str(sources[j].path) for j in sorted(used))
            what = "training" if layout.kind == "train" else "official test"
            raise DataError(f"{s.path}: adds nothing to the {what} layout in {others}; "
                            "give the source(s) of one layout only")
    return layout


def _train_layout(sources: list[Source], all_names: set, skip_bad: bool) -> Layout:
    class_dirs: dict[int, tuple[int, str]] = {}
    images: dict[int, list[tuple[int, str]]] = {}
    for i, n in sorted(all_names):
        m = TRAIN_PPM.match(n) or TRAIN_CSV.match(n)
        if not m:
            continue
        cls, at = int(m["cls"]), (i, m["dir"])
        first = class_dirs.setdefault(cls, at)
        if first != at:  # two copies of a class: which one is meant cannot be guessed
            raise DataError(f"{sources[at[0]].describe(at[1])}: class folder {cls:05d} is also at "
                            f"{sources[first[0]].describe(first[1])}; give one training archive")
        if TRAIN_PPM.match(n):
            images.setdefault(cls, []).append((i, n))
    missing = [f"{c:05d}" for c in range(NUM_CLASSES) if c not in class_dirs]
    if missing:
        raise DataError(
            f"{sources[0].path}: class folder(s) {', '.join(missing)} missing or empty (no images and no CSV; "
            f"expected 00000-{NUM_CLASSES - 1:05d})"
        )
    rows = _Rows(sources, all_names, skip_bad)
    for cls, (i, d) in sorted(class_dirs.items()):
        src = sources[i]
        if cls >= NUM_CLASSES:
            raise DataError(f"{src.describe(d)}: class folder {cls:05d} is outside 0-{NUM_CLASSES - 1}")
        csv_name = f"{d}/GT-{cls:05d}.csv"
        if (i, csv_name) not in all_names:
            raise DataError(f"{src.describe(csv_name)}: missing CSV for class {cls:05d}")
        csv_rows = _read_csv(src, csv_name)
        if not csv_rows:
            raise DataError(f"{src.describe(csv_name)}: class {cls:05d} is empty (no rows)")
        for line, row in csv_rows:
            fname = row["Filename"] or ""
            m = TRACK.match(fname)
            rows.add((i, csv_name), line, row, (i, f"{d}/{fname}"), cls, int(m[1]) if m else -1,
                     f"{cls:05d}/{fname}")
        rows.unlisted(images.get(cls, []), src.describe(d))
    return Layout("train", sources, rows.records, rows.bad)


def _test_layout(sources, all_names, test_images, skip_bad) -> Layout:
    csvs = [(i, n) for i, n in sorted(all_names) if TEST_CSV.match(n)]
    if not csvs:
        has_nolabel = any(TEST_CSV_NOLABEL.match(n) for _, n in all_names)
        hint = (
            " (GT-final_test.test.csv has no ClassId column: add GTSRB_Final_Test_GT.zip)"
            if has_nolabel
            else ""
        )
        raise DataError(f"{sources[0].path}: missing GT-final_test.csv with the test labels{hint}")
    if len(csvs) > 1:  # which one holds the labels cannot be guessed, and scoring the wrong one misleads
        (a, an), (b, bn) = csvs[:2]
        raise DataError(f"{sources[b].describe(bn)}: a second GT-final_test.csv (the first is "
                        f"{sources[a].describe(an)}); keep one")
    ci, csv_name = csvs[0]
    image_dirs: dict[tuple[int, str], None] = {}
    for i, n in test_images:
        image_dirs.setdefault((i, TEST_PPM.match(n)["dir"]), None)
    (img_src, img_dir), *others = image_dirs
    if others:
        (j, other), = others[:1]
        raise DataError(f"{sources[j].describe(other)}: a second Final_Test/Images folder (the first is "
                        f"{sources[img_src].describe(img_dir)}); give one")
    csv_rows = _read_csv(sources[ci], csv_name)
    if not csv_rows:
        raise DataError(f"{sources[ci].describe(csv_name)}: no rows")
    rows = _Rows(sources, all_names, skip_bad)
    for line, row in csv_rows:
        fname = row["Filename"] or ""
        rows.add((ci, csv_name), line, row, (img_src, f"{img_dir}/{fname}"), None, -1, fname)
    rows.unlisted(test_images, sources[img_src].describe(img_dir))
    return Layout("test", sources, rows.records, rows.bad)


def default_source() -> Path:
    """The training archive in data/ or ../shared/gtsrb/, or a DataError saying to fetch it."""
    for d in DEFAULT_SOURCE_DIRS:
        for candidate in (d / "GTSRB_Final_Training_Images.zip", d / "GTSRB" / "Final_Training"):
            if candidate.exists():
                return candidate
    raise DataError(
        "no GTSRB training data in data/ or ../shared/gtsrb/: run `gtsrb fetch` "
        "(downloads the official archives into data/) or pass SOURCE"
    )
