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
from torch import nn

from gtsrb.classes import NUM_CLASSES
from gtsrb.validate import ConfigError, check_dataclass

# VGG-11 "A": numbers are conv widths, "M" ends a stage with a pool.
CFG_A: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
NUM_STAGES = 5

SEForm = Literal["gate", "scale_shift"]
SEPosition = Literal["pre_bn", "post_act"]


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (Hu et al., arXiv:1709.01507), in two forms.

    - ``gate``: the paper's block, ``x * gate(w)`` with C outputs.
    - ``scale_shift``: the seed's "SE with bias" (as in some game-playing
      networks): the MLP emits 2C values, a per-channel scale and shift,
      ``x * gate(w) + b``.

    The hidden width is ``channels // reduction``, floored at ``min_hidden``.
    ``bias``: whether the two 1x1 layers have biases. The seed's have none; the
    paper's fully connected layers (and torchvision's and timm's blocks) do.
    Without one, a hidden ReLU that is zero for every input gets no gradient and
    stays dead (results/REPORT.md, "What the SE blocks do").
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
        bias: bool = False,
    ):
        super().__init__()
        hidden = max(min_hidden, channels // reduction)
        self.form = form
        out = 2 * channels if form == "scale_shift" else channels
        self.squeeze = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=bias)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, out, 1, bias=bias)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(self.act(self.fc1(self.squeeze(x))))
        if self.form == "scale_shift":
            w, b = s.chunk(2, dim=1)
            return x * self.gate(w) + b
        return x * self.gate(s)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network. Saved inside every checkpoint."""

    se_stages: tuple[bool, ...] = (True,) * NUM_STAGES  # SE after the last conv of stage i
    se_form: SEForm = "scale_shift"
    se_position: SEPosition = "pre_bn"  # between conv and BN (seed), or after the ReLU
    se_reduction: int = 16
    se_min_hidden: int = 4
    se_bias: bool = False  # biases in the SE blocks' 1x1 layers (the seed has none)
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
    # "dataset": normalise with input_mean/std (the seed); "image": per-image contrast
    # normalisation, each image to zero mean and unit variance over its pixels and channels,
    # so a dark or washed-out photo reaches the first conv like a well-lit one.
    input_norm: Literal["dataset", "image"] = "dataset"

    def __post_init__(self):
        # JSON and checkpoints hand back lists (made tuples here, so the dataclass stays hashable);
        # a wrong type or range stops here with the field's name (gtsrb.validate).
        check_dataclass(self, MODEL_RANGES, "ModelConfig")
        if not self.cfg or self.cfg[-1] != "M" or any(v != "M" and (isinstance(v, str) or v < 1) for v in self.cfg):
            raise ConfigError(f"ModelConfig.cfg: {list(self.cfg)!r} must be conv widths >= 1 and 'M' pools, ending in 'M'")
        if len(self.se_stages) != self.cfg.count("M"):
            raise ConfigError(f"ModelConfig.se_stages: {len(self.se_stages)} entries for {self.cfg.count('M')} stages")
        side = feature_side(self)
        if side < 1:
            raise ConfigError(f"ModelConfig.image_size: {self.image_size} px is too small for {self.cfg.count('M')} "
                              f"stages (a feature map shrinks to nothing)")

    def describe(self) -> str:
        """The config as one phrase, for a page or a report: which stages have SE and how the blocks are
        built, then pooling, dropout and input normalisation, e.g. "SE in stage(s) 1, 2 of 5, form `gate`,
        position `pre_bn`, reduction 16, max pooling, conv dropout 0.40, classifier dropout 0.50, input
        norm `dataset`". Without SE the block's fields do not matter, so it says "no SE" and skips them."""
        stages = [str(i + 1) for i, on in enumerate(self.se_stages) if on]
        if stages:
            se = (f"SE in stage(s) {', '.join(stages)} of {len(self.se_stages)}, form `{self.se_form}`, "
                  f"position `{self.se_position}`, reduction {self.se_reduction}"
                  + (", with biases" if self.se_bias else ""))
        else:
            se = "no SE"
        return (f"{se}, {self.pool} pooling, conv dropout {self.conv_dropout:.2f}, classifier dropout "
                f"{self.classifier_dropout:.2f}, input norm `{self.input_norm}`")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"ModelConfig: expected a JSON object of fields, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown ModelConfig field(s): {', '.join(sorted(map(str, unknown)))}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))


# field -> (low, high, bounds): what each number may be (gtsrb.validate.check_dataclass).
MODEL_RANGES = {
    "se_reduction": (1, None, "[)"), "se_min_hidden": (1, None, "[)"),
    "conv_dropout": (0.0, 1.0, "[)"), "classifier_dropout": (0.0, 1.0, "[)"),
    "image_size": (8, 512, "[]"), "num_classes": (2, None, "[)"),
    "input_mean": (0.0, 1.0, "[]"), "input_std": (0.0, None, "()"),
}


def feature_side(config: ModelConfig) -> int:
    """The side of the last feature map for ``config``'s input size: the first conv has no padding,
    a stage's pool halves (the last, kernel 1 stride 2, rounds up). Below 1 the network cannot run."""
    side = config.image_size - 2
    for i, v in enumerate(config.cfg):
        if v == "M":
            side = (side - 1) // 2 + 1 if i == len(config.cfg) - 1 else side // 2
            if side < 1:
                return 0
    return side


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
        layers.append(nn.Conv2d(in_ch, v, 3, padding=0 if first else 1, bias=False))
        se_block = (SqueezeExcitation(v, config.se_reduction, config.se_min_hidden, config.se_form, bias=config.se_bias)
                    if se else None)
        if se_block is not None and config.se_position == "pre_bn":
            layers.append(se_block)
        layers += [nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
        if se_block is not None and config.se_position == "post_act":
            layers.append(se_block)
        if not ends_stage:
            layers.append(nn.Dropout(config.conv_dropout))
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
            nn.Dropout(p),
            nn.BatchNorm1d(512),
            nn.ReLU(inplace=True),
            nn.Dropout(p),
            nn.Linear(512, config.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(self.normalise(x)), 1))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> the first conv's input: per image, or with the dataset's channel statistics."""
        if self.config.input_norm == "image":
            var, mean = torch.var_mean(x, dim=(1, 2, 3), keepdim=True)
            # The floor (a std of 8/255) caps the gain on near-flat images, whose noise it would blow up.
            return (x - mean) * torch.rsqrt(var + 1e-3)
        return (x - self.mean) / self.std

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


def to_float_images(batch: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, H, W, 3) -> float (N, 3, H, W) in [0, 1], the model's input."""
    return batch.permute(0, 3, 1, 2).float().div_(255)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
