"""What a new user trips over (issue 11): tables that never cut numbers, run files readable by others,
a resolved config.json, one short line for a corrupt checkpoint, ``srr derive "-R(...)"`` without ``--``."""
from __future__ import annotations

import json
import os
import stat

import pytest
from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

from srr.cli import app
from srr.cli.errors import fit

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("newuser") / "run"
    old = os.umask(0o022)
    try:
        result = run("train", "--out", out, "--epochs", 1, "--batch-size", 32, "--train-subset", 64,
                     "--measure-samples", 8, "--threads", 1, "--device", "cpu", "--quiet")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    return out


def test_numbers_are_never_cut_even_in_a_narrow_terminal():
    table = Table(title="measure")
    for name in ("site", "R", "R^c", "μ_SRR"):
        table.add_column(name)
    table.add_row("layer 0 mssa_input (what the compression layer sees)", "-45.123456", "1234.56789", "-0.000123")
    console = Console(width=40, force_terminal=True, record=True)
    console.print(fit(table))
    text = console.export_text()
    for number in ("-45.123456", "1234.56789", "-0.000123"):
        assert number in text
    assert "…" not in text


def test_piped_measure_and_summary_tables_keep_every_number(tiny_run):
    result = run("measure", tiny_run, "--samples", 16, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout
    table = json.loads((tiny_run / "measure" / "measure.json").read_text())
    assert table


def test_run_folder_files_are_readable_as_the_umask_allows(tiny_run):
    for path in ("config.json", "summary.json", "metrics.jsonl", "checkpoints/latest.pt", "checkpoints/best.pt"):
        mode = stat.S_IMODE((tiny_run / path).stat().st_mode)
        assert mode == 0o644, (path, oct(mode))


def test_config_json_records_what_the_run_resolved(tiny_run):
    from srr.train import TrainConfig

    data = json.loads((tiny_run / "config.json").read_text())
    resolved = data["resolved"]
    assert resolved["model"]["variant"] == "crate" and resolved["model"]["patch_size"] == 4
    assert resolved["device"] == "cpu" and resolved["out"] == str(tiny_run.resolve())
    assert resolved["parameters"] > 0 and resolved["versions"]["torch"] and resolved["device_name"]
    assert TrainConfig.load(tiny_run / "config.json").epochs == 1  # the record does not disturb loading


def test_a_corrupt_checkpoint_is_one_short_line(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    result = run("eval", garbage, "--dataset", "digits")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not read checkpoint" in lines[0] and len(lines[0]) < 320, lines
    assert "weights_only" not in lines[0]


def test_derive_takes_an_objective_starting_with_a_minus_without_double_dash():
    result = run("derive", "-R(eps=0.5)", "--trials", 2, "--tokens", 8, "--dim", 4)
    assert result.exit_code == 0, result.output
    assert "holds in 2/2 trials" in result.stdout


# ----- logging and callbacks --------------------------------------------------------------------------
def test_callbacks_see_every_step_and_epoch_and_loggers_write_their_files(tmp_path):
    import csv

    from srr.train import Callback, TrainConfig, train

    class Count(Callback):
        def __init__(self):
            self.events = []

        def on_train_start(self, trainer):
            self.events.append("start")

        def on_step_end(self, trainer, scalars):
            assert {"loss", "lr", "grad_norm", "srr_reg", "images_per_s", "cross_entropy"} <= set(scalars)
            self.events.append(scalars["step"])

        def on_epoch_end(self, trainer, row):
            self.events.append(f"epoch {row['epoch']}")

        def on_train_end(self, trainer, result):
            self.events.append("end")

    count = Count()
    config = TrainConfig(out=str(tmp_path / "run"), epochs=2, batch_size=32, train_subset=64, measure_samples=8,
                         threads=1, device="cpu", logger="csv", log_every=1)
    train(config, callbacks=[count])
    assert count.events == ["start", 1, 2, "epoch 1", 3, 4, "epoch 2", "end"]
    with open(tmp_path / "run" / "steps.csv") as f:
        steps = list(csv.DictReader(f))
    assert [int(r["step"]) for r in steps] == [1, 2, 3, 4] and float(steps[0]["lr"]) > 0
    with open(tmp_path / "run" / "epochs.csv") as f:
        epochs = list(csv.DictReader(f))
    assert len(epochs) == 2 and "srr_per_layer_0" in epochs[0]  # layers 0-based


def test_jsonl_logger_through_the_cli_every_k_steps(tmp_path):
    out = tmp_path / "run"
    result = run("train", "--out", out, "--epochs", 1, "--batch-size", 16, "--train-subset", 64,
                 "--measure-samples", 0, "--threads", 1, "--device", "cpu", "--quiet", "--logger", "jsonl",
                 "--log-every", 2)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "step"] == [2, 4]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1]
    bad = run("train", "--out", tmp_path / "x", "--logger", "wandb")
    assert bad.exit_code == 2 and "logger" in bad.stderr


def test_tensorboard_logger_when_installed_else_a_clear_error(tmp_path):
    from srr.train import TensorBoardLogger

    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match=r"pip install 'srr\[tensorboard\]'"):
            TensorBoardLogger(tmp_path)
        return
    logger = TensorBoardLogger(tmp_path, every=1)
    logger.write("step", {"step": 1, "loss": 0.5})
    logger.close()
    assert list((tmp_path / "tensorboard").iterdir())


def test_plots_number_layers_from_0_and_label_their_axes(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    from srr.data import load_dataset
    from srr.measurement import measure
    from srr.models import create_model
    from srr.train.plots import plot_srr_layers

    seen = []
    plot, set_ylabel = Axes.plot, Axes.set_ylabel
    monkeypatch.setattr(Axes, "plot", lambda self, x, *a, **k: (seen.append(("x", list(x))), plot(self, x, *a, **k))[1])
    monkeypatch.setattr(Axes, "set_ylabel", lambda self, text, *a, **k: (seen.append(("y", text)),
                                                                           set_ylabel(self, text, *a, **k))[1])
    plot_srr_layers([{"epoch": e, "srr_per_layer": [1.0, 2.0, 3.0]} for e in (1, 2)], tmp_path / "s.png")
    assert seen[0] == ("x", [0, 1, 2])
    seen.clear()
    table = measure(create_model("crate_nano").eval(), load_dataset("digits", split="test"), limit=16, progress=False)
    table.plot(tmp_path / "m.png")
    xs = [v for kind, v in seen if kind == "x"]
    assert xs and all(x == [0, 1, 2, 3] for x in xs)
    assert len([v for kind, v in seen if kind == "y"]) == 4  # one y label per panel
