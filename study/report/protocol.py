"""The selection protocol's table (issue 33): recipe arms under track-grouped cross-validation.

``python -m study.recipe --protocol cv`` writes ``results/recipe/<name>/<arm>-fold<k>.json``: run k
validates on fold k of the pack's train and val splits pooled (``gtsrb.splits.cv_fold``). Each arm is
compared with the ``recipe`` arm fold by fold (same fold, same seed), and two widths say what such a
difference can resolve:

- across folds: the 95% t-interval of the paired differences (training noise and fold to fold);
- within the pooled val images: a paired bootstrap over whole tracks (frames of a track are
  near-duplicates, so they are resampled together), which is what the choice of val images adds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from study.records import pm

BOOTSTRAP = 2000


def load_cv(folder: Path) -> pd.DataFrame:
    """One row per ``<arm>-fold<k>.json`` record in ``folder``."""
    rows = []
    for f in sorted(folder.glob("*-fold*.json")):
        r = json.loads(f.read_text())
        rows.append({"arm": r["arm"], "fold": r["seed"], "val": r["val_accuracy"], "test": r["test"]["accuracy"],
                     "ff_val": r.get("full_frame_val_accuracy"), "ff_test": r.get("full_frame_test_accuracy"),
                     "wrong_val": set(r["wrong"]["val"]), "ff_wrong_val": set(r.get("full_frame_wrong", {}).get("val", [])),
                     "train_seconds": r["train_seconds"], "machine": r["machine"], "command": r["command"],
                     "folds": r["train_config"]["folds"], "epochs": r["train_config"]["epochs"],
                     **{f"tta_{k}": v for k, v in r.get("tta", {}).items()}})
    return pd.DataFrame(rows)


def selection_score(roi_val, full_frame_val):
    """The score the recipe is chosen on: the mean of val accuracy on ROI crops and on whole frames, the two
    framings a model meets (GTSRB's official test crops to the ROI; a tester uploads the frame)."""
    return (np.asarray(roi_val, float) + np.asarray(full_frame_val, float)) / 2


def choice_table(df: pd.DataFrame, reference: str = "recipe") -> str:
    """Markdown: each arm's selection score fold by fold and its mean, paired with ``reference``; then, for the
    runs scored again with test-time augmentation (``study.recipe --rescore --tta``), the score with and
    without it, paired within each run."""
    df = df[df["ff_val"].notna()].copy()
    df["score"] = selection_score(df["val"], df["ff_val"])
    ref = df[df["arm"] == reference].set_index("fold")
    folds = sorted(df["fold"].unique())
    lines = ["| arm | " + " | ".join(f"fold {k}" for k in folds) + " | mean | Δ vs recipe (points) |",
             "|---|" + "---|" * (len(folds) + 2)]
    for arm in [reference] + sorted(a for a in df["arm"].unique() if a != reference):
        d = df[df["arm"] == arm].set_index("fold")
        common = sorted(set(d.index) & set(ref.index))
        delta = pm((d.loc[common, "score"] - ref.loc[common, "score"]).to_numpy()) if arm != reference and common else ""
        lines.append(f"| {arm} | " + " | ".join(f"{d.loc[k, 'score'] * 100:.2f}" if k in d.index else "" for k in folds)
                     + f" | {pm(d['score'])} | {delta} |")
    text = "\n".join(lines)
    tta = df[df["tta_val_accuracy"].notna()] if "tta_val_accuracy" in df else df.iloc[:0]
    if len(tta):
        rows = ["| arm | fold | val % (ROI) | with TTA | full-frame val % | with TTA | score | with TTA | Δ (points) |",
                "|---|---|---|---|---|---|---|---|---|"]
        deltas = []
        for _, r in tta.sort_values(["arm", "fold"]).iterrows():
            with_tta = float(selection_score(r["tta_val_accuracy"], r["tta_full_frame_val_accuracy"]))
            deltas.append(with_tta - r["score"])
            rows.append(f"| {r['arm']} | {r['fold']} | {r['val'] * 100:.2f} | {r['tta_val_accuracy'] * 100:.2f} | "
                        f"{r['ff_val'] * 100:.2f} | {r['tta_full_frame_val_accuracy'] * 100:.2f} | "
                        f"{r['score'] * 100:.2f} | {with_tta * 100:.2f} | {deltas[-1] * 100:+.2f} |")
        text += ("\n\nTest-time augmentation (the image and its four one-pixel shifts, averaged; "
                 f"`Classifier.predict_tta`), the same weights: Δ score {pm(deltas)} points over {len(deltas)} "
                 "run(s).\n\n" + "\n".join(rows))
    return text


def track_bootstrap_halfwidth(fold_items: list[tuple[np.ndarray, np.ndarray]], seed: int = 0) -> float:
    """95% half-width of the pooled paired difference in accuracy, resampling whole tracks.

    ``fold_items``: per fold, (track id of each val image, the image's paired difference: +1 where only
    the arm is right, -1 where only the reference is, 0 otherwise)."""
    groups = np.concatenate([g + 10**9 * k for k, (g, _) in enumerate(fold_items)])
    diff = np.concatenate([d for _, d in fold_items]).astype(float)
    ids, inverse = np.unique(groups, return_inverse=True)
    sums, counts = np.bincount(inverse, diff), np.bincount(inverse)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(ids), (BOOTSTRAP, len(ids)))
    deltas = sums[pick].sum(1) / counts[pick].sum(1)
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    return float(hi - lo) / 2


def _val_sets(pack: Path, folds: int, fold_ids: list[int]) -> dict[int, tuple[list[str], np.ndarray]]:
    """Fold k's val file names and their track ids, as study.recipe's runs saw them."""
    from gtsrb.data import load_pack
    from gtsrb.config import TrainConfig
    from gtsrb.train import training_splits

    data = load_pack(pack)
    out = {}
    for k in fold_ids:
        val = training_splits(data, TrainConfig(fold=k, folds=folds))[1]
        out[k] = (val.filenames, val.groups)
    return out


def cv_table(df: pd.DataFrame, pack: Path, reference: str = "recipe") -> str:
    """Markdown: each arm's mean over folds, its paired difference from ``reference`` with both widths."""
    ref = df[df["arm"] == reference].set_index("fold")
    if ref.empty:
        raise ValueError(f"no {reference!r} runs to pair the other arms with")
    val_sets = _val_sets(pack, int(df["folds"].iloc[0]), sorted(df["fold"].unique()))
    header = ("| arm | folds | val % (ROI) | Δ val vs recipe (points) | ± t95 folds | ± bootstrap tracks "
              "| full-frame val % | Δ full-frame val | test % (ROI) | full-frame test % | min per run |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    order = [reference] + sorted(a for a in df["arm"].unique() if a != reference)
    for arm in order:
        d = df[df["arm"] == arm].set_index("fold")
        common = sorted(set(d.index) & set(ref.index))
        cells = [arm, ", ".join(str(k) for k in sorted(d.index)), pm(d["val"]), "", "", "",
                 pm(d["ff_val"].dropna()) if d["ff_val"].notna().any() else "–", "",
                 pm(d["test"]), pm(d["ff_test"].dropna()) if d["ff_test"].notna().any() else "–",
                 f"{d['train_seconds'].mean() / 60:.1f}"]
        if arm != reference and common:
            delta = (d.loc[common, "val"] - ref.loc[common, "val"]).to_numpy()
            cells[3] = pm(delta)
            if len(common) > 1:
                cells[4] = f"{100 * stats.t.ppf(0.975, len(common) - 1) * delta.std(ddof=1) / np.sqrt(len(common)):.2f}"
            items = []
            for k in common:
                names, groups = val_sets[k]
                a_right = np.array([n not in d.loc[k, "wrong_val"] for n in names])
                r_right = np.array([n not in ref.loc[k, "wrong_val"] for n in names])
                items.append((groups, a_right.astype(int) - r_right.astype(int)))
            cells[5] = f"{100 * track_bootstrap_halfwidth(items):.2f}"
            if d["ff_val"].notna().all() and ref["ff_val"].notna().all():
                cells[7] = pm((d.loc[common, "ff_val"] - ref.loc[common, "ff_val"]).to_numpy())
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
