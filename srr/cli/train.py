"""``srr train``: a thin typer layer over :func:`srr.train.train`, with a summary table at the end."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .errors import USAGE, fail, fit, stdout, user_errors

def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def check_names(*, model: str, dataset: str, variant: str | None) -> None:
    """Unknown model / dataset / variant: one line listing the valid names (a usage error)."""
    from srr.data import list_datasets
    from srr.models import list_models, list_variants

    if model not in list_models():
        raise fail(f"unknown model {model!r}; valid models: {', '.join(list_models())} (see: srr models)", USAGE)
    if dataset not in list_datasets():
        raise fail(f"unknown dataset {dataset!r}; valid datasets: {', '.join(list_datasets())}", USAGE)
    if variant is not None and variant not in list_variants():
        raise fail(f"unknown variant {variant!r}; valid variants: {', '.join(list_variants())}", USAGE)


def resumed_config(context: typer.Context, saved, options):
    """The saved config of the run to resume, with the run-control options of this call and those options
    given on the command line that may change (more ``--epochs``); any other given option that differs
    from the run's is refused in one line naming it (never silently ignored)."""
    from srr.train.loop import RESUMABLE, RUN_CONTROL

    fields = {"workers": "num_workers"}
    given = {fields.get(name, name) for name in context.params  # by name: typer may bring its own click
             if getattr(context.get_parameter_source(name), "name", None) == "COMMANDLINE"}
    changed = {f: getattr(options, f) for f in sorted(given & set(saved.field_names()) - RUN_CONTROL)
               if getattr(options, f) != getattr(saved, f)}
    refused = [f for f in changed if f not in RESUMABLE]
    if refused:
        details = ", ".join(f"--{f.replace('_', '-')} (run has {getattr(saved, f)!r}, given {changed[f]!r})"
                            for f in refused)
        raise fail(f"--resume continues a run with its own settings; cannot change {details}; only "
                   f"{', '.join('--' + f.replace('_', '-') for f in sorted(RESUMABLE))} may change (start a new run "
                   f"with another --out, or --init-from this one)", USAGE)
    return saved.replace(resume=True, out=options.out, device=options.device, num_workers=options.num_workers,
                         compile=options.compile, threads=options.threads, **changed)


def summary_table(result) -> Table:
    config = result.config
    table = Table(title=f"srr train: {config.model} on {config.dataset}", show_header=True, header_style="bold")
    table.add_column("metric", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_row("test accuracy", f"{result.test_accuracy:.2%}")
    table.add_row("test loss", f"{result.test_loss:.4f}")
    if result.best_val_accuracy is not None:
        table.add_row("best val accuracy", f"{result.best_val_accuracy:.2%} (epoch {result.best_epoch})")
    if result.srr_per_layer:
        table.add_row("μ_SRR last layer", f"{result.srr_per_layer[-1]:.4f}")
        table.add_row("μ_SRR mean over layers", f"{sum(result.srr_per_layer) / len(result.srr_per_layer):.4f}")
    table.add_row("epochs / steps", f"{result.epochs} / {result.global_step}")
    table.add_row("training time", f"{result.train_time_s:.1f} s")
    table.add_row("throughput", f"{result.train_images_per_s:,.0f} images/s")
    table.add_row("loader vs model", f"{result.loader_images_per_s:,.0f} vs {result.model_images_per_s:,.0f} images/s")
    table.add_row("run folder", str(result.run_dir))
    return table


def train(
    ctx: typer.Context,
    # model
    model: Annotated[str, typer.Option(
        help="Model name from the registry (see: srr models).",
        rich_help_panel="Model")] = "crate_nano",
    variant: Annotated[Optional[str], typer.Option(
        help="CRATE variant: crate, crate_c, crate_n, crate_t, crate_fix, crate_identity, crate_exact, crate_alpha, "
             "crate_derived, tost (TSSA, linear in the tokens). Default: the model's own.",
        rich_help_panel="Model")] = None,
    patch_size: Annotated[Optional[int], typer.Option(
        help="Patch size. Default: the model's own.",
        rich_help_panel="Model")] = None,
    dropout: Annotated[Optional[float], typer.Option(
        help="Dropout inside attention. Default: the model's own.",
        rich_help_panel="Model")] = None,
    model_eps: Annotated[Optional[float], typer.Option(
        help="The model's own ε (not ε²): the distortion of R^c in the crate_exact and crate_derived layers "
             "(CRATEConfig.eps). Not the regulariser's: see --srr-eps. Default: the model's own.",
        rich_help_panel="Model")] = None,
    init_from: Annotated[Optional[str], typer.Option(
        help="Fine-tune from these weights: a save_pretrained folder, a run folder, a checkpoint, a .safetensors "
             "file, a public CRATE .pth (then --model names its architecture) or hf://owner/repo on the Hugging "
             "Face hub. A new class count gets a new head, a new image size an interpolated position embedding.",
        rich_help_panel="Model")] = None,
    grad_checkpointing: Annotated[bool, typer.Option(
        "--grad-checkpointing",
        help="Recompute each layer's activations in the backward pass (less memory, ~30% more time).",
        rich_help_panel="Model")] = False,
    # data
    dataset: Annotated[str, typer.Option(
        help="digits (bundled, default), subspaces, cifar10, cifar100, mnist, fashion-mnist, imagefolder.",
        rich_help_panel="Data")] = "digits",
    data_dir: Annotated[Optional[Path], typer.Option(
        help="Folder holding file-backed datasets. Default: $SRR_DATA_DIR or ./data.",
        rich_help_panel="Data")] = None,
    download: Annotated[bool, typer.Option(
        "--download",
        help="Download the dataset if its files are missing.",
        rich_help_panel="Data")] = False,
    augment: Annotated[bool, typer.Option(
        "--augment/--no-augment",
        help="The dataset's standard training augmentation.",
        rich_help_panel="Data")] = True,
    image_size: Annotated[Optional[int], typer.Option(
        help="Resize images to this size. Default: the dataset's own.",
        rich_help_panel="Data")] = None,
    val_fraction: Annotated[float, typer.Option(
        help="Fraction of the training split held out for validation and best.pt.",
        rich_help_panel="Data")] = 0.1,
    train_subset: Annotated[Optional[int], typer.Option(
        help="Train on this many training images only (smoke runs).",
        rich_help_panel="Data")] = None,
    workers: Annotated[Optional[int], typer.Option(
        help="Data-loader worker processes. Default: 0 for in-memory data, else min(4, CPUs).",
        rich_help_panel="Data")] = None,
    # optimisation
    epochs: Annotated[int, typer.Option(help="Number of epochs.", rich_help_panel="Optimisation")] = 30,
    batch_size: Annotated[int, typer.Option(help="Batch size per process.", rich_help_panel="Optimisation")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate.", rich_help_panel="Optimisation")] = 3e-3,
    min_lr: Annotated[float, typer.Option(help="Floor of the cosine schedule.", rich_help_panel="Optimisation")] = 1e-5,
    weight_decay: Annotated[float, typer.Option(
        help="Weight decay (weight matrices only).",
        rich_help_panel="Optimisation")] = 0.05,
    warmup: Annotated[float, typer.Option(
        help="Epochs of linear learning-rate warm-up before the cosine decay.",
        rich_help_panel="Optimisation")] = 2.0,
    optimizer: Annotated[str, typer.Option(help="adamw, adam or sgd.", rich_help_panel="Optimisation")] = "adamw",
    momentum: Annotated[float, typer.Option(help="SGD momentum (Nesterov).", rich_help_panel="Optimisation")] = 0.9,
    label_smoothing: Annotated[float, typer.Option(
        help="Label smoothing of the cross-entropy.",
        rich_help_panel="Optimisation")] = 0.1,
    grad_clip: Annotated[float, typer.Option(
        help="Clip the global gradient norm to this; 0 disables.",
        rich_help_panel="Optimisation")] = 1.0,
    layer_decay: Annotated[Optional[float], typer.Option(
        help="Layer-wise learning-rate decay in (0, 1] for fine-tuning: layer l of L gets lr*decay^(L-l), "
             "the embeddings lr*decay^(L+1), the head lr. Default: off.",
        rich_help_panel="Optimisation")] = None,
    # SRR
    srr_weight: Annotated[float, typer.Option(
        help="η_reg, weight of the SRR regulariser; 0 disables it.",
        rich_help_panel="SRR regularisation")] = 1e-3,
    srr_layers: Annotated[str, typer.Option(
        help="Layers regularised: last, all, or indices like 0,3.",
        rich_help_panel="SRR regularisation")] = "last",
    srr_eps: Annotated[float, typer.Option(
        help="ε (not ε²) of the coding rates in the SRR regulariser and the per-epoch measurement. Not the model's: "
             "see --model-eps.",
        rich_help_panel="SRR regularisation")] = 0.1,
    srr_lam: Annotated[float, typer.Option(
        help="λ of the sparsity term of μ_SRR.",
        rich_help_panel="SRR regularisation")] = 0.1,
    measure_samples: Annotated[int, typer.Option(
        help="Training images on which per-layer μ_SRR is measured each epoch; 0 turns it off.",
        rich_help_panel="SRR regularisation")] = 256,
    # run control
    out: Annotated[Optional[Path], typer.Option(
        help="Run folder. Default: runs/<model>-<dataset>-<time>.",
        rich_help_panel="Run")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (offset by rank under torchrun).", rich_help_panel="Run")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel="Run")] = "auto",
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="bfloat16 autocast.", rich_help_panel="Run")] = False,
    compile: Annotated[bool, typer.Option(
        "--compile/--no-compile",
        help="torch.compile the model.",
        rich_help_panel="Run")] = False,
    fsdp: Annotated[bool, typer.Option(
        "--fsdp/--no-fsdp",
        help="Shard parameters, gradients and optimiser state with FSDP2 (one layer per unit); sharded "
             "checkpoints that resume at any number of processes.",
        rich_help_panel="Run")] = False,
    fsdp_mixed: Annotated[bool, typer.Option(
        "--fsdp-mixed/--no-fsdp-mixed",
        help="With --fsdp: bfloat16 parameters in forward and backward, float32 gradient reduction.",
        rich_help_panel="Run")] = False,
    resume: Annotated[bool, typer.Option(
        "--resume",
        help="Continue the run in --out from its latest checkpoint, with its saved settings.",
        rich_help_panel="Run")] = False,
    checkpoint_every: Annotated[int, typer.Option(
        help="Also checkpoint every k steps; 0: end of each epoch only.",
        rich_help_panel="Run")] = 0,
    deterministic: Annotated[bool, typer.Option(
        "--deterministic/--no-deterministic",
        help="Deterministic algorithms (exact resume).",
        rich_help_panel="Run")] = True,
    threads: Annotated[Optional[int], typer.Option(
        help="CPU threads for the run (torch.set_num_threads). Default: torch's own.",
        rich_help_panel="Run")] = None,
    logger: Annotated[Optional[str], typer.Option(
        help="Per-step scalars (loss, lr, SRR regulariser, gradient norm, throughput) and per-epoch rows: jsonl "
             "(log.jsonl), csv (steps.csv, epochs.csv) or tensorboard (needs pip install 'srr[tensorboard]').",
        rich_help_panel="Run")] = None,
    log_every: Annotated[int, typer.Option(
        help="Steps between two per-step records of --logger.",
        rich_help_panel="Run")] = 10,
    progress: Annotated[bool, typer.Option(
        "--progress/--quiet",
        help="Progress bar and per-epoch lines.",
        rich_help_panel="Run")] = True,
) -> None:
    """Train a CRATE model; default: crate_nano on the bundled digits data, SRR-regularised, ~20 s on 2 CPU cores."""
    from srr.train import TrainConfig
    from srr.train import train as run_training

    from .checkpoints import check_data_dir, check_out_folder, check_weights

    console = stdout() if is_rank_zero() else None
    with user_errors(USAGE):
        if not resume:
            check_names(model=model, dataset=dataset, variant=variant)
        if not grad_clip >= 0:  # NaN too
            raise ValueError(f"--grad-clip must be a number >= 0 (0 disables clipping), got {grad_clip}")
        options = TrainConfig(
            model=model, variant=variant, patch_size=patch_size, dropout=dropout, model_eps=model_eps,
            init_from=check_weights(init_from, "--init-from"), grad_checkpointing=grad_checkpointing,
            layer_decay=layer_decay,
            dataset=dataset,
            data_dir=None if data_dir is None else str(data_dir), download=download, augment=augment,
            image_size=image_size, val_fraction=val_fraction, train_subset=train_subset, num_workers=workers,
            epochs=epochs, batch_size=batch_size, lr=lr, min_lr=min_lr, weight_decay=weight_decay,
            warmup=warmup, optimizer=optimizer, momentum=momentum, label_smoothing=label_smoothing,
            grad_clip=grad_clip if grad_clip > 0 else None, srr_weight=srr_weight, srr_layers=srr_layers,
            srr_eps=srr_eps, srr_lam=srr_lam, measure_samples=measure_samples,
            out=None if out is None else str(out), seed=seed, device=device, amp=amp, compile=compile,
            resume=False, checkpoint_every=checkpoint_every, deterministic=deterministic, threads=threads,
            logger=logger, log_every=log_every, fsdp=fsdp, fsdp_mixed=fsdp_mixed,
        )
        if resume:
            if out is None:
                raise fail("--resume needs --out RUN_DIR, the folder of the run to continue", USAGE)
            config_path = out / "config.json"
            if not config_path.is_file():
                raise fail(f"--resume: {out} is not a run folder (no {config_path}); pass the --out of an earlier "
                           f"srr train run", USAGE)
            config = resumed_config(ctx, TrainConfig.load(config_path), options)
        else:
            config = options
        check_data_dir(data_dir, download=download)
        check_out_folder(out)
    # What the run itself finds wrong with its options (a patch size that does not divide the image size, a
    # layer index beyond the model) is a bad value too; missing data and unusable weights exit 1.
    with user_errors(USAGE):
        result = run_training(config, console=console if progress else None)
    if console is not None:
        console.print(fit(summary_table(result)))
        plots = ", ".join(str(p) for p in result.plots)
        console.print(f"wrote {result.run_dir}/config.json, metrics.jsonl, summary.json, checkpoints/latest.pt"
                      + (", checkpoints/best.pt" if result.best_epoch else "") + (f"; plots: {plots}" if plots else ""),
                      highlight=False)
