"""Classifier.load(path).predict(images) -> class probabilities and SE excitations.

Images of any size and mode (paths, PIL images or arrays; RGBA, L, P, I;16,
CMYK, ...) are preprocessed by ``gtsrb.preprocess.preprocess``, exactly as packing
does it. The forward pass is the checkpoint's own ``gtsrb.model`` network in
``eval()`` mode under ``torch.inference_mode()``, in fp32: what evaluation, the
report and the demo all run. Each SE block's gate output is read by a forward
hook that writes to the calling request's own capture, so concurrent requests
on one shared Classifier keep their excitations apart.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from gtsrb.explain import gradcam_and_logits
from gtsrb.validate import ConfigError
from gtsrb.checkpoint import CheckpointError, load_checkpoint
from gtsrb.classes import CLASS_NAMES
from gtsrb.archive import DataError
from gtsrb.preprocess import MAX_PIXELS, decode, preprocess, read_image
from gtsrb.model import ModelConfig, SEVGG, build_model, to_float_images

ImageLike = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]


@dataclass
class Prediction:
    logits: np.ndarray  # (N, classes)
    probs: np.ndarray  # (N, classes): softmax of the logits
    excitations: dict[str, np.ndarray]  # stage name -> (N, C): each SE block's gate values

    def top(self, k: int = 5, i: int = 0) -> list[tuple[int, str, float]]:
        """The k most likely (class id, official name, probability) for image i."""
        order = np.argsort(-self.probs[i])[:k]
        return [(int(c), CLASS_NAMES[c], float(self.probs[i, c])) for c in order]


def load_image(image: ImageLike, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """A path, bytes, PIL image or array -> PIL image (DataError names a bad file).

    ``max_pixels`` refuses a larger encoded image before decoding its pixels (a quarter of it for
    16-bit and alpha images); a file is refused from its header, or over
    ``gtsrb.preprocess.MAX_IMAGE_BYTES``, before it is read whole.
    """
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if path.is_dir():
            raise DataError(f"{path}: a directory, not an image file")
        if not path.exists():
            raise DataError(f"{path}: no such image file")
        if not path.is_file():  # a FIFO or a device would never end, or never start
            raise DataError(f"{path}: not a regular file")
        return decode(read_image(path, max_pixels), str(path), max_pixels)
    if isinstance(image, bytes):
        return decode(image, "uploaded bytes", max_pixels)
    if isinstance(image, np.ndarray):
        return _array_to_image(image)
    raise DataError(f"cannot read an image from a {type(image).__name__}")


def _array_to_image(a: np.ndarray) -> Image.Image:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or 0 in a.shape:
        raise DataError(f"array of shape {a.shape}: expected (H, W), (H, W, 3) or (H, W, 4)")
    if a.dtype == np.uint16:
        return Image.fromarray(a) if a.ndim == 2 else Image.fromarray((a >> 8).astype(np.uint8))
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        a = np.clip(a * 255.0 if a.max(initial=0) <= 1.0 else a, 0, 255).round().astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    return Image.fromarray(a)


# (dy, dx) of the views that Classifier.predict_tta averages.
TTA_SHIFTS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))

# The capture of the request running in this thread or task: stage name -> gate outputs.
_capture: contextvars.ContextVar[dict[str, list[torch.Tensor]] | None] = contextvars.ContextVar("capture", default=None)
# The SE blocks switched off within ``Classifier.se_disabled()``: each passes its input through.
_se_off: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("se_off", default=frozenset())
# The SE gates held within ``Classifier.se_held()``: stage name -> the gate's value per channel, used
# for every image instead of the one the block computes from the image.
_se_held: contextvars.ContextVar[dict[str, torch.Tensor]] = contextvars.ContextVar("se_held", default={})


class Classifier:
    """A trained SE-VGG in eval mode, with the checkpoint's metadata."""

    def __init__(self, model: SEVGG, meta: dict, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        # channels_last, as in training: the uint8 NHWC batch arrives in that layout, and it ran
        # faster than NCHW at batch 1 and at batch 512 where measured (results/SPEED.md).
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        self.meta = meta
        self.config: ModelConfig = model.config
        self.se_names = [name for name, _ in model.se_blocks()]
        # Hooks stay for the Classifier's life and do nothing outside a capture, se_disabled() or se_held().
        for name, block in model.se_blocks():
            block.gate.register_forward_hook(functools.partial(_hold_and_record_gate, name))
            block.register_forward_hook(functools.partial(_skip_if_se_off, name))

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> "Classifier":
        try:
            device = torch.device(device)
        except RuntimeError as e:
            raise ConfigError(f"--device {device}: not a device torch knows ({e})") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: this machine has no CUDA GPU that torch can use")
        ckpt = load_checkpoint(path, map_location=device)
        try:
            model = build_model(ModelConfig.from_dict(ckpt["model_config"]))
            model.load_state_dict(ckpt["model"])
        except (RuntimeError, ValueError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{path}: its weights do not fit its model config ({first})") from e
        meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scheduler", "rng")}
        return cls(model, meta, device)

    def preprocess(self, images: Sequence[ImageLike] | ImageLike) -> np.ndarray:
        """Images -> (N, S, S, 3) uint8, as packing makes them."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        return np.stack([preprocess(load_image(im), self.config.image_size) for im in images])

    def predict(self, images: Sequence[ImageLike] | ImageLike) -> Prediction:
        return self.predict_arrays(self.preprocess(images))

    @torch.inference_mode()
    def predict_arrays(self, arrays: np.ndarray, batch_size: int = 512) -> Prediction:
        """Preprocessed uint8 (N, S, S, 3) -> logits, probabilities and the excitations of the SE
        blocks that are on."""
        logits, excite = [], {n: [] for n in self.se_names}
        token = _capture.set(excite)
        try:
            for i in range(0, len(arrays), batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(arrays[i : i + batch_size])).to(self.device)
                logits.append(self.model(to_float_images(batch)).float())
        finally:
            _capture.reset(token)
        z = torch.cat(logits) if logits else torch.zeros(0, self.config.num_classes)
        return Prediction(
            z.cpu().numpy(), torch.softmax(z, 1).cpu().numpy(),
            {n: torch.cat(v).flatten(1).cpu().numpy() for n, v in excite.items() if v},
        )

    def predict_with_gradcam(self, array: np.ndarray, layer: int) -> tuple[Prediction, np.ndarray]:
        """One preprocessed image (1, S, S, 3) -> (its Prediction, the Grad-CAM map of its top class at
        ``layer``), from a single forward pass plus one backward pass (``gtsrb.explain.gradcam_and_logits``)."""
        excite = {n: [] for n in self.se_names}
        token = _capture.set(excite)
        try:
            cam, logits = gradcam_and_logits(self.model, array[0], None, layer)
        finally:
            _capture.reset(token)
        probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
        return Prediction(logits, probs, {n: torch.cat(v).flatten(1).cpu().numpy() for n, v in excite.items() if v}), cam

    def predict_tta(self, arrays: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Test-time augmentation: class probabilities averaged over the image and its four one-pixel
        shifts (edge pixels repeated). Five forward passes; off by default everywhere (`--tta`)."""
        n, h, w, _ = arrays.shape
        padded = np.pad(arrays, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        views = [padded[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy, dx in TTA_SHIFTS]
        return np.mean([self.predict_arrays(v, batch_size).probs for v in views], axis=0)

    @contextlib.contextmanager
    def se_disabled(self, blocks: Sequence[str] | None = None) -> Iterator[None]:
        """Within the block, the named SE blocks (default: all) are the identity (the 'SE off'
        counterfactual), in predictions (which carry no excitations for them) and in ``self.model``,
        for this thread or task only. An unknown block name is a ValueError."""
        blocks = self.se_names if blocks is None else list(blocks)
        token = _se_off.set(frozenset(self._known(blocks)))
        try:
            yield
        finally:
            _se_off.reset(token)

    @contextlib.contextmanager
    def se_held(self, gates: dict[str, np.ndarray]) -> Iterator[None]:
        """Within the block, each named SE block's gate is the given value per channel (e.g. its
        average over a split: ``Prediction.excitations[name].mean(0)``) for every image: the block keeps
        its learned average scale but no longer recalibrates per image. Unlike ``se_disabled()``, which
        also removes that scale, this isolates what the per-image excitation buys. For the
        ``scale_shift`` form only the scale is held; the shift still comes from the image."""
        held = {}
        for name in self._known(gates):
            value = torch.as_tensor(np.asarray(gates[name], np.float32)).flatten()
            width = dict(self.model.se_blocks())[name].fc1.in_channels
            if value.numel() != width:
                raise ValueError(f"{name}: {value.numel()} gate values, the block has {width} channels")
            held[name] = value.to(self.device)
        token = _se_held.set(held)
        try:
            yield
        finally:
            _se_held.reset(token)

    def _known(self, blocks) -> list[str]:
        blocks = list(blocks)
        unknown = sorted(set(blocks) - set(self.se_names))
        if unknown:
            raise ValueError(f"no SE block named {', '.join(unknown)}: this model has "
                             f"{', '.join(self.se_names) or 'none'}")
        return blocks


def _hold_and_record_gate(name: str, _module: nn.Module, _inputs, gate: torch.Tensor) -> torch.Tensor:
    held = _se_held.get().get(name)
    if held is not None:
        gate = held.to(gate).view(1, -1, 1, 1).expand_as(gate)
    capture = _capture.get()
    if capture is not None and name not in _se_off.get():
        capture[name].append(gate.detach())
    return gate


def _skip_if_se_off(name: str, _module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    return inputs[0] if name in _se_off.get() else output
