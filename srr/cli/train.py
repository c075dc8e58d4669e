"""``srr train``: a thin typer layer over :func:`srr.train.train`, with a summary table at the end."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from srr.train.config import TrainConfig

from .config_options import Option, config_values as config_fields, with_config_options
from .errors import USAGE, fail, fit, named_options, stdout, user_errors


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def check_names(*, model: str, dataset: str, variant: str | None) -> None:
    """Unknown model / dataset / variant: one line listing the valid names (a usage error)."""
    from srr.data import list_datasets
    from srr.models import list_models, list_variants

    if model not in list_models(task=None):
        raise fail(f"unknown model {model!r}; valid models: {', '.join(list_models(task=None))} (see: srr models)",
                   USAGE)
    if dataset not in list_datasets(task=None):
        raise fail(f"unknown dataset {dataset!r}; valid datasets: {', '.join(list_datasets(task=None))}", USAGE)
    if variant is not None and variant not in list_variants():
        raise fail(f"unknown variant {variant!r}; valid variants: {', '.join(list_variants())}", USAGE)


def _metric_table(config) -> Table:
    """An empty two-column (metric, value) table titled with the run's model and data set."""
    table = Table(title=f"srr train: {config.model} on {config.dataset}", show_header=True, header_style="bold")
    table.add_column("metric", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    return table


def lm_summary_table(result) -> Table:
    """The table of a language-model run (srr/train/lm_loop.py)."""
    table = _metric_table(result.config)
    table.add_row("val loss (nats per token)", f"{result.val_loss:.4f}")
    table.add_row("train loss", f"{result.train_loss:.4f}")
    if result.best_val_loss is not None:
        table.add_row("best val loss", f"{result.best_val_loss:.4f} (step {result.best_step})")
    table.add_row("steps", f"{result.global_step}")
    table.add_row("parameters", f"{result.parameters:,}")
    table.add_row("training time", f"{result.train_time_s:.1f} s")
    table.add_row("throughput", f"{result.tokens_per_s:,.0f} tokens/s")
    table.add_row("run folder", str(result.run_dir))
    return table


def summary_table(result) -> Table:
    from srr.train.lm_loop import LMRunResult

    if isinstance(result, LMRunResult):
        return lm_summary_table(result)
    table = _metric_table(result.config)
    table.add_row("test accuracy", f"{result.test_accuracy:.2%}")
    table.add_row("test loss", f"{result.test_loss:.4f}")
    if result.test_accuracy_ema is not None:
        table.add_row("test accuracy (EMA)", f"{result.test_accuracy_ema:.2%}")
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


def _grad_clip(value: float) -> float | None:
    if not value >= 0:  # NaN too
        raise ValueError(f"--grad-clip must be a number >= 0 (0 disables clipping), got {value}")
    return value if value > 0 else None


def _variant_help() -> str:
    from srr.models import list_variants

    return f"CRATE variant: {', '.join(list_variants())} (see: srr models). Default: the model's own."


def _dataset_help() -> str:
    from srr.data import list_datasets

    return (f"Dataset: {', '.join(list_datasets())}; text, for language models: "
            f"{', '.join(list_datasets(task='language'))}.")


# Where an option differs from its TrainConfig field; every other field is an option as the field says
# (srr/cli/config_options.py). A new TrainConfig field with a comment needs nothing here.
OPTIONS = {
    "variant": Option(help=_variant_help),
    "dataset": Option(help=_dataset_help),
    "model_eps": Option(help="The model's own ε (not ε²): the distortion of R^c in the crate_exact and "
                             "crate_derived layers (CRATEConfig.eps). Not the regulariser's: see --srr-eps. "
                             "Default: the model's own."),
    "init_from": Option(help="Fine-tune from these weights: a save_pretrained folder, a run folder, a checkpoint, a "
                             ".safetensors file, a public CRATE .pth (then --model names its architecture) or "
                             "hf://owner/repo on the Hugging Face hub. A new class count gets a new head, a new image "
                             "size an interpolated position embedding."),
    "data_dir": Option(type=Path, help="Folder holding file-backed datasets. Default: $SRR_DATA_DIR or ./data."),
    "num_workers": Option(names=("--workers",)),
    "grad_clip": Option(type=float, default=1.0, to_field=_grad_clip,
                        help="Clip the global gradient norm to this; 0 disables."),
    "layer_decay": Option(help="Layer-wise learning-rate decay in (0, 1] for fine-tuning: layer l of L gets "
                               "lr*decay^(L-l), the embeddings lr*decay^(L+1), the head lr. Default: off."),
    "srr_eps": Option(help="ε (not ε²) of the coding rates in the SRR regulariser and the per-epoch measurement. "
                           "Not the model's: see --model-eps."),
    "out": Option(type=Path, help="Run folder. Default: runs/<model>-<dataset>-<time>."),
    "amp": Option(names=("--amp/--no-amp",)),
    "compile": Option(names=("--compile/--no-compile",)),
    "logger": Option(help="Per-step scalars (loss, lr, SRR regulariser, gradient norm, throughput) and per-epoch "
                          "rows: jsonl (log.jsonl), csv (steps.csv, epochs.csv) or tensorboard (needs pip install "
                          "'srr[tensorboard]')."),
}


def given_fields(ctx: typer.Context) -> set[str]:
    """The TrainConfig fields whose options the user typed (by the source's name: typer may bring its own click)."""
    return {name for name in ctx.params if name in TrainConfig.field_names()
            and getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"}


@with_config_options(TrainConfig, OPTIONS)
def train(
    ctx: typer.Context,
    parsed: dict,
    progress: Annotated[bool, typer.Option(
        "--progress/--quiet",
        help="Progress bar and per-epoch lines.",
        rich_help_panel="Run control")] = True,
) -> None:
    """Train a CRATE model; default: crate_nano on the bundled digits data, SRR-regularised, ~20 s on 2 CPU cores.
    On a text dataset (shakespeare-char, text, textfile), a causal language model: docs/guide-language.md."""
    from srr.train import train as run_training
    from srr.train.recipes import apply_recipe
    from srr.train.resume import resumed_config

    from .checkpoints import check_data_dir, check_out_folder, check_weights

    console = stdout() if is_rank_zero() else None
    with user_errors(USAGE), named_options():
        config_values = config_fields(TrainConfig, OPTIONS, parsed)
        resume, out, recipe = config_values["resume"], parsed["out"], config_values["recipe"]
        if not resume and recipe is None:
            check_names(model=config_values["model"], dataset=config_values["dataset"],
                        variant=config_values["variant"])
        config_values["init_from"] = check_weights(config_values["init_from"], "--init-from")
        options = TrainConfig(**{**config_values, "resume": False})
        if recipe is not None and not resume:  # the recipe fills every option not typed
            options = apply_recipe(options, recipe, explicit=given_fields(ctx))
            check_names(model=options.model, dataset=options.dataset, variant=options.variant)
        if resume:
            if out is None:
                raise fail("--resume needs --out RUN_DIR, the folder of the run to continue", USAGE)
            config_path = out / "config.json"
            if not config_path.is_file():
                raise fail(f"--resume: {out} is not a run folder (no {config_path}); pass the --out of an earlier "
                           f"srr train run", USAGE)
            config = resumed_config(TrainConfig.load(config_path), options, given_fields(ctx))
        else:
            config = options
        from srr.data import is_text_dataset

        if not is_text_dataset(config.dataset):  # a text dataset's --data-dir may be a file
            check_data_dir(parsed["data_dir"], download=config_values["download"])
        check_out_folder(out)
    # What the run itself finds wrong with its options (a patch size that does not divide the image size, a
    # layer index beyond the model) is a bad value too; missing data and unusable weights exit 1.
    with user_errors(USAGE), named_options():
        result = run_training(config, console=console if progress else None)
    if console is not None:
        console.print(fit(summary_table(result)))
        if result.already_complete:
            return  # nothing was written: the table is the run's own summary.json
        plots = ", ".join(str(p) for p in result.plots)
        best = getattr(result, "best_epoch", None) or getattr(result, "best_step", None)
        extra = ", sample.txt" if getattr(result, "sample", None) is not None else ""
        console.print(f"wrote {result.run_dir}/config.json, metrics.jsonl, summary.json{extra}, checkpoints/latest.pt"
                      + (", checkpoints/best.pt" if best else "") + (f"; plots: {plots}" if plots else ""),
                      highlight=False)
