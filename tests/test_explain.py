"""gtsrb.explain: class-average excitations, specificity, Grad-CAM."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from gtsrb.checkpoint import save_checkpoint  # noqa: E402
from gtsrb.classes import CLASS_NAMES  # noqa: E402
from gtsrb.cli import main  # noqa: E402
from gtsrb.archive import DataError  # noqa: E402
from gtsrb.data import load_pack  # noqa: E402
from gtsrb.util import sha256_file  # noqa: E402
from gtsrb.evaluate import compute_excitations_file  # noqa: E402
from gtsrb.explain import (  # noqa: E402
    class_excitations, constant_gates, distance_block, gradcam, gradcam_layer, load_excitations, save_excitations,
    se_counterfactuals, se_hidden_fired,
)
from gtsrb.inference import Classifier  # noqa: E402
from gtsrb.model import PRESETS, ModelConfig, build_model  # noqa: E402

TINY = ModelConfig(cfg=(16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128, "M"))  # seed's layout, narrow


def _checkpoint(path: Path, preset: str = "seed") -> Path:
    torch.manual_seed(0)
    model = build_model(PRESETS[preset])
    save_checkpoint({"model_config": PRESETS[preset].to_dict(), "model": model.state_dict(), "epoch": 0,
                     "class_names": list(CLASS_NAMES)}, path)
    return path


# --------------------------------------------------------------------------- class averages and specificity

def test_class_excitations_match_a_direct_computation():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 200)
    e = rng.random((200, 8)) + labels[:, None] * 0.1
    stats = class_excitations({"stage1": e}, labels, num_classes=6)["stage1"]
    for c in range(5):
        np.testing.assert_allclose(stats["class_mean"][c], e[labels == c].mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["class_mean"][5], 0)  # an absent class: zeros, count 0
    assert stats["count"][5] == 0
    np.testing.assert_allclose(stats["overall_mean"], e.mean(0), rtol=1e-5)
    # eta^2 by its definition: between-class over total sum of squares, pooled over channels
    total = ((e - e.mean(0)) ** 2).sum()
    within = sum(((e[labels == c] - e[labels == c].mean(0)) ** 2).sum() for c in range(5))
    assert stats["specificity"] == pytest.approx(1 - within / total, rel=1e-9)


def test_specificity_is_zero_for_class_agnostic_and_one_for_class_determined_gates():
    labels = np.repeat(np.arange(4), 10)
    agnostic = np.tile(np.random.default_rng(1).random((10, 3)), (4, 1))  # same spread in every class
    determined = np.eye(4)[labels]
    s = class_excitations({"a": agnostic, "d": determined}, labels, 4)
    assert s["a"]["specificity"] == pytest.approx(0.0, abs=1e-12)
    assert s["d"]["specificity"] == pytest.approx(1.0)


def test_the_distance_rule_reads_the_deepest_block_whose_class_averages_differ():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    alive = rng.random((60, 4)) + labels[:, None] * 0.1
    dead = np.full((60, 8), 0.5)  # a dead block: sigmoid(0) for every image (the release model's stage 4)
    stats = class_excitations({"stage1": alive, "stage2": alive * 0.5, "stage3": dead}, labels, num_classes=5)
    assert stats["stage3"]["count"][4] == 0  # an absent class (average 0) does not make a dead block look alive
    assert distance_block(stats) == "stage2"
    assert distance_block({"stage3": stats["stage3"]}) is None
    assert distance_block({}) is None


def test_excitations_file_round_trip_and_bad_file(tmp_path):
    labels = np.arange(43).repeat(2)
    stats = class_excitations({"stage1": np.random.default_rng(0).random((86, 64))}, labels, 43)
    f = tmp_path / "excitations.npz"
    save_excitations(stats, f, "abc", "unit test")
    back, meta = load_excitations(f)
    assert meta == {"checkpoint_sha256": "abc", "source": "unit test"}
    np.testing.assert_array_equal(back["stage1"]["class_mean"], stats["stage1"]["class_mean"])
    assert back["stage1"]["specificity"] == pytest.approx(stats["stage1"]["specificity"])
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left no temp file
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="bad.npz"):
        load_excitations(bad)


def test_excitations_command_writes_the_file_beside_the_checkpoint(tmp_path, synthetic_pack, capsys):
    ckpt = _checkpoint(tmp_path / "best.pt")
    assert main(["excitations", str(ckpt), "--data", str(synthetic_pack), "--split", "val"]) == 0
    stats, meta = load_excitations(tmp_path / "excitations.npz")
    assert meta["checkpoint_sha256"] == sha256_file(ckpt)
    assert set(stats) == {f"stage{i}" for i in range(1, 6)}
    val = load_pack(synthetic_pack, "val")
    # the class means are those of the classifier's own (fp32) excitations on the val split
    pred = Classifier.load(ckpt).predict_arrays(val.images)
    c = int(val.labels[0])
    np.testing.assert_allclose(stats["stage3"]["class_mean"][c],
                               pred.excitations["stage3"][val.labels == c].mean(0), atol=1e-5)
    assert "specificity" in capsys.readouterr().out


def test_excitations_of_a_model_without_se_is_a_clear_error(tmp_path, synthetic_pack):
    ckpt = _checkpoint(tmp_path / "plain.pt", "vgg11")
    with pytest.raises(DataError, match="no SE block"):
        compute_excitations_file(ckpt, synthetic_pack)


# --------------------------------------------------------------------------- what the SE blocks contribute

def _tiny_with_a_dead_block(path: Path) -> tuple[Classifier, str, int]:
    """A tiny SE net whose last block's first 1x1 layer is zero, so its hidden ReLUs never fire and its
    gate is sigmoid(0) = 0.5 for every image -> (classifier, that block's name, its hidden width)."""
    torch.manual_seed(0)
    model = build_model(TINY)
    name, block = model.se_blocks()[-1]
    with torch.no_grad():
        block.fc1.weight.zero_()
    save_checkpoint({"model_config": TINY.to_dict(), "model": model.state_dict(), "epoch": 0}, path)
    return Classifier.load(path), name, block.fc1.out_channels


def test_se_hidden_fired_counts_units_per_block_and_finds_a_dead_one(tmp_path, synthetic_pack):
    clf, dead, width = _tiny_with_a_dead_block(tmp_path / "tiny.pt")
    images = load_pack(synthetic_pack, "val").images
    fired, pred = se_hidden_fired(clf, images)
    assert list(fired) == clf.se_names  # every block, in depth order
    assert fired[dead] == [0, width]
    widths = {name: b.fc1.out_channels for name, b in clf.model.se_blocks()}
    for name, (n, total) in fired.items():
        assert total == widths[name] and 0 <= n <= total
        if name != dead:
            assert n > 0, name  # a random init fires on some of these images
    # the same pass's prediction, and no hook left behind
    np.testing.assert_allclose(pred.probs, clf.predict_arrays(images).probs, rtol=1e-5, atol=1e-6)
    assert set(pred.excitations) == set(clf.se_names)
    assert not any(b.act._forward_hooks for _, b in clf.model.se_blocks())
    np.testing.assert_allclose(pred.excitations[dead], 0.5)


def test_se_counterfactuals_match_the_classifiers_switches(tmp_path, synthetic_pack):
    clf, dead, _ = _tiny_with_a_dead_block(tmp_path / "tiny.pt")
    val, test = load_pack(synthetic_pack, "val"), load_pack(synthetic_pack, "test")
    gates = {name: g.mean(0) for name, g in clf.predict_arrays(val.images).excitations.items()}
    on = clf.predict_arrays(test.images).probs.argmax(1)
    r = se_counterfactuals(clf, test.images, test.labels, gates)
    assert set(r) == {"off_accuracy", "off_changed", "held_accuracy", "held_changed"}
    assert all(0.0 <= v <= 1.0 for v in r.values())
    assert r == se_counterfactuals(clf, test.images, test.labels, gates, predicted=on)  # None: computed alike
    with clf.se_disabled():
        off = clf.predict_arrays(test.images).probs.argmax(1)
    assert r["off_accuracy"] == float((off == test.labels).mean())
    assert r["off_changed"] == float((off != on).mean())
    # Holding the dead block at the 0.5 it always gives changes nothing.
    same = se_counterfactuals(clf, test.images, test.labels, {dead: gates[dead]}, predicted=on)
    assert same["held_changed"] == 0.0 and same["held_accuracy"] == float((on == test.labels).mean())


def test_se_counterfactuals_of_a_model_without_se_change_nothing(tmp_path, synthetic_pack):
    ckpt = _checkpoint(tmp_path / "plain.pt", "vgg11")
    clf = Classifier.load(ckpt)
    test = load_pack(synthetic_pack, "test")
    accuracy = float((clf.predict_arrays(test.images).probs.argmax(1) == test.labels).mean())
    assert se_counterfactuals(clf, test.images, test.labels, {}) == {
        "off_accuracy": accuracy, "off_changed": 0.0, "held_accuracy": accuracy, "held_changed": 0.0}
    fired, _ = se_hidden_fired(clf, test.images)
    assert fired == {}


def test_constant_gates_names_the_blocks_that_recalibrate_nothing():
    rng = np.random.default_rng(0)
    gates = {"stage1": rng.random((50, 8)),  # varies: not listed
             "stage2": np.full((50, 4), 0.5),  # a dead block
             "stage3": np.full((50, 4), 0.7) + rng.random((50, 4)) * 1e-5,  # a fixed scale, not 0.5
             "stage4": np.full((50, 4), 0.5) + np.eye(50, 4) * 0.01}  # one gate moves by 0.01: it varies
    c = constant_gates(gates)
    assert set(c) == {"stage2", "stage3"}
    assert c["stage2"] == {"range": 0.0, "all_half": True}
    assert 0 < c["stage3"]["range"] < 1e-3 and not c["stage3"]["all_half"]
    assert set(constant_gates(gates, tolerance=0.02)) == {"stage2", "stage3", "stage4"}
    assert constant_gates({}) == {}


# --------------------------------------------------------------------------- Grad-CAM

def test_gradcam_layer_is_the_deepest_stage_with_a_useful_map():
    model = build_model("seed").eval()
    assert gradcam_layer(model) == ("stage3", 17)  # at 28 px: stage4 is 3x3, stage5 is 1x1
    assert gradcam_layer(model, min_cells=3)[0] == "stage4"


def test_gradcam_map_shape_range_and_no_side_effects():
    torch.manual_seed(0)
    model = build_model("seed").eval()
    img = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    _, layer = gradcam_layer(model)
    cam = gradcam(model, img, class_id=3, layer=layer)
    assert cam.shape == (28, 28) and cam.dtype == np.float32
    assert 0.0 <= cam.min() and cam.max() <= 1.0
    # no gradient left on the weights, no hook left on the model, still in eval mode
    assert all(p.grad is None for p in model.parameters()) and not model.training
    assert not model.features[layer]._forward_hooks


def test_gradcam_is_safe_under_concurrent_calls_on_one_model():
    """No hook on the shared model: threads get the same map as a call alone."""
    import threading

    torch.manual_seed(0)
    model = build_model("seed").eval()
    _, layer = gradcam_layer(model)
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (28, 28, 3), dtype=np.uint8) for _ in range(4)]
    alone = [gradcam(model, im, class_id=k, layer=layer) for k, im in enumerate(imgs)]
    bad: list[int] = []

    def worker(k: int) -> None:
        for _ in range(10):
            if not np.allclose(gradcam(model, imgs[k], class_id=k, layer=layer), alone[k], atol=1e-5):
                bad.append(k)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad


REPO = Path(__file__).resolve().parents[1]
BEST = REPO / "results" / "best" / "best.pt"


@pytest.mark.slow
@pytest.mark.skipif(not BEST.is_file(), reason="the committed best checkpoint is missing")
def test_gradcam_of_the_trained_model_looks_at_the_sign_not_the_background():
    """Each example (a ROI crop: the sign fills it) shrunk into the middle of a flat background of its own
    edge colour: the predicted class's evidence lies on the sign, not on the background around it."""
    from PIL import Image

    clf = Classifier.load(BEST)
    _, layer = gradcam_layer(clf.model)
    centre, border = [], []
    for f in sorted((REPO / "ui" / "examples").glob("*.png")):
        sign = np.asarray(Image.open(f).convert("RGB").resize((18, 18), Image.Resampling.BILINEAR))
        canvas = np.empty((28, 28, 3), np.uint8)
        canvas[:] = np.concatenate([sign[0], sign[-1], sign[:, 0], sign[:, -1]]).mean(0)
        canvas[5:23, 5:23] = sign
        x = clf.preprocess(Image.fromarray(canvas))[0]
        top = int(clf.predict_arrays(x[None]).probs[0].argmax())
        cam = gradcam(clf.model, x, top, layer)
        assert cam.max() == pytest.approx(1.0)  # the predicted class has positive evidence somewhere
        centre.append(cam[7:21, 7:21].mean())
        mask = np.ones_like(cam, bool)
        mask[4:24, 4:24] = False
        border.append(cam[mask].mean())
    assert len(centre) >= 4
    assert np.mean(centre) > 1.5 * np.mean(border)
