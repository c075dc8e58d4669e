"""Shared plumbing of the experiments: command line, seeds, result files, machine description.

Every experiment is ``python -m experiments.NAME [--quick] [--out DIR] [--seed S]`` and writes
its CSV/JSON/PNG files to ``experiments/results/NAME/`` (``--quick``: ``.../NAME/quick/``, so a
smoke run never overwrites the full results that ``docs/results.md`` shows).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"


def parse_args(name: str, doc: str | None, argv: Sequence[str] | None = None,
               extra: Iterable[tuple[tuple, dict]] = ()) -> argparse.Namespace:
    """``--quick``, ``--out``, ``--seed`` (and ``extra`` arguments); ``args.out`` is a created ``Path``."""
    parser = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds (used by the tests)")
    parser.add_argument("--out", type=Path, default=None, help=f"result folder (default "
                                                               f"experiments/results/{name}[/quick])")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the small matrices here run fastest on one)")
    for flags, kwargs in extra:
        parser.add_argument(*flags, **kwargs)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    if args.out is None:
        args.out = RESULTS / name / "quick" if args.quick else RESULTS / name
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator seeded with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def machine() -> dict:
    """What the numbers were measured on (CPU count, threads, torch version, GPU if any)."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "gpu": gpu}


def _plain(value):
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf/nan
    return value


def write_csv(path: Path, rows: Sequence[Mapping]) -> Path:
    """Rows (dicts) to CSV; the header is the union of keys in first-seen order."""
    header: list[str] = []
    for row in rows:
        header += [k for k in row if k not in header]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _plain(v) for k, v in row.items()})
    return path


def write_json(path: Path, payload: Mapping) -> Path:
    def convert(obj):
        if isinstance(obj, Mapping):
            return {str(k): convert(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [convert(v) for v in obj]
        return _plain(obj)

    path.write_text(json.dumps(convert(payload), indent=2) + "\n")
    return path


def summary(name: str, args, started: float, **fields) -> dict:
    """The ``summary.json`` payload common to all experiments."""
    return {"experiment": name, "command": " ".join(["python -m experiments." + name, *args.argv]),
            "quick": args.quick, "seed": args.seed, "seconds": round(time.perf_counter() - started, 2),
            "machine": machine(), **fields}


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str], fmt: Mapping[str, str] | None = None) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` restricted to ``columns``."""
    fmt = fmt or {}

    def cell(row, c):
        v = _plain(row.get(c, ""))
        return format(v, fmt[c]) if c in fmt and isinstance(v, (int, float)) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def read_csv(path: Path) -> list[dict]:
    """Rows written by :func:`write_csv`, with numbers and booleans converted back."""
    def convert(text: str):
        if text in ("True", "False"):
            return text == "True"
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    with open(path, newline="") as f:
        return [{k: convert(v) for k, v in row.items()} for row in csv.DictReader(f)]
