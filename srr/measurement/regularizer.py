"""SRR as a regulariser (HU24 §6, MATH.md §6), attached to any model by forward hooks.

    loss = CE + η · (1/|S|) Σ_{ℓ∈S} μ_SRR(f_ℓ(detach(Z^ℓ)))          μ_SRR = λ‖Z‖₀ + R^c − R  (E4)

    reg = SRRRegularizer(model, layers=[-1], weight=1e-3)
    loss = criterion(model(x), y) + reg()  # η · mean_ℓ μ_SRR; reg.parts holds R, R^c, ‖Z‖₀ per layer

``site`` picks one of two strategies (``_OutputSite``, ``_ProjectionSite`` below): ``"output"`` hooks the
layer outputs; ``"projection"`` reads the MSSA input LN₁(Z^ℓ) off the model's own qkv projection
(srr/measurement/projection.py). Detached input, its cost, the sites, the ``"sample"``/``"batch"``
scopes and the gradient convention under ``torch.distributed``: ``docs/guide-measurement.md``, section
``srr/measurement/regularizer.py``.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from srr._checks import check_eps, check_lam, check_nonnegative
from srr.measurement.distributed import is_distributed
from srr.measurement.projection import ProjectionCapture, projection_mssa, projection_terms
from srr.measurement.subspaces import SubspacePolicy, check_policy_subspaces, make_policy
from srr.measurement.terms import SRRTerms, batch_terms, mean_terms, sample_terms
from srr.measurement.tokens import TokenSite, as_sites, to_tokens

__all__ = ["SRRRegularizer"]

Scope = Literal["sample", "batch"]
Site = Literal["output", "projection"]


class _Reconnect(torch.autograd.Function):
    """Identity on a layer's output ``out = f(Z_d)``; backward also sends ``(∂f/∂Z_d)ᵀ g`` to ``Z``."""

    @staticmethod
    def forward(ctx, out: Tensor, z: Tensor, z_detached: Tensor) -> Tensor:
        ctx.graph = (out, z_detached)
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad: Tensor):
        out, z_detached = ctx.graph
        del ctx.graph
        (grad_z,) = torch.autograd.grad(out, z_detached, grad, retain_graph=True)
        return grad, grad_z, None


def _pool_rule(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    if getattr(config, "pool", None) in ("cls", "mean"):
        return config.pool
    if hasattr(model, "class_token") or getattr(model, "global_pool", None) == "token":
        return "cls"
    return "mean"


class SRRRegularizer(nn.Module):
    """``weight · (1/|S|) Σ_{ℓ∈S} μ_SRR(Z_ℓ)`` over the outputs of the chosen layers of ``model``.

    - ``layers``: indices into the model's layers (default ``-1``, the last: HU24's choice), module
      names or :class:`TokenSite` values (srr/measurement/tokens.py).
    - ``weight`` η, ``eps`` ε, ``lam`` λ of (E4).
    - ``subspaces``: ``"model"`` (the layer's own heads), ``"data"``, ``"learned"``, a
      :class:`SubspacePolicy` or tensors (srr/measurement/subspaces.py). Learned subspaces are this
      module's parameters: give ``reg.parameters()`` to the optimiser.
    - ``detach_input``: HU24's per-layer form (default) or the plain form.
    - ``site``: ``"output"`` (default: the layer output Z^{ℓ+1}, HU24's ``f_ℓ(·)``) or ``"projection"``
      (the MSSA input LN₁(Z^ℓ) with its own projection ``qkv(LN₁(Z^ℓ))``, no projection of the regulariser's
      own; CRATE softmax variants only, ``subspaces="model"`` and ``scope="sample"``).
    - ``scope``: ``"sample"`` or ``"batch"``; ``pool`` (batch scope): ``"cls"``, ``"mean"``, a
      callable ``(B, N, d) -> (B, d)``, or ``"auto"`` (the model's own pooling; CLS for ViTs).
    - ``group``: the ``torch.distributed`` process group (default: the world, when initialised).
      Learned subspaces are not part of the DDP-wrapped model: call :meth:`sync_gradients` after
      ``backward()``.

    Hooks stay until :meth:`close` (or the end of a ``with`` block).
    """

    def __init__(self, model: nn.Module, *, layers=-1, weight: float = 1e-3, eps: float = 0.1, lam: float = 0.1,
                 subspaces="model", detach_input: bool = True, scope: Scope = "sample",
                 pool: str | Callable[[Tensor], Tensor] = "auto", group=None, site: Site = "output"):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if scope not in ("sample", "batch"):
            raise ValueError(f"scope must be 'sample' (each sample's tokens) or 'batch' (one feature per sample), got "
                             f"{scope!r}")
        if not (callable(pool) or pool in ("auto", "cls", "mean")):
            raise ValueError(f"pool must be 'auto', 'cls', 'mean' or a callable (B, N, d) -> (B, d), got {pool!r}")
        if site not in ("output", "projection"):
            raise ValueError(f"site must be 'output' (the layer output Z^(l+1)) or 'projection' (the MSSA input "
                             f"LN1(Z^l) through the model's own qkv projection), got {site!r}")
        if site == "projection" and not (isinstance(subspaces, str) and subspaces == "model" and scope == "sample"):
            raise ValueError(f"site='projection' measures the model's own heads per sample: it needs "
                             f"subspaces='model' and scope='sample', got subspaces={subspaces!r}, scope={scope!r}")
        self.site = site
        self.weight = check_nonnegative(weight, "weight")
        self.eps = check_eps(eps)
        self.lam = check_lam(lam)
        self.detach_input = bool(detach_input)
        self.scope = scope
        self.pool = _pool_rule(model) if pool == "auto" else pool
        self.group = group
        self.__dict__["model"] = model  # not a submodule: reg.parameters() are the regulariser's own
        self.sites: list[TokenSite] = as_sites(model, layers)
        modules = dict(model.named_modules())
        self._modules_hooked = [modules[s.module] for s in self.sites]
        self.policy: SubspacePolicy = make_policy(subspaces, model)
        self.parts: dict[str, SRRTerms] = {}
        self._warned: set[str] = set()
        for token_site in self.sites:
            if token_site.where != "output":
                raise ValueError(f"the regulariser reads layers; site {token_site.label!r} reads a module's input")
        strategy = _ProjectionSite if site == "projection" else _OutputSite
        self._site = strategy(self, model, self._modules_hooked)

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.sites]

    # ----- value --------------------------------------------------------------------------
    def forward(self, targets: Tensor | None = None) -> Tensor:
        """``weight · mean over layers of μ_SRR`` of the last forward pass (a scalar, differentiable).

        ``targets`` are needed only to fit ``FromData(grouping="labels")`` subspaces.
        """
        terms = self._site.terms(targets)  # {label: SRRTerms}, each differentiable
        self.parts = {label: SRRTerms(*(t.detach() for t in value)) for label, value in terms.items()}
        return self.weight * sum(value.srr for value in terms.values()) / len(self.labels)

    def _warn_if_degenerate(self, label: str, Z: Tensor) -> None:
        """A token set of fewer than 2 tokens (a ResNet's 1×1 last map at 32 px; a batch of 1) has R and R^c
        of one vector: the term cannot spread or compress anything. Said once per layer."""
        if Z.shape[-2] < 2 and label not in self._warned:
            self._warned.add(label)
            what = "tokens per sample" if self.scope == "sample" else "samples in the batch"
            warnings.warn(f"SRR regulariser: layer {label!r} gives {Z.shape[-2]} {what} (shape {tuple(Z.shape)}); "
                          f"μ_SRR of fewer than 2 tokens is degenerate: choose an earlier layer with a larger "
                          f"feature map (e.g. a ResNet's layer2 or layer3 at 32 px)", stacklevel=4)

    def sync_gradients(self) -> None:
        """Average the gradients of the regulariser's own parameters (learned subspaces) over ranks.

        DDP averages the wrapped model's gradients only; call this after ``backward()`` so that
        learned subspaces get the single-process gradient of the global batch too.
        """
        if not is_distributed(self.group):
            return
        world = dist.get_world_size(self.group)
        for p in self.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad, group=self.group)
                p.grad /= world

    # ----- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        """Remove every hook; the model runs exactly as before the regulariser was attached."""
        self._site.close()

    @property
    def active(self) -> bool:
        return self._site.active

    def __enter__(self) -> "SRRRegularizer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def extra_repr(self) -> str:
        return (f"layers={self.labels}, site={self.site!r}, weight={self.weight}, eps={self.eps}, lam={self.lam}, "
                f"scope={self.scope!r}, "
                f"detach_input={self.detach_input}, policy={type(self.policy).__name__}")


def _not_captured(missing: list[str], what: str) -> RuntimeError:
    return RuntimeError(f"no {what} captured for layers {missing} since the last call: run the model's forward "
                        f"pass (with the hooks attached, i.e. before close()) before calling the regulariser")


class _OutputSite:
    """``site="output"``: the layer outputs Z^{ℓ+1} through forward hooks (detached inputs for HU24's form),
    R, R^c and ‖Z‖₀ from the tokens with the subspaces of the regulariser's policy."""

    def __init__(self, reg: SRRRegularizer, model: nn.Module, modules: list[nn.Module]):
        self.reg = reg
        reg.policy.bind(model, modules)
        self.captured: dict[str, Tensor] = {}
        self.pending: dict[str, tuple[Tensor, Tensor]] = {}
        self.handles = []
        for site, module in zip(reg.sites, modules):
            if reg.detach_input:
                self.handles.append(module.register_forward_pre_hook(self._detach_hook(site.label)))
            self.handles.append(module.register_forward_hook(self._output_hook(site.label)))

    def _detach_hook(self, label: str):
        def hook(module, args):
            z = args[0]
            if not (torch.is_grad_enabled() and isinstance(z, Tensor) and z.requires_grad):
                return None
            z_detached = z.detach().requires_grad_()
            self.pending[label] = (z, z_detached)
            return (z_detached, *args[1:])
        return hook

    def _output_hook(self, label: str):
        def hook(module, args, output):
            pending = self.pending.pop(label, None)
            self.captured[label] = to_tokens(output)
            if pending is not None:
                return _Reconnect.apply(output, *pending)
            return None
        return hook

    def _features(self, Z: Tensor) -> Tensor:
        reg = self.reg
        if reg.scope == "sample":
            return Z
        if callable(reg.pool):
            return reg.pool(Z)  # (B, d)
        return Z[:, 0] if reg.pool == "cls" else Z.mean(1)  # (B, d)

    def terms(self, targets: Tensor | None) -> dict[str, SRRTerms]:
        reg = self.reg
        missing = [label for label in reg.labels if label not in self.captured]
        if missing:
            raise _not_captured(missing, "tokens")
        tokens = [self._features(self.captured.pop(label)) for label in reg.labels]
        if reg.policy.needs_fit:
            reg.policy.fit([t if t.ndim == 3 else t.unsqueeze(1) for t in tokens], targets)  # a row is a sample
        out = {}
        for i, (label, Z) in enumerate(zip(reg.labels, tokens)):
            reg._warn_if_degenerate(label, Z)
            U = check_policy_subspaces(reg.policy.subspaces(i), Z.shape[-1], label)
            if reg.scope == "sample":
                out[label] = mean_terms(sample_terms(Z, U, eps=reg.eps, lam=reg.lam), reg.group)
            else:
                out[label] = batch_terms(Z, U, eps=reg.eps, lam=reg.lam, group=reg.group)
        return out

    @property
    def active(self) -> bool:
        return bool(self.handles)

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self.captured, self.pending = [], {}, {}


class _ProjectionSite:
    """``site="projection"``: μ_SRR (E4) of X = LN₁(Z^ℓ), the parts from the model's own ``A = X U^ℓ``
    (srr/measurement/projection.py); every layer is checked before any is hooked."""

    def __init__(self, reg: SRRRegularizer, model: nn.Module, modules: list[nn.Module]):
        self.reg = reg
        for site, module in zip(reg.sites, modules):
            projection_mssa(module, site.label)
        self.captures = {s.label: ProjectionCapture(m, s.label, detach=reg.detach_input)
                         for s, m in zip(reg.sites, modules)}

    def terms(self, targets: Tensor | None) -> dict[str, SRRTerms]:
        reg = self.reg
        missing = [label for label, c in self.captures.items() if not c.captured]
        if missing:
            raise _not_captured(missing, "projection")
        out = {}
        for label, capture in self.captures.items():
            X, A = capture.tokens()
            out[label] = mean_terms(projection_terms(X, A, capture.mssa.heads, eps=reg.eps, lam=reg.lam), reg.group)
        return out

    @property
    def active(self) -> bool:
        return bool(self.captures)

    def close(self) -> None:
        for capture in self.captures.values():
            capture.remove()
        self.captures = {}
