"""Benchmark of the hand-optimised layers (issue 3) on CRATE-Tiny and CRATE-Base layer shapes.

1. Exact compression step: ``ExactCompression.step`` (closed form E6) against the derived step
   ``srr.derive(CompressedCodingRate)`` (autodiff of R^c), forward+backward.
2. CRATE block ``x ↦ ISTA(LN₂(x + MSSA(LN₁(x))))``: ours (SDPA softmax MSSA, one-matmul ISTA E10')
   against a straight re-implementation of the public code's block (explicit N×N softmax,
   three-matmul ISTA), forward+backward and inference. On CUDA both run under bf16 autocast.

Timings are interleaved (ours, baseline, ours, ...) and the median of each is kept, so the ratios
come from one run under the same machine load.

    python -m srr.bench.bench_layers [--quick] [--device cpu|cuda] [--batch 64] [--repeats 2]
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from srr.derivation import derive
from srr.layers import ISTA, MSSA, ExactCompression
from srr.objective import CompressedCodingRate

SHAPES = {"tiny": (384, 6, 64), "base": (768, 12, 64)}  # d, K, p (MATH.md §4.3)


class PublicBlock(nn.Module):
    """The public code's layer (``model/crate.py``), re-implemented as written: the baseline."""

    def __init__(self, dim: int, heads: int, head_dim: int, step_size: float = 0.1, lam: float = 0.1):
        super().__init__()
        inner = heads * head_dim
        self.heads, self.scale, self.step_size, self.lam = heads, head_dim ** -0.5, step_size, lam
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)
        self.weight = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(dim, dim)))

    def forward(self, x):
        w = self.qkv(self.norm1(x)).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, K, N, p)
        attn = torch.softmax(w @ w.transpose(-1, -2) * self.scale, dim=-1)  # (B, K, N, N)
        x = self.to_out((attn @ w).transpose(1, 2).flatten(2)) + x
        y = self.norm2(x)
        grad_1 = F.linear(F.linear(y, self.weight), self.weight.t())  # y Dᵀ D
        grad_2 = F.linear(y, self.weight.t())  # y D
        return F.relu(y + self.step_size * (grad_2 - grad_1) - self.step_size * self.lam)


class FastBlock(nn.Module):
    """The same layer from ``srr.layers``: SDPA softmax MSSA and one-matmul ISTA (E10')."""

    def __init__(self, dim: int, heads: int, head_dim: int, step_size: float = 0.1, lam: float = 0.1):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mssa = MSSA(dim, heads=heads, head_dim=head_dim)
        self.ista = ISTA(dim, step_size=step_size, lam=lam)

    def forward(self, x):
        return self.ista(self.norm2(x + self.mssa(self.norm1(x))))

    @torch.no_grad()
    def load_public(self, public: PublicBlock) -> "FastBlock":
        self.norm1.load_state_dict(public.norm1.state_dict())
        self.norm2.load_state_dict(public.norm2.state_dict())
        self.mssa.qkv.weight.copy_(public.qkv.weight)
        self.mssa.to_out[0].load_state_dict(public.to_out.state_dict())
        self.ista.weight.copy_(public.weight)
        return self


def _interleaved(fns: dict, repeats: int, sync) -> dict:
    """Median seconds of each function, the calls interleaved so that load drifts hit all alike."""
    for fn in fns.values():  # warm-up
        fn()
    sync()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def _train_step(module, x, owner=None):
    owner = module if owner is None else owner

    def run():
        owner.zero_grad(set_to_none=True)
        x.grad = None
        module(x).float().square().mean().backward()
    return run


def _infer(module, x):
    def run():
        with torch.inference_mode():
            module(x)
    return run


def bench_shape(name: str, *, batch: int, tokens: int, device: torch.device, repeats: int, amp: bool) -> dict:
    d, K, p = SHAPES[name]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    x = torch.randn(batch, tokens, d, device=device, requires_grad=True)
    out = {"shape": f"{name}: B={batch} N={tokens} d={d} K={K} p={p}"}

    # 1. exact compression step vs the derived step: float32 (the derived R^c always solves in float32;
    #    under autocast the exact step runs its token-wise matmuls in bf16, the p×p algebra in float32)
    kappa, eps = 0.1, 0.5
    exact = ExactCompression(d, heads=K, head_dim=p, step_size=kappa, eps=eps).to(device)
    derived = derive(CompressedCodingRate(eps=eps), step_size=kappa, dim=d, heads=K, head_dim=p,
                     U=exact.subspaces.detach()).to(device)
    with torch.no_grad():
        ref = derived(x)
        out["exact_rel_err"] = float((exact.step(x) - ref).norm() / ref.norm())
    t = _interleaved({"exact": _train_step(exact.step, x, exact), "derived": _train_step(derived, x)}, repeats, sync)
    out.update(exact_ms=1e3 * t["exact"], derived_ms=1e3 * t["derived"], exact_speedup=t["derived"] / t["exact"])
    if amp:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            steps = {"exact": _train_step(exact.step, x, exact), "derived": _train_step(derived, x)}
            t = _interleaved(steps, repeats, sync)
        out.update(exact_amp_ms=1e3 * t["exact"], derived_amp_ms=1e3 * t["derived"],
                   exact_amp_speedup=t["derived"] / t["exact"])

    # 2. the CRATE block: ours vs the public code's, same weights
    public = PublicBlock(d, K, p).to(device)
    fast = FastBlock(d, K, p).to(device).load_public(public)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with ctx:
        with torch.no_grad():
            a, b = fast(x).float(), public(x).float()
        out["block_rel_err"] = float((a - b).norm() / b.norm())
        t = _interleaved({"fast": _train_step(fast, x), "public": _train_step(public, x)}, repeats, sync)
        out.update(block_train_fast_ms=1e3 * t["fast"], block_train_public_ms=1e3 * t["public"],
                   block_train_speedup=t["public"] / t["fast"])
        t = _interleaved({"fast": _infer(fast, x), "public": _infer(public, x)}, repeats, sync)
        out.update(block_infer_fast_ms=1e3 * t["fast"], block_infer_public_ms=1e3 * t["public"],
                   block_infer_speedup=t["public"] / t["fast"])
    # 3. on CUDA: the ISTA step, Triton kernel vs the torch path (addmm + ReLU)
    if device.type == "cuda":
        tri = ISTA(d, backend="triton").to(device)
        tor = ISTA(d, backend="torch").to(device)
        tor.load_state_dict(tri.state_dict())
        with ctx:
            with torch.no_grad():
                a, b = tri(x).float(), tor(x).float()
            out["ista_triton_rel_err"] = float((a - b).norm() / b.norm())
            t = _interleaved({"triton": _train_step(tri, x), "torch": _train_step(tor, x)}, repeats, sync)
            out.update(ista_train_triton_ms=1e3 * t["triton"], ista_train_torch_ms=1e3 * t["torch"])
            t = _interleaved({"triton": _infer(tri, x), "torch": _infer(tor, x)}, repeats, sync)
            out.update(ista_infer_triton_ms=1e3 * t["triton"], ista_infer_torch_ms=1e3 * t["torch"])
    return out


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small batch and one repeat, for smoke tests")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=197)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--shapes", default="tiny,base")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--no-amp", action="store_true", help="on CUDA, run the blocks in float32, not bf16 autocast")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch, repeats = (4, 1) if args.quick else (args.batch, args.repeats)
    amp = device.type == "cuda" and not args.no_amp
    results = []
    for name in args.shapes.split(","):
        r = bench_shape(name, batch=batch, tokens=args.tokens, device=device, repeats=repeats, amp=amp)
        results.append(r)
        print(r["shape"], f"({device.type}, {torch.get_num_threads()} threads, blocks in "
                          f"{'bf16 autocast' if amp else 'float32'})")
        print(f"  exact MSSA vs derived step, fwd+bwd: {r['exact_ms']:8.1f} ms vs {r['derived_ms']:8.1f} ms "
              f"-> {r['exact_speedup']:.2f}x  (rel. diff {r['exact_rel_err']:.1e})")
        if "exact_amp_speedup" in r:
            print(f"  ... under bf16 autocast:             {r['exact_amp_ms']:8.1f} ms vs "
                  f"{r['derived_amp_ms']:8.1f} ms -> {r['exact_amp_speedup']:.2f}x")
        print(f"  CRATE block, fwd+bwd:                {r['block_train_fast_ms']:8.1f} ms vs "
              f"{r['block_train_public_ms']:8.1f} ms "
              f"-> {r['block_train_speedup']:.2f}x  (rel. diff {r['block_rel_err']:.1e})")
        print(f"  CRATE block, inference:              {r['block_infer_fast_ms']:8.1f} ms vs "
              f"{r['block_infer_public_ms']:8.1f} ms "
              f"-> {r['block_infer_speedup']:.2f}x")
        if "ista_train_triton_ms" in r:
            print(f"  ISTA Triton vs torch, fwd+bwd:       {r['ista_train_triton_ms']:8.2f} ms vs "
                  f"{r['ista_train_torch_ms']:8.2f} ms; "
                  f"inference {r['ista_infer_triton_ms']:.2f} ms vs {r['ista_infer_torch_ms']:.2f} ms "
                  f"(rel. diff {r['ista_triton_rel_err']:.1e})")
    return results


if __name__ == "__main__":
    main()
