"""TrainConfig: how a run trains, typed and checked where it is built; the accuracy recipe; and
``split_config``, which turns a flat config (a study's best_config.json, `gtsrb train --config`) into
a ModelConfig and TrainConfig fields. Torch-free apart from the routes' names."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from gtsrb.cpu_routes import ROUTES
from gtsrb.model import PRESETS, ModelConfig
from gtsrb.splits import SPLIT_NAMES
from gtsrb.validate import ConfigError, check_dataclass

PRECISIONS = ("auto", "bf16", "fp32")  # TrainConfig.precision


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3  # peak of the one-cycle schedule
    weight_decay: float = 5e-2  # AdamW's decoupled decay
    pct_start: float = 0.25  # share of steps spent warming up
    augment: bool = True
    augment_strength: float = 1.0  # scales every augmentation range (BatchAugment.with_strength)
    # Robustness augmentations (gtsrb.augment, module doc): the share of images darkened, blurred
    # (Gaussian or motion) and partly covered by a random rectangle. 0: off.
    dark_p: float = 0.0
    blur_p: float = 0.0
    erase_p: float = 0.0
    # The framing augmentation: the share of images cropped between their ROI and their whole frame
    # (the others: the ROI). Needs a pack made with `gtsrb pack --roi --frame-size N`. 0: off.
    framing: float = 0.0
    # Train and validate on a track-grouped, stratified share of each split (1.0: all of it).
    train_fraction: float = 1.0
    val_fraction: float = 1.0
    seed: int = 0
    log_every: int = 25  # steps between per-step TensorBoard points
    histograms: bool = True
    device: str = "auto"  # "auto", "cpu", "cuda"
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    # "auto": bf16 autocast on CUDA and on CPUs that multiply bf16 natively (AMX or
    # AVX-512-BF16), fp32 elsewhere; "bf16" or "fp32" to force one.
    precision: str = "auto"  # one of PRECISIONS
    # NHWC activations and weights: faster than NCHW in every precision on every machine the bench
    # compared them on (results/SPEED.md: variant nchw); False for NCHW.
    channels_last: bool = True
    compile: bool = False  # torch.compile the model (falls back to eager where it cannot)
    # gtsrb.cpu_routes to switch on for a CPU step; (): stock torch.nn modules.
    cpu_routes: tuple[str, ...] = ROUTES
    # The accuracy recipe's pieces (results/REPORT.md: recipe ablation); all off is the old recipe.
    label_smoothing: float = 0.0  # of the training loss (val and test loss stay plain cross-entropy)
    mirror: bool = False  # class-aware horizontal flip, p = 0.5 (gtsrb.classes.mirror_table)
    ema_decay: float = 0.0  # > 0: evaluate and save an exponential moving average of the weights
    balanced: bool = False  # draw each epoch's batches class-balanced (with replacement)
    # The pack splits to train on. ("train", "val", "test") is the official protocol: all
    # 39,209 images, nothing held out, and best.pt is the last epoch's weights.
    train_splits: tuple[str, ...] = ("train",)
    # Cross-validation over the pack's train and val splits together (gtsrb.splits.cv_fold): >= 0
    # validates on that track-grouped fold of ``folds`` and trains on the others; the test split
    # stays out. -1: the pack's own val split.
    fold: int = -1
    folds: int = 5

    def __post_init__(self):
        # One check where every config is built (JSON, CLI, a study, a checkpoint): gtsrb.validate.
        check_dataclass(self, TRAIN_RANGES, "TrainConfig")
        for name, value, allowed in (("precision", self.precision, PRECISIONS),
                                     ("cpu_routes", self.cpu_routes, ROUTES),
                                     ("train_splits", self.train_splits, SPLIT_NAMES)):
            values = value if isinstance(value, tuple) else (value,)
            bad = [v for v in values if v not in allowed]
            if bad or (name == "train_splits" and not values):
                raise ConfigError(f"TrainConfig.{name}: {value!r}: expected {'some' if isinstance(value, tuple) else 'one'} "
                                  f"of {', '.join(allowed)}")
        if not (self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", self.device)):
            raise ConfigError(f"TrainConfig.device: {self.device!r}: expected auto, cpu, cuda or cuda:N")
        if self.fold >= self.folds:
            raise ConfigError(f"TrainConfig.fold: {self.fold} of {self.folds} folds: expected -1 (none) or 0 to {self.folds - 1}")


# field -> (low, high, bounds) for gtsrb.validate.check_dataclass.
TRAIN_RANGES = {
    "epochs": (1, None, "[)"), "batch_size": (1, None, "[)"), "lr": (0.0, None, "()"),
    "weight_decay": (0.0, None, "[)"), "pct_start": (0.0, 1.0, "()"), "augment_strength": (0.0, 1 / 0.3, "[)"),
    "dark_p": (0.0, 1.0, "[]"), "blur_p": (0.0, 1.0, "[]"), "erase_p": (0.0, 1.0, "[]"), "framing": (0.0, 1.0, "[]"),
    "train_fraction": (0.0, 1.0, "(]"), "val_fraction": (0.0, 1.0, "(]"), "seed": (0, None, "[)"),
    "log_every": (1, None, "[)"), "threads": (1, None, "[)"), "label_smoothing": (0.0, 1.0, "[)"),
    "ema_decay": (0.0, 1.0, "[)"), "fold": (-1, None, "[)"), "folds": (2, None, "[)"),
}



# The accuracy recipe (results/REPORT.md, sections 2.1 and 2.2): ModelConfig and TrainConfig fields that
# `gtsrb train --recipe` and `make train-best` put on top of a preset or a study's config. Train it on
# a pack made with `gtsrb pack --roi --frame-size 32`: every training image is cropped at random between
# its annotated ROI and its whole frame (``framing``), so the model reads a tight crop and GTSRB's own
# frame alike; the pack's ROI images are what val and test score. Per-image contrast normalisation and
# the robustness augmentations (darkening, blur, erasing) were measured and left out (section 2.2).
RECIPE: dict = {"mirror": True, "label_smoothing": 0.1, "framing": 1.0}
# The recipe before the framing crop: the base of the cross-validated selection that chose it.
RECIPE_NO_FRAMING: dict = {k: v for k, v in RECIPE.items() if k != "framing"}


def split_config(d: dict) -> tuple[ModelConfig, dict]:
    """A flat config dict -> (ModelConfig, TrainConfig overrides). Unknown keys are an error.

    Keys may be ModelConfig fields, TrainConfig fields, or "preset" (the base model, default
    "seed"). A study's best_config.json and `gtsrb train --config` have this shape.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"config: expected a JSON object of fields, got {type(d).__name__}")
    d = dict(d)
    preset = d.pop("preset", "seed")
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ConfigError(f"config.preset: {preset!r}: expected one of {', '.join(PRESETS)}")
    model_keys = {f.name for f in dataclasses.fields(ModelConfig)}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(d) - model_keys - train_keys
    if unknown:
        raise ConfigError(f"config: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    model = dataclasses.replace(PRESETS[preset], **{k: v for k, v in d.items() if k in model_keys})
    train = {k: v for k, v in d.items() if k in train_keys}
    TrainConfig(**train)  # the train fields' types and ranges, checked here rather than at first use
    return ModelConfig.from_dict(model.to_dict()), train
