"""What the official archive's names and ground-truth CSV rows say, without reading anything: the
path patterns of the training and official test layouts, the CSV columns, ``Record`` (one row), and
the checks of one row's values. ``gtsrb.archive`` reads the sources and assembles the layouts."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Member paths, relative to a source (a folder or a zip).
TRAIN_CSV = re.compile(r"^(?P<dir>(?:.*/)?(?P<cls>\d{5}))/GT-(?P=cls)\.csv$")
TRAIN_PPM = re.compile(r"^(?P<dir>(?:.*/)?(?P<cls>\d{5}))/[^/]+\.ppm$")
TEST_CSV = re.compile(r"^(?:.*/)?GT-final_test\.csv$")
TEST_CSV_NOLABEL = re.compile(r"^(?:.*/)?GT-final_test\.test\.csv$")
TEST_PPM = re.compile(r"^(?P<dir>(?:.*/)?Final_Test/Images)/\d{5}\.ppm$")
TRACK = re.compile(r"^(\d{5})_\d{5}\.ppm$")  # a training image's file name: TTTTT_FFFFF.ppm
CSV_COLUMNS = ("Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId")


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


# The largest Width or Height a CSV row may state: GTSRB's images are at most a few hundred pixels.
MAX_SIDE = 100_000


def parse_row(row: dict[str, str]) -> tuple[int, int, tuple[int, int, int, int], int]:
    """Width, Height, ROI and ClassId of a row; ValueError (or TypeError, for a short row) if one is
    not an integer, or if the ROI is not inside the image (preprocess crops to it and scales it by the
    stated size, so an empty, inverted or outside box cannot be used)."""
    w, h = int(row["Width"]), int(row["Height"])
    x1, y1, x2, y2 = (int(row[k]) for k in ("Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2"))
    label = int(row["ClassId"])
    if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
        raise ValueError(f"Width {w}, Height {h}: expected 1 to {MAX_SIDE} pixels")
    if not (0 <= x1 <= x2 < w and 0 <= y1 <= y2 < h):
        raise ValueError(f"ROI ({x1}, {y1})-({x2}, {y2}) is not inside the {w}x{h} image "
                         "(expected 0 <= Roi.X1 <= Roi.X2 < Width and 0 <= Roi.Y1 <= Roi.Y2 < Height)")
    return w, h, (x1, y1, x2, y2), label
