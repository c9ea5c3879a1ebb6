"""What a training run leaves on disk: its checkpoints (``RunCheckpoints``: ``last.pt`` to resume,
``best.pt`` to serve, never disagreeing) and its TensorBoard log (``TrainLog``). ``gtsrb.train.fit``
drives both; a checkpoint carries the run's metadata (``run_meta``) beside its weights."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gtsrb.checkpoint import load_checkpoint, save_checkpoint
from gtsrb.config import TrainConfig
from gtsrb.data import Packed
from gtsrb.metrics import METRIC_NAMES, classification_metrics, confusion
from gtsrb.model import ModelConfig
from gtsrb.validate import ConfigError

def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def data_fingerprint(data: Packed) -> str:
    """A short digest of what a run trains and validates on (labels, splits, file names, a sample of
    pixels): resume compares it, so a run never continues on another pack."""
    h = hashlib.sha256()
    for a in (data.labels, data.split, data.images[:: max(1, len(data.images) // 64)]):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update("\n".join(data.filenames).encode())
    return h.hexdigest()[:16]


def run_meta(model_config: ModelConfig, config: TrainConfig, data: Packed, pack_path: Path | None,
             train_step) -> dict:
    """What every checkpoint of the run carries besides its weights; ``train_step`` (a
    ``gtsrb.train.TrainStep``) says what "auto" resolved to."""
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


# TrainConfig fields a resumed run may change: they change where and how fast it runs and what it logs,
# not what it trains (another device draws other random numbers, so only a CPU resume on CPU is exact).
RESUME_MAY_CHANGE = ("threads", "device", "log_every", "histograms")


class RunCheckpoints:
    """``last.pt`` every epoch (everything resume needs, the best epoch's weights included) and
    ``best.pt`` (weights of the best val epoch; with nothing held out, of the last), both written
    atomically, ``last.pt`` first. Because ``last.pt`` carries the best weights, resume rewrites
    ``best.pt`` from it: whenever a kill came, ``best.pt`` ends as the epoch the history calls best."""

    def __init__(self, folder: Path, train_step, meta: dict, keep_best: bool):
        """``train_step``: the run's ``gtsrb.train.TrainStep`` (model, EMA, optimizer, schedule)."""
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
        set_rng_state(ckpt["rng"], ts.device)
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
            "rng": rng_state(ts.device),
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
    predictions stay on the device until a window is written), per-epoch metrics, LR, histograms;
    at the end the hparams and the val confusion matrix."""

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

    def final(self, meta: dict, history: list[dict], best_epoch: int, true: np.ndarray, pred: np.ndarray | None,
              class_names) -> None:
        """At the end of a run: the hparams with the best val scores, and the confusion-matrix figure
        of the best epoch's val predictions ``pred`` (None: nothing held out, no figure)."""
        from gtsrb.plots import confusion_figure

        if pred is not None:
            cm = confusion(true, pred, len(class_names))
            self.writer.add_figure("val/confusion_matrix", confusion_figure(cm, class_names, "val split, best epoch"),
                                   best_epoch)
        hparams = {f"model/{k}": _hparam(v) for k, v in meta["model_config"].items() if k not in ("cfg",)}
        hparams |= {f"train/{k}": _hparam(v) for k, v in meta["train_config"].items()}
        best_row = max(history, key=lambda h: h["val_accuracy"])
        self.writer.add_hparams(
            hparams,
            {"hparam/best_val_accuracy": best_row["val_accuracy"], "hparam/best_val_macro_f1": best_row["val_macro_f1"]},
            run_name=".",
        )


def _hparam(v):
    return v if isinstance(v, (int, float, str, bool)) else str(v)


def _log(writer, prefix: str, metrics: dict, step: int) -> None:
    for k in METRIC_NAMES:
        writer.add_scalar(f"{prefix}/{k}", float(metrics[k]), step)


def _plain(v):
    """HDF5 attribute -> a plain Python value a safe checkpoint can hold."""
    if isinstance(v, np.generic):
        return v.item()
    return v
