"""Cost of the causal layers against the context length (issue 23): causal TSSA vs causal MSSA (SDPA) vs the
exact causal step.

Time and peak memory of one causal compression layer at d = 384, K = 6, batch 1, for T = 256 … 16,384
positions: ``forward`` (no grad) and ``train`` (forward + backward into the input and every parameter).
``srr.layers.CausalTSSA`` (E16, ToST's) is linear in T by cumulative sums; ``srr.layers.CausalMSSA`` (E15,
SDPA with ``is_causal=True``) quadratic in time; ``srr.layers.CausalExactCompression`` (E14) linear, with one
p×p Cholesky solve per position and head. Each (layer, T) runs in a fresh process, forward then train
(peak memory of each pass's first run, then the best of ``--repeats``); CPU peak memory is the peak
resident set above the inputs and weights, with freed blocks given back to the system (glibc's mmap
threshold fixed at 64 KiB; CUDA: ``max_memory_allocated``).

TSSA and SDPA are measured over every T first, then the exact step. Budgets keep a CPU run to about five
minutes: a (layer, pass) whose predicted time for the next T (from its last measured one, × (T ratio)² for
SDPA, × T ratio otherwise, times the runs it takes) exceeds ``--time-budget-s``, or whose predicted memory
exceeds ``--memory-budget-gib``, is recorded as skipped with the reason, as is everything left once the
whole run passes ``--max-seconds``.

``python -m srr.bench.bench_causal`` or ``srr bench --only causal``; the JSON (rows, skipped, command, commit,
machine) goes to ``--out`` (default ``experiments/results/bench/{device}_causal.json``; none with ``--quick``).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import multiprocessing as mp
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

LAYERS = ("tssa", "sdpa", "exact")
NAMES = {"tssa": "CausalTSSA (E16)", "sdpa": "CausalMSSA, SDPA is_causal (E15)",
         "exact": "CausalExactCompression (E14)"}
PASSES = ("forward", "train")
FULL_TOKENS = (256, 512, 1024, 2048, 4096, 8192, 16384)
QUICK_TOKENS = (256, 1024)
TIME_ORDER = {"tssa": 1, "sdpa": 2, "exact": 1}  # how time grows with T
SPAWN_S = 2.0  # a share of a fresh process (interpreter, torch import, layer), one per (layer, T)


def make_layer(name: str, dim: int, heads: int, tokens: int) -> torch.nn.Module:
    from srr.layers import CausalExactCompression, CausalMSSA, CausalTSSA

    if name == "tssa":
        return CausalTSSA(dim, heads=heads, block_size=tokens)
    if name == "sdpa":
        return CausalMSSA(dim, heads=heads)
    return CausalExactCompression(dim, heads=heads, eps=0.5, step_size=0.1)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def _return_freed_memory() -> None:
    """Fix glibc's mmap threshold at 64 KiB in this process: large blocks are then mapped and given back when
    freed, so the peak resident set is the tensors' and not the allocator's retention (glibc raises the
    threshold as blocks are freed, then keeps later ones on its heap: a chunked loop's RSS grew with T)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 16)


def _measure(name: str, tokens: int, modes: list[str], dim: int, heads: int, device: str, threads: int,
             repeats: int, queue) -> None:
    """One (layer, T) in this fresh process, its passes in turn (``forward`` first): for each, the peak memory of
    its first run (the process's high-water mark, so a ``train`` after a ``forward`` reads the larger of the
    two: the train pass's own, which holds the forward's activations), then the best of ``repeats`` timed runs."""
    from srr.bench.bench_tssa import _rss_bytes

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if not cuda:
        _return_freed_memory()
    layer = make_layer(name, dim, heads, tokens).to(dev)
    x = torch.randn(1, tokens, dim, device=dev)
    base = torch.cuda.memory_allocated() if cuda else _rss_bytes()
    rows = []
    for mode in modes:
        def run():
            if mode == "forward":
                with torch.no_grad():
                    layer(x)
            else:
                xg = x.detach().requires_grad_()
                layer(xg).square().sum().backward()
                layer.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()

        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        run()
        first = time.perf_counter() - t0
        peak = (torch.cuda.max_memory_allocated() - base if cuda
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)
        best = first if repeats == 0 else float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t0)
        rows.append({"layer": name, "tokens": tokens, "pass": mode, "seconds": best, "first_seconds": first,
                     "peak_mib": max(peak, 0) / 2**20})
    queue.put(rows)


def measure(name: str, tokens: int, modes: list[str], *, dim: int, heads: int, device: str, threads: int,
            repeats: int) -> list[dict]:
    """The rows of ``modes`` (passes) of one (layer, T), measured in a fresh process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(name, tokens, list(modes), dim, heads, device, threads, repeats, queue))
    proc.start()
    rows = queue.get()
    proc.join()
    return rows


def _predicted(last: dict, name: str, tokens: int, repeats: int) -> tuple[float, float]:
    """(seconds for the whole measurement, peak MiB) at ``tokens`` from the last measured row of that layer."""
    ratio = tokens / last["tokens"]
    run_s = last["seconds"] * ratio ** TIME_ORDER[name]  # the best timed run: the first one pays one-off set-up
    return SPAWN_S + (1 + repeats) * run_s, last["peak_mib"] * ratio


def crossover(rows: list[dict], mode: str, fast: str = "tssa", slow: str = "sdpa") -> int | None:
    """The smallest T from which ``fast`` is faster than ``slow`` at every larger T where both were measured."""
    times = {(r["layer"], r["tokens"]): r["seconds"] for r in rows if r["pass"] == mode}
    Ns = sorted(n for n in {n for _, n in times} if (fast, n) in times and (slow, n) in times)
    faster = [times[(fast, n)] < times[(slow, n)] for n in Ns]
    for i, n in enumerate(Ns):
        if all(faster[i:]):
            return n
    return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _machine(device: str, threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "threads": threads, "torch": torch.__version__, "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def table(rows: list[dict], skipped: list[dict]) -> str:
    """Markdown: one line per (T, pass), seconds and peak MiB per layer, "skipped" where skipped."""
    got = {(r["layer"], r["tokens"], r["pass"]): r for r in rows}
    gone = {(s["layer"], s["tokens"], s["pass"]) for s in skipped}
    head = "| T | pass | " + " | ".join(f"{NAMES[n]} s (MiB)" for n in LAYERS) + " |"
    lines = [head, "|" + " --- |" * (2 + len(LAYERS))]
    for T in sorted({k[1] for k in got} | {k[1] for k in gone}):
        for mode in PASSES:
            cells = []
            for n in LAYERS:
                r = got.get((n, T, mode))
                cells.append(f"{r['seconds']:.4g} ({r['peak_mib']:.0f})" if r else
                             "skipped" if (n, T, mode) in gone else "—")
            lines.append(f"| {T} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, nargs="+", default=None, help="context lengths T (default 256 … 16384)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs after the first (memory) run; best kept")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--time-budget-s", type=float, default=60.0,
                        help="skip a measurement predicted to take longer (default 60 s)")
    parser.add_argument("--memory-budget-gib", type=float, default=4.0,
                        help="skip a measurement predicted to need more memory (default 4 GiB)")
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="skip what is left once the run has taken this long (default 300 s)")
    parser.add_argument("--out", default=None, help="JSON path; 'none' writes nothing (default: experiments/"
                                                    "results/bench/{device}_causal.json, none with --quick)")
    parser.add_argument("--quick", action="store_true", help="T = 256, 1024 only, no JSON unless --out")
    args = parser.parse_args(argv)
    threads = args.threads or torch.get_num_threads()
    tokens = args.tokens or (QUICK_TOKENS if args.quick else FULL_TOKENS)
    device = args.device
    start = time.perf_counter()
    rows, skipped, last = [], [], {}
    # TSSA and SDPA over every T first (the comparison the benchmark is for), then the exact step with the time left
    order = [(T, name) for T in sorted(tokens) for name in ("tssa", "sdpa")] + [(T, "exact") for T in sorted(tokens)]
    for T, name in order:
        modes = []
        for mode in PASSES:
            key = (name, mode)
            reason = None
            if time.perf_counter() - start > args.max_seconds:
                reason = f"the run passed --max-seconds {args.max_seconds:g}"
            elif key in last and last[key] is None:
                reason = "a shorter context was already skipped"
            elif key in last:
                secs, mib = _predicted(last[key], name, T, args.repeats)
                if secs > args.time_budget_s:
                    reason = f"predicted {secs:.0f} s > --time-budget-s {args.time_budget_s:g}"
                elif mib > args.memory_budget_gib * 1024:
                    reason = f"predicted {mib / 1024:.1f} GiB > --memory-budget-gib {args.memory_budget_gib:g}"
            if reason:
                skipped.append({"layer": name, "tokens": T, "pass": mode, "reason": reason})
                last[key] = None
                print(f"{NAMES[name]:<34} T={T:<6} {mode:<7} skipped: {reason}", flush=True)
            else:
                modes.append(mode)
        if not modes:
            continue
        for row in measure(name, T, modes, dim=args.dim, heads=args.heads, device=device, threads=threads,
                           repeats=args.repeats):
            rows.append(row)
            last[(name, row["pass"])] = row
            print(f"{NAMES[name]:<34} T={T:<6} {row['pass']:<7} {row['seconds']:.4g} s  {row['peak_mib']:.0f} MiB",
                  flush=True)
    largest = {}
    for mode in PASSES:
        common = [T for T in sorted(tokens) if all(any(r["layer"] == n and r["tokens"] == T and r["pass"] == mode
                                                       for r in rows) for n in ("tssa", "sdpa"))]
        if common:
            T = common[-1]
            t = {r["layer"]: r["seconds"] for r in rows if r["tokens"] == T and r["pass"] == mode}
            largest[mode] = {"tokens": T, "tssa_vs_sdpa_speedup": t["sdpa"] / t["tssa"]}
            if "exact" in t:
                largest[mode]["exact_vs_sdpa_time_ratio"] = t["exact"] / t["sdpa"]
    argv_list = list(sys.argv[1:] if argv is None else argv)
    result = {
        "command": shlex.join(["python", "-m", "srr.bench.bench_causal", *argv_list]),
        "process_command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "git_commit": _git_commit(), "machine": _machine(device, threads),
        "dim": args.dim, "heads": args.heads, "batch": 1, "repeats": args.repeats,
        "budgets": {"time_budget_s": args.time_budget_s, "memory_budget_gib": args.memory_budget_gib,
                    "max_seconds": args.max_seconds},
        "rows": rows, "skipped": skipped,
        "tssa_faster_than_sdpa_from": {mode: crossover(rows, mode) for mode in PASSES},
        "exact_faster_than_sdpa_from": {mode: crossover(rows, mode, "exact", "sdpa") for mode in PASSES},
        "at_largest_common_T": largest, "wall_s": time.perf_counter() - start,
    }
    result["table"] = table(rows, skipped)
    print(result["table"])
    out = args.out if args.out is not None else (None if args.quick else
                                                 f"experiments/results/bench/{device.split(':')[0]}_causal.json")
    if out and out != "none":
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {out}")
        result["json_path"] = out
    return result


if __name__ == "__main__":
    main()
