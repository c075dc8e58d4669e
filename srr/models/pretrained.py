"""Weights in and out: ``save_pretrained`` writes a folder (``model.safetensors`` + ``config.json``);
``load_pretrained`` reads an srr folder, a run folder, an srr checkpoint, a safetensors file or a public
CRATE checkpoint (MATH.md §4.3), strictly, with the two fine-tuning adaptations the caller asks for:

- a different ``num_classes`` re-initialises the head (``mlp_head.1.*``), said in one log line;
- a different ``image_size`` interpolates the position embedding bicubically over the patch grid,
  the CLS position kept.

Anything else that does not fit raises a ``CheckpointError`` naming the keys (never a partial load).

The Hugging Face hub holds the same folder: :func:`push_to_hub` uploads it, and ``hf://owner/repo`` (or
timm's ``hf-hub:owner/repo``, either with ``@revision``) is accepted wherever a path is. Both need the
optional ``huggingface_hub`` package (``pip install 'srr[hub]'``); without it they say so in one line.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from srr.models.checkpoints import (FORMAT, VERSION, CheckpointError, check_version, is_srr_checkpoint,
                                    load_state_dict_strict, read_checkpoint, unwrap_state_dict)
from srr.models.config import CRATEConfig

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
HEAD = ("mlp_head.1.weight", "mlp_head.1.bias")
HUB_PREFIXES = ("hf://", "hf-hub:")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
logger = logging.getLogger("srr")


class MissingPackageError(ImportError):
    """An optional package that a requested feature needs is not installed; the message says what to install."""


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


# ----- the Hugging Face hub --------------------------------------------------------------------
def _huggingface_hub(what: str):
    try:
        import huggingface_hub
    except ImportError:
        raise MissingPackageError(f"{what} needs the huggingface_hub package, which is not installed: "
                                  f"pip install 'srr[hub]' (or pip install huggingface_hub)") from None
    return huggingface_hub


def parse_hub_spec(spec: str | os.PathLike) -> tuple[str, str | None] | None:
    """``(repo_id, revision or None)`` of ``hf://owner/repo[@revision]`` or ``hf-hub:owner/repo[@revision]``;
    None for anything else (a local path)."""
    if not isinstance(spec, str):
        return None
    prefix = next((p for p in HUB_PREFIXES if spec.startswith(p)), None)
    if prefix is None:
        return None
    repo_id, at, revision = spec[len(prefix):].partition("@")
    if not _REPO_ID.match(repo_id) or (at and not revision):
        raise ValueError(f"a hub source must look like {prefix}owner/repo or {prefix}owner/repo@revision, "
                         f"got {spec!r}")
    return repo_id, revision or None


def download_from_hub(spec: str) -> Path:
    """The local folder (``model.safetensors`` + ``config.json``, in the hub's cache) of ``hf://owner/repo``."""
    repo_id, revision = parse_hub_spec(spec)
    hub = _huggingface_hub(f"loading {spec!r}")
    try:
        folder = hub.snapshot_download(repo_id, revision=revision, allow_patterns=[WEIGHTS, CONFIG],
                                       library_name="srr")
    except (OSError, ValueError) as e:  # the hub's errors: not found, gated, offline, no network
        reason = " ".join(str(e).split())
        reason = reason if len(reason) <= 200 else reason[:197] + "..."
        raise FileNotFoundError(f"could not fetch {spec!r} from the Hugging Face hub ({type(e).__name__}: "
                                f"{reason})") from e
    if not (Path(folder) / WEIGHTS).is_file():
        raise FileNotFoundError(f"{spec!r} holds no {WEIGHTS}; srr reads hub repos written by push_to_hub "
                                f"(save_pretrained's folder)")
    return Path(folder)


def push_to_hub(model: nn.Module, repo_id: str, *, revision: str | None = None, private: bool | None = None,
                token: str | None = None, commit_message: str | None = None):
    """Upload ``model``'s :func:`save_pretrained` folder to the hub repo ``repo_id`` (created if missing);
    ``create_model(pretrained="hf://" + repo_id)`` reads it back. Returns the hub's ``CommitInfo``."""
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id):
        raise ValueError(f"repo_id must look like 'owner/repo', got {repo_id!r}")
    hub = _huggingface_hub("push_to_hub")
    name = getattr(getattr(model, "config", None), "name", None) or type(model).__name__
    api = hub.HfApi(token=token)
    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(model, folder)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                 commit_message=commit_message or f"srr: upload {name}")


# ----- reading ---------------------------------------------------------------------------------
def read_pretrained(path: str | os.PathLike) -> tuple[dict | None, dict[str, Tensor], str]:
    """``(config dict or None, state dict, source)`` from any of the accepted forms; ``None``: a bare
    state dict (the public CRATE code's), whose architecture the caller names."""
    if parse_hub_spec(path) is not None:
        config, state_dict, _ = read_pretrained(download_from_hub(str(path)))
        return config, state_dict, f"hub weights {str(path)!r}"
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
        check_version(obj, source)
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
