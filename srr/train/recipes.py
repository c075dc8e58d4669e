"""Named training recipes: the settings a paper trained with, as ``TrainConfig`` overrides.

``srr train --recipe NAME`` starts from the recipe's settings; every option given explicitly on the
command line wins over the recipe's value. ``config.json`` records ``recipe`` and the resolved values
of every field, so a run says both where its settings came from and what they were. In code:
``recipe_config("hu24-cifar", epochs=1)``.

Each recipe cites its source; a value the source does not give is named in the source text as "not
found" and left at ``srr``'s default. Every setting is a ``TrainConfig`` field (the data pipeline's
``train_crop``, ``randaugment``, ``random_erasing``, ``mixup``, ``cutmix``, ``repeated_aug`` and the model's
``drop_path`` included; ``tests/test_recipes.py`` checks it), so a run applies every setting it claims.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .config import TrainConfig


@dataclass(frozen=True)
class Recipe:
    """One paper's settings: ``settings`` are ``TrainConfig`` fields; ``source`` says where each came from."""

    name: str
    summary: str
    source: str
    settings: dict = field(default_factory=dict)


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe(
        name="yu23-imagenet",
        summary="CRATE-B/16 on ImageNet-1K from scratch with Lion (YU23's headline run)",
        source=("Yu et al. 2023, White-Box Transformers via Sparse Rate Reduction (NeurIPS), ImageNet-1K "
                "training as restated in srr issue 20: CRATE-B/16, Lion, lr 2.4e-4, weight decay 0.5, global "
                "batch 2048, 150 epochs, 5 warm-up epochs, label smoothing 0.1, RandomResizedCrop + flip. "
                "Not found: Lion's betas (Lion's own 0.9, 0.99 kept), the cosine floor (srr's 1e-5 kept), "
                "gradient clipping (srr's 1.0 kept); per-process batch 128 is ours (16 GPUs x 128 = 2048)."),
        settings=dict(model="crate_base", patch_size=16, dataset="imagenet", optimizer="lion", lr=2.4e-4,
                      weight_decay=0.5, batch_size=128, global_batch=2048, lr_scaling="none", epochs=150,
                      warmup=5.0, label_smoothing=0.1, srr_weight=0.0, train_crop="rrc"),
    ),
    Recipe(
        name="hu24-cifar",
        summary="CRATE-Tiny on CIFAR-10 with the SRR regulariser on the last layer (HU24 §6)",
        source=("Hu et al. 2024, sparse rate reduction as a regulariser (HU24 §6), as restated in srr issue 20: "
                "CRATE-Tiny, Adam lr 1e-4, batch 128, 200 epochs, RandAugment, SRR eta 1e-3 on the last layer. "
                "Not found: the patch size (4 chosen: 64 tokens at 32 px, as crate_micro), RandAugment's N,M "
                "(2,9 chosen: torchvision's defaults), weight decay, warm-up and label smoothing (srr's "
                "defaults kept: 0.05, 2 epochs, 0.1)."),
        settings=dict(model="crate_tiny", patch_size=4, dataset="cifar10", optimizer="adam", lr=1e-4,
                      batch_size=128, global_batch=128, epochs=200, srr_weight=1e-3, srr_layers="last",
                      randaugment="2,9"),
    ),
    Recipe(
        name="tost-imagenet",
        summary="ToST-S12/16 (TSSA attention) on ImageNet-1K, XCiT/DeiT-style recipe",
        source=("RobinWu218/ToST tost_vision/README.md (commit 071ea98): ToST-S12/16 on 8 GPUs, --batch-size "
                "128 per GPU, --drop-path 0.05, --epochs 400; the README says the code is based on XCiT, whose "
                "main.py defaults (facebookresearch/xcit main.py, commit 177cefa) give the rest: AdamW, "
                "lr 5e-4 x global batch / 512 (= lr 2.5e-4 with --lr-scaling linear, base 256), weight decay "
                "0.05, 5 warm-up epochs, min lr 1e-5, label smoothing 0.1, no gradient clipping, model EMA "
                "0.99996 (timm ModelEma, no warm-up), RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, "
                "mixup 0.8, cutmix 1.0, repeated augmentation on. Not found: the repeat count (3 assumed: "
                "DeiT's RASampler default). Model: ToST-S12 is 384-d with 12 layers; the nearest registry entry "
                "is crate_tiny (384-d, 12 layers, 6 heads) with variant tost -- XCiT-S12 has 8 heads."),
        settings=dict(model="crate_tiny", variant="tost", patch_size=16, dataset="imagenet", optimizer="adamw",
                      lr=2.5e-4, lr_scaling="linear", weight_decay=0.05, batch_size=128, global_batch=1024,
                      epochs=400, warmup=5.0, min_lr=1e-5, label_smoothing=0.1, grad_clip=None,
                      ema_decay=0.99996, ema_warmup=False, srr_weight=0.0, train_crop="rrc",
                      randaugment="rand-m9-mstd0.5-inc1", random_erasing=0.25, mixup=0.8, cutmix=1.0, repeated_aug=3,
                      drop_path=0.05),
    ),
    Recipe(
        name="crate-alpha-finetune",
        summary="CRATE-α-B/16 fine-tuned on ImageNet-1K from ImageNet-21K weights (give them with --init-from)",
        source=("UCSC-VLAA/CRATE-alpha configs/crate/classification/fine_tuning_in1k.py and "
                "scripts/in1k/fine_tuning_in1k.sh (commit 227f654): MODEL=B/16, batch 4096, 91 epochs, "
                "base lr 1e-5 x batch/256 (= 1.6e-4; --lr-scaling linear), Adam b1 0.9 b2 0.95 with decoupled "
                "weight decay 0.1 (added before the lr scale: AdamW's convention), 10 warm-up epochs, cosine to "
                "1e-6, gradient clip 1.0, label smoothing 0.1, inception crop (area 8%-100%) + flip, "
                "RandAugment(2, 9), mixup 0.8 / cutmix 1.0, drop path 0, evaluation resize 256 + centre crop "
                "224; initialised from their ImageNet-21K pre-training (not bundled: pass --init-from)."),
        settings=dict(model="crate_base", variant="crate_alpha", patch_size=16, dataset="imagenet",
                      optimizer="adamw", betas="0.9,0.95", lr=1e-5, lr_scaling="linear", weight_decay=0.1,
                      batch_size=128, global_batch=4096, epochs=91, warmup=10.0, min_lr=1e-6, grad_clip=1.0,
                      label_smoothing=0.1, srr_weight=0.0, train_crop="rrc", randaugment="2,9", mixup=0.8,
                      cutmix=1.0, drop_path=0.0),
    ),
)}

def list_recipes() -> list[str]:
    return list(RECIPES)


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"--recipe must be one of {', '.join(RECIPES)} (see: srr recipes), got {name!r}")
    return RECIPES[name]


def recipe_settings(name: str) -> dict:
    """The ``TrainConfig`` fields recipe ``name`` sets."""
    return dict(get_recipe(name).settings)


def recipe_config(name: str, **overrides) -> TrainConfig:
    """``TrainConfig`` of recipe ``name`` with ``overrides`` on top, ``recipe=name`` recorded."""
    return TrainConfig(**{**recipe_settings(name), **overrides, "recipe": name})


def apply_recipe(config: TrainConfig, name: str, *, explicit: set[str]) -> TrainConfig:
    """``config`` with recipe ``name``'s settings for every field not in ``explicit`` (the options the
    user gave), and ``recipe=name``."""
    settings = {k: v for k, v in recipe_settings(name).items() if k not in explicit}
    return config.replace(**settings, recipe=name)
