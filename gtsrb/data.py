"""Official GTSRB layout (folder or zip) -> decoded, resized uint8 arrays -> one HDF5 file.

Two layouts are understood, both as a folder or read in place from zips:

- training: ``.../Final_Training/Images/NNNNN/GT-NNNNN.csv`` plus the PPMs it lists,
  one folder per class (43 of them);
- official test: ``.../Final_Test/Images/NNNNN.ppm`` plus ``GT-final_test.csv``
  (shipped in a separate zip from the images).

Every image goes through :func:`preprocess`, the one function that inference
also uses, so a served image is treated exactly as a packed one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import lzma
import os
import re
import time
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np
from PIL import Image, ImageOps, ImageSequence

from gtsrb import __version__
from gtsrb.classes import CLASS_NAMES, NUM_CLASSES
from gtsrb.splits import SPLIT_NAMES, make_split, track_groups
from gtsrb.util import atomic_path, sha256_file

FORMAT_VERSION = 1
DEFAULT_SIZE = 28
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


# --------------------------------------------------------------------------- sources


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


def _open_sources(paths: Sequence[Path | str]) -> list[Source]:
    return [Source(p) for p in _source_paths(paths)]


def find_layout(paths: Sequence[Path | str], skip_bad: bool = False) -> Layout:
    """Index the official training or test layout in folders or zips (read in place)."""
    sources = _open_sources(paths)
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


# --------------------------------------------------------------------------- decoding


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (RGBA, LA, L, P, I;16, I, F, CMYK, ...) -> 8-bit RGB; first frame of animations."""
    if getattr(img, "is_animated", False):
        img = next(ImageSequence.Iterator(img)).copy()
    if img.getexif().get(0x0112, 1) != 1:  # phones store photos sideways plus an orientation tag
        img = ImageOps.exif_transpose(img)
    if "transparency" in img.info and img.mode in ("L", "RGB"):  # a PNG tRNS colour: make it alpha
        img = img.convert("RGBA")
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr / 257.0  # 16-bit range -> 8-bit
        elif img.mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels become neutral gray, near the data set's mean colour.
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (128, 128, 128, 255))
        img = Image.alpha_composite(background, img)
    return img if img.mode == "RGB" else img.convert("RGB")


def preprocess(
    img: Image.Image,
    size: int = DEFAULT_SIZE,
    roi: tuple[int, int, int, int] | None = None,
    stated_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """PIL image -> (size, size, 3) uint8, exactly as packing does it.

    ``roi`` is (X1, Y1, X2, Y2) inclusive, in the coordinates of an image of
    ``stated_size`` (the CSV's Width, Height); it is scaled when the actual image
    differs (the shared 32x32 copy).
    """
    img = to_rgb(img)
    box = None
    if roi is not None:
        x1, y1, x2, y2 = roi
        sw, sh = stated_size or img.size
        fx, fy = img.width / sw, img.height / sh
        box = (x1 * fx, y1 * fy, min((x2 + 1) * fx, img.width), min((y2 + 1) * fy, img.height))
    out = img.resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out, dtype=np.uint8)


# The largest image decode() accepts by default: far above any traffic-sign photo (GTSRB's
# images are at most a few hundred pixels wide), far below what would exhaust memory.
MAX_PIXELS = 40_000_000


def decode(data: bytes, where: str, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """Bytes -> fully decoded PIL image, or DataError naming ``where``.

    ``max_pixels`` refuses larger images before their pixels are decoded (the
    header alone gives the size), so a huge file costs no memory; None: no cap.
    """
    if not data:
        raise DataError(f"{where}: empty file (0 bytes)")
    pixels = plain_ppm(data)
    if pixels is not None:
        h, w = pixels.shape[:2]
        if max_pixels is not None and w * h > max_pixels:
            raise DataError(f"{where}: image is {w}x{h} ({w * h / 1e6:.0f} megapixels); "
                            f"the limit is {max_pixels / 1e6:.0f} megapixels, so downscale it first")
        return Image.fromarray(pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        limit = f"; the limit is {max_pixels / 1e6:.0f} megapixels, so downscale it first" if max_pixels else ""
        raise DataError(f"{where}: image too large to decode safely ({e}){limit}") from e
    except Image.UnidentifiedImageError:
        raise DataError(f"{where}: not an image, or a corrupt one (no image format recognised)") from None
    except Exception as e:  # a recognised header that PIL cannot parse: SyntaxError, ValueError, OSError, ...
        raise DataError(f"{where}: not an image, or a corrupt one ({e})") from e
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        raise DataError(f"{where}: image is {w}x{h} ({w * h / 1e6:.0f} megapixels); "
                        f"the limit is {max_pixels / 1e6:.0f} megapixels, so downscale it first")
    try:
        img.load()
    except Exception as e:
        raise DataError(f"{where}: corrupt or truncated image ({e})") from e
    return img


# A binary 8-bit PPM (GTSRB's format): "P6 <w> <h> 255", whitespace between the fields
# (after which a "# ..." comment line may follow, as OpenCV writes), then one
# whitespace byte and the pixels. Anything else is left to PIL.
_PPM_WS = rb"[ \t\n\x0b\x0c\r]"
_PPM_SEP = _PPM_WS + rb"+(?:#[^\r\n]*[\r\n]" + _PPM_WS + rb"*)*"
_PPM_HEADER = re.compile(rb"P6" + _PPM_SEP + rb"(\d{1,9})" + _PPM_SEP + rb"(\d{1,9})" + _PPM_SEP + rb"255" + _PPM_WS)


def plain_ppm(data: bytes) -> np.ndarray | None:
    """The (H, W, 3) pixels of an 8-bit P6 file, read without PIL's format
    detection (which costs more than the pixels here); None for anything else
    (other depths, short data, ...), which takes PIL's path and its errors."""
    m = _PPM_HEADER.match(data)
    if m is None:
        return None
    w, h = int(m[1]), int(m[2])
    start, n = m.end(), w * h * 3
    if w == 0 or h == 0 or len(data) - start < n:
        return None
    return np.frombuffer(data, np.uint8, n, start).reshape(h, w, 3)


def decode_records(layout: Layout, size: int, roi: bool) -> tuple[np.ndarray, np.ndarray]:
    """``preprocess`` of every record's image, and a bool mask of those that decoded;
    the others' messages are added to ``layout.bad``. One image at a time, in this
    process: packing runs once per machine, and a pool of decoding processes was not
    worth its code (results/SPEED.md has the pack time)."""
    images = np.zeros((len(layout.records), size, size, 3), np.uint8)
    ok = np.ones(len(layout.records), bool)
    for k, r in enumerate(layout.records):
        source = layout.sources[r.source]
        try:
            img = decode(source.read(r.name), source.describe(r.name))
            images[k] = preprocess(img, size, r.roi if roi else None, (r.width, r.height))
        except DataError as e:
            ok[k] = False
            layout.bad.append(str(e))
    return images, ok


# --------------------------------------------------------------------------- packing


@dataclass
class PackSummary:
    path: Path
    layout: str
    counts: dict[str, int]
    num_classes: int
    skipped: int
    seconds: float

    def __str__(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        return (
            f"packed {sum(self.counts.values())} images ({parts}) of {self.num_classes} classes "
            f"into {self.path} in {self.seconds:.1f} s" + (f"; skipped {self.skipped} bad" if self.skipped else "")
        )


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


def _split_codes(layout: Layout, labels: np.ndarray, tracks: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """The split of the images that decoded: all test for the official test layout."""
    if layout.kind != "train":
        return np.full(len(labels), SPLIT_NAMES.index("test"), np.uint8)
    empty = sorted(set(range(NUM_CLASSES)) - set(labels.tolist()))
    if empty:
        raise DataError(f"{layout.sources[0].path}: class(es) {empty} have no usable images")
    try:
        return make_split(labels, track_groups(labels, tracks), kind=kind, seed=seed)
    except ValueError as e:  # e.g. a class with fewer tracks than folds
        raise DataError(f"{layout.sources[0].path}: cannot make a {kind} split ({e})") from e


def pack(
    sources: Sequence[Path | str],
    out: Path | str,
    size: int = DEFAULT_SIZE,
    split: str = "track",
    seed: int = 0,
    roi: bool = False,
    skip_bad: bool = False,
    keep_splits: Iterable[str] | None = None,
    compress: bool = False,
) -> PackSummary:
    """Pack the official layout into one HDF5 file, written atomically.

    ``keep_splits`` keeps only the named splits (e.g. a small pack to carry to a
    GPU machine); the split is computed on the whole archive first, so it is the
    same split as the full pack's.
    """
    t0 = time.perf_counter()
    out = Path(out)
    if size < 8:
        raise DataError(f"--size {size}: images must be at least 8 pixels wide")
    check_writable(out)  # before the decoding, not after it
    layout = None
    try:
        layout = find_layout(sources, skip_bad=skip_bad)
        images, ok = decode_records(layout, size, roi)
        if not ok.all() and not skip_bad:
            raise DataError(layout.bad[0])
        records = [r for r, good in zip(layout.records, ok) if good]
        labels = np.array([r.label for r in records], np.int16)
        tracks = np.array([r.track for r in records], np.int32)
        images = images if ok.all() else images[ok]
        split_codes = _split_codes(layout, labels, tracks, split, seed)
        digests = [s.sha256() for s in layout.sources]
        if keep_splits is not None:
            keep = np.isin(split_codes, [SPLIT_NAMES.index(s) for s in keep_splits])
            records = [r for r, k in zip(records, keep) if k]
            images, labels, tracks, split_codes = images[keep], labels[keep], tracks[keep], split_codes[keep]
        attrs = {
            "format_version": FORMAT_VERSION,
            "layout": layout.kind,
            "source": ", ".join(str(s.path) for s in layout.sources),
            "source_sha256": ", ".join(digests),
            "size": size,
            "seed": seed,
            "split_kind": split if layout.kind == "train" else "official-test",
            "roi": roi,
            "skipped_bad": len(layout.bad),
            "gtsrb_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_pack(out, images, labels, tracks, [r.filename for r in records], split_codes, attrs, compress)
    finally:
        for s in layout.sources if layout is not None else []:
            s.close()
    counts = {name: int((split_codes == i).sum()) for i, name in enumerate(SPLIT_NAMES)}
    return PackSummary(out, layout.kind, counts, len(set(labels.tolist())), len(layout.bad), time.perf_counter() - t0)


def check_writable(out: Path) -> None:
    """DataError now, naming ``out``, if a file cannot be written there: a directory in the way, a
    regular file where a folder should be, or a folder that is not writable."""
    if out.is_dir():
        raise DataError(f"{out}: a directory; give a file path such as {out / 'gtsrb28.h5'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next(p for p in [out.parent, *out.parent.parents] if p.exists())
        raise DataError(f"{out}: cannot be written, {blocker} is a file, not a folder") from None
    except OSError as e:
        raise DataError(f"{out}: cannot create its folder ({e.strerror})") from None
    if not os.access(out.parent, os.W_OK):
        raise DataError(f"{out}: its folder {out.parent} is not writable")


def write_pack(
    out: Path,
    images: np.ndarray,
    labels: np.ndarray,
    tracks: np.ndarray,
    filenames: Sequence[str],
    split: np.ndarray,
    attrs: dict,
    compress: bool = False,
) -> None:
    """Write the HDF5 schema (see README) to a temp file beside ``out``, then rename."""
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as f:
            n = len(labels)
            chunk = (min(max(n, 1), 1024), *images.shape[1:])
            # Uncompressed by default: gzip costs time at every pack and every load and saves
            # only about a quarter of the size. ``compress`` for a pack that must travel small.
            gzip = {"compression": "gzip", "compression_opts": 4, "shuffle": True} if compress else {}
            f.create_dataset("images", data=images, chunks=chunk if n else None, **gzip)
            f.create_dataset("labels", data=labels)
            f.create_dataset("tracks", data=tracks)
            f.create_dataset("filenames", data=np.array(filenames, dtype=object), dtype=h5py.string_dtype())
            f.create_dataset("split", data=split.astype(np.uint8))
            f["split"].attrs["codes"] = ", ".join(f"{i}={s}" for i, s in enumerate(SPLIT_NAMES))
            f.create_dataset("class_names", data=np.array(CLASS_NAMES, dtype=object), dtype=h5py.string_dtype())
            for k, v in attrs.items():
                f.attrs[k] = v


@dataclass
class Packed:
    """A packed file in memory: images (N, S, S, 3) uint8 and what goes with them."""

    images: np.ndarray
    labels: np.ndarray
    tracks: np.ndarray
    filenames: list[str]
    split: np.ndarray
    class_names: list[str]
    attrs: dict

    @property
    def groups(self) -> np.ndarray:
        """One id per physical sign: (class, track)."""
        return track_groups(self.labels, self.tracks)

    def take(self, index: np.ndarray) -> "Packed":
        """The rows at ``index`` (an index array or a boolean mask)."""
        index = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index)
        return Packed(
            self.images[index],
            self.labels[index],
            self.tracks[index],
            [self.filenames[i] for i in index],
            self.split[index],
            self.class_names,
            self.attrs,
        )

    def subset(self, split: str) -> "Packed":
        return self.take(self.split == SPLIT_NAMES.index(split))


def load_pack(path: Path | str, split: str | None = None) -> Packed:
    """Read a packed HDF5 file in one call; ``split`` keeps only train, val or test."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such packed file (make one with `gtsrb pack`)")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("images", "labels", "split", "class_names") if k not in f]
            if missing:
                raise DataError(f"{path}: not a gtsrb pack (missing {', '.join(missing)})")
            packed = Packed(
                images=f["images"][:],
                labels=f["labels"][:].astype(np.int64),
                tracks=f["tracks"][:] if "tracks" in f else np.full(len(f["labels"]), -1, np.int32),
                filenames=[s.decode() if isinstance(s, bytes) else s for s in f["filenames"][:]],
                split=f["split"][:],
                class_names=[s.decode() if isinstance(s, bytes) else s for s in f["class_names"][:]],
                attrs=dict(f.attrs),
            )
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file ({e})") from e
    if split is not None:
        if split not in SPLIT_NAMES:
            raise DataError(f"--split {split}: expected one of {', '.join(SPLIT_NAMES)}")
        packed = packed.subset(split)
    return packed
