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
  scale, shear), brightness and contrast. Never a horizontal flip: it turns
  "keep left" into "keep right".

Speed (``gtsrb bench`` measures each choice): the data sit on the device as
uint8; no DataLoader; no host sync per step (metrics are computed from the
predictions every ``log_every`` steps, and the augmentation draws its random
parameters on the device); fused AdamW; channels_last; bf16 autocast on CUDA
and on CPUs that multiply bf16 natively (AMX or AVX-512-BF16); on CPU, the
routes of ``gtsrb.cpu_routes`` that the bench showed faster than stock modules.

Outputs under ``out_dir``: TensorBoard event files, ``last.pt`` (every epoch,
atomic), ``best.pt`` (best val accuracy), ``history.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
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
from gtsrb.splits import SPLIT_NAMES, track_subset

METRIC_NAMES = ("loss", "accuracy", "macro_f1", "macro_precision", "macro_recall")


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3  # peak of the one-cycle schedule
    weight_decay: float = 5e-2  # AdamW's decoupled decay
    pct_start: float = 0.25  # share of steps spent warming up
    augment: bool = True
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
    precision: str = "auto"
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



# The accuracy recipe (results/REPORT.md, section 2.1): ModelConfig and TrainConfig fields that
# `gtsrb train --recipe` and `make train-best` put on top of a preset or a study's config. Train it on
# a pack made with `gtsrb pack --roi`: the ROI crop is part of the recipe and a property of the pack.
RECIPE: dict = {"input_norm": "image", "mirror": True, "label_smoothing": 0.1}


def split_config(d: dict) -> tuple[ModelConfig, dict]:
    """A flat config dict -> (ModelConfig, TrainConfig overrides). Unknown keys are an error.

    Keys may be ModelConfig fields, TrainConfig fields, or "preset" (the base model, default
    "seed"). A study's best_config.json and `gtsrb train --config` have this shape.
    """
    d = dict(d)
    preset = d.pop("preset", "seed")
    if preset not in PRESETS:
        raise ValueError(f"config: unknown preset {preset!r}: expected one of {', '.join(PRESETS)}")
    model_keys = {f.name for f in dataclasses.fields(ModelConfig)}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(d) - model_keys - train_keys
    if unknown:
        raise ValueError(f"config: unknown key(s) {', '.join(sorted(unknown))}")
    model = dataclasses.replace(PRESETS[preset], **{k: v for k, v in d.items() if k in model_keys})
    return ModelConfig.from_dict(model.to_dict()), {k: v for k, v in d.items() if k in train_keys}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_augment() -> nn.Module:
    """Per-sample augmentation on float batches in [0, 1]. No flips (see module doc).
    ``BatchAugment``'s defaults are the recipe (README: Training)."""
    return BatchAugment()


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

    The rule behind ``precision="auto"`` on CPU, backed by `gtsrb bench` runs on three CPU
    kinds (results/SPEED.md): bf16 trained faster than fp32 on an Intel Xeon with AMX and on
    an AMD EPYC with AVX-512-BF16, and slower on an AMD EPYC with AVX2 only.
    """
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):  # private API: absent in some torch builds
        return False


def use_bf16(config: "TrainConfig", device: torch.device) -> bool:
    if config.precision not in ("auto", "bf16", "fp32"):
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

    The one training step: fit() runs it, and so does `gtsrb bench`.
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

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.forward is self.model:
            return self._step(images, labels)
        try:
            return self._step(images, labels)
        except Exception as e:  # noqa: BLE001 - a compiler bug must not stop training
            # Seen: inductor's conv backward stride check fails with channels_last
            # on CUDA (torch 2.11). The step failed before the optimizer moved.
            warnings.warn(f"torch.compile failed ({type(e).__name__}); training eagerly", stacklevel=2)
            self.forward = self.model
            return self._step(images, labels)

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_float_images(images)
        with torch.no_grad():
            x = self.augment(x)
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


def mirror_batch(images: torch.Tensor, labels: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-aware horizontal flip of a uint8 (N, H, W, 3) batch, p = 0.5 per image.

    ``table`` maps a class to the class of its mirror image (-1: none, never flipped), so a
    symmetric sign keeps its label and "keep right" becomes "keep left"."""
    target = table[labels]
    flip = (target >= 0) & (torch.rand(len(labels), device=labels.device) < 0.5)
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(2), images)
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
    augment = make_augment().to(device) if config.augment else nn.Identity()
    # fused: one kernel over all parameters; on CPU the default per-tensor loop took
    # a tenth of each step.
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
        pct_start=config.pct_start,
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
    from torch.utils.tensorboard import SummaryWriter

    config = config or TrainConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else out_dir
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    pack_path = None
    if not isinstance(data, Packed):
        pack_path = Path(data).resolve()
        data = load_pack(pack_path)
    unknown = set(config.train_splits) - set(SPLIT_NAMES)
    if unknown or not config.train_splits:
        raise ValueError(f"train_splits {config.train_splits!r}: expected some of {', '.join(SPLIT_NAMES)}")
    train = data.take(np.isin(data.split, [SPLIT_NAMES.index(s) for s in config.train_splits]))
    # Validate on val unless it is trained on; with nothing held out, best.pt is the last epoch.
    val = data.subset("val") if "val" not in config.train_splits else data.take(np.zeros(0, np.int64))
    train = train.take(track_subset(train.labels, train.groups, config.train_fraction, config.seed))
    if len(val.labels):
        val = val.take(track_subset(val.labels, val.groups, config.val_fraction, config.seed))
    if len(train.labels) == 0:
        raise ValueError("the pack has no train split")

    # Data lives on the device as one uint8 tensor per split.
    x_train = torch.from_numpy(train.images).to(device)
    y_train = torch.from_numpy(train.labels).to(device)
    x_val = torch.from_numpy(val.images).to(device)
    y_val = torch.from_numpy(val.labels).to(device)

    steps_per_epoch = max(1, len(y_train) // config.batch_size)  # drop the ragged last batch
    train_step = make_train_step(model_config, config, steps_per_epoch, device)
    model, optimizer, scheduler = train_step.model, train_step.optimizer, train_step.scheduler
    ema = train_step.ema
    eval_model = ema.module if ema is not None else model  # what is validated and saved as "model"
    mirror = torch.tensor(mirror_table(), device=device) if config.mirror else None

    for orphan in ckpt_dir.glob(".*.pt.tmp-*"):  # left by a kill during a checkpoint write
        orphan.unlink(missing_ok=True)
    start_epoch, history, best_acc, ckpt = 1, [], -1.0, None
    if resume and (ckpt_dir / "last.pt").exists():
        ckpt = load_checkpoint(ckpt_dir / "last.pt", map_location=device)
        if ModelConfig.from_dict(ckpt["model_config"]) != model_config:
            raise ValueError(f"{ckpt_dir / 'last.pt'}: its model config differs from this run's")
        model.load_state_dict(ckpt["train_model"] if ema is not None else ckpt["model"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"], device)
        start_epoch, history = ckpt["epoch"] + 1, list(ckpt["history"])
        best_acc = max((h["val_accuracy"] for h in history), default=-1.0)
    step = (start_epoch - 1) * steps_per_epoch
    # purge_step drops events a killed run wrote after its last checkpoint.
    writer = SummaryWriter(str(out_dir), purge_step=step if start_epoch > 1 else None)
    meta = {
        "model_config": model_config.to_dict(),
        "train_config": dataclasses.asdict(config),
        "data": {"path": str(pack_path) if pack_path else None, **{k: _plain(v) for k, v in data.attrs.items()}},
        "class_names": list(data.class_names),
        # What "auto" resolved to on this machine.
        "runtime": {
            "device": str(device),
            "precision": "bf16" if train_step.bf16 else "fp32",
            "channels_last": train_step.channels_last,
            "cpu_routes": list(train_step.cpu_routes),
        },
    }
    if ckpt is not None and not (ckpt_dir / "best.pt").is_file():
        # Killed while best.pt was written (last.pt is written first): last.pt holds that epoch's weights.
        save_checkpoint({**meta, "model": ckpt["model"], "epoch": ckpt["epoch"], "history": history}, ckpt_dir / "best.pt")
        best_acc = history[-1]["val_accuracy"]

    for epoch in range(start_epoch, config.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = epoch_order(train.labels, steps_per_epoch * config.batch_size, config, epoch).to(device)
        window_loss, window_pred, window_true = [], [], []
        epoch_loss, epoch_pred = [], []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{config.epochs}", disable=not progress, leave=False)
        for i in bar:
            idx = order[i * config.batch_size : (i + 1) * config.batch_size]
            x, y = x_train[idx], y_train[idx]
            if mirror is not None:
                x, y = mirror_batch(x, y, mirror)
            loss, logits = train_step(x, y)
            step += 1
            # Keep metrics on the device; sync only when a window is logged.
            window_loss.append(loss)
            window_pred.append(logits.argmax(1))
            window_true.append(y)
            if step % config.log_every == 0 or i == steps_per_epoch - 1:
                losses = torch.stack(window_loss)
                pred, true = torch.cat(window_pred).cpu().numpy(), torch.cat(window_true).cpu().numpy()
                m = {"loss": losses.mean().item(), **classification_metrics(true, pred)}
                _log(writer, "train/step", m, step)
                writer.add_scalar("lr/step", scheduler.get_last_lr()[0], step)
                bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['accuracy']:.3f}")
                epoch_loss.append(losses)
                epoch_pred.append((pred, true))
                window_loss, window_pred, window_true = [], [], []

        # Epoch metrics: train from the accumulated predictions, val from a full pass.
        train_m = {
            "loss": torch.cat(epoch_loss).mean().item(),
            **classification_metrics(np.concatenate([t for _, t in epoch_pred]), np.concatenate([p for p, _ in epoch_pred])),
        }
        val_m, _ = evaluate_arrays(eval_model, x_val, y_val) if len(y_val) else ({k: 0.0 for k in METRIC_NAMES}, None)
        seconds = time.perf_counter() - t0
        _log(writer, "train/epoch", train_m, epoch)
        _log(writer, "val/epoch", val_m, epoch)
        _log(writer, "val/step", val_m, step)  # val against the step axis, beside train/step
        writer.add_scalar("lr/epoch", scheduler.get_last_lr()[0], epoch)
        if config.histograms:
            for name, module in model.named_modules():
                if isinstance(module, nn.Conv2d):
                    writer.add_histogram(f"weights/{name}", module.weight, epoch)
                    if module.weight.grad is not None:
                        writer.add_histogram(f"grads/{name}", module.weight.grad, epoch)
        row = {
            "epoch": epoch,
            **{f"train_{k}": train_m[k] for k in METRIC_NAMES},
            **{f"val_{k}": float(val_m[k]) for k in METRIC_NAMES},
            "lr": scheduler.get_last_lr()[0],
            "seconds": seconds,
            "images_per_s": steps_per_epoch * config.batch_size / seconds,
        }
        history.append(row)

        # Checkpoint: last every epoch, best kept apart; both atomic.
        state = {
            **meta,
            "model": eval_model.state_dict(),
            **({"train_model": model.state_dict(), "ema": ema.state_dict()} if ema is not None else {}),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(device),
            "epoch": epoch,
            "history": history,
        }
        save_checkpoint(state, ckpt_dir / "last.pt")
        if row["val_accuracy"] > best_acc or not len(y_val):
            best_acc = row["val_accuracy"]
            save_checkpoint({**meta, "model": eval_model.state_dict(), "epoch": epoch, "history": history}, ckpt_dir / "best.pt")
        (out_dir / "history.json").write_text(json.dumps(history, indent=1))
        writer.flush()
        if progress:
            tqdm.write(
                f"epoch {epoch}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | "
                f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f} f1 {row['val_macro_f1']:.4f} | "
                f"{seconds:.0f} s, {row['images_per_s']:.0f} img/s"
            )
        if on_epoch is not None:
            on_epoch(row, ckpt_dir)

    if history and start_epoch <= config.epochs:
        _final_logs(writer, ckpt_dir, eval_model, x_val, y_val, data.class_names, meta, history)
    writer.close()
    return history


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
