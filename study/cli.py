"""What every `python -m study.*` entry point shares with the `gtsrb` command at its boundary.

    @entry_point("study.train_best")
    def main(argv: list[str] | None = None) -> int: ...

Bad input ends with one line, ``study.train_best: error: <file or flag>: <problem>``, and exit
status 2; Ctrl-C with ``study.train_best: error: interrupted`` and 130 (the shell's code for SIGINT).
``read_config`` and ``require_pack`` check a config file and a pack before any work starts; the
argparse types for numbers (``positive_int``, ``fraction``, ...) are ``gtsrb.validate``'s, shared with
the ``gtsrb`` command.

Imports stay stdlib-only (no numpy, torch or Ray until a check needs them): ``study.tune`` imports
this, and the demo imports ``study.tune``'s profiles.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Callable, Sequence

from gtsrb.archive import DataError

INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "unknown error"


def describe(e: BaseException) -> str:
    """An input error as ``<file>: <problem>``; an OSError names its path(s) and the system's reason."""
    if isinstance(e, OSError) and e.filename is not None:
        where = str(e.filename) + (f" -> {e.filename2}" if e.filename2 is not None else "")
        return _one_line(f"{where}: {e.strerror or e}")
    return _one_line(str(e) or type(e).__name__)


def _is_input_error(e: BaseException) -> bool:
    """DataError, ValueError (JSON and config errors included), OSError on a path, CheckpointError."""
    if isinstance(e, (DataError, ValueError, OSError)):
        return True
    checkpoint = sys.modules.get("gtsrb.checkpoint")  # not imported: nothing could have raised its error
    return checkpoint is not None and isinstance(e, checkpoint.CheckpointError)


def entry_point(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate an entry point's ``main(argv)``: bad input -> one line on stderr and 2, Ctrl-C -> 130.
    The same in-process (the tests) as under ``python -m``."""
    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            try:
                return main(argv)
            except KeyboardInterrupt:
                print(f"{prog}: error: interrupted", file=sys.stderr)  # as `gtsrb` says it
                return INTERRUPTED
            except Exception as e:
                if not _is_input_error(e):
                    raise  # a bug: its traceback is what to report
                print(f"{prog}: error: {describe(e)}", file=sys.stderr)
                return 2
        return run
    return wrap


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are a DataError, printed by ``entry_point`` as its one line
    (``study.tune: error: argument --trials: 0: expected a whole number above 0``), no usage block."""

    def error(self, message: str):  # type: ignore[override]
        raise DataError(message)


def check_config(config: dict, where: str) -> None:
    """Refuse, naming ``where`` and the field, a flat config (best_config.json's shape) that
    ``gtsrb.config.split_config`` would not take (ModelConfig and TrainConfig check their fields' types and
    ranges, ``gtsrb.validate``), or whose network does not build and run on one image."""
    import torch

    from gtsrb.model import build_model
    from gtsrb.config import split_config, TrainConfig

    try:
        model_config, train_over = split_config(config)
        TrainConfig(**train_over)
        model = build_model(model_config).eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, model_config.image_size, model_config.image_size))
    except (ValueError, TypeError, IndexError, RuntimeError) as e:
        raise DataError(f"{where}: {_one_line(str(e))}") from None


def read_config(path: Path, flag: str = "--config") -> dict:
    """A config file (best_config.json's shape) -> its dict, checked by ``check_config``. Errors read
    ``<flag> <file>: <problem>``."""
    from study.records import read_json

    try:
        config = read_json(path)
        if not isinstance(config, dict):
            raise DataError(f"{path}: expected a JSON object of ModelConfig/TrainConfig fields, "
                            f"not {type(config).__name__}")
        check_config(config, str(path))
    except DataError as e:
        raise DataError(f"{flag} {e}") from None
    return config


def require_pack(path: Path, splits: Sequence[str], flag: str = "--data", frames: bool = False) -> None:
    """Refuse a pack that ``gtsrb.data.load_pack`` does not read, in which a split this command needs
    is missing or empty, or, with ``frames`` (a run with the framing crop, ``TrainConfig.framing``),
    which holds no whole frames."""
    import numpy as np

    from gtsrb.data import load_pack
    from gtsrb.splits import SPLIT_NAMES

    if path is None:
        raise DataError(f"{flag}: no pack given")
    packed = load_pack(path)
    if frames and packed.frames is None:
        raise DataError(f"{path}: no whole frames; {flag} trains with the recipe's framing crop "
                        f"(TrainConfig.framing), which needs a pack made with `gtsrb pack --roi --frame-size 32`")
    counts = np.bincount(packed.split, minlength=len(SPLIT_NAMES))
    empty = [s for s in splits if counts[SPLIT_NAMES.index(s)] == 0]
    if empty:
        raise DataError(f"{path}: no images in its {' or '.join(empty)} split; {flag} needs a pack with "
                        f"{', '.join(splits)} (packed without --keep-splits)")
