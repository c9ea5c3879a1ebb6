"""The cross-validation protocol's report table (study.report.protocol): paired differences per fold,
their t-interval, and a bootstrap over whole tracks."""

import json

import numpy as np
import pytest

from gtsrb.data import load_pack
from gtsrb.inference import Classifier
from gtsrb.config import TrainConfig
from gtsrb.train import training_splits
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


def test_rescore_adds_the_full_frame_scores_a_record_lacks_from_its_runs_last_pt(synthetic_pack, synthetic_zip,
                                                                                  tmp_path, capsys):
    import dataclasses

    import torch

    from gtsrb.checkpoint import save_checkpoint
    from gtsrb.data import pack
    from gtsrb.model import ModelConfig, build_model
    from study.recipe import main

    tiny = ModelConfig(cfg=(16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128, "M"))
    run = tmp_path / "runs" / "cv" / "recipe" / "fold1"
    run.mkdir(parents=True)
    torch.manual_seed(0)
    save_checkpoint({"model_config": tiny.to_dict(), "model": build_model(tiny).state_dict(), "epoch": 1},
                    run / "last.pt")
    roi = tmp_path / "roi.h5"
    pack([synthetic_zip], roi, roi=True)
    config = TrainConfig(fold=1)
    record = {"arm": "recipe", "seed": 1, "name": "cv", "protocol": "cv", "roi": True, "pack": str(roi), "overrides": {"mirror": True,
              "label_smoothing": 0.1}, "train_config": dataclasses.asdict(config)}
    results = tmp_path / "results" / "cv"
    results.mkdir(parents=True)
    (results / "recipe-fold1.json").write_text(json.dumps(record))
    assert main(["--data", str(roi), "--full-frame-data", str(synthetic_pack), "--name", "cv", "--protocol", "cv",
                 "--base", "no_framing", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results"), "--rescore"]) == 0
    r = json.loads((results / "recipe-fold1.json").read_text())
    val = training_splits(load_pack(synthetic_pack), config)[1]
    assert r["full_frame_val_accuracy"] == pytest.approx(1 - len(r["full_frame_wrong"]["val"]) / len(val.labels))
    assert set(r["full_frame_wrong"]["val"]) <= set(val.filenames)
    assert 0 <= r["full_frame_test_accuracy"] <= 1
    # --tta scores the same weights with test-time augmentation, only for the --arms asked (every arm without it).
    args = ["--data", str(roi), "--full-frame-data", str(synthetic_pack), "--name", "cv", "--protocol", "cv",
            "--base", "no_framing", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
            "--rescore", "--tta"]
    assert main([*args, "--arms", "robust"]) == 0
    assert "tta" not in json.loads((results / "recipe-fold1.json").read_text())
    assert main(args) == 0
    tta = json.loads((results / "recipe-fold1.json").read_text())["tta"]
    roi_val = training_splits(load_pack(roi), config)[1]
    expected = (Classifier.load(run / "last.pt").predict_tta(roi_val.images).argmax(1) == roi_val.labels).mean()
    assert tta["val_accuracy"] == pytest.approx(expected)
    assert set(tta) == {"val_accuracy", "test_accuracy", "full_frame_val_accuracy", "full_frame_test_accuracy"}
