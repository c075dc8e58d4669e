"""srr: objective-driven layer design for white-box transformers (sparse rate reduction).

The dependency direction is one way: objective → derivation → layers → models →
measurement / regularisation → training → CLI (see ``docs/architecture.md``).

- the objective: ``coding_rate`` (E1), ``compressed_coding_rate`` (E2), ``rate_reduction`` (E3),
  ``sparse_rate_reduction`` (E4), and the symbolic terms in ``srr.objective``;
- derivation: ``derive_step``, ``derive`` (layers as proximal-gradient steps, ``torch.func``; ``srr.derivation``);
- layers: ``MSSA``, ``ExactCompression``, ``ISTA``, ``OvercompleteISTA``, ``check`` (fast layer vs derived reference);
- models: ``create_model``, ``list_models``, ``register_model`` (the CRATE family);
- measurement: ``measure``, ``SRRRegularizer`` (``srr.measurement``); rank statistics and baselines
  (``srr.generalization``);
- training: ``srr.train`` (``TrainConfig``, ``srr.train.train``), the CLI ``srr`` (``srr.cli``).
"""
from srr import objective
from srr.rates import (Sparsity, coding_rate, coding_rate_grad, compressed_coding_rate,
                       compressed_coding_rate_grad, crate_vis_compressed_coding_rate, rate_reduction,
                       sparse_rate_reduction, sparsity, variational_compressed_coding_rate)
from srr.derivation import DerivedLayer, derive, derive_step
from srr.layers import ISTA, MSSA, TSSA, CheckReport, ExactCompression, OvercompleteISTA, check
from srr.models import (CRATE, CheckpointError, CRATEConfig, LayerTokens, create_model, list_models,
                        list_variants, load_public_state_dict, param_groups, register_model, save_checkpoint)
from srr.measurement import SRRRegularizer, measure
from srr import generalization
from srr import visualize
from srr import train
from srr.train import RunResult, TrainConfig

__version__ = "0.1.0"

__all__ = [
    "objective",
    "coding_rate", "compressed_coding_rate", "rate_reduction", "sparsity", "Sparsity",
    "sparse_rate_reduction", "coding_rate_grad", "compressed_coding_rate_grad",
    "crate_vis_compressed_coding_rate", "variational_compressed_coding_rate",
    "derive_step", "derive", "DerivedLayer",
    "MSSA", "ExactCompression", "TSSA", "ISTA", "OvercompleteISTA", "check", "CheckReport",
    "CRATE", "CRATEConfig", "LayerTokens", "create_model", "list_models", "list_variants", "register_model",
    "save_checkpoint", "load_public_state_dict", "CheckpointError", "param_groups",
    "measure", "SRRRegularizer", "generalization", "visualize",
    "train", "TrainConfig", "RunResult",
]
