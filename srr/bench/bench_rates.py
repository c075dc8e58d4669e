"""Benchmark of the objective (issue 2): R^c against the public visualisation code's approach.

Baseline: a straightforward loop over heads, each an N×N logdet (Cholesky) (what the public CRATE
visualisation code does). Ours: ``srr.compressed_coding_rate`` — one batched call, the smaller
(p×p) Gram, checked Cholesky. Also R on a data set's features (50,000 × 768) in float32 without an
N×N matrix: time and peak memory; and ``float32_max_rel_err``, the largest relative error of float32
R and R^c against float64 over token scales 1e-6 … 1e4 (issue 12's target: ≤ 1e-4).

    python -m srr.bench.bench_rates [--quick] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import resource
import time

import torch

from srr.rates import coding_rate, compressed_coding_rate


def straightforward_compressed_coding_rate(Z, U, eps):
    """(E2) literally, per head: ½ logdet(I_N + β A_k A_kᵀ) with the N×N Gram (the baseline).

    The logdet is taken from a Cholesky factor (the matrix is SPD): ``torch.logdet``'s batched LU
    hangs in torch 2.14.1's oneMKL at N = 197 with 2 threads ("Parameter 6 was incorrect on entry
    to SLASWP"; 1 thread and N = 65 are fine), and Cholesky is the cheaper of the two anyway.
    """
    N = Z.shape[-2]
    total = 0.0
    for k in range(U.shape[0]):
        A = Z @ U[k]  # (B, N, p)
        p = A.shape[-1]
        eye = torch.eye(N, dtype=Z.dtype, device=Z.device)
        L = torch.linalg.cholesky(eye + p / (N * eps**2) * A @ A.mT)
        total = total + L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return total


def float32_rel_errors(dev, eps: float = 0.5) -> dict[float, float]:
    """Max relative error of float32 R (E1) and R^c (E2) against float64 (svdvals, log1p), per token scale.

    Token sets: N ≫ d, d ≫ N and the regularizer's shape, full rank and rank-deficient, multiplied by
    scales 1e-6 … 1e4 (issue 12: within 1e-4 at every scale).
    """
    g = torch.Generator().manual_seed(0)
    cases = []  # (Z (2, N, d) float64, U (K, d, p) float64)
    for N, d, rank, K, p in [(65, 384, None, 6, 64), (200, 8, 3, 2, 4), (6, 60, 2, 3, 20), (65, 64, 10, 4, 16)]:
        Z = torch.randn(2, N, rank or d, generator=g, dtype=torch.float64)
        if rank:
            Z = Z @ torch.randn(2, rank, d, generator=g, dtype=torch.float64) / rank**0.5
        Q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
        cases.append((Z, Q[:, : K * p].reshape(d, K, p).permute(1, 0, 2).contiguous()))

    def half_logdet(X, scale):
        return 0.5 * torch.log1p(scale * torch.linalg.svdvals(X) ** 2).sum(-1)

    errors = {}
    for k in range(-6, 5):
        worst = 0.0
        for Z64, U64 in cases:
            Z, U = (10.0**k * Z64).float().to(dev), U64.float().to(dev)
            Zr, Ur = Z.double().cpu(), U.double().cpu()
            N, d = Z.shape[-2:]
            p = U.shape[-1]
            for ours, ref in [(coding_rate(Z, eps), half_logdet(Zr, d / (N * eps**2))),
                              (compressed_coding_rate(Z, U, eps),
                               half_logdet(Zr.unsqueeze(-3) @ Ur, p / (N * eps**2)).sum(-1))]:
                err = ((ours.double().cpu() - ref).abs() / ref.abs()).nan_to_num(nan=float("inf"))  # NaN: worst
                worst = max(worst, float(err.max()))
        errors[10.0**k] = worst
    return errors


def timeit(fn, repeats: int, sync) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, for smoke tests")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    B, N, d, K = (8, 65, 192, 3) if args.quick else (64, 197, 768, 12)
    p = d // K
    repeats = 2 if args.quick else 5
    Z = torch.randn(B, N, d, device=dev)
    U = torch.linalg.qr(torch.randn(d, d, device=dev))[0].reshape(d, K, p).permute(1, 0, 2).contiguous()
    eps = 0.5

    ours = compressed_coding_rate(Z, U, eps)
    base = straightforward_compressed_coding_rate(Z, U, eps)
    ref = compressed_coding_rate(Z.double(), U.double(), eps)
    t_ours = timeit(lambda: compressed_coding_rate(Z, U, eps), repeats, sync)
    t_base = timeit(lambda: straightforward_compressed_coding_rate(Z, U, eps), repeats, sync)
    rel = ((ours.double() - base.double()).norm() / base.double().norm()).item()
    rel64 = ((ours.double() - ref).norm() / ref.norm()).item()

    n_big = 5_000 if args.quick else 50_000
    X = torch.randn(n_big, 768, device=dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t_big = timeit(lambda: coding_rate(X, eps), 1 if args.quick else 3, sync)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024)
    f32_errors = float32_rel_errors(dev)
    result = {
        "shape": f"B={B} N={N} d={d} K={K} p={p}",
        "Rc_straightforward_ms": 1e3 * t_base, "Rc_ours_ms": 1e3 * t_ours, "Rc_speedup": t_base / t_ours,
        "Rc_rel_err_vs_straightforward": rel, "Rc_rel_err_vs_float64": rel64,
        "R_big_shape": f"{n_big}x768", "R_big_ms": 1e3 * t_big,
        "R_big_extra_peak_MiB": peak, "R_big_NxN_would_need_MiB": n_big**2 * 4 / 2**20,
        "float32_max_rel_err": max(f32_errors.values()),  # R and R^c vs float64, token scales 1e-6 … 1e4
        "float32_worst_scale": max(f32_errors, key=f32_errors.get),
        "device": str(dev), "threads": torch.get_num_threads(),
    }
    for k, v in result.items():
        print(f"{k:32s} {v:.4g}" if isinstance(v, float) else f"{k:32s} {v}")
    return result


if __name__ == "__main__":
    main()
