"""The language-model benchmark (srr/bench/bench_lm.py) and its ``srr bench --only lm`` headlines."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from srr.bench.bench_lm import compare
from srr.cli.bench import _lm


def _models(**numbers):
    return {name: {"val_loss": loss, "tokens_per_s": speed} for name, (loss, speed) in numbers.items()}


def test_the_goal_is_within_a_tenth_of_a_nat_at_nine_tenths_of_the_speed():
    models = _models(gpt_lm_nano=(1.90, 1000.0), crate_lm_nano=(1.99, 950.0), tost_lm_nano=(2.01, 2000.0),
                     crate_lm_exact_nano=(1.95, 800.0))
    c = compare(models)
    assert c["gpt_lm_nano"]["val_loss_gap"] == 0.0 and c["gpt_lm_nano"]["tokens_per_s_ratio"] == 1.0
    assert c["crate_lm_nano"]["goal_met"] and not c["tost_lm_nano"]["goal_met"]  # 0.11 nats above
    assert not c["crate_lm_exact_nano"]["goal_met"]  # 0.8x the tokens/s
    models["gpt_lm_nano"]["tokens_per_s_interleaved"] = 1000.0  # the alternating rounds decide when measured
    models["crate_lm_exact_nano"]["tokens_per_s_interleaved"] = 950.0
    fair = compare(models)["crate_lm_exact_nano"]
    assert fair["goal_met"] and fair["tokens_per_s_ratio"] == 0.95 and fair["tokens_per_s_ratio_in_runs"] == 0.8
    rows = _lm({"models": models, "comparison": c})
    gaps = {r.metric.split(":")[0]: r for r in rows if "loss above" in r.metric}
    assert gaps["crate_lm_nano"].met and not gaps["tost_lm_nano"].met
    assert rows[0].value == 1.90 and all(r.value is None for r in _lm({})[1:])  # nothing measured: not a failure


@pytest.mark.slow
def test_srr_bench_quick_lm_runs_from_an_empty_folder(tmp_path):
    import srr

    path = tmp_path / "out.json"
    env = {**os.environ, "PYTHONPATH": str(Path(srr.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "srr", "bench", "--quick", "--only", "lm", "--device", "cpu",
                           "--threads", "1", "--json", str(path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(path.read_text())["rows"]
    assert rows and all(r["benchmark"] == "lm" and r.get("value") is not None for r in rows), rows
    assert not (tmp_path / "runs").exists()  # --quick trains in a temporary folder
