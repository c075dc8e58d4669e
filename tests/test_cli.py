"""The ``srr`` command line through typer's CliRunner: every command on tiny settings, help texts,
and bad input (one red line, a non-zero exit, never a traceback)."""
import dataclasses
import inspect
import json
import os

import pytest
from typer.testing import CliRunner

from srr.cli import app
from srr.cli import train as train_cli
from srr.train import RunDir, TrainConfig

runner = CliRunner()
TINY = ["--epochs", "1", "--batch-size", "32", "--train-subset", "64", "--measure-samples", "8", "--threads", "1"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, code: int, *fragments: str):
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = run("train", "--out", out, *TINY)
    assert result.exit_code == 0, result.output
    return out, result


# ----- commands -----------------------------------------------------------------------------------
def test_train_writes_the_run_folder_and_prints_the_summary_table(trained):
    out, result = trained
    run_dir = RunDir(out)
    for path in (run_dir.config, run_dir.metrics, run_dir.summary, run_dir.latest, run_dir.plots / "curves.png"):
        assert path.is_file(), path
    for text in ("test accuracy", "μ_SRR last layer", "images/s", str(out)):
        assert text in result.stdout, text
    assert json.loads(run_dir.summary.read_text())["epochs"] == 1


def test_resume_of_a_finished_run_trains_nothing_more(trained):
    out, _ = trained
    before = RunDir(out).read_metrics()
    result = run("train", "--out", out, "--resume", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert RunDir(out).read_metrics() == before


def test_eval_reports_accuracy_and_loss(trained):
    out, _ = trained
    result = run("eval", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dataset"] == "digits" and report["split"] == "test" and report["n"] == 360
    assert 0 <= report["accuracy"] <= 1 and report["loss"] > 0
    summary = json.loads(RunDir(out).summary.read_text())
    assert report["accuracy"] == pytest.approx(summary["test_accuracy"])  # same weights, same data
    trained_on = json.loads(run("eval", out, "--json", "--split", "train").stdout)
    assert trained_on["n"] == 64  # --train-subset 64: the images the run trained on, not the 1,437 of digits
    table = run("eval", RunDir(out).latest, "--split", "val")
    assert table.exit_code == 0 and "accuracy" in table.stdout


def test_measure_prints_the_layer_table_and_writes_plots(trained):
    out, _ = trained
    result = run("measure", out, "--samples", "16")
    assert result.exit_code == 0, result.output
    assert "μ_SRR" in result.stdout
    for name in ("measure.png", "measure.csv", "measure.json"):
        assert (out / "measure" / name).stat().st_size > 0
    csv = run("measure", out, "--samples", "8", "--format", "csv", "--out", out / "m2")
    header, *rows = csv.stdout.strip().splitlines()
    assert header.startswith("layer,site") and len(rows) == 3 * 4  # 3 sites x 4 layers of crate_nano


def test_models_lists_the_registry_and_variants():
    result = run("models")
    assert result.exit_code == 0
    for name in ("crate_nano", "crate_tiny", "crate_t", "crate_exact", "crate_lm_nano", "tost_lm_small", "gpt_lm_nano"):
        assert name in result.stdout
    language = run("models", "tost_lm*")
    assert language.exit_code == 0 and "tost_lm_nano" in language.stdout and "crate_nano" not in language.stdout
    assert_one_line_error(run("models", "no_such_*"), 2, "no registered model matches")  # an unknown name


def test_derive_prints_objective_layer_and_a_descent_check():
    result = run("derive", "Rc(eps=0.5) + 0.1*L1 + NonNeg", "--trials", "16")
    assert result.exit_code == 0, result.output
    for text in ("R^c(Z; U, ε=0.5)", "prox", "holds in 16/16", "U (4, 16, 4)"):
        assert text in result.stdout, text


def test_derive_reports_a_failed_descent_with_a_step_far_above_the_bound():
    result = run("derive", "Rc(eps=0.5)", "--step-size", "100", "--trials", "8")
    assert result.exit_code == 1 and "fails" in result.stdout


def test_imagefolder_wiring(tmp_path):
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label, colour in (("cats", 40), ("dogs", 200)):
            folder = tmp_path / "images" / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                pixels = np.clip(colour + rng.normal(0, 20, (8, 8, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    out = tmp_path / "run"
    result = run("train", "--dataset", "imagefolder", "--data-dir", tmp_path / "images", "--image-size", "8",
                 "--epochs", "1", "--batch-size", "4", "--val-fraction", "0", "--measure-samples", "4",
                 "--threads", "1", "--out", out)
    assert result.exit_code == 0, result.output
    config = json.loads(RunDir(out).config.read_text())
    assert config["dataset"] == "imagefolder"
    report = json.loads(run("eval", out, "--json").stdout)
    assert report["n"] == 8 and report["dataset"] == "imagefolder"


# ----- help and defaults --------------------------------------------------------------------------
@pytest.mark.parametrize("command,options", [
    ("train", ["--model", "--dataset", "--epochs", "--srr-weight", "--resume", "--amp", "--compile", "--device"]),
    ("eval", ["CHECKPOINT", "--split"]),
    ("measure", ["CHECKPOINT", "--samples", "--format"]),
    ("derive", ["OBJECTIVE", "--step-size"]),
    ("models", ["PATTERN"]),
    ("bench", ["--quick"]),
    ("attention", ["RUN_OR_CHECKPOINT", "--layer", "--images"]),
    ("recipes", ["NAME"]),
    ("sample", ["RUN", "--prompt", "--tokens", "--temperature", "--top-k", "--seed"]),
])
def test_help_texts(command, options):
    result = run(command, "--help")
    assert result.exit_code == 0
    for option in options:
        assert option in result.stdout, option


def test_train_help_tells_the_model_eps_from_the_regularizer_eps():
    text = " ".join(run("train", "--help").stdout.replace("│", " ").split())  # unwrap rich's panels
    assert "--model-eps" in text and "--srr-eps" in text
    assert "CRATEConfig.eps" in text and "see --srr-eps" in text and "see --model-eps" in text


def test_model_eps_reaches_the_model_and_is_recorded_in_the_run_config():
    config = TrainConfig(variant="crate_exact", model_eps=0.3)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))).model_eps == 0.3
    from srr.models import create_model

    model = create_model(config.model, **config.model_overrides())
    assert model.config.eps == 0.3 and model.config.variant == "crate_exact"
    assert config.srr_eps == 0.1  # the regulariser's ε is separate
    assert "eps" not in TrainConfig().model_overrides()  # None: the registry entry's own ε


def test_top_level_help_lists_every_command():
    commands = [c.name for c in app.registered_commands]  # every command, read from the app itself
    assert set(commands) == {"train", "eval", "measure", "derive", "models", "bench", "attention", "recipes", "sample"}
    result = run("--help")
    for command in commands:
        assert command in result.stdout
        assert run(command, "--help").exit_code == 0, command


def test_train_option_defaults_are_the_library_defaults():
    renamed = {"workers": "num_workers"}
    defaults = TrainConfig()
    for name, parameter in inspect.signature(train_cli.train).parameters.items():
        field = renamed.get(name, name)
        if field in ("progress", "ctx"):
            continue
        expected = getattr(defaults, field)
        if field == "grad_clip" and expected is None:
            expected = 0.0
        assert parameter.default == expected, (name, parameter.default, expected)
    cli_fields = {renamed.get(n, n) for n in inspect.signature(train_cli.train).parameters}
    assert {f.name for f in dataclasses.fields(TrainConfig)} <= cli_fields


# ----- bad input ----------------------------------------------------------------------------------
# Every option that takes a value, given a bad one: exit code 2 and one line naming the option (docs/cli.md,
# "Errors"). RUN stands for a trained run folder. Missing or unusable files are exit code 1 (tests below).
BAD_VALUES = [
    ("train", ["--model", "crate_nope"], ["unknown model", "crate_nano"]),
    ("train", ["--variant", "crate_z"], ["unknown variant", "crate_t"]),
    ("train", ["--patch-size", "0"], ["--patch-size", "0"]),
    ("train", ["--patch-size", "3"], ["divisible by patch_size", "patch_size=3"]),
    ("train", ["--dropout", "1.5"], ["--dropout", "1.5"]),
    ("train", ["--dropout", "nan"], ["--dropout", "nan"]),
    ("train", ["--model-eps", "0"], ["--model-eps", "0"]),
    ("train", ["--init-from", "missing.pth"], ["--init-from", "missing.pth", "does not exist"]),
    ("train", ["--init-from", "hf://no-owner"], ["--init-from", "hf://owner/repo"]),
    ("train", ["--dataset", "imagenet42"], ["unknown dataset", "digits", "cifar10"]),
    ("train", ["--data-dir", "no/such/folder"], ["--data-dir", "no/such/folder", "--download"]),
    ("train", ["--image-size", "-8"], ["--image-size", "-8"]),
    ("train", ["--image-size", "7"], ["divisible by patch_size", "image_size=7"]),
    ("train", ["--val-fraction", "1"], ["--val-fraction", "< 1"]),
    ("train", ["--val-fraction", "nan"], ["--val-fraction", "nan"]),
    ("train", ["--train-subset", "0"], ["--train-subset", "0"]),
    ("train", ["--workers", "-1"], ["--workers", "-1"]),
    ("train", ["--epochs", "-1"], ["--epochs", "-1"]),
    ("train", ["--epochs", "0"], ["--epochs"]),
    ("train", ["--epochs", "many"], ["--epochs", "srr train --help"]),
    ("train", ["--batch-size", "-4"], ["--batch-size"]),
    ("train", ["--lr", "0"], ["--lr"]),
    ("train", ["--lr", "nan"], ["--lr", "nan"]),
    ("train", ["--lr", "inf"], ["--lr", "inf"]),
    ("train", ["--min-lr", "-1"], ["--min-lr", "-1"]),
    ("train", ["--weight-decay", "nan"], ["--weight-decay", "nan"]),
    ("train", ["--warmup", "-1"], ["--warmup", "-1"]),
    ("train", ["--optimizer", "lbfgs"], ["--optimizer", "adamw"]),
    ("train", ["--momentum", "-1"], ["--momentum", "-1"]),
    ("train", ["--label-smoothing", "2"], ["--label-smoothing", "2"]),
    ("train", ["--grad-clip", "-1"], ["--grad-clip", "-1"]),
    ("train", ["--grad-clip", "nan"], ["--grad-clip", "nan"]),
    ("train", ["--layer-decay", "0"], ["--layer-decay", "0"]),
    ("train", ["--layer-decay", "1.5"], ["--layer-decay", "1.5"]),
    ("train", ["--srr-weight", "-1"], ["--srr-weight", "-1"]),
    ("train", ["--srr-layers", "foo"], ["--srr-layers", "foo"]),
    ("train", ["--srr-layers", "9"], ["layer index 9", "4 layers"]),
    ("train", ["--srr-eps", "-0.1"], ["--srr-eps", "-0.1"]),
    ("train", ["--srr-eps", "nan"], ["--srr-eps", "nan"]),
    ("train", ["--srr-lam", "-1"], ["--srr-lam", "-1"]),
    ("train", ["--measure-samples", "-1"], ["--measure-samples", "-1"]),
    ("train", ["--seed", "-1"], ["--seed", "-1"]),
    ("train", ["--device", "tpu"], ["--device", "tpu", "cuda:N"]),
    ("train", ["--checkpoint-every", "-1"], ["--checkpoint-every", "-1"]),
    ("train", ["--threads", "0"], ["--threads", "0"]),
    ("train", ["--logger", "wandb"], ["--logger", "wandb", "jsonl"]),
    ("train", ["--log-every", "0"], ["--log-every", "0"]),
    ("train", ["--out", "A_FILE"], ["--out", "is a file"]),
    ("train", ["--resume"], ["--resume needs --out"]),
    ("train", ["--no-such-option", "1"], ["No such option", "--no-such-option"]),
    ("eval", ["RUN", "--split", "dev"], ["--split", "dev", "train, val, test"]),
    ("eval", ["RUN", "--dataset", "imagenet42"], ["unknown dataset", "digits"]),
    ("eval", ["RUN", "--data-dir", "no/such/folder"], ["--data-dir", "no/such/folder"]),
    ("eval", ["RUN", "--batch-size", "0"], ["--batch-size", "0"]),
    ("eval", ["RUN", "--device", "tpu"], ["device", "tpu"]),
    ("eval", ["missing.pt"], ["checkpoint missing.pt does not exist"]),
    ("eval", ["--pretrained", "missing.pth", "--model", "crate_nano"], ["--pretrained", "missing.pth"]),
    ("eval", ["--pretrained", "RUN", "--model", "crate_nope"], ["unknown model", "crate_nope"]),
    ("measure", ["RUN", "--samples", "0"], ["--samples", "0"]),
    ("measure", ["RUN", "--eps", "0"], ["--eps", "0"]),
    ("measure", ["RUN", "--eps", "nan"], ["--eps", "nan"]),
    ("measure", ["RUN", "--lam", "-1"], ["--lam", "-1"]),
    ("measure", ["RUN", "--format", "xml"], ["--format", "xml", "table"]),
    ("measure", ["RUN", "--batch-size", "-1"], ["--batch-size", "-1"]),
    ("measure", ["RUN", "--split", "dev"], ["--split", "dev"]),
    ("measure", ["RUN", "--dataset", "imagenet42"], ["unknown dataset"]),
    ("measure", ["RUN", "--device", "tpu"], ["device", "tpu"]),
    ("measure", ["RUN", "--out", "A_FILE"], ["--out", "is a file"]),
    ("measure", ["missing.pt"], ["checkpoint missing.pt does not exist"]),
    ("attention", ["RUN", "--images", "0"], ["--images", "0"]),
    ("attention", ["RUN", "--layer", "99"], ["--layer", "99", "[0, 3]"]),
    ("attention", ["RUN", "--split", "dev"], ["--split", "dev"]),
    ("attention", ["RUN", "--dataset", "imagenet42"], ["unknown dataset"]),
    ("attention", ["RUN", "--device", "tpu"], ["device", "tpu"]),
    ("attention", ["missing.pt"], ["checkpoint missing.pt does not exist"]),
    ("derive", ["R", "--step-size", "-1"], ["--step-size", "-1"]),
    ("derive", ["R", "--step-size", "nan"], ["--step-size", "nan"]),
    ("derive", ["R", "--step-size", "fast"], ["--step-size", "fast"]),
    ("derive", ["R", "--dim", "0"], ["--dim", "0"]),
    ("derive", ["R", "--heads", "0"], ["--heads", "0"]),
    ("derive", ["R", "--tokens", "-1"], ["--tokens", "-1"]),
    ("derive", ["R", "--trials", "0"], ["--trials", "0"]),
    ("derive", ["R", "--seed", "-1"], ["--seed", "-1"]),
    ("derive", ["Rc", "--dim", "6", "--heads", "4"], ["--dim (6)", "--heads (4)"]),
    ("derive", ["R(eps=-1)"], ["eps", "-1"]),
    ("derive", ["0*R"], ["step_size", "'auto'"]),
    ("derive", [], ["Missing argument", "OBJECTIVE"]),
    ("models", ["crate_nope"], ["no registered model matches 'crate_nope'", "crate_nano"]),
    ("bench", ["--only", "nope"], ["--only", "rates"]),
    ("bench", ["--device", "nope"], ["device", "'nope'"]),
    ("bench", ["--device", "meta"], ["--device", "'meta'"]),
    ("bench", ["--threads", "0"], ["--threads", "greater than or equal to 1"]),
    ("nope", [], ["No such command", "nope"]),
]


@pytest.mark.parametrize("command,args,fragments", BAD_VALUES,
                         ids=[" ".join([c, *a]) for c, a, _ in BAD_VALUES])
def test_every_bad_value_exits_2_in_one_line(command, args, fragments, trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths (missing.pt, no/such/folder) are missing here
    (tmp_path / "A_FILE").write_text("a file, not a folder")
    run_dir, _ = trained
    args = [str(run_dir) if a == "RUN" else a for a in args]
    if command == "train" and args != ["--resume"]:  # tiny settings where the case leaves them
        options = {**dict(zip(TINY[::2], TINY[1::2])), "--device": "cpu", "--out": str(tmp_path / "run")}
        args = [*args, *(x for flag, value in options.items() if flag not in args for x in (flag, value)), "--quiet"]
    assert_one_line_error(run(command, *args), 2, *fragments)


def test_resume_without_a_run_folder(tmp_path):
    assert_one_line_error(run("train", "--resume", "--out", tmp_path / "missing"), 2, "not a run folder")


def test_missing_dataset_files_name_the_path_and_suggest_download(tmp_path):
    result = run("train", "--dataset", "cifar10", "--data-dir", tmp_path, "--epochs", "1")
    assert_one_line_error(result, 1, str(tmp_path), "--download", "train/<class>/", "cifar-10-batches-py")


def test_a_digits_checkpoint_on_cifar_names_both_shapes(trained, tmp_path):
    out, _ = trained
    result = run("eval", out, "--dataset", "cifar10", "--data-dir", tmp_path)
    assert_one_line_error(result, 1, "trained on digits (1×8×8), the data is cifar10 (3×32×32)")


def test_unreadable_and_missing_checkpoints(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    assert_one_line_error(run("eval", garbage), 1, "could not read checkpoint")
    assert_one_line_error(run("measure", garbage), 1, "could not read checkpoint")
    assert_one_line_error(run("eval", tmp_path / "nothing.pt"), 2, "does not exist")  # a bad value
    assert_one_line_error(run("eval", tmp_path), 1, "not a run folder")


def test_derive_rejects_an_unknown_term():
    assert_one_line_error(run("derive", "Foo + L1"), 2, "unknown term 'Foo'")


def test_bench_prints_the_headline_table():
    result = run("bench", "--quick", "--only", "train", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "loader vs model images/s" in result.stdout and "×" in result.stdout


def test_bench_rejects_unknown_benchmarks():
    assert_one_line_error(run("bench", "--only", "nope"), 2,
                          "rates, layers, models, regularizer, compile, profile, train")


def test_bench_names_the_machine_and_writes_its_rows_to_json(tmp_path):
    path = tmp_path / "bench.json"
    result = run("bench", "--quick", "--only", "train", "--device", "cpu", "--threads", "1", "--json", path)
    assert result.exit_code == 0, result.output
    data = json.loads(path.read_text())
    assert data["command"] == f"srr bench --quick --only train --device cpu --threads 1 --json {path}"
    assert set(data["machine"]) >= {"cpu", "cores", "threads", "torch", "device"} and data["machine"]["threads"] == 1
    words = " ".join(result.stdout.split())  # the caption may wrap
    assert "1 of" in words and "cores used" in words and f"torch {data['machine']['torch']}" in words
    (row,) = data["rows"]
    assert row["benchmark"] == "train" and row["unit"] == "×" and row["value"] > 0 and row["target"] == ">= 1"


def test_bench_headlines_say_not_measured_for_missing_keys_and_no_times_sign_on_errors():
    from srr.cli.bench import _compile, _models, _profile, _rates, _regularizer

    for rows in (_regularizer({}), _compile({}), _rates({}), _profile({})):
        assert rows and all(h.value is None and h.met is None and h.shown() == "not measured" for h in rows)
    cost = "(SRR term cost)"
    assert [h.target for h in _regularizer({})] == [f"<= 1.25 {cost}", f"<= 1.4 {cost}", f"<= 1.05 {cost}",
                                                    f"<= 1.05 {cost}", f"<= 1.25 {cost}", f"<= 1.4 {cost}",
                                                    f"<= 1.05 {cost}", ">= 0.8 (measure throughput)"]
    assert not any("#" in h.target or "#" in h.metric for f in (_regularizer, _compile, _rates, _profile)
                   for h in f({}))
    bound = _profile({"derived": {"train_vs_vit_if_crate_nonmatmul_were_vits": 1.07, "crate_nonmatmul_ms": 540.0,
                                  "crate_nonmatmul_for_1_1x_vit": 450.0}})
    assert bound[0].value == 1.07 and bound[1].value is None and abs(bound[2].value - 1.2) < 1e-12
    error = _rates({"Rc_speedup": 2.0, "float32_max_rel_err": 3e-5})[1]
    assert error.met and error.shown() == "3.00e-05" and "×" not in error.shown()
    seconds = _compile({"derived_compiled_compile_train_s": 12.5})[3]
    assert seconds.shown() == "12.5 s"
    crate = _models([{"variant": "crate", "train_speedup": 1.7, "infer_speedup": 1.5,
                      "timm_note": "not measured: timm is not installed"}])
    assert [h.met for h in crate] == [True, False, None, None]
    assert "timm is not installed" in crate[3].metric


@pytest.mark.parametrize("name", [
    "rates", "train", "profile",
    *(pytest.param(n, marks=pytest.mark.slow) for n in ("layers", "models", "regularizer", "compile")),
])
def test_bench_quick_runs_each_benchmark_from_the_package(name, tmp_path):
    """``srr bench`` needs nothing outside the package (no repository checkout): run from an empty folder."""
    import subprocess
    import sys
    from pathlib import Path

    import srr

    path = tmp_path / "out.json"
    env = {**os.environ, "PYTHONPATH": str(Path(srr.__file__).parents[1])}
    done = subprocess.run([sys.executable, "-m", "srr", "bench", "--quick", "--only", name, "--device", "cpu",
                           "--threads", "2", "--json", str(path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(path.read_text())["rows"]
    assert rows and all(r["benchmark"] == name and "error" not in r for r in rows), rows
