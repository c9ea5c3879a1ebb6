"""`make precision-check`: does the fast CPU path (bf16 autocast + channels_last) cost accuracy?

    python -m study.precision --data data/gtsrb28.h5 [--seeds 0 1] [--epochs 3] [--out results/bench/precision.json]

Trains the ``seed`` preset once per (precision, seed) with everything else equal
(full train split, the default recipe): ``fp32`` is the eager fp32 NCHW path,
``bf16`` the default on CPUs with AMX or AVX-512-BF16, and ``fp32_channels_last``
a control: fp32 as ``fp32``, in the other memory layout, so other kernels and
another order of float operations at the same precision. How far the control
lands from ``fp32`` shows how much a run moves from rounding alone. Every run
appends its per-epoch val accuracy, and the precision and layout its training
step ran (read from its checkpoint), to ``--out``; a run already there is
skipped, so an interrupted check resumes, and ``--epochs 10`` adds the long runs
to the same file.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from gtsrb.archive import DataError
from gtsrb.checkpoint import load_checkpoint
from gtsrb.model import PRESETS
from gtsrb.config import TrainConfig
from gtsrb.train import fit
from gtsrb.validate import fraction, non_negative_int, positive_int
from study.cli import ArgumentParser, entry_point, require_pack
from study.records import command_line, machine, read_json, write_json

PATHS = {
    "fp32": {"precision": "fp32", "channels_last": False},
    "fp32_channels_last": {"precision": "fp32", "channels_last": True},
    "bf16": {"precision": "bf16"},
}


@entry_point("study.precision")
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m study.precision", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/gtsrb28.h5"))
    p.add_argument("--seeds", type=non_negative_int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=positive_int, default=3)
    p.add_argument("--out", type=Path, default=Path("results/bench/precision.json"))
    p.add_argument("--runs", type=Path, default=Path("runs/precision"))
    p.add_argument("--train-fraction", type=fraction, default=1.0, help="share of the train split (whole tracks)")
    a = p.parse_args(argv)
    record = read_json(a.out) if a.out.exists() else {"runs": []}
    if not isinstance(record, dict) or not isinstance(record.get("runs"), list):
        raise DataError(f"{a.out}: not a precision record (a JSON object with a list of runs)")
    require_pack(a.data, ("train", "val"))
    done = {(r["path"], r["seed"], r["epochs"], r.get("train_fraction", 1.0)) for r in record["runs"]}
    for seed in a.seeds:
        for path, options in PATHS.items():
            if (path, seed, a.epochs, a.train_fraction) in done:
                continue
            t0 = time.perf_counter()
            config = TrainConfig(epochs=a.epochs, seed=seed, train_fraction=a.train_fraction, **options)
            share = "" if a.train_fraction == 1 else f"-{a.train_fraction:g}train"
            run_dir = a.runs / f"{path}-seed{seed}-{a.epochs}ep{share}"
            history = fit(PRESETS["seed"], a.data, run_dir, config, progress=False)
            ran = load_checkpoint(run_dir / "last.pt")["runtime"]  # what the training step ran
            record["runs"].append({
                "path": path, "seed": seed, "epochs": a.epochs, "train_fraction": a.train_fraction,
                "train_config": options,
                "precision_ran": ran["precision"], "activation_layout": "channels_last" if ran["channels_last"] else "NCHW",
                "val_accuracy": [h["val_accuracy"] for h in history],
                "final_val_accuracy": history[-1]["val_accuracy"],
                "images_per_s": [h["images_per_s"] for h in history],
                "minutes": (time.perf_counter() - t0) / 60,
            })
            record["machine"] = machine()
            record["command"] = command_line("study.precision", argv)
            write_json(a.out, record)
            print(f"{path} seed {seed}, {a.epochs} epochs: final val {history[-1]['val_accuracy']:.4f}", flush=True)
    for seed in a.seeds:
        final = {r["path"]: r["final_val_accuracy"] for r in record["runs"] if r["seed"] == seed and r["epochs"] == a.epochs
                 and r.get("train_fraction", 1.0) == a.train_fraction}
        if "fp32" in final:
            others = ", ".join(f"{path} {final[path]:.2%} ({100 * (final[path] - final['fp32']):+.2f} points)"
                               for path in PATHS if path != "fp32" and path in final)
            print(f"seed {seed}, {a.epochs} epochs: fp32 {final['fp32']:.2%}; {others}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
