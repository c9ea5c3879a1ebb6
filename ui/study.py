"""The demo's "Study" tab: the Ray Tune study and the SE ablation, drawn from the committed results/.

    with gr.Blocks() as app:
        with gr.Tab("Study"):
            build_study_tab(Path("results"))

Nothing here trains or loads a model (no torch): the tab only reads

- ``results/study/<name>/summary.csv`` and ``curves.csv`` (written by ``study/summary.py``
  at the end of ``make tune``): the trial table, the val curve of every trial and the
  effect of each searched factor;
- ``results/ablation/<arm>-seed<k>.json`` (``make ablation``): per arm, the mean val
  accuracy per epoch over seeds with a ±1 standard deviation band. Until that folder holds a
  run, the quick ablation that came before it (``results/ablation-quick``).

The loaders are pure functions that return a :class:`Loaded` (a DataFrame and the notes
on what was missing or malformed); they never raise on a bad file, so a broken result
shows as a note in the tab and the rest of the demo keeps working. The figures are
Altair (Vega-Lite) specs that ``gr.Plot`` hands to the browser, which draws them.
``study.report`` (`make report`) reads the same files for results/REPORT.md; the numbers here use
the same definitions (final val = last epoch, mean ± sample std over seeds), and both take the arms'
names, ``pm`` and the choice of ablation folder from ``study.records`` (numpy only, no torch).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import altair as alt  # noqa: E402
import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from study.records import ARM_LABELS, PICKED_ON_SEED, PROFILES, TOP, ablation_folder, pm  # noqa: E402

SE_STAGE_KEYS = tuple(f"se_stage{i}" for i in range(1, 6))
# The searched factors, in study/summary.py's PARAM_ORDER (study/space.py defines the space):
# (column, label, kind). "cat": a categorical choice; "num"/"log": a float range (log: searched on a log scale).
FACTORS = (
    *((k, f"SE in stage {k[-1]}", "cat") for k in SE_STAGE_KEYS),
    ("se_form", "SE form", "cat"),
    ("se_position", "SE position", "cat"),
    ("se_reduction", "SE reduction ratio r", "cat"),
    ("pool", "pooling", "cat"),
    ("conv_dropout", "conv dropout", "num"),
    ("classifier_dropout", "classifier dropout", "num"),
    ("lr", "learning rate", "log"),
    ("weight_decay", "weight decay", "log"),
)
SE_ONLY = ("se_form", "se_position", "se_reduction")  # asked only when some stage has SE (study/space.py)
TRIAL_REQUIRED = ("trial_id", "best_val_accuracy")
CURVE_REQUIRED = ("trial_id", "epoch", "val_accuracy")
ROLE_COLORS = {"searched": "#4c78a8", "seed": "#f58518", "no_se": "#7f7f7f"}
ARM_COLORS = {"seed": "#f58518", "no_se": "#7f7f7f", "incumbent": "#e45756", "best": "#4c78a8", "top1": "#4c78a8",
              "top2": "#54a24b", "top3": "#b279a2"}
MEASURE_BEST = "best val accuracy (any epoch)"
MEASURE_AT = "val accuracy at the last epoch every trial reached"
MEASURES = (MEASURE_BEST, MEASURE_AT)
BACKGROUND = "white"  # the page may be dark; Vega's default is transparent with black text


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


def _read_csv(path: Path, required: tuple[str, ...], what: str, empty: str) -> Loaded:
    """The CSV, or an empty frame and a note saying why (missing, unreadable, malformed, or ``empty``)."""
    if not path.is_file():
        return Loaded(pd.DataFrame(columns=list(required)),
                      [f"`{show_path(path)}`: not found ({what})."])
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        return Loaded(pd.DataFrame(columns=list(required)),
                      [f"`{show_path(path)}`: cannot be read as CSV ({type(e).__name__}: {str(e).strip()[:200]})."])
    missing = [c for c in required if c not in df.columns]
    if missing:
        return Loaded(pd.DataFrame(columns=list(required)),
                      [f"`{show_path(path)}`: malformed, no column {', '.join(f'`{c}`' for c in missing)}."])
    return Loaded(df, [f"`{show_path(path)}`: {empty}"] if df.empty else [])


def _as_bool(v):
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    s = str(v).strip().lower()
    return True if s in ("true", "1", "1.0") else False if s in ("false", "0", "0.0") else None


# --------------------------------------------------------------------------- loaders

def find_studies(results: Path) -> list[Path]:
    """The study folders under ``results/study`` that hold a summary.csv, newest summary.csv first."""
    root = Path(results) / "study"
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if (d / "summary.csv").is_file()]
    return sorted(found, key=lambda d: (-(d / "summary.csv").stat().st_mtime, d.name))


def load_trials(folder: Path) -> Loaded:
    """``summary.csv``: one row per trial, typed (SE stages bool, numbers float), as the CSV orders it."""
    path = Path(folder) / "summary.csv"
    df, notes = _read_csv(path, TRIAL_REQUIRED, "`make tune` writes it", "no trials in it.")
    if df.empty:
        return Loaded(df, notes)
    df = df.copy()
    df["trial_id"] = df["trial_id"].astype(str)
    for c in ("best_val_accuracy", "best_epoch", "epochs_run", "se_reduction", "conv_dropout",
              "classifier_dropout", "lr", "weight_decay"):
        if c in df.columns:
            raw = df[c]
            df[c] = pd.to_numeric(raw, errors="coerce")
            bad = int((df[c].isna() & raw.notna()).sum())
            if bad:
                notes.append(f"`{show_path(path)}`: {bad} value(s) of `{c}` are not numbers; left empty.")
    for c in SE_STAGE_KEYS:
        if c in df.columns:
            df[c] = df[c].map(_as_bool).astype(object)
    if "role" not in df.columns:
        df["role"] = "searched"
    df["role"] = df["role"].fillna("searched").astype(str)
    n_missing = int(df["best_val_accuracy"].isna().sum())
    if n_missing:
        notes.append(f"`{show_path(path)}`: {n_missing} of {len(df)} trial(s) have no best val accuracy "
                     "(not finished, or errored); they are listed last and left out of the plots.")
    return Loaded(df.reset_index(drop=True), notes)


def load_curves(folder: Path) -> Loaded:
    """``curves.csv``: val accuracy per trial and epoch (long format), sorted by trial and epoch."""
    path = Path(folder) / "curves.csv"
    df, notes = _read_csv(path, CURVE_REQUIRED, "`make tune` writes it beside summary.csv", "no rows.")
    if df.empty:
        return Loaded(df, notes)
    df = df[list(CURVE_REQUIRED)].copy()
    df["trial_id"] = df["trial_id"].astype(str)
    df["epoch"] = pd.to_numeric(df["epoch"], errors="coerce")
    df["val_accuracy"] = pd.to_numeric(df["val_accuracy"], errors="coerce")
    bad = df["epoch"].isna() | df["val_accuracy"].isna()
    if bad.any():
        notes.append(f"`{show_path(path)}`: {int(bad.sum())} row(s) without a numeric epoch or val accuracy, "
                     "left out.")
        df = df[~bad]
    df["epoch"] = df["epoch"].astype(int)
    return Loaded(df.sort_values(["trial_id", "epoch"]).reset_index(drop=True), notes)


def _ablation_rows(path: Path) -> list[dict]:
    r = json.loads(path.read_text())
    tc = r.get("train_config") or {}
    mc = r.get("model_config") or {}
    test = r.get("test") or {}
    base = {
        "file": path.name, "arm": str(r["arm"]), "seed": int(r["seed"]),
        "split_kind": str(r.get("split_kind", "?")),
        "test_accuracy": float(test["accuracy"]) if "accuracy" in test else float("nan"),
        "test_n": test.get("n"), "epochs": tc.get("epochs"), "train_fraction": tc.get("train_fraction"),
        "val_fraction": tc.get("val_fraction"), "lr": tc.get("lr"), "weight_decay": tc.get("weight_decay"),
        "se_stages": "".join("1" if s else "0" for s in mc.get("se_stages", [])),
        "se_form": mc.get("se_form"), "se_position": mc.get("se_position"),
        "conv_dropout": mc.get("conv_dropout"), "classifier_dropout": mc.get("classifier_dropout"),
        "wall_seconds": r.get("wall_seconds"), "command": r.get("command", ""),
        "machine": r.get("machine"),
    }
    history = r["history"]
    if not history:
        raise ValueError("empty history")
    return [{**base, "epoch": int(h["epoch"]), "val_accuracy": float(h["val_accuracy"])} for h in history]


def load_ablation(folder: Path) -> Loaded:
    """``<arm>-seed<k>.json``: one row per run and epoch (arm, seed, epoch, val_accuracy and the run's
    test accuracy, budget, config and command). A file that cannot be read is left out with a note."""
    folder = Path(folder)
    cols = ["file", "arm", "seed", "split_kind", "epoch", "val_accuracy", "test_accuracy"]
    if not folder.is_dir():
        return Loaded(pd.DataFrame(columns=cols), [f"`{show_path(folder)}`: not found (`make ablation` writes it)."])
    rows, notes = [], []
    files = sorted(folder.glob("*-seed*.json"))
    for f in files:
        try:
            rows += _ablation_rows(f)
        except (OSError, ValueError, KeyError, TypeError) as e:  # json.JSONDecodeError is a ValueError
            what = f"no key {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {str(e)[:160]}"
            notes.append(f"`{show_path(f)}`: malformed ({what}); left out.")
    if not files:
        notes.append(f"`{show_path(folder)}`: no `<arm>-seed<k>.json` file (`make ablation` writes them).")
    df = pd.DataFrame(rows) if rows else pd.DataFrame(columns=cols)
    if not df.empty:
        df = df.sort_values(["arm", "seed", "epoch"]).reset_index(drop=True)
    return Loaded(df, notes)


# --------------------------------------------------------------------------- derived tables

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


def _sig(v, digits: int = 3):
    return float(f"{v:.{digits}g}") if pd.notna(v) else None


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
    for col, label, kind in FACTORS:
        if col not in t.columns or t[col].isna().all():
            continue
        for tid, v in t[col].items():
            if pd.isna(y.get(tid)) or v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            r = {"trial_id": tid, "role": t.at[tid, "role"], "factor": col, "label": label, "kind": kind,
                 "y": float(y[tid]),
                 "epochs_run": int(epochs[tid]) if pd.notna(epochs[tid]) else None}
            if kind == "cat":
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


# --------------------------------------------------------------------------- charts (Vega-Lite, drawn by the browser)

def _role_scale(roles) -> alt.Scale:
    domain = [r for r in ROLE_COLORS if r in set(roles)] + sorted(set(roles) - set(ROLE_COLORS))
    return alt.Scale(domain=domain, range=[ROLE_COLORS.get(r, "#54a24b") for r in domain])


def curves_chart(curves: pd.DataFrame, trials: pd.DataFrame) -> alt.Chart | None:
    """Val accuracy against epoch, one line per trial, coloured by role (searched, seed, no_se)."""
    if curves.empty:
        return None
    info_cols = [c for c in ("trial_id", "role", "outcome", "best_val_accuracy") if c in trials.columns]
    d = curves.merge(trials[info_cols], on="trial_id", how="left") if "trial_id" in info_cols else curves.copy()
    d["role"] = d["role"].fillna("not in summary.csv") if "role" in d else "?"
    if "outcome" not in d:
        d["outcome"] = ""
    d["outcome"] = d["outcome"].fillna("").astype(str)
    d = d[["trial_id", "role", "outcome", "epoch", "val_accuracy"]].copy()
    d["val_accuracy"] = d["val_accuracy"].round(4)
    color = alt.Color("role:N", scale=_role_scale(d["role"]), title="role")
    tooltip = [alt.Tooltip("trial_id:N", title="trial"), "role:N", "outcome:N", "epoch:Q",
               alt.Tooltip("val_accuracy:Q", title="val accuracy", format=".1%")]
    base = alt.Chart(d).encode(
        x=alt.X("epoch:Q", title="epoch", axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y("val_accuracy:Q", title="val accuracy", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
        color=color, detail="trial_id:N", tooltip=tooltip)
    chart = (base.mark_line(strokeWidth=1.5, opacity=0.8) + base.mark_point(filled=True, size=30))
    return chart.properties(width=640, height=320, title="Val accuracy per epoch, every trial").configure(
        background=BACKGROUND)


def factors_chart(long: pd.DataFrame, measure: str = MEASURE_BEST, y_title: str | None = None) -> alt.Chart | None:
    """One small panel per searched factor: the trial's accuracy against the factor's value.
    Categorical factors: the trials as points per level (jittered) and a black tick at the level's mean;
    float factors: a scatter (lr and weight decay on a log axis). Points are coloured by role; hollow
    points are trials that ASHA stopped before the most epochs any trial ran."""
    if long.empty:
        return None
    d = long.copy()
    full = d["epochs_run"].max()
    d["budget"] = np.where(d["epochs_run"] >= full, f"all {int(full)} epochs", "stopped early (ASHA)") \
        if pd.notna(full) else "?"
    d["y"] = d["y"].round(4)
    # Deterministic jitter in [-0.3, 0.3] of a band: the n-th trial of a level gets a fixed offset.
    d["jitter"] = d.groupby(["factor", "level"], dropna=False).cumcount().map(lambda i: ((i * 0.37) % 1.0) - 0.5) * 0.6
    y_title = y_title or ("best val accuracy" if measure == MEASURE_BEST else "val accuracy")
    color = alt.Color("role:N", scale=_role_scale(d["role"]), title="role")
    shape_fill = alt.condition(alt.datum.budget == "stopped early (ASHA)", alt.value("white"), color)
    y = alt.Y("y:Q", title=y_title, scale=alt.Scale(zero=False), axis=alt.Axis(format="%"))
    tip = [alt.Tooltip("trial_id:N", title="trial"), "role:N", "budget:N",
           alt.Tooltip("y:Q", title=y_title, format=".1%")]
    panels = []
    base = alt.Chart()  # the data sits once at the top level (alt.concat below); each panel filters it
    for col, label, kind in FACTORS:
        sub = d[d["factor"] == col]
        if sub.empty:
            continue
        f = base.transform_filter(alt.datum.factor == col)
        if kind == "cat":
            counts = sub["level"].value_counts()
            order = sorted(counts.index, key=lambda s: (0, float(s)) if s.replace(".", "", 1).isdigit() else (1, s))
            x = alt.X("level:N", title=label, sort=order,
                      axis=alt.Axis(labelAngle=0))
            pts = f.mark_point(size=45, strokeWidth=1.5).encode(
                x=x, xOffset=alt.XOffset("jitter:Q", scale=alt.Scale(domain=[-0.5, 0.5])), y=y, color=color,
                fill=shape_fill, tooltip=[*tip, alt.Tooltip("level:N", title=label)])
            means = f.mark_tick(color="black", thickness=2, size=22).encode(
                x=x, y=alt.Y("mean(y):Q"),
                tooltip=[alt.Tooltip("level:N", title=label), alt.Tooltip("count():Q", title="trials"),
                         alt.Tooltip("mean(y):Q", title=f"mean {y_title}", format=".1%")])
            panel = alt.layer(pts, means)
        else:
            if kind == "log":  # one tick per decade: Vega's own log ticks crowd a 150 px axis
                lo, hi = math.floor(math.log10(sub["x"].min())), math.ceil(math.log10(sub["x"].max()))
                decades = [10.0 ** k for k in range(lo, max(hi, lo + 1) + 1)]
                scale = alt.Scale(type="log", domain=[decades[0], decades[-1]])
                axis = alt.Axis(format=".0e", values=decades)
            else:
                scale, axis = alt.Scale(zero=False), alt.Axis(format=".2f", tickCount=4)
            panel = f.mark_point(size=45, strokeWidth=1.5).encode(
                x=alt.X("x:Q", title=label, scale=scale, axis=axis), y=y,
                color=color, fill=shape_fill, tooltip=[*tip, alt.Tooltip("x:Q", title=label, format=".3g")])
        panels.append(panel.properties(width=150, height=140))
    if not panels:
        return None
    return alt.concat(*panels, columns=4, data=d).resolve_scale(y="shared").configure(
        background=BACKGROUND).configure_concat(spacing=18)


def ablation_chart(runs: pd.DataFrame, bands: pd.DataFrame) -> alt.Chart | None:
    """Per arm: the mean val accuracy per epoch over seeds (line), the band mean ± 1 sample std (area)
    and each seed's own curve (thin)."""
    if bands.empty:
        return None
    arms = [a for a in ARM_COLORS if a in set(bands["arm"])] + sorted(set(bands["arm"]) - set(ARM_COLORS))
    labels = {a: ARM_LABELS.get(a, a) for a in arms}
    scale = alt.Scale(domain=[labels[a] for a in arms], range=[ARM_COLORS.get(a, "#54a24b") for a in arms])
    b = bands.copy()
    b["arm_label"] = b["arm"].map(labels)
    for c in ("mean", "std", "lower", "upper", "min", "max"):
        b[c] = b[c].astype(float).round(5)
    r = runs[runs["arm"].isin(arms)][["arm", "seed", "epoch", "val_accuracy"]].copy()
    r["arm_label"] = r["arm"].map(labels)
    r["val_accuracy"] = r["val_accuracy"].round(5)
    color = alt.Color("arm_label:N", scale=scale, title="arm",
                      legend=alt.Legend(orient="bottom", columns=1, symbolOpacity=1))
    x = alt.X("epoch:Q", title="epoch", axis=alt.Axis(tickMinStep=1, format="d"))
    yq = alt.Scale(zero=False)
    band = alt.Chart(b).mark_area(opacity=0.2).encode(
        x=x, y=alt.Y("lower:Q", title="val accuracy", scale=yq, axis=alt.Axis(format="%")), y2="upper:Q",
        color=color)
    seeds = alt.Chart(r).mark_line(strokeWidth=0.8, opacity=0.45, strokeDash=[3, 2]).encode(
        x=x, y=alt.Y("val_accuracy:Q", scale=yq), color=color, detail="seed:N",
        tooltip=["arm_label:N", "seed:N", "epoch:Q", alt.Tooltip("val_accuracy:Q", format=".2%")])
    mean = alt.Chart(b).mark_line(strokeWidth=2.5, point=True).encode(
        x=x, y=alt.Y("mean:Q", scale=yq), color=color,
        tooltip=[alt.Tooltip("arm_label:N", title="arm"), "epoch:Q", alt.Tooltip("n:Q", title="seeds"),
                 alt.Tooltip("mean:Q", title="mean val acc", format=".2%"),
                 alt.Tooltip("std:Q", title="std (n-1)", format=".2%"),
                 alt.Tooltip("min:Q", format=".2%"), alt.Tooltip("max:Q", format=".2%")])
    return alt.layer(band, seeds, mean).properties(
        width=640, height=340, title="SE ablation: val accuracy, mean over seeds ± 1 std (band)").configure(
        background=BACKGROUND)


# --------------------------------------------------------------------------- captions

def _profile(folder: Path):
    """How the study was run: its own ``profile.json`` (written by ``make tune``), else study/tune.py's
    profile of the same name as the folder (the default --name), else None."""
    recorded = folder / "profile.json"
    if recorded.is_file():
        try:
            return SimpleNamespace(**json.loads(recorded.read_text()), recorded=True)
        except (OSError, ValueError, TypeError):
            pass  # unreadable: fall back to the profile of the same name
    p = PROFILES.get(folder.name)
    return None if p is None else SimpleNamespace(**dataclasses.asdict(p), grace=p.grace, recorded=False)


def _profile_text(name: str, trials: pd.DataFrame, p) -> str:
    if p is None:
        return ("The folder records neither the command line nor the data budget; `study/tune.py` says how "
                "studies are run.")
    n, top = len(trials), trials["epochs_run"].max() if "epochs_run" in trials else float("nan")
    agree = (n == p.trials and pd.notna(top) and int(top) <= p.epochs)
    budget = (f"{p.trials} trials, at most {p.epochs} epochs each with ASHA rungs from epoch {p.grace} (reduction "
              f"factor 2), on a track-grouped {p.train_fraction:.0%} of the train split and {p.val_fraction:.0%} "
              f"of the val split")
    if p.recorded:
        return (f"The folder's `profile.json` records how it was run: {budget}; command `{p.command}`. Its {n} "
                f"trials and at most {int(top) if pd.notna(top) else '?'} epochs "
                f"{'agree with' if agree else 'do NOT match'} it" + ("" if agree else " (the study is unfinished)")
                + ".")
    return (f"The folder is named after `study/tune.py`'s `{name}` profile: {budget}. The folder has no "
            f"`profile.json` (studies before it was written), so flags that overrode the profile would not show "
            f"here; its {n} trials and at most {int(top) if pd.notna(top) else '?'} epochs "
            f"{'agree with' if agree else 'do NOT match'} the profile.")


def study_text(folder: Path, trials: pd.DataFrame, notes: list[str]) -> str:
    head = f"### Trials of study `{folder.name}`\n"
    if trials.empty:
        return head + "\n".join(f"- {n}" for n in notes) + "\n\nNo trial table to show."
    roles = trials["role"].value_counts()
    role_text = ", ".join(f"{v} {k}" for k, v in roles.items())
    parts = [f"From `{show_path(folder / 'summary.csv')}`: **{len(trials)} trials** ({role_text}), best val "
             f"accuracy first. `study/summary.py` wrote it from the Ray trial folders at the end of `make tune` "
             f"(`python -m study.tune`); `make tune-summary` rewrites it."]
    top = None
    if "epochs_run" in trials.columns and trials["epochs_run"].notna().any():
        top = int(trials["epochs_run"].max())
        full = int((trials["epochs_run"] == top).sum())
        # A study in progress has trials still running: they are not "stopped", and their numbers are so far.
        unfinished = (trials["outcome"].eq("running") if "outcome" in trials.columns
                      else pd.Series(False, index=trials.index))
        budgets = sorted({int(e) for e in trials.loc[~unfinished, "epochs_run"].dropna() if e < top})
        stopped = int((~unfinished & (trials["epochs_run"] < top)).sum())
        parts.append(f"{full} trial(s) ran the most epochs any trial ran ({top}); "
                     + (f"{stopped} stopped earlier (after {', '.join(map(str, budgets))} epochs; the "
                        f"`outcome` column says why)." if budgets else "none stopped earlier."))
        if unfinished.any():
            parts.append(f"**{int(unfinished.sum())} trial(s) are still running** (the study is in progress): "
                         f"their epochs and best val accuracy are so far, not final.")
    p = _profile(folder)
    parts.append(_profile_text(folder.name, trials, p))
    caveat = "A trial's best val accuracy depends on how many epochs it got"
    if top is not None:
        caveat += f" (at most {top} here)"
    if p is not None and p.train_fraction < 1:
        caveat += (f", and every trial trained on {p.train_fraction:.0%} of the train split, so the ranking reflects "
                   f"early training on a subset, not what each config reaches when trained fully")
    parts.append(caveat + ". `seed` is the seed preset (SE on all 5 stages), `no_se` the same net without SE; "
                 "every study runs both first (`study/space.py`).")
    text = head + " ".join(parts)
    if notes:
        text += "\n\n" + "\n".join(f"- ⚠ {n}" for n in notes)
    return text


def curves_text(folder: Path, curves: pd.DataFrame, trials: pd.DataFrame, notes: list[str]) -> str:
    head = "### Val accuracy per epoch\n"
    if curves.empty:
        return head + "\n".join(f"- {n}" for n in notes) + "\n\nNo curves to show."
    n = curves["trial_id"].nunique()
    stops = sorted(curves.groupby("trial_id")["epoch"].max().unique())
    text = (head + f"From `{show_path(folder / 'curves.csv')}`: {n} trials, {len(curves)} (trial, epoch) points, "
            f"the val accuracy each trial reported after each epoch. Lines end where a trial stopped, or where "
            f"a trial still running has got to (here after {', '.join(map(str, stops))} epochs; the tooltip's "
            f"outcome says which): at each rung ASHA (reduction factor 2 in "
            f"`study/tune.py`) lets a trial go on only if it is in the top half of the trials that reached that "
            f"rung before it, so a short line is a trial that was behind when it got there. Hover a point for "
            f"its trial.")
    if not trials.empty:
        missing = sorted(set(trials["trial_id"]) - set(curves["trial_id"]))
        extra = sorted(set(curves["trial_id"]) - set(trials["trial_id"]))
        if missing:
            notes = [*notes, f"{len(missing)} trial(s) of summary.csv have no curve: {', '.join(missing[:8])}."]
        if extra:
            notes = [*notes, f"{len(extra)} curve(s) belong to no trial of summary.csv: {', '.join(extra[:8])}."]
    if notes:
        text += "\n\n" + "\n".join(f"- ⚠ {n}" for n in notes)
    return text


def factors_text(trials: pd.DataFrame, long: pd.DataFrame, measure: str, epoch: int | None) -> str:
    head = "### Effect of each searched factor\n"
    if long.empty:
        why = ("no trial has a val accuracy at a common epoch (curves.csv missing or empty)" if measure == MEASURE_AT
               else "no trial with a best val accuracy")
        return head + f"Nothing to plot: {why}."
    n = long["trial_id"].nunique()
    pairing = ""
    if {"se_form", "se_position"} <= set(trials.columns):
        se = trials.dropna(subset=["se_form", "se_position"])
        if len(se):
            pairs = (se["se_form"].astype(str) + " / " + se["se_position"].astype(str)).value_counts()
            pairing = (f" For instance SE form / position, over the {len(se)} trials with SE: "
                       + ", ".join(f"{k} {v}" for k, v in pairs.items()) + ".")
    what = ("each trial's best val accuracy (at whatever epoch ASHA let it reach)" if measure == MEASURE_BEST
            else f"each trial's val accuracy at epoch {epoch}, the last epoch every trial reached, so all "
                 f"trials are compared after the same training (as in REPORT.md's factor table)")
    return (head + f"One panel per searched hyper-parameter ({long['factor'].nunique()} factors, {n} trials), "
            f"against {what}. Categorical factors: one point per trial and a black tick at the level's mean "
            f"(hover for the number of trials); float factors: a scatter, lr and weight decay on a log axis. "
            f"Hollow points: trials ASHA stopped early. SE form, position and r exist only for trials with SE. "
            f"The levels were chosen by the TPE sampler, not in a balanced design, so factors are confounded "
            f"(levels of different factors tend to come together) and a level with 1 or 2 trials says little: "
            f"treat each panel as a lead, not a finding.{pairing}")


def _fmt(v, spec: str) -> str:
    try:
        return format(float(v), spec) if v is not None and not pd.isna(v) else "?"
    except (TypeError, ValueError):
        return "?"


RECIPE_KEYS = (("lr", "lr"), ("weight_decay", "weight decay"), ("conv_dropout", "conv dropout"),
               ("classifier_dropout", "classifier dropout"))


def _recipe_gap(a: pd.Series, b: pd.Series) -> list[str]:
    """The recipe settings (lr, weight decay, dropouts) in which two runs' files differ."""
    return [label for key, label in RECIPE_KEYS if not (pd.isna(a.get(key)) and pd.isna(b.get(key)))
            and _fmt(a.get(key), ".6g") != _fmt(b.get(key), ".6g")]


def ablation_text(folder: Path, runs: pd.DataFrame, shown: list[str], notes: list[str]) -> str:
    head = "### SE ablation: does SE help, and does it converge faster?\n"
    if runs.empty:
        return head + "\n".join(f"- {n}" for n in notes) + "\n\nNo ablation runs to show."
    per_run = runs.drop_duplicates(["arm", "seed"]).set_index(["arm", "seed"])
    final = runs.sort_values("epoch").groupby(["arm", "seed"]).tail(1).set_index(["arm", "seed"])
    lines, first = [], {}
    for arm in shown:
        d = per_run.loc[arm]
        f = final.loc[arm]
        cfg = first[arm] = d.iloc[0]
        stages = cfg["se_stages"]
        se = ("SE not recorded" if not stages else "no SE" if set(stages) == {"0"} else
              f"SE stages {stages}, {cfg['se_form']} {cfg['se_position']}")
        lines.append(f"| {ARM_LABELS.get(arm, arm)} | {se}; dropout {_fmt(cfg['conv_dropout'], '.2f')}/"
                     f"{_fmt(cfg['classifier_dropout'], '.2f')}, lr {_fmt(cfg['lr'], '.1e')}, "
                     f"wd {_fmt(cfg['weight_decay'], '.1e')} | "
                     f"{len(d)} ({', '.join(str(s) for s in sorted(d.index))}) | {pm(f['val_accuracy'])} | "
                     f"{pm(d['test_accuracy'].dropna()) if d['test_accuracy'].notna().any() else '?'} |")
    drawn = per_run.loc[shown] if shown else per_run
    r = drawn.iloc[0]
    budget = (f"Each run: {_fmt(r['train_fraction'], '.0%')} of the train split and "
              f"{_fmt(r['val_fraction'], '.0%')} of the val split ({r['split_kind']} split), "
              f"{_fmt(r['epochs'], '.0f')} epochs")
    if len(drawn[["train_fraction", "val_fraction", "epochs"]].astype(str).drop_duplicates()) > 1:
        budget = "⚠ The runs do not share one budget (train/val fraction or epochs differ between files)"
    cmds = sorted({c for c in per_run["command"] if c})
    left = sorted(set(per_run.index.get_level_values(0)) - set(shown))
    text = (head + f"From the {len(per_run)} files `{show_path(folder)}/<arm>-seed<k>.json`. Each line is one arm's "
            f"mean val accuracy per epoch over its seeds; the shaded **band is the mean ± 1 sample standard "
            f"deviation (n−1) over seeds**, as in REPORT.md's `ablation_curves.png`; the thin dashed lines are the "
            f"single seeds. {budget}; a seed fixes the initialisation and the subsets, so arms with the same seed "
            f"saw the same images."
            + "".join(f" Command: `{c}`." for c in cmds)
            + "\n\n| arm | config (from the files) | seeds | final val acc % | test acc % |\n|---|---|---|---|---|\n"
            + "\n".join(lines) + "\n\nmean ± sample std over seeds; final = the last epoch.")
    if "seed" in first and "no_se" in first:
        gap = _recipe_gap(first["no_se"], first["seed"])
        text += (" `no_se` against `seed` is the SE-or-not comparison: " +
                 ("same lr, weight decay and dropout." if not gap else f"⚠ they also differ in {', '.join(gap)}."))
    by_gap = {}  # arms that differ from `seed` in the same recipe settings, named in one sentence
    for arm in (a for a in first if a not in ("seed", "no_se") and "seed" in first):
        gap = _recipe_gap(first[arm], first["seed"])
        if gap:
            by_gap.setdefault(", ".join(gap), []).append(f"`{arm}`")
    for gap, arms in by_gap.items():
        text += (f" {', '.join(arms)} differ{'s' if len(arms) == 1 else ''} from `seed` in {gap} as well as in "
                 f"SE settings, so a lead of {'it' if len(arms) == 1 else 'one of them'} is that whole config's, "
                 f"not SE's alone.")
    n_min = int(min(len(per_run.loc[a]) for a in shown)) if shown else 0
    text += (f" Where two bands overlap, the gap between those arms is within their seed-to-seed spread; with "
             f"{n_min} seed(s) per arm a band is a rough guide.")
    picked = [a for a in shown if a in TOP and PICKED_ON_SEED in set(per_run.loc[a].index)]
    if picked:
        text += (f" The study ranked {', '.join(f'`{a}`' for a in picked)} on its seed-{PICKED_ON_SEED} run (every "
                 f"study trial trains with seed {PICKED_ON_SEED}), so that run was picked for a high val and "
                 f"flatters its arm; compare the other seeds (REPORT.md, section 3) before calling a winner.")
    kind = r["split_kind"]
    for arm in left:
        other = sorted(set(per_run.loc[arm, "split_kind"]))
        why = ("its files do not record their split kind" if other == ["?"] else
               f"split kind {', '.join(other)}: its val split is not the {kind} split the drawn arms use")
        text += f" Not drawn: `{arm}` ({why}), so its curve is not comparable."
    if notes:
        text += "\n\n" + "\n".join(f"- ⚠ {n}" for n in notes)
    return text


# --------------------------------------------------------------------------- the tab

def study_view(folder: Path | None, measure: str = MEASURE_BEST) -> tuple:
    """Everything the tab shows for one study folder: (study md, table, curves md, curves chart,
    factors md, factors chart). Never raises on bad files: their notes go into the Markdown."""
    if folder is None:
        msg = ("### Trials\nNo study found: `results/study/<name>/summary.csv` is missing (`make tune` "
               "writes it).")
        return msg, trials_table(pd.DataFrame()), "", None, "", None
    folder = Path(folder)
    trials, t_notes = load_trials(folder)
    curves, c_notes = load_curves(folder)
    epoch = common_epoch(curves, trials) if not trials.empty else None
    long = factor_table(trials, curves, measure)
    y_title = "best val accuracy" if measure == MEASURE_BEST else f"val accuracy at epoch {epoch}"
    return (study_text(folder, trials, t_notes), trials_table(trials),
            curves_text(folder, curves, trials, c_notes), curves_chart(curves, trials),
            factors_text(trials, long, measure, epoch), factors_chart(long, measure, y_title))


def ablation_view(folder: Path) -> tuple[str, alt.Chart | None]:
    runs, notes = load_ablation(folder)
    if runs.empty:
        return ablation_text(folder, runs, [], notes), None
    kinds = runs.drop_duplicates(["arm", "seed"])["split_kind"]
    main_kind = "track" if (kinds == "track").any() else kinds.mode().iloc[0]
    shown_runs = runs[runs["split_kind"] == main_kind]
    arms = [a for a in ARM_COLORS if a in set(shown_runs["arm"])] + sorted(set(shown_runs["arm"]) - set(ARM_COLORS))
    return ablation_text(folder, runs, arms, notes), ablation_chart(shown_runs, ablation_bands(shown_runs))


def build_study_tab(results: Path = Path("results")) -> None:
    """Lay out the Study tab inside the current ``gr.Blocks`` (under ``with gr.Tab("Study"):``)."""
    results = Path(results)
    studies = find_studies(results)
    by_name = {d.name: d for d in studies}
    first = studies[0] if studies else None
    gr.Markdown(
        "## The hyper-parameter study and the SE ablation\n"
        f"Drawn from the committed files under `{show_path(results)}/` (no training here). "
        "Hover a plot for the values; the figures are drawn by your browser.", elem_id="study-intro")
    with gr.Row():
        pick = gr.Dropdown(choices=list(by_name), value=first.name if first else None,
                           label=f"Study folder (`{show_path(results / 'study')}/<name>`, newest first)",
                           interactive=len(studies) > 1, elem_id="study-pick", scale=1)
    try:
        view = study_view(first)
    except Exception as e:  # noqa: BLE001 - an unforeseen bad file must not take the demo down
        view = (f"### Trials\n⚠ Cannot show `{first}`: {type(e).__name__}: {e}", trials_table(pd.DataFrame()),
                "", None, "", None)
    study_md = gr.Markdown(view[0], elem_id="study-source")
    table = gr.Dataframe(value=view[1], interactive=False, elem_id="study-trials", max_height=640,
                         show_label=False, wrap=False)
    curves_md = gr.Markdown(view[2], elem_id="study-curves-text")
    curves_plot = gr.Plot(value=view[3], show_label=False, elem_id="study-curves")
    factors_md = gr.Markdown(view[4], elem_id="study-factors-text")
    measure = gr.Radio(choices=list(MEASURES), value=MEASURE_BEST, label="Accuracy on the y axis",
                       elem_id="study-measure")
    factors_plot = gr.Plot(value=view[5], show_label=False, elem_id="study-factors")
    abl_folder = ablation_folder(results)
    try:
        abl_md, abl_chart = ablation_view(abl_folder)
    except Exception as e:  # noqa: BLE001
        abl_md, abl_chart = f"### SE ablation\n⚠ Cannot show `{abl_folder}`: {type(e).__name__}: {e}", None
    gr.Markdown(abl_md, elem_id="study-ablation-text")
    gr.Plot(value=abl_chart, show_label=False, elem_id="study-ablation")

    def update(name: str | None, how: str):
        if name not in by_name:
            return (f"### Trials\n⚠ No study `{name}` under `{show_path(results / 'study')}`.",
                    trials_table(pd.DataFrame()), "", None, "", None)
        try:
            return study_view(by_name[name], how if how in MEASURES else MEASURE_BEST)
        except Exception as e:  # noqa: BLE001
            return (f"### Trials\n⚠ Cannot show study `{name}`: {type(e).__name__}: {e}",
                    trials_table(pd.DataFrame()), "", None, "", None)

    outputs = [study_md, table, curves_md, curves_plot, factors_md, factors_plot]
    pick.change(update, [pick, measure], outputs, api_visibility="private")
    measure.change(update, [pick, measure], outputs, api_visibility="private")
