"""On the real archive in ../shared/gtsrb/ (skipped where it is absent)."""

import json
from pathlib import Path

import numpy as np
import pytest

from gtsrb.data import load_pack, pack

pytestmark = pytest.mark.slow  # the real archive, 39,209 images

REAL_SHA256 = "34f8f28c23a9dcc8d767706d679216b8d03fd6bab10030ee25a5bdb5c167a15b"


@pytest.fixture(scope="module")
def real_pack(real_zip, tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "gtsrb28.h5"
    summary = pack([real_zip], out)
    return out, summary


def test_real_zip_packs_all_39209_images_of_43_classes(real_pack):
    out, summary = real_pack
    p = load_pack(out)
    assert p.images.shape == (39209, 28, 28, 3) and p.images.dtype == np.uint8
    assert summary.num_classes == 43 and sorted(set(p.labels.tolist())) == list(range(43))
    assert p.attrs["source_sha256"] == REAL_SHA256
    # the 32x32 copy is not blank or saturated
    assert 40 < p.images.mean() < 140


def test_real_pack_is_pil_preprocess_of_every_image_bit_for_bit(real_pack, real_zip):
    """The pack path (its own PPM parser beside Pillow) changes no pixel: every packed image
    equals PIL decoding the member and ``preprocess`` resizing it."""
    import io
    import zipfile

    from PIL import Image

    from gtsrb.preprocess import preprocess

    p = load_pack(real_pack[0])
    with zipfile.ZipFile(real_zip) as z:
        member = {n.split("/Images/")[1]: n for n in z.namelist() if n.endswith(".ppm")}
        differ = [
            f for i, f in enumerate(p.filenames)
            if not np.array_equal(p.images[i], preprocess(Image.open(io.BytesIO(z.read(member[f]))), 28))
        ]
    assert len(p.filenames) == 39209 and differ == []


def test_real_track_split_is_grouped_stratified_and_64_16_20(real_pack):
    out, summary = real_pack
    p = load_pack(out)
    codes = p.split
    assert summary.counts == {"train": 25079, "val": 6270, "test": 7860}
    np.testing.assert_allclose(np.bincount(codes) / len(codes), [0.64, 0.16, 0.20], atol=0.005)
    groups = p.labels * 100_000 + p.tracks
    sides_per_track = {g: set() for g in np.unique(groups)}
    for g, c in zip(groups, codes):
        sides_per_track[g].add(int(c))
    assert len(sides_per_track) == 1307
    assert all(len(s) == 1 for s in sides_per_track.values()), "a track lies on two sides"
    overall = np.bincount(p.labels, minlength=43) / len(p.labels)
    for s in range(3):
        part = np.bincount(p.labels[codes == s], minlength=43) / (codes == s).sum()
        assert np.abs(part - overall).max() < 0.02


# --------------------------------------------------------------------------- the committed best model

BEST = Path(__file__).resolve().parents[1] / "results" / "best"


def test_committed_checkpoint_is_small_safe_and_named_in_the_readme():
    from gtsrb.checkpoint import load_checkpoint
    from gtsrb.util import sha256_file
    from gtsrb.explain import load_excitations

    ckpt = BEST / "best.pt"
    assert ckpt.stat().st_size <= 20e6
    state = load_checkpoint(ckpt)  # weights_only=True inside
    assert set(state) >= {"model", "model_config"} and "optimizer" not in state
    sha = sha256_file(ckpt)
    readme = (BEST.parents[1] / "README.md").read_text()
    assert sha in readme, "README's sha256 of results/best/best.pt is stale: run `make report`"
    _, meta = load_excitations(BEST / "excitations.npz")
    assert meta["checkpoint_sha256"] == sha
    release = json.loads((BEST / "metrics.json").read_text())["release"]
    assert release["bytes"] == ckpt.stat().st_size
    assert abs(release["accuracy_fp32"] - release["accuracy_fp16"]) < 0.0005


def test_the_release_model_reproduces_its_accuracy_on_the_whole_pack(real_zip, tmp_path):
    """results/best/best.pt trained on every image of a ROI pack: re-made here from the real archive, it
    predicts that pack with the accuracy its metrics.json records (all seen in training: a check of the
    file and the pipeline, not a held-out figure; results/best/split/metrics.json holds that one)."""
    from gtsrb.inference import Classifier

    path = tmp_path / "gtsrb28-roi.h5"
    pack([real_zip], path, roi=True)
    packed = load_pack(path)
    pred = Classifier.load(BEST / "best.pt").predict_arrays(packed.images).probs.argmax(1)
    release = json.loads((BEST / "metrics.json").read_text())["release"]
    assert len(pred) == release["n"] == 39209
    assert float(np.mean(pred == packed.labels)) == pytest.approx(release["accuracy_fp16"], abs=1e-12)
    split = json.loads((BEST / "split" / "metrics.json").read_text())["test"]
    assert split["n"] == 7860 and split["accuracy"] > 0.98
