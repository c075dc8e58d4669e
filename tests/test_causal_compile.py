"""The causal layers (MATH.md §8) under bf16 autocast and ``torch.compile`` (one graph, no break), and on CUDA."""
from __future__ import annotations

import pytest
import torch

from srr import derive
from srr.layers import CausalExactCompression, CausalMSSA, CausalTSSA, check
from srr.objective import CausalCompressedCodingRate

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

LAYERS = {
    "mssa": lambda: CausalMSSA(16, heads=4),
    "exact": lambda: CausalExactCompression(16, heads=4, step_size=0.5),
    "exact_auto": lambda: CausalExactCompression(16, heads=4, step_size="auto"),
    "tssa": lambda: CausalTSSA(16, heads=4, block_size=32),
    "tssa_tied": lambda: CausalTSSA(16, heads=4, block_size=32, output="tied"),
    "derived": lambda: derive(CausalCompressedCodingRate(0.5), 0.1, dim=16, heads=4, output="update"),
    "derived_auto": lambda: derive(CausalCompressedCodingRate(0.5), "auto", dim=16, heads=4, output="update"),
}


def _x(device="cpu", T=12):
    return torch.randn(2, T, 16, generator=torch.Generator().manual_seed(0)).to(device)


@pytest.mark.parametrize("name", list(LAYERS))
def test_compiles_into_one_graph_forward_and_backward(name):
    torch.manual_seed(0)
    layer = LAYERS[name]()
    x = _x()
    explained = torch._dynamo.explain(layer)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = compiled(xc)
    torch.testing.assert_close(out, layer(xe))
    out.square().sum().backward()
    layer(xe).square().sum().backward()
    torch.testing.assert_close(xc.grad, xe.grad)
    torch._dynamo.reset()


@pytest.mark.parametrize("name", list(LAYERS))
def test_bf16_autocast_stays_close_to_float32(name):
    torch.manual_seed(0)
    layer = LAYERS[name]()
    x = _x().requires_grad_()
    ref = layer(x).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    out.float().square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert float((out.detach().float() - ref).norm() / ref.norm()) < 3e-2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mssa", "exact", "tssa"])
def test_inductor_matches_eager_forward_and_backward(name):
    torch.manual_seed(0)
    layer = LAYERS[name]()
    x = _x()
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = torch.compile(layer, fullgraph=True)(xc)
    ref = layer(xe)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    out.square().sum().backward()
    ref.square().sum().backward()
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


# ---- CUDA: SDPA's GPU kernels with is_causal, batched cuSOLVER Cholesky, GPU scans (cumsum) -----------
@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("name", ["mssa", "exact", "exact_auto", "tssa", "tssa_tied"])
def test_cuda_paths_match_the_reference_are_causal_and_run_in_bf16(name):
    torch.manual_seed(0)
    layer = LAYERS[name]().cuda()
    assert check(layer, tokens=37).ok(1e-9 if name.startswith("exact") or name == "tssa_tied" or name == "mssa"
                                      else 1e-7)
    x = _x("cuda", T=64)
    y = x.clone()
    y[:, 40:] = torch.randn_like(y[:, 40:]) * 3
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out_x, out_y = layer(x), layer(y)
    assert torch.isfinite(out_x).all()
    assert torch.equal(out_x[:, :40], out_y[:, :40])
    ref = layer(x)
    assert float((out_x.float() - ref).norm() / ref.norm()) < 3e-2
    compiled = torch.compile(layer, fullgraph=True)
    torch.testing.assert_close(compiled(x), ref, rtol=1e-3, atol=1e-4)
    torch._dynamo.reset()
