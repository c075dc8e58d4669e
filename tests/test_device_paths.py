"""The mixed-precision and backend paths of issue 12's GPU item (6), on every device present.

Each test runs on the CPU here and on CUDA where a device is present (the device machine runs the
same file): the exact MSSA step under bf16 autocast with its hand-written backward, the ISTA step on
each backend (``torch``; ``triton`` on CUDA), and one bf16-autocast training step of every variant.
Each fast path is compared with its float64 derived reference (relative error of outputs and of
gradients in the input and the weights).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from srr.layers import ISTA, TSSA, ExactCompression
from srr.models import VARIANTS, create_model

CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
TINY = dict(image_size=8, patch_size=4, in_chans=1, num_classes=3, dim=32, depth=2, heads=4, head_dim=8)


def rel(a, b) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm())


def _fast_and_reference(layer, x: torch.Tensor, cotangent: torch.Tensor, *, autocast: bool):
    """Output and gradients (input, weight) of ``layer`` on ``x`` and of its float64 reference on CPU."""
    device = x.device.type
    x = x.detach().requires_grad_()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
    grads = torch.autograd.grad(y, [x, *layer.parameters()], cotangent.to(y.dtype))
    ref_layer = copy.deepcopy(layer).to("cpu").double()
    x64 = x.detach().double().cpu().requires_grad_()
    y64 = ref_layer.reference(x64)
    grads64 = torch.autograd.grad(y64, [x64, *ref_layer.parameters()], cotangent.double().cpu())
    return (y, *grads), (y64, *grads64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("autocast, tol", [(False, 1e-5), (True, 2e-2)])  # bf16: measured 5e-3…7e-3 on the CPU
def test_exact_mssa_step_and_its_hand_written_backward_match_the_derived_step(device, autocast, tol):
    torch.manual_seed(0)
    layer = ExactCompression(64, heads=4, eps=0.5, step_size=0.5).to(device)
    x = torch.randn(3, 33, 64, device=device)
    cotangent = torch.randn(3, 33, 64, device=device)
    fast, ref = _fast_and_reference(layer, x, cotangent, autocast=autocast)
    if autocast:
        assert fast[0].dtype == torch.bfloat16  # token-wise products in bf16 under autocast
    for a, b in zip(fast, ref):
        assert rel(a, b) < tol


@pytest.mark.parametrize("device, backend", [
    ("cpu", "torch"),
    pytest.param("cuda", "torch", marks=DEVICES[1].marks),
    pytest.param("cuda", "triton", marks=DEVICES[1].marks),
])
@pytest.mark.parametrize("nonnegative", [True, False])
def test_ista_step_on_each_backend_matches_the_derived_step(device, backend, nonnegative):
    torch.manual_seed(0)
    layer = ISTA(40, step_size=0.1, lam=0.1, nonnegative=nonnegative, backend=backend).to(device)
    x = torch.randn(2, 33, 40, device=device)
    cotangent = torch.randn(2, 33, 40, device=device)
    fast, ref = _fast_and_reference(layer, x, cotangent, autocast=False)
    for a, b in zip(fast, ref):
        assert rel(a, b) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("autocast, tol", [(False, 1e-5), (True, 3e-2)])  # bf16: measured 2e-3…1.5e-2 on the CPU
def test_tssa_step_and_its_gradients_match_the_derived_step(device, autocast, tol):
    """TSSA (E13), the O(N) attention, fast path against its float64 derived reference."""
    torch.manual_seed(0)
    layer = TSSA(64, heads=4, eps=0.5, step_size=0.5).to(device)
    x = torch.randn(3, 33, 64, device=device)
    cotangent = torch.randn(3, 33, 64, device=device)
    fast, ref = _fast_and_reference(layer, x, cotangent, autocast=autocast)
    errors = [rel(a, b) for a, b in zip(fast, ref)]
    assert max(errors) < tol, errors


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_one_bf16_autocast_training_step_of_every_variant(device, variant):
    torch.manual_seed(0)
    model = create_model("crate_nano", variant=variant, **TINY).to(device).train()  # K·p = d: every variant builds
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(4, 1, 8, 8, device=device)
    y = torch.randint(0, 3, (4,), device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():  # as strict as the float32 twin (tests/test_models.py)
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient under bf16 autocast"
    opt.step()
    for (name, p), b in zip(model.named_parameters(), before):
        assert not torch.equal(p.detach(), b), f"{name} did not move"  # AdamW moves every p with a gradient
