import json

import pytest
import torch
from torch import nn

from gtsrb.model import PRESETS, ModelConfig, SqueezeExcitation, build_model, count_parameters

# The seed's printed features, in order: (type, in, out, padding) for convs,
# (type, channels) for SE and BN, kernel for pools, p for dropout.
SEED_FEATURES = [
    ("Conv2d", 3, 64, 0), ("SE", 64), ("BatchNorm2d", 64), ("ReLU",), ("MaxPool2d", 2),
    ("Conv2d", 64, 128, 1), ("SE", 128), ("BatchNorm2d", 128), ("ReLU",), ("MaxPool2d", 2),
    ("Conv2d", 128, 256, 1), ("BatchNorm2d", 256), ("ReLU",), ("Dropout", 0.4),
    ("Conv2d", 256, 256, 1), ("SE", 256), ("BatchNorm2d", 256), ("ReLU",), ("MaxPool2d", 2),
    ("Conv2d", 256, 512, 1), ("BatchNorm2d", 512), ("ReLU",), ("Dropout", 0.4),
    ("Conv2d", 512, 512, 1), ("SE", 512), ("BatchNorm2d", 512), ("ReLU",), ("MaxPool2d", 2),
    ("Conv2d", 512, 512, 1), ("BatchNorm2d", 512), ("ReLU",), ("Dropout", 0.4),
    ("Conv2d", 512, 512, 1), ("SE", 512), ("BatchNorm2d", 512), ("ReLU",), ("MaxPool2d", 1),
]


def describe(m: nn.Module) -> tuple:
    if isinstance(m, nn.Conv2d):
        assert m.bias is None and m.kernel_size == (3, 3)
        return ("Conv2d", m.in_channels, m.out_channels, m.padding[0])
    if isinstance(m, SqueezeExcitation):
        return ("SE", m.fc1.in_channels)
    if isinstance(m, nn.BatchNorm2d):
        return ("BatchNorm2d", m.num_features)
    if isinstance(m, nn.MaxPool2d):
        assert m.stride == 2
        return ("MaxPool2d", m.kernel_size)
    if isinstance(m, nn.Dropout):
        return ("Dropout", m.p)
    return (type(m).__name__,)


def test_seed_preset_reproduces_the_seed_feature_layout_exactly():
    model = build_model("seed")
    assert len(model.features) == 37
    assert [describe(m) for m in model.features] == SEED_FEATURES


def test_seed_se_block_is_scale_and_shift_with_reduction_16_and_no_bias():
    se = build_model("seed").features[1]
    assert (se.fc1.in_channels, se.fc1.out_channels, se.fc2.out_channels) == (64, 4, 128)
    assert se.fc1.bias is None and se.fc2.bias is None


def test_seed_classifier_layout():
    c = build_model("seed").classifier
    kinds = [type(m).__name__ for m in c]
    assert kinds == ["Linear", "Dropout", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    assert (c[0].in_features, c[0].out_features, c[0].bias) == (512, 512, None)
    assert c[1].p == c[4].p == 0.5
    assert (c[5].in_features, c[5].out_features) == (512, 43) and c[5].bias is not None


def test_seed_parameter_count_is_9622891():
    assert count_parameters(build_model("seed")) == 9_622_891


def test_vgg11_preset_is_the_seed_without_se():
    model = build_model("vgg11")
    assert not any(isinstance(m, SqueezeExcitation) for m in model.modules())
    se_params = sum(count_parameters(b) for _, b in build_model("seed").se_blocks())
    assert count_parameters(model) == 9_622_891 - se_params


@pytest.mark.parametrize("size", [28, 32, 48])
def test_output_shape_for_each_input_size(size):
    model = build_model(ModelConfig(image_size=size)).eval()
    assert model(torch.rand(3, 3, size, size)).shape == (3, 43)


def test_gate_form_is_x_times_sigmoid():
    torch.manual_seed(0)
    se = SqueezeExcitation(32, reduction=4, form="gate")
    x = torch.randn(2, 32, 5, 5)
    w = se.fc2(torch.relu(se.fc1(x.mean((2, 3), keepdim=True))))
    torch.testing.assert_close(se(x), x * torch.sigmoid(w))


def test_scale_shift_form_is_x_times_sigmoid_plus_bias():
    torch.manual_seed(0)
    se = SqueezeExcitation(32, reduction=4, form="scale_shift")
    x = torch.randn(2, 32, 5, 5)
    s = se.fc2(torch.relu(se.fc1(x.mean((2, 3), keepdim=True))))
    w, b = s[:, :32], s[:, 32:]
    assert se.fc2.out_channels == 64
    torch.testing.assert_close(se(x), x * torch.sigmoid(w) + b)


def test_reduction_has_a_floor_on_hidden_width():
    assert SqueezeExcitation(64, reduction=32, min_hidden=4).fc1.out_channels == 4
    assert SqueezeExcitation(64, reduction=8, min_hidden=4).fc1.out_channels == 8


def test_gate_is_injectable():
    se = SqueezeExcitation(8, reduction=2, gate_layer=nn.Hardsigmoid)
    assert isinstance(se.gate, nn.Hardsigmoid)


def test_se_after_activation_moves_the_block_behind_relu():
    model = build_model(ModelConfig(se_position="post_act"))
    kinds = [describe(m)[0] for m in model.features[:5]]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "SE", "MaxPool2d"]


def test_per_stage_se_switches_and_avg_pooling():
    cfg = ModelConfig(se_stages=(False, True, False, False, True), pool="avg", se_form="gate", se_reduction=8)
    model = build_model(cfg)
    assert [name for name, _ in model.se_blocks()] == ["stage2", "stage5"]
    assert all(isinstance(b.gate, nn.Sigmoid) and b.form == "gate" for _, b in model.se_blocks())
    pools = [m for m in model.features if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))]
    assert len(pools) == 5 and all(isinstance(p, nn.AvgPool2d) for p in pools)


def test_dropout_rates_come_from_the_config():
    model = build_model(ModelConfig(conv_dropout=0.1, classifier_dropout=0.2))
    conv_p = {m.p for m in model.features if isinstance(m, nn.Dropout)}
    cls_p = {m.p for m in model.classifier if isinstance(m, nn.Dropout)}
    assert conv_p == {0.1} and cls_p == {0.2}


def test_config_round_trips_through_json():
    cfg = ModelConfig(se_stages=(True, False, True, False, True), se_form="gate", pool="avg", image_size=32)
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_bad_config_values_are_rejected():
    with pytest.raises(ValueError, match="se_form"):
        ModelConfig(se_form="squeeze")
    with pytest.raises(ValueError, match="se_stages"):
        ModelConfig(se_stages=(True, False))
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({"depth": 3})


def test_presets_are_named():
    assert set(PRESETS) >= {"seed", "vgg11"}
    with pytest.raises(ValueError, match="unknown preset"):
        build_model("resnet")


# --------------------------------------------------------------------------- the fast Conv2d and Dropout


@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv2d_small_map_route_computes_the_same_conv_and_gradients(size, channels_last):
    """Maps of at most SMALL_MAP pixels take the matrix-product route (1x1: centre tap); larger ones oneDNN.
    Float64 so that only a wrong formula, not rounding, can fail."""
    from gtsrb.model import SMALL_MAP, Conv2d

    torch.manual_seed(size)
    conv = Conv2d(16, 8, 3, padding=1, bias=True).double()
    x = torch.randn(3, 16, size, size, dtype=torch.float64)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    out = conv(x)
    ref = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    g = torch.randn_like(ref)
    ours = torch.autograd.grad(out, (x, conv.weight, conv.bias), g)
    theirs = torch.autograd.grad(ref, (x, conv.weight, conv.bias), g)
    torch.testing.assert_close(out, ref)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    if size == 1:  # only the centre tap ever sees a pixel
        assert ours[1][:, :, [0, 0, 0, 1, 1, 2, 2, 2], [0, 1, 2, 0, 2, 0, 1, 2]].abs().max() == 0
    assert (size * size <= SMALL_MAP) == (size < 4)


@pytest.mark.parametrize("size", [1, 3])
def test_conv2d_small_map_route_under_bf16_autocast_stays_close_to_fp32(size):
    from gtsrb.model import Conv2d

    torch.manual_seed(0)
    conv = Conv2d(64, 32, 3, padding=1, bias=False)
    x = torch.randn(4, 64, size, size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = conv(x)
    assert low.dtype == torch.bfloat16
    ref = torch.nn.functional.conv2d(x, conv.weight, padding=1)
    assert (low.float() - ref).abs().max() < 0.02 * ref.abs().max()
    # Inside a bf16 network the input is already bf16 while the weight is fp32; backward too.
    xb = x.to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(xb)
    out.float().sum().backward()
    assert xb.grad.dtype == torch.bfloat16 and conv.weight.grad.dtype == torch.float32
    ref_w = torch.autograd.grad(torch.nn.functional.conv2d(x, conv.weight, padding=1).sum(), conv.weight)[0]
    assert (conv.weight.grad - ref_w).abs().max() < 0.02 * ref_w.abs().max()


def test_patch_grad_conv_computes_the_conv_and_its_gradients():
    """The weight gradient as a product over patches, input gradient and forward through
    oneDNN: the same conv and gradients (float64, so only a wrong formula can fail)."""
    from gtsrb.model import _PatchGradConv

    torch.manual_seed(0)
    x = torch.randn(3, 16, 6, 5, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(8, 16, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(8, dtype=torch.float64, requires_grad=True)
    out = _PatchGradConv.apply(x, w, b)
    ref = torch.nn.functional.conv2d(x, w, b, padding=1)
    g = torch.randn_like(ref)
    torch.testing.assert_close(out, ref)
    for a, c in zip(torch.autograd.grad(out, (x, w, b), g), torch.autograd.grad(ref, (x, w, b), g)):
        torch.testing.assert_close(a, c)


@pytest.mark.parametrize("size", [3, 6, 13])
def test_conv2d_takes_the_patch_grad_route_on_6x6_maps_in_bf16_training_only(size):
    from gtsrb.model import Conv2d

    torch.manual_seed(0)
    conv = Conv2d(32, 16, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(4, 32, size, size).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
        with torch.no_grad():
            frozen = conv(x)
    assert (type(out.grad_fn).__name__ == "_PatchGradConvBackward") == (size == 6)
    assert frozen.grad_fn is None and type(conv(x).grad_fn).__name__ != "_PatchGradConvBackward"  # fp32
    out.float().square().sum().backward()
    ref = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    ref_w = torch.autograd.grad(ref.square().sum(), conv.weight)[0]
    assert (out.float() - ref).abs().max() < 0.02 * ref.abs().max()
    assert (conv.weight.grad - ref_w).abs().max() < 0.03 * ref_w.abs().max()


def test_conv2d_on_1x1_maps_casts_only_the_centre_tap_and_grads_in_the_weights_layout():
    """Under bf16 autocast, with a channels_last weight as in training: no op but the gradient's
    zeros touches a weight-sized tensor (the whole weight was cast in forward, and its gradient
    made in NCHW and copied again)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from gtsrb.model import Conv2d

    torch.manual_seed(0)
    conv = Conv2d(64, 32, 3, padding=1, bias=True).to(memory_format=torch.channels_last)
    x = torch.randn(5, 64, 1, 1, dtype=torch.bfloat16, requires_grad=True)
    weight_sized = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.numel() == conv.weight.numel() and not func.is_view:
                weight_sized.append(func.__name__)
            return out

    with Record():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = conv(x)
        out.float().square().sum().backward()
    assert weight_sized == ["zeros_like.default"]
    assert conv.weight.grad.stride() == conv.weight.stride() and conv.weight.grad.dtype == torch.float32
    ref = torch.autograd.grad(
        torch.nn.functional.conv2d(x.detach().float(), conv.weight, conv.bias, padding=1).square().sum(),
        (conv.weight, conv.bias),
    )
    assert (conv.weight.grad - ref[0]).abs().max() < 0.02 * ref[0].abs().max()
    assert (conv.bias.grad - ref[1]).abs().max() < 0.02 * ref[1].abs().max()


def test_se_squeeze_is_adaptive_avg_pool_with_a_broadcast_gradient():
    """Same module, values and gradients as nn.AdaptiveAvgPool2d(1) (float64); its gradient is
    a stride-0 view, so autograd adds it to the product's gradient in that gradient's layout."""
    from gtsrb.model import AdaptiveAvgPool2d

    torch.manual_seed(0)
    se = SqueezeExcitation(32, reduction=4).double()
    assert isinstance(se.squeeze, nn.AdaptiveAvgPool2d) and repr(se.squeeze) == "AdaptiveAvgPool2d(output_size=1)"
    x = torch.randn(3, 32, 5, 4, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_()
    stock = SqueezeExcitation(32, reduction=4).double()
    stock.load_state_dict(se.state_dict())
    stock.squeeze = nn.AdaptiveAvgPool2d(1)
    g = torch.randn(3, 32, 5, 4, dtype=torch.float64).to(memory_format=torch.channels_last)
    ours = torch.autograd.grad(se(x), (x, se.fc1.weight, se.fc2.weight), g)
    theirs = torch.autograd.grad(stock(x), (x, stock.fc1.weight, stock.fc2.weight), g)
    torch.testing.assert_close(se(x), stock(x))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    assert ours[0].is_contiguous(memory_format=torch.channels_last)
    grad = torch.autograd.grad(se.squeeze(x), x, torch.ones(3, 32, 1, 1, dtype=torch.float64))[0]
    assert grad.stride()[2:] == (0, 0) and torch.all(grad == 1 / 20)
    other = AdaptiveAvgPool2d(2)  # any other output size is the stock module
    torch.testing.assert_close(other(x), nn.functional.adaptive_avg_pool2d(x, 2))


def test_dropout_is_identity_in_eval_and_zeroes_about_p_in_training():
    from gtsrb.model import Dropout

    d = Dropout(0.4)
    x = torch.ones(200_000, requires_grad=True)
    d.eval()
    assert torch.equal(d(x), x)
    d.train()
    torch.manual_seed(0)
    y = d(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.6) < 0.005
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.6))
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    assert torch.equal(Dropout(0.0).train()(x), x)


def test_conv2d_keeps_nn_conv2d_behaviour_for_unbatched_and_float64_input():
    from gtsrb.model import Conv2d

    conv = Conv2d(4, 2, 3, padding=1)
    x = torch.rand(4, 3, 3)  # unbatched (C, H, W)
    torch.testing.assert_close(conv(x), nn.Conv2d.forward(conv, x))
    conv64 = Conv2d(4, 2, 3, padding=1).double()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv64(torch.rand(1, 4, 3, 3, dtype=torch.float64)).dtype == torch.float64  # autocast lowers fp32 only


def test_dropout_inplace_writes_into_its_input():
    from gtsrb.model import Dropout

    x = torch.ones(1000)
    y = Dropout(0.5, inplace=True).train()(x)
    assert y.data_ptr() == x.data_ptr() and (x == 0).any()
