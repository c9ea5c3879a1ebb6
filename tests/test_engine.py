"""gtsrb.engine: the folded inference forward computes what the eval-mode model computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gtsrb.engine as engine_module
from gtsrb.engine import InferenceEngine, has_packed_bf16_ops, packed_bf16_available, serving_precision
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


# Skipped only where torch lacks the ops: where it has them, the engine's own check must pass.
needs_packed_bf16 = pytest.mark.skipif(not has_packed_bf16_ops(), reason="this torch build lacks oneDNN's packed conv")


@needs_packed_bf16
def test_packed_bf16_is_available_where_torch_has_the_ops():
    assert packed_bf16_available.__wrapped__() is True


@needs_packed_bf16
@pytest.mark.parametrize("batch", [1, 6])
@pytest.mark.parametrize("name", ["seed", "gate_post_act_avg_pool_stages_1_3_5", "scale_shift_post_act_stages_2_4_5",
                                  "gate_pre_bn_r4_32px"])
def test_bf16_engine_is_the_model_to_bf16_rounding(name, batch):
    model = _trained_like(CONFIGS[name])
    size = model.config.image_size
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    ref_logits, ref_gates = _reference(model, x)
    engine = InferenceEngine(model, "bf16")
    logits, gates = engine(x)
    assert logits.dtype == torch.float32 and all(g.dtype == torch.float32 for g in gates.values())
    # Against the spread of the logits. (A random model's logits hardly depend on its convs, so
    # this is a loose check; tests/test_real.py pins the trained model's agreement on real data.)
    spread = (ref_logits - ref_logits.mean(1, keepdim=True)).abs().max()
    assert (logits - ref_logits).abs().max() < 1e-3 * spread
    assert sorted(gates) == sorted(ref_gates)
    for k in gates:
        torch.testing.assert_close(gates[k], ref_gates[k], atol=2e-3, rtol=0)
    # Every conv but the first (on the 3-channel image, kept fp32) packed its weight once, and ran it
    # where the map is larger than 1x1 (the two 1x1 maps of stage 5 run fp32). One packing serves
    # single images, one every batch size above 1: a server fed varying batches holds two at most.
    packed = [u.packed for kind, u in engine.steps if kind == "unit"]
    assert packed[0] is None
    assert [[key[0] for key in p] for p in packed[1:]] == [[batch == 1]] * 5 + [[], []]
    engine(x)
    assert [len(p) for p in packed[1:]] == [1] * 5 + [0, 0]
    exact = InferenceEngine(model)
    for other in (3, 5, 1):
        x_other = torch.rand(other, 3, size, size)
        (l16, g16), (l32, g32) = engine(x_other), exact(x_other)
        assert (l16 - l32).abs().max() < 1e-3 * spread
        for k in g32:
            torch.testing.assert_close(g16[k], g32[k], atol=2e-3, rtol=0)
    assert [len(p) for p in packed[1:]] == [2] * 5 + [0, 0]


@needs_packed_bf16
@pytest.mark.parametrize("batch", [1, 5])
def test_each_bf16_conv_is_its_fp32_conv_to_bf16_rounding(batch):
    """Conv by conv, on inputs of the size each one sees: bias, fused ReLU and scale all kept.
    bf16 rounding leaves the mean error near 0.3% of the mean output; a conv 1% off fails."""
    model = _trained_like(CONFIGS["seed"])
    units = [u for kind, u in InferenceEngine(model, "bf16").steps if kind == "unit"]
    exact = [u for kind, u in InferenceEngine(model).steps if kind == "unit"]
    sizes = {1: 13, 2: 6, 3: 6, 4: 3, 5: 3}  # the seed's map sizes at 28x28
    for i, size in sizes.items():
        x = torch.rand(batch, units[i].weight.shape[1], size, size).contiguous(memory_format=torch.channels_last)
        for relu in (False, True):
            ref = engine_module._conv(x, exact[i], relu)
            out = engine_module._conv(x, units[i], relu)
            assert out.dtype == torch.bfloat16 and units[i].packed
            rel = ((out.float() - ref).abs().mean() / ref.abs().mean()).item()
            assert rel < 0.005, (i, relu, rel)


@needs_packed_bf16
def test_bf16_engine_with_se_off_is_the_model_with_identity_se_blocks():
    model = _trained_like(CONFIGS["seed"])
    x = torch.rand(3, 3, 28, 28, generator=torch.Generator().manual_seed(2))
    ref_logits, _ = _reference(model, x, se=False)
    logits, gates = InferenceEngine(model, "bf16")(x, se=False)
    spread = (ref_logits - ref_logits.mean(1, keepdim=True)).abs().max()
    assert gates == {} and (logits - ref_logits).abs().max() < 1e-3 * spread


def test_engine_precision_is_checked():
    model = build_model(PRESETS["seed"]).eval()
    with pytest.raises(ValueError, match="fp16"):
        InferenceEngine(model, "fp16")
    with pytest.raises(ValueError, match="fp32 model, not torch.float64"):
        InferenceEngine(model.double(), "bf16")
    with pytest.raises(ValueError, match="CPU only"):
        InferenceEngine(model.float().to("meta"), "bf16")
    with pytest.raises(ValueError, match="fast"):
        serving_precision("fast", torch.device("cpu"))


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_on_cpus_that_multiply_bf16_natively(monkeypatch, native):
    monkeypatch.setattr(engine_module, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(engine_module, "packed_bf16_available", lambda: True)
    assert serving_precision("auto", torch.device("cpu")) == ("bf16" if native else "fp32")
    assert serving_precision("auto", torch.device("meta")) == "fp32"  # stands in for CUDA
    assert serving_precision("fp32", torch.device("cpu")) == "fp32"
    assert serving_precision("bf16", torch.device("cpu")) == "bf16"


def test_packed_bf16_is_unavailable_where_its_op_fails(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no such kernel")

    monkeypatch.setattr(torch._C._nn, "mkldnn_reorder_conv2d_weight", broken)
    assert packed_bf16_available.__wrapped__() is False  # so "auto" serves fp32
