"""The Study tab's prose: the facts each caption states, worked out here from the loaded frames, and put into
words by the markdown templates in ``ui/text/study_*.md`` (Jinja2). A template fails loudly on a placeholder
it is not given (``StrictUndefined``)."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pandas as pd

from study.records import ARM_LABELS, PICKED_ON_SEED, TOP, StudyProfile, pm
from ui.study.data import MEASURE_AT, show_path

TEXT_DIR = Path(__file__).resolve().parents[1] / "text"


def _fmt(v, spec: str) -> str:
    try:
        return format(float(v), spec) if v is not None and not pd.isna(v) else "?"
    except (TypeError, ValueError):
        return "?"


_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(TEXT_DIR), undefined=jinja2.StrictUndefined,
                          trim_blocks=True, lstrip_blocks=True, autoescape=False)
_ENV.filters["pct"] = lambda v: _fmt(v, ".0%")
_ENV.filters["maybe"] = lambda v: "?" if v is None or (isinstance(v, float) and pd.isna(v)) else v


def render(template: str, **facts) -> str:
    """``ui/text/<template>`` filled with ``facts``, without its surrounding blank lines."""
    return _ENV.get_template(template).render(**facts).strip()


def intro_text(results: Path) -> str:
    return render("study_intro.md", results=show_path(results))


def study_facts(folder: Path, trials: pd.DataFrame, notes: list[str], profile: StudyProfile | None) -> dict:
    """What the caption under the trial table states: how many trials (``n``, ``roles``), the most epochs any
    ran (``top``) and how many ran them (``full``), how many stopped earlier and after how many epochs
    (``stopped``, ``budgets``), how many still run (``running``), the profile and whether the trials
    ``agree`` with it."""
    if trials.empty:
        return {"empty": True, "notes": notes}
    facts = {"top": None, "full": 0, "stopped": 0, "budgets": [], "running": 0}
    if "epochs_run" in trials.columns and trials["epochs_run"].notna().any():
        top = int(trials["epochs_run"].max())
        # A study in progress has trials still running: they are not "stopped", and their numbers are so far.
        unfinished = (trials["outcome"].eq("running") if "outcome" in trials.columns
                      else pd.Series(False, index=trials.index))
        facts = {"top": top, "full": int((trials["epochs_run"] == top).sum()),
                 "budgets": sorted({int(e) for e in trials.loc[~unfinished, "epochs_run"].dropna() if e < top}),
                 "stopped": int((~unfinished & (trials["epochs_run"] < top)).sum()),
                 "running": int(unfinished.sum())}
    n = len(trials)
    agree = (profile is not None and n == profile.trials and facts["top"] is not None
             and facts["top"] <= profile.epochs)
    subset = profile is not None and profile.train_fraction is not None and profile.train_fraction < 1
    roles = ", ".join(f"{v} {k}" for k, v in trials["role"].value_counts().items())
    return {"empty": False, "name": folder.name, "n": n, "roles": roles,
            "summary_path": show_path(folder / "summary.csv"), "profile": profile, "agree": agree, "subset": subset,
            "notes": notes, **facts}


def study_text(folder: Path, trials: pd.DataFrame, notes: list[str], profile: StudyProfile | None) -> str:
    """The caption under the trial table: how many trials, how far they ran, the budget the folder records (or
    the profile it is named after), and what a best val accuracy means here."""
    return render("study_trials.md", **study_facts(folder, trials, notes, profile))


def curves_text(folder: Path, curves: pd.DataFrame, trials: pd.DataFrame, notes: list[str]) -> str:
    """The caption under the curves: where they come from, why lines end where they do, and which trials of
    the summary have no curve (or the other way round)."""
    if curves.empty:
        return render("study_curves.md", empty=True, notes=notes)
    if not trials.empty:
        missing = sorted(set(trials["trial_id"]) - set(curves["trial_id"]))
        extra = sorted(set(curves["trial_id"]) - set(trials["trial_id"]))
        if missing:
            notes = [*notes, f"{len(missing)} trial(s) of summary.csv have no curve: {', '.join(missing[:8])}."]
        if extra:
            notes = [*notes, f"{len(extra)} curve(s) belong to no trial of summary.csv: {', '.join(extra[:8])}."]
    return render("study_curves.md", empty=False, curves_path=show_path(folder / "curves.csv"),
                  n=curves["trial_id"].nunique(), points=len(curves),
                  stops=sorted(curves.groupby("trial_id")["epoch"].max().unique()), notes=notes)


def factors_text(trials: pd.DataFrame, long: pd.DataFrame, measure: str, epoch: int | None) -> str:
    """The caption under the factor panels: what the y axis is, and why a panel is a lead, not a finding."""
    at_epoch = measure == MEASURE_AT
    if long.empty:
        return render("study_factors.md", empty=True, at_epoch=at_epoch)
    pairs, n_se = [], 0
    if {"se_form", "se_position"} <= set(trials.columns):
        se = trials.dropna(subset=["se_form", "se_position"])
        n_se = len(se)
        if n_se:
            pairs = list((se["se_form"].astype(str) + " / " + se["se_position"].astype(str)).value_counts().items())
    return render("study_factors.md", empty=False, at_epoch=at_epoch, epoch=epoch, n=long["trial_id"].nunique(),
                  n_factors=long["factor"].nunique(), pairs=pairs, n_se=n_se)


# The recipe settings two ablation arms can differ in besides SE (column, words).
RECIPE_KEYS = (("lr", "lr"), ("weight_decay", "weight decay"), ("conv_dropout", "conv dropout"),
               ("classifier_dropout", "classifier dropout"))


def _recipe_gap(a: pd.Series, b: pd.Series) -> list[str]:
    """The recipe settings (lr, weight decay, dropouts) in which two runs' files differ."""
    return [label for key, label in RECIPE_KEYS if not (pd.isna(a.get(key)) and pd.isna(b.get(key)))
            and _fmt(a.get(key), ".6g") != _fmt(b.get(key), ".6g")]


def ablation_facts(folder: Path, runs: pd.DataFrame, shown: list[str], notes: list[str]) -> dict:
    """What the ablation's table and caption state: a row per drawn arm (``rows``: its config, seeds, final val
    and test as mean ± std), the shared budget (None when the runs differ), the settings besides SE in which
    arms differ from ``seed`` (``seed_vs_no_se``, ``by_gap``), the fewest seeds of an arm (``n_min``), the top
    arms whose seed-0 run picked them (``picked``) and the arms not drawn, with their split kinds
    (``not_drawn``; None where the files do not say)."""
    if runs.empty:
        return {"empty": True, "notes": notes}
    per_run = runs.drop_duplicates(["arm", "seed"]).set_index(["arm", "seed"])
    final = runs.sort_values("epoch").groupby(["arm", "seed"]).tail(1).set_index(["arm", "seed"])
    rows, first = [], {}
    for arm in shown:
        d, f = per_run.loc[arm], final.loc[arm]
        cfg = first[arm] = d.iloc[0]
        rows.append({"label": ARM_LABELS.get(arm, arm), "stages": cfg["se_stages"],
                     "no_se": set(cfg["se_stages"]) == {"0"}, "form": cfg["se_form"], "position": cfg["se_position"],
                     "conv_dropout": _fmt(cfg["conv_dropout"], ".2f"),
                     "classifier_dropout": _fmt(cfg["classifier_dropout"], ".2f"),
                     "lr": _fmt(cfg["lr"], ".1e"), "wd": _fmt(cfg["weight_decay"], ".1e"),
                     "n": len(d), "seeds": ", ".join(str(s) for s in sorted(d.index)), "final": pm(f["val_accuracy"]),
                     "test": pm(d["test_accuracy"].dropna()) if d["test_accuracy"].notna().any() else "?"})
    drawn = per_run.loc[shown] if shown else per_run
    r = drawn.iloc[0]
    budget = None
    if len(drawn[["train_fraction", "val_fraction", "epochs"]].astype(str).drop_duplicates()) == 1:
        budget = {"train_fraction": _fmt(r["train_fraction"], ".0%"), "val_fraction": _fmt(r["val_fraction"], ".0%"),
                  "split_kind": r["split_kind"], "epochs": _fmt(r["epochs"], ".0f")}
    by_gap: dict[str, list[str]] = {}  # arms that differ from `seed` in the same recipe settings, named together
    for arm in (a for a in first if a not in ("seed", "no_se") and "seed" in first):
        gap = _recipe_gap(first[arm], first["seed"])
        if gap:
            by_gap.setdefault(", ".join(gap), []).append(arm)
    kind = r["split_kind"]
    not_drawn = []
    for arm in sorted(set(per_run.index.get_level_values(0)) - set(shown)):
        other = sorted(set(per_run.loc[arm, "split_kind"]))
        not_drawn.append((arm, None if other == ["?"] else other))
    return {
        "empty": False, "rows": rows, "n_files": len(per_run), "folder": show_path(folder), "budget": budget,
        "seed_vs_no_se": _recipe_gap(first["no_se"], first["seed"]) if "seed" in first and "no_se" in first else None,
        "by_gap": list(by_gap.items()), "n_min": int(min(len(per_run.loc[a]) for a in shown)) if shown else 0,
        "picked": [a for a in shown if a in TOP and PICKED_ON_SEED in set(per_run.loc[a].index)],
        "seed": PICKED_ON_SEED, "kind": kind, "not_drawn": not_drawn, "notes": notes}


def ablation_text(folder: Path, runs: pd.DataFrame, shown: list[str], notes: list[str]) -> str:
    """The ablation's per-arm table and its caption: the budget, which arms differ in more than SE, how far a
    band can be trusted, which run flatters its arm, and which arms are not drawn."""
    return render("study_ablation.md", **ablation_facts(folder, runs, shown, notes))


def commands_text(study: Path | None = None, profile: StudyProfile | None = None, ablation: Path | None = None,
                  ablation_commands: list[str] | None = None) -> str:
    """The Commands section: what made the picked study's files (its recorded command where profile.json has
    one) and, given ``ablation``, what made the SE ablation's records."""
    return render("study_commands.md",
                  study=None if study is None else {"name": study.name,
                                                    "command": profile.command if profile is not None else None},
                  ablation=None if ablation is None else {"folder": show_path(ablation),
                                                          "commands": ablation_commands or []})
