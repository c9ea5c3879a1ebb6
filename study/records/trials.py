"""A study's records (``results/study/<name>``, `make tune`): how it was run (the profiles and its
profile.json), what it searched (the space, as plain data), what each trial did (Ray's params.json and
result.json in each trial folder) and the summaries made from them (summary.csv, curves.csv,
best_config.json)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from gtsrb.util import atomic_path
from study.records.files import (
    Fields,
    RecordError,
    read_csv,
    read_json,
    read_text,
    write_json,
)

if TYPE_CHECKING:
    import pandas as pd

PROFILE_FILE = "profile.json"  # the profile after overrides, the data, the command
OPTUNA_DB = "optuna.db"  # optuna.load_study(study_name=NAME, storage=optuna_storage_url(folder))
SUMMARY_FILE = "summary.csv"
CURVES_FILE = "curves.csv"
BEST_CONFIG_FILE = "best_config.json"
TRIAL_PARAMS_FILE = "params.json"  # Ray's, in every trial folder
TRIAL_RESULTS_FILE = "result.json"  # Ray's, one JSON line per reported epoch


# --------------------------------------------------------------------------- the search space, as data

NUM_SE_STAGES = 5  # gtsrb.model.NUM_STAGES: study/space.py checks that the two agree (the model needs torch)


@dataclass(frozen=True)
class SearchParam:
    """One searched hyper-parameter. ``kind``: ``cat`` (one of ``choices``), ``float`` (uniform in [low,
    high]) or ``log`` (log-uniform); ``se_only``: asked only when some stage has SE."""

    key: str
    label: str
    kind: str
    choices: tuple = ()
    low: float = 0.0
    high: float = 0.0
    se_only: bool = False


SE_STAGE_KEYS = tuple(f"se_stage{i}" for i in range(1, NUM_SE_STAGES + 1))
# study/space.py asks them in this order, with these choices and ranges: changing either changes what a
# continued study's sampler is asked, so a new space needs a new study.
SEARCH_SPACE = (
    *(SearchParam(k, f"SE in stage {i}", "cat", (True, False)) for i, k in enumerate(SE_STAGE_KEYS, 1)),
    SearchParam("se_form", "SE form", "cat", ("gate", "scale_shift"), se_only=True),
    SearchParam("se_position", "SE position", "cat", ("pre_bn", "post_act"), se_only=True),
    SearchParam("se_reduction", "SE reduction ratio r", "cat", (4, 8, 16, 32), se_only=True),
    SearchParam("conv_dropout", "conv dropout", "float", low=0.0, high=0.5),
    SearchParam("classifier_dropout", "classifier dropout", "float", low=0.0, high=0.6),
    SearchParam("pool", "pooling", "cat", ("max", "avg")),
    SearchParam("lr", "learning rate", "log", low=5e-4, high=8e-3),
    SearchParam("weight_decay", "weight decay", "log", low=1e-3, high=0.2),
)
SEARCH_KEYS = tuple(p.key for p in SEARCH_SPACE)
SEARCH_PARAMS = {p.key: p for p in SEARCH_SPACE}


# --------------------------------------------------------------------------- profiles

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


@dataclass(frozen=True)
class StudyProfile:
    """How one study was run: its profile.json, or (``recorded`` False) the profile of PROFILES that its
    folder is named after, which says nothing of the flags that may have overridden it."""

    epochs: int
    grace: int
    trials: int | None = None
    train_fraction: float | None = None
    val_fraction: float | None = None
    command: str | None = None
    data: str | None = None
    tpe_seed: int | None = None
    recorded: bool = True


def optuna_storage_url(study_dir: Path) -> str:
    """The SQLite URL of a study's Optuna storage (optuna-dashboard takes it too)."""
    return f"sqlite:///{Path(study_dir).resolve() / OPTUNA_DB}"


def profile_record(profile: Profile, data: Path | str, tpe_seed: int, command: str) -> dict:
    """What profile.json holds: the profile after overrides, its first rung, the data, the sampler's seed and
    the command (``command_line``)."""
    return {**asdict(profile), "grace": profile.grace, "data": str(data), "tpe_seed": tpe_seed, "command": command}


def read_profile(study_dir: Path) -> StudyProfile | None:
    """The study's profile.json, or None when it has none; RecordError when it is there but malformed."""
    path = Path(study_dir) / PROFILE_FILE
    if not path.is_file():
        return None
    f = Fields(path, read_json(path), "a study profile")
    return StudyProfile(epochs=f.get("epochs", "int", required=True), grace=f.get("grace", "int", required=True),
                        trials=f.get("trials", "int"), train_fraction=f.get("train_fraction", "number"),
                        val_fraction=f.get("val_fraction", "number"), command=f.get("command", "str"),
                        data=f.get("data", "str"), tpe_seed=f.get("tpe_seed", "int"))


def named_profile(name: str) -> StudyProfile | None:
    """The profile of PROFILES called ``name`` (a study folder's default name), as a StudyProfile."""
    p = PROFILES.get(name)
    if p is None:
        return None
    return StudyProfile(epochs=p.epochs, grace=p.grace, trials=p.trials, train_fraction=p.train_fraction,
                        val_fraction=p.val_fraction, recorded=False)


# --------------------------------------------------------------------------- Ray's trial folders

def trial_dirs(study_dir: Path) -> list[Path]:
    """The trial folders of a study (those holding Ray's params.json), in name order."""
    return [p.parent for p in sorted(Path(study_dir).glob(f"*/{TRIAL_PARAMS_FILE}"))]


def read_trial_params(trial_dir: Path) -> dict:
    """A trial's parameters (Ray's params.json)."""
    path = Path(trial_dir) / TRIAL_PARAMS_FILE
    params = read_json(path)
    if not isinstance(params, dict):
        raise RecordError(path, "not a trial's parameters (a JSON object)")
    return params


def read_trial_results(trial_dir: Path) -> list[dict]:
    """The rows of a trial's result.json (JSON lines, one per reported epoch), each one checked; none when
    the trial has not reported yet."""
    path = Path(trial_dir) / TRIAL_RESULTS_FILE
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecordError(path, f"line {n} is not valid JSON ({e.msg}); a write cut short? Remove that "
                                    f"line, or the trial folder") from None
        if not isinstance(row, dict) or ("val_accuracy" in row and not isinstance(row.get("epoch"), int)):
            raise RecordError(path, f"line {n} is not a trial result (an object with epoch and val_accuracy)")
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- the summaries

class Table(NamedTuple):
    """A stored table, typed, and what was wrong with its values (phrases naming the column; empty when
    nothing was)."""

    frame: pd.DataFrame
    notes: list[str]


def _column_kind(p: SearchParam) -> str:
    if p.kind != "cat":
        return "number"
    if all(isinstance(c, bool) for c in p.choices):
        return "bool"
    return "str" if all(isinstance(c, str) for c in p.choices) else "number"


# summary.csv (study/summary.py writes it): one row per trial that reported an epoch; each column's kind.
SUMMARY_COLUMNS = {
    "trial_id": "str", "role": "str",  # role: "searched", or the fixed trial it is (study/space.py's FIXED_POINTS)
    **{p.key: _column_kind(p) for p in SEARCH_SPACE},
    "best_val_accuracy": "number", "best_epoch": "number", "epochs_run": "number",
    "train_seconds": "number",  # the kept epochs' own training time
    "status": "str",  # Ray's: TERMINATED, ERROR, RUNNING or PENDING
    "retried_from_epoch": "number", "nodes": "str", "trial_dir": "str",
    "outcome": "str",  # full budget, stopped early (ASHA), error, or the status
}
# curves.csv: val accuracy per trial and epoch, long format.
CURVES_COLUMNS = ("trial_id", "epoch", "val_accuracy")


def _as_bool(v):
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    s = str(v).strip().lower()
    return True if s in ("true", "1", "1.0") else False if s in ("false", "0", "0.0") else None


def _problem(path: Path, problem: str, column: str, strict: bool, notes: list[str], consequence: str) -> None:
    if strict:
        raise RecordError(path, problem, column)
    notes.append(f"{problem}; {consequence}")


def read_summary(study_dir: Path, required: Sequence[str] = ("trial_id",), strict: bool = True) -> Table:
    """summary.csv, one row per trial as the file orders them: trial ids as text, SE stages True/False, the
    numeric columns numbers, a missing role "searched". A value of the wrong kind raises a RecordError, or
    with ``strict`` False is left empty and noted. RecordMissing when there is no summary.csv."""
    import pandas as pd

    path = Path(study_dir) / SUMMARY_FILE
    df = read_csv(path, required)
    notes: list[str] = []
    if df.empty:
        return Table(df, notes)
    df = df.copy()
    df["trial_id"] = df["trial_id"].astype(str)
    for column, kind in SUMMARY_COLUMNS.items():
        if column not in df.columns:
            continue
        raw = df[column]
        if kind == "number":
            df[column] = pd.to_numeric(raw, errors="coerce")
            what = "numbers"
        elif kind == "bool":
            df[column] = raw.map(_as_bool).astype(object)
            what = "True or False"
        else:
            continue
        bad = int((df[column].isna() & raw.notna()).sum())
        if bad:
            _problem(path, f"{bad} value(s) of `{column}` are not {what}", column, strict, notes, "left empty")
    if "role" not in df.columns:
        df["role"] = "searched"
    df["role"] = df["role"].fillna("searched").astype(str)
    return Table(df.reset_index(drop=True), notes)


def read_curves(study_dir: Path, strict: bool = True) -> Table:
    """curves.csv: val accuracy per trial and epoch, sorted by trial and epoch. A row without a numeric epoch
    or val accuracy raises a RecordError, or with ``strict`` False is left out and noted."""
    import pandas as pd

    path = Path(study_dir) / CURVES_FILE
    df = read_csv(path, CURVES_COLUMNS)
    notes: list[str] = []
    if df.empty:
        return Table(df, notes)
    df = df[list(CURVES_COLUMNS)].copy()
    df["trial_id"] = df["trial_id"].astype(str)
    df["epoch"] = pd.to_numeric(df["epoch"], errors="coerce")
    df["val_accuracy"] = pd.to_numeric(df["val_accuracy"], errors="coerce")
    bad = df["epoch"].isna() | df["val_accuracy"].isna()
    if bad.any():
        _problem(path, f"{int(bad.sum())} row(s) without a numeric epoch or val accuracy", "epoch", strict, notes,
                 "left out")
        df = df[~bad]
    df["epoch"] = df["epoch"].astype(int)
    return Table(df.sort_values(["trial_id", "epoch"]).reset_index(drop=True), notes)


def write_summary(study_dir: Path, trials: pd.DataFrame) -> None:
    """summary.csv, atomically: a reader sees the last good summary or the new one."""
    with atomic_path(Path(study_dir) / SUMMARY_FILE) as tmp:
        trials.to_csv(tmp, index=False)


def write_curves(study_dir: Path, points: Iterable[tuple[str, int, float]]) -> None:
    """curves.csv from (trial_id, epoch, val_accuracy) points, atomically."""
    import pandas as pd

    with atomic_path(Path(study_dir) / CURVES_FILE) as tmp:
        pd.DataFrame(list(points), columns=list(CURVES_COLUMNS)).to_csv(tmp, index=False)


def write_best_config(study_dir: Path, config: dict) -> None:
    """best_config.json: what `gtsrb train --config` and `make train-best` read (study/space.py makes it)."""
    write_json(Path(study_dir) / BEST_CONFIG_FILE, config)


def read_best_config(path: Path) -> dict:
    """A config file of best_config.json's shape -> its fields (``study.cli.read_config`` also checks that
    they build a model)."""
    return Fields(path, read_json(path), "a config").obj


def study_budget(study_dir: Path, summary: pd.DataFrame) -> tuple[int, int]:
    """ASHA's first rung and the full schedule, in epochs: from the study's profile.json (written by
    `make tune`, so a study in progress is read against the budget it runs to), else from the trials
    (the epoch every finished trial reached, and the most any trial ran)."""
    profile = read_profile(study_dir)
    if profile is not None:
        return profile.grace, profile.epochs
    done = summary[summary["status"] == "TERMINATED"] if "status" in summary else summary
    return int((done if len(done) else summary)["epochs_run"].min()), int(summary["epochs_run"].max())


def find_studies(results: Path) -> list[Path]:
    """The study folders under ``results/study`` that hold a summary.csv, newest summary.csv first."""
    root = Path(results) / "study"
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if (d / SUMMARY_FILE).is_file()]
    return sorted(found, key=lambda d: (-(d / SUMMARY_FILE).stat().st_mtime, d.name))
