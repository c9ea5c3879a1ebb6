"""BatchAugment: the training augmentation as a few batched, sync-free tensor ops.

It replaces ``nn.Sequential(K.RandomAffine(degrees=10, translate=(0.1, 0.1),
scale=(0.9, 1.1), shear=5, p=1), K.ColorJitter(brightness=0.3, contrast=0.3,
p=0.8))`` (kornia 0.9.0) with the same random transform distribution. kornia
samples its parameters on the CPU and spends about a thousand aten ops and a
dozen host syncs per call (``.item()``, ``bool(tensor)``, CPU-side sampling),
more than the model's own step on a GPU. This module draws every random number
on the input's device from the default generator, so ``torch.manual_seed`` and
the saved CUDA RNG state reproduce it, and runs a fixed, data-independent list
of kernels, so after one warm-up call (which builds its cached constants) it
can be captured in a CUDA graph. Speed: see `make bench` (study/bench.py).

What kornia 0.9.0 does, read from its source, and is reproduced here:

- Affine (``RandomAffine`` -> ``AffineGenerator``, ``get_affine_matrix2d``,
  ``warp_affine``), per sample: angle ~ U(-10, 10) degrees; translation
  ~ U(-0.1, 0.1) * W in x and * H in y, in pixels; one isotropic scale
  ~ U(0.9, 1.1); a scalar shear draws an x-axis shear only, ~ U(-5, 5) degrees
  (the y-axis shear is 0). The source->destination pixel matrix is
  ``T(t) @ C @ R(-angle) @ S(s) @ C^-1 @ Shear``, with the centre ``C`` at
  ``((W-1)/2, (H-1)/2)``, ``R(a) = [[cos a, sin a], [-sin a, cos a]]`` (so a
  positive angle turns the displayed image clockwise) and the shear about the
  centre ``x' = x - tan(shear) * (y - cy)``. The warp samples the source at the
  inverse matrix, bilinear, zero padding, ``align_corners=False`` with pixel
  centres at ``(2x + 1) / W - 1``. Here the inverse is written in closed form
  in those normalised coordinates (the centre maps to 0, so it needs no shift)
  and applied to ``F.affine_grid``'s identity grid, built once per size, in one
  batched matmul; ``F.grid_sample`` samples with the same flags.
- Colour (``ColorJitter``): brightness factor ~ U(0.7, 1.3), multiplicative
  (``adjust_brightness_accumulative``: ``clamp(x * b, 0, 1)``); contrast factor
  ~ U(0.7, 1.3) (``adjust_contrast_with_mean_subtraction``:
  ``clamp(x * c + m * (1 - c), 0, 1)``, ``m`` the per-image mean of the
  0.299/0.587/0.114 grayscale, or of all channels when C != 3). Saturation and
  hue draw their neutral values, so kornia skips those steps. The order of the
  steps is a ``randperm`` drawn once per call, so brightness comes first for
  the whole batch with probability 1/2; here that is a device-side coin that
  picks, per step slot, which factor (and whether the mean term) applies. Each
  sample is jittered with probability 0.8, drawn per sample; the others pass
  through.

Deliberate differences, none visible for inputs in [0, 1]: kornia clamps a
jittered sample to [0, 1] before its first colour step and after its last, and
leaves skipped samples untouched; here only the two steps clamp (each of
kornia's does too; the warp of an image in [0, 1] is a convex blend, so the
first clamp would be a no-op), and a skipped sample runs both steps with
neutral factors, which only clamps it. The contrast mean is summed in another
order, and the sampling grid is computed in float32 (the parameters' dtype)
before the cast to the batch's dtype: float rounding only. Random draws
differ from kornia's stream (it samples on the CPU), so the distribution is the
same, not the numbers. Never a flip: it turns "keep left" into "keep right".
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class AugmentParams(NamedTuple):
    """One call's random draws; every tensor is on the batch's device."""

    angle: torch.Tensor  # (N,) radians; positive turns the displayed image clockwise
    shear: torch.Tensor  # (N,) x-axis shear angle, radians
    scale: torch.Tensor  # (N,) isotropic
    translate: torch.Tensor  # (N, 2) shift as a fraction of (W, H); positive moves content right, down
    brightness: torch.Tensor  # (N,) multiplicative factor
    contrast: torch.Tensor  # (N,) blend factor towards the grayscale mean
    color: torch.Tensor  # (N,) bool: this sample gets the colour jitter
    brightness_first: torch.Tensor  # () bool: brightness before contrast, for the whole batch


class BatchAugment(nn.Module):
    """Random affine jitter then colour jitter, kornia's distribution (see module doc)."""

    def __init__(
        self,
        degrees: float = 10.0,
        translate: float = 0.1,
        scale: tuple[float, float] = (0.9, 1.1),
        shear: float = 5.0,
        brightness: float = 0.3,
        contrast: float = 0.3,
        color_p: float = 0.8,
    ):
        super().__init__()
        # Per-sample uniforms as low + U[0, 1) * (high - low), one column per
        # AugmentParams field: angle, shear, scale, translate x, y, brightness, contrast.
        deg, sh = math.radians(degrees), math.radians(shear)
        self._low = (-deg, -sh, scale[0], -translate, -translate, 1 - brightness, 1 - contrast)
        self._high = (deg, sh, scale[1], translate, translate, 1 + brightness, 1 + contrast)
        self.color_p = color_p
        self._constants: dict[tuple, torch.Tensor] = {}  # built once per device, not copied per call

    @classmethod
    def with_strength(cls, strength: float) -> BatchAugment:
        """The default ranges, each scaled by ``strength`` (1.0: the defaults; 1.5: rotation ±15°,
        shift ±15%, scale 0.85-1.15, shear ±7.5°, brightness and contrast ±45%). The colour
        jitter's probability stays 0.8."""
        if not 0 <= strength * 0.3 < 1:
            raise ValueError(f"augment_strength must be in [0, 3.33) (brightness and contrast "
                             f"±30% times it stay below 100%), got {strength}")
        return cls(degrees=10.0 * strength, translate=0.1 * strength,
                   scale=(1 - 0.1 * strength, 1 + 0.1 * strength), shear=5.0 * strength,
                   brightness=0.3 * strength, contrast=0.3 * strength)

    def _const(self, values: tuple, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``torch.tensor(values)`` on ``device``, cached."""
        key = (values, device, dtype)
        if key not in self._constants:
            self._constants[key] = torch.tensor(values, device=device, dtype=dtype)
        return self._constants[key]

    def _base_grid(self, h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``F.affine_grid``'s identity grid (pixel centres, align_corners=False) as (1, H*W, 2), cached."""
        key = ("grid", h, w, device, dtype)
        if key not in self._constants:
            eye = torch.eye(2, 3, device=device, dtype=dtype)[None]
            self._constants[key] = F.affine_grid(eye, [1, 1, h, w], align_corners=False).view(1, h * w, 2)
        return self._constants[key]

    def sample_params(self, n: int, device: torch.device | str) -> AugmentParams:
        """Draw one call's parameters for ``n`` samples on ``device`` (float32)."""
        device = torch.device(device)
        u = torch.rand(n, len(self._low) + 1, device=device)  # the last column gates the colour jitter
        v = torch.lerp(self._const(self._low, device), self._const(self._high, device), u[:, :-1])
        return AugmentParams(
            angle=v[:, 0],
            shear=v[:, 1],
            scale=v[:, 2],
            translate=v[:, 3:5],
            brightness=v[:, 5],
            contrast=v[:, 6],
            color=u[:, -1] < self.color_p,
            brightness_first=torch.rand((), device=device) < 0.5,
        )

    def apply(self, x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
        """Apply ``p`` to ``x`` (N, C, H, W), float in [0, 1]."""
        n, c, h, w = x.shape
        dev, pdtype = x.device, p.angle.dtype
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)

        # Destination -> source map in normalised coordinates, where the centre is 0:
        # A = (R(-angle) S Shear)^-1 = Shear^-1 S^-1 R(angle), its off-diagonal terms
        # rescaled by the aspect ratio, and the source of pixel q is A (q - 2 t).
        cos, sin, k = torch.cos(p.angle), torch.sin(p.angle), torch.tan(p.shear)
        a = torch.stack([cos - k * sin, sin + k * cos, -sin, cos], dim=1).view(n, 2, 2)
        aspect = self._const(((1.0, h / w), (w / h, 1.0)), dev, pdtype)
        a_t = (a / p.scale.view(n, 1, 1) * aspect).transpose(1, 2)
        shift = torch.bmm(p.translate.unsqueeze(1), a_t)
        base = self._base_grid(h, w, dev, pdtype).expand(n, -1, -1)
        grid = torch.baddbmm(shift, base, a_t, beta=-2.0).view(n, h, w, 2)  # base @ A^T - 2 t @ A^T
        y = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
        if channels_last:
            y = y.contiguous(memory_format=torch.channels_last)

        # Colour: two step slots, y -> clamp(f * y + g * mean(y), 0, 1); brightness is
        # (f = b, g = 0), contrast (f = c, g = 1 - c), and the batch's coin decides which
        # fills the first slot. A skipped sample gets f = 1, g = 0 in both: a clamp only.
        fac = torch.where(p.color, torch.stack([p.brightness, p.contrast]), 1.0)  # (2, N): b, c
        is_contrast = self._const(((0.0,), (1.0,)), dev, pdtype)
        mix = torch.addcmul(is_contrast, fac, is_contrast, value=-1.0)  # (2, N): 0, 1 - c
        f, g = (torch.where(p.brightness_first, t, t.flip(0)).to(x.dtype).view(2, n, 1, 1, 1) for t in (fac, mix))
        # Weights of the contrast mean: the 0.299/0.587/0.114 gray (all channels alike if C != 3), over H*W.
        weights = (0.299, 0.587, 0.114) if c == 3 else (1.0 / c,) * c
        gray = self._const(tuple(wc / (h * w) for wc in weights), dev, x.dtype).view(1, c, 1, 1)
        for f_step, g_step in zip(f, g):
            mean = (y * gray).sum((1, 2, 3), keepdim=True)
            y = torch.addcmul(mean * g_step, y, f_step).clamp_(0.0, 1.0)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x, self.sample_params(x.shape[0], x.device))
