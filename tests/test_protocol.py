"""The cross-validation protocol's report table (study.report.protocol): paired differences per fold,
their t-interval, and a bootstrap over whole tracks."""

import json

import numpy as np
import pytest

from gtsrb.data import load_pack
from gtsrb.train import TrainConfig, training_splits
from study.report.protocol import cv_table, load_cv, track_bootstrap_halfwidth


def test_bootstrap_width_is_zero_without_differences_and_grows_with_disagreement():
    groups = np.repeat(np.arange(50), 30)
    assert track_bootstrap_halfwidth([(groups, np.zeros(len(groups), int))]) == 0.0
    rng = np.random.default_rng(0)
    few = rng.choice([-1, 0, 1], len(groups), p=[0.01, 0.98, 0.01])
    many = rng.choice([-1, 0, 1], len(groups), p=[0.1, 0.8, 0.1])
    assert 0 < track_bootstrap_halfwidth([(groups, few)]) < track_bootstrap_halfwidth([(groups, many)])
    # A whole track that flips is resampled as one: wider than the same errors spread over tracks.
    one_track = np.where(groups == 0, 1, 0)
    spread = np.zeros(len(groups), int)
    spread[::50] = 1
    assert track_bootstrap_halfwidth([(groups, one_track)]) > track_bootstrap_halfwidth([(groups, spread)])


def record(arm, fold, val_names, wrong, test_acc=0.9):
    return {"arm": arm, "seed": fold, "val_accuracy": 1 - len(wrong) / len(val_names),
            "test": {"accuracy": test_acc}, "full_frame_val_accuracy": 0.8, "full_frame_test_accuracy": 0.7,
            "wrong": {"val": sorted(wrong), "test": []}, "full_frame_wrong": {"val": [], "test": []},
            "train_seconds": 600.0, "machine": {}, "command": "python -m study.recipe ...",
            "train_config": {"folds": 5, "epochs": 8}}


def test_cv_table_pairs_each_arm_with_the_recipe_fold_by_fold(synthetic_pack, tmp_path):
    data = load_pack(synthetic_pack)
    for k in (0, 1):
        names = training_splits(data, TrainConfig(fold=k))[1].filenames
        (tmp_path / f"recipe-fold{k}.json").write_text(json.dumps(record("recipe", k, names, names[:10])))
        (tmp_path / f"robust-fold{k}.json").write_text(json.dumps(record("robust", k, names, names[:10 - 4 * (k + 1)])))
    df = load_cv(tmp_path)
    table = cv_table(df, synthetic_pack)
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in table.splitlines()[2:]}
    assert set(rows) == {"recipe", "robust"}
    n = [len(training_splits(data, TrainConfig(fold=k))[1].filenames) for k in (0, 1)]
    deltas = 100 * np.array([4 / n[0], 8 / n[1]])
    assert rows["robust"][3] == f"{deltas.mean():.2f} ± {deltas.std(ddof=1):.2f}"
    assert float(rows["robust"][4]) > 0 and float(rows["robust"][5]) > 0
    assert rows["recipe"][3] == ""
    with pytest.raises(ValueError, match="no 'recipe' runs"):
        cv_table(df[df["arm"] == "robust"], synthetic_pack)
