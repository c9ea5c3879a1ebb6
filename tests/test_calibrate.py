"""gtsrb.calibrate: temperature scaling, the 'unsure' threshold and `gtsrb calibrate` on a small pack."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gtsrb.calibrate import confidence_threshold, fit_temperature, load_calibration, nll, softmax, unsure_report
from gtsrb.checkpoint import save_checkpoint
from gtsrb.cli import main
from gtsrb.model import PRESETS, build_model


def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_with():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (20000, 43))
    for true_t in (0.5, 2.0):
        p = softmax(logits, true_t)
        labels = (p.cumsum(1) > rng.random((len(p), 1))).argmax(1)  # one draw from each row's distribution
        t = fit_temperature(logits, labels)
        assert t == pytest.approx(true_t, rel=0.05)
        assert nll(logits, labels, t) <= nll(logits, labels, 1.0)


def test_softmax_at_a_temperature_keeps_the_top_class():
    logits = np.random.default_rng(1).normal(0, 2, (100, 43))
    for t in (0.3, 1.0, 4.0):
        p = softmax(logits, t)
        np.testing.assert_allclose(p.sum(1), 1.0)
        assert (p.argmax(1) == logits.argmax(1)).all()


def test_confidence_threshold_is_the_lowest_that_reaches_the_target():
    conf = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
    right = np.array([1, 1, 1, 0, 1, 0], bool)
    assert confidence_threshold(conf, right, 1.0) == 0.9  # the three most confident are all right
    assert confidence_threshold(conf, right, 0.8) == 0.7  # 4 of 5 at >= 0.7
    assert confidence_threshold(conf, right, 0.5) == 0.6  # everything
    assert confidence_threshold(np.array([0.9, 0.8]), np.array([0, 1], bool), 0.99) == 1.0  # nothing qualifies
    # ties are cut together: 0.9 appears twice, once wrong
    assert confidence_threshold(np.array([0.95, 0.9, 0.9]), np.array([1, 1, 0], bool), 1.0) == 0.95


def test_unsure_report_counts_what_it_flags():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 1])  # second is wrong
    r = unsure_report(probs, labels, 0.7, unlike=np.array([False, False, False, True]))
    assert r["n"] == 4 and r["accuracy_all"] == 0.75
    assert r["low_confidence_rate"] == 0.5  # rows 2 and 4 are below 0.7
    assert r["unsure_rate"] == 0.5 and r["unlike_training_rate"] == 0.25
    assert r["accuracy_sure"] == 1.0 and r["accuracy_unsure"] == 0.5
    assert (r["errors_flagged"], r["errors"]) == (1, 1)


def test_gtsrb_calibrate_writes_a_file_the_demo_can_read(synthetic_pack, tmp_path, capsys):
    torch.manual_seed(0)
    config = PRESETS["seed"]
    ckpt = tmp_path / "best.pt"
    save_checkpoint({"model_config": config.to_dict(), "model": build_model(config).state_dict(), "epoch": 0}, ckpt)
    assert main(["calibrate", str(ckpt), "--data", str(synthetic_pack), "--target", "0.6"]) == 0
    out = tmp_path / "calibration.json"
    c = load_calibration(out)
    assert c["checkpoint_sha256"] and c["target_accuracy"] == 0.6
    assert 0.05 <= c["temperature"] <= 20 and 0 <= c["threshold"] <= 1
    assert c["nll_after"] <= c["nll_before"] + 1e-9
    # The rule reads the deepest block whose val class averages differ (an untrained net's deep gates
    # hardly differ, so not necessarily stage 5).
    from gtsrb.data import load_pack
    from gtsrb.explain import class_excitations, distance_block
    from gtsrb.inference import Classifier

    val = load_pack(synthetic_pack, "val")
    stats = class_excitations(Classifier.load(ckpt).predict_arrays(val.images).excitations, val.labels,
                              config.num_classes)
    assert c["unlike_training"]["block"] == distance_block(stats) is not None
    for split in ("val", "test"):
        assert 0 <= c[split]["unsure_rate"] <= 1 and c[split]["n"] > 0
    assert "unsure" in capsys.readouterr().out
    assert main(["calibrate", str(ckpt), "--data", str(synthetic_pack), "--target", "1.5"]) == 2


def test_load_calibration_names_a_bad_file(tmp_path):
    bad = tmp_path / "calibration.json"
    bad.write_text(json.dumps({"temperature": 1.0}))
    with pytest.raises(ValueError, match="calibration.json: not a calibration file"):
        load_calibration(bad)
