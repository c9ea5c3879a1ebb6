"""What the ablation records mean, shared by `make report` (``study.report``) and the demo's Study tab
(``ui/study.py``): the arms' names, which run picked a top arm, where the records live, and how a
mean ± std is written. Numpy only: the tab imports this and must not import torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gtsrb.archive import DataError

# Records, profiles and configs are kilobytes to a few megabytes; a file far beyond that is not one,
# and reading it whole would take the memory (``/dev/zero`` has no end at all).
MAX_JSON_BYTES = 256 * 1024**2

ARM_LABELS = {"seed": "seed preset (SE on all 5 stages)", "no_se": "no SE (plain VGG-11)",
              "incumbent": "incumbent (quick study's winner)",
              "best": "study best config", "top1": "study's best config", "top2": "study's 2nd config",
              "top3": "study's 3rd config", "seed_random": "seed preset, random split"}
TOP = ("top1", "top2", "top3")
# The study trains every trial with seed 0 (study.ablation), so a top arm's seed-0 run is the very run
# that ranked it among the top 3: chosen for its high val, it flatters the arm (the winner's curse).
PICKED_ON_SEED = 0
# `--precision` of study.ablation and study.recipe: paired runs must share it.
PRECISION_HELP = ("the training step's precision (auto: bf16 where the CPU multiplies it natively). A run added "
                  "on another machine passes its pairs' precision: fp32 beside runs made without bf16")


def pm(values, scale: float = 100.0, digits: int = 2) -> str:
    """mean ± sample std (n-1), scaled; a single run shows no std."""
    v = np.asarray(values, float) * scale
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def ablation_folder(results: Path = Path("results")) -> Path:
    """``results/ablation`` (``make ablation``, at the converging budget) once it holds a run, else the
    quick ablation that came before it, ``results/ablation-quick``."""
    new, quick = results / "ablation", results / "ablation-quick"
    return new if any(new.glob("*-seed*.json")) or not quick.is_dir() else quick


def read_json(path: Path):
    """A stored JSON file (a record, a profile, a config) -> its value. DataError naming the file when it
    cannot be read, is not UTF-8, is not JSON (a truncated write included) or is too large to be one."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if len(raw) > MAX_JSON_BYTES:
        raise DataError(f"{path}: over {MAX_JSON_BYTES // 1024**2} MB, too large for a JSON record")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
