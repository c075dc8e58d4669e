"""Run independent training jobs in worker processes (one torch thread each), in a fixed order.

Each job is a dict handed to a module-level function; results come back in job order, so a
grid's output does not depend on the number of workers. ``workers=1`` runs in-process.
"""
from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_jobs(fn: Callable[[dict], dict], jobs: Sequence[dict], *, workers: int = 1, threads: int = 1,
             progress: Callable[[int, int, dict], None] | None = None) -> list[dict]:
    """``[fn(job) for job in jobs]``, over ``workers`` processes when ``workers > 1``."""
    if workers <= 1:
        out = []
        for i, job in enumerate(jobs):
            out.append(fn(job))
            if progress:
                progress(i + 1, len(jobs), out[-1])
        return out
    ctx = mp.get_context("spawn")  # no forked torch state
    with ctx.Pool(workers, initializer=_init_worker, initargs=(threads,)) as pool:
        out = []
        for i, result in enumerate(pool.imap(fn, jobs)):
            out.append(result)
            if progress:
                progress(i + 1, len(jobs), result)
        return out
