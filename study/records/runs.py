"""The training-run experiments' records: the SE ablation (`make ablation`, ``results/ablation*/<arm>-seed<k>.json``,
study/ablation.py writes them) and the recipe ablation (`make recipe`, ``results/recipe/<name>/<arm>-seed<k>.json``,
and ``<arm>-fold<k>.json`` under cross-validation; study/recipe.py writes them); the arms' names and colours, and
which folder holds the SE ablation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from study.records.files import Fields, RecordError, read_json

ARM_LABELS = {"seed": "seed preset (SE on all 5 stages)", "no_se": "no SE (plain VGG-11)",
              "incumbent": "incumbent (quick study's winner)",
              "best": "study best config", "top1": "study's best config", "top2": "study's 2nd config",
              "top3": "study's 3rd config", "seed_random": "seed preset, random split"}
# One colour per arm wherever an arm is drawn (the Study tab's charts, REPORT.md's figure), so a reader who
# has learnt an arm's colour in one finds it in the other. The order is the order arms are drawn in.
ARM_COLORS = {"seed": "#f58518", "no_se": "#7f7f7f", "incumbent": "#e45756", "best": "#4c78a8", "top1": "#4c78a8",
              "top2": "#54a24b", "top3": "#b279a2"}
TOP = ("top1", "top2", "top3")
# The study trains every trial with seed 0 (study.ablation), so a top arm's seed-0 run is the very run
# that ranked it among the top 3: chosen for its high val, it flatters the arm (the winner's curse).
PICKED_ON_SEED = 0
# `--precision` of study.ablation and study.recipe: paired runs must share it.
PRECISION_HELP = ("the training step's precision (auto: bf16 where the CPU multiplies it natively). A run added "
                  "on another machine passes its pairs' precision: fp32 beside runs made without bf16")
PROTOCOLS = ("split", "cv")  # study.recipe --protocol: validate on the pack's val split, or on fold k


def ablation_folder(results: Path = Path("results")) -> Path:
    """The SE ablation to show: ``results/ablation-framed`` (``make ablation``: the recipe that ships) once it
    holds a run; else ``results/ablation`` (the same budget under the recipe before the framing crop); else
    the quick ablation that came before both, ``results/ablation-quick``."""
    for folder in (results / "ablation-framed", results / "ablation"):
        if any(folder.glob("*-seed*.json")):
            return folder
    quick = results / "ablation-quick"
    return quick if quick.is_dir() else results / "ablation-framed"


def record_path(folder: Path, arm: str, seed: int, protocol: str = "split") -> Path:
    """Where a run's record lives: ``<folder>/<arm>-seed<k>.json``, or ``<arm>-fold<k>.json`` under cv."""
    return Path(folder) / f"{arm}-{'fold' if protocol == 'cv' else 'seed'}{seed}.json"


def ablation_files(folder: Path) -> list[Path]:
    """The SE ablation's records in ``folder``, in name order."""
    return sorted(Path(folder).glob("*-seed*.json"))


def recipe_files(folder: Path, protocol: str = "split") -> list[Path]:
    """One recipe folder's records of ``protocol`` (split: ``*-seed*.json``, cv: ``*-fold*.json``), in name order."""
    return sorted(Path(folder).glob("*-fold*.json" if protocol == "cv" else "*-seed*.json"))


class _Record:
    _SOURCE: ClassVar[dict[str, str]] = {}  # attribute -> the field's dotted path in the file

    path: Path

    def need(self, name: str):
        """The attribute ``name``; a RecordError naming the file and the field when the record lacks it."""
        value = getattr(self, name)
        if value is None:
            source = self._SOURCE.get(name, name)
            raise RecordError(self.path, f"`{source}` missing", source)
        return value


def _machine(f: Fields):
    value = f.obj.get("machine")
    if value is not None and not isinstance(value, (dict, str)):
        raise RecordError(f.path, "`machine` is neither an object nor a string", "machine")
    return value


def _history(f: Fields, required: bool) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """(epoch, val accuracy) of each history entry; an entry without its epoch number is the next epoch."""
    history = f.get("history", "list", required=required) or []
    if required and not history:
        raise RecordError(f.path, "`history` is empty (not one epoch)", "history")
    epochs, curve = [], []
    for i, entry in enumerate(history):
        e = Fields(f.path, entry, "an epoch's result", f"history[{i}].")
        epoch = e.get("epoch", "int")
        epochs.append(i + 1 if epoch is None else epoch)
        curve.append(e.get("val_accuracy", "number", required=True))
    return tuple(epochs), tuple(curve)


@dataclass(frozen=True)
class AblationRecord(_Record):
    """One run of the SE ablation. Only arm, seed and the val curve are in every record; the rest is None
    where a record (an older one, the quick ablation's) does not hold it: ``need`` says so by name."""

    path: Path
    arm: str
    seed: int
    epochs: tuple[int, ...]  # the epoch of each history entry
    val_curve: tuple[float, ...]  # val accuracy after each epoch; the last is the run's final val
    split_kind: str | None = None  # track or random: the pack's split
    test_accuracy: float | None = None
    test_macro_f1: float | None = None
    test_n: int | None = None
    test_ece: float | None = None
    test_at: str | None = None  # which weights were tested; absent: the best-val epoch's (the quick ablation)
    test_full_frame_accuracy: float | None = None  # the same test images uncropped (--full-frame-data)
    recipe: dict | None = None  # the recipe's overrides it trained with; absent: none (the old recipe)
    config: dict | None = None  # the arm's flat configuration
    train_epochs: int | None = None  # the schedule's length
    train_fraction: float | None = None
    val_fraction: float | None = None
    lr: float | None = None
    weight_decay: float | None = None
    se_stages: tuple[bool, ...] | None = None
    se_form: str | None = None
    se_position: str | None = None
    conv_dropout: float | None = None
    classifier_dropout: float | None = None
    wall_seconds: float | None = None  # this process (one sitting)
    train_seconds: float | None = None  # every epoch's training, those adopted from a study trial included
    adopted_epochs: int = 0  # epochs continued from the study's own trial (study.ablation adopts its checkpoint)
    machine: dict | str | None = None
    command: str | None = None

    _SOURCE: ClassVar[dict[str, str]] = {
        "test_accuracy": "test.accuracy", "test_macro_f1": "test.macro_f1", "test_n": "test.n",
        "test_ece": "test.ece", "train_epochs": "train_config.epochs", "train_fraction": "train_config.train_fraction",
        "val_fraction": "train_config.val_fraction", "lr": "train_config.lr", "weight_decay": "train_config.weight_decay",
        "se_stages": "model_config.se_stages", "se_form": "model_config.se_form",
        "se_position": "model_config.se_position", "conv_dropout": "model_config.conv_dropout",
        "classifier_dropout": "model_config.classifier_dropout"}


def read_ablation_record(path: Path) -> AblationRecord:
    """One ``<arm>-seed<k>.json`` of the SE ablation; RecordError naming the file and the field when it is
    malformed."""
    f = Fields(path, read_json(path), "an ablation record")
    epochs, curve = _history(f, required=True)
    test, train, model = f.sub("test", "test scores"), f.sub("train_config", "a TrainConfig"), \
        f.sub("model_config", "a ModelConfig")
    stages = model.get("se_stages", "list")
    if stages is not None and not all(isinstance(s, bool) for s in stages):
        raise RecordError(path, "`model_config.se_stages` is not a list of true/false", "model_config.se_stages")
    adopted = f.sub("adopted", "the adopted study trial")
    return AblationRecord(
        path=Path(path), arm=f.get("arm", "str", required=True), seed=f.get("seed", "int", required=True),
        epochs=epochs, val_curve=curve, split_kind=f.get("split_kind", "str"),
        test_accuracy=test.get("accuracy", "number"), test_macro_f1=test.get("macro_f1", "number"),
        test_n=test.get("n", "int"), test_ece=test.get("ece", "number"), test_at=f.get("test_at", "str"),
        test_full_frame_accuracy=test.sub("full_frame", "full-frame test scores").get("accuracy", "number"),
        recipe=f.get("recipe", "object"), config=f.get("config", "object"),
        train_epochs=train.get("epochs", "int"), train_fraction=train.get("train_fraction", "number"),
        val_fraction=train.get("val_fraction", "number"), lr=train.get("lr", "number"),
        weight_decay=train.get("weight_decay", "number"),
        se_stages=None if stages is None else tuple(stages), se_form=model.get("se_form", "str"),
        se_position=model.get("se_position", "str"), conv_dropout=model.get("conv_dropout", "number"),
        classifier_dropout=model.get("classifier_dropout", "number"),
        wall_seconds=f.get("wall_seconds", "number"), train_seconds=f.get("train_seconds", "number"),
        adopted_epochs=adopted.get("epochs", "int") or 0, machine=_machine(f), command=f.get("command", "str"))


def read_ablation(folder: Path) -> list[AblationRecord]:
    """Every record of an SE ablation folder, in file-name order; the first malformed one raises."""
    return [read_ablation_record(p) for p in ablation_files(folder)]


@dataclass(frozen=True)
class RecipeRecord(_Record):
    """One run of the recipe ablation, scored at its last epoch. Arm, seed, protocol and the two accuracies
    are in every record; the rest is None where a record does not hold it (``need`` says so by name)."""

    path: Path
    arm: str
    seed: int  # under cv also the fold it validated on
    protocol: str  # split or cv
    val_accuracy: float  # on the run's own val split (its fold under cv)
    test_accuracy: float
    preset: str | None = None  # seed, or best (a config file's)
    name: str | None = None  # the records' folder: one configuration
    config_file: str | None = None  # the config of preset best
    base: str | None = None  # the recipe the arms are measured against (study.recipe.BASES); absent: no_framing
    overrides: dict | None = None  # the arm's config overrides on top of the preset
    test_n: int | None = None
    train_epochs: int | None = None
    folds: int | None = None
    val_curve: tuple[float, ...] = ()
    train_seconds: float | None = None
    wall_seconds: float | None = None
    raw_val_accuracy: float | None = None  # an EMA run's raw (trained) weights
    raw_test_accuracy: float | None = None
    full_frame_val_accuracy: float | None = None  # the same images uncropped
    full_frame_test_accuracy: float | None = None
    wrong: dict | None = None  # split -> the file names the last epoch's weights got wrong
    full_frame_wrong: dict | None = None
    tta: dict | None = None  # the four accuracies again with test-time augmentation (study.recipe --rescore --tta)
    machine: dict | str | None = None
    command: str | None = None

    _SOURCE: ClassVar[dict[str, str]] = {
        "test_n": "test.n", "train_epochs": "train_config.epochs", "folds": "train_config.folds",
        "raw_val_accuracy": "raw.val_accuracy", "raw_test_accuracy": "raw.test_accuracy"}


def _file_lists(f: Fields, key: str) -> dict | None:
    value = f.get(key, "object")
    for split, names in (value or {}).items():
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise RecordError(f.path, f"`{key}.{split}` is not a list of file names", f"{key}.{split}")
    return value


def read_recipe_record(path: Path) -> RecipeRecord:
    """One ``<arm>-seed<k>.json`` or ``<arm>-fold<k>.json`` of the recipe ablation; RecordError naming the file
    and the field when it is malformed."""
    f = Fields(path, read_json(path), "a recipe record")
    protocol = f.get("protocol", "str") or ("cv" if "-fold" in Path(path).name else "split")
    if protocol not in PROTOCOLS:
        raise RecordError(path, f"`protocol` is {protocol!r}, not one of {', '.join(PROTOCOLS)}", "protocol")
    test, train, raw, tta = (f.sub("test", "test scores"), f.sub("train_config", "a TrainConfig"),
                             f.sub("raw", "the raw weights' scores"), f.sub("tta", "the scores with TTA"))
    return RecipeRecord(
        path=Path(path), arm=f.get("arm", "str", required=True), seed=f.get("seed", "int", required=True),
        protocol=protocol, val_accuracy=f.get("val_accuracy", "number", required=True),
        test_accuracy=test.get("accuracy", "number", required=True), preset=f.get("preset", "str"),
        name=f.get("name", "str"), config_file=f.get("config_file", "str"), base=f.get("base", "str"),
        overrides=f.get("overrides", "object"), test_n=test.get("n", "int"), train_epochs=train.get("epochs", "int"),
        folds=train.get("folds", "int"), val_curve=_history(f, required=False)[1],
        train_seconds=f.get("train_seconds", "number"), wall_seconds=f.get("wall_seconds", "number"),
        raw_val_accuracy=raw.get("val_accuracy", "number"), raw_test_accuracy=raw.get("test_accuracy", "number"),
        full_frame_val_accuracy=f.get("full_frame_val_accuracy", "number"),
        full_frame_test_accuracy=f.get("full_frame_test_accuracy", "number"),
        wrong=_file_lists(f, "wrong"), full_frame_wrong=_file_lists(f, "full_frame_wrong"),
        tta=({k: tta.get(k, "number") for k in tta.obj} or None), machine=_machine(f), command=f.get("command", "str"))


def read_recipe(folder: Path, protocol: str = "split") -> list[RecipeRecord]:
    """Every record of ``protocol`` in one recipe folder (one configuration), in file-name order; the first
    malformed one raises."""
    return [read_recipe_record(p) for p in recipe_files(folder, protocol)]
