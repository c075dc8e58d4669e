"""Does data loading keep up with training? Images per second of the loader alone against the
training step alone (forward, loss with the SRR term, backward, update), on a run's settings."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from srr.models import create_model

from .config import TrainConfig
from .data import TrainBatches, load_run_data
from .guards import cpu_threads
from .optim import build_optimizer
from .srr_terms import build_regularizer


def loader_vs_model(config: TrainConfig | None = None, *, steps: int = 10) -> dict:
    """``{"loader_images_per_s", "model_images_per_s", "ratio"}`` (ratio > 1: the loader is faster).

    The loader is timed over one full epoch of ``config``'s training data; the model over
    ``steps`` training steps on the first batches (after one warm-up step), on ``config.device``.
    """
    from .distributed import resolve_device

    config = config or TrainConfig(measure_samples=0)
    device = resolve_device(config.device)
    with cpu_threads(config.threads):
        data = load_run_data(config.replace(measure_samples=0))
        batches = TrainBatches(data.train, batch_size=config.batch_size, seed=config.seed,
                               num_workers=config.num_workers)
        start, images = time.perf_counter(), 0
        kept = []
        for x, y in batches.epoch(0):
            images += len(y)
            if len(kept) < steps + 1:
                kept.append((x, y))
        loader = images / (time.perf_counter() - start)

        info = data.info
        model = create_model(config.model, num_classes=info.num_classes, image_size=info.image_size,
                             in_chans=info.in_chans, **config.model_overrides()).to(device)
        optimizer = build_optimizer(model, config)
        regularizer = build_regularizer(model, config)

        def step(x, y):
            x, y = x.to(device), torch.as_tensor(y).to(device)
            loss = F.cross_entropy(model(x), y, label_smoothing=config.label_smoothing)
            if regularizer is not None:
                loss = loss + regularizer()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        step(*kept[0])
        timed = kept[1:] or kept
        start = time.perf_counter()
        for x, y in timed:
            step(x, y)
        model_rate = sum(len(y) for _, y in timed) / (time.perf_counter() - start)
        if regularizer is not None:
            regularizer.close()
    return {"loader_images_per_s": loader, "model_images_per_s": model_rate, "ratio": loader / model_rate}
