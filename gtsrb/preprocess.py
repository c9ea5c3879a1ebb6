"""Decoding and preprocessing one image: shared by packing and inference.

Every image, packed or served, goes through :func:`decode` and :func:`preprocess`,
so a served image is treated exactly as a packed one.
"""

from __future__ import annotations

import functools
import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, ImageSequence

from gtsrb.archive import DataError, Layout, Record, read_bounded

DEFAULT_SIZE = 28  # the input size the project trains at


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (RGBA, LA, L, P, I;16, I, F, CMYK, ...) -> 8-bit RGB; first frame of animations."""
    if getattr(img, "is_animated", False):
        img = next(ImageSequence.Iterator(img)).copy()
    if img.getexif().get(0x0112, 1) != 1:  # phones store photos sideways plus an orientation tag
        img = ImageOps.exif_transpose(img)
    if "transparency" in img.info and img.mode in ("L", "RGB"):  # a PNG tRNS colour: make it alpha
        img = img.convert("RGBA")
    if img.mode.startswith("I;16"):
        # 16-bit range -> 8-bit: rint(x / 257) in integers (x / 257 never ends in .5), with no
        # float copy of the image
        arr = np.asarray(img).astype(np.uint32)
        arr += 128
        arr //= 257
        img = Image.fromarray(arr.astype(np.uint8), "L")
    elif img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)  # one float copy, then changed in place
        if arr.max(initial=0) > 255:
            arr /= 257.0  # 16-bit range -> 8-bit
        elif img.mode == "F" and arr.max(initial=0) <= 1.0:
            arr *= 255.0
        np.rint(arr, out=arr)
        np.clip(arr, 0, 255, out=arr)
        img = Image.fromarray(arr.astype(np.uint8), "L")
    if img.mode == "P":
        # straight to RGB unless some colour is transparent: the same pixels, without an RGBA copy
        opaque = "transparency" not in img.info and getattr(img.palette, "mode", "RGB") == "RGB"
        img = img.convert("RGB" if opaque else "RGBA")
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
# An image with more than 8 bits a channel or with alpha holds 2-4 bytes a pixel and passes through
# wider copies on its way to 8-bit RGB (integers for 16-bit, RGBA composited on gray for alpha), so
# it gets this fraction of the cap: its peak memory then stays near that of an 8-bit RGB image.
WIDE_MODE_SHARE = 4
# The most bytes an image file may hold: 4 bytes a pixel (a 32-bit BMP) at MAX_PIXELS, plus room
# for metadata. Larger files are refused before they are read whole.
MAX_IMAGE_BYTES = 4 * MAX_PIXELS + (1 << 20)

_HIGH_DEPTH = {"I;16": "16-bit", "I;16L": "16-bit", "I;16B": "16-bit", "I;16N": "16-bit", "I": "32-bit",
               "F": "32-bit float"}
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _wide_kind(mode: str, info: dict) -> str | None:
    """What makes an image of this mode costly to convert ("16-bit", "alpha-channel", ...), or None."""
    if mode in _HIGH_DEPTH:
        return _HIGH_DEPTH[mode]
    if mode in _ALPHA_MODES or "transparency" in info:
        return "alpha-channel"
    return None


def check_pixels(size: tuple[int, int], mode: str, info: dict, where: str, max_pixels: int | None) -> None:
    """DataError naming ``where`` if an image of ``size`` and ``mode`` is over the pixel cap: ``max_pixels``
    for 8-bit images, 1/WIDE_MODE_SHARE of it for 16-bit, 32-bit and alpha ones. None: no cap."""
    if max_pixels is None:
        return
    w, h = size
    kind = _wide_kind(mode, info)
    limit = max_pixels if kind is None else max_pixels // WIDE_MODE_SHARE
    if w * h > limit:
        such, advice = (f" {kind}", f" for {kind} images is") if kind else ("", " is")
        raise DataError(f"{where}: image is {w}x{h}{such} ({w * h / 1e6:.0f} megapixels); the limit{advice} "
                        f"{limit / 1e6:.0f} megapixels, so downscale it"
                        + (" or convert it to 8-bit RGB first" if kind else " first"))


def _open(data: bytes, where: str, max_pixels: int | None) -> Image.Image:
    """PIL's lazy open (the header only), or DataError naming ``where``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked by the caller
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        limit = f"; the limit is {max_pixels / 1e6:.0f} megapixels, so downscale it first" if max_pixels else ""
        raise DataError(f"{where}: image too large to decode safely ({e}){limit}") from e
    except Image.UnidentifiedImageError:
        raise DataError(f"{where}: not an image, or a corrupt one (no image format recognised)") from None
    except Exception as e:  # a recognised header that PIL cannot parse: SyntaxError, ValueError, OSError, ...
        raise DataError(f"{where}: not an image, or a corrupt one ({e})") from e


def check_header(head: bytes, where: str, max_pixels: int | None = MAX_PIXELS) -> None:
    """Refuse an image over the pixel cap from the first bytes of its file (``HEAD_BYTES`` of them),
    before the rest is read or inflated. A head that does not show the size (a format PIL cannot
    parse from it, or no image at all) passes: ``decode`` checks the whole file again."""
    if max_pixels is None:
        return
    m = _PPM_HEADER.match(head)
    if m is not None:
        return check_pixels((int(m[1]), int(m[2])), "RGB", {}, where, max_pixels)
    try:
        img = _open(head, where, max_pixels)
    except DataError as e:
        if isinstance(e.__cause__, Image.DecompressionBombError):
            raise
        return
    with img:
        check_pixels(img.size, img.mode, img.info, where, max_pixels)


def read_image(path: Path, max_pixels: int | None = MAX_PIXELS) -> bytes:
    """An image file's bytes, or DataError naming it: refused over MAX_IMAGE_BYTES, or from its header
    over the pixel cap, before the whole file is read."""
    where = str(path)
    try:
        with open(path, "rb") as f:
            return read_bounded(f, os.fstat(f.fileno()).st_size, where, MAX_IMAGE_BYTES,
                                functools.partial(check_header, where=where, max_pixels=max_pixels))
    except OSError as e:
        raise DataError(f"{where}: cannot be read ({e.strerror or e})") from e


def decode(data: bytes, where: str, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """Bytes -> fully decoded PIL image, or DataError naming ``where``.

    ``max_pixels`` refuses larger images before their pixels are decoded (the
    header alone gives the size), so a huge file costs no memory; None: no cap.
    16-bit, 32-bit and alpha images get a smaller cap (``check_pixels``).
    """
    if not data:
        raise DataError(f"{where}: empty file (0 bytes)")
    pixels = plain_ppm(data)
    if pixels is not None:
        check_pixels((pixels.shape[1], pixels.shape[0]), "RGB", {}, where, max_pixels)
        return Image.fromarray(pixels)
    img = _open(data, where, max_pixels)
    check_pixels(img.size, img.mode, img.info, where, max_pixels)
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


def decode_record(layout: Layout, r: Record) -> Image.Image:
    """One record's image, its header checked before the bytes are read whole (a bounded read)."""
    source = layout.sources[r.source]
    where = source.describe(r.name)
    return decode(source.read(r.name, MAX_IMAGE_BYTES, functools.partial(check_header, where=where)), where)


def decode_records(layout: Layout, size: int, roi: bool) -> tuple[np.ndarray, np.ndarray]:
    """``preprocess`` of every record's image, and a bool mask of those that decoded;
    the others' messages are added to ``layout.bad``. One image at a time, in this
    process: packing runs once per machine, and a pool of decoding processes was not
    worth its code (results/SPEED.md has the pack time)."""
    images = np.zeros((len(layout.records), size, size, 3), np.uint8)
    ok = np.ones(len(layout.records), bool)
    for k, r in enumerate(layout.records):
        try:
            images[k] = preprocess(decode_record(layout, r), size, r.roi if roi else None, (r.width, r.height))
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
        try:
            img = to_rgb(decode_record(layout, r))
            frames[k] = np.asarray(img.resize((frame_size, frame_size), Image.Resampling.BILINEAR), np.uint8)
            x1, y1, x2, y2 = roi_box(r.roi, (r.width, r.height), img.size)
            boxes[k] = (x1 / img.size[0], y1 / img.size[1], x2 / img.size[0], y2 / img.size[1])
        except DataError as e:
            ok[k] = False
            layout.bad.append(str(e))
    return frames, boxes, ok


def resize_images(arrays: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, size, size, 3), each resized as ``preprocess`` resizes (PIL bilinear):
    a pack's stored frames at the model's size are what `gtsrb pack` without --roi stores."""
    out = np.empty((len(arrays), size, size, 3), np.uint8)
    for k, a in enumerate(arrays):
        out[k] = np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.BILINEAR), np.uint8)
    return out
