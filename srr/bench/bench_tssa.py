"""Cost against the number of tokens (issue 14): TSSA vs softmax MSSA (SDPA) vs exact compression.

Time (best of ``--repeats`` after a warm-up) and peak memory of one compression layer at d = 384,
K = 6, batch 1, for N = 256 … 16,384 tokens: ``forward`` (no grad) and ``train`` (forward + backward
into the input and every parameter). TSSA (``srr.layers.TSSA``, E13) is linear in N; SDPA
(``srr.layers.MSSA``) quadratic in time; the exact step (``srr.layers.ExactCompression``, E6) linear
with p×p solves. Each (layer, N, pass) runs in a fresh process; CPU peak memory is its peak resident
set above the inputs and weights (CUDA: ``max_memory_allocated``).

The timing core; ``python -m experiments.bench.bench_tssa`` runs it over N and writes
``experiments/results/tssa_scaling/`` (table, figure, summary).
"""
from __future__ import annotations

import multiprocessing as mp
import resource
import time

import torch

LAYERS = ("tssa", "sdpa", "exact")
PASSES = ("forward", "train")
FULL_TOKENS = (256, 512, 1024, 2048, 4096, 8192, 16384)
QUICK_TOKENS = (256, 1024)


def make_layer(name: str, dim: int, heads: int) -> torch.nn.Module:
    from srr.layers import MSSA, TSSA, ExactCompression

    if name == "tssa":
        return TSSA(dim, heads=heads)
    if name == "sdpa":
        return MSSA(dim, heads=heads)
    return ExactCompression(dim, heads=heads, eps=0.5, step_size=0.1)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _measure(name: str, tokens: int, mode: str, dim: int, heads: int, device: str, threads: int, repeats: int,
             queue) -> None:
    """One (layer, N, pass) in this fresh process: peak memory of the first run, then the best time."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    layer = make_layer(name, dim, heads).to(dev)
    x = torch.randn(1, tokens, dim, device=dev, requires_grad=mode == "train")

    def run():
        if mode == "forward":
            with torch.no_grad():
                layer(x)
        else:
            layer(x).square().sum().backward()
            x.grad = None
            layer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    run()
    peak = (torch.cuda.max_memory_allocated() - base if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    queue.put({"layer": name, "tokens": tokens, "pass": mode, "seconds": best, "peak_mib": max(peak, 0) / 2**20})


def measure(name: str, tokens: int, mode: str, *, dim: int, heads: int, device: str, threads: int,
            repeats: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(name, tokens, mode, dim, heads, device, threads, repeats, queue))
    proc.start()
    row = queue.get()
    proc.join()
    return row


def crossover(rows: list[dict], mode: str) -> int | None:
    """The smallest N from which TSSA is faster than SDPA at every larger N measured (None: never)."""
    times = {(r["layer"], r["tokens"]): r["seconds"] for r in rows if r["pass"] == mode}
    Ns = sorted({n for _, n in times})
    faster = [times[("tssa", n)] < times[("sdpa", n)] for n in Ns]
    for i, n in enumerate(Ns):
        if all(faster[i:]):
            return n
    return None
