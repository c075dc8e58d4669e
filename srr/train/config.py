"""``TrainConfig``: everything that defines a training run, as one frozen, JSON-serialisable value.

The run folder stores it as ``config.json``; ``--resume`` reads it back, so a resumed run trains
under exactly the options it started with. Defaults give the newcomer's run: ``crate_nano`` on
the bundled ``digits`` data with SRR regularisation of the last layer (HU24 §6, MATH.md §6),
tens of seconds on two CPU cores (docs/cli.md gives the measured time).

``srr train``'s options are generated from these fields (srr/cli/config_options.py): a field's trailing
``# comment`` is its ``--help`` text and a ``# section`` line above a group of fields names their panel,
so a field added here with a comment is a command-line option at once.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from srr._checks import check_choice, check_eps, check_int, check_lam, check_nonnegative, check_number, check_positive
from srr._config import ConfigBase

OPTIMIZERS = ("adamw", "adam", "sgd", "lion")
LR_SCALINGS = ("none", "linear", "sqrt")  # rule relating --lr to the global batch (base 256)
# A field's command-line name where it is not ``--field-name`` (errors and resume messages name what users type).
OPTION_NAMES = {"num_workers": "--workers"}


def option_name(field: str) -> str:
    """The ``srr train`` option that sets ``field``: ``batch_size`` → ``--batch-size``."""
    return OPTION_NAMES.get(field, "--" + field.replace("_", "-"))


@dataclass(frozen=True)
class TrainConfig(ConfigBase):
    """Options of one run. Sizes are per process: under ``torchrun`` the global batch is
    ``batch_size * world_size``."""

    # model
    model: str = "crate_nano"  # model name from the registry (see: srr models)
    variant: str | None = None  # None: the registry entry's own variant
    patch_size: int | None = None  # patch size; None: the registry entry's own
    dropout: float | None = None  # dropout inside attention; None: the registry entry's own
    model_eps: float | None = None  # the model's own ε (CRATEConfig.eps: crate_exact/crate_derived); None: its own
    init_from: str | None = None  # weights to fine-tune from (create_model(pretrained=...)): new head/size adapted
    grad_checkpointing: bool = False  # recompute layer activations in backward (memory for time)
    drop_path: float | None = None  # stochastic depth on residual branches, linear in depth up to this; None: its own
    # data
    dataset: str = "digits"  # digits (bundled), subspaces, cifar10/100, (fashion-)mnist, imagefolder, imagenet, fake
    data_dir: str | None = None  # None: $SRR_DATA_DIR, else ./data
    download: bool = False  # download the dataset if its files are missing
    augment: bool = True  # the dataset's standard training augmentation
    image_size: int | None = None  # resize images to this size; None: the dataset's own
    val_fraction: float | None = None  # held out of train (fixed) for val and best.pt; None: 0.1 (0: imagenet, fake)
    train_subset: int | None = None  # train on the first n training images only (smoke runs, tests)
    num_workers: int | None = None  # data-loader worker processes; None: 0 for in-memory data, else min(4, cpus)
    prefetch_factor: int | None = None  # batches each loader worker prepares ahead (DataLoader's); None: torch's 2
    train_crop: str = "auto"  # rrc (RandomResizedCrop; eval: resize S/0.875, centre crop), pad (CIFAR), auto: rrc ≥64px
    randaugment: str | None = None  # RandAugment "N,M" (e.g. "2,9") or timm's "rand-m9-mstd0.5-inc1"; None: off
    trivialaugment: bool = False  # TrivialAugmentWide (torchvision) after the crop and flip
    random_erasing: float = 0.0  # probability of erasing one random rectangle with noise (timm RandomErasing)
    mixup: float = 0.0  # mixup α on each batch (λ ~ Beta(α, α)), soft targets into the loss; 0: off
    cutmix: float = 0.0  # cutmix α; with --mixup as well, each batch takes one of the two with probability ½
    repeated_aug: int = 1  # K augmented copies of each image per epoch, spread over the ranks (DeiT's RASampler)
    decode_device: str = "cpu"  # where JPEGs are decoded: cpu (loader workers) or cuda (a batch at once, nvJPEG)
    # optimisation
    epochs: int = 30  # number of epochs
    batch_size: int = 64  # batch size per process
    lr: float = 3e-3  # peak learning rate
    min_lr: float = 1e-5  # floor of the cosine schedule
    weight_decay: float = 0.05  # applied to weight matrices only
    warmup: float = 2.0  # epochs of linear warm-up (fractions allowed)
    optimizer: str = "adamw"  # adamw, adam, sgd or lion (YU23's; timm.optim.Lion)
    momentum: float = 0.9  # sgd only
    label_smoothing: float = 0.1  # label smoothing of the cross-entropy
    grad_clip: float | None = 1.0  # max global gradient norm; None disables clipping
    layer_decay: float | None = None  # layer-wise lr decay in (0, 1] (layer ℓ of L: lr·decay^(L−ℓ)); None: off
    # optimisation at scale (srr/train/loop.py, docs/guide-scale.md)
    ema_decay: float | None = None  # EMA of the weights with this decay D in [0, 1), evaluated beside them; None: off
    ema_warmup: bool = True  # EMA decay min(D, 1 − t^(−2/3)) at optimiser step t (timm ModelEmaV3's warm-up)
    grad_accum: int = 1  # micro-batches of --batch-size per optimiser step (the loss of K·B images)
    global_batch: int | None = None  # images per optimiser step over all ranks; sets grad_accum = G / (B · world)
    lr_scaling: str = "none"  # none, linear (lr·G/256) or sqrt (lr·√(G/256)), G the global batch
    betas: str | None = None  # "β1,β2" of adam, adamw and lion, e.g. "0.9,0.95"; None: the optimiser's own
    recipe: str | None = None  # the named recipe (srr recipes) whose settings this run started from; a record
    # SRR regularisation (MATH.md §6)
    srr_weight: float = 1e-3  # η_reg; 0 disables the regulariser
    srr_layers: str = "last"  # "last", "all" or comma-separated layer indices, e.g. "0,3"
    srr_eps: float = 0.1  # the regulariser's and measurement's ε (never ε²), not the model's; srr.measure's default
    srr_lam: float = 0.1  # λ of the ℓ0 term of μ_SRR (reported; carries no gradient)
    measure_samples: int = 256  # training images on which per-layer μ_SRR is measured each epoch; 0: off
    # run control
    out: str | None = None  # run folder; None: runs/<model>-<dataset>-<timestamp>
    seed: int = 0  # random seed (offset by rank under torchrun)
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    amp: bool = False  # bfloat16 autocast
    compile: bool = False  # torch.compile the model
    fsdp: bool = False  # shard parameters, gradients, optimiser state (FSDP2, a layer per unit); sharded checkpoints
    fsdp_mixed: bool = False  # with --fsdp: bfloat16 parameters in forward/backward, float32 gradient reduction
    resume: bool = False  # continue the run in --out from its latest checkpoint, with its saved settings
    checkpoint_every: int = 0  # also checkpoint every k optimiser steps; 0: end of each epoch only
    deterministic: bool = True  # torch.use_deterministic_algorithms (exact resume)
    threads: int | None = None  # intra-op CPU threads during the run; None: torch's default
    logger: str | None = None  # per-step scalars: "jsonl" (log.jsonl), "csv" (steps.csv, epochs.csv), "tensorboard"
    log_every: int = 10  # optimiser steps between two per-step records of the logger, progress updates and NaN checks
    # language models (text datasets: shakespeare-char, text, textfile; srr/train/lm_loop.py)
    max_iters: int = 2000  # optimiser steps of a language-model run (image runs count --epochs)
    eval_every: int = 250  # steps between two estimates of the train and validation loss (each also checkpoints)
    eval_iters: int = 200  # batches of random blocks per split in one loss estimate (nanoGPT's eval_iters)
    warmup_iters: int = 100  # steps of linear learning-rate warm-up of a language-model run (image runs: --warmup)
    context: int | None = None  # tokens per training block; None: the model's context (nano 64, small 256)

    def __post_init__(self) -> None:
        check_int(self.epochs, "epochs", minimum=1)
        check_int(self.batch_size, "batch_size", minimum=1)
        check_int(self.seed, "seed", minimum=0)
        check_int(self.measure_samples, "measure_samples", minimum=0)
        check_int(self.checkpoint_every, "checkpoint_every", minimum=0)
        check_int(self.log_every, "log_every", minimum=1)
        if self.logger is not None:
            check_choice(self.logger, "logger", ("jsonl", "csv", "tensorboard"))
        for name in ("patch_size", "image_size", "train_subset"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name, minimum=1)
        if self.num_workers is not None:
            check_int(self.num_workers, "num_workers", minimum=0)
        if self.threads is not None:
            check_int(self.threads, "threads", minimum=1)
        check_positive(self.lr, "lr")
        for name in ("min_lr", "weight_decay", "warmup", "momentum", "srr_weight"):
            check_nonnegative(getattr(self, name), name)
        check_lam(self.srr_lam, "srr_lam")
        check_eps(self.srr_eps, "srr_eps")
        if self.model_eps is not None:
            check_eps(self.model_eps, "model_eps")
        check_number(self.label_smoothing, "label_smoothing", low=0, high=1)
        if self.val_fraction is not None:
            check_number(self.val_fraction, "val_fraction", low=0, high=1, high_open=True)
        self.augmentation()  # checks train_crop, randaugment, trivialaugment, random_erasing
        check_number(self.mixup, "mixup", low=0)
        check_number(self.cutmix, "cutmix", low=0)
        check_int(self.repeated_aug, "repeated_aug", minimum=1)
        if self.prefetch_factor is not None:
            check_int(self.prefetch_factor, "prefetch_factor", minimum=1)
        check_choice(self.decode_device, "decode_device", ("cpu", "cuda"))
        if self.dropout is not None:
            check_number(self.dropout, "dropout", low=0, high=1)
        if self.drop_path is not None:
            check_number(self.drop_path, "drop_path", low=0, high=1, high_open=True)
        if self.grad_clip is not None:
            check_positive(self.grad_clip, "grad_clip")
        if self.layer_decay is not None:
            check_number(self.layer_decay, "layer_decay", low=0, high=1, low_open=True)
        check_choice(self.optimizer, "optimizer", OPTIMIZERS)
        check_int(self.grad_accum, "grad_accum", minimum=1)
        if self.global_batch is not None:
            check_int(self.global_batch, "global_batch", minimum=1)
        check_choice(self.lr_scaling, "lr_scaling", LR_SCALINGS)
        if self.ema_decay is not None:
            check_number(self.ema_decay, "ema_decay", low=0, high=1, high_open=True)
        if self.betas is not None:
            parse_betas(self.betas)
        parse_layers(self.srr_layers)
        if self.fsdp_mixed and not self.fsdp:
            raise ValueError("--fsdp-mixed sets the precision of --fsdp's sharded parameters; it needs --fsdp")
        if self.fsdp and self.compile:
            raise ValueError("--fsdp with --compile is not supported: torch.compile of an FSDP2 model wants each "
                             "layer compiled before it is sharded, which srr does not do; drop --compile or --fsdp")
        for name in ("model", "dataset", "device"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        for name in ("max_iters", "eval_every", "eval_iters"):
            check_int(getattr(self, name), name, minimum=1)
        check_int(self.warmup_iters, "warmup_iters", minimum=0)
        if self.context is not None:
            check_int(self.context, "context", minimum=1)
        check_task_options(self)

    def augmentation(self):
        """The per-image training augmentation these options ask for (:class:`srr.data.Augmentation`)."""
        from srr.data import Augmentation

        return Augmentation(crop=self.train_crop, randaugment=self.randaugment, trivialaugment=self.trivialaugment,
                            random_erasing=self.random_erasing)

    def model_overrides(self) -> dict:
        """The ``create_model`` keyword arguments this run sets on top of the registry entry's own."""
        overrides = {"variant": self.variant, "patch_size": self.patch_size}
        if self.dropout is not None:
            overrides["dropout"] = self.dropout
        if self.model_eps is not None:
            overrides["eps"] = self.model_eps
        if self.drop_path is not None:
            overrides["drop_path"] = self.drop_path
        return overrides

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        """Read a ``config.json`` written by a run."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no run config at {path}") from None
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read the run config {path}: {error}") from None
        if isinstance(data, dict):
            data.pop("resolved", None)  # what the run resolved (model config, device, versions): a record only
        return cls.from_dict(data)


# What a language-model run (a text dataset) reads: its own fields and these shared ones. Every other field is
# an image run's; set away from its default for the other kind of run, a field is an error.
LANGUAGE_ONLY = ("max_iters", "eval_every", "eval_iters", "warmup_iters", "context")
SHARED = ("model", "dropout", "model_eps", "dataset", "data_dir", "download", "batch_size", "lr", "min_lr",
          "weight_decay", "optimizer", "momentum", "grad_clip", "betas", "out", "seed", "device", "amp", "compile",
          "resume", "checkpoint_every", "deterministic", "threads", "logger", "log_every")


def check_task_options(config: TrainConfig) -> None:
    """A one-line ValueError when ``config`` sets an option of image runs for a text dataset (or the reverse),
    or pairs a language model with images (or the reverse). Options at their defaults are not "set"."""
    from srr.data import is_text_dataset

    text = is_text_dataset(config.dataset)
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    image_only = [name for name in defaults if name not in SHARED + LANGUAGE_ONLY]
    foreign = [name for name in (image_only if text else LANGUAGE_ONLY) if getattr(config, name) != defaults[name]]
    if foreign:
        kind, other = ("text", "image") if text else ("image", "text")
        listed = ", ".join(f"{option_name(n)} {getattr(config, n)!r}" for n in foreign)
        raise ValueError(f"{listed}: {'option applies' if len(foreign) == 1 else 'options apply'} to {other} "
                         f"datasets only, and --dataset {config.dataset} is a{'n' if kind == 'image' else ''} "
                         f"{kind} dataset; drop {'it' if len(foreign) == 1 else 'them'}")
    from srr.models.registry import _MODELS, model_task

    if config.model in _MODELS:
        task = model_task(config.model)
        if (task == "language") != text:
            from srr.models import list_models

            want = "language" if text else "image"
            raise ValueError(f"--model {config.model} is a{'n' if task == 'image' else ''} {task} model and --dataset "
                             f"{config.dataset} a{'' if text else 'n'} {'text' if text else 'image'} dataset; "
                             f"pick a {want} model: {', '.join(list_models(task=want))}")


def parse_layers(text: str) -> str | list[int]:
    """``"last"``, ``"all"`` or a list of layer indices from ``"0,3,-1"``."""
    if not isinstance(text, str):
        raise ValueError(f"srr_layers must be 'last', 'all' or comma-separated layer indices, got {text!r}")
    if text in ("last", "all"):
        return text
    try:
        layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        layers = []
    if not layers:
        raise ValueError(f"srr_layers must be 'last', 'all' or comma-separated layer indices like '0,3', got {text!r}")
    return layers


def parse_betas(text: str) -> tuple[float, float]:
    """``(β1, β2)`` from ``"0.9,0.95"``, each in [0, 1)."""
    try:
        betas = tuple(float(part) for part in text.split(","))
    except (AttributeError, ValueError):
        betas = ()
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1) separated by a comma, like '0.9,0.95', got {text!r}")
    return betas
