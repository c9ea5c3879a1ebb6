"""benchmarks.bench's pieces, on tiny budgets (the figures themselves live in results/bench/)."""

import json
import math

import pytest

from benchmarks.bench import cli, runners, timing


def test_flop_count_of_the_seed_model_is_about_0_49_gflop_per_training_image():
    train, forward = timing.flop_per_image()
    assert train == pytest.approx(0.492e9, rel=0.01)
    assert forward == pytest.approx(0.165e9, rel=0.01)


@pytest.mark.slow
def test_train_bench_runs_the_real_training_step():
    assert runners.bench_train(steps=1, batch=16) > 0


@pytest.mark.slow
def test_train_step_runner_builds_the_step_each_variant_asks_for():
    """stock is plain torch.nn; a route variant switches on that route alone."""
    from gtsrb.cpu_routes import SmallMapConv2d, ViewGradSqueeze

    def types(runner):
        return {type(m) for m in runner.train_step.model.modules()}

    variants = runners.cpu_variants()
    assert list(variants)[:3] == ["default", "default_twin", "stock"]
    stock = runners.train_step_runner(8, **variants["stock"])
    assert not types(stock) & {SmallMapConv2d, ViewGradSqueeze}
    only_squeeze = runners.train_step_runner(8, **variants["route_squeeze_view_grad"])
    assert ViewGradSqueeze in types(only_squeeze) and SmallMapConv2d not in types(only_squeeze)
    nchw = runners.train_step_runner(8, **variants["nchw"])
    assert nchw.train_step.channels_last is False and stock.train_step.channels_last is True
    stock()  # one real step


def test_alternate_warms_up_then_times_each_runner_in_turn_reversing_every_other_round(monkeypatch):
    calls = []
    steps_by_name = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    result = timing.alternate(steps_by_name, steps=2, rounds=3, batch=4, warmup=1)
    assert calls == ["a", "b", "c"] + ["a"] * 2 + ["b"] * 2 + ["c"] * 2 + ["c"] * 2 + ["b"] * 2 + ["a"] * 2 + \
        ["a"] * 2 + ["b"] * 2 + ["c"] * 2
    for d in result.values():
        assert d["rounds"] == 3 and d["min"] <= d["median"] <= d["max"]


def test_compile_that_falls_back_reports_no_figure(monkeypatch):
    from gtsrb import train

    monkeypatch.setattr(train, "_compiled", lambda model: (lambda x: (_ for _ in ()).throw(RuntimeError("no compiler"))))
    with pytest.warns(UserWarning, match="torch.compile failed"):
        assert runners.bench_train(steps=1, batch=8, compile=True) is None


@pytest.mark.slow
def test_naive_loader_bench_reads_torchvision_gtsrb_from_the_archive_across_epochs(synthetic_zip):
    # 8 images in batches of 8: every step after the first starts a new epoch of the loader.
    with runners.naive_runner(synthetic_zip, images=8, batch=8, workers=0) as step:
        for _ in range(3):
            step()


def test_bench_cli_quick_json_has_the_reported_keys(synthetic_zip, capsys, tmp_path, monkeypatch):
    rates = {"default": 100.0, "default_twin": 100.0, "stock": 80.0, "naive": 50.0}

    def fake_alternate(steps_by_name, steps, rounds, batch, warmup=3, round_seconds=None):
        return {name: timing.spread([rates.get(name, 90.0)] * rounds) for name in steps_by_name}

    monkeypatch.setattr(cli, "train_step_runner", lambda batch=128, **kw: (lambda: None))
    monkeypatch.setattr(cli, "alternate", fake_alternate)
    monkeypatch.setattr(cli, "bench_infer", lambda requests: {"infer_ms_p50": 2.0, "infer_ms_p99": 3.0, "eval_img_s": 900.0})
    out = tmp_path / "b.json"
    assert cli.main(["--quick", "--json", "--source", str(synthetic_zip), "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == json.loads(out.read_text())
    for key in ("ceiling_img_s", "train_img_s", "train_img_s_spread", "naive_img_s", "infer_ms_p50", "eval_img_s",
                "ratio_to_ceiling", "speedup_vs_naive", "speedup_vs_stock", "machine", "default_agrees"):
        assert key in result, key
    assert result["speedup_vs_naive"] == 2.0 and result["speedup_vs_stock"] == 1.25 and result["default_agrees"]
    assert set(result["train_variants_img_s"]) >= {"stock", "default_twin", "fp32", "bf16", "route_small_map_conv"}
    assert "default" not in result["train_variants_img_s"] and "naive" not in result["train_variants_img_s"]
    assert result["targets"]["speedup_vs_naive"] == {"value": 2.0, "target": ">= 2.0", "met": True}
    assert {"cpu", "cpu_flags", "cores", "torch", "torch_threads"} <= set(result["machine"])


@pytest.mark.slow
def test_inference_bench_times_predict_and_evaluation_throughput():
    r = runners.bench_infer(requests=4, eval_images=64)
    # No time bound: a unit test that times a shared machine fails when the machine is busy, not when
    # the code is slow (speed lives in `make bench`).
    assert 0 < r["infer_ms_p50"] <= r["infer_ms_p99"] and math.isfinite(r["infer_ms_p99"])
    assert r["eval_img_s"] > 0
