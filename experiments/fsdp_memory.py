"""Per-rank training state under ``--fsdp`` (srr/train/fsdp.py): the parameters, gradients and AdamW state
one rank holds after a step, at 1, 2 and 4 gloo processes on the CPU. One process holds what every DDP rank
holds.

Each world size trains the same model one AdamW step on the same global batch (a per-rank share of it);
the rows give the bytes of the largest rank's local shards (padding not counted), of the unsharded replica
the run keeps for evaluation, and the loss, which must agree across world sizes. ``--quick``: crate_nano,
1 and 2 processes.

    python -m experiments.fsdp_memory            # crate_small at 32 px, world sizes 1, 2, 4
"""
from __future__ import annotations

import socket
import sys
import tempfile
import time
from pathlib import Path

import torch

from experiments._common import markdown_table, parse_args, summary, write_csv, write_json

NAME = "fsdp_memory"
BATCH = 8  # global


def _bytes(tensors) -> int:
    from torch.distributed.tensor import DTensor

    local = [t.to_local() if isinstance(t, DTensor) else t for t in tensors]  # a rank's own shards
    return sum(t.numel() * t.element_size() for t in local)


def _worker(rank: int, world: int, port: int, model_name: str, out: str) -> None:
    import torch.distributed as dist
    import torch.nn.functional as F

    from srr.models import create_model
    from srr.train.distributed import DistEnv
    from srr.train.fsdp import ShardedModel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = create_model(model_name, num_classes=10, image_size=32, patch_size=8, in_chans=3, dropout=0.0)
        full_bytes = _bytes(model.parameters())
        sharded = ShardedModel(model, DistEnv(rank=rank, world_size=world))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(BATCH, 3, 32, 32, generator=g), torch.randint(0, 10, (BATCH,), generator=g)
        part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        start = time.perf_counter()
        loss = F.cross_entropy(model(x[part]), y[part])
        loss.backward()
        optimizer.step()
        step_s = time.perf_counter() - start
        total = loss.detach().clone()
        dist.all_reduce(total)
        state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.ndim]
        row = {"world_size": world, "rank": rank, "parameters": _bytes(model.parameters()),
               "gradients": _bytes(p.grad for p in model.parameters()), "adamw_state": _bytes(state),
               "replica": _bytes(sharded.replica.parameters()), "unsharded_parameters": full_bytes,
               "loss": float(total) / world, "step_s": step_s}
        torch.save(row, Path(out) / f"row-{world}-{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> dict:
    import torch.multiprocessing as mp

    args = parse_args(NAME, __doc__, argv)
    started = time.perf_counter()
    model_name, worlds = ("crate_nano", (1, 2)) if args.quick else ("crate_small", (1, 2, 4))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for world in worlds:
            mp.start_processes(_worker, args=(world, _free_port(), model_name, tmp), nprocs=world, join=True,
                               start_method="spawn")  # a forked child cannot run autograd once the parent has
            ranks = [torch.load(Path(tmp) / f"row-{world}-{r}.pt") for r in range(world)]
            largest = max(ranks, key=lambda r: r["parameters"])
            per_rank = largest["parameters"] + largest["gradients"] + largest["adamw_state"]
            rows.append({**largest, "model": model_name, "state_per_rank": per_rank,
                         "loss_spread": max(r["loss"] for r in ranks) - min(r["loss"] for r in ranks)})
    base = rows[0]["state_per_rank"]
    for row in rows:
        row["fraction_of_one_process"] = row["state_per_rank"] / base
    write_csv(args.out / "rows.csv", rows)
    columns = ["world_size", "parameters", "gradients", "adamw_state", "state_per_rank", "fraction_of_one_process",
               "replica", "loss"]
    (args.out / "table.md").write_text(markdown_table(rows, columns, {"fraction_of_one_process": ".3f",
                                                                      "loss": ".6f"}))
    payload = summary(NAME, args, started, model=model_name, rows=rows,
                      loss_max_difference=max(r["loss"] for r in rows) - min(r["loss"] for r in rows))
    write_json(args.out / "summary.json", payload)
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
