"""Training at scale, on one process: gradient accumulation equals one batch of K·B (float64), the schedule
counts optimiser steps, EMA weights are evaluated and resumed, and the host syncs (and the NaN guard) run
every ``log_every`` steps, not every step."""
import json
import math
import os
import traceback

import pytest
import torch

from srr.train import NonFiniteLossError, RunDir, TrainConfig, train
from srr.train import loop

BASE = dict(augment=False, dropout=0.0, measure_samples=0, val_fraction=0.1, threads=1, device="cpu", seed=5)


@pytest.fixture
def float64_models(monkeypatch):
    """Every model the loop creates is float64 and casts its (float32) input images to float64."""
    real_create = loop.create_model

    def create(*args, **kwargs):
        model = real_create(*args, **kwargs).double()
        model.register_forward_pre_hook(lambda module, args: (args[0].double(), *args[1:]))
        return model

    monkeypatch.setattr(loop, "create_model", create)


@pytest.mark.parametrize("srr_weight,images", [(0.0, 32), (1e-2, 32), (1e-2, 48)])
def test_two_micro_batches_give_the_weights_of_one_batch_of_twice_the_size(tmp_path, float64_models, srr_weight,
                                                                          images):
    # 32 images: one optimiser step either way, 2 × 16 accumulated or one batch of 32. 48 images: a second
    # step of one micro-batch of 16, weighted as a batch of 16 (the short last group). SGD without momentum
    # makes each step linear in the gradient; the per-sample regulariser (a mean over the batch of each
    # image's μ_SRR) accumulates exactly too.
    common = dict(BASE, train_subset=images, epochs=1, optimizer="sgd", momentum=0.0, lr=0.5, srr_weight=srr_weight)
    accumulated = train(TrainConfig(out=str(tmp_path / "k2"), batch_size=16, grad_accum=2, **common))
    one_batch = train(TrainConfig(out=str(tmp_path / "k1"), batch_size=32, **common))
    assert accumulated.global_step == one_batch.global_step == images // 32 + (images % 32 > 0)
    start = loop.create_model("crate_nano", num_classes=10, image_size=8, in_chans=1)
    moved = 0
    for name, value in one_batch.model.state_dict().items():
        assert value.dtype == torch.float64
        torch.testing.assert_close(accumulated.model.state_dict()[name], value, rtol=1e-12, atol=1e-14, msg=name)
        moved += not torch.equal(value, start.state_dict()[name])
    assert moved > 0  # the step did move the weights
    assert math.isclose(accumulated.metrics[0]["train_loss"], one_batch.metrics[0]["train_loss"], rel_tol=1e-12)
    if srr_weight:
        assert math.isclose(accumulated.metrics[0]["srr_reg"], one_batch.metrics[0]["srr_reg"], rel_tol=1e-10)


def test_the_schedule_steps_once_per_optimiser_step_not_per_micro_step(tmp_path):
    # 64 images, batch 16: 4 micro-batches per epoch, 2 optimiser steps with grad_accum=2.
    result = train(TrainConfig(out=str(tmp_path / "r"), train_subset=64, batch_size=16, grad_accum=2, epochs=2,
                               warmup=0.5, **BASE))
    assert result.global_step == 4
    scheduler = torch.load(RunDir(result.run_dir).latest, weights_only=True)["extra"]["scheduler"]
    assert scheduler["step_count"] == 4 and scheduler["total_steps"] == 4 and scheduler["warmup_steps"] == 1
    resolved = json.loads(RunDir(result.run_dir).config.read_text())["resolved"]
    assert resolved["grad_accum"] == 2 and resolved["global_batch"] == 32


def test_global_batch_sets_the_accumulation_and_the_scaled_rate(tmp_path):
    result = train(TrainConfig(out=str(tmp_path / "r"), train_subset=64, batch_size=16, global_batch=64, epochs=1,
                               lr=1e-3, lr_scaling="linear", **BASE))
    resolved = json.loads(RunDir(result.run_dir).config.read_text())["resolved"]
    assert resolved["grad_accum"] == 4 and result.global_step == 1 and math.isclose(resolved["lr"], 1e-3 * 64 / 256)
    with pytest.raises(ValueError, match="--global-batch 40 must be a multiple of --batch-size"):
        train(TrainConfig(out=str(tmp_path / "bad"), train_subset=64, batch_size=16, global_batch=40, **BASE))


class StopAfter(loop.Callback):
    """Asks the run to stop (as SIGTERM would) after optimiser step ``step``."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, scalars):
        if scalars["step"] == self.step:
            trainer.stop.signal_name = "SIGTERM"


def test_a_run_with_accumulation_and_ema_resumed_mid_epoch_ends_with_the_uninterrupted_weights(tmp_path):
    # 96 images, batch 16, grad_accum 2: 3 optimiser steps per epoch; the stop lands mid-epoch 2.
    common = dict(BASE, train_subset=96, batch_size=16, grad_accum=2, epochs=2, ema_decay=0.9, dropout=0.1,
                  augment=True, log_every=1)
    whole = train(TrainConfig(out=str(tmp_path / "whole"), **common))
    out = tmp_path / "cut"
    with pytest.raises(loop.TrainingInterrupted):
        train(TrainConfig(out=str(out), **common), callbacks=[StopAfter(4)])
    progress = torch.load(RunDir(out).latest, weights_only=True)["extra"]["progress"]
    assert progress["global_step"] == 5 and progress["batch_in_epoch"] == 4  # at an optimiser-step boundary
    resumed = train(TrainConfig(out=str(out), resume=True, **common))
    for name, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    a = torch.load(RunDir(tmp_path / "whole").latest, weights_only=True)["extra"]["ema"]
    b = torch.load(RunDir(out).latest, weights_only=True)["extra"]["ema"]
    assert a["steps"] == b["steps"] == 6
    for name, value in a["state_dict"].items():
        assert torch.equal(b["state_dict"][name], value), name
    assert resumed.test_accuracy_ema == whole.test_accuracy_ema


def test_ema_weights_are_evaluated_beside_the_raw_ones(tmp_path):
    result = train(TrainConfig(out=str(tmp_path / "r"), train_subset=64, batch_size=16, epochs=2, ema_decay=0.5,
                               **BASE))
    row = result.metrics[-1]
    assert {"val_accuracy_ema", "val_loss_ema", "val_accuracy", "val_loss"} <= set(row)
    summary = result.summary()
    assert summary["test_accuracy_ema"] is not None and summary["test_loss_ema"] != summary["test_loss"]
    ema = torch.load(RunDir(result.run_dir).latest, weights_only=True)["extra"]["ema"]
    assert ema["steps"] == result.global_step == 8
    # decay 0: the average is the last weights, so both evaluations agree exactly
    same = train(TrainConfig(out=str(tmp_path / "d0"), train_subset=32, batch_size=16, epochs=1, ema_decay=0.0, **BASE))
    assert same.test_loss_ema == same.test_loss and same.metrics[0]["val_loss_ema"] == same.metrics[0]["val_loss"]
    plain = train(TrainConfig(out=str(tmp_path / "off"), train_subset=32, batch_size=16, epochs=1, **BASE))
    assert plain.test_accuracy_ema is None and "val_accuracy_ema" not in plain.metrics[0]


def poison_step(monkeypatch, bad_step):
    """The loop's model returns NaN logits in its ``bad_step``-th training forward."""
    real_create = loop.create_model
    calls = {"n": 0}

    def create(*args, **kwargs):
        model = real_create(*args, **kwargs)

        def hook(module, inputs, output):
            if module.training:
                calls["n"] += 1
                if calls["n"] == bad_step:
                    return output * math.nan
            return None

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(loop, "create_model", create)


def test_a_non_finite_step_is_caught_before_the_next_checkpoint_and_named(tmp_path, monkeypatch):
    poison_step(monkeypatch, 2)
    out = tmp_path / "nan"
    # log_every far away: the check before the checkpoint of step 3 must catch step 2, and nothing is saved
    with pytest.raises(NonFiniteLossError, match="the cross-entropy became nan at step 2 \\(epoch 1\\)") as info:
        train(TrainConfig(out=str(out), train_subset=96, batch_size=16, epochs=1, log_every=100,
                          checkpoint_every=3, **BASE))
    assert info.value.checkpoint is None and not RunDir(out).latest.exists()


def test_host_syncs_happen_every_log_every_steps_not_every_step(tmp_path, monkeypatch):
    # Reads of a tensor's value by the training code (srr/train/) count; torch's own reads of the
    # optimiser's CPU step counter are no device sync and do not.
    counts = {"item": 0, "tolist": 0}
    real_item, real_tolist = torch.Tensor.item, torch.Tensor.tolist

    def from_training_code():
        return f"srr{os.sep}train{os.sep}" in traceback.extract_stack(limit=3)[0].filename

    def item(self):
        counts["item"] += from_training_code()
        return real_item(self)

    def tolist(self):
        counts["tolist"] += from_training_code()
        return real_tolist(self)

    config = TrainConfig(out=str(tmp_path / "r"), train_subset=256, batch_size=8, epochs=1, log_every=16,
                         srr_weight=0.0, **BASE)
    monkeypatch.setattr(torch.Tensor, "item", item)
    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    result = train(config)
    monkeypatch.undo()
    assert result.global_step == 32
    # 32 steps: 2 log points (2 .item(), one guard read and one read of the logged steps' losses each), then a
    # fixed number at the epoch end (the guard, the sums, the checkpoint, val and test evaluation) -- not the
    # ~5 reads per step of a step-wise guard
    assert counts["item"] == 4 and counts["tolist"] <= 12, counts


def test_the_nan_guard_checks_at_the_log_cadence_and_names_the_first_bad_step(tmp_path, monkeypatch):
    poison_step(monkeypatch, 3)
    seen = []

    class Steps(loop.Callback):
        def on_step_end(self, trainer, scalars):
            seen.append(scalars["step"])

    with pytest.raises(NonFiniteLossError, match="at step 3 ") as info:
        train(TrainConfig(out=str(tmp_path / "r"), train_subset=128, batch_size=8, epochs=1, log_every=4,
                          srr_weight=0.0, **BASE), callbacks=[Steps()])
    assert info.value.step == 3 and seen == []  # raised at the check of step 4, before its callbacks
