"""Throughput of srr's CRATE against a straight re-implementation of the public model.

The baseline (``PublicCRATE`` below) is the public code's computation written plainly
(Ma-Lab-Berkeley/CRATE ``model/crate.py``): explicit softmax attention with an N×N matrix and
the 3-matmul ISTA step. srr's ``variant="crate"`` computes the same function (the baseline's
weights are loaded into it and the logits compared before timing) with fused attention and
the 1-matrix ISTA step of MATH.md (E10'): 3d² instead of 5d² multiply-adds per token on the
linear maps, so the token-wise work can speed up by at most 5/3 ≈ 1.67×.

``crate_exact`` (the exact gradient step of R^c, E6) and ``crate_derived`` (the same step from
autodiff, srr.derive) are timed against the same baseline, to show what exactness costs.

When timm is installed (``pip install srr[bench]``), ``variant="crate"`` is also timed against timm's
ViT of equal parameter count in the same interleaved rounds: ``vit_tiny_patch16_224`` (d 192, 12
layers, 3 heads, MLP 4d: 12d² per layer = CRATE-Tiny's 3·384²) for ``crate_tiny``,
``vit_small_patch16_224`` for ``crate_base``, re-configured to the benchmark's image size, patch size
and 10 classes (``--timm-model`` overrides; ``none`` skips). Without timm the result says so.

Model FLOP utilisation (MFU) = model FLOP/s / measured matmul peak. Model FLOPs count the
arithmetic the *math* needs, the same for every implementation of it (2 FLOPs per multiply-add):
- patch embedding ``2·n·P·d``; head ``2·d·C``;
- per layer, softmax variants: qkv ``2·N·d·Kp``, scores and mixing ``4·N²·Kp``, output ``2·N·Kp·d``,
  ISTA with one effective matrix ``2·N·d²`` (forming it: ``2·d³`` per batch);
- per layer, exact step (E6): projections ``2·N·d·Kp`` twice, Gram ``2·N·p²`` and its use
  ``2·N·p²`` per head, a p×p solve ``p³/3`` per head per image;
- a training step is 3× the forward. The matmul peak is timed in the same process.

Both implementations are timed interleaved (A, B, A, B, ...) and the median is reported, so a
noisy machine slows both alike. Usage::

    python -m srr.bench.bench_models                       # CPU: CRATE-Tiny, 32 px, patch 4, batch 128
    python -m srr.bench.bench_models --device cuda         # GPU: CRATE-Base, 224 px, bf16 autocast
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from srr.models import CRATE, CRATEConfig, create_model, load_public_state_dict


# ----- the straight re-implementation of the public model -----------------------------------------
class _PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm, self.fn = nn.LayerNorm(dim), fn

    def forward(self, x):
        return self.fn(self.norm(x))


class _Attention(nn.Module):
    def __init__(self, dim, heads, dim_head):
        super().__init__()
        self.heads, self.scale = heads, dim_head**-0.5
        self.qkv = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(0.0))

    def forward(self, x):
        w = rearrange(self.qkv(x), "b n (h d) -> b h n d", h=self.heads)
        attn = torch.softmax(torch.matmul(w, w.transpose(-1, -2)) * self.scale, dim=-1)
        return self.to_out(rearrange(torch.matmul(attn, w), "b h n d -> b n (h d)"))


class _ISTA(nn.Module):
    def __init__(self, dim, step_size=0.1, lam=0.1):
        super().__init__()
        self.weight = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(dim, dim)))
        self.step_size, self.lambd = step_size, lam

    def forward(self, x):
        grad_1 = F.linear(F.linear(x, self.weight), self.weight.t())
        grad_2 = F.linear(x, self.weight.t())
        return F.relu(x + self.step_size * (grad_2 - grad_1) - self.step_size * self.lambd)


class _Transformer(nn.Module):
    def __init__(self, dim, depth, heads, dim_head):
        super().__init__()
        self.layers = nn.ModuleList([nn.ModuleList([_PreNorm(dim, _Attention(dim, heads, dim_head)),
                                                    _PreNorm(dim, _ISTA(dim))]) for _ in range(depth)])

    def forward(self, x):
        for attn, ff in self.layers:
            x = ff(attn(x) + x)
        return x


class PublicCRATE(nn.Module):
    def __init__(self, cfg: CRATEConfig):
        super().__init__()
        p, d = cfg.patch_size, cfg.dim
        self.p = p
        self.to_patch_embedding = nn.Sequential(nn.Identity(), nn.LayerNorm(cfg.patch_dim), nn.Linear(cfg.patch_dim, d),
                                                nn.LayerNorm(d))
        self.pos_embedding = nn.Parameter(torch.randn(1, cfg.num_patches + 1, d))
        self.cls_token = nn.Parameter(torch.randn(1, 1, d))
        self.transformer = _Transformer(d, cfg.depth, cfg.heads, cfg.head_dim)
        self.mlp_head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, cfg.num_classes))

    def forward(self, img):
        x = rearrange(img, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=self.p, p2=self.p)
        x = self.to_patch_embedding(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embedding
        return self.mlp_head(self.transformer(x)[:, 0])


# ----- FLOPs and peak ---------------------------------------------------------------------------------
def model_flops(cfg: CRATEConfig, batch: int) -> float:
    """Forward FLOPs of one batch (module docstring)."""
    n, N, d, K, p = cfg.num_patches, cfg.num_patches + 1, cfg.dim, cfg.heads, cfg.head_dim
    embed = 2 * n * cfg.patch_dim * d + 2 * d * cfg.num_classes
    ista = 2 * N * d * d + 2 * d**3 / batch
    if cfg.variant in ("crate_exact", "crate_derived"):
        compress = 2 * (2 * N * d * K * p) + K * (4 * N * p * p + p**3 / 3)
    else:
        compress = 2 * N * d * K * p + 4 * N * N * K * p + 2 * N * K * p * d
    return batch * (embed + cfg.depth * (compress + ista))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device, dtype, size: int, seconds: float = 2.0) -> float:
    """FLOP/s of a square matmul of ``size``, the best of repeated timings."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    _sync(device)
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best


# ----- timing -------------------------------------------------------------------------------------------
@dataclass
class Runner:
    label: str
    model: nn.Module
    opt: torch.optim.Optimizer
    train_times: list
    infer_times: list


# timm's ViT of (about) the same parameter count as each srr size: 12d² per ViT layer = 3d² per CRATE layer
TIMM_EQUAL_PARAMS = {"crate_tiny": "vit_tiny_patch16_224", "crate_base": "vit_small_patch16_224"}


def timm_vit(name: str, cfg: CRATEConfig) -> tuple[nn.Module | None, str]:
    """timm's ``name`` at the benchmark's image size, patch size and classes, and how it was built; (None,
    why) when timm is not installed or has no such model."""
    try:
        import timm
    except ImportError:
        return None, "not measured: timm is not installed (pip install 'srr[bench]')"
    call = (f"timm.create_model({name!r}, img_size={cfg.image_size}, patch_size={cfg.patch_size}, "
            f"num_classes={cfg.num_classes}, in_chans={cfg.in_chans})")
    try:
        model = timm.create_model(name, img_size=cfg.image_size, patch_size=cfg.patch_size,
                                  num_classes=cfg.num_classes, in_chans=cfg.in_chans)
    except Exception as error:  # an unknown name, or a timm too old for these arguments
        return None, f"not measured: {call} failed: {type(error).__name__}: {error}"
    return model, f"{call} (timm {timm.__version__})"


def _train_step(r: Runner, x, y, amp):
    r.model.train()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        loss = F.cross_entropy(r.model(x), y)
    r.opt.zero_grad(set_to_none=True)
    loss.backward()
    r.opt.step()


def _infer_step(r: Runner, x, amp):
    r.model.eval()
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        r.model(x)


def _timed(fn, device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def time_interleaved(runners: list[Runner], x, y, *, train_steps: int, infer_steps: int, amp: bool, device):
    for r in runners:  # warm-up: allocator, kernels, compile
        _train_step(r, x, y, amp)
        _infer_step(r, x, amp)
    for _ in range(train_steps):
        for r in runners:
            r.train_times.append(_timed(lambda: _train_step(r, x, y, amp), device))
    for _ in range(infer_steps):
        for r in runners:
            r.infer_times.append(_timed(lambda: _infer_step(r, x, amp), device))


def main(argv=None) -> list[dict]:
    """Run the benchmark; print the table and return one dict per srr variant (speed-ups, MFU)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None, help="default: crate_tiny on CPU, crate_base on GPU")
    ap.add_argument("--image-size", type=int, default=None, help="default: 32 on CPU, 224 on GPU")
    ap.add_argument("--patch-size", type=int, default=None, help="default: 4 on CPU, 16 on GPU")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--variants", default="crate,crate_exact,crate_derived")
    ap.add_argument("--train-steps", type=int, default=None,
                    help="alternating timed steps per model (default 7 on CPU, 20 on GPU; the ratios are of medians)")
    ap.add_argument("--infer-steps", type=int, default=None)
    ap.add_argument("--slow-steps", type=int, default=2, help="timed steps for crate_exact/crate_derived")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="torch.compile both models (not crate_derived)")
    ap.add_argument("--timm-model", default="auto",
                    help="timm model timed beside variant crate (auto: equal parameters, see TIMM_EQUAL_PARAMS; none)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.model or ("crate_base" if gpu else "crate_tiny")
    image = args.image_size or (224 if gpu else 32)
    patch = args.patch_size or (16 if gpu else 4)
    train_steps = args.train_steps or (20 if gpu else 7)
    infer_steps = args.infer_steps or (20 if gpu else 10)
    amp = gpu  # bf16 autocast on GPU, float32 on CPU

    peak_dtype = torch.bfloat16 if amp else torch.float32
    peak = matmul_peak(device, peak_dtype, 8192 if gpu else 2048)
    print(f"device {device} ({torch.cuda.get_device_name(device) if gpu else f'{torch.get_num_threads()} threads'}), "
          f"{'bf16 autocast' if amp else 'float32'}; measured {peak_dtype} matmul peak {peak / 1e9:.1f} GFLOP/s")

    torch.manual_seed(0)
    base_cfg = create_model(name, image_size=image, patch_size=patch, num_classes=10).config
    x = torch.randn(args.batch, base_cfg.in_chans, image, image, device=device)
    ref = PublicCRATE(base_cfg).to(device)
    runners_by_variant = {}
    for variant in args.variants.split(","):
        cfg = base_cfg.replace(variant=variant)
        model = CRATE(cfg).to(device)
        if variant == "crate":
            load_public_state_dict(model, ref.state_dict())
            with torch.no_grad():
                err = ((model(x[:8]) - ref(x[:8])).norm() / ref(x[:8]).norm()).item()
            print(f"srr crate vs baseline, same weights: relative logit difference {err:.2e}")
        runners_by_variant[variant] = model
    y = torch.randint(0, 10, (args.batch,), device=device)

    def runner(label, model):
        if args.compile and "derived" not in label:
            model = torch.compile(model)
        return Runner(label, model, torch.optim.AdamW(model.parameters(), lr=1e-4), [], [])

    baseline = runner("baseline (public code)", ref)
    timm_name = TIMM_EQUAL_PARAMS.get(name) if args.timm_model == "auto" else args.timm_model
    if timm_name in (None, "none"):
        vit, timm_note = None, f"not measured: no timm model named for {name} (--timm-model)"
    else:
        vit, timm_note = timm_vit(timm_name, base_cfg)
    if vit is not None:
        vit = vit.to(device)
        print(f"timm: {timm_note}, {sum(p.numel() for p in vit.parameters()) / 1e6:.3f}M parameters")
    else:
        print(f"timm: {timm_note}")
    results = []
    timm_runner = None
    for variant, model in runners_by_variant.items():
        r = runner(f"srr {variant}", model)
        slow = variant in ("crate_exact", "crate_derived")
        base = Runner(baseline.label, baseline.model, baseline.opt, [], [])
        group = [base, r]
        if variant == "crate" and vit is not None:
            timm_runner = runner(f"timm {timm_name}", vit)
            group.append(timm_runner)
        time_interleaved(group, x, y, train_steps=args.slow_steps if slow else train_steps,
                         infer_steps=args.slow_steps if slow else infer_steps, amp=amp, device=device)
        results.append((variant, model, base, r))

    # one table; each ratio is against the baseline timed interleaved with that row
    header = (f"{'model':<12} {'implementation':<24} {'params':>8} {'train img/s':>12} {'infer img/s':>12} "
              f"{'train x':>8} {'infer x':>8} {'MFU train':>10} {'MFU infer':>10}")
    print(header)
    print("-" * len(header))
    summary = []
    for i, (variant, model, base, r) in enumerate(results):
        bt, bi = statistics.median(base.train_times), statistics.median(base.infer_times)
        rows = [(base, base_cfg)] if i == 0 else []
        for impl, cfg in rows + [(r, model.config)]:
            tt, ti = statistics.median(impl.train_times), statistics.median(impl.infer_times)
            flops = model_flops(cfg, args.batch)
            params = sum(p.numel() for p in impl.model.parameters())
            print(f"{name:<12} {impl.label:<24} {params / 1e6:>7.2f}M {args.batch / tt:>12.1f} "
                  f"{args.batch / ti:>12.1f} "
                  f"{bt / tt:>8.2f} {bi / ti:>8.2f} {3 * flops / tt / peak:>10.1%} {flops / ti / peak:>10.1%}")
        summary.append(dict(model=name, variant=variant, params=params, batch=args.batch, image_size=image,
                            patch_size=patch, device=str(device), train_img_s=args.batch / tt,
                            infer_img_s=args.batch / ti,
                            baseline_train_img_s=args.batch / bt, baseline_infer_img_s=args.batch / bi,
                            train_speedup=bt / tt, infer_speedup=bi / ti, mfu_train=3 * flops / tt / peak,
                            mfu_infer=flops / ti / peak, matmul_peak_flops=peak))
        if variant == "crate":
            summary[-1].update(timm_model=timm_name, timm_note=timm_note)
            if timm_runner is not None:
                vt, vi = statistics.median(timm_runner.train_times), statistics.median(timm_runner.infer_times)
                vparams = sum(p.numel() for p in timm_runner.model.parameters())
                print(f"{'timm':<12} {timm_name[:24]:<24} {vparams / 1e6:>7.2f}M {args.batch / vt:>12.1f} "
                      f"{args.batch / vi:>12.1f} {bt / vt:>8.2f} {bi / vi:>8.2f}   (srr crate vs it: train "
                      f"{vt / tt:.2f}x, inference {vi / ti:.2f}x)")
                summary[-1].update(timm_params=vparams, timm_train_img_s=args.batch / vt,
                                   timm_infer_img_s=args.batch / vi, timm_train_speedup=vt / tt,
                                   timm_infer_speedup=vi / ti)
    sys.stdout.flush()
    return summary


if __name__ == "__main__":
    main()
