"""``srr bench``: the headline numbers of the benchmark suite (``srr.bench``, shipped in the package) in one table.

Each benchmark module's ``main(argv)`` (``srr/bench/bench_*.py``) is run in this process (its own
output, and the profiler's own lines on stderr, hidden unless ``--verbose``); the headlines are read
from the value it returns, each with the target it answers where it has one, by name (``GOALS``). A
key a benchmark does not (yet) return is shown as "not measured", never a failure. ``train`` is this
package's own: the data loader's images/s against the training step's on the default ``srr train``
run. ``--json PATH`` writes the rows, the machine and the command, so documentation can be built from
the file.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .errors import USAGE, stdout, user_errors

@dataclass(frozen=True)
class Headline:
    """One number of a benchmark: a ratio (``unit="×"``: a speed-up or a time/throughput ratio), a relative
    error, or seconds. ``value=None``: the benchmark did not return it (shown as "not measured")."""

    metric: str
    value: float | None
    unit: str = "×"
    target: str = ""  # e.g. "<= 1.05 (SRR term cost)"
    met: bool | None = None

    def shown(self) -> str:
        if self.value is None:
            return "not measured"
        if self.unit == "×":
            return f"{self.value:.3g}×"
        if self.unit == "error":
            return f"{self.value:.2e}"
        return f"{self.value:.3g} {self.unit}".rstrip()


@dataclass(frozen=True)
class Bench:
    name: str
    module: str | None  # under srr/bench; None: built in
    argv: Callable[[bool, str], list[str]]
    headlines: Callable[[object], list[Headline]]
    default: bool = True  # False: run only when --only names it


def _get(result, path: str):
    """``result["a"]["b"]`` for ``path="a.b"``; None where any level is missing."""
    for key in path.split("."):
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return result


# What each target is for, by name (the benchmark plan's items, which users cannot look up by number).
GOALS = {
    "12.1": "SRR term cost",
    "12.2": "measure throughput",
    "12.3": "float32 accuracy",
    "12.4": "compiled derived layers",
    "12.5": "speed vs public code and ViT",
    "20": "data at ImageNet scale",
    "24": "GPU run",
}


def _check(metric: str, value, op: str | None = None, bound: float | None = None, *, unit: str = "×",
           issue: str = "") -> Headline:
    value = None if value is None else float(value)
    if op is None:
        return Headline(metric, value, unit)
    target = f"{op} {bound:g}" + (f" ({GOALS[issue]})" if issue else "")
    met = None if value is None else (value <= bound if op == "<=" else value >= bound)
    return Headline(metric, value, unit, target, met)


def _rates(result) -> list[Headline]:
    return [_check("R^c: ours vs per-head N×N logdet (speed-up)", _get(result, "Rc_speedup")),
            _check("R, R^c float32: max relative error vs float64", _get(result, "float32_max_rel_err"), "<=", 1e-4,
                   unit="error", issue="12.3")]


def _layers(result) -> list[Headline]:
    rows = []
    for r in result or []:
        shape = r["shape"].split(":")[0]
        rows += [_check(f"{shape}: exact MSSA vs derived step, train (speed-up)", r.get("exact_speedup")),
                 _check(f"{shape}: CRATE block vs public code, train (speed-up)", r.get("block_train_speedup")),
                 _check(f"{shape}: CRATE block vs public code, inference (speed-up)", r.get("block_infer_speedup"))]
    return rows


def _models(result) -> list[Headline]:
    rows = result if isinstance(result, list) else [result] if result else []
    out = []
    for r in rows:
        variant = r.get("variant", r.get("model", "model"))
        crate = variant == "crate"
        for key, text, bound in (("train_speedup", "train", 1.6), ("infer_speedup", "inference", 1.6)):
            out.append(_check(f"{variant} vs public code, {text} (speed-up)", r.get(key),
                              *((">=", bound) if crate else ()), issue="12.5"))
        if crate:
            vit = r.get("timm_model") or "timm ViT"
            note = r.get("timm_note", "")
            for key, text, bound in (("timm_train_speedup", "train", 1.1), ("timm_infer_speedup", "inference", 1.0)):
                h = _check(f"crate vs {vit} (equal params), {text} (speed-up)", r.get(key), ">=", bound,
                           issue="12.5")
                if h.value is None and note:
                    h = Headline(f"{h.metric}: {note}", None, h.unit, h.target, None)
                out.append(h)
    return out


def _regularizer(result) -> list[Headline]:
    t = lambda key: _get(result, f"training.{key}")  # noqa: E731
    return [_check("SRR term, all 12 layers, plain: step time ratio", t("ratio_all12"), "<=", 1.25, issue="12.1"),
            _check("SRR term, all 12 layers, detached (HU24): step time ratio", t("ratio_all12_detached"), "<=", 1.4,
                   issue="12.1"),
            _check("SRR term, last layer, detached (HU24): step time ratio", t("ratio_last"), "<=", 1.05, issue="12.1"),
            _check("SRR term, last layer, plain: step time ratio", t("ratio_last_plain"), "<=", 1.05, issue="12.1"),
            _check("SRR term at the model's projection LN(Z)U, all 12 layers, plain: step time ratio",
                   t("ratio_all12_projection"), "<=", 1.25, issue="12.1"),
            _check("SRR term at the model's projection LN(Z)U, all 12, detached: step time ratio",
                   t("ratio_all12_projection_detached"), "<=", 1.4, issue="12.1"),
            _check("SRR term at the model's projection LN(Z)U, last layer: step time ratio",
                   t("ratio_last_projection"), "<=", 1.05, issue="12.1"),
            _check("measure vs plain inference: throughput ratio", _get(result, "measure.throughput_ratio"), ">=", 0.8,
                   issue="12.2")]


def _compile(result) -> list[Headline]:
    return [_check("crate_derived compiled vs crate eager, train: time ratio",
                   _get(result, "derived_compiled_vs_crate_train"), "<=", 1.5, issue="12.4"),
            _check("derived from a modified objective, compiled vs crate eager, train: time ratio",
                   _get(result, "modified_compiled_vs_crate_train"), "<=", 1.5, issue="12.4"),
            _check("modified objective: compiled crate_derived's step + −R's bare arithmetic, vs crate (bound)",
                   _get(result, "modified_floor_vs_crate_train")),
            _check("crate_derived: compile time, first training step", _get(result, "derived_compiled_compile_train_s"),
                   unit="s")]


def _profile(result) -> list[Headline]:
    d = lambda key: _get(result, f"derived.{key}")  # noqa: E731
    return [_check("train: crate vs timm ViT if CRATE's non-matmul ops cost ViT's (bound on the 1.1× ViT target)",
                   d("train_vs_vit_if_crate_nonmatmul_were_vits")),
            _check("train: crate vs public code if only the linear maps differed (E10')",
                   d("train_vs_public_if_only_matmuls_differ")),
            _check("train: CRATE's non-matmul ms over the ms they must fit in for 1.1× ViT",
                   None if d("crate_nonmatmul_for_1_1x_vit") in (None, 0) else
                   d("crate_nonmatmul_ms") / d("crate_nonmatmul_for_1_1x_vit"))]


def _gpu(result) -> list[Headline]:
    """Issue 24's goals from ``srr.bench.gpu``'s summary (its JSON and log are under experiments/results/bench)."""
    rows = []
    for g in _get(result, "summary.goals") or []:
        goal = g["goal"]
        op = ">=" if ">=" in goal else "<="
        text, bound = goal.rsplit(op, 1)
        unit = "" if "from N" in text else "×"
        rows.append(_check(text.strip(), g["value"], op, float(bound), unit=unit, issue="24"))
    default = _get(result, "summary.values.triton_cuda_default")
    rows.append(Headline(f"Triton ISTA: the CUDA default should be {default or 'not measured'}", None, ""))
    return rows


def _causal(result) -> list[Headline]:
    """Issue 23's cost of the causal layers against the context length (``srr.bench.bench_causal``)."""
    rows = []
    for mode in ("forward", "train"):
        at = _get(result, f"at_largest_common_T.{mode}") or {}
        T = at.get("tokens", "largest T")
        rows.append(_check(f"causal TSSA vs causal MSSA (SDPA), {mode} at T={T} (speed-up)",
                           at.get("tssa_vs_sdpa_speedup")))
        start = _get(result, f"tssa_faster_than_sdpa_from.{mode}")
        rows.append(_check(f"causal TSSA faster than SDPA ({mode}) from T",
                           None if start is None else start / 1024, unit="k tokens"))
    return rows


def _loader(result) -> list[Headline]:
    """Issue 20's loader goal (``srr.bench.bench_loader``): the 224-px training pipeline against its base."""
    rate = lambda key: _get(result, f"images_per_s_per_worker.{key}")  # noqa: E731
    return [_check("224-px training pipeline vs torchvision ImageFolder + DataLoader: images/s ratio",
                   _get(result, "ratio"), ">=", 1.0, issue="20"),
            _check("srr loader, JPEGs ~500x375: images/s per worker", rate("srr"), unit="images/s"),
            _check("GPU decode vs the CPU path: images/s ratio", _get(result, "gpu_decode_vs_cpu"), ">=", 3.0,
                   issue="20")]


def _lm(result) -> list[Headline]:
    """Issue 23's goal (``srr.bench.bench_lm``): white-box language models against nanoGPT's GPT, CPU configuration."""
    rows = [_check("gpt_lm_nano: validation loss, nats per character (nanoGPT reports 1.88)",
                   _get(result, "models.gpt_lm_nano.val_loss"), unit="nats")]
    for name in ("crate_lm_nano", "tost_lm_nano", "crate_lm_exact_nano"):
        rows.append(_check(f"{name}: validation loss above the GPT's", _get(result, f"comparison.{name}.val_loss_gap"),
                           "<=", 0.1, unit="nats"))
        rows.append(_check(f"{name}: training tokens/s vs the GPT's",
                           _get(result, f"comparison.{name}.tokens_per_s_ratio"), ">=", 0.9))
    return rows


def _train(result) -> list[Headline]:
    return [_check("default srr train: loader vs model images/s", _get(result, "ratio"), ">=", 1.0)]


BENCHES = [
    Bench("rates", "bench_rates", lambda quick, dev: ["--device", dev] + (["--quick"] if quick else []), _rates),
    Bench("layers", "bench_layers",
          lambda quick, dev: ["--device", dev] + (["--quick", "--shapes", "tiny"] if quick else []), _layers),
    Bench("models", "bench_models",
          lambda quick, dev: ["--device", dev] + (["--batch", "16", "--train-steps", "2", "--infer-steps", "2",
                                                   "--variants", "crate"] if quick else []), _models),
    Bench("regularizer", "bench_regularizer",
          lambda quick, dev: ["--device", dev] + (["--steps", "1", "--batch", "16", "--images", "32", "--measure-batch",
                                                   "16", "--measure-rounds", "1"] if quick else []), _regularizer),
    Bench("compile", "bench_compile", lambda quick, dev: ["--device", dev] + (["--quick"] if quick else []), _compile),
    Bench("profile", "profile_train",
          lambda quick, dev: ["--device", dev] + (["--batch", "16", "--rounds", "1"] if quick else []), _profile),
    Bench("train", None, lambda quick, dev: [], _train),
    Bench("loader", "bench_loader", lambda quick, dev: ["--device", dev] + (["--quick"] if quick else []), _loader,
          default=False),
    Bench("gpu", "gpu", lambda quick, dev: ["--device", dev] + (["--tiny"] if quick else []), _gpu, default=False),
    Bench("causal", "bench_causal", lambda quick, dev: ["--device", dev] + (["--quick"] if quick else []), _causal,
          default=False),
    Bench("lm", "bench_lm", lambda quick, dev: ["--quick"] if quick else [], _lm, default=False),
]


def machine(device: str) -> dict:
    """What the numbers were measured on: CPU model, cores, threads torch uses, torch version, device."""
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _describe(info: dict) -> str:
    where = info.get("gpu", info["device"])
    return (f"{where}; CPU {info['cpu']}, {info['threads']} of {info['cores']} cores used; "
            f"torch {info['torch']}")


def _command(quick: bool, only: str | None, device: str, threads: int | None, json_path: Path | None) -> str:
    parts = ["srr", "bench"] + (["--quick"] if quick else []) + (["--only", only] if only else [])
    parts += ["--device", device] + (["--threads", str(threads)] if threads else [])
    return " ".join(parts + (["--json", str(json_path)] if json_path else []))


def _run(bench: Bench, *, quick: bool, device: str, verbose: bool):
    if bench.module is None:
        from srr.train import TrainConfig
        from srr.train.throughput import loader_vs_model

        return loader_vs_model(TrainConfig(device=device, measure_samples=0), steps=3 if quick else 20)
    module = importlib.import_module(f"srr.bench.{bench.module}")
    sink = contextlib.nullcontext() if verbose else _silenced()
    with sink:
        return module.main(bench.argv(quick, device))


@contextlib.contextmanager
def _silenced():
    """The benchmark's prints, and what C++ writes to the process's stdout/stderr (the profiler's "USDT ...
    profiler_start", "gpuGetDeviceCount failed" on a CPU machine), go nowhere."""
    import sys
    import tempfile

    with contextlib.redirect_stdout(io.StringIO()), tempfile.TemporaryFile() as sink:
        saved = []
        try:
            for stream in (sys.stdout, sys.__stdout__, sys.__stderr__):
                with contextlib.suppress(AttributeError, OSError, ValueError):
                    stream.flush()
            for fd in (1, 2):
                with contextlib.suppress(OSError):
                    saved.append((fd, os.dup(fd)))
                    os.dup2(sink.fileno(), fd)
            yield
        finally:
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)


def _available(bench: Bench) -> bool:
    return bench.module is None or importlib.util.find_spec(f"srr.bench.{bench.module}") is not None


def bench_command(
    quick: Annotated[bool, typer.Option(
        "--quick",
        help="Small shapes and few repeats (a smoke run, ratios are noisy).")] = False,
    only: Annotated[Optional[str], typer.Option(
        help="Comma-separated benchmarks to run: rates, layers, models, regularizer, compile, profile, train; "
             "gpu (issue 24's prepared GPU run) and causal (issue 23's causal layers against T), only when "
             "named.")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA if available), cpu or cuda.")] = "auto",
    threads: Annotated[Optional[int], typer.Option(
        help="torch CPU threads (default: torch's own choice).", min=1)] = None,
    json_path: Annotated[Optional[Path], typer.Option(
        "--json", help="Also write the rows, the machine and the command to this JSON file.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show each benchmark's own output.")] = False,
) -> None:
    """The benchmark suite's headline numbers, each beside the target it answers, in one table."""
    import torch

    names = [b.name for b in BENCHES]
    with user_errors(USAGE):
        chosen = ([b.name for b in BENCHES if b.default] if only is None
                  else [n.strip() for n in only.split(",") if n.strip()])
        unknown = [n for n in chosen if n not in names]
        if unknown or not chosen:
            raise ValueError(f"--only must name benchmarks among {', '.join(names)}, got {only!r}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        from srr.train.distributed import resolve_device

        if resolve_device(device).type not in ("cpu", "cuda"):
            raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if threads:
        torch.set_num_threads(threads)
    info = machine(device)
    command = _command(quick, only, device, threads, json_path)
    console = stdout()
    table = Table(title=f"srr bench ({'quick, ' if quick else ''}{device})", header_style="bold",
                  caption=f"{_describe(info)}\n{command}")
    for column in ("benchmark", "headline", "value", "target", ""):
        table.add_column(column, justify="right" if column in ("value",) else "left")
    failures, records = 0, []
    for bench in (b for b in BENCHES if b.name in chosen):
        start = time.perf_counter()
        if not _available(bench):
            table.add_row(bench.name, f"[yellow]not measured: srr.bench.{bench.module} is not in this installation",
                          "", "", "", end_section=True)
            records.append(dict(benchmark=bench.name, error=f"srr.bench.{bench.module} not installed"))
            continue
        try:
            with user_errors():
                result = _run(bench, quick=quick, device=device, verbose=verbose)
            rows = bench.headlines(result)
        except typer.Exit:
            raise
        except Exception as error:  # one benchmark failing must not hide the others
            failures += 1
            table.add_row(bench.name, f"[red]failed: {escape(f'{type(error).__name__}: {error}')}", "", "", "",
                          end_section=True)
            records.append(dict(benchmark=bench.name, error=f"{type(error).__name__}: {error}"))
            continue
        if not rows:
            table.add_row(bench.name, "[yellow]no headline values returned by its main()", "", "", "")
        for i, h in enumerate(rows):
            mark = "" if h.met is None else ("[green]✓" if h.met else "[red]✗")
            value = h.shown() if h.value is not None else "[yellow]not measured"
            table.add_row(bench.name if i == 0 else "", escape(h.metric), value, escape(h.target), mark)
            records.append(dict(benchmark=bench.name, **asdict(h), shown=h.shown()))
        seconds = time.perf_counter() - start
        table.add_row("", f"[dim]({seconds:.1f} s)", "", "", "", end_section=True)
    console.print(table)
    if json_path is not None:
        with user_errors():
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(dict(command=command, machine=info, quick=quick, rows=records),
                                            indent=1, ensure_ascii=False) + "\n")
    if failures:
        raise typer.Exit(code=1)
