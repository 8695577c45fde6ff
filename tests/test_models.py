"""The model zoo: shapes, parameter counts, init, grouping, and torchvision compatibility."""

import pytest
import torch
import torch.nn as nn
import torchvision

import alexnet
from alexnet.errors import AlexNetError
from alexnet.models import LocalResponseNorm, model_info

MODELS = alexnet.list_models()


def test_registry_lists_the_three_variants():
    assert {"alexnet_paper", "alexnet_paper_grouped", "alexnet_owt"} <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("size", [227, 224, 64, 63])
@pytest.mark.parametrize("channels", [1, 3])
def test_forward_shape_and_finite(name, size, channels):
    torch.manual_seed(0)
    model = alexnet.create_model(name, num_classes=7, in_channels=channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = alexnet.create_model(name, num_classes=10, in_channels=1, init="torch")
    out = model(torch.randn(4, 1, 64, 64))
    nn.functional.cross_entropy(out, torch.arange(4)).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} got an all-zero gradient"


# Derived by hand in models/alexnet.py's comment block (weights + biases, 1000 classes, 3 channels).
PARAMS = {"alexnet_paper": 62_378_344, "alexnet_paper_grouped": 60_965_224, "alexnet_owt": 61_100_840}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts(name):
    model = alexnet.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    assert model_info(name).num_params == PARAMS[name]


@pytest.mark.parametrize("name", ["alexnet_paper", "alexnet_paper_grouped"])
def test_paper_feature_maps_at_227(name):
    model = alexnet.create_model(name).eval()
    sizes = {}
    for stage in ("conv1", "pool1", "pool2", "conv5", "pool5"):
        getattr(model.features, stage).register_forward_hook(lambda m, i, o, s=stage: sizes.__setitem__(s, tuple(o.shape[1:])))
    with torch.no_grad():
        model(torch.zeros(1, 3, 227, 227))
    assert sizes == {
        "conv1": (96, 55, 55),
        "pool1": (96, 27, 27),
        "pool2": (256, 13, 13),
        "conv5": (256, 13, 13),
        "pool5": (256, 6, 6),
    }


@pytest.mark.parametrize("name", MODELS)
def test_smallest_input_size(name):
    smallest = model_info(name).min_size
    model = alexnet.create_model(name, num_classes=3, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, smallest, smallest)).shape == (1, 3)
        with pytest.raises(RuntimeError):
            model(torch.zeros(1, 1, smallest - 1, smallest - 1))


def test_grouped_layout_halves_the_right_layers():
    f = alexnet.create_model("alexnet_paper_grouped").features
    assert f.conv1.weight.shape == (96, 3, 11, 11)
    assert f.conv2.weight.shape == (256, 48, 5, 5) and f.conv2.groups == 2
    assert f.conv3.weight.shape == (384, 256, 3, 3) and f.conv3.groups == 1
    assert f.conv4.weight.shape == (384, 192, 3, 3) and f.conv4.groups == 2
    assert f.conv5.weight.shape == (256, 192, 3, 3) and f.conv5.groups == 2
    assert f.norm1.groups == 2 and f.norm2.groups == 2


def test_grouped_halves_do_not_see_each_other_before_conv3():
    torch.manual_seed(0)
    model = alexnet.create_model("alexnet_paper_grouped", init="torch").eval()
    f = model.features
    upto_conv2 = nn.Sequential(f.norm1, f.pool1, f.conv2)
    x = torch.rand(1, 96, 55, 55)
    y = x.clone()
    y[:, :48] += torch.rand(1, 48, 55, 55)  # change only the first GPU's half
    with torch.no_grad():
        a, b = upto_conv2(x), upto_conv2(y)
    assert not torch.allclose(a[:, :128], b[:, :128])
    torch.testing.assert_close(a[:, 128:], b[:, 128:], rtol=0, atol=0)


def test_paper_lrn_constants():
    norm = alexnet.create_model("alexnet_paper").features.norm1
    assert isinstance(norm, LocalResponseNorm)
    # The paper's equation (alpha = 1e-4 on the plain window sum) in torch's alpha/n convention.
    assert (norm.size, norm.k, norm.beta) == (5, 2.0, 0.75)
    assert norm.alpha / norm.size == pytest.approx(1e-4)


def test_paper_init():
    torch.manual_seed(0)
    model = alexnet.create_model("alexnet_paper")
    layers = dict(model.named_modules())
    for name in ("features.conv1", "features.conv3", "classifier.fc8"):
        assert layers[name].bias.abs().max() == 0, name
    for name in ("features.conv2", "features.conv4", "features.conv5", "classifier.fc6", "classifier.fc7"):
        assert (layers[name].bias == 1).all(), name
    w = layers["classifier.fc6"].weight
    assert w.mean().abs() < 1e-3 and w.std().item() == pytest.approx(0.01, rel=0.01)


def test_torch_init_is_pytorch_default():
    torch.manual_seed(0)
    conv1 = alexnet.create_model("alexnet_paper", init="torch").features.conv1
    bound = 1 / (3 * 11 * 11) ** 0.5  # kaiming_uniform(a=sqrt(5)) gives U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    # 34,848 draws of U(-bound, bound): they fill the interval, with its standard deviation bound/sqrt(3)
    # (to ~0.4%); the earlier "std > half of that" would also pass a narrower or a normal init.
    assert 0.999 * bound < conv1.weight.abs().max() <= bound
    assert conv1.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.02)
    assert conv1.bias.abs().max() <= bound and conv1.bias.std().item() == pytest.approx(bound / 3**0.5, rel=0.3)


def test_ablation_keywords():
    model = alexnet.create_model("alexnet_paper", lrn=False, pool_kernel=2, num_classes=10)
    assert not any(isinstance(m, LocalResponseNorm) for m in model.modules())
    assert model.features.pool1.kernel_size == 2
    assert model(torch.zeros(1, 3, 227, 227)).shape == (1, 10)


def test_owt_and_torchvision_share_weights_both_ways():
    torch.manual_seed(0)
    ours = alexnet.create_model("alexnet_owt").eval()
    theirs = torchvision.models.alexnet(weights=None).eval()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in theirs.state_dict().items()]
    x = torch.randn(2, 3, 224, 224)
    theirs.load_state_dict(ours.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)
    fresh = torchvision.models.alexnet(weights=None).eval()
    ours.load_state_dict(fresh.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(ours(x), fresh(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="alexnet_nope"), "unknown model"),
        (dict(name="alexnet_paper", num_classes=0), "num_classes"),
        (dict(name="alexnet_paper", in_channels=0), "in_channels"),
        (dict(name="alexnet_paper", dropout=1.5), "dropout"),
        (dict(name="alexnet_owt", lrn=False), "alexnet_owt"),
    ],
)
def test_create_model_rejects_bad_arguments(kwargs, message):
    name = kwargs.pop("name")
    with pytest.raises(AlexNetError, match=message):
        alexnet.create_model(name, **kwargs)
