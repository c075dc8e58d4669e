"""The static memory of each ``srr train --recipe``: weights, gradients, optimiser state and EMA copy.

Per process, in float32, for the recipe's model at its dataset's image size (224 px for ImageNet, 32 for
CIFAR): ``P`` parameters take ``4P`` bytes of weights, ``4P`` of gradients, ``8P`` of Adam/AdamW state
(two moments), ``4P`` of Lion or SGD-momentum state, and ``4P`` more for an EMA copy. Activations are
not counted: they depend on the per-process batch, ``--amp``, ``--grad-checkpointing`` and the device,
and were not measured (no GPU was available). Models are built on the ``meta`` device: nothing is
allocated.

Run: ``python -m experiments.recipe_memory``. Writes ``memory.csv``, ``memory.md`` and ``summary.json``.
"""
from __future__ import annotations

import time

import torch

from experiments._common import markdown_table, parse_args, summary, write_csv, write_json
from srr.models import create_model
from srr.train.recipes import RECIPES, recipe_config

NAME = "recipe_memory"
STATE_BYTES = {"adam": 8, "adamw": 8, "lion": 4, "sgd": 4}  # optimiser state per parameter (float32)
IMAGE = {"imagenet": (224, 1000), "cifar10": (32, 10), "cifar100": (32, 100)}


def rows() -> list[dict]:
    out = []
    for name in RECIPES:
        config = recipe_config(name)
        image_size, classes = IMAGE[config.dataset]
        with torch.device("meta"):
            model = create_model(config.model, num_classes=classes, image_size=image_size, in_chans=3,
                                 **config.model_overrides())
        params = sum(p.numel() for p in model.parameters())
        weights = grads = 4 * params
        state = STATE_BYTES[config.optimizer] * params
        ema = 4 * params if config.ema_decay is not None else 0
        gib = 1024 ** 3
        out.append({"recipe": name, "model": config.model, "variant": config.variant or "crate",
                    "image_size": image_size, "params_M": round(params / 1e6, 2), "optimizer": config.optimizer,
                    "weights_GiB": round(weights / gib, 3), "grads_GiB": round(grads / gib, 3),
                    "optimizer_state_GiB": round(state / gib, 3), "ema_GiB": round(ema / gib, 3),
                    "static_total_GiB": round((weights + grads + state + ema) / gib, 3)})
    return out


def main(argv=None) -> dict:
    args = parse_args(NAME, __doc__, argv)
    started = time.perf_counter()
    table = rows()
    write_csv(args.out / "memory.csv", table)
    (args.out / "memory.md").write_text(markdown_table(table, list(table[0])) + "\n")
    payload = summary(NAME, args, started, rows=table, note="static memory only; activations not measured")
    write_json(args.out / "summary.json", payload)
    return payload


if __name__ == "__main__":
    main()
