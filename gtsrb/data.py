"""The pack file: decoded, resized uint8 images of the official archive in one HDF5 file.

``pack`` reads the archive (``gtsrb.archive``), preprocesses every image
(``gtsrb.preprocess``), splits it (``gtsrb.splits``) and writes the file
atomically; ``load_pack`` reads it back in one call.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np

from gtsrb import __version__
from gtsrb.archive import DataError, Layout, find_layout
from gtsrb.classes import CLASS_NAMES, NUM_CLASSES
from gtsrb.preprocess import DEFAULT_SIZE, decode_frames, decode_records
from gtsrb.splits import SPLIT_NAMES, make_split, track_groups
from gtsrb.util import atomic_path, remove_stale_temps

FORMAT_VERSION = 1


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
    frame_size: int | None = None,
) -> PackSummary:
    """Pack the official layout into one HDF5 file, written atomically.

    ``keep_splits`` keeps only the named splits (e.g. a small pack to carry to a
    GPU machine); the split is computed on the whole archive first, so it is the
    same split as the full pack's. ``frame_size`` also stores every whole image at
    that size (``frames``) with its ROI as fractions of it (``boxes``), for the
    framing augmentation.
    """
    t0 = time.perf_counter()
    out = Path(out)
    # 512 px: far above what a 28 px model or GTSRB's signs (15-250 px) need, and an archive of 40,000
    # images stays within memory (40,000 x 512 x 512 x 3 bytes is 31 GB; at 28 px, 94 MB).
    if not 8 <= size <= 512:
        raise DataError(f"--size {size}: expected 8 to 512 pixels")
    if frame_size is not None and not size <= frame_size <= 512:
        raise DataError(f"--frame-size {frame_size}: expected {size} (the --size) to 512 pixels")
    check_writable(out)  # before the decoding, not after it
    with find_layout(sources, skip_bad=skip_bad) as layout:
        images, ok = decode_records(layout, size, roi)
        extra: dict[str, np.ndarray] = {}
        if frame_size is not None:
            frames, boxes, frames_ok = decode_frames(layout, frame_size)
            ok &= frames_ok
            extra = {"frames": frames, "boxes": boxes}
        if not ok.all() and not skip_bad:
            raise DataError(layout.bad[0])
        records = [r for r, good in zip(layout.records, ok) if good]
        labels = np.array([r.label for r in records], np.int16)
        tracks = np.array([r.track for r in records], np.int32)
        images = images if ok.all() else images[ok]
        extra = {k: (v if ok.all() else v[ok]) for k, v in extra.items()}
        split_codes = _split_codes(layout, labels, tracks, split, seed)
        digests = [s.sha256() for s in layout.sources]
        if keep_splits is not None:
            keep = np.isin(split_codes, [SPLIT_NAMES.index(s) for s in keep_splits])
            records = [r for r, k in zip(records, keep) if k]
            images, labels, tracks, split_codes = images[keep], labels[keep], tracks[keep], split_codes[keep]
            extra = {k: v[keep] for k, v in extra.items()}
        attrs = {
            "format_version": FORMAT_VERSION,
            "layout": layout.kind,
            "source": ", ".join(str(s.path) for s in layout.sources),
            "source_sha256": ", ".join(digests),
            "size": size,
            "seed": seed,
            "split_kind": split if layout.kind == "train" else "official-test",
            "roi": roi,
            **({"frame_size": frame_size} if frame_size is not None else {}),
            "skipped_bad": len(layout.bad),
            "gtsrb_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_pack(out, images, labels, tracks, [r.filename for r in records], split_codes, attrs, compress, extra)
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
    extra: dict[str, np.ndarray] | None = None,
) -> None:
    """Write the HDF5 schema (see README) to a temp file beside ``out``, then rename."""
    remove_stale_temps(out)  # what killed packs left there
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
            for name, array in (extra or {}).items():  # frames and boxes (the framing augmentation)
                f.create_dataset(name, data=array, **gzip)
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
    # A pack made with a frame size (the framing augmentation): each whole image, and its ROI as
    # fractions (x1, y1, x2, y2) of it; None otherwise.
    frames: np.ndarray | None = None
    boxes: np.ndarray | None = None

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
            None if self.frames is None else self.frames[index],
            None if self.boxes is None else self.boxes[index],
        )

    def subset(self, split: str) -> "Packed":
        return self.take(self.split == SPLIT_NAMES.index(split))


def load_pack(path: Path | str, split: str | None = None) -> Packed:
    """Read a packed HDF5 file in one call, its schema checked (``check_schema``); ``split`` keeps
    only train, val or test."""
    path = Path(path)
    if split is not None and split not in SPLIT_NAMES:  # before reading a byte
        raise DataError(f"--split {split}: expected one of {', '.join(SPLIT_NAMES)}")
    if not path.is_file():
        raise DataError(f"{path}: no such packed file (make one with `gtsrb pack`)")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("images", "labels", "split", "class_names", "filenames") if k not in f]
            if missing:
                raise DataError(f"{path}: not a gtsrb pack (missing {', '.join(missing)})")
            for name in ("images", "labels", "split", "class_names", "filenames", "tracks", "frames", "boxes"):
                if name in f and not isinstance(f[name], h5py.Dataset):
                    raise DataError(f"{path}: {name} is a group, not a dataset")
            _check_dtypes(f, path)
            packed = Packed(
                images=f["images"][:],
                labels=f["labels"][:].astype(np.int64),
                tracks=f["tracks"][:].astype(np.int64) if "tracks" in f else np.full(len(f["labels"]), -1, np.int64),
                filenames=[s.decode() if isinstance(s, bytes) else str(s) for s in f["filenames"][:]],
                split=f["split"][:],
                class_names=[s.decode() if isinstance(s, bytes) else str(s) for s in f["class_names"][:]],
                attrs=dict(f.attrs),
                frames=f["frames"][:] if "frames" in f else None,
                boxes=f["boxes"][:].astype(np.float32) if "boxes" in f else None,
            )
    except (OSError, KeyError, TypeError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: not a readable HDF5 pack ({e})") from e
    check_schema(packed, path)
    if split is not None:
        packed = packed.subset(split)
    return packed


def _check_dtypes(f: h5py.File, path: Path) -> None:
    """Dataset kinds, before their contents are read: uint8 pixels, integer labels and codes, strings."""
    def kind(name: str) -> str:
        return f[name].dtype.kind

    if f["images"].dtype != np.uint8:
        raise DataError(f"{path}: images are {f['images'].dtype}, expected uint8 pixels (0-255)")
    if "frames" in f and f["frames"].dtype != np.uint8:
        raise DataError(f"{path}: frames are {f['frames'].dtype}, expected uint8 pixels (0-255)")
    for name in ("labels", "split", "tracks"):
        if name in f and kind(name) not in "iu":
            raise DataError(f"{path}: {name} are {f[name].dtype}, expected integers")
    if "boxes" in f and kind("boxes") != "f":
        raise DataError(f"{path}: boxes are {f['boxes'].dtype}, expected fractions (floats)")
    for name in ("filenames", "class_names"):
        if kind(name) not in "OSU":
            raise DataError(f"{path}: {name} are {f[name].dtype}, expected strings")


def check_schema(p: Packed, path: Path | str) -> None:
    """DataError naming ``path`` and the dataset unless ``p`` is a well-formed pack: (N, S, S, 3)
    images, one label, split code, track and file name per image, labels within the class table."""
    n = len(p.images)
    if p.images.ndim != 4 or p.images.shape[3] != 3 or p.images.shape[1] != p.images.shape[2] or p.images.shape[1] < 1:
        raise DataError(f"{path}: images have shape {p.images.shape}, expected (N, S, S, 3)")
    size = p.attrs.get("size")
    if size is not None and int(size) != p.images.shape[1]:
        raise DataError(f"{path}: images are {p.images.shape[1]} px, but its size attribute says {size}")
    for name, value in (("labels", p.labels), ("split", p.split), ("tracks", p.tracks), ("filenames", p.filenames)):
        if len(value) != n or (isinstance(value, np.ndarray) and value.ndim != 1):
            raise DataError(f"{path}: {name} has {len(value)} entries for {n} images")
    if not 2 <= len(p.class_names) <= 1000:
        raise DataError(f"{path}: class_names has {len(p.class_names)} entries")
    if n and (p.labels.min() < 0 or p.labels.max() >= len(p.class_names)):
        bad = int(p.labels[(p.labels < 0) | (p.labels >= len(p.class_names))][0])
        raise DataError(f"{path}: labels: {bad} is outside 0-{len(p.class_names) - 1}")
    if n and p.split.max() >= len(SPLIT_NAMES):
        raise DataError(f"{path}: split: code {int(p.split.max())} is not one of "
                        f"{', '.join(f'{i}={s}' for i, s in enumerate(SPLIT_NAMES))}")
    if (p.frames is None) != (p.boxes is None):
        raise DataError(f"{path}: frames and boxes come together; it has only {'frames' if p.boxes is None else 'boxes'}")
    if p.frames is not None:
        if p.frames.ndim != 4 or p.frames.shape[0] != n or p.frames.shape[3] != 3 or p.frames.shape[1] != p.frames.shape[2]:
            raise DataError(f"{path}: frames have shape {p.frames.shape}, expected ({n}, F, F, 3)")
        if p.boxes.shape != (n, 4):
            raise DataError(f"{path}: boxes have shape {p.boxes.shape}, expected ({n}, 4)")
        b = p.boxes
        if n and not (np.isfinite(b).all() and (b >= 0).all() and (b <= 1).all()
                      and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()):
            raise DataError(f"{path}: boxes must be fractions x1 < x2, y1 < y2 within [0, 1]")
