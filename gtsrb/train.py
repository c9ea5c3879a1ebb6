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
  sections 2.1 and 2.2): a class-aware mirror (``mirror_batch``: only classes whose
  mirror image is a class, pairs swap their label), label smoothing, and the
  framing crop (each training image cropped at random between its ROI and its
  whole frame, ``BatchAugment``), on a pack made with ``--roi --frame-size 32``.
  Per-image contrast normalisation (``ModelConfig.input_norm = "image"``) is not
  in it: the ablation showed it does not raise val accuracy.

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

import json
import math
import os
import random
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from gtsrb.augment import BatchAugment
from gtsrb.checkpoint import load_checkpoint
from gtsrb.classes import mirror_table
from gtsrb.config import PRECISIONS, TrainConfig
from gtsrb.cpu_routes import apply_routes
from gtsrb.data import Packed, load_pack
from gtsrb.metrics import METRIC_NAMES, classification_metrics
from gtsrb.model import ModelConfig, build_model, to_float_images
from gtsrb.runfiles import RunCheckpoints, TrainLog, run_meta
from gtsrb.splits import SPLIT_NAMES, cv_fold, track_subset
from gtsrb.validate import ConfigError

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
        raise ConfigError(f"TrainConfig.framing: {config.framing} needs whole frames, and {where} has none; "
                          f"pack with `gtsrb pack --roi --frame-size 32`")
    if framing and not config.augment:
        raise ConfigError(f"TrainConfig.framing: {config.framing}: the framing crop is part of the augmentation; "
                          f"needs augment=True")
    x_train, y_train, x_val, y_val = (torch.from_numpy(a).to(device) for a in (
        train.frames if framing else train.images, train.labels, val.images, val.labels))
    boxes_train = torch.from_numpy(train.boxes).to(device) if framing else None
    steps_per_epoch = max(1, len(y_train) // config.batch_size)  # drop the ragged last batch
    train_step = make_train_step(model_config, config, steps_per_epoch, device)
    model, scheduler = train_step.model, train_step.scheduler
    eval_model = train_step.ema.module if train_step.ema is not None else model  # validated and saved
    mirror = torch.tensor(mirror_table(), device=device) if config.mirror else None
    ckpts = RunCheckpoints(Path(checkpoint_dir) if checkpoint_dir is not None else out_dir, train_step,
                           run_meta(model_config, config, data, pack_path, train_step), keep_best=len(y_val) > 0)
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
        # The confusion figure is of the best-by-val weights: the ones best.pt serves.
        best = load_checkpoint(ckpts.dir / "best.pt", map_location=device)
        eval_model.load_state_dict(best["model"])
        pred = evaluate_arrays(eval_model, x_val, y_val)[1] if len(y_val) else None
        log.final(ckpts.meta, history, best["epoch"], y_val.cpu().numpy(), pred, data.class_names)
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
