"""gtsrb.data: packing the official layouts (folder or zip) into one HDF5 file.

Every archive here is synthetic (tests/fixtures.py), built once per module.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import sys
import zipfile
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

import gtsrb  # noqa: E402
from fixtures import make_official_test_zips, make_test_tree, make_training_tree, zip_tree  # noqa: E402
from gtsrb.classes import CLASS_NAMES  # noqa: E402
from gtsrb.cli import main  # noqa: E402
from gtsrb.archive import DataError, default_source  # noqa: E402
from gtsrb.data import load_pack, pack  # noqa: E402
from gtsrb.preprocess import decode, preprocess  # noqa: E402
from gtsrb.splits import SPLIT_NAMES  # noqa: E402

N_TRAIN = 43 * 10 * 3  # make_training_tree's default: 43 classes x 10 tracks x 3 frames
IMAGES = Path("Final_Training") / "Images"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def train_tree(tmp_path_factory) -> Path:
    """The synthetic training folder (.../GTSRB, holding Final_Training/Images/NNNNN)."""
    return make_training_tree(tmp_path_factory.mktemp("train"))


@pytest.fixture(scope="module")
def train_zip(train_tree, tmp_path_factory) -> Path:
    """The same tree as GTSRB_Final_Training_Images.zip (members GTSRB/Final_Training/...)."""
    return zip_tree(train_tree, tmp_path_factory.mktemp("zip") / "GTSRB_Final_Training_Images.zip")


@pytest.fixture(scope="module")
def packs(train_tree, train_zip, tmp_path_factory) -> dict:
    """The tree packed from the folder and from the zip (default options), and with roi=True."""
    out = tmp_path_factory.mktemp("packs")
    summaries = {
        "folder": pack([train_tree], out / "folder.h5"),
        "zip": pack([train_zip], out / "zip.h5"),
        "roi": pack([train_tree], out / "roi.h5", roi=True),
    }
    return {k: (s, s.path) for k, s in summaries.items()}


@pytest.fixture(scope="module")
def broken(train_tree, tmp_path_factory):
    """broken(name, mutate) -> a copy of the training folder with one thing broken by mutate(copy)."""
    base = tmp_path_factory.mktemp("broken")

    def make(name: str, mutate) -> Path:
        copy = base / name / "GTSRB"
        if not copy.exists():
            shutil.copytree(train_tree, copy)
            mutate(copy)
        return copy

    return make


def _class_dir(root: Path, cls: int) -> Path:
    return root / IMAGES / f"{cls:05d}"


def _ppm(root: Path, cls: int, track: int = 0, frame: int = 0) -> Path:
    return _class_dir(root, cls) / f"{track:05d}_{frame:05d}.ppm"


def _csv(root: Path, cls: int) -> Path:
    return _class_dir(root, cls) / f"GT-{cls:05d}.csv"


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _garbage(p: Path) -> None:
    p.write_bytes(b"\x00\xffnot an image at all" * 20)


def _set_class_id(csv_path: Path, row: int, class_id: int) -> None:
    lines = csv_path.read_text().splitlines(keepends=True)
    fields = lines[row].rstrip("\n").split(";")
    fields[-1] = str(class_id)
    lines[row] = ";".join(fields) + "\n"
    csv_path.write_text("".join(lines))


# --------------------------------------------------------------------------- 1. schema, zip == folder


def test_pack_from_zip_and_from_folder_give_identical_arrays(packs):
    a, b = load_pack(packs["folder"][1]), load_pack(packs["zip"][1])
    assert a.images.shape == (N_TRAIN, 28, 28, 3)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.tracks, b.tracks)
    np.testing.assert_array_equal(a.split, b.split)
    assert a.filenames == b.filenames
    assert a.images.std() > 10  # real pixels were decoded, not left as zeros


def test_pack_writes_the_documented_hdf5_schema(packs):
    with h5py.File(packs["folder"][1], "r") as f:
        assert f["images"].shape == (N_TRAIN, 28, 28, 3)
        assert f["images"].dtype == np.uint8
        for name in ("labels", "tracks", "filenames", "split"):
            assert f[name].shape == (N_TRAIN,), name
        assert np.issubdtype(f["labels"].dtype, np.integer)
        assert np.issubdtype(f["tracks"].dtype, np.integer)
        assert f["split"].dtype == np.uint8
        names = [s.decode() if isinstance(s, bytes) else s for s in f["class_names"][:]]
        assert names == list(CLASS_NAMES) and len(names) == 43
        attrs = dict(f.attrs)
    for key in ("source_sha256", "size", "seed", "split_kind", "gtsrb_version", "created", "layout"):
        assert key in attrs, key
    assert attrs["size"] == 28
    assert attrs["seed"] == 0
    assert attrs["split_kind"] == "track"
    assert attrs["layout"] == "train"
    assert attrs["gtsrb_version"] == gtsrb.__version__
    assert datetime.fromisoformat(attrs["created"]).tzinfo is not None


def test_pack_from_zip_records_the_sha256_of_the_zip_file(packs, train_zip):
    attrs = load_pack(packs["zip"][1]).attrs
    assert attrs["source_sha256"] == hashlib.sha256(train_zip.read_bytes()).hexdigest()


def test_packed_labels_tracks_and_filenames_follow_the_csvs(packs):
    p = load_pack(packs["folder"][1])
    assert len(p.filenames) == N_TRAIN
    for fname, label, track in zip(p.filenames, p.labels, p.tracks):
        m = re.fullmatch(r"(\d{5})/(\d{5})_(\d{5})\.ppm", fname)
        assert m, fname
        assert int(m[1]) == label and int(m[2]) == track
    assert sorted(set(p.labels.tolist())) == list(range(43))
    assert set(np.unique(p.split).tolist()) == {0, 1, 2}


def test_track_split_keeps_every_track_on_one_side(packs):
    p = load_pack(packs["folder"][1])
    sides = {}
    for label, track, code in zip(p.labels, p.tracks, p.split):
        sides.setdefault((int(label), int(track)), set()).add(int(code))
    assert all(len(s) == 1 for s in sides.values())


def test_summary_counts_match_the_pack(packs):
    summary, path = packs["folder"]
    p = load_pack(path)
    assert summary.layout == "train" and summary.num_classes == 43 and summary.skipped == 0
    assert summary.counts == {n: int((p.split == i).sum()) for i, n in enumerate(("train", "val", "test"))}
    assert [len(load_pack(path, split=s).labels) for s in ("train", "val", "test")] == list(summary.counts.values())


# --------------------------------------------------------------------------- 2. size and ROI


def test_cli_pack_with_size_32_makes_32x32_images(train_tree, tmp_path, capsys):
    out = tmp_path / "p32.h5"
    assert main(["pack", str(train_tree), "--out", str(out), "--size", "32"]) == 0
    assert f"packed {N_TRAIN} images" in capsys.readouterr().out
    p = load_pack(out)
    assert p.images.shape == (N_TRAIN, 32, 32, 3)
    assert p.attrs["size"] == 32


def test_roi_pack_crops_to_the_scaled_csv_roi(packs, train_tree):
    plain, cropped = load_pack(packs["folder"][1]), load_pack(packs["roi"][1])
    assert cropped.attrs["roi"] and not plain.attrs["roi"]
    assert not np.array_equal(plain.images, cropped.images)
    np.testing.assert_array_equal(plain.labels, cropped.labels)
    # The CSV states 64x64 and ROI 5,5..58,58 for a 32x32 file: the crop is scaled by 1/2.
    i = cropped.filenames.index("00007/00002_00001.ppm")
    img = Image.open(train_tree / IMAGES / "00007" / "00002_00001.ppm")
    expected = preprocess(img, 28, roi=(5, 5, 58, 58), stated_size=(64, 64))
    np.testing.assert_array_equal(cropped.images[i], expected)
    assert not np.array_equal(expected, preprocess(img, 28, roi=(5, 5, 58, 58)))  # unscaled would differ


def _two_colour_image() -> Image.Image:
    """32x32: pixels 8..23 (both axes) red, the rest blue."""
    a = np.zeros((32, 32, 3), np.uint8)
    a[...] = (0, 0, 255)
    a[8:24, 8:24] = (255, 0, 0)
    return Image.fromarray(a)


def test_preprocess_roi_in_stated_coordinates_is_scaled_to_the_actual_image():
    img = _two_colour_image()
    # In a stated 64x64 frame the red square is 16..47; the real file is 32x32.
    out = preprocess(img, 28, roi=(16, 16, 47, 47), stated_size=(64, 64))
    assert out.shape == (28, 28, 3) and out.dtype == np.uint8
    red = np.array([255, 0, 0])
    np.testing.assert_array_equal(out[1:-1, 1:-1], np.broadcast_to(red, (26, 26, 3)))
    # Bilinear support blends a little of the surround into the outermost ring only.
    assert (out[..., 0] > out[..., 2]).all()  # every pixel, border included, is mostly red
    assert np.abs(out.astype(int) - red).mean() < 10
    # Same crop as giving the ROI in the file's own coordinates.
    np.testing.assert_array_equal(out, preprocess(img, 28, roi=(8, 8, 23, 23)))
    # Without the ROI, the blue surround is kept.
    full = preprocess(img, 28)
    assert (full[..., 2] > 200).mean() > 0.5


# --------------------------------------------------------------------------- 3. atomic write


def _fail_after_images(monkeypatch):
    real = h5py.Group.create_dataset
    created = []

    def create_dataset(self, name, *args, **kwargs):
        if created:  # "images" went through; the next dataset fails
            raise OSError("disk full (simulated)")
        created.append(name)
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", create_dataset)
    return created


def test_failed_write_leaves_no_file_and_no_temp_file(train_tree, tmp_path, monkeypatch):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    created = _fail_after_images(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        pack([train_tree], out_dir / "gtsrb.h5")
    assert created == ["images"]  # it really failed midway
    assert list(out_dir.iterdir()) == []


def test_failed_write_leaves_an_existing_pack_untouched(packs, train_tree, tmp_path, monkeypatch):
    out = tmp_path / "gtsrb.h5"
    shutil.copy(packs["folder"][1], out)
    before = out.read_bytes()
    created = _fail_after_images(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        pack([train_tree], out, size=32)
    assert created == ["images"]
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gtsrb.h5"]
    monkeypatch.undo()
    assert load_pack(out).images.shape == (N_TRAIN, 28, 28, 3)


# --------------------------------------------------------------------------- 4. bad inputs


def _case_missing_path(tmp, broken):
    p = tmp / "does-not-exist.zip"
    return p, [str(p), "no such file"]


def _case_text_file(tmp, broken):
    p = tmp / "notes.txt"
    p.write_text("this is not an archive\n")
    return p, [str(p), "not a folder or a zip"]


def _case_folder_without_layout(tmp, broken):
    p = tmp / "random-folder"
    (p / "sub").mkdir(parents=True)
    (p / "sub" / "a.txt").write_text("x")
    (p / "b.ppm").write_bytes(b"P6 1 1 255\n\0\0\0")
    return p, [str(p), "not the official GTSRB layout"]


def _case_zip_without_layout(tmp, broken):
    p = tmp / "random.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("hello/readme.txt", "hi")
        z.writestr("img.ppm", b"P6 1 1 255\n\0\0\0")
    return p, [str(p), "not the official GTSRB layout"]


def _case_missing_csv(tmp, broken):
    root = broken("missing_csv", lambda r: _csv(r, 5).unlink())
    return root, [str(_csv(root, 5)), "missing CSV"]


def _case_missing_image(tmp, broken):
    root = broken("missing_image", lambda r: _ppm(r, 3, 4, 1).unlink())
    return root, [str(_ppm(root, 3, 4, 1)), "missing", "line"]


def _case_truncated_image(tmp, broken):
    root = broken("truncated", lambda r: _truncate(_ppm(r, 12, 2, 0)))
    return root, [str(_ppm(root, 12, 2, 0)), "truncated"]


def _case_corrupt_image(tmp, broken):
    root = broken("corrupt", lambda r: _garbage(_ppm(r, 20, 7, 2)))
    return root, [str(_ppm(root, 20, 7, 2)), "corrupt"]


def _case_class_id_out_of_range(tmp, broken):
    root = broken("classid", lambda r: _set_class_id(_csv(r, 9), 4, 43))
    return root, [str(_csv(root, 9)), "line 5", "ClassId 43", "outside 0-42"]


def _case_empty_class(tmp, broken):
    root = broken("empty_class", lambda r: _csv(r, 30).write_text("Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"))
    return root, [str(_csv(root, 30)), "empty"]


def _case_missing_class_folder(tmp, broken):
    root = broken("missing_class", lambda r: shutil.rmtree(_class_dir(r, 42)))
    return root, [str(root), "00042", "missing"]


BAD_INPUTS = {
    "path_does_not_exist": _case_missing_path,
    "text_file_is_neither_zip_nor_folder": _case_text_file,
    "folder_without_official_layout": _case_folder_without_layout,
    "zip_without_official_layout": _case_zip_without_layout,
    "class_folder_missing_its_csv": _case_missing_csv,
    "csv_row_whose_image_is_missing": _case_missing_image,
    "truncated_image": _case_truncated_image,
    "corrupt_image": _case_corrupt_image,
    "class_id_outside_0_42": _case_class_id_out_of_range,
    "empty_class_csv_header_only": _case_empty_class,
    "missing_class_folder": _case_missing_class_folder,
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_data_error_naming_file_and_problem(case, tmp_path, broken):
    src, expected = BAD_INPUTS[case](tmp_path, broken)
    out = tmp_path / "out" / "p.h5"
    with pytest.raises(DataError) as info:
        pack([src], out)
    msg = str(info.value)
    for part in expected:
        assert part in msg, (part, msg)
    assert not out.exists()


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_via_cli_exits_2_with_one_error_line(case, tmp_path, broken, capsys):
    src, expected = BAD_INPUTS[case](tmp_path, broken)
    out = tmp_path / "out" / "p.h5"
    assert main(["pack", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gtsrb: error: ")
    assert "Traceback" not in err
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert not out.exists()


# --------------------------------------------------------------------------- 5. --skip-bad


def _break_three(r: Path) -> None:
    _truncate(_ppm(r, 1, 0, 0))  # a bad image
    _ppm(r, 2, 5, 2).unlink()  # a CSV row whose image is missing
    _set_class_id(_csv(r, 4), 2, 99)  # a ClassId outside 0-42 (row of 00000_00001.ppm)


SKIPPED = {"00001/00000_00000.ppm", "00002/00005_00002.ppm", "00004/00000_00001.ppm"}


def test_skip_bad_skips_and_counts_bad_rows_and_images(broken, tmp_path):
    root = broken("three_bad", _break_three)
    with pytest.raises(DataError):
        pack([root], tmp_path / "strict.h5")
    summary = pack([root], tmp_path / "lenient.h5", skip_bad=True)
    assert summary.skipped == 3
    assert "skipped 3 bad" in str(summary)
    p = load_pack(tmp_path / "lenient.h5")
    assert p.attrs["skipped_bad"] == 3
    assert len(p.labels) == N_TRAIN - 3
    assert SKIPPED.isdisjoint(p.filenames)
    assert sum(summary.counts.values()) == N_TRAIN - 3
    assert sorted(set(p.labels.tolist())) == list(range(43))


def test_cli_skip_bad_packs_the_rest(broken, tmp_path, capsys):
    root = broken("three_bad", _break_three)
    out = tmp_path / "p.h5"
    assert main(["pack", str(root), "--out", str(out), "--skip-bad"]) == 0
    assert "skipped 3 bad" in capsys.readouterr().out
    p = load_pack(out)
    assert p.attrs["skipped_bad"] == 3 and len(p.labels) == N_TRAIN - 3


def test_clean_pack_records_zero_skipped(packs):
    assert load_pack(packs["folder"][1]).attrs["skipped_bad"] == 0


def _corrupt_member(zip_path: Path, member_suffix: str, out: Path) -> str:
    """A copy of ``zip_path`` with bytes inside one member's compressed data flipped."""
    data = bytearray(zip_path.read_bytes())
    with zipfile.ZipFile(zip_path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(member_suffix))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for k in range(start + 2, start + info.compress_size - 2):
        data[k] ^= 0x5A
    out.write_bytes(bytes(data))
    return info.filename


def test_corrupt_zip_member_is_a_data_error_naming_the_zip_and_member(train_zip, tmp_path):
    bad_zip = tmp_path / "GTSRB_Final_Training_Images.zip"
    member = _corrupt_member(train_zip, "00007/00003_00001.ppm", bad_zip)
    with pytest.raises(DataError, match="corrupt zip member") as e:
        pack([bad_zip], tmp_path / "strict.h5")
    assert f"{bad_zip}:{member}" in str(e.value)
    summary = pack([bad_zip], tmp_path / "lenient.h5", skip_bad=True)
    assert summary.skipped == 1
    assert "00007/00003_00001.ppm" not in load_pack(tmp_path / "lenient.h5").filenames


def _ppm_bytes(header: bytes, w: int, h: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return header + pixels.tobytes()


@pytest.mark.parametrize("header,w,h,depth", [
    (b"P6\n32 32\n255\n", 32, 32, 1),  # the fast path: GTSRB's header
    (b"P6 17 9 255 ", 17, 9, 1),
    (b"P6\r\n5\t3\r\n255\n", 5, 3, 1),
    (b"P6\n# Generated by OpenCV 4.2.0\n8 8\n255\n", 8, 8, 1),  # the fast path: a comment line
    (b"P6\n4 4\n65535\n", 4, 4, 2),  # PIL's path: 16-bit samples
    (b"P6\n4 3 # a comment after a value\n255\n", 4, 3, 1),
])
def test_ppm_decoding_gives_what_pil_gives(header, w, h, depth):
    data = _ppm_bytes(header, w * depth, h)
    ours, pil = decode(data, "x.ppm"), Image.open(io.BytesIO(data))
    assert np.array_equal(np.asarray(ours), np.asarray(pil.convert("RGB") if depth == 1 else pil))
    assert np.array_equal(preprocess(ours, 28), preprocess(Image.open(io.BytesIO(data)), 28))


def test_ppm_header_with_absurd_numbers_is_a_data_error_not_a_crash():
    data = b"P6 " + b"9" * 5000 + b" 1 255\n" + bytes(30)
    with pytest.raises(DataError, match="upload"):
        decode(data, "upload")


def _odd_shapes(r: Path) -> None:
    """Images of other shapes than the tree's 32x32, each a case of Pillow's resize."""
    shapes = {(1, 0, 0): (250, 2), (1, 0, 1): (2, 250), (2, 3, 0): (17, 50), (3, 1, 2): (101, 100), (4, 2, 1): (7, 5)}
    for (cls, track, frame), (h, w) in shapes.items():
        pixels = np.random.default_rng(cls).integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(_ppm(r, cls, track, frame), format="PPM")


def test_packed_pixels_are_preprocess_of_each_image(broken, tmp_path):
    """Packing, from a folder and from a zip, resizes exactly as ``preprocess`` does (so as
    inference does), on square, very tall, very wide and enlarged images."""
    root = broken("odd_shapes", _odd_shapes)
    zipped = zip_tree(root, tmp_path / "GTSRB_Final_Training_Images.zip")
    for source in (root, zipped):
        p = load_pack(pack([source], tmp_path / "p.h5").path)
        for i, name in enumerate(p.filenames):
            expected = preprocess(Image.open(root / IMAGES / name), 28)
            assert np.array_equal(p.images[i], expected), (source, name)
    assert {Image.open(_ppm(root, 1, 0, k)).size for k in (0, 1)} == {(2, 250), (250, 2)}


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_source_reads_zip_members_of_each_method_and_names_a_corrupt_one(method, tmp_path):
    from gtsrb.archive import Source

    path, payload = tmp_path / "m.zip", np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a/m.ppm", payload, compress_type=method)
    source = Source(path)
    assert source.read("a/m.ppm") == payload
    source.close()
    _corrupt_member(path, "a/m.ppm", tmp_path / "bad.zip")
    source = Source(tmp_path / "bad.zip")
    with pytest.raises(DataError, match="corrupt zip member") as e:
        source.read("a/m.ppm")
    assert f"{tmp_path / 'bad.zip'}:a/m.ppm" in str(e.value)
    source.close()


def test_keep_splits_keeps_exactly_those_rows_of_the_full_pack(train_tree, tmp_path, packs):
    summary = pack([train_tree], tmp_path / "trainval.h5", keep_splits=("train", "val"))
    full, part = load_pack(packs["folder"][1]), load_pack(tmp_path / "trainval.h5")
    rows = full.split != SPLIT_NAMES.index("test")
    for k in ("images", "labels", "tracks", "split", "filenames"):
        assert np.array_equal(np.asarray(getattr(full, k))[rows], np.asarray(getattr(part, k))), k
    assert summary.counts["test"] == 0 and summary.counts["train"] == int((full.split == 0).sum())


def test_compressed_pack_holds_the_same_arrays_and_is_smaller(train_tree, tmp_path, packs):
    pack([train_tree], tmp_path / "small.h5", compress=True)
    a, b = load_pack(packs["folder"][1]), load_pack(tmp_path / "small.h5")
    assert np.array_equal(a.images, b.images) and np.array_equal(a.split, b.split)
    with h5py.File(tmp_path / "small.h5") as f, h5py.File(packs["folder"][1]) as g:
        assert f["images"].compression == "gzip" and g["images"].compression is None


def test_short_ppm_is_a_truncated_image_error():
    data = _ppm_bytes(b"P6\n32 32\n255\n", 32, 32)[:-100]
    with pytest.raises(DataError, match="x.ppm.*truncated"):
        decode(data, "x.ppm")


# --------------------------------------------------------------------------- 6. official test layout


@pytest.fixture(scope="module")
def test_zips(tmp_path_factory):
    return make_official_test_zips(tmp_path_factory.mktemp("official"), n=86)


def _check_official_test_pack(path: Path) -> None:
    p = load_pack(path)
    assert p.attrs["layout"] == "test"
    assert p.attrs["split_kind"] == "official-test"
    assert len(p.labels) == 86
    assert (p.split == 2).all()
    assert (p.tracks == -1).all()
    np.testing.assert_array_equal(p.labels, np.arange(86) % 43)
    assert p.filenames[:2] == ["00000.ppm", "00001.ppm"]
    assert len(load_pack(path, split="test").labels) == 86
    assert len(load_pack(path, split="train").labels) == 0


def test_official_test_zips_pack_as_all_test(test_zips, tmp_path):
    summary = pack(list(test_zips), tmp_path / "t.h5")
    assert summary.layout == "test" and summary.counts == {"train": 0, "val": 0, "test": 86}
    _check_official_test_pack(tmp_path / "t.h5")


def test_official_test_folder_packs_like_the_zips(test_zips, tmp_path):
    root, _gt = make_test_tree(tmp_path / "tree", n=86)
    pack([root], tmp_path / "folder.h5")
    pack(list(test_zips), tmp_path / "zips.h5")
    _check_official_test_pack(tmp_path / "folder.h5")
    np.testing.assert_array_equal(load_pack(tmp_path / "folder.h5").images, load_pack(tmp_path / "zips.h5").images)


def test_official_test_images_zip_alone_is_an_error_naming_gt_csv(test_zips, tmp_path, capsys):
    images_zip, _ = test_zips
    with pytest.raises(DataError, match="GT-final_test.csv") as info:
        pack([images_zip], tmp_path / "t.h5")
    assert str(images_zip) in str(info.value)
    assert main(["pack", str(images_zip), "--out", str(tmp_path / "t.h5")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gtsrb: error: ") and "GT-final_test.csv" in err
    assert not (tmp_path / "t.h5").exists()



def test_every_zip_find_layout_opens_is_closed_after_with_and_on_its_own_error(test_zips, monkeypatch):
    from gtsrb import archive
    opened = []
    real_open = zipfile.ZipFile
    monkeypatch.setattr(archive.zipfile, "ZipFile", lambda *a, **k: opened.append(real_open(*a, **k)) or opened[-1])
    with archive.find_layout(list(test_zips)) as layout:
        assert layout.kind == "test" and all(z.fp is not None for z in opened)
    assert len(opened) == 2 and all(z.fp is None for z in opened)
    opened.clear()
    with pytest.raises(DataError, match="GT-final_test.csv"):  # the images zip alone: find_layout raises
        archive.find_layout([test_zips[0]])
    assert len(opened) == 1 and opened[0].fp is None

# --------------------------------------------------------------------------- 7. default source


def test_default_source_without_data_says_to_run_fetch(tmp_path, monkeypatch, capsys):
    cwd = tmp_path / "a" / "b"  # ../shared/gtsrb is looked up too: keep it inside tmp_path
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    with pytest.raises(DataError, match="gtsrb fetch"):
        default_source()
    assert main(["pack"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gtsrb: error: ") and "gtsrb fetch" in err
    assert not (cwd / "data").exists()


def test_default_source_finds_the_training_zip_in_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "GTSRB_Final_Training_Images.zip").write_bytes(b"")
    assert default_source() == Path("data") / "GTSRB_Final_Training_Images.zip"


# --------------------------------------------------------------------------- 8. load_pack errors


def test_load_pack_of_missing_file_names_it(tmp_path):
    p = tmp_path / "nope.h5"
    with pytest.raises(DataError) as info:
        load_pack(p)
    assert str(p) in str(info.value)


def test_load_pack_of_non_hdf5_file_names_it(tmp_path):
    p = tmp_path / "fake.h5"
    p.write_text("not hdf5\n" * 10)
    with pytest.raises(DataError) as info:
        load_pack(p)
    assert str(p) in str(info.value) and "HDF5" in str(info.value)


def test_load_pack_of_hdf5_without_the_schema_names_it(tmp_path):
    p = tmp_path / "other.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(DataError, match="not a gtsrb pack") as info:
        load_pack(p)
    assert str(p) in str(info.value)
