"""The eval-mode SE-VGG folded into a few tensor ops, for low-latency inference.

``InferenceEngine(model)`` computes exactly the function of ``model.eval()``
(up to float rounding), with the SE gates as a second output, in fewer and
cheaper operations:

- the input normalisation is folded into the first conv (it has no padding, so
  this is exact);
- each BatchNorm is folded into the conv before it, or, where the seed puts SE
  between conv and BN, into the SE block's outputs: its MLP emits the
  per-image scale and shift with BN already in them;
- dropout disappears;
- on CPU, convs over maps of at most ``gtsrb.model.SMALL_MAP`` pixels are one matrix
  product over their 3x3 patches, and a conv over a 1x1 map uses its centre tap
  alone, as in training (see ``gtsrb.model.Conv2d``).

``precision="bf16"`` (CPU only) runs the convs over maps larger than 1x1, all
but the first (3 input channels, where bf16 gains nothing), in bf16 through
oneDNN, with each weight packed on first use (one packing for single images,
one for batches) and the ReLU fused where nothing sits between them: the op
``torch.compile`` itself emits on CPU. The SE squeeze and MLP, the per-image
scale and shift (so the maps after an SE block are fp32), the first conv, the
1x1-map convs and the classifier stay fp32, and so do the outputs. On CPUs
that multiply bf16 natively (AMX, AVX-512-BF16) this is 1.3-1.4x faster at batch 1 (``gtsrb bench``: infer_ms_p50 against
infer_fp32_ms_p50); the outputs move by bf16 rounding (``make report`` measures
how far on the real test split), so ``gtsrb.inference.Classifier`` uses it only
where asked or, by default, on such CPUs, and evaluation runs in fp32.

The engine holds copies of the weights: rebuild it after changing the model.
``Classifier`` builds one on load and uses it for every prediction.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gtsrb.model import SEVGG, SqueezeExcitation, cpu_has_native_bf16, patch_weight, patches, takes_small_map_route


@dataclass
class _SE:
    """An SE block's MLP, with the BatchNorm that follows it (if any) folded into its outputs:
    the unit computes ``y * scale + shift`` with ``scale = gate * bn_scale``."""

    name: str
    fc1: torch.Tensor  # (C, hidden): transposed, the right-hand side of a product
    gate_w: torch.Tensor  # (hidden, C): the gate's logits
    shift_w: torch.Tensor | None  # (hidden, C): the scale-shift form's shift, times BN's scale
    shift_b: torch.Tensor | None  # (1, C): BN's shift, where BN follows SE
    bn_scale: torch.Tensor | None  # (1, C): BN's scale, where BN follows SE


@dataclass
class _Unit:
    """conv -> [SE] -> BN -> ReLU -> [SE], folded."""

    weight: torch.Tensor  # (Co, Ci, 3, 3), BN folded in unless SE sits before BN
    bias: torch.Tensor  # (Co,)
    padding: int
    se: _SE | None
    se_pre_bn: bool  # BN's scale and shift are then in ``se`` (bn_scale, shift_b)
    # The weight as the right-hand matrix of a product, for small maps on CPU (built on first use):
    # (9*Ci, Co) over 3x3 patches, and (Ci, Co) for the centre tap of a 1x1 map.
    patch_matrix: torch.Tensor | None = None
    centre_matrix: torch.Tensor | None = None
    # bf16 only: the weight packed by oneDNN (built on first use, see _conv).
    packed: dict | None = None


def has_packed_bf16_ops() -> bool:
    """Whether this torch build has the private oneDNN ops of ``precision="bf16"``."""
    return hasattr(torch.ops.mkldnn, "_convolution_pointwise") and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight")


@functools.lru_cache(maxsize=None)
def packed_bf16_available() -> bool:
    """Whether oneDNN's packed-weight convolution (used by ``precision="bf16"``) works in this torch
    build: the private ops exist and one small conv through them matches ``F.conv2d``."""
    if not has_packed_bf16_ops():
        return False
    try:
        x = torch.rand(1, 8, 5, 5).contiguous(memory_format=torch.channels_last)
        w, b = torch.rand(16, 8, 3, 3) - 0.5, torch.rand(16)
        unit = _Unit(w, b, 1, None, False, packed={})
        out = _conv(x, unit, relu=False).float()
        return bool(torch.allclose(out, F.conv2d(x, w, b, padding=1), atol=0.05, rtol=0.02))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def serving_precision(precision: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """``"auto"`` -> bf16 for an fp32 model on a CPU that multiplies bf16 natively (where the
    engine's bf16 path pays off), else fp32; ``"fp32"`` and ``"bf16"`` as given."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision {precision!r}: expected auto, fp32 or bf16")
    if precision != "auto":
        return precision
    fast = dtype == torch.float32 and device.type == "cpu" and cpu_has_native_bf16() and packed_bf16_available()
    return "bf16" if fast else "fp32"


def _bn_affine(bn: nn.BatchNorm2d | nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return a, bn.bias - bn.running_mean * a


class InferenceEngine:
    """``engine(x)`` -> (logits, {stage: gate (N, C)}) for float images (N, 3, S, S) in [0, 1]."""

    def __init__(self, model: SEVGG, precision: str = "fp32"):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision {precision!r}: expected fp32 or bf16")
        if precision == "bf16":
            param = next(model.parameters())
            if param.device.type != "cpu":
                raise ValueError("precision 'bf16' runs on CPU only (oneDNN): use fp32 on other devices")
            if param.dtype != torch.float32:
                raise ValueError(f"precision 'bf16' takes an fp32 model, not {param.dtype}")
            if not packed_bf16_available():
                raise ValueError("precision 'bf16': this torch build lacks oneDNN's packed convolution")
        self.config = model.config
        self.precision = precision
        self.steps: list[tuple[str, object]] = []
        with torch.no_grad():
            self._fold(model)
        if precision == "bf16":
            for kind, u in self.steps:
                # The first conv (3 input channels, K = 27) gains nothing from bf16: it stays fp32.
                if kind == "unit" and u.weight.shape[1] > 3:
                    u.packed = {}

    def _fold(self, model: SEVGG) -> None:
        mods = list(model.features)
        se_names = {id(block): name for name, block in model.se_blocks()}
        mean = model.mean.flatten()
        std = model.std.flatten()
        first = True
        i = 0
        while i < len(mods):
            m = mods[i]
            if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
                self.steps.append(("pool", m))
                i += 1
                continue
            if not isinstance(m, nn.Conv2d):
                raise ValueError(f"engine: unexpected {type(m).__name__} at features[{i}]")
            group = [m]
            i += 1
            while i < len(mods) and not isinstance(mods[i], (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
                group.append(mods[i])
                i += 1
            self.steps.append(("unit", self._fold_unit(group, se_names, mean, std, first)))
            first = False
        lin1, bn1, lin2 = (m for m in model.classifier if isinstance(m, (nn.Linear, nn.BatchNorm1d)))
        a, c = _bn_affine(bn1)
        w1 = lin1.weight * a[:, None]
        b1 = c + (lin1.bias * a if lin1.bias is not None else 0)
        self.head = (w1.t().contiguous(), b1.contiguous(), lin2.weight.t().contiguous(), lin2.bias.clone())

    @staticmethod
    def _fold_unit(group, se_names, mean, std, first) -> _Unit:
        conv = group[0]
        kinds = [type(m) for m in group[1:]]
        bn = next(m for m in group if isinstance(m, nn.BatchNorm2d))
        se_block = next((m for m in group if isinstance(m, SqueezeExcitation)), None)
        se_pre_bn = se_block is not None and group.index(se_block) < group.index(bn)
        if not all(issubclass(k, (SqueezeExcitation, nn.BatchNorm2d, nn.ReLU, nn.Dropout)) for k in kinds):
            raise ValueError(f"engine: cannot fold {[k.__name__ for k in kinds]}")
        w = conv.weight.detach().clone()
        b = w.new_zeros(w.shape[0]) if conv.bias is None else conv.bias.detach().clone()
        if first:
            if conv.padding != (0, 0):
                raise ValueError("engine: the first conv must be unpadded to fold the normalisation")
            # conv((x - m) / s) = conv'(x) + b' with conv' = W / s, b' = -sum W m / s.
            b = b - (w * (mean / std)[None, :, None, None]).sum((1, 2, 3))
            w = w / std[None, :, None, None]
        a, c = _bn_affine(bn)
        if not se_pre_bn:
            w, b = w * a[:, None, None, None], b * a + c
        se = None
        if se_block is not None:
            # fc2 emits the gate's logits, then (scale-shift form) the shift. Where BN follows SE,
            # BN(y * g + shift) = y * (g a) + (shift a + c): a and c go into the shift's product.
            fc2 = se_block.fc2.weight.detach().flatten(1).t()  # (hidden, C or 2C)
            ch = w.shape[0]
            shift_w = fc2[:, ch:] if se_block.form == "scale_shift" else None
            if se_pre_bn and shift_w is not None:
                shift_w = shift_w * a
            se = _SE(
                se_names[id(se_block)],
                se_block.fc1.weight.detach().flatten(1).t().contiguous(),
                fc2[:, :ch].contiguous(),
                None if shift_w is None else shift_w.contiguous(),
                c.view(1, -1).clone() if se_pre_bn else None,
                a.view(1, -1).clone() if se_pre_bn else None,
            )
        return _Unit(w.contiguous(memory_format=torch.channels_last), b, conv.padding[0], se, se_pre_bn)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, se: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``se=False``: every SE block is the identity (the 'SE off' counterfactual)."""
        gates: dict[str, torch.Tensor] = {}
        x = x.contiguous(memory_format=torch.channels_last)
        for kind, step in self.steps:
            if kind == "pool":
                x = step(x)
                continue
            u: _Unit = step
            excite = se and u.se is not None
            # Where BN follows SE the conv's ReLU comes after SE, so it cannot be fused.
            y = _conv(x, u, relu=not u.se_pre_bn)
            if excite:
                # The per-image affine runs in fp32 (bf16 maps included: type promotion), so the
                # next op gets the map in fp32 and a bf16 conv casts it once.
                scale, shift = _excite(y, u.se, gates)
                x = y * scale if shift is None else torch.addcmul(shift, y, scale)
            elif u.se_pre_bn:
                x = torch.addcmul(_as_map(u.se.shift_b), y, _as_map(u.se.bn_scale))
            else:
                x = y
            if u.se_pre_bn:
                x = x.relu_()
        w1, b1, w2, b2 = self.head
        h = torch.addmm(b1, x.flatten(1).to(w1.dtype), w1).relu_()
        return torch.addmm(b2, h, w2), gates


def _excite(y: torch.Tensor, se: _SE, gates: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The unit's per-image scale and shift (N, C, 1, 1), BN folded in; the gate goes to ``gates``."""
    h = torch.mm(y.mean((2, 3), dtype=se.fc1.dtype), se.fc1).relu_()
    g = torch.mm(h, se.gate_w).sigmoid_()
    gates[se.name] = g
    scale = g if se.bn_scale is None else g * se.bn_scale
    if se.shift_w is None:
        shift = se.shift_b
    elif se.shift_b is None:
        shift = torch.mm(h, se.shift_w)
    else:
        shift = torch.addmm(se.shift_b, h, se.shift_w)
    return _as_map(scale), None if shift is None else _as_map(shift)


def _as_map(v: torch.Tensor) -> torch.Tensor:
    """(N, C) -> (N, C, 1, 1), to broadcast over a map."""
    return v.view(v.shape[0], v.shape[1], 1, 1)


def _conv(x: torch.Tensor, u: _Unit, relu: bool) -> torch.Tensor:
    n, c, h, w = x.shape
    if u.packed is not None and h * w > 1:
        # bf16: oneDNN with the weight packed once, the ReLU fused. The packing is chosen for an
        # input shape; any batch size runs with it, so one for single images and one for batches.
        x = x.to(torch.bfloat16)
        key = (n == 1, c, h, w)
        pad = [u.padding] * 2
        weight = u.packed.get(key)
        if weight is None:
            weight = u.packed[key] = torch._C._nn.mkldnn_reorder_conv2d_weight(
                u.weight.to(torch.bfloat16).contiguous().to_mkldnn(), pad, [1, 1], [1, 1], 1, list(x.shape)
            )
        # The bias stays fp32 (BatchNorm is folded into it); oneDNN adds it before rounding to bf16.
        return torch.ops.mkldnn._convolution_pointwise(x, weight, u.bias, pad, [1, 1], [1, 1], 1,
                                                       "relu" if relu else "none", [], "")
    x = x.to(u.weight.dtype)  # bf16 engine: maps of 1x1 run in fp32 (a no-op otherwise)
    if takes_small_map_route(x, u.padding):
        # A pre-transposed, contiguous right-hand matrix: a third faster than F.linear at batch 1.
        if h == 1 and w == 1:
            if u.centre_matrix is None:
                u.centre_matrix = u.weight[:, :, 1, 1].t().contiguous()
            out = torch.addmm(u.bias, x.reshape(n, c), u.centre_matrix).reshape(n, -1, 1, 1)
        else:
            if u.patch_matrix is None:
                u.patch_matrix = patch_weight(u.weight).t().contiguous()
            out = torch.addmm(u.bias, patches(x), u.patch_matrix).reshape(n, h, w, -1).permute(0, 3, 1, 2)
    else:
        out = F.conv2d(x, u.weight, u.bias, padding=u.padding)
    return out.relu_() if relu else out
