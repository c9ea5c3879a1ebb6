"""Seeded train/val/test splits, stored in the pack as one uint8 code per image.

The seed's protocol: test = 20% of the archive, val = 20% of the rest, train =
the rest (64/16/20).

GTSRB comes in tracks of up to 30 frames of one physical sign. A random split
puts near-duplicate frames of one track on both sides and flatters accuracy, so
the default ``track`` split is stratified by class and grouped by track
(scikit-learn's StratifiedGroupKFold algorithm, in ``stratified_group_fold``).
``random`` reproduces the leaky protocol for comparison.
"""

from __future__ import annotations

import numpy as np

SPLIT_NAMES = ("train", "val", "test")
SPLIT_KINDS = ("track", "random")


def track_groups(labels: np.ndarray, tracks: np.ndarray) -> np.ndarray:
    """One id per physical sign: (class, track number within the class)."""
    return np.asarray(labels).astype(np.int64) * 100_000 + np.asarray(tracks)


def _hold_out(labels: np.ndarray, groups: np.ndarray, frac: float, kind: str, seed: int) -> np.ndarray:
    """Indices (into labels) of a held-out part of about ``frac``."""
    if kind == "random":
        # scikit-learn is imported here, not at the top: it takes a second to import.
        from sklearn.model_selection import train_test_split

        idx = np.arange(len(labels))
        _, held = train_test_split(idx, test_size=frac, stratify=labels, random_state=seed)
        return np.sort(held)
    return stratified_group_fold(labels, groups, round(1 / frac), seed)


def stratified_group_fold(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """The test indices of the first fold of scikit-learn 1.9's
    ``StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)``.

    The same algorithm, step for step and numpy call for numpy call (so the
    floating-point ties break the same way), without importing scikit-learn,
    which took a third of a pack's time. Owning it also keeps the split of a
    seed fixed across scikit-learn versions (1.x changed its shuffling once).
    ``tests/test_splits.py`` checks it against scikit-learn itself.

    Groups are shuffled, then taken from the most to the least class-skewed;
    each goes to the fold where the per-class shares stay most even, ties to
    the smaller fold.
    """
    labels, groups = np.asarray(labels), np.asarray(groups)
    _, y_inv, y_cnt = np.unique(labels, return_inverse=True, return_counts=True)
    if np.all(n_splits > y_cnt):
        raise ValueError(f"n_splits={n_splits} cannot be greater than the number of members in each class.")
    _, groups_inv, groups_cnt = np.unique(groups, return_inverse=True, return_counts=True)
    if n_splits > len(groups_cnt):
        raise ValueError(f"Cannot have number of splits n_splits={n_splits} greater than the number of groups: "
                         f"{len(groups_cnt)}.")
    y_counts_per_group = np.zeros((len(groups_cnt), len(y_cnt)))
    np.add.at(y_counts_per_group, (groups_inv, y_inv), 1)
    perm = np.arange(len(groups_cnt))
    np.random.RandomState(seed).shuffle(perm)
    y_counts_per_group = y_counts_per_group[perm]
    inv_perm = np.empty_like(perm)
    inv_perm[perm] = np.arange(perm.size)
    groups_inv = inv_perm[groups_inv]

    y_counts_per_fold = np.zeros((n_splits, len(y_cnt)))
    first_fold: set[int] = set()
    folds = np.arange(n_splits)
    for group_idx in np.argsort(-np.std(y_counts_per_group, axis=1), kind="stable"):
        group_y_counts = y_counts_per_group[group_idx]
        # scikit-learn tries the folds one by one; here all at once, candidate i being
        # the fold counts with this group added to fold i: the same sums in the same
        # order (checked against scikit-learn), in a few numpy calls per group.
        candidates = np.repeat(y_counts_per_fold[None], n_splits, axis=0)
        candidates[folds, folds] += group_y_counts
        fold_evals = np.mean(np.std(candidates / y_cnt.reshape(1, -1), axis=1), axis=1).tolist()
        samples_per_fold = np.sum(y_counts_per_fold, axis=1).tolist()
        best_fold, min_eval, min_samples = None, np.inf, np.inf
        for i, (fold_eval, samples) in enumerate(zip(fold_evals, samples_per_fold)):
            # np.isclose(fold_eval, min_eval) with its default tolerances, on Python floats
            # (it differs from np.isclose only at min_eval = inf, the first fold, which
            # `fold_eval < min_eval` takes anyway)
            close = abs(fold_eval - min_eval) <= 1e-8 + 1e-5 * abs(min_eval)
            if fold_eval < min_eval or (close and samples < min_samples):
                best_fold, min_eval, min_samples = i, fold_eval, samples
        y_counts_per_fold[best_fold] += group_y_counts
        if best_fold == 0:
            first_fold.add(int(group_idx))
    return np.flatnonzero(np.isin(groups_inv, list(first_fold)))


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
