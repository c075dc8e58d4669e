"""Run under ``torchrun`` by tests/test_ddp_optim.py (gloo, CPU).

``eval CHECKPOINT OUT``: every rank scores its shard of 101 digits test images with the checkpoint's model;
rank 0 writes every rank's result to OUT (JSON).
``accum OUT_DIR RECORD``: a 2-micro-step run under DDP, with a comm hook recording, for each gradient
all-reduce, how many training forwards had run; rank 0 writes them to RECORD.
"""
import json
import sys

import torch
from torch.utils.data import Subset

from srr.data import load_dataset
from srr.models import create_model
from srr.train import TrainConfig, evaluate, train
from srr.train import distributed as D


def run_eval(checkpoint: str, out: str) -> None:
    env = D.setup("cpu")
    torch.set_num_threads(1)
    model = create_model(checkpoint=checkpoint)
    test = Subset(load_dataset("digits", split="test"), range(101))
    result = evaluate(model, test, batch_size=16, rank=env.rank, world_size=env.world_size)
    results = D.gather_objects(env, result)
    if env.is_main:
        with open(out, "w") as f:
            json.dump(results, f)
    D.teardown(env)


def run_accum(out_dir: str, record: str) -> None:
    import torch.nn.parallel as parallel
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    forwards, seen = {"n": 0}, []
    real_ddp = parallel.DistributedDataParallel

    def counting_ddp(module, *args, **kwargs):
        def count(m, inputs):
            if m.training:
                forwards["n"] += 1

        module.register_forward_pre_hook(count)
        ddp = real_ddp(module, *args, **kwargs)

        def hook(state, bucket):
            seen.append(forwards["n"])
            return allreduce_hook(state, bucket)

        ddp.register_comm_hook(None, hook)
        return ddp

    parallel.DistributedDataParallel = counting_ddp
    config = TrainConfig(out=out_dir, train_subset=64, epochs=1, batch_size=8, grad_accum=2, optimizer="sgd", lr=0.05,
                         augment=False, dropout=0.0, measure_samples=0, seed=3, device="cpu", threads=1)
    train(config)
    import os

    if int(os.environ["RANK"]) == 0:
        with open(record, "w") as f:
            json.dump(seen, f)


if __name__ == "__main__":
    {"eval": run_eval, "accum": run_accum}[sys.argv[1]](*sys.argv[2:])
