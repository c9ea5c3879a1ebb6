"""The training-run experiments: the SE ablation and its leakage run (`make ablation`,
``<folder>/<arm>-seed<k>.json``) and the accuracy recipe's ablation (`make recipe`,
``results/recipe/<name>/<arm>-seed<k>.json``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gtsrb.plots import plt, save_figure
from study.records import (
    ARM_COLORS,
    ARM_LABELS,
    PICKED_ON_SEED,
    TOP,
    pm,
    read_ablation,
    read_ablation_record,
    read_best_config,
    read_recipe,
    record_path,
)
from study.report.common import first_epoch, machine_text, md_table

# The arms compared in the tables, in this order (study.ablation; "best" is the earlier ablation's top1).
COMPARED = ("seed", "no_se", "incumbent", "best", "top1", "top2", "top3")
THRESHOLDS = (0.80, 0.90, 0.95, 0.98, 0.99)


def load_ablation(folder: Path) -> pd.DataFrame:
    """One row per run of the SE ablation in ``folder`` (``study.records.read_ablation``); a record without a
    field the report's tables need raises, naming the file and the field."""
    rows = []
    for r in read_ablation(folder):
        rows.append({
            "arm": r.arm, "seed": r.seed, "split_kind": r.need("split_kind"),
            "curve": list(r.val_curve), "final_val": r.val_curve[-1], "best_val": max(r.val_curve),
            "test": r.need("test_accuracy"), "test_f1": r.need("test_macro_f1"), "test_n": r.need("test_n"),
            "test_ece": np.nan if r.test_ece is None else r.test_ece, "test_at": r.test_at or "best-val epoch",
            "test_full_frame": np.nan if r.test_full_frame_accuracy is None else r.test_full_frame_accuracy,
            "recipe": bool(r.recipe), "recipe_words": recipe_words(r.recipe or {}),
            # The run's training time over all its epochs, those it adopted from a study trial included
            # (study.ablation records it); the quick ablation's records have only the wall time.
            "seconds": r.train_seconds if r.train_seconds is not None else r.need("wall_seconds"),
            "timed": "training" if r.train_seconds is not None else "wall",
            "adopted_epochs": r.adopted_epochs, "epochs": r.need("train_epochs"),
            "train_fraction": r.need("train_fraction"), "val_fraction": r.need("val_fraction"),
            "machine": "?" if r.machine is None else r.machine, "command": r.command or "",
        })
    return pd.DataFrame(rows)


def scored_full_frames(df: pd.DataFrame) -> bool:
    """Whether every run of ``df`` also scored its test split's whole frames (``--full-frame-data``)."""
    return "test_full_frame" in df and bool(df["test_full_frame"].notna().all())


def ablation_table(df: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """Per arm: seeds, val, test (and the test's whole frames where every run scored them), ECE, the epochs
    to each val threshold, minutes per run; and the same as a CSV table."""
    rows, csv = [], []
    full_frame = scored_full_frames(df)
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
        full = [pm(d["test_full_frame"])] if full_frame else []
        rows.append([ARM_LABELS[arm], len(d), pm(d["final_val"]), pm(d["best_val"]), pm(d["test"]), *full, ece,
                     *(reach[t] for t in THRESHOLDS), f"{d['seconds'].mean() / 60:.1f}"])
        csv.append({"arm": arm, "runs": len(d), "final_val_mean": d["final_val"].mean(),
                    "final_val_std": d["final_val"].std(ddof=1), "test_mean": d["test"].mean(),
                    "test_std": d["test"].std(ddof=1),
                    **({"test_full_frame_mean": d["test_full_frame"].mean()} if full_frame else {}),
                    **{f"epochs_to_{t:.0%}": reach[t] for t in THRESHOLDS}})
    test_at = " / ".join(sorted(set(df["test_at"])))
    header = ["arm", "seeds", "final val acc %", "best val acc %", f"test acc % ({test_at})",
              *(["full-frame test acc %"] if full_frame else []), "test ECE %",
              *(f"epochs to {t:.0%} val" for t in THRESHOLDS), "min per run"]
    return md_table(header, rows), pd.DataFrame(csv)


def paired_table(df: pd.DataFrame) -> str:
    """Arm differences seed by seed: a seed fixes the train/val subsets and the data order, so the pairs
    share their data. Every arm against the seed preset and against no SE; the study's top arms also
    against the incumbent configuration (does a winner beat what was served?), once over all seeds and once
    over the seeds that did not pick it (all but ``PICKED_ON_SEED``), which is the unbiased comparison."""
    rows = []
    present = [arm for arm in COMPARED if (df["arm"] == arm).any()]
    pairs = ([(a, "seed", False) for a in present if a != "seed"]
             + [(a, "no_se", False) for a in present if a not in ("seed", "no_se")]
             + [(a, "incumbent", fresh) for a in present if a in TOP for fresh in (False, True)])
    for a, b, fresh in pairs:
        x = df[df["arm"] == a].set_index("seed")
        y = df[df["arm"] == b].set_index("seed")
        common = sorted((set(x.index) & set(y.index)) - ({PICKED_ON_SEED} if fresh else set()))
        if not common:
            continue
        cells = []
        for col in ("final_val", "test"):
            d = (x.loc[common, col] - y.loc[common, col]).to_numpy()
            cells += [pm(d), f"{int((d > 0).sum())}/{len(d)}"]
        label = f"{ARM_LABELS[a]} − {ARM_LABELS[b]}" + (f", seeds ≠ {PICKED_ON_SEED} (not the one that picked it)"
                                                        if fresh else "")
        rows.append([label, len(common), *cells])
    return md_table(["difference (points)", "seeds", "final val", "seeds where higher", "test", "seeds where higher"],
                    rows)


def runs_table(df: pd.DataFrame) -> str:
    """Every run of the compared arms, seed by seed: what the means and paired differences are made of."""
    rows = []
    full_frame = scored_full_frames(df)
    for arm in COMPARED:
        for _, r in df[df["arm"] == arm].sort_values("seed").iterrows():
            wrong = round((1 - r["test"]) * r["test_n"])
            rows.append([ARM_LABELS[arm], r["seed"], f"{r['curve'][0] * 100:.2f}", f"{r['final_val'] * 100:.2f}",
                         f"{r['test'] * 100:.2f}", f"{wrong} of {r['test_n']}",
                         *([f"{r['test_full_frame'] * 100:.2f}"] if full_frame else []),
                         ("study trial (picked it)" if r.get("adopted_epochs", 0) > 0 else "the seed the study picked it on")
                         if arm in TOP and r["seed"] == PICKED_ON_SEED else ""])
    return md_table(["arm", "seed", "val acc % after epoch 1", "final val acc %", "test acc %", "test errors",
                     *(["full-frame test acc %"] if full_frame else []), ""], rows)


def ablation_figure(df: pd.DataFrame, path: Path) -> None:
    """Val accuracy per epoch, mean ± std over seeds: the whole run on the left, the second half of the
    schedule zoomed on the right (converged arms sit within a point of each other there)."""
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(12, 5), dpi=110, gridspec_kw={"width_ratios": [3, 2]})
    r = df.iloc[0]
    epochs = int(r["epochs"])
    half = epochs // 2 + 1
    lowest, low_late = 100.0, 100.0
    for arm in ("seed", "no_se", "incumbent", "best", "top1"):
        d = df[df["arm"] == arm]
        if d.empty:
            continue
        curves = np.array([c for c in d["curve"]]) * 100
        x = np.arange(1, curves.shape[1] + 1)
        mean = curves.mean(0)
        std = curves.std(0, ddof=1) if len(curves) > 1 else np.zeros_like(mean)
        for a in (ax, zoom):
            a.plot(x, mean, color=ARM_COLORS[arm], lw=2, marker="o", ms=3,
                   label=f"{ARM_LABELS[arm]} (n={len(curves)})")
            a.fill_between(x, mean - std, mean + std, color=ARM_COLORS[arm], alpha=0.2)
        lowest = min(lowest, float((mean - std).min()))
        low_late = min(low_late, float((mean - std)[half - 1:].min()))
    for t in THRESHOLDS:
        for a in (ax, zoom):
            a.axhline(t * 100, color="0.6", lw=0.8, ls="--")
    ax.set_title(f"SE ablation: val accuracy, mean ± std over seeds\n"
                 f"{r['train_fraction']:.0%} of the train split (track-grouped), {epochs} epochs one-cycle")
    # From 5 points under the lowest band: converged arms sit within a few points of each other.
    ax.set_ylim(max(0.0, 5 * np.floor(lowest / 5) - 5), 100)
    zoom.set_title(f"epochs {half}–{epochs}, zoomed")
    zoom.set_ylim(np.floor(low_late * 2) / 2 - 0.5, 100 if low_late < 97 else 99.5)
    for a in (ax, zoom):
        a.set_xlabel("epoch")
        a.set_ylabel("validation accuracy (%)")
        a.set_xticks(np.arange(1, epochs + 1))
        a.grid(alpha=0.3)
    zoom.set_xlim(half - 0.3, epochs + 0.3)  # after the ticks, which would widen it again
    ax.legend(loc="lower right")
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
    rows[0].append(f"{rnd['seconds'].sum() / 60:.1f}")
    rows[1].append(f"{trk['seconds'].sum() / 60:.1f}")
    text = md_table(["split", "runs", "best val acc %", "test acc % (own test split)", "test n", "min"], rows)
    text += f"\n\n**Gap: the random split reads {gap:+.2f} points higher on its own test split.**"
    return text, {"random_test": float(rnd["test"].mean()), "track_test": float(trk["test"].mean()),
                  "gap_points": float(gap)}


RECIPE_LABELS = {
    "recipe": "recipe",  # what it held when the runs were made is read from their records (recipe_words)
    "old": "old recipe (same ROI pack)",
    "no_roi": "recipe on full frames (no ROI crop)",
    "no_norm": "recipe without per-image contrast norm",  # records made while the recipe held it
    "norm": "recipe + per-image contrast norm",
    "no_mirror": "recipe without the class-aware mirror",
    "no_smoothing": "recipe without label smoothing",
    "ema": "recipe + EMA of the weights (decay 0.998)",
    "balanced": "recipe + class-balanced sampling",
    "strong_aug": "recipe + augmentation ranges ×1.5 (rotation ±15°, shift ±15%, brightness and contrast ±45%)",
    "se_bias": "recipe + biases in the SE blocks' 1×1 layers",
    "long": "recipe, twice the epochs",
}


def recipe_words(overrides: dict) -> str:
    """The recipe a run trained with, in words, from its record (the ROI crop is the pack, always on)."""
    words = ["ROI crop"]
    if overrides.get("input_norm") == "image":
        words.append("per-image contrast norm")
    if overrides.get("mirror"):
        words.append("class-aware mirror")
    if overrides.get("label_smoothing"):
        words.append(f"label smoothing {overrides['label_smoothing']}")
    if overrides.get("framing"):
        words.append("framing crop" + ("" if overrides["framing"] == 1 else f" on {overrides['framing']:.0%} of images"))
    return ", ".join(words)


def load_recipe(folder: Path, ablation: Path | None = None) -> pd.DataFrame:
    """One row per run of `make recipe`, grouped by ``name`` (the records' folder: one configuration).

    Two kinds of row stand in for an arm at a seed where that arm has no run of its own:
    - an ``ema`` run's raw weights, for the ``recipe`` arm: they followed the recipe's trajectory
      exactly (the average does not feed back into training; tests/test_recipe.py checks the equality);
    - for a folder named after an SE-ablation arm (``--name top1``; ``seed``), the SE ablation's run of
      that arm, ``<ablation>/top1-seed<k>.json``, for the arm whose overrides are the recipe it trained
      (``norm``: the ablation ran while the recipe held the contrast norm): the same configuration
      (checked against the records' ``config_file`` or preset), epochs and seed.
    """
    from study.recipe import ARMS, BASES, arm_spec  # trains nothing; kept out of the Study tab's torch-free imports

    rows = []
    records = [r for d in (sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else [])
               for r in read_recipe(d)]
    have = {(r.path.parent.name, r.path.name) for r in records}
    borrowed = {}  # (name, seed) -> (the ablation record, a record of the folder to check it against)
    for r in records:
        name = r.path.parent.name
        base = {"name": name, "preset": r.need("preset"), "seed": r.seed, "epochs": r.need("train_epochs"),
                "train_seconds": r.need("train_seconds"), "test_n": r.need("test_n"), "machine": r.need("machine"),
                "command": r.need("command")}
        recipe = recipe_words(r.need("overrides"))
        rows.append({**base, "arm": r.arm, "val": r.val_accuracy, "test": r.test_accuracy, "from": "",
                     "recipe": recipe})
        if r.raw_val_accuracy is not None and (name, record_path(folder, "recipe", r.seed).name) not in have:
            rows.append({**base, "arm": "recipe", "val": r.raw_val_accuracy, "test": r.need("raw_test_accuracy"),
                         "from": f"raw weights of `{name}/{r.path.name}`", "recipe": recipe})
        twin = record_path(ablation, name, r.seed) if ablation is not None else None
        if twin is not None and twin.is_file():
            borrowed[name, r.seed] = (twin, r)
    for (name, seed), (twin, r) in sorted(borrowed.items()):
        a = read_ablation_record(twin)
        # A record without ``base`` is measured against the recipe without the framing crop.
        recipe_base = BASES[r.base or "no_framing"]
        arm = next((x for x in ARMS if x != "long" and arm_spec(x, recipe_base) == (a.need("recipe"), True)), None)
        if arm is None or (name, record_path(folder, arm, seed).name) in have:
            continue
        config = read_best_config(Path(r.config_file)) if r.config_file else {"preset": r.need("preset")}
        if a.config != config or a.need("train_epochs") != r.need("train_epochs"):
            raise ValueError(f"{twin} is not {name}'s configuration and schedule in {folder / name}: "
                             f"train that arm there (python -m study.recipe ... --name {name} --arms {arm})")
        rows.append({"name": name, "preset": r.need("preset"), "seed": seed, "epochs": a.need("train_epochs"),
                     "train_seconds": a.need("train_seconds"), "test_n": a.need("test_n"), "machine": a.need("machine"),
                     "command": a.need("command"), "arm": arm, "val": a.val_curve[-1],
                     "test": a.need("test_accuracy"), "from": f"the SE ablation's run `{twin}`",
                     "recipe": recipe_words(a.need("recipe"))})
    return pd.DataFrame(rows)


def recipe_table(df: pd.DataFrame, configuration: str, make_command: str = "`make recipe`") -> str:
    """Per arm of one configuration (one records folder): seeds, val and test (last epoch), paired
    differences against the recipe, time. ``configuration`` says in words which network was trained."""
    ref = df[df["arm"] == "recipe"].set_index("seed")
    held = sorted(set(ref["recipe"]))
    if len(held) > 1:
        raise ValueError(f"the recipe arm's runs of {configuration} trained different recipes: {held}")
    labels = {**RECIPE_LABELS, "recipe": f"recipe: {held[0]}" if held else "recipe"}
    rows = []
    for arm in RECIPE_LABELS:
        d = df[df["arm"] == arm]
        if d.empty:
            continue
        cells = [labels[arm], ", ".join(str(x) for x in sorted(d["seed"])), pm(d["val"]), pm(d["test"])]
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
    notes = [f"- {labels[r['arm']]}, seed {r['seed']}: {r['from']}." for _, r in df.iterrows() if r["from"]]
    r0 = df[df["arm"] != "long"].iloc[0]
    long = " (the long arm: twice that)" if (df["arm"] == "long").any() else ""
    text = (md_table(header, rows) + "\n\n"
            f"Each run: {configuration}, the track split's whole train part, {r0['epochs']} "
            f"epochs{long}, batch 128, one-cycle, scored at its last epoch (no selection on val); test = the held-out "
            f"test split (n={r0['test_n']}). A seed fixes the initial weights and the data order, so Δ is a paired "
            f"difference (mean ± std over seeds). Hardware: "
            f"{'; '.join(sorted({machine_text(m) for m in df['machine']}))}. Command: "
            f"`{r0['command']}` (per arm: {make_command}).")
    if notes:
        text += "\n\nRows not trained under their own arm:\n" + "\n".join(notes)
    return text
