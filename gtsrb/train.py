"""fit(model_config, data, out_dir, train_config) -> history.

A plain top-to-bottom loop over in-memory uint8 tensors. Used by the CLI, by a
Ray trial (through ``on_epoch``) and by ``study/train_best.py``.

Recipe, and why:
- AdamW with a one-cycle LR schedule, stepped per batch. The search varies SE
  form, placement and dropout; Adam's per-parameter scaling trains all of them
  without per-config LR tuning, and one-cycle converges within a fixed epoch
  budget and ends at a low LR, so the last epoch is usually the best (which is
  what ASHA compares).
- Augmentation on whole float batches, per-sample random parameters
  (``gtsrb.augment.BatchAugment``: kornia's RandomAffine + ColorJitter
  distribution in a few sync-free ops): small affine jitter (rotation, shift,
  scale, shear), brightness and contrast. Never a blind horizontal flip: it
  turns "keep left" into "keep right".
- The accuracy recipe (``RECIPE``, ``gtsrb train --recipe``; results/REPORT.md
  section 2.1): a class-aware mirror (``mirror_batch``: only classes whose
  mirror image is a class, pairs swap their label) and label smoothing, on a
  ROI-cropped pack. Per-image contrast normalisation (``ModelConfig.input_norm
  = "image"``) was in it until the ablation showed it does not raise val accuracy.

Speed (``make bench`` measures each choice): the data sit on the device as
uint8; no DataLoader; no host sync per step (metrics are computed from the
predictions every ``log_every`` steps, and the augmentation draws its random
parameters on the device); fused AdamW; channels_last; bf16 autocast on CUDA
and on CPUs that multiply bf16 natively (AMX or AVX-512-BF16); on CPU, the
routes of ``gtsrb.cpu_routes`` that the bench showed faster than stock modules.

Outputs under ``out_dir``: TensorBoard event files, ``last.pt`` (every epoch,
atomic), ``best.pt`` (best val accuracy; the last epoch when nothing is held
out), ``history.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from gtsrb.augment import BatchAugment
from gtsrb.classes import mirror_table
from gtsrb.checkpoint import load_checkpoint, save_checkpoint
from gtsrb.data import Packed, load_pack
from gtsrb.metrics import classification_metrics, confusion
from gtsrb.cpu_routes import ROUTES, apply_routes
from gtsrb.model import PRESETS, ModelConfig, build_model, to_float_images
from gtsrb.splits import SPLIT_NAMES, cv_fold, track_subset
from gtsrb.validate import ConfigError, check_dataclass

PRECISIONS = ("auto", "bf16", "fp32")  # TrainConfig.precision
METRIC_NAMES = ("loss", "accuracy", "macro_f1", "macro_precision", "macro_recall")


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



# The accuracy recipe (results/REPORT.md, section 2.1): ModelConfig and TrainConfig fields that
# `gtsrb train --recipe` and `make train-best` put on top of a preset or a study's config. Train it on
# a pack made with `gtsrb pack --roi`: the ROI crop is part of the recipe and a property of the pack.
# Per-image contrast normalisation left it: taking it out raised val accuracy on the quick study's winner
# (3 of 3 paired seeds) and left the release configuration level; ``study.recipe --arms norm`` measures it.
RECIPE: dict = {"mirror": True, "label_smoothing": 0.1}


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"TrainConfig.device: {name!r}, but this machine has no CUDA GPU that torch can use")
    return torch.device(name)


def make_augment(strength: float = 1.0, dark_p: float = 0.0, blur_p: float = 0.0, erase_p: float = 0.0,
                 framing: float = 0.0, out_size: int | None = None) -> nn.Module:
    """Per-sample augmentation on float batches in [0, 1]. No flips (see module doc).
    ``BatchAugment``'s defaults (strength 1.0, robustness stages and framing off) are the recipe."""
    return BatchAugment.with_strength(strength, dark_p=dark_p, blur_p=blur_p, erase_p=erase_p,
                                      framing=framing, out_size=out_size)


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """uint8 (N, H, W, 3) on the model's device -> logits (N, classes), eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = to_float_images(images[i : i + batch_size].to(device, non_blocking=True))
        with _autocast(device):
            out.append(model(x).float())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, model.config.num_classes, device=device)


def cpu_has_native_bf16() -> bool:
    """AMX or AVX-512-BF16: oneDNN multiplies bf16 in hardware (elsewhere bf16 is emulated, and slow).

    The rule behind ``precision="auto"`` on CPU, backed by bench runs (`make bench`) on three CPU
    kinds (results/SPEED.md): bf16 trained faster than fp32 on an Intel Xeon with AMX and on
    an AMD EPYC with AVX-512-BF16, and slower on an AMD EPYC with AVX2 only.
    """
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):  # private API: absent in some torch builds
        return False


def use_bf16(config: "TrainConfig", device: torch.device) -> bool:
    if config.precision not in PRECISIONS:
        raise ValueError(f"precision {config.precision!r}: expected auto, bf16 or fp32")
    if config.precision != "auto":
        return config.precision == "bf16"
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


def _autocast(device: torch.device, bf16: bool | None = None):
    """bf16 autocast (by default on CUDA only); a no-op context otherwise."""
    bf16 = device.type == "cuda" if bf16 is None else bf16
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def evaluate_arrays(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[dict, np.ndarray]:
    """Loss and classification metrics of ``model`` on one split, plus its predictions."""
    logits = predict_logits(model, images)
    labels = labels.to(logits.device)
    loss = F.cross_entropy(logits, labels).item() if len(labels) else 0.0
    pred = logits.argmax(1).cpu().numpy()
    metrics = {"loss": loss, **classification_metrics(labels.cpu().numpy(), pred), "n": len(pred)}
    return metrics, pred


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class TrainStep:
    """augment -> forward -> backward -> optimizer and LR step, on one uint8 batch.

    The one training step: fit() runs it, and so does `make bench`.
    Returns the detached loss and logits (no host sync).
    """

    def __init__(self, model, optimizer, scheduler, augment, device: torch.device, config: TrainConfig,
                 cpu_routes: tuple[str, ...] = ()):
        self.model, self.optimizer, self.scheduler, self.augment = model, optimizer, scheduler, augment
        self.device = device
        self.cpu_routes = cpu_routes  # the gtsrb.cpu_routes applied to the model
        self.bf16 = use_bf16(config, device)
        self.channels_last = config.channels_last
        self.label_smoothing = config.label_smoothing
        # The EMA copy (BN statistics included) is what fit() evaluates and saves.
        self.ema = None
        if config.ema_decay > 0:
            self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
        self.forward = model
        if config.compile:
            self.forward = _compiled(model)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 boxes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.forward is self.model:
            return self._step(images, labels, boxes)
        try:
            return self._step(images, labels, boxes)
        except Exception as e:  # noqa: BLE001 - a compiler bug must not stop training
            # Seen: inductor's conv backward stride check fails with channels_last
            # on CUDA (torch 2.11). The step failed before the optimizer moved.
            warnings.warn(f"torch.compile failed ({type(e).__name__}); training eagerly", stacklevel=2)
            self.forward = self.model
            return self._step(images, labels, boxes)

    def _step(self, images: torch.Tensor, labels: torch.Tensor,
              boxes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_float_images(images)
        with torch.no_grad():
            # With ROI boxes the batch is whole frames, which the augmentation crops (framing).
            x = self.augment(x) if boxes is None else self.augment(x, boxes)
        # The layout the config asks for (the uint8 batch arrives as NHWC, and the augmentation keeps it).
        x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        with _autocast(self.device, self.bf16):
            logits = self.forward(x)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return loss.detach(), logits.detach()


def epoch_order(labels: np.ndarray, n: int, config: TrainConfig, epoch: int) -> torch.Tensor:
    """The ``n`` training indices of one epoch, drawn from (seed, epoch) alone: nothing to save for
    resume. A permutation; with ``config.balanced``, draws in which every class is equally likely."""
    gen = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    if config.balanced:
        weight = 1.0 / np.bincount(labels)[labels]
        return torch.multinomial(torch.from_numpy(weight), n, replacement=True, generator=gen)
    return torch.randperm(len(labels), generator=gen)[:n]


def mirror_batch(images: torch.Tensor, labels: torch.Tensor, table: torch.Tensor,
                 boxes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-aware horizontal flip of a uint8 (N, H, W, 3) batch, p = 0.5 per image.

    ``table`` maps a class to the class of its mirror image (-1: none, never flipped), so a
    symmetric sign keeps its label and "keep right" becomes "keep left". ``boxes`` (N, 4 fractions
    x1, y1, x2, y2), where given, are flipped with their frames in place."""
    target = table[labels]
    flip = (target >= 0) & (torch.rand(len(labels), device=labels.device) < 0.5)
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(2), images)
    if boxes is not None:
        mirrored = torch.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], dim=1)
        boxes.copy_(torch.where(flip.view(-1, 1), mirrored, boxes))
    return images, torch.where(flip, target, labels)


def _compiled(model: nn.Module):
    """torch.compile where it works; the eager model where it cannot (no compiler, ...)."""
    try:
        return torch.compile(model)
    except Exception:  # noqa: BLE001 - any failure to set up compile falls back to eager
        return model


def make_train_step(
    model_config: ModelConfig, config: TrainConfig, steps_per_epoch: int, device: torch.device | None = None
) -> TrainStep:
    """Seed the RNGs, build model, AdamW, one-cycle schedule and augmentation."""
    device = device or resolve_device(config.device)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)
    model = build_model(model_config).to(device)
    routes: tuple[str, ...] = ()
    if device.type == "cpu":
        routes = tuple(config.cpu_routes)
        apply_routes(model, routes)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    augment = (make_augment(config.augment_strength, config.dark_p, config.blur_p, config.erase_p,
                            config.framing, model_config.image_size).to(device)
               if config.augment else nn.Identity())
    # fused: one kernel over all parameters; on CPU the default per-tensor loop took
    # a tenth of each step.
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
    # OneCycleLR divides by the warm-up's length in steps, pct_start * total - 1: zero (a crash) when
    # the warm-up is exactly one step, as in a tiny run. Half a step more keeps the same shape.
    pct_start = config.pct_start
    if math.isclose(pct_start * config.epochs * steps_per_epoch, 1.0):
        pct_start = 1.5 / (config.epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, epochs=config.epochs, steps_per_epoch=steps_per_epoch, pct_start=pct_start,
    )
    return TrainStep(model, optimizer, scheduler, augment, device, config, routes)


def fit(
    model_config: ModelConfig,
    data: Packed | str | os.PathLike,
    out_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    resume: bool = False,
    on_epoch: Callable[[dict, Path], None] | None = None,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
) -> list[dict]:
    """Train on the pack's train split, validate on its val split, one history row per epoch.

    ``on_epoch(row, checkpoint_dir)`` runs after each epoch's checkpoint is
    written; ``row`` holds the epoch, train_* and val_* metrics, the LR and the
    time. Checkpoints go to ``checkpoint_dir`` (default: ``out_dir``; a Ray trial
    keeps them out of its synced folder).
    With ``resume`` the run continues from ``out_dir/last.pt`` and, on CPU,
    ends exactly where an uninterrupted run ends.
    """
    config = config or TrainConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    pack_path = None
    if not isinstance(data, Packed):
        pack_path = Path(data).resolve()
        data = load_pack(pack_path)
    where = pack_path or "the pack"
    if model_config.num_classes != len(data.class_names):
        raise ConfigError(f"ModelConfig.num_classes: {model_config.num_classes}, but {where} has "
                          f"{len(data.class_names)} classes")
    if int(data.attrs.get("size", model_config.image_size)) != model_config.image_size:
        raise ConfigError(f"ModelConfig.image_size: {model_config.image_size} px, but {where} is packed at "
                          f"{data.attrs.get('size')} px")
    train, val = training_splits(data, config)
    # Data lives on the device as one uint8 tensor per split. Framing trains on the whole frames (and
    # their ROI boxes), cropped by the augmentation; val stays the pack's images.
    framing = config.framing > 0
    if framing and train.frames is None:
        raise ValueError(f"{pack_path or 'the pack'}: framing {config.framing} needs whole frames; "
                         f"pack with `gtsrb pack --roi --frame-size 32`")
    if framing and not config.augment:
        raise ValueError(f"framing {config.framing}: the framing crop is part of the augmentation; needs augment=True")
    x_train, y_train, x_val, y_val = (torch.from_numpy(a).to(device) for a in (
        train.frames if framing else train.images, train.labels, val.images, val.labels))
    boxes_train = torch.from_numpy(train.boxes).to(device) if framing else None
    steps_per_epoch = max(1, len(y_train) // config.batch_size)  # drop the ragged last batch
    train_step = make_train_step(model_config, config, steps_per_epoch, device)
    model, scheduler = train_step.model, train_step.scheduler
    eval_model = train_step.ema.module if train_step.ema is not None else model  # validated and saved
    mirror = torch.tensor(mirror_table(), device=device) if config.mirror else None
    ckpts = RunCheckpoints(Path(checkpoint_dir) if checkpoint_dir is not None else out_dir, train_step,
                           _run_meta(model_config, config, data, pack_path, train_step), keep_best=len(y_val) > 0)
    history = ckpts.resume(model_config) if resume else []
    start_epoch = len(history) + 1
    log = TrainLog(out_dir, config, step=(start_epoch - 1) * steps_per_epoch, resumed=start_epoch > 1)

    for epoch in range(start_epoch, config.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = epoch_order(train.labels, steps_per_epoch * config.batch_size, config, epoch).to(device)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{config.epochs}", disable=not progress, leave=False)
        for i in bar:
            idx = order[i * config.batch_size : (i + 1) * config.batch_size]
            x, y = x_train[idx], y_train[idx]
            boxes = boxes_train[idx] if boxes_train is not None else None
            if mirror is not None:
                x, y = mirror_batch(x, y, mirror, boxes)
            loss, logits = train_step(x, y, boxes)
            log.step(loss, logits, y, scheduler.get_last_lr()[0], bar, flush=i == steps_per_epoch - 1)

        train_m = log.epoch_train_metrics()
        val_m = evaluate_arrays(eval_model, x_val, y_val)[0] if len(y_val) else dict.fromkeys(METRIC_NAMES, 0.0)
        seconds = time.perf_counter() - t0
        row = {
            "epoch": epoch,
            **{f"train_{k}": train_m[k] for k in METRIC_NAMES},
            **{f"val_{k}": float(val_m[k]) for k in METRIC_NAMES},
            "lr": scheduler.get_last_lr()[0],
            "seconds": seconds,
            "images_per_s": steps_per_epoch * config.batch_size / seconds,
        }
        history.append(row)
        log.epoch(epoch, train_m, val_m, row["lr"], model)
        ckpts.save(epoch, history)
        (out_dir / "history.json").write_text(json.dumps(history, indent=1))
        if progress:
            held_out = (f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f} f1 {row['val_macro_f1']:.4f}"
                        if len(y_val) else "nothing held out (no val split)")
            tqdm.write(
                f"epoch {epoch}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | "
                f"{held_out} | {seconds:.0f} s, {row['images_per_s']:.0f} img/s"
            )
        if on_epoch is not None:
            on_epoch(row, ckpts.dir)

    if history and start_epoch <= config.epochs:
        _final_logs(log.writer, ckpts.dir, eval_model, x_val, y_val, data.class_names, ckpts.meta, history)
    log.writer.close()
    return history


def training_splits(data: Packed, config: TrainConfig) -> tuple[Packed, Packed]:
    """(train, val) as the config asks: the named train splits, val held out unless trained on
    (then empty), each cut to its fraction by whole tracks."""
    unknown = set(config.train_splits) - set(SPLIT_NAMES)
    if unknown or not config.train_splits:
        raise ValueError(f"train_splits {config.train_splits!r}: expected some of {', '.join(SPLIT_NAMES)}")
    if config.fold >= 0:
        if tuple(config.train_splits) != ("train",):
            raise ValueError(f"fold {config.fold}: cross-validation re-splits train and val; train_splits must be "
                             f"('train',), got {config.train_splits!r}")
        pool = data.take(np.isin(data.split, [SPLIT_NAMES.index("train"), SPLIT_NAMES.index("val")]))
        held = cv_fold(pool.labels, pool.groups, config.fold, config.folds, seed=int(data.attrs.get("seed", 0)))
        train, val = pool.take(~held), pool.take(held)
    else:
        train = data.take(np.isin(data.split, [SPLIT_NAMES.index(s) for s in config.train_splits]))
        val = data.subset("val") if "val" not in config.train_splits else data.take(np.zeros(0, np.int64))
    train = train.take(track_subset(train.labels, train.groups, config.train_fraction, config.seed))
    if len(val.labels):
        val = val.take(track_subset(val.labels, val.groups, config.val_fraction, config.seed))
    if len(train.labels) == 0:
        raise ValueError("the pack has no train split")
    return train, val


def data_fingerprint(data: Packed) -> str:
    """A short digest of what a run trains and validates on (labels, splits, file names, a sample of
    pixels): resume compares it, so a run never continues on another pack."""
    h = hashlib.sha256()
    for a in (data.labels, data.split, data.images[:: max(1, len(data.images) // 64)]):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update("\n".join(data.filenames).encode())
    return h.hexdigest()[:16]


def _run_meta(model_config: ModelConfig, config: TrainConfig, data: Packed, pack_path: Path | None,
              train_step: TrainStep) -> dict:
    """What every checkpoint of the run carries besides its weights."""
    return {
        "model_config": model_config.to_dict(),
        "train_config": dataclasses.asdict(config),
        "data": {"path": str(pack_path) if pack_path else None, **{k: _plain(v) for k, v in data.attrs.items()},
                 "fingerprint": data_fingerprint(data)},
        "class_names": list(data.class_names),
        # What "auto" resolved to on this machine.
        "runtime": {
            "device": str(train_step.device),
            "precision": "bf16" if train_step.bf16 else "fp32",
            "channels_last": train_step.channels_last,
            "cpu_routes": list(train_step.cpu_routes),
        },
    }


# TrainConfig fields a resumed run may change: they do not change what is trained.
RESUME_MAY_CHANGE = ("threads", "log_every", "histograms")


class RunCheckpoints:
    """``last.pt`` every epoch (everything resume needs, the best epoch's weights included) and
    ``best.pt`` (weights of the best val epoch; with nothing held out, of the last), both written
    atomically, ``last.pt`` first. Because ``last.pt`` carries the best weights, resume rewrites
    ``best.pt`` from it: whenever a kill came, ``best.pt`` ends as the epoch the history calls best."""

    def __init__(self, folder: Path, train_step: TrainStep, meta: dict, keep_best: bool):
        self.dir, self.train_step, self.meta, self.keep_best = folder, train_step, meta, keep_best
        self.best_acc = -1.0
        self.best: tuple[int, dict] | None = None  # (epoch, weights) of the best epoch so far
        folder.mkdir(parents=True, exist_ok=True)
        for orphan in folder.glob(".*.pt.tmp-*"):  # left by a kill during a checkpoint write
            orphan.unlink(missing_ok=True)

    def _weights(self) -> dict:
        """The weights that are validated and served: the EMA where there is one."""
        ts = self.train_step
        return (ts.ema.module if ts.ema is not None else ts.model).state_dict()

    def check_same_run(self, ckpt: dict, path: Path) -> None:
        """ConfigError naming what differs when ``last.pt`` was written by another run than this one
        (model, training options, data): a resumed run must be the run it continues."""
        if ModelConfig.from_dict(ckpt["model_config"]) != ModelConfig.from_dict(self.meta["model_config"]):
            raise ConfigError(f"{path}: its model config differs from this run's; train into a new --out")
        then, now = ckpt.get("train_config", {}), self.meta["train_config"]
        changed = sorted(k for k in set(then) | set(now)
                         if k not in RESUME_MAY_CHANGE and _plain_json(then.get(k)) != _plain_json(now.get(k)))
        if changed:
            detail = ", ".join(f"{k} {then.get(k)!r} -> {now.get(k)!r}" for k in changed)
            raise ConfigError(f"{path}: --resume of a run trained with other options ({detail}); "
                              f"the schedule and data order depend on them: train into a new --out")
        then_fp, now_fp = ckpt.get("data", {}).get("fingerprint"), self.meta["data"].get("fingerprint")
        if then_fp is not None and then_fp != now_fp:
            raise ConfigError(f"{path}: --resume with another pack than the run's "
                              f"({ckpt['data'].get('path')}); train into a new --out")

    def resume(self, model_config: ModelConfig) -> list[dict]:
        """Load last.pt into the step (model, EMA, optimizer, schedule, RNG) and rewrite best.pt from
        it; its history, or []."""
        path = self.dir / "last.pt"
        if not path.exists():
            return []
        ts = self.train_step
        ckpt = load_checkpoint(path, map_location=ts.device)
        self.check_same_run(ckpt, path)
        ts.model.load_state_dict(ckpt["train_model"] if ts.ema is not None else ckpt["model"])
        if ts.ema is not None:
            ts.ema.load_state_dict(ckpt["ema"])
        ts.optimizer.load_state_dict(ckpt["optimizer"])
        ts.scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"], ts.device)
        history = list(ckpt["history"])
        if "best_epoch" in ckpt:
            self.best = (ckpt["best_epoch"], ckpt.get("best_model", ckpt["model"]))
        else:  # a last.pt without the best weights: its own epoch is the best it can vouch for
            self.best = (ckpt["epoch"], ckpt["model"])
        self.best_acc = history[self.best[0] - 1]["val_accuracy"]
        self._write_best(history)
        return history

    def save(self, epoch: int, history: list[dict]) -> None:
        ts = self.train_step
        weights = self._weights()
        improved = history[-1]["val_accuracy"] > self.best_acc or not self.keep_best
        if improved:
            self.best_acc = history[-1]["val_accuracy"]
            self.best = (epoch, {k: v.detach().clone() for k, v in weights.items()})
        best_epoch, best_weights = self.best
        save_checkpoint({
            **self.meta,
            "model": weights,
            **({"train_model": ts.model.state_dict(), "ema": ts.ema.state_dict()} if ts.ema is not None else {}),
            "optimizer": ts.optimizer.state_dict(),
            "scheduler": ts.scheduler.state_dict(),
            "rng": _rng_state(ts.device),
            "epoch": epoch,
            "history": history,
            "best_epoch": best_epoch,
            **({"best_model": best_weights} if best_epoch != epoch else {}),
        }, self.dir / "last.pt")
        if improved:
            self._write_best(history)

    def _write_best(self, history: list[dict]) -> None:
        epoch, weights = self.best
        save_checkpoint({**self.meta, "model": weights, "epoch": epoch, "history": history[:epoch]},
                        self.dir / "best.pt")


def _plain_json(v):
    """A config value as JSON would hold it (tuples and lists alike)."""
    return json.loads(json.dumps(v))


class TrainLog:
    """TensorBoard for one run: per-step train metrics over windows of ``log_every`` steps (the
    predictions stay on the device until a window is written), per-epoch metrics, LR, histograms."""

    def __init__(self, out_dir: Path, config: TrainConfig, step: int, resumed: bool):
        from torch.utils.tensorboard import SummaryWriter

        self.config, self.global_step = config, step
        # purge_step drops events a killed run wrote after its last checkpoint.
        self.writer = SummaryWriter(str(out_dir), purge_step=step if resumed else None)
        self._window: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._epoch_losses: list[torch.Tensor] = []
        self._epoch_preds: list[tuple[np.ndarray, np.ndarray]] = []

    def step(self, loss, logits, labels, lr: float, bar, flush: bool) -> None:
        self.global_step += 1
        self._window.append((loss, logits.argmax(1), labels))
        if self.global_step % self.config.log_every and not flush:
            return
        losses = torch.stack([w[0] for w in self._window])
        pred = torch.cat([w[1] for w in self._window]).cpu().numpy()
        true = torch.cat([w[2] for w in self._window]).cpu().numpy()
        m = {"loss": losses.mean().item(), **classification_metrics(true, pred)}
        _log(self.writer, "train/step", m, self.global_step)
        self.writer.add_scalar("lr/step", lr, self.global_step)
        bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['accuracy']:.3f}")
        self._epoch_losses.append(losses)
        self._epoch_preds.append((pred, true))
        self._window = []

    def epoch_train_metrics(self) -> dict:
        """The epoch's train metrics from the accumulated predictions; starts the next epoch."""
        m = {"loss": torch.cat(self._epoch_losses).mean().item(),
             **classification_metrics(np.concatenate([t for _, t in self._epoch_preds]),
                                      np.concatenate([p for p, _ in self._epoch_preds]))}
        self._epoch_losses, self._epoch_preds = [], []
        return m

    def epoch(self, epoch: int, train_m: dict, val_m: dict, lr: float, model: nn.Module) -> None:
        _log(self.writer, "train/epoch", train_m, epoch)
        _log(self.writer, "val/epoch", val_m, epoch)
        _log(self.writer, "val/step", val_m, self.global_step)  # val against the step axis, beside train/step
        self.writer.add_scalar("lr/epoch", lr, epoch)
        if self.config.histograms:
            for name, module in model.named_modules():
                if isinstance(module, nn.Conv2d):
                    self.writer.add_histogram(f"weights/{name}", module.weight, epoch)
                    if module.weight.grad is not None:
                        self.writer.add_histogram(f"grads/{name}", module.weight.grad, epoch)
        self.writer.flush()


def _final_logs(writer, ckpt_dir, model, x_val, y_val, class_names, meta, history) -> None:
    """hparams and a confusion-matrix figure of the best-by-val weights."""
    from gtsrb.plots import confusion_figure

    best = load_checkpoint(ckpt_dir / "best.pt", map_location=x_val.device)
    model.load_state_dict(best["model"])
    if len(y_val):
        _, pred = evaluate_arrays(model, x_val, y_val)
        cm = confusion(y_val.cpu().numpy(), pred, len(class_names))
        writer.add_figure("val/confusion_matrix", confusion_figure(cm, class_names, "val split, best epoch"), best["epoch"])
    hparams = {f"model/{k}": _hparam(v) for k, v in meta["model_config"].items() if k not in ("cfg",)}
    hparams |= {f"train/{k}": _hparam(v) for k, v in meta["train_config"].items()}
    best_row = max(history, key=lambda h: h["val_accuracy"])
    writer.add_hparams(
        hparams,
        {"hparam/best_val_accuracy": best_row["val_accuracy"], "hparam/best_val_macro_f1": best_row["val_macro_f1"]},
        run_name=".",
    )


def _log(writer, prefix: str, metrics: dict, step: int) -> None:
    for k in METRIC_NAMES:
        writer.add_scalar(f"{prefix}/{k}", float(metrics[k]), step)


def _hparam(v):
    return v if isinstance(v, (int, float, str, bool)) else str(v)


def _plain(v):
    """HDF5 attribute -> a plain Python value a safe checkpoint can hold."""
    if isinstance(v, np.generic):
        return v.item()
    return v
