"""Sections 2 and 3 of ``srr.bench.gpu``: CRATE-B against timm's ViTs and the public code; Triton ISTA.

Section 2 times, in one process and interleaved (A, B, C, ... A, B, C, ...; medians), a training step
(forward, cross-entropy, backward, AdamW) and inference under bf16 autocast of srr's CRATE-B/16 at 224
px, the public code's CRATE-B (``bench_models.PublicCRATE``, the computation of ``tests/test_models.py``'s
``PublicCRATE``; a test holds the two equal), and timm's ViT-S/16 (CRATE-B's parameter count) and
ViT-B/16, eager and ``torch.compile``d. FLOPs are counted (``FlopCounterMode``) on each eager model's own
step; MFU = counted FLOPs / step time / the datasheet peak (and against the matmul peak timed here).
Compiled models are built in priority order (CRATE, ViT-S, public, ViT-B): a section out of time keeps
the ones compiled so far.

Section 3: the ISTA step (E10') with the Triton kernel against the torch path at CRATE-B (d 768) and
CRATE-L (d 1024) shapes, training and inference; the faster in training at both is the CUDA default
it names.
"""
from __future__ import annotations

import statistics

import torch
from torch import nn

from srr.bench import bench_layers, bench_models
from srr.bench.bench_models import PublicCRATE, Runner, _infer_step, _timed, _train_step
from srr.bench.gpu_common import counted_flops, datasheet_peak, is_oom, log, sync
from srr.models import CRATE, create_model, load_public_state_dict

TINY_CRATE = dict(image_size=32, patch_size=8, num_classes=10, dim=64, depth=2, heads=2, head_dim=32)
TINY_VIT = dict(img_size=32, patch_size=8, num_classes=10, depth=2, num_heads=2)  # embed_dim per model
TIMM = {"vit_s": ("vit_small_patch16_224", 128), "vit_b": ("vit_base_patch16_224", 64)}  # (name, tiny embed_dim)
COMPILE_ORDER = ("crate", "vit_s", "public", "vit_b")
TINY_COMPILED = ("crate",)  # the toy run exercises the compiled path on one model: each compile costs seconds


def _timm(key: str, cfg, tiny: bool) -> tuple[nn.Module | None, str]:
    name, tiny_dim = TIMM[key]
    if not tiny:
        return bench_models.timm_vit(name, cfg)
    try:
        import timm
    except ImportError:
        return None, "not measured: timm is not installed (pip install 'srr[bench]')"
    return timm.create_model(name, embed_dim=tiny_dim, **TINY_VIT), f"{name} at toy size {TINY_VIT}"


def _models(tiny: bool, device) -> tuple[dict[str, nn.Module], dict[str, str], object]:
    torch.manual_seed(0)
    overrides = TINY_CRATE if tiny else dict(image_size=224, patch_size=16, num_classes=1000)
    cfg = create_model("crate_base", **overrides).config
    public = PublicCRATE(cfg)
    crate = CRATE(cfg)
    load_public_state_dict(crate, public.state_dict())
    models = {"crate": crate, "public": public}
    notes = {"crate": f"srr crate_base {overrides}", "public": "public CRATE code's CRATE-B (bench_models.PublicCRATE)"}
    for key in TIMM:
        model, note = _timm(key, cfg, tiny)
        notes[key] = note
        if model is not None:
            models[key] = model
    return {k: m.to(device) for k, m in models.items()}, notes, cfg


def _median_rate(times: list[float], batch: int) -> float | None:
    return batch / statistics.median(times) if times else None


def section_models(ctx) -> None:
    """Section 2 (module docstring); fills ``ctx.record``."""
    device, tiny, rec, dl = ctx.device, ctx.tiny, ctx.record, ctx.deadline
    amp = device.type == "cuda"
    batch = 4 if tiny else 128
    steps = 1 if tiny else 10
    peak, peak_note = datasheet_peak(ctx.gpu_name)
    measured_peak = bench_models.matmul_peak(device, torch.bfloat16 if amp else torch.float32,
                                             256 if tiny else 8192, seconds=0.3 if tiny else 1.0)
    models, notes, cfg = _models(tiny, device)
    rec.update(batch=batch, image_size=cfg.image_size, patch_size=cfg.patch_size, autocast="bf16" if amp else "none",
               datasheet_peak_flops=peak, peak=peak_note, measured_matmul_peak_flops=measured_peak, notes=notes,
               models={})
    log(f"  peak: {peak_note}; measured matmul peak {measured_peak / 1e12:.3g} TFLOP/s")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=g).to(device)
    y = torch.randint(0, cfg.num_classes, (batch,), generator=g).to(device)
    with torch.no_grad():
        a, b = models["crate"](x).float(), models["public"](x).float()
    rec["crate_vs_public_logit_rel_diff"] = float((a - b).norm() / b.norm())

    def row(key):
        return rec["models"].setdefault(key, {"params": sum(p.numel() for p in models[key].parameters())})

    for key, model in models.items():  # counted FLOPs of the eager model: the same math compiled or not
        r = row(key)
        runner = Runner(key, model, torch.optim.AdamW(model.parameters(), lr=1e-4), [], [])

        def train_fwd_bwd(model=model):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
        r["flops_train"] = counted_flops(train_fwd_bwd)
        model.zero_grad(set_to_none=True)
        r["flops_infer"] = counted_flops(lambda runner=runner: _infer_step(runner, x, amp))

    backend = "aot_eager" if tiny else "inductor"  # toy run: the compile path without inductor's minutes of C++
    for mode in ("eager", "compiled"):
        runners = []
        if mode == "eager":
            runners = [Runner(k, m, torch.optim.AdamW(m.parameters(), lr=1e-4), [], []) for k, m in models.items()]
        for r in runners:
            _warm(r, x, y, amp, device)
        if mode == "compiled":
            for key in (k for k in (TINY_COMPILED if tiny else COMPILE_ORDER) if k in models):
                if dl.left() < (5 if tiny else 45):  # one more compile would not fit
                    rec.setdefault("stopped", f"compiled models after {[r.label for r in runners]}: out of time")
                    break
                compiled = torch.compile(models[key], backend=backend)
                r = Runner(key, compiled, torch.optim.AdamW(models[key].parameters(), lr=1e-4), [], [])
                try:
                    row(key)["compile_s"] = _warm(r, x, y, amp, device)
                except Exception as error:
                    row(key)["compile_error"] = f"{type(error).__name__}: {str(error)[:300]}"
                    continue
                runners.append(r)
        log(f"  {mode}: timing {[r.label for r in runners]}, {steps} interleaved steps each")
        for phase, times_of, step in (("train", "train_times", _train_step), ("infer", "infer_times", _infer_step)):
            for i in range(steps):
                if dl.left() < 2 or not runners:
                    rec.setdefault("stopped", f"{mode} {phase}: out of time after {i} steps")
                    break
                for r in runners:
                    args = (r, x, y, amp) if phase == "train" else (r, x, amp)
                    getattr(r, times_of).append(_timed(lambda: step(*args), device))
            for r in runners:
                _fill(row(r.label), mode, phase, getattr(r, times_of), batch, peak, measured_peak)
    _ratios(rec)
    for key, r in rec["models"].items():
        log(f"  {key:<7} {r['params'] / 1e6:7.2f}M  " + "  ".join(
            f"{m} {p} {r[f'{m}_{p}_img_s']:9.1f} img/s (MFU {_pct(r.get(f'{m}_{p}_mfu'))})"
            for m in ("eager", "compiled") for p in ("train", "infer") if r.get(f"{m}_{p}_img_s")))


def _warm(r: Runner, x, y, amp, device) -> float:
    """One training step and one inference (allocator, kernels; compile): their seconds."""
    def both():
        _train_step(r, x, y, amp)
        _infer_step(r, x, amp)
    return _timed(both, device)


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def _fill(r: dict, mode: str, phase: str, times: list[float], batch: int, peak, measured_peak) -> None:
    rate = _median_rate(times, batch)
    flops = r.get(f"flops_{phase}")
    r[f"{mode}_{phase}_img_s"] = rate
    r[f"{mode}_{phase}_steps"] = len(times)
    if rate is not None and flops:
        achieved = flops * rate / batch
        r[f"{mode}_{phase}_tflops"] = achieved / 1e12
        r[f"{mode}_{phase}_mfu"] = achieved / peak if peak else None
        r[f"{mode}_{phase}_mfu_of_measured_peak"] = achieved / measured_peak


def _ratios(rec: dict) -> None:
    """CRATE's images/s over each other model's, per mode and phase (> 1: CRATE is faster)."""
    m = rec["models"]
    out = {}
    for other in ("public", "vit_s", "vit_b"):
        for mode in ("eager", "compiled"):
            for phase in ("train", "infer"):
                a, b = m.get("crate", {}).get(f"{mode}_{phase}_img_s"), m.get(other, {}).get(f"{mode}_{phase}_img_s")
                out[f"crate_vs_{other}_{mode}_{phase}"] = a / b if a and b else None
    rec["speedups"] = out


# ----- section 3: Triton ISTA ------------------------------------------------------------------------
def section_triton(ctx) -> None:
    """Section 3 (module docstring): fills ``ctx.record``; on the CPU the torch path only (skipped)."""
    from srr.layers import ISTA

    device, tiny, rec, dl = ctx.device, ctx.tiny, ctx.record, ctx.deadline
    cuda = device.type == "cuda"
    if not cuda:
        rec.update(status="skipped", reason="needs CUDA (the Triton kernel); the torch path timed alone")
    shapes = {"crate_base": 64, "crate_large": 96} if tiny else {"crate_base": 768, "crate_large": 1024}
    batch, tokens, repeats = (2, 17, 2) if tiny else (64, 197, 20)
    sync_ = lambda: sync(device)  # noqa: E731
    rec.update(batch=batch, tokens=tokens, autocast="bf16" if cuda else "none", shapes={})
    for name, d in shapes.items():
        if dl.left() < 3:
            rec["stopped"] = f"out of time before {name}"
            break
        torch.manual_seed(0)
        x = torch.randn(batch, tokens, d, device=device, requires_grad=True)
        layers = {"torch": ISTA(d, backend="torch").to(device)}
        if cuda:
            layers["triton"] = ISTA(d, backend="triton").to(device)
            layers["triton"].load_state_dict(layers["torch"].state_dict())
        out = rec["shapes"][name] = {"dim": d}
        try:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                if cuda:
                    with torch.no_grad():
                        a, b = layers["triton"](x).float(), layers["torch"](x).float()
                    out["triton_rel_err"] = float((a - b).norm() / b.norm())
                t = bench_layers._interleaved({k: bench_layers._train_step(m, x) for k, m in layers.items()},
                                              repeats, sync_)
                out.update({f"{k}_train_ms": 1e3 * v for k, v in t.items()})
                t = bench_layers._interleaved({k: bench_layers._infer(m, x) for k, m in layers.items()}, repeats, sync_)
                out.update({f"{k}_infer_ms": 1e3 * v for k, v in t.items()})
        except Exception as error:  # recorded, and the next shape tried: a failure is a result here
            out["error"] = ("out of memory: " if is_oom(error) else f"{type(error).__name__}: ") + str(error)[:300]
            if device.type == "cuda":
                torch.cuda.empty_cache()
        log(f"  {name} (d {d}): " + ", ".join(f"{k} {v:.3g}" for k, v in out.items() if k.endswith("_ms")))
    timed = [s for s in rec["shapes"].values() if "triton_train_ms" in s]
    if cuda and timed and len(timed) == len(shapes):
        triton_wins = all(s["triton_train_ms"] < s["torch_train_ms"] for s in timed)
        rec["cuda_default"] = "triton" if triton_wins else "torch"
        rec["current_default"] = "torch"  # ISTA(backend="auto") runs the torch path (srr/layers/ista.py)
        log(f"  the CUDA default should be: {rec['cuda_default']} (now: torch)")
    else:
        rec["cuda_default"] = None
