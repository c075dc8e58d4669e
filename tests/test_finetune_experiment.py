"""experiments/finetune.py in its quick mode: every step is an srr command that succeeds, the public-format
checkpoint evaluates to the pre-training run's own accuracy, fine-tuning says it replaced the head and
interpolated the position embedding, and the result files are written (slow: a few CLI processes)."""
from __future__ import annotations

import json
import os

import pytest

from experiments import _cifar, finetune

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not _cifar.DEFAULT_DATA_DIR.is_dir() and not os.environ.get("SRR_DATA_DIR"),
                       reason="needs ../shared/data/cifar10 or $SRR_DATA_DIR"),
]


def test_quick_finetune_runs_every_step_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(_cifar.ROOT)  # python -m srr runs from the repository
    payload = finetune.main(["--quick", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])
    assert [s["step"] for s in payload["steps"]] == ["pretrain", "export", "eval", "measure", "finetune", "scratch",
                                                     "attention"]
    assert all(s["exit_code"] == 0 for s in payload["steps"])
    assert payload["public_checkpoint"]["eval"]["eval_equals_run"]
    notes = " ".join(payload["public_checkpoint"]["notes"])
    assert "new classifier head, re-initialised (10 -> 4 classes)" in notes
    assert "position embedding interpolated from 8x8 to 6x6 patches" in notes
    for name in ("summary.json", "runs.csv", "README.md", "attention.png", "measure/measure.json",
                 "finetuned/metrics.jsonl", "scratch/summary.json"):
        assert (tmp_path / "out" / name).is_file(), name
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary["runs"]) == {"pretrain", "finetuned", "scratch"}
