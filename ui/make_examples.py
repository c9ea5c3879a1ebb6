"""Re-make ui/examples/: a few real GTSRB images from the *test* split of the track pack.

    python -m ui.make_examples [--data data/gtsrb28.h5] [--source ../shared/gtsrb/GTSRB_Final_Training_Images.zip]

Each example is the original image from the training archive (32x32 in the
shared copy), re-encoded as PNG, taken from the middle of a test-split track,
so the served model never trained on it. File names: <class id>-<slug>.png.
"""

from __future__ import annotations

import argparse
import io
import re
from pathlib import Path

import numpy as np

from gtsrb.classes import CLASS_NAMES
from gtsrb.archive import Source
from gtsrb.data import load_pack
from gtsrb.preprocess import decode

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
    src = Source(a.source)
    OUT.mkdir(exist_ok=True)
    for c in CLASSES:
        rows = np.flatnonzero(test.labels == c)
        first_track = test.tracks[rows[0]]
        track_rows = rows[test.tracks[rows] == first_track]
        name = test.filenames[track_rows[len(track_rows) // 2]]
        member = next(n for n in src.names if n.endswith("/" + name) or n == name)
        img = decode(src.read(member), src.describe(member)).convert("RGB")
        buf = io.BytesIO()
        img.save(buf, "PNG", optimize=True)
        out = OUT / f"{c:02d}-{slug(CLASS_NAMES[c])}.png"
        out.write_bytes(buf.getvalue())
        print(f"{out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out} <- {name} ({img.width}x{img.height}, {len(buf.getvalue())} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
