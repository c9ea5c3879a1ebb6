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


def test_se_bias_adds_a_bias_to_both_1x1_layers_and_nothing_else():
    plain, biased = build_model(ModelConfig(se_form="gate")), build_model(ModelConfig(se_form="gate", se_bias=True))
    for (_, a), (_, b) in zip(plain.se_blocks(), biased.se_blocks()):
        assert a.fc1.bias is None and a.fc2.bias is None
        assert b.fc1.bias.shape == (b.fc1.out_channels,) and b.fc2.bias.shape == (b.fc2.out_channels,)
    extra = sum(b.fc1.out_channels + b.fc2.out_channels for _, b in biased.se_blocks())
    assert count_parameters(biased) == count_parameters(plain) + extra


def test_a_biased_unit_can_fire_where_the_bias_free_one_cannot():
    # A hidden unit with negative weights on a non-negative squeeze (post_act) is zero for every
    # input without a bias; a positive bias lets it fire, so its gradient is not zero.
    se = SqueezeExcitation(8, reduction=2, form="gate", bias=True)
    with torch.no_grad():
        se.fc1.weight.fill_(-1.0)
        se.fc1.bias.fill_(0.0)
    x = torch.rand(4, 8, 3, 3)
    assert torch.all(se.fc1(se.squeeze(x)) <= 0)
    with torch.no_grad():
        se.fc1.bias.fill_(10.0)
    assert torch.all(torch.relu(se.fc1(se.squeeze(x))) > 0)


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
    cfg = ModelConfig(se_stages=(True, False, True, False, True), se_form="gate", pool="avg", image_size=32,
                      se_bias=True)
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_a_config_saved_before_se_bias_loads_bias_free():
    old = ModelConfig().to_dict()
    del old["se_bias"]
    assert ModelConfig.from_dict(old).se_bias is False


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


def test_describe_names_the_se_stages_and_the_rest_of_the_config():
    seed = PRESETS["seed"].describe()
    assert "SE in stage(s) 1, 2, 3, 4, 5 of 5" in seed
    for fact in ("`scale_shift`", "`pre_bn`", "reduction 16", "max pooling", "conv dropout 0.40",
                 "classifier dropout 0.50", "input norm `dataset`"):
        assert fact in seed, fact
    assert "biases" not in seed  # the seed's SE layers have none
    plain = PRESETS["vgg11"].describe()
    assert plain.startswith("no SE") and "stage" not in plain and "reduction" not in plain
    assert "max pooling" in plain and "classifier dropout 0.50" in plain
    some = ModelConfig(se_stages=(False, True, False, False, True), pool="avg", se_bias=True).describe()
    assert "SE in stage(s) 2, 5 of 5" in some and "avg pooling" in some and "with biases" in some
