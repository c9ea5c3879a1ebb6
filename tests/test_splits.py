import numpy as np
import pytest

from gtsrb.splits import make_split


def synthetic_labels_groups(n_classes=43, seed=0):
    """Unequal classes of 30-frame tracks, like GTSRB (7 to 40 tracks per class)."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for c in range(n_classes):
        for t in range(rng.integers(7, 40)):
            labels += [c] * 30
            groups += [c * 100_000 + t] * 30
    return np.array(labels), np.array(groups)


def test_track_split_puts_no_track_on_two_sides():
    labels, groups = synthetic_labels_groups()
    codes = make_split(labels, groups, "track", seed=0)
    for g in np.unique(groups):
        assert len(np.unique(codes[groups == g])) == 1


def test_track_split_proportions_are_64_16_20():
    labels, groups = synthetic_labels_groups()
    codes = make_split(labels, groups, "track", seed=0)
    share = np.bincount(codes, minlength=3) / len(codes)
    np.testing.assert_allclose(share, [0.64, 0.16, 0.20], atol=0.015)


@pytest.mark.parametrize("kind", ["track", "random"])
def test_split_is_stratified_within_2_points_per_class(kind):
    labels, groups = synthetic_labels_groups()
    codes = make_split(labels, groups, kind, seed=0)
    overall = np.bincount(labels, minlength=43) / len(labels)
    for s in range(3):
        part = np.bincount(labels[codes == s], minlength=43) / (codes == s).sum()
        assert np.abs(part - overall).max() < 0.02


@pytest.mark.parametrize("kind", ["track", "random"])
def test_same_seed_gives_the_same_codes_byte_for_byte(kind):
    labels, groups = synthetic_labels_groups()
    a = make_split(labels, groups, kind, seed=3)
    b = make_split(labels, groups, kind, seed=3)
    assert a.tobytes() == b.tobytes()
    assert make_split(labels, groups, kind, seed=4).tobytes() != a.tobytes()


def test_random_split_leaks_tracks_across_sides():
    labels, groups = synthetic_labels_groups()
    codes = make_split(labels, groups, "random", seed=0)
    leaky = sum(len(np.unique(codes[groups == g])) > 1 for g in np.unique(groups))
    assert leaky > 0.5 * len(np.unique(groups))


def test_unknown_split_kind_is_an_error():
    with pytest.raises(ValueError, match="split kind"):
        make_split(np.zeros(10), np.arange(10), "kfold")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stratified_group_fold_is_scikit_learns_first_fold(seed):
    """Our copy of StratifiedGroupKFold (no scikit-learn import when packing) picks the same images."""
    from sklearn.model_selection import StratifiedGroupKFold

    from gtsrb.splits import stratified_group_fold

    rng = np.random.default_rng(seed)
    for _ in range(10):
        n, k = int(rng.integers(60, 2000)), int(rng.integers(2, 10))
        y, groups = rng.integers(0, k, n), rng.integers(0, int(rng.integers(3 * 5, n // 2)), n)
        for n_splits in (2, 5):
            _, expected = next(StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed).split(y, y, groups))
            assert np.array_equal(stratified_group_fold(y, groups, n_splits, seed), expected)
    # GTSRB-like: 43 classes of tracks, and more folds (numpy's summation order changes with size)
    y, groups = synthetic_labels_groups(seed=seed)
    for n_splits in (5, 8, 20):
        _, expected = next(StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed).split(y, y, groups))
        assert np.array_equal(stratified_group_fold(y, groups, n_splits, seed), expected)
    with pytest.raises(ValueError, match="number of groups"):
        stratified_group_fold(np.arange(12) % 2, np.arange(12) // 4, 5, 0)  # 3 groups
