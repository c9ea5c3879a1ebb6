import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from gtsrb.metrics import classification_metrics, confusion, per_class_table


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
