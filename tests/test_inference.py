"""gtsrb.inference: Classifier.load(...).predict(...) on any image, and safe checkpoints.

Checkpoints are built from freshly initialised models (no training).
"""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from fixtures import make_training_tree, sign_image  # noqa: E402
from gtsrb.checkpoint import CheckpointError, save_checkpoint  # noqa: E402
from gtsrb.classes import CLASS_NAMES  # noqa: E402
from gtsrb.cli import main  # noqa: E402
from gtsrb.archive import DataError  # noqa: E402
from gtsrb.data import load_pack, pack  # noqa: E402
from gtsrb.inference import Classifier  # noqa: E402
from gtsrb.model import PRESETS, build_model, to_float_images  # noqa: E402

STAGES = {"stage1": 64, "stage2": 128, "stage3": 256, "stage4": 512, "stage5": 512}


def _write_checkpoint(path: Path, preset: str, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = build_model(PRESETS[preset])
    save_checkpoint(
        {"model_config": PRESETS[preset].to_dict(), "model": model.state_dict(), "epoch": 0, "class_names": list(CLASS_NAMES)},
        path,
    )
    return path


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ckpt")


@pytest.fixture(scope="module")
def seed_ckpt(ckpt_dir) -> Path:
    return _write_checkpoint(ckpt_dir / "seed.pt", "seed")


@pytest.fixture(scope="module")
def clf(seed_ckpt) -> Classifier:
    return Classifier.load(seed_ckpt)


@pytest.fixture(scope="module")
def sign() -> np.ndarray:
    return sign_image(14, 3, 1, size=48)


# --------------------------------------------------------------------------- 1. loading


def test_load_returns_the_model_in_eval_mode_with_metadata(clf):
    assert clf.model.training is False
    assert all(not m.training for m in clf.model.modules())
    assert clf.config == PRESETS["seed"]
    assert clf.meta["epoch"] == 0 and clf.meta["class_names"] == list(CLASS_NAMES)
    assert "model" not in clf.meta
    assert clf.se_names == list(STAGES)


def test_loaded_weights_are_the_saved_ones(seed_ckpt, clf):
    torch.manual_seed(0)
    original = build_model(PRESETS["seed"]).state_dict()
    loaded = clf.model.state_dict()
    assert set(original) == set(loaded)
    assert all(torch.equal(original[k], loaded[k]) for k in original)


def test_loading_a_missing_checkpoint_names_it(tmp_path):
    p = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match=re.escape(str(p))):
        Classifier.load(p)


# --------------------------------------------------------------------------- 2. every image mode


def _palette(sign: np.ndarray, transparency: bool) -> Image.Image:
    img = Image.fromarray(sign).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    if transparency:
        img.info["transparency"] = 0
    return img


def _animated_gif(sign: np.ndarray) -> Image.Image:
    buf = io.BytesIO()
    frames = [Image.fromarray(sign), Image.fromarray(255 - sign)]
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    img = Image.open(io.BytesIO(buf.getvalue()))
    assert img.is_animated and img.n_frames == 2
    return img


def _png16_file(tmp: Path, sign: np.ndarray) -> Path:
    p = tmp / "gray16.png"
    Image.fromarray(sign[..., 0].astype(np.uint16) * 257).save(p)
    assert Image.open(p).mode in ("I;16", "I")
    return p


def _palette_png_file(tmp: Path, sign: np.ndarray) -> Path:
    p = tmp / "palette.png"
    _palette(sign, transparency=False).save(p)
    assert Image.open(p).mode == "P"
    return p


def _i16(sign: np.ndarray) -> Image.Image:
    img = Image.fromarray(sign[..., 0].astype(np.uint16) * 257)
    assert img.mode == "I;16"
    return img


IMAGE_INPUTS = {
    "RGB": lambda s, t: Image.fromarray(s),
    "RGBA": lambda s, t: Image.fromarray(np.dstack([s, np.full(s.shape[:2], 200, np.uint8)])),
    "LA": lambda s, t: Image.fromarray(s).convert("LA"),
    "L": lambda s, t: Image.fromarray(s).convert("L"),
    "1": lambda s, t: Image.fromarray(s).convert("1"),
    "P": lambda s, t: _palette(s, transparency=False),
    "P_with_transparency": lambda s, t: _palette(s, transparency=True),
    "I;16": lambda s, t: _i16(s),
    "I": lambda s, t: Image.fromarray(s).convert("I"),
    "F": lambda s, t: Image.fromarray(s).convert("F"),
    "CMYK": lambda s, t: Image.fromarray(s).convert("CMYK"),
    "YCbCr": lambda s, t: Image.fromarray(s).convert("YCbCr"),
    "animated_gif": lambda s, t: _animated_gif(s),
    "png16_file": lambda s, t: _png16_file(t, s),
    "palette_png_file": lambda s, t: _palette_png_file(t, s),
    "png_file_as_str": lambda s, t: str(_palette_png_file(t, s)),
    "large_3000x2000": lambda s, t: Image.fromarray(s).resize((3000, 2000)),
    "1x1": lambda s, t: Image.new("RGB", (1, 1), (200, 30, 30)),
    "encoded_bytes": lambda s, t: _png_bytes(s),
    "array_uint8_hw3": lambda s, t: s.copy(),
    "array_uint8_hw4": lambda s, t: np.dstack([s, np.full(s.shape[:2], 255, np.uint8)]),
    "array_uint8_hw": lambda s, t: s[..., 0].copy(),
    "array_uint16_hw": lambda s, t: s[..., 0].astype(np.uint16) * 257,
    "array_float32_01": lambda s, t: s.astype(np.float32) / 255,
    "array_bool": lambda s, t: s[..., 0] > 100,
}


def _png_bytes(s: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(s).save(buf, format="PNG")
    return buf.getvalue()


def _check_prediction(pred) -> None:
    assert pred.probs.shape == (1, 43)
    assert np.isfinite(pred.probs).all()
    assert pred.probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert (pred.probs >= 0).all()
    assert list(pred.excitations) == list(STAGES)
    for name, channels in STAGES.items():
        e = pred.excitations[name]
        assert e.shape == (1, channels), name
        assert ((e > 0) & (e < 1)).all(), name  # sigmoid gates


@pytest.mark.parametrize("kind", list(IMAGE_INPUTS))
def test_predict_any_image_mode_gives_probs_and_one_excitation_per_se_stage(kind, clf, sign, tmp_path):
    image = IMAGE_INPUTS[kind](sign, tmp_path)
    x = clf.preprocess(image)
    assert x.shape == (1, 28, 28, 3) and x.dtype == np.uint8
    _check_prediction(clf.predict(image))


def test_predict_a_batch_gives_one_row_per_image(clf, sign):
    pred = clf.predict([Image.fromarray(sign), sign, sign[..., 0]])
    assert pred.probs.shape == (3, 43)
    assert {k: v.shape for k, v in pred.excitations.items()} == {k: (3, c) for k, c in STAGES.items()}
    np.testing.assert_allclose(pred.probs[0], pred.probs[1], atol=1e-6)  # same pixels, same answer


def test_animated_gif_uses_its_first_frame(clf, sign):
    gif = _animated_gif(sign)
    gif.seek(1)  # even when positioned on a later frame
    first = Image.open(io.BytesIO(_gif_single(sign)))
    np.testing.assert_array_equal(clf.preprocess(gif), clf.preprocess(first))
    second = Image.fromarray(255 - sign)
    assert not np.array_equal(clf.preprocess(gif), clf.preprocess(second))


def _gif_single(sign: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(sign).save(buf, format="GIF")
    return buf.getvalue()


def test_transparent_pixels_become_gray_not_black(clf):
    rgba = np.zeros((28, 28, 4), np.uint8)  # fully transparent black
    x = clf.preprocess(Image.fromarray(rgba, "RGBA"))
    assert (x == 128).all()


def test_sixteen_bit_images_are_scaled_to_eight_bits(clf, sign):
    eight = clf.preprocess(Image.fromarray(sign[..., 0]))
    sixteen = clf.preprocess(sign[..., 0].astype(np.uint16) * 257)
    np.testing.assert_array_equal(eight, sixteen)


def test_predict_missing_file_names_it(clf, tmp_path):
    p = tmp_path / "no-such-sign.png"
    with pytest.raises(DataError, match=re.escape(str(p))):
        clf.predict(p)
    with pytest.raises(DataError, match=re.escape(str(p))):
        clf.predict(str(p))


def test_predict_corrupt_file_names_it(clf, tmp_path):
    p = tmp_path / "broken.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 30)
    with pytest.raises(DataError, match=re.escape(str(p))) as info:
        clf.predict(p)
    assert "corrupt" in str(info.value)


# --------------------------------------------------------------------------- 3. same preprocessing as packing


@pytest.fixture(scope="module")
def packed_tree(tmp_path_factory):
    root = make_training_tree(tmp_path_factory.mktemp("tree"), tracks=5, frames=2)
    out = tmp_path_factory.mktemp("pack") / "p.h5"
    pack([root], out, roi=False)
    return root, load_pack(out)


def test_classifier_preprocess_equals_packed_images_byte_for_byte(clf, packed_tree):
    root, p = packed_tree
    assert clf.config.image_size == p.images.shape[1] == 28
    idx = list(range(0, len(p.filenames), 7))
    paths = [root / "Final_Training" / "Images" / p.filenames[i] for i in idx]
    x = clf.preprocess(paths)
    assert x.dtype == np.uint8
    np.testing.assert_array_equal(x, p.images[idx])
    # One image at a time, as a str path, too.
    np.testing.assert_array_equal(clf.preprocess(str(paths[3]))[0], p.images[idx[3]])


# --------------------------------------------------------------------------- 4. plain VGG-11


def test_vgg11_preset_has_no_excitations_and_still_predicts(ckpt_dir, sign):
    plain = Classifier.load(_write_checkpoint(ckpt_dir / "vgg11.pt", "vgg11"))
    assert plain.se_names == []
    pred = plain.predict(sign)
    assert pred.excitations == {}
    assert pred.probs.shape == (1, 43)
    assert pred.probs.sum() == pytest.approx(1.0, abs=1e-5)
    with plain.se_disabled():  # a no-op without SE blocks
        np.testing.assert_allclose(plain.predict(sign).probs, pred.probs, atol=1e-6)


# --------------------------------------------------------------------------- 5. SE off


def test_se_disabled_changes_the_output_and_restores_it_afterwards(clf, sign):
    x = to_float_images(torch.from_numpy(clf.preprocess([sign, 255 - sign])))
    m = clf.model
    hooks = [len(b._forward_hooks) for _, b in m.se_blocks()]

    def run():  # logits, and the features before the classifier (whose bias dominates untrained logits)
        return m(x), m.features((x - m.mean) / m.std)

    with torch.no_grad():
        before, feat_before = run()
        with clf.se_disabled():
            off, feat_off = run()
            off_pred = clf.predict([sign, 255 - sign])
        after, feat_after = run()
    # scale_shift SE is not the identity: switching it off changes features and logits.
    assert (feat_off - feat_before).abs().max() > 0.1 * feat_before.abs().max()
    assert not torch.allclose(off, before, rtol=0, atol=1e-6)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    torch.testing.assert_close(feat_after, feat_before, rtol=0, atol=1e-6)
    np.testing.assert_allclose(off_pred.probs, torch.softmax(off, 1).numpy(), atol=1e-6)
    assert [len(b._forward_hooks) for _, b in m.se_blocks()] == hooks  # nothing added per call


def test_se_disabled_blocks_nest_and_predictions_then_carry_no_excitations(clf, sign):
    on = clf.predict(sign)
    with clf.se_disabled():
        off = clf.predict(sign)
        with clf.se_disabled():
            pass
        still_off = clf.predict(sign)
    assert off.excitations == {} and still_off.excitations == {}
    np.testing.assert_allclose(still_off.probs, off.probs, atol=1e-7)
    assert not np.allclose(off.probs, on.probs, atol=1e-6)
    np.testing.assert_allclose(clf.predict(sign).probs, on.probs, atol=1e-7)


def test_se_disabled_switches_off_only_the_named_blocks(clf, sign):
    names = clf.se_names
    assert len(names) >= 2
    on = clf.predict(sign)
    with clf.se_disabled(names[:1]):
        one = clf.predict(sign)
    with clf.se_disabled(names):
        every = clf.predict(sign)
    with clf.se_disabled([]):
        none = clf.predict(sign)
    # the switched-off block has no excitation; the others still report theirs
    assert sorted(one.excitations) == sorted(names[1:])
    np.testing.assert_allclose(none.probs, on.probs, atol=1e-7)
    m, x = clf.model, to_float_images(torch.from_numpy(clf.preprocess(sign)))

    def features(off):  # before the classifier, whose bias dominates an untrained network's logits
        with torch.no_grad(), clf.se_disabled(off):
            return m.features(m.normalise(x))

    f_on, f_one, f_every = features([]), features(names[:1]), features(names)
    assert (f_one - f_on).abs().max() > 0.1 * f_on.abs().max()
    assert (f_one - f_every).abs().max() > 0.1 * f_on.abs().max()
    with clf.se_disabled():  # no argument: every block, as before
        np.testing.assert_allclose(clf.predict(sign).probs, every.probs, atol=1e-7)
    with pytest.raises(ValueError, match="no SE block named stage9"):
        with clf.se_disabled(["stage9"]):
            pass


def test_se_held_fixes_each_named_gate_and_keeps_its_scale(ckpt_dir, sign):
    """Holding a gate at a constant removes only the per-image recalibration: held at 1 the paper's
    gate form is the identity (SE off); held at the very values an image produces, that image's answer
    is unchanged; a constant that differs changes it, and only within the block."""
    import dataclasses

    config = dataclasses.replace(PRESETS["seed"], se_form="gate", se_position="post_act")
    torch.manual_seed(0)
    path = ckpt_dir / "gate.pt"
    save_checkpoint({"model_config": config.to_dict(), "model": build_model(config).state_dict(), "epoch": 0}, path)
    clf = Classifier.load(path)
    names = clf.se_names
    images = clf.preprocess([sign, 255 - sign])
    on = clf.predict_arrays(images)
    ones = {n: np.ones(on.excitations[n].shape[1]) for n in names}
    with clf.se_held(ones):
        held_at_one = clf.predict_arrays(images)
    with clf.se_disabled():
        off = clf.predict_arrays(images)
    np.testing.assert_allclose(held_at_one.logits, off.logits, atol=1e-5)
    assert all(np.all(held_at_one.excitations[n] == 1) for n in names)  # what was used is what is reported
    first = clf.predict_arrays(images[:1])
    with clf.se_held({n: first.excitations[n][0] for n in names}):
        np.testing.assert_allclose(clf.predict_arrays(images[:1]).logits, first.logits, atol=1e-5)
    m, x = clf.model, to_float_images(torch.from_numpy(images))

    def features(gates):  # before the classifier, whose bias dominates an untrained network's logits
        with torch.no_grad(), clf.se_held(gates):
            return m.features(m.normalise(x))

    f_on = features({})
    first_at_one = {names[0]: ones[names[0]]}  # one block held (about twice its scale), the others per image
    assert (features(first_at_one) - f_on).abs().max() > 0.1 * f_on.abs().max()
    with clf.se_held(first_at_one):
        one = clf.predict_arrays(images)
    assert np.all(one.excitations[names[0]] == 1)
    assert not np.array_equal(one.excitations[names[1]][0], one.excitations[names[1]][1])
    np.testing.assert_allclose(clf.predict_arrays(images).logits, on.logits, atol=1e-6)  # restored
    with pytest.raises(ValueError, match=f"{names[0]}: 3 gate values, the block has"):
        with clf.se_held({names[0]: np.ones(3)}):
            pass
    with pytest.raises(ValueError, match="no SE block named stage9"):
        with clf.se_held({"stage9": np.ones(3)}):
            pass


def test_predict_with_gradcam_is_predict_plus_gradcam_in_one_pass(clf, sign):
    from gtsrb.explain import gradcam, gradcam_layer

    array = clf.preprocess(sign)
    _, layer = gradcam_layer(clf.model)
    pred, cam = clf.predict_with_gradcam(array, layer)
    plain = clf.predict_arrays(array)
    np.testing.assert_allclose(pred.logits, plain.logits, atol=1e-5)
    np.testing.assert_allclose(pred.probs, plain.probs, atol=1e-6)
    assert sorted(pred.excitations) == sorted(plain.excitations)
    for name in plain.excitations:
        np.testing.assert_allclose(pred.excitations[name], plain.excitations[name], atol=1e-6)
    np.testing.assert_allclose(cam, gradcam(clf.model, array[0], int(plain.probs[0].argmax()), layer), atol=1e-6)


def test_logits_and_probabilities_agree(clf, sign):
    pred = clf.predict([sign, 255 - sign])
    np.testing.assert_allclose(pred.probs, torch.softmax(torch.from_numpy(pred.logits), 1).numpy(), atol=1e-6)


def test_concurrent_requests_keep_their_se_switches_apart(clf, sign):
    """Threads sharing one Classifier: each sees only its own se_disabled() set and excitations."""
    import threading

    names = clf.se_names
    expected = {}
    for k in range(len(names) + 1):
        with clf.se_disabled(names[:k]):
            expected[k] = clf.predict(sign)
    errors: list[str] = []

    def worker(k: int) -> None:
        for _ in range(20):
            with clf.se_disabled(names[:k]):
                got = clf.predict(sign)
            if not np.allclose(got.probs, expected[k].probs, atol=1e-6) or sorted(got.excitations) != sorted(names[k:]):
                errors.append(f"thread {k}: another request's SE switches leaked in")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(names) + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


# --------------------------------------------------------------------------- 6. no pickled code


class _WritesMarker:
    """Unpickling this opens (creates) a file: code that a checkpoint must never run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    torch.manual_seed(0)
    model = build_model(PRESETS["vgg11"])
    torch.save(
        {"model_config": PRESETS["vgg11"].to_dict(), "model": model.state_dict(), "epoch": 0, "payload": _WritesMarker(marker)},
        path,
    )
    return path


def test_checkpoint_with_pickled_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(CheckpointError) as info:
        Classifier.load(evil)
    assert str(evil) in str(info.value) and "refused" in str(info.value)
    assert not marker.exists()
    # The payload is real: an unsafe load would have run it.
    control_marker = tmp_path / "control"
    control = _evil_checkpoint(tmp_path / "control.pt", control_marker)
    torch.load(control, weights_only=False)
    assert control_marker.exists()


def test_cli_predict_with_pickled_checkpoint_exits_2_with_one_line(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    img = tmp_path / "sign.png"
    Image.fromarray(sign_image(1, 0, 0)).save(img)
    assert main(["predict", str(evil), str(img)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gtsrb: error: ") and str(evil) in lines[0]
    assert not marker.exists()


# --------------------------------------------------------------------------- 7. CLI predict


def test_cli_predict_top_3_prints_three_official_class_names(seed_ckpt, clf, tmp_path, capsys):
    img = tmp_path / "sign.ppm"
    Image.fromarray(sign_image(14, 0, 0)).save(img)
    assert main(["predict", str(seed_ckpt), str(img), "--top", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == str(img)
    rows = lines[1:]
    assert len(rows) == 3
    parsed = [re.fullmatch(r"\s*(\d+)\s+([0-9.]+)\s+(.+)", r) for r in rows]
    assert all(parsed), rows
    ids = [int(m[1]) for m in parsed]
    assert [m[3] for m in parsed] == [CLASS_NAMES[i] for i in ids]
    probs = [float(m[2]) for m in parsed]
    assert probs == sorted(probs, reverse=True)
    assert ids == [c for c, _, _ in clf.predict(img).top(3)]


def test_cli_predict_json_lists_top_k(seed_ckpt, tmp_path, capsys):
    img = tmp_path / "sign.png"
    Image.fromarray(sign_image(3, 0, 0)).save(img)
    assert main(["predict", str(seed_ckpt), str(img), "--top", "2", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["image"] == str(img)
    assert len(result["top"]) == 2
    assert all(t["name"] == CLASS_NAMES[t["class_id"]] for t in result["top"])


def test_cli_predict_missing_image_exits_2_naming_it(seed_ckpt, tmp_path, capsys):
    img = tmp_path / "missing.png"
    assert main(["predict", str(seed_ckpt), str(img)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gtsrb: error: ") and str(img) in err and len(err.strip().splitlines()) == 1


def test_predictions_are_the_models_own_eval_forward_and_gates(clf, sign):
    """No second definition: the probabilities are softmax(model(x)) of the eval-mode model, and each
    stage's excitation is that SE block's gate output, computed here by hand from its input."""
    array = clf.preprocess(sign)
    pred = clf.predict_arrays(array)
    x = to_float_images(torch.from_numpy(array))
    inputs = {}
    handles = [b.register_forward_hook(lambda m, i, o, n=n: inputs.__setitem__(n, i[0])) for n, b in clf.model.se_blocks()]
    with torch.no_grad():
        logits = clf.model(x)
    for h in handles:
        h.remove()
    np.testing.assert_allclose(pred.probs, torch.softmax(logits, 1).numpy(), rtol=0, atol=1e-6)
    for name, block in clf.model.se_blocks():
        with torch.no_grad():
            s = block.fc2(block.act(block.fc1(inputs[name].mean((2, 3), keepdim=True))))
            w = s.chunk(2, dim=1)[0] if block.form == "scale_shift" else s
        np.testing.assert_allclose(pred.excitations[name], torch.sigmoid(w).flatten(1).numpy(), rtol=0, atol=1e-6)
    assert not clf.model.training


def test_an_injected_gate_reaches_the_predictions(seed_ckpt, sign):
    """What the removed inference engine ignored: the model as it is, whatever its SE block holds."""
    base = Classifier.load(seed_ckpt)
    model = Classifier.load(seed_ckpt).model
    name, block = model.se_blocks()[0]
    block.gate = torch.nn.Hardsigmoid()
    changed = Classifier(model, {})
    a, b = base.predict(sign), changed.predict(sign)
    assert np.abs(a.excitations[name] - b.excitations[name]).max() > 1e-3
    assert np.abs(a.probs - b.probs).max() > 0


def test_concurrent_requests_keep_their_excitations_and_se_off_apart(clf, sign):
    """Many threads share one Classifier, half of them with SE off: each gets its own answer."""
    from concurrent.futures import ThreadPoolExecutor

    on = clf.predict(sign)
    with clf.se_disabled():
        off = clf.predict(sign)
    assert np.abs(on.probs - off.probs).max() > 0 and off.excitations == {}

    def request(i):
        if i % 2:
            with clf.se_disabled():
                return i, clf.predict(sign)
        return i, clf.predict(sign)

    with ThreadPoolExecutor(8) as pool:
        for i, pred in pool.map(request, range(32)):
            want = off if i % 2 else on
            np.testing.assert_allclose(pred.probs, want.probs, rtol=0, atol=1e-6)
            assert pred.excitations.keys() == want.excitations.keys()
            for k in want.excitations:
                np.testing.assert_allclose(pred.excitations[k], want.excitations[k], rtol=0, atol=1e-6)
