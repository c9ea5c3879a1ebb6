"""The Study tab's figures: Altair (Vega-Lite) specs that ``gr.Plot`` hands to the browser, which draws them."""

from __future__ import annotations

import math

import altair as alt
import numpy as np
import pandas as pd

from study.records import ARM_COLORS, ARM_LABELS
from ui.study.data import FACTORS, MEASURE_BEST, arm_order

# A trial's role in the study; the fixed trials share their arm's colour in the ablation's chart.
ROLE_COLORS = {"searched": "#4c78a8", "seed": ARM_COLORS["seed"], "no_se": ARM_COLORS["no_se"]}
OTHER_COLOR = "#54a24b"  # a role or arm without a colour of its own
BACKGROUND = "white"  # the page may be dark; Vega's default is transparent with black text


def _role_scale(roles) -> alt.Scale:
    domain = [r for r in ROLE_COLORS if r in set(roles)] + sorted(set(roles) - set(ROLE_COLORS))
    return alt.Scale(domain=domain, range=[ROLE_COLORS.get(r, OTHER_COLOR) for r in domain])


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
    for p in FACTORS:
        col, label, kind = p.key, p.label, p.kind
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
    arms = arm_order(bands["arm"])
    labels = {a: ARM_LABELS.get(a, a) for a in arms}
    scale = alt.Scale(domain=[labels[a] for a in arms], range=[ARM_COLORS.get(a, OTHER_COLOR) for a in arms])
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
