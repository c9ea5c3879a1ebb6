"""Small synthetic GTSRB archives in the official layouts, made at test time.

Each class gets a distinct colour and shape so that a model can learn it in a
few steps; frames of a track are near-duplicates, as in the real data.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"


def sign_image(cls: int, track: int, frame: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(cls * 10_007 + track * 101 + frame)
    img = np.full((size, size, 3), 40, np.uint8)
    colour = np.array([(cls * 53) % 256, (cls * 97) % 256, (cls * 29 + 80) % 256], np.uint8)
    lo, hi = size // 4 + (track % 3), 3 * size // 4 - (frame % 2)
    img[lo:hi, lo:hi] = colour
    img[size // 2, :] = (cls * 6) % 256  # a class-dependent bar
    noise = rng.integers(-12, 13, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


def checkerboard(size: int = 64, square: int = 8) -> np.ndarray:
    """A black-and-white checkerboard: a picture that is no traffic sign. Uniform pixel noise is not a
    reliable one: after the 28-px resize it is close to a plain grey patch, which a model may not tell
    from the training data (the contrast-normalised model before this one could not)."""
    yy, xx = np.mgrid[0:size, 0:size]
    return np.repeat(((yy // square + xx // square) % 2 * 255).astype(np.uint8)[..., None], 3, axis=2)


def make_training_tree(
    root: Path, num_classes: int = 43, tracks: int = 10, frames: int = 3, size: int = 32, stated: int = 64
) -> Path:
    """root/GTSRB/Final_Training/Images/NNNNN/{GT-NNNNN.csv, TTTTT_FFFFF.ppm}; returns root/GTSRB."""
    base = root / "GTSRB" / "Final_Training" / "Images"
    for c in range(num_classes):
        d = base / f"{c:05d}"
        d.mkdir(parents=True)
        rows = []
        for t in range(tracks):
            for f in range(frames):
                name = f"{t:05d}_{f:05d}.ppm"
                Image.fromarray(sign_image(c, t, f, size)).save(d / name, format="PPM")
                # Width/Height state a larger original, as in the shared 32x32 copy.
                rows.append(f"{name};{stated};{stated};5;5;{stated - 6};{stated - 6};{c}\n")
        (d / f"GT-{c:05d}.csv").write_text(HEADER + "".join(rows))
    return root / "GTSRB"


def make_test_tree(root: Path, n: int = 86, size: int = 32, num_classes: int = 43) -> tuple[Path, Path]:
    """The official test layout: images under GTSRB/Final_Test/Images and GT-final_test.csv.

    Returns (images folder root, GT csv path). Labels cycle through the classes.
    """
    images = root / "GTSRB" / "Final_Test" / "Images"
    images.mkdir(parents=True)
    rows, rows_nolabel = [], []
    for i in range(n):
        c = i % num_classes
        name = f"{i:05d}.ppm"
        Image.fromarray(sign_image(c, 100 + i, 0, size)).save(images / name, format="PPM")
        rows.append(f"{name};{size};{size};1;1;{size - 2};{size - 2};{c}\n")
        rows_nolabel.append(f"{name};{size};{size};1;1;{size - 2};{size - 2}\n")
    (images / "GT-final_test.test.csv").write_text(HEADER.replace(";ClassId", "") + "".join(rows_nolabel))
    gt = root / "GT-final_test.csv"
    gt.write_text(HEADER + "".join(rows))
    return root, gt


def zip_tree(folder: Path, zip_path: Path, arc_root: Path | None = None) -> Path:
    """Zip every file under ``folder``, with names relative to ``arc_root`` (default: folder's parent)."""
    arc_root = arc_root or folder.parent
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(arc_root).as_posix())
    return zip_path


def make_official_test_zips(root: Path, n: int = 86) -> tuple[Path, Path]:
    """GTSRB_Final_Test_Images.zip and GTSRB_Final_Test_GT.zip, as published."""
    tree, gt = make_test_tree(root / "tree", n)
    images_zip = zip_tree(tree / "GTSRB", root / "GTSRB_Final_Test_Images.zip", tree)
    gt_zip = root / "GTSRB_Final_Test_GT.zip"
    with zipfile.ZipFile(gt_zip, "w") as z:
        z.write(gt, "GT-final_test.csv")
    return images_zip, gt_zip
