"""Tests of the small CPU backbones (src/models/small_cnn.py): layout, shapes, registry, errors."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from src.errors import FlagError
from src.models import SwAVNetwork, available_backbones, build_backbone
from src.models.small_cnn import SmallCNN

SMALL = {"cnn6": (32, 64, 128), "cnn6w2": (64, 128, 256), "cnn8": (32, 64, 128, 256)}


def reference_forward(model: SmallCNN, widths, x: torch.Tensor) -> torch.Tensor:
    """The documented architecture written out with functional ops on the model's own weights (eval mode)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == len(bns) == 2 * len(widths)
    i = 0
    for stage in range(len(widths)):
        if stage > 0:
            x = F.max_pool2d(x, 2, 2)
        for _ in range(2):
            x = F.conv2d(x, convs[i].weight, None, padding=1)
            x = F.batch_norm(x, bns[i].running_mean, bns[i].running_var, bns[i].weight, bns[i].bias, False, 0.0,
                             bns[i].eps)
            x = F.relu(x)
            i += 1
    return x.mean(dim=(2, 3))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_registered_and_matches_the_documented_architecture(name):
    assert name in available_backbones()
    torch.manual_seed(0)
    model = build_backbone(name)
    widths = SMALL[name]
    assert model.num_features == widths[-1]
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [w for w in widths for _ in (0, 1)]
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    model.eval()
    x = torch.randn(3, 3, 28, 28)
    torch.testing.assert_close(model(x), reference_forward(model, widths, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [28, 14, 8])
def test_multicrop_sizes_share_weights_and_give_pooled_features(size):
    model = build_backbone("cnn6")
    out = model(torch.randn(4, 3, size, size))
    assert out.shape == (4, 128)
    assert torch.isfinite(out).all() and (out >= 0).all()  # ReLU before the average pool


def test_parameter_count_of_cnn6():
    # 3x3 convs without bias + BatchNorm (2 per channel): 3-32-32 | 32-64-64 | 64-128-128
    convs = 9 * (3 * 32 + 32 * 32 + 32 * 64 + 64 * 64 + 64 * 128 + 128 * 128)
    bns = 2 * (32 + 32 + 64 + 64 + 128 + 128)
    assert sum(p.numel() for p in build_backbone("cnn6").parameters()) == convs + bns


def test_grey_input_channels_and_swav_network_train_step():
    torch.manual_seed(0)
    net = SwAVNetwork(build_backbone("cnn6"), hidden_mlp=[64], feat_dim=16, nmb_prototypes=10)
    crops = [torch.randn(8, 3, 28, 28), torch.randn(8, 3, 28, 28), torch.randn(8, 3, 14, 14)]
    out = net(crops)
    assert out.embedding.shape == (24, 16) and out.scores.shape == (24, 10)
    torch.testing.assert_close(out.embedding.norm(dim=1), torch.ones(24))
    out.scores.sum().backward()
    assert net.backbone.features[0][0].weight.grad.abs().sum() > 0
    assert build_backbone("cnn6", in_channels=1)(torch.randn(2, 1, 28, 28)).shape == (2, 128)


def test_errors_name_the_problem():
    with pytest.raises(FlagError, match="does not take small_stem"):
        build_backbone("cnn6", small_stem=True)
    with pytest.raises(ValueError, match="H, W >= 4"):
        build_backbone("cnn6")(torch.randn(2, 3, 3, 3))
    with pytest.raises(ValueError, match="widths"):
        SmallCNN(widths=())
    with pytest.raises(ValueError, match="convs_per_stage"):
        SmallCNN(convs_per_stage=0)
