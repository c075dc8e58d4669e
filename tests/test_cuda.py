"""GPU checks of the objective (run where CUDA is present; the device machine runs them)."""
import pytest
import torch

from srr.rates import coding_rate, compressed_coding_rate, compressed_coding_rate_grad

pytestmark = pytest.mark.cuda
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def rel(a, b):
    return ((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm()).item()


@cuda
def test_rates_on_cuda_match_float64_cpu():
    g = torch.Generator().manual_seed(0)
    Z = torch.randn(4, 50, 48, generator=g, dtype=torch.float64)
    U = torch.randn(6, 48, 8, generator=g, dtype=torch.float64)
    Zc, Uc = Z.float().cuda(), U.float().cuda()
    assert rel(compressed_coding_rate(Zc, Uc, 0.5), compressed_coding_rate(Z, U, 0.5)) < 1e-5
    assert rel(coding_rate(Zc, 0.5), coding_rate(Z, 0.5)) < 1e-5
    assert rel(compressed_coding_rate_grad(Zc, Uc, 0.5), compressed_coding_rate_grad(Z, U, 0.5)) < 1e-4
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = compressed_coding_rate(Zc.bfloat16(), Uc, 0.5)
    assert out.dtype == torch.float32 and rel(out, compressed_coding_rate(Zc.bfloat16().double().cpu(), U, 0.5)) < 1e-5


@cuda
def test_cuda_fallback_is_sync_free_and_finite():
    """The float64 retry of failed Cholesky factorisations runs on the device, masked."""
    g = torch.Generator().manual_seed(0)
    Z = torch.randn(3, 64, 32, generator=g, dtype=torch.float64)
    Z[0] *= 1e6
    Z[0, :, 0] *= 1e6
    Zc = Z.float().cuda().requires_grad_()
    R = coding_rate(Zc, 1e-3)
    assert torch.isfinite(R).all() and rel(R, coding_rate(Z, 1e-3)) < 1e-5
    R.sum().backward()
    assert torch.isfinite(Zc.grad).all()
