"""Training library (srr/train): schedule, config, run folder, atomic writes, RNG state, exact
resume, the NaN guard, and a tiny end-to-end run."""
import json
import math
import os
import random

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from srr.train import NonFiniteLossError, RunDir, TrainConfig, WarmupCosine, parse_layers, train, warmup_cosine
from srr.train import data as train_data
from srr.train.run_dir import atomic_write_bytes
from srr.train.state import capture_rng, restore_rng

TINY = dict(train_subset=96, epochs=2, batch_size=32, measure_samples=16, val_fraction=0.1, threads=1)


# ----- schedule ---------------------------------------------------------------------------------
@given(st.integers(1, 50), st.integers(0, 20), st.floats(1e-4, 1.0), st.floats(0.0, 0.5))
def test_schedule_warms_up_linearly_then_decays_monotonically_to_the_floor(total, warmup, base, floor_ratio):
    warmup = min(warmup, total)
    floor = base * floor_ratio
    lrs = [warmup_cosine(s, base_lr=base, min_lr=floor, warmup_steps=warmup, total_steps=total)
           for s in range(total + 1)]
    for s in range(warmup):
        assert lrs[s] == pytest.approx(base * (s + 1) / warmup)
    decay = lrs[warmup:]
    assert all(a >= b - 1e-12 for a, b in zip(decay, decay[1:]))
    assert decay[0] == pytest.approx(base) and min(decay) >= floor - 1e-12
    if total > warmup:
        assert lrs[total] == pytest.approx(floor)


def test_scheduler_state_round_trip_gives_the_same_rates():
    p = torch.nn.Parameter(torch.zeros(1))
    a = WarmupCosine(torch.optim.SGD([p], lr=0.5), total_steps=20, warmup_steps=3, min_lr=0.01)
    for _ in range(7):
        a.step()
    b = WarmupCosine(torch.optim.SGD([p], lr=0.5), total_steps=20, warmup_steps=3, min_lr=0.01)
    b.load_state_dict(a.state_dict())
    assert b.get_last_lr() == a.get_last_lr()
    a.step(), b.step()
    assert b.get_last_lr() == a.get_last_lr() != [0.5]


# ----- config -----------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [("epochs", 0), ("epochs", -1), ("batch_size", 0), ("lr", 0.0),
                                         ("lr", math.nan), ("val_fraction", 1.0), ("label_smoothing", 1.5),
                                         ("optimizer", "lbfgs"), ("srr_layers", "first"), ("srr_eps", 0.0),
                                         ("srr_eps", math.inf), ("srr_lam", math.nan), ("model_eps", -0.5),
                                         ("threads", 0), ("grad_clip", 0.0)])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_config_json_round_trip_and_unknown_fields(tmp_path):
    config = TrainConfig(epochs=3, srr_layers="0,2", grad_clip=None)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    assert TrainConfig.load(path) == config
    with pytest.raises(ValueError, match="unknown field"):
        TrainConfig.from_dict({**config.to_dict(), "epochz": 3})
    with pytest.raises(TypeError, match="epochz"):
        config.replace(epochz=3)


def test_both_configs_share_one_base_with_the_same_rules():
    from srr._config import ConfigBase
    from srr.models import CRATEConfig

    for config in (TrainConfig(), CRATEConfig()):
        assert isinstance(config, ConfigBase)
        assert type(config).from_dict(config.to_dict()) == config
        assert config.replace().to_dict() == config.to_dict()
        with pytest.raises(TypeError, match=r"unknown .* field\(s\) \['nope'\]; valid fields: \["):
            config.replace(nope=1)
        with pytest.raises(ValueError, match=r"unknown field\(s\) \['nope'\] of " + type(config).__name__):
            type(config).from_dict({**config.to_dict(), "nope": 1})


def test_parse_layers():
    assert parse_layers("last") == "last" and parse_layers("all") == "all"
    assert parse_layers("0, 3,-1") == [0, 3, -1]
    with pytest.raises(ValueError, match="srr_layers"):
        parse_layers("x,y")


# ----- atomic files, RNG ------------------------------------------------------------------------
def test_atomic_write_keeps_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    atomic_write_bytes(path, b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]  # no temporary left behind


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn()  # a cached gaussian in numpy's state
    torch.save({"rng": capture_rng()}, tmp_path / "s.pt")
    first = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]


def test_metrics_truncation_drops_epochs_after_the_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    run.create()
    for e in (1, 2, 3):
        run.append_metrics({"epoch": e})
    with open(run.metrics, "a") as f:
        f.write('{"epoch": 4, "trunc')  # a crash mid-line
    assert [r["epoch"] for r in run.truncate_metrics(last_epoch=2)] == [1, 2]
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]


def test_data_order_is_a_function_of_seed_and_epoch_only():
    from srr.data import load_dataset

    ds = torch.utils.data.Subset(load_dataset("digits", split="train"), list(range(100)))
    a = train_data.TrainBatches(ds, batch_size=16, seed=5)
    b = train_data.TrainBatches(ds, batch_size=16, seed=5)
    full = [y for _, y in a.epoch(3)]
    list(b.epoch(0)), list(b.epoch(1))  # a different history
    tail = [y for _, y in b.epoch(3, start=2)]
    assert all(torch.equal(x, y) for x, y in zip(full[2:], tail)) and len(tail) == len(full) - 2
    assert not torch.equal(torch.cat(full), torch.cat([y for _, y in a.epoch(4)]))


# ----- end to end ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    return train(TrainConfig(out=str(out), **TINY))


def test_a_run_writes_config_metrics_plots_summary_and_checkpoints(tiny_run):
    run = RunDir(tiny_run.run_dir)
    assert TrainConfig.load(run.config) == tiny_run.config
    rows = run.read_metrics()
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "srr_per_layer",
                "train_images_per_s", "loader_images_per_s", "model_images_per_s"):
        assert key in rows[-1], key
    depth = tiny_run.model.config.depth
    assert len(rows[-1]["srr_per_layer"]) == depth and all(math.isfinite(v) for v in rows[-1]["srr_per_layer"])
    assert run.latest.is_file() and run.best.is_file()
    assert (run.plots / "curves.png").stat().st_size > 1000 and (run.plots / "srr_layers.png").is_file()
    summary = json.loads(run.summary.read_text())
    assert summary["test_accuracy"] == tiny_run.test_accuracy and 0 <= tiny_run.test_accuracy <= 1
    assert not list(run.checkpoints.glob(".*tmp"))


def test_the_checkpoint_rebuilds_the_trained_model(tiny_run):
    from srr.models import create_model

    model = create_model(checkpoint=RunDir(tiny_run.run_dir).latest)
    for k, v in tiny_run.model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v.cpu()), k


def test_a_new_run_refuses_a_folder_that_holds_one(tiny_run):
    with pytest.raises(ValueError, match="--resume"):
        train(tiny_run.config)


def test_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(TrainConfig(out=str(tmp_path / "nothing"), resume=True, **TINY))


def test_resume_refuses_changed_settings(tiny_run):
    with pytest.raises(ValueError, match="lr"):
        train(tiny_run.config.replace(resume=True, lr=0.1))


def _crash_at(monkeypatch, *, epoch: int, batch: int):
    original = train_data.TrainBatches.epoch

    def crashing(self, e, *, start=0):
        for i, item in enumerate(original(self, e, start=start)):
            if e == epoch and start + i == batch:
                raise KeyboardInterrupt("simulated crash")
            yield item

    monkeypatch.setattr(train_data.TrainBatches, "epoch", crashing)


def test_resume_after_a_crash_ends_with_the_uninterrupted_weights(tmp_path, monkeypatch):
    # dropout and augmentation on, a mid-epoch checkpoint: every RNG and the data position must be restored
    options = dict(TINY, epochs=3, dropout=0.1, augment=True, checkpoint_every=4, measure_samples=0)
    whole = train(TrainConfig(out=str(tmp_path / "whole"), **options))
    with monkeypatch.context() as m:
        _crash_at(m, epoch=1, batch=2)
        with pytest.raises(KeyboardInterrupt):
            train(TrainConfig(out=str(tmp_path / "crashed"), **options))
    progress = torch.load(tmp_path / "crashed/checkpoints/latest.pt", weights_only=True)["extra"]["progress"]
    assert (progress["epoch"], progress["batch_in_epoch"]) == (1, 1)  # step 4 of 3 per epoch
    resumed = train(TrainConfig(out=str(tmp_path / "crashed"), resume=True, **options))
    for k, v in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    rows_whole, rows_resumed = RunDir(tmp_path / "whole").read_metrics(), RunDir(tmp_path / "crashed").read_metrics()
    assert [r["train_loss"] for r in rows_whole] == [r["train_loss"] for r in rows_resumed]


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import srr.train.loop as loop

    calls = {"n": 0}
    real_create = loop.create_model

    def poisoned(*args, **kwargs):
        model = real_create(*args, **kwargs)

        def hook(module, inputs, output):
            if module.training:
                calls["n"] += 1
                if calls["n"] == 5:  # the 5th training step: epoch 2 (3 steps per epoch)
                    return output * math.nan
            return None

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(loop, "create_model", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match="step 5") as info:
        train(TrainConfig(out=str(out), **dict(TINY, epochs=3)))
    assert info.value.step == 5 and info.value.epoch == 2 and info.value.checkpoint == RunDir(out).latest
    progress = torch.load(RunDir(out).latest, weights_only=True)["extra"]["progress"]
    assert progress["epoch"] == 1 and progress["global_step"] == 3
    assert [r["epoch"] for r in RunDir(out).read_metrics()] == [1]


def test_without_a_validation_split_there_is_no_best_checkpoint(tmp_path):
    result = train(TrainConfig(out=str(tmp_path / "r"), **dict(TINY, epochs=1, val_fraction=0.0, srr_weight=0.0)))
    assert result.best_val_accuracy is None and not RunDir(result.run_dir).best.exists()
    assert "val_loss" not in result.metrics[0] and result.metrics[0]["srr_reg"] is None
