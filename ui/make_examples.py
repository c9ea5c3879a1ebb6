"""Re-make ui/examples/: a few real GTSRB images from the *test* split of the track pack.

    python -m ui.make_examples [--data data/gtsrb28.h5] [--source ../shared/gtsrb/GTSRB_Final_Training_Images.zip]

Each example is an image of the training archive cropped to its annotated
sign (the CSV's ROI, as ``gtsrb pack --roi`` crops it for the release model;
no resize, so it stays at the archive's resolution), saved as PNG. It is
taken from the middle of a test-split track, so the split twin never trained
on it (the release model, trained on every image, did; the page says so).
File names: <class id>-<slug>.png.
"""

from __future__ import annotations

import argparse
import io
import re
from pathlib import Path

import numpy as np
from PIL import Image

from gtsrb.classes import CLASS_NAMES
from gtsrb.archive import find_layout
from gtsrb.data import load_pack
from gtsrb.preprocess import decode, roi_box, to_rgb

CLASSES = (1, 12, 13, 14, 17, 25, 28, 33)  # 30 km/h, priority, yield, stop, no entry, road work, children, turn right
OUT = Path(__file__).parent / "examples"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/gtsrb28.h5"))
    p.add_argument("--source", type=Path, default=Path("../shared/gtsrb/GTSRB_Final_Training_Images.zip"))
    a = p.parse_args(argv)
    test = load_pack(a.data, "test")
    with find_layout([a.source]) as layout:
        records = {r.filename: r for r in layout.records}
        OUT.mkdir(exist_ok=True)
        for c in CLASSES:
            rows = np.flatnonzero(test.labels == c)
            first_track = test.tracks[rows[0]]
            track_rows = rows[test.tracks[rows] == first_track]
            name = test.filenames[track_rows[len(track_rows) // 2]]
            r = records[name]
            src = layout.sources[r.source]
            full = to_rgb(decode(src.read(r.name), src.describe(r.name)))
            box = roi_box(r.roi, (r.width, r.height), full.size)
            img = full.resize((round(box[2] - box[0]), round(box[3] - box[1])), Image.Resampling.BILINEAR, box=box)
            buf = io.BytesIO()
            img.save(buf, "PNG", optimize=True)
            out = OUT / f"{c:02d}-{slug(CLASS_NAMES[c])}.png"
            out.write_bytes(buf.getvalue())
            print(f"{out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out} <- {name} ({img.width}x{img.height}, {len(buf.getvalue())} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
