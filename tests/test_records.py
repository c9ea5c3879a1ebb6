"""study.records: every kind of stored result read back from small files written here, a malformed one
refused with its file and field, and the ``command`` field of a run record."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from gtsrb.archive import DataError
from study import records
from study.records import (
    PROFILES,
    SE_STAGE_KEYS,
    SEARCH_KEYS,
    RecordError,
    RecordMissing,
    command_line,
    read_ablation,
    read_ablation_record,
    read_best_config,
    read_curves,
    read_json,
    read_profile,
    read_recipe,
    read_recipe_record,
    read_summary,
    read_trial_params,
    read_trial_results,
    record_path,
    study_budget,
    write_best_config,
    write_curves,
    write_json,
    write_summary,
)

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, value) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value if isinstance(value, str) else json.dumps(value))
    return path


# --------------------------------------------------------------------------- a study's folder

SUMMARY = ("trial_id,role,se_stage1,se_stage2,se_stage3,se_stage4,se_stage5,se_form,se_position,se_reduction,"
           "conv_dropout,classifier_dropout,pool,lr,weight_decay,best_val_accuracy,best_epoch,epochs_run,status\n"
           "a1,searched,True,False,False,False,True,gate,post_act,8.0,0.2,0.3,max,0.002,0.01,0.61,4,4,TERMINATED\n"
           "b2,no_se,False,False,False,False,False,,,,0.4,0.5,max,0.002,0.05,0.5,2,2,TERMINATED\n")


def test_a_study_summary_and_curves_read_typed(tmp_path):
    _write(tmp_path / "summary.csv", SUMMARY)
    write_curves(tmp_path, [("a1", 1, 0.4), ("b2", 1, 0.3), ("a1", 2, 0.61), ("b2", 2, 0.5)])
    trials, notes = read_summary(tmp_path)
    assert notes == [] and list(trials["trial_id"]) == ["a1", "b2"]
    assert trials["best_val_accuracy"].tolist() == [0.61, 0.5] and trials["se_reduction"].iloc[0] == 8.0
    assert trials.set_index("trial_id").loc["b2", "se_stage1"] is False
    assert list(trials["role"]) == ["searched", "no_se"]
    curves, notes = read_curves(tmp_path)
    assert notes == [] and curves.values.tolist() == [["a1", 1, 0.4], ["a1", 2, 0.61], ["b2", 1, 0.3], ["b2", 2, 0.5]]
    # The study's budget: from the trials until profile.json records it.
    assert study_budget(tmp_path, trials) == (2, 4)
    _write(tmp_path / "profile.json", {"trials": 2, "epochs": 8, "grace": 4, "train_fraction": 1.0,
                                       "command": "python -m study.tune --name t"})
    assert study_budget(tmp_path, trials) == (4, 8)
    profile = read_profile(tmp_path)
    assert (profile.trials, profile.epochs, profile.grace, profile.recorded) == (2, 8, 4, True)
    assert profile.command == "python -m study.tune --name t" and profile.val_fraction is None
    assert records.named_profile("cpu").epochs == PROFILES["cpu"].epochs and not records.named_profile("cpu").recorded
    # What summary.py writes reads back the same.
    write_summary(tmp_path / "copy", trials)
    assert read_summary(tmp_path / "copy").frame.equals(trials)


def test_a_summary_value_of_the_wrong_kind_fails_or_is_noted(tmp_path):
    _write(tmp_path / "summary.csv", SUMMARY.replace(",0.5,2,2,", ",oops,2,2,"))
    with pytest.raises(RecordError, match=r"summary\.csv: 1 value\(s\) of `best_val_accuracy` are not numbers") as e:
        read_summary(tmp_path)
    assert e.value.field == "best_val_accuracy" and e.value.path == tmp_path / "summary.csv"
    trials, notes = read_summary(tmp_path, strict=False)
    assert trials["best_val_accuracy"].isna().tolist() == [False, True] and "best_val_accuracy" in notes[0]
    with pytest.raises(RecordError, match="malformed, no column `weight`"):
        read_summary(tmp_path, required=("trial_id", "weight"))
    with pytest.raises(RecordMissing, match="curves.csv: not found"):
        read_curves(tmp_path)
    _write(tmp_path / "curves.csv", "trial_id,epoch,val_accuracy\na1,one,0.5\n")
    with pytest.raises(RecordError, match="curves.csv: 1 row"):
        read_curves(tmp_path)


def test_ray_trial_files_and_the_best_config(tmp_path):
    trial = tmp_path / "train_trial_abc_1"
    _write(trial / "params.json", {"lr": 0.002, "pool": "max"})
    _write(trial / "result.json", '{"epoch": 1, "val_accuracy": 0.5}\n\n{"epoch": 2, "val_accuracy": 0.6}\n')
    assert records.trial_dirs(tmp_path) == [trial]
    assert read_trial_params(trial) == {"lr": 0.002, "pool": "max"}
    assert [r["epoch"] for r in read_trial_results(trial)] == [1, 2]
    assert read_trial_results(tmp_path / "none") == []
    _write(trial / "result.json", '{"epoch": 1, "val_accuracy": 0.5}\n{"epoch": 2, "val_acc')
    with pytest.raises(RecordError, match=r"result\.json: line 2 is not valid JSON"):
        read_trial_results(trial)
    _write(trial / "params.json", "[1, 2]")
    with pytest.raises(RecordError, match=r"params\.json: not a trial's parameters"):
        read_trial_params(trial)
    config = {"se_stages": [True, False, False, False, True], "lr": 0.002}
    write_best_config(tmp_path, config)
    assert (tmp_path / "best_config.json").read_text() == json.dumps(config, indent=1) + "\n"
    assert read_best_config(tmp_path / "best_config.json") == config


def test_a_malformed_profile_names_its_file_and_field(tmp_path):
    _write(tmp_path / "profile.json", {"epochs": "eight", "grace": 4})
    with pytest.raises(RecordError, match=r"profile\.json: `epochs` is not a whole number") as e:
        read_profile(tmp_path)
    assert e.value.field == "epochs"
    assert read_profile(tmp_path / "none") is None


def test_the_search_space_is_declared_once_and_asked_in_its_order():
    """study/space.py asks Optuna exactly the declared keys, choices and ranges, in the declared order."""
    from study.space import define_space

    asked = []

    class Trial:
        def suggest_categorical(self, key, choices):
            asked.append((key, tuple(choices)))
            return choices[0]

        def suggest_float(self, key, low, high, log=False):
            asked.append((key, low, high, log))
            return low

    define_space(Trial())
    assert [a[0] for a in asked] == list(SEARCH_KEYS)  # the first choice of a stage is True: SE is on
    params = records.SEARCH_PARAMS
    assert asked[len(SE_STAGE_KEYS) + 2] == ("se_reduction", params["se_reduction"].choices)
    assert ("lr", params["lr"].low, params["lr"].high, True) in asked
    assert ("conv_dropout", 0.0, 0.5, False) in asked


# --------------------------------------------------------------------------- run records

def _ablation(arm="seed", seed=0, **over):
    r = {"arm": arm, "seed": seed, "split_kind": "track", "recipe": {"mirror": True}, "config": {"preset": "seed"},
         "model_config": {"se_stages": [True] * 5, "se_form": "gate", "se_position": "post_act",
                          "conv_dropout": 0.4, "classifier_dropout": 0.5},
         "train_config": {"epochs": 2, "train_fraction": 1.0, "val_fraction": 1.0, "lr": 0.002, "weight_decay": 0.05},
         "history": [{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": 0.75}],
         "test": {"accuracy": 0.8, "macro_f1": 0.79, "n": 100, "ece": 0.02}, "test_at": "last epoch",
         "wall_seconds": 10.0, "train_seconds": 9.5, "adopted": {"trial": "abc", "epochs": 1},
         "machine": {"cpu": "X", "cores": 2}, "command": "python -m study.ablation --seeds 0"}
    return {**r, **over}


def test_an_ablation_record_reads_into_its_fields(tmp_path):
    path = _write(record_path(tmp_path, "top1", 2), _ablation("top1", 2))
    assert path.name == "top1-seed2.json"
    r = read_ablation_record(path)
    assert (r.arm, r.seed, r.epochs, r.val_curve) == ("top1", 2, (1, 2), (0.5, 0.75))
    assert (r.test_accuracy, r.test_macro_f1, r.test_n, r.test_ece) == (0.8, 0.79, 100, 0.02)
    assert (r.train_epochs, r.train_fraction, r.lr, r.se_stages, r.se_form) == (2, 1.0, 0.002, (True,) * 5, "gate")
    assert (r.train_seconds, r.adopted_epochs, r.recipe, r.config) == (9.5, 1, {"mirror": True}, {"preset": "seed"})
    assert r.command == "python -m study.ablation --seeds 0" and r.machine == {"cpu": "X", "cores": 2}
    # An older record holds less: absent fields read as None, and a reader that needs one says which.
    bare = read_ablation_record(_write(tmp_path / "old" / "seed-seed0.json",
                                       {"arm": "seed", "seed": 0, "history": [{"val_accuracy": 0.4}]}))
    assert bare.epochs == (1,) and bare.test_accuracy is None and bare.adopted_epochs == 0
    with pytest.raises(RecordError, match=r"seed-seed0\.json: `test\.accuracy` missing"):
        bare.need("test_accuracy")
    _write(record_path(tmp_path, "seed", 0), _ablation())
    assert [r.arm for r in read_ablation(tmp_path)] == ["seed", "top1"]


@pytest.mark.parametrize("change, field", [
    ({"seed": "0"}, "seed"),
    ({"history": []}, "history"),
    ({"history": [{"epoch": 1}]}, "history[0].val_accuracy"),
    ({"test": {"accuracy": "high"}}, "test.accuracy"),
    ({"train_config": [2]}, "train_config"),
    ({"model_config": {"se_stages": [1, 0, 0, 0, 0]}}, "model_config.se_stages"),
    ({"arm": None}, "arm"),
])
def test_a_malformed_ablation_record_fails_with_its_file_and_field(tmp_path, change, field):
    path = _write(tmp_path / "seed-seed0.json", _ablation(**change))
    with pytest.raises(RecordError) as e:
        read_ablation_record(path)
    assert isinstance(e.value, DataError) and e.value.path == path and e.value.field == field
    assert str(e.value).startswith(f"{path}: ") and field in str(e.value)
    with pytest.raises(DataError, match="seed-seed0.json"):  # the folder's reader stops at it too
        read_ablation(tmp_path)


def test_a_file_that_is_not_json_fails_with_its_name(tmp_path):
    path = _write(tmp_path / "seed-seed0.json", '{"arm": "seed", "se')
    with pytest.raises(RecordError, match=r"seed-seed0\.json: not valid JSON"):
        read_ablation_record(path)
    with pytest.raises(RecordMissing, match="nothing.json: cannot read"):
        read_json(tmp_path / "nothing.json")
    write_json(tmp_path / "back.json", {"a": [1, 2]})
    assert read_json(tmp_path / "back.json") == {"a": [1, 2]}
    assert (tmp_path / "back.json").read_text() == '{\n "a": [\n  1,\n  2\n ]\n}\n'


def _recipe(arm="recipe", seed=0, **over):
    r = {"preset": "best", "name": "top1", "config_file": "results/study/cpu/best_config.json", "arm": arm,
         "seed": seed, "base": "recipe", "overrides": {"mirror": True}, "train_config": {"epochs": 8, "folds": 5},
         "history": [{"epoch": 1, "val_accuracy": 0.9}], "protocol": "split", "val_accuracy": 0.98,
         "test": {"accuracy": 0.99, "n": 7860}, "wrong": {"val": ["a.ppm"], "test": []},
         "wall_seconds": 100.0, "train_seconds": 90.0, "machine": {"cpu": "X"}, "command": "python -m study.recipe"}
    return {**r, **over}


def test_recipe_records_read_by_seed_and_by_fold(tmp_path):
    _write(record_path(tmp_path, "recipe", 0), _recipe())
    _write(record_path(tmp_path, "ema", 1), _recipe("ema", 1, raw={"val_accuracy": 0.97, "test_accuracy": 0.985}))
    fold = record_path(tmp_path, "robust", 2, protocol="cv")
    assert fold.name == "robust-fold2.json"
    _write(fold, {k: v for k, v in _recipe("robust", 2, full_frame_val_accuracy=0.9, full_frame_test_accuracy=0.91,
                                            tta={"val_accuracy": 0.985}).items() if k != "protocol"})
    seeds = read_recipe(tmp_path)
    assert [(r.arm, r.seed, r.protocol) for r in seeds] == [("ema", 1, "split"), ("recipe", 0, "split")]
    ema = seeds[0]
    assert (ema.raw_val_accuracy, ema.raw_test_accuracy, ema.val_accuracy, ema.test_accuracy) == (0.97, 0.985, 0.98, 0.99)
    assert (ema.preset, ema.overrides, ema.train_epochs, ema.test_n) == ("best", {"mirror": True}, 8, 7860)
    (cv,) = read_recipe(tmp_path, protocol="cv")
    assert (cv.arm, cv.seed, cv.protocol, cv.folds) == ("robust", 2, "cv", 5)  # the protocol from the file's name
    assert (cv.full_frame_val_accuracy, cv.tta, cv.wrong["val"]) == (0.9, {"val_accuracy": 0.985}, ["a.ppm"])
    assert read_recipe_record(record_path(tmp_path, "recipe", 0)).raw_val_accuracy is None


@pytest.mark.parametrize("change, field", [
    ({"val_accuracy": None}, "val_accuracy"),
    ({"test": {"n": 5}}, "test.accuracy"),
    ({"protocol": "holdout"}, "protocol"),
    ({"wrong": {"val": "a.ppm"}}, "wrong.val"),
    ({"machine": 3}, "machine"),
    ({"overrides": ["mirror"]}, "overrides"),
])
def test_a_malformed_recipe_record_fails_with_its_file_and_field(tmp_path, change, field):
    path = _write(tmp_path / "recipe-seed0.json", _recipe(**change))
    with pytest.raises(RecordError, match=r"recipe-seed0\.json: ") as e:
        read_recipe_record(path)
    assert e.value.field == field and e.value.path == path


# --------------------------------------------------------------------------- the command field

@pytest.mark.parametrize("argv", [
    [], ["--data", "data/gtsrb28.h5", "--seeds", "0", "1"],
    ["--out", "my results/a b.json", "--name", "it's", "--x", "$HOME", "--y", "", "--z", 'say "hi"; rm -rf /'],
])
def test_command_line_round_trips_through_shlex(argv):
    line = command_line("study.ablation", argv)
    assert shlex.split(line) == ["python", "-m", "study.ablation", *argv]
    assert line.startswith("python -m study.ablation")


def test_command_line_defaults_to_this_process_arguments(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["study/recipe.py", "--arms", "recipe old"])
    assert command_line("study.recipe") == "python -m study.recipe --arms 'recipe old'"
    assert command_line("study.recipe", []) == "python -m study.recipe"  # an explicit empty list is no arguments


def test_a_run_record_ends_with_its_timing_machine_and_command_and_reads_back_as_an_ablation_record(tmp_path):
    history = [{"epoch": 1, "val_accuracy": 0.5, "seconds": 10.0}, {"epoch": 2, "val_accuracy": 0.9, "seconds": 12.5}]
    record = records.run_record("study.ablation", ["--arms", "seed"], 30.04, arm="seed", seed=1, history=history,
                                test={"accuracy": 0.95, "n": 10})
    assert record["wall_seconds"] == 30.0 and record["train_seconds"] == 22.5
    assert record["command"] == "python -m study.ablation --arms seed"
    assert set(record["machine"]) >= {"cpu", "cores", "torch"}
    records.write_json(tmp_path / "seed-seed1.json", record)
    back = records.read_ablation_record(tmp_path / "seed-seed1.json")
    assert (back.arm, back.seed, back.val_curve, back.test_accuracy) == ("seed", 1, (0.5, 0.9), 0.95)
    assert back.train_seconds == 22.5 and back.command == record["command"]


def test_the_machine_field_is_the_librarys():
    from gtsrb.util import machine

    assert records.machine is machine


def test_the_records_import_no_model_ray_optuna_or_pandas():
    code = ("import sys, study.records; bad = {'torch', 'ray', 'optuna', 'pandas'} & set(sys.modules); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, env={**os.environ})
