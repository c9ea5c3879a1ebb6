"""Classifier.load(path).predict(images) -> class probabilities and SE excitations.

Images of any size and mode (paths, PIL images or arrays; RGBA, L, P, I;16,
CMYK, ...) are preprocessed by ``gtsrb.data.preprocess``, exactly as packing
does it. The forward pass is ``gtsrb.engine.InferenceEngine``: the model's own
function, folded into fewer operations. ``precision="auto"`` (the default) runs
its convs in bf16 on CPUs that multiply bf16 natively, where that is faster at
batch 1 and moves probabilities and gates by bf16 rounding only (the README's
"Speed" section has both, measured); ``precision="fp32"`` is the model's function
to float rounding, and what evaluation, the report and the excitations use.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np
import torch
from PIL import Image

from gtsrb.checkpoint import load_checkpoint
from gtsrb.classes import CLASS_NAMES
from gtsrb.data import DataError, decode, preprocess
from gtsrb.engine import InferenceEngine, serving_precision
from gtsrb.model import ModelConfig, SEVGG, build_model, to_float_images

ImageLike = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]


@dataclass
class Prediction:
    probs: np.ndarray  # (N, classes)
    excitations: dict[str, np.ndarray]  # stage name -> (N, C): each SE block's gate values

    def top(self, k: int = 5, i: int = 0) -> list[tuple[int, str, float]]:
        """The k most likely (class id, official name, probability) for image i."""
        order = np.argsort(-self.probs[i])[:k]
        return [(int(c), CLASS_NAMES[c], float(self.probs[i, c])) for c in order]


def load_image(image: ImageLike, max_pixels: int | None = None) -> Image.Image:
    """A path, bytes, PIL image or array -> PIL image (DataError names a bad file).

    ``max_pixels`` refuses a larger encoded image before decoding its pixels.
    """
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise DataError(f"{path}: no such image file")
        return decode(path.read_bytes(), str(path), max_pixels)
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


class Classifier:
    """A trained SE-VGG in eval mode, with the checkpoint's metadata."""

    def __init__(self, model: SEVGG, meta: dict, device: torch.device, precision: str = "auto"):
        # channels_last: the input arrives as NHWC already (for Grad-CAM and hooks).
        self.model = model.eval().to(memory_format=torch.channels_last)
        self.meta = meta
        self.device = device = torch.device(device)
        self.config: ModelConfig = model.config
        self.se_names = [name for name, _ in model.se_blocks()]
        # Predictions run through the folded engine: self.model's function in fewer operations,
        # in fp32 or, where "auto" picks it, with bf16 convs (`gtsrb bench`: infer_ms_p50).
        self.precision = serving_precision(precision, device, next(model.parameters()).dtype)
        self.engine = InferenceEngine(self.model, self.precision)
        self._se_on = True

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu", precision: str = "auto") -> "Classifier":
        device = torch.device(device)
        ckpt = load_checkpoint(path, map_location=device)
        model = build_model(ModelConfig.from_dict(ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
        meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scheduler", "rng")}
        return cls(model.to(device), meta, device, precision)

    def preprocess(self, images: Sequence[ImageLike] | ImageLike) -> np.ndarray:
        """Images -> (N, S, S, 3) uint8, as packing makes them."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        return np.stack([preprocess(load_image(im), self.config.image_size) for im in images])

    def predict(self, images: Sequence[ImageLike] | ImageLike) -> Prediction:
        return self.predict_arrays(self.preprocess(images))

    @torch.inference_mode()
    def predict_arrays(self, arrays: np.ndarray, batch_size: int = 512) -> Prediction:
        """Preprocessed uint8 (N, S, S, 3) -> probabilities and excitations."""
        probs, excite = [], {n: [] for n in self.se_names}
        for i in range(0, len(arrays), batch_size):
            x = to_float_images(torch.from_numpy(np.ascontiguousarray(arrays[i : i + batch_size])).to(self.device))
            logits, gates = self.engine(x, se=self._se_on)
            probs.append(torch.softmax(logits.float(), 1).cpu().numpy())
            for n, g in gates.items():
                excite[n].append(g.float().cpu().numpy())
        return Prediction(
            np.concatenate(probs) if probs else np.zeros((0, self.config.num_classes), np.float32),
            {n: np.concatenate(v) for n, v in excite.items() if v},
        )

    @contextlib.contextmanager
    def se_disabled(self) -> Iterator[None]:
        """Within the block, every SE block is the identity (the 'SE off' counterfactual),
        in predictions (which then carry no excitations) and in ``self.model``."""
        handles = [b.register_forward_hook(lambda _m, inp, _out: inp[0]) for _, b in self.model.se_blocks()]
        before, self._se_on = self._se_on, False
        try:
            yield
        finally:
            self._se_on = before  # blocks nest
            for h in handles:
                h.remove()
