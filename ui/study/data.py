"""The Study tab's data: the committed results, read through ``study.records``, as frames, and the tables
derived from them.

The loaders never raise on a bad file: each returns a :class:`Loaded` (the frame, empty when nothing could be
read, and notes on what was missing or malformed), so a broken result shows as a note in the tab and the rest
of the demo keeps working. The numbers use ``study.report``'s definitions (final val = last epoch, mean ±
sample std over seeds).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from study.records import (
    ARM_COLORS,
    CURVES_COLUMNS,
    CURVES_FILE,
    SE_STAGE_KEYS,
    SEARCH_SPACE,
    SUMMARY_FILE,
    AblationRecord,
    RecordError,
    RecordMissing,
    StudyProfile,
    ablation_files,
    named_profile,
    read_ablation_record,
    read_curves,
    read_profile,
    read_summary,
)

# The searched factors as the tab draws them: the categorical ones first, then the float ranges, each group
# in the order study.records declares them.
FACTORS = tuple(sorted(SEARCH_SPACE, key=lambda p: p.kind != "cat"))
TRIAL_REQUIRED = ("trial_id", "best_val_accuracy")
MEASURE_BEST = "best val accuracy (any epoch)"
MEASURE_AT = "val accuracy at the last epoch every trial reached"
MEASURES = (MEASURE_BEST, MEASURE_AT)
ABLATION_COLUMNS = ["file", "arm", "seed", "split_kind", "epoch", "val_accuracy", "test_accuracy"]


class Loaded(NamedTuple):
    """A loader's result: the data (empty when nothing could be read) and what went wrong, if anything."""

    frame: pd.DataFrame
    notes: list[str]


def show_path(path: Path) -> str:
    """A path as the page shows it: relative to the working directory when it lies below it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _unread(e: RecordError, columns, hint: str) -> Loaded:
    """The note for a table that could not be read: what is wrong, and for a missing one what writes it."""
    why = f"{e.problem} ({hint})" if isinstance(e, RecordMissing) else e.problem
    return Loaded(pd.DataFrame(columns=list(columns)), [f"`{show_path(e.path)}`: {why}."])


def load_trials(folder: Path) -> Loaded:
    """``summary.csv``: one row per trial, typed (SE stages bool, numbers float), as the CSV orders it."""
    path = Path(folder) / SUMMARY_FILE
    try:
        df, problems = read_summary(folder, TRIAL_REQUIRED, strict=False)
    except RecordError as e:
        return _unread(e, TRIAL_REQUIRED, "`make tune` writes it")
    notes = [f"`{show_path(path)}`: {p}." for p in problems]
    if df.empty:
        return Loaded(df, [*notes, f"`{show_path(path)}`: no trials in it."])
    n_missing = int(df["best_val_accuracy"].isna().sum())
    if n_missing:
        notes.append(f"`{show_path(path)}`: {n_missing} of {len(df)} trial(s) have no best val accuracy "
                     "(not finished, or errored); they are listed last and left out of the plots.")
    return Loaded(df, notes)


def load_curves(folder: Path) -> Loaded:
    """``curves.csv``: val accuracy per trial and epoch (long format), sorted by trial and epoch."""
    path = Path(folder) / CURVES_FILE
    try:
        df, problems = read_curves(folder, strict=False)
    except RecordError as e:
        return _unread(e, CURVES_COLUMNS, "`make tune` writes it beside summary.csv")
    notes = [f"`{show_path(path)}`: {p}." for p in problems]
    return Loaded(df, [*notes, f"`{show_path(path)}`: no rows."] if df.empty else notes)


def load_profile(folder: Path) -> tuple[StudyProfile | None, list[str]]:
    """How the study was run: its own ``profile.json`` (written by ``make tune``), else study/tune.py's profile
    of the same name as the folder (the default --name), else None; and a note when profile.json is there but
    cannot be read."""
    try:
        profile, notes = read_profile(folder), []
    except RecordError as e:
        profile, notes = None, [f"`{show_path(e.path)}`: {e.problem}; read as the profile the folder is named after."]
    return profile or named_profile(Path(folder).name), notes


def _ablation_rows(r: AblationRecord) -> list[dict]:
    """One row per epoch of a run: the epoch's val accuracy beside the run's test accuracy, budget and config."""
    base = {
        "file": r.path.name, "arm": r.arm, "seed": r.seed, "split_kind": r.split_kind or "?",
        "test_accuracy": float("nan") if r.test_accuracy is None else r.test_accuracy, "test_n": r.test_n,
        "epochs": r.train_epochs, "train_fraction": r.train_fraction, "val_fraction": r.val_fraction, "lr": r.lr,
        "weight_decay": r.weight_decay, "se_stages": "".join("1" if s else "0" for s in r.se_stages or ()),
        "se_form": r.se_form, "se_position": r.se_position, "conv_dropout": r.conv_dropout,
        "classifier_dropout": r.classifier_dropout, "wall_seconds": r.wall_seconds, "command": r.command or "",
        "machine": r.machine,
    }
    return [{**base, "epoch": e, "val_accuracy": v} for e, v in zip(r.epochs, r.val_curve)]


def load_ablation(folder: Path) -> Loaded:
    """``<arm>-seed<k>.json``: one row per run and epoch (arm, seed, epoch, val_accuracy and the run's
    test accuracy, budget, config and command). A file that cannot be read is left out with a note."""
    folder = Path(folder)
    if not folder.is_dir():
        return Loaded(pd.DataFrame(columns=ABLATION_COLUMNS),
                      [f"`{show_path(folder)}`: not found (`make ablation` writes it)."])
    rows, notes = [], []
    files = ablation_files(folder)
    for f in files:
        try:
            rows += _ablation_rows(read_ablation_record(f))
        except RecordError as e:
            notes.append(f"`{show_path(f)}`: malformed ({e.problem}); left out.")
    if not files:
        notes.append(f"`{show_path(folder)}`: no `<arm>-seed<k>.json` file (`make ablation` writes them).")
    df = pd.DataFrame(rows) if rows else pd.DataFrame(columns=ABLATION_COLUMNS)
    if not df.empty:
        df = df.sort_values(["arm", "seed", "epoch"]).reset_index(drop=True)
    return Loaded(df, notes)


# --------------------------------------------------------------------------- derived tables

def arm_order(arms) -> list[str]:
    """Arms in the order they are drawn (study.records.ARM_COLORS's), then any others by name."""
    arms = set(arms)
    return [a for a in ARM_COLORS if a in arms] + sorted(arms - set(ARM_COLORS))


def ablation_bands(runs: pd.DataFrame) -> pd.DataFrame:
    """Per arm and epoch, over seeds: n, mean, sample std (n-1; 0 for one run), min, max and the band
    mean ± std. Accuracies stay fractions (0..1)."""
    cols = ["arm", "epoch", "n", "mean", "std", "min", "max", "lower", "upper"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    g = runs.groupby(["arm", "epoch"])["val_accuracy"]
    out = g.agg(n="count", mean="mean", std=lambda s: s.std(ddof=1) if len(s) > 1 else 0.0,
                min="min", max="max").reset_index()
    out["lower"] = out["mean"] - out["std"]
    out["upper"] = out["mean"] + out["std"]
    return out[cols]


def trials_table(trials: pd.DataFrame) -> pd.DataFrame:
    """The trial table as the page shows it: best trial first, rounded, no paths or node ids."""
    if trials.empty:
        return pd.DataFrame({"note": ["no trials to show"]})
    t = trials.sort_values("best_val_accuracy", ascending=False, na_position="last", kind="stable")

    def text(col, fmt=str):
        if col not in t.columns:
            return ["–"] * len(t)
        return ["–" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt(v) for v in t[col]]

    out = pd.DataFrame({"rank": range(1, len(t) + 1), "trial": t["trial_id"].to_list(), "role": t["role"].to_list()})
    out["best val acc"] = [round(float(v), 4) if pd.notna(v) else None for v in t["best_val_accuracy"]]
    for col, name in (("best_epoch", "best epoch"), ("epochs_run", "epochs run")):
        out[name] = text(col, lambda v: str(int(v)))
    out["outcome"] = text("outcome") if "outcome" in t.columns else text("status")
    if all(k in t.columns for k in SE_STAGE_KEYS):
        out["SE stages 1-5"] = ["".join("1" if r[k] else "0" if r[k] is False else "?" for k in SE_STAGE_KEYS)
                                for _, r in t.iterrows()]
    out["SE form"] = text("se_form")
    out["SE position"] = text("se_position")
    out["r"] = text("se_reduction", lambda v: f"{float(v):.0f}")
    out["conv dropout"] = text("conv_dropout", lambda v: f"{float(v):.2f}")
    out["cls dropout"] = text("classifier_dropout", lambda v: f"{float(v):.2f}")
    out["pool"] = text("pool")
    out["lr"] = text("lr", lambda v: f"{float(v):.2e}")
    out["weight decay"] = text("weight_decay", lambda v: f"{float(v):.2e}")
    if "retried_from_epoch" in t.columns and pd.to_numeric(t["retried_from_epoch"], errors="coerce").fillna(0).any():
        out["retried from epoch"] = text("retried_from_epoch", lambda v: str(int(v)))
    return out.reset_index(drop=True)


def common_epoch(curves: pd.DataFrame, trials: pd.DataFrame | None = None) -> int | None:
    """The last epoch every trial (of ``trials``, else of ``curves``) has a val accuracy for."""
    if curves.empty:
        return None
    ids = set(trials["trial_id"]) if trials is not None and not trials.empty else set(curves["trial_id"])
    per = curves[curves["trial_id"].isin(ids)].groupby("trial_id")["epoch"].max()
    if per.empty or len(per) < len(ids):
        return None
    return int(per.min())


def factor_table(trials: pd.DataFrame, curves: pd.DataFrame | None = None, measure: str = MEASURE_BEST) -> pd.DataFrame:
    """Long format, one row per (trial, searched factor): the factor's value as text (``level``, for
    categorical factors) or number (``x``, for float ones) and the trial's ``y`` under ``measure``:
    its best val accuracy, or its val accuracy at :func:`common_epoch`. SE form, position and r are
    left out for trials without SE (they have none)."""
    cols = ["trial_id", "role", "factor", "label", "kind", "level", "x", "y", "epochs_run"]
    if trials.empty:
        return pd.DataFrame(columns=cols)
    t = trials.set_index("trial_id", drop=False)
    if measure == MEASURE_AT:
        ep = common_epoch(curves if curves is not None else pd.DataFrame(), trials)
        if ep is None:
            return pd.DataFrame(columns=cols)
        at = curves[curves["epoch"] == ep].set_index("trial_id")["val_accuracy"]
        y = at.reindex(t.index)
    else:
        y = t["best_val_accuracy"]
    epochs = t["epochs_run"] if "epochs_run" in t.columns else pd.Series(float("nan"), index=t.index)
    rows = []
    for p in FACTORS:
        col = p.key
        if col not in t.columns or t[col].isna().all():
            continue
        for tid, v in t[col].items():
            if pd.isna(y.get(tid)) or v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            r = {"trial_id": tid, "role": t.at[tid, "role"], "factor": col, "label": p.label, "kind": p.kind,
                 "y": float(y[tid]),
                 "epochs_run": int(epochs[tid]) if pd.notna(epochs[tid]) else None}
            if p.kind == "cat":
                if col in SE_STAGE_KEYS:
                    r["level"] = "on" if v is True else "off" if v is False else str(v)
                elif col == "se_reduction":
                    r["level"] = f"{float(v):.0f}"
                else:
                    r["level"] = str(v)
                r["x"] = None
            else:
                r["level"], r["x"] = None, float(v)
            rows.append(r)
    return pd.DataFrame(rows, columns=cols)
