import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

import pytest

from gtsrb.metrics import calibration, classification_metrics, confused_pairs, confusion, per_class_table


def test_metrics_match_scikit_learn_on_random_predictions():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 43, 2000)
    y_pred = np.where(rng.random(2000) < 0.7, y_true, rng.integers(0, 43, 2000))
    m = classification_metrics(y_true, y_pred)
    assert m["accuracy"] == accuracy_score(y_true, y_pred)
    assert m["macro_f1"] == f1_score(y_true, y_pred, average="macro", zero_division=0)
    assert m["macro_precision"] == precision_score(y_true, y_pred, average="macro", zero_division=0)
    assert m["macro_recall"] == recall_score(y_true, y_pred, average="macro", zero_division=0)


def test_metrics_on_a_hand_computed_case():
    # class 0: P=1/2 R=1/1; class 1: P=1/1 R=1/2 -> macro P=R=0.75, F1=(2/3+2/3)/2
    m = classification_metrics([0, 1, 1], [0, 1, 0])
    assert m["accuracy"] == 2 / 3
    assert m["macro_precision"] == 0.75 and m["macro_recall"] == 0.75
    assert abs(m["macro_f1"] - 2 / 3) < 1e-12


def test_per_class_table_and_confusion_cover_all_43_classes():
    names = [f"c{i}" for i in range(43)]
    table = per_class_table([0, 1, 1], [0, 1, 0], names)
    assert len(table) == 43 and table[1]["recall"] == 0.5 and table[1]["support"] == 2
    cm = confusion([0, 1, 1], [0, 1, 0])
    assert cm.shape == (43, 43) and cm[1, 0] == 1 and cm.sum() == 3


def test_ece_by_hand():
    # two bins used: conf 0.9 (2 right of 2) and 0.6 (1 right of 2)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 0, 1, 1])
    cal = calibration(probs, y, bins=10)
    # bin (0.8, 0.9]: acc 1.0, conf 0.9 -> 0.1 * 2/4; bin (0.5, 0.6]: acc 0.5, conf 0.6 -> 0.1 * 2/4
    assert cal["ece"] == pytest.approx(0.1)
    counts = [b["count"] for b in cal["bins"]]
    assert sum(counts) == 4 and counts[8] == 2 and counts[5] == 2


def test_ece_is_zero_when_confidence_equals_accuracy_and_large_when_overconfident():
    y = np.zeros(10, int)
    probs = np.tile([0.7, 0.3], (10, 1))
    probs_right = probs.copy()
    y_mixed = np.array([0] * 7 + [1] * 3)
    assert calibration(probs_right, y_mixed)["ece"] == pytest.approx(0.0, abs=1e-12)
    over = np.tile([0.99, 0.01], (10, 1))
    assert calibration(over, np.array([0] * 5 + [1] * 5))["ece"] == pytest.approx(0.49)
    assert calibration(probs, y)["ece"] == pytest.approx(0.3)


def test_confused_pairs_orders_off_diagonal_cells():
    cm = np.array([[50, 3, 0], [7, 40, 1], [0, 2, 9]])
    assert confused_pairs(cm, 3) == [(1, 0, 7), (0, 1, 3), (2, 1, 2)]
    assert confused_pairs(np.eye(3, dtype=int) * 5, 10) == []
