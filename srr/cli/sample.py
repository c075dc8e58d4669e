"""``srr sample RUN``: a continuation of a prompt by a trained language model (``srr train`` on a text dataset),
decoded with the run's own vocabulary (``vocab.json``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import USAGE, stdout, user_errors


def sample_command(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="The run folder of a language-model srr train run.")],
    prompt: Annotated[str, typer.Option(help="Text to continue (its characters must be in the run's "
                                             "vocabulary). Default: a newline.")] = "\n",
    tokens: Annotated[int, typer.Option(help="How many tokens to sample after the prompt.")] = 200,
    temperature: Annotated[float, typer.Option(help="Divides the logits (< 1: more likely tokens).")] = 1.0,
    top_k: Annotated[Optional[int], typer.Option(help="Sample among the k most likely tokens only.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampling draws.")] = 0,
) -> None:
    """Print the prompt and a sampled continuation (nanoGPT's sample.py: the last context tokens are read)."""
    import torch

    from srr.data.text import Vocabulary
    from srr.models.lm import load_language_model

    with user_errors(USAGE):
        if tokens < 1:
            raise ValueError(f"--tokens must be a positive integer, got {tokens}")
        if not temperature > 0:
            raise ValueError(f"--temperature must be a number > 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"--top-k must be a positive integer, got {top_k}")
        vocab_file = run / "vocab.json"
        if not run.is_dir() or not vocab_file.is_file():
            raise FileNotFoundError(f"RUN must be the folder of a language-model srr train run (with vocab.json), "
                                    f"got {str(run)!r}")
        vocabulary = Vocabulary.from_dict(json.loads(vocab_file.read_text()))
        model = load_language_model(run)
        if vocabulary.size != model.config.vocab_size:
            raise ValueError(f"{vocab_file} holds {vocabulary.size} tokens but the model has "
                             f"{model.config.vocab_size}")
        try:
            ids = vocabulary.encode(prompt)
        except ValueError as error:
            raise ValueError(f"--prompt: {error}") from None
        if ids.numel() == 0:
            raise ValueError("--prompt must hold at least one character, got ''")
        generator = torch.Generator().manual_seed(seed)
        out = model.generate(ids[None], tokens, temperature=temperature, top_k=top_k, generator=generator)
    stdout().print(vocabulary.decode(out[0]), markup=False, highlight=False, soft_wrap=True)
