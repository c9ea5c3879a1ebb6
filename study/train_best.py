"""`make train-best`: the study's best configuration, trained at full budget.

    python -m study.train_best --config results/study/cpu/best_config.json --data data/gtsrb28.h5 \
        [--epochs 10] [--out results/best] [--official-test PATH...]

Writes into --out: best.pt (the checkpoint), last.pt, TensorBoard files,
metrics.json (val and test split, and the official test set when given),
per_class.csv, confusion_matrix.png/.csv, excitations.npz (class-average SE
excitations on the val split, for the demo).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

from gtsrb.bench import machine
from gtsrb.cli import split_config
from gtsrb.evaluate import evaluate
from gtsrb.explain import compute_excitations_file
from gtsrb.train import TrainConfig, fit


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.train_best", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, required=True, help="best_config.json of a study")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("results/best"))
    p.add_argument("--official-test", nargs="+", type=Path, metavar="PATH")
    a = p.parse_args(argv)
    if not a.config.is_file():
        print(f"train-best: error: {a.config}: no such config (run `make tune` first, or pass CONFIG=...)",
              file=sys.stderr)
        return 2

    model_config, train_over = split_config(json.loads(a.config.read_text()))
    train_config = TrainConfig(**{**train_over, "epochs": a.epochs, "seed": a.seed})
    t0 = time.perf_counter()
    history = fit(model_config, a.data, a.out, train_config, resume=(a.out / "last.pt").exists())
    train_seconds = time.perf_counter() - t0

    metrics = {
        "command": " ".join(shlex.quote(x) for x in ["python", "-m", "study.train_best", *(argv or sys.argv[1:])]),
        "config_file": str(a.config),
        "model_config": model_config.to_dict(),
        "train_config": train_config.__dict__,
        "epochs": a.epochs,
        "train_seconds": round(train_seconds, 1),
        "machine": machine(),
        "platform": platform.platform(),
        "best_epoch": max(history, key=lambda h: h["val_accuracy"])["epoch"],
        "val": evaluate(a.out / "best.pt", a.data, "val"),
        "test": evaluate(a.out / "best.pt", a.data, "test", out_dir=a.out),
    }
    if a.official_test:
        metrics["official_test"] = evaluate(a.out / "best.pt", official_test=a.official_test,
                                            out_dir=a.out / "official-test")
    for split in ("val", "test", "official_test"):
        if split in metrics:
            metrics[split].pop("per_class", None)
    (a.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    if any(model_config.se_stages):  # the demo draws each image's excitations against these val-split averages
        compute_excitations_file(a.out / "best.pt", a.data, "val")
    print(json.dumps({k: metrics[k] for k in ("best_epoch", "train_seconds")}))
    for split in ("val", "test", "official_test"):
        if split in metrics:
            m = metrics[split]
            print(f"{split}: accuracy {m['accuracy']:.4f} macro F1 {m['macro_f1']:.4f} (n={m['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
