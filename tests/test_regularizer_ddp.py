"""SRRRegularizer under torch.distributed equals one process on the concatenated batch (MATH.md §6).

Two gloo processes on the CPU each hold half of a batch and a DDP-wrapped copy of the model;
for both scopes (per sample, per batch) and both forms (detached input, plain) the loss
``CE + reg()`` must give, on every rank, the single-process value of the whole batch, and after
DDP's gradient averaging the single-process parameter gradients. Gradients w.r.t. each rank's
own inputs are ``world_size ×`` the single-process ones (DDP's convention for a per-rank mean loss,
srr/measurement/distributed.py).
"""
from __future__ import annotations

import itertools
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision
from torch.nn.parallel import DistributedDataParallel

from srr.measurement import Learned, SRRRegularizer

WORLD = 2
BATCH = 8  # global; each rank holds BATCH // WORLD
CASES = list(itertools.product(("sample", "batch"), (True, False)))
LEARNED = [("sample", "learned"), ("batch", "learned")]  # learned subspaces, gradients synced by the regulariser


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=16, mlp_dim=32, num_classes=3).double()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 3, 16, 16, generator=g, dtype=torch.float64), torch.randint(0, 3, (BATCH,), generator=g)


def _step(model, reg, x, y):
    """Loss, reg parts and input gradient of one step; parameter gradients stay in ``.grad``."""
    x = x.clone().requires_grad_()
    loss = torch.nn.functional.cross_entropy(model(x), y) + reg(y)
    loss.backward()
    return loss.detach(), {k: v.srr for k, v in reg.parts.items()}, x.grad


def _regularizer(model, scope, detach):
    if detach == "learned":
        return SRRRegularizer(model, layers=[1], weight=0.5, scope=scope, subspaces=Learned(heads=2)).double()
    return SRRRegularizer(model, layers=[0, 1], weight=0.5, scope=scope, detach_input=detach)


def _grads(model, reg):
    return {**{n: p.grad for n, p in model.named_parameters()},
            **{f"reg.{n}": p.grad for n, p in reg.named_parameters()}}


def _single(scope: str, detach):
    model = _model()
    x, y = _data()
    with _regularizer(model, scope, detach) as reg:
        loss, parts, grad_x = _step(model, reg, x, y)
    return loss, parts, grad_x, _grads(model, reg)


def _worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        results = {}
        x, y = _data()
        local = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        for scope, detach in CASES + LEARNED:
            model = _model()
            ddp = DistributedDataParallel(model)
            with _regularizer(model, scope, detach) as reg:
                loss, parts, grad_x = _step(ddp, reg, x[local], y[local])
                reg.sync_gradients()
            # CE is a per-rank mean: the global-batch loss is the mean of per-rank losses
            ce_and_reg = loss.clone()
            dist.all_reduce(ce_and_reg)
            results[(scope, detach)] = (ce_and_reg / WORLD, loss, parts, grad_x, _grads(model, reg))
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    # fork: the children start with torch already imported (spawn would re-import it, seconds per process)
    mp.start_processes(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True, start_method="fork")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("scope,detach", CASES + LEARNED)
def test_value_and_gradients_equal_one_process_on_the_concatenated_batch(ranks, scope, detach):
    loss, parts, grad_x, grads = _single(scope, detach)
    for rank, results in enumerate(ranks):
        mean_loss, _, rank_parts, rank_grad_x, rank_grads = results[(scope, detach)]
        torch.testing.assert_close(mean_loss, loss, rtol=1e-10, atol=0)
        for label, value in parts.items():  # each layer's μ_SRR is the global value on every rank
            torch.testing.assert_close(rank_parts[label], value, rtol=1e-10, atol=0)
        local = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        torch.testing.assert_close(rank_grad_x, WORLD * grad_x[local], rtol=1e-8, atol=1e-12)
        for name, grad in grads.items():  # DDP averaged
            torch.testing.assert_close(rank_grads[name], grad, rtol=1e-8, atol=1e-12, msg=lambda m: f"{name}: {m}")


def test_per_rank_values_differ_from_the_global_batch_value(ranks):
    """The reason for the all-reduce: a rank's own half-batch coding rate is not the global one."""
    model = _model()
    x, y = _data()
    with SRRRegularizer(model, layers=[1], weight=1.0, scope="batch") as reg:
        model(x[: BATCH // WORLD])
        half = reg()
    global_value = ranks[0][("batch", True)][2][reg.labels[0]]
    assert not torch.allclose(half.detach(), global_value, rtol=1e-3)
