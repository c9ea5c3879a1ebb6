"""Decoding and preprocessing one image: shared by packing and inference.

Every image, packed or served, goes through :func:`decode` and :func:`preprocess`,
so a served image is treated exactly as a packed one.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, ImageSequence

from gtsrb.archive import DataError, Layout

DEFAULT_SIZE = 28  # the input size the project trains at


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
    box = None if roi is None else roi_box(roi, stated_size or img.size, img.size)
    out = img.resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out, dtype=np.uint8)


def roi_box(roi: tuple[int, int, int, int], stated_size: tuple[int, int],
            size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The CSV's inclusive ROI (X1, Y1, X2, Y2), stated for an image of ``stated_size``, as a PIL box
    (left, upper, right, lower) on an image of ``size``."""
    x1, y1, x2, y2 = roi
    fx, fy = size[0] / stated_size[0], size[1] / stated_size[1]
    return x1 * fx, y1 * fy, min((x2 + 1) * fx, size[0]), min((y2 + 1) * fy, size[1])


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


def decode_frames(layout: Layout, frame_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every record's whole image at ``frame_size`` square, its annotated ROI as fractions (x1, y1,
    x2, y2) of that frame, and a bool mask of those that decoded (messages added to ``layout.bad``).

    The framing augmentation (``TrainConfig.framing``) crops between the ROI and the whole frame on
    the device, so a model learns the tight crop and GTSRB's own framing (a ~10% margin) alike."""
    frames = np.zeros((len(layout.records), frame_size, frame_size, 3), np.uint8)
    boxes = np.zeros((len(layout.records), 4), np.float32)
    ok = np.ones(len(layout.records), bool)
    for k, r in enumerate(layout.records):
        source = layout.sources[r.source]
        try:
            img = to_rgb(decode(source.read(r.name), source.describe(r.name)))
            frames[k] = np.asarray(img.resize((frame_size, frame_size), Image.Resampling.BILINEAR), np.uint8)
            x1, y1, x2, y2 = roi_box(r.roi, (r.width, r.height), img.size)
            boxes[k] = (x1 / img.size[0], y1 / img.size[1], x2 / img.size[0], y2 / img.size[1])
        except DataError as e:
            ok[k] = False
            layout.bad.append(str(e))
    return frames, boxes, ok
