"""`make report`: every table and plot of results/REPORT.md, from stored run outputs.

    python -m study.report [--data data/gtsrb28.h5] [--study results/study/cpu]

Reads, without training anything:
- results/ablation/*.json (``make ablation``; until it holds a run, the quick ablation's
  results/ablation-quick): curves and the convergence table;
- results/study/<name>/summary.csv and curves.csv (``make tune``): factor effects;
- results/best/best.pt on the pack's test split: calibration and errors.

Writes figures and CSVs into results/report/ and rewrites the blocks between
``<!-- report:NAME -->`` and ``<!-- /report:NAME -->`` in results/REPORT.md and
README.md, so no number there is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import scipy.stats
import pandas as pd

from gtsrb.classes import CLASS_NAMES
from gtsrb.plots import plt, save_figure
from gtsrb.util import machine, write_text_atomic
from study.summary import study_budget

ARM_LABELS = {"seed": "seed preset (SE on all 5 stages)", "no_se": "no SE (plain VGG-11)",
              "best": "study best config", "top1": "study's best config", "top2": "study's 2nd config",
              "top3": "study's 3rd config", "seed_random": "seed preset, random split"}
ARM_COLORS = {"seed": "tab:orange", "no_se": "tab:gray", "best": "tab:blue", "top1": "tab:blue",
              "top2": "tab:green", "top3": "tab:purple"}
# The arms compared in the tables, in this order (study.ablation; "best" is the earlier ablation's top1).
COMPARED = ("seed", "no_se", "best", "top1", "top2", "top3")
THRESHOLDS = (0.80, 0.90, 0.95, 0.98, 0.99)
# The cited CPU bench run (results/SPEED.md): `make bench` on the development machine.
BENCH_CPU = "results/bench/2026-12-01-cpu-2core-amd-avx2.json"


# --------------------------------------------------------------------------- helpers

def pm(values, scale: float = 100.0, digits: int = 2) -> str:
    """mean ± sample std (n-1), scaled; a single run shows no std."""
    v = np.asarray(values, float) * scale
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


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


def first_epoch(curve: list[float], threshold: float) -> int | None:
    return next((i + 1 for i, v in enumerate(curve) if v >= threshold), None)


# --------------------------------------------------------------------------- ablation and leakage

def load_ablation(folder: Path) -> pd.DataFrame:
    rows = []
    for f in sorted(folder.glob("*-seed*.json")):
        r = json.loads(f.read_text())
        rows.append({
            "arm": r["arm"], "seed": r["seed"], "split_kind": r["split_kind"],
            "curve": [h["val_accuracy"] for h in r["history"]],
            "final_val": r["history"][-1]["val_accuracy"],
            "best_val": max(h["val_accuracy"] for h in r["history"]),
            "test": r["test"]["accuracy"], "test_f1": r["test"]["macro_f1"], "test_n": r["test"]["n"],
            "test_ece": r["test"].get("ece", np.nan), "test_at": r.get("test_at", "best-val epoch"),
            "recipe": bool(r.get("recipe")),
            # The run's training time, counting the epochs it adopted from a study trial (study.ablation).
            "wall_seconds": r["wall_seconds"] + (r.get("adopted") or {}).get("train_seconds", 0),
            "adopted_epochs": (r.get("adopted") or {}).get("epochs", 0), "epochs": r["train_config"]["epochs"],
            "train_fraction": r["train_config"]["train_fraction"], "val_fraction": r["train_config"]["val_fraction"],
            "machine": r.get("machine", "?"), "command": r.get("command", ""),
        })
    return pd.DataFrame(rows)


def ablation_table(df: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    rows, csv = [], []
    for arm in COMPARED:
        d = df[df["arm"] == arm]
        if d.empty:
            continue
        reach = {}
        for t in THRESHOLDS:
            eps = [first_epoch(c, t) for c in d["curve"]]
            hit = [e for e in eps if e is not None]
            reach[t] = (f"{pm(hit, 1, 1)} ({len(hit)}/{len(eps)} runs)" if hit else f"not reached (0/{len(eps)})")
        ece = pm(d["test_ece"]) if d["test_ece"].notna().all() else "–"
        rows.append([ARM_LABELS[arm], len(d), pm(d["final_val"]), pm(d["best_val"]), pm(d["test"]), ece,
                     *(reach[t] for t in THRESHOLDS), f"{d['wall_seconds'].mean() / 60:.1f}"])
        csv.append({"arm": arm, "runs": len(d), "final_val_mean": d["final_val"].mean(),
                    "final_val_std": d["final_val"].std(ddof=1), "test_mean": d["test"].mean(),
                    "test_std": d["test"].std(ddof=1), **{f"epochs_to_{t:.0%}": reach[t] for t in THRESHOLDS}})
    test_at = " / ".join(sorted(set(df["test_at"])))
    header = ["arm", "seeds", "final val acc %", "best val acc %", f"test acc % ({test_at})", "test ECE %",
              *(f"epochs to {t:.0%} val" for t in THRESHOLDS), "min per run"]
    return md_table(header, rows), pd.DataFrame(csv)


def paired_table(df: pd.DataFrame) -> str:
    """Arm differences seed by seed: a seed fixes the train/val subsets, so the pairs share their data."""
    rows = []
    present = [arm for arm in COMPARED if (df["arm"] == arm).any()]
    pairs = [(a, "seed") for a in present if a != "seed"] + [(a, "no_se") for a in present if a not in ("seed", "no_se")]
    for a, b in pairs:
        x = df[df["arm"] == a].set_index("seed")
        y = df[df["arm"] == b].set_index("seed")
        common = sorted(set(x.index) & set(y.index))
        if not common:
            continue
        cells = []
        for col in ("final_val", "test"):
            d = (x.loc[common, col] - y.loc[common, col]).to_numpy()
            cells += [pm(d), f"{int((d > 0).sum())}/{len(d)}"]
        rows.append([f"{ARM_LABELS[a]} − {ARM_LABELS[b]}", len(common), *cells])
    return md_table(["difference (points)", "seeds", "final val", "seeds where higher", "test", "seeds where higher"],
                    rows)


def machine_text(m) -> str:
    if isinstance(m, dict):
        return f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, torch {m.get('torch', '?')}"
    return str(m)


def ablation_figure(df: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for arm in ("seed", "no_se", "best", "top1"):
        d = df[df["arm"] == arm]
        if d.empty:
            continue
        curves = np.array([c for c in d["curve"]]) * 100
        x = np.arange(1, curves.shape[1] + 1)
        mean = curves.mean(0)
        std = curves.std(0, ddof=1) if len(curves) > 1 else np.zeros_like(mean)
        ax.plot(x, mean, color=ARM_COLORS[arm], lw=2, marker="o", ms=3,
                label=f"{ARM_LABELS[arm]} (n={len(curves)})")
        ax.fill_between(x, mean - std, mean + std, color=ARM_COLORS[arm], alpha=0.2)
    for t in THRESHOLDS:
        ax.axhline(t * 100, color="0.6", lw=0.8, ls="--")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    r = df.iloc[0]
    ax.set_title(f"SE ablation: val accuracy, mean ± std over seeds\n"
                 f"{r['train_fraction']:.0%} of the train split (track-grouped), {r['epochs']} epochs one-cycle")
    ax.set_ylim(0, 100)
    ax.set_xticks(np.arange(1, int(r["epochs"]) + 1))
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def leakage_table(df: pd.DataFrame) -> tuple[str, dict | None]:
    rnd = df[df["arm"] == "seed_random"]
    if rnd.empty:
        return "(no random-split run yet: `make ablation`)", None
    seeds = set(rnd["seed"])
    trk = df[(df["arm"] == "seed") & df["seed"].isin(seeds)]
    if trk.empty:
        return "(no matching track-split run yet)", None
    gap = (rnd["test"].mean() - trk["test"].mean()) * 100
    rows = [["random (images shuffled; a sign's track can be in train and test)", len(rnd), pm(rnd["best_val"]),
             pm(rnd["test"]), int(rnd["test_n"].iloc[0])],
            ["track (default: each physical sign on one side only)", len(trk), pm(trk["best_val"]),
             pm(trk["test"]), int(trk["test_n"].iloc[0])]]
    rows[0].append(f"{rnd['wall_seconds'].sum() / 60:.1f}")
    rows[1].append(f"{trk['wall_seconds'].sum() / 60:.1f}")
    text = md_table(["split", "runs", "best val acc %", "test acc % (own test split)", "test n", "min"], rows)
    text += f"\n\n**Gap: the random split reads {gap:+.2f} points higher on its own test split.**"
    return text, {"random_test": float(rnd["test"].mean()), "track_test": float(trk["test"].mean()),
                  "gap_points": float(gap)}


# --------------------------------------------------------------------------- study effects

FACTORS = [("se_stage1", "SE in stage 1"), ("se_stage2", "SE in stage 2"), ("se_stage3", "SE in stage 3"),
           ("se_stage4", "SE in stage 4"), ("se_stage5", "SE in stage 5"), ("se_position", "SE position"),
           ("se_form", "SE form"), ("se_reduction", "reduction ratio r"), ("pool", "pooling"),
           ("conv_dropout", "conv dropout"), ("classifier_dropout", "classifier dropout")]


FLAT_POINTS = 0.3  # a curve is flat at its end when its last epoch gained at most this much val accuracy


def rung_check(study: Path) -> str:
    """Did ASHA's first rung keep the good finishers, and were the finishers' curves flat at the end?"""
    from scipy.stats import spearmanr

    summary = pd.read_csv(study / "summary.csv")
    curves = pd.read_csv(study / "curves.csv").pivot_table(index="trial_id", columns="epoch", values="val_accuracy")
    rung, last = study_budget(study, summary)
    full = summary.loc[summary["epochs_run"] >= last, "trial_id"]
    if rung >= last or len(full) < 3:
        return (f"ASHA check: {len(full)} trial(s) ran all {last} epochs so far (first rung at epoch {rung}): "
                f"too few to check the rule on.")
    at_rung, at_last = curves.loc[full, rung], curves.loc[full, last]
    rho = spearmanr(at_rung, at_last).statistic
    winner = at_last.idxmax()
    rank = int((curves[rung].dropna() > curves.loc[winner, rung]).sum()) + 1
    gain = (curves.loc[full, last] - curves.loc[full, last - 1]) * 100
    flat = int((gain <= FLAT_POINTS).sum())
    stopped = int(((summary["status"] == "TERMINATED") & (summary["epochs_run"] < last)).sum())
    running = len(summary) - len(full) - stopped
    return (f"**ASHA's rule on this study's curves.** First rung at epoch {rung}: {stopped} trials "
            f"stopped there or earlier, {len(full)} ran all {last} epochs"
            f"{f', {running} not finished yet' if running else ''}. Among those {len(full)}, the rank "
            f"correlation (Spearman) between val accuracy at epoch {rung} and at epoch {last} is ρ = {rho:.2f}; the "
            f"best finisher (`{winner}`, {at_last[winner] * 100:.2f}%) ranked {rank} of "
            f"{int(curves[rung].notna().sum())} trials at epoch {rung}. **Flat at the end:** {flat} of {len(full)} "
            f"finishers gained at most {FLAT_POINTS} points of val accuracy over their last epoch (largest gain "
            f"{gain.max():+.2f} points).")


def asha_controls(study: Path, ablation: pd.DataFrame) -> str:
    """Where the study's fixed trials that ASHA stopped would have ended.

    The ablation's seed-0 runs of the ``seed`` and ``no_se`` arms train exactly what the study's two
    fixed trials trained (same configuration, recipe, data, schedule and seed), outside Ray and to the
    end: continued from the trial's own checkpoint where the machine had it (study.ablation adopts
    it), else re-run from scratch. Either way the last epoch says whether stopping the trial lost a
    finisher; a re-run's epochs before the rung also say whether the two runs agree."""
    summary = pd.read_csv(study / "summary.csv")
    curves = pd.read_csv(study / "curves.csv").pivot_table(index="trial_id", columns="epoch", values="val_accuracy")
    rung, last = study_budget(study, summary)
    finals = curves.loc[summary.loc[summary["epochs_run"] >= last, "trial_id"], last]
    lines = []
    for role in ("seed", "no_se"):
        trial = summary[summary["role"] == role]
        runs = ablation[(ablation["arm"] == role) & (ablation["seed"] == 0) & ablation["recipe"]
                        & (ablation["epochs"] == last) & (ablation["train_fraction"] == 1.0)
                        & (ablation["split_kind"] == "track")] if not ablation.empty else ablation
        if trial.empty or runs.empty:
            continue
        t, run = trial.iloc[0], runs.iloc[0]
        curve, ran, adopted = run["curve"], int(t["epochs_run"]), int(run.get("adopted_epochs", 0) or 0)
        if ran >= last:
            how = "run is that trial itself" if adopted >= last else f"re-run ends at {curve[-1]:.2%}"
            lines.append(f"- `{role}` ran the whole schedule in the study ({curves.loc[t['trial_id'], last]:.2%} val "
                         f"at epoch {last}); the ablation's seed-0 {how}.")
            continue
        rank = int((finals > curve[-1]).sum()) + 1
        how = (f"continued from its epoch-{adopted} checkpoint" if adopted == ran else
               f"re-run from scratch, which had {curve[ran - 1]:.2%} at epoch {ran}")
        lines.append(f"- `{role}`: ASHA stopped it at epoch {ran} ({curves.loc[t['trial_id'], ran]:.2%} val). "
                     f"Trained to the end ({how}), it reaches {curve[-1]:.2%} at epoch {last}, which would rank "
                     f"{rank} of {len(finals) + 1} among the study's finishers.")
    if not lines:
        return ""
    return ("**The stopped fixed trials, continued.** The ablation's seed-0 runs of `seed` and `no_se` train the "
            "same configuration, recipe, data, schedule and seed as the study's two fixed trials, to the end:\n\n"
            + "\n".join(lines))


def effects_table(study: Path, at_epoch: int | None = None) -> tuple[str, int]:
    """Grouped comparison: per factor level, val accuracy at a fixed epoch that every trial reached
    (default: ASHA's first rung)."""
    summary = pd.read_csv(study / "summary.csv")
    curves = pd.read_csv(study / "curves.csv")
    rung, final_epoch = study_budget(study, summary)
    at_epoch = at_epoch or rung
    at = curves[curves["epoch"] == at_epoch].set_index("trial_id")["val_accuracy"]
    fin = curves[curves["epoch"] == final_epoch].set_index("trial_id")["val_accuracy"]
    s = summary.set_index("trial_id")
    s["at"] = at
    s["final"] = fin
    s = s.dropna(subset=["at"])
    has_se = s[[f"se_stage{i}" for i in range(1, 6)]].astype(str).eq("True").any(axis=1)
    rows = []
    for col, label in FACTORS:
        d = s if col.startswith("se_stage") or col in ("pool",) or "dropout" in col else s[has_se]
        vals = d[col]
        if "dropout" in col:
            vals = pd.cut(vals.astype(float), [0, 0.2, 0.35, 1.0], labels=["< 0.20", "0.20–0.35", "≥ 0.35"],
                          include_lowest=True)
        elif col == "se_reduction":
            vals = vals.map(lambda v: f"{int(float(v))}")
        levels = (list(vals.cat.categories) if isinstance(vals.dtype, pd.CategoricalDtype)
                  else sorted(vals.dropna().unique(), key=lambda v: (float(v) if str(v).isdigit() else 0, str(v))))
        for level in levels:
            g = d[vals == level]
            if g.empty:
                continue
            f = g["final"].dropna()
            rows.append([label, level, len(g), f"{g['at'].mean() * 100:.1f}", f"{g['at'].max() * 100:.1f}",
                         f"{len(f)}", f"{f.mean() * 100:.1f}" if len(f) else "–"])
    header = ["factor", "level", "trials", f"mean val % at epoch {at_epoch}", f"best val % at epoch {at_epoch}",
              f"trials reaching epoch {final_epoch}", f"mean val % at epoch {final_epoch}"]
    return md_table(header, rows), len(s)


# --------------------------------------------------------------------------- best model: calibration, errors

def best_model_section(checkpoint: Path, data: Path, out: Path) -> tuple[dict, str]:
    from gtsrb.data import load_pack
    from gtsrb.inference import Classifier
    from gtsrb.metrics import calibration, classification_metrics, confused_pairs, confusion

    t0 = time.perf_counter()
    clf = Classifier.load(checkpoint)
    test = load_pack(data, "test")
    exact = clf.predict_arrays(test.images)
    probs = exact.probs
    pred = probs.argmax(1)
    m = classification_metrics(test.labels, pred)
    cal = calibration(probs, test.labels, bins=15)
    reliability_figure(cal, out / "reliability.png", len(test.labels))
    cm = confusion(test.labels, pred)
    pairs = confused_pairs(cm, 10)
    support = cm.sum(1)
    # A track-split test holds a rare class as a few physical signs (tracks): say how many, and how many
    # of them the errors come from, so that a large share is read as one hard sign, not a weak class.
    def tracks(mask):
        return len(np.unique(test.groups[mask]))

    rows = [[f"{t} {CLASS_NAMES[t]}", f"{p} {CLASS_NAMES[p]}", n, f"{n / support[t]:.1%}",
             f"{tracks((test.labels == t) & (pred == p))} of {tracks(test.labels == t)}"] for t, p, n in pairs]
    pairs_md = md_table(["true class", "predicted as", "test images", "share of the true class",
                         "tracks the errors come from"], rows)
    pd.DataFrame([{"true": t, "true_name": CLASS_NAMES[t], "pred": p, "pred_name": CLASS_NAMES[p], "count": n}
                  for t, p, n in pairs]).to_csv(out / "confused_pairs.csv", index=False)
    pd.DataFrame(cal["bins"]).to_csv(out / "reliability.csv", index=False)
    misclassified_figure(test.images, test.labels, test.groups, probs, out / "misclassified.png")
    with clf.se_disabled():  # the page's counterfactual, over the whole test split
        off = clf.predict_arrays(test.images).probs.argmax(1)
    top = cal["bins"][-1]
    gaps = [(b["confidence"] - b["accuracy"], b) for b in cal["bins"] if b["count"]]
    worst_gap, worst = max(gaps, key=lambda g: g[0])
    calibration_text = (
        f"{top['count'] / len(test.labels):.0%} of the test images ({top['count']:,}) fall in the top bin "
        f"(confidence above {top['lower']:.3f}), where accuracy is {top['accuracy']:.1%} against a mean confidence "
        f"of {top['confidence']:.1%}. The largest overconfidence is {worst_gap * 100:.0f} points, in the "
        f"{worst['lower']:.2f}–{worst['upper']:.2f} bin ({worst['count']} images).")
    summary = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": int(len(test.labels)),
               "calibration_text": calibration_text,
               "errors": int((pred != test.labels).sum()), "ece": cal["ece"],
               "mean_confidence": float(probs.max(1).mean()),
               "se_off_accuracy": float((off == test.labels).mean()),
               "se_off_changed": float((off != pred).mean()),
               "seconds": round(time.perf_counter() - t0, 1)}
    (out / "best_test.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary, pairs_md


# --------------------------------------------------------------------------- the accuracy recipe

RECIPE_LABELS = {
    "recipe": "recipe: ROI crop, per-image contrast norm, class-aware mirror, label smoothing 0.1",
    "old": "old recipe (same ROI pack)",
    "no_roi": "recipe on full frames (no ROI crop)",
    "no_norm": "recipe without per-image contrast norm",
    "no_mirror": "recipe without the class-aware mirror",
    "no_smoothing": "recipe without label smoothing",
    "ema": "recipe + EMA of the weights (decay 0.998)",
    "balanced": "recipe + class-balanced sampling",
    "long": "recipe, twice the epochs",
}


def load_recipe(folder: Path) -> pd.DataFrame:
    """One row per run of `make recipe`. An ``ema`` run also stands for the ``recipe`` arm at its seed
    when that arm has no run of its own: its raw weights followed the recipe's trajectory exactly (the
    average does not feed back into training; tests/test_recipe.py checks the equality)."""
    rows = []
    files = sorted(folder.glob("*/*-seed*.json"))
    have = {(f.parent.name, f.name) for f in files}
    for f in files:
        r = json.loads(f.read_text())
        base = {"preset": r["preset"], "seed": r["seed"], "epochs": r["train_config"]["epochs"],
                "train_seconds": r["train_seconds"], "test_n": r["test"]["n"], "machine": r["machine"],
                "command": r["command"]}
        rows.append({**base, "arm": r["arm"], "val": r["val_accuracy"], "test": r["test"]["accuracy"], "from": ""})
        if "raw" in r and (r["preset"], f"recipe-seed{r['seed']}.json") not in have:
            rows.append({**base, "arm": "recipe", "val": r["raw"]["val_accuracy"], "test": r["raw"]["test_accuracy"],
                         "from": f"raw weights of `{f.parent.name}/{f.name}`"})
    return pd.DataFrame(rows)


def recipe_table(df: pd.DataFrame) -> str:
    """Per arm: seeds, val and test (last epoch), paired differences against the recipe, time."""
    ref = df[df["arm"] == "recipe"].set_index("seed")
    rows = []
    for arm in RECIPE_LABELS:
        d = df[df["arm"] == arm]
        if d.empty:
            continue
        cells = [RECIPE_LABELS[arm], ", ".join(str(x) for x in sorted(d["seed"])), pm(d["val"]), pm(d["test"])]
        x = d.set_index("seed")
        common = sorted(set(x.index) & set(ref.index))
        if arm != "recipe" and common:
            for col in ("val", "test"):
                diff = (x.loc[common, col] - ref.loc[common, col]).to_numpy()
                cells.append(f"{pm(diff)} (n={len(diff)})")
        else:
            cells += ["", ""]
        per_epoch = d["train_seconds"] / d["epochs"]
        cells += [int(d["epochs"].iloc[0]), f"{d['train_seconds'].mean() / 60:.1f}", f"{per_epoch.mean():.0f}"]
        rows.append(cells)
    header = ["arm", "seed(s)", "val acc %", "test acc %", "Δ val vs recipe (points)", "Δ test vs recipe (points)",
              "epochs", "min per run", "s per epoch"]
    notes = [f"- {RECIPE_LABELS[r['arm']]}, seed {r['seed']}: {r['from']}." for _, r in df.iterrows() if r["from"]]
    r0 = df[df["arm"] != "long"].iloc[0]
    long = " (the long arm: twice that)" if (df["arm"] == "long").any() else ""
    text = (md_table(header, rows) + "\n\n"
            f"Each run: the `{r0['preset']}` configuration, the track split's whole train part, {r0['epochs']} "
            f"epochs{long}, batch 128, one-cycle, scored at its last epoch (no selection on val); test = the held-out "
            f"test split (n={r0['test_n']}). A seed fixes the initial weights and the data order, so Δ is a paired "
            f"difference (mean ± std over seeds). Hardware: {machine_text(r0['machine'])}. Command: "
            f"`{r0['command']}` (per arm: `make recipe`).")
    if notes:
        text += "\n\nRows not trained under their own arm:\n" + "\n".join(notes)
    return text


def _train_splits(checkpoint: Path) -> list[str]:
    from gtsrb.checkpoint import load_checkpoint

    if not checkpoint.is_file():
        return []
    return list(load_checkpoint(checkpoint).get("train_config", {}).get("train_splits", ["train"]))


def tta_text(checkpoint: Path, data: Path) -> str:
    """Accuracy with and without test-time augmentation (Classifier.predict_tta), val and test splits."""
    from gtsrb.data import load_pack
    from gtsrb.inference import Classifier

    clf = Classifier.load(checkpoint)
    rows = []
    for split in ("val", "test"):
        p = load_pack(data, split)
        plain = clf.predict_arrays(p.images).probs.argmax(1) == p.labels
        tta = clf.predict_tta(p.images).argmax(1) == p.labels
        rows.append([split, len(p.labels), f"{plain.mean() * 100:.2f}", f"{tta.mean() * 100:.2f}",
                     int((tta & ~plain).sum()), int((plain & ~tta).sum())])
    return (md_table(["split", "n", "accuracy %", "with TTA %", "errors TTA fixes", "errors TTA adds"], rows)
            + f"\n\nModel: `{checkpoint}`; TTA averages the probabilities of the image and its four one-pixel "
              f"shifts (`gtsrb evaluate --tta`, five forward passes). Same weights, so the counts are exact pairs.")


def release_text(m: dict, hist: list[dict], split: dict | None) -> str:
    """The release run (official protocol) from its metrics.json, and its split twin's scores."""
    cfg = m["model_config"]
    stages = ", ".join(str(i + 1) for i, on in enumerate(cfg["se_stages"]) if on) or "none"
    rel = m["release"]
    lines = [
        f"Command: `{m['command']}`: protocol `{m['protocol']}` (trains on the pack's "
        f"{', '.join(m['train_splits'])} splits: all {rel['n']:,} training images, nothing held out, last epoch "
        f"kept), {m['epochs']} epochs, seed {m['train_config']['seed']}; training {m['train_seconds'] / 60:.1f} min "
        f"({m['seconds_per_epoch']:.0f} s per epoch) on {machine_text(m['machine'])}, one run.",
        "",
        f"Config: SE in stage(s) {stages}, form `{cfg['se_form']}`, position `{cfg['se_position']}`, reduction "
        f"{cfg['se_reduction']}, {cfg['pool']} pooling, conv dropout {cfg['conv_dropout']:.2f}, classifier dropout "
        f"{cfg['classifier_dropout']:.2f}, input norm `{cfg.get('input_norm', 'dataset')}`; lr "
        f"{m['train_config']['lr']:.2e}, weight decay {m['train_config']['weight_decay']:.2e}, label smoothing "
        f"{m['train_config']['label_smoothing']}, class-aware mirror {m['train_config']['mirror']}.",
        "",
        f"Weights: {rel['weights']}, {rel['bytes'] / 1e6:.1f} MB. Loaded back into the fp32 model, the fp16 weights "
        f"change {rel['predictions_changed']} of {rel['n']:,} predictions on the pack (accuracy "
        f"{rel['accuracy_fp32'] * 100:.3f}% in fp32, {rel['accuracy_fp16'] * 100:.3f}% from fp16; every image "
        f"there was seen in training, so this measures rounding only).",
    ]
    if "official_test" in m:
        o = m["official_test"]
        lines += ["", f"Official GTSRB test set: accuracy {o['accuracy'] * 100:.2f}% (n={o['n']}), macro F1 "
                      f"{o['macro_f1']:.4f}."]
    else:
        lines += ["", "Official GTSRB test set: not on the development machine; scored independently "
                      "(`make evaluate-official` where there is internet)."]
    if split:
        lines += ["", f"Its twin on the train split alone (`results/best/split/`, same recipe, seed and epochs, "
                      f"{split['train_seconds'] / 60:.1f} min): "
                      + "; ".join(f"{k} accuracy {split[k]['accuracy'] * 100:.2f}% (n={split[k]['n']}), macro F1 "
                                  f"{split[k]['macro_f1']:.4f}" for k in ("val", "test") if k in split) + "."]
    if hist:
        lines += ["", md_table(["epoch", *[h["epoch"] for h in hist]],
                               [["train acc % (augmented batches)", *[f"{h['train_accuracy'] * 100:.1f}" for h in hist]],
                                ["s", *[f"{h['seconds']:.0f}" for h in hist]]])]
    return "\n".join(lines)


def best_run_text(m: dict, hist: list[dict]) -> str:
    """The train-best run from its metrics.json: command, budget, time, per-epoch val and the split scores."""
    cfg = m["model_config"]
    stages = ", ".join(str(i + 1) for i, on in enumerate(cfg["se_stages"]) if on) or "none"
    lines = [
        f"Command: `{m['command']}` ({m['epochs']} epochs, seed {m['train_config']['seed']}, full train split; "
        f"training {m['train_seconds'] / 60:.1f} min on {m['machine'].get('cpu', '?')}, "
        f"{m['machine'].get('cores', '?')} cores, one run).",
        "",
        f"Config: SE in stage(s) {stages}, form `{cfg['se_form']}`, position `{cfg['se_position']}`, reduction "
        f"{cfg['se_reduction']}, {cfg['pool']} pooling, conv dropout {cfg['conv_dropout']:.2f}, classifier dropout "
        f"{cfg['classifier_dropout']:.2f}, lr {m['train_config']['lr']:.2e}, weight decay "
        f"{m['train_config']['weight_decay']:.2e}.",
        "",
        md_table(["split", "n", "accuracy %", "macro F1", "macro precision", "macro recall"],
                 [[k, m[k]["n"], f"{m[k]['accuracy'] * 100:.2f}", f"{m[k]['macro_f1']:.4f}",
                   f"{m[k]['macro_precision']:.4f}", f"{m[k]['macro_recall']:.4f}"]
                  for k in ("val", "test", "official_test") if k in m]),
        "",
        f"Best epoch {m['best_epoch']} (by val accuracy); its checkpoint is `results/best/best.pt`.",
    ]
    if hist:
        lines += ["", md_table(["epoch", *[h["epoch"] for h in hist]],
                               [["val acc %", *[f"{h['val_accuracy'] * 100:.1f}" for h in hist]]])]
    return "\n".join(lines)


def reliability_figure(cal: dict, path: Path, n: int) -> None:
    b = pd.DataFrame(cal["bins"])
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(6, 7), dpi=110, height_ratios=[3, 1], sharex=True)
    width = b["upper"] - b["lower"]
    ok = b["count"] > 0
    ax.bar(b["lower"][ok], b["accuracy"][ok], width=width[ok], align="edge", color="tab:blue",
           edgecolor="white", label="accuracy in bin")
    ax.bar(b["lower"][ok], (b["confidence"] - b["accuracy"])[ok], bottom=b["accuracy"][ok], width=width[ok],
           align="edge", color="tab:red", alpha=0.35, label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram, best model, test split (n={n})\nECE = {cal['ece'] * 100:.2f}% (15 bins)")
    ax.legend(loc="upper left", fontsize=8)
    ax2.bar(b["lower"], b["count"], width=width, align="edge", color="0.5", edgecolor="white")
    ax2.set_yscale("log")
    ax2.set_ylabel("images (log)")
    ax2.set_xlabel("confidence (top-1 probability)")
    fig.tight_layout()
    save_figure(fig, path)


def misclassified_figure(images, labels, groups, probs, path: Path, count: int = 24) -> None:
    """The most confident mistakes, one per physical sign (track), so no sign fills the grid."""
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != labels)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")]
    _, first = np.unique(groups[wrong], return_index=True)
    wrong = wrong[np.sort(first)][:count]
    cols = 6
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.4, rows * 3.0), dpi=110, squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong):
        ax.imshow(images[i], interpolation="nearest")
        t = textwrap.shorten(CLASS_NAMES[labels[i]], 40, placeholder="…")
        p = textwrap.shorten(CLASS_NAMES[pred[i]], 40, placeholder="…")
        ax.set_title(f"true: {textwrap.fill(t, 24)}\npred: {textwrap.fill(p, 24)} ({probs[i, pred[i]]:.2f})",
                     fontsize=6.5)
    fig.suptitle(f"Most confident mistakes of the best model on the test split, one per physical sign "
                 f"({len(wrong)} of {int((pred != labels).sum())} errors)", fontsize=10)
    save_figure(fig, path)


# --------------------------------------------------------------------------- the demo
def demo_speed_text(lt: dict, name: str) -> str:
    """`make loadtest`'s rows: the demo beside the no-op floor, per method."""
    rows = {(r["target"], r["method"]): r for r in lt["rows"]}
    out = []
    for (target, method), r in rows.items():
        if target != "demo":
            continue
        floor = rows.get(("noop", method))
        out.append([method, f"{r['clients']}×{r['requests_per_client']}", f"{r['p50_ms']:.0f}", f"{r['p95_ms']:.0f}",
                    f"{r['p99_ms']:.0f}", f"{r['errors']}/{r['lost']}",
                    f"{floor['p50_ms']:.0f} / {floor['p99_ms']:.0f}" if floor else "–"])
    return (md_table(["method", "clients × requests", "p50 ms", "p95 ms", "p99 ms", "errors/lost",
                      "no-op floor p50 / p99 ms"], out)
            + f"\n\n`{lt['command']}` on {lt['date'][:10]}, {machine_text(lt['machine'])}; checkpoint "
            f"`{lt['checkpoint']}` (sha256 {lt['checkpoint_sha256'][:12]}…). The floor is a no-op Gradio app with the "
            f"same input and queue, measured in the same run (`results/ui/{name}`).")


def unsure_text(c: dict) -> str:
    """What results/best/calibration.json says the 'unsure' rule does on held-out data."""
    t = c["test"]
    return (f"Temperature {c['temperature']:.2f} (val NLL {c['nll_before']:.3f} → {c['nll_after']:.3f}) and "
            f"threshold {c['threshold']:.2f} on the calibrated top-1 probability (val predictions at or above it are "
            f"≥ {c['target_accuracy']:.0%} right), fitted on the val split of `{c['checkpoint']}`. On its track-split "
            f"test (n={t['n']}), \"unsure\" fires on **{t['unsure_rate']:.2%}** of images (low confidence "
            f"{t['low_confidence_rate']:.2%}, unlike the training data {t.get('unlike_training_rate', 0):.2%}); the "
            f"rest are **{t['accuracy_sure']:.2%}** right (all: {t['accuracy_all']:.2%}), and {t['errors_flagged']} "
            f"of its {t['errors']} errors are flagged. Command: `{c.get('command', 'make calibrate')}`.")


# --------------------------------------------------------------------------- main

def _n(v, digits: int = 0) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


def _rate(d: dict | None) -> str:
    """A bench figure with its spread: median [slowest–fastest round]."""
    return "–" if not d else f"{d['median']:,.0f} [{d['min']:,.0f}–{d['max']:,.0f}]"


ROUTE_NOTES = {
    "stock": "plain `torch.nn` modules: no CPU route",
    "default_twin": "the default's options spelled out (a check of the method)",
    "nchw": "NCHW activations instead of channels_last",
    "fp32": "precision forced to fp32", "bf16": "precision forced to bf16 (autocast)",
}


def speed_table(now: dict, name: str) -> str:
    """One `make bench` run: the training step and its variants (median and spread over
    alternating rounds, each against the stock step), the naive pipeline, inference and packing."""
    m = now["machine"]
    stock = now["train_variants_img_s"]["stock"]["median"]
    rows = [["default training step (`train_img_s`)", _rate(now["train_img_s_spread"]),
             f"{now['train_img_s'] / stock:.2f}", "what `gtsrb train`, the study and train-best run"]]
    for key, d in now["train_variants_img_s"].items():
        note = ROUTE_NOTES.get(key) or f"`gtsrb.cpu_routes`: only `{key.removeprefix('route_')}`"
        rows.append([f"variant `{key}`", _rate(d), f"{d['median'] / stock:.2f}", note])
    rows.append(["naive: torchvision GTSRB + PIL + DataLoader, fp32", _rate(now.get("naive_img_s_spread")),
                 _n(now.get("naive_img_s", 0) / stock, 2) if now.get("naive_img_s") else "–", ""])
    table = md_table(["training, seed preset, batch 128", "img/s, median [min–max]", "÷ stock", ""], rows)
    t = now.get("targets", {}).get("speedup_vs_naive")
    lines = [
        f"- `speedup_vs_naive` {_n(now.get('speedup_vs_naive'), 2)}"
        + (f" (target {t['target']}: {'met' if t['met'] else '**not met**'})" if t else ""),
        f"- the default and its twin agree within the spread: {'yes' if now.get('default_agrees') else '**no**'}",
        f"- fp32 matrix products: {now['matmul_gflops']:,.0f} GFLOP/s, so a ceiling of {now['ceiling_img_s']:,.0f} "
        f"img/s at {now['train_gflop_per_image']:.3f} GFLOP per training image; `ratio_to_ceiling` "
        f"{now['ratio_to_ceiling']:.2f}",
        f"- one image through `Classifier.predict` with its excitations: {now['infer_ms_p50']:.1f} ms at p50, "
        f"{now['infer_ms_p99']:.1f} ms at p99; evaluation (`predict_arrays`, batches of 512): "
        f"{now['eval_img_s']:,.0f} img/s",
    ]
    if "pack_s" in now:
        lines.append(f"- packing the archive (39,209 images): {now['pack_s']:.1f} s, against {now['pack_naive_s']:.1f} s "
                     "for a plain sequential decode loop")
    flags = ", ".join(m.get("cpu_flags", [])) or "none of AVX2, AVX-512, AVX-512-BF16, AMX"
    return (table + "\n\n" + "\n".join(lines) + f"\n\nOne run of `make bench` (`python -m study.bench --json`; `gtsrb bench --json` before it moved), `{name}` in "
            f"`results/bench/`: {machine_text(m)}; CPU flags: {flags}; {now['train_variants_img_s']['stock']['rounds']} "
            "rounds, the variants in turn.")


# Bench runs behind the precision rule, one per CPU kind (results/SPEED.md).
PRECISION_RULE_RUNS = ("results/bench/2026-11-26-cpu-2core-run13.json", BENCH_CPU)


def precision_rule_table(runs: list[tuple[str, dict]]) -> str:
    """fp32 against bf16 training on each CPU kind a bench ran on, and what "auto" picks there."""
    def rate(d: dict, *keys: str) -> float | None:
        for k in keys:  # the current bench's {"median": ...} or an older run's plain figure
            v = d.get("train_variants_img_s", {}).get(k)
            if v is not None:
                return v["median"] if isinstance(v, dict) else v
        return None

    rows = []
    for name, r in runs:
        fp32, bf16 = rate(r, "fp32"), rate(r, "bf16", "bf16_channels_last")
        m = r["machine"]
        flags = ", ".join(m.get("cpu_flags", [])) or "not recorded"
        rows.append([f"{m['cpu']} ({m.get('cpu_capability', '?')}; flags: {flags})", _n(fp32), _n(bf16),
                     _n(bf16 / fp32, 2) if fp32 and bf16 else "–",
                     r.get("train_precision") or ("bf16" if r.get("ceiling_bf16_img_s") else "fp32"), f"`{name}`"])
    return md_table(["CPU", "fp32 img/s", "bf16 img/s", "bf16 ÷ fp32", "`auto` picks", "bench run"], rows)


def gpu_table(now: dict, before: dict | None, now_name: str, before_name: str) -> str:
    """The bench's GPU block (``make bench`` on a CUDA machine), before and after a change."""
    b = (before or {}).get("gpu", {})
    g = now["gpu"]

    def cell(d: dict, key: str) -> str:
        if key not in d:
            return "–"
        if d[key] is None:
            return "fell back to eager"
        frac = d.get(key.replace("train_img_s", "bf16_peak_fraction"))
        return f"{d[key]:,.0f}" + (f" ({frac * 100:.1f}% of peak)" if frac is not None else "")

    def sync_free(d: dict) -> str:
        return {True: "yes", False: "**no**"}.get(d.get("step_is_sync_free"), "–")

    names = {"eager": "default step (eager, channels_last)", "eager_noaug": "the same without augmentation",
             "compile": "`torch.compile`, channels_last", "compile_nchw": "`torch.compile`, NCHW"}
    rows = [[f"batch {batch}: {label}, img/s", cell(b, f"train_img_s_b{batch}_{key}"), cell(g, f"train_img_s_b{batch}_{key}")]
            for batch in (128, 1024) for key, label in names.items()]
    rows.append(["a step makes no host sync (`step_is_sync_free`)", sync_free(b), sync_free(g)])
    rows.append(["bf16 matmul peak, TFLOP/s", _n(b.get("bf16_matmul_tflops")), _n(g.get("bf16_matmul_tflops"))])
    rows.append(["host CPU fp32 matmul, GFLOP/s", _n((before or {}).get("matmul_gflops")), _n(now.get("matmul_gflops"))])
    table = md_table(["figure (bf16 autocast, data on the GPU)", f"before (`{before_name}`)", f"now (`{now_name}`)"], rows)
    return table + (f"\n\nOn {machine_text(now['machine'])}, {now['machine'].get('gpu', 'a GPU')}; each column is one run of the bench (`gtsrb bench --json` then, `make bench` now) "
                    f"on a lent machine, in `results/bench/`. Peak: the measured bf16 matmul rate; "
                    f"FLOP per image: the nominal {now['train_gflop_per_image']:.3f} G.")


def precision_table(record: dict) -> str:
    """Final val accuracy per (seed, epochs) of the fp32 path, its channels_last control and the
    bf16 path, with each one's distance from fp32, from study/precision.py's record."""
    runs = record.get("runs", [])
    paths = ("fp32", "fp32_channels_last", "bf16")
    rows, spread, gaps_from_fp32 = [], {}, {}

    def acc(r):
        return f"{r['final_val_accuracy'] * 100:.2f}{' †' if r.get('relabelled_from') else ''}" if r else "–"

    for epochs in sorted({r["epochs"] for r in runs}):
        for seed in sorted({r["seed"] for r in runs if r["epochs"] == epochs}):
            got = {r["path"]: r for r in runs if r["epochs"] == epochs and r["seed"] == seed}
            if "fp32" not in got or len(got) < 2:
                continue
            f, c, h = (got.get(p) for p in paths)
            gaps = {}  # control and bf16 against fp32, in points
            for path, r in zip(paths[1:], (c, h)):
                if r:
                    gaps[path] = (r["final_val_accuracy"] - f["final_val_accuracy"]) * 100
                    gaps_from_fp32.setdefault((epochs, path), []).append(gaps[path])
            rows.append([seed, epochs, acc(f), acc(c), acc(h),
                         *(f"{gaps[p]:+.2f}" if p in gaps else "–" for p in paths[1:]),
                         " / ".join(f"{np.mean(r['images_per_s']):.0f}" if r else "–" for r in (f, c, h))])
        for path in paths:
            accs = [r["final_val_accuracy"] for r in runs if r["epochs"] == epochs and r["path"] == path]
            if len(accs) > 1:
                spread.setdefault(epochs, {})[path] = (max(accs) - min(accs)) * 100
    text = md_table(["seed", "epochs", "fp32 val %", "fp32 channels_last val % (control)", "bf16 val %",
                     "control − fp32, points", "bf16 − fp32, points", "img/s over whole epochs, fp32 / control / bf16"],
                    rows)
    for epochs, d in spread.items():
        text += (f"\n\nAt {epochs} epochs the same path moves by " + " and ".join(f"{v:.2f} points ({k})" for k, v in d.items())
                 + " between seeds.")
        for path in paths[1:]:
            gaps = np.array(gaps_from_fp32.get((epochs, path), []))
            if len(gaps) > 1:
                se = gaps.std(ddof=1) / np.sqrt(len(gaps))
                half = scipy.stats.t.ppf(0.975, len(gaps) - 1) * se
                text += (f" {path} − fp32 over {len(gaps)} seeds: mean {gaps.mean():+.2f} points (standard error "
                         f"{se:.2f}; 95% interval {gaps.mean() - half:+.2f} to {gaps.mean() + half:+.2f}), within 0.3 "
                         f"points on {int((abs(gaps) <= 0.3).sum())}, below on {int((gaps < 0).sum())}.")
    fp32 = {(r["epochs"], r["seed"]): r["final_val_accuracy"] for r in runs if r["path"] == "fp32"}
    for path, why in record.get("superseded", {}).items():
        old = {(r["epochs"], r["seed"]): r["final_val_accuracy"] for r in runs if r["path"] == path}
        parts = []
        for epochs in sorted({e for e, _ in old}):
            gaps = [(old[k] - fp32[k]) * 100 for k in sorted(old) if k[0] == epochs and k in fp32]
            if gaps:
                parts.append(f"at {epochs} epochs {path} − fp32 averaged {np.mean(gaps):+.2f} points over {len(gaps)} seeds")
        text += f"\n\nNot in the table: {why} (path `{path}` in the JSON)" + "".join(f"; {p}" for p in parts) + "."
    if any(r.get("relabelled_from") for r in runs):
        text += ("\n\n†: recorded as path fp32 before a layout fix; its activations were channels_last (the step "
                 "passed the augmented NHWC batch on) with the weights stored NCHW, so it is listed by its activation "
                 "layout (`relabelled_from` in the JSON).")
    if record.get("command"):
        text += f" Machine: {machine_text(record.get('machine'))}."
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/gtsrb28.h5"))
    p.add_argument("--study", type=Path, default=Path("results/study/cpu"))
    p.add_argument("--ablation", type=Path, default=None,
                   help="default: results/ablation once it holds a run, else results/ablation-quick")
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
    if a.ablation is None:  # the converging ablation once it has a run, else the quick one before it
        new, quick = Path("results/ablation"), Path("results/ablation-quick")
        a.ablation = new if any(new.glob("*-seed*.json")) or not quick.is_dir() else quick
        print(f"ablation records: {a.ablation}")
    a.out.mkdir(parents=True, exist_ok=True)
    blocks: dict[str, str] = {}
    headline: dict = {}

    df = load_ablation(a.ablation)
    if not df.empty:
        table, csv = ablation_table(df)
        csv.to_csv(a.out / "ablation.csv", index=False)
        ablation_figure(df, a.out / "ablation_curves.png")
        r = df.iloc[0]
        recipe = "the accuracy recipe on the ROI pack" if r["recipe"] else "the old recipe"
        blocks["ablation"] = (table + f"\n\nEach run: {recipe}, {r['train_fraction']:.0%} of the train split and "
                              f"{r['val_fraction']:.0%} of the val split (track-grouped subsets), {r['epochs']} "
                              f"epochs, batch 128, one-cycle; test = the full test split (n={r['test_n']}) at the "
                              f"{r['test_at']}. "
                              f"A seed sets the initialisation and the subsets, so arms with the same seed saw the "
                              f"same images. Hardware: {machine_text(r['machine'])}; wall time "
                              f"{df['wall_seconds'].sum() / 60:.0f} min for all {len(df)} runs (including the "
                              f"leakage run). Command: `{r['command']}`.\n\nPaired by seed:\n\n" + paired_table(df))
        blocks["leakage"], headline["leakage"] = leakage_table(df)
        headline["ablation_budget"] = (f"{'the recipe' if r['recipe'] else 'old recipe'}, "
                                       f"{r['train_fraction']:.0%} of train, {r['epochs']} epochs")
        for arm in COMPARED:
            d = df[df["arm"] == arm]
            if len(d):
                headline[arm] = {"final_val": pm(d["final_val"]), "test": pm(d["test"]), "runs": len(d)}
    if (a.study / "top.md").is_file():
        blocks["study"] = (a.study / "top.md").read_text().strip()
    rdf = load_recipe(a.recipe)
    if not rdf.empty:
        blocks["recipe"] = recipe_table(rdf)
        rec, old = rdf[rdf["arm"] == "recipe"].set_index("seed"), rdf[rdf["arm"] == "old"].set_index("seed")
        common = sorted(set(rec.index) & set(old.index))
        if len(rec):
            headline["recipe"] = {"test": pm(rec["test"]), "seeds": len(rec), "epochs": int(rec["epochs"].iloc[0]),
                                  "minutes": rec["train_seconds"].mean() / 60}
        if common:
            headline["recipe"]["vs_old"] = pm((rec.loc[common, "test"] - old.loc[common, "test"]).to_numpy())
            headline["recipe"]["pairs"] = len(common)
    metrics_file = a.checkpoint.parent / "metrics.json"
    # The held-out analyses (calibration, errors, SE off) need a model that never saw the test split:
    # the release model's split twin where there is one.
    split_ckpt = a.checkpoint.parent / "split" / "best.pt"
    # The release model saw every split, so without its twin there is no held-out figure to make.
    held_out_ckpt = split_ckpt if split_ckpt.is_file() else (
        None if "test" in _train_splits(a.checkpoint) else a.checkpoint)
    if held_out_ckpt is None:
        print(f"{split_ckpt}: absent (`make train-best` makes it); the held-out blocks keep their text")
    if metrics_file.is_file():
        hist_file = a.checkpoint.parent / "history.json"
        hist = json.loads(hist_file.read_text()) if hist_file.is_file() else []
        m = json.loads(metrics_file.read_text())
        split_file = split_ckpt.parent / "metrics.json"
        split = json.loads(split_file.read_text()) if split_file.is_file() else None
        blocks["best"] = release_text(m, hist, split) if "release" in m else best_run_text(m, hist)
    if (a.study / "curves.csv").is_file():
        table, n_trials = effects_table(a.study)
        blocks["effects"] = (f"{table}\n\n{n_trials} trials in `{a.study}` back this table." if n_trials else
                             f"No trial in `{a.study}` has reached ASHA's first rung yet.")
        blocks["effects"] += "\n\n" + rung_check(a.study)
        controls = asha_controls(a.study, df)
        if controls:
            blocks["effects"] += "\n\n" + controls
    if a.checkpoint.is_file():
        from gtsrb.util import sha256_file

        blocks["checkpoint"] = (f"`{a.checkpoint}`: {a.checkpoint.stat().st_size / 1e6:.1f} MB, weights only "
                                f"(read with `torch.load(weights_only=True)`), sha256\n`{sha256_file(a.checkpoint)}`")
    if held_out_ckpt is not None and held_out_ckpt.is_file() and a.data.is_file():
        blocks["tta"] = tta_text(held_out_ckpt, a.data)
        best, pairs_md = best_model_section(held_out_ckpt, a.data, a.out)
        headline["best_model"] = best
        blocks["calibration"] = (f"Model `{held_out_ckpt}` on the test split: accuracy "
                                 f"{best['accuracy'] * 100:.2f}% ({best['errors']} errors in {best['n']}), macro F1 "
                                 f"{best['macro_f1']:.4f}, mean confidence {best['mean_confidence'] * 100:.2f}%, "
                                 f"**ECE {best['ece'] * 100:.2f}%** (15 equal-width bins). "
                                 + best["calibration_text"]
                                 + f" Made by `make report` from the committed checkpoint and `{a.data}` (one "
                                 f"evaluation pass plus one with SE off, {best['seconds']:.0f} s on "
                                 f"{machine_text(machine())}); no training.")
        blocks["confused"] = pairs_md
        blocks["se_off"] = (f"With every SE block replaced by the identity (same weights otherwise), `{held_out_ckpt}`'s "
                            f"test accuracy goes from {best['accuracy'] * 100:.2f}% to "
                            f"{best['se_off_accuracy'] * 100:.2f}%, and {best['se_off_changed'] * 100:.1f}% of the "
                            f"test predictions change.")
    exc = a.checkpoint.parent / "excitations.npz"
    if exc.is_file():
        from gtsrb.explain import load_excitations

        stats, meta = load_excitations(exc)
        headline["specificity"] = {k: v["specificity"] for k, v in stats.items()}
        blocks["specificity"] = md_table(
            ["SE block", "channels", "class specificity η²"],
            [[k, v["class_mean"].shape[1], f"{v['specificity']:.3f}"] for k, v in stats.items()],
        ) + f"\n\nFrom `{exc}` ({meta['source']}; `gtsrb excitations`)."
    if headline.get("best_model") and all(k in headline for k in ("seed", "no_se", "best")):
        lk = headline.get("leakage") or {}
        bm = headline["best_model"]
        h = ""
        if held_out_ckpt == split_ckpt:
            h += (f"Release model `{a.checkpoint}`: the study's best config with the accuracy recipe, trained on all "
                  f"39,209 training images (GTSRB's protocol); its official-test score comes from an independent "
                  f"run (the set is not on the development machine). Its twin trained on the train split alone "
                  f"(`{split_ckpt}`) scores **{bm['accuracy'] * 100:.2f}%** on the held-out track-split test "
                  f"({bm['errors']} errors in {bm['n']:,}), ECE {bm['ece'] * 100:.2f}%; with its SE blocks switched "
                  f"off, {bm['se_off_accuracy'] * 100:.2f}%.")
        else:
            h += (f"Best model (`{a.checkpoint}`): test accuracy {bm['accuracy'] * 100:.2f}%, ECE "
                  f"{bm['ece'] * 100:.2f}%; with its SE blocks switched off, {bm['se_off_accuracy'] * 100:.2f}%.")
        rc = headline.get("recipe")
        if rc:
            h += (f" The recipe on the train split: test {rc['test']}% over {rc['seeds']} seed(s), "
                  f"{rc['epochs']} epochs, {rc['minutes']:.0f} min per run on 2 CPU cores")
            vs = rc["vs_old"] if rc["vs_old"].startswith("-") else "+" + rc["vs_old"]
            h += (f"; {vs} points on test against the old recipe, paired over {rc['pairs']} seed(s)."
                  if "vs_old" in rc else ".")
        rows = [[ARM_LABELS[k], headline[k]["runs"], headline[k]["final_val"], headline[k]["test"]]
                for k in COMPARED if k in headline]
        h += f"\n\nSE ablation ({headline.get('ablation_budget', '?')}; `make ablation`):\n\n"
        h += md_table(["model (ablation budget)", "seeds", "final val acc %", "test acc %"], rows)
        h += "\n"
        if headline.get("specificity"):
            h += ("\nClass specificity η² of the served model's SE blocks (val split, which the release model "
                  "trained on): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in headline["specificity"].items()) + ".")
        if lk:
            h += (f" Split leakage: the random split reads {lk['gap_points']:+.2f} points higher on its own test "
                  f"split than the track split ({lk['random_test'] * 100:.2f}% vs {lk['track_test'] * 100:.2f}%).")
        blocks["headline"] = h
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
    calibration = a.checkpoint.parent / "calibration.json"
    if calibration.is_file():
        blocks["unsure"] = unsure_text(json.loads(calibration.read_text()))
    (a.out / "headline.json").write_text(json.dumps(headline, indent=1, default=str) + "\n")
    for name, text in blocks.items():
        placed = [str(f) for f in (a.report, a.readme, a.speed) if fill(f, name, text)]
        print(f"{name}: {'written to ' + ', '.join(placed) if placed else 'no marker found'}")
    print(f"figures and CSVs in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
