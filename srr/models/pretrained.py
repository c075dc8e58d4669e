"""Weights in and out: ``save_pretrained`` writes a folder (``model.safetensors`` + ``config.json``);
``load_pretrained`` reads an srr folder, a run folder, an srr checkpoint, a safetensors file or a public
CRATE checkpoint (MATH.md §4.3), strictly, with the two fine-tuning adaptations the caller asks for:

- a different ``num_classes`` re-initialises the head (``mlp_head.1.*``), said in one log line;
- a different ``image_size`` interpolates the position embedding bicubically over the patch grid,
  the CLS position kept.

Anything else that does not fit raises a ``CheckpointError`` naming the keys (never a partial load).
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from srr.models.checkpoints import (FORMAT, VERSION, CheckpointError, is_srr_checkpoint, load_state_dict_strict,
                                    read_checkpoint, unwrap_state_dict)
from srr.models.config import CRATEConfig

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
HEAD = ("mlp_head.1.weight", "mlp_head.1.bias")
logger = logging.getLogger("srr")


# ----- writing ---------------------------------------------------------------------------------
def save_pretrained(model: nn.Module, folder: str | os.PathLike) -> Path:
    """Write ``folder/model.safetensors`` (the state dict; the config in its metadata too) and
    ``folder/config.json``; :func:`load_pretrained` (``create_model(pretrained=folder)``) reads it back."""
    from safetensors.torch import save_file

    config = getattr(model, "config", None)
    if not isinstance(config, CRATEConfig):
        raise TypeError(f"model must carry a CRATEConfig as .config, got {type(model).__name__}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # clone: safetensors refuses tensors that share storage (views, tied weights)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    config_text = json.dumps(config.to_dict())
    tmp = folder / f".{WEIGHTS}.tmp"  # written whole, then renamed: a reader never sees half a file
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "version": str(VERSION), "config": config_text})
    os.replace(tmp, folder / WEIGHTS)
    tmp = folder / f".{CONFIG}.tmp"
    tmp.write_text(json.dumps({"format": FORMAT, "version": VERSION, "config": config.to_dict()}, indent=2) + "\n")
    os.replace(tmp, folder / CONFIG)
    return folder


# ----- reading ---------------------------------------------------------------------------------
def read_pretrained(path: str | os.PathLike) -> tuple[dict | None, dict[str, Tensor], str]:
    """``(config dict or None, state dict, source)`` from any of the accepted forms; ``None``: a bare
    state dict (the public CRATE code's), whose architecture the caller names."""
    path = Path(path)
    if path.is_dir():
        if (path / WEIGHTS).is_file():
            return _read_safetensors(path / WEIGHTS, config_file=path / CONFIG)
        if (path / "checkpoints" / "latest.pt").is_file():
            return read_pretrained(path / "checkpoints" / "latest.pt")
        raise FileNotFoundError(f"{str(path)!r} is a folder without {WEIGHTS} (save_pretrained) or "
                                f"checkpoints/latest.pt (srr train); pass one of those or a checkpoint file")
    if not path.exists():
        raise FileNotFoundError(f"pretrained weights {str(path)!r} do not exist")
    if path.suffix == ".safetensors":
        return _read_safetensors(path, config_file=path.with_name(CONFIG))
    obj = read_checkpoint(path)
    source = f"checkpoint {str(path)!r}"
    if is_srr_checkpoint(obj):
        if obj.get("version") != VERSION:
            raise CheckpointError(f"{source} has format version {obj.get('version')!r}; this srr reads version "
                                  f"{VERSION}")
        return obj.get("config"), obj["state_dict"], source
    return None, unwrap_state_dict(obj), source


def _read_safetensors(path: Path, *, config_file: Path) -> tuple[dict | None, dict[str, Tensor], str]:
    from safetensors import SafetensorError, safe_open

    source = f"weights {str(path)!r}"
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state_dict = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"could not read {source} (corrupt or not a safetensors file): {e}") from e
    config = None
    try:
        if "config" in metadata:
            config = json.loads(metadata["config"])
        elif config_file.is_file():
            config = json.loads(config_file.read_text()).get("config")
    except (json.JSONDecodeError, AttributeError) as e:
        raise CheckpointError(f"{source} comes with an unreadable config: {e}") from e
    return config, unwrap_state_dict(state_dict), source


def load_pretrained(path: str | os.PathLike, *, name: str | None, build, model_class, **given) -> nn.Module:
    """The model ``name`` (or the one the file's config describes) with the weights at ``path``.

    ``given`` overrides the config (or the registry entry's defaults). Of those, ``num_classes``
    and ``image_size`` may differ from the weights' (a new head; an interpolated position
    embedding); every other mismatch is a ``CheckpointError``. ``model_class(config)`` builds a model from
    a stored config (``create_model`` passes ``CRATE``; this module never imports the model).
    """

    config, state_dict, source = read_pretrained(path)
    if config is not None:
        try:
            config = CRATEConfig.from_dict(config)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{source} holds an invalid config: {e}") from e
        if name is not None and config.name is not None and name != config.name:
            raise CheckpointError(f"{source} holds model {config.name!r}, but {name!r} was asked for")
        model = model_class(config.replace(**given) if given else config)
    elif name is None:
        raise CheckpointError(f"{source} holds a bare state dict (no config inside); pass the model name, e.g. "
                              f"create_model('crate_tiny', pretrained=...), to load it as a public CRATE checkpoint")
    else:
        model = build(name, **given)
    state_dict = adapt_state_dict(model, dict(state_dict), source=source,
                                  new_head="num_classes" in given, new_size="image_size" in given)
    return load_state_dict_strict(model, state_dict, source=source)


def adapt_state_dict(model: nn.Module, state_dict: dict[str, Tensor], *, source: str, new_head: bool,
                     new_size: bool) -> dict[str, Tensor]:
    """``state_dict`` with the head replaced by ``model``'s fresh one (``new_head``) and the position
    embedding interpolated to ``model``'s grid (``new_size``), where they do not fit; logs each."""
    own = model.state_dict()
    if new_head and any(_shape(state_dict, k) != _shape(own, k) for k in HEAD):
        old = _shape(state_dict, HEAD[0])
        for k in HEAD:
            state_dict.pop(k, None)
            if k in own:
                state_dict[k] = own[k]
        logger.warning(f"{source}: new classifier head, re-initialised ({old[0] if old else 0} -> "
                       f"{model.config.num_classes} classes)")
    key = "pos_embedding"
    if new_size and key in state_dict and key in own and state_dict[key].shape != own[key].shape:
        old_n, new_n = state_dict[key].shape[1] - 1, own[key].shape[1] - 1
        state_dict[key] = interpolate_pos_embedding(state_dict[key], grid=math.isqrt(new_n), source=source)
        logger.warning(f"{source}: position embedding interpolated from {math.isqrt(old_n)}x{math.isqrt(old_n)} to "
                       f"{math.isqrt(new_n)}x{math.isqrt(new_n)} patches (bicubic, CLS kept)")
    return state_dict


def interpolate_pos_embedding(pos: Tensor, *, grid: int, source: str = "position embedding") -> Tensor:
    """``(1, 1 + g², d) -> (1, 1 + grid², d)``: bicubic over the square patch grid, the CLS position kept."""
    if pos.ndim != 3 or pos.shape[0] != 1:
        raise CheckpointError(f"{source}: pos_embedding must have shape (1, 1 + patches, dim), got {tuple(pos.shape)}")
    n = pos.shape[1] - 1
    g = math.isqrt(n)
    if g * g != n:
        raise CheckpointError(f"{source}: pos_embedding covers {n} patches, not a square grid; cannot interpolate")
    cls, patches = pos[:, :1], pos[:, 1:]  # (1, 1, d), (1, g², d)
    patches = rearrange(patches, "1 (h w) d -> 1 d h w", h=g).float()
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    patches = rearrange(patches, "1 d h w -> 1 (h w) d").to(pos.dtype)  # (1, grid², d)
    return torch.cat((cls, patches), dim=1)


def _shape(state_dict, key) -> tuple | None:
    return tuple(state_dict[key].shape) if key in state_dict else None
