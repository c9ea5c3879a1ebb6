"""`make train-best`: the release model, the study's best configuration with the accuracy recipe.

    python -m study.train_best --config results/study/cpu-quick/best_config.json --data data/gtsrb28-roi.h5 \
        [--epochs 10] [--protocol official|split] [--out results/best] [--official-test PATH...]

``--protocol official`` (the default) is GTSRB's protocol: it trains on all
39,209 training images (the pack's train, val and test splits), holds nothing
out, follows a fixed schedule and keeps the last epoch; nothing is chosen on
val. ``--protocol split`` trains on the track split's train part alone and
scores its test part: the figure quoted beside the release model.

Writes into --out: best.pt (weights only, fp16 where rounding changes the
pack's accuracy by < 0.05 points, else fp32), history.json, TensorBoard files,
metrics.json, per_class.csv and confusion_matrix.png/.csv (of the track-split
test for ``split``; of the official test set when given), excitations.npz
(class-average SE excitations on the val split, for the demo). Checkpoints
with optimizer state stay in --run, from which a killed run resumes.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gtsrb.checkpoint import load_checkpoint, save_checkpoint
from gtsrb.data import load_pack
from gtsrb.evaluate import evaluate
from gtsrb.explain import compute_excitations_file
from gtsrb.inference import Classifier
from gtsrb.train import RECIPE, TrainConfig, fit, split_config
from gtsrb.util import machine

PROTOCOLS = {"official": ("train", "val", "test"), "split": ("train",)}
# Artefacts of an earlier release in --out, removed when a fresh run starts (best.pt is replaced atomically).
STALE = ("events.out.tfevents.*", "confusion_matrix.*", "per_class.csv", "excitations.npz", "metrics.json",
         "history.json", "official-test")
HALF_TOLERANCE = 0.0005  # fp16 weights are kept if they move the pack's accuracy by less than 0.05 points


def half_weights(state: dict) -> dict:
    """The float tensors of a state_dict in fp16 (load_state_dict casts them back to the model's fp32)."""
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def export_release(run_best: Path, out: Path, data: Path) -> dict:
    """Write ``out/best.pt`` from the run's checkpoint: fp16 weights if they predict the whole pack
    within HALF_TOLERANCE of fp32, else fp32. Returns what was compared."""
    ckpt = load_checkpoint(run_best)
    packed = load_pack(data)
    fp32 = Classifier.load(run_best).predict_arrays(packed.images).probs.argmax(1)
    half = {**ckpt, "model": half_weights(ckpt["model"])}
    tmp = out / ".half-check.pt"
    save_checkpoint(half, tmp)
    try:
        fp16 = Classifier.load(tmp).predict_arrays(packed.images).probs.argmax(1)
    finally:
        tmp.unlink(missing_ok=True)
    acc32, acc16 = float(np.mean(fp32 == packed.labels)), float(np.mean(fp16 == packed.labels))
    keep_half = abs(acc32 - acc16) < HALF_TOLERANCE
    save_checkpoint(half if keep_half else ckpt, out / "best.pt")
    return {
        "weights": "fp16" if keep_half else "fp32",
        "n": int(len(packed.labels)),
        "accuracy_fp32": acc32,
        "accuracy_fp16": acc16,
        "predictions_changed": int(np.sum(fp32 != fp16)),
        "bytes": (out / "best.pt").stat().st_size,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.train_best", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, required=True, help="best_config.json of a study")
    p.add_argument("--data", type=Path, required=True, help="track-split pack made with --roi")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--protocol", choices=tuple(PROTOCOLS), default="official")
    p.add_argument("--out", type=Path, default=Path("results/best"))
    p.add_argument("--run", type=Path, default=Path("runs/release"), help="checkpoints with optimizer state")
    p.add_argument("--official-test", nargs="+", type=Path, metavar="PATH")
    a = p.parse_args(argv)
    if not a.config.is_file():
        print(f"train-best: error: {a.config}: no such config (run `make tune` first, or pass CONFIG=...)",
              file=sys.stderr)
        return 2

    model_config, train_over = split_config({**json.loads(a.config.read_text()), **RECIPE})
    train_config = TrainConfig(**{**train_over, "epochs": a.epochs, "seed": a.seed,
                                  "train_splits": PROTOCOLS[a.protocol]})
    resume = (a.run / "last.pt").exists()
    a.out.mkdir(parents=True, exist_ok=True)
    if not resume:
        for pattern in STALE:
            for f in a.out.glob(pattern):
                _remove(f)
    t0 = time.perf_counter()
    history = fit(model_config, a.data, a.out, train_config, resume=resume, checkpoint_dir=a.run)
    train_seconds = time.perf_counter() - t0

    metrics = {
        "command": " ".join(shlex.quote(x) for x in ["python", "-m", "study.train_best", *(argv or sys.argv[1:])]),
        "config_file": str(a.config),
        "protocol": a.protocol,
        "train_splits": list(train_config.train_splits),
        "model_config": model_config.to_dict(),
        "train_config": train_config.__dict__,
        "epochs": a.epochs,
        "train_seconds": round(train_seconds, 1),
        "seconds_per_epoch": round(float(np.mean([h["seconds"] for h in history])), 1),
        "machine": machine(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "release": export_release(a.run / "best.pt", a.out, a.data),
    }
    ckpt = a.out / "best.pt"
    if a.protocol == "split":
        metrics["val"] = evaluate(ckpt, a.data, "val")
        metrics["test"] = evaluate(ckpt, a.data, "test", out_dir=a.out)
    if a.official_test:
        metrics["official_test"] = evaluate(ckpt, official_test=a.official_test, out_dir=a.out / "official-test")
    for split in ("val", "test", "official_test"):
        if split in metrics:
            metrics[split].pop("per_class", None)
    (a.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    if a.protocol == "official" and any(model_config.se_stages):  # the demo draws each image's excitations against these val-split averages
        compute_excitations_file(ckpt, a.data, "val")
    release = metrics["release"]
    print(f"{ckpt}: {release['weights']} weights, {release['bytes'] / 1e6:.1f} MB; "
          f"{a.epochs} epochs in {train_seconds:.0f} s")
    for split in ("val", "test", "official_test"):
        if split in metrics:
            m = metrics[split]
            print(f"{split}: accuracy {m['accuracy']:.4f} macro F1 {m['macro_f1']:.4f} (n={m['n']})")
    return 0


def _remove(path: Path) -> None:
    if path.is_dir():
        for f in path.iterdir():
            f.unlink()
        path.rmdir()
    else:
        path.unlink()


if __name__ == "__main__":
    sys.exit(main())
