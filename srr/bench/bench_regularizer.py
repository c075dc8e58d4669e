"""Cost of SRR regularisation and measurement on CRATE-Tiny (32×32 images, patch 4, 10 classes).

Targets (issue 5):
- a training step (forward, CE + reg(), backward, AdamW) at batch 128 regularising the last
  layer costs at most 5% more than without the regulariser; all 12 layers at most 25%;
- ``srr.measure`` (R, R^c, sparsity at three sites of every layer) runs at >= 80% of plain
  inference throughput (``model(x)`` under ``inference_mode``) over the same batches.

Configurations are timed interleaved (A, B, C, A, B, C, ...) and medians reported, so a noisy
machine slows all alike. Synthetic images (the cost does not depend on the pixels). Usage::

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

from srr.measurement import SRRRegularizer, measure
from srr.models import create_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _model(device):
    torch.manual_seed(0)
    return create_model("crate_tiny", image_size=32, patch_size=4, num_classes=10).to(device)


def bench_training(device: torch.device, *, batch: int, steps: int, autocast: torch.dtype | None) -> dict:
    """Median step time without a regulariser, with the last layer, with all 12 layers."""
    model = _model(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    # (layers, detach_input): HU24's detached form is the default; "plain" lets gradients through
    configs = {"none": None, "last": ([-1], True), "all12": (list(range(12)), True),
               "last_plain": ([-1], False), "all12_plain": (list(range(12)), False)}
    times = {k: [] for k in configs}

    def step(reg):
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            loss = F.cross_entropy(model(x), y)
            if reg is not None:
                loss = loss + reg()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for rep in range(steps + 1):  # rep 0 warms every configuration up
        for name, config in configs.items():
            # one regulariser at a time: the others' hooks are closed
            reg = (None if config is None
                   else SRRRegularizer(model, layers=config[0], weight=1e-3, detach_input=config[1]))
            _sync(device)
            t0 = time.perf_counter()
            step(reg)
            _sync(device)
            if rep > 0:
                times[name].append(time.perf_counter() - t0)
            if reg is not None:
                reg.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"step_s": med, "ratio": {k: v / med["none"] for k, v in med.items() if k != "none"}}


def bench_measure(device: torch.device, *, images: int, batch: int, reps: int, autocast: torch.dtype | None) -> dict:
    """Images per second of plain inference and of ``srr.measure`` over the same batches."""
    model = _model(device).eval()
    g = torch.Generator(device="cpu").manual_seed(1)
    data = torch.randn(images, 3, 32, 32, generator=g).to(device)
    batches = list(data.split(batch))

    def plain(batches=batches):
        with torch.inference_mode(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            for x in batches:
                model(x)
        _sync(device)

    def measured(batches=batches):
        measure(model, batches, progress=False, autocast=autocast)
        _sync(device)

    plain(batches[:2]), measured(batches[:2])  # warm-up
    times = {"plain": [], "measure": []}
    for _ in range(reps):
        for name, fn in (("plain", plain), ("measure", measured)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"images": images, "images_per_s": {k: images / v for k, v in med.items()},
            "throughput_ratio": med["plain"] / med["measure"]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per configuration")
    parser.add_argument("--images", type=int, default=None, help="images measured (default: 10,000 on GPU, 256 on CPU)")
    parser.add_argument("--measure-batch", type=int, default=None, help="default: 500 on GPU, 64 on CPU")
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
        result["training"] = bench_training(device, batch=args.batch, steps=args.steps or (20 if gpu else 2),
                                            autocast=autocast)
        t = result["training"]
        times = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in t["step_s"].items())
        print(f"training step, batch {args.batch}: " + times)
        print("  ratios to no regulariser: " + ", ".join(f"{k} {v:.3f}" for k, v in t["ratio"].items())
              + "  (targets: last <= 1.05, all12 <= 1.25)")
    if args.skip != "measure":
        result["measure"] = bench_measure(device, images=args.images or (10_000 if gpu else 256),
                                          batch=args.measure_batch or (500 if gpu else 64), reps=3 if gpu else 1,
                                          autocast=autocast)
        m = result["measure"]
        print(f"measure over {m['images']} images: plain {m['images_per_s']['plain']:.0f} img/s, "
              f"measure {m['images_per_s']['measure']:.0f} img/s | "
              f"ratio = {m['throughput_ratio']:.3f} (target >= 0.80)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
