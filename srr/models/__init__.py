"""CRATE models: registry, configurations, checkpoints (see docs/architecture.md)."""
from srr.models.blocks import CRATEBlock, LayerTokens, PreNorm
from srr.models.checkpoints import (CheckpointError, load_public_state_dict, read_checkpoint, save_checkpoint,
                                    unwrap_state_dict)
from srr.models.config import VARIANTS, CRATEConfig
from srr.models.crate import CRATE
from srr.models.param_groups import param_groups
from srr.models.pretrained import interpolate_pos_embedding, load_pretrained, push_to_hub, save_pretrained
from srr.models.registry import create_model, list_models, list_variants, register_model
from srr.models import zoo as _zoo  # noqa: F401  (registers the built-in models)
from srr.models.lm import LanguageModel, LMConfig  # noqa: E402  (registers the language models)

__all__ = [
    "CRATE", "CRATEConfig", "CRATEBlock", "PreNorm", "LayerTokens", "VARIANTS",
    "create_model", "list_models", "list_variants", "register_model",
    "save_checkpoint", "read_checkpoint", "load_public_state_dict", "unwrap_state_dict", "CheckpointError",
    "LanguageModel", "LMConfig",
    "param_groups", "save_pretrained", "load_pretrained", "push_to_hub", "interpolate_pos_embedding",
]
