"""``srr sample RUN``: a continuation of a prompt by a trained language-model run, in the run's vocabulary."""
import json

import pytest
from typer.testing import CliRunner

from srr.cli.app import app

runner = CliRunner()
POEM = "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate.\n" * 30


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    (root / "poem.txt").write_text(POEM)
    out = root / "run"
    done = runner.invoke(app, ["train", "--dataset", "text", "--data-dir", str(root / "poem.txt"), "--model",
                               "gpt_lm_nano", "--max-iters", "4", "--eval-every", "2", "--eval-iters", "1",
                               "--batch-size", "2", "--threads", "1", "--out", str(out), "--quiet"])
    assert done.exit_code == 0, done.output
    return out


def sample(run, *args):
    return runner.invoke(app, ["sample", str(run), *[str(a) for a in args]])


def test_the_continuation_starts_with_the_prompt_and_is_made_of_the_runs_characters(run):
    result = sample(run, "--prompt", "Thou", "--tokens", 40, "--seed", 3)
    assert result.exit_code == 0, result.output
    text = result.stdout.rstrip("\n")
    assert text.startswith("Thou") and len(text) == 4 + 40
    assert set(text) <= set(json.loads((run / "vocab.json").read_text())["chars"])
    assert sample(run, "--prompt", "Thou", "--tokens", 40, "--seed", 3).stdout == result.stdout  # the seed fixes it
    top1 = [sample(run, "--prompt", "Thou", "--tokens", 20, "--top-k", 1, "--seed", s).stdout for s in (0, 1)]
    assert top1[0] == top1[1]  # top-k 1 is greedy: no draw left to the seed


@pytest.mark.parametrize("args, fragments", [
    (["--prompt", "é"], ["--prompt", "outside the vocabulary", "é"]),
    (["--tokens", "0"], ["--tokens", "got 0"]),
    (["--temperature", "0"], ["--temperature", "got 0"]),
    (["--top-k", "0"], ["--top-k", "got 0"]),
])
def test_bad_values_are_one_line_errors(run, args, fragments):
    result = sample(run, *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and all(f in lines[0] for f in fragments), result.stderr


def test_a_folder_that_is_no_language_model_run_is_refused(tmp_path):
    result = sample(tmp_path, "--tokens", 3)
    assert result.exit_code == 1 and "vocab.json" in result.stderr
