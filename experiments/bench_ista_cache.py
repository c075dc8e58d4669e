"""What ISTA's inference cache of ``(I + M)ᵀ`` (srr/layers/ista.py, ``linear_form``) saves, in one process.

Run: ``python -m experiments.bench_ista_cache --json experiments/results/bench/cpu_ista_cache.json``.
Whole-model inference (``torch.no_grad``, eval mode) with ``ISTA.cache_inference`` on and off, alternated
round by round on the same inputs; the median over rounds of each and their ratio. The check that the
weights are unchanged (by value) is part of the "on" time.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from srr.layers import ISTA
from srr.models import create_model

CASES = [  # (model, image size, patch size, batch)
    ("crate_nano", 8, 4, 1), ("crate_nano", 8, 4, 256),
    ("crate_tiny", 32, 4, 1), ("crate_tiny", 32, 4, 64),
    ("crate_tiny", 224, 16, 1), ("crate_tiny", 224, 16, 16),
]


def _time(model, x, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        model(x)
    return (time.perf_counter() - start) / reps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="two small cases, three rounds")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases, rounds = (CASES[:2], 3) if args.quick else (CASES, args.rounds)
    rows = []
    for name, image, patch, batch in cases:
        torch.manual_seed(0)
        model = create_model(name, image_size=image, patch_size=patch).eval()
        x = torch.randn(batch, model.config.in_chans, image, image)
        with torch.no_grad():
            flops_probe = time.perf_counter()
            model(x)
            reps = max(1, min(50, int(0.3 / max(time.perf_counter() - flops_probe, 1e-4))))
            times = {True: [], False: []}
            for _ in range(rounds):
                for cached in (True, False):
                    ISTA.cache_inference = cached
                    model(x)  # warm (forms the cache when on)
                    times[cached].append(_time(model, x, reps))
            ISTA.cache_inference = True
        on, off = statistics.median(times[True]), statistics.median(times[False])
        rows.append({"model": name, "image_size": image, "patch_size": patch, "batch": batch,
                     "dim": model.config.dim, "depth": model.config.depth,
                     "cached_ms": on * 1e3, "uncached_ms": off * 1e3, "uncached_over_cached": off / on,
                     "rounds": rounds, "reps": reps})
        print(f"{name} {image}px/{patch} batch {batch}: cache on {on * 1e3:.3f} ms, off {off * 1e3:.3f} ms, "
              f"off/on {off / on:.3f}")
    report = {"command": "python -m experiments.bench_ista_cache " + " ".join(argv if argv is not None
                                                                                else sys.argv[1:]),
              "machine": {"processor": platform.processor() or platform.machine(), "threads": args.threads,
                          "torch": torch.__version__, "python": platform.python_version()},
              "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
