"""Checkpoints: the public CRATE state dicts (MATH.md §4.3) and our own (state dict + config).

Public: a state dict saved from ``model/crate.py``'s ``CRATE`` class, possibly wrapped as
``{"model": sd}`` (or ``{"state_dict": sd}``) and/or with ``module.`` prefixes (DataParallel).
It loads into ``variant="crate"`` only, strictly by key and shape.

Ours: ``{"format": "srr.crate", "version": 1, "config": CRATEConfig.to_dict(), "state_dict": ...}``
written atomically (a temporary file in the same directory, then ``os.replace``), read with
``torch.load(weights_only=True)``; the config alone rebuilds the model.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

FORMAT = "srr.crate"
VERSION = 1
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile


def umask_mode() -> int:
    """The mode a plain new file gets (0o666 less the umask): temporary files start 0600, and a
    renamed one keeps it, so atomic writers set this before the rename."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message says why."""


# ----- reading ---------------------------------------------------------------------------------
def read_checkpoint(path: str | os.PathLike) -> dict:
    """``torch.load(path, weights_only=True)`` on CPU, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle garbage, disallowed globals: all "unreadable"
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        causes = [line.partition("WeightsUnpickler error:")[2].strip() for line in lines
                  if "WeightsUnpickler error:" in line]  # torch's weights_only advice is a page: keep the cause
        reason = causes[0] if causes else (lines[0] if lines else "")
        reason = reason if len(reason) <= 100 else reason[:97] + "..."
        raise CheckpointError(f"could not read checkpoint {str(path)!r}: corrupt, truncated, or not a torch.save "
                              f"file of plain tensors and dicts ({type(e).__name__}: {reason})") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {str(path)!r} must hold a dict (a state dict or {{'model': state_dict}}), "
                              f"got {type(obj).__name__}")
    return dict(obj)


def check_version(obj: dict, source: str) -> None:
    """An srr checkpoint of another format version is a :class:`CheckpointError` naming both versions."""
    if obj.get("version") != VERSION:
        raise CheckpointError(f"{source} has format version {obj.get('version')!r}; this srr reads version {VERSION}")


def is_srr_checkpoint(obj: Mapping) -> bool:
    return obj.get("format") == FORMAT


def unwrap_state_dict(obj: Mapping) -> dict[str, Tensor]:
    """The state dict inside ``obj``: under ``"model"``/``"state_dict"`` if present, prefixes stripped."""
    for key in ("model", "state_dict"):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    out = {}
    for k, v in obj.items():
        if not isinstance(k, str):
            raise CheckpointError(f"state dict keys must be strings, got {k!r}")
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if k.startswith(prefix):
                    k, changed = k[len(prefix):], True
        out[k] = v
    return out


def check_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor], *, source: str = "state dict") -> None:
    """Raise a ``CheckpointError`` listing every missing key, unexpected key and shape mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and (not isinstance(v, Tensor) or v.shape != expected[k].shape)
    )
    if missing or unexpected or mismatched:
        lines = [f"{source} does not fit the model ({type(model).__name__}"
                 f"{', variant ' + repr(model.config.variant) if hasattr(model, 'config') else ''}):"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {missing}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {unexpected}")
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): {mismatched}")
        raise CheckpointError("\n".join(lines))


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, Tensor], *,
                           source: str = "state dict") -> nn.Module:
    check_state_dict(model, state_dict, source=source)
    model.load_state_dict(state_dict, strict=True)
    return model


def load_public_state_dict(model: nn.Module, state_dict_or_path, *, source: str | None = None) -> nn.Module:
    """Load a public-code CRATE state dict (or a file holding one) into ``model`` (``variant="crate"``)."""
    variant = getattr(getattr(model, "config", None), "variant", None)
    if variant != "crate":
        raise CheckpointError(f"public CRATE checkpoints load into variant 'crate' only, got variant {variant!r}")
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        source = source or f"checkpoint {str(state_dict_or_path)!r}"
        state_dict_or_path = read_checkpoint(state_dict_or_path)
    if not isinstance(state_dict_or_path, Mapping):
        raise TypeError(f"state_dict_or_path must be a state dict or a path, got {type(state_dict_or_path).__name__}")
    return load_state_dict_strict(model, unwrap_state_dict(state_dict_or_path), source=source or "public state dict")


# ----- our own format --------------------------------------------------------------------------
def save_checkpoint(model: nn.Module, path: str | os.PathLike, *, extra: Mapping | None = None) -> Path:
    """Write ``model``'s state dict and config to ``path`` atomically; ``extra`` (plain data) is kept."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise TypeError(f"model must carry a CRATEConfig as .config, got {type(model).__name__}")
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, "config": config.to_dict(),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if extra:
        payload["extra"] = dict(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, umask_mode())
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def create_from_checkpoint(path: str | os.PathLike, *, name: str | None, build: Callable[..., nn.Module],
                           model_class: Callable[..., nn.Module], **given) -> nn.Module:
    """Rebuild (ours, as ``model_class(config)``) or build-then-load (public) a model from ``path``; used by
    ``create_model``, which passes ``CRATE`` (so that this module never imports the model)."""
    from srr.models.config import CRATEConfig

    obj = read_checkpoint(path)
    source = f"checkpoint {str(path)!r}"
    if is_srr_checkpoint(obj):
        check_version(obj, source)
        try:
            config = CRATEConfig.from_dict(obj["config"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{source} holds an invalid config: {e}") from e
        if name is not None and config.name is not None and name != config.name:
            raise CheckpointError(f"{source} holds model {config.name!r}, but create_model was asked for {name!r}")
        model = model_class(config.replace(**given) if given else config)
        return load_state_dict_strict(model, obj["state_dict"], source=source)
    if name is None:
        raise CheckpointError(f"{source} is not an srr checkpoint (no config inside); pass the model name, e.g. "
                              f"create_model('crate_base', checkpoint=...), to load it as a public CRATE state dict")
    variant = given.get("variant", "crate")
    if variant != "crate":
        raise CheckpointError(f"{source} is a public CRATE state dict; it loads into variant 'crate' only, got "
                              f"{variant!r}")
    return load_public_state_dict(build(name, **given), obj, source=source)
