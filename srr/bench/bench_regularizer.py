"""Cost of SRR regularisation and measurement on CRATE-Tiny (32×32 images, patch 4, 10 classes).

Targets (issue 12):
- a training step (forward, CE + reg(), backward, AdamW) at batch 128 regularising the last layer
  costs at most 5% more than without the regulariser (HU24's detached form); all 12 layers at
  most 40% in the detached form and 25% in the plain form; each at the default site (the layer
  output Z^{ℓ+1}) and at ``site="projection"`` (the MSSA input LN₁(Z^ℓ), read off the model's own qkv
  projection: keys ``*_projection``);
- ``srr.measure`` (R, R^c, sparsity at three sites of every layer) runs at >= 80% of plain
  inference throughput (``model(x)`` under ``inference_mode``) over the same batches.

Configurations are timed in alternating rounds (plain, last, all 12, ..., plain, ...) and medians
reported, so a noisy machine slows all alike. Each round also times the **floor**: the arithmetic
no exact implementation can skip — the projections ``Z U``, the Gram matrices, the Cholesky
factorisations and (training) their backward, in float32 with bare torch calls and no checks —
and, for the detached form, the extra input-gradient pass through each regularised layer (at the
projection site: the Grams of LN₁(Z^ℓ) and of the model's A_k, and for the detached form the term's
own ``g W``, ``gᵀX``). The
ratio that floor alone gives is ``bound``: a target below it is out of reach. Synthetic images
(the cost does not depend on the pixels). Usage::

    python -m srr.bench.bench_regularizer                  # CPU, a reduced image count
    python -m srr.bench.bench_regularizer --device cuda    # GPU, 10,000 images
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor

from srr.measurement import SRRRegularizer, measure
from srr.models import create_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _model(device):
    torch.manual_seed(0)
    return create_model("crate_tiny", image_size=32, patch_size=4, num_classes=10).to(device)


def _floor_rates(Z: Tensor, U: Tensor, *, eps: float, backward: bool, exact: bool = True) -> tuple[Tensor, ...]:
    """The arithmetic of R (E1) and R^c (E2) no exact implementation skips, in bare torch calls.

    ``Z (B, N, d)``, ``U (K, d, p)`` with ``p <= N <= d`` (crate_tiny: 64, 65, 384): the projection
    ``[A_kᵀ]_k = Uᵀ Zᵀ``, the smaller Gram matrices, one Cholesky factorisation each; with
    ``backward``, their gradients ``s (I + sG)⁻¹ ·`` carried back to Z and U (E5, E6). Returns
    ``(R, R^c)`` (each ``(B,)``), and with ``backward`` also ``∇_Z (R^c − R)`` and ``∇_U R^c`` summed
    over the batch (``(K, d, p)``): a test checks them against autograd.

    ``exact=False`` is the timed lower bound: ``(I + sG)⁻¹`` (``cholesky_inverse``, 2m³/3 flops, and
    on the CPU far slower than the factorisation) is replaced by a second factorisation of the same
    matrix (m³/3 flops), used in its place in the same matrix products; the values are then wrong.
    """
    K, d, p = U.shape
    N = Z.shape[-2]
    if not p <= N <= d:
        raise ValueError(f"the floor is written for p <= N <= d, got N={N}, d={d}, p={p}")
    X = (U.mT.reshape(K * p, d) @ Z.mT).unflatten(-2, (K, p))  # (B, K, p, N) = A_kᵀ
    values, inverses = [], []
    for G, s in ((Z @ Z.mT, d / (N * eps**2)), (X @ X.mT, p / (N * eps**2))):  # (B, N, N), (B, K, p, p)
        M = G * s
        M.diagonal(dim1=-2, dim2=-1).add_(1.0)
        L = torch.linalg.cholesky_ex(M)[0]
        values.append(L.diagonal(dim1=-2, dim2=-1).log().flatten(1).sum(-1))  # ½ logdet = Σ log L_ii
        if backward:
            inverses.append(s * (torch.cholesky_inverse(L) if exact else torch.linalg.cholesky_ex(M)[0]))
    if not backward:
        return tuple(values)
    grad_R = inverses[0] @ Z  # (B, N, d): α (I + αZZᵀ)⁻¹ Z (E5)
    grad_X = (inverses[1] @ X).flatten(1, 2)  # (B, K·p, N): β (I + βA_kᵀA_k)⁻¹ A_kᵀ
    grad_Z = grad_X.mT @ U.mT.reshape(K * p, d) - grad_R  # (B, N, d): ∇_Z (R^c − R) (E6 − E5)
    grad_U = (grad_X @ Z).sum(0).unflatten(0, (K, p)).mT  # (K, d, p)
    return (*values, grad_Z, grad_U)


def _floor_projection(X: Tensor, A: Tensor, W: Tensor, *, heads: int, eps: float, detached: bool) -> None:
    """The arithmetic of ``site="projection"`` no exact implementation skips, timed as a lower bound.

    ``X = LN₁(Z^ℓ) (B, N, d)``, the model's ``A = X Wᵀ (B, N, K·p)``, ``W (K·p, d)``, ``p <= N <= d``: the
    N×N Gram of X (E1) and the K p×p Grams of the A_k (E2), one Cholesky factorisation each, their
    backward ``s (I + sG)⁻¹ ·`` to X and A (a second factorisation in place of the inverse, as
    ``_floor_rates(exact=False)``); ``detached``: the term's own ``g W`` and ``gᵀX`` (HU24's form keeps the
    term's gradient out of the model's graph).
    """
    N, d = X.shape[-2:]
    heads_A = A.unflatten(-1, (heads, -1)).transpose(-3, -2)  # (B, K, N, p)
    p = heads_A.shape[-1]
    if not p <= N <= d:
        raise ValueError(f"the floor is written for p <= N <= d, got N={N}, d={d}, p={p}")
    inverses = []
    for G, s in ((X @ X.mT, d / (N * eps**2)), (heads_A.mT @ heads_A, p / (N * eps**2))):  # (B, N, N), (B, K, p, p)
        M = G * s
        M.diagonal(dim1=-2, dim2=-1).add_(1.0)
        L = torch.linalg.cholesky_ex(M)[0]
        L.diagonal(dim1=-2, dim2=-1).log().sum((-2, -1) if L.ndim == 4 else -1)
        inverses.append(s * torch.linalg.cholesky_ex(M)[0])  # stands in for s (I + sG)⁻¹
    grad_X = inverses[0] @ X  # (B, N, d)
    grad_A = (heads_A @ inverses[1]).transpose(-3, -2).flatten(-2)  # (B, N, K·p)
    if detached:
        grad_X = grad_X + grad_A @ W  # the term's g W
        grad_A.flatten(0, 1).mT @ X.flatten(0, 1)  # its gᵀX, (K·p, d)


def _extra_pass(out: Tensor, z_detached: Tensor, grad: Tensor) -> None:
    """The detached form's extra input-gradient pass through one layer ``out = f(z_detached)`` (weights
    skipped), on a graph recorded once (the forward is not part of the extra cost)."""
    torch.autograd.grad(out, z_detached, grad, retain_graph=True)


def bench_training(device: torch.device, *, batch: int, rounds: int, autocast: torch.dtype | None) -> dict:
    """Median step time without a regulariser and with each regulariser, plus the floor of each."""
    model = _model(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    # (layers, detach_input, site): HU24's detached form is the default; "plain" lets gradients through
    every = list(range(12))
    configs = {"none": None, "last": ([-1], True, "output"), "all12": (every, True, "output"),
               "last_plain": ([-1], False, "output"), "all12_plain": (every, False, "output"),
               "last_projection": ([-1], True, "projection"), "all12_projection": (every, True, "projection"),
               "all12_projection_plain": (every, False, "projection"),
               "none_qkv_hooked": "hooked"}  # a no-op hook on every qkv: what the model loses to being hooked
    times = {k: [] for k in [*configs, "floor_rates_last", "floor_rates_all12", "extra_pass_last",
                             "extra_pass_all12", "floor_projection_last", "floor_projection_all12",
                             "floor_projection_last_detached", "floor_projection_all12_detached"]}
    with torch.no_grad():
        _, layers = model.forward_layer_tokens(x)
    inputs = [t.input.detach() for t in layers]  # Z^ℓ, each (B, N, d)
    outputs = [t.output.detach().requires_grad_() for t in layers]  # Z^{ℓ+1}
    grad = torch.randn_like(inputs[0])
    detached = [z.requires_grad_() for z in inputs]
    graphs: list[tuple[Tensor, Tensor]] = []  # f_ℓ(Z^ℓ) with its graph, recorded each round after the steps
    subspaces = [U.detach().requires_grad_() for U in model.layer_subspaces()]
    qkv = [block.compression.qkv for block in model.blocks()]
    mssa_inputs = [t.mssa_input.detach() for t in layers]  # X = LN₁(Z^ℓ)
    projections = [F.linear(X, m.weight.detach()) for X, m in zip(mssa_inputs, qkv)]  # the model's A = X Wᵀ
    heads = model.blocks()[0].compression.heads

    def floor_projection(ells, term_backward):
        for ell in ells:
            _floor_projection(mssa_inputs[ell], projections[ell], qkv[ell].weight.detach(), heads=heads, eps=0.1,
                              detached=term_backward)

    class _Hooked:
        def __init__(self):
            self.handles = [m.register_forward_hook(lambda *_: None) for m in qkv]

        def close(self):
            for h in self.handles:
                h.remove()

    def make(config):
        if config is None:
            return None
        if config == "hooked":
            return _Hooked()
        layers_, detach, site = config
        return SRRRegularizer(model, layers=layers_, weight=1e-3, detach_input=detach, site=site)

    def step(reg):
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            loss = F.cross_entropy(model(x), y)
            if isinstance(reg, SRRRegularizer):
                loss = loss + reg()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def timed(fn) -> float:
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - t0

    floors = {"floor_rates_last": lambda: _floor_rates(outputs[-1], subspaces[-1], eps=0.1, backward=True,
                                                       exact=False),
              "floor_rates_all12": lambda: [_floor_rates(Z, U, eps=0.1, backward=True, exact=False)
                                            for Z, U in zip(outputs, subspaces)],
              "extra_pass_last": lambda: _extra_pass(*graphs[-1], grad),
              "extra_pass_all12": lambda: [_extra_pass(*graph, grad) for graph in graphs],
              "floor_projection_last": lambda: floor_projection([-1], False),
              "floor_projection_all12": lambda: floor_projection(every, False),
              "floor_projection_last_detached": lambda: floor_projection([-1], True),
              "floor_projection_all12_detached": lambda: floor_projection(every, True)}
    for rep in range(rounds + 1):  # round 0 warms every configuration up
        for name, config in configs.items():
            # one regulariser at a time: the others' hooks are closed
            reg = make(config)
            elapsed = timed(lambda: step(reg))
            if rep > 0:
                times[name].append(elapsed)
            if reg is not None:
                reg.close()
        graphs[:] = [(block(z), z) for block, z in zip(model.blocks(), detached)]  # the optimizer moved the weights
        for name, fn in floors.items():
            elapsed = timed(fn)
            if rep > 0:
                times[name].append(elapsed)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = {k: med[k] / med["none"] for k in configs if k != "none"}
    plain = med["none"]
    bound = {"last": 1 + (med["floor_rates_last"] + med["extra_pass_last"]) / plain,
             "all12": 1 + (med["floor_rates_all12"] + med["extra_pass_all12"]) / plain,
             "last_plain": 1 + med["floor_rates_last"] / plain, "all12_plain": 1 + med["floor_rates_all12"] / plain,
             "last_projection": 1 + med["floor_projection_last_detached"] / plain,
             "all12_projection": 1 + med["floor_projection_all12_detached"] / plain,
             "all12_projection_plain": 1 + med["floor_projection_all12"] / plain}
    return {"rounds": rounds, "step_s": med, "ratio": ratio, "bound": bound,
            "ratio_last": ratio["last"], "ratio_all12": ratio["all12_plain"], "ratio_all12_detached": ratio["all12"],
            "ratio_last_plain": ratio["last_plain"],
            "bound_last": bound["last"], "bound_all12": bound["all12_plain"], "bound_all12_detached": bound["all12"],
            "ratio_last_projection": ratio["last_projection"],
            "ratio_all12_projection": ratio["all12_projection_plain"],
            "ratio_all12_projection_detached": ratio["all12_projection"],
            "bound_last_projection": bound["last_projection"],
            "bound_all12_projection": bound["all12_projection_plain"],
            "bound_all12_projection_detached": bound["all12_projection"]}


def bench_measure(device: torch.device, *, images: int, batch: int, rounds: int,
                  autocast: torch.dtype | None) -> dict:
    """Images per second of plain inference and of ``srr.measure`` over the same batches, and the floor's."""
    model = _model(device).eval()
    g = torch.Generator(device="cpu").manual_seed(1)
    data = torch.randn(images, 3, 32, 32, generator=g).to(device)
    batches = list(data.split(batch))
    subspaces = [U.detach() for U in model.layer_subspaces()]

    def plain(batches=batches):
        with torch.inference_mode(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            for x in batches:
                model(x)
        _sync(device)

    def measured(batches=batches):
        measure(model, batches, progress=False, autocast=autocast)
        _sync(device)

    def floor(batches=batches):
        """Plain inference plus the rates' bare arithmetic at the three sites (R once per distinct set)."""
        with torch.inference_mode():
            for x in batches:
                _, layers = model.forward_layer_tokens(x)
                for t, U in zip(layers, subspaces):
                    for Z in (t.input, t.half, t.output):
                        _floor_rates(Z, U, eps=0.1, backward=False)
        _sync(device)

    plain(batches[:2]), measured(batches[:2]), floor(batches[:2])  # warm-up
    times = {"plain": [], "measure": [], "floor": []}
    for _ in range(rounds):
        for name, fn in (("plain", plain), ("measure", measured), ("floor", floor)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"images": images, "rounds": rounds, "images_per_s": {k: images / v for k, v in med.items()},
            "throughput_ratio": med["plain"] / med["measure"], "bound": med["plain"] / med["floor"]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None,
                        help="alternating rounds: timed steps per configuration (default 7; at least 7 for a headline)")
    parser.add_argument("--images", type=int, default=None, help="images measured (default: 10,000 on GPU, 256 on CPU)")
    parser.add_argument("--measure-batch", type=int, default=None, help="default: 500 on GPU, 64 on CPU")
    parser.add_argument("--measure-rounds", type=int, default=None, help="default: --steps, else 3 on GPU, 7 on CPU")
    parser.add_argument("--autocast", choices=["none", "bf16"], default="none")
    parser.add_argument("--skip", choices=["training", "measure"], default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    autocast = torch.bfloat16 if args.autocast == "bf16" else None
    result = {"device": torch.cuda.get_device_name(0) if gpu else f"cpu ({torch.get_num_threads()} threads)",
              "autocast": args.autocast}
    if args.skip != "training":
        result["training"] = bench_training(device, batch=args.batch, rounds=args.steps or (20 if gpu else 7),
                                            autocast=autocast)
        t = result["training"]
        times = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in t["step_s"].items())
        print(f"training step, batch {args.batch}, median of {t['rounds']} alternating rounds: " + times)
        print("  ratios to no regulariser: " + ", ".join(f"{k} {v:.3f}" for k, v in t["ratio"].items())
              + "  (targets: last* <= 1.05, all12* (detached) <= 1.4, all12*_plain <= 1.25)")
        print("  floor (bare rates + extra pass): " + ", ".join(f"{k} {v:.3f}" for k, v in t["bound"].items()))
    if args.skip != "measure":
        result["measure"] = bench_measure(device, images=args.images or (10_000 if gpu else 256),
                                          batch=args.measure_batch or (500 if gpu else 64),
                                          rounds=args.measure_rounds or args.steps or (3 if gpu else 7),
                                          autocast=autocast)
        m = result["measure"]
        print(f"measure over {m['images']} images, median of {m['rounds']} rounds: "
              f"plain {m['images_per_s']['plain']:.0f} img/s, measure {m['images_per_s']['measure']:.0f} img/s | "
              f"ratio = {m['throughput_ratio']:.3f} (target >= 0.80; floor of the bare rates: {m['bound']:.3f})")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
