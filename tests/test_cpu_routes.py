"""gtsrb.cpu_routes: each route computes what the stock torch.nn module computes, and
apply_routes swaps only the modules it names."""

import pytest
import torch
from torch import nn

from gtsrb.cpu_routes import ROUTES, PatchGradConv2d, RoutedConv2d, SmallMapConv2d, apply_routes
from gtsrb.model import SqueezeExcitation, build_model

Conv2d = RoutedConv2d  # both conv routes, as the bf16 training step runs them

@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv2d_small_map_route_computes_the_same_conv_and_gradients(size, channels_last):
    """Maps of at most SMALL_MAP pixels take the matrix-product route (1x1: centre tap); larger ones oneDNN.
    Float64 so that only a wrong formula, not rounding, can fail."""
    from gtsrb.cpu_routes import SMALL_MAP

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
    from gtsrb.cpu_routes import _PatchGradConv

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
def test_routed_conv_takes_the_patch_grad_route_on_6x6_maps_in_bf16_training_only(size):
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
    from gtsrb.cpu_routes import ViewGradSqueeze

    torch.manual_seed(0)
    se = apply_routes(SqueezeExcitation(32, reduction=4).double(), ["squeeze_view_grad"])
    assert type(se.squeeze) is ViewGradSqueeze and repr(se.squeeze) == "ViewGradSqueeze(output_size=1)"
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
    other = apply_routes(nn.Sequential(nn.AdaptiveAvgPool2d(2)))[0]  # any other output size stays stock
    assert type(other) is nn.AdaptiveAvgPool2d


def test_conv2d_keeps_nn_conv2d_behaviour_for_unbatched_and_float64_input():
    conv = Conv2d(4, 2, 3, padding=1)
    x = torch.rand(4, 3, 3)  # unbatched (C, H, W)
    torch.testing.assert_close(conv(x), nn.Conv2d.forward(conv, x))
    conv64 = Conv2d(4, 2, 3, padding=1).double()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv64(torch.rand(1, 4, 3, 3, dtype=torch.float64)).dtype == torch.float64  # autocast lowers fp32 only


# --------------------------------------------------------------------------- apply_routes


def test_model_py_is_stock_torch_nn():
    """The model is defined once, from torch.nn: no autograd Function and no module subclass
    of a torch.nn layer in gtsrb.model."""
    import inspect

    import gtsrb.model as model_module

    source = inspect.getsource(model_module)
    assert "autograd" not in source
    types = {type(m) for m in build_model("seed").modules()}
    assert all(t.__module__.startswith("torch.nn") or t.__module__ == "gtsrb.model" for t in types)


@pytest.mark.parametrize("routes", [(), ("small_map_conv",), ("patch_grad_conv",), ROUTES])
def test_apply_routes_keeps_the_state_dict_and_swaps_only_the_named_modules(routes):
    model = build_model("seed")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names_before = [n for n, _ in model.named_modules()]
    assert apply_routes(model, routes) is model
    assert [n for n, _ in model.named_modules()] == names_before
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and before.keys() == model.state_dict().keys()
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    first, rest = convs[0], convs[1:]
    assert type(first) is nn.Conv2d  # pad 0: no route covers it
    want = {(): nn.Conv2d, ("small_map_conv",): SmallMapConv2d, ("patch_grad_conv",): PatchGradConv2d,
            ROUTES: RoutedConv2d}[routes]
    assert {type(m) for m in rest} == {want}
    assert {type(m) for m in model.modules() if isinstance(m, nn.Dropout)} == {nn.Dropout}  # no route covers it
    squeezes = {type(m).__name__ for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)}
    assert squeezes == ({"ViewGradSqueeze"} if "squeeze_view_grad" in routes else {"AdaptiveAvgPool2d"})


def test_routed_model_computes_the_stock_models_function_and_gradients():
    """Every route on, float64, eval mode: the same logits and parameter gradients as stock."""
    torch.manual_seed(0)
    stock = build_model("seed").double().eval()
    routed = build_model("seed").double().eval()
    routed.load_state_dict(stock.state_dict())
    apply_routes(routed)
    x = torch.rand(4, 3, 28, 28, dtype=torch.float64)
    out_s, out_r = stock(x), routed(x)
    torch.testing.assert_close(out_r, out_s)
    g_s = torch.autograd.grad(out_s.square().sum(), list(stock.parameters()))
    g_r = torch.autograd.grad(out_r.square().sum(), list(routed.parameters()))
    for a, b in zip(g_r, g_s):
        torch.testing.assert_close(a, b)


def test_unknown_route_is_refused():
    with pytest.raises(ValueError, match="unknown CPU route"):
        apply_routes(build_model("seed"), ["turbo"])
