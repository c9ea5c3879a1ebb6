"""The demo's Study tab (ui/study/): its loaders on the committed results/ and on small made-up
folders (missing and malformed files included), the facts its captions state, its charts, its layout, and
the tab in a real browser.

The browser test drives Debian's Chromium (never a Playwright download) against the tab alone, served
in-process; its screenshot goes to artifacts/ui/study.png (git-ignored).
"""

from __future__ import annotations

import csv
import json
import os
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

pd = pytest.importorskip("pandas")
pytest.importorskip("altair")  # the `ui` extra
gr = pytest.importorskip("gradio")

from ui.study import (  # noqa: E402
    MEASURE_AT,
    MEASURE_BEST,
    StudyView,
    ablation_bands,
    ablation_folder,
    ablation_view,
    build_study_tab,
    common_epoch,
    factor_table,
    find_studies,
    load_ablation,
    load_curves,
    load_profile,
    load_trials,
    study_view,
    trials_table,
)
from ui.study.text import ablation_facts, study_facts

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
ABLATION = ablation_folder(RESULTS)
ARTIFACTS = REPO / "artifacts" / "ui"
CHROMIUM = Path("/usr/bin/chromium")
WAIT_MS = 60_000
PLOTS = ("study-curves", "study-factors", "study-ablation")


def _real_study() -> Path:
    studies = find_studies(RESULTS)
    if not studies:
        pytest.skip("no results/study/<name>/summary.csv committed")
    return studies[0]


def _csv_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _tab_config_bytes(results: Path) -> int:
    with gr.Blocks() as app:
        with gr.Tab("Study"):
            build_study_tab(results)
    return len(json.dumps(app.get_config_file(), default=str))


# ------------------------------------------------------------------------------------------ made-up folders
SUMMARY_HEADER = ("trial_id,role,se_stage1,se_stage2,se_stage3,se_stage4,se_stage5,se_form,se_position,se_reduction,"
                  "conv_dropout,classifier_dropout,pool,lr,weight_decay,best_val_accuracy,best_epoch,epochs_run,status,"
                  "retried_from_epoch,nodes,trial_dir,outcome")
SUMMARY_ROWS = [
    "aaaa0001,searched,True,False,False,False,True,gate,post_act,8.0,0.2,0.3,max,0.002,0.01,0.60,4,4,TERMINATED,0,n1,"
    "/very/long/path/train_trial_aaaa0001_with_a_name_longer_than_any_cell_should_be,full budget",
    "bbbb0002,no_se,False,False,False,False,False,,,,0.4,0.5,max,0.002,0.05,0.50,4,4,TERMINATED,0,n1,x,full budget",
    "cccc0003,searched,True,True,True,True,True,scale_shift,pre_bn,16.0,0.1,0.1,avg,0.001,0.1,0.20,2,2,TERMINATED,0,"
    "n1,y,stopped early (ASHA)",
]
CURVES = {"aaaa0001": [0.10, 0.30, 0.55, 0.60], "bbbb0002": [0.15, 0.25, 0.45, 0.50], "cccc0003": [0.12, 0.20]}


def make_study(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "summary.csv").write_text("\n".join([SUMMARY_HEADER, *SUMMARY_ROWS]) + "\n")
    lines = ["trial_id,epoch,val_accuracy"] + [f"{t},{e + 1},{v}" for t, c in CURVES.items() for e, v in enumerate(c)]
    (folder / "curves.csv").write_text("\n".join(lines) + "\n")
    return folder


ABLATION_CURVES = {("seed", 0): [0.2, 0.5, 0.7], ("seed", 1): [0.3, 0.6, 0.8], ("seed", 2): [0.1, 0.4, 0.9],
                   ("no_se", 0): [0.25, 0.55, 0.75], ("no_se", 1): [0.35, 0.65, 0.85],
                   ("seed_random", 0): [0.5, 0.8, 0.95]}


def make_ablation(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for (arm, seed), curve in ABLATION_CURVES.items():
        record = {
            "arm": arm, "seed": seed, "split_kind": "random" if arm == "seed_random" else "track",
            "model_config": {"se_stages": [arm != "no_se"] * 5, "se_form": "scale_shift", "se_position": "pre_bn",
                             "conv_dropout": 0.4, "classifier_dropout": 0.5},
            "train_config": {"epochs": 3, "train_fraction": 0.4, "val_fraction": 0.5, "lr": 0.002,
                             "weight_decay": 0.05},
            "history": [{"epoch": e + 1, "val_accuracy": v, "train_loss": 1.0} for e, v in enumerate(curve)],
            "test": {"accuracy": curve[-1] - 0.01, "n": 100}, "wall_seconds": 1.0,
            "command": "python -m study.ablation --made-up",
        }
        (folder / f"{arm}-seed{seed}.json").write_text(json.dumps(record))
    return folder


# ------------------------------------------------------------------------------------------ the committed files
def test_real_trials_match_summary_csv_row_for_row():
    folder = _real_study()
    rows = _csv_rows(folder / "summary.csv")
    trials, notes = load_trials(folder)
    assert notes == []
    assert len(trials) == len(rows) > 0
    assert list(trials["trial_id"]) == [r["trial_id"] for r in rows]
    assert trials["best_val_accuracy"].tolist() == pytest.approx([float(r["best_val_accuracy"]) for r in rows])
    assert set(trials["se_stage1"]) <= {True, False}

    table = trials_table(trials)
    assert len(table) == len(rows)
    assert list(table["trial"]) == [r["trial_id"] for r in sorted(rows, key=lambda r: -float(r["best_val_accuracy"]))]
    assert table["best val acc"].tolist() == sorted(table["best val acc"], reverse=True)
    assert not {"trial_dir", "nodes"} & set(table.columns)
    longest = max(len(str(v)) for v in table.to_numpy().ravel())
    assert longest < 30, f"a cell of {longest} characters: a path left in the table?"
    best = max(rows, key=lambda r: float(r["best_val_accuracy"]))
    assert table.iloc[0]["best val acc"] == round(float(best["best_val_accuracy"]), 4)


def test_real_curves_agree_with_the_summary():
    folder = _real_study()
    rows = _csv_rows(folder / "curves.csv")
    curves, notes = load_curves(folder)
    trials, _ = load_trials(folder)
    assert notes == [] and len(curves) == len(rows)
    assert set(curves["trial_id"]) == set(trials["trial_id"])
    per = curves.groupby("trial_id").agg(best=("val_accuracy", "max"), last=("epoch", "max"))
    t = trials.set_index("trial_id")
    # curves.csv rounds to 6 decimals; summary.csv keeps full precision
    assert per["best"].to_numpy() == pytest.approx(t.loc[per.index, "best_val_accuracy"].to_numpy(), abs=1e-6)
    assert (per["last"] == t.loc[per.index, "epochs_run"]).all()


def test_real_factor_effects_at_the_common_epoch_are_the_hand_computed_means():
    """The 'at the last epoch every trial reached' view: REPORT.md's factor table compares at epoch 2."""
    folder = _real_study()
    trials, _ = load_trials(folder)
    curves, _ = load_curves(folder)
    rows = _csv_rows(folder / "curves.csv")
    summary = _csv_rows(folder / "summary.csv")
    last = {}
    for r in rows:
        last[r["trial_id"]] = max(last.get(r["trial_id"], 0), int(r["epoch"]))
    epoch = min(last.values())
    assert common_epoch(curves, trials) == epoch
    at = {r["trial_id"]: float(r["val_accuracy"]) for r in rows if int(r["epoch"]) == epoch}
    long = factor_table(trials, curves, MEASURE_AT)
    for level in ("gate", "scale_shift"):
        ids = [r["trial_id"] for r in summary if r["se_form"] == level]
        got = long[(long["factor"] == "se_form") & (long["level"] == level)]
        assert sorted(got["trial_id"]) == sorted(ids)
        assert got["y"].mean() == pytest.approx(statistics.mean(at[i] for i in ids))
    # SE form exists only for trials with SE; the stage factors cover every trial
    n_se = sum(any(r[f"se_stage{i}"] == "True" for i in range(1, 6)) for r in summary)
    assert (long["factor"] == "se_form").sum() == n_se
    assert (long["factor"] == "se_stage1").sum() == len(summary)
    best = factor_table(trials, curves, MEASURE_BEST)
    lr = best[best["factor"] == "lr"].set_index("trial_id")
    assert lr.loc[summary[0]["trial_id"], "x"] == pytest.approx(float(summary[0]["lr"]))
    assert lr.loc[summary[0]["trial_id"], "y"] == pytest.approx(float(summary[0]["best_val_accuracy"]))


def test_the_tab_shows_the_newest_ablation_that_holds_a_run(tmp_path):
    (tmp_path / "ablation-quick").mkdir()
    assert ablation_folder(tmp_path) == tmp_path / "ablation-quick"
    (tmp_path / "ablation").mkdir()
    (tmp_path / "ablation-framed").mkdir()
    assert ablation_folder(tmp_path) == tmp_path / "ablation-quick"  # an empty folder is no ablation yet
    (tmp_path / "ablation" / "seed-seed0.json").write_text("{}")
    assert ablation_folder(tmp_path) == tmp_path / "ablation"
    (tmp_path / "ablation-framed" / "seed-seed0.json").write_text("{}")
    assert ablation_folder(tmp_path) == tmp_path / "ablation-framed"  # the recipe that ships
    assert ablation_folder(tmp_path / "nothing") == tmp_path / "nothing" / "ablation-framed"  # says what is missing


def test_real_ablation_band_mean_is_the_hand_computed_mean():
    files = sorted(ABLATION.glob("*-seed*.json"))
    if not files:
        pytest.skip("no results/ablation/*.json committed")
    runs, notes = load_ablation(ABLATION)
    assert notes == []
    records = [json.loads(f.read_text()) for f in files]
    assert runs[["arm", "seed"]].drop_duplicates().shape[0] == len(files)
    bands = ablation_bands(runs).set_index(["arm", "epoch"])
    for arm in {r["arm"] for r in records}:
        mine = [r for r in records if r["arm"] == arm]
        for epoch in (1, len(mine[0]["history"])):
            vals = [next(h["val_accuracy"] for h in r["history"] if h["epoch"] == epoch) for r in mine]
            row = bands.loc[(arm, epoch)]
            assert row["n"] == len(vals)
            assert row["mean"] == pytest.approx(statistics.mean(vals))
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            assert row["std"] == pytest.approx(sd)
            mean = statistics.mean(vals)
            assert (row["lower"], row["upper"]) == pytest.approx((mean - sd, mean + sd))


def test_real_ablation_numbers_agree_with_the_report():
    """The tab's per-arm table is study.report's: same final val and test figures, same formatting."""
    report = pytest.importorskip("study.report.runs")  # needs the `study` extra (scipy)
    from study.records import pm
    if not any(ABLATION.glob("*-seed*.json")):
        pytest.skip("no results/ablation/*.json committed")
    view = ablation_view(ABLATION)
    df = report.load_ablation(ABLATION)
    for arm in ("seed", "no_se", "best"):
        d = df[df["arm"] == arm]
        if d.empty:
            continue
        assert f"| {pm(d['final_val'])} | {pm(d['test'])} |" in view.text, arm
    assert set(df["command"]) <= set(view.commands.splitlines())  # every recorded command, in the Commands section
    assert "python -m study.ablation" not in view.text  # and only there
    spec = view.chart.to_dict()
    shown = {row["arm_label"] for ds in spec["datasets"].values() for row in ds if "arm_label" in row}
    assert "seed preset, random split" not in shown  # not on the track split: not comparable
    if (df["arm"] == "seed_random").any():
        assert "seed_random" in view.text  # named in the text instead


def test_real_tab_payload_is_small():
    _real_study()
    assert _tab_config_bytes(RESULTS) < 1_000_000


@pytest.mark.slow  # a fresh interpreter imports the tab
def test_ui_study_imports_no_model_code():
    code = "import sys, ui.study; bad = {'torch', 'gtsrb.model'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                   env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})


# ------------------------------------------------------------------------------------------ made-up folders
def test_made_up_study_loads_and_draws(tmp_path):
    folder = make_study(tmp_path / "study" / "tiny")
    trials, notes = load_trials(folder)
    assert notes == [] and len(trials) == len(SUMMARY_ROWS)
    assert trials.set_index("trial_id").loc["bbbb0002", "se_stage1"] is False
    curves, notes = load_curves(folder)
    assert notes == [] and len(curves) == sum(len(c) for c in CURVES.values())
    assert common_epoch(curves, trials) == 2

    table = trials_table(trials)
    assert list(table["trial"]) == ["aaaa0001", "bbbb0002", "cccc0003"]
    assert list(table["SE stages 1-5"]) == ["10001", "00000", "11111"]
    assert table.set_index("trial").loc["bbbb0002", "SE form"] == "–"
    assert "long/path" not in table.to_csv()

    at2 = factor_table(trials, curves, MEASURE_AT)
    pool = at2[at2["factor"] == "pool"].set_index("trial_id")["y"]
    assert pool.to_dict() == pytest.approx({t: c[1] for t, c in CURVES.items()})
    assert set(at2[at2["factor"] == "se_reduction"]["level"]) == {"8", "16"}  # no level for the no-SE trial

    view = study_view(folder)
    assert "**3 trials**" in view.caption and "summary.csv" in view.caption
    assert load_profile(folder) == (None, [])  # "tiny" is no profile of study/tune.py, and has no profile.json
    facts = study_facts(folder, trials, [], None)
    assert (facts["n"], facts["top"], facts["full"], facts["stopped"], facts["budgets"], facts["running"]) == \
        (3, 4, 2, 1, [2], 0)
    assert "study.tune --name" not in view.commands  # no command recorded
    # How the study was run, from the profile.json that `make tune` writes: it wins over the profile's name.
    command = "python -m study.tune --name tiny --trials 3 --epochs 4"
    (folder / "profile.json").write_text(json.dumps({
        "trials": 3, "epochs": 4, "grace": 2, "train_fraction": 1.0, "val_fraction": 1.0, "command": command}))
    profile, notes = load_profile(folder)
    assert notes == [] and profile.recorded and (profile.trials, profile.epochs, profile.grace) == (3, 4, 2)
    assert study_facts(folder, trials, [], profile)["agree"]
    view = study_view(folder)
    assert command in view.commands.splitlines() and command not in view.caption
    assert len(view.table) == 3
    assert view.curves_chart is not None and view.factors_chart is not None
    data = [row for ds in view.curves_chart.to_dict()["datasets"].values() for row in ds]
    assert len(data) == len(curves)
    # A profile.json that cannot be read is noted, and the folder's name says nothing here.
    (folder / "profile.json").write_text("{cut short")
    profile, notes = load_profile(folder)
    assert profile is None and "profile.json" in notes[0] and "not valid JSON" in notes[0]
    assert "profile.json" in study_view(folder).caption


def test_a_study_in_progress_says_which_trials_are_still_running(tmp_path):
    folder = make_study(tmp_path / "study" / "tiny")
    rows = [*SUMMARY_ROWS[:2], SUMMARY_ROWS[2].replace("TERMINATED", "RUNNING").replace("stopped early (ASHA)", "running")]
    (folder / "summary.csv").write_text("\n".join([SUMMARY_HEADER, *rows]) + "\n")
    trials, _ = load_trials(folder)
    facts = study_facts(folder, trials, [], None)
    # The running trial at epoch 2 is not "stopped": its numbers are so far.
    assert (facts["stopped"], facts["budgets"], facts["running"]) == (0, [], 1)
    assert "still running" in study_view(folder).caption


def test_made_up_ablation_band_is_mean_and_sample_std(tmp_path):
    folder = make_ablation(tmp_path / "ablation")
    runs, notes = load_ablation(folder)
    assert notes == [] and len(runs) == sum(len(c) for c in ABLATION_CURVES.values())
    bands = ablation_bands(runs).set_index(["arm", "epoch"])
    row = bands.loc[("seed", 2)]
    assert row["n"] == 3
    assert row["mean"] == pytest.approx((0.5 + 0.6 + 0.4) / 3)
    assert row["std"] == pytest.approx(0.1)  # sample std (n-1) of 0.4, 0.5, 0.6
    assert (row["min"], row["max"]) == pytest.approx((0.4, 0.6))
    assert bands.loc[("seed_random", 1), "std"] == 0.0  # one run: no band

    view = ablation_view(folder)
    assert "python -m study.ablation --made-up" in view.commands.splitlines()
    facts = ablation_facts(folder, runs, ["seed", "no_se"], [])
    assert facts["not_drawn"] == [("seed_random", ["random"])]
    assert [(r["label"], r["n"], r["final"], r["test"]) for r in facts["rows"]] == [
        ("seed preset (SE on all 5 stages)", 3, "80.00 ± 10.00", "79.00 ± 10.00"),
        ("no SE (plain VGG-11)", 2, "80.00 ± 7.07", "79.00 ± 7.07")]
    assert facts["budget"] == {"train_fraction": "40%", "val_fraction": "50%", "split_kind": "track", "epochs": "3"}
    assert facts["seed_vs_no_se"] == [] and facts["n_min"] == 2
    assert "| 80.00 ± 10.00 | 79.00 ± 10.00 |" in view.text  # the table the tab shows holds those numbers
    spec = view.chart.to_dict()
    marks = json.dumps(spec["layer"])
    assert '"area"' in marks and '"line"' in marks
    band_rows = [r for ds in spec["datasets"].values() for r in ds if "upper" in r]
    assert {r["arm"] for r in band_rows} == {"seed", "no_se"}
    assert facts["picked"] == []  # no study top arm among these

    # A study top arm's seed-0 run is the trial that ranked it: the tab says it leans high.
    record = json.loads((folder / "no_se-seed0.json").read_text())
    (folder / "top1-seed0.json").write_text(json.dumps({**record, "arm": "top1"}))
    runs, _ = load_ablation(folder)
    assert ablation_facts(folder, runs, ["seed", "no_se", "top1"], [])["picked"] == ["top1"]
    assert "`top1`" in ablation_view(folder).text


def test_missing_files_give_notes_not_exceptions(tmp_path):
    empty = tmp_path / "study" / "empty"
    empty.mkdir(parents=True)
    trials, notes = load_trials(empty)
    assert trials.empty and len(notes) == 1 and "summary.csv" in notes[0] and "not found" in notes[0]
    curves, notes = load_curves(empty)
    assert curves.empty and "not found" in notes[0]
    runs, notes = load_ablation(tmp_path / "no-ablation")
    assert runs.empty and "not found" in notes[0]
    runs, notes = load_ablation(empty)  # a folder without a single run file
    assert runs.empty and "no `<arm>-seed<k>.json`" in notes[0]

    view = study_view(empty)
    assert "not found" in view.caption and view.curves_chart is None and view.factors_chart is None
    assert "not found" in view.curves_text
    abl = ablation_view(tmp_path / "no-ablation")
    assert "not found" in abl.text and abl.chart is None

    # summary.csv without curves.csv: the table still shows, the curve plot says why it is empty
    folder = make_study(tmp_path / "study" / "no-curves")
    (folder / "curves.csv").unlink()
    view = study_view(folder)
    assert len(view.table) == 3 and view.curves_chart is None
    assert "curves.csv" in view.curves_text and "not found" in view.curves_text
    assert view.factors_chart is not None  # best val accuracy comes from summary.csv
    assert study_view(folder, MEASURE_AT).factors_chart is None


def test_malformed_files_give_notes_not_exceptions(tmp_path):
    folder = tmp_path / "study" / "bad"
    folder.mkdir(parents=True)
    (folder / "summary.csv").write_text("this is,not\nthe summary\n")
    (folder / "curves.csv").write_bytes(b"\x00\xff\xfe garbage")
    trials, notes = load_trials(folder)
    assert trials.empty and "malformed" in notes[0] and "best_val_accuracy" in notes[0]
    curves, notes = load_curves(folder)
    assert curves.empty and notes and "curves.csv" in notes[0]
    assert "malformed" in study_view(folder).caption

    # rows with bad values: kept where they can be, counted in a note
    folder = make_study(tmp_path / "study" / "half")
    text = (folder / "summary.csv").read_text().replace(",0.20,2,2,", ",oops,2,2,")
    (folder / "summary.csv").write_text(text)
    (folder / "curves.csv").write_text((folder / "curves.csv").read_text() + "aaaa0001,five,0.7\n")
    trials, notes = load_trials(folder)
    assert len(trials) == 3 and any("not numbers" in n for n in notes) and any("no best val" in n for n in notes)
    assert trials_table(trials)["trial"].iloc[-1] == "cccc0003"  # the trial without a number goes last
    curves, notes = load_curves(folder)
    assert len(curves) == sum(len(c) for c in CURVES.values()) and "left out" in notes[0]
    assert "cccc0003" not in set(factor_table(trials, curves)["trial_id"])

    # one broken run file among good ones: the others still load
    abl = make_ablation(tmp_path / "ablation")
    (abl / "best-seed0.json").write_text("{not json")
    (abl / "best-seed1.json").write_text(json.dumps({"arm": "best", "seed": 1}))
    runs, notes = load_ablation(abl)
    assert runs[["arm", "seed"]].drop_duplicates().shape[0] == len(ABLATION_CURVES)
    assert len(notes) == 2 and all("malformed" in n for n in notes)
    assert any("best-seed1.json" in n and "history" in n for n in notes)
    view = ablation_view(abl)
    assert view.chart is not None and "best-seed0.json" in view.text
    # a bare record (no config, budget or test block) still draws, with "?" where the files say nothing
    bare = {"arm": "best", "seed": 2, "split_kind": "track",
            "history": [{"epoch": e + 1, "val_accuracy": v} for e, v in enumerate([.3, .6, .7])]}
    (abl / "best-seed2.json").write_text(json.dumps(bare))
    view = ablation_view(abl)
    assert view.chart is not None
    runs, notes = load_ablation(abl)
    facts = ablation_facts(abl, runs, ["seed", "no_se", "best"], notes)
    best = next(r for r in facts["rows"] if r["label"] == "study best config")
    assert (best["stages"], best["lr"], best["test"], best["final"]) == ("", "?", "?", "70.00")
    assert facts["budget"] is None  # the runs do not share one budget
    del bare["split_kind"]
    (abl / "best-seed2.json").write_text(json.dumps(bare))
    runs, notes = load_ablation(abl)
    assert ablation_facts(abl, runs, ["seed", "no_se"], notes)["not_drawn"] == [("best", None), ("seed_random", ["random"])]
    assert "`best`" in ablation_view(abl).text


def test_the_newest_study_comes_first_and_an_empty_results_folder_builds(tmp_path):
    old = make_study(tmp_path / "results" / "study" / "old")
    new = make_study(tmp_path / "results" / "study" / "new")
    (tmp_path / "results" / "study" / "trials-only").mkdir()  # no summary.csv: not a study
    os.utime(old / "summary.csv", (2_000_000_000, 2_000_000_000))
    os.utime(new / "summary.csv", (1_000_000_000, 1_000_000_000))
    assert [p.name for p in find_studies(tmp_path / "results")] == ["old", "new"]
    assert find_studies(tmp_path / "nothing") == []

    with gr.Blocks() as app:
        with gr.Tab("Study"):
            build_study_tab(tmp_path / "results")
    config = app.get_config_file()
    dropdown = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "study-pick")
    assert dropdown["props"]["value"] == "old"
    assert [c[0] if isinstance(c, (list, tuple)) else c for c in dropdown["props"]["choices"]] == ["old", "new"]
    # picking the other study (the dropdown's and the radio's handler) redraws everything from its files
    handlers = [f.fn for f in app.fns.values()]
    assert len(handlers) == 2 and all(f.api_visibility == "private" for f in app.fns.values())
    view = StudyView(*handlers[0]("new", MEASURE_AT))
    assert "`new`" in view.caption and len(view.table) == 3
    assert view.curves_chart is not None and view.factors_chart is not None
    assert "epoch 2" in view.factors_text
    assert "**The study `new`.**" in view.commands and "**The SE ablation**" in view.commands
    assert "No study `gone`" in StudyView(*handlers[0]("gone", MEASURE_BEST)).caption

    with gr.Blocks():  # nothing at all under results/: notes, no exception
        with gr.Tab("Study"):
            build_study_tab(tmp_path / "nothing")


def test_the_tab_leads_with_its_figures_and_keeps_every_command_in_one_closed_section_at_the_end(tmp_path):
    make_study(tmp_path / "results" / "study" / "tiny")
    (tmp_path / "results" / "study" / "tiny" / "profile.json").write_text(json.dumps(
        {"trials": 3, "epochs": 4, "grace": 2, "command": "python -m study.tune --name tiny"}))
    make_ablation(tmp_path / "results" / "ablation")
    with gr.Blocks() as app, gr.Tab("Study"):
        build_study_tab(tmp_path / "results")
    config = app.get_config_file()
    components = {c["id"]: c for c in config["components"]}

    def walk(node, inside=()):
        c = components.get(node["id"], {})
        here = (*inside, c.get("type"))
        yield c.get("props", {}).get("elem_id"), here, c
        for child in node.get("children", []):
            yield from walk(child, here)

    order = [(elem, path, c) for elem, path, c in walk(config["layout"]) if elem]
    ids = [elem for elem, _, _ in order]
    for figure, caption in (("study-trials", "study-source"), ("study-curves", "study-curves-text"),
                            ("study-factors", "study-factors-text"), ("study-ablation", "study-ablation-text")):
        assert ids.index(figure) < ids.index(caption)
    assert ids[-2:] == ["study-commands", "study-commands-text"]
    accordion = next(c for elem, _, c in order if elem == "study-commands")
    assert accordion["type"] == "accordion" and accordion["props"]["open"] is False
    commands = next(c for elem, _, c in order if elem == "study-commands-text")["props"]["value"]
    assert "python -m study.tune --name tiny" in commands and "python -m study.ablation --made-up" in commands
    for elem, path, c in order:  # no command line anywhere but in that section
        if c.get("type") == "markdown" and "accordion" not in path:
            assert "python -m" not in c["props"]["value"], elem


# ------------------------------------------------------------------------------------------ the browser
def require_chromium() -> None:
    """Fail (never skip) without Debian's Chromium, saying how to get it."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"{CHROMIUM} not found: the browser tests drive Debian's Chromium. Install it with "
                    "`sudo apt-get install chromium` (`make test` does this); never `playwright install`.",
                    pytrace=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_study_tab_renders_in_chromium():
    pytest.importorskip("playwright")  # the `dev` extra
    from playwright.sync_api import expect, sync_playwright

    require_chromium()
    folder = _real_study()
    trial_ids = [r["trial_id"] for r in _csv_rows(folder / "summary.csv")]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with gr.Blocks(title="Study tab") as app:
        with gr.Tab("Study"):
            build_study_tab(RESULTS)
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    js_errors: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(WAIT_MS)
                page.on("pageerror", lambda e: js_errors.append(str(e)))
                page.goto(f"http://127.0.0.1:{port}/")
                tab = page.get_by_role("tab", name="Study")
                expect(tab).to_be_visible()
                if tab.get_attribute("aria-selected") != "true":
                    tab.click()
                expect(page.locator("#study-source")).to_contain_text(f"{len(trial_ids)} trials")

                for elem_id in PLOTS:  # vega-embed draws into a canvas (or an svg with the svg renderer)
                    drawn = page.locator(f"#{elem_id} [data-testid=altair] .chart-wrapper").locator("canvas, svg")
                    expect(drawn.first).to_be_visible(timeout=WAIT_MS)
                    box = drawn.first.bounding_box()
                    assert box and box["width"] > 300 and box["height"] > 200, (elem_id, box)

                grid = page.locator("#study-trials [role=grid]")
                expect(grid).to_have_attribute("aria-rowcount", str(len(trial_ids) + 1))  # + the header row
                shown = page.locator("#study-trials [role=gridcell][data-col='1']")
                expect(shown).to_have_count(len(trial_ids))
                assert sorted(shown.all_inner_texts()) == sorted(trial_ids)
                expect(page.locator("#study-trials")).not_to_contain_text("train_trial_")  # no trial folder paths

                # the y-axis switch redraws the factor plot from the same files
                page.get_by_label("val accuracy at the last epoch every trial reached").check()
                expect(page.locator("#study-factors-text")).to_contain_text("the last epoch every trial reached")
                expect(page.locator("#study-factors [data-testid=altair] canvas").first).to_be_visible()

                page.wait_for_timeout(500)  # let the last redraw settle for the screenshot
                page.screenshot(path=str(ARTIFACTS / "study.png"), full_page=True)
            finally:
                browser.close()
    finally:
        app.close()
    assert not js_errors, f"uncaught JavaScript errors on the page: {js_errors}"
