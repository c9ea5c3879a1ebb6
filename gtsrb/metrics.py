"""Classification metrics from accumulated predictions (scikit-learn does the maths)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from gtsrb.classes import NUM_CLASSES

# What a run logs for train and val, each epoch (gtsrb.train, gtsrb.runfiles).
METRIC_NAMES = ("loss", "accuracy", "macro_f1", "macro_precision", "macro_recall")


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


def calibration(probs, y_true, bins: int = 15) -> dict:
    """Expected calibration error (Guo et al. 2017) over equal-width confidence bins.

    ECE = sum over bins of (n_bin / n) * |accuracy_bin - mean confidence_bin|, where
    confidence is the top-1 probability. Returns the ECE and one row per bin
    (lower, upper, count, confidence, accuracy) for a reliability diagram.
    """
    probs = np.asarray(probs, np.float64)
    y_true = np.asarray(y_true)
    conf = probs.max(1)
    correct = probs.argmax(1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin k holds (edges[k], edges[k+1]]; a confidence of exactly 0 joins the first bin.
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    rows, ece = [], 0.0
    for k in range(bins):
        m = which == k
        n = int(m.sum())
        acc = float(correct[m].mean()) if n else float("nan")
        c = float(conf[m].mean()) if n else float("nan")
        if n:
            ece += n / len(conf) * abs(acc - c)
        rows.append({"lower": float(edges[k]), "upper": float(edges[k + 1]), "count": n,
                     "confidence": c, "accuracy": acc})
    return {"ece": float(ece), "bins": rows}


def confused_pairs(cm: np.ndarray, k: int = 10) -> list[tuple[int, int, int]]:
    """The k largest off-diagonal cells of a confusion matrix: (true class, predicted class, count)."""
    cm = np.asarray(cm).copy()
    np.fill_diagonal(cm, 0)
    order = np.argsort(-cm, axis=None, kind="stable")[:k]
    return [(int(i), int(j), int(cm[i, j])) for i, j in zip(*np.unravel_index(order, cm.shape)) if cm[i, j] > 0]
