"""Hostile input to `gtsrb train`, `gtsrb evaluate` and the configs and packs behind them (issue 34).

Every case: exit status 2, ONE stderr line `gtsrb: error: ...` naming the file, flag or field, and
the previous outputs byte-identical. Hypothesis generates bad config dicts and bad HDF5 packs: only
the project's own error type (gtsrb.archive.DataError) may come out.
"""

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gtsrb.archive import DataError
from gtsrb.checkpoint import save_checkpoint
from gtsrb.cli import main
from gtsrb.data import load_pack
from gtsrb.model import ModelConfig, build_model
from gtsrb.config import split_config, TrainConfig

TINY = ModelConfig(cfg=(16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128, "M"))
TINY_CFG = {"cfg": list(TINY.cfg)}


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def previous_run(tmp_path_factory):
    """A run folder as an earlier `gtsrb train` left it: what a failed command must not touch."""
    out = tmp_path_factory.mktemp("previous")
    save_checkpoint({"model_config": TINY.to_dict(), "model": build_model(TINY).state_dict(), "epoch": 1}, out / "best.pt")
    (out / "history.json").write_text("[]")
    (out / "metrics.json").write_text("{}")
    return out


def write_pack_file(path: Path, n: int = 6, **over) -> Path:
    """A minimal valid pack, with any dataset replaced (or removed: None) by ``over``."""
    data = {
        "images": np.zeros((n, 28, 28, 3), np.uint8),
        "labels": np.arange(n, dtype=np.int16) % 43,
        "tracks": np.zeros(n, np.int32),
        "filenames": np.array([f"{i:05d}.ppm" for i in range(n)], dtype=object),
        "split": np.array([0, 1, 2] * (n // 3) + [0] * (n % 3), np.uint8),
        "class_names": np.array([f"c{i}" for i in range(43)], dtype=object),
    }
    data.update(over)
    with h5py.File(path, "w") as f:
        for k, v in data.items():
            if v is None:
                continue
            kw = {"dtype": h5py.string_dtype()} if isinstance(v, np.ndarray) and v.dtype == object else {}
            f.create_dataset(k, data=v, **kw)
        f.attrs["size"] = 28
    return path


def one_line_exit_2(capsys, argv, *needles) -> str:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own refusals exit rather than return
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("gtsrb: error: "), err
    for n in needles:
        assert n in err, err
    return err


# (id, argv after `train --data PACK --out OUT`, text the error must name)
TRAIN_CASES = [
    ("config_str_for_int", ["--config", '{"se_reduction": "8"}'], "se_reduction"),
    ("config_str_for_float", ["--config", '{"lr": "fast"}'], "lr"),
    ("config_wrong_classes", ["--config", '{"num_classes": 10}', "--epochs", "1"], "num_classes"),
    ("config_se_stages_length", ["--config", '{"se_stages": [true, false]}'], "se_stages"),
    ("config_unknown_key", ["--config", '{"se_reductoin": 8}'], "se_reductoin"),
    ("config_list", ["--config", "[1, 2]"], "config"),
    ("config_bad_inline_json", ["--config", '{"lr": '], "--config"),
    ("config_negative_dropout", ["--config", '{"conv_dropout": -0.1}'], "conv_dropout"),
    ("config_dropout_one", ["--config", '{"classifier_dropout": 1.0}'], "classifier_dropout"),
    ("config_bool_as_int", ["--config", '{"se_reduction": true}'], "se_reduction"),
    ("config_bad_literal", ["--config", '{"pool": "median"}'], "pool"),
    ("config_bad_preset", ["--config", '{"preset": "resnet"}'], "preset"),
    ("config_nan_lr", ["--config", '{"lr": NaN}'], "lr"),
    ("config_bad_split_name", ["--config", '{"train_splits": ["trian"]}'], "train_splits"),
    ("config_bad_route", ["--config", '{"cpu_routes": ["warp"]}'], "cpu_routes"),
    ("config_tiny_image", ["--config", '{"image_size": 12}'], "image_size"),
    ("config_fold_out_of_range", ["--config", '{"fold": 9}'], "fold"),
    ("config_bad_probability", ["--config", '{"erase_p": 1.5}'], "erase_p"),
    ("config_framing_without_frames", ["--config", '{"framing": 0.5}', "--epochs", "1"], "frame-size"),
    ("batch_size_zero", ["--batch-size", "0"], "--batch-size"),
    ("batch_size_negative", ["--batch-size", "-5"], "--batch-size"),
    ("threads_negative", ["--threads", "-2"], "--threads"),
    ("epochs_zero", ["--epochs", "0"], "--epochs"),
    ("lr_negative", ["--lr", "-1e-3"], "--lr"),
    ("lr_text", ["--lr", "fast"], "--lr"),
    ("seed_negative", ["--seed", "-1"], "--seed"),
    ("device_cuda_without_gpu", ["--device", "cuda", "--epochs", "1"], "cuda"),
    ("device_unknown", ["--device", "tpu"], "device"),
    ("precision_unknown", ["--precision", "fp8"], "--precision"),
]


@pytest.mark.parametrize("case,args,needle", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_refuses_bad_input_in_one_line_and_loses_nothing(case, args, needle, synthetic_pack, previous_run,
                                                               tmp_path, capsys):
    if case == "device_cuda_without_gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    before = tree_digest(previous_run)
    one_line_exit_2(capsys, ["train", "--data", str(synthetic_pack), "--out", str(previous_run / "run"),
                             *(["--config", json.dumps(TINY_CFG)] if "--config" not in args else []), *args], needle)
    assert tree_digest(previous_run) == before


def bad_pack(tmp_path: Path, case: str) -> Path:
    path = tmp_path / f"{case}.h5"
    n = 6
    overrides = {
        "images_3d": {"images": np.zeros((n, 28, 28), np.uint8)},
        "images_float64": {"images": np.zeros((n, 28, 28, 3), np.float64)},
        "images_not_square": {"images": np.zeros((n, 28, 20, 3), np.uint8)},
        "labels_43": {"labels": np.full(n, 43, np.int16)},
        "labels_negative": {"labels": np.full(n, -1, np.int16)},
        "labels_float": {"labels": np.zeros(n, np.float32)},
        "labels_short": {"labels": np.zeros(n - 2, np.int16)},
        "no_filenames": {"filenames": None},
        "no_labels": {"labels": None},
        "filenames_short": {"filenames": np.array(["a.ppm"], dtype=object)},
        "split_code_7": {"split": np.full(n, 7, np.uint8)},
        "split_short": {"split": np.zeros(1, np.uint8)},
        "frames_without_boxes": {"frames": np.zeros((n, 32, 32, 3), np.uint8)},
        "boxes_inverted": {"frames": np.zeros((n, 32, 32, 3), np.uint8),
                           "boxes": np.tile(np.float32([0.8, 0.1, 0.2, 0.9]), (n, 1))},
    }
    if case == "not_hdf5":
        path.write_bytes(b"this is not HDF5")
        return path
    if case == "empty_file":
        path.write_bytes(b"")
        return path
    return write_pack_file(path, n, **overrides[case])


PACK_CASES = [("images_3d", "images"), ("images_float64", "uint8"), ("images_not_square", "images"),
              ("labels_43", "labels"), ("labels_negative", "labels"), ("labels_float", "labels"),
              ("labels_short", "labels"), ("no_filenames", "filenames"), ("no_labels", "labels"),
              ("filenames_short", "filenames"), ("split_code_7", "split"), ("split_short", "split"),
              ("frames_without_boxes", "boxes"), ("boxes_inverted", "boxes"), ("not_hdf5", "HDF5"),
              ("empty_file", "HDF5")]


@pytest.mark.parametrize("case,needle", PACK_CASES, ids=[c[0] for c in PACK_CASES])
def test_a_malformed_pack_is_refused_naming_the_file_and_dataset(case, needle, tmp_path, previous_run, capsys):
    path = bad_pack(tmp_path, case)
    with pytest.raises(DataError, match=needle) as e:
        load_pack(path)
    assert str(path) in str(e.value)
    before = tree_digest(previous_run)
    one_line_exit_2(capsys, ["train", "--data", str(path), "--out", str(previous_run / "run"),
                             "--config", json.dumps(TINY_CFG), "--epochs", "1"], str(path))
    one_line_exit_2(capsys, ["evaluate", str(previous_run / "best.pt"), "--data", str(path)], str(path))
    assert tree_digest(previous_run) == before


EVALUATE_CASES = [
    ("out_under_proc", lambda run, pack: ["--data", str(pack), "--out", "/proc/nope"], "/proc/nope"),
    ("out_is_a_file", lambda run, pack: ["--data", str(pack), "--out", str(run / "history.json")], "history.json"),
    ("device_cuda_without_gpu", lambda run, pack: ["--data", str(pack), "--device", "cuda"], "cuda"),
    ("no_data", lambda run, pack: [], "--data"),
    ("missing_pack", lambda run, pack: ["--data", str(run / "nosuch.h5")], "nosuch.h5"),
    ("bad_split", lambda run, pack: ["--data", str(pack), "--split", "trian"], "--split"),
]


@pytest.mark.parametrize("case,args,needle", EVALUATE_CASES, ids=[c[0] for c in EVALUATE_CASES])
def test_evaluate_refuses_bad_input_in_one_line_and_loses_nothing(case, args, needle, previous_run, synthetic_pack, capsys):
    if case == "device_cuda_without_gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    before = tree_digest(previous_run)
    one_line_exit_2(capsys, ["evaluate", str(previous_run / "best.pt"), *args(previous_run, synthetic_pack)], needle)
    assert tree_digest(previous_run) == before


def checkpoint_with(tmp_path: Path, case: str) -> Path:
    state = build_model(TINY).state_dict()
    path = tmp_path / f"{case}.pt"
    if case == "nan_weights":
        state["classifier.0.weight"][0, 0] = float("nan")
        save_checkpoint({"model_config": TINY.to_dict(), "model": state, "epoch": 1}, path)
    elif case == "pickled_code":
        import os

        class Code:
            def __reduce__(self):
                return (os.getcwd, ())

        torch.save({"model_config": TINY.to_dict(), "model": state, "hook": Code()}, path)
    elif case == "config_bad_type":
        save_checkpoint({"model_config": {**TINY.to_dict(), "se_reduction": "8"}, "model": state, "epoch": 1}, path)
    elif case == "truncated":
        save_checkpoint({"model_config": TINY.to_dict(), "model": state, "epoch": 1}, path)
        path.write_bytes(path.read_bytes()[:1000])
    return path


CHECKPOINT_CASES = [("nan_weights", "NaN"), ("pickled_code", "code"), ("config_bad_type", "se_reduction"),
                    ("truncated", "not a readable checkpoint")]


@pytest.mark.parametrize("case,needle", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_evaluate_refuses_a_bad_checkpoint_naming_it(case, needle, tmp_path, synthetic_pack, capsys):
    path = checkpoint_with(tmp_path, case)
    one_line_exit_2(capsys, ["evaluate", str(path), "--data", str(synthetic_pack)], str(path), needle)


# --- properties: whatever a config dict or a pack holds, only the project's error comes out ---

FIELDS = sorted({"se_stages", "se_form", "se_position", "se_reduction", "se_min_hidden", "se_bias", "pool",
                 "conv_dropout", "classifier_dropout", "image_size", "num_classes", "cfg", "input_mean",
                 "input_std", "input_norm", "epochs", "batch_size", "lr", "weight_decay", "pct_start",
                 "augment", "augment_strength", "dark_p", "blur_p", "erase_p", "framing", "train_fraction",
                 "seed", "device", "threads", "precision", "cpu_routes", "label_smoothing", "mirror",
                 "ema_decay", "train_splits", "fold", "folds", "preset", "no_such_field"})
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8) | st.sampled_from(["gate", "max", "avg", "seed", "cpu", "cuda", "M", "bf16", "train"]),
    lambda children: st.lists(children, max_size=6), max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=5))
def test_any_config_dict_either_builds_or_raises_the_projects_error(d):
    try:
        model, train = split_config(d)
    except DataError:
        return
    # Accepted: both configs are whole and typed, so the model builds at its size.
    TrainConfig(**train)
    assert isinstance(model, ModelConfig)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(0, 5),
    image_shape=st.sampled_from([(28, 28, 3), (28, 28), (28, 20, 3), (28, 28, 4), (1, 1, 3)]),
    image_dtype=st.sampled_from([np.uint8, np.float32, np.int64, np.float64]),
    label=st.integers(-3, 60),
    label_dtype=st.sampled_from([np.int16, np.int64, np.float32, np.uint8]),
    drop=st.sets(st.sampled_from(["images", "labels", "tracks", "filenames", "split", "class_names"]), max_size=2),
    split_code=st.integers(0, 5),
    extra_rows=st.integers(-2, 2),
)
def test_any_malformed_pack_raises_only_the_projects_error(tmp_path_factory, n, image_shape, image_dtype, label,
                                                           label_dtype, drop, split_code, extra_rows):
    path = tmp_path_factory.mktemp("hyp") / "p.h5"
    over = {
        "images": np.zeros((n, *image_shape), image_dtype),
        "labels": np.full(max(n + extra_rows, 0), label).astype(label_dtype),
        "split": np.full(n, split_code, np.uint8),
        **{k: None for k in drop},
    }
    write_pack_file(path, n, **over)
    try:
        packed = load_pack(path)
    except DataError as e:
        assert str(path) in str(e)
        return
    # Accepted: it really is a pack.
    assert packed.images.dtype == np.uint8 and packed.images.ndim == 4
    assert len(packed.labels) == len(packed.images) and (packed.labels < 43).all() and (packed.labels >= 0).all()
