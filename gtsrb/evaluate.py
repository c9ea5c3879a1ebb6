"""Evaluate a checkpoint on a pack's split or on the official test layout, score test-time augmentation
against the plain prediction (``tta_comparison``), and average its SE excitations per class on a split
(``compute_excitations_file``, for the demo's comparison)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from gtsrb.classes import CLASS_NAMES
from gtsrb.archive import DataError, find_layout
from gtsrb.data import load_pack
from gtsrb.explain import (EXCITATIONS_FILE, class_excitations, class_mean_distance, distance_q99,
                           save_excitations)
from gtsrb.preprocess import decode_records, resize_images
from gtsrb.inference import Classifier
from gtsrb.metrics import classification_metrics, confusion, per_class_table
from gtsrb.plots import confusion_figure, save_figure
from gtsrb.util import sha256_file


def official_test_arrays(paths: Sequence[str | os.PathLike], size: int, roi: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The official test layout (folder, or the images zip plus the GT zip) -> images, labels."""
    with find_layout(paths) as layout:
        if layout.kind != "test":
            raise DataError(
                f"{', '.join(str(p) for p in paths)}: this is the training layout; "
                "--official-test needs Final_Test/Images and GT-final_test.csv"
            )
        images, ok = decode_records(layout, size, roi)
        if not ok.all():
            raise DataError(layout.bad[0])
    return images, np.array([r.label for r in layout.records], np.int64)


def evaluate(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike | None = None,
    split: str = "test",
    official_test: Sequence[str | os.PathLike] | None = None,
    out_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    tta: bool = False,
) -> dict:
    """Accuracy, macro P/R/F1, per-class table and confusion matrix; files go to ``out_dir``. Where the
    data hold both framings (a pack made with ``--frame-size``, or the official test set for a model
    trained on ROI crops), ``full_frame`` holds the metrics on the whole frames too."""
    clf = Classifier.load(checkpoint, device=device)
    size = clf.config.image_size
    roi = bool(clf.meta.get("data", {}).get("roi", False))
    if official_test:
        images, labels = official_test_arrays(official_test, size, roi)
        where = "official test set"
    elif data is not None:
        packed = load_pack(data, split)
        if int(packed.attrs.get("size", size)) != size:
            raise DataError(f"{data}: packed at {packed.attrs.get('size')} px, the model takes {size} px")
        images, labels, where = packed.images, packed.labels, f"{Path(data).name} {split} split"
    else:
        raise DataError("evaluate needs --data FILE (with --split) or --official-test PATH")
    # The other framing where the data has it: the whole frames beside the ROI crops, as a tester
    # uploads a photo (GTSRB's frames keep a ~10% margin around the sign).
    full = None
    if official_test and roi:
        full = official_test_arrays(official_test, size, roi=False)[0]
    elif not official_test and packed.frames is not None:
        full = resize_images(packed.frames, size)

    def predict(x: np.ndarray) -> np.ndarray:
        return (clf.predict_tta(x) if tta else clf.predict_arrays(x).probs).argmax(1)

    pred = predict(images)
    result = {
        "checkpoint": str(checkpoint),
        "data": where,
        "tta": tta,
        "n": int(len(labels)),
        **classification_metrics(labels, pred),
    }
    if full is not None:
        result["full_frame"] = classification_metrics(labels, predict(full))
    cm = confusion(labels, pred)
    table = per_class_table(labels, pred, CLASS_NAMES)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_figure(confusion_figure(cm, CLASS_NAMES, where), out_dir / "confusion_matrix.png")
        np.savetxt(out_dir / "confusion_matrix.csv", cm, fmt="%d", delimiter=",")
        with open(out_dir / "per_class.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(table[0]))
            w.writeheader()
            w.writerows(table)
        (out_dir / "metrics.json").write_text(json.dumps(result, indent=1))
        result["out_dir"] = str(out_dir)
    result["per_class"] = table
    return result


def tta_comparison(clf: Classifier, images: np.ndarray, labels: np.ndarray) -> dict:
    """One classifier on labelled uint8 images (N, S, S, 3), without and with test-time augmentation
    (``Classifier.predict_tta``: the image and its four one-pixel shifts). The weights are the same, so
    the errors pair up exactly: -> {"n", "accuracy", "accuracy_tta", "fixed": errors TTA corrects,
    "added": right answers TTA turns wrong}."""
    labels = np.asarray(labels)
    plain = clf.predict_arrays(images).probs.argmax(1) == labels
    tta = clf.predict_tta(images).argmax(1) == labels
    return {"n": len(labels), "accuracy": float(plain.mean()), "accuracy_tta": float(tta.mean()),
            "fixed": int((tta & ~plain).sum()), "added": int((plain & ~tta).sum())}


def compute_excitations_file(checkpoint: str | os.PathLike, data: str | os.PathLike, split: str = "val",
                             out: str | os.PathLike | None = None) -> Path:
    """Class-average excitations of ``checkpoint`` on a pack split, and each block's distance_q99 on it,
    -> excitations.npz beside the checkpoint."""
    checkpoint = Path(checkpoint)
    clf = Classifier.load(checkpoint)
    if not clf.se_names:
        raise DataError(f"{checkpoint}: the model has no SE block, so there are no excitations to average")
    packed = load_pack(data, split)
    if not len(packed.labels):  # averages over no image would be an empty file that looks like a result
        raise DataError(f"{data}: no images in its {split} split; the class averages need a labelled split "
                        f"(pack it without --keep-splits, or pass another --split)")
    pred = clf.predict_arrays(packed.images)
    stats = class_excitations(pred.excitations, packed.labels, clf.config.num_classes)
    predicted = pred.probs.argmax(1)
    for name, st in stats.items():
        st["distance_q99"] = distance_q99(class_mean_distance(pred.excitations[name], st["class_mean"], predicted))
    out = Path(out) if out is not None else checkpoint.parent / EXCITATIONS_FILE
    save_excitations(stats, out, sha256_file(checkpoint), f"{Path(data).name} {split} split, n={len(packed.labels)}")
    return out
