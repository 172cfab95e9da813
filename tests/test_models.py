"""Tests of src.models: backbones, heads, networks, key layouts of the released checkpoints."""

import json
import math
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from src.errors import FlagError
from src.models import (
    DINOHead,
    DINONetwork,
    SwAVNetwork,
    NetworkOutput,
    available_backbones,
    build_backbone,
    is_head_parameter,
    resolution_groups,
)

RESNETS = ["resnet18", "resnet34", "resnet50", "tv_resnet18", "tv_resnet34", "tv_resnet50"]
WIDE_RESNETS = {"resnet50w2": (2, 94), "resnet50w4": (4, 375), "resnet50w5": (5, 586)}  # SwAV README: M params


def _layouts(shared_reference):
    with open(os.path.join(shared_reference, "checkpoint_layouts.json")) as f:
        return json.load(f)


def _shapes(state_dict):
    return [(k, list(v.shape)) for k, v in state_dict.items()]


# ---------------------------------------------------------------- registry


def test_registry_names_and_errors():
    names = available_backbones()
    for expected in ["resnet18", "resnet34", "resnet50", "resnet50w2", "resnet50w4", "resnet50w5",
                     "tv_resnet18", "tv_resnet34", "tv_resnet50", "vit_tiny", "vit_small", "vit_base"]:
        assert expected in names
    with pytest.raises(FlagError, match=r"unknown --arch 'foo'; choose one of .*resnet50.*vit_small"):
        build_backbone("foo")
    with pytest.raises(FlagError, match=r"--arch 'resnet50' does not take patch_size; it accepts small_stem"):
        build_backbone("resnet50", patch_size=16)


# ---------------------------------------------------------------- ResNets


@pytest.mark.parametrize("name", RESNETS)
def test_resnet_forward_backward(name):
    torch.manual_seed(0)
    for small_stem, size in [(True, 32), (False, 64)]:
        net = build_backbone(name, small_stem=small_stem)
        out = net(torch.randn(2, 3, size, size))
        assert out.shape == (2, net.num_features)
        out.square().mean().backward()
        assert net.conv1.weight.grad is not None and net.conv1.weight.grad.abs().sum() > 0
    assert net.num_features == (2048 if name.endswith("50") else 512)


@pytest.mark.parametrize("name", sorted(WIDE_RESNETS))
def test_wide_resnets_widths_and_parameter_counts(name):
    widen, millions = WIDE_RESNETS[name]
    with torch.device("meta"):  # no memory, no compute: only shapes
        net = build_backbone(name)
        out = net(torch.empty(2, 3, 64, 64))
    assert net.conv1.out_channels == 64 * widen
    assert net.num_features == 2048 * widen
    assert out.shape == (2, 2048 * widen)
    assert round(sum(p.numel() for p in net.parameters()) / 1e6) == millions


def test_swav_resnet_equals_torchvision_resnet():
    """The SwAV stem (ConstantPad2d(1) + conv padding 2) computes torchvision's conv padding 3."""
    torch.manual_seed(0)
    ours = build_backbone("resnet50").eval()
    reference = torchvision.models.resnet50(weights=None)
    reference.fc = nn.Identity()
    reference.load_state_dict(ours.state_dict())
    reference.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-5)


def test_small_stem_layout():
    standard, small = build_backbone("resnet18"), build_backbone("resnet18", small_stem=True)
    assert list(standard.state_dict()) == list(small.state_dict())
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity) and isinstance(small.padding, nn.Identity)
    assert standard.conv1.kernel_size == (7, 7) and standard.conv1.padding == (2, 2)
    # 32 px keeps a 4x4 map before pooling with the small stem (1x1 with the ImageNet stem)
    assert small.forward_features(torch.randn(1, 3, 32, 32)).shape[-2:] == (4, 4)


def test_zero_init_residual():
    default = build_backbone("resnet50")
    assert all(torch.all(b.bn3.weight == 1) for layer in [default.layer1, default.layer4] for b in layer)
    zeroed = build_backbone("resnet18", zero_init_residual=True)
    assert all(torch.all(b.bn2.weight == 0) for layer in [zeroed.layer1, zeroed.layer2] for b in layer)
    # with a zero residual branch, a block without downsample is relu(x)
    block = zeroed.layer1[0].eval()
    x = torch.randn(1, 64, 8, 8)
    torch.testing.assert_close(block(x), F.relu(x))


def test_resnet50_keys_equal_swav_release(shared_reference):
    release = _layouts(shared_reference)["swav_800ep_pretrain.pth.tar"]["keys"]
    stripped = [(k[len("module."):], shape) for k, shape, _ in release]
    backbone_keys = [e for e in stripped if not e[0].startswith(("projection_head.", "prototypes."))]
    head_keys = [e for e in stripped if e[0].startswith(("projection_head.", "prototypes."))]
    backbone = build_backbone("resnet50")
    assert _shapes(backbone.state_dict()) == backbone_keys
    net = SwAVNetwork(backbone, [2048], feat_dim=128, nmb_prototypes=3000)
    ours = [(k, s) for k, s in _shapes(net.state_dict()) if not k.startswith("backbone.")]
    assert ours == head_keys
    dtypes = {k[len("module."):]: d for k, _, d in release}
    for k, v in backbone.state_dict().items():
        assert str(v.dtype).replace("torch.", "") == dtypes[k]


# ---------------------------------------------------------------- ViTs


@pytest.mark.parametrize("name,dim", [("vit_tiny", 192), ("vit_small", 384)])
def test_vit_forward_backward(name, dim):
    torch.manual_seed(0)
    net = build_backbone(name, patch_size=4, img_size=32, drop_path_rate=0.1)
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, dim) and net.num_features == dim
    out.square().mean().backward()
    assert net.patch_embed.proj.weight.grad.abs().sum() > 0
    assert net.pos_embed.shape == (1, 8 * 8 + 1, dim)


def test_vit_base_shapes_on_meta():
    with torch.device("meta"):
        net = build_backbone("vit_base", patch_size=16)
        out = net(torch.empty(2, 3, 224, 224))
    assert out.shape == (2, 768) and net.num_features == 768
    assert len(net.blocks) == 12 and net.blocks[0].attn.num_heads == 12
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 1) == 85.8


def test_attention_equals_explicit_softmax():
    """The fused attention equals DINO's explicit softmax(q k^T * scale) v."""
    torch.manual_seed(0)
    attn = build_backbone("vit_tiny", patch_size=4, img_size=16).blocks[0].attn.eval()
    x = torch.randn(2, 17, 192)
    B, N, C = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    weights = ((q @ k.transpose(-2, -1)) * (C // attn.num_heads) ** -0.5).softmax(dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(B, N, C))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


def _dino_interpolation(pos_embed, patch_size, height, width):
    """DINO release's interpolate_pos_encoding (names as the release: its 'w' is dim 2)."""
    N = pos_embed.shape[1] - 1
    dim = pos_embed.shape[-1]
    w0, h0 = height // patch_size + 0.1, width // patch_size + 0.1
    patch = F.interpolate(
        pos_embed[:, 1:].reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)),
        mode="bicubic",
    )
    return torch.cat((pos_embed[:, :1], patch.permute(0, 2, 3, 1).reshape(1, -1, dim)), dim=1)


def test_pos_embed_interpolation():
    torch.manual_seed(0)
    net = build_backbone("vit_tiny", patch_size=16).eval()  # native 224 px
    assert net.interpolate_pos_encoding(224, 224) is net.pos_embed
    for h, w in [(96, 96), (96, 64), (16, 48)]:
        with torch.no_grad():
            got = net.interpolate_pos_encoding(h, w)
            torch.testing.assert_close(got, _dino_interpolation(net.pos_embed, 16, h, w))
        assert got.shape == (1, 1 + (h // 16) * (w // 16), 192)
    with torch.no_grad():
        assert net(torch.randn(2, 3, 96, 96)).shape == (2, 192)
        assert net(torch.randn(1, 3, 96, 64)).shape == (1, 192)
    with pytest.raises(ValueError, match="smaller than the patch size 16"):
        net(torch.randn(1, 3, 8, 64))


def test_drop_path_schedule_and_eval_mode():
    torch.manual_seed(0)
    net = build_backbone("vit_tiny", patch_size=8, img_size=16, drop_path_rate=0.5)
    rates = [blk.drop_path.drop_prob if hasattr(blk.drop_path, "drop_prob") else 0.0 for blk in net.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.5, 12).tolist())
    assert isinstance(net.blocks[0].drop_path, nn.Identity)
    x = torch.randn(8, 3, 16, 16)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(x))
        evaluated = net(x)
    net.train()
    with torch.no_grad():
        assert not torch.allclose(net(x), evaluated)


def test_vit_small_keys_equal_dino_release(shared_reference):
    layouts = _layouts(shared_reference)
    backbone = build_backbone("vit_small", patch_size=16)
    ours = _shapes(backbone.state_dict())
    assert ours == [(k, s) for k, s, _ in layouts["dino_deitsmall16_pretrain.pth"]["keys"]]
    full = layouts["dino_deitsmall16_pretrain_full_checkpoint.pth"]["entries"]
    teacher = [(k[len("backbone."):], s) for k, s, _ in full["teacher"] if k.startswith("backbone.")]
    student = [(k[len("module.backbone."):], s) for k, s, _ in full["student"] if k.startswith("module.backbone.")]
    assert ours == teacher == student


def test_dino_head_keys_equal_dino_release(shared_reference):
    full = _layouts(shared_reference)["dino_deitsmall16_pretrain_full_checkpoint.pth"]["entries"]
    legacy_to_parametrized = {"weight_g": "parametrizations.weight.original0",
                              "weight_v": "parametrizations.weight.original1"}
    expected = []
    for key, shape, _ in full["teacher"]:
        if key.startswith("head."):
            key = key[len("head."):]
            for old, new in legacy_to_parametrized.items():
                key = key.replace(old, new)
            expected.append((key, shape))
    head = DINOHead(384, 65536)
    assert _shapes(head.state_dict()) == expected


# ---------------------------------------------------------------- DINO head


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_dino_head_arithmetic_and_frozen_norm(norm_last_layer):
    torch.manual_seed(0)
    head = DINOHead(32, 10, norm_last_layer=norm_last_layer, hidden_dim=64, bottleneck_dim=16)
    assert [type(m) for m in head.mlp] == [nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear]
    g = head.last_layer.parametrizations.weight.original0
    v = head.last_layer.parametrizations.weight.original1
    assert torch.all(g == 1) and g.shape == (10, 1)
    assert g.requires_grad is (not norm_last_layer)
    x = torch.randn(5, 32)
    z = head.mlp[4](F.gelu(head.mlp[2](F.gelu(head.mlp[0](x)))))
    z = z / z.norm(dim=1, keepdim=True)
    expected = z @ (g * v / v.norm(dim=1, keepdim=True)).t()
    torch.testing.assert_close(head(x), expected)
    head(x).sum().backward()
    assert (g.grad is None) is norm_last_layer
    assert v.grad is not None


def test_dino_head_loads_legacy_weight_norm_keys():
    """A release state_dict with weight_g / weight_v loads (torch's weight_norm compat hook)."""
    torch.manual_seed(0)
    head = DINOHead(8, 5, hidden_dim=16, bottleneck_dim=4)
    legacy = {k: v for k, v in head.state_dict().items() if not k.startswith("last_layer.")}
    weight_g, weight_v = torch.rand(5, 1) + 0.5, torch.randn(5, 4)
    legacy.update({"last_layer.weight_g": weight_g, "last_layer.weight_v": weight_v})
    fresh = DINOHead(8, 5, hidden_dim=16, bottleneck_dim=4)
    fresh.load_state_dict(legacy)
    torch.testing.assert_close(fresh.last_layer.parametrizations.weight.original0, weight_g)
    torch.testing.assert_close(fresh.last_layer.weight, weight_g * weight_v / weight_v.norm(dim=1, keepdim=True))


def test_dino_head_variants():
    head = DINOHead(8, 4, use_bn=True, nlayers=2, hidden_dim=16, bottleneck_dim=6)
    assert [type(m) for m in head.mlp] == [nn.Linear, nn.BatchNorm1d, nn.GELU, nn.Linear]
    single = DINOHead(8, 4, nlayers=1, bottleneck_dim=6)
    assert isinstance(single.mlp, nn.Linear) and "mlp.weight" in single.state_dict()


# ---------------------------------------------------------------- networks and multi-crop


def _crops():
    torch.manual_seed(1)
    return [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32), torch.randn(3, 3, 16, 16), torch.randn(2, 3, 32, 32)]


def _count_calls(module):
    calls = []
    module.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    return calls


def test_resolution_groups():
    assert resolution_groups(_crops()) == [(0, 2), (2, 3), (3, 4)]
    assert resolution_groups([torch.zeros(1, 3, 8, 6), torch.zeros(1, 3, 8, 8)]) == [(0, 1), (1, 2)]


def test_swav_network_multicrop_equals_per_crop():
    torch.manual_seed(0)
    net = SwAVNetwork(build_backbone("resnet18", small_stem=True), [64], feat_dim=16, nmb_prototypes=5).eval()
    calls = _count_calls(net.backbone)
    crops = _crops()
    with torch.no_grad():
        out = net(crops)
        assert calls == [4, 3, 2]  # one backbone call per run of equal sizes
        singles = [net(c) for c in crops]
    assert isinstance(out, NetworkOutput)
    torch.testing.assert_close(out.embedding, torch.cat([s.embedding for s in singles]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.scores, torch.cat([s.scores for s in singles]), rtol=1e-4, atol=1e-5)
    assert out.embedding.shape == (9, 16) and out.scores.shape == (9, 5)
    torch.testing.assert_close(out.embedding.norm(dim=1), torch.ones(9))
    torch.testing.assert_close(out.scores, out.embedding @ net.prototypes.weight.t())


def test_dino_network_multicrop_equals_per_crop():
    torch.manual_seed(0)
    backbone = build_backbone("vit_tiny", patch_size=8, img_size=32)
    net = DINONetwork(backbone, DINOHead(192, 7, hidden_dim=32, bottleneck_dim=8)).eval()
    calls = _count_calls(net.backbone)
    crops = _crops()
    with torch.no_grad():
        out = net(crops)
        assert calls == [4, 3, 2]
        singles = torch.cat([net(c).scores for c in crops])
    assert isinstance(out, NetworkOutput) and out.embedding is None and out.probe_logits == []
    out = out.scores
    assert out.shape == (9, 7)
    torch.testing.assert_close(out, singles, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="at least one batch"):
        net([])


def test_teacher_copy_by_state_dict():
    """The documented teacher recipe: same constructors, then load the student's state_dict."""
    torch.manual_seed(0)

    def make(drop_path_rate):
        return DINONetwork(
            build_backbone("vit_tiny", patch_size=8, img_size=16, drop_path_rate=drop_path_rate),
            DINOHead(192, 6, norm_last_layer=False, hidden_dim=16, bottleneck_dim=8),
        )

    student, teacher = make(0.1), make(0.0)
    teacher.load_state_dict(student.state_dict())
    x = [torch.randn(2, 3, 16, 16)]
    student.eval(), teacher.eval()
    with torch.no_grad():
        torch.testing.assert_close(teacher(x).scores, student(x).scores)
        student.head.last_layer.parametrizations.weight.original0.mul_(2)
        assert not torch.allclose(teacher(x).scores, student(x).scores)
    assert [n for n, _ in student.named_parameters()] == [n for n, _ in teacher.named_parameters()]


def test_projection_head_layouts():
    bb = build_backbone("resnet18", small_stem=True)
    two = SwAVNetwork(bb, [64, 32], feat_dim=16, nmb_prototypes=5)
    assert [type(m) for m in two.projection_head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear]
    assert two.projection_head[3].in_features == 64 and two.projection_head[6].out_features == 16
    for linear_spec in ([0], [], 0):
        linear = SwAVNetwork(bb, linear_spec, feat_dim=16, nmb_prototypes=5)
        assert len(linear.projection_head) == 1 and linear.projection_head[0].in_features == 512
    with pytest.raises(FlagError, match=r"--hidden_mlp \[2048, 0\]"):
        SwAVNetwork(bb, [2048, 0], feat_dim=16, nmb_prototypes=5)
    with pytest.raises(ValueError, match="num_features"):
        SwAVNetwork(nn.Linear(3, 3), [8], feat_dim=4, nmb_prototypes=2)


def test_no_projection_uses_backbone_features():
    torch.manual_seed(0)
    net = SwAVNetwork(build_backbone("resnet18", small_stem=True), [2048], feat_dim=0, nmb_prototypes=5).eval()
    assert len(net.projection_head) == 0 and net.prototypes.in_features == 512
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = net(x)
        torch.testing.assert_close(out.embedding, F.normalize(net.backbone(x), dim=1))
    assert out.scores.shape == (2, 5)


def test_normalize_prototypes_and_head_parameter_names():
    torch.manual_seed(0)
    net = SwAVNetwork(build_backbone("resnet18", small_stem=True), [64], feat_dim=16, nmb_prototypes=5,
                      multihead_eval=True)
    with torch.no_grad():
        net.prototypes.weight.mul_(3)
    net.normalize_prototypes()
    torch.testing.assert_close(net.prototypes.weight.norm(dim=1), torch.ones(5))
    names = net.head_parameter_names()
    assert names == [n for n, _ in net.named_parameters() if n.startswith(("projection_head.", "prototypes."))]
    assert "prototypes.weight" in names and "projection_head.0.weight" in names
    assert not any(n.startswith(("cls_heads", "backbone")) for n in names)
    assert is_head_parameter("module.projection_head.3.bias") and not is_head_parameter("module.backbone.conv1.weight")


def _probe_net(**flags):
    torch.manual_seed(0)
    return SwAVNetwork(build_backbone("resnet18", small_stem=True), [64, 32], feat_dim=16, nmb_prototypes=5, **flags)


def test_probes_are_detached_and_see_first_crop_rows():
    net = _probe_net(multihead_eval=True)
    assert net.probe_names == ["bbone", "proj_0", "proj_1", "proj_last"]
    assert [p.in_features for p in net.cls_heads] == [512, 64, 32, 16]
    crops = [torch.randn(3, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    out = net(crops)
    assert [tuple(p.shape) for p in out.probe_logits] == [(3, 5)] * 4
    sum(p.sum() for p in out.probe_logits).backward()
    assert all(p.grad is None for n, p in net.named_parameters() if not n.startswith("cls_heads"))
    assert all(p.grad.abs().sum() > 0 for p in net.cls_heads.parameters())
    # the probes' inputs are the stage outputs: backbone, each hidden ReLU output, final projection
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h0 = net.backbone(x)
        h1 = net.projection_head[2](net.projection_head[1](net.projection_head[0](h0)))
        h2 = net.projection_head[5](net.projection_head[4](net.projection_head[3](h1)))
        h3 = net.projection_head[6](h2)
        expected = [probe(h) for probe, h in zip(net.cls_heads, [h0, h1, h2, h3])]
        for got, want in zip(net(x, probe_rows=2).probe_logits, expected):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("detach", [True, False])
def test_ensemble_classifier(detach):
    net = _probe_net(ensemble_eval=True, bn_ensemble=True, detach_ensemble=detach)
    assert net.probe_names == ["ensemble"]
    assert isinstance(net.cls_ensemble[0], nn.BatchNorm1d)
    assert net.cls_ensemble[0].num_features == 512 + 64 + 32 + 16
    out = net([torch.randn(3, 3, 32, 32), torch.randn(2, 3, 32, 32)])
    assert len(out.probe_logits) == 1 and out.probe_logits[0].shape == (3, 5)
    out.probe_logits[0].sum().backward()
    assert net.cls_ensemble[1].weight.grad.abs().sum() > 0
    reached_backbone = net.backbone.conv1.weight.grad is not None
    assert reached_backbone is (not detach)
    plain = _probe_net(multihead_eval=True, ensemble_eval=True)
    assert isinstance(plain.cls_ensemble, nn.Linear) and plain.probe_names[-1] == "ensemble"
    assert len(plain(torch.randn(2, 3, 32, 32)).probe_logits) == 5
