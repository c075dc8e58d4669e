"""Runs lose nothing: a real ``python -m srr train`` process, killed by a real signal once its first
checkpoint exists, then resumed (``--resume``'s code path: the run folder's config with
``resume=True``), ends with the weights of an uninterrupted run.

SIGKILL: nothing is saved at the kill; the run continues from the last checkpoint (a mid-epoch
one, ``--checkpoint-every``). SIGTERM: the run saves at the next step boundary and exits 130.
Dropout and augmentation are on, so every RNG and the data position must come back exactly.
The uninterrupted run and the resumption run in this process (one CPU thread, like the killed
process), which keeps the test to one process start-up per signal. The SIGTERM case is marked
slow (``pytest -m slow``): about 16 s on two cores, most of it starting Python and torch.
"""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from srr.train import TrainConfig, train

ARGS = ["--train-subset", "256", "--batch-size", "32", "--epochs", "4", "--measure-samples", "0", "--dropout", "0.1",
        "--augment", "--checkpoint-every", "3", "--threads", "1", "--quiet"]
STEPS = 4 * 256 // 32
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def train_process(out, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "srr", "train", "--out", str(out), *ARGS, *extra], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 240) -> subprocess.CompletedProcess:
    out, err = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def weights(run) -> dict:
    return torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["state_dict"]


def progress(run) -> dict:
    return torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["extra"]["progress"]


def interrupt_after_first_checkpoint(out, sig) -> subprocess.CompletedProcess:
    process = train_process(out)
    latest = out / "checkpoints" / "latest.pt"
    deadline = time.monotonic() + 180
    while not latest.exists():
        assert process.poll() is None, f"the run ended before its first checkpoint: {finish(process).stderr}"
        assert time.monotonic() < deadline, "no checkpoint within 180 s"
        time.sleep(0.005)
    process.send_signal(sig)
    return finish(process)


def resume(out):
    """What ``srr train --out OUT --resume`` runs."""
    return train(TrainConfig.load(out / "config.json").replace(resume=True))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "whole"
    config = dict(train_subset=256, batch_size=32, epochs=4, measure_samples=0, dropout=0.1, augment=True,
                  checkpoint_every=3, threads=1)
    result = train(TrainConfig(out=str(out), **config))
    assert result.global_step == STEPS
    return TrainConfig(**config), weights(out)


@pytest.mark.parametrize("sig", [signal.SIGKILL, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)],
                         ids=["SIGKILL", "SIGTERM"])
def test_a_killed_run_resumed_ends_with_the_uninterrupted_weights(tmp_path, uninterrupted, sig):
    reference, reference_weights = uninterrupted
    out = tmp_path / "run"
    killed = interrupt_after_first_checkpoint(out, sig)
    assert TrainConfig.load(out / "config.json").replace(out=None) == reference  # the same run
    if sig == signal.SIGKILL:
        assert killed.returncode == -signal.SIGKILL
    else:  # saved at a step boundary, said how to continue
        assert killed.returncode == 130, killed.stderr
        assert "SIGTERM" in killed.stderr and "--resume" in killed.stderr and "Traceback" not in killed.stderr
    stopped_at = progress(out)["global_step"]
    assert 0 < stopped_at < STEPS, "the kill must land mid-run"
    resume(out)
    final = weights(out)
    assert progress(out)["global_step"] == STEPS
    for name, value in reference_weights.items():
        assert torch.equal(final[name], value), name


EPOCH_CONFIG = dict(train_subset=128, batch_size=32, epochs=3, measure_samples=16, dropout=0.1, augment=True,
                    threads=1)
EPOCH_ARGS = ["--train-subset", "128", "--batch-size", "32", "--epochs", "3", "--measure-samples", "16",
              "--dropout", "0.1", "--augment", "--threads", "1", "--quiet"]


@pytest.mark.slow
def test_a_run_killed_at_an_epoch_boundary_with_measurement_on_resumes_exactly(tmp_path):
    """Checkpoints only at epoch ends (``--checkpoint-every 0``) and μ_SRR measured every epoch: the
    resumed run ends with the uninterrupted run's weights and one metrics row per epoch, whose
    per-layer measurements equal the uninterrupted run's."""
    from srr.train.run_dir import RunDir

    whole = tmp_path / "whole"
    train(TrainConfig(out=str(whole), **EPOCH_CONFIG))
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "srr", "train", "--out", str(out), *EPOCH_ARGS], env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    latest = out / "checkpoints" / "latest.pt"
    deadline = time.monotonic() + 180
    while not latest.exists():
        assert process.poll() is None, f"the run ended before its first checkpoint: {finish(process).stderr}"
        assert time.monotonic() < deadline, "no checkpoint within 180 s"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert finish(process).returncode == -signal.SIGKILL
    steps_per_epoch = 128 // 32
    stopped_at = progress(out)["global_step"]
    assert stopped_at % steps_per_epoch == 0 and 0 < stopped_at < 3 * steps_per_epoch, stopped_at
    resume(out)
    final, reference = weights(out), weights(whole)
    for name, value in reference.items():
        assert torch.equal(final[name], value), name
    rows, reference_rows = RunDir(out).read_metrics(), RunDir(whole).read_metrics()
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for row, ref in zip(rows, reference_rows):
        assert row["srr_per_layer"] == ref["srr_per_layer"], row["epoch"]
        assert row["train_loss"] == ref["train_loss"], row["epoch"]
