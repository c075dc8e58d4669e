"""What a run tells its user: the start-of-run header, the warm-up that would cover the whole run, a
finished run resumed, and the per-step loss in curves.png."""
import json

import pytest
from rich.console import Console

import srr.train.loop as loop
from srr.train import RunDir, TrainConfig, train
from srr.train.optim import warmup_note, warmup_steps

TINY = dict(epochs=1, batch_size=32, train_subset=96, measure_samples=0, threads=1, device="cpu")


def console():
    return Console(record=True, width=200, force_terminal=False)


def test_a_warmup_covering_the_whole_run_is_cut_to_a_tenth_of_it_with_a_note():
    assert warmup_steps(TrainConfig(epochs=1, warmup=2.0), steps_per_epoch=30) == 3
    assert warmup_steps(TrainConfig(epochs=2, warmup=2.0), steps_per_epoch=30) == 6
    assert "--warmup 2 epochs would cover the whole 1-epoch run" in warmup_note(TrainConfig(epochs=1),
                                                                                 steps_per_epoch=30)
    assert warmup_steps(TrainConfig(epochs=30, warmup=2.0), steps_per_epoch=30) == 60  # unchanged
    assert warmup_steps(TrainConfig(epochs=3, warmup=0.5), steps_per_epoch=10) == 5
    assert warmup_note(TrainConfig(epochs=30), steps_per_epoch=30) is None
    assert warmup_note(TrainConfig(epochs=3, warmup=0.5), steps_per_epoch=10) is None


def test_the_cli_says_so_in_one_note(tmp_path):
    from typer.testing import CliRunner

    from srr.cli import app

    result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "run"), "--epochs", "1", "--train-subset", "64",
                                      "--batch-size", "32", "--measure-samples", "0", "--threads", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.stderr.count("note: --warmup 2 epochs would cover the whole 1-epoch run") == 1


def test_a_one_epoch_run_decays_its_learning_rate(tmp_path):
    result = train(TrainConfig(out=str(tmp_path / "run"), **TINY))
    assert result.metrics[-1]["lr"] < 0.5 * result.config.lr  # not left at the peak by a whole-run warm-up


def test_the_run_starts_with_a_header_and_plots_its_per_step_loss(tmp_path, monkeypatch):
    seen = {}
    original = loop.plot_curves

    def spy(rows, path, steps=None):
        seen["steps"] = steps
        return original(rows, path, steps=steps)

    monkeypatch.setattr(loop, "plot_curves", spy)
    out = console()
    result = train(TrainConfig(out=str(tmp_path / "run"), **TINY), console=out)
    first = out.export_text().splitlines()[0]
    for text in ("crate_nano", "parameters", "digits", "96 train", "val", "360 test", "5 tokens per image", "cpu",
                 "effective batch 32", "3 steps per epoch", "1 epoch"):
        assert text in first, (text, first)
    assert len(seen["steps"]) == result.global_step == 3
    assert [round(e, 6) for e, _ in seen["steps"]] == [round(1 / 3, 6), round(2 / 3, 6), 1.0]
    assert (tmp_path / "run" / "plots" / "curves.png").stat().st_size > 0


def test_resuming_a_finished_run_says_it_is_complete_and_changes_nothing(tmp_path):
    config = TrainConfig(out=str(tmp_path / "run"), **TINY)
    train(config)
    run = RunDir(tmp_path / "run")
    files = [run.config, run.metrics, run.summary, run.latest, run.plots / "curves.png"]
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    out = console()
    result = train(config.replace(resume=True), console=out)
    text = out.export_text().replace(str(tmp_path), "TMP")
    assert "is complete (1/1 epochs" in text and "epoch 0/" not in text and "resuming" not in text
    assert result.already_complete and result.epochs == 1
    assert result.test_accuracy == pytest.approx(json.loads(run.summary.read_text())["test_accuracy"])
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == before
