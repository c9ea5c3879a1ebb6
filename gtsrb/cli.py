"""The `gtsrb` command: pack | train | evaluate | predict | excitations | calibrate | fetch.

Bad input ends with one line, `gtsrb: error: <file>: <problem>`, and exit
status 2; never a traceback from deep inside.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Iterator

from gtsrb.archive import DataError
from gtsrb.preprocess import DEFAULT_SIZE
from gtsrb.splits import SPLIT_KINDS, SPLIT_NAMES
from gtsrb.publish import check_folder_target
from gtsrb.validate import non_negative_int, positive_float, positive_int


class OneLineParser(argparse.ArgumentParser):
    """argparse's errors as the CLI's one line (`gtsrb: error: argument --batch-size: ...`), exit 2,
    without the usage block above it (``-h`` still shows the usage)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"gtsrb: error: {message}\n")


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

    keep_splits = _keep_splits(a.keep_splits)  # a typo fails now, not after the decoding
    sources = a.source or [default_source()]
    out = a.out or Path("data") / f"gtsrb{a.size}.h5"
    before = _identity(out)
    complete = f"interrupted after {out} was written in full: it is complete"
    with _interrupts_noted() as interrupted:
        try:
            summary = pack(
                sources, out, size=a.size, split=a.split, seed=a.seed, roi=a.roi, skip_bad=a.skip_bad,
                keep_splits=keep_splits, compress=a.compress,
                frame_size=a.frame_size,
            )
        except KeyboardInterrupt:
            # Only the final rename puts a file at ``out``: a new file there is this run's, complete.
            if out.is_file() and _identity(out) != before:
                print(complete, file=sys.stderr)
                return 0
            kept = "; the pack already there is untouched" if before is not None else ""
            print(f"gtsrb: error: interrupted: {out} was not written{kept}", file=sys.stderr)
            return 130
    if interrupted:  # noted, but swallowed inside HDF5's callbacks: pack returned, so the rename happened
        print(complete, file=sys.stderr)
        return 0
    print(summary)
    return 0


def _keep_splits(text: str | None) -> list[str] | None:
    """--keep-splits: a comma list of split names, or DataError naming the flag and the valid names."""
    if text is None:
        return None
    names = [s.strip() for s in text.split(",")]
    wrong = [s for s in names if s not in SPLIT_NAMES]
    if wrong:
        raise DataError(f"--keep-splits {text}: {', '.join(repr(s) for s in wrong)} is not a split; "
                        f"expected a comma list of {', '.join(SPLIT_NAMES)}")
    return names


@contextlib.contextmanager
def _interrupts_noted() -> Iterator[list[bool]]:
    """Ctrl-C still raises KeyboardInterrupt, and is also noted in the yielded list. Python cannot
    raise it inside a callback (h5py frees its objects in weakref callbacks while it writes): there it
    prints "Exception ignored ... KeyboardInterrupt" and carries on, so the caller learns of it from
    the note instead, and that print is left out."""
    noted: list[bool] = []

    def on_sigint(signum, frame):
        noted.append(True)
        raise KeyboardInterrupt

    def unraisable(u) -> None:
        if not isinstance(u.exc_value, KeyboardInterrupt):
            previous_hook(u)

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread: Ctrl-C is not delivered here
        yield noted
        return
    previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield noted
    finally:
        sys.unraisablehook = previous_hook
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


def _load_config_arg(text: str) -> dict:
    """--config: inline JSON or a path to a JSON file (its fields are checked by split_config)."""
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"--config: not valid JSON ({e})") from None
    path = Path(text)
    if not path.is_file():
        raise DataError(f"{path}: no such config file")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text, so not a JSON config") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror})") from None


def cmd_train(a: argparse.Namespace) -> int:
    from gtsrb.config import RECIPE, split_config, TrainConfig
    from gtsrb.train import fit

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
    check_folder_target(out, "--out")
    history = fit(model_config, a.data, out, train_config, resume=a.resume)
    if "val" in train_config.train_splits:
        print(f"trained {len(history)} epochs, nothing held out: best.pt is the last epoch's; checkpoints in {out}")
    elif history:
        best = max(history, key=lambda h: h["val_accuracy"])
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
    if a.out is not None:
        check_folder_target(a.out, "--out")
    result = evaluate(a.checkpoint, a.data, a.split, official, a.out, device=a.device, tta=a.tta)
    table = result.pop("per_class")
    if a.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{result['data']}: n={result['n']} accuracy {result['accuracy']:.4f} "
              f"macro F1 {result['macro_f1']:.4f} P {result['macro_precision']:.4f} R {result['macro_recall']:.4f}")
        if "full_frame" in result:
            ff = result["full_frame"]
            print(f"  the same images as whole frames: accuracy {ff['accuracy']:.4f} macro F1 {ff['macro_f1']:.4f}")
        worst = sorted(table, key=lambda r: r["f1"])[:5]
        print("lowest F1: " + "; ".join(f"{r['class_id']} {r['name']} {r['f1']:.3f}" for r in worst))
        if a.out:
            print(f"per-class table and confusion matrix in {result['out_dir']}")
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from gtsrb.classes import NUM_CLASSES
    from gtsrb.inference import Classifier

    if not 1 <= a.top <= NUM_CLASSES:
        raise DataError(f"--top {a.top}: expected 1 to {NUM_CLASSES}")
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
    from gtsrb.evaluate import compute_excitations_file
    from gtsrb.explain import EXCITATIONS_FILE, load_excitations
    from gtsrb.publish import check_file_target

    # The output is checked before the inference and written in one rename at the end; a missing or
    # empty split is refused by compute_excitations_file before any inference.
    out = check_file_target(a.out or a.checkpoint.parent / EXCITATIONS_FILE)
    try:
        out = compute_excitations_file(a.checkpoint, a.data, a.split, out)
    except OSError as e:
        raise DataError(f"{out}: cannot write ({e.strerror or e})") from e
    stats, meta = load_excitations(out)
    print(f"{out}: class-average excitations from {meta['source']}")
    for name, st in stats.items():
        print(f"  {name}: {st['class_mean'].shape[1]} channels, class specificity (eta^2) {st['specificity']:.3f}")
    return 0


def cmd_calibrate(a: argparse.Namespace) -> int:
    from gtsrb.calibrate import CALIBRATION_FILE, calibrate
    from gtsrb.publish import check_file_target
    from gtsrb.util import write_text_atomic

    if not 0.5 < a.target < 1:
        print(f"gtsrb calibrate: error: --target {a.target}: expected an accuracy between 0.5 and 1", file=sys.stderr)
        return 2
    # The output is checked before the inference and written in one rename at the end; a pack without
    # val or test images is refused by calibrate before any inference.
    out = check_file_target(a.out or a.checkpoint.parent / CALIBRATION_FILE)
    c = calibrate(a.checkpoint, a.data, a.target)
    c["command"] = "gtsrb " + " ".join(sys.argv[1:])
    try:
        write_text_atomic(out, json.dumps(c, indent=1) + "\n")
    except OSError as e:
        raise DataError(f"{out}: cannot write ({e.strerror or e})") from e
    t = c["test"]
    print(f"{out}: temperature {c['temperature']:.3f} (val NLL {c['nll_before']:.4f} -> {c['nll_after']:.4f}), "
          f"unsure below {c['threshold']:.4f}")
    rest = "none left" if t["accuracy_sure"] is None else f"{t['accuracy_sure']:.2%}"
    print(f"  test (n={t['n']}): unsure {t['unsure_rate']:.2%}, accuracy on the rest {rest} "
          f"(all: {t['accuracy_all']:.2%}), {t['errors_flagged']} of {t['errors']} errors flagged")
    return 0


def cmd_fetch(a: argparse.Namespace) -> int:
    from gtsrb.fetch import BASE_URL, check_base_url, fetch

    paths = fetch(a.dir, test=a.test, base_url=check_base_url(a.base_url or BASE_URL))
    for p in paths:
        print(p)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="gtsrb", description="SE-VGG11 on GTSRB: pack, train, evaluate, predict.")
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
    s.add_argument("--frame-size", type=positive_int, default=None, metavar="N",
                   help="also store each whole image at N px with its ROI box, for `train` with framing "
                        "(TrainConfig.framing; 32 for the 28 px model)")
    s.add_argument("--compress", action="store_true",
                   help="gzip the images: smaller (to carry), slower to write and to load")
    s.set_defaults(func=cmd_pack)

    s = sub.add_parser("train", help="train SE-VGG11 on a pack")
    s.add_argument("--data", required=True, type=Path)
    g = s.add_mutually_exclusive_group()
    g.add_argument("--preset", default="seed", choices=("seed", "vgg11"))
    g.add_argument("--config", help="JSON (inline or file) of ModelConfig/TrainConfig fields")
    s.add_argument("--epochs", type=positive_int)
    s.add_argument("--batch-size", type=positive_int)
    s.add_argument("--lr", type=positive_float)
    s.add_argument("--seed", type=non_negative_int)
    s.add_argument("--device", help="auto (default), cpu or cuda")
    s.add_argument("--threads", type=positive_int, help="torch threads (default: torch's choice)")
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
    # On by default: it raised the recipe's selection score on every cross-validation fold (results/REPORT.md 2.2).
    s.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="average over the image and its 4 one-pixel shifts (default; --no-tta: one pass)")
    s.add_argument("--dir", type=Path, default=Path("data"), help="where --official-test fetches to")
    s.add_argument("--base-url", help="mirror for --official-test to fetch from")
    s.add_argument("--out", type=Path, help="folder for per_class.csv, confusion_matrix.png and metrics.json")
    s.add_argument("--device", default="cpu")
    s.add_argument("--json", action="store_true", help="print the metrics as JSON on stdout")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("predict", help="classify images")
    s.add_argument("checkpoint", type=Path)
    s.add_argument("images", nargs="+")
    s.add_argument("--top", type=positive_int, default=5)
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


def _input_errors() -> tuple[type[Exception], ...]:
    """The exception types that mean bad input, not a bug. CheckpointError's module imports torch, which
    `gtsrb pack` and `--help` must not pay for, so each is looked up only where its module was
    imported: an error of a module never imported cannot have been raised."""
    errors: list[type[Exception]] = [DataError, ValueError]
    for module, name in (("gtsrb.checkpoint", "CheckpointError"), ("gtsrb.fetch", "FetchError")):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _input_errors() as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        print("gtsrb: error: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports a command Ctrl-C stopped


if __name__ == "__main__":
    sys.exit(main())
