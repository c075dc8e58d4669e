"""Under ``torchrun`` (gloo, CPU): evaluation on every rank gives the single process's accuracy and loss
whatever the world size (1, 2, 3: no padded duplicate counted), and gradient accumulation all-reduces the
gradients once per optimiser step (``no_sync`` on the other micro-steps) while giving the weights of one
process trained on the same global batches."""
import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset

from srr.data import load_dataset
from srr.models import create_model, save_checkpoint
from srr.train import RunDir, TrainConfig, evaluate, train

WORKER = Path(__file__).with_name("gloo_worker_optim.py")


def torchrun(n: int, *args: str) -> None:
    from test_ddp_train import torchrun_script

    torchrun_script(WORKER, n, *args)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("crate_nano", num_classes=10, image_size=8, in_chans=1)
    return save_checkpoint(model, tmp_path_factory.mktemp("eval") / "model.pt")


@pytest.mark.parametrize("world", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_every_rank_scores_its_shard_and_the_totals_match_one_process(tmp_path, checkpoint, world):
    model = create_model(checkpoint=str(checkpoint))
    single = evaluate(model, Subset(load_dataset("digits", split="test"), range(101)), batch_size=16)
    torchrun(world, "eval", str(checkpoint), str(tmp_path / "eval.json"))
    results = json.loads((tmp_path / "eval.json").read_text())
    assert len(results) == world
    for result in results:  # the same numbers on every rank, counting each of the 101 images once
        assert result["n"] == single["n"] == 101
        assert result["accuracy"] == single["accuracy"]
        assert abs(result["loss"] - single["loss"]) <= 1e-6 * abs(single["loss"])


@pytest.mark.slow
def test_accumulation_all_reduces_once_per_optimiser_step_and_matches_one_process(tmp_path):
    out, record = tmp_path / "ddp", tmp_path / "hooks.json"
    torchrun(2, "accum", str(out), str(record))
    seen = json.loads(record.read_text())
    # 64 images over 2 ranks, 8 per micro-step, 2 micro-steps per optimiser step: 4 micro-steps, 2 steps
    assert seen and all(n % 2 == 0 for n in seen), seen  # every all-reduce after the 2nd micro-step's backward
    assert sorted(set(seen)) == [2, 4]
    single = train(TrainConfig(out=str(tmp_path / "single"), train_subset=64, epochs=1, batch_size=32,
                               optimizer="sgd", lr=0.05, augment=False, dropout=0.0, measure_samples=0, seed=3,
                               device="cpu", threads=1))
    ddp = torch.load(RunDir(out).latest, weights_only=True)
    assert ddp["extra"]["progress"]["global_step"] == single.global_step == 2
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(ddp["state_dict"][name], value, rtol=1e-4, atol=1e-5, msg=name)
