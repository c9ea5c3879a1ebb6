"""`make ablation`: is the study's winner real, does SE help, does it converge faster? Plus the split-leakage gap.

    python -m study.ablation --data data/gtsrb28-roi.h5 --random-data data/gtsrb28-roi-random.h5 \
        [--study results/study/cpu] [--arms seed no_se top1 ...] [--seeds 0 1 2] [--epochs 8]

One budget for every arm, the converging one: the accuracy recipe (``gtsrb.train.RECIPE``)
on the ROI pack, the track split's whole train part, the whole val split, 8 epochs
one-cycle, scored at the LAST epoch (the schedule is fixed; nothing is chosen on val).

- ``seed``:  the seed preset (SE on every stage);
- ``no_se``: the same net with no SE block (the ``vgg11`` preset);
- ``top1``, ``top2``, ``top3``: the study's best three configurations among the trials
  that ran its full budget, ranked by their last epoch's val accuracy (``--study``'s
  summary.csv and curves.csv; each with its own LR and weight decay);
- ``seed_random``: the seed preset on a pack split *at random* instead of by track,
  first seed only. Its test split shares tracks with its train split, so its gap to
  ``seed`` on the track split measures how much that protocol flatters.

Seed k of every arm shares the initial weights' seed and the data order's seed, so arms
compare as paired differences. Each finished run writes ``<results>/<arm>-seed<k>.json``
(per-epoch history, test accuracy, macro F1 and ECE of the last epoch); a run with that
file is skipped, and a killed run resumes from its ``last.pt``. Checkpoints stay under
``runs/ablation``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

from gtsrb.data import load_pack
from gtsrb.inference import Classifier
from gtsrb.metrics import calibration, classification_metrics
from gtsrb.train import RECIPE, TrainConfig, fit, split_config
from gtsrb.util import machine, write_text_atomic
from study.space import best_config_json
from study.summary import PARAM_ORDER

TOP = ("top1", "top2", "top3")
ARMS = ("seed", "no_se", *TOP, "seed_random")


def top_configs(study: Path, k: int = len(TOP)) -> list[dict]:
    """The study's best k configurations (best_config.json's shape) among the trials that ran the full
    budget, by their last epoch's val accuracy."""
    summary = pd.read_csv(study / "summary.csv")
    curves = pd.read_csv(study / "curves.csv")
    full = summary[summary["epochs_run"] == summary["epochs_run"].max()]
    last = curves.sort_values("epoch").groupby("trial_id")["val_accuracy"].last()
    ranked = full.assign(last_val=full["trial_id"].map(last)).sort_values("last_val", ascending=False, kind="stable")
    configs = []
    for row in ranked.head(k).to_dict("records"):
        params = {key: row[key] for key in PARAM_ORDER if key in row and not pd.isna(row[key])}
        if "se_reduction" in params:
            params["se_reduction"] = int(params["se_reduction"])  # a float column where some trials have no SE
        configs.append(best_config_json(params))
    return configs


def arm_spec(arm: str, study: Path | None) -> tuple[dict, str]:
    """(flat config dict for split_config, without the recipe; which pack: "track" or "random")."""
    if arm in ("seed", "seed_random"):
        return {"preset": "seed"}, "random" if arm == "seed_random" else "track"
    if arm == "no_se":
        return {"preset": "vgg11"}, "track"
    if arm in TOP:
        if study is None or not (study / "summary.csv").is_file():
            raise ValueError(f"arm {arm} needs a study: --study DIR with summary.csv (run `make tune` first)")
        configs = top_configs(study)
        rank = TOP.index(arm)
        if rank >= len(configs):
            raise ValueError(f"arm {arm}: {study} has only {len(configs)} trial(s) at its full budget")
        return configs[rank], "track"
    raise ValueError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")


def plan(arms, seeds) -> list[tuple[str, int]]:
    """Seed-major order, so an interrupted ablation still has every arm at the first seeds."""
    runs = []
    for i, seed in enumerate(seeds):
        for arm in arms:
            if arm == "seed_random" and i > 0:
                continue  # the leakage arm runs once
            runs.append((arm, seed))
    return runs


def score(checkpoint: Path, pack: Path) -> dict:
    """The test split at this checkpoint: n, accuracy, macro P/R/F1 and ECE."""
    test = load_pack(pack, "test")
    probs = Classifier.load(checkpoint).predict_arrays(test.images).probs
    return {"n": int(len(test.labels)), **classification_metrics(test.labels, probs.argmax(1)),
            "ece": calibration(probs, test.labels)["ece"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.ablation", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="track-split pack made with --roi")
    p.add_argument("--random-data", type=Path, help="random-split pack made with --roi (for seed_random)")
    p.add_argument("--study", type=Path, help="a study folder, for the top1..top3 arms")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--train-fraction", type=float, default=1.0, help="whole tracks; 1.0 for the real ablation")
    p.add_argument("--runs", type=Path, default=Path("runs/ablation"))
    p.add_argument("--results", type=Path, default=Path("results/ablation"))
    a = p.parse_args(argv)

    packs = {"track": a.data, "random": a.random_data}
    arms = [x for x in a.arms if x != "seed_random" or a.random_data]
    try:
        specs = {arm: arm_spec(arm, a.study) for arm in arms}
    except ValueError as e:
        print(f"ablation: error: {e}", file=sys.stderr)
        return 2
    a.results.mkdir(parents=True, exist_ok=True)
    for arm, seed in plan(arms, a.seeds):
        done = a.results / f"{arm}-seed{seed}.json"
        if done.exists():
            print(f"{arm} seed {seed}: done, skipped", flush=True)
            continue
        flat, pack_kind = specs[arm]
        model_config, train_over = split_config({**flat, **RECIPE})
        train_config = TrainConfig(**{**train_over, "epochs": a.epochs, "seed": seed,
                                      "train_fraction": a.train_fraction, "histograms": False})
        out = a.runs / arm / f"seed{seed}"
        print(f"{arm} seed {seed}: training -> {out}", flush=True)
        t0 = time.perf_counter()
        history = fit(model_config, packs[pack_kind], out, train_config,
                      resume=(out / "last.pt").exists(), progress=False)
        seconds = time.perf_counter() - t0
        test = score(out / "last.pt", packs[pack_kind])
        record = {
            "arm": arm, "seed": seed, "pack": str(packs[pack_kind]), "split_kind": pack_kind,
            "config": flat, "recipe": RECIPE, "model_config": model_config.to_dict(),
            "train_config": train_config.__dict__, "history": history, "test": test, "test_at": "last epoch",
            "wall_seconds": round(seconds, 1), "machine": machine(),
            "command": "python -m study.ablation " + " ".join(argv or sys.argv[1:]),
        }
        write_text_atomic(done, json.dumps(record, indent=1) + "\n")
        print(f"{arm} seed {seed}: last val {history[-1]['val_accuracy']:.4f} test {test['accuracy']:.4f} "
              f"ECE {test['ece']:.4f} ({seconds:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
