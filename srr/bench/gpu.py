"""Every GPU path measured in one prepared run (issue 24): ``python -m srr.bench.gpu --device cuda``.

Sections, each inside its share of ``--budget-s`` (printed; unspent time rolls on; a section out of
time keeps what it measured and says where it stopped):

1. ``tests``: ``pytest -m cuda`` in a subprocess with its own timeout, its counts parsed;
2. ``models``: CRATE-B/16 at 224 px in bf16 against timm's ViT-S/16 and ViT-B/16 and the public code,
   training and inference, eager and compiled, images/s and MFU (``srr.bench.gpu_models``);
3. ``triton``: Triton ISTA against the torch path at CRATE-B and CRATE-L shapes, and the CUDA default
   that follows;
4. ``regularizer``: the SRR term (last layer; all 12) and ``srr.measure`` against a plain step and
   inference, the float64 share profiled, a float32 what-if (``srr.bench.gpu_costs``);
5. ``tokens``: TSSA, SDPA MSSA and the exact step against N = 1k … 64k (time, peak memory, OOM);
6. ``data``: where the ``fake`` data set and GPU JPEG decode exist, the loader's and one-GPU ``torchrun``
   training throughput; otherwise "not available in this build".

Writes ``<out-dir>/gpu_<device>.json`` (after every section, so a run stopped from outside keeps the
sections done) and ``gpu_<device>.log``. ``--device cpu --tiny``: every section at toy shapes, in
under two minutes on two cores (CUDA-only parts say "skipped: needs CUDA"); ``tests/test_bench_gpu.py``
runs it. On the device machine: ``bash experiments/gpu_run.sh``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from srr.bench import gpu_costs, gpu_models
from srr.bench.gpu_common import (Budget, Deadline, SectionTimeout, Tee, datasheet_peak, deadline, device_slug, log,
                                  machine)

# shares of --budget-s (pytest's timeout is its allowance); the models section compiles four models
SHARES = {"tests": 0.17, "models": 0.33, "triton": 0.06, "regularizer": 0.17, "tokens": 0.17, "data": 0.10}
TINY_SHARES = {"tests": 0.22, "models": 0.45, "triton": 0.03, "regularizer": 0.20, "tokens": 0.05, "data": 0.05}
CUDA_TEST_PATHS = ("tests",)
TINY_TEST_PATHS = ("tests/test_cuda.py", "tests/test_device_paths.py")  # collection of tests/ alone: ~30 s here
DEFAULT_OUT = Path("experiments/results/bench")
TINY_OUT = DEFAULT_OUT / "quick"  # toy numbers, git-ignored (experiments/results/*/quick/)

# the goals of issue 24, on the device: (what, key in the summary, op, bound)
GOALS = (("CRATE-B compiled training vs timm ViT-S/16 (equal parameters)", "crate_vs_vit_s_compiled_train", ">=", 1.0),
         ("CRATE-B compiled training vs the public code (compiled)", "crate_vs_public_compiled_train", ">=", 2.0),
         ("CRATE-B compiled training MFU", "crate_compiled_train_mfu", ">=", 0.35),
         ("SRR term on all 12 layers (detached): step time / plain step", "regularizer_all_ratio", "<=", 1.4),
         ("TSSA faster than SDPA (training pass) from N", "tssa_faster_from_train", "<=", 16384))


@dataclass
class Context:
    device: torch.device
    tiny: bool
    gpu_name: str | None
    deadline: Deadline
    record: dict = field(default_factory=dict)


def section_tests(ctx: Context) -> None:
    """``pytest -m cuda`` in a subprocess, killed at the section's allowance; counts from its summary line."""
    rec = ctx.record
    paths = TINY_TEST_PATHS if ctx.tiny else CUDA_TEST_PATHS
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rfEs", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", *paths]
    timeout = max(ctx.deadline.left() - 2, 5)
    rec.update(command=" ".join(command[1:]), timeout_s=round(timeout))
    if ctx.device.type != "cuda":
        rec.update(status="skipped", reason="needs CUDA: run here, every CUDA test skips (the counts say so)")
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
        output, rec["returncode"] = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as error:
        output = (error.stdout or b"").decode(errors="replace") if isinstance(error.stdout, bytes) else (
            error.stdout or "")
        rec.update(status="partial", reason=f"pytest killed at its timeout of {timeout:.0f} s")
    rec["seconds"] = time.perf_counter() - start
    rec["counts"] = pytest_counts(output)
    rec["failed_tests"] = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.M)
    rec["causal_layers"] = gpu_costs.causal_layers() or "absent: srr.layers has no causal layer in this build"
    log(output[-4000:].rstrip())
    log(f"  counts: {rec['counts']}")
    if rec["counts"].get("failed") or rec["counts"].get("error") or rec.get("returncode", 0) not in (0, 5):
        rec.setdefault("status", "failed")


def pytest_counts(output: str) -> dict[str, int]:
    """``{"passed": 3, "skipped": 2, ...}`` from pytest's last summary line (``errors`` read as ``error``)."""
    lines = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|skipped|deselected|error)", line)]
    if not lines:
        return {}
    counts = {}
    for n, what in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed|warnings?)", lines[-1]):
        counts[what.rstrip("s") if what.startswith(("error", "warning")) else what] = int(n)
    return counts


def fake_training_probe() -> tuple[bool, str, str | None]:
    """``(fake data set present, why not, the TrainConfig field that picks GPU decode or None)``."""
    from srr.data import list_datasets
    from srr.train import TrainConfig

    decode = next((f.name for f in dataclasses.fields(TrainConfig) if "decode" in f.name), None)
    if "fake" not in list_datasets():
        return False, "not available in this build: no 'fake' data set in srr.data.list_datasets()", decode
    return True, "", decode


def section_data(ctx: Context) -> None:
    """JPEG decode on the GPU against the CPU path (``srr.bench.bench_loader`` on JPEGs it writes), the loader
    against the model on ``--dataset fake``, and one-GPU ``torchrun`` training on it."""
    rec = ctx.record
    fake, why, decode = fake_training_probe()
    rec["gpu_decode_option"] = decode or "absent: no TrainConfig field names a decode device"
    if not fake:
        rec.update(status="not available", reason=why)
        return
    from srr.train import TrainConfig
    from srr.train.throughput import loader_vs_model

    device = ctx.device
    size, batch, subset = (32, 8, 32) if ctx.tiny else (224, 128, 2560)
    model = "crate_nano" if ctx.tiny else "crate_base"
    base = dict(dataset="fake", model=model, image_size=size, batch_size=batch, train_subset=subset,
                device=str(device), amp=device.type == "cuda", measure_samples=0, srr_weight=0.0)
    if ctx.deadline.left() > 30:  # JPEG decode on the GPU against the CPU path, on JPEGs of ImageNet's size
        from srr.bench import bench_loader

        try:
            extent = ["--quick"] if ctx.tiny else ["--images", "512", "--rounds", "3"]
            rec["jpeg_decode"] = bench_loader.main(["--device", str(device), "--threads", "4", *extent])
        except Exception as error:  # recorded; the section goes on
            rec["jpeg_decode"] = {"error": f"{type(error).__name__}: {error}"[:300]}
    rec["loader"] = {}
    choices = ["cpu"] + (["cuda", "gpu"] if device.type == "cuda" else [])
    for value in (choices if decode else [None]):
        if ctx.deadline.left() < 10:
            rec["stopped"] = "loader: out of time"
            break
        try:
            config = TrainConfig(**base, **({decode: value} if decode else {}))
            rec["loader"][str(value)] = loader_vs_model(config, steps=3 if ctx.tiny else 10)
        except (ValueError, TypeError) as error:  # this build names the choice differently
            rec["loader"][str(value)] = {"error": f"{type(error).__name__}: {error}"[:300]}
    if ctx.deadline.left() < 20:
        rec.setdefault("stopped", "torchrun training: out of time")
        return
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "srr",
                   "train", "--dataset", "fake", "--model", model, "--image-size", str(size), "--batch-size",
                   str(batch), "--train-subset", str(subset), "--epochs", "1", "--measure-samples", "0",
                   "--srr-weight", "0", "--device", str(device), "--out", out, "--quiet"]
        command += ["--amp"] if device.type == "cuda" else []
        start = time.perf_counter()
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=ctx.deadline.left() - 5)
            seconds = time.perf_counter() - start
            rec["torchrun"] = {"command": " ".join(command[1:]), "returncode": proc.returncode, "seconds": seconds,
                               "images_per_s_wall_incl_startup": subset / seconds,
                               "tail": (proc.stdout + proc.stderr)[-1500:]}
        except subprocess.TimeoutExpired:
            rec["torchrun"] = {"command": " ".join(command[1:]), "error": "timed out"}


SECTIONS = {"tests": section_tests, "models": gpu_models.section_models, "triton": gpu_models.section_triton,
            "regularizer": gpu_costs.section_regularizer, "tokens": gpu_costs.section_tokens, "data": section_data}


def summary(sections: dict) -> dict:
    """The headline numbers and issue 24's goals, each met / missed / null (not measured)."""
    get = lambda name, *keys: _dig(sections.get(name, {}), keys)  # noqa: E731
    depth_all = next((k for k in (get("regularizer", "ratio") or {}) if re.fullmatch(r"all\d+", k)), None)
    values = {"crate_vs_vit_s_compiled_train": get("models", "speedups", "crate_vs_vit_s_compiled_train"),
              "crate_vs_public_compiled_train": get("models", "speedups", "crate_vs_public_compiled_train"),
              "crate_vs_vit_s_eager_train": get("models", "speedups", "crate_vs_vit_s_eager_train"),
              "crate_vs_public_eager_train": get("models", "speedups", "crate_vs_public_eager_train"),
              "crate_compiled_train_mfu": get("models", "models", "crate", "compiled_train_mfu"),
              "crate_eager_train_mfu": get("models", "models", "crate", "eager_train_mfu"),
              "regularizer_all_ratio": get("regularizer", "ratio", depth_all) if depth_all else None,
              "regularizer_last_ratio": get("regularizer", "ratio", "last"),
              "regularizer_all_float64_share": get("regularizer", "float64_profile", depth_all, "float64_share")
              if depth_all else None,
              "measure_throughput_ratio": get("regularizer", "measure", "throughput_ratio"),
              "tssa_faster_from_train": get("tokens", "tssa_faster_than_sdpa_from", "train"),
              "tssa_faster_from_forward": get("tokens", "tssa_faster_than_sdpa_from", "forward"),
              "triton_cuda_default": get("triton", "cuda_default"),
              "cuda_tests": get("tests", "counts")}
    goals = []
    for text, key, op, bound in GOALS:
        v = values.get(key)
        met = None if v is None else (v >= bound if op == ">=" else v <= bound)
        goals.append({"goal": f"{text} {op} {bound:g}", "key": key, "value": v, "met": met})
    return {"values": values, "goals": goals}


def _dig(d, keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False, default=str) + "\n")
    tmp.replace(path)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda, cuda:N or cpu")
    ap.add_argument("--budget-s", type=float, default=None, help="seconds for all sections (default 480; --tiny 110)")
    ap.add_argument("--tiny", action="store_true", help="toy shapes: the dry run of every section")
    ap.add_argument("--only", default=None, help=f"comma-separated sections among {', '.join(SECTIONS)}")
    ap.add_argument("--out-dir", type=Path, default=None,
                    help=f"where the JSON and log go (default {DEFAULT_OUT}; --tiny: {TINY_OUT})")
    args = ap.parse_args(argv)
    chosen = list(SECTIONS) if args.only is None else [s.strip() for s in args.only.split(",") if s.strip()]
    if not chosen or any(s not in SECTIONS for s in chosen):
        ap.error(f"--only must name sections among {', '.join(SECTIONS)}, got {args.only!r}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        ap.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if device.type not in ("cpu", "cuda"):
        ap.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    budget_s = args.budget_s if args.budget_s is not None else (110.0 if args.tiny else 480.0)
    if budget_s <= 0:
        ap.error(f"--budget-s must be > 0 seconds, got {budget_s:g}")

    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    slug = device_slug(gpu_name or "cpu") + ("-tiny" if args.tiny else "")
    args.out_dir = args.out_dir or (TINY_OUT if args.tiny else DEFAULT_OUT)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path, log_path = args.out_dir / f"gpu_{slug}.json", args.out_dir / f"gpu_{slug}.log"
    command = "python -m srr.bench.gpu " + " ".join(argv if argv is not None else sys.argv[1:])
    peak, peak_note = datasheet_peak(gpu_name)
    result = {"command": command, "machine": machine(device), "device_name": gpu_name or "cpu",
              "tiny": args.tiny, "budget_s": budget_s, "peak": peak_note, "datasheet_peak_flops": peak,
              "git_commit": _git_commit(), "sections": {}}
    shares = {k: v for k, v in (TINY_SHARES if args.tiny else SHARES).items() if k in chosen}
    budget = Budget(budget_s, shares)
    tee = Tee(sys.stdout, log_path)
    stdout, sys.stdout = sys.stdout, tee
    try:
        log(f"srr.bench.gpu on {gpu_name or 'cpu'} ({'tiny, ' if args.tiny else ''}budget {budget_s:.0f} s: "
            + ", ".join(f"{k} {v:.0%}" for k, v in shares.items()) + f"); peak: {peak_note}")
        for name in chosen:
            allowance = budget.allowance(name)
            log(f"\n== {name}: {allowance:.0f} s (of {budget.left():.0f} s left)")
            ctx = Context(device, args.tiny, gpu_name, Deadline(allowance))
            start = time.perf_counter()
            try:
                with deadline(allowance) as dl:
                    ctx.deadline = dl
                    SECTIONS[name](ctx)
                ctx.record.setdefault("status", "partial" if ctx.record.get("stopped") else "ok")
            except SectionTimeout as stop:
                ctx.record.update(status="partial", reason=str(stop))
            except Exception as error:  # one section failing must not lose the others
                ctx.record.update(status="error", reason=f"{type(error).__name__}: {error}"[:500],
                                  traceback=traceback.format_exc()[-3000:])
                log(ctx.record["traceback"])
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            ctx.record.update(budget_s=round(allowance, 1), seconds=round(time.perf_counter() - start, 1))
            result["sections"][name] = ctx.record
            log(f"== {name}: {ctx.record['status']}" + (f" ({ctx.record['reason']})" if ctx.record.get("reason")
                                                        else "") + f", {ctx.record['seconds']:.0f} s")
            result["summary"] = summary(result["sections"])
            _write(json_path, result)
        log("\nsummary (issue 24's goals):")
        for g in result["summary"]["goals"]:
            mark = {True: "met", False: "MISSED", None: "not measured"}[g["met"]]
            log(f"  {g['goal']}: {g['value']} [{mark}]")
        log(f"\nwrote {json_path} and {log_path}")
    finally:
        sys.stdout = stdout
        tee.close()
    result["json_path"], result["log_path"] = str(json_path), str(log_path)
    return result


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


if __name__ == "__main__":
    main()
