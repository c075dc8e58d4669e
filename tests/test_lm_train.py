"""Training language models (srr/train/lm_loop.py): the run folder, exact resume, the command line, and DDP."""
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from srr.cli import app
from srr.train import Callback, RunDir, TrainConfig, TrainingInterrupted, train
from srr.train.lm_loop import LMRunResult

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare"
needs_shakespeare = pytest.mark.skipif(not (SHAKESPEARE / "input.txt").is_file(),
                                       reason="needs ../shared/data/tinyshakespeare/input.txt")
SMALL = dict(dataset="shakespeare-char", data_dir=str(SHAKESPEARE), batch_size=4, eval_iters=2, device="cpu",
             threads=1, lr=1e-3, warmup_iters=2)
runner = CliRunner()


@needs_shakespeare
@pytest.mark.slow
def test_a_shakespeare_run_learns_and_fills_its_run_folder(tmp_path):
    out = tmp_path / "run"
    result = train(TrainConfig(model="gpt_lm_nano", max_iters=40, eval_every=20, out=str(out), logger="jsonl",
                               log_every=5, **{**SMALL, "lr": 3e-3, "batch_size": 8, "eval_iters": 4}))
    assert isinstance(result, LMRunResult) and result.global_step == 40
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_loss"] == result.val_loss and summary["best_val_loss"] <= summary["val_loss"] + 1e-12
    assert summary["val_loss"] < math.log(65) - 0.7  # from ln 65 = 4.17 (uniform) to the characters' frequencies
    rows = RunDir(out).read_metrics()
    assert [r["step"] for r in rows] == [20, 40] and rows[1]["val_loss"] < rows[0]["val_loss"]
    vocab = json.loads((out / "vocab.json").read_text())
    assert len(vocab["chars"]) == 65
    assert set((out / "sample.txt").read_text()) <= set(vocab["chars"])
    assert {p.name for p in (out / "checkpoints").iterdir()} >= {"latest.pt", "best.pt"}
    assert (out / "plots" / "curves.png").is_file()
    steps = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if s["kind"] == "step"] == list(range(5, 41, 5))
    assert summary["tokens_per_s"] > 0 and summary["parameters"] == 804_096


class Stop(Callback):
    """Stop at step ``at``: as SIGTERM does (the loop saves, then raises), or as a crash (nothing saved)."""

    def __init__(self, at: int, how: str):
        self.at, self.how = at, how

    def on_step_end(self, trainer, scalars):
        if scalars["step"] == self.at:
            if self.how == "signal":
                trainer.stop.signal_name = "SIGTERM"
            else:
                raise KeyboardInterrupt


@needs_shakespeare
@pytest.mark.parametrize("model, how", [("crate_lm_nano", "signal"),
                                        pytest.param("tost_lm_nano", "crash", marks=pytest.mark.slow)])
def test_a_run_stopped_and_resumed_ends_with_the_weights_of_the_uninterrupted_one(tmp_path, model, how):
    common = dict(model=model, max_iters=12, eval_every=4, log_every=1, dropout=0.1, **SMALL)  # dropout: RNG too
    whole = train(TrainConfig(out=str(tmp_path / "whole"), **common))
    part = TrainConfig(out=str(tmp_path / "part"), **common)
    with pytest.raises(TrainingInterrupted if how == "signal" else KeyboardInterrupt):
        train(part, callbacks=[Stop(7, how)])
    saved = torch.load(RunDir(tmp_path / "part").latest, weights_only=True)["extra"]["progress"]["global_step"]
    assert saved == (7 if how == "signal" else 4)  # a crash resumes from the last evaluation's checkpoint
    resumed = train(part.replace(resume=True))
    assert resumed.global_step == 12
    for name, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    rows = [(r["step"], r["val_loss"], r["train_loss"]) for r in RunDir(tmp_path / "part").read_metrics()]
    assert rows == [(r["step"], r["val_loss"], r["train_loss"]) for r in whole.metrics]
    again = train(part.replace(resume=True))  # complete: nothing to do, the summary as it was
    assert again.already_complete and again.val_loss == resumed.val_loss


def _cli(*args):
    return runner.invoke(app, ["train", *[str(a) for a in args]])


def test_srr_train_on_a_users_text_file(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_text("Shall I compare thee to a summer's day?\nThou art more lovely and more temperate.\n" * 30)
    out = tmp_path / "run"
    result = _cli("--dataset", "text", "--data-dir", path, "--model", "gpt_lm_nano", "--max-iters", 4,
                  "--eval-every", 2, "--eval-iters", 1, "--batch-size", 2, "--threads", 1, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert "val loss (nats per token)" in result.output
    assert json.loads((out / "vocab.json").read_text())["chars"] == "".join(sorted(set(path.read_text())))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 4 and summary["vocab_size"] == len(set(path.read_text()))


@pytest.mark.parametrize("args, fragments", [
    (["--dataset", "shakespeare-char", "--model", "gpt_lm_nano", "--epochs", "3"], ["--epochs 3", "image datasets"]),
    (["--max-iters", "5"], ["--max-iters 5", "text datasets only", "digits"]),
    (["--dataset", "shakespeare-char"], ["crate_nano is an image model", "crate_lm_nano"]),
    (["--dataset", "digits", "--model", "crate_lm_nano"], ["crate_lm_nano is a language model", "crate_nano"]),
])
def test_options_of_the_other_kind_of_run_are_one_line_errors(args, fragments):
    result = _cli(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_a_missing_text_file_is_a_one_line_error(tmp_path):
    result = _cli("--dataset", "text", "--data-dir", tmp_path / "none.txt", "--model", "gpt_lm_nano",
                  "--out", tmp_path / "run")
    assert result.exit_code != 0 and "neither a file nor a folder" in result.stderr
    assert "Traceback" not in result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_shakespeare
@pytest.mark.slow
def test_two_gloo_processes_match_one_process_on_the_global_batch(tmp_path):
    """Rank r takes rows r·B … of the step's global batch of 2B blocks, DDP averages the gradients: the weights
    of 2 processes of batch B are those of one process of batch 2B (SGD, which does not amplify rounding), and
    the loss estimates (each rank scoring half of the evaluation batches) agree."""
    per_rank = 4
    args = ["--dataset", "shakespeare-char", "--data-dir", str(SHAKESPEARE), "--model", "crate_lm_nano",
            "--max-iters", "6", "--eval-every", "3", "--eval-iters", "4", "--optimizer", "sgd", "--lr", "0.1",
            "--warmup-iters", "0", "--device", "cpu", "--threads", "1", "--batch-size", str(per_rank),
            "--out", str(tmp_path / "ddp"), "--quiet"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "srr", "train", *args]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    single = train(TrainConfig(model="crate_lm_nano", max_iters=6, eval_every=3, optimizer="sgd",
                               out=str(tmp_path / "single"),
                               **{**SMALL, "lr": 0.1, "batch_size": 2 * per_rank, "eval_iters": 4, "warmup_iters": 0}))
    ddp = torch.load(RunDir(tmp_path / "ddp").latest, weights_only=True)
    assert ddp["extra"]["progress"]["global_step"] == 6
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(ddp["state_dict"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    rows = RunDir(tmp_path / "ddp").read_metrics()
    assert len(rows) == 2 and all(r["world_size"] == 2 for r in rows)
    for a, b in zip(rows, single.metrics):
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-4 and abs(a["train_loss"] - b["train_loss"]) < 1e-4


def test_context_shorter_than_the_models_trains_and_a_longer_one_is_refused(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcdefghij klmnop qrstuv wxyz\n" * 40)
    common = dict(dataset="text", data_dir=str(path), model="gpt_lm_nano", max_iters=2, eval_every=2, eval_iters=1,
                  batch_size=2, threads=1, device="cpu")
    result = train(TrainConfig(out=str(tmp_path / "short"), context=16, **common))
    config = json.loads((tmp_path / "short" / "config.json").read_text())
    assert result.global_step == 2 and config["resolved"]["context"] == 16
    assert config["resolved"]["tokens_per_step"] == 2 * 16
    with pytest.raises(ValueError, match="--context 65 exceeds the context of gpt_lm_nano"):
        train(TrainConfig(out=str(tmp_path / "long"), context=65, **common))
