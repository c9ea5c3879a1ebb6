"""gtsrb.engine: the folded inference forward computes what the eval-mode model computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gtsrb.engine import InferenceEngine
from gtsrb.model import PRESETS, ModelConfig, build_model

CONFIGS = {
    "seed": PRESETS["seed"],
    "vgg11": PRESETS["vgg11"],
    "gate_post_act_avg_pool_stages_1_3_5": ModelConfig(
        se_form="gate", se_position="post_act", pool="avg", se_stages=(True, False, True, False, True)
    ),
    "scale_shift_post_act_stages_2_4_5": ModelConfig(se_position="post_act", se_stages=(False, True, False, True, True)),
    "gate_pre_bn_r4_32px": ModelConfig(se_form="gate", se_reduction=4, image_size=32),
}


def _trained_like(config: ModelConfig, seed: int = 0) -> nn.Module:
    """A model whose BatchNorms have non-trivial statistics and affine terms, in eval mode."""
    torch.manual_seed(seed)
    model = build_model(config)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.3, 3.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model.eval()


def _reference(model, x, se: bool = True):
    """The model's logits, and its SE gates read by forward hooks."""
    gates, handles = {}, []
    for name, block in model.se_blocks():
        handles.append(block.gate.register_forward_hook(lambda _m, _i, out, name=name: gates.__setitem__(name, out.flatten(1))))
        if not se:
            handles.append(block.register_forward_hook(lambda _m, inp, _o: inp[0]))
    with torch.no_grad():
        logits = model(x)
    for h in handles:
        h.remove()
    return logits, gates


@pytest.mark.parametrize("batch", [1, 6])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_engine_gives_the_models_logits_and_gates(name, batch):
    model = _trained_like(CONFIGS[name])
    size = model.config.image_size
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    ref_logits, ref_gates = _reference(model, x)
    logits, gates = InferenceEngine(model)(x)
    assert ref_logits.abs().max() > 0.05  # a signal worth comparing
    torch.testing.assert_close(logits, ref_logits, atol=2e-5, rtol=1e-4)
    assert sorted(gates) == sorted(ref_gates) == [n for n, _ in model.se_blocks()]
    for k in gates:
        torch.testing.assert_close(gates[k], ref_gates[k], atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["seed", "gate_post_act_avg_pool_stages_1_3_5"])
def test_engine_with_se_off_is_the_model_with_identity_se_blocks(name):
    model = _trained_like(CONFIGS[name])
    x = torch.rand(3, 3, 28, 28, generator=torch.Generator().manual_seed(2))
    ref_logits, _ = _reference(model, x, se=False)
    logits, gates = InferenceEngine(model)(x, se=False)
    torch.testing.assert_close(logits, ref_logits, atol=2e-5, rtol=1e-4)
    assert gates == {}
    assert not torch.allclose(logits, InferenceEngine(model)(x)[0], atol=1e-3)  # SE did something


def test_engine_copies_the_weights_and_leaves_the_model_alone():
    model = _trained_like(PRESETS["seed"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    engine = InferenceEngine(model)
    x = torch.rand(2, 3, 28, 28)
    out = engine(x)[0]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with torch.no_grad():
        model.classifier[-1].bias.add_(1.0)
    torch.testing.assert_close(engine(x)[0], out)  # a snapshot: rebuild after changing the model


def test_engine_follows_the_models_dtype():
    model = _trained_like(PRESETS["seed"]).double()
    x = torch.rand(2, 3, 28, 28, dtype=torch.float64)
    ref_logits, _ = _reference(model, x)
    logits, gates = InferenceEngine(model)(x)
    assert logits.dtype == torch.float64
    torch.testing.assert_close(logits, ref_logits, atol=1e-10, rtol=1e-9)


def test_engine_builds_and_runs_off_the_cpu():
    """The meta device stands in for CUDA here: no tensor of the engine may be pinned to the CPU."""
    model = build_model(PRESETS["seed"]).eval().to("meta")
    logits, gates = InferenceEngine(model)(torch.empty(2, 3, 28, 28, device="meta"))
    assert logits.shape == (2, 43) and logits.device.type == "meta"
    assert {k: tuple(g.shape) for k, g in gates.items()} == {
        "stage1": (2, 64), "stage2": (2, 128), "stage3": (2, 256), "stage4": (2, 512), "stage5": (2, 512)}
