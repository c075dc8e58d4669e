"""The 224-px ImageNet training pipeline: ``srr``'s loader against torchvision's ``ImageFolder`` + ``DataLoader``.

Writes JPEGs at ImageNet's typical size (500 x 375 and 375 x 500, quality 90, textured so that they weigh
what photographs do, ~100 KB) into a temporary folder, then times one pass over them, in this process
(``num_workers=0``: images/s of one worker), of

- ``srr``: ``load_dataset("imagenet", augment=True)`` through :class:`srr.train.data.TrainBatches` (per-sample
  seeds, collation): torchvision's libjpeg-turbo decoder, then the v2 transforms on the uint8 tensor;
- the base: ``torchvision.datasets.ImageFolder`` (PIL decode) + ``DataLoader`` with the same v2 transforms:
  ``RandomResizedCrop(224, scale=(0.08, 1))``, ``RandomHorizontalFlip``, ``ToImage``, ``ToDtype``,
  ``Normalize``.

The two alternate over ``--rounds`` rounds (a shared machine's load falls on both); each rate is the median
over rounds and ``ratio`` = srr / base (goal >= 1.0: the pipeline adds no overhead over its base). With CUDA,
``decode_device="cuda"`` (batched nvJPEG decode, transforms on the GPU) is timed as well, against ``srr``'s
CPU path.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SIZES = ((500, 375), (375, 500))  # ImageNet's most common landscape and portrait sizes


def write_jpegs(root: Path, n: int, *, classes: int = 4, seed: int = 0) -> float:
    """``n`` JPEGs under ``root/train/<class>/`` and one per class under ``root/val/``; their mean size in KiB."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = []
    for split, count in (("train", n), ("val", classes)):
        for i in range(count):
            folder = root / split / f"n{i % classes:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            w, h = SIZES[i % 2]
            base = Image.fromarray(rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)).resize((w, h))
            texture = rng.normal(0, 18, (h, w, 3))
            image = Image.fromarray(np.clip(np.asarray(base, np.float64) + texture, 0, 255).astype(np.uint8))
            path = folder / f"{i:06d}.JPEG"
            image.save(path, quality=90)
            sizes.append(path.stat().st_size)
    return float(np.mean(sizes)) / 1024


def _time(batches) -> float:
    start, images = time.perf_counter(), 0
    for x, _ in batches:
        images += x.shape[0]
    return images / (time.perf_counter() - start)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256, help="training JPEGs written and read per round")
    parser.add_argument("--size", type=int, default=224, help="training crop size S")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of the two loaders")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: a loader worker's)")
    parser.add_argument("--device", default="cpu", help="cuda: also time decode_device='cuda'")
    parser.add_argument("--quick", action="store_true", help="a few images, one round (smoke test)")
    parser.add_argument("--out", type=Path, help="also write {command, commit, machine, result} as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.rounds, args.batch = 8, 1, 4
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    from srr.data import Augmentation, load_dataset
    from srr.data.augment import RRC_SCALE
    from srr.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD
    from srr.train.data import TrainBatches

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="srr-bench-loader-") as tmp:
            root = Path(tmp)
            kib = write_jpegs(root, args.images)
            ours = load_dataset("imagenet", data_dir=root, image_size=args.size, augment=True,
                                augmentation=Augmentation(crop="rrc"))
            batches = TrainBatches(ours, batch_size=args.batch, seed=0, num_workers=0)
            same = v2.Compose([v2.RandomResizedCrop(args.size, scale=RRC_SCALE, antialias=True),
                               v2.RandomHorizontalFlip(), v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                               v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
            base = torch.utils.data.DataLoader(ImageFolder(root / "train", transform=same), batch_size=args.batch,
                                               shuffle=True, num_workers=0)
            gpu = None
            if args.device.startswith("cuda") and torch.cuda.is_available():
                encoded = load_dataset("imagenet", data_dir=root, image_size=args.size, augment=True,
                                       augmentation=Augmentation(crop="rrc"), decode_device="cuda")
                gpu = TrainBatches(encoded, batch_size=args.batch, seed=0, num_workers=0)
            rates = {"srr": [], "torchvision": [], "srr_gpu_decode": []}
            _time(batches.epoch(0))  # warm-up: imports, first allocations
            _time(base)
            for r in range(args.rounds):
                rates["srr"].append(_time(batches.epoch(r)))
                rates["torchvision"].append(_time(base))
                if gpu is not None:
                    rates["srr_gpu_decode"].append(_time(gpu.epoch(r)))
                    torch.cuda.synchronize()
    finally:
        torch.set_num_threads(previous_threads)
    median = {k: statistics.median(v) for k, v in rates.items() if v}
    result = {
        "images": args.images, "image_sizes": [list(s) for s in SIZES], "mean_jpeg_KiB": kib, "crop": args.size,
        "batch": args.batch, "rounds": args.rounds, "threads": args.threads, "workers": 0,
        "transforms": "RandomResizedCrop(S, scale=(0.08, 1)), RandomHorizontalFlip, to float, Normalize",
        "images_per_s_per_worker": median, "rounds_images_per_s": {k: v for k, v in rates.items() if v},
        "ratio": median["srr"] / median["torchvision"],
    }
    if "srr_gpu_decode" in median:
        result["gpu_decode_vs_cpu"] = median["srr_gpu_decode"] / median["srr"]
    else:
        result["gpu_decode_vs_cpu"] = None
        result["gpu_decode_note"] = "not measured: needs --device cuda on a machine with CUDA"
    if args.out is not None:
        _write(args.out, argv, result)
    print(f"srr {median['srr']:.1f} images/s per worker, torchvision ImageFolder + DataLoader "
          f"{median['torchvision']:.1f}: ratio {result['ratio']:.3f} ({args.images} JPEGs of ~{kib:.0f} KiB, "
          f"{args.rounds} rounds, median)")
    return result


def _machine() -> dict:
    """CPU model, cores, torch threads and version (what ``srr bench --json`` records)."""
    import platform

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": "cpu"}


def _write(path: Path, argv, result: dict) -> None:
    import json
    import subprocess
    import sys

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "unknown"
    used = ["srr/data/imagefolder.py", "srr/data/augment.py", "srr/data/seeding.py", "srr/data/sampler.py",
            "srr/data/registry.py", "srr/train/data.py", "srr/bench/bench_loader.py"]  # the code this bench times
    dirty = subprocess.run(["git", "status", "--porcelain", "--", *used], capture_output=True, text=True,
                           cwd=Path(__file__).parents[2]).stdout.strip()
    args = sys.argv[1:] if argv is None else list(argv)
    payload = {"command": " ".join(["python -m srr.bench.bench_loader", *args]),
               "commit": commit + (f" with uncommitted changes to {', '.join(sorted(set(dirty.split()) - {'M', '??'}))}"
                                  if dirty else ""),
               "machine": _machine(), "load_average": list(os.getloadavg()), "result": result}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
