"""Seeded train/val/test splits, stored in the pack as one uint8 code per image.

The seed's protocol: test = 20% of the archive, val = 20% of the rest, train =
the rest (64/16/20).

GTSRB comes in tracks of up to 30 frames of one physical sign. A random split
puts near-duplicate frames of one track on both sides and flatters accuracy, so
the default ``track`` split is stratified by class and grouped by track
(scikit-learn's StratifiedGroupKFold). ``random`` reproduces the leaky protocol
for comparison.

Which images a seed puts where is scikit-learn's choice, and a new scikit-learn
may choose differently. So pyproject.toml pins scikit-learn's minor version, and
``tests/test_splits.py`` compares a split with a stored one. A pack stores its
split codes, so data already packed keeps its split whatever scikit-learn is
installed later.
"""

from __future__ import annotations

import numpy as np

SPLIT_NAMES = ("train", "val", "test")
SPLIT_KINDS = ("track", "random")


def track_groups(labels: np.ndarray, tracks: np.ndarray) -> np.ndarray:
    """One id per physical sign: (class, track number within the class)."""
    return np.asarray(labels).astype(np.int64) * 100_000 + np.asarray(tracks)


def _hold_out(labels: np.ndarray, groups: np.ndarray, frac: float, kind: str, seed: int) -> np.ndarray:
    """Indices (into labels) of a held-out part of about ``frac``: for ``track``, the
    test indices of the first fold of ``StratifiedGroupKFold(round(1 / frac))``."""
    # Imported here, not at the top: scikit-learn is slow to import and most users never split.
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    if kind == "random":
        idx = np.arange(len(labels))
        _, held = train_test_split(idx, test_size=frac, stratify=labels, random_state=seed)
        return np.sort(held)
    folds = StratifiedGroupKFold(round(1 / frac), shuffle=True, random_state=seed)
    _, held = next(folds.split(labels, labels, groups))
    return held


def make_split(
    labels: np.ndarray,
    groups: np.ndarray,
    kind: str = "track",
    seed: int = 0,
    test_frac: float = 0.2,
    val_frac: float = 0.2,
) -> np.ndarray:
    """One code per image: 0 train, 1 val, 2 test. Same inputs and seed -> same codes."""
    if kind not in SPLIT_KINDS:
        raise ValueError(f"split kind {kind!r}: expected one of {', '.join(SPLIT_KINDS)}")
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    codes = np.zeros(len(labels), np.uint8)
    test = _hold_out(labels, groups, test_frac, kind, seed)
    codes[test] = 2
    rest = np.flatnonzero(codes == 0)
    val = rest[_hold_out(labels[rest], groups[rest], val_frac, kind, seed)]
    codes[val] = 1
    return codes


def track_subset(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Indices of about ``fraction`` of the images, whole tracks only, stratified by class.

    For a smaller, still honest training or validation set (a study's CPU
    profile, an ablation): one fold of a StratifiedGroupKFold with
    round(1 / fraction) folds.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction {fraction}: expected 0 < fraction <= 1")
    if fraction == 1:
        return np.arange(len(labels))
    return _hold_out(np.asarray(labels), np.asarray(groups), fraction, "track", seed)


def cv_fold(labels: np.ndarray, groups: np.ndarray, fold: int, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Boolean mask of fold ``fold`` of a ``folds``-way StratifiedGroupKFold: whole tracks, stratified
    by class. The folds partition the images, so ``folds`` runs validate on every image once.

    The selection protocol of ``study.recipe --protocol cv``: the pack's train and val splits pooled
    and re-split, so a recipe is chosen on several times the tracks one val split holds."""
    from sklearn.model_selection import StratifiedGroupKFold

    if not 0 <= fold < folds or folds < 2:
        raise ValueError(f"fold {fold} of {folds}: expected 0 <= fold < folds and folds >= 2")
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    _, held = list(splitter.split(labels, labels, groups))[fold]
    mask = np.zeros(len(labels), bool)
    mask[held] = True
    return mask
