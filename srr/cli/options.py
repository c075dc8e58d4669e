"""The options that ``srr eval``, ``srr measure`` and ``srr attention`` share, declared once: where the
weights come from (CHECKPOINT, or ``--pretrained`` with ``--model``) and which data they see."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Checkpoint = Annotated[Optional[Path], typer.Argument(
    metavar="[CHECKPOINT]", help="An srr checkpoint (.pt) or a run folder (uses its checkpoints/latest.pt). "
                                 "Or leave it out and pass --pretrained.")]
ModelName = Annotated[Optional[str], typer.Option(
    "--model", help="Registry name of the architecture of --pretrained weights that carry no config "
                    "(a public CRATE .pth), e.g. crate_tiny.")]
Pretrained = Annotated[Optional[str], typer.Option(
    help="Weights that are not an srr run: a public CRATE .pth (with --model), a .safetensors file or a "
         "save_pretrained folder, or hf://owner/repo on the Hugging Face hub. Needs --dataset.")]
Dataset = Annotated[Optional[str], typer.Option(help="Dataset. Default: the one the checkpoint was trained on.")]
DataDir = Annotated[Optional[Path], typer.Option(help="Folder holding file-backed datasets.")]
Download = Annotated[bool, typer.Option("--download", help="Download the dataset if its files are missing.")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
SPLIT_HELP = "train (for an srr run: the images it trained on), val (held out by srr train) or test"
