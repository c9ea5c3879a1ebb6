"""The bench's pieces, on tiny budgets (the figures themselves live in results/bench/)."""

import json

import pytest
import torch

from gtsrb import bench
from gtsrb.cli import main


def test_flop_count_of_the_seed_model_is_about_0_49_gflop_per_training_image():
    train, forward = bench.flop_per_image()
    assert train == pytest.approx(0.492e9, rel=0.01)
    assert forward == pytest.approx(0.165e9, rel=0.01)


def test_executed_flop_skips_only_the_zero_padding_taps_of_stage_5():
    """Stage 5's two 512->512 convs see 1x1 maps: 8 of their 9 taps multiply padding."""
    nominal = bench.flop_per_image(batch=4)
    executed = bench.flop_per_image(batch=4, executed=True)
    assert nominal[1] - executed[1] == 2 * (2 * 512 * 512 * 8)
    assert nominal[0] - executed[0] == 3 * 2 * (2 * 512 * 512 * 8)  # forward, input grad, weight grad


def test_train_bench_runs_the_real_training_step():
    assert bench.bench_train(steps=1, batch=16) > 0


def test_compile_that_falls_back_reports_no_figure(monkeypatch):
    import gtsrb.train as train

    monkeypatch.setattr(train, "_compiled", lambda model: (lambda x: (_ for _ in ()).throw(RuntimeError("no compiler"))))
    with pytest.warns(UserWarning, match="torch.compile failed"):
        assert bench.bench_train(steps=1, batch=8, compile=True) is None


def test_naive_loader_bench_reads_torchvision_gtsrb_from_the_archive(synthetic_zip):
    assert bench.bench_naive(synthetic_zip, steps=1, batch=8, workers=0) > 0


def test_bench_cli_quick_json_has_the_reported_keys(synthetic_zip, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "bench_train", lambda steps, batch=128, **kw: 100.0)
    monkeypatch.setattr(bench, "bench_infer", lambda requests: {
        "infer_precision": "bf16", "infer_ms_p50": 2.0, "infer_ms_p99": 3.0, "infer_fp32_ms_p50": 3.0, "infer_fp32_ms_p99": 4.0})
    monkeypatch.setattr(bench, "bench_naive", lambda source, steps, batch=128, workers=2: 50.0)
    out = tmp_path / "b.json"
    assert main(["bench", "--quick", "--json", "--source", str(synthetic_zip), "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == json.loads(out.read_text())
    for key in ("ceiling_img_s", "train_img_s", "naive_img_s", "infer_ms_p50", "infer_ms_p99", "infer_fp32_ms_p50",
                "infer_ceiling_ms", "ratio_to_ceiling", "speedup_vs_naive", "machine"):
        assert key in result, key
    assert result["speedup_vs_naive"] == 2.0
    assert 0 < result["ratio_to_ceiling_executed"] < result["ratio_to_ceiling"]
    assert result["targets"]["speedup_vs_naive"] == {"value": 2.0, "target": ">= 1.4", "met": True}
    assert result["targets"]["infer_ratio_to_ceiling"]["met"] is (result["infer_ms_p50"] <= 2 * result["infer_ceiling_ms"])
    assert "pack_ratio" not in result["targets"]  # --quick does not pack
    assert result["infer_memory_floor_ms"] > 0 and result["infer_weight_mb"] > 10
    assert result["infer_fp32_ratio_to_ceiling"] == pytest.approx(1.5 * result["infer_ratio_to_ceiling"])
    assert result["weight_read_gb_s"] > 0 and "memory_gb_s" not in result  # the floor's rate: reads, not copies
    assert result["infer_op_warm_us"] > 0 and result["infer_op_after_read_us"] > 0
    assert {"cpu", "cores", "torch", "torch_threads"} <= set(result["machine"])


def test_inference_bench_times_the_served_precision_and_fp32():
    r = bench.bench_infer(requests=4)
    assert r["infer_precision"] in ("bf16", "fp32")
    for key in ("infer_ms_p50", "infer_ms_p99", "infer_fp32_ms_p50", "infer_fp32_ms_p99"):
        assert 0 < r[key] < 1000, key
    assert r["infer_ms_p50"] <= r["infer_ms_p99"]
    assert 50 < r["infer_ops_per_forward"] < 400 and 50 < r["infer_fp32_ops_per_forward"] < 400


def test_op_after_read_times_the_op_warm_and_after_the_read(monkeypatch):
    """The read happens before each "after" timing and never inside a timed span."""
    events = []
    real_sum, real_mm = torch.Tensor.sum, torch.mm
    monkeypatch.setattr(torch.Tensor, "sum", lambda self, *a, **k: events.append(("read", self.numel())) or real_sum(self, *a, **k))
    monkeypatch.setattr(torch, "mm", lambda *a: events.append("op") or real_mm(*a))
    warm, after = bench.op_after_read_us(4_000_000, reps=3)
    assert warm > 0 and after > 0
    assert events == [("read", 1_000_000) if i % 3 == 1 else "op" for i in range(3 * 23)]


def test_dispatched_ops_counts_each_aten_call():
    x = torch.ones(3)
    assert bench.dispatched_ops(lambda: (x + 1).relu_().sum()) == 3
    assert bench.dispatched_ops(lambda: None) == 0


def test_weight_read_rate_is_a_plausible_bandwidth():
    rate = bench.read_gb_s(8 * 2**20, seconds=0.2)
    assert 0.5 < rate < 5000
