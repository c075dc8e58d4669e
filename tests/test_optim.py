"""Lion and the weight EMA against their formulas in float64 (and against timm's where timm is installed);
the batch arithmetic of --global-batch / --lr-scaling."""
import math

import pytest
import torch
from torch import nn

from srr.train import TrainConfig
from srr.train.ema import ModelEMA, ema_decay_at
from srr.train.lion import Lion
from srr.train.optim import build_optimizer, resolve_grad_accum, scaled_lr


def lion_reference(p, m, g, *, lr, beta1, beta2, wd):
    """p ← p − lr·(sign(β₁m + (1−β₁)g) + wd·p), then m ← β₂m + (1−β₂)g."""
    p = p - lr * (torch.sign(beta1 * m + (1 - beta1) * g) + wd * p)
    m = beta2 * m + (1 - beta2) * g
    return p, m


def test_lion_follows_its_update_rule_in_float64():
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(5, 7, dtype=torch.float64, generator=gen)
    q0 = torch.randn(3, dtype=torch.float64, generator=gen)
    p, q = nn.Parameter(p0.clone()), nn.Parameter(q0.clone())
    opt = Lion([{"params": [p], "weight_decay": 0.5}, {"params": [q], "weight_decay": 0.0}], lr=0.01, betas=(0.8, 0.95))
    ref = [(p0.clone(), torch.zeros_like(p0), 0.5), (q0.clone(), torch.zeros_like(q0), 0.0)]
    for _ in range(6):
        grads = [torch.randn(t.shape, dtype=torch.float64, generator=gen) for t in (p, q)]
        p.grad, q.grad = grads[0].clone(), grads[1].clone()
        opt.step()
        ref = [(*lion_reference(r, m, g, lr=0.01, beta1=0.8, beta2=0.95, wd=wd), wd)
               for (r, m, wd), g in zip(ref, grads)]
    for param, (expected, momentum, _) in zip((p, q), ref):
        torch.testing.assert_close(param.detach(), expected, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(opt.state[param]["exp_avg"], momentum, rtol=1e-14, atol=1e-14)


def test_lion_agrees_with_timm_lion():
    timm_optim = pytest.importorskip("timm.optim")
    gen = torch.Generator().manual_seed(1)
    start = torch.randn(4, 6, dtype=torch.float64, generator=gen)
    ours, theirs = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    a = Lion([ours], lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1)
    b = timm_optim.Lion([theirs], lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1, foreach=False)
    for _ in range(5):
        g = torch.randn(start.shape, dtype=torch.float64, generator=gen)
        ours.grad, theirs.grad = g.clone(), g.clone()
        a.step()
        b.step()
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-14, atol=1e-14)


def test_lion_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match=r"betas\[1\] must be in \[0, 1\), got 1.0"):
        Lion([nn.Parameter(torch.zeros(1))], betas=(0.9, 1.0))


def test_optimizer_lion_builds_lion_with_the_weight_decay_on_matrices_only():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    opt = build_optimizer(model, TrainConfig(optimizer="lion", lr=2.4e-4, weight_decay=0.5))
    assert isinstance(opt, Lion) and {g["weight_decay"] for g in opt.param_groups} == {0.5, 0.0}
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainConfig(optimizer="lamb")


def test_ema_follows_its_formula_with_warmup_in_float64():
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    ema = ModelEMA(model, decay=0.9, warmup=True)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for t in range(1, 8):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model, t)
        d = 0.0 if t == 1 else min(0.9, 1 - t ** (-2 / 3))
        assert ema_decay_at(t, decay=0.9) == d
        expected = {k: d * expected[k] + (1 - d) * v for k, v in model.state_dict().items()}
    for k, v in ema.module.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-14, atol=1e-14)
    assert ema_decay_at(50, decay=0.9, warmup=False) == 0.9 and ema.steps == 7
    assert not any(p.requires_grad for p in ema.module.parameters())


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_agrees_with_timm_model_ema_v3(warmup):
    timm_ema = pytest.importorskip("timm.utils.model_ema")
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).double()
    ours = ModelEMA(model, decay=0.99, warmup=warmup)
    theirs = timm_ema.ModelEmaV3(model, decay=0.99, use_warmup=warmup)
    for t in range(1, 12):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model.train()(torch.randn(5, 4, dtype=torch.float64))  # moves the BatchNorm buffers
        ours.update(model, t)
        theirs.update(model, step=t if warmup else None)
    for (k, a), b in zip(ours.module.state_dict().items(), theirs.module.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=k)


def test_ema_decay_must_be_below_one():
    with pytest.raises(ValueError, match="ema_decay must be a finite number >= 0 and < 1, got 1.0"):
        TrainConfig(ema_decay=1.0)


def test_global_batch_derives_grad_accum_and_names_the_options_when_it_does_not_divide():
    assert resolve_grad_accum(TrainConfig(batch_size=64, global_batch=2048), world_size=8) == 4
    assert resolve_grad_accum(TrainConfig(batch_size=64, grad_accum=3), world_size=8) == 3
    with pytest.raises(ValueError, match=r"--global-batch 2048 must be a multiple of --batch-size × world size "
                                         r"\(64 × 3 = 192\)"):
        resolve_grad_accum(TrainConfig(batch_size=64, global_batch=2048), world_size=3)
    with pytest.raises(ValueError, match="--grad-accum 2 contradicts --global-batch 2048"):
        resolve_grad_accum(TrainConfig(batch_size=64, global_batch=2048, grad_accum=2), world_size=8)


def test_lr_scaling_rules_are_relative_to_a_batch_of_256():
    assert scaled_lr(1e-3, rule="none", global_batch=2048) == 1e-3
    assert math.isclose(scaled_lr(1e-3, rule="linear", global_batch=2048), 8e-3)
    assert math.isclose(scaled_lr(1e-3, rule="sqrt", global_batch=1024), 2e-3)
    with pytest.raises(ValueError, match="lr_scaling must be one of"):
        TrainConfig(lr_scaling="cubic")


def test_betas_reach_the_optimiser_and_are_checked():
    model = nn.Linear(3, 4)
    adamw = build_optimizer(model, TrainConfig(optimizer="adamw", betas="0.9,0.95"))
    assert adamw.param_groups[0]["betas"] == (0.9, 0.95)
    assert build_optimizer(model, TrainConfig(optimizer="lion")).param_groups[0]["betas"] == (0.9, 0.99)
    with pytest.raises(ValueError, match="betas must be two numbers in \\[0, 1\\)"):
        TrainConfig(betas="0.9")
    with pytest.raises(ValueError, match="--betas applies to adam, adamw and lion, not sgd"):
        build_optimizer(model, TrainConfig(optimizer="sgd", betas="0.9,0.99"))
