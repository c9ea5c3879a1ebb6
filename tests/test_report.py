"""study.report (`make report`) and study.ablation: the page generator's tables, from hand-made records."""

import json

import pytest

def test_report_fill_rewrites_only_its_block(tmp_path):
    from study.report import fill
    from study.records import pm
    from study.report.common import first_epoch

    f = tmp_path / "R.md"
    f.write_text("intro\n<!-- report:x -->\nold\n<!-- /report:x -->\noutro\n")
    assert fill(f, "x", "new table")
    assert f.read_text() == "intro\n<!-- report:x -->\nnew table\n<!-- /report:x -->\noutro\n"
    assert not fill(f, "y", "nothing")
    assert first_epoch([0.5, 0.96, 0.97], 0.95) == 2 and first_epoch([0.5], 0.95) is None
    assert pm([0.9, 0.92]) == "91.00 ± 1.41"


def test_ablation_plan_runs_every_arm_per_seed_and_leakage_once():
    from study.ablation import plan

    runs = plan(["seed", "no_se", "top1", "seed_random"], [0, 1, 2])
    assert runs[:4] == [("seed", 0), ("no_se", 0), ("top1", 0), ("seed_random", 0)]
    assert len(runs) == 10 and runs.count(("seed_random", 0)) == 1
    assert json.dumps(runs)  # plain values


def test_ablation_top_arms_are_the_studys_best_full_budget_trials_by_last_epoch(tmp_path):
    import pandas as pd

    from gtsrb.config import split_config
    from study.ablation import arm_spec, top_configs

    base = {"se_form": "gate", "se_position": "post_act", "pool": "max", "lr": 2e-3, "weight_decay": 0.05,
            "classifier_dropout": 0.5}
    trials = [  # (trial, epochs run, val curve, SE stages, r, conv dropout)
        ("a", 4, [0.9, 0.99, 0.99, 0.95], (1, 0, 0, 0, 1), 8, 0.1),   # best at any epoch, not at the last
        ("b", 4, [0.5, 0.8, 0.9, 0.97], (0, 1, 0, 0, 0), 16, 0.2),
        ("c", 2, [0.98, 0.99], (1, 1, 1, 1, 1), 4, 0.3),              # stopped early: never a top arm
        ("d", 4, [0.6, 0.7, 0.8, 0.96], (0, 0, 0, 0, 0), None, 0.4),  # no SE: no form, position or r
        ("n", 4, [0.6, 0.7, 0.8, 0.999], (0, 0, 0, 0, 0), None, 0.4),  # the fixed no-SE trial: its own arm
    ]
    summary, curves = [], []
    for trial, epochs, curve, stages, r, drop in trials:
        se = {**base, "se_reduction": r} if any(stages) else {"pool": "max", "lr": 2e-3, "weight_decay": 0.05,
                                                              "classifier_dropout": 0.5}
        summary.append({"trial_id": trial, **{f"se_stage{i + 1}": bool(v) for i, v in enumerate(stages)}, **se,
                        "conv_dropout": drop, "best_val_accuracy": max(curve), "epochs_run": epochs,
                        "role": "no_se" if trial == "n" else "searched"})
        curves += [{"trial_id": trial, "epoch": e + 1, "val_accuracy": v} for e, v in enumerate(curve)]
    pd.DataFrame(summary).to_csv(tmp_path / "summary.csv", index=False)
    pd.DataFrame(curves).to_csv(tmp_path / "curves.csv", index=False)
    top = top_configs(tmp_path)
    assert [c["conv_dropout"] for c in top] == [0.2, 0.4, 0.1]  # b, d, a: last epoch's val, full budget only
    assert top[0]["se_stages"] == [False, True, False, False, False] and top[0]["se_reduction"] == 16
    assert not any(top[1]["se_stages"])
    for c in top:
        split_config(c)  # each builds a ModelConfig and TrainConfig overrides
    assert arm_spec("top2", tmp_path) == (top[1], "track")
    with pytest.raises(ValueError, match="needs a study"):
        arm_spec("top1", None)
    # The incumbent configuration is an arm of its own: here it is trial b's, which leaves the top arms.
    incumbent = json.loads(json.dumps(top[0]))
    assert [c["conv_dropout"] for c in top_configs(tmp_path, incumbent=incumbent)] == [0.4, 0.1]  # d, a
    assert arm_spec("incumbent", tmp_path, incumbent) == (incumbent, "track")
    with pytest.raises(ValueError, match="incumbent-config"):
        arm_spec("incumbent", tmp_path)
    from study.ablation import study_trial

    assert [study_trial(arm, tmp_path) for arm in ("top1", "top2", "top3", "seed_random")] == ["b", "d", "a", None]
    assert study_trial("top1", None) is None
    assert [study_trial(arm, tmp_path, incumbent) for arm in ("incumbent", "top1", "top2")] == ["b", "d", "a"]
    assert study_trial("incumbent", tmp_path, {**incumbent, "lr": 1e-3}) is None  # no trial trained that one


def test_paired_differences_put_every_arm_against_seed_and_no_se_and_the_top_arms_against_the_incumbent():
    import pandas as pd

    from study.report.runs import paired_table

    final = {"seed": [0.97, 0.975], "no_se": [0.98, 0.98], "incumbent": [0.98, 0.985], "top1": [0.99, 0.98]}
    df = pd.DataFrame([{"arm": arm, "seed": s, "final_val": v[s], "test": v[s] + 0.001}
                       for arm, v in final.items() for s in (0, 1)])
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in paired_table(df).splitlines()[2:]}
    assert set(rows) == {"no SE (plain VGG-11) − seed preset (SE on all 5 stages)",
                         "incumbent (quick study's winner) − seed preset (SE on all 5 stages)",
                         "study's best config − seed preset (SE on all 5 stages)",
                         "incumbent (quick study's winner) − no SE (plain VGG-11)",
                         "study's best config − no SE (plain VGG-11)",
                         "study's best config − incumbent (quick study's winner)",
                         "study's best config − incumbent (quick study's winner), seeds ≠ 0 (not the one "
                         "that picked it)"}
    # top1 − incumbent: +1.0 and −0.5 points, higher on one seed of two.
    assert rows["study's best config − incumbent (quick study's winner)"][:3] == ["2", "0.25 ± 1.06", "1/2"]
    # Every run, seed by seed; top1's seed 0 is marked as the study's run that picked it.
    from study.report.runs import runs_table
    runs = runs_table(df.assign(curve=[[v] for v in df["final_val"]], test_n=1000))
    assert "| study's best config | 0 | 99.00 | 99.00 | 99.10 | 9 of 1000 | the seed the study picked it on |" in runs
    continued = runs_table(df.assign(curve=[[v] for v in df["final_val"]], test_n=1000, adopted_epochs=4))
    assert "| study's best config | 0 | 99.00 | 99.00 | 99.10 | 9 of 1000 | study trial (picked it) |" in continued
    assert "| study's best config | 1 | 98.00 | 98.00 | 98.10 | 19 of 1000 |  |" in runs
    # Seed 0 is the study's run that ranked top1 first; without it, top1 is behind on its one fresh seed.
    assert rows["study's best config − incumbent (quick study's winner), seeds ≠ 0 (not the one that "
                "picked it)"][:3] == ["1", "-0.50", "0/1"]


@pytest.mark.slow
def test_the_ablation_continues_the_study_trial_that_trained_the_same_run(synthetic_pack, tmp_path, capsys):
    """A study trial stopped after epoch 1 of 2 is adopted only by the run that trains exactly it, and
    that run trains just the missing epoch."""
    import pandas as pd
    import torch

    from gtsrb.model import ModelConfig
    from gtsrb.config import TrainConfig
    from gtsrb.train import fit
    from study.ablation import adopt_trial, done_at_another_budget, study_trial

    tiny = ModelConfig(cfg=(16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128, "M"))
    study = tmp_path / "study"
    trial = study / "train_trial_abc_1_lr=0.002"

    class Stopped(Exception):  # what ASHA does to a trial at its rung
        pass

    def stop(row, ckpt_dir):
        raise Stopped

    trial_config = TrainConfig(epochs=2, batch_size=64, threads=1, histograms=True)
    with pytest.raises(Stopped):
        fit(tiny, synthetic_pack, tmp_path / "scratch", trial_config, on_epoch=stop, progress=False)
    (trial / "checkpoint_000000").mkdir(parents=True)
    (tmp_path / "scratch" / "last.pt").rename(trial / "checkpoint_000000" / "last.pt")
    pd.DataFrame([{"trial_id": "abc", "role": "seed", "epochs_run": 1, "status": "TERMINATED"}]).to_csv(
        study / "summary.csv", index=False)
    assert study_trial("seed", study) == "abc" and study_trial("no_se", study) is None

    run_config = TrainConfig(epochs=2, batch_size=64, threads=2, histograms=False)
    other = tmp_path / "other"
    assert adopt_trial(study, "abc", other, tiny, TrainConfig(epochs=2, batch_size=64, seed=1), synthetic_pack) is None
    assert adopt_trial(study, "abc", other, ModelConfig(**{**tiny.to_dict(), "pool": "avg"}), run_config,
                       synthetic_pack) is None
    assert adopt_trial(study, "zzz", other, tiny, run_config, synthetic_pack) is None
    printed = capsys.readouterr().out
    assert "differs in seed" in printed and "differs in model_config" in printed and "no checkpoint" in printed
    assert not other.exists()

    out = tmp_path / "run"
    adopted = adopt_trial(study, "abc", out, tiny, run_config, synthetic_pack)
    assert adopted["trial"] == "abc" and adopted["epochs"] == 1 and adopted["train_seconds"] > 0
    assert json.loads((out / "adopted.json").read_text()) == adopted  # for a resume after a kill
    first = torch.load(out / "last.pt", weights_only=False)["history"]
    history = fit(tiny, synthetic_pack, out, run_config, resume=True, progress=False)
    assert [h["epoch"] for h in history] == [1, 2] and history[0] == first[0]

    record = {"train_config": {**run_config.__dict__, "train_splits": ["train"]}}
    assert done_at_another_budget(record, run_config) == []
    assert done_at_another_budget({"train_config": {**run_config.__dict__, "epochs": 10}}, run_config) == [
        "epochs 10 (this run: 2)"]
    # A record trained with another recipe (e.g. one that held the contrast norm) is not this ablation's run.
    from study.ablation import RECIPE

    assert done_at_another_budget({**record, "recipe": RECIPE}, run_config) == []
    other = done_at_another_budget({**record, "recipe": {**RECIPE, "input_norm": "other"}}, run_config)
    assert len(other) == 1 and other[0].startswith("recipe {")


def test_report_gpu_table_shows_each_variant_its_peak_share_and_fallbacks():
    from study.report.speed import gpu_table

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
    from benchmarks.bench.timing import spread

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
    from study.report.speed import speed_table

    text = speed_table(_bench_run(120.0, 100.0, 50.0, 120.0, 40.0), "run.json")
    lines = text.splitlines()
    assert "| default training step (`train_img_s`) | 120 [115–125] | 1.20 | what `gtsrb train`, the study and train-best run |" in lines
    assert any(line.startswith("| variant `stock` | 100 [99–101] | 1.00 |") for line in lines)
    assert any(line.startswith("| variant `route_squeeze_view_grad` | 100 [100–100] | 1.00 | `gtsrb.cpu_routes`: only `squeeze_view_grad`") for line in lines)
    assert "- `speedup_vs_naive` 2.40 (target >= 2.0: met)" in lines
    assert "run.json" in text and "AMD EPYC" in text and "avx2" in text


def test_report_precision_rule_table_reads_old_and_new_bench_runs():
    from study.report.speed import precision_rule_table

    old = {"machine": {"cpu": "Intel Xeon", "cores": 2, "torch": "2.14.1"}, "ceiling_bf16_img_s": 1.0,
           "train_variants_img_s": {"fp32": 379.0, "bf16_channels_last": 829.0}}
    lines = precision_rule_table([("old.json", old), ("new.json", _bench_run(120.0, 100.0, 50.0, 120.0, 40.0))]).splitlines()
    assert lines[2].startswith("| Intel Xeon (?; flags: not recorded) | 379 | 829 | 2.19 | bf16 | `old.json` |")
    assert lines[3] == "| AMD EPYC (AVX2; flags: avx2) | 120 | 40 | 0.33 | fp32 | `new.json` |"


def test_report_precision_table_pairs_each_path_with_fp32_by_seed():
    from study.report.speed import precision_table

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


HELD = {"input_norm": "image", "mirror": True, "label_smoothing": 0.1}  # the recipe as these records had it


def _record(folder, arm, seed, val, test, raw=None, overrides=None, config_file=None):
    rec = {"preset": "best", "arm": arm, "seed": seed, "train_config": {"epochs": 8}, "train_seconds": 1200.0,
           "val_accuracy": val, "test": {"accuracy": test, "n": 7860}, "machine": {"cpu": "X", "cores": 2},
           "command": "python -m study.recipe ...", "overrides": HELD if overrides is None else overrides,
           "config_file": config_file}
    if raw:
        rec["raw"] = raw
    (folder / f"{arm}-seed{seed}.json").write_text(json.dumps(rec))


def test_report_recipe_table_pairs_arms_by_seed_and_names_borrowed_rows(tmp_path):
    from study.report.runs import load_recipe, recipe_table

    folder = tmp_path / "best"
    folder.mkdir()
    _record(folder, "recipe", 1, 0.98, 0.99)
    _record(folder, "old", 0, 0.96, 0.97)
    _record(folder, "old", 1, 0.95, 0.96)
    _record(folder, "ema", 0, 0.97, 0.98, raw={"val_accuracy": 0.985, "test_accuracy": 0.995})
    df = load_recipe(tmp_path)
    rec = df[df["arm"] == "recipe"].set_index("seed")
    assert rec.loc[0, "test"] == 0.995 and rec.loc[0, "from"].startswith("raw weights of")  # borrowed from ema
    assert rec.loc[1, "from"] == ""
    text = recipe_table(df, "the quick config")
    assert "| recipe: ROI crop, per-image contrast norm, class-aware mirror, label smoothing 0.1 | 0, 1 |" in text
    assert "Each run: the quick config," in text
    old_row = next(line for line in text.splitlines() if line.startswith("| old recipe"))
    # old − recipe on test: seed 0: 0.97 − 0.995, seed 1: 0.96 − 0.99 -> mean −2.75 points
    assert "-2.75 ± 0.35 (n=2)" in old_row
    ema_row = next(line for line in text.splitlines() if line.startswith("| recipe + EMA"))
    assert "-1.50 (n=1)" in ema_row
    assert "raw weights of `best/ema-seed0.json`" in text


def test_report_recipe_borrows_the_se_ablations_run_of_the_same_configuration(tmp_path):
    """A folder named after a study arm (study.recipe --name top1) takes the SE ablation's run of that arm
    for the recipe arm it trained (the ablation ran while the recipe held the contrast norm: the ``norm``
    arm now), but only when that run trained the folder's configuration and schedule."""
    from study.report.runs import load_recipe, recipe_table

    config = {"preset": "seed", "lr": 0.005}
    (tmp_path / "best_config.json").write_text(json.dumps(config))
    recipes, ablation = tmp_path / "recipe", tmp_path / "ablation"
    (recipes / "top1").mkdir(parents=True)
    ablation.mkdir()
    for seed, (val, test) in enumerate([(0.984, 0.993), (0.986, 0.995)]):
        _record(recipes / "top1", "recipe", seed, val, test, overrides={"mirror": True, "label_smoothing": 0.1},
                config_file=str(tmp_path / "best_config.json"))
    for seed, (val, test) in enumerate([(0.981, 0.994), (0.982, 0.992)]):
        (ablation / f"top1-seed{seed}.json").write_text(json.dumps({
            "arm": "top1", "seed": seed, "config": config, "recipe": HELD, "train_config": {"epochs": 8},
            "train_seconds": 900.0, "history": [{"val_accuracy": 0.5}, {"val_accuracy": val}],
            "test": {"accuracy": test, "n": 7860}, "machine": {"cpu": "Y", "cores": 2}, "command": "ablation"}))
    df = load_recipe(recipes, ablation)
    norm = df[df["arm"] == "norm"].set_index("seed")
    assert list(norm["val"]) == [0.981, 0.982]  # the last epoch's val, as the recipe records score it
    text = recipe_table(df, "top1")
    assert "| recipe: ROI crop, class-aware mirror, label smoothing 0.1 | 0, 1 |" in text
    norm_row = next(line for line in text.splitlines() if line.startswith("| recipe + per-image contrast norm"))
    assert "| -0.35 ± 0.07 (n=2) | -0.10 ± 0.28 (n=2) |" in norm_row
    assert f"the SE ablation's run `{ablation / 'top1-seed1.json'}`" in text
    assert "Hardware: X, 2 cores, torch ?; Y, 2 cores, torch ?." in text
    # Another configuration in the ablation's record: refused, not paired.
    (tmp_path / "best_config.json").write_text(json.dumps({**config, "lr": 0.001}))
    with pytest.raises(ValueError, match="not top1's configuration"):
        load_recipe(recipes, ablation)


def test_rung_check_reads_the_rank_correlation_and_flatness_off_the_curves(tmp_path):
    import pandas as pd

    from study.report.trials import effects_table, rung_check

    curves = {  # trial: val per epoch; c and d were stopped at ASHA's first rung (epoch 2), f is running
        "a": [0.50, 0.90, 0.950, 0.952], "b": [0.40, 0.80, 0.900, 0.990], "e": [0.45, 0.85, 0.930, 0.932],
        "c": [0.30, 0.60], "d": [0.20, 0.70], "f": [0.1, 0.2, 0.3]}
    # The study's own budget, as `make tune` records it: the running trial is read against it.
    (tmp_path / "profile.json").write_text(json.dumps({"grace": 2, "epochs": 4}))
    pd.DataFrame([{"trial_id": t, "epochs_run": len(c), "status": "RUNNING" if t == "f" else "TERMINATED",
                   "pool": "max",
                   **{f"se_stage{i}": False for i in range(1, 6)}, "se_form": None, "se_position": None,
                   "se_reduction": None, "conv_dropout": 0.1, "classifier_dropout": 0.5}
                  for t, c in curves.items()]).to_csv(tmp_path / "summary.csv", index=False)
    pd.DataFrame([{"trial_id": t, "epoch": e + 1, "val_accuracy": v} for t, c in curves.items()
                  for e, v in enumerate(c)]).to_csv(tmp_path / "curves.csv", index=False)
    text = rung_check(tmp_path)
    assert "First rung at epoch 2: 2 trials stopped there or earlier, 3 ran all 4 epochs, 1 not finished yet" in text
    assert "ρ = -0.50" in text  # ranks (a, b, e): (3, 1, 2) at epoch 2 against (2, 3, 1) at epoch 4
    assert "best finisher (`b`, 99.00%) ranked 3 of 6 trials at epoch 2" in text
    assert "2 of 3 finishers gained at most 0.3 points" in text and "largest gain +9.00 points" in text
    table, n = effects_table(tmp_path)
    # The effects compare trials at the first rung, and the last columns are at the study's last epoch.
    assert "mean val % at epoch 2" in table and "trials reaching epoch 4" in table and n == 6
    # Before the study's budget is known, the rung and the schedule are read off the finished trials.
    (tmp_path / "profile.json").unlink()
    assert "First rung at epoch 2: 2 trials stopped there or earlier, 3 ran all 4 epochs, 1 not finished" in \
        rung_check(tmp_path)


def test_confused_pairs_say_how_many_test_tracks_the_errors_come_from(synthetic_pack, tmp_path):
    import numpy as np
    import torch

    from gtsrb.checkpoint import save_checkpoint
    from gtsrb.data import load_pack
    from gtsrb.inference import Classifier
    from gtsrb.model import ModelConfig, build_model
    from study.report.model import best_model_section, dead_units_text

    torch.manual_seed(0)
    tiny = ModelConfig(cfg=(16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128, "M"))
    ckpt = tmp_path / "tiny.pt"
    model = build_model(tiny)
    dead, block = list(model.se_blocks())[-1]
    with torch.no_grad():  # the last block's hidden units all at zero for every input: dead
        block.fc1.weight.zero_()
    save_checkpoint({"model_config": tiny.to_dict(), "model": model.state_dict(), "epoch": 0}, ckpt)
    summary, pairs_md = best_model_section(ckpt, synthetic_pack, tmp_path)
    assert (tmp_path / "worst_val_tracks.png").stat().st_size > 0
    test = load_pack(synthetic_pack, "test")
    clf = Classifier.load(ckpt)
    pred = clf.predict_arrays(test.images).probs.argmax(1)
    # The held counterfactual: every gate at its mean over the val split, scored on test.
    val_gates = clf.predict_arrays(load_pack(synthetic_pack, "val").images).excitations
    assert clf.se_names and set(val_gates) == set(clf.se_names)
    with clf.se_held({n: g.mean(0) for n, g in val_gates.items()}):
        held = clf.predict_arrays(test.images).probs.argmax(1)
    assert summary["se_held_accuracy"] == float((held == test.labels).mean())
    assert summary["se_held_changed"] == float((held != pred).mean())
    assert set(summary["se_constant"]) <= set(clf.se_names)
    # dead ReLUs: the last block has none that fires, so its gate is 0.5 everywhere; the others have some
    fired = summary["se_hidden_fired"]
    assert list(fired) == clf.se_names and fired[dead] == [0, block.fc1.out_channels]
    assert summary["se_constant"][dead]["all_half"]
    assert all(0 < n <= total for name, (n, total) in fired.items() if name != dead)
    text = dead_units_text(fired, summary["se_position"])
    assert "dead ReLUs" in text and f"{dead} 0 of {block.fc1.out_channels}" in text
    assert "no bias" in text and "no bias" not in dead_units_text(fired, summary["se_position"], bias=True)
    assert summary["se_position"] == "pre_bn" and "never negative" not in text  # pre-BN: a signed squeeze
    assert "never negative" in dead_units_text(fired, "post_act")
    assert dead_units_text({"stage1": [8, 8]}, "pre_bn") == " Every hidden unit of every SE block fires on some val image."
    rows = [line.split(" | ") for line in pairs_md.splitlines()[2:]]
    assert rows, "an untrained model confuses something"
    for row in rows:
        t, p = int(row[0].lstrip("| ").split()[0]), int(row[1].split()[0])
        errors = (test.labels == t) & (pred == p)
        assert int(row[2]) == errors.sum()
        assert row[4].rstrip(" |") == (f"{len(np.unique(test.groups[errors]))} of "
                                       f"{len(np.unique(test.groups[test.labels == t]))}")


def test_the_stopped_fixed_trials_are_continued_by_the_ablations_seed_0_runs(tmp_path):
    import pandas as pd

    from study.report.trials import asha_controls

    curves = {"a": [0.5, 0.90, 0.95, 0.96], "b": [0.4, 0.80, 0.90, 0.99], "seed": [0.3, 0.60], "no_se": [0.45, 0.85, 0.93, 0.94]}
    roles = {"a": "searched", "b": "searched", "seed": "seed", "no_se": "no_se"}
    (tmp_path / "profile.json").write_text(json.dumps({"grace": 2, "epochs": 4}))
    pd.DataFrame([{"trial_id": t, "role": roles[t], "epochs_run": len(c), "status": "TERMINATED"}
                  for t, c in curves.items()]).to_csv(tmp_path / "summary.csv", index=False)
    pd.DataFrame([{"trial_id": t, "epoch": e + 1, "val_accuracy": v} for t, c in curves.items()
                  for e, v in enumerate(c)]).to_csv(tmp_path / "curves.csv", index=False)

    def run(arm, seed, curve, epochs=4, recipe=True, adopted=0):
        return {"arm": arm, "seed": seed, "curve": curve, "recipe": recipe, "epochs": epochs, "train_fraction": 1.0,
                "split_kind": "track", "adopted_epochs": adopted}

    ablation = pd.DataFrame([run("seed", 0, [0.31, 0.61, 0.9, 0.97]), run("seed", 1, [0.1, 0.2, 0.3, 0.999]),
                             run("no_se", 0, [0.45, 0.85, 0.93, 0.941]),
                             run("no_se", 0, [0.1, 0.1, 0.1, 0.1], epochs=10)])  # another budget: not a control
    text = asha_controls(tmp_path, ablation)
    # Finishers at epoch 4: b 0.99, a 0.96, no_se 0.94; the seed trial's continuation (0.97) ranks 2nd of 4.
    assert ("`seed`: ASHA stopped it at epoch 2 (60.00% val). Trained to the end (re-run from scratch, which had "
            "61.00% at epoch 2), it reaches 97.00% at epoch 4, which would rank 2 of 4 among the study's "
            "finishers.") in text
    assert "`no_se` ran the whole schedule in the study (94.00% val at epoch 4); the ablation's seed-0 re-run ends at 94.10%" in text
    assert asha_controls(tmp_path, ablation[ablation["epochs"] == 10]) == ""  # no run at the study's budget
    # On the study's machine the ablation adopts the trials' checkpoints (study.ablation.adopt_trial).
    adopted = pd.DataFrame([run("seed", 0, [0.3, 0.6, 0.9, 0.98], adopted=2),
                            run("no_se", 0, [0.45, 0.85, 0.93, 0.94], adopted=4)])
    text = asha_controls(tmp_path, adopted)
    assert "Trained to the end (continued from its epoch-2 checkpoint), it reaches 98.00% at epoch 4" in text
    assert "the ablation's seed-0 run is that trial itself." in text


def test_make_report_with_no_results_fills_nothing_and_says_so(tmp_path, capsys):
    """Every source is optional: a fresh folder gives an empty headline and leaves the page's blocks alone."""
    from study.report import main

    page = tmp_path / "REPORT.md"
    page.write_text("<!-- report:ablation -->\nkept\n<!-- /report:ablation -->\n")
    missing = tmp_path / "none"
    args = ["--data", str(missing / "p.h5"), "--study", str(missing), "--ablation", str(missing),
            "--checkpoint", str(missing / "best.pt"), "--recipe", str(missing), "--out", str(tmp_path / "out"),
            "--report", str(page), "--readme", str(missing / "R.md"), "--speed", str(missing / "S.md"),
            "--loadtest", str(missing / "l.json"), "--bench", str(missing / "b.json"),
            "--precision", str(missing / "pr.json"), "--bench-gpu", str(missing / "g.json")]
    assert main(args) == 0
    assert json.loads((tmp_path / "out" / "headline.json").read_text()) == {}
    assert "kept" in page.read_text()
    assert f"ablation records: {missing}" in capsys.readouterr().out


@pytest.mark.slow
def test_make_ablation_trains_each_run_once_and_refuses_a_record_at_another_budget(framed_pack, tmp_path, capsys):
    from study.ablation import main

    tiny = tmp_path / "tiny.json"  # the incumbent arm with a tiny layout: the presets are slow for a unit test
    tiny.write_text(json.dumps({"cfg": [16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128, "M"]}))
    results = tmp_path / "res"
    args = ["--data", str(framed_pack), "--arms", "incumbent", "--seeds", "0", "--epochs", "1", "--precision", "fp32",
            "--incumbent-config", str(tiny), "--runs", str(tmp_path / "runs"), "--results", str(results)]
    results.mkdir()
    old = {"arm": "incumbent", "train_config": {"epochs": 10, "train_fraction": 0.4}}
    (results / "incumbent-seed0.json").write_text(json.dumps(old))
    assert main(args) == 2
    assert "incumbent-seed0.json holds a run at another budget (epochs 10 (this run: 1); train_fraction 0.4" in \
        capsys.readouterr().err
    assert json.loads((results / "incumbent-seed0.json").read_text()) == old  # nothing lost
    (results / "incumbent-seed0.json").unlink()
    assert main(args) == 0
    rec = json.loads((results / "incumbent-seed0.json").read_text())
    assert rec["arm"] == "incumbent" and rec["adopted"] is None and len(rec["history"]) == 1
    assert rec["train_config"]["precision"] == "fp32"  # as asked, whatever this CPU would pick
    assert rec["train_seconds"] == pytest.approx(rec["history"][0]["seconds"], abs=0.1)
    assert 0 <= rec["test"]["accuracy"] <= 1 and "ece" in rec["test"]
    assert main(args) == 0 and "incumbent seed 0: done, skipped" in capsys.readouterr().out
    # A record of another configuration under the same arm (a new incumbent, or a changed ranking) is refused.
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"cfg": [16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 64, 64, "M"]}))
    before = (results / "incumbent-seed0.json").read_text()
    assert main([*args[:-4], "--incumbent-config", str(other), *args[-4:]]) == 2
    assert "incumbent-seed0.json holds another configuration" in capsys.readouterr().err
    assert (results / "incumbent-seed0.json").read_text() == before
    assert main([*args[:-2], "--results", str(results), "--incumbent-config", str(tmp_path / "none.json")]) == 2
    assert "--incumbent-config" in capsys.readouterr().err


def test_report_recipe_blocks_one_table_per_configuration_and_the_headline_quotes_the_release_one(tmp_path):
    from study.report import recipe_blocks

    for name, test in (("best", 0.99), ("top1", 0.995)):
        (tmp_path / name).mkdir()
        for seed in (0, 1):
            _record(tmp_path / name, "recipe", seed, 0.98, test + seed / 1000,
                    overrides={"mirror": True, "label_smoothing": 0.1})
    _record(tmp_path / "best", "old", 0, 0.97, 0.98, overrides={})
    blocks, headline = recipe_blocks(tmp_path, None)
    assert set(blocks) == {"recipe", "recipe_top1"} and "old recipe" in blocks["recipe"]
    assert headline["recipe"]["test"] == "99.55 ± 0.07" and "`top1`" in headline["recipe"]["what"]
    assert headline["recipe"]["held"] == "ROI crop, class-aware mirror, label smoothing 0.1"
    (tmp_path / "unnamed").mkdir()
    _record(tmp_path / "unnamed", "recipe", 0, 0.98, 0.99)
    with pytest.raises(ValueError, match="RECIPE_FOLDERS"):
        recipe_blocks(tmp_path, None)


def test_error_tracks_counts_errors_per_physical_sign():
    import numpy as np

    from study.report.model import WORST_TRACKS, error_tracks

    groups = np.repeat(np.arange(8), 3)  # 8 tracks of 3 frames
    labels = np.zeros(24, int)
    pred = labels.copy()
    pred[[0, 1, 2, 4, 9]] = 1  # track 0 wholly wrong, one frame of tracks 1 and 3
    t = error_tracks(labels, pred, groups)
    assert t == {"n": 24, "tracks": 8, "errors": 5, "tracks_with_errors": 3,
                 "in_worst_tracks": 5, "worst_track": 3}
    assert WORST_TRACKS >= 3
    assert error_tracks(labels, labels, groups)["worst_track"] == 0
