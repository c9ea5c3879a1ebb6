import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gtsrb.checkpoint import load_checkpoint
from gtsrb.model import ModelConfig
from gtsrb.config import TrainConfig
from gtsrb.metrics import METRIC_NAMES
from gtsrb.train import fit

pytestmark = pytest.mark.slow  # every test here trains

SMALL = TrainConfig(epochs=2, batch_size=64, log_every=5)
# The seed's layout at a quarter of its width: the same code paths, 16x less compute.
TINY = ModelConfig(cfg=(16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128, "M"))
TINY_JSON = json.dumps({"cfg": list(TINY.cfg)})


@pytest.fixture(scope="module")
def trained_run(synthetic_pack, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rows = []
    history = fit(TINY, synthetic_pack, out, SMALL, on_epoch=lambda row, d: rows.append((row, d)), progress=False)
    return out, history, rows


def test_fit_returns_one_history_row_per_epoch_and_calls_back(trained_run):
    out, history, rows = trained_run
    assert [h["epoch"] for h in history] == [1, 2]
    assert [r["epoch"] for r, _ in rows] == [1, 2] and all(d == out for _, d in rows)
    for key in ("val_accuracy", "val_loss", "val_macro_f1", "train_loss", "lr", "seconds"):
        assert key in history[-1]
    assert json.loads((out / "history.json").read_text()) == history


def test_tensorboard_has_step_and_epoch_metrics_lr_histograms_hparams_and_confusion(trained_run):
    out, _, _ = trained_run
    acc = EventAccumulator(str(out), size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    for prefix in ("train/step", "train/epoch", "val/epoch", "val/step"):
        for name in METRIC_NAMES:
            assert f"{prefix}/{name}" in tags["scalars"], f"{prefix}/{name}"
    assert {"lr/step", "lr/epoch"} <= set(tags["scalars"])
    # every conv layer: the 8 3x3 convs and both 1x1 convs of each of the 5 SE blocks
    assert len([t for t in tags["histograms"] if t.startswith("weights/")]) == 8 + 10
    assert len([t for t in tags["histograms"] if t.startswith("grads/")]) == 8 + 10
    assert len(acc.Histograms("weights/features.0")) == 2  # one per epoch
    assert "val/confusion_matrix" in tags["images"]
    assert {"hparam/best_val_accuracy", "hparam/best_val_macro_f1"} <= set(tags["scalars"])
    step_points = acc.Scalars("train/step/loss")
    assert len(step_points) >= 4 and step_points[0].step < step_points[-1].step


def test_checkpoints_are_safe_and_rebuild_their_model(trained_run):
    out, history, _ = trained_run
    last = load_checkpoint(out / "last.pt")
    assert last["epoch"] == 2 and ModelConfig.from_dict(last["model_config"]) == TINY
    for key in ("optimizer", "scheduler", "rng", "history", "train_config", "class_names"):
        assert key in last
    best = load_checkpoint(out / "best.pt")
    best_epoch = max(history, key=lambda h: h["val_accuracy"])["epoch"]
    assert best["epoch"] == best_epoch and "optimizer" not in best
    # torch.load with weights_only=True reads both without any extra allowlist
    torch.load(out / "last.pt", weights_only=True)


def test_training_learns_the_synthetic_classes(synthetic_pack, tmp_path):
    # No dropout and a few epochs: far above the 1/43 chance level, or the loop is broken.
    cfg = dataclasses.replace(TINY, conv_dropout=0.0, classifier_dropout=0.0)
    history = fit(cfg, synthetic_pack, tmp_path, TrainConfig(epochs=4, batch_size=32, lr=3e-3, histograms=False), progress=False)
    assert history[-1]["val_accuracy"] > 0.5
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def _train_cmd(pack, out, *extra):
    return [sys.executable, "-m", "gtsrb.cli", "train", "--data", str(pack), "--epochs", "4",
            "--batch-size", "64", "--threads", "1", "--config", TINY_JSON, "--out", str(out), *extra]


def test_resume_after_a_kill_ends_where_an_uninterrupted_run_ends(synthetic_pack, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(synthetic_pack, straight), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(synthetic_pack, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    killed_at = load_checkpoint(killed / "last.pt")["epoch"]
    assert killed_at < 4, "the run finished before it could be killed"

    # Without --resume an existing run is protected.
    r = subprocess.run(_train_cmd(synthetic_pack, killed), env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "--resume" in r.stderr
    subprocess.run(_train_cmd(synthetic_pack, killed, "--resume"), check=True, env=env, capture_output=True)
    assert (killed / "best.pt").is_file() and not list(killed.glob(".*.tmp-*"))  # whenever the kill came

    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(killed / "last.pt")
    assert a["epoch"] == b["epoch"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [h["val_accuracy"] for h in a["history"]] == [h["val_accuracy"] for h in b["history"]]


def test_precision_check_trains_each_path_per_seed_and_resumes(synthetic_pack, tmp_path, capsys):
    """`make precision-check`: fp32, its channels_last control and bf16 runs of the seed preset,
    recorded once each, with the activation layout each one ran."""
    from study.precision import main as precision_check

    out = tmp_path / "precision.json"
    args = ["--data", str(synthetic_pack), "--seeds", "0", "--epochs", "1", "--train-fraction", "0.25",
            "--out", str(out), "--runs", str(tmp_path)]
    assert precision_check(args) == 0
    record = json.loads(out.read_text())
    assert [(r["path"], r["seed"], r["epochs"]) for r in record["runs"]] == [
        ("fp32", 0, 1), ("fp32_channels_last", 0, 1), ("bf16", 0, 1)]
    # Read back from each run's checkpoint: what its training step ran.
    assert [r["activation_layout"] for r in record["runs"]][:2] == ["NCHW", "channels_last"]
    assert [r["precision_ran"] for r in record["runs"]] == ["fp32", "fp32", "bf16"]  # "bf16" forces it, on any CPU
    assert all(0 <= r["final_val_accuracy"] <= 1 and len(r["val_accuracy"]) == 1 for r in record["runs"])
    assert "seed 0, 1 epochs: fp32" in capsys.readouterr().out
    assert precision_check(args) == 0  # every run is on record: nothing trains again
    assert len(json.loads(out.read_text())["runs"]) == 3
    assert "final val" not in capsys.readouterr().out


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("augment", [False, True])
def test_the_model_sees_the_layout_the_config_asks_for(channels_last, augment):
    """The uint8 batch arrives as NHWC and the augmentation keeps its layout; the step
    must still hand the model NCHW when channels_last is off (and NHWC when on)."""
    from gtsrb.model import PRESETS
    from gtsrb.train import make_train_step

    config = TrainConfig(batch_size=4, precision="fp32", channels_last=channels_last, augment=augment)
    step = make_train_step(PRESETS["seed"], config, steps_per_epoch=2, device=torch.device("cpu"))
    seen = []
    step.model.features[0].register_forward_pre_hook(lambda _m, inp: seen.append(inp[0]))
    step(torch.randint(0, 256, (4, 28, 28, 3), dtype=torch.uint8), torch.randint(0, 43, (4,)))
    x = seen[0]
    assert x.is_contiguous(memory_format=torch.channels_last) is channels_last
    assert x.is_contiguous() is not channels_last
