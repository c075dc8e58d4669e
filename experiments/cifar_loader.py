"""Does the CIFAR-10 loader keep up with the model? Decode time, cached start time, images/s.

Measured in one process: (1) decoding the 60,000 JPEGs into the uint8 cache (a fresh cache
folder), (2) a second start that reads the cache (both splits, standardised floats in memory),
(3) the loader's rate — drawing shuffled batches of 128 and applying the crop + flip augmentation,
as ``srr train`` does — and (4) the model's training rate (forward + backward + Adam step) of
``crate_micro`` on the same batches. The loader starves the model only if (3) < (4).

Run: ``python -m experiments.cifar_loader [--threads 2]`` or ``--quick`` (test split only).
Writes ``summary.json``.
"""
from __future__ import annotations

import tempfile
import time

import torch

from experiments._common import parse_args, summary, write_json

NAME = "cifar_loader"


def _rate(fn, batch: int, repeats: int) -> float:
    fn()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return batch * repeats / (time.perf_counter() - started)


def main(argv=None) -> dict:
    from experiments._cifar import data_dir
    from srr.data.cifar import decoded_split, load_cifar
    from srr.models import create_model

    args = parse_args(NAME, __doc__, argv, extra=[
        (("--data-dir",), dict(default=None, help="CIFAR-10 folder (default ../shared/data/cifar10)"))])
    started = time.perf_counter()
    root = data_dir(args.data_dir)
    splits = ("test",) if args.quick else ("train", "test")
    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        for split in splits:
            decoded_split("cifar10", split, data_dir=root, cache_dir=cache)
        decode_s = time.perf_counter() - t
        t = time.perf_counter()
        datasets = {split: load_cifar("cifar10", split, data_dir=root, cache_dir=cache, augment=True)
                    for split in splits}
        cached_s = time.perf_counter() - t
    train = datasets[splits[0]]
    images, labels = train.tensors
    batch, repeats = 128, 5 if args.quick else 40
    g = torch.Generator().manual_seed(0)

    def draw():
        idx = torch.randint(0, len(labels), (batch,), generator=g)
        return train.augment_batch(images[idx]), labels[idx]

    loader_rate = _rate(draw, batch, repeats)
    model = create_model("crate_micro")
    opt = torch.optim.Adam(model.parameters(), 1e-3)

    def step():
        x, y = draw()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model_rate = _rate(step, batch, 2 if args.quick else 8)
    payload = summary(NAME, args, started, data_dir=str(root), splits=list(splits),
                      images=sum(len(d) for d in datasets.values()), decode_seconds=decode_s,
                      cached_start_seconds=cached_s, loader_images_per_s=loader_rate,
                      model="crate_micro (d 128, depth 6, 65 tokens), Adam step, batch 128",
                      model_train_images_per_s=model_rate, loader_over_model=loader_rate / model_rate)
    write_json(args.out / "summary.json", payload)
    print(f"decode {decode_s:.1f} s, cached start {cached_s:.2f} s, loader {loader_rate:.0f} img/s, "
          f"model {model_rate:.0f} img/s (loader/model {loader_rate / model_rate:.1f}×)")
    return payload


if __name__ == "__main__":
    main()
