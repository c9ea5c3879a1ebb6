"""Reading the official GTSRB archive: folder or zip sources, and the two layouts they hold.

Two layouts are understood, both as a folder or read in place from zips:

- training: ``.../Final_Training/Images/NNNNN/GT-NNNNN.csv`` plus the PPMs it lists,
  one folder per class (43 of them);
- official test: ``.../Final_Test/Images/NNNNN.ppm`` plus ``GT-final_test.csv``
  (shipped in a separate zip from the images).

``find_layout`` returns the records (file, label, track, size, ROI) without decoding
an image; ``gtsrb.preprocess`` decodes them, ``gtsrb.data`` packs them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import lzma
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from gtsrb.classes import NUM_CLASSES
from gtsrb.util import sha256_file

# Where `gtsrb pack` looks when it is given no SOURCE, in order.
DEFAULT_SOURCE_DIRS = (Path("data"), Path("../shared/gtsrb"))

_TRAIN_CSV = re.compile(r"^(?P<dir>(?:.*/)?(?P<cls>\d{5}))/GT-(?P=cls)\.csv$")
_TRAIN_PPM = re.compile(r"^(?P<dir>(?:.*/)?(?P<cls>\d{5}))/[^/]+\.ppm$")
_TEST_CSV = re.compile(r"^(?:.*/)?GT-final_test\.csv$")
_TEST_CSV_NOLABEL = re.compile(r"^(?:.*/)?GT-final_test\.test\.csv$")
_TEST_PPM = re.compile(r"^(?P<dir>(?:.*/)?Final_Test/Images)/\d{5}\.ppm$")
_TRACK = re.compile(r"^(\d{5})_\d{5}\.ppm$")
_CSV_COLUMNS = ("Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId")


class DataError(Exception):
    """Bad input data. The message names the file and the problem."""


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

    def read(self, name: str) -> bytes:
        """A file's bytes; a zip member that fails its CRC or does not inflate is a DataError."""
        if self._zip is None:
            return (self.path / name).read_bytes()
        try:
            return self._zip.read(name)
        # what zipfile's CRC check and its inflate, bzip2 and lzma decoders raise on bad data
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, lzma.LZMAError) as e:
            raise DataError(f"{self.describe(name)}: corrupt zip member ({e})") from e

    def describe(self, name: str) -> str:
        """A path a person can find: the zip and the member, or the file."""
        return f"{self.path}:{name}" if self.kind == "zip" else str(self.path / name)

    def sha256(self) -> str:
        if self.kind == "zip":
            return sha256_file(self.path)
        h = hashlib.sha256()  # a folder: hash names and contents in a fixed order
        for name in self.names:
            h.update(name.encode() + b"\0" + self.read(name))
        return h.hexdigest()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None


@dataclass
class Record:
    """One CSV row: where the image is and what the CSV says about it."""

    source: int  # index into the list of sources
    name: str  # member path inside that source
    label: int
    track: int  # track number within its class; -1 where unknown (official test)
    width: int
    height: int
    roi: tuple[int, int, int, int]
    filename: str  # short name kept in the pack, e.g. "00012/00003_00029.ppm"


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


def _read_csv(source: Source, name: str) -> list[dict[str, str]]:
    try:
        text = source.read(name).decode("utf-8-sig")
        reader = csv.DictReader(io.StringIO(text), delimiter=";")
        rows = list(reader)
        header = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error, zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{source.describe(name)}: unreadable CSV ({e})") from e
    missing = [c for c in _CSV_COLUMNS if c not in header]
    if missing and not (missing == ["ClassId"] and _TEST_CSV_NOLABEL.match(name)):
        raise DataError(f"{source.describe(name)}: missing column(s) {', '.join(missing)}")
    return rows


def _parse_row(source: Source, csv_name: str, line: int, row: dict[str, str]) -> tuple:
    try:
        w, h = int(row["Width"]), int(row["Height"])
        roi = (int(row["Roi.X1"]), int(row["Roi.Y1"]), int(row["Roi.X2"]), int(row["Roi.Y2"]))
        label = int(row["ClassId"])
    except (TypeError, ValueError) as e:
        raise DataError(f"{source.describe(csv_name)} line {line}: bad value ({e})") from e
    return w, h, roi, label


def _row_problem(sources, csv_at: tuple[int, str], line: int, label: int, image_at: tuple[int, str], all_names) -> str | None:
    """What is wrong with one CSV row (a label out of range, a missing image), or None."""
    if not 0 <= label < NUM_CLASSES:
        return f"{sources[csv_at[0]].describe(csv_at[1])} line {line}: ClassId {label} is outside 0-{NUM_CLASSES - 1}"
    if image_at not in all_names:
        return f"{sources[image_at[0]].describe(image_at[1])}: image listed in {csv_at[1]} line {line} is missing"
    return None


def _source_paths(paths: Sequence[Path | str]) -> list[Path]:
    """The folders and zips to read: a folder may hold the official zips themselves."""
    out: list[Path] = []
    for p in map(Path, paths):
        zips = sorted(p.glob("GTSRB_Final_*.zip")) if p.is_dir() else []
        out += zips or [p]
    return out


def find_layout(paths: Sequence[Path | str], skip_bad: bool = False) -> Layout:
    """Index the official training or test layout in folders or zips (read in place).

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
    train_csvs = [(i, n) for i, n in sorted(all_names) if _TRAIN_CSV.match(n)]
    test_images = [(i, n) for i, n in sorted(all_names) if _TEST_PPM.match(n)]
    where = ", ".join(str(s.path) for s in sources)
    if train_csvs or any(_TRAIN_PPM.match(n) for _, n in all_names):
        layout = _train_layout(sources, all_names, skip_bad)
    elif test_images:
        layout = _test_layout(sources, all_names, test_images, skip_bad)
    else:
        raise DataError(
            f"{where}: not the official GTSRB layout (expected Final_Training/Images/NNNNN/GT-NNNNN.csv "
            "or Final_Test/Images/NNNNN.ppm with GT-final_test.csv)"
        )
    return layout


def _train_layout(sources: list[Source], all_names: set, skip_bad: bool) -> Layout:
    class_dirs: dict[int, tuple[int, str]] = {}
    for i, n in sorted(all_names):
        m = _TRAIN_PPM.match(n) or _TRAIN_CSV.match(n)
        if m:
            class_dirs.setdefault(int(m["cls"]), (i, m["dir"]))
    missing = [f"{c:05d}" for c in range(NUM_CLASSES) if c not in class_dirs]
    if missing:
        raise DataError(
            f"{sources[0].path}: class folder(s) {', '.join(missing)} missing or empty (no images and no CSV; "
            f"expected 00000-{NUM_CLASSES - 1:05d})"
        )
    records: list[Record] = []
    bad: list[str] = []
    for cls, (i, d) in sorted(class_dirs.items()):
        src = sources[i]
        if cls >= NUM_CLASSES:
            raise DataError(f"{src.describe(d)}: class folder {cls:05d} is outside 0-{NUM_CLASSES - 1}")
        csv_name = f"{d}/GT-{cls:05d}.csv"
        if (i, csv_name) not in all_names:
            raise DataError(f"{src.describe(csv_name)}: missing CSV for class {cls:05d}")
        rows = _read_csv(src, csv_name)
        if not rows:
            raise DataError(f"{src.describe(csv_name)}: class {cls:05d} is empty (no rows)")
        for line, row in enumerate(rows, start=2):
            w, h, roi, label = _parse_row(src, csv_name, line, row)
            fname = row["Filename"]
            member = f"{d}/{fname}"
            problem = _row_problem(sources, (i, csv_name), line, label, (i, member), all_names)
            if problem:
                if not skip_bad:
                    raise DataError(problem)
                bad.append(problem)
                continue
            m = _TRACK.match(fname)
            track = int(m[1]) if m else -1
            records.append(Record(i, member, label, track, w, h, roi, f"{cls:05d}/{fname}"))
    return Layout("train", sources, records, bad)


def _test_layout(sources, all_names, test_images, skip_bad) -> Layout:
    csvs = [(i, n) for i, n in sorted(all_names) if _TEST_CSV.match(n)]
    if not csvs:
        has_nolabel = any(_TEST_CSV_NOLABEL.match(n) for _, n in all_names)
        hint = (
            " (GT-final_test.test.csv has no ClassId column: add GTSRB_Final_Test_GT.zip)"
            if has_nolabel
            else ""
        )
        raise DataError(f"{sources[0].path}: missing GT-final_test.csv with the test labels{hint}")
    ci, csv_name = csvs[0]
    image_dir = {}
    for i, n in test_images:
        image_dir.setdefault(_TEST_PPM.match(n)["dir"], i)
    (img_dir, img_src), = list(image_dir.items())[:1]
    rows = _read_csv(sources[ci], csv_name)
    if not rows:
        raise DataError(f"{sources[ci].describe(csv_name)}: no rows")
    records, bad = [], []
    for line, row in enumerate(rows, start=2):
        w, h, roi, label = _parse_row(sources[ci], csv_name, line, row)
        member = f"{img_dir}/{row['Filename']}"
        problem = _row_problem(sources, (ci, csv_name), line, label, (img_src, member), all_names)
        if problem:
            if not skip_bad:
                raise DataError(problem)
            bad.append(problem)
            continue
        records.append(Record(img_src, member, label, -1, w, h, roi, row["Filename"]))
    return Layout("test", sources, records, bad)


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
