"""What the stored results mean, shared by `make report` (``study.report``), the study commands and the
demo's Study tab (``ui/study.py``): the study profiles and a study folder's files, the ablation arms'
names, which run picked a top arm, where the records live, and how a mean ± std is written. Numpy only:
the tab imports this and must not import torch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gtsrb.archive import DataError

# Records, profiles and configs are kilobytes to a few megabytes; a file far beyond that is not one,
# and reading it whole would take the memory (``/dev/zero`` has no end at all).
MAX_JSON_BYTES = 256 * 1024**2

# A study's folder (results/study/<name>, `make tune`): how it was run, and its Optuna study beside Ray's files.
PROFILE_FILE = "profile.json"  # the profile after overrides, the data, the command
OPTUNA_DB = "optuna.db"  # optuna.load_study(study_name=NAME, storage=optuna_storage_url(folder))


@dataclass(frozen=True)
class Profile:
    trials: int
    epochs: int  # the most a trial runs (ASHA's max_t)
    train_fraction: float  # track-grouped share of the train split
    val_fraction: float
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int | None = None

    @property
    def grace(self) -> int:
        """ASHA's first rung, the epochs every trial gets: half the schedule (see PROFILES)."""
        return max(1, self.epochs // 2)


# ASHA's rule, every profile: the first rung is at half the schedule (Profile.grace) and the
# reduction factor is 2. So a trial is stopped only after half its one-cycle schedule, and only when
# it sits in the bottom half of the trials that reached that rung; a slow starter still has half
# its epochs to catch up before anyone judges it. results/REPORT.md checks the rule on the study's
# own curves (how well the rung's ranking predicted the last epoch's).
PROFILES = {
    # 2 cores, real data, the recipe, compared near convergence: 24 trials on the whole train split
    # and the whole val split, 8 epochs (the recipe's schedule, which reaches 99% track-split test),
    # rungs at 4 and 8 epochs, 2 trials at a time with 1 CPU each. Many hours on a 2-core CPU:
    # `make tune` continues where it stopped.
    "cpu": Profile(trials=24, epochs=8, train_fraction=1.0, val_fraction=1.0,
                   cpus_per_trial=1, gpus_per_trial=0),
    # GPUs: more trials, a longer schedule, 4 trials share each GPU.
    "gpu": Profile(trials=48, epochs=16, train_fraction=1.0, val_fraction=1.0,
                   cpus_per_trial=2, gpus_per_trial=0.25),
    # The tests and `make tune SMOKE=1`: 3 trials, 2 epochs, a small share of the data.
    "smoke": Profile(trials=3, epochs=2, train_fraction=0.05, val_fraction=0.2,
                     cpus_per_trial=1, gpus_per_trial=0, max_concurrent=2),
}


def optuna_storage_url(study_dir: Path) -> str:
    """The SQLite URL of a study's Optuna storage (optuna-dashboard takes it too)."""
    return f"sqlite:///{Path(study_dir).resolve() / OPTUNA_DB}"


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
