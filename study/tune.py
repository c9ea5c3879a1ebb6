"""`make tune`: the Ray Tune study. Optuna (seeded TPE) searches, ASHA stops early.

The trial is a thin function over ``gtsrb.train.fit`` with the accuracy recipe
(``gtsrb.config.RECIPE``) on the framed pack (ROI crops and whole frames). On a laptop it runs on a local Ray;
with ``RAY_ADDRESS`` set it joins that cluster and spreads trials over every
node (fractional GPUs per trial where there are GPUs).

    python -m study.tune --data data/gtsrb28-framed.h5 [--profile cpu|gpu] [--smoke-test] [--name NAME]
    python -m study.tune --summarize results/study/NAME     # rewrite the summaries only

Running the same command again after a crash or Ctrl-C continues the same
study (finished trials are kept, errored ones resumed); a new study needs a
new --name. The Optuna study is kept in ``results/study/NAME/optuna.db``
(SQLite) with every trial, pruned ones included, for ``optuna.load_study``,
Optuna's plots and optuna-dashboard.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

from gtsrb.archive import DataError
from gtsrb.config import RECIPE
from gtsrb.validate import fraction, non_negative_float, positive_float, positive_int
from study.cli import ArgumentParser, entry_point, require_pack
from study.records import (
    PROFILE_FILE,
    PROFILES,
    Profile,
    command_line,
    optuna_storage_url,
    profile_record,
    write_json,
)
from study.summary import write_summaries

REPO = Path(__file__).resolve().parents[1]
STUDY_ROOT = REPO / "results" / "study"
METRIC, MODE = "val_accuracy", "max"


def _has_file(checkpoint, name: str) -> bool:
    """Whether a Ray checkpoint (on whatever filesystem Ray stores it) holds the file."""
    import pyarrow.fs

    return checkpoint.filesystem.get_file_info(f"{checkpoint.path}/{name}").type != pyarrow.fs.FileType.NotFound


def train_trial(config: dict, data: str, profile: dict) -> None:
    """One trial: ModelConfig from the trial's parameters, then gtsrb's trainer."""
    import ray
    from ray import tune

    from gtsrb.checkpoint import load_checkpoint
    from gtsrb.config import split_config, TrainConfig
    from gtsrb.train import fit
    from study.space import best_config_json

    ctx = tune.get_context()
    # fit() sets torch's threads to this trial's CPUs.
    cpus = ctx.get_trial_resources().required_resources.get("CPU", 1)
    # What `make train-best` would train from this trial's best_config.json: the accuracy recipe
    # (gtsrb.config.RECIPE, model and training parts) on top of the trial's parameters.
    model_config, train_over = split_config({**best_config_json(config), **RECIPE})
    # The trainer's event files and history live in the trial folder; its
    # checkpoints stay in a scratch folder (Ray keeps its own copy of each one).
    out_dir = Path(ctx.get_trial_dir()) / "train"
    scratch = Path(tempfile.mkdtemp(prefix="gtsrb-trial-"))

    # Resume from Ray's checkpoint (after a failure, or a restored study). A study carried to another
    # machine by git has its checkpoint folders without their weights: its unfinished trials start over.
    resumed_from = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None and _has_file(checkpoint, "last.pt"):
        with checkpoint.as_directory() as d:
            shutil.copy(Path(d) / "last.pt", scratch / "last.pt")
        resumed_from = int(load_checkpoint(scratch / "last.pt")["epoch"])
    elif checkpoint is not None:
        print(f"trial: checkpoint {checkpoint.path} is not on this machine: starting over", file=sys.stderr)
    node_id = ray.get_runtime_context().get_node_id()

    def report(row: dict, ckpt_dir: Path) -> None:
        metrics = {
            "epoch": row["epoch"],
            "val_accuracy": row["val_accuracy"],
            "val_loss": row["val_loss"],
            "val_macro_f1": row["val_macro_f1"],
            "train_loss": row["train_loss"],
            "train_accuracy": row["train_accuracy"],
            "epoch_seconds": row["seconds"],
            "node_id": node_id,
            "resumed_from_epoch": resumed_from,
        }
        with tempfile.TemporaryDirectory(dir=ckpt_dir) as tmp:
            # A hard link, not a copy: Ray copies the file into storage itself.
            os.link(ckpt_dir / "last.pt", Path(tmp) / "last.pt")
            # What git carries of a checkpoint (last.pt is ignored): Ray finds the folder on a fresh
            # clone, and the trial, finding no weights in it, starts over.
            (Path(tmp) / "epoch.json").write_text(json.dumps({"epoch": row["epoch"]}) + "\n")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    train_config = TrainConfig(
        epochs=profile["epochs"],
        train_fraction=profile["train_fraction"],
        val_fraction=profile["val_fraction"],
        threads=max(1, int(cpus)),
        histograms=profile["epochs"] > 2,
        **train_over,
    )
    try:
        fit(model_config, data, out_dir, train_config, resume=resumed_from > 0, on_epoch=report,
            progress=False, checkpoint_dir=scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def init_ray(num_cpus: int | None = None) -> None:
    """Join RAY_ADDRESS's cluster, or start a small local Ray (no dashboard, no usage stats)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # The trials import this repository's packages (and whatever else PYTHONPATH names).
    env_vars = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    runtime_env = {"env_vars": env_vars}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env=runtime_env, log_to_driver=False)
    else:
        ray.init(
            num_cpus=num_cpus,
            object_store_memory=200 * 1024**2,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            runtime_env=runtime_env,
            log_to_driver=False,
        )


def choose_profile(name: str | None, smoke: bool) -> Profile:
    """The named profile; else smoke, or gpu where Ray sees GPUs, or cpu."""
    import ray

    if smoke:
        return PROFILES["smoke"]
    if name:
        return PROFILES[name]
    return PROFILES["gpu" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"]


def study_root() -> Path:
    """Where studies live: results/study, or $STUDY_ROOT (the tests use a temp folder)."""
    return Path(os.environ.get("STUDY_ROOT", STUDY_ROOT)).resolve()


def make_trainable(data: Path, profile: Profile):
    """train_trial with its data, profile and per-trial resources bound."""
    from ray import tune

    resources = {"cpu": profile.cpus_per_trial}
    if profile.gpus_per_trial:
        resources["gpu"] = profile.gpus_per_trial
    return tune.with_resources(tune.with_parameters(train_trial, data=str(data), profile=asdict(profile)), resources)


def build_tuner(trainable, profile: Profile, name: str, seed: int = 0):
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    from study.searcher import PruningOptunaSearch
    from study.space import FIXED_POINTS, define_space

    seen = ray.cluster_resources()
    if profile.gpus_per_trial:
        slots = int(seen.get("GPU", 0) / profile.gpus_per_trial)
    else:
        slots = int(seen.get("CPU", 1) // profile.cpus_per_trial)
    concurrent = max(1, min(profile.max_concurrent or slots, slots))
    study_dir = study_root() / name
    study_dir.mkdir(parents=True, exist_ok=True)
    searcher = PruningOptunaSearch(
        space=define_space,
        metric=METRIC,
        mode=MODE,
        points_to_evaluate=list(FIXED_POINTS.values()),
        sampler=optuna.samplers.TPESampler(seed=seed),
        # Every trial, pruned ones too, in a SQLite file in the study folder. Ray's restore reopens it by
        # this path, so a study is continued where it was started.
        storage=optuna.storages.RDBStorage(optuna_storage_url(study_dir)),
        study_name=name,
        max_t=profile.epochs,
    )
    return tune.Tuner(
        trainable,
        # metric and mode go to the searcher and the scheduler: a define-by-run
        # OptunaSearch takes them only when it is built.
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrent),
            scheduler=ASHAScheduler(metric=METRIC, mode=MODE, time_attr="epoch", max_t=profile.epochs,
                                    grace_period=profile.grace, reduction_factor=2),
            num_samples=profile.trials,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(study_root()),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=2),
            verbose=1,
        ),
    )


def run_study(data: Path, profile: Profile, name: str, seed: int = 0):
    """Start the study, or continue it where a crash or Ctrl-C left it."""
    from ray import tune

    path = study_root() / name
    trainable = make_trainable(data, profile)
    if tune.Tuner.can_restore(str(path)):
        print(f"continuing the study in {path}", file=sys.stderr)
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    else:
        tuner = build_tuner(trainable, profile, name, seed)
    return tuner.fit()


@entry_point("study.tune")
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m study.tune", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO / "data" / "gtsrb28-framed.h5",
                   help="packed HDF5, made with --roi for the recipe (absolute path is used)")
    p.add_argument("--profile", choices=sorted(PROFILES), help="default: gpu where Ray sees GPUs, else cpu")
    p.add_argument("--smoke-test", action="store_true", help="3 short trials: about 3 minutes")
    p.add_argument("--name", help="study name (default: the profile's name); same name = continue")
    p.add_argument("--trials", type=positive_int)
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--cpus-per-trial", type=positive_float)
    p.add_argument("--gpus-per-trial", type=non_negative_float)
    p.add_argument("--train-fraction", type=fraction, help="track-grouped share of the train split")
    p.add_argument("--seed", type=int, default=0, help="TPE sampler seed")
    p.add_argument("--num-cpus", type=positive_int, help="CPUs of a local Ray (default: all)")
    p.add_argument("--summarize", type=Path, metavar="STUDY_DIR", help="only rewrite the summaries of a stored study")
    a = p.parse_args(argv)

    if a.summarize:
        print(write_summaries(a.summarize))
        return 0
    data = a.data.resolve()
    if not data.is_file():
        raise DataError(f"{data}: no packed data (run `make pack` or `gtsrb pack`)")
    require_pack(data, ("train", "val"), frames=RECIPE.get("framing", 0) > 0)
    init_ray(a.num_cpus)
    profile = choose_profile(a.profile, a.smoke_test)
    overrides = {
        k: v for k, v in {
            "trials": a.trials, "epochs": a.epochs, "cpus_per_trial": a.cpus_per_trial,
            "gpus_per_trial": a.gpus_per_trial, "train_fraction": a.train_fraction,
        }.items() if v is not None
    }
    profile = replace(profile, **overrides)
    name = a.name or ("smoke" if a.smoke_test else (a.profile or ("gpu" if profile.gpus_per_trial else "cpu")))
    record = profile_record(profile, data, a.seed, command_line("study.tune", argv))
    print(f"study {name}: {json.dumps(record)}", file=sys.stderr)
    recorded = study_root() / name / PROFILE_FILE
    if not recorded.exists():  # the first run's: a continued study keeps the settings it started with
        write_json(recorded, record)
    results = run_study(data, profile, name, a.seed)
    print(write_summaries(study_root() / name, max_epochs=profile.epochs))
    if results.errors:
        for e in results.errors:
            print(f"study: trial error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
