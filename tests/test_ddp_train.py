"""DistributedDataParallel: ``torchrun --nproc_per_node=2 -m srr train`` with gloo on the CPU gives
the weights of one process trained on the same global batches (batch = 2 × per-rank batch).

Each rank takes a strided half of one shared permutation, so the union of the ranks' i-th batches
is the single process's i-th batch; DDP averages the gradients and the SRR regulariser is computed
on the global batch, so the updates agree up to float rounding (SGD keeps that rounding from
being amplified, as Adam's normalisation would for near-zero gradients).
"""
import json
import os
import socket
import subprocess
import sys

import torch

from srr.train import RunDir, TrainConfig, train

COMMON = dict(train_subset=128, epochs=2, optimizer="sgd", lr=0.05, augment=False, dropout=0.0, measure_samples=16,
              seed=3, device="cpu", threads=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_script(script, n: int, *args: str, timeout: int = 300) -> None:
    """Run ``script`` under ``torchrun`` with ``n`` gloo processes on this machine; fail with its stderr."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={n}",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(script), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_gloo_processes_match_one_process_on_the_global_batch(tmp_path):
    per_rank = 16
    out = tmp_path / "ddp"
    args = ["--train-subset", "128", "--epochs", "2", "--optimizer", "sgd", "--lr", "0.05", "--no-augment",
            "--dropout", "0", "--measure-samples", "16", "--seed", "3", "--device", "cpu", "--threads", "1",
            "--batch-size", str(per_rank), "--out", str(out), "--quiet"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "srr", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    single = train(TrainConfig(out=str(tmp_path / "single"), batch_size=2 * per_rank, **COMMON))
    ddp = torch.load(RunDir(out).latest, weights_only=True)
    assert ddp["extra"]["progress"]["global_step"] == single.global_step == 2 * 128 // (2 * per_rank)
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(ddp["state_dict"][name], value, rtol=1e-4, atol=1e-5, msg=name)

    rows = RunDir(out).read_metrics()
    assert len(rows) == 2 and all(r["world_size"] == 2 for r in rows)  # one writer: rank 0
    single_rows = single.metrics
    for a, b in zip(rows, single_rows):  # train loss averaged over all ranks' samples
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4
        assert abs(a["srr_reg"] - b["srr_reg"]) < 1e-6 * max(1.0, abs(b["srr_reg"]))
    assert abs(json.loads(RunDir(out).summary.read_text())["test_accuracy"] - single.test_accuracy) <= 0.01
