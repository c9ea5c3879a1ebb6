"""`make report`: every table and plot of results/REPORT.md, from stored run outputs.

    python -m study.report [--data data/gtsrb28-framed.h5] [--study results/study/cpu]

Reads, without training anything:
- results/ablation-framed/*.json (``make ablation``: the recipe that ships) and results/ablation/*.json
  (the same budget under the recipe before the framing crop; the quick ablation's results/ablation-quick
  until either holds a run): curves and the convergence table (``runs.py``);
- results/recipe/<name>/*.json (``make recipe``): the recipe ablation, one folder per configuration (``runs.py``);
- results/study/<name>/summary.csv and curves.csv (``make tune``): ASHA's rule and the
  factor effects (``trials.py``);
- results/best/ (``make train-best``): the release run, and its split twin on the pack's
  test split: calibration, errors, TTA, SE off (``model.py``);
- results/bench/, results/ui/ (``make bench``, ``make precision-check``, ``make loadtest``):
  speed (``speed.py``).

Writes figures and CSVs into results/report/ and rewrites the blocks between
``<!-- report:NAME -->`` and ``<!-- /report:NAME -->`` in results/REPORT.md, README.md
and results/SPEED.md, so no number there is typed by hand. Each ``*_blocks`` function
below makes the blocks of one source, and returns ``(blocks, headline)``: the block
texts by name, and the figures the headline block quotes.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd

from gtsrb.util import machine, write_text_atomic
from study.records import PICKED_ON_SEED, TOP, ablation_folder, pm
from study.report.common import machine_text, md_table
from study.report.protocol import choice_table, cv_table, load_cv
from study.report.headline import headline_block
from study.report.model import (
    WORST_TRACKS,
    _train_splits,
    best_model_section,
    best_run_text,
    dead_units_text,
    release_text,
    tta_text,
    unsure_text,
)
from study.report.runs import (
    COMPARED,
    ablation_figure,
    ablation_table,
    leakage_table,
    load_ablation,
    load_recipe,
    paired_table,
    recipe_table,
    runs_table,
    scored_full_frames,
)
from study.report.speed import (
    BENCH_CPU,
    PRECISION_RULE_RUNS,
    demo_speed_text,
    gpu_table,
    precision_rule_table,
    precision_table,
    speed_table,
)
from study.report.trials import asha_controls, effects_table, rung_check
from study.cli import ArgumentParser, entry_point


def fill(path: Path, name: str, text: str) -> bool:
    """Replace the block ``<!-- report:name -->...<!-- /report:name -->`` in ``path``."""
    if not path.is_file():
        return False
    src = path.read_text()
    pattern = re.compile(rf"(<!-- report:{re.escape(name)} -->\n).*?(<!-- /report:{re.escape(name)} -->)", re.S)
    if not pattern.search(src):
        return False
    new = pattern.sub(lambda m: m.group(1) + text.rstrip("\n") + "\n" + m.group(2), src)
    if new != src:
        write_text_atomic(path, new)
    return True


def ablation_blocks(df: pd.DataFrame, out: Path, name: str = "ablation") -> tuple[dict, dict]:
    """The SE ablation's table, curves, paired differences and the leakage run (where it has one): the block
    ``name`` and the files ``<name>.csv`` and ``<name>_curves.png``."""
    if df.empty:
        return {}, {}
    table, csv = ablation_table(df)
    csv.to_csv(out / f"{name}.csv", index=False)
    ablation_figure(df, out / f"{name}_curves.png")
    r = df.iloc[0]
    recipe = f"the accuracy recipe ({r['recipe_words']})" if r["recipe"] else "the old recipe"
    adopted = df[df["adopted_epochs"] > 0]
    reuse = ("" if adopted.empty else
             f" {len(adopted)} run(s) continue the study's own trial of that configuration and seed "
             f"(`study.ablation` adopts its checkpoint: {', '.join(f'{a} seed {s}' for a, s in zip(adopted['arm'], adopted['seed']))}); "
             f"their minutes count the study's epochs, trained with 1 thread beside another trial.")
    picked = df[df["arm"].isin(TOP) & (df["seed"] == PICKED_ON_SEED)]
    continued = (picked["adopted_epochs"] > 0).any()
    curse = ("" if picked.empty else
             f" The study's top arms were ranked on their seed-{PICKED_ON_SEED} run (the study trains every trial "
             f"with seed {PICKED_ON_SEED}), so "
             + ("that run was chosen for a high val and flatters its arm" if continued else
                f"their seed-{PICKED_ON_SEED} run here, retrained from scratch, shares that trial's initial weights "
                "and data order, which the ranking favoured")
             + f"; the rows marked \"seeds ≠ {PICKED_ON_SEED}\" below leave it out.")
    commands = sorted(set(df["command"]))
    said = (f"Command: `{commands[0]}`." if len(commands) == 1 else
            "Commands (the runs were split between processes and sittings): " + "; ".join(f"`{c}`" for c in commands) + ".")
    blocks, headline = {}, {}
    blocks[name] = (table + f"\n\nEach run: {recipe}, {r['train_fraction']:.0%} of the train split and "
                          f"{r['val_fraction']:.0%} of the val split (track-grouped subsets), {r['epochs']} "
                          f"epochs, batch 128, one-cycle; test = the full test split (n={r['test_n']}) at the "
                          f"{r['test_at']}. "
                          f"A seed sets the initialisation and the subsets, so arms with the same seed saw the "
                          f"same images. Hardware: {machine_text(r['machine'])}; {' and '.join(sorted(set(df['timed'])))} "
                          f"time {df['seconds'].sum() / 60:.0f} min for all {len(df)} runs"
                          f"{' (including the leakage run)' if (df['arm'] == 'seed_random').any() else ''}."
                          f"{reuse}{curse} {said}\n\nPaired by seed:\n\n" + paired_table(df)
                          + "\n\nEvery run:\n\n" + runs_table(df))
    leakage, headline["leakage"] = leakage_table(df)
    if headline["leakage"] is not None:
        blocks["leakage"] = leakage
    headline["top_continued"] = bool(continued) if not picked.empty else False
    headline["ablation_budget"] = (f"{'the recipe' if r['recipe'] else 'old recipe'}, "
                                   f"{r['train_fraction']:.0%} of train, {r['epochs']} epochs")
    for arm in COMPARED:
        d = df[df["arm"] == arm]
        if len(d):
            headline[arm] = {"final_val": pm(d["final_val"]), "test": pm(d["test"]), "runs": len(d),
                             **({"test_full_frame": pm(d["test_full_frame"])} if scored_full_frames(d) else {})}
    headline["ablation_recipe"] = r["recipe_words"] if r["recipe"] else "the old recipe"
    return blocks, headline


def study_blocks(study: Path, ablation: pd.DataFrame) -> dict:
    """The study's top trials, its factor effects, ASHA's rule checked on its curves."""
    blocks = {}
    if (study / "top.md").is_file():
        blocks["study"] = (study / "top.md").read_text().strip()
    if (study / "curves.csv").is_file():
        table, n_trials = effects_table(study)
        blocks["effects"] = (f"{table}\n\n{n_trials} trials in `{study}` back this table." if n_trials else
                             f"No trial in `{study}` has reached ASHA's first rung yet.")
        blocks["effects"] += "\n\n" + rung_check(study)
        controls = asha_controls(study, ablation)
        if controls:
            blocks["effects"] += "\n\n" + controls
    return blocks


# The recipe ablation's records folders (study.recipe --name): the configuration each trained, in words,
# the make command that adds an arm to it, and the REPORT block it fills.
RECIPE_FOLDERS = {
    "best": ("the quick study's winner (`QUICK_CONFIG`)",
             "`make recipe` as of commit `23c261e`, while the recipe held the contrast norm; today's "
             "`study.recipe` refuses to add to these records", "recipe"),
    "top1": ("the converging study's winner `top1` (`CONFIG`, the release configuration)", "`make recipe`",
             "recipe_top1"),
    "seed": ("the seed preset", "`make recipe RECIPE_PRESET=seed`", "recipe_seed"),
}
RELEASE_RECIPE = "top1"  # the folder of the release configuration: the headline quotes its recipe arm
CV_FOLDER = "cv-top1"  # the selection protocol's records (`make recipe`, RECIPE_PROTOCOL=cv)


def cv_blocks(folder: Path, data: Path) -> dict:
    """The selection protocol's table: each new piece against the recipe, fold by fold (study.report.protocol)."""
    df = load_cv(folder)
    if df.empty:
        return {}
    if not data.is_file():
        print(f"{data}: absent; the cross-validation table needs it to rebuild the folds, and keeps its text")
        return {}
    first = df.iloc[0]
    note = (f"\n\nEach run: `top1` (`CONFIG`) with the recipe on 4 of 5 track-grouped folds of the train and val "
            f"splits pooled, validated on the fifth, {int(first['epochs'])} epochs, bf16, seed = fold; scored at its "
            f"last epoch. Full-frame columns: the same images uncropped (the same split packed without `--roi`, "
            f"`--full-frame-data`). "
            f"{machine_text(first['machine'])}. Command: `make recipe` "
            f"(`{first['command']}`, one arm per process).")
    return {"recipe_cv": cv_table(df, data) + note,
            "recipe_choice": choice_table(df) + "\n\nFrom the same records; TTA scores added by `python -m "
                             "study.recipe ... --name cv-top1 --protocol cv --base no_framing --rescore --tta "
                             "--arms framing_all` (evaluation only)."}


def recipe_blocks(folder: Path, ablation: Path) -> tuple[dict, dict]:
    """The recipe ablation's tables (one per configuration), and the recipe's headline figures: its arm on the
    release configuration where that folder has one (else on the quick study's winner, against the old
    recipe: the configuration it was measured on first)."""
    rdf = load_recipe(folder, ablation)
    if rdf.empty:
        return {}, {}
    blocks = {}
    for name, d in rdf.groupby("name"):
        if name not in RECIPE_FOLDERS:
            raise ValueError(f"{folder / name}: no entry in study.report.RECIPE_FOLDERS says what it trained")
        what, make, block = RECIPE_FOLDERS[name]
        blocks[block] = recipe_table(d, what, make)
    headline = {}
    name = RELEASE_RECIPE if ((rdf["name"] == RELEASE_RECIPE) & (rdf["arm"] == "recipe")).any() else "best"
    first = rdf[rdf["name"] == name]
    rec, old = first[first["arm"] == "recipe"].set_index("seed"), first[first["arm"] == "old"].set_index("seed")
    common = sorted(set(rec.index) & set(old.index))
    if len(rec):
        headline["recipe"] = {"test": pm(rec["test"]), "val": pm(rec["val"]), "seeds": len(rec),
                              "epochs": int(rec["epochs"].iloc[0]), "minutes": rec["train_seconds"].mean() / 60,
                              "what": RECIPE_FOLDERS[name][0], "held": rec["recipe"].iloc[0]}
        if common:
            headline["recipe"]["vs_old"] = pm((rec.loc[common, "test"] - old.loc[common, "test"]).to_numpy())
            headline["recipe"]["pairs"] = len(common)
    return blocks, headline


def model_blocks(checkpoint: Path, data: Path, out: Path) -> tuple[dict, dict, Path | None]:
    """The release run, the checkpoint's line, and on a model that never saw the test split (the release
    model's split twin where there is one): TTA, calibration, confusions, SE off; the SE blocks' class
    specificity. Also returns that held-out checkpoint (None when there is none)."""
    blocks, headline = {}, {}
    split_ckpt = checkpoint.parent / "split" / "best.pt"
    # The release model saw every split, so without its twin there is no held-out figure to make.
    held_out = split_ckpt if split_ckpt.is_file() else (None if "test" in _train_splits(checkpoint) else checkpoint)
    if held_out is None:
        print(f"{split_ckpt}: absent (`make train-best` makes it); the held-out blocks keep their text")
    metrics_file = checkpoint.parent / "metrics.json"
    if metrics_file.is_file():
        hist_file = checkpoint.parent / "history.json"
        hist = json.loads(hist_file.read_text()) if hist_file.is_file() else []
        m = json.loads(metrics_file.read_text())
        split_file = split_ckpt.parent / "metrics.json"
        split = json.loads(split_file.read_text()) if split_file.is_file() else None
        blocks["best"] = release_text(m, hist, split) if "release" in m else best_run_text(m, hist)
        if split and "full_frame" in split.get("test", {}):
            headline["split_full_frame"] = split["test"]["full_frame"]["accuracy"]
        headline["config_file"] = m.get("config_file")
    if checkpoint.is_file():
        from gtsrb.util import sha256_file

        blocks["checkpoint"] = (f"`{checkpoint}`: {checkpoint.stat().st_size / 1e6:.1f} MB, weights only "
                                f"(read with `torch.load(weights_only=True)`), sha256\n`{sha256_file(checkpoint)}`")
    if held_out is not None and held_out.is_file() and data.is_file():
        blocks["tta"] = tta_text(held_out, data)
        best, pairs_md = best_model_section(held_out, data, out)
        headline["best_model"] = best
        blocks["calibration"] = (f"Model `{held_out}` on the test split: accuracy "
                                 f"{best['accuracy'] * 100:.2f}% ({best['errors']} errors in {best['n']}), macro F1 "
                                 f"{best['macro_f1']:.4f}, mean confidence {best['mean_confidence'] * 100:.2f}%, "
                                 f"**ECE {best['ece'] * 100:.2f}%** (15 equal-width bins). "
                                 + best["calibration_text"]
                                 + f" Made by `make report` from the committed checkpoint and `{data}` (one "
                                 f"evaluation pass, one of val and two SE counterfactuals, {best['seconds']:.0f} s on "
                                 f"{machine_text(machine())}); no training.")
        blocks["confused"] = pairs_md
        blocks["error_tracks"] = md_table(
            ["split", "images", "tracks", "errors", "tracks with an error", f"errors in the {WORST_TRACKS} worst tracks",
             "errors in the worst track (points of accuracy)"],
            [[split, t["n"], t["tracks"], t["errors"], t["tracks_with_errors"], t["in_worst_tracks"],
              f"{t['worst_track']} ({t['worst_track'] / t['n'] * 100:.2f})"]
             for split, t in best["error_tracks"].items()],
        ) + f"\n\nModel `{held_out}`, last epoch; the track split of `{data}`. Made by `make report`."
        constant = "".join(
            f" `{name}`'s gate does not vary across val images (no channel's gate moves by more than "
            f"{c['range']:.0e})"
            + (": it is 0.5 = sigmoid(0) on every channel to within that, so its hidden ReLUs (almost) never fire"
               if c["all_half"] else "")
            + "; it is a fixed scale, not a recalibration." for name, c in best["se_constant"].items())
        blocks["se_off"] = (f"Two counterfactuals on `{held_out}`'s test split (accuracy {best['accuracy'] * 100:.2f}%). "
                            f"**Each SE gate held at its val-split average** per channel (`Classifier.se_held`: "
                            f"the learned average scale stays, the per-image recalibration goes): "
                            f"{best['se_held_accuracy'] * 100:.2f}%, {best['se_held_changed'] * 100:.1f}% of the "
                            f"predictions change. **Every SE block replaced by the identity** (`se_disabled`, the "
                            f"demo's \"SE off\"; this also removes the scale, which the layers after it were "
                            f"trained on): {best['se_off_accuracy'] * 100:.2f}%, {best['se_off_changed'] * 100:.1f}% "
                            f"change. The first gap is what the per-image excitation buys." + constant
                            + dead_units_text(best["se_hidden_fired"], best["se_position"],
                                              best["se_bias"]))
    exc = checkpoint.parent / "excitations.npz"
    if exc.is_file():
        from gtsrb.explain import load_excitations

        stats, meta = load_excitations(exc)
        headline["specificity"] = {k: v["specificity"] for k, v in stats.items()}
        blocks["specificity"] = md_table(
            ["SE block", "channels", "class specificity η²"],
            [[k, v["class_mean"].shape[1], f"{v['specificity']:.3f}"] for k, v in stats.items()],
        ) + f"\n\nFrom `{exc}` ({meta['source']}; `gtsrb excitations`)."
    calibration = checkpoint.parent / "calibration.json"
    if calibration.is_file():
        blocks["unsure"] = unsure_text(json.loads(calibration.read_text()))
    return blocks, headline, held_out


def speed_blocks(a: argparse.Namespace) -> dict:
    """The bench tables (CPU, GPU, the precision rule and its check) and the demo's load test."""
    blocks = {}
    if a.bench.is_file():
        blocks["speed"] = speed_table(json.loads(a.bench.read_text()), a.bench.name)
    rule_runs = [(Path(f).name, json.loads(Path(f).read_text())) for f in PRECISION_RULE_RUNS if Path(f).is_file()]
    if rule_runs:
        blocks["precision_rule"] = precision_rule_table(rule_runs)
    if a.bench_gpu.is_file():
        before = json.loads(a.bench_gpu_before.read_text()) if a.bench_gpu_before.is_file() else None
        blocks["gpu"] = gpu_table(json.loads(a.bench_gpu.read_text()), before, a.bench_gpu.name, a.bench_gpu_before.name)
    if a.precision.is_file():
        blocks["precision"] = precision_table(json.loads(a.precision.read_text()))
    if a.loadtest.is_file():
        blocks["demo_speed"] = demo_speed_text(json.loads(a.loadtest.read_text()), a.loadtest.name)
    return blocks


@entry_point("study.report")
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m study.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/gtsrb28-framed.h5"),
                   help="the pack the release model and its twin were trained on (ROI crops and whole frames)")
    p.add_argument("--study", type=Path, default=Path("results/study/cpu"))
    p.add_argument("--ablation", type=Path, default=None,
                   help="default: results/ablation-framed (the recipe that ships) once it holds a run, else "
                        "results/ablation, else results/ablation-quick")
    p.add_argument("--ablation-no-framing", type=Path, default=None,
                   help="the same ablation under the recipe before the framing crop, with the incumbent, the "
                        "study's top 2 and 3 and the random-split leakage run (section 3.1); default: the folder "
                        "`ablation` beside --ablation")
    p.add_argument("--checkpoint", type=Path, default=Path("results/best/best.pt"))
    p.add_argument("--recipe", type=Path, default=Path("results/recipe"))
    p.add_argument("--out", type=Path, default=Path("results/report"))
    p.add_argument("--report", type=Path, default=Path("results/REPORT.md"))
    p.add_argument("--readme", type=Path, default=Path("README.md"))
    p.add_argument("--speed", type=Path, default=Path("results/SPEED.md"))
    p.add_argument("--loadtest", type=Path, default=Path("results/ui/loadtest.json"))
    p.add_argument("--bench", type=Path, default=Path(BENCH_CPU))
    p.add_argument("--precision", type=Path, default=Path("results/bench/precision.json"))
    p.add_argument("--bench-gpu", type=Path, default=Path("results/bench/2026-11-26-h200-run3.json"))
    p.add_argument("--bench-gpu-before", type=Path, default=Path("results/bench/2026-11-26-h200-run1-kornia.json"))
    a = p.parse_args(argv)

    a.ablation = a.ablation or ablation_folder()
    a.ablation_no_framing = a.ablation_no_framing or a.ablation.parent / "ablation"
    print(f"ablation records: {a.ablation}")
    a.out.mkdir(parents=True, exist_ok=True)

    ablation = load_ablation(a.ablation)
    blocks, headline = ablation_blocks(ablation, a.out)
    if a.ablation_no_framing.resolve() != a.ablation.resolve() and any(a.ablation_no_framing.glob("*-seed*.json")):
        before, before_headline = ablation_blocks(load_ablation(a.ablation_no_framing), a.out, "ablation_no_framing")
        blocks = before | blocks
        if headline.get("leakage") is None:
            headline["leakage"] = before_headline.get("leakage")
    blocks |= study_blocks(a.study, ablation)
    # The recipe ablation's split folders were measured before the framing crop: they borrow that ablation's runs.
    recipe, recipe_headline = recipe_blocks(a.recipe, a.ablation_no_framing if a.ablation_no_framing.is_dir() else a.ablation)
    recipe |= cv_blocks(a.recipe / CV_FOLDER, a.data)
    model, model_headline, held_out = model_blocks(a.checkpoint, a.data, a.out)
    blocks |= recipe | model
    headline |= recipe_headline | model_headline
    blocks |= headline_block(headline, a.checkpoint, held_out)
    blocks |= speed_blocks(a)

    (a.out / "headline.json").write_text(json.dumps(headline, indent=1, default=str) + "\n")
    for name, text in blocks.items():
        placed = [str(f) for f in (a.report, a.readme, a.speed) if fill(f, name, text)]
        print(f"{name}: {'written to ' + ', '.join(placed) if placed else 'no marker found'}")
    print(f"figures and CSVs in {a.out}")
    return 0
