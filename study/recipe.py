"""`make recipe`: the accuracy recipe, measured piece by piece (paired seeds, leave-one-out).

    python -m study.recipe --data data/gtsrb28-framed.h5 --full-frame-data data/gtsrb28.h5 \
        [--preset best] [--arms recipe old ...] [--base recipe|no_framing] [--seeds 0 1 2] [--epochs 8] \
        [--precision auto|bf16|fp32]

Every arm trains the same network (``--preset seed``, or ``best``: the study's
best_config.json) on the track split's whole train part for the same number
of epochs, with the same one-cycle schedule, and is scored at its LAST epoch:
the schedule is fixed, nothing is chosen on val. Arms:

- ``recipe``: everything in ``gtsrb.config.RECIPE`` (``--base recipe``), or the recipe before the
  framing crop (``--base no_framing``: what every stored ablation was measured against), on the
  ROI-cropped pack (the framing crop reads its whole frames: ``--roi --frame-size 32``);
- ``old``: none of it (the recipe before this ablation), on the same pack;
- ``no_<piece>``: the recipe without one piece (``no_roi`` trains on the
  full-frame pack instead);
- ``norm``, ``balanced``, ``ema``, ``strong_aug``, ``se_bias``: the recipe plus per-image contrast
  normalisation, class-balanced sampling, an EMA of the weights, every augmentation range
  1.5 times as wide (``TrainConfig.augment_strength``), or biases in the SE blocks' 1x1 layers
  (``ModelConfig.se_bias``) (candidates it does not hold;
  records made while the recipe held the norm call its removal ``no_norm``). The
  EMA does not change the training trajectory, so the ``ema`` record also scores
  the run's raw weights (``raw``): the EMA's effect is an exactly paired
  difference within one run;
- ``long``: the recipe for LONG times ``--epochs`` (the same one-cycle schedule, stretched);
- ``robust``: the recipe plus the three robustness augmentations (``ROBUST``: darkening, blur,
  occlusion; ``gtsrb.augment``), and ``dark``, ``blur``, ``erase``: the recipe plus one of them;
- ``framing``: the recipe with the framing crop on half the images (``FRAMING``: each cropped between
  its ROI and its whole frame), ``framing_all`` (every image: today's recipe), and ``robust_framing``:
  robust and framing together. They need ``--data`` packed with
  ``--roi --frame-size 32``, whose ROI images are those of the plain ROI pack.

``--protocol cv`` (issue 33's selection protocol): run k validates on fold k of a track-grouped
5-fold split of the pack's train and val splits pooled (``gtsrb.splits.cv_fold``) with seed k, and
writes ``<arm>-fold<k>.json``. Three folds see three times the tracks one val split holds, so arms
are told apart on more signs; the test split stays out of every choice. Each record also keeps the
file names its last-epoch weights got wrong on the fold's val and on test, for a paired bootstrap
over tracks (``study.report``), and, with ``--full-frame-data``, the test accuracy on whole frames.

Seed k of every arm shares the initial weights' seed and the data order's seed, so
arms are compared as paired differences. Each finished run writes
``<results>/<name>/<arm>-seed<k>.json`` (``--name``: the preset unless given, one folder per
configuration); a run with that file is skipped, and a killed run resumes from its ``last.pt``
(checkpoints stay under ``runs/recipe/<name>``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gtsrb.archive import DataError
from gtsrb.checkpoint import load_checkpoint, save_checkpoint
from gtsrb.data import load_pack
from gtsrb.evaluate import evaluate
from gtsrb.inference import Classifier
from gtsrb.config import PRECISIONS, RECIPE, RECIPE_NO_FRAMING, split_config, TrainConfig
from gtsrb.train import fit, training_splits
from gtsrb.validate import fraction, non_negative_int, positive_int
from study.cli import ArgumentParser, entry_point, read_config, require_pack
from study.records import PRECISION_HELP, read_json, run_record, write_json

PIECES = {"mirror": "mirror", "smoothing": "label_smoothing", "framing": "framing"}
# What the arms are measured against (--base): today's recipe, or the recipe before the framing crop (the
# base of the cross-validated selection in results/recipe/cv-top1, whose "recipe" arm is that recipe).
BASES: dict[str, dict] = {"recipe": RECIPE, "no_framing": RECIPE_NO_FRAMING}
# Candidates the recipe does not hold, each added to it (the contrast norm was in it until it lost).
EXTRAS: dict[str, dict] = {"norm": {"input_norm": "image"}, "balanced": {"balanced": True},
                           "ema": {"ema_decay": 0.998}, "strong_aug": {"augment_strength": 1.5},
                           "se_bias": {"se_bias": True}}
# The robustness augmentations at the strengths an independent check on the official test set used (issue 33).
ROBUST: dict = {"dark_p": 0.3, "blur_p": 0.2, "erase_p": 0.5}
FRAMING: dict = {"framing": 0.5}
EXTRAS |= {"robust": ROBUST, **{k[:-2]: {k: v} for k, v in ROBUST.items()},
           "framing": FRAMING, "robust_framing": {**ROBUST, **FRAMING}, "framing_all": {"framing": 1.0}}
LONG = 2  # the long arm trains this many times --epochs
ARMS = ("recipe", "old", "no_roi", *(f"no_{p}" for p in PIECES), *EXTRAS, "long")


def arm_spec(arm: str, base: dict = RECIPE) -> tuple[dict, bool]:
    """(config overrides on top of the preset, whether the arm trains on the ROI pack), ``base`` being
    the recipe the arms are measured against."""
    if arm in ("recipe", "long"):
        return dict(base), True
    if arm == "old":
        return {}, True
    if arm == "no_roi":
        return {k: v for k, v in base.items() if k != "framing"}, False  # whole frames have nothing to crop to
    if arm in EXTRAS:
        return {**base, **EXTRAS[arm]}, True
    if arm.startswith("no_") and arm[3:] in PIECES:
        return {k: v for k, v in base.items() if k != PIECES[arm[3:]]}, True
    raise ValueError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")


def other_recipe(folder: Path, base: dict = RECIPE) -> str | None:
    """Why ``folder``'s records were made under another recipe than today's ``RECIPE`` (a record whose
    overrides are not its arm's today, or of an arm that no longer exists), or None."""
    for f in sorted([*folder.glob("*-seed*.json"), *folder.glob("*-fold*.json")]):
        r = read_json(f)
        if not isinstance(r, dict) or "arm" not in r:
            raise DataError(f"{f}: not a recipe record (no arm)")
        try:
            today = json.loads(json.dumps(arm_spec(r["arm"], base)[0]))
        except ValueError:
            return f"{f} is arm {r['arm']!r}, which today's recipe does not have"
        if r.get("overrides") != today:
            return f"{f} was trained with {r.get('overrides')}, but its arm {r['arm']!r} is now {today}"
    return None


def raw_weights_metrics(last: Path, pack: Path) -> dict:
    """Val and test accuracy of an EMA run's raw (trained) weights, from its last.pt."""
    ckpt = load_checkpoint(last)
    tmp = last.with_name("raw.pt")
    save_checkpoint({**ckpt, "model": ckpt["train_model"]}, tmp)
    try:
        return {f"{split}_accuracy": evaluate(tmp, pack, split)["accuracy"] for split in ("val", "test")}
    finally:
        tmp.unlink(missing_ok=True)


def scores(checkpoint: Path, pack: Path, config: TrainConfig, tta: bool = False) -> dict[str, dict]:
    """Accuracy and the file names ``checkpoint`` gets wrong on the run's own val (its fold under cv)
    and on test of ``pack``; with ``tta``, of the shift-averaged predictions (``Classifier.predict_tta``)."""
    data = load_pack(pack)
    clf = Classifier.load(checkpoint)
    out = {}
    for name, part in (("val", training_splits(data, config)[1]), ("test", data.subset("test"))):
        pred = (clf.predict_tta(part.images) if tta else clf.predict_arrays(part.images).probs).argmax(1)
        out[name] = {"accuracy": float((pred == part.labels).mean()),
                     "wrong": sorted(f for f, p, y in zip(part.filenames, pred, part.labels) if p != y)}
    return out


def run_folder(runs: Path, name: str, arm: str, seed: int, protocol: str) -> Path:
    """Where a run's checkpoints live: ``<runs>/<name>/<arm>/fold<k>`` (cv) or ``seed<k>``."""
    return runs / name / arm / (f"fold{seed}" if protocol == "cv" else f"seed{seed}")


def rescore(results: Path, runs: Path, full_frame_data: Path | None, tta: bool = False,
            arms: Sequence[str] | None = None) -> None:
    """Add ``full_frame_*`` scores to the records in ``results`` that lack them, from their run's last.pt
    (the weights the record scored), so every arm of a folder has the same columns; with ``tta``, also
    ``tta``: the same four accuracies (val and test, ROI crops and whole frames) with test-time augmentation.
    ``arms``: only those arms' records."""
    if full_frame_data is None:
        raise DataError("--rescore needs --full-frame-data")
    for f in sorted(results.glob("*-fold*.json")) + sorted(results.glob("*-seed*.json")):
        r = json.loads(f.read_text())
        if (arms is not None and r["arm"] not in arms) or not r.get("roi", True) \
                or ("full_frame_val_accuracy" in r and ("tta" in r or not tta)):
            continue
        run = Path(r["run"]) if "run" in r else run_folder(runs, r["name"], r["arm"], r["seed"], r.get("protocol", "split"))
        last = run / "last.pt"
        if not last.is_file():
            print(f"{f}: its run's last.pt is not here; left as it is", flush=True)
            continue
        config = TrainConfig(**r["train_config"])
        if "full_frame_val_accuracy" not in r:
            full = scores(last, full_frame_data, config)
            r |= {"full_frame_test_accuracy": full["test"]["accuracy"],
                  "full_frame_val_accuracy": full["val"]["accuracy"],
                  "full_frame_wrong": {k: v["wrong"] for k, v in full.items()}}
            print(f"{f}: full-frame val {full['val']['accuracy']:.4f}, test {full['test']['accuracy']:.4f}", flush=True)
        if tta and "tta" not in r:
            roi, full = scores(last, Path(r["pack"]), config, tta=True), scores(last, full_frame_data, config, tta=True)
            r["tta"] = {"val_accuracy": roi["val"]["accuracy"], "test_accuracy": roi["test"]["accuracy"],
                        "full_frame_val_accuracy": full["val"]["accuracy"],
                        "full_frame_test_accuracy": full["test"]["accuracy"]}
            print(f"{f}: with TTA, val {roi['val']['accuracy']:.4f}, full-frame val {full['val']['accuracy']:.4f}",
                  flush=True)
        write_json(f, r)


def base_config(preset: str, best_config: Path) -> dict:
    """The preset, or for ``best`` the config file's fields, checked (``study.cli.read_config``)."""
    return read_config(best_config) if preset == "best" else {"preset": preset}


@entry_point("study.recipe")
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m study.recipe", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="track-split pack made with --roi")
    p.add_argument("--full-frame-data", type=Path, help="the same split without --roi (for no_roi)")
    p.add_argument("--preset", default="seed", choices=("seed", "best"))
    p.add_argument("--config", type=Path, default=Path("results/study/cpu-quick/best_config.json"),
                   help="the config of --preset best (the Makefile's QUICK_CONFIG: the quick study's winner)")
    p.add_argument("--name", help="the records' folder under --results (default: the preset). One folder per "
                                   "configuration: a study arm's name, e.g. top1, pairs with results/ablation/top1-seed*")
    p.add_argument("--arms", nargs="+", choices=ARMS, help="default: recipe old (with --rescore: every arm)")
    p.add_argument("--base", choices=tuple(BASES), default="recipe",
                   help="the recipe the arms are measured against: today's, or no_framing (the recipe before the "
                        "framing crop, which the cv-top1 selection was measured against)")
    p.add_argument("--seeds", nargs="+", type=non_negative_int, default=[0, 1, 2],
                   help="seeds; under --protocol cv, the folds (run k: fold k, seed k)")
    p.add_argument("--protocol", choices=("split", "cv"), default="split",
                   help="split: validate on the pack's val split; cv: on fold k of train+val pooled (see above)")
    p.add_argument("--epochs", type=positive_int, default=8)
    p.add_argument("--train-fraction", type=fraction, default=1.0, help="whole tracks; 1.0 for the real ablation")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help=PRECISION_HELP)
    p.add_argument("--runs", type=Path, default=Path("runs/recipe"))
    p.add_argument("--rescore", action="store_true",
                   help="train nothing: add the full-frame val scores to the records of --name and --arms that lack "
                        "them, from each run's last.pt under --runs (records made before those scores were kept)")
    p.add_argument("--tta", action="store_true",
                   help="with --rescore: also score each record's run with test-time augmentation (its ``tta`` field)")
    p.add_argument("--results", type=Path, default=Path("results/recipe"))
    a = p.parse_args(argv)

    name = a.name or a.preset
    results = a.results / name
    arms = a.arms or ["recipe", "old"]  # what trains; --rescore rescores --arms, or every arm
    # Every input before any training: the config, the packs and their splits, the seeds, the records.
    base = base_config(a.preset, a.config)
    framed = [arm for arm in arms if arm_spec(arm, BASES[a.base])[0].get("framing", 0) > 0]
    require_pack(a.data, ("train", "val", "test"), f"--arms {' '.join(framed)}: --data" if framed else "--data",
                 frames=bool(framed))

    def record(arm: str, seed: int) -> Path:
        return results / (f"{arm}-fold{seed}.json" if a.protocol == "cv" else f"{arm}-seed{seed}.json")

    full_frame_arms = [arm for arm in arms if not arm_spec(arm, BASES[a.base])[1] and any(not record(arm, s).exists() for s in a.seeds)]
    if full_frame_arms and a.full_frame_data is None:
        raise DataError(f"--arms {' '.join(full_frame_arms)}: trains on the full-frame pack; pass --full-frame-data")
    if a.full_frame_data is not None:
        require_pack(a.full_frame_data, ("train", "val", "test"), "--full-frame-data")
    folds = TrainConfig().folds
    if a.protocol == "cv" and max(a.seeds) >= folds:
        raise DataError(f"--seeds {max(a.seeds)}: under --protocol cv seed k validates on fold k, 0 to {folds - 1}")
    for arm in arms:  # the arms' overrides on top of the config
        split_config({**base, **arm_spec(arm, BASES[a.base])[0]})
    results.mkdir(parents=True, exist_ok=True)
    stale = other_recipe(results, BASES[a.base])
    if stale:
        raise DataError(f"{stale}. The arms of one folder are compared with each other, so a run under "
                        f"today's recipe does not go beside them: pass --name NEW for a new folder.")
    if a.rescore:
        rescore(results, a.runs, a.full_frame_data, a.tta, a.arms)
        return 0
    for seed in a.seeds:  # seed-major: an interrupted ablation still has every arm at the first seeds
        for arm in arms:
            done = record(arm, seed)
            overrides, roi = arm_spec(arm, BASES[a.base])
            if done.exists():
                print(f"{name} {arm} seed {seed}: done, skipped", flush=True)
                continue
            pack = a.data if roi else a.full_frame_data
            model_config, train_over = split_config({**base, **overrides})
            epochs = a.epochs * (LONG if arm == "long" else 1)
            train_config = TrainConfig(**{**train_over, "epochs": epochs, "seed": seed,
                                              "train_fraction": a.train_fraction, "precision": a.precision,
                                              "histograms": False, "fold": seed if a.protocol == "cv" else -1})
            out = run_folder(a.runs, name, arm, seed, a.protocol)
            print(f"{name} {arm} seed {seed}: training -> {out}", flush=True)
            t0 = time.perf_counter()
            history = fit(model_config, pack, out, train_config, resume=(out / "last.pt").exists(), progress=False)
            seconds = time.perf_counter() - t0
            # The last epoch's weights (the EMA where the arm keeps one): no selection on val.
            test = evaluate(out / "last.pt", pack, "test")
            test.pop("per_class", None)
            own = scores(out / "last.pt", pack, train_config)  # the run's own val (its fold under cv) and test
            val_accuracy = own["val"]["accuracy"]
            # The same images uncropped (the full-frame pack has the same split): what a tester uploads.
            full_frame = scores(out / "last.pt", a.full_frame_data, train_config) if a.full_frame_data and roi else None
            raw = raw_weights_metrics(out / "last.pt", pack) if train_config.ema_decay > 0 else None
            result = {
                "preset": a.preset, "name": name, "config_file": str(a.config) if a.preset == "best" else None,
                "arm": arm, "seed": seed, "pack": str(pack), "roi": roi, "run": str(out),
                "base": a.base, "overrides": overrides, "model_config": model_config.to_dict(),
                "train_config": train_config.__dict__, "history": history,
                "protocol": a.protocol, "val_accuracy": val_accuracy, "test": test,
                **({"full_frame_test_accuracy": full_frame["test"]["accuracy"],
                    "full_frame_val_accuracy": full_frame["val"]["accuracy"],
                    "full_frame_wrong": {k: v["wrong"] for k, v in full_frame.items()}} if full_frame else {}),
                "wrong": {k: v["wrong"] for k, v in own.items()},
                **({"raw": raw} if raw else {}),
            }
            write_json(done, run_record("study.recipe", argv, seconds, **result))
            print(f"{name} {arm} seed {seed}: val {val_accuracy:.4f} "
                  f"test {test['accuracy']:.4f} ({seconds:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
