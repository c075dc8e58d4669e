"""Real-model workflows through the CLI: a public-format CRATE checkpoint (``{"model": …}``, ``module.``
keys, no config) evaluated and measured with ``--model NAME --pretrained PATH``, then fine-tuned with
``srr train --init-from`` at a new image size and class count (new head, interpolated position
embedding, layer-wise lr decay, gradient checkpointing)."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from srr.cli import app
from srr.models import create_model

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def image_folder(root, *, classes: int, per_class: int, size: int = 32):
    generator = torch.Generator().manual_seed(classes)
    for split in ("train", "test"):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (size, size, 3), generator=generator, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def public(tmp_path_factory):
    """crate_micro (32 px, 3 channels, 10 classes) saved as the public CRATE code saves it."""
    root = tmp_path_factory.mktemp("public")
    torch.manual_seed(0)
    model = create_model("crate_micro")
    path = root / "crate_micro.pth"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 99}, path)
    return path, model, image_folder(root / "ten", classes=10, per_class=2)


def test_eval_and_measure_a_public_checkpoint(public, tmp_path):
    path, model, data = public
    result = run("eval", "--model", "crate_micro", "--pretrained", path, "--dataset", "imagefolder",
                 "--data-dir", data, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["n"] == 20
    from srr.data import load_dataset
    from srr.train import evaluate

    expected = evaluate(model.eval(), load_dataset("imagefolder", split="test", data_dir=str(data)), device="cpu")
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"])  # the weights, not a fresh model
    assert metrics["loss"] == pytest.approx(expected["loss"], rel=1e-5)

    out = tmp_path / "measure"
    result = run("measure", "--model", "crate_micro", "--pretrained", path, "--dataset", "imagefolder",
                 "--data-dir", data, "--samples", 8, "--out", out, "--format", "json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (out / "measure.png").is_file() and (out / "measure.json").is_file()


def test_finetune_a_public_checkpoint_at_a_new_image_size_and_class_count(public, tmp_path):
    path, _, _ = public
    data = image_folder(tmp_path / "three", classes=3, per_class=4)
    out = tmp_path / "run"
    result = run("train", "--model", "crate_micro", "--init-from", path, "--dataset", "imagefolder",
                 "--data-dir", data, "--image-size", 16, "--epochs", 1, "--batch-size", 4, "--val-fraction", 0,
                 "--measure-samples", 0, "--layer-decay", 0.75, "--grad-checkpointing", "--out", out,
                 "--threads", 1, "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    assert "new classifier head, re-initialised (10 -> 3 classes)" in result.stderr
    assert "position embedding interpolated from 8x8 to 4x4 patches" in result.stderr
    tuned = create_model(checkpoint=out / "checkpoints" / "latest.pt")
    assert tuned.config.num_classes == 3 and tuned.config.image_size == 16
    config = json.loads((out / "config.json").read_text())
    assert config["init_from"] == str(path) and config["layer_decay"] == 0.75 and config["grad_checkpointing"]


def test_weights_that_do_not_fit_exit_1_naming_the_keys(public, tmp_path):
    _, _, data = public
    shallow = tmp_path / "shallow.pth"
    torch.save(create_model("crate_micro", depth=2).state_dict(), shallow)
    result = run("eval", "--model", "crate_micro", "--pretrained", shallow, "--dataset", "imagefolder",
                 "--data-dir", data, "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert "missing keys" in result.stderr and "transformer.layers.2" in result.stderr


def test_source_options_are_usage_errors(public):
    path, _, _ = public
    for args in ([], [path, "--pretrained", path], ["--model", "nope", "--pretrained", path],
                 [path, "--model", "crate_micro"]):
        result = run("eval", *args, "--dataset", "digits")
        assert result.exit_code == 2, result.output
        assert len(result.stderr.strip().splitlines()) == 1


# ----- what a new user trips over -------------------------------------------------------------------
TINY = ["--epochs", 1, "--batch-size", 32, "--train-subset", 64, "--measure-samples", 0, "--threads", 1,
        "--device", "cpu", "--quiet"]


def test_resume_applies_more_epochs_and_refuses_other_changes_in_one_line(tmp_path):
    out = tmp_path / "run"
    assert run("train", "--out", out, *TINY).exit_code == 0
    result = run("train", "--out", out, "--resume", "--lr", 0.1, "--quiet")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--lr (run has 0.003, given 0.1)" in lines[0]
    result = run("train", "--out", out, "--resume", "--epochs", 2, "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["epochs"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_version():
    import srr

    result = run("--version")
    assert result.exit_code == 0 and result.stdout.startswith(f"srr {srr.__version__} (torch ")
