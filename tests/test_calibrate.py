"""gtsrb.calibrate: temperature scaling, the 'unsure' threshold and `gtsrb calibrate` on a small pack."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gtsrb.calibrate import (
    confidence_threshold,
    fit_temperature,
    load_calibration,
    nll,
    softmax,
    unsure_decision,
    unsure_report,
)
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


def test_softmax_at_a_temperature_is_scipys_softmax_of_the_scaled_logits_even_for_huge_logits():
    from scipy.special import softmax as scipy_softmax

    logits = np.random.default_rng(1).normal(0, 2, (100, 43))
    logits[0] *= 1e4  # exp() of these overflows without the max shift
    for t in (0.3, 1.0, 4.0):
        p = softmax(logits, t)
        assert np.isfinite(p).all()
        np.testing.assert_allclose(p, scipy_softmax(logits / t, axis=1), rtol=1e-10, atol=1e-300)


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


def test_unsure_decision_fires_on_a_low_calibrated_probability():
    logits = np.log(np.array([0.6, 0.3, 0.1]))  # at temperature 1 the probabilities themselves
    sure = unsure_decision(logits, 0, temperature=1.0, threshold=0.5)
    assert sure["calibrated"] and not sure["low"] and not sure["unsure"] and sure["reasons"] == []
    assert sure["probability"] == pytest.approx(0.6) and "distance" not in sure
    low = unsure_decision(logits, 0, temperature=1.0, threshold=0.7)
    assert low["low"] and low["unsure"]
    assert low["reasons"] == ["calibrated probability 60.0% is below the threshold 70.0%"]
    # a temperature above 1 flattens the distribution: the same class, a lower calibrated probability
    assert unsure_decision(logits, 0, temperature=2.0, threshold=0.5)["probability"] < 0.6
    # the probability is the predicted class's, whichever class that is
    assert unsure_decision(logits, 1, temperature=1.0, threshold=0.5)["probability"] == pytest.approx(0.3)


def test_unsure_decision_fires_on_an_excitation_unlike_the_training_data():
    logits = np.array([5.0, 0.0])
    near = unsure_decision(logits, 0, block="stage3", distance=1.0, distance_q99=1.5)
    assert not near["calibrated"] and "probability" not in near
    assert near["distance_block"] == "stage3" and not near["unlike_training"] and not near["unsure"]
    far = unsure_decision(logits, 0, block="stage3", distance=2.7, distance_q99=1.73)
    assert far["unlike_training"] and far["unsure"]
    assert far["reasons"] == [("its stage3 excitation is farther from the class average (2.70) than 99% of "
                               "validation images (1.73): unlike the training data")]
    both = unsure_decision(np.array([0.0, 0.0]), 0, temperature=1.0, threshold=0.9, block="stage3",
                           distance=2.7, distance_q99=1.73)
    assert len(both["reasons"]) == 2 and both["low"] and both["unlike_training"]
    # with neither rule's numbers nothing can be said: not unsure, and not calibrated
    none = unsure_decision(logits, 0)
    assert none == {"calibrated": False, "reasons": [], "unsure": False}


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
