"""SE block and SE-VGG11, built from one cfg list and a typed ModelConfig.

The layout follows torchvision's ``models/vgg.py``: VGG-11 ("A") is the data
``CFG_A``; :func:`make_features` turns it into layers. Squeeze-and-excitation
(Hu et al., "Squeeze-and-Excitation Networks", arXiv:1709.01507) sits after the
LAST conv of each of the 5 stages, where the seed put it.

Two quirks of the seed are kept because the ``seed`` preset must reproduce its
printed model exactly: the first conv has no padding (28 -> 26), and the last
pool is ``MaxPool2d(kernel_size=1, stride=2)``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from gtsrb.classes import NUM_CLASSES

# VGG-11 "A": numbers are conv widths, "M" ends a stage with a pool.
CFG_A: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
NUM_STAGES = 5

SEForm = Literal["gate", "scale_shift"]
SEPosition = Literal["pre_bn", "post_act"]


class _SpatialMean(torch.autograd.Function):
    """x.mean((2, 3), keepdim=True), whose gradient is a broadcast view, never materialised.
    Computed as one average pool over the whole map: on a bf16 batch ``mean`` first copies
    the map to fp32 (5x slower at stage 1 here)."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return F.avg_pool2d(x, x.shape[2:])

    @staticmethod
    def backward(ctx, grad):
        n, c, h, w = ctx.shape
        return (grad / (h * w)).expand(n, c, h, w)


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d``; to a 1x1 output (SE's squeeze) its gradient is a broadcast view.

    Same module and values; only the backward changes. The stock backward writes the
    full-size gradient in NCHW order, and autograd then adds it, element by element
    across the two layouts, to the channels_last gradient from SE's product: on CPU
    that was half of stage 1's SE forward and backward in training (14.7 against
    7.2 ms at batch 128, bf16). Here the sum is one broadcast add.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and self.output_size in (1, (1, 1)):
            return _SpatialMean.apply(x)
        return super().forward(x)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (Hu et al., arXiv:1709.01507), in two forms.

    - ``gate``: the paper's block, ``x * gate(w)`` with C outputs.
    - ``scale_shift``: the seed's "SE with bias" (as in some game-playing
      networks): the MLP emits 2C values, a per-channel scale and shift,
      ``x * gate(w) + b``.

    The hidden width is ``channels // reduction``, floored at ``min_hidden``.
    The gate is injectable and is a submodule, so a forward hook on ``gate``
    reads the excitation.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        min_hidden: int = 4,
        form: SEForm = "gate",
        gate_layer: Callable[[], nn.Module] = nn.Sigmoid,
    ):
        super().__init__()
        hidden = max(min_hidden, channels // reduction)
        self.form = form
        out = 2 * channels if form == "scale_shift" else channels
        self.squeeze = AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, out, 1, bias=False)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(self.act(self.fc1(self.squeeze(x))))
        if self.form == "scale_shift":
            w, b = s.chunk(2, dim=1)
            return x * self.gate(w) + b
        return x * self.gate(s)


# Largest feature map (H*W) that Conv2d computes as one matrix product on CPU.
SMALL_MAP = 9
# Largest map whose weight gradient Conv2d computes as one matrix product in bf16 training on CPU.
PATCH_GRAD_MAP = 36


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` with a faster CPU route for the 3x3 and 1x1 maps of stages 4 and 5.

    Same module, parameters and state_dict as ``nn.Conv2d``, and the same
    function: only the way it is computed changes. oneDNN is slow on these
    tiny maps, in bf16 backward especially (a 3x3 map ran at a tenth of the
    AMX matrix rate), so on CPU a 3x3/pad-1 conv over a map of at most
    ``SMALL_MAP`` pixels becomes one matrix product over its 3x3 patches
    (im2col in NHWC order). On a 1x1 map eight of the nine taps only ever see
    the zero padding, so the product uses the centre tap alone, which is the
    same sum without the zero terms; the other taps get the zero gradient they
    always got. In bf16 training the 6x6 maps of stage 3 (up to
    ``PATCH_GRAD_MAP`` pixels) keep oneDNN for the forward and the input
    gradient, and take their weight gradient as one product over the patches,
    where oneDNN's is slowest. Measured in `gtsrb bench` (``train_img_s``,
    ``train_variants_img_s``).
    """

    def _conv_forward(self, input, weight, bias):
        plain_3x3 = (
            self.kernel_size == (3, 3) and self.stride == (1, 1) and self.dilation == (1, 1)
            and self.groups == 1 and self.padding_mode == "zeros" and self.padding == (1, 1)
        )
        if plain_3x3 and takes_small_map_route(input, 1):
            return small_map_conv3x3(input, weight, bias)
        if plain_3x3 and weight.requires_grad and _takes_patch_grad_route(input):
            return _PatchGradConv.apply(*(t.to(torch.bfloat16) if t is not None else t for t in (input, weight, bias)))
        return super()._conv_forward(input, weight, bias)


def takes_small_map_route(x: torch.Tensor, padding: int) -> bool:
    """Whether a 3x3 stride-1 conv of ``x`` runs as a matrix product (CPU, pad 1, a small map).
    The one rule, for training (``Conv2d``) and inference (``gtsrb.engine``)."""
    return x.device.type == "cpu" and x.dim() == 4 and padding == 1 and x.shape[2] * x.shape[3] <= SMALL_MAP


def small_map_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """3x3, stride-1, pad-1 convolution as one matrix product; returns channels_last."""
    n, c, h, w = x.shape
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    if h == 1 and w == 1:
        return _CentreTap.apply(x.reshape(n, c), weight, bias, dtype).reshape(n, -1, 1, 1)
    if dtype is not None:
        # Cast the fp32 operands as autocast casts a conv's (building the patches in bf16 also
        # moves half the bytes); the custom backward needs them in one dtype.
        x, weight, bias = (t.to(dtype) if t is not None and t.dtype == torch.float32 else t for t in (x, weight, bias))
    return _PatchConv.apply(x, weight, bias)


def _takes_patch_grad_route(x: torch.Tensor) -> bool:
    """bf16 autocast training on CPU, a map of SMALL_MAP < H*W <= PATCH_GRAD_MAP (stage 3's 6x6)."""
    return (
        x.device.type == "cpu" and x.dim() == 4 and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16 and SMALL_MAP < x.shape[2] * x.shape[3] <= PATCH_GRAD_MAP
    )


class _PatchGradConv(torch.autograd.Function):
    """A 3x3 pad-1 conv through oneDNN, forward and input gradient, whose weight gradient is one
    matrix product over the input's 3x3 patches: on 6x6 bf16 maps oneDNN's weight gradient took
    9.0 ms at batch 128 (256 to 256 channels), the product 5.3 ms, the patches included."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, padding=1)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        n, c, h, w = x.shape
        g = grad.permute(0, 2, 3, 1).reshape(n * h * w, -1)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False]
            )[0]
        if ctx.needs_input_grad[1]:
            grad_w = (g.t() @ patches(x)).reshape(-1, 3, 3, c).permute(0, 3, 1, 2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b


class _CentreTap(torch.autograd.Function):
    """A 3x3 pad-1 conv over 1x1 maps, (N, C) -> (N, Co): the centre tap as a linear layer.

    Only the centre tap is cast (under autocast) and multiplied, and the weight's gradient,
    zero but for that tap, is written straight into a tensor laid out like the weight.
    Through autograd's slicing the whole weight was cast each step and its gradient made
    in NCHW order, then copied again into the channels_last parameter's layout.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, dtype):
        dtype = dtype or x.dtype
        centre = weight[:, :, 1, 1].to(dtype)
        x = x.to(dtype)
        ctx.save_for_backward(x, centre, weight)
        ctx.has_bias = bias is not None
        return F.linear(x, centre, None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx, grad):
        x, centre, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ centre
        if ctx.needs_input_grad[1]:
            grad_w = torch.zeros_like(weight)
            grad_w[:, :, 1, 1] = grad.t() @ x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b, None


def patches(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> the 3x3 patches of its zero-padded map, (N*H*W, 9*C), in (kh, kw, c) order."""
    n, c, h, w = x.shape
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # (N, H+2, W+2, C)
    cols = torch.cat([xp[:, i : i + h, j : j + w] for i in range(3) for j in range(3)], dim=3)
    return cols.reshape(n * h * w, 9 * c)


def patch_weight(weight: torch.Tensor) -> torch.Tensor:
    """(Co, C, 3, 3) -> (Co, 9*C) in the (kh, kw, c) order of ``patches``."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


class _PatchConv(torch.autograd.Function):
    """im2col conv whose backward scatters the patch gradient into one buffer
    (autograd's own backward of the nine slices allocates nine zero maps)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        n, c, h, w = x.shape
        out_ch = weight.shape[0]
        cols, wm = patches(x), patch_weight(weight)
        ctx.save_for_backward(cols, wm)
        ctx.shape, ctx.has_bias = (n, c, h, w), bias is not None
        out = F.linear(cols, wm, bias)
        return out.reshape(n, h, w, out_ch).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad):
        cols, wm = ctx.saved_tensors
        n, c, h, w = ctx.shape
        g = grad.permute(0, 2, 3, 1).reshape(n * h * w, -1)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            gc = (g @ wm).reshape(n, h, w, 3, 3, c)
            gp = gc.new_zeros(n, h + 2, w + 2, c, dtype=torch.float32)  # sum the 9 taps in fp32
            for i in range(3):
                for j in range(3):
                    gp[:, i : i + h, j : j + w] += gc[:, :, :, i, j]
            grad_x = gp[:, 1:-1, 1:-1].permute(0, 3, 1, 2).to(gc.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = (g.t() @ cols).reshape(-1, 3, 3, c).permute(0, 3, 1, 2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose CPU mask is drawn by ``torch.rand``, 3x faster than the
    ``bernoulli_`` of ``F.dropout`` on CPU here; same module, same distribution.
    Other devices keep ``F.dropout`` (one fused kernel on CUDA)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return x.mul_(0.0) if self.inplace else x * 0.0
        mask = (torch.rand(x.shape, device=x.device) >= self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x.mul_(mask) if self.inplace else x * mask


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network. Saved inside every checkpoint."""

    se_stages: tuple[bool, ...] = (True,) * NUM_STAGES  # SE after the last conv of stage i
    se_form: SEForm = "scale_shift"
    se_position: SEPosition = "pre_bn"  # between conv and BN (seed), or after the ReLU
    se_reduction: int = 16
    se_min_hidden: int = 4
    pool: Literal["max", "avg"] = "max"
    conv_dropout: float = 0.4  # after every conv that does not end a stage
    classifier_dropout: float = 0.5
    image_size: int = 28
    num_classes: int = NUM_CLASSES
    cfg: tuple[int | str, ...] = field(default=CFG_A)
    # Per-channel input statistics of the real archive's track-split train part
    # (28x28, full frame); the model normalises its [0, 1] input with them.
    input_mean: tuple[float, float, float] = (0.331, 0.304, 0.315)
    input_std: tuple[float, float, float] = (0.264, 0.253, 0.260)

    def __post_init__(self):
        # JSON and checkpoints hand back lists; keep the dataclass hashable and exact.
        object.__setattr__(self, "se_stages", tuple(bool(s) for s in self.se_stages))
        object.__setattr__(self, "cfg", tuple(self.cfg))
        object.__setattr__(self, "input_mean", tuple(float(v) for v in self.input_mean))
        object.__setattr__(self, "input_std", tuple(float(v) for v in self.input_std))
        if len(self.se_stages) != self.cfg.count("M"):
            raise ValueError(f"se_stages has {len(self.se_stages)} entries for {self.cfg.count('M')} stages")
        if self.se_form not in ("gate", "scale_shift"):
            raise ValueError(f"se_form {self.se_form!r}: expected 'gate' or 'scale_shift'")
        if self.se_position not in ("pre_bn", "post_act"):
            raise ValueError(f"se_position {self.se_position!r}: expected 'pre_bn' or 'post_act'")
        if self.pool not in ("max", "avg"):
            raise ValueError(f"pool {self.pool!r}: expected 'max' or 'avg'")
        if self.se_reduction < 1:
            raise ValueError(f"se_reduction {self.se_reduction}: must be >= 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))


PRESETS: dict[str, ModelConfig] = {
    "seed": ModelConfig(),
    "vgg11": ModelConfig(se_stages=(False,) * NUM_STAGES),
}


def make_features(config: ModelConfig) -> nn.Sequential:
    """CFG list -> conv/SE/BN/ReLU/dropout/pool layers (cf. torchvision's make_layers)."""
    layers: list[nn.Module] = []
    in_ch, stage, first = 3, 0, True
    cfg = config.cfg
    for i, v in enumerate(cfg):
        if v == "M":
            last = i == len(cfg) - 1
            # The seed's last "pool" is kernel 1, stride 2: a subsample, not a pool.
            k = 1 if last else 2
            layers.append(nn.MaxPool2d(k, 2) if config.pool == "max" else nn.AvgPool2d(k, 2))
            stage += 1
            continue
        ends_stage = cfg[i + 1] == "M"
        se = config.se_stages[stage] and ends_stage
        layers.append(Conv2d(in_ch, v, 3, padding=0 if first else 1, bias=False))
        se_block = SqueezeExcitation(v, config.se_reduction, config.se_min_hidden, config.se_form) if se else None
        if se_block is not None and config.se_position == "pre_bn":
            layers.append(se_block)
        layers += [nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
        if se_block is not None and config.se_position == "post_act":
            layers.append(se_block)
        if not ends_stage:
            layers.append(Dropout(config.conv_dropout))
        in_ch, first = v, False
    return nn.Sequential(*layers)


class SEVGG(nn.Module):
    """VGG-11 with optional SE per stage. Input: float images (N, 3, S, S) in [0, 1]."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        # Constants, not state: kept out of the state_dict, rebuilt from the config.
        self.register_buffer("mean", torch.tensor(config.input_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.input_std).view(1, 3, 1, 1), persistent=False)
        self.features = make_features(config)
        with torch.no_grad():
            flat = self.features.eval()(torch.zeros(1, 3, config.image_size, config.image_size)).numel()
        self.features.train()
        p = config.classifier_dropout
        self.classifier = nn.Sequential(
            nn.Linear(flat, 512, bias=False),
            Dropout(p),
            nn.BatchNorm1d(512),
            nn.ReLU(inplace=True),
            Dropout(p),
            nn.Linear(512, config.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return self.classifier(torch.flatten(self.features(x), 1))

    def se_blocks(self) -> list[tuple[str, SqueezeExcitation]]:
        """(name, block) for every SE block, named by stage: 'stage1' ... 'stage5'."""
        out, stage = [], 1
        for m in self.features:
            if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
                stage += 1
            elif isinstance(m, SqueezeExcitation):
                out.append((f"stage{stage}", m))
        return out


def build_model(config: ModelConfig | str) -> SEVGG:
    """A ModelConfig or a preset name ('seed', 'vgg11') -> freshly initialised SEVGG."""
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown preset {config!r}: expected one of {', '.join(PRESETS)}")
        config = PRESETS[config]
    return SEVGG(config)


def cpu_has_native_bf16() -> bool:
    """AMX or AVX-512-BF16: oneDNN multiplies bf16 in hardware (else bf16 is emulated, and slow)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):  # private API: absent in some torch builds
        return False


def to_float_images(batch: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, H, W, 3) -> float (N, 3, H, W) in [0, 1], the model's input."""
    return batch.permute(0, 3, 1, 2).float().div_(255)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
