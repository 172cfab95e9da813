"""LARS against hand-written formulas, the cosine schedule against both releases' constructions, groups."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from src.errors import FlagError
from src.optim import LARS, apply_schedules, cosine_schedule, param_groups


def norm(v):
    return math.sqrt(sum(x * x for x in v))


def lars_direction(p, g, wd, eta, eps=1e-8):
    """The release's LARS-scaled gradient, in plain Python floats."""
    trust = eta * norm(p) / (norm(g) + wd * norm(p) + eps)
    return [(gi + wd * pi) * trust for gi, pi in zip(g, p)]


def step_with(opt, param, grad):
    param.grad = torch.tensor(grad, dtype=torch.float64)
    opt.step()
    return param.detach().tolist()


def test_lars_one_and_two_steps():
    lr, wd, eta, m = 0.5, 0.1, 0.02, 0.9
    p0, g1, g2 = [3.0, -4.0], [0.3, 0.4], [-1.0, 2.0]
    param = nn.Parameter(torch.tensor(p0, dtype=torch.float64))
    opt = LARS([param], lr=lr, weight_decay=wd, momentum=m, eta=eta)

    d1 = lars_direction(p0, g1, wd, eta)  # first step: the momentum buffer is the direction itself
    p1 = [p - lr * d for p, d in zip(p0, d1)]
    assert step_with(opt, param, g1) == pytest.approx(p1, rel=1e-12)

    d2 = lars_direction(p1, g2, wd, eta)
    buf2 = [m * b + d for b, d in zip(d1, d2)]
    p2 = [p - lr * b for p, b in zip(p1, buf2)]
    assert step_with(opt, param, g2) == pytest.approx(p2, rel=1e-12)
    assert opt.state[param]["momentum_buffer"].tolist() == pytest.approx(buf2, rel=1e-12)


def test_lars_skips_adaptation_and_decay_where_told():
    lr, wd, m = 0.1, 0.5, 0.9
    g1, g2 = [0.2, -0.1, 0.4], [0.1, 0.1, -0.3]
    bias = nn.Parameter(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    plain = nn.Parameter(torch.tensor([[1.0, -1.0, 0.5]], dtype=torch.float64))  # 2-D, group without LARS
    opt = LARS([{"params": [bias]}, {"params": [plain], "lars_adaptation": False, "lr": 0.2}],
               lr=lr, weight_decay=wd, momentum=m, eta=0.001, exclude_bias_and_norm=True)
    # plain momentum SGD, no weight decay: p1 = p0 - lr g1, p2 = p1 - lr (m g1 + g2)
    expected_bias = [p - lr * a - lr * (m * a + b) for p, a, b in zip([1.0, 2.0, 3.0], g1, g2)]
    expected_plain = [p - 0.2 * a - 0.2 * (m * a + b) for p, a, b in zip([1.0, -1.0, 0.5], g1, g2)]
    for g in (g1, g2):
        bias.grad = torch.tensor(g, dtype=torch.float64)
        plain.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
    assert bias.tolist() == pytest.approx(expected_bias, rel=1e-12)
    assert plain[0].tolist() == pytest.approx(expected_plain, rel=1e-12)


def test_lars_zero_norm_parameter_gets_plain_gradient():
    # |p| = 0: the release applies neither the trust ratio nor the weight decay
    param = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = LARS([param], lr=0.3, weight_decay=0.5, momentum=0.9)
    assert step_with(opt, param, [1.0, -2.0]) == pytest.approx([-0.3, 0.6], rel=1e-12)


def test_lars_excluded_bias_is_adapted_without_the_flag():
    p0, g = [3.0, 4.0], [1.0, 0.0]
    param = nn.Parameter(torch.tensor(p0, dtype=torch.float64))
    opt = LARS([param], lr=1.0, weight_decay=0.0, momentum=0.9, eta=0.01)
    expected = [p - d for p, d in zip(p0, lars_direction(p0, g, 0.0, 0.01))]  # wd 0 is still scaled
    assert step_with(opt, param, g) == pytest.approx(expected, rel=1e-12)


def test_lars_with_grad_scaler_equals_unscaled_and_resumes():
    def make():
        torch.manual_seed(0)
        return nn.Linear(4, 3)

    x, y = torch.randn(8, 4), torch.randn(8, 3)
    ref_model, amp_model = make(), make()
    ref_opt = LARS(ref_model.parameters(), lr=0.5, weight_decay=1e-2)
    amp_opt = LARS(amp_model.parameters(), lr=0.5, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for _ in range(2):
        ref_opt.zero_grad()
        ((ref_model(x) - y) ** 2).mean().backward()
        ref_opt.step()
        amp_opt.zero_grad()
        scaler.scale(((amp_model(x) - y) ** 2).mean()).backward()
        scaler.step(amp_opt)
        scaler.update()
    for a, b in zip(ref_model.parameters(), amp_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # a resumed optimizer continues exactly where the saved one was
    resumed_model = make()
    resumed_model.load_state_dict(ref_model.state_dict())
    resumed_opt = LARS(resumed_model.parameters(), lr=0.5, weight_decay=1e-2)
    buffer = io.BytesIO()  # through a file, as a checkpoint: weights_only loading must suffice
    torch.save(ref_opt.state_dict(), buffer)
    buffer.seek(0)
    resumed_opt.load_state_dict(torch.load(buffer, weights_only=True))
    for model, opt in ((ref_model, ref_opt), (resumed_model, resumed_opt)):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    for a, b in zip(ref_model.parameters(), resumed_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def swav_lr_schedule(base_lr, final_lr, epochs, n_iter, warmup_epochs, start_warmup):
    """The SwAV/Suave release's construction in main_swav.py."""
    warmup = np.linspace(start_warmup, base_lr, n_iter * warmup_epochs)
    iters = np.arange(n_iter * (epochs - warmup_epochs))
    cosine = np.array([final_lr + 0.5 * (base_lr - final_lr)
                       * (1 + math.cos(math.pi * t / (n_iter * (epochs - warmup_epochs)))) for t in iters])
    return np.concatenate((warmup, cosine))


def test_cosine_schedule_values():
    base, final, epochs, n_iter, warm, start = 2.0, 0.1, 10, 7, 3, 0.5
    s = cosine_schedule(base, final, epochs, n_iter, warmup_epochs=warm, start_warmup_value=start)
    w, total = warm * n_iter, epochs * n_iter
    cos_len = total - w
    assert len(s) == total
    assert s[0] == pytest.approx(start)                                # warm-up start
    assert s[5] == pytest.approx(start + (base - start) * 5 / (w - 1))  # linear
    assert s[w - 1] == pytest.approx(base)                             # warm-up end (linspace endpoint)
    assert s[w] == pytest.approx(base)                                 # cosine start
    mid = w + cos_len // 2
    assert s[mid] == pytest.approx(final + 0.5 * (base - final) * (1 + math.cos(math.pi * (cos_len // 2) / cos_len)))
    assert s[-1] == pytest.approx(final + 0.5 * (base - final) * (1 + math.cos(math.pi * (cos_len - 1) / cos_len)))
    assert np.all(np.diff(s[w:]) < 0)
    no_warmup = cosine_schedule(1.0, 0.0, 4, 2)
    assert no_warmup[0] == 1.0 and no_warmup[4] == pytest.approx(0.5)  # cos(pi/2) at the middle


def test_zero_epochs_is_a_one_line_flag_error():
    """``--epochs 0`` reaches the schedule first: a FlagError (one line from the entry points), not a traceback."""
    with pytest.raises(FlagError, match=r"--epochs > 0 .* got 0 and 5"):
        cosine_schedule(0.1, 0.0, 0, 5)


@pytest.mark.parametrize("epochs,n_iter,warm,start", [(10, 7, 3, 0.5), (5, 4, 0, 0.0), (3, 2, 1, 0.0)])
def test_cosine_schedule_equals_swav_release_construction(epochs, n_iter, warm, start):
    np.testing.assert_allclose(cosine_schedule(4.8, 0.0048, epochs, n_iter, warm, start),
                               swav_lr_schedule(4.8, 0.0048, epochs, n_iter, warm, start), rtol=1e-12, atol=0)


def test_cosine_schedule_errors():
    with pytest.raises(ValueError, match="iterations per epoch > 0"):
        cosine_schedule(1.0, 0.0, 3, 0)
    with pytest.raises(FlagError, match=r"warm-up epochs \(5\)"):
        cosine_schedule(1.0, 0.0, 3, 2, warmup_epochs=5)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
        self.prototypes = nn.Linear(4, 5, bias=False)
        self.prototypes_extra = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def names_of(model, group):
    by_id = {id(p): n for n, p in model.named_parameters()}
    return sorted(by_id[id(p)] for p in group["params"])


def test_param_groups_decay_split_and_overrides():
    model = Tiny()
    groups = param_groups(model, weight_decay=0.04, lr_overrides={"prototypes": 0.5, "prototypes_extra": 2.0})
    summary = {g["name"]: (names_of(model, g), g["weight_decay"], g["apply_weight_decay"], g["lr_scale"])
               for g in groups}
    assert summary == {
        "decay": (["backbone.0.weight"], 0.04, True, 1.0),
        "no_decay": (["backbone.0.bias", "backbone.1.bias", "backbone.1.weight"], 0.0, False, 1.0),
        "prototypes/decay": (["prototypes.weight"], 0.04, True, 0.5),
        # the longest matching prefix wins
        "prototypes_extra/decay": (["prototypes_extra.weight"], 0.04, True, 2.0),
        "prototypes_extra/no_decay": (["prototypes_extra.bias"], 0.0, False, 2.0),
    }
    everything = param_groups(model, weight_decay=1e-6, no_decay_bias_and_norm=False)
    assert [g["name"] for g in everything] == ["decay"]
    assert len(everything[0]["params"]) == 7  # frozen parameters are left out

    opt = torch.optim.AdamW(groups)
    apply_schedules(opt, lr=0.1, weight_decay=0.2)
    assert {g["name"]: (g["lr"], g["weight_decay"]) for g in opt.param_groups} == {
        "decay": (0.1, 0.2), "no_decay": (0.1, 0.0), "prototypes/decay": (0.05, 0.2),
        "prototypes_extra/decay": (0.2, 0.2), "prototypes_extra/no_decay": (0.2, 0.0)}


def test_param_groups_unknown_prefix():
    with pytest.raises(ValueError, match="'head' matches no trainable parameter"):
        param_groups(Tiny(), 0.0, lr_overrides={"head": 0.1})


def test_dino_lars_equals_the_dino_release_formula():
    from src.optim import DINOLARS
    torch.manual_seed(0)
    w, b = torch.randn(4, 3, requires_grad=True), torch.randn(4, requires_grad=True)
    opt = DINOLARS([{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}], lr=0.5, momentum=0.9)
    w0, b0 = w.detach().clone(), b.detach().clone()
    mu_w, mu_b = torch.zeros_like(w0), torch.zeros_like(b0)
    for step in range(2):
        opt.zero_grad()
        ((w * torch.arange(12.).view(4, 3)).sum() + (b ** 2).sum() * (step + 1)).backward()
        g_w, g_b = w.grad.clone(), b.grad.clone()
        d = g_w + 0.1 * w0
        d = d * (0.001 * w0.norm() / d.norm())  # trust ratio on the decayed update, no eps
        mu_w, mu_b = 0.9 * mu_w + d, 0.9 * mu_b + g_b  # 1-D: plain gradient
        w0, b0 = w0 - 0.5 * mu_w, b0 - 0.5 * mu_b
        opt.step()
        torch.testing.assert_close(w.detach(), w0)
        torch.testing.assert_close(b.detach(), b0)
