"""``srr train``'s options are generated from ``TrainConfig``; ``--resume``'s rule is decided in one place."""
import dataclasses
import json
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from srr.cli import app
from srr.cli.config_options import config_values, field_comments, with_config_options
from srr.cli.train import OPTIONS
from srr.train import TrainConfig
from srr.train.config import option_name
from srr.train.resume import RESUMABLE, RUN_CONTROL, resume_rule, resumed_config

runner = CliRunner()


def help_text(*args) -> str:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return " ".join(result.stdout.replace("│", " ").split())  # unwrap rich's panels


@dataclasses.dataclass(frozen=True)
class WithANewField(TrainConfig):
    # new knobs
    new_knob: int = 3  # a knob that no CLI code knows about
    new_switch: bool = False  # a switch that no CLI code knows about


def test_a_new_config_field_with_a_comment_is_an_option_at_once():
    seen = {}

    @with_config_options(WithANewField)
    def command(ctx: typer.Context, parsed: dict) -> None:
        seen.update(config_values(WithANewField, {}, parsed))

    probe = typer.Typer()
    probe.command()(command)
    probe.command("other")(lambda: None)  # two commands: typer keeps the name
    result = runner.invoke(probe, ["command", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.stdout.replace("│", " ").split())
    assert "--new-knob" in text and "a knob that no CLI code knows about" in text and "New knobs" in text
    assert "--new-switch" in text and "--batch-size" in text  # the base fields too, with their comments
    assert "batch size per process" in text
    result = runner.invoke(probe, ["command", "--new-knob", "7", "--new-switch", "--batch-size", "16"])
    assert result.exit_code == 0, result.output
    assert seen["new_knob"] == 7 and seen["new_switch"] is True and seen["batch_size"] == 16
    assert WithANewField(**seen).new_knob == 7


def test_every_train_config_field_has_a_comment_and_an_option_in_the_help():
    comments, panels = field_comments(TrainConfig)
    text = help_text("train")
    for field in dataclasses.fields(TrainConfig):
        assert comments.get(field.name), f"TrainConfig.{field.name} has no # comment (its --help text)"
        assert field.name in panels, field.name
        assert option_name(field.name) in text, field.name
    for panel in ("Model", "Data", "Optimisation", "SRR regularisation", "Run control"):
        assert f"─ {panel} " in runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).stdout, panel


def test_cli_option_overrides_name_real_fields():
    assert set(OPTIONS) <= set(TrainConfig.field_names())


def test_help_keeps_square_brackets_in_help_texts():
    assert "pip install 'srr[tensorboard]'" in help_text("train")


def test_drop_path_reaches_the_model(tmp_path):
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--drop-path", "0.2", "--epochs", "1",
                                 "--train-subset", "32", "--batch-size", "32", "--measure-samples", "0",
                                 "--threads", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["drop_path"] == 0.2 and config["resolved"]["model"]["drop_path"] == 0.2
    bad = runner.invoke(app, ["train", "--drop-path", "1.5"])
    assert bad.exit_code == 2 and "--drop-path" in bad.stderr


# ----- resume: one rule --------------------------------------------------------------------------------
def test_resume_rule_is_one_list_in_the_code_the_error_and_the_docs():
    from pathlib import Path

    saved = TrainConfig(epochs=2)
    call = TrainConfig(epochs=5, lr=0.1, device="cpu", threads=1)
    with pytest.raises(ValueError) as refused:
        resumed_config(saved, call, given={"epochs", "lr", "device", "threads"})
    message = str(refused.value)
    assert "--lr (run has 0.003, given 0.1)" in message and resume_rule() in message
    for field in RESUMABLE | RUN_CONTROL - {"out", "resume"}:
        assert option_name(field) in resume_rule(), field
    docs = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
    assert " ".join(docs.split()).count(resume_rule()) == 1
    assert "only `--device`, `--workers`" not in docs  # the old, contradicting list


def test_resume_applies_given_resumable_changes_and_this_calls_run_control():
    saved = TrainConfig(epochs=2, threads=2, device="auto")
    call = TrainConfig(epochs=4, lr=0.1, device="cpu", threads=1)  # lr not given: the run's own stays
    config = resumed_config(saved, call, given={"epochs"})
    assert (config.epochs, config.lr, config.device, config.threads, config.resume) == (4, saved.lr, "cpu", 1, True)


def test_make_cli_doc_is_up_to_date():
    result = subprocess.run([sys.executable, "-m", "experiments.make_cli_doc", "--check"], capture_output=True,
                            text=True, cwd=str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    assert result.returncode == 0, result.stderr


# ----- the app's error boundary -----------------------------------------------------------------------
@pytest.mark.parametrize("args", [["--help"], ["train", "--help"]])
def test_a_closed_stdout_ends_quietly(args):
    """``srr --help | head -5``: the reader went away; no traceback (typer vendors click as typer._click)."""
    process = subprocess.Popen([sys.executable, "-m", "srr", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before srr writes: its first write meets a broken pipe
    error = process.stderr.read().decode()
    process.wait(timeout=60)
    assert "Traceback" not in error and "Error" not in error, error
    assert process.returncode in (0, 1)


def test_click_exception_classes_are_found_whichever_click_typer_runs_on():
    from srr.cli.app import _click_exceptions

    exceptions = _click_exceptions()
    assert typer.Abort in exceptions.Abort
    for name in ("UsageError", "ClickException"):
        assert getattr(exceptions, name), name


def test_weights_and_data_options_are_declared_once_for_eval_measure_and_attention():
    import typing

    from srr.cli import options
    from srr.cli.attention import attention_command
    from srr.cli.evaluate import eval_command
    from srr.cli.measure import measure_command

    for command in (eval_command, measure_command, attention_command):
        hints = typing.get_type_hints(command, include_extras=True)
        for name, declared in (("model_name", options.ModelName), ("pretrained", options.Pretrained),
                               ("dataset", options.Dataset), ("data_dir", options.DataDir),
                               ("download", options.Download), ("device", options.Device)):
            assert hints[name] == declared, (command.__name__, name)
    assert typing.get_type_hints(eval_command, include_extras=True)["checkpoint"] == options.Checkpoint


def test_bench_table_keeps_brackets_and_names_targets(monkeypatch):
    from srr.cli import bench

    fake = bench.Bench("rates", None, lambda quick, dev: [], lambda result: [
        bench.Headline("needs pip install 'srr[bench]'", 1.5, "×", ">= 1 (SRR term cost)", True)])
    monkeypatch.setattr(bench, "BENCHES", [fake])
    monkeypatch.setattr(bench, "_run", lambda b, **kw: {})
    text = " ".join(runner.invoke(app, ["bench", "--device", "cpu"], env={"COLUMNS": "200"}).stdout.split())
    assert "pip install 'srr[bench]'" in text and "(SRR term cost)" in text


def test_bench_hides_what_native_code_writes_to_stderr(capfd):
    import os

    from srr.cli.bench import _silenced

    with _silenced():
        os.write(2, b"USDT probe: profiler_start\n")
        os.write(1, b"native stdout\n")
        print("python stdout")
    out, err = capfd.readouterr()
    assert "USDT" not in err and "native stdout" not in out and "python stdout" not in out
    os.write(2, b"after\n")
    assert "after" in capfd.readouterr().err  # restored
