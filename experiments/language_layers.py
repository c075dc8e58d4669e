"""Layer-wise causal R^c and sparsity of a trained CRATE-GPT (issue 23): does the attention half-step lower
the causal coding rate in a trained language model?

For each layer ℓ of ``crate_lm`` (x ↦ x + MSSA_causal(LN₁x), then ISTA(LN₂·)), on validation blocks of Tiny
Shakespeare, with the layer's own subspaces U^ℓ (``attn.subspaces``, the ``c_attn`` weight):

- causal R^c (E14) before and after the attention half-step: ``R^c_causal(LN₁Z^ℓ)`` and ``R^c_causal(LN₁Z^{ℓ+½})``
  (the same LayerNorm, so that the two read the same scale), where ``R^c_causal`` is the mean over positions t
  of the t-th prefix's rate ``R^c(Z_{≤t}; U, ε)`` (``srr.objective.causal_compressed_coding_rate``,
  ``per_position=True``): **the causal token sets are the prefixes** (convention "prefix mean");
- both in two conventions (MATH.md §5c): ``raw`` (the LayerNorm'd tokens, ε = 0.1) and ``unit`` (YU23's
  figures: each head's projected tokens ``z U_k`` normalised to unit ℓ2 norm, ε² = 0.01);
- the sparsity of the layer's output Z^{ℓ+1} = ISTA(·) (the fraction of exact zeros).

The same numbers for the model at its initialisation (same config, seed 0) are the control.

    python -m experiments.language_layers --run runs/bench_lm/crate_lm_nano \\
        --json experiments/results/language/crate_lm_layers.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from srr.data import load_text_dataset, random_blocks
from srr.models.lm import LanguageModel, load_language_model
from srr.objective.causal import causal_compressed_coding_rate

EPS = 0.1  # ε of both conventions (srr's measurement default; YU23's ε² = 0.01)


def unit_heads(Z: torch.Tensor, U: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Z', U')`` with ``R^c(Z'; U') = Σ_k R^c`` of the unit-normalised ``Z U_k``: Z' the concatenated normalised
    projections ``(..., T, K·p)``, U' the block identity ``(K, K·p, p)``."""
    K, _, p = U.shape
    A = torch.einsum("...td,kdp->...ktp", Z, U)  # (..., K, T, p)
    A = A / A.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return A.transpose(-3, -2).flatten(-2), torch.eye(K * p, dtype=Z.dtype).reshape(K, p, K * p).transpose(1, 2)


def causal_rc(Z: torch.Tensor, U: torch.Tensor, convention: str) -> float:
    """Mean over blocks and positions of the prefix rate ``R^c(Z_{≤t}; U, ε)``."""
    if convention == "unit":
        Z, U = unit_heads(Z, U)
    return float(causal_compressed_coding_rate(Z.double(), U.double(), EPS, per_position=True).mean())


@torch.no_grad()
def layer_table(model: LanguageModel, idx: torch.Tensor) -> list[dict]:
    model.eval()
    _, layers = model.forward_layer_tokens(idx)
    rows = []
    for ell, (block, t) in enumerate(zip(model.blocks(), layers)):
        U = block.attn.subspaces
        before, after = block.ln_1(t.input), block.ln_1(t.half)  # (B, T, d) each
        row = {"layer": ell, "sparsity": float((t.output == 0).double().mean())}
        for convention in ("raw", "unit"):
            row[f"rc_before_{convention}"] = causal_rc(before, U, convention)
            row[f"rc_after_{convention}"] = causal_rc(after, U, convention)
            row[f"attention_lowers_rc_{convention}"] = row[f"rc_after_{convention}"] < row[f"rc_before_{convention}"]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/bench_lm/crate_lm_nano"))
    parser.add_argument("--data-dir", default="../shared/data/tinyshakespeare")
    parser.add_argument("--blocks", type=int, default=64, help="validation blocks of the model's context")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.time()
    trained = load_language_model(args.run)
    torch.manual_seed(0)
    initial = LanguageModel(trained.config)
    corpus = load_text_dataset("shakespeare-char", data_dir=args.data_dir)
    idx, _ = random_blocks(corpus.val, batch_size=args.blocks, context=trained.config.context, seed=0, step=0,
                           stream=2)
    given = sys.argv[1:] if argv is None else argv
    out = {"command": " ".join(["python -m experiments.language_layers", *given]), "run": str(args.run),
           "model": trained.config.to_dict(), "blocks": args.blocks, "eps": EPS,
           "convention": "causal R^c = mean over positions t of R^c(Z_<=t; U, eps) (the prefixes are the token "
                         "sets), before = LN1(Z^l), after = LN1(Z^{l+1/2}) with the same LN1 and U^l; raw: "
                         "LayerNorm'd tokens; unit: each head's z U_k normalised to unit norm (YU23 figures)",
           "trained": layer_table(trained, idx), "initial": layer_table(initial, idx)}
    for state in ("trained", "initial"):
        for convention in ("raw", "unit"):
            out[f"{state}_layers_lowered_{convention}"] = sum(r[f"attention_lowers_rc_{convention}"]
                                                              for r in out[state])
    out["wall_s"] = time.time() - start
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    for state in ("trained", "initial"):
        print(state)
        for r in out[state]:
            print(f"  layer {r['layer']}: raw {r['rc_before_raw']:.3f} -> {r['rc_after_raw']:.3f}, unit "
                  f"{r['rc_before_unit']:.3f} -> {r['rc_after_unit']:.3f}, sparsity {r['sparsity']:.3f}")
    return out


if __name__ == "__main__":
    main()
