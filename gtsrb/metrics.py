"""Classification metrics from accumulated predictions (scikit-learn does the maths)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from gtsrb.classes import NUM_CLASSES


def classification_metrics(y_true, y_pred) -> dict[str, float]:
    """Accuracy and macro precision, recall and F1, exactly as scikit-learn gives them.

    The macro average runs over the labels present in y_true or y_pred
    (scikit-learn's default), with ``zero_division=0``.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    return {
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "macro_precision": float(p),
        "macro_recall": float(r),
        "macro_f1": float(f),
    }


def per_class_table(y_true, y_pred, class_names, num_classes: int = NUM_CLASSES) -> list[dict]:
    """One row per class: support, precision, recall, F1 (scikit-learn)."""
    labels = np.arange(num_classes)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return [
        {"class_id": int(c), "name": class_names[c], "support": int(s[c]),
         "precision": float(p[c]), "recall": float(r[c]), "f1": float(f[c])}
        for c in labels
    ]


def confusion(y_true, y_pred, num_classes: int = NUM_CLASSES) -> np.ndarray:
    return confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))
