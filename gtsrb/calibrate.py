"""How sure the model may say it is: temperature scaling and an "unsure" threshold, fitted on val.

    gtsrb calibrate CHECKPOINT --data PACK [--target 0.99] [--out calibration.json]

- **Temperature** ``T`` (Guo et al., 2017): the one number that minimises the
  negative log-likelihood of ``softmax(logits / T)`` on the val split, found on a
  log-spaced grid. It rescales confidence and never changes the top-1 class.
- **Threshold** ``tau`` on the calibrated top-1 probability: the lowest value at
  which the val predictions at or above it are right at least ``target`` of the
  time (99% by default). Below it a prediction is "unsure".
- **Unlike the training data**: the excitation of the deepest SE block whose
  class averages differ (``gtsrb.explain.distance_block``) lies farther from
  its predicted class's val average than 99% of val images
  (``gtsrb.explain.class_mean_distance``, threshold ``distance_q99``).

The file also reports, on the test split (held out from the fit), how often each
rule fires and the accuracy on the predictions it lets through (``unsure_report``).
``unsure_decision`` applies both rules to one image, with the reason each one gives.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

TEMPERATURES = np.exp(np.linspace(np.log(0.05), np.log(20.0), 600))
DEFAULT_TARGET = 0.99
CALIBRATION_FILE = "calibration.json"


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / temperature)."""
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The grid temperature (0.05 to 20, 1% steps) with the lowest NLL."""
    return float(TEMPERATURES[np.argmin([nll(logits, labels, t) for t in TEMPERATURES])])


def confidence_threshold(confidence: np.ndarray, correct: np.ndarray, target: float) -> float:
    """The lowest tau such that the predictions with confidence >= tau are right >= target of the time
    (1.0 when not even the most confident prediction reaches it)."""
    order = np.argsort(-confidence, kind="stable")
    conf, right = confidence[order], np.asarray(correct, bool)[order]
    accuracy = np.cumsum(right) / np.arange(1, len(right) + 1)  # of the k most confident
    # Ties: only cut after the last prediction with a given confidence.
    last_of_tie = np.r_[conf[1:] != conf[:-1], True]
    ok = np.flatnonzero((accuracy >= target) & last_of_tie)
    return float(conf[ok[-1]]) if len(ok) else 1.0


def unsure_report(probs: np.ndarray, labels: np.ndarray, tau: float, unlike: np.ndarray | None) -> dict:
    """How often each rule fires on a labelled set, and the accuracy on what it lets through."""
    conf, pred = probs.max(1), probs.argmax(1)
    right = pred == labels
    low = conf < tau
    flagged = low | (unlike if unlike is not None else False)
    out = {"n": int(len(labels)), "accuracy_all": float(right.mean()),
           "low_confidence_rate": float(low.mean()), "unsure_rate": float(flagged.mean()),
           "accuracy_sure": float(right[~flagged].mean()) if (~flagged).any() else None,
           "accuracy_unsure": float(right[flagged].mean()) if flagged.any() else None,
           "errors_flagged": int((flagged & ~right).sum()), "errors": int((~right).sum())}
    if unlike is not None:
        out["unlike_training_rate"] = float(unlike.mean())
    return out


def unsure_decision(logits: np.ndarray, predicted: int, temperature: float | None = None,
                    threshold: float | None = None, block: str | None = None, distance: float | None = None,
                    distance_q99: float | None = None) -> dict:
    """Whether one image's prediction is "unsure", and why: the two rules of this module, applied to it.

    ``logits``: the image's (classes,) logits; ``predicted``: the class it was read as. With a
    calibration (``temperature``, ``threshold``), the calibrated probability of that class below the
    threshold is "low". With the excitation-distance rule (``block``, the image's ``distance`` to its
    predicted class's average there, and that block's ``distance_q99``), a distance beyond the
    percentile is "unlike the training data". A rule whose numbers are not given is skipped.

    -> {"calibrated", "reasons"} and, per rule that applied, {"temperature", "threshold",
    "probability", "low"} and {"distance_block", "distance", "distance_q99", "unlike_training"}; then
    "unsure": whether any reason was found. ``reasons`` holds one sentence per rule that fired."""
    out: dict = {"calibrated": temperature is not None and threshold is not None, "reasons": []}
    if out["calibrated"]:
        t, tau = float(temperature), float(threshold)
        p = float(softmax(np.asarray(logits)[None], t)[0, predicted])
        out.update({"temperature": t, "threshold": tau, "probability": p, "low": p < tau})
        if p < tau:
            out["reasons"].append(f"calibrated probability {p:.1%} is below the threshold {tau:.1%}")
    if block is not None and distance is not None and distance_q99 is not None:
        d, q99 = float(distance), float(distance_q99)
        out.update({"distance_block": block, "distance": d, "distance_q99": q99, "unlike_training": d > q99})
        if d > q99:
            out["reasons"].append(f"its {block} excitation is farther from the class average ({d:.2f}) than "
                                  f"99% of validation images ({q99:.2f}): unlike the training data")
    out["unsure"] = bool(out["reasons"])
    return out


def calibrate(checkpoint: str | os.PathLike, data: str | os.PathLike, target: float = DEFAULT_TARGET) -> dict:
    """Fit the temperature, the threshold and the excitation-distance rule on val; report on test."""
    from gtsrb.archive import DataError
    from gtsrb.data import load_pack
    from gtsrb.explain import class_excitations, class_mean_distance, distance_block, distance_q99
    from gtsrb.inference import Classifier
    from gtsrb.util import sha256_file

    clf = Classifier.load(checkpoint)
    val, test = load_pack(data, "val"), load_pack(data, "test")
    for name, part in (("val", val), ("test", test)):
        if not len(part.labels):  # a fit on no image returns the grid's first temperature and a NaN loss
            raise DataError(f"{data}: no images in its {name} split; calibrate fits on val and reports on "
                            f"test (pack without --keep-splits)")
    pv, pt = clf.predict_arrays(val.images), clf.predict_arrays(test.images)
    t = fit_temperature(pv.logits, val.labels)
    conf_val = softmax(pv.logits, t).max(1)
    tau = confidence_threshold(conf_val, pv.logits.argmax(1) == val.labels, target)
    unlike = {"val": None, "test": None}
    stats = class_excitations(pv.excitations, val.labels, clf.config.num_classes)
    block = distance_block(stats)
    if block:
        st = stats[block]
        d_val = class_mean_distance(pv.excitations[block], st["class_mean"], pv.logits.argmax(1))
        q99 = distance_q99(d_val)
        unlike["val"] = d_val > q99
        unlike["test"] = class_mean_distance(pt.excitations[block], st["class_mean"], pt.logits.argmax(1)) > q99
    return {
        "checkpoint": str(checkpoint), "checkpoint_sha256": sha256_file(checkpoint),
        "data": str(data), "fitted_on": f"val split, n={len(val.labels)}",
        "temperature": round(t, 4), "nll_before": nll(pv.logits, val.labels, 1.0), "nll_after": nll(pv.logits, val.labels, t),
        "target_accuracy": target, "threshold": tau,
        "unlike_training": {"block": block, "rule": "distance to the predicted class's val average > its val 99th "
                            "percentile"} if block else None,
        "val": unsure_report(softmax(pv.logits, t), val.labels, tau, unlike["val"]),
        "test": unsure_report(softmax(pt.logits, t), test.labels, tau, unlike["test"]),
    }


def load_calibration(path: str | os.PathLike) -> dict:
    """A calibration.json -> its dict (ValueError names the file when it is not one)."""
    path = Path(path)
    try:
        c = json.loads(path.read_text())
        float(c["temperature"]), float(c["threshold"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a calibration file ({e})") from e
    return c
