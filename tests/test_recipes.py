"""Named recipes: each is a valid TrainConfig with a cited source, explicit options win over it, the run
records it in config.json, every setting (the data pipeline's included) is a TrainConfig field that the run
applies, and ``srr recipes`` lists every recipe with its source."""
import json

import pytest
from typer.testing import CliRunner

from srr.cli import app
from srr.train import RunDir, TrainConfig
from srr.train.recipes import RECIPES, apply_recipe, recipe_config, recipe_settings

runner = CliRunner()


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_is_a_valid_config_with_its_source(name):
    config = recipe_config(name)
    assert config.recipe == name
    for key, value in RECIPES[name].settings.items():
        assert getattr(config, key) == value, key
    assert len(RECIPES[name].source) > 80 and ("Not found" in RECIPES[name].source or "commit" in RECIPES[name].source)


def test_the_papers_values_are_the_recipes_values():
    yu23 = recipe_config("yu23-imagenet")
    assert (yu23.model, yu23.patch_size, yu23.optimizer, yu23.lr, yu23.weight_decay, yu23.global_batch,
            yu23.epochs, yu23.warmup, yu23.label_smoothing) == (
        "crate_base", 16, "lion", 2.4e-4, 0.5, 2048, 150, 5.0, 0.1)
    hu24 = recipe_config("hu24-cifar")
    assert (hu24.model, hu24.optimizer, hu24.lr, hu24.batch_size, hu24.epochs, hu24.srr_weight, hu24.srr_layers) == (
        "crate_tiny", "adam", 1e-4, 128, 200, 1e-3, "last")
    assert hu24.randaugment == "2,9" and yu23.train_crop == "rrc" and yu23.dataset == "imagenet"
    tost = recipe_config("tost-imagenet")
    assert (tost.randaugment, tost.random_erasing, tost.mixup, tost.cutmix, tost.repeated_aug, tost.drop_path) == (
        "rand-m9-mstd0.5-inc1", 0.25, 0.8, 1.0, 3, 0.05)
    alpha = recipe_config("crate-alpha-finetune")
    assert (alpha.train_crop, alpha.randaugment, alpha.mixup, alpha.cutmix, alpha.drop_path) == (
        "rrc", "2,9", 0.8, 1.0, 0.0)


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_setting_is_applied_none_is_skipped(name):
    assert recipe_settings(name) == RECIPES[name].settings
    assert set(RECIPES[name].settings) <= set(TrainConfig.field_names())


def test_explicit_options_override_the_recipe_and_unknown_names_are_refused():
    config = apply_recipe(TrainConfig(epochs=1, lr=3e-3), "hu24-cifar", explicit={"epochs"})
    assert config.epochs == 1 and config.lr == 1e-4 and config.recipe == "hu24-cifar"
    assert recipe_config("hu24-cifar", lr=5e-4).lr == 5e-4
    with pytest.raises(ValueError, match="--recipe must be one of yu23-imagenet, hu24-cifar"):
        recipe_config("hu99")


def test_srr_train_recipe_records_it_and_lets_explicit_options_win(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--recipe", "hu24-cifar", "--model", "crate_nano", "--dataset", "digits",
                                 "--patch-size", "4", "--epochs", "1", "--batch-size", "32", "--train-subset", "64",
                                 "--measure-samples", "0", "--threads", "1", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    saved = json.loads(RunDir(out).config.read_text())
    assert saved["recipe"] == "hu24-cifar"
    assert (saved["model"], saved["dataset"], saved["epochs"], saved["batch_size"]) == ("crate_nano", "digits", 1, 32)
    assert (saved["optimizer"], saved["lr"], saved["srr_weight"]) == ("adam", 1e-4, 1e-3)  # from the recipe
    # the same command with --resume continues it (the recipe is part of the run's settings)
    again = runner.invoke(app, ["train", "--recipe", "hu24-cifar", "--model", "crate_nano", "--dataset", "digits",
                                "--patch-size", "4", "--epochs", "2", "--batch-size", "32", "--train-subset", "64",
                                "--measure-samples", "0", "--threads", "1", "--out", str(out), "--quiet", "--resume"])
    assert again.exit_code == 0, again.output
    assert [r["epoch"] for r in RunDir(out).read_metrics()] == [1, 2]
    bad = runner.invoke(app, ["train", "--recipe", "nope", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--recipe must be one of" in bad.stderr


def test_srr_recipes_lists_every_recipe_with_its_source():
    result = runner.invoke(app, ["recipes"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.replace("│", " ").split())
    for name in RECIPES:
        assert name in text
    assert "RobinWu218/ToST" in text and "UCSC-VLAA/CRATE-alpha" in text
    assert runner.invoke(app, ["recipes", "nope"]).exit_code == 2


def test_recipe_memory_counts_weights_gradients_optimiser_state_and_ema(tmp_path):
    from experiments import recipe_memory

    payload = recipe_memory.main(["--out", str(tmp_path)])
    rows = {r["recipe"]: r for r in payload["rows"]}
    assert set(rows) == set(RECIPES)
    tost, yu23 = rows["tost-imagenet"], rows["yu23-imagenet"]
    assert tost["ema_GiB"] == tost["weights_GiB"] > 0  # values rounded to 1e-3 GiB
    assert abs(tost["optimizer_state_GiB"] - 2 * tost["weights_GiB"]) <= 2e-3  # AdamW: two states
    assert yu23["ema_GiB"] == 0 and yu23["optimizer_state_GiB"] == yu23["weights_GiB"]  # Lion: one state
    assert (tmp_path / "memory.md").is_file()


@pytest.mark.parametrize("args,fragments", [
    (["--grad-accum", "0"], ["--grad-accum", "0"]),
    (["--global-batch", "100", "--batch-size", "32"], ["--global-batch 100 must be a multiple of --batch-size",
                                                       "32 × 1 = 32"]),
    (["--lr-scaling", "cubic"], ["--lr-scaling", "cubic"]),
    (["--ema-decay", "1"], ["--ema-decay", "< 1"]),
    (["--betas", "0.9"], ["--betas", "'0.9'"]),
    (["--optimizer", "lamb"], ["--optimizer", "lion"]),
])
def test_bad_values_of_the_scale_options_are_one_line_usage_errors(tmp_path, args, fragments):
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), "--epochs", "1", "--train-subset", "64",
                                 "--measure-samples", "0", "--quiet", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
