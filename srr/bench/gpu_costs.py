"""Sections 4 and 5 of ``srr.bench.gpu``: the SRR regulariser's and ``srr.measure``'s cost; cost against N.

Section 4, on CRATE-B/16 at 224 px under bf16 autocast (12 layers): a training step with no term, the
term on the last layer (HU24's detached form, the default), on all 12 layers detached and plain,
timed in alternating rounds (medians), and ``srr.measure`` against plain inference over the same
batches. The float64 share: one step of each is profiled (``torch.profiler``) and the self time of
the ops with a float64 input is summed (device time on CUDA, CPU time on the CPU). The float32
what-if: the same steps with ``srr.linalg.accumulation_dtype`` returning float32 (Grams and Cholesky
factors in float32: not a shipped path, a bound on what one could gain), with the term's value
against the float64 one. ``srr/measurement`` is benchmarked as it is.

Section 5: one compression layer at d 384, K 6, batch 1 (``bench_tssa``'s shape) against N = 1k … 64k
tokens: TSSA (E13), softmax MSSA by SDPA (flash under bf16 on CUDA) and the exact step (E6), forward
and training pass; time (best of a few after a warm-up) and peak memory (CUDA: ``max_memory_allocated``;
the CPU's peak RSS needs a fresh process per point, ``bench_tssa.measure``, so it is null here). An
out-of-memory point is recorded and stops that layer's larger N; causal layers join where
``srr.layers`` has them.
"""
from __future__ import annotations

import contextlib
import inspect
import statistics
import time

import torch
import torch.nn.functional as F

from srr.bench import bench_tssa
from srr.bench.gpu_common import is_oom, log, sync


@contextlib.contextmanager
def float32_accumulation():
    """The what-if of section 4: Grams and factorisations in float32 (every module that reads the dtype)."""
    import srr.linalg
    import srr.rates

    saved = srr.linalg.accumulation_dtype, srr.rates.accumulation_dtype
    f32 = lambda device: torch.float32  # noqa: E731
    srr.linalg.accumulation_dtype = srr.rates.accumulation_dtype = f32
    try:
        yield
    finally:
        srr.linalg.accumulation_dtype, srr.rates.accumulation_dtype = saved


def float64_share(step, device: torch.device) -> dict:
    """Self time of one call of ``step`` (ms) and the part spent in ops with a float64 tensor input (one of
    at least one dimension: the profiler lists Python scalar arguments as 0-d "double" inputs)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=True) as prof:
        step()
        sync(device)
    total = f64 = 0.0
    typed = True
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CPU:  # a kernel's own row: counted with its op
            continue
        t = (getattr(event, "self_device_time_total", None) if cuda else event.self_cpu_time_total)
        t = (event.self_cuda_time_total if t is None else t) / 1e3  # torch < 2.4 names device time "cuda"
        if t <= 0:
            continue
        dtypes = getattr(event, "input_dtypes", None)
        if dtypes is None:
            typed = False
            continue
        total += t
        shapes = getattr(event, "input_shapes", None) or [None] * len(dtypes)
        # a float64 tensor of at least one dimension: Python scalars (an optimiser's lr, betas) are listed
        # as "double" inputs of shape [] and are no float64 arithmetic
        if any(dt in ("double", "c10::complex<double>") and shape != [] for dt, shape in zip(dtypes, shapes)):
            f64 += t
    if not typed and total == 0:
        return {"error": "this torch's profiler events carry no input dtypes"}
    return {"profiled_ms": total, "float64_ms": f64, "float64_share": f64 / total if total else None,
            "clock": "device self time" if cuda else "CPU self time"}


def section_regularizer(ctx) -> None:
    from srr.measurement import SRRRegularizer, measure
    from srr.models import create_model

    device, tiny, rec, dl = ctx.device, ctx.tiny, ctx.record, ctx.deadline
    amp = torch.bfloat16 if device.type == "cuda" else None
    overrides = (dict(image_size=16, patch_size=4, dim=32, depth=2, heads=2, head_dim=16, num_classes=10) if tiny
                 else dict(image_size=224, patch_size=16, num_classes=1000))
    batch, rounds, measure_batches = (4, 1, 2) if tiny else (64, 10, 8)
    torch.manual_seed(0)
    model = create_model("crate_base", **overrides).to(device)
    depth = model.config.depth
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    size = model.config.image_size
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    y = torch.randint(0, model.config.num_classes, (batch,), generator=g).to(device)
    every = list(range(depth))
    configs = {"none": None, "last": ([-1], True), f"all{depth}": (every, True), f"all{depth}_plain": (every, False)}
    rec.update(model=f"crate_base {overrides}", batch=batch, autocast="bf16" if amp else "none",
               whatif="float32 accumulation: srr.linalg.accumulation_dtype patched to float32 (not a shipped path)")

    def step(reg):
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = F.cross_entropy(model(x), y)
            if reg is not None:
                loss = loss + reg()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def timed(fn) -> float:
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - t0

    runs = {**{k: (c, False) for k, c in configs.items()},
            **{f"{k}_f32acc": (c, True) for k, c in configs.items() if c is not None}}
    regs = {k: None if c is None else SRRRegularizer(model, layers=c[0], weight=1e-3, detach_input=c[1])
            for k, (c, _) in runs.items()}
    for reg in regs.values():  # each hooks the model: only one is open at a time, the others closed
        if reg is not None:
            reg.close()
    times: dict[str, list[float]] = {k: [] for k in runs}
    try:
        for rnd in range(rounds + 1):  # round 0 warms up
            if rnd and dl.left() < 3 + 0.3 * dl.seconds:  # keep time for the profile and measure
                rec["stopped"] = f"training rounds: out of time after {rnd - 1}"
                break
            for k, (c, f32) in runs.items():
                reg = None if c is None else SRRRegularizer(model, layers=c[0], weight=1e-3, detach_input=c[1])
                with float32_accumulation() if f32 else contextlib.nullcontext():
                    elapsed = timed(lambda: step(reg))
                if reg is not None:
                    reg.close()
                if rnd:
                    times[k].append(elapsed)
    finally:
        med = {k: statistics.median(v) for k, v in times.items() if v}
        rec["step_ms"] = {k: 1e3 * v for k, v in med.items()}
        rec["ratio"] = {k: v / med["none"] for k, v in med.items() if "none" in med and k != "none"}
    log("  step ms: " + ", ".join(f"{k} {v:.1f}" for k, v in rec["step_ms"].items()))
    log("  ratio to no term: " + ", ".join(f"{k} {v:.3f}" for k, v in rec["ratio"].items()))

    # the term's value in float32 accumulation against float64, same weights and batch
    values = {}
    for f32 in (False, True):
        reg = SRRRegularizer(model, layers=every, weight=1.0, detach_input=True)
        with float32_accumulation() if f32 else contextlib.nullcontext(), torch.no_grad():
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                model(x)
            values[f32] = float(reg())
        reg.close()
    rec["f32acc_term_rel_diff"] = abs(values[True] - values[False]) / max(abs(values[False]), 1e-30)

    profiles = {}
    for k in ("none", f"all{depth}", f"all{depth}_plain"):
        if dl.left() < 3 + 0.15 * dl.seconds:
            rec.setdefault("stopped", f"profile: out of time before {k}")
            break
        c = configs[k]
        reg = None if c is None else SRRRegularizer(model, layers=c[0], weight=1e-3, detach_input=c[1])
        profiles[k] = float64_share(lambda: step(reg), device)
        if reg is not None:
            reg.close()
    rec["float64_profile"] = profiles
    log("  float64 share: " + ", ".join(f"{k} {v.get('float64_share')}" for k, v in profiles.items()))

    # srr.measure against plain inference over the same batches
    model.eval()
    batches = [torch.randn(batch, 3, size, size, generator=g).to(device) for _ in range(measure_batches)]

    def plain():
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            for b in batches:
                model(b)

    def measured(f32=False):
        with float32_accumulation() if f32 else contextlib.nullcontext():
            measure(model, batches, progress=False, autocast=amp)

    m = {"plain": [], "measure": [], "measure_f32acc": []}
    fns = {"plain": plain, "measure": measured, "measure_f32acc": lambda: measured(True)}
    for rnd in range(2 if tiny else 4):
        if rnd and dl.left() < 2:
            rec.setdefault("stopped", f"measure: out of time after {rnd - 1} rounds")
            break
        for k, fn in fns.items():
            t = timed(fn)
            if rnd:
                m[k].append(t)
    images = batch * measure_batches
    med = {k: statistics.median(v) for k, v in m.items() if v}
    rec["measure"] = {"images": images, "images_per_s": {k: images / v for k, v in med.items()},
                      "throughput_ratio": med["plain"] / med["measure"] if "measure" in med else None,
                      "throughput_ratio_f32acc": (med["plain"] / med["measure_f32acc"]
                                                  if "measure_f32acc" in med else None)}
    log(f"  measure vs plain inference: {rec['measure']['throughput_ratio']}")


# ----- section 5: cost against N ---------------------------------------------------------------------------
def causal_layers() -> list[str]:
    """Names of ``srr.layers``' public layers that take ``causal=`` or are named causal (none: ``[]``)."""
    import srr.layers

    found = []
    for name in getattr(srr.layers, "__all__", []):
        obj = getattr(srr.layers, name, None)
        if not inspect.isclass(obj) or not issubclass(obj, torch.nn.Module):
            continue
        with contextlib.suppress(TypeError, ValueError):
            if "causal" in name.lower() or "causal" in inspect.signature(obj).parameters:
                found.append(name)
    return found


def _make(name: str, dim: int, heads: int, max_tokens: int) -> torch.nn.Module:
    if name.startswith("causal:"):
        import srr.layers

        cls = getattr(srr.layers, name.split(":", 1)[1])
        params = inspect.signature(cls).parameters
        extra = {"causal": True} if "causal" in params else {}
        if "block_size" in params:  # a layer with per-position parameters (ToST's denom_bias) sized for every N
            extra["block_size"] = max_tokens
        return cls(dim, heads=heads, **extra)
    return bench_tssa.make_layer(name, dim, heads)


def _point(layer, tokens: int, mode: str, dim: int, device, amp, repeats: int) -> dict:
    cuda = device.type == "cuda"
    x = torch.randn(1, tokens, dim, device=device, requires_grad=mode == "train")

    def run():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            if mode == "forward":
                with torch.no_grad():
                    layer(x)
            else:
                layer(x).float().square().sum().backward()
        x.grad = None
        layer.zero_grad(set_to_none=True)
        sync(device)

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    run()
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if cuda else None
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return {"seconds": best, "peak_mib": peak}


def section_tokens(ctx) -> None:
    device, tiny, rec, dl = ctx.device, ctx.tiny, ctx.record, ctx.deadline
    cuda = device.type == "cuda"
    dim, heads = (32, 2) if tiny else (384, 6)
    Ns = (64, 128, 256) if tiny else tuple(1024 * 2**i for i in range(7))  # 1k … 64k
    causal = causal_layers()
    names = list(bench_tssa.LAYERS) + [f"causal:{c}" for c in causal]
    rec.update(dim=dim, heads=heads, batch=1, tokens=list(Ns), autocast="bf16" if cuda else "none",
               layers=names, causal_layers=causal or "absent: srr.layers has no causal layer in this build",
               peak_memory="CUDA max_memory_allocated" if cuda else "null on the CPU (needs a process per point)",
               rows=[])
    torch.manual_seed(0)
    layers = {n: _make(n, dim, heads, max(Ns)).to(device) for n in names}
    dead: dict[tuple[str, str], str] = {}  # (layer, pass) -> why it stopped
    last: dict[tuple[str, str], float] = {}
    for N in Ns:
        for mode in bench_tssa.PASSES:
            for name, layer in layers.items():
                key = (name, mode)
                if key in dead:
                    continue
                growth = 4.0 if name in ("sdpa",) or name.startswith("causal:") else 2.0
                if dl.left() < 1 + 2 * growth * last.get(key, 0.0):
                    dead[key] = f"out of time before N={N}"
                    continue
                row = {"layer": name, "tokens": N, "pass": mode}
                try:
                    row.update(_point(layer, N, mode, dim, device, cuda, 2 if tiny else 3))
                    last[key] = row["seconds"]
                except Exception as error:  # recorded; that layer's larger N are not tried
                    if is_oom(error):
                        row["oom"] = True
                        dead[key] = f"out of memory at N={N}"
                    else:
                        row["error"] = f"{type(error).__name__}: {error}"[:300]
                        dead[key] = f"error at N={N}"
                    if cuda:
                        torch.cuda.empty_cache()
                rec["rows"].append(row)
        shown = [f"{r['layer']}/{r['pass']} " + _shown(r) for r in rec["rows"] if r["tokens"] == N]
        if shown:
            log(f"  N={N}: " + ", ".join(shown))
    rec["stopped"] = {f"{k[0]}/{k[1]}": v for k, v in dead.items()} or None
    rec["tssa_faster_than_sdpa_from"] = {mode: _crossover(rec["rows"], mode) for mode in bench_tssa.PASSES}
    log(f"  TSSA faster than SDPA from N = {rec['tssa_faster_than_sdpa_from']}")


def _shown(row: dict) -> str:
    return "OOM" if row.get("oom") else "error" if "error" in row else f"{1e3 * row['seconds']:.2f} ms"


def _crossover(rows: list[dict], mode: str) -> int | None:
    """``bench_tssa.crossover`` over the N at which both TSSA and SDPA were timed."""
    timed = [r for r in rows if r["layer"] in ("tssa", "sdpa") and "seconds" in r]
    both = {n for n in {r["tokens"] for r in timed} if sum(r["tokens"] == n and r["pass"] == mode for r in timed) == 2}
    return bench_tssa.crossover([r for r in timed if r["tokens"] in both], mode) if both else None
