"""gtsrb.explain (class-average excitations, specificity, Grad-CAM), calibration and the report helpers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from gtsrb.checkpoint import save_checkpoint  # noqa: E402
from gtsrb.classes import CLASS_NAMES  # noqa: E402
from gtsrb.cli import main  # noqa: E402
from gtsrb.data import DataError, load_pack  # noqa: E402
from gtsrb.util import sha256_file  # noqa: E402
from gtsrb.explain import (  # noqa: E402
    class_excitations, compute_excitations_file, gradcam, gradcam_layer, load_excitations, save_excitations,
)
from gtsrb.inference import Classifier  # noqa: E402
from gtsrb.metrics import calibration, confused_pairs  # noqa: E402
from gtsrb.model import PRESETS, build_model  # noqa: E402


def _checkpoint(path: Path, preset: str = "seed") -> Path:
    torch.manual_seed(0)
    model = build_model(PRESETS[preset])
    save_checkpoint({"model_config": PRESETS[preset].to_dict(), "model": model.state_dict(), "epoch": 0,
                     "class_names": list(CLASS_NAMES)}, path)
    return path


# --------------------------------------------------------------------------- class averages and specificity

def test_class_excitations_match_a_direct_computation():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 200)
    e = rng.random((200, 8)) + labels[:, None] * 0.1
    stats = class_excitations({"stage1": e}, labels, num_classes=6)["stage1"]
    for c in range(5):
        np.testing.assert_allclose(stats["class_mean"][c], e[labels == c].mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["class_mean"][5], 0)  # an absent class: zeros, count 0
    assert stats["count"][5] == 0
    np.testing.assert_allclose(stats["overall_mean"], e.mean(0), rtol=1e-5)
    # eta^2 by its definition: between-class over total sum of squares, pooled over channels
    total = ((e - e.mean(0)) ** 2).sum()
    within = sum(((e[labels == c] - e[labels == c].mean(0)) ** 2).sum() for c in range(5))
    assert stats["specificity"] == pytest.approx(1 - within / total, rel=1e-9)


def test_specificity_is_zero_for_class_agnostic_and_one_for_class_determined_gates():
    labels = np.repeat(np.arange(4), 10)
    agnostic = np.tile(np.random.default_rng(1).random((10, 3)), (4, 1))  # same spread in every class
    determined = np.eye(4)[labels]
    s = class_excitations({"a": agnostic, "d": determined}, labels, 4)
    assert s["a"]["specificity"] == pytest.approx(0.0, abs=1e-12)
    assert s["d"]["specificity"] == pytest.approx(1.0)


def test_excitations_file_round_trip_and_bad_file(tmp_path):
    labels = np.arange(43).repeat(2)
    stats = class_excitations({"stage1": np.random.default_rng(0).random((86, 64))}, labels, 43)
    f = tmp_path / "excitations.npz"
    save_excitations(stats, f, "abc", "unit test")
    back, meta = load_excitations(f)
    assert meta == {"checkpoint_sha256": "abc", "source": "unit test"}
    np.testing.assert_array_equal(back["stage1"]["class_mean"], stats["stage1"]["class_mean"])
    assert back["stage1"]["specificity"] == pytest.approx(stats["stage1"]["specificity"])
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left no temp file
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="bad.npz"):
        load_excitations(bad)


def test_excitations_command_writes_the_file_beside_the_checkpoint(tmp_path, synthetic_pack, capsys):
    ckpt = _checkpoint(tmp_path / "best.pt")
    assert main(["excitations", str(ckpt), "--data", str(synthetic_pack), "--split", "val"]) == 0
    stats, meta = load_excitations(tmp_path / "excitations.npz")
    assert meta["checkpoint_sha256"] == sha256_file(ckpt)
    assert set(stats) == {f"stage{i}" for i in range(1, 6)}
    val = load_pack(synthetic_pack, "val")
    # the class means are those of the classifier's own (fp32) excitations on the val split
    pred = Classifier.load(ckpt).predict_arrays(val.images)
    c = int(val.labels[0])
    np.testing.assert_allclose(stats["stage3"]["class_mean"][c],
                               pred.excitations["stage3"][val.labels == c].mean(0), atol=1e-5)
    assert "specificity" in capsys.readouterr().out


def test_excitations_of_a_model_without_se_is_a_clear_error(tmp_path, synthetic_pack):
    ckpt = _checkpoint(tmp_path / "plain.pt", "vgg11")
    with pytest.raises(DataError, match="no SE block"):
        compute_excitations_file(ckpt, synthetic_pack)


# --------------------------------------------------------------------------- Grad-CAM

def test_gradcam_layer_is_the_deepest_stage_with_a_useful_map():
    model = build_model("seed").eval()
    assert gradcam_layer(model) == ("stage3", 17)  # at 28 px: stage4 is 3x3, stage5 is 1x1
    assert gradcam_layer(model, min_cells=3)[0] == "stage4"


def test_gradcam_map_shape_range_and_no_side_effects():
    torch.manual_seed(0)
    model = build_model("seed").eval()
    img = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    _, layer = gradcam_layer(model)
    cam = gradcam(model, img, class_id=3, layer=layer)
    assert cam.shape == (28, 28) and cam.dtype == np.float32
    assert 0.0 <= cam.min() and cam.max() <= 1.0
    # no gradient left on the weights, no hook left on the model, still in eval mode
    assert all(p.grad is None for p in model.parameters()) and not model.training
    assert not model.features[layer]._forward_hooks


REPO = Path(__file__).resolve().parents[1]
BEST = REPO / "results" / "best" / "best.pt"


@pytest.mark.skipif(not BEST.is_file(), reason="the committed best checkpoint is missing")
def test_gradcam_of_the_trained_model_looks_at_the_sign_not_the_border():
    clf = Classifier.load(BEST)
    _, layer = gradcam_layer(clf.model)
    centre, border = [], []
    for f in sorted((REPO / "ui" / "examples").glob("*.png")):
        x = clf.preprocess(f)[0]
        top = int(clf.predict_arrays(x[None]).probs[0].argmax())
        cam = gradcam(clf.model, x, top, layer)
        assert cam.max() == pytest.approx(1.0)  # the predicted class has positive evidence somewhere
        centre.append(cam[7:21, 7:21].mean())
        mask = np.ones_like(cam, bool)
        mask[4:24, 4:24] = False
        border.append(cam[mask].mean())
    assert len(centre) >= 4
    assert np.mean(centre) > 1.5 * np.mean(border)  # GTSRB crops put the sign in the middle


# --------------------------------------------------------------------------- calibration

def test_ece_by_hand():
    # two bins used: conf 0.9 (2 right of 2) and 0.6 (1 right of 2)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 0, 1, 1])
    cal = calibration(probs, y, bins=10)
    # bin (0.8, 0.9]: acc 1.0, conf 0.9 -> 0.1 * 2/4; bin (0.5, 0.6]: acc 0.5, conf 0.6 -> 0.1 * 2/4
    assert cal["ece"] == pytest.approx(0.1)
    counts = [b["count"] for b in cal["bins"]]
    assert sum(counts) == 4 and counts[8] == 2 and counts[5] == 2


def test_ece_is_zero_when_confidence_equals_accuracy_and_large_when_overconfident():
    y = np.zeros(10, int)
    probs = np.tile([0.7, 0.3], (10, 1))
    probs_right = probs.copy()
    y_mixed = np.array([0] * 7 + [1] * 3)
    assert calibration(probs_right, y_mixed)["ece"] == pytest.approx(0.0, abs=1e-12)
    over = np.tile([0.99, 0.01], (10, 1))
    assert calibration(over, np.array([0] * 5 + [1] * 5))["ece"] == pytest.approx(0.49)
    assert calibration(probs, y)["ece"] == pytest.approx(0.3)


def test_confused_pairs_orders_off_diagonal_cells():
    cm = np.array([[50, 3, 0], [7, 40, 1], [0, 2, 9]])
    assert confused_pairs(cm, 3) == [(1, 0, 7), (0, 1, 3), (2, 1, 2)]
    assert confused_pairs(np.eye(3, dtype=int) * 5, 10) == []


# --------------------------------------------------------------------------- report helpers

def test_report_fill_rewrites_only_its_block(tmp_path):
    from study.report import fill, first_epoch, pm

    f = tmp_path / "R.md"
    f.write_text("intro\n<!-- report:x -->\nold\n<!-- /report:x -->\noutro\n")
    assert fill(f, "x", "new table")
    assert f.read_text() == "intro\n<!-- report:x -->\nnew table\n<!-- /report:x -->\noutro\n"
    assert not fill(f, "y", "nothing")
    assert first_epoch([0.5, 0.96, 0.97], 0.95) == 2 and first_epoch([0.5], 0.95) is None
    assert pm([0.9, 0.92]) == "91.00 ± 1.41"


def test_ablation_plan_runs_every_arm_per_seed_and_leakage_once():
    from study.ablation import plan

    runs = plan(["seed", "no_se", "best", "seed_random"], [0, 1, 2])
    assert runs[:4] == [("seed", 0), ("no_se", 0), ("best", 0), ("seed_random", 0)]
    assert len(runs) == 10 and runs.count(("seed_random", 0)) == 1
    assert json.dumps(runs)  # plain values


def test_report_gpu_table_shows_each_variant_its_peak_share_and_fallbacks():
    from study.report import gpu_table

    def run(img_s: float, host: float) -> dict:
        gpu = {"bf16_matmul_tflops": 800.0}
        for batch in (128, 1024):
            for key in ("eager", "eager_noaug", "compile", "compile_nchw"):
                gpu[f"train_img_s_b{batch}_{key}"] = None if (batch, key) == (1024, "compile") else img_s * batch / 128
                if gpu[f"train_img_s_b{batch}_{key}"] is not None:
                    gpu[f"bf16_peak_fraction_b{batch}_{key}"] = gpu[f"train_img_s_b{batch}_{key}"] * 0.5e9 / 800e12
        return {"gpu": gpu, "matmul_gflops": host, "train_gflop_per_image": 0.5,
                "machine": {"cpu": "X", "cores": 16, "torch": "2.x", "gpu": "NVIDIA H200"}}

    after = run(16000.0, 2000.0)
    after["gpu"]["step_is_sync_free"] = True
    text = gpu_table(after, run(8000.0, 1400.0), "after.json", "before.json")
    lines = text.splitlines()
    row = next(line for line in lines if line.startswith("| batch 128: default step"))
    assert row == "| batch 128: default step (eager, channels_last), img/s | 8,000 (0.5% of peak) | 16,000 (1.0% of peak) |"
    assert "| batch 1024: `torch.compile`, channels_last, img/s | fell back to eager | fell back to eager |" in lines
    assert "| host CPU fp32 matmul, GFLOP/s | 1,400 | 2,000 |" in lines
    assert "| a step makes no host sync (`step_is_sync_free`) | – | yes |" in lines
    assert "NVIDIA H200" in text and "after.json" in text and "before.json" in text


def _bench_run(default: float, stock: float, naive: float, fp32: float, bf16: float) -> dict:
    from gtsrb.bench import spread

    variants = {"default_twin": spread([default] * 3), "stock": spread([stock - 1, stock, stock + 1]),
                "route_squeeze_view_grad": spread([stock] * 3), "fp32": spread([fp32] * 3), "bf16": spread([bf16] * 3)}
    return {"machine": {"cpu": "AMD EPYC", "cores": 2, "torch": "2.14.1", "cpu_flags": ["avx2"], "cpu_capability": "AVX2"},
            "train_img_s": default, "train_img_s_spread": spread([default - 5, default, default + 5]),
            "train_variants_img_s": variants, "naive_img_s": naive, "naive_img_s_spread": spread([naive] * 3),
            "speedup_vs_naive": default / naive, "default_agrees": True, "matmul_gflops": 100.0, "ceiling_img_s": 203.0,
            "train_gflop_per_image": 0.492, "ratio_to_ceiling": default / 203.0, "infer_ms_p50": 9.0,
            "infer_ms_p99": 12.0, "eval_img_s": 700.0, "train_precision": "fp32",
            "targets": {"speedup_vs_naive": {"value": default / naive, "target": ">= 2.0", "met": default / naive >= 2}}}


def test_report_speed_table_shows_each_variant_with_its_spread_against_stock():
    from study.report import speed_table

    text = speed_table(_bench_run(120.0, 100.0, 50.0, 120.0, 40.0), "run.json")
    lines = text.splitlines()
    assert "| default training step (`train_img_s`) | 120 [115–125] | 1.20 | what `gtsrb train`, the study and train-best run |" in lines
    assert any(line.startswith("| variant `stock` | 100 [99–101] | 1.00 |") for line in lines)
    assert any(line.startswith("| variant `route_squeeze_view_grad` | 100 [100–100] | 1.00 | `gtsrb.cpu_routes`: only `squeeze_view_grad`") for line in lines)
    assert "- `speedup_vs_naive` 2.40 (target >= 2.0: met)" in lines
    assert "run.json" in text and "AMD EPYC" in text and "avx2" in text


def test_report_precision_rule_table_reads_old_and_new_bench_runs():
    from study.report import precision_rule_table

    old = {"machine": {"cpu": "Intel Xeon", "cores": 2, "torch": "2.14.1"}, "ceiling_bf16_img_s": 1.0,
           "train_variants_img_s": {"fp32": 379.0, "bf16_channels_last": 829.0}}
    lines = precision_rule_table([("old.json", old), ("new.json", _bench_run(120.0, 100.0, 50.0, 120.0, 40.0))]).splitlines()
    assert lines[2].startswith("| Intel Xeon (?; flags: not recorded) | 379 | 829 | 2.19 | bf16 | `old.json` |")
    assert lines[3] == "| AMD EPYC (AVX2; flags: avx2) | 120 | 40 | 0.33 | fp32 | `new.json` |"


def test_report_precision_table_pairs_each_path_with_fp32_by_seed():
    from study.report import precision_table

    def run(path, seed, acc, epochs=3):
        return {"path": path, "seed": seed, "epochs": epochs, "final_val_accuracy": acc, "images_per_s": [100.0, 300.0]}

    record = {"runs": [run("fp32", 0, 0.80), {**run("fp32_channels_last", 0, 0.82), "relabelled_from": "fp32"},
                       run("bf16", 0, 0.79),
                       run("bf16", 1, 0.70), run("fp32", 1, 0.75),  # no control for seed 1
                       run("bf16", 2, 0.9)]}  # no fp32: no row
    lines = precision_table(record).splitlines()
    assert "| 0 | 3 | 80.00 | 82.00 † | 79.00 | +2.00 | -1.00 | 200 / 200 / 200 |" in lines
    assert "| 1 | 3 | 75.00 | – | 70.00 | – | -5.00 | 200 / – / 200 |" in lines
    assert not any(line.startswith("| 2 |") for line in lines)
    assert "moves by 5.00 points (fp32) and 20.00 points (bf16) between seeds" in lines[-3]
    assert lines[-1].startswith("†: recorded as path fp32 before a layout fix")
    # bf16 - fp32 is -1 and -5 points: mean -3, standard error 2 (sd 2.83 / sqrt 2)
    # t(0.975, 1 dof) = 12.706: the interval is -3 -/+ 25.41
    assert ("bf16 − fp32 over 2 seeds: mean -3.00 points (standard error 2.00; 95% interval -28.41 to +22.41), "
            "within 0.3 points on 0, below on 2.") in lines[-3]
    assert "fp32_channels_last − fp32 over" not in lines[-3]  # one seed only
    # Runs of a superseded step stay out of the table and get one line.
    record["runs"] += [run("bf16_old", 0, 0.78), run("bf16_old", 1, 0.77), run("bf16_old", 1, 0.9, epochs=10)]
    record["superseded"] = {"bf16_old": "bf16 before a change"}
    lines = precision_table(record).splitlines()
    assert "| 0 | 3 | 80.00 | 82.00 † | 79.00 | +2.00 | -1.00 | 200 / 200 / 200 |" in lines
    assert lines[-3] == ("Not in the table: bf16 before a change (path `bf16_old` in the JSON); at 3 epochs "
                         "bf16_old − fp32 averaged +0.00 points over 2 seeds.")  # -2 and +2; no fp32 at 10 epochs
