"""The accuracy recipe's pieces (gtsrb.train, gtsrb.model, gtsrb.classes), its ablation
(study.recipe) and the release export (study.train_best)."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gtsrb.checkpoint import load_checkpoint
from gtsrb.classes import CLASS_NAMES, MIRROR_PAIRS, MIRROR_SELF, mirror_table
from gtsrb.inference import Classifier
from gtsrb.model import ModelConfig, build_model
from gtsrb.config import TrainConfig
from gtsrb.train import epoch_order, fit, make_train_step, mirror_batch

TINY = ModelConfig(cfg=(16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128, "M"))
RECIPE_TINY = TrainConfig(epochs=2, batch_size=64, log_every=5, histograms=False, mirror=True,
                          label_smoothing=0.1, ema_decay=0.9)


def test_the_mirror_table_is_an_involution_over_named_pairs():
    table = mirror_table()
    assert len(table) == len(CLASS_NAMES)
    for c, m in enumerate(table):
        if m >= 0:
            assert table[m] == c
    assert [c for c, m in enumerate(table) if m == c] == sorted(MIRROR_SELF)
    for a, b in MIRROR_PAIRS:
        assert (table[a], table[b]) == (b, a)
        left, right = CLASS_NAMES[a], CLASS_NAMES[b]
        assert ("left" in left and "right" in right) or ("right" in left and "left" in right), (left, right)
    # A speed limit has no mirror image among the classes: never flipped.
    assert table[1] == -1 and table[14] == -1


def test_mirror_batch_flips_only_mirrorable_classes_and_swaps_the_pairs():
    torch.manual_seed(0)
    table = torch.tensor(mirror_table())
    labels = torch.tensor([1, 12, 19, 20, 38, 14] * 200)
    images = torch.randint(0, 256, (len(labels), 6, 6, 3), dtype=torch.uint8)
    out, new = mirror_batch(images, labels, table)
    flipped = ~(out == images).flatten(1).all(1)
    assert torch.equal(out[flipped], images[flipped].flip(2))
    never = (labels == 1) | (labels == 14)
    assert not flipped[never].any() and torch.equal(new[never], labels[never])
    assert torch.equal(new[~flipped], labels[~flipped])
    assert torch.equal(new[flipped], table[labels[flipped]])  # 12 stays 12, 19 <-> 20, 38 -> 39
    share = flipped[~never].float().mean().item()
    assert 0.45 < share < 0.55


def test_per_image_normalisation_gives_each_image_zero_mean_and_unit_variance():
    model = build_model(dataclasses.replace(TINY, input_norm="image")).eval()
    seen = []
    model.features[0].register_forward_pre_hook(lambda m, inp: seen.append(inp[0]))
    x = torch.rand(4, 3, 28, 28) * torch.tensor([0.1, 0.5, 1.0, 0.3]).view(4, 1, 1, 1)  # dark to bright
    model(x)
    var, mean = torch.var_mean(seen[0], dim=(1, 2, 3))
    raw = torch.var(x, dim=(1, 2, 3))
    assert torch.allclose(mean, torch.zeros(4), atol=1e-5)
    # Unit variance, less a floor of 1e-3 (a std of 8/255) that stops a flat image's noise from exploding.
    assert torch.allclose(var, raw / (raw + 1e-3), rtol=1e-3)
    assert var[2] > 0.98 and var[0] < 0.5
    # Brightness and contrast no longer reach the network.
    with torch.no_grad():
        assert torch.allclose(model(x[:1] * 0.5 + 0.1), model(x[:1] * 0.8 + 0.05), atol=0.05)
    with pytest.raises(ValueError, match="input_norm"):
        ModelConfig(input_norm="batch")


def test_balanced_epochs_draw_every_class_about_equally():
    labels = np.repeat(np.arange(4), [1000, 100, 10, 1])
    plain = epoch_order(labels, 1000, TrainConfig(), 1)
    assert sorted(plain.tolist()) == sorted(set(plain.tolist()))  # a permutation's prefix: no repeats
    balanced = epoch_order(labels, 4000, TrainConfig(balanced=True), 1)
    counts = np.bincount(labels[balanced.numpy()], minlength=4)
    assert counts.min() > 850 and counts.max() < 1150, counts
    assert torch.equal(balanced, epoch_order(labels, 4000, TrainConfig(balanced=True), 1))  # (seed, epoch) only
    assert not torch.equal(balanced, epoch_order(labels, 4000, TrainConfig(balanced=True), 2))


def test_label_smoothing_reaches_the_training_loss():
    x = torch.randint(0, 256, (8, 28, 28, 3), dtype=torch.uint8)
    y = torch.arange(8)
    losses = []
    for ls in (0.0, 0.5):
        step = make_train_step(TINY, TrainConfig(label_smoothing=ls, augment=False, lr=1e-9), 10, torch.device("cpu"))
        step.model.eval()  # no dropout: the same logits for both
        losses.append(step(x, y)[0].item())
    assert losses[1] != pytest.approx(losses[0], abs=1e-3)


@pytest.mark.slow
def test_ema_weights_are_what_is_validated_saved_and_resumed(synthetic_pack, tmp_path):
    history = fit(TINY, synthetic_pack, tmp_path / "a", RECIPE_TINY, progress=False)
    last = load_checkpoint(tmp_path / "a" / "last.pt")
    assert {"train_model", "ema"} <= set(last)
    key = "features.0.weight"
    assert not torch.equal(last["model"][key], last["train_model"][key])  # an average, not the raw weights
    assert torch.allclose(last["model"][key], last["ema"]["module." + key])
    clf = Classifier.load(tmp_path / "a" / "last.pt")  # serves the EMA weights
    assert torch.equal(clf.model.state_dict()[key], last["model"][key].contiguous(memory_format=torch.channels_last))
    # Stopped after epoch 1's checkpoint, then resumed: it ends exactly where the uninterrupted run ends.
    def stop(row, _):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(TINY, synthetic_pack, tmp_path / "b", RECIPE_TINY, on_epoch=stop, progress=False)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    resumed = fit(TINY, synthetic_pack, tmp_path / "b", RECIPE_TINY, resume=True, progress=False)
    assert [h["val_accuracy"] for h in resumed] == [h["val_accuracy"] for h in history]
    b = load_checkpoint(tmp_path / "b" / "last.pt")
    for k in last["model"]:
        assert torch.equal(last["model"][k], b["model"][k]), k


@pytest.mark.slow
def test_the_official_protocol_trains_on_every_split_and_keeps_the_last_epoch(synthetic_pack, tmp_path):
    config = TrainConfig(epochs=2, batch_size=64, histograms=False, train_splits=("train", "val", "test"))
    history = fit(TINY, synthetic_pack, tmp_path, config, progress=False)
    assert [h["val_accuracy"] for h in history] == [0.0, 0.0]  # nothing held out
    best, last = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(tmp_path / "last.pt")
    assert best["epoch"] == 2
    for k in best["model"]:
        assert torch.equal(best["model"][k], last["model"][k]), k
    with pytest.raises(ValueError, match="train_splits"):
        fit(TINY, synthetic_pack, tmp_path / "x", TrainConfig(train_splits=("training",)), progress=False)


def test_recipe_arms_drop_exactly_one_piece():
    from study.recipe import ARMS, PIECES, RECIPE, arm_spec

    assert arm_spec("recipe") == (RECIPE, True) and arm_spec("old") == ({}, True)
    # Whole frames have nothing to crop to: no_roi is the recipe without its ROI and its framing crop.
    assert arm_spec("no_roi") == ({k: v for k, v in RECIPE.items() if k != "framing"}, False)
    for piece, key in PIECES.items():
        over, roi = arm_spec(f"no_{piece}")
        assert roi and set(RECIPE) - set(over) == {key}
    assert arm_spec("balanced")[0] == {**RECIPE, "balanced": True}
    assert arm_spec("strong_aug")[0] == {**RECIPE, "augment_strength": 1.5}
    assert arm_spec("se_bias")[0] == {**RECIPE, "se_bias": True}
    assert arm_spec("norm")[0] == {**RECIPE, "input_norm": "image"} and "input_norm" not in RECIPE
    assert arm_spec("ema")[0]["ema_decay"] > 0 and "ema_decay" not in RECIPE
    assert arm_spec("long") == (RECIPE, True)  # the recipe; main() doubles its epochs
    for arm in ARMS:
        arm_spec(arm)
    with pytest.raises(ValueError, match="unknown arm"):
        arm_spec("no_dropout")


def test_recipe_arms_against_the_recipe_before_framing():
    """--base no_framing rebuilds the arms of the stored selection: its recipe lacks the crop, its
    framing_all arm is today's recipe, and its records are not called stale."""
    from study.recipe import BASES, RECIPE, arm_spec, other_recipe

    base = BASES["no_framing"]
    assert arm_spec("recipe", base)[0] == base and "framing" not in base
    assert arm_spec("framing_all", base)[0] == RECIPE
    assert arm_spec("framing", base)[0] == {**base, "framing": 0.5}
    stored = Path(__file__).parents[1] / "results" / "recipe" / "cv-top1"
    assert other_recipe(stored, base) is None
    assert "recipe-fold0.json" in other_recipe(stored, RECIPE)


@pytest.mark.slow
def test_the_recipe_ablation_records_each_run_once(framed_pack, synthetic_pack, tmp_path, capsys):
    from study.recipe import main as recipe

    args = ["--data", str(framed_pack), "--full-frame-data", str(synthetic_pack),
            "--arms", "recipe", "no_roi", "long", "--seeds", "0", "--epochs", "1",
            "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "res"), "--precision", "fp32"]
    # The seed preset is slow for a unit test; a config file with the tiny layout stands in for "best".
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"cfg": list(TINY.cfg)}))
    assert recipe([*args, "--preset", "best", "--config", str(cfg)]) == 0
    rec = json.loads((tmp_path / "res" / "best" / "recipe-seed0.json").read_text())
    assert rec["arm"] == "recipe" and rec["roi"] and rec["model_config"]["input_norm"] == "dataset"
    assert rec["train_config"]["mirror"] and rec["train_config"]["label_smoothing"] > 0
    assert rec["train_config"]["framing"] == 1.0 and rec["base"] == "recipe"
    assert rec["train_config"]["precision"] == "fp32"  # as asked, whatever this CPU would pick
    assert rec["val_accuracy"] == pytest.approx(rec["history"][-1]["val_accuracy"], abs=0.02)
    assert 0 <= rec["test"]["accuracy"] <= 1
    assert not json.loads((tmp_path / "res" / "best" / "no_roi-seed0.json").read_text())["roi"]
    long = json.loads((tmp_path / "res" / "best" / "long-seed0.json").read_text())
    assert long["train_config"]["epochs"] == 2 and len(long["history"]) == 2 and long["roi"]
    # The EMA arm also scores its raw weights, which follow the recipe arm's trajectory exactly.
    assert recipe([*args[:5], "ema", *args[8:], "--preset", "best", "--config", str(cfg)]) == 0
    ema = json.loads((tmp_path / "res" / "best" / "ema-seed0.json").read_text())
    assert ema["raw"]["val_accuracy"] == rec["val_accuracy"]
    assert ema["raw"]["test_accuracy"] == rec["test"]["accuracy"]
    assert recipe([*args, "--preset", "best", "--config", str(cfg)]) == 0
    assert "done, skipped" in capsys.readouterr().out
    # A record made under another recipe is refused, not skipped as if it were this arm ...
    done = tmp_path / "res" / "best" / "recipe-seed0.json"
    done.write_text(json.dumps({**rec, "overrides": {"mirror": True}}))
    assert recipe([*args[:5], "recipe", *args[8:], "--preset", "best", "--config", str(cfg)]) == 2
    assert "was trained with {'mirror': True}" in capsys.readouterr().err
    # ... and so is any new run beside it: the folder's arms are compared with each other.
    assert recipe([*args[:5], "norm", *args[8:], "--preset", "best", "--config", str(cfg)]) == 2
    assert "--name NEW" in capsys.readouterr().err
    assert not (tmp_path / "res" / "best" / "norm-seed0.json").exists()


@pytest.mark.slow
def test_release_export_keeps_fp16_weights_that_predict_like_fp32(synthetic_pack, tmp_path):
    from study.train_best import export_release

    fit(TINY, synthetic_pack, tmp_path / "run", TrainConfig(epochs=1, batch_size=64, histograms=False), progress=False)
    out = tmp_path / "release"
    out.mkdir()
    report = export_release(tmp_path / "run" / "best.pt", out, synthetic_pack)
    assert report["weights"] == "fp16" and abs(report["accuracy_fp32"] - report["accuracy_fp16"]) < 0.0005
    half = load_checkpoint(out / "best.pt")
    assert half["model"]["features.0.weight"].dtype == torch.float16
    assert report["bytes"] < 0.6 * (tmp_path / "run" / "best.pt").stat().st_size
    clf = Classifier.load(out / "best.pt")  # loads back into the fp32 model
    assert next(clf.model.parameters()).dtype == torch.float32
    assert not list(out.glob(".*"))  # the temporary check file is gone


@pytest.mark.slow
def test_gtsrb_train_recipe_adds_the_recipe_to_the_config(framed_pack, tmp_path):
    from gtsrb.cli import main

    out = tmp_path / "run"
    args = ["train", "--data", str(framed_pack), "--config", json.dumps({"cfg": list(TINY.cfg)}), "--recipe",
            "--epochs", "1", "--batch-size", "64", "--out", str(out)]
    assert main(args) == 0
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["model_config"]["input_norm"] == "dataset"  # the contrast norm left the recipe
    assert list(ckpt["model_config"]["cfg"]) == list(TINY.cfg)
    assert ckpt["train_config"]["mirror"] and ckpt["train_config"]["label_smoothing"] == 0.1
    assert ckpt["train_config"]["framing"] == 1.0


def test_augment_strength_reaches_the_training_step():
    step = make_train_step(TINY, TrainConfig(augment_strength=1.5, device="cpu"), steps_per_epoch=2)
    assert step.augment._high[0] == pytest.approx(math.radians(15))
    assert make_train_step(TINY, TrainConfig(device="cpu"), 2).augment._high[0] == pytest.approx(math.radians(10))
