"""Where a training step's time goes: srr's CRATE, the public CRATE code and timm's ViT, op by op.

The bound behind issue 12's item 5 (training ≥ 1.6× the public code, ≥ 1.1× timm's ViT of equal
parameters). Each model's training step (forward, cross-entropy, backward, AdamW) is profiled with
``torch.profiler`` in alternating rounds, and every op's self time is put in one category:

- ``matmul``: ``mm``, ``addmm``, oneDNN's fused linear: the linear maps (token-wise);
- ``attention``: SDPA and its backward; the public code's explicit ``bmm`` products, softmax and backward;
- ``layernorm``: LayerNorm and its backward;
- ``optimizer``: the AdamW update (``_foreach_*`` and everything under ``Optimizer.step``);
- ``other``: element-wise ops, copies, fills, reductions, activation backwards; its largest ops are kept
  per model (``other_top_profiled_ms``, each named ``op < caller``, e.g. SDPA backward's zero-fills).

Medians over rounds, per category, in ms; the unprofiled step times come from alternating rounds run
before the profiled ones, and each category is reported as its share of the unprofiled step.
``crate_tiny`` (d 384, 6 heads) and ``vit_tiny_patch16_224`` (d 192, 3 heads, MLP 768) have the same
linear-map work per token (12·192² = 3·384² multiply-adds per layer): the derived quantities say
how far the step can go with its matmuls at the time they take, e.g. ``crate_nonmatmul_for_1_1x_vit``:
the time all of CRATE's other ops would have to fit in for the 1.1× target. Usage::

    python -m srr.bench.profile_train --threads 2 --rounds 5
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from srr.bench.bench_models import PublicCRATE, timm_vit
from srr.models import create_model, load_public_state_dict

CATEGORIES = ("matmul", "attention", "layernorm", "optimizer", "other")
TOP_OTHER = 10  # the largest ops of the "other" category kept per model (median profiled ms over rounds)
_MATMUL = ("aten::mm", "aten::addmm", "aten::addmm_", "mkldnn::_linear_pointwise")
_ATTENTION = ("scaled_dot_product", "aten::bmm", "aten::baddbmm", "aten::_softmax", "aten::_softmax_backward_data")


def category(name: str, in_optimizer: bool) -> str:
    """The category of a profiled op (see the module docstring)."""
    if in_optimizer or name.startswith("aten::_foreach"):
        return "optimizer"
    if name in _MATMUL:
        return "matmul"
    if any(key in name for key in _ATTENTION):
        return "attention"
    if "layer_norm" in name:
        return "layernorm"
    return "other"


def _under_optimizer(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer.step"):
            return True
        parent = parent.cpu_parent
    return False


def profile_step(step) -> tuple[dict[str, float], dict[str, float]]:
    """Self CPU time (ms) of one call of ``step`` per category (leaf ops only, no double counting), and
    the ``other`` category per op, named ``op < caller``
    (e.g. ``aten::fill_ < aten::_scaled_dot_product_flash_attention_for_cpu_backward``)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    totals = dict.fromkeys(CATEGORIES, 0.0)
    other: dict[str, float] = {}
    for event in prof.events():
        if event.name.startswith(("Optimizer.", "autograd::", "## ")) or event.self_cpu_time_total <= 0:
            continue
        cat = category(event.name, _under_optimizer(event))
        totals[cat] += event.self_cpu_time_total / 1e3
        if cat == "other":
            key = f"{event.name} < {_caller(event)}"
            other[key] = other.get(key, 0.0) + event.self_cpu_time_total / 1e3
    return totals, other


def _caller(event) -> str:
    """The nearest enclosing op or autograd node that says where an element-wise op comes from."""
    parent = event.cpu_parent
    while parent is not None and parent.name.startswith(("aten::zero", "aten::clone", "aten::to", "aten::_to_copy",
                                                         "aten::contiguous")):
        parent = parent.cpu_parent
    if parent is None:
        return "forward"
    name = parent.name.removeprefix("autograd::engine::evaluate_function: ")[:60]
    return "autograd" if name == event.name else name  # an autograd node's own bookkeeping


def _train_step(model, x, y):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def run(*, batch: int = 128, rounds: int = 5, timm_model: str = "vit_tiny_patch16_224") -> dict:
    torch.manual_seed(0)
    crate = create_model("crate_tiny", image_size=32, patch_size=4, num_classes=10)
    public = PublicCRATE(crate.config)
    load_public_state_dict(crate, public.state_dict())
    models = {"crate": crate, "public": public}
    vit, note = timm_vit(timm_model, crate.config)
    if vit is not None:
        models["vit"] = vit
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    steps = {name: _train_step(m, x, y) for name, m in models.items()}
    for step in steps.values():  # warm-up: allocator, oneDNN primitives
        step(), step()
    wall = {name: [] for name in steps}
    profiled = {name: [] for name in steps}
    for _ in range(rounds):  # timed first, unprofiled: the profiler's own allocations perturb the next step
        for name, step in steps.items():
            t = time.perf_counter()
            step()
            wall[name].append((time.perf_counter() - t) * 1e3)
    for _ in range(rounds):
        for name, step in steps.items():
            profiled[name].append(profile_step(step))
    out = {"batch": batch, "rounds": rounds, "threads": torch.get_num_threads(), "timm": note, "models": {}}
    for name in steps:
        cats = {c: statistics.median(p[c] for p, _ in profiled[name]) for c in CATEGORIES}
        ops = {k for _, other in profiled[name] for k in other}
        other = {k: statistics.median(o.get(k, 0.0) for _, o in profiled[name]) for k in ops}
        top = dict(sorted(other.items(), key=lambda kv: -kv[1])[:TOP_OTHER])
        out["models"][name] = {"step_ms": statistics.median(wall[name]), "profiled_ms": cats,
                               "profiled_total_ms": sum(cats.values()), "other_top_profiled_ms": top}
    m = out["models"]

    def scaled(name: str, cat: str) -> float:  # a category's share of the unprofiled step
        return m[name]["step_ms"] * m[name]["profiled_ms"][cat] / m[name]["profiled_total_ms"]

    crate_mm = scaled("crate", "matmul")
    derived = {"crate_matmul_ms": crate_mm, "crate_nonmatmul_ms": m["crate"]["step_ms"] - crate_mm,
               "public_matmul_ms": scaled("public", "matmul"),
               "train_vs_public": m["public"]["step_ms"] / m["crate"]["step_ms"],
               # the public code's other work at its own cost, srr's matmuls at theirs: what removing 2 of
               # the 5 token-wise matmuls (E10') alone buys
               "train_vs_public_if_only_matmuls_differ":
                   m["public"]["step_ms"] / (m["public"]["step_ms"] - scaled("public", "matmul") + crate_mm),
               "crate_nonmatmul_for_1_6x_public": m["public"]["step_ms"] / 1.6 - crate_mm}
    if "vit" in m:
        vit_mm = scaled("vit", "matmul")
        derived.update({"vit_matmul_ms": vit_mm, "vit_nonmatmul_ms": m["vit"]["step_ms"] - vit_mm,
                        "train_vs_vit": m["vit"]["step_ms"] / m["crate"]["step_ms"],
                        "crate_nonmatmul_for_1_1x_vit": m["vit"]["step_ms"] / 1.1 - crate_mm,
                        "train_vs_vit_if_crate_nonmatmul_were_vits":
                            m["vit"]["step_ms"] / (crate_mm + m["vit"]["step_ms"] - vit_mm)})
    out["derived"] = derived
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu only: the categories are CPU self times")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--timm-model", default="vit_tiny_patch16_224")
    args = ap.parse_args(argv)
    if args.device != "cpu":
        print(f"not measured on {args.device}: the profile reads CPU self times (run it with --device cpu)")
        return {}
    if args.threads:
        torch.set_num_threads(args.threads)
    out = run(batch=args.batch, rounds=args.rounds, timm_model=args.timm_model)
    print(f"training step, batch {out['batch']}, {out['threads']} threads, median of {out['rounds']} rounds "
          f"(ms; categories scaled from the profiled step)")
    print(f"{'model':<8} {'step':>8} " + " ".join(f"{c:>10}" for c in CATEGORIES))
    for name, r in out["models"].items():
        share = r["step_ms"] / r["profiled_total_ms"]
        print(f"{name:<8} {r['step_ms']:8.0f} " + " ".join(f"{r['profiled_ms'][c] * share:10.0f}" for c in CATEGORIES))
    for k, v in out["derived"].items():
        print(f"  {k:<44} {v:8.3f}")
    for name, r in out["models"].items():
        print(f"{name}: largest 'other' ops (profiled ms)")
        for op, ms in r["other_top_profiled_ms"].items():
            print(f"  {ms:8.1f}  {op}")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
