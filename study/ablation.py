"""`make ablation`: does SE help, and does it converge faster? Plus the split-leakage gap.

    python -m study.ablation --data data/gtsrb28.h5 --random-data data/gtsrb28-random.h5 \
        [--seeds 0 1 2] [--epochs 10] [--train-fraction 0.4] [--val-fraction 0.5]

Arms, all with the same data subset, epochs, batch size and one-cycle schedule:

- ``seed``:    the seed preset (SE on every stage) with the default recipe;
- ``no_se``:   the same net with no SE block (the ``vgg11`` preset), same recipe;
- ``best``:    the study's best config (its model and its own LR and weight decay);
- ``seed_random``: the seed preset on a pack split *at random* instead of by
  track, first seed only. Its test split shares tracks with its train split, so
  its gap to ``seed`` on the track split measures how much that protocol flatters.

Each finished run writes ``<results>/<arm>-seed<k>.json`` (per-epoch history and
test-split metrics of the best-val epoch); a run with that file is skipped, and a
killed run resumes from its ``last.pt``. Checkpoints stay under ``runs/ablation``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from gtsrb.evaluate import evaluate
from gtsrb.train import TrainConfig, fit, split_config
from gtsrb.util import machine, write_text_atomic

ARMS = ("seed", "no_se", "best", "seed_random")


def arm_spec(arm: str, best_config: Path) -> tuple[dict, str]:
    """(flat config dict for split_config, which pack: "track" or "random")."""
    if arm == "seed":
        return {"preset": "seed"}, "track"
    if arm == "no_se":
        return {"preset": "vgg11"}, "track"
    if arm == "best":
        return json.loads(best_config.read_text()), "track"
    if arm == "seed_random":
        return {"preset": "seed"}, "random"
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.ablation", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="track-split pack")
    p.add_argument("--random-data", type=Path, help="random-split pack (for the seed_random arm)")
    p.add_argument("--config", type=Path, default=Path("results/study/cpu/best_config.json"))
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train-fraction", type=float, default=0.4)
    p.add_argument("--val-fraction", type=float, default=0.5)
    p.add_argument("--runs", type=Path, default=Path("runs/ablation"))
    p.add_argument("--results", type=Path, default=Path("results/ablation"))
    a = p.parse_args(argv)

    packs = {"track": a.data, "random": a.random_data}
    arms = [x for x in a.arms if x != "seed_random" or a.random_data]
    if "best" in arms and not a.config.is_file():
        print(f"ablation: error: {a.config}: no such config (run `make tune` first)", file=sys.stderr)
        return 2
    a.results.mkdir(parents=True, exist_ok=True)
    for arm, seed in plan(arms, a.seeds):
        done = a.results / f"{arm}-seed{seed}.json"
        if done.exists():
            print(f"{arm} seed {seed}: done, skipped", flush=True)
            continue
        flat, pack_kind = arm_spec(arm, a.config)
        model_config, train_over = split_config(flat)
        train_config = TrainConfig(**{
            **train_over, "epochs": a.epochs, "seed": seed, "train_fraction": a.train_fraction,
            "val_fraction": a.val_fraction, "histograms": False,
        })
        out = a.runs / arm / f"seed{seed}"
        print(f"{arm} seed {seed}: training -> {out}", flush=True)
        t0 = time.perf_counter()
        history = fit(model_config, packs[pack_kind], out, train_config,
                      resume=(out / "last.pt").exists(), progress=False)
        seconds = time.perf_counter() - t0
        test = evaluate(out / "best.pt", packs[pack_kind], "test")
        test.pop("per_class", None)
        record = {
            "arm": arm, "seed": seed, "pack": str(packs[pack_kind]), "split_kind": pack_kind,
            "model_config": model_config.to_dict(), "train_config": train_config.__dict__,
            "history": history, "test": test, "wall_seconds": round(seconds, 1),
            "machine": machine(), "command": "python -m study.ablation " + " ".join(argv or sys.argv[1:]),
        }
        write_text_atomic(done, json.dumps(record, indent=1) + "\n")
        best_val = max(h["val_accuracy"] for h in history)
        print(f"{arm} seed {seed}: best val {best_val:.4f} test {test['accuracy']:.4f} "
              f"({seconds:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
