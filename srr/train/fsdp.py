"""``--fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``), one CRATE layer per unit plus the root.

Each layer ``model.blocks()[ℓ]`` is one unit and the root (patch embedding, class token, position embedding,
head) another: between a unit's forward and its backward only its shard of the parameters, gradients and
optimiser state stays on a rank (1/world of it), and the whole unit is all-gathered only while it runs.
``mixed=True`` (``--fsdp-mixed``) computes with bfloat16 parameters and reduces gradients in float32
(``MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)``); the sharded parameters and the
optimiser state stay float32.

Two things the run needs besides the sharded training step:

- the layers the SRR regulariser reads (HU24 §6, MATH.md §6) keep their parameters gathered from their
  forward to their backward (``reshard_after_forward=False``): the regulariser reads the layer's subspaces
  ``U`` (``block.subspaces``, from ``qkv.weight``) after the model's forward and sends its gradient to them;
  the gradient then joins the task gradient in that unit's reduce-scatter, which averages it over ranks, so
  the update is that of one process on the global batch, as under DDP;
- a plain replica of the model (no FSDP), refreshed from the shards by one all-gather per parameter,
  on which every rank can evaluate, measure μ_SRR and which ``latest.pt`` / ``best.pt`` store, so that
  ``srr eval RUN`` and ``create_model(pretrained=RUN)`` read an FSDP run without FSDP.

Without ``torchrun`` (one process) the run still shards, over a one-rank process group
(:func:`srr.train.distributed.setup` with ``group_of_one=True``), so that the same code and checkpoint
format serve one and N processes.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from . import distributed as D

__all__ = ["ShardedModel", "fsdp_units"]


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The modules sharded as units of their own: every layer of a CRATE model (``model.blocks()``)."""
    blocks = getattr(model, "blocks", None)
    if not callable(blocks) or not list(blocks()):
        raise ValueError(f"--fsdp shards one layer per unit and needs a model with layers (model.blocks(), as every "
                         f"srr CRATE model has); got a {type(model).__name__}")
    return list(blocks())


class ShardedModel:
    """``model`` sharded in place by FSDP2 over every rank of ``env``, with its plain replica.

    ``model`` keeps its identity, names and hooks; its parameters become ``DTensor`` shards, so build the
    optimiser from it after this. ``replica`` is a deep copy taken before sharding (no random draw, so the
    run's RNG stream is that of an unsharded run); :meth:`gather` brings it up to date.
    """

    def __init__(self, model: nn.Module, env: D.DistEnv, *, mixed: bool = False):
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if not dist.is_initialized():
            raise RuntimeError("--fsdp needs a process group: start the run through srr.train.train (which joins "
                               "torchrun's, or makes one of one process)")
        units = fsdp_units(model)
        # A CRATE layer returns a reshape of a fresh tensor that nothing changes in place (an in-place change
        # would skip FSDP's pre-backward hook, which the 1-vs-N equality tests would show): FSDP2's warning
        # about view outputs does not apply.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPCRATEBlock\) returned a view tensor")
        self.replica = copy.deepcopy(model)
        self.replica.requires_grad_(False)
        policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed
                  else MixedPrecisionPolicy())
        mesh = init_device_mesh(env.device.type, (dist.get_world_size(),))
        for unit in units:
            fully_shard(unit, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        self.model, self.env, self.mixed = model, env, mixed
        self._gathered_at: int | None = None  # the step the replica holds

    def keep_gathered(self, regularizer) -> None:
        """Keep the units the SRR regulariser reads gathered from forward to backward (module docstring)."""
        if regularizer is None:
            return
        from torch.distributed.fsdp import FSDPModule

        for site in regularizer.sites:
            name = site.module
            while True:  # the innermost unit holding the site's module
                module = self.model.get_submodule(name)
                if isinstance(module, FSDPModule) or not name:
                    break
                name = name.rpartition(".")[0]
            if module is not self.model:  # the root is never resharded after its forward
                module.set_reshard_after_forward(False, recurse=False)

    @torch.no_grad()
    def gather(self, step: int | None = None) -> nn.Module:
        """Copy the full parameters into ``replica`` on every rank (collective); skipped if ``step`` is the
        step of the last gather. Returns the replica."""
        from torch.distributed.tensor import DTensor

        if step is not None and step == self._gathered_at:
            return self.replica
        target = self.replica.state_dict()
        for name, value in self.model.state_dict().items():  # the same order on every rank
            target[name].copy_(value.full_tensor() if isinstance(value, DTensor) else value)
        self._gathered_at = step
        return self.replica

    def forget_gathered(self) -> None:
        """The shards changed outside training (a restore): the next :meth:`gather` must run."""
        self._gathered_at = None
