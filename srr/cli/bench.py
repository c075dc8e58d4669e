"""``srr bench``: the headline ratios of the benchmark suite (``srr.bench``, shipped in the package) in one table.

Each benchmark module's ``main(argv)`` (``srr/bench/bench_*.py``) is run in this process (its own
output hidden unless ``--verbose``); the ratios are read from the value it returns. ``train`` is
this package's own: the data loader's images/s against the training step's on the default
``srr train`` run.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Optional

import typer
from rich.table import Table

from .errors import USAGE, stdout, user_errors


@dataclass(frozen=True)
class Headline:
    """One ratio of a benchmark (every headline is a ratio: a speed-up, a time or throughput ratio)."""

    metric: str
    value: float
    target: str = ""  # e.g. "<= 1.05"
    met: bool | None = None


@dataclass(frozen=True)
class Bench:
    name: str
    module: str | None  # under srr/bench; None: built in
    argv: Callable[[bool, str], list[str]]
    headlines: Callable[[object], list[Headline]]


def _check(metric: str, value: float, op: str | None = None, bound: float | None = None) -> Headline:
    if op is None:
        return Headline(metric, value)
    met = value <= bound if op == "<=" else value >= bound
    return Headline(metric, value, f"{op} {bound:g}", met)


def _rates(result) -> list[Headline]:
    return [_check("R^c: ours vs per-head N×N logdet (speed-up)", result["Rc_speedup"])]


def _layers(result) -> list[Headline]:
    rows = []
    for r in result:
        shape = r["shape"].split(":")[0]
        rows += [_check(f"{shape}: exact MSSA vs derived step, train (speed-up)", r["exact_speedup"]),
                 _check(f"{shape}: CRATE block vs public code, train (speed-up)", r["block_train_speedup"]),
                 _check(f"{shape}: CRATE block vs public code, inference (speed-up)", r["block_infer_speedup"])]
    return rows


def _models(result) -> list[Headline]:
    if result is None:
        return []
    rows = result if isinstance(result, list) else [result]
    out = []
    for r in rows:
        label = r.get("variant", r.get("model", "model"))
        for key, text in (("train_speedup", "train"), ("infer_speedup", "inference")):
            if key in r:
                out.append(_check(f"{label} vs public code, {text} (speed-up)", r[key]))
    return out


def _regularizer(result) -> list[Headline]:
    out = []
    if "training" in result:
        t = result["training"]
        out += [_check("SRR term on the last layer: step time ratio", t["ratio_last"], "<=", 1.05),
                _check("SRR term on all 12 layers: step time ratio", t["ratio_all12"], "<=", 1.25)]
    if "measure" in result:
        ratio = result["measure"]["throughput_ratio"]
        out.append(_check("measure vs plain inference: throughput ratio", ratio, ">=", 0.8))
    return out


def _train(result) -> list[Headline]:
    return [_check("default srr train: loader vs model images/s", result["ratio"], ">=", 1.0)]


BENCHES = [
    Bench("rates", "bench_rates", lambda quick, dev: ["--device", dev] + (["--quick"] if quick else []), _rates),
    Bench("layers", "bench_layers",
          lambda quick, dev: ["--device", dev] + (["--quick", "--shapes", "tiny"] if quick else []), _layers),
    Bench("models", "bench_models",
          lambda quick, dev: ["--device", dev] + (["--batch", "16", "--train-steps", "2", "--infer-steps", "2",
                                                   "--variants", "crate"] if quick else []), _models),
    Bench("regularizer", "bench_regularizer",
          lambda quick, dev: ["--device", dev] + (["--steps", "1", "--images", "64", "--batch", "32"] if quick else []),
          _regularizer),
    Bench("train", None, lambda quick, dev: [], _train),
]


def _run(bench: Bench, *, quick: bool, device: str, verbose: bool):
    if bench.module is None:
        from srr.train import TrainConfig
        from srr.train.throughput import loader_vs_model

        return loader_vs_model(TrainConfig(device=device, measure_samples=0), steps=3 if quick else 20)
    module = importlib.import_module(f"srr.bench.{bench.module}")
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        return module.main(bench.argv(quick, device))


def bench_command(
    quick: Annotated[bool, typer.Option(
        "--quick",
        help="Small shapes and few repeats (a smoke run, ratios are noisy).")] = False,
    only: Annotated[Optional[str], typer.Option(
        help="Comma-separated benchmarks to run: rates, layers, models, regularizer, train.")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA if available), cpu or cuda.")] = "auto",
    verbose: Annotated[bool, typer.Option("--verbose", help="Show each benchmark's own output.")] = False,
) -> None:
    """The benchmark suite's headline ratios in one table."""
    import torch

    names = [b.name for b in BENCHES]
    with user_errors(USAGE):
        chosen = names if only is None else [n.strip() for n in only.split(",") if n.strip()]
        unknown = [n for n in chosen if n not in names]
        if unknown or not chosen:
            raise ValueError(f"--only must name benchmarks among {', '.join(names)}, got {only!r}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
    console = stdout()
    table = Table(title=f"srr bench ({'quick, ' if quick else ''}{device})", header_style="bold")
    for column in ("benchmark", "headline", "value", "target", ""):
        table.add_column(column, justify="right" if column in ("value",) else "left")
    failures = 0
    for bench in (b for b in BENCHES if b.name in chosen):
        start = time.perf_counter()
        try:
            with user_errors():
                result = _run(bench, quick=quick, device=device, verbose=verbose)
            rows = bench.headlines(result)
        except typer.Exit:
            raise
        except Exception as error:  # one benchmark failing must not hide the others
            failures += 1
            table.add_row(bench.name, f"[red]failed: {type(error).__name__}: {error}", "", "", "")
            continue
        if not rows:
            table.add_row(bench.name, "[yellow]no headline values returned by its main()", "", "", "")
        for i, h in enumerate(rows):
            mark = "" if h.met is None else ("[green]✓" if h.met else "[red]✗")
            table.add_row(bench.name if i == 0 else "", h.metric, f"{h.value:.3g}×", h.target, mark)
        table.add_row("", f"[dim]({time.perf_counter() - start:.1f} s)", "", "", "", end_section=True)
    console.print(table)
    if failures:
        raise typer.Exit(code=1)
