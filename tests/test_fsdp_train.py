"""``srr train --fsdp`` (srr/train/fsdp.py, srr/train/sharded_checkpoint.py) with gloo on the CPU.

- ``torchrun --nproc_per_node=2 -m srr train --fsdp`` gives the weights, losses, SRR regulariser values and
  per-epoch μ_SRR of one unsharded process on the same global batches (batch = 2 × per-rank batch), as the DDP
  test (tests/test_ddp_train.py) does for DDP.
- Its ``latest.pt`` is a plain model checkpoint: ``create_model(pretrained=RUN)`` and ``srr eval RUN`` read it
  without FSDP; the model and optimiser are in one sharded DCP folder beside it.
- The 2-process run resumes in one process: the restored model and optimiser state are the saved ones bit for
  bit (read back with DCP's own converter, no process group), and the run continues to the new end.
- A one-process FSDP run that crashes after a mid-epoch checkpoint resumes to the uninterrupted weights, bit for
  bit (dropout and augmentation on); one that had finished reports its own test metrics.
- ``--fsdp-mixed`` without ``--fsdp``, and ``--fsdp`` with ``--compile``, are refused naming the options.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from typer.testing import CliRunner

from srr.cli import app
from srr.models import create_model
from srr.train import Callback, RunDir, TrainConfig, train
from srr.train.sharded_checkpoint import SHARDED_DIR

COMMON = dict(train_subset=128, optimizer="adamw", lr=3e-3, augment=False, dropout=0.0, measure_samples=16, seed=3,
              device="cpu", threads=1)
PER_RANK = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp") / "run"
    args = ["--fsdp", "--train-subset", "128", "--epochs", "2", "--optimizer", "adamw", "--lr", "3e-3",
            "--no-augment", "--dropout", "0", "--measure-samples", "16", "--seed", "3", "--device", "cpu",
            "--threads", "1", "--batch-size", str(PER_RANK), "--out", str(out), "--quiet"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "srr", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_fsdp_processes_match_one_unsharded_process_on_the_global_batch(fsdp_run, tmp_path):
    single = train(TrainConfig(out=str(tmp_path / "single"), epochs=2, batch_size=2 * PER_RANK, **COMMON))
    saved = torch.load(RunDir(fsdp_run).latest, weights_only=True)
    assert saved["extra"]["progress"]["global_step"] == single.global_step == 2 * 128 // (2 * PER_RANK)
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(saved["state_dict"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    rows = RunDir(fsdp_run).read_metrics()
    assert len(rows) == 2 and all(r["world_size"] == 2 for r in rows)
    for a, b in zip(rows, single.metrics):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-5
        assert abs(a["srr_reg"] - b["srr_reg"]) < 1e-6 * abs(b["srr_reg"])  # the regulariser on the global batch
        for fsdp_srr, srr in zip(a["srr_per_layer"], b["srr_per_layer"]):  # the measurement, on the replica
            assert abs(fsdp_srr - srr) < 1e-5 * abs(srr)
        assert a["val_accuracy"] == b["val_accuracy"]


@pytest.mark.slow
def test_an_fsdp_run_is_read_without_fsdp_and_keeps_one_sharded_folder(fsdp_run):
    saved = torch.load(RunDir(fsdp_run).latest, weights_only=True)
    assert saved["extra"]["optimizer"] is None  # the optimiser state is sharded, not in latest.pt
    folders = sorted(p.name for p in (RunDir(fsdp_run).checkpoints / SHARDED_DIR).iterdir())
    assert folders == [saved["extra"]["sharded"]]  # older ones pruned, no temporary left
    assert (RunDir(fsdp_run).checkpoints / SHARDED_DIR / folders[0] / ".metadata").is_file()

    model = create_model(pretrained=str(fsdp_run))
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved["state_dict"][name]), name
    result = CliRunner().invoke(app, ["eval", str(fsdp_run), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(RunDir(fsdp_run).summary.read_text())
    assert json.loads(result.stdout)["accuracy"] == summary["test_accuracy"]


class _RestoredState(Callback):
    """The model and optimiser state right after the restore, gathered to full tensors."""

    def on_train_start(self, trainer) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        model, optimizer = get_state_dict(trainer.model, trainer.optimizer,
                                          options=StateDictOptions(full_state_dict=True))
        self.state = {"model": {k: v.clone() for k, v in model.items()},
                      "optimizer": {k: {s: torch.as_tensor(t).clone() for s, t in v.items()}
                                    for k, v in optimizer["state"].items()}}
        self.world_size = trainer.env.world_size


@pytest.mark.slow
def test_a_two_process_fsdp_run_resumes_in_one_process(fsdp_run, tmp_path):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    run = tmp_path / "run"
    shutil.copytree(fsdp_run, run)
    latest = torch.load(RunDir(run).latest, weights_only=True)
    flat = tmp_path / "flat.pt"  # the sharded folder read back by DCP's converter, without any process group
    dcp_to_torch_save(str(RunDir(run).checkpoints / SHARDED_DIR / latest["extra"]["sharded"]), str(flat))
    written = torch.load(flat, weights_only=False)

    restored = _RestoredState()
    result = train(TrainConfig(out=str(run), epochs=3, batch_size=PER_RANK, fsdp=True, resume=True, **COMMON),
                   callbacks=[restored], defaults=False)
    assert not dist.is_initialized()  # the group of one process is gone with the run
    assert restored.world_size == 1
    for name, value in written["model"].items():
        assert torch.equal(restored.state["model"][name], value), name
    for name, state in written["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(restored.state["optimizer"][name][key], torch.as_tensor(value)), (name, key)
    assert result.epochs == 3
    assert result.global_step == latest["extra"]["progress"]["global_step"] + 128 // PER_RANK  # world 1: B = 16
    rows = RunDir(run).read_metrics()
    assert [r["world_size"] for r in rows] == [2, 2, 1]
    now = torch.load(RunDir(run).latest, weights_only=True)
    assert now["extra"]["sharded"] != latest["extra"]["sharded"]
    assert sorted(p.name for p in (RunDir(run).checkpoints / SHARDED_DIR).iterdir()) == [now["extra"]["sharded"]]


class _LayerDtypes(Callback):
    """The dtypes a layer computes in (its output) and keeps its shards and gradients in."""

    def on_train_start(self, trainer) -> None:
        layer = trainer.model.transformer.layers[0]
        self.seen = set()
        layer.register_forward_hook(lambda module, args, output: self.seen.add(output.dtype))
        self.layer = layer

    def on_step_end(self, trainer, scalars) -> None:
        self.shards = {p.dtype for p in self.layer.parameters()}
        self.grads = {p.grad.dtype for p in self.layer.parameters() if p.grad is not None}


def test_one_process_fsdp_run_trains_with_mixed_precision(tmp_path):
    dtypes = _LayerDtypes()
    result = train(TrainConfig(out=str(tmp_path / "mixed"), epochs=1, batch_size=32, fsdp=True, fsdp_mixed=True,
                               log_every=1, **{**COMMON, "measure_samples": 0}), callbacks=[dtypes], defaults=False)
    assert not dist.is_initialized()
    assert dtypes.seen == {torch.bfloat16}  # bfloat16 parameters in forward
    assert dtypes.shards == dtypes.grads == {torch.float32}  # float32 shards, gradients reduced in float32
    assert all(p.dtype == torch.float32 for p in result.model.parameters())  # the exported replica
    rows = RunDir(tmp_path / "mixed").read_metrics()
    assert torch.isfinite(torch.tensor(rows[0]["train_loss"]))


@pytest.mark.parametrize("options, fragments", [
    (dict(fsdp_mixed=True), ["--fsdp-mixed", "needs --fsdp"]),
    (dict(fsdp=True, compile=True), ["--fsdp with --compile"]),
])
def test_unsupported_fsdp_combinations_are_refused(options, fragments):
    with pytest.raises(ValueError) as error:
        TrainConfig(**options)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_one_process_fsdp_equals_the_unsharded_run_with_gradient_checkpointing(tmp_path):
    """A one-rank FSDP run (a process group of one, made and removed by the run) computes what the plain run does,
    also when its layers recompute their activations in backward (FSDP gathers them again for that)."""
    tiny = dict(COMMON, train_subset=64, epochs=1, batch_size=16, measure_samples=0, grad_checkpointing=True)
    sharded = train(TrainConfig(out=str(tmp_path / "fsdp"), fsdp=True, **tiny))
    assert not dist.is_initialized()
    assert torch.load(RunDir(tmp_path / "fsdp").latest, weights_only=True)["extra"]["sharded"]  # it did shard
    plain = train(TrainConfig(out=str(tmp_path / "plain"), **tiny))
    for name, value in plain.model.state_dict().items():
        torch.testing.assert_close(sharded.model.state_dict()[name], value, rtol=1e-6, atol=1e-7, msg=name)
    assert abs(sharded.metrics[0]["srr_reg"] - plain.metrics[0]["srr_reg"]) <= 1e-6 * plain.metrics[0]["srr_reg"]


def test_the_cli_refuses_fsdp_mixed_without_fsdp():
    result = CliRunner().invoke(app, ["train", "--fsdp-mixed", "--epochs", "1"])
    assert result.exit_code == 2, result.output
    assert "--fsdp-mixed" in result.stderr and "needs --fsdp" in result.stderr


@pytest.mark.slow
def test_resuming_a_finished_fsdp_run_reports_its_own_test_metrics(fsdp_run, tmp_path):
    """Nothing left to train: the test set is scored on the restored weights (gathered), not the initial ones."""
    run = tmp_path / "run"
    shutil.copytree(fsdp_run, run)
    summary = json.loads(RunDir(run).summary.read_text())
    result = train(TrainConfig(out=str(run), epochs=2, batch_size=PER_RANK, fsdp=True, resume=True, **COMMON),
                   defaults=False)
    assert result.global_step == summary["global_step"]
    assert result.test_loss == pytest.approx(summary["test_loss"], rel=1e-5)


class _Crash(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer, scalars) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("crash")


@pytest.mark.slow
def test_an_fsdp_run_crashed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    """Dropout and augmentation on: the sharded state, every RNG and the data position come back exactly."""
    config = dict(COMMON, epochs=2, batch_size=32, dropout=0.1, augment=True, measure_samples=0, checkpoint_every=3,
                  fsdp=True, log_every=1)  # 4 steps per epoch: the checkpoint at step 3 is mid-epoch; hooks each step
    whole = train(TrainConfig(out=str(tmp_path / "whole"), **config), defaults=False)
    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="crash"):
        train(TrainConfig(out=str(out), **config), callbacks=[_Crash(4)], defaults=False)
    assert not dist.is_initialized()
    assert torch.load(RunDir(out).latest, weights_only=True)["extra"]["progress"]["global_step"] == 3
    resumed = train(TrainConfig(out=str(out), resume=True, **config), defaults=False)
    assert resumed.global_step == whole.global_step == 8
    for name, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
