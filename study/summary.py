"""Summaries of a stored study, rewritable at any time from its trial folders.

Writes into the study folder: summary.csv (one row per trial that reported an
epoch, with its training seconds), curves.csv (val accuracy per trial and
epoch), best_config.json, top.md (the top trials and the two fixed ones),
params.png (each searched parameter against the trial's best val accuracy, the
seed and no-SE trials in red, which Optuna's ``plot_slice`` cannot mark) and,
from the Optuna study in optuna.db, Optuna's own plots: history.png,
parallel.png, intermediate.png (every trial's per-epoch val accuracy, pruned
ones included) and, when at least IMPORTANCE_MIN_TRIALS trials completed the
full budget, importances.png (fANOVA).

Every trial file is read before anything is written, and each summary is written atomically: a
truncated result.json (a study killed mid-write) is refused with its file and line, and leaves the
summaries of the last good run in place.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gtsrb.archive import DataError
from gtsrb.util import atomic_path, write_text_atomic
from study.records import (
    OPTUNA_DB, SE_STAGE_KEYS, SEARCH_KEYS, optuna_storage_url, read_trial_params, read_trial_results,
    study_budget, trial_dirs, write_best_config, write_curves, write_summary,
)
from study.space import FIXED_POINTS, best_config_json

IMPORTANCE_MIN_TRIALS = 20  # fANOVA on fewer completed trials than this says more about noise than factors
# study.ablation imports these two from here.
PARAM_ORDER = SEARCH_KEYS
__all__ = ["IMPORTANCE_MIN_TRIALS", "PARAM_ORDER", "load_trials", "optuna_plots", "study_budget", "write_summaries"]


def _role(config: dict) -> str:
    for name, point in FIXED_POINTS.items():
        if all(config.get(k) == v for k, v in point.items()) and set(config) <= set(point):
            return name
    return "searched"


def _status(trial_dir: Path, results: list[dict]) -> str:
    """TERMINATED once the last result says done (also after a retried failure), else ERROR or RUNNING."""
    if results and results[-1].get("done"):
        return "TERMINATED"
    if (trial_dir / "error.txt").exists():
        return "ERROR"
    return "RUNNING" if results else "PENDING"


def load_trials(study_dir: Path) -> pd.DataFrame:
    """One row per trial folder: role, parameters, best val accuracy, epochs run, status.

    Reads the files Ray writes into each trial folder (params.json, result.json,
    error.txt), so it needs no running Ray.
    """
    rows = []
    for trial_dir in trial_dirs(study_dir):
        config = {k: v for k, v in read_trial_params(trial_dir).items() if k in PARAM_ORDER}
        results = read_trial_results(trial_dir)
        # One result per epoch, the latest: a trial that started over (its checkpoint's weights were not
        # on the machine that continued the study) reported its first epochs twice.
        results = sorted({r["epoch"]: r for r in results if "val_accuracy" in r}.values(), key=lambda r: r["epoch"])
        best = max(results, key=lambda r: r["val_accuracy"]) if results else None
        rows.append({
            "trial_id": results[0]["trial_id"] if results else trial_dir.name.split("_")[2],
            "val_curve": [round(r["val_accuracy"], 6) for r in sorted(results, key=lambda r: r["epoch"])],
            "role": _role(config),
            **{k: config.get(k) for k in PARAM_ORDER},
            "best_val_accuracy": best["val_accuracy"] if best else float("nan"),
            "best_epoch": best["epoch"] if best else 0,
            "epochs_run": max((r["epoch"] for r in results), default=0),
            # Seconds of training in the kept epochs (each epoch's own timing, without evaluation gaps).
            "train_seconds": round(sum(r.get("epoch_seconds", 0.0) for r in results), 1),
            "status": _status(trial_dir, results),
            "retried_from_epoch": max((r.get("resumed_from_epoch", 0) for r in results), default=0),
            "nodes": ",".join(sorted({str(r.get("node_id", ""))[:8] for r in results})),
            "trial_dir": trial_dir.name,
        })
    return pd.DataFrame(rows)


def write_summaries(study_dir: Path, max_epochs: int | None = None, top: int = 5) -> str:
    """Write the summaries; return the markdown table (and the Optuna study's line)."""
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise DataError(f"{study_dir}: no such study folder")
    trials = load_trials(study_dir)
    if trials.empty:
        raise DataError(f"{study_dir}: no trial folders (*/params.json): not a study, or one whose first "
                        f"trial has not started")
    trials = trials.sort_values("best_val_accuracy", ascending=False)
    max_epochs = max_epochs or study_budget(study_dir, trials)[1]
    trials["outcome"] = [
        "error" if s == "ERROR" else ("stopped early (ASHA)" if e < max_epochs else "full budget") if s == "TERMINATED" else s.lower()
        for s, e in zip(trials["status"], trials["epochs_run"])
    ]
    outcomes = trials["outcome"].value_counts().to_dict()
    # A trial that has not reported an epoch yet (a study stopped between sittings) has nothing to show:
    # top.md counts it, summary.csv and curves.csv list the trials with at least one epoch.
    trials = trials[trials["epochs_run"] > 0].copy()
    # Per-epoch validation accuracy, long format: the effects in the report compare trials at equal epochs.
    curves = [(t, e + 1, v) for t, c in zip(trials["trial_id"], trials.pop("val_curve")) for e, v in enumerate(c)]
    write_curves(study_dir, curves)
    write_summary(study_dir, trials)
    finished = trials.dropna(subset=["best_val_accuracy"])
    if len(finished):
        # The exact parameters, from the trial's own params.json (the table has NaNs).
        write_best_config(study_dir, best_config_json(read_trial_params(study_dir / finished.iloc[0]["trial_dir"])))
    shown = pd.concat([finished.head(top), finished[finished["role"] != "searched"]]).drop_duplicates("trial_id")
    table = _markdown(shown, outcomes, trials["train_seconds"].sum() / 3600)
    if len(finished) >= 2:
        _plot(finished, study_dir / "params.png")
    if (study_dir / OPTUNA_DB).is_file():
        table += "\n\n" + optuna_plots(study_dir)
    write_text_atomic(study_dir / "top.md", table + "\n")
    return table


def _markdown(df: pd.DataFrame, outcomes: dict[str, int], train_hours: float) -> str:
    def text(v):
        return "–" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)

    def stages(r):
        return "".join("1" if r[k] else "0" for k in SE_STAGE_KEYS)

    # A study in progress shows its running trials too: say how many trials are in each state.
    counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items(), key=lambda kv: -kv[1]))
    lines = [
        f"Top trials and the two fixed ones ({sum(outcomes.values())} trials: {counts}). "
        f"The trials trained for {train_hours:.1f} h in all (the sum of their epochs' times). "
        "SE stages: 1 = SE in stage 1..5.",
        "",
        "| trial | role | outcome | best val acc | epochs | SE stages | form | position | r | conv drop | cls drop | pool | lr | wd |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in df.iterrows():
        fmt = lambda v, f: (f.format(v) if pd.notna(v) else "–")  # noqa: E731
        lines.append(
            f"| {r['trial_id']} | {r['role']} | {r['outcome']} | {fmt(r['best_val_accuracy'], '{:.4f}')} | {r['epochs_run']} | "
            f"{stages(r)} | {text(r['se_form'])} | {text(r['se_position'])} | {fmt(r['se_reduction'], '{:.0f}')} | "
            f"{fmt(r['conv_dropout'], '{:.2f}')} | {fmt(r['classifier_dropout'], '{:.2f}')} | {r['pool']} | "
            f"{fmt(r['lr'], '{:.1e}')} | {fmt(r['weight_decay'], '{:.1e}')} |"
        )
    return "\n".join(lines)


def optuna_plots(study_dir: Path) -> str:
    """Optuna's plots of the study in study_dir/optuna.db; returns a line on the trial states and on
    whether the importances were computed."""
    import warnings

    import matplotlib
    import optuna

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=None, storage=optuna_storage_url(study_dir))  # its only study
    states = pd.Series([t.state.name for t in study.trials]).value_counts()
    complete = int(states.get("COMPLETE", 0))
    plots = {"history.png": (vis.plot_optimization_history, (9, 4.5)),
             "parallel.png": (vis.plot_parallel_coordinate, (18, 6)),
             "intermediate.png": (vis.plot_intermediate_values, (9, 5))}
    if complete >= IMPORTANCE_MIN_TRIALS:
        plots["importances.png"] = (vis.plot_param_importances, (9, 5))
        note = f"Parameter importances (fANOVA) over the {complete} trials that completed the full budget."
    else:
        note = (f"No parameter importances: {complete} trials completed the full budget, fewer than the "
                f"{IMPORTANCE_MIN_TRIALS} that fANOVA needs to say more about the factors than about noise.")
    for name, (plot, size) in plots.items():
        if not complete and name != "intermediate.png":
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            ax = plot(study)
        fig = ax.figure
        fig.set_size_inches(*size)
        with atomic_path(study_dir / name, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=90, bbox_inches="tight")
        plt.close(fig)
    counts = ", ".join(f"{n} {state.lower()}" for state, n in states.items())
    return f"Optuna study `{OPTUNA_DB}`: {len(study.trials)} trials ({counts}). {note}"


def _plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = [k for k in PARAM_ORDER if df[k].notna().any()]
    cols = 4
    rows = -(-len(params) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), dpi=90, squeeze=False)
    for ax, k in zip(axes.flat, params):
        x = df[k]
        if x.dtype == bool or not pd.api.types.is_numeric_dtype(x):
            labels = x.map(lambda v: "–" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v))
            cats = sorted(labels.unique())
            xs = labels.map({c: i for i, c in enumerate(cats)}).astype(float).to_numpy()
            ax.set_xticks(range(len(cats)), cats)
            ax.set_xlim(-0.5, len(cats) - 0.5)
        else:
            xs = x.astype(float).to_numpy()
            if k in ("lr", "weight_decay"):
                from matplotlib.ticker import NullFormatter

                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
        colors = ["tab:red" if r != "searched" else "tab:blue" for r in df["role"]]
        ax.scatter(xs, df["best_val_accuracy"].to_numpy(float), c=colors, s=22)
        ax.set_xlabel(k)
        ax.set_ylabel("best val accuracy")
    for ax in list(axes.flat)[len(params):]:
        ax.axis("off")
    fig.suptitle(f"Each searched parameter against the trial's best val accuracy ({len(df)} trials; red: seed and no-SE)")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
