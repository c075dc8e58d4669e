"""FSDP2 (srr/train/fsdp.py) and its sharded checkpoints (srr/train/sharded_checkpoint.py), gloo on the CPU.

- The SRR regulariser under 2-process FSDP (HU24 §6, MATH.md §6): on every rank the loss ``CE + reg()``, each
  layer's μ_SRR and, after FSDP's reduce-scatter, every parameter's gradient equal one process on the
  concatenated batch (float64), at both sites (layer output; MSSA projection).
- A checkpoint written by 2 processes loads into 1 and into 3: the model and the optimiser state read back
  bit for bit, and one more step on the same global batch gives the same weights at every world size and
  as a plain (unsharded) model continuing from the same state.
"""
from __future__ import annotations

import copy
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from srr.measurement import SRRRegularizer
from srr.models import create_model
from srr.train.distributed import DistEnv
from srr.train.fsdp import ShardedModel
from srr.train.sharded_checkpoint import load_sharded, save_sharded

BATCH = 6  # global; divisible by every world size tested (1, 2, 3)
SITES = ("output", "projection")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("crate_nano", num_classes=3, dropout=0.0).double()  # 4 layers, d = 64


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(10 + i)
    return torch.randn(BATCH, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (BATCH,), generator=g)


def _local(world: int, rank: int) -> slice:
    return slice(rank * BATCH // world, (rank + 1) * BATCH // world)


def _optimizer(model) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)


def _step(model, optimizer, i: int, part: slice) -> None:
    x, y = _batch(i)
    F.cross_entropy(model(x[part]), y[part]).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _full(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    # a copy: on one rank the "gathered" tensors are the parameters themselves, which the next step changes
    return copy.deepcopy({"model": model_state, "optimizer": optimizer_state["state"]})


# ----- the workers (spawned processes; each imports this module) -------------------------------------
def _regularizer_task(env: DistEnv, out: Path) -> None:
    x, y = _batch(0)
    part = _local(env.world_size, env.rank)
    results = {}
    for site in SITES:
        model = _model()
        sharded = ShardedModel(model, env)  # the trainer's order: shard, hook the regulariser, keep its layers
        with SRRRegularizer(model, layers=[-2, -1], weight=0.5, site=site) as reg:
            sharded.keep_gathered(reg)
            ce = F.cross_entropy(model(x[part]), y[part])
            value = reg()
            (ce + value).backward()
            mean_ce = ce.detach().clone()
            dist.all_reduce(mean_ce)  # a per-rank mean over equal shares: the global mean is their mean
            grads = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
            results[site] = (mean_ce / env.world_size, value.detach(), {k: v.srr for k, v in reg.parts.items()}, grads)
    torch.save(results, out / f"reg-{env.rank}.pt")


def _save_task(env: DistEnv, out: Path) -> None:
    model = _model()
    ShardedModel(model, env)
    optimizer = _optimizer(model)
    part = _local(env.world_size, env.rank)
    for i in range(2):
        _step(model, optimizer, i, part)
    name = save_sharded(model, optimizer, out, step=2, env=env)
    reference = _full(model, optimizer)
    _step(model, optimizer, 2, part)
    after = _full(model, optimizer)["model"]  # collective
    if env.is_main:
        torch.save({"name": name, "saved": reference, "next": after}, out / "saved.pt")


def _resume_task(env: DistEnv, out: Path) -> None:
    name = torch.load(out / "saved.pt", weights_only=False)["name"]
    model = _model()
    ShardedModel(model, env)
    optimizer = _optimizer(model)
    load_sharded(model, optimizer, out, name)
    loaded = _full(model, optimizer)
    _step(model, optimizer, 2, _local(env.world_size, env.rank))
    after = _full(model, optimizer)["model"]  # collective
    if env.is_main:
        torch.save({"loaded": loaded, "next": after}, out / f"resumed-{env.world_size}.pt")


TASKS = {"regularizer": _regularizer_task, "save": _save_task, "resume": _resume_task}


def _worker(rank: int, world: int, port: int, task: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        TASKS[task](DistEnv(rank=rank, world_size=world), Path(out))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(world: int, task: str, out: Path) -> None:
    # spawn, not fork: a forked child cannot run autograd once the parent has (earlier tests in one pytest run)
    mp.start_processes(_worker, args=(world, _free_port(), task, str(out)), nprocs=world, join=True,
                       start_method="spawn")


# ----- the regulariser ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def regularizer_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp-reg")
    _launch(2, "regularizer", out)
    return [torch.load(out / f"reg-{r}.pt", weights_only=False) for r in range(2)]


def _single(site: str):
    model = _model()
    x, y = _batch(0)
    with SRRRegularizer(model, layers=[-2, -1], weight=0.5, site=site) as reg:
        ce = F.cross_entropy(model(x), y)
        value = reg()
        (ce + value).backward()
        parts = {k: v.srr for k, v in reg.parts.items()}
    return ce.detach(), value.detach(), parts, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("site", SITES)
def test_regularizer_under_fsdp_equals_one_process_on_the_global_batch(regularizer_ranks, site):
    ce, value, parts, grads = _single(site)
    for results in regularizer_ranks:
        rank_ce, rank_value, rank_parts, rank_grads = results[site]
        torch.testing.assert_close(rank_ce, ce, rtol=1e-12, atol=0)
        torch.testing.assert_close(rank_value, value, rtol=1e-10, atol=0)  # the global-batch value on every rank
        assert rank_parts.keys() == parts.keys()
        for label, srr in parts.items():
            torch.testing.assert_close(rank_parts[label], srr, rtol=1e-10, atol=0)
        assert rank_grads.keys() == grads.keys()
        for name, grad in grads.items():  # FSDP's reduce-scatter averaged the task and the regulariser gradient
            torch.testing.assert_close(rank_grads[name], grad, rtol=1e-8, atol=1e-12, msg=lambda m: f"{name}: {m}")


# ----- sharded checkpoints at another world size ------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp-ckpt")
    _launch(2, "save", out)
    return out, torch.load(out / "saved.pt", weights_only=False)


def _assert_state_equal(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key, value in a.items():
        if isinstance(value, dict):
            _assert_state_equal(value, b[key], f"{what}.{key}")
        else:
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b[key])), f"{what}.{key}"


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 3])
def test_a_two_process_checkpoint_resumes_at_another_world_size(saved, world):
    out, reference = saved
    _launch(world, "resume", out)
    resumed = torch.load(out / f"resumed-{world}.pt", weights_only=False)
    _assert_state_equal(resumed["loaded"], reference["saved"], "state")  # bit for bit: DCP resharded, not rounded
    for name, value in reference["next"].items():  # and the next step is the same update at every world size
        torch.testing.assert_close(resumed["next"][name], value, rtol=1e-10, atol=1e-14, msg=name)


@pytest.mark.slow
def test_the_saved_state_continues_as_a_plain_model(saved):
    """The next step of a plain model from the gathered state is the sharded runs' next step."""
    _, reference = saved
    model = _model()
    optimizer = _optimizer(model)
    model.load_state_dict(reference["saved"]["model"])
    names = [n for n, _ in model.named_parameters()]
    optimizer.load_state_dict({"state": {i: reference["saved"]["optimizer"][n] for i, n in enumerate(names)},
                               "param_groups": optimizer.state_dict()["param_groups"]})
    _step(model, optimizer, 2, slice(None))
    for name, value in model.state_dict().items():
        torch.testing.assert_close(reference["next"][name], value, rtol=1e-10, atol=1e-14, msg=name)


@pytest.mark.slow
def test_the_memory_experiment_finds_half_the_state_per_rank_at_two_processes(tmp_path):
    from experiments import fsdp_memory

    payload = fsdp_memory.main(["--quick", "--out", str(tmp_path)])
    one, two = payload["rows"]
    assert (one["world_size"], two["world_size"]) == (1, 2)
    for key in ("parameters", "gradients", "adamw_state"):  # each rank holds its half (rounded up per tensor)
        assert one[key] / 2 <= two[key] <= one[key] / 2 * 1.05, key
    assert two["replica"] == one["replica"] == one["parameters"]  # the evaluation replica is whole everywhere
    assert abs(two["loss"] - one["loss"]) < 1e-6
    assert (tmp_path / "table.md").stat().st_size > 0
