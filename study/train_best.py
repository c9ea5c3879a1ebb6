"""`make train-best`: the release model, the study's best configuration with the accuracy recipe.

    python -m study.train_best --config results/study/cpu-quick/best_config.json --data data/gtsrb28-framed.h5 \
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
with optimizer state, the TensorBoard files and history.json are made in --run,
from which a killed run resumes.

Every input is checked before training. The new --out is built beside the old
one and swapped into place at the end (``gtsrb.publish``), so a failure or
Ctrl-C leaves the previous release as it was; what other commands keep in
--out (``split/``, calibration.json) is carried over.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gtsrb.archive import DataError, find_layout
from gtsrb.checkpoint import load_checkpoint, save_checkpoint
from gtsrb.data import load_pack
from gtsrb.evaluate import compute_excitations_file, evaluate
from gtsrb.inference import Classifier
from gtsrb.publish import check_folder_target, publish_dir
from gtsrb.config import PRECISIONS, RECIPE, split_config, TrainConfig
from gtsrb.train import fit
from gtsrb.util import machine
from gtsrb.validate import positive_int
from study.cli import ArgumentParser, entry_point, read_config, require_pack
from study.records import PRECISION_HELP, command_line

PROTOCOLS = {"official": ("train", "val", "test"), "split": ("train",)}
# The pack splits each protocol reads: it trains on its train splits; the official protocol averages the
# excitations on val (a model with SE blocks), the split protocol scores val and test.
NEEDS = {"official": ("train", "val"), "split": ("train", "val", "test")}
# What a release writes into --out; everything else there (split/, calibration.json) belongs to other
# commands and is carried into the new --out.
OUTPUTS = ("best.pt", "events.out.tfevents.*", "confusion_matrix.*", "per_class.csv", "excitations.npz",
           "metrics.json", "history.json", "official-test")
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


def check_official_test(paths: list[Path]) -> None:
    """The official test layout is read (its lists, not its images) before training, not after it."""
    with find_layout(paths) as layout:
        if layout.kind != "test":
            raise DataError(f"--official-test {' '.join(map(str, paths))}: this is the training layout; "
                            "expected Final_Test/Images and GT-final_test.csv")


def publish_run_logs(run: Path, history: list[dict], stage: Path) -> None:
    """The run's TensorBoard files (every sitting of a resumed run) and its history into the new --out."""
    for f in sorted(run.glob("events.out.tfevents.*")):
        shutil.copy2(f, stage / f.name)
    (stage / "history.json").write_text(json.dumps(history, indent=1))


@entry_point("study.train_best")
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m study.train_best", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, required=True, help="best_config.json of a study")
    p.add_argument("--data", type=Path, required=True, help="track-split pack made with --roi --frame-size 32")
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--protocol", choices=tuple(PROTOCOLS), default="official")
    p.add_argument("--out", type=Path, default=Path("results/best"))
    p.add_argument("--run", type=Path, default=Path("runs/release"),
                   help="the run folder: checkpoints with optimizer state (to resume), TensorBoard files")
    p.add_argument("--official-test", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    a = p.parse_args(argv)

    # Every input before any work: the config, the pack and its splits, the official test set, the folders.
    if not a.config.exists():
        raise DataError(f"--config {a.config}: no such config (run `make tune` first, or pass CONFIG=...)")
    config = read_config(a.config)
    model_config, train_over = split_config({**config, **RECIPE})
    train_config = TrainConfig(**{**train_over, "epochs": a.epochs, "seed": a.seed, "precision": a.precision,
                                  "train_splits": PROTOCOLS[a.protocol]})
    needs = NEEDS[a.protocol] if a.protocol == "split" or any(model_config.se_stages) else ("train",)
    require_pack(a.data, needs, frames=RECIPE.get("framing", 0) > 0)
    if a.official_test:
        check_official_test(a.official_test)
    if a.run.resolve() == a.out.resolve() or a.out.resolve() in a.run.resolve().parents:
        raise DataError(f"--run {a.run}: inside --out {a.out}, which is replaced when the release is "
                        f"published; the run folder must outlive it")
    check_folder_target(a.run, "--run")
    resume = (a.run / "last.pt").exists()
    if not resume:  # a fresh run: the TensorBoard files of an earlier one are not this run's
        for f in a.run.glob("events.out.tfevents.*"):
            f.unlink()

    with publish_dir(a.out, replace=OUTPUTS) as stage:
        t0 = time.perf_counter()
        history = fit(model_config, a.data, a.run, train_config, resume=resume, checkpoint_dir=a.run)
        train_seconds = time.perf_counter() - t0
        publish_run_logs(a.run, history, stage)

        metrics = {
            "command": command_line("study.train_best", argv),
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
            "release": export_release(a.run / "best.pt", stage, a.data),
        }
        ckpt = stage / "best.pt"
        if a.protocol == "split":
            metrics["val"] = evaluate(ckpt, a.data, "val")
            metrics["test"] = evaluate(ckpt, a.data, "test", out_dir=stage)
        if a.official_test:
            metrics["official_test"] = evaluate(ckpt, official_test=a.official_test, out_dir=stage / "official-test")
        for split in ("val", "test", "official_test"):
            if split in metrics:
                metrics[split].pop("per_class", None)
                for key in ("checkpoint", "out_dir"):  # the paths they will have once published
                    if key in metrics[split]:
                        metrics[split][key] = str(a.out / Path(metrics[split][key]).relative_to(stage))
        (stage / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        if a.protocol == "official" and any(model_config.se_stages):  # the demo draws each image's excitations against these val-split averages
            compute_excitations_file(ckpt, a.data, "val")
    release = metrics["release"]
    print(f"{a.out / 'best.pt'}: {release['weights']} weights, {release['bytes'] / 1e6:.1f} MB; "
          f"{a.epochs} epochs in {train_seconds:.0f} s")
    for split in ("val", "test", "official_test"):
        if split in metrics:
            m = metrics[split]
            print(f"{split}: accuracy {m['accuracy']:.4f} macro F1 {m['macro_f1']:.4f} (n={m['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
