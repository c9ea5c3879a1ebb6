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
can be captured in a CUDA graph. Speed: see `make bench` (benchmarks/bench/).

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

Robustness stages (off by default; ``TrainConfig.dark_p``, ``blur_p``, ``erase_p``), after the
colour jitter and in this order, each on a per-sample coin. They aim at the release model's errors
on the official test set (issue 33: dark, blurred and partly covered signs):

- darkening: ``y -> factor * y ** gamma``, factor ~ U(``dark``), gamma ~ U(``gamma``) (an
  under-exposed camera: a lower gain and a steeper tone curve);
- blur: a per-sample 5x5 kernel, Gaussian (sigma ~ U(``blur_sigma``)) or, with probability
  ``motion_share``, a line of length ~ U(``motion_length``) pixels at a uniform angle (motion blur);
  edges replicate, so a blurred border does not darken;
- occlusion (random erasing, Zhong et al. 2017, arXiv 1708.04896): one rectangle of U(``erase_area``)
  of the image at a log-uniform aspect in ``erase_aspect``, filled with one random colour.

Framing (``TrainConfig.framing``; a pack made with a frame size): the batch is whole frames with their
annotated ROI boxes, and the output is the model's size. With probability ``framing`` a sample is
cropped to a box between its ROI and the whole frame (a side ~ U(ROI side, frame side) for each axis
from one draw, placed uniformly among the positions that keep the ROI inside and stay in the
frame); the others get the tight ROI. The crop is folded into the affine warp's sampling grid (one
``grid_sample`` from the frame), so a shift or a turn past the crop's edge shows the sign's real
surroundings, not zero padding.

Each is a fixed list of batched kernels whatever the coins say (a sample that skips a stage gets its
neutral parameters: factor and gamma 1, the identity kernel, an empty rectangle), so the step stays
sync-free and capturable.
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
    # Robustness stages; None: the stage is off for this augmenter (see module doc).
    dark: torch.Tensor | None = None  # (N, 2): gain factor, gamma; (1, 1) for a sample that is not darkened
    blur: torch.Tensor | None = None  # (N, K, K) normalised kernels; the identity for a sample not blurred
    erase: torch.Tensor | None = None  # (N, 4) rectangle x0, y0, x1, y1 as fractions of W, H; empty if none
    erase_color: torch.Tensor | None = None  # (N, 3 or C) fill colour in [0, 1]


def _uniform(bounds: tuple[float, float], u: torch.Tensor) -> torch.Tensor:
    """U[0, 1) draws mapped onto [low, high)."""
    return bounds[0] + (bounds[1] - bounds[0]) * u


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
        dark_p: float = 0.0,
        dark: tuple[float, float] = (0.25, 0.7),
        gamma: tuple[float, float] = (1.0, 1.0),
        blur_p: float = 0.0,
        blur_sigma: tuple[float, float] = (0.5, 1.0),
        motion_share: float = 0.5,
        motion_length: tuple[float, float] = (2.0, 5.0),
        erase_p: float = 0.0,
        erase_area: tuple[float, float] = (0.02, 0.15),
        erase_aspect: tuple[float, float] = (0.3, 3.3),
        framing: float = 0.0,
        out_size: int | None = None,
    ):
        super().__init__()
        for name, prob in (("color_p", color_p), ("dark_p", dark_p), ("blur_p", blur_p),
                           ("motion_share", motion_share), ("erase_p", erase_p), ("framing", framing)):
            if not 0.0 <= prob <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {prob}")
        for name, (lo, hi), bounds in (("dark", dark, (0.0, 1.0)), ("gamma", gamma, (0.1, 10.0)),
                                       ("blur_sigma", blur_sigma, (0.05, 3.0)),
                                       ("motion_length", motion_length, (1.0, 5.0)),
                                       ("erase_area", erase_area, (0.0, 1.0)), ("erase_aspect", erase_aspect, (0.01, 100.0))):
            if not bounds[0] <= lo <= hi <= bounds[1]:
                raise ValueError(f"{name} must be a range (low, high) inside [{bounds[0]}, {bounds[1]}], got {(lo, hi)}")
        self.dark_p, self.dark_range, self.gamma_range = dark_p, dark, gamma
        self.blur_p, self.blur_sigma, self.motion_share, self.motion_length = blur_p, blur_sigma, motion_share, motion_length
        self.erase_p, self.erase_area, self.erase_aspect = erase_p, erase_area, erase_aspect
        self.framing, self.out_size = framing, out_size
        # Per-sample uniforms as low + U[0, 1) * (high - low), one column per
        # AugmentParams field: angle, shear, scale, translate x, y, brightness, contrast.
        deg, sh = math.radians(degrees), math.radians(shear)
        self._low = (-deg, -sh, scale[0], -translate, -translate, 1 - brightness, 1 - contrast)
        self._high = (deg, sh, scale[1], translate, translate, 1 + brightness, 1 + contrast)
        self.color_p = color_p
        self._constants: dict[tuple, torch.Tensor] = {}  # built once per device, not copied per call

    @classmethod
    def with_strength(cls, strength: float, **robust) -> BatchAugment:
        """The default ranges, each scaled by ``strength`` (1.0: the defaults; 1.5: rotation ±15°,
        shift ±15%, scale 0.85-1.15, shear ±7.5°, brightness and contrast ±45%). The colour
        jitter's probability stays 0.8. ``robust``: the robustness stages' arguments (dark_p, ...)."""
        if not 0 <= strength * 0.3 < 1:
            raise ValueError(f"augment_strength must be in [0, 3.33) (brightness and contrast "
                             f"±30% times it stay below 100%), got {strength}")
        return cls(degrees=10.0 * strength, translate=0.1 * strength,
                   scale=(1 - 0.1 * strength, 1 + 0.1 * strength), shear=5.0 * strength,
                   brightness=0.3 * strength, contrast=0.3 * strength, **robust)

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
            **self._sample_robust(n, device),
        )

    def _sample_robust(self, n: int, device: torch.device) -> dict:
        """The robustness stages' draws (after the affine and colour draws, so turning a stage on
        leaves those unchanged for a seed)."""
        out: dict = {}
        if self.dark_p > 0:
            u = torch.rand(n, 3, device=device)
            drawn = torch.stack([_uniform(self.dark_range, u[:, 0]), _uniform(self.gamma_range, u[:, 1])], dim=1)
            out["dark"] = torch.where((u[:, 2] < self.dark_p)[:, None], drawn, 1.0)
        if self.blur_p > 0:
            out["blur"] = self._sample_kernels(n, device)
        if self.erase_p > 0:
            u = torch.rand(n, 5, device=device)
            area = _uniform(self.erase_area, u[:, 0])
            log_lo, log_hi = math.log(self.erase_aspect[0]), math.log(self.erase_aspect[1])
            aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])  # height / width
            # As fractions of the side: h * w = area; an overlong side is cut to the image.
            h = torch.sqrt(area * aspect).clamp(max=1.0)
            w = torch.sqrt(area / aspect).clamp(max=1.0)
            x0, y0 = u[:, 2] * (1 - w), u[:, 3] * (1 - h)
            on = (u[:, 4] < self.erase_p).float()
            out["erase"] = torch.stack([x0, y0, x0 + w * on, y0 + h * on], dim=1)
            out["erase_color"] = torch.rand(n, 3, device=device)
        return out

    KERNEL = 5  # blur kernel side: covers sigma up to 1 and motion up to 5 pixels

    def _sample_kernels(self, n: int, device: torch.device) -> torch.Tensor:
        """(N, K, K) normalised blur kernels: Gaussian, motion line, or the identity."""
        u = torch.rand(n, 5, device=device)
        r = self.KERNEL // 2
        offsets = self._const(tuple(float(i) for i in range(-r, r + 1)), device)
        dy, dx = offsets.view(1, -1, 1), offsets.view(1, 1, -1)
        sigma = _uniform(self.blur_sigma, u[:, 0]).view(n, 1, 1)
        gauss = torch.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma))
        # Motion: weight falls off linearly with the distance from a centred segment of the drawn length.
        theta = (u[:, 1] * math.pi).view(n, 1, 1)
        length = _uniform(self.motion_length, u[:, 2]).view(n, 1, 1)
        along = dx * torch.cos(theta) + dy * torch.sin(theta)
        across = -dx * torch.sin(theta) + dy * torch.cos(theta)
        motion = (1 - across.abs()).clamp(min=0) * (length / 2 + 0.5 - along.abs()).clamp(0, 1)
        identity = ((dx == 0) & (dy == 0)).to(gauss.dtype).expand(n, -1, -1)
        kernel = torch.where((u[:, 3] < self.motion_share).view(n, 1, 1), motion, gauss)
        kernel = torch.where((u[:, 4] < self.blur_p).view(n, 1, 1), kernel, identity)
        return kernel / kernel.sum((1, 2), keepdim=True)

    def sample_crops(self, boxes: torch.Tensor) -> torch.Tensor:
        """(N, 4) crop boxes (x1, y1, x2, y2, fractions of the frame) for ROI ``boxes`` of the same
        form: with probability ``framing`` a box between the ROI and the whole frame, else the ROI."""
        n = boxes.shape[0]
        u = torch.rand(n, 4, device=boxes.device)
        lo, hi = boxes[:, :2], boxes[:, 2:]
        t = u[:, :1] * (u[:, 3:] < self.framing)  # 0: the tight ROI
        size = torch.lerp(hi - lo, torch.ones_like(lo), t)
        # Positions that keep the ROI inside the crop and the crop inside the frame: [hi - size, lo].
        start_min, start_max = (hi - size).clamp(min=0), torch.minimum(lo, 1 - size)
        start = torch.lerp(start_min, torch.maximum(start_max, start_min), u[:, 1:3])
        return torch.cat([start, start + size], dim=1)

    def apply(self, x: torch.Tensor, p: AugmentParams, crop: torch.Tensor | None = None) -> torch.Tensor:
        """Apply ``p`` to ``x`` (N, C, H, W), float in [0, 1]; with ``crop`` (N, 4 fractions of the
        frame), sample each sample's box of ``x`` at ``out_size`` instead of the whole image."""
        n, c, h, w = x.shape
        if crop is not None and self.out_size is not None:
            h = w = self.out_size
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
        if crop is not None:
            # The output's [-1, 1] square onto the crop box, in the frame's normalised coordinates.
            centre = (crop[:, :2] + crop[:, 2:] - 1).to(pdtype).view(n, 1, 1, 2)
            half = (crop[:, 2:] - crop[:, :2]).to(pdtype).view(n, 1, 1, 2)
            grid = torch.addcmul(centre, grid, half)
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
        return self._apply_robust(y, p)

    def _apply_robust(self, y: torch.Tensor, p: AugmentParams) -> torch.Tensor:
        """Darkening, blur, then occlusion, where ``p`` has them (see module doc)."""
        n, c, h, w = y.shape
        channels_last = not y.is_contiguous() and y.is_contiguous(memory_format=torch.channels_last)
        if p.dark is not None:
            gain, gamma = (t.to(y.dtype).view(n, 1, 1, 1) for t in p.dark.unbind(1))
            # clamp before pow: 0 ** gamma is fine, but a tiny negative from rounding is not.
            y = y.clamp(min=0).pow(gamma) * gain
        if p.blur is not None:
            k = p.blur.shape[-1]
            weight = p.blur.to(y.dtype).repeat_interleave(c, dim=0).unsqueeze(1)  # (N*C, 1, K, K)
            padded = F.pad(y.reshape(1, n * c, h, w), (k // 2,) * 4, mode="replicate")
            y = F.conv2d(padded, weight, groups=n * c).view(n, c, h, w)
        if p.erase is not None:
            xs = self._const(tuple((i + 0.5) / w for i in range(w)), y.device, p.erase.dtype).view(1, 1, w)
            ys = self._const(tuple((i + 0.5) / h for i in range(h)), y.device, p.erase.dtype).view(1, h, 1)
            box = p.erase.view(n, 4, 1, 1)
            inside = (xs >= box[:, 0]) & (xs < box[:, 2]) & (ys >= box[:, 1]) & (ys < box[:, 3])  # (N, H, W)
            color = p.erase_color[:, :c] if p.erase_color.shape[1] >= c else p.erase_color[:, :1].expand(n, c)
            y = torch.where(inside.unsqueeze(1), color.to(y.dtype).view(n, c, 1, 1), y)
        if channels_last:
            y = y.contiguous(memory_format=torch.channels_last)
        return y

    def forward(self, x: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Augment ``x``; with ROI ``boxes`` (framing), ``x`` holds whole frames (see module doc)."""
        p = self.sample_params(x.shape[0], x.device)
        return self.apply(x, p, None if boxes is None else self.sample_crops(boxes))
