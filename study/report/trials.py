"""The Ray Tune study's trials (``results/study/<name>/summary.csv`` and ``curves.csv``): did ASHA's
first rung keep the good finishers, did the stopped fixed trials lose anything, and each searched
factor's effect."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from study.records import (
    SE_STAGE_KEYS,
    SEARCH_PARAMS,
    read_curves,
    read_summary,
    study_budget,
)
from study.report.common import md_table

# REPORT.md's factor table: the searched factors but lr and weight decay (the Study tab draws those as scatters),
# position before form, in the table's own words for r.
FACTORS = [(k, "reduction ratio r" if k == "se_reduction" else SEARCH_PARAMS[k].label)
           for k in (*SE_STAGE_KEYS, "se_position", "se_form", "se_reduction", "pool", "conv_dropout",
                     "classifier_dropout")]


FLAT_POINTS = 0.3  # a curve is flat at its end when its last epoch gained at most this much val accuracy


def rung_check(study: Path) -> str:
    """Did ASHA's first rung keep the good finishers, and were the finishers' curves flat at the end?"""
    from scipy.stats import spearmanr

    summary = read_summary(study).frame
    curves = read_curves(study).frame.pivot_table(index="trial_id", columns="epoch", values="val_accuracy")
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
    summary = read_summary(study).frame
    curves = read_curves(study).frame.pivot_table(index="trial_id", columns="epoch", values="val_accuracy")
    last = study_budget(study, summary)[1]
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
    summary = read_summary(study).frame
    curves = read_curves(study).frame
    rung, final_epoch = study_budget(study, summary)
    at_epoch = at_epoch or rung
    at = curves[curves["epoch"] == at_epoch].set_index("trial_id")["val_accuracy"]
    fin = curves[curves["epoch"] == final_epoch].set_index("trial_id")["val_accuracy"]
    s = summary.set_index("trial_id")
    s["at"] = at
    s["final"] = fin
    s = s.dropna(subset=["at"])
    has_se = s[list(SE_STAGE_KEYS)].astype(str).eq("True").any(axis=1)
    rows = []
    for col, label in FACTORS:
        d = s[has_se] if SEARCH_PARAMS[col].se_only else s
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
