"""The `gtsrb` command: pack | train | evaluate | predict | excitations | calibrate | fetch | bench.

Bad input ends with one line, `gtsrb: error: <file>: <problem>`, and exit
status 2; never a traceback from deep inside.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gtsrb.archive import DataError
from gtsrb.preprocess import DEFAULT_SIZE
from gtsrb.splits import SPLIT_KINDS, SPLIT_NAMES


def _fail(msg: str) -> int:
    print(f"gtsrb: error: {msg}", file=sys.stderr)
    return 2


def _identity(path: Path) -> tuple[int, int] | None:
    """(inode, mtime in ns) of a file, None if there is none: a rename onto it changes both."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def cmd_pack(a: argparse.Namespace) -> int:
    from gtsrb.archive import default_source
    from gtsrb.data import pack

    sources = a.source or [default_source()]
    out = a.out or Path("data") / f"gtsrb{a.size}.h5"
    before = _identity(out)
    try:
        summary = pack(
            sources, out, size=a.size, split=a.split, seed=a.seed, roi=a.roi, skip_bad=a.skip_bad,
            keep_splits=a.keep_splits.split(",") if a.keep_splits else None, compress=a.compress,
        )
    except KeyboardInterrupt:
        # Only the final rename puts a file at ``out``: a new file there is this run's, complete.
        if out.is_file() and _identity(out) != before:
            print(f"interrupted after {out} was written in full: it is complete", file=sys.stderr)
            return 0
        raise
    print(summary)
    return 0


def _load_config_arg(text: str) -> dict:
    """--config: inline JSON or a path to a JSON file."""
    if text.lstrip().startswith("{"):
        return json.loads(text)
    path = Path(text)
    if not path.is_file():
        raise DataError(f"{path}: no such config file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e


def cmd_train(a: argparse.Namespace) -> int:
    from gtsrb.train import RECIPE, TrainConfig, fit, split_config

    base = _load_config_arg(a.config) if a.config else {"preset": a.preset}
    model_config, train_over = split_config({**base, **(RECIPE if a.recipe else {})})
    flags = {
        k: getattr(a, k)
        for k in ("epochs", "batch_size", "lr", "seed", "device", "threads", "precision")
        if getattr(a, k) is not None
    }
    if a.compile:
        flags["compile"] = True
    if a.no_augment:
        flags["augment"] = False
    train_config = TrainConfig(**{**train_over, **flags})
    out = Path(a.out)
    if (out / "last.pt").exists() and not a.resume:
        raise DataError(f"{out}: holds a run already; pass --resume to continue it or choose another --out")
    history = fit(model_config, a.data, out, train_config, resume=a.resume)
    best = max(history, key=lambda h: h["val_accuracy"]) if history else None
    if best:
        print(f"best val accuracy {best['val_accuracy']:.4f} at epoch {best['epoch']}; checkpoints in {out}")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from gtsrb.evaluate import evaluate

    official = a.official_test
    if official is None and not a.data:
        raise DataError("evaluate needs --data FILE (with --split) or --official-test [PATH...]")
    if official == []:  # no paths: fetch the official test set first (once; needs internet)
        from gtsrb.fetch import BASE_URL, fetch

        official = fetch(a.dir, test=True, base_url=a.base_url or BASE_URL)
    # Files only where asked: evaluating a shipped checkpoint must not write into results/.
    result = evaluate(a.checkpoint, a.data, a.split, official, a.out, device=a.device, tta=a.tta)
    table = result.pop("per_class")
    if a.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{result['data']}: n={result['n']} accuracy {result['accuracy']:.4f} "
              f"macro F1 {result['macro_f1']:.4f} P {result['macro_precision']:.4f} R {result['macro_recall']:.4f}")
        worst = sorted(table, key=lambda r: r["f1"])[:5]
        print("lowest F1: " + "; ".join(f"{r['class_id']} {r['name']} {r['f1']:.3f}" for r in worst))
        if a.out:
            print(f"per-class table and confusion matrix in {result['out_dir']}")
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from gtsrb.inference import Classifier

    clf = Classifier.load(a.checkpoint, device=a.device)
    results = []
    for path in a.images:
        pred = clf.predict([path])
        results.append({"image": path, "top": [{"class_id": c, "name": n, "prob": p} for c, n, p in pred.top(a.top)]})
    if a.json:
        print(json.dumps(results, indent=1))
        return 0
    for r in results:
        print(r["image"])
        for t in r["top"]:
            print(f"  {t['class_id']:2d}  {t['prob']:.4f}  {t['name']}")
    return 0


def cmd_excitations(a: argparse.Namespace) -> int:
    from gtsrb.explain import compute_excitations_file, load_excitations

    out = compute_excitations_file(a.checkpoint, a.data, a.split, a.out)
    stats, meta = load_excitations(out)
    print(f"{out}: class-average excitations from {meta['source']}")
    for name, st in stats.items():
        print(f"  {name}: {st['class_mean'].shape[1]} channels, class specificity (eta^2) {st['specificity']:.3f}")
    return 0


def cmd_calibrate(a: argparse.Namespace) -> int:
    from gtsrb.calibrate import CALIBRATION_FILE, calibrate
    from gtsrb.util import write_text_atomic

    if not 0.5 < a.target < 1:
        print(f"gtsrb calibrate: error: --target {a.target}: expected an accuracy between 0.5 and 1", file=sys.stderr)
        return 2
    c = calibrate(a.checkpoint, a.data, a.target)
    c["command"] = "gtsrb " + " ".join(sys.argv[1:])
    out = a.out or a.checkpoint.parent / CALIBRATION_FILE
    write_text_atomic(out, json.dumps(c, indent=1) + "\n")
    t = c["test"]
    print(f"{out}: temperature {c['temperature']:.3f} (val NLL {c['nll_before']:.4f} -> {c['nll_after']:.4f}), "
          f"unsure below {c['threshold']:.4f}")
    rest = "none left" if t["accuracy_sure"] is None else f"{t['accuracy_sure']:.2%}"
    print(f"  test (n={t['n']}): unsure {t['unsure_rate']:.2%}, accuracy on the rest {rest} "
          f"(all: {t['accuracy_all']:.2%}), {t['errors_flagged']} of {t['errors']} errors flagged")
    return 0


def cmd_fetch(a: argparse.Namespace) -> int:
    from gtsrb.fetch import BASE_URL, fetch

    paths = fetch(a.dir, test=a.test, base_url=a.base_url or BASE_URL)
    for p in paths:
        print(p)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gtsrb", description="SE-VGG11 on GTSRB: pack, train, evaluate, predict.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("pack", help="official layout (folder or zip) -> one HDF5 file")
    s.add_argument("source", nargs="*", type=Path, help="folder or zip(s); default: data/, then ../shared/gtsrb/")
    s.add_argument("--out", type=Path, help="output .h5 (default data/gtsrb<size>.h5)")
    s.add_argument("--size", type=int, default=DEFAULT_SIZE)
    s.add_argument("--split", choices=SPLIT_KINDS, default="track")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--roi", action="store_true", help="crop each image to its annotated region first")
    s.add_argument("--skip-bad", action="store_true", help="skip and count bad images instead of failing")
    s.add_argument("--keep-splits", help="comma list of splits to keep, e.g. train,val (a small pack)")
    s.add_argument("--compress", action="store_true",
                   help="gzip the images: smaller (to carry), slower to write and to load")
    s.set_defaults(func=cmd_pack)

    s = sub.add_parser("train", help="train SE-VGG11 on a pack")
    s.add_argument("--data", required=True, type=Path)
    g = s.add_mutually_exclusive_group()
    g.add_argument("--preset", default="seed", choices=("seed", "vgg11"))
    g.add_argument("--config", help="JSON (inline or file) of ModelConfig/TrainConfig fields")
    s.add_argument("--epochs", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--lr", type=float)
    s.add_argument("--seed", type=int)
    s.add_argument("--device", help="auto (default), cpu or cuda")
    s.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    s.add_argument("--no-augment", action="store_true")
    s.add_argument("--recipe", action="store_true",
                   help="add the accuracy recipe (class-aware mirror, label smoothing); "
                        "train it on a pack made with --roi")
    s.add_argument("--precision", choices=("auto", "bf16", "fp32"),
                   help="auto (default): bf16 autocast on CUDA and on CPUs with AMX or AVX-512-BF16, "
                        "where it was measured faster; fp32 elsewhere")
    s.add_argument("--compile", action="store_true", help="torch.compile the model")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="metrics of a checkpoint on a split or the official test set")
    s.add_argument("checkpoint", type=Path)
    s.add_argument("--data", type=Path)
    s.add_argument("--split", default="test", choices=SPLIT_NAMES)
    s.add_argument("--official-test", nargs="*", type=Path, metavar="PATH",
                   help="folder with Final_Test/Images and GT-final_test.csv, or the images zip and the GT zip; "
                        "with no PATH, fetch the two zips into --dir first")
    s.add_argument("--tta", action="store_true", help="average over the image and its 4 one-pixel shifts")
    s.add_argument("--dir", type=Path, default=Path("data"), help="where --official-test fetches to")
    s.add_argument("--base-url", help="mirror for --official-test to fetch from")
    s.add_argument("--out", type=Path, help="folder for per_class.csv, confusion_matrix.png and metrics.json")
    s.add_argument("--device", default="cpu")
    s.add_argument("--json", action="store_true", help="print the metrics as JSON on stdout")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("predict", help="classify images")
    s.add_argument("checkpoint", type=Path)
    s.add_argument("images", nargs="+")
    s.add_argument("--top", type=int, default=5)
    s.add_argument("--device", default="cpu")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("excitations", help="class-average SE excitations on a split, saved beside the checkpoint")
    s.add_argument("checkpoint", type=Path)
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--split", default="val", choices=SPLIT_NAMES)
    s.add_argument("--out", type=Path, help="default: excitations.npz beside the checkpoint")
    s.set_defaults(func=cmd_excitations)

    s = sub.add_parser("calibrate", help="temperature and 'unsure' threshold fitted on val, reported on test")
    s.add_argument("checkpoint", type=Path)
    s.add_argument("--data", required=True, type=Path, help="a pack with val and test splits")
    s.add_argument("--target", type=float, default=0.99, help="accuracy of the predictions called sure, on val")
    s.add_argument("--out", type=Path, help="default: calibration.json beside the checkpoint")
    s.set_defaults(func=cmd_calibrate)

    s = sub.add_parser("fetch", help="download the official archives (needs internet)")
    s.add_argument("--test", action="store_true", help="the official test images and labels instead")
    s.add_argument("--dir", type=Path, default=Path("data"))
    s.add_argument("--base-url", help="mirror to download from")
    s.set_defaults(func=cmd_fetch)
    return p


def main(argv: list[str] | None = None) -> int:
    from gtsrb.checkpoint import CheckpointError
    from gtsrb.fetch import FetchError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, CheckpointError, FetchError, ValueError) as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return _fail("interrupted")


if __name__ == "__main__":
    sys.exit(main())
