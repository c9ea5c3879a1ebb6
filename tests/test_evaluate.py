import json

import pytest

from fixtures import make_official_test_zips, make_test_tree
from gtsrb.checkpoint import save_checkpoint
from gtsrb.cli import main
from gtsrb.archive import DataError
from gtsrb.evaluate import evaluate, tta_comparison
from gtsrb.inference import Classifier
from gtsrb.model import PRESETS, build_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    model = build_model("seed")
    save_checkpoint({"model_config": PRESETS["seed"].to_dict(), "model": model.state_dict(), "epoch": 0}, path)
    return path


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    zips = make_official_test_zips(root / "zips", n=86)
    folder, _ = make_test_tree(root / "folder", n=86)
    return zips, folder


def test_evaluate_on_a_pack_split_matches_the_classifier(checkpoint, synthetic_pack, tmp_path):
    from gtsrb.data import load_pack
    from gtsrb.metrics import classification_metrics

    r = evaluate(checkpoint, synthetic_pack, "test", out_dir=tmp_path)
    test = load_pack(synthetic_pack, "test")
    # Evaluation is the model's fp32 function, whatever precision serving would pick here.
    pred = Classifier.load(checkpoint).predict_arrays(test.images).probs.argmax(1)
    assert r["n"] == len(test.labels)
    assert r["accuracy"] == classification_metrics(test.labels, pred)["accuracy"]
    for name in ("confusion_matrix.png", "per_class.csv", "metrics.json", "confusion_matrix.csv"):
        assert (tmp_path / name).is_file()
    assert len(r["per_class"]) == 43


@pytest.mark.parametrize("layout", ["zips", "folder"])
def test_official_test_layout_evaluates_from_zips_and_folder(checkpoint, official, layout, tmp_path, capsys):
    zips, folder = official
    paths = [str(p) for p in zips] if layout == "zips" else [str(folder)]
    assert main(["evaluate", str(checkpoint), "--official-test", *paths, "--json", "--out", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 86 and {"accuracy", "macro_f1", "n"} <= set(out)
    assert out["data"] == "official test set"


def test_gtsrb_evaluate_averages_the_shifted_views_unless_told_not_to(synthetic_pack, tmp_path, capsys):
    """TTA is the CLI's default (it raised the selection score on every fold); --no-tta is one forward pass."""
    from gtsrb.data import load_pack
    from gtsrb.metrics import classification_metrics
    from gtsrb.model import ModelConfig

    tiny = ModelConfig(cfg=(16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128, "M"))
    checkpoint = tmp_path / "tiny.pt"
    save_checkpoint({"model_config": tiny.to_dict(), "model": build_model(tiny).state_dict(), "epoch": 0}, checkpoint)
    test = load_pack(synthetic_pack, "test")
    clf = Classifier.load(checkpoint)
    for flag, probs in (([], clf.predict_tta(test.images)), (["--no-tta"], clf.predict_arrays(test.images).probs)):
        assert main(["evaluate", str(checkpoint), "--data", str(synthetic_pack), "--json", *flag]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["tta"] is (not flag)
        assert out["accuracy"] == classification_metrics(test.labels, probs.argmax(1))["accuracy"]


def test_official_test_without_labels_names_the_missing_gt_file(checkpoint, official):
    zips, _ = official
    with pytest.raises(DataError, match="GT-final_test.csv"):
        evaluate(checkpoint, official_test=[zips[0]])


def test_official_test_rejects_the_training_layout(checkpoint, synthetic_zip):
    with pytest.raises(DataError, match="training layout"):
        evaluate(checkpoint, official_test=[synthetic_zip])


def test_evaluate_cli_needs_data_or_official_test(checkpoint, capsys):
    assert main(["evaluate", str(checkpoint)]) == 2
    assert "--official-test" in capsys.readouterr().err


def test_evaluate_official_fetches_the_test_set_then_scores_it(checkpoint, official, tmp_path, monkeypatch, capsys):
    """`make evaluate-official`: `gtsrb evaluate CKPT --official-test` with no paths downloads the two
    official zips (verified by md5) from a local HTTP server, then scores the checkpoint on them."""
    import functools
    import hashlib
    import http.server
    import threading

    import gtsrb.fetch as fetch_mod

    zips, _ = official
    archives = tuple((z.name, hashlib.md5(z.read_bytes()).hexdigest()) for z in zips)
    monkeypatch.setattr(fetch_mod, "TEST_ARCHIVES", archives)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(zips[0].parent))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/"
        dest = tmp_path / "data"
        args = ["evaluate", str(checkpoint), "--official-test", "--dir", str(dest), "--base-url", url, "--json"]
        assert main(args) == 0
        assert sorted(p.name for p in dest.iterdir()) == sorted(name for name, _ in archives)
        out = json.loads(capsys.readouterr().out)
        assert out["n"] == 86 and out["data"] == "official test set"
        # Nothing is written beside the checkpoint unless --out asks for it.
        assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["best.pt"]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_tta_averages_the_image_and_its_one_pixel_shifts(synthetic_pack, tmp_path):
    import numpy as np

    from gtsrb.data import load_pack
    from gtsrb.model import ModelConfig

    tiny = ModelConfig(cfg=(16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128, "M"))
    path = tmp_path / "tiny.pt"
    save_checkpoint({"model_config": tiny.to_dict(), "model": build_model(tiny).state_dict(), "epoch": 0}, path)
    clf = Classifier.load(path)
    images = load_pack(synthetic_pack, "test").images[:6]
    # The five views by hand: the image, and moved one pixel up, down, left, right with the edge repeated.
    views = [images]
    for axis, shift in ((1, -1), (1, 1), (2, -1), (2, 1)):
        v = np.roll(images, -shift, axis=axis)  # view[i] = image[i + shift]
        edge = (slice(None),) * axis + ((-1,) if shift > 0 else (0,))
        v[edge] = images[edge]
        views.append(v)
    by_hand = np.mean([clf.predict_arrays(v).probs for v in views], axis=0)
    np.testing.assert_allclose(clf.predict_tta(images), by_hand, rtol=1e-5, atol=1e-7)
    assert evaluate(path, synthetic_pack, "test", tta=True)["tta"] is True


def test_tta_comparison_pairs_the_errors_tta_fixes_and_adds(synthetic_pack, tmp_path):
    import numpy as np

    from gtsrb.data import load_pack
    from gtsrb.model import ModelConfig

    tiny = ModelConfig(cfg=(16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128, "M"))
    path = tmp_path / "tiny.pt"
    save_checkpoint({"model_config": tiny.to_dict(), "model": build_model(tiny).state_dict(), "epoch": 0}, path)
    clf = Classifier.load(path)
    val = load_pack(synthetic_pack, "val")
    r = tta_comparison(clf, val.images, val.labels)
    assert set(r) == {"n", "accuracy", "accuracy_tta", "fixed", "added"} and r["n"] == len(val.labels)
    assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["accuracy_tta"] <= 1.0
    plain = clf.predict_arrays(val.images).probs.argmax(1) == val.labels
    tta = clf.predict_tta(val.images).argmax(1) == val.labels
    assert r["accuracy"] == float(plain.mean()) and r["accuracy_tta"] == float(tta.mean())
    assert (r["fixed"], r["added"]) == (int((tta & ~plain).sum()), int((plain & ~tta).sum()))
    # the two accuracies differ by exactly the errors fixed less the errors added
    assert r["accuracy_tta"] * r["n"] - r["accuracy"] * r["n"] == pytest.approx(r["fixed"] - r["added"])
    # A flat image is its own one-pixel shift (edges repeated): TTA sees five copies and changes nothing.
    flat = np.repeat(val.images.mean((1, 2), keepdims=True).astype(np.uint8), 28, 1).repeat(28, 2)
    same = tta_comparison(clf, flat, val.labels)
    assert same["fixed"] == same["added"] == 0 and same["accuracy"] == same["accuracy_tta"]
