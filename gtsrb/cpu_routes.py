"""Faster CPU routes for the training step, switched on by one explicit call.

``gtsrb.model`` builds SE-VGG from stock ``torch.nn`` modules, and evaluation,
prediction and the demo run it as built. The training step
(``gtsrb.train.make_train_step``) calls :func:`apply_routes` on CPU: it swaps
the class of some modules for a subclass below that computes the same function
with the same parameters and state_dict, by another route. Nothing else in the
project knows about them.

Each route has a name, and ``make bench`` (``benchmarks/bench/``) times the training step with every
route off (the ``stock`` variant) and with each route alone, so a route stays
only where it makes the step faster (:data:`ROUTES` says on which CPUs that was
measured).

- ``small_map_conv``: a 3x3/pad-1 conv over a map of at most ``SMALL_MAP``
  pixels (the 3x3 and 1x1 maps of stages 4 and 5 at 28 px) is one matrix
  product over its 3x3 patches, where oneDNN's conv is slow. On a 1x1 map
  eight of the nine taps only see zero padding, so only the centre tap is
  multiplied (the same sum without its zero terms).
- ``patch_grad_conv``: in bf16 training, a 3x3/pad-1 conv over a map of
  ``SMALL_MAP`` to ``PATCH_GRAD_MAP`` pixels (stage 3's 6x6) keeps oneDNN for
  the forward and the input gradient, and takes its weight gradient as one
  matrix product over patches.
- ``squeeze_view_grad``: the SE squeeze's gradient is a broadcast view, not a
  full-size map that autograd then adds across memory layouts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Largest feature map (H*W) whose 3x3 conv runs as one matrix product.
SMALL_MAP = 9
# Largest map whose bf16 weight gradient runs as one matrix product.
PATCH_GRAD_MAP = 36

# Every route, and the CPU training step's default (``TrainConfig.cpu_routes``). Where each was
# measured faster than stock: small_map_conv in fp32 on an AMD EPYC with AVX2 only (`make bench`,
# results/SPEED.md) and in bf16 on an Intel Xeon with AMX; squeeze_view_grad and patch_grad_conv in
# bf16 on that Intel Xeon (one change at a time, against the stock module, in the speed issue's
# notes). In fp32 on the AVX2 EPYC squeeze_view_grad measured within the noise of stock, and
# patch_grad_conv does nothing (it acts under bf16 autocast only).
ROUTES = ("small_map_conv", "patch_grad_conv", "squeeze_view_grad")


def apply_routes(model: nn.Module, routes: tuple[str, ...] | list[str] = ROUTES) -> nn.Module:
    """Swap the class of the modules each named route covers, in place; returns ``model``.

    The modules keep their parameters, buffers and state_dict; only ``forward``
    changes. ``routes=()`` leaves the model stock.
    """
    unknown = set(routes) - set(ROUTES)
    if unknown:
        raise ValueError(f"unknown CPU route(s) {', '.join(sorted(unknown))}: expected some of {', '.join(ROUTES)}")
    conv_class = {
        (True, True): RoutedConv2d,
        (True, False): SmallMapConv2d,
        (False, True): PatchGradConv2d,
    }.get(("small_map_conv" in routes, "patch_grad_conv" in routes))
    for m in model.modules():
        if conv_class is not None and type(m) is nn.Conv2d and _is_plain_3x3(m):
            m.__class__ = conv_class
        elif "squeeze_view_grad" in routes and type(m) is nn.AdaptiveAvgPool2d and m.output_size in (1, (1, 1)):
            m.__class__ = ViewGradSqueeze
    return model


def _is_plain_3x3(conv: nn.Conv2d) -> bool:
    return (
        conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.dilation == (1, 1)
        and conv.groups == 1 and conv.padding_mode == "zeros" and conv.padding == (1, 1)
    )


# --- small_map_conv ------------------------------------------------------------------------


class SmallMapConv2d(nn.Conv2d):
    """``nn.Conv2d`` (3x3, pad 1) that runs over maps of at most ``SMALL_MAP`` pixels on CPU
    as one matrix product over the patches (the centre tap alone on a 1x1 map)."""

    def _conv_forward(self, input, weight, bias):
        if _is_small_cpu_map(input):
            return small_map_conv3x3(input, weight, bias)
        return super()._conv_forward(input, weight, bias)


def _is_small_cpu_map(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dim() == 4 and x.shape[2] * x.shape[3] <= SMALL_MAP


def small_map_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """3x3, stride-1, pad-1 convolution as one matrix product; returns channels_last."""
    n, c, h, w = x.shape
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    if h == 1 and w == 1:
        return _CentreTap.apply(x.reshape(n, c), weight, bias, dtype).reshape(n, -1, 1, 1)
    if dtype is not None:
        # Cast the fp32 operands as autocast casts a conv's; the custom backward needs one dtype.
        x, weight, bias = (t.to(dtype) if t is not None and t.dtype == torch.float32 else t for t in (x, weight, bias))
    return _PatchConv.apply(x, weight, bias)


def _rows(grad: torch.Tensor) -> torch.Tensor:
    """A conv's output gradient (N, Co, H, W) as one row per output pixel, (N*H*W, Co)."""
    return grad.permute(0, 2, 3, 1).reshape(-1, grad.shape[1])


def _weight_and_bias_grads(ctx, g: torch.Tensor, cols, c: int) -> tuple:
    """A 3x3 conv's weight and bias gradients from its output-gradient rows ``g`` and its input's 3x3 patches
    (``cols()``, (N*H*W, 9*C), made only when the weight needs its gradient); None where autograd asks none."""
    grad_w = (g.t() @ cols()).reshape(-1, 3, 3, c).permute(0, 3, 1, 2) if ctx.needs_input_grad[1] else None
    grad_b = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
    return grad_w, grad_b


def patches(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> the 3x3 patches of its zero-padded map, (N*H*W, 9*C), in (kh, kw, c) order."""
    n, c, h, w = x.shape
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # (N, H+2, W+2, C)
    cols = torch.cat([xp[:, i : i + h, j : j + w] for i in range(3) for j in range(3)], dim=3)
    return cols.reshape(n * h * w, 9 * c)


class _PatchConv(torch.autograd.Function):
    """im2col conv whose backward scatters the patch gradient into one buffer
    (autograd's own backward of the nine slices allocates nine zero maps)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        n, c, h, w = x.shape
        cols = patches(x)
        wm = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)  # (Co, 9*C), the order of `patches`
        ctx.save_for_backward(cols, wm)
        ctx.shape, ctx.has_bias = (n, c, h, w), bias is not None
        return F.linear(cols, wm, bias).reshape(n, h, w, -1).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad):
        cols, wm = ctx.saved_tensors
        n, c, h, w = ctx.shape
        g = _rows(grad)
        grad_x = None
        if ctx.needs_input_grad[0]:
            gc = (g @ wm).reshape(n, h, w, 3, 3, c)
            gp = gc.new_zeros(n, h + 2, w + 2, c, dtype=torch.float32)  # sum the 9 taps in fp32
            for i in range(3):
                for j in range(3):
                    gp[:, i : i + h, j : j + w] += gc[:, :, :, i, j]
            grad_x = gp[:, 1:-1, 1:-1].permute(0, 3, 1, 2).to(gc.dtype)
        return grad_x, *_weight_and_bias_grads(ctx, g, lambda: cols, c)


class _CentreTap(torch.autograd.Function):
    """A 3x3 pad-1 conv over 1x1 maps, (N, C) -> (N, Co): the centre tap as a linear layer.
    Only that tap is cast and multiplied; the weight's gradient is zero but for it."""

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


# --- patch_grad_conv -----------------------------------------------------------------------


class PatchGradConv2d(nn.Conv2d):
    """``nn.Conv2d`` (3x3, pad 1) whose weight gradient, in bf16 autocast training on CPU over
    maps of ``SMALL_MAP`` to ``PATCH_GRAD_MAP`` pixels, is one matrix product over patches."""

    def _conv_forward(self, input, weight, bias):
        if weight.requires_grad and _takes_patch_grad_route(input):
            return _PatchGradConv.apply(*(t.to(torch.bfloat16) if t is not None else t for t in (input, weight, bias)))
        return super()._conv_forward(input, weight, bias)


class RoutedConv2d(SmallMapConv2d, PatchGradConv2d):
    """Both conv routes: the small maps first, then the patch-gradient maps, else oneDNN."""


def _takes_patch_grad_route(x: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu" and x.dim() == 4 and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16 and SMALL_MAP < x.shape[2] * x.shape[3] <= PATCH_GRAD_MAP
    )


class _PatchGradConv(torch.autograd.Function):
    """A 3x3 pad-1 conv through oneDNN, forward and input gradient, whose weight gradient is
    one matrix product over the input's 3x3 patches."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, padding=1)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False]
            )[0]
        return grad_x, *_weight_and_bias_grads(ctx, _rows(grad), lambda: patches(x), x.shape[1])


# --- squeeze_view_grad ---------------------------------------------------------------------


class ViewGradSqueeze(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d(1)`` whose gradient is a broadcast view, never a full-size map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SpatialMean.apply(x) if x.dim() == 4 else super().forward(x)


class _SpatialMean(torch.autograd.Function):
    """x.mean((2, 3), keepdim=True) as one average pool (on a bf16 batch ``mean`` first
    copies the map to fp32), with a broadcast view as its gradient."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return F.avg_pool2d(x, x.shape[2:])

    @staticmethod
    def backward(ctx, grad):
        n, c, h, w = ctx.shape
        return (grad / (h * w)).expand(n, c, h, w)
